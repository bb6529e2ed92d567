// Package router is the program on the gamer's side. In explicit mode (no root
// needed) it listens on a local UDP port per configured game server; each game
// packet that arrives there is coded with RAIC, sealed once per shard, and sent
// over every live uplink to the session's proxy. Replies come back over every
// uplink; the first complete copy is written back to the game from the same
// local port. With several proxies each session goes to the one nearest its
// server and moves to a reserve when that one fails (choice.go).
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

	"github.com/raicnet/raic/pkg/logging"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/proxychoice"
	"github.com/raicnet/raic/pkg/quality"
	"github.com/raicnet/raic/pkg/session"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/udp"
	"github.com/raicnet/raic/pkg/uplink"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
	"github.com/raicnet/raic/suppress"
)

// Router is a running router.
type Router struct {
	cfg  *Config
	log  *slog.Logger
	key  wire.Key
	reg  *metrics.Registry
	m    counters
	seed uint64
	// flowLines bounds the log lines written per flow (a session started,
	// ended, evicted, refused): a flood of new flows on the LAN, or a table
	// that keeps evicting, must not become a flood of lines. What it holds
	// back is counted in the next line it lets through (lines_suppressed).
	flowLines *logging.Limiter

	uplinks  []*uplinkConn
	anyDSCP  bool            // some uplink marks data datagrams (dscp.go)
	returns  *uplink.Returns // opens what the proxies send back, counting drops
	proxies  []*proxyConn
	forwards []*forward
	// byID finds sessions for the receive path: every session to a proxy, the
	// current one of each flow and, for a short grace, those it moved away from.
	byID *session.Table[uint64, *routerSession]
	ctrl *routerSession // the first proxy's control session (each proxy has one)
	ch   chooser
	tp   *transparent // transparent mode (transparent.go); nil when off

	closing atomic.Bool
	wg      sync.WaitGroup
	httpSrv *http.Server
	sup     *suppression // [suppress] at run time (suppression.go); nil when off
	tcp     *tcpSide     // [tcp] at run time (tcp.go); nil when off
	peers   []*peerRun   // [[peer]] at run time (peer.go), appended under peersMu
	peersMu sync.Mutex
	// The peers' LAN flows in transparent mode (peer_lan.go): lanPeers per
	// [[peer]], lan once transparent mode is set up.
	lanPeers []*lanPeer
	lan      *siteLAN

	quality        []*uplinkQuality // per uplink, from the proxies' reports (auto.go)
	qbufs          [][]byte         // per uplink: the reply-direction reports its goroutine seals
	schemeSwitches *metrics.Counter
	replyReports   *metrics.Counter
}

type counters struct {
	fromGame, toGame, sealErrors, sendErrors                            *metrics.Counter
	tooLarge, dscpMarked, dscpOverRate                                  *metrics.Counter
	malformed, unknownSession, duplicate, authFailed                    *metrics.Counter
	sessionsCreated, sessionsEvicted, sessionsIdle                      *metrics.Counter
	delayedSent, delayedDropped, noLiveUplink, pongsSeen, proxyRestarts *metrics.Counter
	movedCopies, keepalives                                             *metrics.Counter
}

func newCounters(r *metrics.Registry) counters {
	drop := func(reason string) *metrics.Counter {
		return r.Counter(`router_dropped_total{reason="`+reason+`"}`, "Datagrams from the proxy dropped, by reason.")
	}
	return counters{
		fromGame:        r.Counter("router_game_packets_in_total", "Packets received from game clients."),
		toGame:          r.Counter("router_game_packets_out_total", "Packets delivered to game clients."),
		sealErrors:      r.Counter("router_seal_errors_total", "Packets that could not be coded or sealed (too large)."),
		dscpMarked:      r.Counter("router_dscp_marked_packets_total", "Game packets whose datagrams carried the uplinks' DSCP mark."),
		dscpOverRate:    r.Counter("router_dscp_over_rate_packets_total", "Game packets sent unmarked because their session was above its expected rate."),
		tooLarge:        r.Counter("router_too_large_total", "Game packets dropped because no path carries them: over 65,535 bytes, or more X-fragments than the scheme allows."),
		sendErrors:      r.Counter("router_send_errors_total", "Errors sending on an uplink."),
		malformed:       drop("malformed"),
		sessionsCreated: r.Counter("router_sessions_created_total", "Sessions created."),
		sessionsEvicted: r.Counter("router_sessions_evicted_total", "Sessions evicted because the table was full."),
		sessionsIdle:    r.Counter("router_sessions_expired_total", "Sessions ended after being idle."),
		delayedSent:     r.Counter("router_delayed_copies_total", "Delayed extra copies sent."),
		delayedDropped:  r.Counter("router_delayed_copies_dropped_total", "Delayed copies dropped because their queue was full."),
		noLiveUplink:    r.Counter("router_no_live_uplink_total", "Packets sent while every uplink was down (sent on all)."),
		pongsSeen:       r.Counter("router_pongs_total", "Keepalive answers received."),
		proxyRestarts:   r.Counter("router_proxy_restarts_total", "Proxy restarts noticed (a new epoch in its pongs); its sessions were re-keyed."),
		movedCopies:     r.Counter("router_moved_copies_total", "Extra RAIC-1 copies sent on live uplinks for uplinks that look down."),
		keepalives:      r.Counter("router_path_keepalives_total", "Per-session keepalives sent, one per path each second."),
	}
}

// uplinkConn is one uplink: its socket and its health. Each proxy has a path of
// its own over each uplink (proxies.go); health and proxy here are those of the
// path to the first configured proxy, which with a single proxy is the uplink.
type uplinkConn struct {
	idx    int
	name   string
	conn   *udp.Conn
	proxy  netip.AddrPort
	health *uplink.Health
	sent   *metrics.Counter
	recv   *metrics.Counter
	up     *metrics.Gauge
	srtt   *metrics.Gauge
	tos    uint8 // TOS byte of marked data datagrams (dscp.go); 0: none
	rtt    *metrics.Histogram
}

// forward is one local listening socket of explicit mode and its sessions.
type forward struct {
	idx      int
	conn     *udp.Conn
	server   netip.AddrPort
	params   raic.Params
	auto     bool // scheme = "auto" (auto.go)
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

// routerSession is one session to one proxy: its ID, keys and tunnel state are
// fixed. A game flow (client address, server) is known to its game side by the
// session it started with, its head; when the flow moves to another proxy a new
// session is made and the head's cur points at it. The per-packet path loads
// cur once per packet; only the control goroutine stores it. The head stays in
// byID for the flow's whole life and is the only session of the flow with a
// side, so walking byID for sessions with a side finds each flow once; the
// sessions a flow moved to have side nil and reach the game through head.
type routerSession struct {
	r      *Router
	id     uint64
	px     *proxyConn
	side   gameSide // nil for a control session and for sessions a flow moved to
	client netip.AddrPort
	target netip.AddrPort
	send   *tunnel.Sender
	recv   *tunnel.Receiver
	head   *routerSession // the flow's first session; itself for a head

	// On a head only.
	cur        atomic.Pointer[routerSession] // where the flow's packets go now
	params     raic.Params                   // the scheme the flow started with
	mu         sync.Mutex                    // orders a move against the flow's end
	ended      bool                          // guarded by mu
	lastSwitch int64                         // start or last move; control goroutine after start
	stranded   bool                          // control goroutine: "no reserve" was logged

	lastSend int64 // only the goroutine reading the game side touches these
	interval int64 // smoothed gap between the game's packets, ns
	expected int64 // the expected gap (app table or expected_pps), ns
	dscp     dscpBucket

	app, rule string // what the classifier said (status.go); set before the session is shared

	prefer proxychoice.Prefer     // the app's preferred proxies (choice.go); set before the session is shared
	chosen atomic.Pointer[string] // why it is on its proxy now (status.go)

	sup suppress.SessionTiming // packet timing for suppression (suppression.go)

	auto *autoState // scheme = "auto": the adaptive choice (auto.go); nil otherwise
	// replies measures what each uplink delivers of the proxy's replies; the
	// figures go back to it in quality reports (auto.go).
	replies quality.Tracker[int]
}

// New builds a router from a checked config: it opens the uplink sockets and the
// local forward sockets.
func New(cfg *Config, log *slog.Logger) (*Router, error) {
	r := &Router{cfg: cfg, log: log, reg: metrics.NewRegistry(), flowLines: logging.NewLimiter(10, 50)}
	r.m = newCounters(r.reg)
	r.returns = uplink.NewReturns(r.reg, "router_dropped_total", "Datagrams from the proxy dropped, by reason.")
	var sb [8]byte
	rand.Read(sb[:])
	r.seed = binary.LittleEndian.Uint64(sb[:])
	r.initLAN() // peer_lan.go
	if cfg.peerOnly() {
		return r.newPeerOnly() // peer.go
	}
	var err error
	if r.key, err = wire.ParseKey(cfg.Key); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			r.closeSockets()
		}
	}()
	for i, uc := range cfg.Uplinks {
		opt := udp.Options{Device: uc.Device, RecvBuffer: 1 << 20, SendBuffer: 1 << 20}
		if uc.Source != "" {
			opt.Local, _ = uplink.ParseSource(uc.Source)
		}
		// Config checking made every proxy on one uplink the same family.
		network := "udp4"
		if is6(cfg.Proxy.List[0].Paths[i]) {
			network = "udp6"
		}
		conn, err := udp.Listen(network, opt)
		if err != nil {
			return nil, fmt.Errorf("uplink %s: %w", uc.Name, err)
		}
		lbl := `{uplink="` + uc.Name + `"}`
		dscp, _ := parseDSCP(uc.DSCP) // checked with the config
		r.anyDSCP = r.anyDSCP || dscp != 0
		r.uplinks = append(r.uplinks, &uplinkConn{
			idx: i, name: uc.Name, conn: conn, tos: dscp << 2,
			rtt:  r.reg.Histogram("router_uplink_rtt_seconds"+lbl, "Keepalive round trips per uplink (to any proxy)."),
			sent: r.reg.Counter("router_uplink_datagrams_sent_total"+lbl, "Datagrams sent per uplink."),
			recv: r.reg.Counter("router_uplink_datagrams_received_total"+lbl, "Datagrams received per uplink."),
			up:   r.reg.Gauge("router_uplink_up"+lbl, "1 when the uplink answers keepalives (its path to the first proxy)."),
			srtt: r.reg.Gauge("router_uplink_srtt_microseconds"+lbl, "Smoothed keepalive RTT per uplink (its path to the first proxy)."),
		})
	}
	r.newProxies()
	r.initQuality()
	// The flow tables own a session's lifetime (idle expiry, eviction); byID only
	// finds sessions for the receive path, so it is sized to hold them all,
	// twice over for flows in the middle of a move, and transparent mode's too.
	r.byID = session.NewTable(session.Config[uint64, *routerSession]{
		MaxEntries: 2 * cfg.MaxSessions * (len(cfg.Forwards) + 1),
		Hash:       func(id uint64) uint64 { return id * 0x9e3779b97f4a7c15 },
	})
	for i, fc := range cfg.Forwards {
		listen, _ := netip.ParseAddrPort(fc.Listen)
		server, _ := netip.ParseAddrPort(fc.Server)
		params, auto, _ := parseScheme(fc.Scheme)
		conn, err := udp.Listen("udp", udp.Options{Local: listen, RecvBuffer: 1 << 20, SendBuffer: 1 << 20})
		if err != nil {
			return nil, fmt.Errorf("forward %s: %w", fc.Listen, err)
		}
		f := &forward{idx: i, conn: conn, server: server, params: params, auto: auto,
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
	for _, px := range r.proxies {
		if px.ctrl, err = r.newTunnel(px, nil, netip.AddrPort{}, netip.AddrPort{}, raic.Params{Scheme: raic.SchemeCopy, K: 1}); err != nil {
			return nil, err
		}
		px.ctrl.cur.Store(px.ctrl)
	}
	r.ctrl = r.proxies[0].ctrl
	r.initChoice()
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

// newSession makes a session from client to target whose replies go to side,
// to the proxy chosen for target, with fresh random ID and salt, so keys never
// repeat across restarts. interval is the expected gap between the game's
// packets until it is measured. The session is the head of its flow: if the
// flow later moves to another proxy, the game side still knows it by this one.
func (r *Router) newSession(side gameSide, client, target netip.AddrPort, params raic.Params, interval time.Duration) (*routerSession, error) {
	return r.newSessionPrefer(side, client, target, params, interval, 0)
}

// newSessionPrefer is newSession for an app that prefers some proxies.
func (r *Router) newSessionPrefer(side gameSide, client, target netip.AddrPort, params raic.Params, interval time.Duration, prefer proxychoice.Prefer) (*routerSession, error) {
	now := mono.Now()
	px, why := r.pickProxyPrefer(target, prefer, now)
	rs, err := r.newTunnel(px, side, client, target, params)
	if err != nil {
		return nil, err
	}
	rs.prefer = prefer
	rs.chosen.Store(&why)
	rs.interval = int64(interval)
	rs.expected = int64(interval)
	rs.lastSwitch = now
	if autoFor(side) {
		rs.auto = newAuto(params, now)
	}
	rs.cur.Store(rs)
	return rs, nil
}

// newTunnel makes one session to proxy px with fresh random ID, salt and keys.
// It is its own head until the caller says otherwise.
func (r *Router) newTunnel(px *proxyConn, side gameSide, client, target netip.AddrPort, params raic.Params) (*routerSession, error) {
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
	// Keys for the proxy's restart epoch, when known (see package wire).
	epoch := px.epoch.Load()
	send, recv, err := wire.DeriveKeysEpoch(&r.key, &salt, id, epoch, wire.RoleClient)
	if err != nil {
		return nil, err
	}
	hello := &wire.Hello{Salt: salt, Target: target, Token: r.cfg.token, Epoch: epoch}
	hello.SetClientID(r.cfg.ClientID)
	if target.IsValid() && client.IsValid() {
		// The same after a restart of ours: the proxy gives the session the
		// server-side socket it kept for this flow, so the server sees the
		// same source port (see wire.FlowToken).
		hello.Flow = wire.FlowToken(&r.key, client, target)
	}
	rs := &routerSession{r: r, id: id, px: px, side: side, client: client, target: target, params: params}
	rs.head = rs
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
		r.statusRoutes(mux) // status.go: /status and the live page at /
		r.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go r.httpSrv.Serve(ln)
	}
	if r.cfg.peerOnly() {
		return r.runPeerOnly(ctx) // peer.go
	}
	for _, u := range r.uplinks {
		r.log.Info("uplink ready", "uplink", u.name, "local", u.conn.LocalAddr().String(), "proxy", u.proxy.String())
		for _, px := range r.proxies[1:] {
			r.log.Info("uplink path", "uplink", u.name, "proxy", px.name, "address", px.paths[u.idx].addr.String())
		}
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
	if err := r.startTCP(ctx); err != nil {
		r.Close()
		return err
	}
	if err := r.startPeers(ctx); err != nil {
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
	for _, px := range r.proxies {
		r.sendClose(px.ctrl)
	}
	r.closeSuppression()
	r.closeTransparent()
	r.closeTCP()
	r.closePeers()
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

// sendClose tells rs's proxy, on every path, that the session is over.
func (r *Router) sendClose(rs *routerSession) {
	buf := make([]byte, wire.MaxDatagram)
	dg, err := rs.send.SealControl(buf, wire.TypeClose, nil, mono.Now())
	if err != nil {
		return
	}
	for _, pt := range rs.px.paths {
		pt.u.conn.WriteTo(dg, pt.addr)
	}
}

// onFlowRemoved ends a flow whose entry went away (idle, evicted or deleted):
// the receive path forgets its sessions and the proxy is told. rs is the flow's
// head, as the game side knows it.
func (r *Router) onFlowRemoved(_ netip.AddrPort, rs *routerSession, why session.Reason) {
	switch why {
	case session.ReasonEvicted:
		r.m.sessionsEvicted.Inc()
		if ok, n := r.flowLines.Allow(); ok {
			r.log.Warn("session evicted: table full", "session", rs.id, "max_sessions", r.cfg.MaxSessions, "lines_suppressed", n)
		}
	case session.ReasonIdle:
		r.m.sessionsIdle.Inc()
		if r.log.Enabled(context.Background(), slog.LevelDebug) {
			if ok, n := r.flowLines.Allow(); ok {
				r.log.Debug("session idle, ended", "session", rs.id, "client", rs.client.String(), "lines_suppressed", n)
			}
		}
	}
	rs.mu.Lock()
	rs.ended = true // no move after this
	cur := rs.cur.Load()
	rs.mu.Unlock()
	if cur == nil {
		cur = rs
	}
	r.byID.Delete(rs.id)
	if cur != rs {
		// rs itself was moved away from and told already; cur was not.
		r.byID.Delete(cur.id)
	}
	if !r.closing.Load() {
		r.sendClose(cur)
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
			if ok, n := r.flowLines.Allow(); ok {
				r.log.Error("cannot create session", "err", err, "lines_suppressed", n)
			}
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
	// Right away, so that every path is a reply path from the start (see
	// keepPathsAlive); after that, once a second.
	if rs.side != nil {
		r.keepFlowPathsAlive(rs, make([]byte, wire.MaxDatagram), now)
	}
	if ok, n := r.flowLines.Allow(); ok {
		r.log.Info("session started", "session", rs.id, "client", rs.client.String(), "server", rs.target.String(), "scheme", rs.send.Params().String(),
			"lines_suppressed", n)
	}
}

// sendPacket codes, seals and sends one game packet of the flow rs (its head)
// on the uplinks to the flow's current proxy, then does the bookkeeping: packet
// interval, delayed copies (when dq is not nil), and the suppression hook.
// Called by the one goroutine reading rs's game side, which is also the only
// one sealing data in the flow's sessions.
func (r *Router) sendPacket(rs *routerSession, pkt []byte, now int64, dq *delayQueue) {
	r.m.fromGame.Inc()
	t := rs.cur.Load()
	rs.applyAuto(t)
	_, dgs, err := t.send.Seal(pkt, now)
	if err != nil {
		if errors.Is(err, raic.ErrTooLarge) {
			r.m.tooLarge.Inc()
		}
		r.m.sealErrors.Inc()
		return
	}
	r.sendShards(t.px, dgs, t.send.Copies(), r.markPacket(rs, now), now)
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
		for _, pt := range t.px.paths {
			if pt.health.Up(now) && !dq.push(due, pt.u.idx, dgs[0]) {
				r.m.delayedDropped.Inc()
			}
		}
	}
	r.observeGamePacket(rs, now, true)
}

// sendShards puts a packet's datagrams on the paths to proxy px (see
// uplink.Set: copies on every path and moved off the ones that look down,
// shards on the live ones; copies is what tunnel.Sender.Copies said, mark
// whether they carry the uplinks' DSCP), then counts what moved.
func (r *Router) sendShards(px *proxyConn, dgs [][]byte, copies, mark bool, now int64) {
	if r.tcp.carry(px, dgs) {
		return // UDP reaches the proxy on no uplink: the TLS/TCP fallback (tcp.go)
	}
	res := px.set.Send(dgs, copies, mark, now)
	if res.Moved > 0 {
		r.m.movedCopies.Add(uint64(res.Moved))
	}
	if res.AllDown {
		r.m.noLiveUplink.Inc()
	}
}

// uplinkLoop reads what the proxies send back on one uplink.
func (r *Router) uplinkLoop(u *uplinkConn) {
	defer r.wg.Done()
	var h wire.Header
	uplink.ReadLoop(u.conn, func(dg []byte, _ netip.AddrPort, now int64) { r.fromProxy(u, dg, &h, now) })
}

// fromProxy is the receive path of one datagram from the proxy.
func (r *Router) fromProxy(u *uplinkConn, dg []byte, h *wire.Header, now int64) {
	u.recv.Inc()
	off, ok := r.returns.Parse(dg, h)
	if !ok {
		return
	}
	rs := r.ctrlSession(h.Session)
	if rs == nil {
		// Peek: nothing refreshes a flow before it authenticated, and only
		// the server's packets do (Deliver), not acks or pongs.
		if rs, ok = r.byID.Peek(h.Session); !ok {
			r.returns.Unknown()
			return
		}
	}
	r.noteReply(u, rs, h, now)
	body, ok := r.returns.Open(rs.recv, dg, h, off, now, rs)
	if !ok {
		return
	}
	if h.IsPath() {
		// Outside the replay window, so it shows nothing about the proxy
		// being there: it neither counts as heard nor refreshes anything.
		if h.Type == wire.TypePathChallenge {
			r.answerPath(u, rs, body)
		}
		return
	}
	if !rs.recv.Upgrading() { // heard with the old keys: the proxy has not followed yet
		rs.send.Heard(now)
	}
	switch h.Type {
	case wire.TypePong:
		var pong wire.Pong
		if wire.ParsePong(body, &pong) != nil || int(pong.Ping.Uplink) >= len(r.uplinks) {
			r.m.malformed.Inc()
			return
		}
		r.m.pongsSeen.Inc()
		r.noteEpoch(rs.px, pong.Epoch, now)
		// The pong answers the path its ping left on (that uplink, this
		// session's proxy), whichever socket it came back to. The proxy's
		// clock (PeerTime) splits the round trip into the two one-way
		// delays, so suppression can tell an upload queue from a download
		// one.
		rs.px.paths[pong.Ping.Uplink].health.OnPong(pong.Ping.Seq, pong.Ping.SentAt, pong.PeerTime, now)
		r.uplinks[pong.Ping.Uplink].rtt.ObserveDuration(time.Duration(now - pong.Ping.SentAt))
		rs.px.SetOverloaded(pong.Overloaded)
	case wire.TypeProbeReply:
		var rep wire.ProbeReply
		if wire.ParseProbeReply(body, &rep) != nil {
			r.m.malformed.Inc()
			return
		}
		r.onProbeReply(rs.px, &rep, now)
	case wire.TypeQuality:
		r.onQuality(u, body)
	case wire.TypeClose:
		// A session the flow has moved away from ends quietly; only the
		// current one's end is the flow's.
		if side := rs.head.side; side != nil && rs.head.cur.Load() == rs {
			side.end(rs.head)
		}
	}
}

// answerPath answers the proxy's path challenge on uplink u (see
// wire.TypePathChallenge): the response proves this uplink's address is the
// router's, and lifts the proxy's 3x limit on what it sends there. It goes to
// the proxy's address on that uplink, never to where the challenge claimed to
// come from, so a replayed challenge cannot aim it elsewhere.
func (r *Router) answerPath(u *uplinkConn, rs *routerSession, token []byte) {
	var buf [wire.HeaderLen + wire.PathTokenLen + wire.TagLen]byte
	dg, err := rs.send.SealPath(buf[:], wire.TypePathResponse, token)
	if err != nil || u.idx >= len(rs.px.paths) {
		return
	}
	if one := [1][]byte{dg}; r.tcp.carry(rs.px, one[:]) {
		return
	}
	if err := u.conn.WriteTo(dg, rs.px.paths[u.idx].addr); err != nil {
		r.m.sendErrors.Inc()
	}
}

// Deliver writes a packet from the server back to the game client (tunnel.Sink).
// The game side knows the flow by its head, whichever session the packet came
// in on.
func (rs *routerSession) Deliver(_ uint64, pkt []byte, now int64) {
	side := rs.head.side
	if side == nil {
		return
	}
	side.touch(rs.head, now) // the server's packets keep the flow alive too
	if err := side.writeBack(rs.head, pkt); err != nil {
		rs.r.m.sendErrors.Inc()
		return
	}
	rs.r.m.toGame.Inc()
	rs.r.observeGamePacket(rs.head, now, false)
}

// The forward of explicit mode is a gameSide: replies leave from the socket the
// game sent to, towards the game's address.
func (f *forward) writeBack(rs *routerSession, pkt []byte) error {
	return f.conn.WriteTo(pkt, rs.client)
}
func (f *forward) touch(rs *routerSession, now int64) { f.flows.Get(rs.client, now) }
func (f *forward) end(rs *routerSession)              { f.flows.Delete(rs.client) }

// pinger is the control goroutine: it sends keepalives on every path over each
// proxy's control session, logs path and proxy state changes, chooses proxies
// and moves sessions (choice.go), and sweeps idle sessions.
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
		r.sendPings(buf, now)
		changed := r.notePaths(now)
		r.forceHellos(now)
		if len(r.proxies) > 1 {
			r.evaluate(now, buf, changed)
		}
		if now-lastSweep > int64(time.Second) {
			lastSweep = now
			for _, f := range r.forwards {
				f.flows.Sweep(now)
			}
			r.byID.Range(func(_ uint64, rs *routerSession) bool { rs.recv.Expire(now); return true })
			r.keepPathsAlive(buf, now)
			r.adaptSchemes(now)
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

// keepPathsAlive sends each flow's current session a keepalive on every path,
// each sealed on its own (its own packet ID): the proxy learns where to send
// replies only from datagrams that pass its replay window, and on an uplink whose
// copies always arrive second every data datagram is a duplicate there.
func (r *Router) keepPathsAlive(buf []byte, now int64) {
	r.byID.Range(func(_ uint64, rs *routerSession) bool {
		if rs.side != nil { // a flow's head; its current session is rs.cur
			r.keepFlowPathsAlive(rs, buf, now)
		}
		return true
	})
}

// keepFlowPathsAlive sends one keepalive on each path of the flow's current
// session.
func (r *Router) keepFlowPathsAlive(rs *routerSession, buf []byte, now int64) {
	t := rs.cur.Load()
	if t == nil {
		return
	}
	// The body says how many paths the router has, so the proxy can make up
	// with extra reply copies for a path it never heard from (an uplink dead
	// since the session began), and how many copies it sends on each, so the
	// replies get as many (see wire.TypeKeepalive).
	body := [2]byte{byte(len(t.px.paths)), byte(r.cfg.CopiesPerUplink)}
	for _, pt := range t.px.paths {
		dg, err := t.send.SealControl(buf, wire.TypeKeepalive, body[:], now)
		if err != nil {
			return
		}
		r.sendPath(pt, dg)
		r.m.keepalives.Inc()
	}
}
