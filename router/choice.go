package router

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/proxychoice"
	"github.com/raicnet/raic/pkg/wire"
)

// Choosing a proxy (package proxychoice ranks and judges; here the router
// measures, moves and logs).
//
// Keepalives run to the best and the reserve of every server and to every
// proxy carrying a session at the full rate all the time (to the others, in
// standby, once a second), so a move needs no setup and no measurement: the
// new session's first datagrams carry the hello. A move creates a new session
// to the other proxy (new ID, salt and hello: keys are per session) and points
// the flow at it; the old one is sent a Close and kept findable for a short
// grace, for replies in flight (the flow's first session, its head, stays
// findable for the flow's life).

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

// choiceConfig is the [choice] table as package proxychoice takes it.
func (c *ChoiceConfig) choiceConfig() proxychoice.Config {
	return proxychoice.Config{Margin: c.Margin.Duration, After: c.After.Duration, Loss: c.Loss,
		Hold: c.Hold.Duration, Rejoin: c.Rejoin.Duration, ProbeInterval: c.ProbeInterval.Duration}
}

// chooser is the Router's choice state: the ranking, and what the control
// goroutine keeps to move sessions.
type chooser struct {
	*proxychoice.Chooser

	// The control goroutine's own state.
	retired  []retiredTunnel
	moves    []move
	count    [MaxProxies]int64
	lastPass int64

	switches                            map[string]*metrics.Counter
	probesSent, probeReplies, noReserve *metrics.Counter
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
	list := make([]*proxychoice.Proxy, len(r.proxies))
	for i, px := range r.proxies {
		list[i] = &px.Proxy
	}
	c.Chooser = proxychoice.New(r.cfg.Choice.choiceConfig(), list)
	c.switches = map[string]*metrics.Counter{}
	for _, why := range proxychoice.Reasons {
		c.switches[why] = r.reg.Counter(`router_proxy_switches_total{reason="`+why+`"}`, "Sessions moved to another proxy, by reason.")
	}
	c.probesSent = r.reg.Counter("router_probes_sent_total", "Probes sent to proxies (RTT to a server).")
	c.probeReplies = r.reg.Counter("router_probe_replies_total", "Probe answers received.")
	c.noReserve = r.reg.Counter("router_proxy_no_reserve_total", "Times a session had to leave its proxy but no other was usable.")
	now := mono.Now()
	for _, f := range r.forwards {
		c.Pin(f.server, now)
	}
}

// pickProxy chooses the proxy for a new session to target.
func (r *Router) pickProxy(target netip.AddrPort, now int64) *proxyConn {
	return r.proxies[r.ch.Pick(target, now)]
}

// pickProxyPrefer chooses the proxy for a new session to target of an app
// that prefers the proxies in prefer, and says why (proxychoice.Chosen*).
func (r *Router) pickProxyPrefer(target netip.AddrPort, prefer proxychoice.Prefer, now int64) (*proxyConn, string) {
	j, why := r.ch.PickPreferred(target, prefer, now)
	return r.proxies[j], why
}

// preferOf maps an app's proxy names (checked against the [[proxy]] tables by
// Config.check) to the chooser's set. Called once per new flow; it does not
// allocate.
func (r *Router) preferOf(names []string) proxychoice.Prefer {
	var p proxychoice.Prefer
	for _, n := range names {
		for _, px := range r.proxies {
			if px.name == n {
				p = p.With(px.idx)
			}
		}
	}
	return p
}

// onProbeReply records a proxy's answer about a server.
func (r *Router) onProbeReply(px *proxyConn, rep *wire.ProbeReply, now int64) {
	r.ch.probeReplies.Inc()
	px.SetOverloaded(rep.Overloaded)
	r.ch.OnProbeReply(px.idx, rep.Probe.Target, rep.ServerRTT, rep.Allowed, now)
}

// sendProbes asks every live proxy for its RTT to a server, on every live
// path (copies of one sealed datagram; the proxy answers the first).
func (r *Router) sendProbes(target netip.AddrPort, buf []byte, now int64) {
	for _, px := range r.proxies {
		if !px.AnyUp(now) {
			continue
		}
		pr := wire.Probe{Seq: px.probeSeq.Add(1), SentAt: now, Target: target}
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
	c.Step(now, func(server netip.AddrPort, k *proxychoice.Ranking) {
		best := r.proxies[k.Best]
		args := []any{"server", server.String(), "proxy", best.name, "score", k.Score[k.Best], "with_server_rtt", k.UseServer}
		if k.Reserve >= 0 {
			args = append(args, "reserve", r.proxies[k.Reserve].name, "reserve_score", k.Score[k.Reserve])
		}
		r.log.Info("proxy chosen", args...)
	}, func(server netip.AddrPort) { r.sendProbes(server, buf, now) })

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

	c.Forget(now)
}

// passSessions moves the sessions whose proxy must be left, and counts the
// sessions per proxy.
func (r *Router) passSessions(now int64) {
	c := &r.ch
	c.moves = c.moves[:0]
	clear(c.count[:])
	r.byID.Range(func(_ uint64, t *routerSession) bool {
		head := t.head
		if head.side == nil || head.cur.Load() != t {
			return true
		}
		c.count[t.px.idx]++
		why, to := c.LeavePreferred(t.px.idx, t.target, head.prefer, head.lastSwitch, now)
		switch {
		case why == "":
		case to < 0:
			if !head.stranded {
				head.stranded = true
				c.noReserve.Inc()
				r.log.Warn("session cannot leave its proxy: no other proxy is usable", "session", head.id,
					"proxy", t.px.name, "reason", why, "server", t.target.String())
			}
		default:
			c.moves = append(c.moves, move{head: head, to: r.proxies[to], reason: why})
		}
		return true
	})
	for i := range c.moves {
		m := &c.moves[i]
		r.switchSession(m.head, m.to, m.reason, now)
		m.head = nil
	}
	needed := c.Needed()
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
	head.chosen.Store(&why)
	head.lastSwitch = now
	head.stranded = false
	head.mu.Unlock()

	r.sendClose(old)
	r.ch.retired = append(r.ch.retired, retiredTunnel{t: old, at: now})
	r.ch.switches[why].Inc()
	args := []any{"session", head.id, "client", head.client.String(), "server", head.target.String(),
		"from", old.px.name, "to", to.name, "reason", why, "new_session", nt.id}
	if k, ok := r.ch.Ranked(head.target); ok {
		args = append(args, "from_score", k.Score[old.px.idx], "to_score", k.Score[to.idx],
			"from_loss", fmt.Sprintf("%.3f", old.px.Loss(now)))
	}
	if why == proxychoice.ReasonLatency || why == proxychoice.ReasonLoss || why == proxychoice.ReasonPreferred {
		r.log.Info("session moved to another proxy", args...)
	} else {
		r.log.Warn("session moved to another proxy", args...)
	}
}
