package suppress

import (
	"strings"
	"testing"
	"time"
)

// rig drives a Controller with a fake clock: one sample every 100 ms on uplink
// "wan" (20 Mbit/s up, 100 Mbit/s down), direction Up.
type rig struct {
	t   *testing.T
	c   *Controller
	now int64
	evs []Event
}

const tick = 100 * time.Millisecond

func newRig(t *testing.T, mutate func(*Config)) *rig {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Uplinks = []UplinkConfig{{Name: "wan", UpBitsPerSec: 20_000_000, DownBitsPerSec: 100_000_000}}
	if mutate != nil {
		mutate(&cfg)
	}
	c, err := NewController(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &rig{t: t, c: c, now: int64(time.Hour)}
}

// calm is a sample of a link with a shooter running and nothing else: 10%
// utilisation, RTT at its 12 ms baseline, flat one-way delay, no loss.
func calm() Sample {
	return Sample{
		LCPresent:   map[string]bool{"shooter": true},
		BytesPerSec: 250_000, // 2 Mbit/s of 20
		RTT:         12 * time.Millisecond,
		HasQuality:  true,
		OWD:         30 * time.Millisecond,
		Jitter:      time.Millisecond,
	}
}

// feed sends s at the rig's time, then advances the clock by one tick.
func (r *rig) feed(s Sample) (Policy, *Event) {
	r.t.Helper()
	if s.Uplink == "" {
		s.Uplink = "wan"
	}
	s.Now = r.now
	p, ev, err := r.c.Update(s)
	if err != nil {
		r.t.Fatal(err)
	}
	if ev != nil {
		r.evs = append(r.evs, *ev)
		r.t.Logf("t=%v %v", time.Duration(r.now-int64(time.Hour)), ev)
		if ev.At != r.now || ev.Uplink != s.Uplink || ev.Dir != s.Dir {
			r.t.Fatalf("event %+v does not match its sample", ev)
		}
	}
	r.now += int64(tick)
	return p, ev
}

// run feeds n samples made by f(i) and returns the last policy.
func (r *rig) run(n int, f func(i int) Sample) Policy {
	var p Policy
	for i := 0; i < n; i++ {
		p, _ = r.feed(f(i))
	}
	return p
}

func (r *rig) level() Level { return r.c.Level("wan", Up) }

func TestLCPresenceAndLinger(t *testing.T) {
	r := newRig(t, nil)
	s := calm()
	s.LCPresent = nil
	if p, ev := r.feed(s); p.Level != Off || ev != nil {
		t.Fatalf("no LC traffic: %+v %v", p, ev)
	}
	p, ev := r.feed(calm())
	if p.Level != Watch || ev == nil || ev.From != Off || ev.To != Watch || !strings.Contains(ev.Reason, "shooter") {
		t.Fatalf("LC appears: policy %+v event %v (Watch at once)", p, ev)
	}
	if !p.DSCPRewrite || p.ECN || p.BulkRateBytesPerSec != 0 {
		t.Fatalf("Watch policy = %+v", p)
	}
	// The shooter stops; its linger is 10 s.
	linger := DefaultApps()["shooter"].Linger
	s.LCPresent = map[string]bool{"shooter": false}
	stopped := r.now - int64(tick)
	for r.now-stopped <= int64(linger) {
		if _, ev := r.feed(s); ev != nil {
			t.Fatalf("level changed during the linger: %v", ev)
		}
	}
	if _, ev := r.feed(s); ev == nil || ev.To != Off {
		t.Fatalf("after the linger: event %v, want -> off", ev)
	}

	// voip lingers 3 s: a different app type, a different linger.
	r.feed(Sample{LCPresent: map[string]bool{"voip": true}})
	start := r.now
	for r.level() != Off {
		r.feed(Sample{})
	}
	if got := time.Duration(r.now - start); got < 3*time.Second || got > 3*time.Second+2*tick {
		t.Fatalf("voip went off after %v, want ~3s", got)
	}
}

// TestDetectorsEachRaise checks each detector on its own: one signal, the rest
// calm, and the level it must lead to. Reasons must name the detector.
func TestDetectorsEachRaise(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mod    func(i int, s *Sample)
		want   Level
		reason string
	}{
		{"utilisation", func(_ int, s *Sample) { s.BytesPerSec = 2_300_000 }, Shape, "up utilisation 92% of 20Mbit/s (shape threshold 85%)"},
		{"utilisation below threshold", func(_ int, s *Sample) { s.BytesPerSec = 2_000_000 }, Watch, ""},
		{"rtt shape", func(_ int, s *Sample) { s.RTT = 30 * time.Millisecond }, Shape, "rtt +18.0ms over baseline 12.0ms (shape threshold 15ms)"},
		{"rtt cut", func(_ int, s *Sample) { s.RTT = 50 * time.Millisecond }, Cut, "rtt +38.0ms over baseline 12.0ms (cut threshold 40ms)"},
		{"owd trend", func(i int, s *Sample) { s.OWD = 30*time.Millisecond + time.Duration(i)*time.Millisecond }, Shape, "(shape threshold 5ms/s)"},
		{"jitter", func(_ int, s *Sample) { s.Jitter = 12 * time.Millisecond }, Shape, "jitter 12.0ms (shape threshold 10ms)"},
		{"loss shape", func(_ int, s *Sample) { s.Loss = 0.015 }, Shape, "loss 1.50% (shape threshold 1%)"},
		{"loss cut", func(_ int, s *Sample) { s.Loss = 0.05 }, Cut, "loss 5.00% (cut threshold 3%)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, func(c *Config) {
				// Cut at rtt +38 ms to match the example reason.
				c.Detect.RTTInflation.Cut = Threshold{Raise: 35, Lower: 20}
			})
			if strings.HasPrefix(tc.name, "rtt cut") {
				tc.reason = "rtt +38.0ms over baseline 12.0ms (cut threshold 35ms)"
			}
			r.run(50, func(int) Sample { return calm() }) // baseline and Watch
			if r.level() != Watch {
				t.Fatalf("calm: level %v", r.level())
			}
			r.evs = nil
			r.run(30, func(i int) Sample { s := calm(); tc.mod(i, &s); return s })
			if r.level() != tc.want {
				t.Fatalf("level %v, want %v", r.level(), tc.want)
			}
			if tc.want == Watch {
				if len(r.evs) != 0 {
					t.Fatalf("events below threshold: %v", r.evs)
				}
				return
			}
			last := r.evs[len(r.evs)-1]
			if !strings.Contains(last.Reason, tc.reason) {
				t.Fatalf("reason %q does not contain %q", last.Reason, tc.reason)
			}
		})
	}
}

// TestRaiseNeedsTwoSamples: one bad sample alone does not raise; two within
// the raise window do, even if not consecutive.
func TestRaiseNeedsTwoSamples(t *testing.T) {
	r := newRig(t, nil)
	r.run(50, func(int) Sample { return calm() })
	spike := calm()
	spike.Loss = 0.1
	r.feed(spike)
	r.run(5, func(int) Sample { return calm() })
	if r.level() != Watch {
		t.Fatalf("one spike raised the level to %v", r.level())
	}
	r.feed(spike)
	r.feed(calm())
	if r.level() != Watch {
		t.Fatalf("level %v after the first of two spikes", r.level())
	}
	r.feed(spike)
	if r.level() != Cut {
		t.Fatalf("level %v after two spikes within the window, want cut", r.level())
	}
}

// TestNoFlapping: signals oscillating around a threshold (or between the
// thresholds, or across both every sample) produce at most one raise and no
// lowering, and the level never changes more than the hysteresis allows.
func TestNoFlapping(t *testing.T) {
	for _, tc := range []struct {
		name string
		rtt  func(i int) time.Duration
		want Level
	}{
		// Around the shape raise threshold (15 ms inflation): raises once.
		{"around-raise", func(i int) time.Duration { return time.Duration(12+15+(i%2)*2-1) * time.Millisecond }, Shape},
		// Between lower (8) and raise (15): never raises.
		{"between", func(i int) time.Duration { return time.Duration(12+9+(i%2)*5) * time.Millisecond }, Watch},
		// Across both thresholds every sample (5 ↔ 18): raises once, holds.
		{"across-both", func(i int) time.Duration { return time.Duration(12+5+(i%2)*13) * time.Millisecond }, Shape},
		// Once at cut, between the cut thresholds (20 and 40): stays at cut.
		{"between-cut-thresholds", func(i int) time.Duration {
			if i < 10 {
				return 60 * time.Millisecond
			}
			return time.Duration(12+21+(i%2)*15) * time.Millisecond
		}, Cut},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, nil)
			r.run(50, func(int) Sample { return calm() })
			r.evs = nil
			r.run(600, func(i int) Sample { s := calm(); s.RTT = tc.rtt(i); return s }) // 60 s
			if r.level() != tc.want {
				t.Fatalf("level %v, want %v", r.level(), tc.want)
			}
			if tc.want == Watch && len(r.evs) != 0 || tc.want != Watch && len(r.evs) != 1 {
				t.Fatalf("%d events over 60 s: %v", len(r.evs), r.evs)
			}
		})
	}
}

// TestHoldsRespected: after the signal clears, the level steps down one level
// at a time, each step no earlier than MinHold after the level began and
// HoldDown after the signal cleared; a relapse during the hold restarts it.
func TestHoldsRespected(t *testing.T) {
	r := newRig(t, func(c *Config) {
		c.Levels.MinHold = 4 * time.Second
		c.Levels.HoldDown = 2 * time.Second
	})
	r.run(50, func(int) Sample { return calm() })
	bad := calm()
	bad.RTT = 70 * time.Millisecond
	r.run(3, func(int) Sample { return bad })
	if r.level() != Cut {
		t.Fatalf("level %v, want cut", r.level())
	}
	cutAt := r.evs[len(r.evs)-1].At
	// Clear after 1 s at cut: the step down waits for MinHold (4 s from the
	// raise), not just HoldDown (2 s from the clearing).
	r.run(7, func(int) Sample { return bad })
	r.evs = nil
	for r.level() == Cut {
		r.feed(calm())
		if r.now-cutAt > int64(10*time.Second) {
			t.Fatal("never left cut")
		}
	}
	first := r.evs[0]
	if first.To != Shape || first.At-cutAt < int64(4*time.Second) || first.At-cutAt > int64(4*time.Second+tick) {
		t.Fatalf("first step %v at +%v after cut, want cut->shape at +4s", first, time.Duration(first.At-cutAt))
	}
	if !strings.Contains(first.Reason, "nothing asked for cut") || !strings.Contains(first.Reason, "cut lower threshold 20ms") {
		t.Fatalf("lowering reason %q", first.Reason)
	}
	// A relapse 1 s into the next hold restarts it.
	r.run(10, func(int) Sample { return calm() })
	relapse := calm()
	relapse.RTT = 30 * time.Millisecond // shape, not cut
	r.feed(relapse)
	relapseAt := r.now - int64(tick)
	r.feed(relapse)
	if r.level() != Shape {
		t.Fatalf("level %v after relapse, want shape", r.level())
	}
	// The RTT trigger is now on; it turns off only at or below 8 ms inflation.
	for r.level() == Shape {
		r.feed(calm())
		if r.now-relapseAt > int64(20*time.Second) {
			t.Fatal("never left shape")
		}
	}
	last := r.evs[len(r.evs)-1]
	if last.To != Watch {
		t.Fatalf("last event %v", last)
	}
	// Cleared right after the relapse (next sample): HoldDown 2 s from there,
	// but MinHold 4 s from the cut->shape step wins.
	if d := time.Duration(last.At - first.At); d < 4*time.Second {
		t.Fatalf("shape lasted %v, MinHold is 4s", d)
	}
	if d := time.Duration(last.At - relapseAt); d < 2*time.Second {
		t.Fatalf("lowered %v after the relapse, HoldDown is 2s", d)
	}
}

func TestAppLimitsInController(t *testing.T) {
	r := newRig(t, func(c *Config) {
		c.Apps["racing"] = AppLimits{MaxLevel: Shape, MaxDropFraction: 0, Linger: time.Second}
	})
	s := calm()
	s.LCPresent = map[string]bool{"racing": true}
	r.run(50, func(int) Sample { return s })
	s.RTT = 100 * time.Millisecond
	p := r.run(20, func(int) Sample { return s })
	if p.Level != Shape || p.DropFraction != 0 {
		t.Fatalf("racing (max shape) under heavy inflation: %+v", p)
	}

	// voip: drop fraction grows with persistence, capped at 20%.
	r = newRig(t, nil)
	s = calm()
	s.LCPresent = map[string]bool{"voip": true}
	r.run(50, func(int) Sample { return s })
	s.RTT = 100 * time.Millisecond
	p = r.run(2, func(int) Sample { return s })
	if p.Level != Cut || p.DropFraction != 0.1 {
		t.Fatalf("voip at first cut: %+v", p)
	}
	p = r.run(100, func(int) Sample { return s })
	if p.DropFraction != 0.2 || p.Cutoff {
		t.Fatalf("voip after 10 s of cut: %+v, want drop 0.2 and no cutoff", p)
	}
	// shooter: may cut bulk entirely.
	s.LCPresent = map[string]bool{"shooter": true}
	p = r.run(100, func(int) Sample { return s })
	if p.DropFraction != 1 || !p.Cutoff || p.TReserve != ReserveTime(500*time.Microsecond, 12000, 20_000_000) {
		t.Fatalf("shooter after 10 s of cut: %+v", p)
	}
}

func TestEnforceOffStillDetects(t *testing.T) {
	r := newRig(t, func(c *Config) { c.Uplinks[0].Enforce = "down" })
	p := r.run(10, func(int) Sample { return calm() })
	if p != (Policy{}) || r.level() != Watch {
		t.Fatalf("up with enforce=down: policy %+v level %v", p, r.level())
	}
	s := calm()
	s.Dir = Down
	if p, _ := r.feed(s); p.Level != Watch {
		t.Fatalf("down policy %+v", p)
	}
	if _, _, err := r.c.Update(Sample{Uplink: "nope"}); err == nil {
		t.Fatal("unknown uplink accepted")
	}
}

// TestScenario: a calm game session; a download starts (utilisation high, RTT
// inflating); the level rises to Cut within 10 samples; the download stops and
// the level falls back step by step after the holds.
func TestScenario(t *testing.T) {
	r := newRig(t, nil)
	// 10 s calm.
	r.run(100, func(int) Sample { return calm() })
	if r.level() != Watch || len(r.evs) != 1 {
		t.Fatalf("calm: level %v events %v", r.level(), r.evs)
	}
	// Download: uplink saturated at once, RTT climbing 5 ms per sample to
	// +80 ms, OWD rising with it.
	start := r.now
	dl := func(i int) Sample {
		s := calm()
		s.BytesPerSec = 2_480_000
		infl := min(5*(i+1), 80)
		s.RTT = time.Duration(12+infl) * time.Millisecond
		s.OWD = time.Duration(30+infl) * time.Millisecond
		s.Jitter = 4 * time.Millisecond
		return s
	}
	cutAfter := -1
	for i := 0; i < 100; i++ {
		p, _ := r.feed(dl(i))
		if p.Level == Cut && cutAfter < 0 {
			cutAfter = i + 1
			if p.DropFraction <= 0 || p.BulkRateBytesPerSec == 0 || !p.ECN || !p.Cutoff {
				t.Fatalf("cut policy %+v", p)
			}
		}
	}
	if cutAfter < 0 || cutAfter > 10 {
		t.Fatalf("reached cut after %d samples, want <= 10", cutAfter)
	}
	t.Logf("cut after %d samples (%v)", cutAfter, time.Duration(cutAfter)*tick)
	if got := r.evs[1]; got.From != Watch || got.To != Shape || !strings.Contains(got.Reason, "utilisation") {
		t.Fatalf("first raise %v, want watch->shape for utilisation", got)
	}
	if n := len(r.evs); n != 3 {
		t.Fatalf("%d events during 10 s of download, want 3: %v", n, r.evs)
	}
	_ = start
	// Download stops.
	stop := r.now
	r.run(200, func(int) Sample { return calm() })
	if r.level() != Watch {
		t.Fatalf("20 s after the download: level %v", r.level())
	}
	evs := r.evs[3:]
	if len(evs) != 2 || evs[0].To != Shape || evs[1].To != Watch {
		t.Fatalf("after the download: %v", evs)
	}
	lc := DefaultConfig().Levels
	if d := time.Duration(evs[0].At - stop); d < lc.HoldDown || d > lc.HoldDown+2*tick {
		t.Fatalf("cut->shape %v after the download stopped, want ~%v", d, lc.HoldDown)
	}
	if d := time.Duration(evs[1].At - evs[0].At); d < lc.MinHold || d > lc.MinHold+tick {
		t.Fatalf("shape->watch %v after cut->shape, want ~%v", d, lc.MinHold)
	}
	// The history holds the same events, oldest first.
	hist := r.c.Events(nil)
	if len(hist) != len(r.evs) || hist[0] != r.evs[0] || hist[len(hist)-1] != r.evs[len(r.evs)-1] {
		t.Fatalf("Events() = %v, want %v", hist, r.evs)
	}
}

func TestEventLogBounded(t *testing.T) {
	r := newRig(t, nil)
	on := calm()
	off := calm()
	off.LCPresent = nil
	for i := 0; i < 100; i++ {
		r.feed(on)
		r.now += int64(11 * time.Second) // past the linger
		r.feed(off)
	}
	hist := r.c.Events(nil)
	if len(hist) != eventLog {
		t.Fatalf("history holds %d events, want %d", len(hist), eventLog)
	}
	if hist[len(hist)-1] != r.evs[len(r.evs)-1] || hist[0] != r.evs[len(r.evs)-eventLog] {
		t.Fatal("history is not the most recent events in order")
	}
}

func BenchmarkControllerUpdate(b *testing.B) {
	cfg := DefaultConfig()
	cfg.Uplinks = []UplinkConfig{{Name: "wan", UpBitsPerSec: 20_000_000, DownBitsPerSec: 100_000_000}}
	c, err := NewController(cfg)
	if err != nil {
		b.Fatal(err)
	}
	s := calm()
	s.Uplink = "wan"
	now := int64(time.Hour)
	b.ReportAllocs()
	for b.Loop() {
		s.Now = now
		c.Update(s)
		now += int64(tick)
	}
}

// TestControllerConcurrentReads: policies and events are read by other
// goroutines (HTTP status, map writer) while samples arrive; run with -race.
func TestControllerConcurrentReads(t *testing.T) {
	r := newRig(t, nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var buf []Event
		for i := 0; i < 2000; i++ {
			r.c.Policy("wan", Up)
			r.c.Level("wan", Down)
			buf = r.c.Events(buf[:0])
		}
	}()
	s := calm()
	s.Uplink = "wan"
	now := int64(time.Hour)
	for i := 0; i < 2000; i++ {
		s.Now = now
		s.Loss = float64(i%40) / 400 // crosses thresholds now and then
		if _, _, err := r.c.Update(s); err != nil {
			t.Fatal(err)
		}
		now += int64(tick)
	}
	<-done
	if r.c.Level("wan", Up) == Off {
		t.Fatal("level off with LC present")
	}
}

// owdSample is calm() with one-way measurements of its direction: queue is its
// queueing delay over the minimum.
func owdSample(d Direction, queue time.Duration) Sample {
	s := calm()
	s.Dir = d
	s.RTT = 0
	s.HasOWD = true
	s.QueueDelay = queue
	s.OWD = 20*time.Millisecond + queue
	return s
}

// TestQueueDelayPerDirection: each direction is judged by its own queueing
// delay, against owd_inflation_ms, and the reason names that direction's
// measurement; the RTT, which crosses both queues, is ignored meanwhile.
func TestQueueDelayPerDirection(t *testing.T) {
	r := newRig(t, nil)
	both := func(up, down time.Duration) {
		r.feed(owdSample(Up, up))
		r.now -= int64(tick) // both directions sampled at the same instant
		s := owdSample(Down, down)
		s.RTT = 100 * time.Millisecond // ignored: the sample has HasOWD
		r.feed(s)
	}
	for i := 0; i < 50; i++ {
		both(time.Millisecond, 500*time.Microsecond)
	}
	if r.level() != Watch || r.c.Level("wan", Down) != Watch {
		t.Fatalf("calm: up %v down %v", r.level(), r.c.Level("wan", Down))
	}
	// An upload queue of 12 ms: Up to Shape, Down untouched.
	r.evs = nil
	for i := 0; i < 10; i++ {
		both(12*time.Millisecond, 500*time.Microsecond)
	}
	if r.level() != Shape || r.c.Level("wan", Down) != Watch || len(r.evs) != 1 {
		t.Fatalf("upload queue: up %v down %v events %v", r.level(), r.c.Level("wan", Down), r.evs)
	}
	if want := "up queueing delay 12.0ms over the minimum (shape threshold 8ms)"; !strings.Contains(r.evs[0].Reason, want) {
		t.Fatalf("reason %q does not contain %q", r.evs[0].Reason, want)
	}
	// A download queue of 35 ms: Down to Cut, Up stays at Shape.
	r.evs = nil
	for i := 0; i < 10; i++ {
		both(12*time.Millisecond, 35*time.Millisecond)
	}
	if r.level() != Shape || r.c.Level("wan", Down) != Cut || len(r.evs) != 1 {
		t.Fatalf("download queue: up %v down %v events %v", r.level(), r.c.Level("wan", Down), r.evs)
	}
	if want := "down queueing delay 35.0ms over the minimum (cut threshold 30ms)"; !strings.Contains(r.evs[0].Reason, want) {
		t.Fatalf("reason %q does not contain %q", r.evs[0].Reason, want)
	}
	// Both queues drain: the levels step down after the holds, and the
	// lowering names the direction's delay against the lower threshold.
	r.evs = nil
	for i := 0; i < 200; i++ {
		both(time.Millisecond, time.Millisecond)
	}
	if r.level() != Watch || r.c.Level("wan", Down) != Watch {
		t.Fatalf("drained: up %v down %v", r.level(), r.c.Level("wan", Down))
	}
	var lowered bool
	for _, ev := range r.evs {
		if ev.Dir == Down && ev.From == Cut {
			lowered = strings.Contains(ev.Reason, "down queueing delay 1.0ms over the minimum (cut lower threshold 12ms)")
		}
	}
	if !lowered {
		t.Fatalf("no cut lowering naming the down queueing delay: %v", r.evs)
	}
}

// TestQueueDelaySupersedesRTT: a level raised on RTT inflation (before one-way
// samples existed) is not held by that stale verdict once one-way samples
// arrive and show no queue in this direction.
func TestQueueDelaySupersedesRTT(t *testing.T) {
	r := newRig(t, nil)
	r.run(50, func(int) Sample { return calm() })
	bad := calm()
	bad.RTT = 35 * time.Millisecond // +23 ms: shape
	r.run(5, func(int) Sample { return bad })
	if r.level() != Shape {
		t.Fatalf("rtt inflation: level %v", r.level())
	}
	start := r.now
	for r.level() == Shape {
		s := owdSample(Up, time.Millisecond)
		if r.now-start > int64(10*time.Second) {
			t.Fatal("the RTT verdict still holds the level")
		}
		r.feed(s)
	}
	// A sample without either delay keeps the queue detector's verdict.
	r.run(20, func(int) Sample { s := owdSample(Up, 20*time.Millisecond); return s })
	r.run(100, func(int) Sample { s := calm(); s.RTT = 0; s.HasQuality = false; return s })
	if r.level() != Shape {
		t.Fatalf("level %v without fresh delays, want shape held", r.level())
	}
}

// capLoop closes the loop the way the link does: bulk wants demand bytes/s and
// gets it, unless the policy in force caps it, in which case it sits at fill
// (a fraction) of the cap; LC adds lc bytes/s. It runs n samples and returns
// the policies' levels.
func (r *rig) capLoop(n int, demand, lc uint64, fill float64, pol *Policy) {
	for i := 0; i < n; i++ {
		bulk := demand
		if pol.BulkRateBytesPerSec > 0 {
			bulk = min(demand, uint64(fill*float64(pol.BulkRateBytesPerSec)))
		}
		s := calm()
		s.BytesPerSec = bulk + lc
		*pol, _ = r.feed(s)
	}
}

// TestUtilisationAgainstTheCap: while a bulk cap is in force, utilisation is
// judged against it, so a link kept full up to the cap stays at Shape instead
// of dropping to Watch, refilling and coming back; once bulk really stops the
// level lowers after hold_down.
func TestUtilisationAgainstTheCap(t *testing.T) {
	const line = 20_000_000 / 8 // bytes/s
	const lc = 5_000            // a shooter's 40 kbit/s
	for _, tc := range []struct {
		name  string
		share float64
	}{
		// 93% of the cap is ~88% of the line: above the raise threshold
		// even against the line.
		{"shape_share 0.95", 0.95},
		// 93% of the cap is 65% of the line: below the lower threshold
		// (70%) against the line, which made the level flap.
		{"shape_share 0.7", 0.7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, func(c *Config) { c.Levels.ShapeShare = tc.share })
			var pol Policy
			r.capLoop(10, 0, lc, 0.93, &pol) // calm, LC present: Watch
			// Bulk wants the whole line; the cap holds it at 93% of the cap.
			r.capLoop(20, line, lc, 0.93, &pol)
			if r.level() != Shape || pol.BulkRateBytesPerSec == 0 {
				t.Fatalf("bulk at line rate: level %v policy %+v", r.level(), pol)
			}
			r.evs = nil
			r.capLoop(600, line, lc, 0.93, &pol) // 60 s
			if len(r.evs) != 0 || r.level() != Shape {
				t.Fatalf("level changed while bulk sat at 93%% of the cap: %v", r.evs)
			}
			// Bulk drops to 5% of the line: the level lowers after hold_down
			// (min_hold has long passed).
			drop := r.now
			r.capLoop(60, line/20, lc, 0.93, &pol)
			if r.level() != Watch || len(r.evs) != 1 {
				t.Fatalf("after bulk stopped: level %v events %v", r.level(), r.evs)
			}
			hd := DefaultConfig().Levels.HoldDown
			if d := time.Duration(r.evs[0].At - drop); d < hd || d > hd+2*tick {
				t.Fatalf("lowered %v after bulk stopped, want ~%v", d, hd)
			}
			if want := "Mbit/s bulk cap (shape lower threshold 70%)"; !strings.Contains(r.evs[0].Reason, want) {
				t.Fatalf("lowering reason %q, want the utilisation of the cap", r.evs[0].Reason)
			}
		})
	}
}

func TestUtilReference(t *testing.T) {
	var none appSet
	cloud := appSet{}
	cloud.add(DefaultApps()["cloud"]) // reserves 1 Mbit/s up, 30 Mbit/s down
	for _, tc := range []struct {
		name   string
		rate   uint64
		d      Direction
		cap    uint64 // bytes/s
		apps   *appSet
		want   uint64
		capped bool
	}{
		{"no cap: the line", 100e6, Down, 0, &cloud, 100e6, false},
		{"cap alone", 20e6, Up, 1_750_000, &none, 14e6, true},
		// 0.7 × (100 − 30) = 49 Mbit/s for bulk, plus the 30 reserved.
		{"cap and reserve", 100e6, Down, 49e6 / 8, &cloud, 79e6, true},
		// The reserve counts only up to half the line, as in the cap.
		{"reserve bounded", 40e6, Down, 14e6 / 8, &cloud, 34e6, true},
	} {
		p := Policy{BulkRateBytesPerSec: tc.cap}
		if got, capped := utilReference(tc.rate, tc.d, &p, tc.apps); got != tc.want || capped != tc.capped {
			t.Errorf("%s: %v %v, want %v %v", tc.name, got, capped, tc.want, tc.capped)
		}
	}
}
