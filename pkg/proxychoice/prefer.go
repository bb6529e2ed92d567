package proxychoice

import "net/netip"

// Preferred proxies. An application table entry may name the proxies its
// sessions should use (its studio's, say). Among the proxies that are up, the
// preferred ones rank ahead of every other, whatever their scores; only when
// every preferred proxy is down (or refuses the server) does a session go to
// another, and it comes back to a preferred one once that one has answered
// for Config.Rejoin and Config.Hold has passed since the session last moved.
// A session on a preferred proxy moves for latency, loss or overload only to
// another preferred proxy.

// Prefer is a set of proxy indices (bit j: proxy j). The zero value prefers
// none: the plain ranking applies.
type Prefer uint32

// Has reports whether proxy j is in the set.
func (p Prefer) Has(j int) bool { return j >= 0 && j < MaxProxies && p&(1<<j) != 0 }

// With returns the set with proxy j added.
func (p Prefer) With(j int) Prefer {
	if j < 0 || j >= MaxProxies {
		return p
	}
	return p | 1<<j
}

// Reasons a new session went to its proxy, as shown in the router's status.
const (
	ChosenBest      = "best"      // no preference: the best of the ranking
	ChosenPreferred = "preferred" // the best of the app's preferred proxies
	ChosenFallback  = "fallback"  // every preferred proxy is down: the best other
)

// ReasonPreferred moves a session that fell back to another proxy back to a
// preferred one.
const ReasonPreferred = "preferred"

// bestPreferred returns the preferred proxy ranked best in k among those whose
// tier is at most maxTier, or -1.
func bestPreferred(k *Ranking, prefer Prefer, n int, maxTier Tier) int {
	best := -1
	for j := 0; j < n; j++ {
		if !prefer.Has(j) || k.Tier[j] > maxTier {
			continue
		}
		if best < 0 || k.Tier[j] < k.Tier[best] || k.Tier[j] == k.Tier[best] && k.Score[j] < k.Score[best] {
			best = j
		}
	}
	return best
}

// PickPreferred chooses the proxy for a new session to server whose
// application prefers the proxies in prefer, and says why it chose it (one of
// the Chosen reasons).
func (c *Chooser) PickPreferred(server netip.AddrPort, prefer Prefer, now int64) (int, string) {
	if prefer == 0 {
		return c.Pick(server, now), ChosenBest
	}
	k := c.rank(c.targetFor(server, now), now)
	if j := bestPreferred(&k, prefer, len(c.proxies), TierUnmeasured); j >= 0 {
		return j, ChosenPreferred
	}
	if k.Best >= 0 {
		return k.Best, ChosenFallback
	}
	return 0, ChosenFallback
}

// LeavePreferred is Leave for a session whose application prefers the proxies
// in prefer (see the comment at the top of this file).
func (c *Chooser) LeavePreferred(proxy int, server netip.AddrPort, prefer Prefer, lastSwitch, now int64) (reason string, to int) {
	if prefer == 0 {
		return c.Leave(proxy, server, lastSwitch, now)
	}
	why, to := c.Leave(proxy, server, lastSwitch, now)
	ts := c.snap[server]
	if ts == nil {
		ts = c.overflow
	}
	k := &ts.rank
	n := len(c.proxies)
	onPreferred := prefer.Has(proxy)
	switch {
	case why != "" && Emergency(why):
		// Leave at once; a preferred proxy that answers is the first choice.
		if j := bestPreferred(k, prefer, n, TierDegraded); j >= 0 && j != proxy {
			return why, j
		}
		return why, to
	case why != "":
		// Latency, loss, overload: only within the preferred set when on it.
		if !onPreferred {
			return why, to
		}
		if j := bestPreferred(k, prefer, n, TierGood); j >= 0 && j != proxy &&
			(why == ReasonLatency && to == j || why == ReasonOverload || why == ReasonLoss && c.proxies[j].Loss(now) < c.cfg.Loss/2) {
			return why, j
		}
		return "", -1
	}
	// Staying by the plain verdict. A session that fell back goes home when a
	// preferred proxy is good again.
	if !onPreferred && now-lastSwitch >= int64(c.cfg.Hold) {
		if j := bestPreferred(k, prefer, n, TierGood); j >= 0 {
			return ReasonPreferred, j
		}
	}
	return "", -1
}
