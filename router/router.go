// Package router is the program on the gamer's side. In explicit mode (no root
// needed) it listens on a local UDP port per configured game server; each game
// packet that arrives there is coded with RAIC, sealed once per shard, and sent
// over every live uplink to the proxy. Replies come back over every uplink; the
// first complete copy is written back to the game from the same local port.
package router

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/session"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/udp"
	"github.com/raicnet/raic/pkg/uplink"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

const batch = 32

// Router is a running router.
type Router struct {
	cfg  *Config
	log  *slog.Logger
	key  wire.Key
	reg  *metrics.Registry
	m    counters
	seed uint64

	uplinks  []*uplinkConn
	forwards []*forward
	byID     *session.Table[uint64, *routerSession]
	ctrl     *routerSession // control session: keepalives, never expires

	closing atomic.Bool
	wg      sync.WaitGroup
	httpSrv *http.Server
}

type counters struct {
	fromGame, toGame, sealErrors, sendErrors             *metrics.Counter
	malformed, unknownSession, duplicate, authFailed     *metrics.Counter
	sessionsCreated, sessionsEvicted, sessionsIdle       *metrics.Counter
	delayedSent, delayedDropped, noLiveUplink, pongsSeen *metrics.Counter
}

func newCounters(r *metrics.Registry) counters {
	drop := func(reason string) *metrics.Counter {
		return r.Counter(`router_dropped_total{reason="`+reason+`"}`, "Datagrams from the proxy dropped, by reason.")
	}
	return counters{
		fromGame:        r.Counter("router_game_packets_in_total", "Packets received from game clients."),
		toGame:          r.Counter("router_game_packets_out_total", "Packets delivered to game clients."),
		sealErrors:      r.Counter("router_seal_errors_total", "Packets that could not be coded or sealed (too large)."),
		sendErrors:      r.Counter("router_send_errors_total", "Errors sending on an uplink."),
		malformed:       drop("malformed"),
		unknownSession:  drop("unknown_session"),
		duplicate:       drop("duplicate"),
		authFailed:      drop("auth"),
		sessionsCreated: r.Counter("router_sessions_created_total", "Sessions created."),
		sessionsEvicted: r.Counter("router_sessions_evicted_total", "Sessions evicted because the table was full."),
		sessionsIdle:    r.Counter("router_sessions_expired_total", "Sessions ended after being idle."),
		delayedSent:     r.Counter("router_delayed_copies_total", "Delayed extra copies sent."),
		delayedDropped:  r.Counter("router_delayed_copies_dropped_total", "Delayed copies dropped because their queue was full."),
		noLiveUplink:    r.Counter("router_no_live_uplink_total", "Packets sent while every uplink was down (sent on all)."),
		pongsSeen:       r.Counter("router_pongs_total", "Keepalive answers received."),
	}
}

// uplinkConn is one uplink: its socket, where it sends, and its health.
type uplinkConn struct {
	idx     int
	name    string
	conn    *udp.Conn
	proxy   netip.AddrPort
	health  *uplink.Health
	pingSeq atomic.Uint32
	wasUp   bool // only the pinger goroutine reads and writes it
	sent    *metrics.Counter
	recv    *metrics.Counter
	up      *metrics.Gauge
	srtt    *metrics.Gauge
}

// forward is one local listening socket of explicit mode and its sessions.
type forward struct {
	idx      int
	conn     *udp.Conn
	server   netip.AddrPort
	params   raic.Params
	interval time.Duration
	flows    *session.Table[netip.AddrPort, *routerSession]
	delayed  *delayQueue
}

// gameSide is where a session's game packets come from and where the server's
// replies go back to: a local socket in explicit mode (forward), the TUN device in
// transparent mode.
type gameSide interface {
	// writeBack delivers a packet from the server to the game client.
	writeBack(rs *routerSession, pkt []byte) error
	// touch keeps the session alive: a reply counts as activity.
	touch(rs *routerSession, now int64)
	// end forgets the session (the proxy closed it).
	end(rs *routerSession)
}

// routerSession is one game flow (client address, server) carried to the proxy.
type routerSession struct {
	r      *Router
	id     uint64
	side   gameSide // nil for the control session
	client netip.AddrPort
	target netip.AddrPort
	send   *tunnel.Sender
	recv   *tunnel.Receiver

	lastSend int64 // only the goroutine reading the game side touches these two
	interval int64 // smoothed gap between the game's packets, ns
}

// New builds a router from a checked config: it opens the uplink sockets and the
// local forward sockets.
func New(cfg *Config, log *slog.Logger) (*Router, error) {
	r := &Router{cfg: cfg, log: log, reg: metrics.NewRegistry()}
	r.m = newCounters(r.reg)
	var err error
	if r.key, err = wire.ParseKey(cfg.Key); err != nil {
		return nil, err
	}
	var sb [8]byte
	rand.Read(sb[:])
	r.seed = binary.LittleEndian.Uint64(sb[:])
	ok := false
	defer func() {
		if !ok {
			r.closeSockets()
		}
	}()
	for i, uc := range cfg.Uplinks {
		opt := udp.Options{Device: uc.Device, RecvBuffer: 1 << 20, SendBuffer: 1 << 20}
		if uc.Source != "" {
			opt.Local, _ = parseHostPort(uc.Source)
		}
		network := "udp4"
		proxy, _ := netip.ParseAddrPort(uc.Proxy)
		if proxy.Addr().Is6() && !proxy.Addr().Is4In6() {
			network = "udp6"
		}
		conn, err := udp.Listen(network, opt)
		if err != nil {
			return nil, fmt.Errorf("uplink %s: %w", uc.Name, err)
		}
		lbl := `{uplink="` + uc.Name + `"}`
		r.uplinks = append(r.uplinks, &uplinkConn{
			idx: i, name: uc.Name, conn: conn, proxy: proxy,
			health: uplink.NewHealth(uplink.HealthConfig{PingInterval: cfg.PingInterval.Duration, DownAfter: cfg.DownAfter.Duration}),
			wasUp:  true,
			sent:   r.reg.Counter("router_uplink_datagrams_sent_total"+lbl, "Datagrams sent per uplink."),
			recv:   r.reg.Counter("router_uplink_datagrams_received_total"+lbl, "Datagrams received per uplink."),
			up:     r.reg.Gauge("router_uplink_up"+lbl, "1 when the uplink answers keepalives."),
			srtt:   r.reg.Gauge("router_uplink_srtt_microseconds"+lbl, "Smoothed keepalive RTT per uplink."),
		})
	}
	// The flow tables own a session's lifetime (idle expiry, eviction); byID only
	// finds sessions for the receive path, so it is sized to hold them all.
	r.byID = session.NewTable(session.Config[uint64, *routerSession]{
		MaxEntries: cfg.MaxSessions * len(cfg.Forwards),
		Hash:       func(id uint64) uint64 { return id * 0x9e3779b97f4a7c15 },
	})
	for i, fc := range cfg.Forwards {
		listen, _ := netip.ParseAddrPort(fc.Listen)
		server, _ := netip.ParseAddrPort(fc.Server)
		params, _ := raic.ParseParams(fc.Scheme)
		conn, err := udp.Listen("udp", udp.Options{Local: listen, RecvBuffer: 1 << 20, SendBuffer: 1 << 20})
		if err != nil {
			return nil, fmt.Errorf("forward %s: %w", fc.Listen, err)
		}
		f := &forward{idx: i, conn: conn, server: server, params: params,
			interval: time.Duration(float64(time.Second) / fc.ExpectedPPS)}
		f.flows = session.NewTable(session.Config[netip.AddrPort, *routerSession]{
			MaxEntries: cfg.MaxSessions, IdleTimeout: cfg.SessionIdle.Duration,
			Hash:     func(a netip.AddrPort) uint64 { return hashAddrPort(a, r.seed) },
			OnRemove: r.onFlowRemoved,
		})
		if cfg.DelayedCopy > 0 {
			f.delayed = newDelayQueue(256)
		}
		r.forwards = append(r.forwards, f)
	}
	if r.ctrl, err = r.newSession(nil, netip.AddrPort{}, netip.AddrPort{}, raic.Params{Scheme: raic.SchemeCopy, K: 1}, 0); err != nil {
		return nil, err
	}
	if err := r.setupTransparent(); err != nil {
		return nil, err
	}
	if err := r.setupSuppression(); err != nil {
		return nil, err
	}
	ok = true
	return r, nil
}

func hashAddrPort(a netip.AddrPort, seed uint64) uint64 {
	b := a.Addr().As16()
	h := seed ^ uint64(a.Port())
	h = (h ^ binary.LittleEndian.Uint64(b[:8])) * 0x9e3779b97f4a7c15
	h = (h ^ binary.LittleEndian.Uint64(b[8:])) * 0x9e3779b97f4a7c15
	return h ^ h>>29
}

// ForwardAddr is the local address of forward i (where game clients send).
func (r *Router) ForwardAddr(i int) netip.AddrPort { return r.forwards[i].conn.LocalAddr() }

// Metrics returns the router's metric registry.
func (r *Router) Metrics() *metrics.Registry { return r.reg }

// newSession makes a session from client to target whose replies go to side (the
// control session has no side and no target), with fresh random ID and salt, so
// keys never repeat across restarts. interval is the expected gap between the
// game's packets until it is measured.
func (r *Router) newSession(side gameSide, client, target netip.AddrPort, params raic.Params, interval time.Duration) (*routerSession, error) {
	var rb [8]byte
	var id uint64
	for id == 0 {
		if _, err := rand.Read(rb[:]); err != nil {
			return nil, err
		}
		id = binary.LittleEndian.Uint64(rb[:])
	}
	salt, err := wire.NewSalt()
	if err != nil {
		return nil, err
	}
	send, recv, err := wire.DeriveKeys(&r.key, &salt, id, wire.RoleClient)
	if err != nil {
		return nil, err
	}
	hello := &wire.Hello{Salt: salt, Target: target}
	hello.SetClientID(r.cfg.ClientID)
	rs := &routerSession{r: r, id: id, side: side, client: client, target: target, interval: int64(interval)}
	if rs.send, err = tunnel.NewSender(send, id, params, hello); err != nil {
		return nil, err
	}
	rs.recv = tunnel.NewReceiver(recv, raic.DecoderConfig{})
	return rs, nil
}

// Run serves until ctx ends.
func (r *Router) Run(ctx context.Context) error {
	if r.cfg.Metrics != "" {
		ln, err := net.Listen("tcp", r.cfg.Metrics)
		if err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", r.reg.Handler())
		r.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go r.httpSrv.Serve(ln)
	}
	for _, u := range r.uplinks {
		r.log.Info("uplink ready", "uplink", u.name, "local", u.conn.LocalAddr().String(), "proxy", u.proxy.String())
		r.wg.Add(1)
		go r.uplinkLoop(u)
	}
	for _, f := range r.forwards {
		r.log.Info("forwarding", "listen", f.conn.LocalAddr().String(), "server", f.server.String(), "scheme", f.params.String())
		r.wg.Add(1)
		go r.forwardLoop(f)
		if f.delayed != nil {
			r.wg.Add(1)
			go r.delayLoop(ctx, f)
		}
	}
	r.wg.Add(1)
	go r.pinger(ctx)
	if err := r.startTransparent(ctx); err != nil {
		r.Close()
		return err
	}
	if err := r.startSuppression(ctx); err != nil {
		r.Close()
		return err
	}
	<-ctx.Done()
	r.Close()
	return nil
}

// Close stops the router: it tells the proxy its sessions are over and closes
// every socket.
func (r *Router) Close() {
	if r.closing.Swap(true) {
		return
	}
	var flows []*routerSession
	r.byID.Range(func(_ uint64, rs *routerSession) bool { flows = append(flows, rs); return true })
	for _, rs := range flows {
		r.sendClose(rs)
	}
	r.sendClose(r.ctrl)
	r.closeSuppression()
	r.closeTransparent()
	r.closeSockets()
	if r.httpSrv != nil {
		r.httpSrv.Close()
	}
	for _, f := range r.forwards {
		if f.delayed != nil {
			f.delayed.close()
		}
	}
	r.wg.Wait()
}

func (r *Router) closeSockets() {
	for _, u := range r.uplinks {
		u.conn.Close()
	}
	for _, f := range r.forwards {
		f.conn.Close()
	}
}

func (r *Router) sendClose(rs *routerSession) {
	buf := make([]byte, wire.MaxDatagram)
	dg, err := rs.send.SealControl(buf, wire.TypeClose, nil, mono.Now())
	if err != nil {
		return
	}
	for _, u := range r.uplinks {
		u.conn.WriteTo(dg, u.proxy)
	}
}

// onFlowRemoved ends a session whose flow entry went away (idle, evicted or
// deleted): the receive path forgets it and the proxy is told.
func (r *Router) onFlowRemoved(_ netip.AddrPort, rs *routerSession, why session.Reason) {
	switch why {
	case session.ReasonEvicted:
		r.m.sessionsEvicted.Inc()
		r.log.Warn("session evicted: table full", "session", rs.id, "max_sessions", r.cfg.MaxSessions)
	case session.ReasonIdle:
		r.m.sessionsIdle.Inc()
		r.log.Debug("session idle, ended", "session", rs.id, "client", rs.client.String())
	}
	r.byID.Delete(rs.id)
	if !r.closing.Load() {
		r.sendClose(rs)
	}
}

// forwardLoop reads game packets from one local socket and sends them on.
func (r *Router) forwardLoop(f *forward) {
	defer r.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := f.conn.ReadFrom(buf)
		if err != nil {
			if r.closing.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		r.fromGame(f, buf[:n], from, mono.Now())
	}
}

// fromGame is the send path of one game packet arriving on a forward socket.
func (r *Router) fromGame(f *forward, pkt []byte, from netip.AddrPort, now int64) {
	rs, ok := f.flows.Get(from, now)
	if !ok {
		var created bool
		var err error
		rs, created, err = f.flows.GetOrCreate(from, now, func() (*routerSession, error) {
			return r.newSession(f, from, f.server, f.params, f.interval)
		})
		if err != nil {
			r.log.Error("cannot create session", "err", err)
			return
		}
		if created {
			r.registerSession(rs, now)
		}
	}
	r.sendPacket(rs, pkt, now, f.delayed)
}

// registerSession makes a new session findable by the receive path.
func (r *Router) registerSession(rs *routerSession, now int64) {
	r.byID.GetOrCreate(rs.id, now, func() (*routerSession, error) { return rs, nil })
	r.m.sessionsCreated.Inc()
	r.log.Info("session started", "session", rs.id, "client", rs.client.String(), "server", rs.target.String(), "scheme", rs.send.Params().String())
}

// sendPacket codes, seals and sends one game packet of rs on the uplinks, then
// does the bookkeeping: packet interval, delayed copies (when dq is not nil), and
// the suppression hook. Called by the one goroutine reading rs's game side.
func (r *Router) sendPacket(rs *routerSession, pkt []byte, now int64, dq *delayQueue) {
	r.m.fromGame.Inc()
	_, dgs, err := rs.send.Seal(pkt, now)
	if err != nil {
		r.m.sealErrors.Inc()
		return
	}
	r.sendShards(dgs, now)
	// Bookkeeping only after every copy is on its way.
	if rs.lastSend != 0 {
		gap := now - rs.lastSend
		if gap > 0 && gap < int64(time.Second) {
			rs.interval += (gap - rs.interval) / 8
		}
	}
	rs.lastSend = now
	if dq != nil && len(dgs) == 1 {
		due := now + int64(r.cfg.DelayedCopy*float64(rs.interval))
		for _, u := range r.uplinks {
			if u.health.Up(now) && !dq.push(due, u.idx, dgs[0]) {
				r.m.delayedDropped.Inc()
			}
		}
	}
	r.observeGamePacket(rs, now, true)
}

// sendShards puts a packet's datagrams on the uplinks. A single datagram (RAIC-1)
// goes on every uplink, CopiesPerUplink times: a copy on an uplink that merely
// looks down costs nothing but that uplink's bandwidth, while skipping one on a
// false alarm (three keepalives lost in a row happens on a lossy link) loses the
// copy that would have arrived. Coded shards are placed by raic.Place on the
// uplinks that answer keepalives, since a shard on a dead uplink is a lost shard.
func (r *Router) sendShards(dgs [][]byte, now int64) {
	if len(dgs) == 1 {
		for _, u := range r.uplinks {
			for c := 0; c < r.cfg.CopiesPerUplink; c++ {
				r.sendOn(u, dgs[0])
			}
		}
		return
	}
	var live [16]raic.UplinkState
	states := live[:len(r.uplinks)]
	anyUp := false
	for i, u := range r.uplinks {
		up := u.health.Up(now)
		states[i] = raic.UplinkState{Up: up, Weight: 1}
		anyUp = anyUp || up
	}
	if !anyUp {
		// Every uplink looks down: keep trying them all rather than go silent.
		r.m.noLiveUplink.Inc()
		for i := range states {
			states[i].Up = true
		}
	}
	var placement [64]int
	out := raic.Place(len(dgs), states, placement[:0])
	for i, dg := range dgs {
		r.sendOn(r.uplinks[out[i]], dg)
	}
}

func (r *Router) sendOn(u *uplinkConn, dg []byte) {
	if err := u.conn.WriteTo(dg, u.proxy); err != nil {
		r.m.sendErrors.Inc()
		return
	}
	u.sent.Inc()
}

// uplinkLoop reads what the proxy sends back on one uplink.
func (r *Router) uplinkLoop(u *uplinkConn) {
	defer r.wg.Done()
	msgs := make([]udp.Message, batch)
	for i := range msgs {
		msgs[i].Buf = make([]byte, wire.MaxDatagram+1)
	}
	var h wire.Header
	for {
		n, err := u.conn.ReadBatch(msgs)
		if err != nil {
			if r.closing.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		now := mono.Now()
		for i := 0; i < n; i++ {
			r.fromProxy(u, msgs[i].Buf[:msgs[i].N], &h, now)
		}
	}
}

// fromProxy is the receive path of one datagram from the proxy.
func (r *Router) fromProxy(u *uplinkConn, dg []byte, h *wire.Header, now int64) {
	u.recv.Inc()
	off, err := wire.Parse(dg, h, nil)
	if err != nil || h.Flags&wire.FlagHello != 0 {
		r.m.malformed.Inc()
		return
	}
	rs := r.ctrl
	if h.Session != r.ctrl.id {
		var ok bool
		if rs, ok = r.byID.Get(h.Session, now); !ok {
			r.m.unknownSession.Inc()
			return
		}
		if rs.side != nil {
			rs.side.touch(rs, now) // replies keep the flow alive too
		}
	}
	body, err := rs.recv.Receive(dg, h, off, now, rs)
	switch {
	case errors.Is(err, tunnel.ErrDuplicate):
		r.m.duplicate.Inc()
		return
	case err != nil:
		r.m.authFailed.Inc()
		return
	}
	rs.send.Heard(now)
	switch h.Type {
	case wire.TypePong:
		var pong wire.Pong
		if wire.ParsePong(body, &pong) != nil || int(pong.Ping.Uplink) >= len(r.uplinks) {
			r.m.malformed.Inc()
			return
		}
		r.m.pongsSeen.Inc()
		// The pong answers the uplink its ping left on, whichever socket it came
		// back to.
		r.uplinks[pong.Ping.Uplink].health.OnPong(pong.Ping.Seq, pong.Ping.SentAt, now)
	case wire.TypeClose:
		if rs.side != nil {
			rs.side.end(rs)
		}
	}
}

// Deliver writes a packet from the server back to the game client (tunnel.Sink).
func (rs *routerSession) Deliver(_ uint64, pkt []byte) {
	if rs.side == nil {
		return
	}
	if err := rs.side.writeBack(rs, pkt); err != nil {
		rs.r.m.sendErrors.Inc()
		return
	}
	rs.r.m.toGame.Inc()
	rs.r.observeGamePacket(rs, mono.Now(), false)
}

// The forward of explicit mode is a gameSide: replies leave from the socket the
// game sent to, towards the game's address.
func (f *forward) writeBack(rs *routerSession, pkt []byte) error {
	return f.conn.WriteTo(pkt, rs.client)
}
func (f *forward) touch(rs *routerSession, now int64) { f.flows.Get(rs.client, now) }
func (f *forward) end(rs *routerSession)              { f.flows.Delete(rs.client) }

// pinger sends keepalives on every uplink over the control session, logs uplink
// state changes, and sweeps idle sessions.
func (r *Router) pinger(ctx context.Context) {
	defer r.wg.Done()
	tick := r.cfg.PingInterval.Duration / 4
	t := time.NewTicker(tick)
	defer t.Stop()
	buf := make([]byte, wire.MaxDatagram)
	lastSweep := mono.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := mono.Now()
		for _, u := range r.uplinks {
			if u.health.PingDue(now) {
				seq := u.pingSeq.Add(1)
				ping := wire.Ping{Seq: seq, Uplink: uint8(u.idx), SentAt: now}
				var pb [wire.PingLen]byte
				dg, err := r.ctrl.send.SealControl(buf, wire.TypePing, ping.Put(pb[:]), now)
				if err == nil {
					u.health.OnPingSent(seq, now)
					r.sendOn(u, dg)
				}
			}
			up := u.health.Up(now)
			st := u.health.Stats(now)
			if up != u.wasUp {
				u.wasUp = up
				if up {
					r.log.Info("uplink up", "uplink", u.name, "srtt", st.SRTT, "min_rtt", st.MinRTT)
				} else {
					r.log.Warn("uplink down: no keepalive answer", "uplink", u.name, "down_after", r.cfg.DownAfter.Duration)
				}
			}
			if up {
				u.up.Set(1)
			} else {
				u.up.Set(0)
			}
			u.srtt.Set(st.SRTT.Microseconds())
		}
		if now-lastSweep > int64(time.Second) {
			lastSweep = now
			for _, f := range r.forwards {
				f.flows.Sweep(now)
			}
			r.byID.Range(func(_ uint64, rs *routerSession) bool { rs.recv.Expire(now); return true })
		}
	}
}

// UplinkStats returns the health of each uplink, in config order.
func (r *Router) UplinkStats() []uplink.Stats {
	now := mono.Now()
	out := make([]uplink.Stats, len(r.uplinks))
	for i, u := range r.uplinks {
		out[i] = u.health.Stats(now)
	}
	return out
}
