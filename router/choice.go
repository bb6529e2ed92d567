package router

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/wire"
)

// Choosing a proxy.
//
// For each game server (target) the router ranks its proxies by
//
//	score = own RTT (lowest smoothed keepalive RTT over the proxy's live paths)
//	      + the proxy's RTT to the server, from its answer to a Probe
//
// A proxy that has not answered a probe for the target adds nothing, and then
// no proxy's server RTT is counted for that target: adding it for some and not
// for others would favour the silent ones. So with proxies that do not answer
// probes the choice falls back to the router's own RTT to each.
//
// New sessions go to the best proxy; the second is the reserve. Keepalives run
// to the best and the reserve of every server and to every proxy carrying a
// session at the full rate all the time (to the others, in standby, once a
// second), so a move needs no setup and no measurement: the new session's
// first datagrams carry the hello. A session moves
//
//   - at once when every path to its proxy is down (no keepalive answer within
//     down_after) or the proxy refused the target in a probe answer;
//   - when its proxy reports overload (pong or probe answer), its keepalive loss
//     crosses choice.loss, or it has been slower than the best proxy by more
//     than choice.margin for choice.after, but not sooner than choice.hold after
//     the session started or last moved (hysteresis).
//
// A proxy back from an outage, or overloaded, ranks after the others, and is a
// target for a move only when its proxy is down or refuses (then anything that
// answers is better); a proxy back from an outage ranks normally again once it
// has answered for choice.rejoin. A move creates a new session to the other proxy (new ID,
// salt and hello: keys are per session) and points the flow at it; the old one
// is sent a Close and kept findable for a short grace, for replies in flight
// (the flow's first session, its head, stays findable for the flow's life).

// ChoiceConfig is the [choice] table.
type ChoiceConfig struct {
	// Margin is how much lower another proxy's score must be before a session
	// moves to it for latency, and After how long that must last.
	Margin config.Duration `toml:"margin"`
	After  config.Duration `toml:"after"`
	// Loss moves sessions off a proxy whose keepalive loss (on all paths at
	// once) is above it, to one with less than half of it.
	Loss float64 `toml:"loss"`
	// Hold is the least time between two moves of a session for latency, loss
	// or overload (a dead proxy is left at once).
	Hold config.Duration `toml:"hold"`
	// Rejoin is how long a proxy back from an outage must answer before
	// sessions move to it.
	Rejoin config.Duration `toml:"rejoin"`
	// ProbeInterval is how often each proxy is asked for its RTT to each
	// server in use.
	ProbeInterval config.Duration `toml:"probe_interval"`
}

// Choice defaults.
const (
	DefaultSwitchMargin  = 15 * time.Millisecond
	DefaultSwitchAfter   = 5 * time.Second
	DefaultSwitchLoss    = 0.2
	DefaultSwitchHold    = 10 * time.Second
	DefaultRejoin        = 3 * time.Second
	DefaultProbeInterval = time.Second

	// retireGrace keeps a session that was moved away findable this long, so
	// replies already on their way still reach the game.
	retireGrace = 2 * time.Second
	// maxTargets bounds the per-server choice state; servers beyond it share
	// one state that is never probed.
	maxTargets = 4096
	// targetIdle forgets a server's choice state this long after its last
	// session.
	targetIdle = time.Minute
)

func (c *ChoiceConfig) check(_ *Config, meta *config.Meta) error {
	for _, d := range []struct {
		v        *config.Duration
		def      time.Duration
		key      string
		min, max time.Duration
	}{{&c.Margin, DefaultSwitchMargin, "choice.margin", time.Millisecond, 10 * time.Second},
		{&c.After, DefaultSwitchAfter, "choice.after", 10 * time.Millisecond, 10 * time.Minute},
		{&c.Hold, DefaultSwitchHold, "choice.hold", 10 * time.Millisecond, time.Hour},
		{&c.Rejoin, DefaultRejoin, "choice.rejoin", 10 * time.Millisecond, 10 * time.Minute},
		{&c.ProbeInterval, DefaultProbeInterval, "choice.probe_interval", 10 * time.Millisecond, time.Minute}} {
		if !meta.IsDefined(d.key) { // a written 0 is refused, not defaulted
			d.v.Duration = d.def
		}
		meta.Duration(d.key, d.v.Duration, d.min, d.max)
	}
	if !meta.IsDefined("choice.loss") {
		c.Loss = DefaultSwitchLoss
	}
	meta.Ratio("choice.loss", c.Loss, false)
	return nil
}

// Switch reasons, as logged and counted.
const (
	reasonDown     = "down"
	reasonRefused  = "refused"
	reasonOverload = "overload"
	reasonLoss     = "loss"
	reasonLatency  = "latency"
)

var switchReasons = []string{reasonDown, reasonRefused, reasonOverload, reasonLoss, reasonLatency}

// Ranking tiers: lower is better; tierOut is never chosen.
const (
	tierGood       = iota
	tierDegraded   // overloaded, or back from an outage for less than Rejoin
	tierUnmeasured // up, but no keepalive answer yet
	tierOut        // down, or refused the target
)

// chooser is the Router's choice state.
type chooser struct {
	mu       sync.Mutex // guards targets and the probe results in them
	targets  map[netip.AddrPort]*targetState
	overflow *targetState

	// The control goroutine's own state.
	retired  []retiredTunnel
	snap     map[netip.AddrPort]*targetState
	list     []*targetState
	moves    []move
	count    [MaxProxies]int64
	lastPass int64

	switches                            map[string]*metrics.Counter
	probesSent, probeReplies, noReserve *metrics.Counter
}

// targetState is the choice for one game server.
type targetState struct {
	target netip.AddrPort
	pinned bool // a forward's server: kept while the router runs

	probes [MaxProxies]probeResult // guarded by chooser.mu

	// The control goroutine's own state.
	lastUsed   int64
	lastProbe  int64
	worseSince [MaxProxies]int64
	verdict    [MaxProxies]string
	rank       ranking

	best atomic.Pointer[proxyConn] // the best at the last step, for logging changes
}

type probeResult struct {
	at      int64 // arrival of the answer; 0 = none yet
	rtt     time.Duration
	allowed bool
}

type ranking struct {
	best, reserve *proxyConn
	tier          [MaxProxies]int
	score         [MaxProxies]time.Duration
	useServer     bool
}

type retiredTunnel struct {
	t  *routerSession
	at int64
}

type move struct {
	head   *routerSession
	to     *proxyConn
	reason string
}

func (r *Router) initChoice() {
	c := &r.ch
	c.targets = map[netip.AddrPort]*targetState{}
	c.snap = map[netip.AddrPort]*targetState{}
	c.overflow = &targetState{pinned: true}
	c.switches = map[string]*metrics.Counter{}
	for _, why := range switchReasons {
		c.switches[why] = r.reg.Counter(`router_proxy_switches_total{reason="`+why+`"}`, "Sessions moved to another proxy, by reason.")
	}
	c.probesSent = r.reg.Counter("router_probes_sent_total", "Probes sent to proxies (RTT to a server).")
	c.probeReplies = r.reg.Counter("router_probe_replies_total", "Probe answers received.")
	c.noReserve = r.reg.Counter("router_proxy_no_reserve_total", "Times a session had to leave its proxy but no other was usable.")
	now := mono.Now()
	for _, f := range r.forwards {
		r.targetFor(f.server, now).pinned = true
	}
}

// targetFor returns the choice state of a server, creating it.
func (r *Router) targetFor(target netip.AddrPort, now int64) *targetState {
	c := &r.ch
	c.mu.Lock()
	defer c.mu.Unlock()
	ts := c.targets[target]
	if ts == nil {
		if len(c.targets) >= maxTargets || !target.IsValid() {
			return c.overflow
		}
		ts = &targetState{target: target, lastUsed: now}
		c.targets[target] = ts
	}
	return ts
}

// pickProxy chooses the proxy for a new session to target.
func (r *Router) pickProxy(target netip.AddrPort, now int64) *proxyConn {
	if len(r.proxies) == 1 {
		return r.proxies[0]
	}
	// Ranked afresh rather than taken from the control goroutine's last step:
	// a new session is rare, and the RTTs may have changed since (the first
	// answers after start, a proxy that just went down).
	if k := r.rank(r.targetFor(target, now), now); k.best != nil {
		return k.best
	}
	return r.proxies[0]
}

// rank orders the proxies for one server. Safe from any goroutine.
func (r *Router) rank(ts *targetState, now int64) (k ranking) {
	cc := &r.cfg.Choice
	fresh := 3 * int64(cc.ProbeInterval.Duration)
	r.ch.mu.Lock()
	probes := ts.probes
	r.ch.mu.Unlock()
	var own [MaxProxies]time.Duration
	k.useServer = true
	candidates := 0
	for j, px := range r.proxies {
		pr := &probes[j]
		answered := pr.at != 0 && now-pr.at <= fresh
		if !px.anyUp(now) || answered && !pr.allowed {
			k.tier[j] = tierOut
			continue
		}
		rtt, ok := px.ownRTT(now)
		if !ok {
			k.tier[j] = tierUnmeasured
			continue
		}
		own[j] = rtt
		if since := px.upSince.Load(); px.overloaded.Load() || since != 0 && now-since < int64(cc.Rejoin.Duration) {
			k.tier[j] = tierDegraded
		}
		candidates++
		if !answered || pr.rtt <= 0 {
			k.useServer = false
		}
	}
	if candidates == 0 {
		k.useServer = false
	}
	var order [MaxProxies]int
	n := len(r.proxies)
	for j := 0; j < n; j++ {
		k.score[j] = own[j]
		if k.useServer && k.tier[j] <= tierDegraded {
			k.score[j] += probes[j].rtt
		}
		// Insertion sort by (tier, score, config order): a handful of proxies.
		i := j
		for ; i > 0; i-- {
			o := order[i-1]
			if k.tier[o] < k.tier[j] || k.tier[o] == k.tier[j] && k.score[o] <= k.score[j] {
				break
			}
			order[i] = o
		}
		order[i] = j
	}
	if n > 0 && k.tier[order[0]] < tierOut {
		k.best = r.proxies[order[0]]
	}
	if n > 1 && k.tier[order[1]] < tierOut {
		k.reserve = r.proxies[order[1]]
	}
	return k
}

// onProbeReply records a proxy's answer about a server.
func (r *Router) onProbeReply(px *proxyConn, rep *wire.ProbeReply, now int64) {
	r.ch.probeReplies.Inc()
	if rep.Overloaded != px.overloaded.Load() {
		px.overloaded.Store(rep.Overloaded)
	}
	r.ch.mu.Lock()
	if ts := r.ch.targets[rep.Probe.Target]; ts != nil {
		ts.probes[px.idx] = probeResult{at: now, rtt: rep.ServerRTT, allowed: rep.Allowed}
	}
	r.ch.mu.Unlock()
}

// sendProbes asks every live proxy for its RTT to ts's server, on every live
// path (copies of one sealed datagram; the proxy answers the first).
func (r *Router) sendProbes(ts *targetState, buf []byte, now int64) {
	for _, px := range r.proxies {
		if !px.anyUp(now) {
			continue
		}
		pr := wire.Probe{Seq: px.probeSeq.Add(1), SentAt: now, Target: ts.target}
		var pb [wire.ProbeLen]byte
		dg, err := px.ctrl.send.SealControl(buf, wire.TypeProbe, pr.Put(pb[:]), now)
		if err != nil {
			continue
		}
		for _, pt := range px.paths {
			if pt.health.Up(now) {
				r.sendPath(pt, dg)
			}
		}
		r.ch.probesSent.Inc()
	}
}

// evaluate is the control goroutine's choice step: rank the proxies per server,
// probe, move the sessions that must move, and retire moved-away sessions.
func (r *Router) evaluate(now int64, buf []byte, anyChange bool) {
	c := &r.ch
	cc := &r.cfg.Choice
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
			c.snap[ts.target] = ts
		}
		k := r.rank(ts, now)
		ts.rank = k
		// A choice among proxies not measured yet is config order: not news.
		if old := ts.best.Swap(k.best); old != k.best && k.best != nil && k.tier[k.best.idx] < tierUnmeasured && ts.target.IsValid() {
			args := []any{"server", ts.target.String(), "proxy", k.best.name, "score", k.score[k.best.idx], "with_server_rtt", k.useServer}
			if k.reserve != nil {
				args = append(args, "reserve", k.reserve.name, "reserve_score", k.score[k.reserve.idx])
			}
			r.log.Info("proxy chosen", args...)
		}
		for j, px := range r.proxies {
			why := ""
			switch {
			case k.tier[j] == tierOut && !px.anyUp(now):
				why = reasonDown
			case k.tier[j] == tierOut:
				why = reasonRefused
			case px.overloaded.Load():
				why = reasonOverload
			case px.loss(now) > cc.Loss:
				why = reasonLoss
			}
			b := k.best
			if b != nil && b != px && k.tier[j] <= tierDegraded && k.tier[b.idx] == tierGood &&
				k.score[j] > k.score[b.idx]+cc.Margin.Duration {
				if ts.worseSince[j] == 0 {
					ts.worseSince[j] = now
				}
			} else {
				ts.worseSince[j] = 0
			}
			if why == "" && ts.worseSince[j] != 0 && now-ts.worseSince[j] >= int64(cc.After.Duration) {
				why = reasonLatency
			}
			ts.verdict[j] = why
		}
		if ts.target.IsValid() && now-ts.lastProbe >= int64(cc.ProbeInterval.Duration) {
			ts.lastProbe = now
			r.sendProbes(ts, buf, now)
		}
	}

	// The session pass walks every session: every 50 ms, or at once when a
	// proxy or path changed state.
	if anyChange || now-c.lastPass >= int64(50*time.Millisecond) {
		c.lastPass = now
		r.passSessions(now)
	}

	keep := c.retired[:0]
	for _, rt := range c.retired {
		if now-rt.at < int64(retireGrace) {
			keep = append(keep, rt)
			continue
		}
		// A moved-away session is never current again (a move back makes a
		// new one), so it can go, unless it is the flow's head, which stays
		// for the flow's life (see routerSession).
		if rt.t.head != rt.t {
			r.byID.Delete(rt.t.id)
		}
	}
	clear(c.retired[len(keep):])
	c.retired = keep

	c.mu.Lock()
	for t, ts := range c.targets {
		if !ts.pinned && now-ts.lastUsed > int64(targetIdle) {
			delete(c.targets, t)
		}
	}
	c.mu.Unlock()
}

// passSessions moves the sessions whose proxy must be left, and counts the
// sessions per proxy.
func (r *Router) passSessions(now int64) {
	c := &r.ch
	cc := &r.cfg.Choice
	c.moves = c.moves[:0]
	clear(c.count[:])
	overflowUsed := false
	r.byID.Range(func(_ uint64, t *routerSession) bool {
		head := t.head
		if head.side == nil || head.cur.Load() != t {
			return true
		}
		c.count[t.px.idx]++
		ts := c.snap[t.target]
		if ts == nil {
			// Beyond maxTargets, or a server newer than this step's list.
			ts = c.overflow
			overflowUsed = true
		}
		ts.lastUsed = now
		why := ts.verdict[t.px.idx]
		if why == "" {
			return true
		}
		emergency := why == reasonDown || why == reasonRefused
		if !emergency && now-head.lastSwitch < int64(cc.Hold.Duration) {
			return true
		}
		to := ts.rank.best
		if to == nil || to == t.px || ts.rank.tier[to.idx] > tierDegraded ||
			!emergency && ts.rank.tier[to.idx] != tierGood ||
			why == reasonLoss && to.loss(now) >= cc.Loss/2 {
			if emergency && !head.stranded {
				head.stranded = true
				c.noReserve.Inc()
				r.log.Warn("session cannot leave its proxy: no other proxy is usable", "session", head.id,
					"proxy", t.px.name, "reason", why, "server", t.target.String())
			}
			return true
		}
		c.moves = append(c.moves, move{head: head, to: to, reason: why})
		return true
	})
	for i := range c.moves {
		m := &c.moves[i]
		r.switchSession(m.head, m.to, m.reason, now)
		m.head = nil
	}
	var needed [MaxProxies]bool
	for _, ts := range c.list {
		if ts == c.overflow && !overflowUsed {
			continue
		}
		if p := ts.rank.best; p != nil {
			needed[p.idx] = true
		}
		if p := ts.rank.reserve; p != nil {
			needed[p.idx] = true
		}
	}
	for j, px := range r.proxies {
		px.sessGauge.Set(c.count[j])
		px.standby = !needed[j] && c.count[j] == 0 && len(r.proxies) > 2
	}
}

// switchSession moves a flow to proxy to: a new session there, the flow pointed
// at it, a Close to the old one. Only the control goroutine calls it.
func (r *Router) switchSession(head *routerSession, to *proxyConn, why string, now int64) {
	head.mu.Lock()
	if head.ended {
		head.mu.Unlock()
		return
	}
	old := head.cur.Load()
	if old.px == to {
		head.mu.Unlock()
		return
	}
	nt, err := r.newTunnel(to, nil, head.client, head.target, head.params)
	if err != nil {
		head.mu.Unlock()
		r.log.Error("cannot create session on the reserve proxy", "proxy", to.name, "err", err)
		return
	}
	nt.head = head
	r.byID.GetOrCreate(nt.id, now, func() (*routerSession, error) { return nt, nil })
	head.cur.Store(nt)
	head.lastSwitch = now
	head.stranded = false
	head.mu.Unlock()

	r.sendClose(old)
	r.ch.retired = append(r.ch.retired, retiredTunnel{t: old, at: now})
	r.ch.switches[why].Inc()
	args := []any{"session", head.id, "client", head.client.String(), "server", head.target.String(),
		"from", old.px.name, "to", to.name, "reason", why, "new_session", nt.id}
	if ts := r.ch.snap[head.target]; ts != nil {
		k := &ts.rank
		args = append(args, "from_score", k.score[old.px.idx], "to_score", k.score[to.idx],
			"from_loss", fmt.Sprintf("%.3f", old.px.loss(now)))
	}
	if why == reasonLatency || why == reasonLoss {
		r.log.Info("session moved to another proxy", args...)
	} else {
		r.log.Warn("session moved to another proxy", args...)
	}
}
