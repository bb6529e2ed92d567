package uplink

import (
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/mono"
)

const ms = int64(time.Millisecond)

// sim drives a Health with a fake clock the way the caller does: a timer sends a
// ping whenever PingDue says so, and each pong arrives after rtt(sentAt) unless
// lost(seq, sentAt) says the ping or its answer was dropped.
type sim struct {
	t        *testing.T
	h        *Health
	now      int64
	seq      uint32
	inflight []pong
	rtt      func(sentAt int64) int64
	lost     func(seq uint32, sentAt int64) bool
	lastPong int64
}

type pong struct {
	seq            uint32
	sentAt, arrive int64
}

func newSim(t *testing.T, cfg HealthConfig, start int64) *sim {
	return &sim{
		t: t, h: NewHealth(cfg), now: start, lastPong: -1,
		rtt:  func(int64) int64 { return 20 * ms },
		lost: func(uint32, int64) bool { return false },
	}
}

// step advances the clock by d, delivering due pongs and sending due pings.
func (s *sim) step(d int64) {
	s.now += d
	keep := s.inflight[:0]
	for _, p := range s.inflight {
		if p.arrive <= s.now {
			s.h.OnPong(p.seq, p.sentAt, 0, s.now)
			s.lastPong = s.now
		} else {
			keep = append(keep, p)
		}
	}
	s.inflight = keep
	if s.h.PingDue(s.now) {
		s.seq++
		s.h.OnPingSent(s.seq, s.now)
		if !s.lost(s.seq, s.now) {
			s.inflight = append(s.inflight, pong{s.seq, s.now, s.now + s.rtt(s.now)})
		}
	}
}

// run steps in 1 ms ticks until the clock reaches until.
func (s *sim) run(until int64) {
	for s.now < until {
		s.step(ms)
	}
}

func TestDefaults(t *testing.T) {
	h := NewHealth(HealthConfig{})
	if h.interval != 100*ms || h.downAfter != 300*ms || h.minWin != 10000*ms {
		t.Fatalf("defaults: interval %d, downAfter %d, window %d", h.interval, h.downAfter, h.minWin)
	}
}

func TestPingDue(t *testing.T) {
	h := NewHealth(HealthConfig{PingInterval: 100 * time.Millisecond})
	if !h.PingDue(0) {
		t.Fatal("no ping sent yet, but PingDue is false")
	}
	h.OnPingSent(1, 0)
	if h.PingDue(99 * ms) {
		t.Fatal("PingDue true before the interval passed")
	}
	if !h.PingDue(100 * ms) {
		t.Fatal("PingDue false once the interval passed")
	}
}

// TestStartsUp: a fresh uplink is up until its first ping goes unanswered for
// DownAfter, even if the clock starts at zero.
func TestStartsUp(t *testing.T) {
	h := NewHealth(HealthConfig{})
	if !h.Up(0) || !h.Up(time.Hour.Nanoseconds()) {
		t.Fatal("fresh uplink without pings is not up")
	}
	h.OnPingSent(1, 0)
	if !h.Up(300 * ms) {
		t.Fatal("down before DownAfter passed")
	}
	if h.Up(300*ms + 1) {
		t.Fatal("still up after DownAfter with no pong")
	}
	if st := h.Stats(301 * ms); st.Up || st.DownEvents != 1 || st.LastPong != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestDownAndUp cuts the link at many phases relative to the ping timer and for
// RTTs below and above the ping interval, and checks that the uplink goes down no
// earlier than DownAfter and no later than DownAfter + PingInterval after the last
// pong, and comes back on the first pong after the link is restored.
func TestDownAndUp(t *testing.T) {
	const interval, downAfter = 100 * ms, 300 * ms
	for _, rtt := range []int64{1 * ms, 20 * ms, 99 * ms, 150 * ms, 250 * ms} {
		for cut := 2000 * ms; cut < 2100*ms; cut += 7 * ms {
			restore := cut + 1000*ms
			s := newSim(t, HealthConfig{PingInterval: time.Duration(interval), DownAfter: time.Duration(downAfter)}, 1)
			s.rtt = func(int64) int64 { return rtt }
			// Everything sent during the outage is lost, and so is every pong
			// that would arrive during it.
			s.lost = func(_ uint32, sentAt int64) bool {
				return sentAt+rtt >= cut && sentAt < restore
			}
			var downAt int64 = -1
			for s.now < restore {
				s.step(ms)
				if !s.h.Up(s.now) {
					downAt = s.now
					break
				}
			}
			if downAt < 0 {
				t.Fatalf("rtt %v cut %v: never went down", time.Duration(rtt), time.Duration(cut))
			}
			since := downAt - s.lastPong
			if since <= downAfter || since > downAfter+interval {
				t.Fatalf("rtt %v cut %v: down %v after the last pong, want (%v, %v]",
					time.Duration(rtt), time.Duration(cut), time.Duration(since),
					time.Duration(downAfter), time.Duration(downAfter+interval))
			}
			for s.now < restore {
				s.step(ms)
				if s.h.Up(s.now) {
					t.Fatalf("rtt %v: up again at %v during the outage", time.Duration(rtt), time.Duration(s.now))
				}
			}
			before := s.lastPong
			for s.lastPong == before {
				s.step(ms)
				if s.lastPong == before && s.h.Up(s.now) {
					t.Fatalf("rtt %v: up at %v before any pong", time.Duration(rtt), time.Duration(s.now))
				}
			}
			if !s.h.Up(s.now) {
				t.Fatalf("rtt %v: still down right after the first pong", time.Duration(rtt))
			}
			s.run(s.now + 2000*ms)
			st := s.h.Stats(s.now)
			if !st.Up || st.DownEvents != 1 {
				t.Fatalf("rtt %v: after recovery stats %+v, want up with 1 down event", time.Duration(rtt), st)
			}
		}
	}
}

// TestIdleThenPing: an uplink that was not pinged for a long time must not be
// declared down the moment pinging resumes.
func TestIdleThenPing(t *testing.T) {
	h := NewHealth(HealthConfig{})
	h.OnPingSent(1, 1000*ms)
	h.OnPong(1, 1000*ms, 0, 1010*ms)
	h.OnPingSent(2, 60000*ms)
	if !h.Up(60000*ms) || !h.Up(60300*ms) {
		t.Fatal("down right after pinging resumed")
	}
	if h.Up(60301 * ms) {
		t.Fatal("up although the resumed ping went DownAfter unanswered")
	}
}

// TestStalePong: a late pong for an old ping, sent before the outage, must not
// revive a down uplink; a newer pong must, and it is an RTT sample either way.
func TestStalePong(t *testing.T) {
	h := NewHealth(HealthConfig{})
	// Pings 1..10 every 100 ms; all answered except 5 and 6, whose pongs are held.
	var now int64
	for seq := uint32(1); seq <= 10; seq++ {
		now = int64(seq) * 100 * ms
		h.OnPingSent(seq, now)
		if seq != 5 && seq != 6 {
			h.OnPong(seq, now, 0, now+10*ms)
		}
	}
	// Outage: pings 11.. go unanswered.
	for seq := uint32(11); seq <= 20; seq++ {
		now = int64(seq) * 100 * ms
		h.OnPingSent(seq, now)
	}
	if h.Up(now) {
		t.Fatal("up during the outage")
	}
	pongs := h.Stats(now).PongsReceived
	srtt := h.Stats(now).SRTT
	// Ping 5's pong finally arrives (sent at 500 ms, long before the outage).
	h.OnPong(5, 500*ms, 0, now)
	st := h.Stats(now)
	if st.Up {
		t.Fatal("a stale pong sent before the outage revived the uplink")
	}
	if st.PongsReceived != pongs+1 || st.SRTT == srtt {
		t.Fatalf("stale pong not counted as an RTT sample: %+v", st)
	}
	// An answer to a ping never sent is ignored.
	h.OnPong(99, now-ms, 0, now)
	if h.Up(now) {
		t.Fatal("a pong for a ping never sent revived the uplink")
	}
	// A duplicate of it changes nothing.
	h.OnPong(5, 500*ms, 0, now)
	if st2 := h.Stats(now); st2.SRTT != st.SRTT || st2.Up {
		t.Fatalf("duplicate pong changed the state: %+v", st2)
	}
	// A stale pong whose ping left after the outage began (the caller's sentAt
	// says so) shows the path works again.
	h.OnPong(6, now-50*ms, 0, now)
	if !h.Up(now) {
		t.Fatal("an older-seq pong sent after the outage began did not revive the uplink")
	}
	// Down again; then the newest ping's pong revives at once, even with a huge RTT.
	now += 1000 * ms
	h.OnPingSent(21, now)
	now += 400 * ms
	if h.Up(now) {
		t.Fatal("up although ping 21 went unanswered")
	}
	h.OnPong(12, 1200*ms, 0, now)
	if !h.Up(now) {
		t.Fatal("a newer pong did not revive the uplink")
	}
	if d := h.Stats(now).DownEvents; d != 2 {
		t.Fatalf("DownEvents = %d, want 2", d)
	}
}

func TestRTTEstimates(t *testing.T) {
	s := newSim(t, HealthConfig{}, 1)
	rng := rand.New(rand.NewPCG(1, 2))
	base := 40 * ms
	s.rtt = func(int64) int64 { return base - 5*ms + rng.Int64N(10*ms+1) }
	s.run(20000 * ms)
	st := s.h.Stats(s.now)
	if d := st.SRTT - 40*time.Millisecond; d < -3*time.Millisecond || d > 3*time.Millisecond {
		t.Fatalf("SRTT = %v, want 40ms ± 3ms", st.SRTT)
	}
	// Uniform ±5 ms jitter: mean deviation 2.5 ms.
	if st.RTTVar < time.Millisecond || st.RTTVar > 5*time.Millisecond {
		t.Fatalf("RTTVar = %v, want about 2.5ms", st.RTTVar)
	}
	if st.MinRTT < 35*time.Millisecond || st.MinRTT > 36*time.Millisecond {
		t.Fatalf("MinRTT = %v, want 35ms", st.MinRTT)
	}
	if st.Loss != 0 || !st.Up || st.PongsReceived < st.PingsSent-1 {
		t.Fatalf("stats %+v", st)
	}

	// Route change upward: the minimum holds for a while (it is a windowed
	// minimum, not the latest sample), then follows within about one window.
	change := s.now
	base = 80 * ms
	s.run(change + 5000*ms)
	if st := s.h.Stats(s.now); st.MinRTT > 36*time.Millisecond {
		t.Fatalf("MinRTT = %v 5s after the change, want the old 35ms still", st.MinRTT)
	}
	if st := s.h.Stats(s.now); st.SRTT < 77*time.Millisecond || st.SRTT > 83*time.Millisecond {
		t.Fatalf("SRTT = %v 5s after the change, want 80ms ± 3ms", st.SRTT)
	}
	s.run(change + 13000*ms)
	if st := s.h.Stats(s.now); st.MinRTT < 75*time.Millisecond || st.MinRTT > 76*time.Millisecond {
		t.Fatalf("MinRTT = %v 13s after the change, want 75ms", st.MinRTT)
	}
	// Downward: a lower sample is the new minimum at once.
	s.h.OnPingSent(s.seq+1, s.now)
	s.h.OnPong(s.seq+1, s.now, 0, s.now+10*ms)
	if st := s.h.Stats(s.now); st.MinRTT != 10*time.Millisecond {
		t.Fatalf("MinRTT = %v after a 10ms sample", st.MinRTT)
	}
}

func TestRFC6298FirstSamples(t *testing.T) {
	h := NewHealth(HealthConfig{})
	h.OnPingSent(1, 0)
	h.OnPong(1, 0, 0, 100*ms)
	if st := h.Stats(100 * ms); st.SRTT != 100*time.Millisecond || st.RTTVar != 50*time.Millisecond {
		t.Fatalf("after first sample SRTT %v RTTVAR %v, want 100ms 50ms", st.SRTT, st.RTTVar)
	}
	h.OnPingSent(2, 100*ms)
	h.OnPong(2, 100*ms, 0, 300*ms) // R = 200ms
	// RTTVAR = 3/4*50 + 1/4*|100-200| = 62.5; SRTT = 7/8*100 + 1/8*200 = 112.5
	if st := h.Stats(300 * ms); st.SRTT != 112500*time.Microsecond || st.RTTVar != 62500*time.Microsecond {
		t.Fatalf("after second sample SRTT %v RTTVAR %v, want 112.5ms 62.5ms", st.SRTT, st.RTTVar)
	}
}

func TestLossEstimate(t *testing.T) {
	t.Run("every-fifth", func(t *testing.T) {
		s := newSim(t, HealthConfig{}, 1)
		s.lost = func(seq uint32, _ int64) bool { return seq%5 == 0 }
		s.run(60000 * ms)
		st := s.h.Stats(s.now)
		if math.Abs(st.Loss-0.2) > 0.05 {
			t.Fatalf("Loss = %.3f with every fifth pong lost, want 0.20 ± 0.05", st.Loss)
		}
		if !st.Up {
			t.Fatal("20% loss took the uplink down")
		}
	})
	t.Run("random", func(t *testing.T) {
		s := newSim(t, HealthConfig{}, 1)
		rng := rand.New(rand.NewPCG(3, 4))
		s.lost = func(uint32, int64) bool { return rng.Float64() < 0.2 }
		s.run(10000 * ms)
		var sum float64
		var n int
		for s.now < 130000*ms {
			s.run(s.now + 100*ms)
			sum += s.h.Stats(s.now).Loss
			n++
		}
		if mean := sum / float64(n); math.Abs(mean-0.2) > 0.03 {
			t.Fatalf("mean Loss = %.3f with 20%% random loss, want 0.20 ± 0.03", mean)
		}
	})
	t.Run("none-then-all", func(t *testing.T) {
		s := newSim(t, HealthConfig{}, 1)
		s.run(5000 * ms)
		if l := s.h.Stats(s.now).Loss; l != 0 {
			t.Fatalf("Loss = %v without loss", l)
		}
		s.lost = func(uint32, int64) bool { return true }
		s.run(20000 * ms)
		if l := s.h.Stats(s.now).Loss; l < 0.95 {
			t.Fatalf("Loss = %v with every pong lost", l)
		}
	})
}

func TestUpDoesNotAllocate(t *testing.T) {
	h := NewHealth(HealthConfig{})
	h.OnPingSent(1, 0)
	var now int64
	if a := testing.AllocsPerRun(1000, func() {
		now += ms
		h.Up(now)
		h.PingDue(now)
	}); a != 0 {
		t.Fatalf("Up+PingDue: %v allocs, want 0", a)
	}
	if a := testing.AllocsPerRun(100, func() {
		now += 100 * ms
		h.OnPingSent(uint32(now/ms), now)
		h.OnPong(uint32(now/ms), now, now+ms/2, now+ms)
		_ = h.Stats(now)
	}); a != 0 {
		t.Fatalf("OnPingSent+OnPong+Stats: %v allocs, want 0", a)
	}
}

// TestConcurrent runs the three roles at once on the real clock: a pinger, a
// pong reader fed through a channel, and several send-path readers. Run with -race.
func TestConcurrent(t *testing.T) {
	h := NewHealth(HealthConfig{PingInterval: time.Millisecond, DownAfter: 5 * time.Millisecond})
	type p struct {
		seq    uint32
		sentAt int64
	}
	ch := make(chan p, 1024)
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // timer
		defer wg.Done()
		defer close(ch)
		var seq uint32
		for !stop.Load() {
			now := mono.Now()
			if h.PingDue(now) {
				seq++
				h.OnPingSent(seq, now)
				if seq%7 != 0 {
					ch <- p{seq, now}
				}
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	wg.Add(1)
	go func() { // reader
		defer wg.Done()
		for x := range ch {
			at := mono.Now()
			h.OnPong(x.seq, x.sentAt, at-1000, at)
		}
	}()
	var ups atomic.Int64
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() { // send path
			defer wg.Done()
			for !stop.Load() {
				if h.Up(mono.Now()) {
					ups.Add(1)
				}
				_ = h.Stats(mono.Now())
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	st := h.Stats(mono.Now())
	if st.PingsSent == 0 || st.PongsReceived == 0 || st.PongsReceived > st.PingsSent || ups.Load() == 0 {
		t.Fatalf("stats %+v, up answers %d", st, ups.Load())
	}
	if st.SRTT <= 0 || st.MinRTT <= 0 || st.MinRTT > st.SRTT+st.RTTVar*4 {
		t.Fatalf("RTT estimates %+v", st)
	}
}

func BenchmarkUp(b *testing.B) {
	h := NewHealth(HealthConfig{})
	now := mono.Now()
	h.OnPingSent(1, now)
	h.OnPong(1, now, 0, now+ms)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		h.Up(now + int64(i))
	}
}

func BenchmarkUpParallel(b *testing.B) {
	h := NewHealth(HealthConfig{})
	now := mono.Now()
	h.OnPingSent(1, now)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			h.Up(now)
		}
	})
}

// owdLink drives a Health with two unsynchronised clocks: the peer's reads the
// router's plus offset. Each ping takes up(sentAt) to the peer and down(sentAt)
// back.
type owdLink struct {
	h        *Health
	now      int64
	seq      uint32
	offset   int64
	up, down func(sentAt int64) int64
}

// ping sends one ping at now, delivers its pong and moves the clock on by 100 ms.
func (l *owdLink) ping() {
	l.seq++
	sent := l.now
	l.h.OnPingSent(l.seq, sent)
	atPeer := sent + l.up(sent)
	l.h.OnPong(l.seq, sent, atPeer+l.offset, atPeer+l.down(sent))
	l.now += 100 * ms
}

func (l *owdLink) run(d int64) {
	for end := l.now + d; l.now < end; {
		l.ping()
	}
}

// TestOneWayDelays: an upload queue shows as up queueing delay only, whatever
// the (large, either sign) offset between the clocks; the raw delays carry the
// offset, the queueing delays do not.
func TestOneWayDelays(t *testing.T) {
	const baseUp, baseDown = 12 * ms, 8 * ms
	for _, offset := range []int64{0, 37 * 24 * 3600 * 1e9, -5 * 3600 * 1e9} {
		queue := int64(0) // upload queue delay, set by the test as time goes on
		l := &owdLink{
			h: NewHealth(HealthConfig{}), now: 1000 * ms, offset: offset,
			up:   func(int64) int64 { return baseUp + queue },
			down: func(int64) int64 { return baseDown },
		}
		l.run(5000 * ms) // idle: both minimums learnt
		st := l.h.Stats(l.now)
		if st.OWDSamples != 50 || st.UpQueue != 0 || st.DownQueue != 0 {
			t.Fatalf("offset %d idle: %+v", offset, st)
		}
		if st.UpOWD != time.Duration(baseUp+offset) || st.DownOWD != time.Duration(baseDown-offset) {
			t.Fatalf("offset %d: raw up %v down %v, want base ± offset", offset, st.UpOWD, st.DownOWD)
		}
		// An upload fills the uplink's queue to 40 ms over 2 s and holds it.
		for i := 1; i <= 20; i++ {
			queue = int64(i) * 2 * ms
			l.ping()
			st := l.h.Stats(l.now)
			if st.UpQueue != time.Duration(queue) || st.DownQueue != 0 {
				t.Fatalf("offset %d, queue %v: up queueing %v down %v", offset, time.Duration(queue), st.UpQueue, st.DownQueue)
			}
		}
		l.run(3000 * ms)
		st = l.h.Stats(l.now)
		if st.UpQueue != 40*time.Millisecond || st.DownQueue != 0 || st.UpOWD != time.Duration(baseUp+40*ms+offset) {
			t.Fatalf("offset %d, standing queue: %+v", offset, st)
		}
		// The round trip saw the queue too, without telling its direction.
		if st.MinRTT != time.Duration(baseUp+baseDown) || st.SRTT < 55*time.Millisecond {
			t.Fatalf("offset %d: RTT %+v", offset, st)
		}
		// The queue drains.
		queue = 0
		l.ping()
		if st := l.h.Stats(l.now); st.UpQueue != 0 || st.DownQueue != 0 {
			t.Fatalf("offset %d, drained: %+v", offset, st)
		}
	}
}

// TestOneWayMinimumFollowsTheWindow: a delay that stays up longer than
// OWDWindow becomes the new minimum, as with MinRTT (a route change).
func TestOneWayMinimumFollowsTheWindow(t *testing.T) {
	extra := int64(0)
	l := &owdLink{
		h: NewHealth(HealthConfig{}), now: 1000 * ms, offset: 123456789,
		up:   func(int64) int64 { return 10 * ms },
		down: func(int64) int64 { return 10*ms + extra },
	}
	l.run(5000 * ms)
	extra = 25 * ms
	l.run(5000 * ms)
	if st := l.h.Stats(l.now); st.DownQueue != 25*time.Millisecond || st.UpQueue != 0 {
		t.Fatalf("within the window: %+v", st)
	}
	// The default window outlasts a 10 s queue…
	l.run(5000 * ms)
	if st := l.h.Stats(l.now); st.DownQueue != 25*time.Millisecond {
		t.Fatalf("10 s into a standing queue: down queue %v, want 25ms", st.DownQueue)
	}
	// …but not a standing one (a route change).
	l.run(30000 * ms)
	if st := l.h.Stats(l.now); st.DownQueue != 0 || st.UpQueue != 0 {
		t.Fatalf("after the window: %+v", st)
	}
}

// TestOneWayJitter: jitter on the download path shows as down jitter only.
func TestOneWayJitter(t *testing.T) {
	n := 0
	l := &owdLink{
		h: NewHealth(HealthConfig{}), now: 1000 * ms, offset: -987654321,
		up: func(int64) int64 { return 10 * ms },
		down: func(int64) int64 {
			n++
			return 10*ms + int64(n%2)*4*ms // 4 ms up and down every pong
		},
	}
	l.run(20000 * ms)
	st := l.h.Stats(l.now)
	if st.UpJitter != 0 || st.DownJitter < 3900*time.Microsecond || st.DownJitter > 4*time.Millisecond {
		t.Fatalf("jitter up %v down %v, want 0 and 4ms", st.UpJitter, st.DownJitter)
	}
}

// TestNoPeerTimeNoOneWaySample: a pong without the peer's clock is an RTT
// sample only; duplicates and answers to unsent pings are no sample at all.
func TestNoPeerTimeNoOneWaySample(t *testing.T) {
	h := NewHealth(HealthConfig{})
	h.OnPingSent(1, 100*ms)
	h.OnPong(1, 100*ms, 0, 120*ms)
	if st := h.Stats(120 * ms); st.OWDSamples != 0 || st.UpOWD != 0 || st.SRTT != 20*time.Millisecond {
		t.Fatalf("without peer time: %+v", st)
	}
	h.OnPingSent(2, 200*ms)
	h.OnPong(2, 200*ms, 5000*ms, 230*ms)
	h.OnPong(2, 200*ms, 5000*ms, 240*ms) // duplicate
	h.OnPong(9, 200*ms, 5000*ms, 240*ms) // never sent
	if st := h.Stats(240 * ms); st.OWDSamples != 1 || st.UpOWD != 4800*time.Millisecond || st.DownOWD != -4770*time.Millisecond {
		t.Fatalf("with peer time: %+v", st)
	}
}
