// Package proxychoice chooses, for each game server, the proxy a router sends
// its sessions to, and says when a session must leave its proxy and where to.
//
// For each game server (target) the proxies are ranked by
//
//	score = own RTT (lowest smoothed keepalive RTT over the proxy's live paths)
//	      + the proxy's RTT to the server, from its answer to a Probe
//
// A proxy that has not answered a probe for the target adds nothing, and then
// no proxy's server RTT is counted for that target: adding it for some and not
// for others would favour the silent ones. So with proxies that do not answer
// probes the choice falls back to the router's own RTT to each.
//
// New sessions go to the best proxy; the second is the reserve. A session
// leaves its proxy
//
//   - at once when every path to its proxy is down or the proxy refused the
//     target in a probe answer;
//   - when its proxy reports overload, its keepalive loss crosses Config.Loss,
//     or it has been slower than the best proxy by more than Config.Margin for
//     Config.After, but not sooner than Config.Hold after the session started
//     or last moved (hysteresis).
//
// A proxy back from an outage, or overloaded, ranks after the others, and is a
// target for a move only when its proxy is down or refuses (then anything that
// answers is better); a proxy back from an outage ranks normally again once it
// has answered for Config.Rejoin.
//
// The package decides only: the router measures (keepalives, probes), makes
// and moves the sessions, and logs and counts.
package proxychoice

import (
	"net/netip"
	"sync"
	"time"
)

// MaxProxies bounds the proxies: per-target state is kept in fixed arrays of
// this size.
const MaxProxies = 16

// Config holds the choice's thresholds (the router's [choice] table).
type Config struct {
	// Margin is how much lower another proxy's score must be before a
	// session moves to it for latency, and After how long that must last.
	Margin, After time.Duration
	// Loss moves sessions off a proxy whose keepalive loss (on all paths at
	// once) is above it, to one with less than half of it.
	Loss float64
	// Hold is the least time between two moves of a session for latency,
	// loss or overload (a dead proxy is left at once).
	Hold time.Duration
	// Rejoin is how long a proxy back from an outage must answer before
	// sessions move to it.
	Rejoin time.Duration
	// ProbeInterval is how often each proxy is asked for its RTT to each
	// server in use.
	ProbeInterval time.Duration
}

const (
	// maxTargets bounds the per-server state; servers beyond it share one
	// state that is never probed.
	maxTargets = 4096
	// targetIdle forgets a server's state this long after its last session.
	targetIdle = time.Minute
)

// Reasons for a session to leave its proxy, as logged and counted.
const (
	ReasonDown     = "down"
	ReasonRefused  = "refused"
	ReasonOverload = "overload"
	ReasonLoss     = "loss"
	ReasonLatency  = "latency"
)

// Reasons lists every reason.
var Reasons = []string{ReasonDown, ReasonRefused, ReasonOverload, ReasonLoss, ReasonLatency, ReasonPreferred}

// Emergency reports whether a reason leaves the proxy at once, whatever Hold.
func Emergency(reason string) bool { return reason == ReasonDown || reason == ReasonRefused }

// Tier is a proxy's class in a ranking: lower is better; TierOut is never
// chosen.
type Tier int

// Tiers.
const (
	TierGood       Tier = iota
	TierDegraded        // overloaded, or back from an outage for less than Rejoin
	TierUnmeasured      // up, but no keepalive answer yet
	TierOut             // down, or refused the target
)

// Ranking is the order of the proxies for one server.
type Ranking struct {
	Best, Reserve int // proxy indices; -1 when none
	Tier          [MaxProxies]Tier
	Score         [MaxProxies]time.Duration
	// UseServer: the scores include the proxies' RTTs to the server.
	UseServer bool
}

// Chooser is the choice state of one router. Pick, Pin, Rank and OnProbeReply
// are safe from any goroutine; Step, Leave, Ranked, Needed and Forget belong
// to one control goroutine.
type Chooser struct {
	cfg     Config
	proxies []*Proxy

	mu       sync.Mutex // guards targets and the probe results in them
	targets  map[netip.AddrPort]*target
	overflow *target

	// The control goroutine's own state.
	list         []*target
	snap         map[netip.AddrPort]*target
	overflowUsed bool
}

// target is the choice for one game server.
type target struct {
	addr   netip.AddrPort
	pinned bool // kept while the router runs

	probes [MaxProxies]probeResult // guarded by Chooser.mu

	// The control goroutine's own state.
	lastUsed   int64
	lastProbe  int64
	worseSince [MaxProxies]int64
	verdict    [MaxProxies]string
	rank       Ranking
	best       int // the best at the last step, for reporting changes
}

type probeResult struct {
	at      int64 // arrival of the answer; 0 = none yet
	rtt     time.Duration
	allowed bool
}

// New returns a Chooser over proxies (at most MaxProxies, in config order:
// ties go to the first).
func New(cfg Config, proxies []*Proxy) *Chooser {
	return &Chooser{cfg: cfg, proxies: proxies,
		targets:  map[netip.AddrPort]*target{},
		snap:     map[netip.AddrPort]*target{},
		overflow: &target{pinned: true, best: -1}}
}

// targetFor returns the state of a server, creating it.
func (c *Chooser) targetFor(server netip.AddrPort, now int64) *target {
	c.mu.Lock()
	defer c.mu.Unlock()
	ts := c.targets[server]
	if ts == nil {
		if len(c.targets) >= maxTargets || !server.IsValid() {
			return c.overflow
		}
		ts = &target{addr: server, lastUsed: now, best: -1}
		c.targets[server] = ts
	}
	return ts
}

// Pin keeps a server's state (and its probes) for the router's life: a
// configured server, whether or not a session runs to it.
func (c *Chooser) Pin(server netip.AddrPort, now int64) { c.targetFor(server, now).pinned = true }

// Pick chooses the proxy for a new session to server.
func (c *Chooser) Pick(server netip.AddrPort, now int64) int {
	if len(c.proxies) == 1 {
		return 0
	}
	// Ranked afresh rather than taken from the control goroutine's last step:
	// a new session is rare, and the RTTs may have changed since (the first
	// answers after start, a proxy that just went down).
	if k := c.rank(c.targetFor(server, now), now); k.Best >= 0 {
		return k.Best
	}
	return 0
}

// Rank orders the proxies for server now.
func (c *Chooser) Rank(server netip.AddrPort, now int64) Ranking {
	return c.rank(c.targetFor(server, now), now)
}

func (c *Chooser) rank(ts *target, now int64) (k Ranking) {
	fresh := 3 * int64(c.cfg.ProbeInterval)
	c.mu.Lock()
	probes := ts.probes
	c.mu.Unlock()
	var own [MaxProxies]time.Duration
	k.Best, k.Reserve = -1, -1
	k.UseServer = true
	candidates := 0
	for j, px := range c.proxies {
		pr := &probes[j]
		answered := pr.at != 0 && now-pr.at <= fresh
		if !px.AnyUp(now) || answered && !pr.allowed {
			k.Tier[j] = TierOut
			continue
		}
		rtt, ok := px.OwnRTT(now)
		if !ok {
			k.Tier[j] = TierUnmeasured
			continue
		}
		own[j] = rtt
		if since := px.upSince.Load(); px.overloaded.Load() || since != 0 && now-since < int64(c.cfg.Rejoin) {
			k.Tier[j] = TierDegraded
		}
		candidates++
		if !answered || pr.rtt <= 0 {
			k.UseServer = false
		}
	}
	if candidates == 0 {
		k.UseServer = false
	}
	var order [MaxProxies]int
	n := len(c.proxies)
	for j := 0; j < n; j++ {
		k.Score[j] = own[j]
		if k.UseServer && k.Tier[j] <= TierDegraded {
			k.Score[j] += probes[j].rtt
		}
		// Insertion sort by (tier, score, config order): a handful of proxies.
		i := j
		for ; i > 0; i-- {
			o := order[i-1]
			if k.Tier[o] < k.Tier[j] || k.Tier[o] == k.Tier[j] && k.Score[o] <= k.Score[j] {
				break
			}
			order[i] = o
		}
		order[i] = j
	}
	if n > 0 && k.Tier[order[0]] < TierOut {
		k.Best = order[0]
	}
	if n > 1 && k.Tier[order[1]] < TierOut {
		k.Reserve = order[1]
	}
	return k
}

// OnProbeReply records proxy's answer about server: its RTT to it and whether
// it serves the router there. Answers for servers not in use are ignored.
func (c *Chooser) OnProbeReply(proxy int, server netip.AddrPort, rtt time.Duration, allowed bool, now int64) {
	c.mu.Lock()
	if ts := c.targets[server]; ts != nil {
		ts.probes[proxy] = probeResult{at: now, rtt: rtt, allowed: allowed}
	}
	c.mu.Unlock()
}

// Step is the control goroutine's ranking step: it ranks the proxies of every
// server in use and sets each proxy's verdict (whether its sessions to that
// server should leave, and why). It calls chosen for each server whose best
// proxy changed to a measured one, and probe for each server whose probes are
// due.
func (c *Chooser) Step(now int64, chosen func(server netip.AddrPort, k *Ranking), probe func(server netip.AddrPort)) {
	c.mu.Lock()
	c.list = c.list[:0]
	for _, ts := range c.targets {
		c.list = append(c.list, ts)
	}
	c.mu.Unlock()
	// The shared state of servers beyond maxTargets is ranked too (never
	// probed), so their sessions still leave a dead proxy.
	c.list = append(c.list, c.overflow)
	clear(c.snap)
	for _, ts := range c.list {
		if ts != c.overflow {
			c.snap[ts.addr] = ts
		}
		k := c.rank(ts, now)
		ts.rank = k
		// A choice among proxies not measured yet is config order: not news.
		old := ts.best
		ts.best = k.Best
		if old != k.Best && k.Best >= 0 && k.Tier[k.Best] < TierUnmeasured && ts.addr.IsValid() && chosen != nil {
			chosen(ts.addr, &ts.rank)
		}
		for j, px := range c.proxies {
			why := ""
			switch {
			case k.Tier[j] == TierOut && !px.AnyUp(now):
				why = ReasonDown
			case k.Tier[j] == TierOut:
				why = ReasonRefused
			case px.overloaded.Load():
				why = ReasonOverload
			case px.Loss(now) > c.cfg.Loss:
				why = ReasonLoss
			}
			b := k.Best
			if b >= 0 && b != j && k.Tier[j] <= TierDegraded && k.Tier[b] == TierGood &&
				k.Score[j] > k.Score[b]+c.cfg.Margin {
				if ts.worseSince[j] == 0 {
					ts.worseSince[j] = now
				}
			} else {
				ts.worseSince[j] = 0
			}
			if why == "" && ts.worseSince[j] != 0 && now-ts.worseSince[j] >= int64(c.cfg.After) {
				why = ReasonLatency
			}
			ts.verdict[j] = why
		}
		if ts.addr.IsValid() && now-ts.lastProbe >= int64(c.cfg.ProbeInterval) && probe != nil {
			ts.lastProbe = now
			probe(ts.addr)
		}
	}
	c.overflowUsed = false
}

// Leave judges a session to server on proxy, which started or last moved at
// lastSwitch, by the last Step. reason is "" when it stays. Otherwise to is
// the proxy it moves to, or -1 when it must leave (reason is then Emergency)
// but no other proxy is usable. A session not yet allowed to move (Hold), or
// with nowhere better to go, stays. Calling it marks the server as in use.
func (c *Chooser) Leave(proxy int, server netip.AddrPort, lastSwitch, now int64) (reason string, to int) {
	ts := c.snap[server]
	if ts == nil {
		// Beyond maxTargets, or a server newer than the last step's list.
		ts = c.overflow
		c.overflowUsed = true
	}
	ts.lastUsed = now
	why := ts.verdict[proxy]
	if why == "" {
		return "", -1
	}
	emergency := Emergency(why)
	if !emergency && now-lastSwitch < int64(c.cfg.Hold) {
		return "", -1
	}
	k := &ts.rank
	to = k.Best
	if to < 0 || to == proxy || k.Tier[to] > TierDegraded ||
		!emergency && k.Tier[to] != TierGood ||
		why == ReasonLoss && c.proxies[to].Loss(now) >= c.cfg.Loss/2 {
		if emergency {
			return why, -1
		}
		return "", -1
	}
	return why, to
}

// Ranked returns the last Step's ranking for server.
func (c *Chooser) Ranked(server netip.AddrPort) (*Ranking, bool) {
	if ts := c.snap[server]; ts != nil {
		return &ts.rank, true
	}
	return nil, false
}

// Needed reports the proxies that are the best or the reserve of some server
// in use, by the last Step (and, for servers beyond the bound, the Leave calls
// since).
func (c *Chooser) Needed() (needed [MaxProxies]bool) {
	for _, ts := range c.list {
		if ts == c.overflow && !c.overflowUsed {
			continue
		}
		if p := ts.rank.Best; p >= 0 {
			needed[p] = true
		}
		if p := ts.rank.Reserve; p >= 0 {
			needed[p] = true
		}
	}
	return needed
}

// Forget drops the state of servers not pinned and without a session for a
// while.
func (c *Chooser) Forget(now int64) {
	c.mu.Lock()
	for t, ts := range c.targets {
		if !ts.pinned && now-ts.lastUsed > int64(targetIdle) {
			delete(c.targets, t)
		}
	}
	c.mu.Unlock()
}
