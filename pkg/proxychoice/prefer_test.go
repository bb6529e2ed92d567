package proxychoice

import (
	"testing"
	"time"
)

// TestPreferredProxies: an application's preferred proxy is chosen while it
// is up even when another is faster, keeps its sessions against faster
// proxies, hands them to the best other when it dies, and gets them back
// once it has answered for Rejoin and Hold has passed.
func TestPreferredProxies(t *testing.T) {
	now := int64(time.Hour)
	a, b, c3 := measured(now, 10*time.Millisecond), measured(now, 40*time.Millisecond), measured(now, 20*time.Millisecond)
	c := New(testConfig, []*Proxy{a, b, c3})
	prefer := Prefer(0).With(1)
	if !prefer.Has(1) || prefer.Has(0) || Prefer(0).With(MaxProxies) != 0 || prefer.Has(-1) {
		t.Fatalf("set operations: %b", prefer)
	}
	now += 50 * ms
	if p := c.Pick(server, now); p != 0 {
		t.Fatalf("plain pick chose %d, want the fastest", p)
	}
	if p, why := c.PickPreferred(server, prefer, now); p != 1 || why != ChosenPreferred {
		t.Fatalf("preferred pick: %d (%s), want 1 (preferred)", p, why)
	}
	if p, why := c.PickPreferred(server, 0, now); p != 0 || why != ChosenBest {
		t.Fatalf("no preference: %d (%s)", p, why)
	}

	// Slower by 30 ms for longer than After and Hold: a plain session
	// moves, one that prefers b stays.
	start := now
	seq := uint32(2)
	for ; now < start+int64(12*time.Second); now += 100 * ms {
		answer(a, seq, now, 10*time.Millisecond)
		answer(b, seq, now, 40*time.Millisecond)
		answer(c3, seq, now, 20*time.Millisecond)
		seq++
		c.Step(now, nil, nil)
		if why, to := c.LeavePreferred(1, server, prefer, start, now); why != "" {
			t.Fatalf("preferred session left for %q to %d", why, to)
		}
	}
	if why, to := c.Leave(1, server, start, now); why != ReasonLatency || to != 0 {
		t.Fatalf("plain session: %q to %d, want latency to 0", why, to)
	}

	// b dies: its sessions leave at once for the best other, and new ones
	// fall back there.
	silence(b, seq, now)
	now += int64(time.Second)
	answer(a, seq, now, 10*time.Millisecond)
	answer(c3, seq, now, 20*time.Millisecond)
	seq++
	c.Step(now, nil, nil)
	if why, to := c.LeavePreferred(1, server, prefer, now, now); why != ReasonDown || to != 0 {
		t.Fatalf("preferred down: %q to %d, want down to 0", why, to)
	}
	if p, why := c.PickPreferred(server, prefer, now); p != 0 || why != ChosenFallback {
		t.Fatalf("pick with the preferred down: %d (%s), want 0 (fallback)", p, why)
	}
	moved := now

	// b is back: not before Rejoin (it ranks degraded) and Hold, then home.
	back := now
	b.BackUp(back)
	for ; now < moved+int64(testConfig.Hold)+int64(time.Second); now += 100 * ms {
		answer(a, seq, now, 10*time.Millisecond)
		answer(b, seq, now, 40*time.Millisecond)
		answer(c3, seq, now, 20*time.Millisecond)
		seq++
		c.Step(now, nil, nil)
		why, to := c.LeavePreferred(0, server, prefer, moved, now)
		switch {
		case now-moved < int64(testConfig.Hold) || now-back < int64(testConfig.Rejoin):
			if why != "" {
				t.Fatalf("moved home too early (%v after the move): %q", time.Duration(now-moved), why)
			}
		case why != ReasonPreferred || to != 1:
			t.Fatalf("after hold: %q to %d, want preferred to 1", why, to)
		}
	}

	// Two preferred proxies: when one dies, the other takes its sessions,
	// though a non-preferred proxy is faster.
	both := prefer.With(2)
	silence(b, seq, now)
	now += int64(time.Second)
	answer(a, seq, now, 10*time.Millisecond)
	answer(c3, seq, now, 20*time.Millisecond)
	c.Step(now, nil, nil)
	if why, to := c.LeavePreferred(1, server, both, now, now); why != ReasonDown || to != 2 {
		t.Fatalf("one of two preferred down: %q to %d, want down to 2", why, to)
	}
	if p, why := c.PickPreferred(server, both, now); p != 2 || why != ChosenPreferred {
		t.Fatalf("pick: %d (%s), want 2 (preferred)", p, why)
	}
}
