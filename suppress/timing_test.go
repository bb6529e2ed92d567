package suppress

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// stream generates the arrival times of a periodic sender seen through a jittery
// network. Tick i is ideal at t0 + i·period; the arrival adds jitter. The accuracy
// criterion of the tests is |prediction − ideal tick| where the ideal tick is the
// one the prediction is for, so a prediction one period off counts as a miss.
type stream struct {
	t0     int64
	period float64 // ns
	rng    *rand.Rand
	jitter func(r *rand.Rand) float64 // ns
}

func (s *stream) ideal(i int) int64 { return s.t0 + int64(math.Round(float64(i)*s.period)) }
func (s *stream) arrival(i int) int64 {
	return s.ideal(i) + int64(s.jitter(s.rng))
}

func gaussian(sigma time.Duration) func(*rand.Rand) float64 {
	return func(r *rand.Rand) float64 { return r.NormFloat64() * float64(sigma) }
}

func uniform(peak time.Duration) func(*rand.Rand) float64 {
	return func(r *rand.Rand) float64 { return (2*r.Float64() - 1) * float64(peak) }
}

func hz(f float64) float64 { return 1e9 / f }

// accuracy collects |prediction − ideal| and summarises it.
type accuracy struct{ errs []float64 }

func (a *accuracy) add(pred, ideal int64) { a.errs = append(a.errs, math.Abs(float64(pred-ideal))) }
func (a *accuracy) within(d time.Duration) float64 {
	n := 0
	for _, e := range a.errs {
		if e <= float64(d) {
			n++
		}
	}
	return float64(n) / float64(len(a.errs))
}
func (a *accuracy) quantile(q float64) time.Duration {
	s := slices.Clone(a.errs)
	slices.Sort(s)
	return time.Duration(s[int(q*float64(len(s)-1))])
}

// TestTimingSteady60Hz is the accuracy requirement: on a steady 60 Hz stream with
// 2 ms jitter, after lock, the prediction made on each packet's arrival for the
// next packet is within 1 ms of that packet's ideal tick for at least 99% of
// packets. Both readings of "2 ms jitter" are tested: Gaussian with σ = 2 ms (the
// harder one, with tails past 6 ms) and uniform within ±2 ms, each over a minute
// of traffic and 20 random seeds; every seed must meet the requirement.
func TestTimingSteady60Hz(t *testing.T) {
	for _, tc := range []struct {
		name    string
		jitter  func(*rand.Rand) float64
		maxLock int // packets
	}{
		{"gaussian-sigma-2ms", gaussian(2 * time.Millisecond), 180},
		{"uniform-2ms", uniform(2 * time.Millisecond), 90},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var all accuracy
			worst, worstLock := 1.0, 0
			for seed := uint64(0); seed < 20; seed++ {
				s := &stream{t0: 5e9, period: hz(60), rng: rand.New(rand.NewPCG(seed, 2)), jitter: tc.jitter}
				tm := NewTiming(TimingConfig{})
				var acc accuracy
				var unc []float64
				lockAt := -1
				const n = 60 * 60 // one minute
				for i := 0; i < n; i++ {
					ts := s.arrival(i)
					tm.Observe(ts)
					if !tm.Locked() {
						if lockAt >= 0 {
							t.Fatalf("seed %d: lost lock at packet %d", seed, i)
						}
						continue
					}
					if lockAt < 0 {
						lockAt = i
					}
					pred, ok := tm.Next(ts)
					if !ok {
						t.Fatalf("seed %d: locked but Next not ok at packet %d", seed, i)
					}
					acc.add(pred, s.ideal(i+1))
					unc = append(unc, float64(tm.Uncertainty()))
				}
				if lockAt < 0 || lockAt > tc.maxLock {
					t.Fatalf("seed %d: locked at packet %d, want within %d", seed, lockAt, tc.maxLock)
				}
				w := acc.within(time.Millisecond)
				if w < 0.99 {
					t.Fatalf("seed %d: only %.2f%% of predictions within 1ms, want >= 99%%", seed, 100*w)
				}
				if d := tm.Period() - time.Duration(hz(60)); d.Abs() > 10*time.Microsecond {
					t.Fatalf("seed %d: period %v, want %v ±10µs", seed, tm.Period(), time.Duration(hz(60)))
				}
				// The uncertainty estimate should be the right size: within a
				// factor of two of the measured 99th percentile.
				slices.Sort(unc)
				if u, p99 := unc[len(unc)/2], float64(acc.quantile(0.99)); u < p99/2 || u > 2*p99 {
					t.Fatalf("seed %d: median Uncertainty %v vs measured p99 %v", seed, time.Duration(u), time.Duration(p99))
				}
				worst = min(worst, w)
				worstLock = max(worstLock, lockAt)
				all.errs = append(all.errs, acc.errs...)
			}
			t.Logf("20 seeds × 1 min: within 1ms %.3f%% overall, worst seed %.3f%%; p50 %v p99 %v p99.9 %v; lock after <= %d packets",
				100*all.within(time.Millisecond), 100*worst, all.quantile(0.5), all.quantile(0.99), all.quantile(0.999), worstLock)
		})
	}
}

// TestTimingMissingPackets drops 10% of packets at random and, every 2 s, a run
// of 5 consecutive packets. The lock must hold, predictions made on arrivals must
// meet the same accuracy, and queries made during a gap must follow the rule of
// Next: a packet less than half a period late is still the one due.
func TestTimingMissingPackets(t *testing.T) {
	s := &stream{t0: 1e9, period: hz(60), rng: rand.New(rand.NewPCG(3, 4)), jitter: uniform(2 * time.Millisecond)}
	tm := NewTiming(TimingConfig{})
	var acc, gapAcc accuracy
	locked := false
	for i := 0; i < 60*60; i++ {
		lost := s.rng.Float64() < 0.1 || (i%120 >= 60 && i%120 < 65)
		if lost {
			if locked {
				// Query a quarter period after the missing tick: still due.
				pred, ok := tm.Next(s.ideal(i) + int64(s.period/4))
				if !ok {
					t.Fatalf("Next not ok during a gap at %d", i)
				}
				gapAcc.add(pred, s.ideal(i))
				// And 0.6 period after: now the next tick is due.
				pred, _ = tm.Next(s.ideal(i) + int64(0.6*s.period))
				gapAcc.add(pred, s.ideal(i+1))
			}
			continue
		}
		ts := s.arrival(i)
		tm.Observe(ts)
		if tm.Locked() {
			locked = true
		} else if locked {
			t.Fatalf("lost lock at packet %d", i)
		} else {
			continue
		}
		pred, _ := tm.Next(ts)
		acc.add(pred, s.ideal(i+1))
	}
	t.Logf("arrival predictions within 1ms: %.2f%% (p99 %v); gap predictions within 1ms: %.2f%% (max %v)",
		100*acc.within(time.Millisecond), acc.quantile(0.99), 100*gapAcc.within(time.Millisecond), gapAcc.quantile(1))
	if w := acc.within(time.Millisecond); w < 0.99 {
		t.Fatalf("arrival predictions within 1ms: %.2f%%, want >= 99%%", 100*w)
	}
	if w := gapAcc.within(time.Millisecond); w < 0.99 {
		t.Fatalf("gap predictions within 1ms: %.2f%%, want >= 99%%", 100*w)
	}
}

// TestTimingBursts holds back 4 packets every second and delivers them together
// (a stall on the path). The lock must hold and predictions made on packets that
// were not held must stay accurate.
func TestTimingBursts(t *testing.T) {
	s := &stream{t0: 1e9, period: hz(60), rng: rand.New(rand.NewPCG(5, 6)), jitter: uniform(2 * time.Millisecond)}
	tm := NewTiming(TimingConfig{})
	var acc accuracy
	locked := false
	for i := 0; i < 60*30; i++ {
		held := i%60 >= 56 // 56..59 held, released at tick 59 + 1 ms
		ts := s.arrival(i)
		if held {
			ts = s.ideal(59+i/60*60) + int64(time.Millisecond) + int64(i%60-56)*20_000
		}
		tm.Observe(ts)
		if tm.Locked() {
			locked = true
		} else if locked {
			t.Fatalf("lost lock at packet %d", i)
		} else {
			continue
		}
		if !held {
			pred, _ := tm.Next(ts)
			acc.add(pred, s.ideal(i+1))
		}
	}
	w := acc.within(time.Millisecond)
	t.Logf("within 1ms: %.2f%% (p99 %v)", 100*w, acc.quantile(0.99))
	if w < 0.99 {
		t.Fatalf("within 1ms: %.2f%%, want >= 99%%", 100*w)
	}
}

// relockAfter runs a stream at rate f1 for 10 s, switches to f2, and returns how
// long after the switch the estimator settled for good: locked, period within
// 1% of the new one, and predictions within 1 ms of the ideal tick for all of the
// remaining packets but 1%.
func relockAfter(t *testing.T, f1, f2 float64, jitter func(*rand.Rand) float64) time.Duration {
	t.Helper()
	rng := rand.New(rand.NewPCG(7, 8))
	a := &stream{t0: 1e9, period: hz(f1), rng: rng, jitter: jitter}
	tm := NewTiming(TimingConfig{})
	n1 := int(10 * f1)
	for i := 0; i < n1; i++ {
		tm.Observe(a.arrival(i))
	}
	if !tm.Locked() || math.Abs(float64(tm.Period())-hz(f1)) > 0.01*hz(f1) {
		t.Fatalf("not locked to %v Hz before the change: locked=%v period=%v", f1, tm.Locked(), tm.Period())
	}
	b := &stream{t0: a.ideal(n1) + int64(hz(f2)/3), period: hz(f2), rng: rng, jitter: jitter}
	n2 := int(10 * f2)
	type obs struct {
		good bool
		at   int64
	}
	res := make([]obs, n2)
	var acc accuracy
	for i := 0; i < n2; i++ {
		ts := b.arrival(i)
		tm.Observe(ts)
		pred, ok := tm.Next(ts)
		good := ok && math.Abs(float64(tm.Period())-hz(f2)) <= 0.01*hz(f2)
		if good {
			acc.add(pred, b.ideal(i+1))
			good = math.Abs(float64(pred-b.ideal(i+1))) <= float64(time.Millisecond)
		}
		res[i] = obs{good, b.ideal(i)}
	}
	// Settled: from here on, at least 99% good and the period right at the end.
	settle := n2
	bad := 0
	for i := n2 - 1; i >= 0; i-- {
		if !res[i].good {
			bad++
		}
		if float64(bad) <= 0.01*float64(n2-i) {
			settle = i
		}
	}
	if settle >= n2-int(f2) {
		t.Fatalf("never settled at %v Hz: period %v locked %v", f2, tm.Period(), tm.Locked())
	}
	return time.Duration(res[settle].at - b.t0)
}

func TestTimingRateChange(t *testing.T) {
	for _, tc := range []struct {
		name   string
		f1, f2 float64
		jitter func(*rand.Rand) float64
	}{
		{"60-to-128Hz", 60, 128, uniform(2 * time.Millisecond)},
		{"128-to-60Hz", 128, 60, uniform(2 * time.Millisecond)},
		{"60-to-128Hz-gaussian-1ms", 60, 128, gaussian(time.Millisecond)},
		// Halving is the hard case: the old grid still fits with every second
		// tick empty, so only the subharmonic check notices.
		{"120-to-60Hz", 120, 60, uniform(2 * time.Millisecond)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := relockAfter(t, tc.f1, tc.f2, tc.jitter)
			t.Logf("settled %v after the change", d)
			if d > 2*time.Second {
				t.Fatalf("settled %v after the change, want <= 2s", d)
			}
		})
	}
}

// TestTimingSilence: after MaxGap without packets Next stops predicting, and a
// resumed stream (another phase) is learned afresh.
func TestTimingSilence(t *testing.T) {
	s := &stream{t0: 1e9, period: hz(60), rng: rand.New(rand.NewPCG(9, 10)), jitter: uniform(time.Millisecond)}
	tm := NewTiming(TimingConfig{MaxGap: 500 * time.Millisecond})
	var last int64
	for i := 0; i < 120; i++ {
		last = s.arrival(i)
		tm.Observe(last)
	}
	if _, ok := tm.Next(last + int64(400*time.Millisecond)); !ok {
		t.Fatal("Next not ok 400ms after the last packet (MaxGap 500ms)")
	}
	if _, ok := tm.Next(last + int64(600*time.Millisecond)); ok {
		t.Fatal("Next ok 600ms after the last packet (MaxGap 500ms)")
	}
	s2 := &stream{t0: last + int64(3*time.Second) + 7e6, period: hz(60), rng: s.rng, jitter: uniform(time.Millisecond)}
	tm.Observe(s2.arrival(0))
	if tm.Locked() {
		t.Fatal("still locked on the first packet after a long silence")
	}
	var ts int64
	for i := 1; i < 60; i++ {
		ts = s2.arrival(i)
		tm.Observe(ts)
	}
	pred, ok := tm.Next(ts)
	if !ok || math.Abs(float64(pred-s2.ideal(60))) > float64(time.Millisecond) {
		t.Fatalf("after resuming: Next = %d, %v; want %d ±1ms", pred, ok, s2.ideal(60))
	}
}

// TestTimingIrregularDoesNotLock: random (Poisson) arrivals have no period and
// must not produce predictions.
func TestTimingIrregularDoesNotLock(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	tm := NewTiming(TimingConfig{})
	ts := int64(1e9)
	lockedN := 0
	for i := 0; i < 2000; i++ {
		ts += int64(rng.ExpFloat64() * 20e6)
		tm.Observe(ts)
		if tm.Locked() {
			lockedN++
		}
	}
	if lockedN > 100 {
		t.Fatalf("locked on %d of 2000 Poisson arrivals", lockedN)
	}
}

func TestTimingNoAllocs(t *testing.T) {
	s := &stream{t0: 1e9, period: hz(60), rng: rand.New(rand.NewPCG(1, 1)), jitter: uniform(2 * time.Millisecond)}
	ts := make([]int64, 4096)
	for i := range ts {
		ts[i] = s.arrival(i)
	}
	tm := NewTiming(TimingConfig{})
	i := 0
	if n := testing.AllocsPerRun(1000, func() {
		tm.Observe(ts[i%len(ts)])
		_, _ = tm.Next(ts[i%len(ts)])
		i++
	}); n != 0 {
		t.Fatalf("Observe+Next allocate %v times per call", n)
	}
	if !tm.Locked() {
		t.Fatal("not locked after 1000 packets")
	}
}

func BenchmarkTimingObserve(b *testing.B) {
	s := &stream{t0: 1e9, period: hz(60), rng: rand.New(rand.NewPCG(1, 1)), jitter: uniform(2 * time.Millisecond)}
	ts := make([]int64, 1<<16)
	for i := range ts {
		ts[i] = s.arrival(i)
	}
	tm := NewTiming(TimingConfig{})
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i == len(ts) {
			tm.Reset()
			i = 0
		}
		tm.Observe(ts[i])
		i++
	}
}

func BenchmarkTimingNext(b *testing.B) {
	s := &stream{t0: 1e9, period: hz(60), rng: rand.New(rand.NewPCG(1, 1)), jitter: uniform(2 * time.Millisecond)}
	tm := NewTiming(TimingConfig{})
	var last int64
	for i := 0; i < 600; i++ {
		last = s.arrival(i)
		tm.Observe(last)
	}
	b.ReportAllocs()
	var sink int64
	for b.Loop() {
		v, _ := tm.Next(last + 3e6)
		sink += v
	}
	_ = sink
}

// TestTimingGridAndBackwards: Grid describes the same ticks Next returns, and a
// timestamp that goes backwards is ignored.
func TestTimingGridAndBackwards(t *testing.T) {
	s := &stream{t0: 1e9, period: hz(128), rng: rand.New(rand.NewPCG(13, 14)), jitter: uniform(500 * time.Microsecond)}
	tm := NewTiming(TimingConfig{})
	if _, _, ok := tm.Grid(); ok {
		t.Fatal("Grid ok before any packet")
	}
	var ts int64
	for i := 0; i < 256; i++ {
		ts = s.arrival(i)
		tm.Observe(ts)
	}
	anchor, period, ok := tm.Grid()
	if !ok {
		t.Fatal("not locked")
	}
	for k := int64(1); k <= 5; k++ {
		// Just under half a period before tick k, tick k is the one due
		// (1 µs clear of the boundary: Grid rounds the period to 1 ns).
		now := anchor + (2*k-1)*int64(period)/2 + int64(time.Microsecond)
		got, _ := tm.Next(now)
		if d := got - (anchor + k*int64(period)); d < -int64(time.Microsecond) || d > int64(time.Microsecond) {
			t.Fatalf("Next(%d) = %d, Grid says %d", now, got, anchor+k*int64(period))
		}
	}
	before, _ := tm.Next(ts)
	tm.Observe(ts - int64(time.Second))
	if after, _ := tm.Next(ts); after != before || !tm.Locked() {
		t.Fatalf("a timestamp 1s in the past changed the prediction: %d -> %d", before, after)
	}
}
