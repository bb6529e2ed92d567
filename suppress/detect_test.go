package suppress

import (
	"math"
	"testing"
	"time"
)

func TestTrigger(t *testing.T) {
	th := Threshold{Raise: 10, Lower: 5}
	var tr trigger
	for i, step := range []struct {
		v    float64
		want bool
	}{
		{9.9, false}, {10, true}, {7, true}, {5.1, true}, {5, false}, {9, false}, {12, true},
	} {
		if got := tr.update(step.v, th); got != step.want {
			t.Fatalf("step %d: update(%v) = %v, want %v", i, step.v, got, step.want)
		}
	}
	if tr.update(100, Threshold{}) {
		t.Fatal("a disabled threshold (raise 0) turned on")
	}
}

func TestWindowMin(t *testing.T) {
	w := newWindowMin(16 * time.Second) // 1 s buckets
	sec := int64(time.Second)
	if _, ok := w.min(0); ok {
		t.Fatal("min of an empty window")
	}
	w.add(0, 12)
	w.add(sec/2, 30)
	for s := int64(1); s < 16; s++ {
		w.add(s*sec, 40)
	}
	if m, _ := w.min(15 * sec); m != 12 {
		t.Fatalf("min within the window = %v, want 12", m)
	}
	// 16 s later the bucket holding 12 has left the window.
	w.add(16*sec, 40)
	if m, _ := w.min(16 * sec); m != 40 {
		t.Fatalf("min after the window slid = %v, want 40", m)
	}
	// A bucket reused after a wrap starts afresh.
	w.add(32*sec, 50)
	if m, _ := w.min(32 * sec); m != 50 {
		t.Fatalf("min after a long silence = %v, want 50", m)
	}
}

func TestSlopeWindow(t *testing.T) {
	s := slopeWindow{window: int64(2 * time.Second)}
	step := int64(100 * time.Millisecond)
	if _, ok := s.slope(0); ok {
		t.Fatal("slope of nothing")
	}
	// Flat for 3 s, then rising 7 ms per second.
	now := int64(0)
	for ; now < int64(3*time.Second); now += step {
		s.add(now, 20)
		if now >= int64(time.Second) {
			if v, ok := s.slope(now); !ok || math.Abs(v) > 1e-9 {
				t.Fatalf("flat: slope %v %v at %v", v, ok, time.Duration(now))
			}
		}
	}
	base := now
	for ; now < base+int64(2*time.Second); now += step {
		s.add(now, 20+7*float64(now-base)/1e9)
	}
	// The last point is at base+1.9 s; the window (2 s) still holds one flat
	// point, so look slightly later for a pure ramp.
	if v, ok := s.slope(now - step + 1); !ok || math.Abs(v-7) > 0.5 {
		t.Fatalf("ramp: slope %v %v, want ~7", v, ok)
	}
	// Too few points in the window: no estimate.
	if _, ok := s.slope(now + int64(10*time.Second)); ok {
		t.Fatal("slope from points outside the window")
	}
}

func TestSlopeNoAllocs(t *testing.T) {
	s := slopeWindow{window: int64(2 * time.Second)}
	now := int64(0)
	if n := testing.AllocsPerRun(500, func() {
		s.add(now, 1)
		s.slope(now)
		now += 1e8
	}); n != 0 {
		t.Fatalf("slope window allocates %v", n)
	}
}

// TestSlopeUnderAClockOffset: a raw one-way delay carries the offset between
// the clocks, which can be months of nanoseconds; the trend must not drown in it.
func TestSlopeUnderAClockOffset(t *testing.T) {
	const offsetMs = 200 * 24 * 3600 * 1e3 // 200 days
	s := slopeWindow{window: int64(2 * time.Second)}
	now := int64(time.Hour)
	for i := 0; i < 20; i++ {
		noise := float64(i%2) * 0.5
		s.add(now, offsetMs+12+3*float64(i)/10+noise) // +3 ms/s
		now += int64(100 * time.Millisecond)
	}
	if v, ok := s.slope(now); !ok || math.Abs(v-3) > 0.1 {
		t.Fatalf("slope %v %v under a 200-day offset, want 3ms/s", v, ok)
	}
}
