package linkem

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
)

const ms = int64(time.Millisecond)

func mustLink(t *testing.T, s string) *Link {
	t.Helper()
	c, err := ParseConfig(s)
	if err != nil {
		t.Fatal(err)
	}
	l, err := New(c, 0)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestBernoulliLoss(t *testing.T) {
	for seed := 1; seed <= 3; seed++ {
		l := mustLink(t, "loss=5%,seed="+strconv.Itoa(seed))
		const n = 100000
		for i := 0; i < n; i++ {
			l.Decide(int64(i)*ms, 100)
		}
		s := l.Stats()
		got := float64(s.DropLoss) / n * 100
		if math.Abs(got-5) > 0.5 {
			t.Errorf("seed %d: loss %.3f%%, want 5%% ±0.5", seed, got)
		}
		if s.In != n || s.Out+s.DropLoss != n {
			t.Errorf("counters inconsistent: %+v", s)
		}
		t.Logf("seed %d: measured loss %.3f%%", seed, got)
	}
}

func TestSeedReproduces(t *testing.T) {
	a, b := mustLink(t, "loss=30%,jitter=5ms,reorder,seed=42"), mustLink(t, "loss=30%,jitter=5ms,reorder,seed=42")
	for i := 0; i < 10000; i++ {
		da, na, ca := a.Decide(int64(i)*ms, 100)
		db, nb, cb := b.Decide(int64(i)*ms, 100)
		if da != db || na != nb || ca != cb {
			t.Fatalf("packet %d differs with the same seed", i)
		}
	}
}

func TestFixedDelay(t *testing.T) {
	l := mustLink(t, "delay=20ms")
	for i := 0; i < 1000; i++ {
		now := int64(i) * 137 * int64(time.Microsecond)
		deps, n, c := l.Decide(now, 100)
		if c != Delivered || n != 1 || deps[0]-now != 20*ms {
			t.Fatalf("packet %d: cause %v n %d delay %v", i, c, n, time.Duration(deps[0]-now))
		}
	}
}

func TestOutageWindow(t *testing.T) {
	l := mustLink(t, "outage=8s-10s,outage=15s-15.5s")
	in := func(rel int64) bool {
		return (rel >= 8000*ms && rel < 10000*ms) || (rel >= 15000*ms && rel < 15500*ms)
	}
	var inside int
	for i := int64(0); i < 20000; i++ {
		now := i * ms
		_, _, c := l.Decide(now, 100)
		if in(now) != (c == DropOutage) {
			t.Fatalf("at %v: cause %v", time.Duration(now), c)
		}
		if in(now) {
			inside++
		}
	}
	if s := l.Stats(); s.DropOutage != uint64(inside) || s.Out != uint64(20000-inside) {
		t.Fatalf("stats %+v, want %d outage drops", s, inside)
	}
}

func TestOutageRelativeToStart(t *testing.T) {
	c, _ := ParseConfig("outage=1s-2s")
	start := int64(5000) * ms
	l, _ := New(c, start)
	if _, _, cause := l.Decide(start+1500*ms, 1); cause != DropOutage {
		t.Fatal("no drop inside the window counted from start")
	}
	if _, _, cause := l.Decide(start+2000*ms, 1); cause != Delivered {
		t.Fatal("drop at the window's exclusive end")
	}
}

func measureGE(t *testing.T, l *Link, n int) (loss, burst float64) {
	t.Helper()
	var lost, bursts, run int
	for i := 0; i < n; i++ {
		_, _, c := l.Decide(int64(i)*ms, 100)
		if c == DropLoss {
			lost++
			run++
		} else if run > 0 {
			bursts++
			run = 0
		}
	}
	if run > 0 {
		bursts++
	}
	return float64(lost) / float64(n), float64(lost) / float64(bursts)
}

func TestGilbertElliott(t *testing.T) {
	l := mustLink(t, "ge=3%/4,seed=7")
	loss, burst := measureGE(t, l, 400000)
	t.Logf("ge=3%%/4: measured loss %.3f%%, mean burst %.2f", loss*100, burst)
	if math.Abs(loss*100-3) > 0.3 {
		t.Errorf("average loss %.3f%%, want 3%% ±0.3", loss*100)
	}
	if math.Abs(burst-4) > 0.4 {
		t.Errorf("mean burst %.2f, want 4 ±10%%", burst)
	}
	// Raw parameters: p=1%, r=50%, all loss in the bad state -> 1/51 loss, burst 2.
	l = mustLink(t, "gemodel=1%/50%/100%/0%,seed=9")
	loss, burst = measureGE(t, l, 400000)
	if want := 1.0 / 51; math.Abs(loss-want) > 0.002 || math.Abs(burst-2) > 0.2 {
		t.Errorf("gemodel: loss %.4f burst %.2f, want %.4f and 2", loss, burst, want)
	}
}

func TestJitterKeepsOrder(t *testing.T) {
	l := mustLink(t, "delay=20ms,jitter=5ms,seed=3")
	var prev int64
	for i := int64(0); i < 100000; i++ {
		now := i * 200 * int64(time.Microsecond) // 5 kpps: gaps far below the jitter
		deps, _, _ := l.Decide(now, 100)
		if deps[0] < prev {
			t.Fatalf("packet %d departs at %d before the previous one at %d", i, deps[0], prev)
		}
		if d := deps[0] - now; d < 15*ms {
			t.Fatalf("packet %d delayed %v, below delay-jitter", i, time.Duration(d))
		}
		prev = deps[0]
	}
}

func TestJitterReorders(t *testing.T) {
	l := mustLink(t, "delay=20ms,jitter=5ms,reorder,seed=3")
	var prev int64
	var reordered int
	var lo, hi int64 = math.MaxInt64, 0
	for i := int64(0); i < 100000; i++ {
		now := i * ms
		deps, _, _ := l.Decide(now, 100)
		if deps[0] < prev {
			reordered++
		}
		prev = deps[0]
		d := deps[0] - now
		lo, hi = min(lo, d), max(hi, d)
	}
	if reordered == 0 {
		t.Fatal("reorder allowed but nothing reordered")
	}
	if lo < 15*ms || hi > 25*ms || lo > 15*ms+ms/2 || hi < 25*ms-ms/2 {
		t.Fatalf("delay range [%v,%v], want about [15ms,25ms]", time.Duration(lo), time.Duration(hi))
	}
	t.Logf("reordered %d of 100000, delay range [%v,%v]", reordered, time.Duration(lo), time.Duration(hi))
}

func TestDuplication(t *testing.T) {
	l := mustLink(t, "dup=10%,seed=5")
	const n = 100000
	for i := 0; i < n; i++ {
		l.Decide(int64(i)*ms, 100)
	}
	s := l.Stats()
	if got := float64(s.Duplicated) / n; math.Abs(got-0.1) > 0.005 || s.Out != n+s.Duplicated {
		t.Fatalf("dup %.4f, stats %+v", got, s)
	}
}

// TestRateLimit offers twice the configured rate and checks throughput and that no
// packet waits longer than the configured queue.
func TestRateLimit(t *testing.T) {
	for _, q := range []string{"queue=200ms", "queue=125000b"} { // 125 kB = 200 ms at 5 Mbit/s
		l := mustLink(t, "rate=5mbit,"+q)
		const size = 1250
		gap := int64(time.Second) * size * 8 / 10e6 // 10 Mbit/s offered
		var first, last int64 = -1, 0
		var bytes int
		var maxWait int64
		for i := int64(0); i < 10000; i++ { // 10 s
			now := i * gap
			deps, n, c := l.Decide(now, size)
			if c != Delivered {
				continue
			}
			if n != 1 {
				t.Fatal("unexpected duplicate")
			}
			if first < 0 {
				first = deps[0]
			}
			if w := deps[0] - now - int64(time.Second)*size*8/5e6; w > maxWait {
				maxWait = w
			}
			last = deps[0]
			bytes += size
		}
		// Throughput over the departures after the first one.
		rate := float64(bytes-size) * 8 / (float64(last-first) / 1e9)
		s := l.Stats()
		t.Logf("%s: throughput %.3f Mbit/s, max queue wait %v, mean %v, queue drops %d", q, rate/1e6,
			time.Duration(s.QueueDelayMax), s.MeanQueueDelay(), s.DropQueue)
		if math.Abs(rate-5e6)/5e6 > 0.05 {
			t.Errorf("%s: throughput %.0f bit/s, want 5 Mbit/s ±5%%", q, rate)
		}
		if maxWait > 200*ms || int64(s.QueueDelayMax) > 200*ms {
			t.Errorf("%s: queue wait %v above the 200 ms queue", q, time.Duration(maxWait))
		}
		if maxWait < 190*ms {
			t.Errorf("%s: queue never filled (max wait %v): bufferbloat not reproduced", q, time.Duration(maxWait))
		}
		if s.DropQueue == 0 {
			t.Errorf("%s: no tail drops at twice the rate", q)
		}
	}
}

func TestDefaultQueueBound(t *testing.T) {
	l := mustLink(t, "rate=1mbit")
	for i := 0; i < 10000; i++ {
		l.Decide(0, 1500)
	}
	if s := l.Stats(); time.Duration(s.QueueDelayMax) > DefaultQueueTime.D() || s.DropQueue == 0 {
		t.Fatalf("unbounded queue: %+v", s)
	}
}

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig("delay=15ms,jitter=3ms,loss=2%,ge=3%/4,outage=8s-10s,rate=5mbit,queue=200ms,seed=1")
	if err != nil {
		t.Fatal(err)
	}
	if c.Delay.D() != 15*time.Millisecond || c.Jitter.D() != 3*time.Millisecond || c.Loss != 0.02 ||
		c.GE == nil || c.Rate != 5e6 || c.QueueTime.D() != 200*time.Millisecond || c.Seed != 1 ||
		len(c.Outages) != 1 || c.Outages[0].End.D() != 10*time.Second {
		t.Fatalf("parsed %+v", c)
	}
	if r := 1 / c.GE.R; math.Abs(r-4) > 1e-9 || math.Abs(c.GE.P/(c.GE.P+c.GE.R)-0.03) > 1e-9 {
		t.Fatalf("ge %+v", *c.GE)
	}
	// The compact form round-trips.
	c2, err := ParseConfig(c.String())
	if err != nil || c2.String() != c.String() {
		t.Fatalf("round trip %q -> %q (%v)", c.String(), c2.String(), err)
	}
	for _, bad := range []string{"delay=-1ms", "loss=120%", "ge=0/4", "ge=3%", "outage=5s-2s", "rate=fast", "nope=1", "queue=x", "gemodel=1/2/3/4/5", "dup=-1%"} {
		if _, err := ParseConfig(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestConfigJSON(t *testing.T) {
	var c Config
	err := json.Unmarshal([]byte(`{"delay":"20ms","jitter":2000000,"loss":0.01,"rate":"10mbit","queue_time":"50ms","outages":[{"start":"1s","end":"2s"}],"ge":{"p":0.01,"r":0.25,"loss_bad":1}}`), &c)
	if err != nil {
		t.Fatal(err)
	}
	if c.Delay.D() != 20*time.Millisecond || c.Jitter.D() != 2*time.Millisecond || c.Rate != 10e6 || c.GE.R != 0.25 || c.Outages[0].End.D() != time.Second*2 {
		t.Fatalf("%+v", c)
	}
	b, _ := json.Marshal(c)
	if !strings.Contains(string(b), `"delay":"20ms"`) {
		t.Fatalf("marshal: %s", b)
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add("delay=15ms,jitter=3ms,loss=2%,ge=3%/4,outage=8s-10s,rate=5mbit,queue=200ms,seed=1")
	f.Add("gemodel=1%/2%/3%/4%,dup=1%,reorder,queue=64kib")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseConfig(s)
		if err != nil {
			return
		}
		l, err := New(c, 0)
		if err != nil {
			t.Fatalf("parsed config rejected by New: %v", err)
		}
		for i := 0; i < 10; i++ {
			l.Decide(int64(i)*ms, 1000)
		}
	})
}
