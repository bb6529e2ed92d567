package router

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/proxychoice"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/uplink"
	"github.com/raicnet/raic/pkg/wire"
)

// MaxProxies bounds the [[proxy]] tables: per-target choice state is kept in
// fixed arrays of this size.
const MaxProxies = proxychoice.MaxProxies

// standbyPingInterval paces keepalives to a proxy in standby (see proxyConn):
// enough to notice it is there and how far, without pinging a long list of
// proxies at the full rate. The best and reserve proxies get the full rate, so
// a failover never waits for a measurement.
const standbyPingInterval = time.Second

// ProxyList is the top-level proxy key. It takes two forms:
//
//	proxy = "198.18.40.2:4500"         # one proxy; an [[uplink]] may override
//	                                   # the address with its own proxy key
//
//	[[proxy]]
//	name = "fra"
//	address = "198.18.40.2:4500"
//	via = { isp1 = "198.18.31.2:5000" } # per uplink: a relay in front of it
//
// The TOML library hands the raw value to UnmarshalTOML; check reads it, so that
// every error can name its file, line and key.
type ProxyList struct {
	raw any
	// List is the checked result: one entry per proxy, in config order.
	List []ProxyConfig
}

// ProxyConfig is one proxy after checking.
type ProxyConfig struct {
	Name    string
	Address string // may be empty when every uplink has its own address
	// Via maps uplink names to the address used on that uplink instead of
	// Address (a relay, or the proxy's address as seen through that ISP).
	Via map[string]string
	// Paths holds, per uplink in config order, where this proxy is sent to.
	Paths []netip.AddrPort
}

// UnmarshalTOML keeps the raw value for check.
func (p *ProxyList) UnmarshalTOML(v any) error {
	p.raw = v
	return nil
}

func (p *ProxyList) check(c *Config, meta *config.Meta) error {
	switch v := p.raw.(type) {
	case nil:
		return p.checkSingle(c, meta, "")
	case string:
		return p.checkSingle(c, meta, v)
	case []map[string]any:
		return p.checkTables(c, meta, v)
	}
	return meta.Errorf("proxy", "must be an address (proxy = \"ADDR:PORT\") or [[proxy]] tables")
}

// checkSingle is the original form: one proxy, with per-uplink overrides.
func (p *ProxyList) checkSingle(c *Config, meta *config.Meta, addr string) error {
	if addr != "" {
		if _, err := netip.ParseAddrPort(addr); err != nil {
			return meta.Errorf("proxy", "not an address:port: %v", err)
		}
	}
	pc := ProxyConfig{Name: "proxy", Address: addr, Via: map[string]string{}}
	for i := range c.Uplinks {
		u := &c.Uplinks[i]
		key := fmt.Sprintf("uplink.%d.proxy", i)
		if u.Proxy == "" {
			if addr == "" {
				return meta.Errorf(key, "no proxy for this uplink: set proxy here or at the top level")
			}
			u.Proxy = addr
		} else {
			if _, err := netip.ParseAddrPort(u.Proxy); err != nil {
				return meta.Errorf(key, "not an address:port: %v", err)
			}
			pc.Via[u.Name] = u.Proxy
		}
		ap, _ := netip.ParseAddrPort(u.Proxy)
		pc.Paths = append(pc.Paths, ap)
	}
	p.List = []ProxyConfig{pc}
	return checkFamilies(c, meta, p.List)
}

func (p *ProxyList) checkTables(c *Config, meta *config.Meta, tables []map[string]any) error {
	if len(tables) > MaxProxies {
		return meta.Errorf("proxy", "at most %d [[proxy]] tables", MaxProxies)
	}
	for i := range c.Uplinks {
		if c.Uplinks[i].Proxy != "" {
			return meta.Errorf(fmt.Sprintf("uplink.%d.proxy", i),
				"with [[proxy]] tables, give per-uplink addresses in the proxy's via table")
		}
	}
	uplinks := map[string]int{}
	for i, u := range c.Uplinks {
		uplinks[u.Name] = i
	}
	names := map[string]bool{}
	p.List = nil
	for i, t := range tables {
		key := func(k string) string { return fmt.Sprintf("proxy.%d.%s", i, k) }
		pc := ProxyConfig{Via: map[string]string{}}
		// Unknown keys are errors, as everywhere else in the config: the
		// library cannot check them here, since it handed over the raw value.
		ks := make([]string, 0, len(t))
		for k := range t {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		for _, k := range ks {
			v := t[k]
			switch k {
			case "name", "address":
				s, ok := v.(string)
				if !ok {
					return meta.Errorf(key(k), "must be a string")
				}
				if k == "name" {
					pc.Name = s
				} else {
					pc.Address = s
				}
			case "via":
				m, ok := v.(map[string]any)
				if !ok {
					return meta.Errorf(key(k), `must be a table of uplink names to addresses: via = { isp0 = "ADDR:PORT" }`)
				}
				for un, a := range m {
					vk := key("via." + un)
					if _, ok := uplinks[un]; !ok {
						return meta.Errorf(vk, "no [[uplink]] is named %q", un)
					}
					s, ok := a.(string)
					if !ok {
						return meta.Errorf(vk, "must be an address:port string")
					}
					if _, err := netip.ParseAddrPort(s); err != nil {
						return meta.Errorf(vk, "not an address:port: %v", err)
					}
					pc.Via[un] = s
				}
			default:
				return meta.Errorf(key(k), "unknown key %q (a [[proxy]] has name, address and via)", "proxy."+k)
			}
		}
		if pc.Name == "" {
			pc.Name = fmt.Sprintf("proxy%d", i)
		}
		if strings.ContainsAny(pc.Name, "\"\\\n") {
			return meta.Errorf(key("name"), "must not contain quotes, backslashes or newlines")
		}
		if names[pc.Name] {
			return meta.Errorf(key("name"), "proxy %q is configured twice", pc.Name)
		}
		names[pc.Name] = true
		if pc.Address != "" {
			if _, err := netip.ParseAddrPort(pc.Address); err != nil {
				return meta.Errorf(key("address"), "not an address:port: %v", err)
			}
		}
		for _, u := range c.Uplinks {
			a := pc.Via[u.Name]
			if a == "" {
				a = pc.Address
			}
			if a == "" {
				return meta.Errorf(key("address"), "no address for uplink %q: set address, or via for every uplink", u.Name)
			}
			ap, _ := netip.ParseAddrPort(a)
			pc.Paths = append(pc.Paths, ap)
		}
		p.List = append(p.List, pc)
	}
	if len(p.List) == 0 {
		return meta.Errorf("proxy", "no proxy configured")
	}
	// The first proxy's address stays visible per uplink, as in the single form.
	for i := range c.Uplinks {
		c.Uplinks[i].Proxy = p.List[0].Paths[i].String()
	}
	return checkFamilies(c, meta, p.List)
}

// checkFamilies refuses an uplink that would have to reach IPv4 and IPv6
// proxies from one socket.
func checkFamilies(c *Config, meta *config.Meta, list []ProxyConfig) error {
	for i, u := range c.Uplinks {
		v6 := is6(list[0].Paths[i])
		for _, pc := range list[1:] {
			if is6(pc.Paths[i]) != v6 {
				return meta.Errorf("proxy", "uplink %q would reach both IPv4 and IPv6 proxies; use one family per uplink", u.Name)
			}
		}
	}
	return nil
}

func is6(ap netip.AddrPort) bool { return ap.Addr().Is6() && !ap.Addr().Is4In6() }

// proxyConn is one proxy at run time: its control session (keepalives and
// probes, always running, so a failover to it needs no setup) and one path per
// uplink, each with its own health.
type proxyConn struct {
	idx   int
	name  string
	paths []*path     // by uplink index
	set   *uplink.Set // the same paths, for sending (placement, moving off dead paths, batches)
	ctrl  *routerSession

	// Proxy is what the choice ranks it by: its paths' health, its load
	// and when it came back.
	proxychoice.Proxy
	probeSeq atomic.Uint32
	// epoch is the proxy's restart epoch from its pongs (0: none heard yet).
	// New sessions derive their keys from it; when it changes the proxy
	// restarted and lost every session, and they are re-keyed (restarted).
	epoch atomic.Uint64
	// silent: no path answers and every session carries its hello again
	// (see forceHellos). The control goroutine only.
	silent bool

	wasUp bool // the control goroutine only
	// standby: neither best nor reserve for any server and carrying no
	// session, so keepalives to it slow down to standbyPingInterval. The
	// control goroutine only.
	standby bool

	upGauge, rttGauge, sessGauge *metrics.Gauge
}

// path is one (uplink, proxy) pair: where datagrams for the proxy go on that
// uplink, and how well it answers.
type path struct {
	u        *uplinkConn
	px       *proxyConn
	addr     netip.AddrPort
	health   *uplink.Health
	pingSeq  uint32 // the control goroutine only
	lastPing int64  // the control goroutine only
	wasUp    bool   // the control goroutine only
	up       *metrics.Gauge
	srtt     *metrics.Gauge
}

// newProxies builds the run-time proxies and their paths over the uplinks, and
// points each uplink's health at its path to the first proxy.
func (r *Router) newProxies() {
	hc := uplink.HealthConfig{PingInterval: r.cfg.PingInterval.Duration, DownAfter: r.cfg.DownAfter.Duration}
	for j, pc := range r.cfg.Proxy.List {
		plbl := `{proxy="` + pc.Name + `"}`
		px := &proxyConn{idx: j, name: pc.Name, wasUp: true,
			upGauge:   r.reg.Gauge("router_proxy_up"+plbl, "1 when some path to the proxy answers keepalives."),
			rttGauge:  r.reg.Gauge("router_proxy_rtt_microseconds"+plbl, "The router's RTT to the proxy: lowest smoothed RTT of its live paths."),
			sessGauge: r.reg.Gauge("router_proxy_sessions"+plbl, "Sessions carried by the proxy."),
		}
		for i, u := range r.uplinks {
			lbl := `{uplink="` + u.name + `",proxy="` + pc.Name + `"}`
			pt := &path{u: u, px: px, addr: pc.Paths[i], wasUp: true,
				health: uplink.NewHealth(hc),
				up:     r.reg.Gauge("router_path_up"+lbl, "1 when the path (uplink, proxy) answers keepalives."),
				srtt:   r.reg.Gauge("router_path_srtt_microseconds"+lbl, "Smoothed keepalive RTT per path (uplink, proxy)."),
			}
			px.paths = append(px.paths, pt)
			px.Paths = append(px.Paths, pt.health)
		}
		px.set = &uplink.Set{Copies: r.cfg.CopiesPerUplink, Errors: r.m.sendErrors}
		for i, pt := range px.paths {
			px.set.Paths = append(px.set.Paths, &uplink.Path{Index: i, Name: pt.u.name, Conn: pt.u.conn, To: pt.addr, Health: pt.health, Sent: pt.u.sent, TOS: pt.u.tos})
		}
		r.proxies = append(r.proxies, px)
	}
	for i, u := range r.uplinks {
		u.health = r.proxies[0].paths[i].health
		u.proxy = r.proxies[0].paths[i].addr
	}
}

// sendPath sends one datagram on a path.
func (r *Router) sendPath(p *path, dg []byte) {
	if err := p.u.conn.WriteTo(dg, p.addr); err != nil {
		r.m.sendErrors.Inc()
		return
	}
	p.u.sent.Inc()
}

// sendOn sends dg on uplink u to the proxy of the session dg belongs to (read
// from its header). The delayed copies take this way: the session may have
// moved to another proxy since the copy was queued, and the copy must go where
// its session lives.
func (r *Router) sendOn(u *uplinkConn, dg []byte) {
	if len(dg) < wire.HeaderLen {
		return
	}
	t, ok := r.byID.Peek(binary.BigEndian.Uint64(dg[4:12]))
	if !ok {
		return // the session ended meanwhile
	}
	r.sendPath(t.px.paths[u.idx], dg)
}

// ctrlSession returns the control session with the given ID, or nil. The loop
// is over the configured proxies, a handful at most.
func (r *Router) ctrlSession(id uint64) *routerSession {
	for _, p := range r.proxies {
		if p.ctrl.id == id {
			return p.ctrl
		}
	}
	return nil
}

// sendPings sends the keepalives that are due on every path and notes path and
// proxy state changes. The control goroutine calls it each tick.
func (r *Router) sendPings(buf []byte, now int64) {
	for _, px := range r.proxies {
		for _, pt := range px.paths {
			if !pt.health.PingDue(now) || px.standby && now-pt.lastPing < int64(standbyPingInterval) {
				continue
			}
			pt.lastPing = now
			pt.pingSeq++
			ping := wire.Ping{Seq: pt.pingSeq, Uplink: uint8(pt.u.idx), SentAt: now}
			var pb [wire.PingLen]byte
			dg, err := px.ctrl.send.SealControl(buf, wire.TypePing, ping.Put(pb[:]), now)
			if err == nil {
				pt.health.OnPingSent(pt.pingSeq, now)
				r.sendPath(pt, dg)
			}
		}
	}
}

// notePaths logs and exports path and proxy state, and reports whether any
// path went up or down.
func (r *Router) notePaths(now int64) (changed bool) {
	multi := len(r.proxies) > 1
	for _, px := range r.proxies {
		for _, pt := range px.paths {
			up := pt.health.Up(now)
			st := pt.health.Stats(now)
			if up != pt.wasUp {
				pt.wasUp, changed = up, true
				args := []any{"uplink", pt.u.name}
				if multi {
					args = append(args, "proxy", px.name)
				}
				if up {
					r.log.Info("uplink up", append(args, "srtt", st.SRTT, "min_rtt", st.MinRTT)...)
				} else {
					r.log.Warn("uplink down: no keepalive answer", append(args, "down_after", r.cfg.DownAfter.Duration)...)
				}
			}
			pt.up.Set(b2i(up))
			pt.srtt.Set(st.SRTT.Microseconds())
		}
		up := px.AnyUp(now)
		if up != px.wasUp {
			px.wasUp = up
			if up {
				px.BackUp(now)
				if multi {
					r.log.Info("proxy up", "proxy", px.name)
				}
			} else if multi {
				r.log.Warn("proxy down: no path answers keepalives", "proxy", px.name, "down_after", r.cfg.DownAfter.Duration)
			}
		}
		px.upGauge.Set(b2i(up))
		if rtt, ok := px.OwnRTT(now); ok {
			px.rttGauge.Set(rtt.Microseconds())
		}
	}
	for _, u := range r.uplinks {
		st := u.health.Stats(now)
		u.up.Set(b2i(st.Up))
		u.srtt.Set(st.SRTT.Microseconds())
	}
	return changed
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// ProxyStats is what the router knows about one proxy.
type ProxyStats struct {
	Name       string
	Up         bool          // some path answers keepalives
	RTT        time.Duration // the router's own RTT to it; 0 while unknown
	Loss       float64       // keepalives missed on every path at once
	Overloaded bool
	Sessions   int            // game sessions it carries now
	Paths      []uplink.Stats // per uplink, in config order
}

// ProxyStats returns the state of each proxy, in config order.
func (r *Router) ProxyStats() []ProxyStats {
	now := mono.Now()
	count := make([]int, len(r.proxies))
	r.byID.Range(func(_ uint64, t *routerSession) bool {
		if t.head.side != nil && t.head.cur.Load() == t {
			count[t.px.idx]++
		}
		return true
	})
	out := make([]ProxyStats, len(r.proxies))
	for j, px := range r.proxies {
		s := ProxyStats{Name: px.name, Up: px.AnyUp(now), Loss: px.Loss(now), Overloaded: px.Overloaded(), Sessions: count[j]}
		if rtt, ok := px.OwnRTT(now); ok {
			s.RTT = rtt
		}
		for _, pt := range px.paths {
			s.Paths = append(s.Paths, pt.health.Stats(now))
		}
		out[j] = s
	}
	return out
}

// forceHellos puts the hello back on every datagram of every session to px
// (its control session too) while px answers on no path: a proxy that
// restarted has lost them, and the first datagram that reaches it once it is
// back then re-opens its session, with no wait for a keepalive round. It runs
// once per silence, on the control goroutine.
func (r *Router) forceHellos(now int64) {
	for _, px := range r.proxies {
		up := px.AnyUp(now)
		if up || px.silent {
			px.silent = !up
			continue
		}
		px.silent = true
		px.ctrl.send.ForceHello(now)
		r.byID.Range(func(_ uint64, rs *routerSession) bool {
			if rs.px == px {
				rs.send.ForceHello(now)
			}
			return true
		})
	}
}

// noteEpoch records the restart epoch of px's pong. A change from a known one
// means the proxy restarted and lost every session: each is re-keyed for the
// new epoch (the proxy refuses hellos of an old one for game sessions, so
// nothing captured before its restart can be replayed into it) and says hello
// again at once. Called on the uplink goroutines.
func (r *Router) noteEpoch(px *proxyConn, epoch uint64, now int64) {
	old := px.epoch.Load()
	if epoch == 0 || epoch == old || !px.epoch.CompareAndSwap(old, epoch) {
		return
	}
	// The first epoch heard moves the sessions opened before it to it too (the
	// proxy follows on their next hello), so none is keyed without one.
	if old != 0 {
		r.m.proxyRestarts.Inc()
		r.log.Warn("proxy restarted: re-opening its sessions", "proxy", px.name)
	}
	r.byID.Range(func(_ uint64, rs *routerSession) bool {
		if rs.px == px {
			rs.rekey(epoch, old == 0, now)
		}
		return true
	})
}

// rekey derives the session's keys for the proxy's new epoch, on both
// halves, and forces the hello back on (see tunnel.Sender.Rekey). upgrade: the
// proxy did not restart, it only named its epoch for the first time, so the
// replies it seals with the old keys until it follows still open.
func (rs *routerSession) rekey(epoch uint64, upgrade bool, now int64) {
	if rs.send.Epoch() == epoch {
		return
	}
	// A failure leaves the old keys: the next pong of the epoch tries again.
	_ = tunnel.FollowEpoch(rs.send, rs.recv, &rs.r.key, rs.id, epoch, upgrade, now)
}
