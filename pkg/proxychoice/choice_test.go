package proxychoice

import (
	"net/netip"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/uplink"
)

const ms = int64(time.Millisecond)

var server = netip.MustParseAddrPort("198.18.41.2:27015")

var testConfig = Config{Margin: 15 * time.Millisecond, After: 5 * time.Second, Loss: 0.2,
	Hold: 10 * time.Second, Rejoin: 3 * time.Second, ProbeInterval: time.Second}

// measured is a proxy with one path whose keepalive answered after rtt at now.
func measured(now int64, rtt time.Duration) *Proxy {
	h := uplink.NewHealth(uplink.HealthConfig{})
	h.OnPingSent(1, now)
	h.OnPong(1, now, 0, now+int64(rtt))
	return &Proxy{Paths: []*uplink.Health{h}}
}

// answer keeps a proxy's single path answering at rtt until now.
func answer(p *Proxy, seq uint32, now int64, rtt time.Duration) {
	p.Paths[0].OnPingSent(seq, now-int64(rtt))
	p.Paths[0].OnPong(seq, now-int64(rtt), 0, now)
}

// silence sends a ping that is never answered, at now: the proxy is down
// from now + DownAfter.
func silence(p *Proxy, seq uint32, now int64) { p.Paths[0].OnPingSent(seq, now) }

// TestRankByOwnRTTWithoutProbeAnswers: proxies that do not answer probes are
// ranked by the router's own RTT alone; server RTTs count only once every
// candidate answered.
func TestRankByOwnRTTWithoutProbeAnswers(t *testing.T) {
	now := int64(time.Hour)
	x, y := measured(now, 30*time.Millisecond), measured(now, 10*time.Millisecond)
	c := New(testConfig, []*Proxy{x, y})
	now += 40 * ms
	k := c.Rank(server, now)
	if k.UseServer || k.Best != 1 || k.Reserve != 0 {
		t.Fatalf("rank by own RTT: %+v", k)
	}
	if k.Tier[0] != TierGood || k.Score[0] != 30*time.Millisecond || k.Score[1] != 10*time.Millisecond {
		t.Fatalf("tiers %v scores %v", k.Tier[:2], k.Score[:2])
	}
	// Only one proxy answered a probe: server RTTs are not compared.
	c.OnProbeReply(0, server, time.Millisecond, true, now)
	if k := c.Rank(server, now); k.UseServer || k.Best != 1 {
		t.Fatalf("one answer must not count: %+v", k)
	}
	// Both answered: x is 30+1, y is 10+50.
	c.OnProbeReply(1, server, 50*time.Millisecond, true, now)
	if k := c.Rank(server, now); !k.UseServer || k.Best != 0 || k.Score[0] != 31*time.Millisecond {
		t.Fatalf("with server RTTs: %+v", k)
	}
	if p := c.Pick(server, now); p != 0 {
		t.Fatalf("Pick chose %d", p)
	}
	// Answers go stale after three probe intervals.
	if k := c.Rank(server, now+int64(4*time.Second)); k.UseServer {
		t.Fatal("stale probe answers still counted")
	}
}

// TestRankTiers: a proxy that refused the server or is down is never chosen;
// one overloaded or just back ranks after a good one, however fast; one not
// measured yet ranks after both.
func TestRankTiers(t *testing.T) {
	now := int64(time.Hour)
	fast, slow := measured(now, 5*time.Millisecond), measured(now, 40*time.Millisecond)
	fresh := &Proxy{Paths: []*uplink.Health{uplink.NewHealth(uplink.HealthConfig{})}}
	c := New(testConfig, []*Proxy{fast, slow, fresh})
	now += 50 * ms
	if k := c.Rank(server, now); k.Best != 0 || k.Reserve != 1 || k.Tier[2] != TierUnmeasured {
		t.Fatalf("start: %+v", k)
	}
	fast.SetOverloaded(true)
	if k := c.Rank(server, now); k.Best != 1 || k.Reserve != 0 || k.Tier[0] != TierDegraded {
		t.Fatalf("overloaded: %+v", k)
	}
	fast.SetOverloaded(false)
	fast.BackUp(now)
	if k := c.Rank(server, now+int64(time.Second)); k.Best != 1 || k.Tier[0] != TierDegraded {
		t.Fatalf("back for a second: %+v", k)
	}
	if k := c.Rank(server, now+int64(4*time.Second)); k.Best != 0 {
		t.Fatalf("back for longer than rejoin: %+v", k)
	}
	c.OnProbeReply(0, server, time.Millisecond, false, now)
	if k := c.Rank(server, now); k.Best != 1 || k.Tier[0] != TierOut {
		t.Fatalf("refused: %+v", k)
	}
	// Everything down or refused: no choice, and Pick falls back to the first.
	silence(slow, 2, now)
	fresh.Paths[0].OnPingSent(1, now)
	later := now + int64(time.Second)
	if k := c.Rank(server, later); k.Best != -1 || k.Reserve != -1 || k.Tier[1] != TierOut {
		t.Fatalf("all out: %+v", k)
	}
	if p := c.Pick(server, later); p != 0 {
		t.Fatalf("Pick with nothing usable: %d", p)
	}
}

// TestLeaveForLatency: a session on a proxy slower than the best by more than
// the margin moves once that lasted After, and not within Hold of its start.
func TestLeaveForLatency(t *testing.T) {
	now := int64(time.Hour)
	a, b := measured(now, 40*time.Millisecond), measured(now, 10*time.Millisecond)
	c := New(testConfig, []*Proxy{a, b})
	c.Pin(server, now)
	start := now
	var chosen []int
	probes := 0
	step := func() {
		c.Step(now, func(s netip.AddrPort, k *Ranking) {
			if s != server {
				t.Errorf("chosen for %v", s)
			}
			chosen = append(chosen, k.Best)
		}, func(netip.AddrPort) { probes++ })
	}
	seq := uint32(2)
	for ; now < start+int64(12*time.Second); now += 100 * ms {
		answer(a, seq, now, 40*time.Millisecond)
		answer(b, seq, now, 10*time.Millisecond)
		seq++
		step()
		why, to := c.Leave(0, server, start, now)
		switch {
		case now-start < int64(testConfig.Hold):
			if why != "" {
				t.Fatalf("moved within hold at %v: %q", time.Duration(now-start), why)
			}
		case why != ReasonLatency || to != 1:
			t.Fatalf("after hold and after: %q to %d, want latency to 1", why, to)
		}
		// The best proxy itself stays.
		if why, _ := c.Leave(1, server, start, now); why != "" {
			t.Fatalf("session on the best proxy leaves: %q", why)
		}
	}
	if len(chosen) != 1 || chosen[0] != 1 {
		t.Fatalf("chosen reported %v, want once, proxy 1", chosen)
	}
	// One probe a second, pinned server included.
	if probes < 11 || probes > 13 {
		t.Fatalf("%d probes in 12 s", probes)
	}
	if n := c.Needed(); !n[0] || !n[1] {
		t.Fatalf("needed %v: best and reserve", n[:2])
	}
}

// TestLeaveAtOnceWhenDown: a dead proxy is left at once, whatever Hold; with
// nowhere to go the session is stranded (reason set, no target).
func TestLeaveAtOnceWhenDown(t *testing.T) {
	now := int64(time.Hour)
	a, b := measured(now, 10*time.Millisecond), measured(now, 20*time.Millisecond)
	c := New(testConfig, []*Proxy{a, b})
	silence(a, 2, now)
	now += int64(time.Second)
	answer(b, 2, now, 20*time.Millisecond)
	c.Step(now, nil, nil)
	if why, to := c.Leave(0, server, now, now); why != ReasonDown || to != 1 {
		t.Fatalf("down: %q to %d", why, to)
	}
	silence(b, 3, now)
	now += int64(time.Second)
	c.Step(now, nil, nil)
	if why, to := c.Leave(0, server, now, now); why != ReasonDown || to != -1 {
		t.Fatalf("both down: %q to %d, want stranded", why, to)
	}
}

// TestLeaveForOverloadAndLoss: overload and loss move a session after Hold,
// loss only to a proxy with less than half of it. The two proxies are within
// the margin of each other, so latency alone moves nothing.
func TestLeaveForOverloadAndLoss(t *testing.T) {
	now := int64(time.Hour)
	a, b := measured(now, 25*time.Millisecond), measured(now, 20*time.Millisecond)
	c := New(testConfig, []*Proxy{a, b})
	now += 50 * ms
	a.SetOverloaded(true)
	c.Step(now, nil, nil)
	if why, _ := c.Leave(0, server, now, now); why != "" {
		t.Fatalf("left within hold: %q", why)
	}
	late := now - int64(testConfig.Hold)
	if why, to := c.Leave(0, server, late, now); why != ReasonOverload || to != 1 {
		t.Fatalf("overload: %q to %d", why, to)
	}
	a.SetOverloaded(false)
	// a loses every keepalive for a while but stays up (the answers that do
	// come keep it so).
	seq := uint32(2)
	for i := 0; i < 60; i++ {
		now += 100 * ms
		for j := 0; j < 3; j++ {
			silence(a, seq, now-int64(j)*ms)
			seq++
		}
		answer(a, seq, now, 25*time.Millisecond)
		seq++
		answer(b, seq, now, 20*time.Millisecond)
		seq++
	}
	now += 400 * ms
	answer(a, seq, now, 25*time.Millisecond)
	answer(b, seq, now, 20*time.Millisecond)
	if l := a.Loss(now); l <= testConfig.Loss {
		t.Fatalf("loss %v not above %v", l, testConfig.Loss)
	}
	c.Step(now, nil, nil)
	if why, to := c.Leave(0, server, late, now); why != ReasonLoss || to != 1 {
		t.Fatalf("loss: %q to %d", why, to)
	}
}

// TestTargetsBoundedAndForgotten: servers beyond the bound share one state
// that still ranks; idle servers are forgotten unless pinned.
func TestTargetsBoundedAndForgotten(t *testing.T) {
	now := int64(time.Hour)
	c := New(testConfig, []*Proxy{measured(now, 10*time.Millisecond), measured(now, 20*time.Millisecond)})
	c.Pin(server, now)
	for i := 0; i < maxTargets+10; i++ {
		c.Rank(netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), 9000), now)
	}
	if n := len(c.targets); n != maxTargets {
		t.Fatalf("%d targets, bound %d", n, maxTargets)
	}
	extra := netip.MustParseAddrPort("198.18.99.1:1")
	if k := c.Rank(extra, now); k.Best != 0 {
		t.Fatalf("overflow server ranked %+v", k)
	}
	c.Step(now, nil, nil)
	c.Leave(0, extra, now, now) // a session beyond the bound
	if n := c.Needed(); !n[0] || !n[1] {
		t.Fatalf("needed %v", n[:2])
	}
	c.Forget(now + int64(targetIdle) + 1)
	if _, ok := c.targets[server]; !ok || len(c.targets) != 1 {
		t.Fatalf("after idle: %d targets, pinned kept %v", len(c.targets), ok)
	}
}
