package detect

import (
	"testing"
	"time"
)

func TestDSCP(t *testing.T) {
	for d := uint8(0); d < 64; d++ {
		v, rule := ClassifyDSCP(d)
		want := DSCPNeutral
		switch d {
		case 46, 24, 32, 40:
			want = DSCPLC
		case 0, 8:
			want = DSCPNotLC
		}
		if v != want || (v == DSCPLC) != (rule != "") {
			t.Errorf("DSCP %d: %v %q, want %v", d, v, rule, want)
		}
	}
	if _, r := ClassifyDSCP(DSCPEF); r != "dscp:EF" {
		t.Fatalf("EF rule %q", r)
	}
}

// run feeds n packets of size bytes every gap and returns when (relative to
// the first packet) the flow was first found LC, or -1.
func run(a *Adhoc, f FiveTuple, n int, size int, gap time.Duration) time.Duration {
	start := int64(1e12)
	for i := 0; i < n; i++ {
		now := start + int64(i)*int64(gap)
		if lc, _ := a.Feed(f, size, now); lc {
			return time.Duration(now - start)
		}
	}
	return -1
}

func TestAdhocDetectsGamesWithinTwoSeconds(t *testing.T) {
	for _, tc := range []struct {
		pps, size int
	}{{30, 120}, {64, 200}, {128, 150}, {50, 160}} {
		a := NewAdhoc(AdhocConfig{}, 16, 1)
		at := run(a, testFlow(1), 4*tc.pps, tc.size, time.Second/time.Duration(tc.pps))
		if at < 0 || at > 2*time.Second {
			t.Errorf("%d pps of %d bytes: detected at %v, want within 2 s", tc.pps, tc.size, at)
		}
	}
}

func TestAdhocIgnoresBulkDNSKeepalives(t *testing.T) {
	cases := []struct {
		name      string
		n, size   int
		gap       time.Duration
		sizeEvery int // every k-th packet is small, the rest 1400 bytes (0: all size)
	}{
		{"bulk", 2000, 1400, time.Millisecond, 0},
		{"mostly big", 200, 1200, 20 * time.Millisecond, 3},
		{"dns", 4, 80, 30 * time.Millisecond, 0},
		{"keepalive 15s", 40, 60, 15 * time.Second, 0},
		{"slow 2pps", 40, 60, 500 * time.Millisecond, 0},
		{"small flood", 3000, 200, time.Millisecond, 0}, // 1.6 Mbit/s
	}
	for _, tc := range cases {
		a := NewAdhoc(AdhocConfig{}, 16, 1)
		f := testFlow(2)
		start := int64(5e12)
		for i := 0; i < tc.n; i++ {
			size := tc.size
			if tc.sizeEvery > 0 && i%tc.sizeEvery == 0 {
				size = 100
			}
			if lc, _ := a.Feed(f, size, start+int64(i)*int64(tc.gap)); lc {
				t.Errorf("%s: flagged LC at packet %d", tc.name, i)
				break
			}
		}
	}
}

func TestAdhocHoldsOverPausesThenClears(t *testing.T) {
	a := NewAdhoc(AdhocConfig{}, 16, 1)
	f := testFlow(3)
	now := int64(1e12)
	gap := int64(20 * time.Millisecond)
	for i := 0; i < 100; i++ {
		now += gap
		a.Feed(f, 100, now)
	}
	if lc, _ := a.Feed(f, 100, now+gap); !lc {
		t.Fatal("steady flow not LC")
	}
	now += int64(2 * time.Second) // a level load: shorter than Hold
	if lc, _ := a.Feed(f, 100, now); !lc {
		t.Fatal("LC lost over a 2 s pause")
	}
	now += int64(6 * time.Second)
	lc, changed := a.Feed(f, 100, now)
	if lc || !changed {
		t.Fatalf("after 6 s silence: lc=%v changed=%v, want cleared", lc, changed)
	}
	// Turning into bulk clears at the next window.
	for i := 0; i < 100; i++ {
		now += gap
		a.Feed(f, 100, now)
	}
	cleared := false
	for i := 0; i < 3000 && !cleared; i++ { // up to 3 windows
		now += int64(time.Millisecond)
		lc, changed = a.Feed(f, 1400, now)
		cleared = !lc && changed
	}
	if !cleared {
		t.Fatal("flow turned bulk but stayed LC")
	}
}

func TestAdhocTableBoundedAndCounted(t *testing.T) {
	a := NewAdhoc(AdhocConfig{}, 100, 1)
	for i := 0; i < 250; i++ {
		a.Feed(testFlow(i), 100, int64(i))
	}
	if a.Len() != 100 || a.Evicted() != 150 {
		t.Fatalf("len %d evicted %d, want 100 and 150", a.Len(), a.Evicted())
	}
	// The newest flows survive; the oldest went.
	if _, ok := a.flows.peek(testFlow(249)); !ok {
		t.Fatal("newest flow evicted")
	}
	if _, ok := a.flows.peek(testFlow(0)); ok {
		t.Fatal("oldest flow kept")
	}
}

func TestAdhocFeedAllocatesNothing(t *testing.T) {
	a := NewAdhoc(AdhocConfig{}, 256, 1)
	i := 0
	if n := testing.AllocsPerRun(5000, func() { a.Feed(testFlow(i%300), 100, int64(i)*1e6); i++ }); n != 0 {
		t.Fatalf("%v allocs", n)
	}
}
