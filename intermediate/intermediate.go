// Package intermediate is the intermediate proxy: a hop between routers and a
// latency-oriented proxy (or another intermediate) that, unlike a simple relay,
// holds keys. Towards the routers that use it, it is a proxy: it authenticates,
// drops what the anti-replay window has seen, decodes RAIC and keeps the first
// complete copy. Towards the next hop, it is a router: for every session a router
// opens here it opens a session of its own there (its own client ID and key, a
// new session ID and salt, a hello carrying the same target) and sends each
// packet re-encoded over its uplinks. Replies take the same way back.
//
// The point of the hop is that loss no longer adds up along a path: copies lost
// before the intermediate are replaced by fresh copies after it, so each hop only
// has to get one copy through.
//
// Packet IDs are kept end to end: a packet leaves with the ID it arrived with
// (tunnel.Sender.SealPID), so the router's IDs are the ones the proxy
// deduplicates, and a packet's ID names the same packet on every hop. Control
// messages of a relayed session (ping, probe, close one way; pong, ack, probe
// reply, close the other) are passed through the same way, with their IDs.
// Because of that every ID the intermediate seals on one side while it runs is
// an ID the other side used once, which keeps the nonce rule (package wire)
// without coordination. The one message of its own on a relayed session, a
// keepalive on each of its uplinks so the next hop learns them all as reply
// paths, takes the ID of a router keepalive, which is never passed on (see
// keepNextPathAlive). (When it stops, it closes each session at the next hop
// under the ID after the highest it used, once nothing else can seal there.) Its
// own pings and probes towards the next hop travel on a control session of their
// own.
package intermediate

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/raicnet/raic/pkg/clients"
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
	"github.com/raicnet/raic/pkg/replypath"
	"github.com/raicnet/raic/pkg/session"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/udp"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// batch is how many datagrams one read may return. A read never waits to fill
// it: recvmmsg returns what is queued.
const batch = 32

// Server is a running intermediate proxy.
type Server struct {
	cfg     *Config
	log     *slog.Logger
	reg     *metrics.Registry
	m       counters
	conn    *udp.Conn // towards routers
	uplinks []*uplink // towards the next hop
	clients map[string]*clients.Client
	nextKey wire.Key
	// run is this start's restart epoch, sent in pongs (see clients.Admit);
	// refusedLog bounds the log lines of per-datagram refusals.
	run        clients.Run
	refusedLog *logging.Limiter

	// relays owns the sessions' lifetimes (idle expiry, eviction), keyed by the
	// router side's session ID; byOut finds the same relays by the session ID of
	// the next hop's side, for the reply path.
	relays *session.Table[uint64, *relay]
	byOut  *session.Table[uint64, *relay]
	ctrl   *ctrlSession
	probes probeCache // the next hop's answers about servers (probe.go)

	closing atomic.Bool
	closed  chan struct{}  // closed by Close, so the janitor stops however Close was reached
	reading sync.WaitGroup // the router side's read loop: the only one sealing towards the next hop
	loops   sync.WaitGroup // the uplink read loops and the janitor
	httpSrv *http.Server
}

// uplink is one socket towards the next hop.
type uplink struct {
	idx        int
	name       string
	conn       *udp.Conn
	next       netip.AddrPort
	pingSeq    atomic.Uint32
	srtt       atomic.Int64 // ns, 0 until the first pong
	overloaded atomic.Bool  // the next hop said so in its last pong on this uplink
	sent, recv *metrics.Counter
	srttGauge  *metrics.Gauge
}

// ctrlSession is the intermediate's own session with the next hop, for
// keepalives: it has no target and carries no relayed traffic.
type ctrlSession struct {
	id   uint64
	send *tunnel.Sender
	recv *tunnel.Receiver
}

// Deliver is never called: the control session carries no data.
func (*ctrlSession) Deliver(uint64, []byte, int64) {}

// counters are the intermediate's metrics; every dropped datagram is counted by
// reason.
type counters struct {
	received, fromNext, relayedOut, relayedBack, controlOut, controlBack *metrics.Counter
	malformed, unknownSession, unknownClient, authFailed, duplicate      *metrics.Counter
	staleHello, forbiddenTarget, rateLimited, sessionConflict            *metrics.Counter
	sealErrors, sendErrors, noPath, pongsOut, pongsIn                    *metrics.Counter
	sessionsCreated, sessionsEvicted, sessionsIdle, movedCopies          *metrics.Counter
	keepalivesSent, oldEpoch, sessionLimit, sessionRate                  *metrics.Counter
	sessions                                                             *metrics.Gauge
}

func newCounters(r *metrics.Registry) counters {
	drop := func(reason string) *metrics.Counter {
		return r.Counter(`intermediate_dropped_total{reason="`+reason+`"}`, "Datagrams dropped, by reason.")
	}
	return counters{
		received:        r.Counter("intermediate_received_total", "Datagrams received from routers."),
		fromNext:        r.Counter("intermediate_next_received_total", "Datagrams received from the next hop."),
		relayedOut:      r.Counter("intermediate_relayed_total{dir=\"out\"}", "Packets relayed (out: towards the next hop, back: towards the router)."),
		relayedBack:     r.Counter("intermediate_relayed_total{dir=\"back\"}", "Packets relayed (out: towards the next hop, back: towards the router)."),
		controlOut:      r.Counter("intermediate_control_passed_total{dir=\"out\"}", "Control messages of relayed sessions passed on."),
		controlBack:     r.Counter("intermediate_control_passed_total{dir=\"back\"}", "Control messages of relayed sessions passed on."),
		malformed:       drop("malformed"),
		unknownSession:  drop("unknown_session"),
		unknownClient:   drop("unknown_client"),
		authFailed:      drop("auth"),
		duplicate:       drop("duplicate"),
		staleHello:      drop("stale_hello"),
		forbiddenTarget: drop("forbidden_target"),
		rateLimited:     drop("rate_limited"),
		sessionConflict: drop("session_conflict"),
		oldEpoch:        drop("old_epoch"),
		sessionLimit:    drop("client_session_limit"),
		sessionRate:     drop("client_session_rate"),
		sealErrors:      drop("seal_error"),
		sendErrors:      r.Counter("intermediate_send_errors_total", "Errors sending datagrams."),
		noPath:          r.Counter("intermediate_reply_no_path_total", "Packets from the next hop with no recent router address to send to."),
		pongsOut:        r.Counter("intermediate_pongs_total", "Keepalive answers sent to routers."),
		pongsIn:         r.Counter("intermediate_next_pongs_total", "Keepalive answers received from the next hop."),
		sessionsCreated: r.Counter("intermediate_sessions_created_total", "Sessions created."),
		sessionsEvicted: r.Counter("intermediate_sessions_evicted_total", "Sessions evicted because the table was full."),
		sessionsIdle:    r.Counter("intermediate_sessions_expired_total", "Sessions ended after being idle."),
		sessions:        r.Gauge("intermediate_sessions", "Live relayed sessions."),
		movedCopies:     r.Counter("intermediate_moved_copies_total", "Extra copies sent to routers on fresh paths for paths lagging behind or never heard from."),
		keepalivesSent:  r.Counter("intermediate_keepalives_sent_total", "Keepalives sent to the next hop on relayed sessions, each on one uplink."),
	}
}

// New builds an intermediate from a checked config and binds every socket, so it
// is ready to serve when New returns (and sockets opened inside a network
// namespace stay there).
func New(cfg *Config, log *slog.Logger) (*Server, error) {
	s := &Server{cfg: cfg, log: log, clients: map[string]*clients.Client{}, reg: metrics.NewRegistry(), closed: make(chan struct{})}
	s.m = newCounters(s.reg)
	var err error
	if s.nextKey, err = wire.ParseKey(cfg.Next.Key); err != nil {
		return nil, fmt.Errorf("next.key: %v", err)
	}
	now := mono.Now()
	if s.clients, err = clients.Table(cfg.Clients, now); err != nil {
		return nil, err
	}
	clients.FairShare(s.clients, cfg.MaxSessions)
	if s.run, err = clients.NewRun(time.Now()); err != nil {
		return nil, err
	}
	s.refusedLog = logging.NewLimiter(5, 20)
	var sb [8]byte
	if _, err := rand.Read(sb[:]); err != nil {
		return nil, err
	}
	seed := binary.LittleEndian.Uint64(sb[:])
	hash := func(id uint64) uint64 { return (id ^ seed) * 0x9e3779b97f4a7c15 }
	s.relays = session.NewTable(session.Config[uint64, *relay]{
		MaxEntries:  cfg.MaxSessions,
		IdleTimeout: cfg.SessionIdle.Duration,
		Hash:        hash,
		OnRemove:    s.onRemove,
	})
	// byOut only mirrors relays (entries leave it when they leave relays), so it
	// is sized never to evict on its own.
	s.byOut = session.NewTable(session.Config[uint64, *relay]{MaxEntries: 2 * cfg.MaxSessions, Hash: hash})

	ok := false
	defer func() {
		if !ok {
			s.closeSockets()
		}
	}()
	listen, _ := netip.ParseAddrPort(cfg.Listen)
	if s.conn, err = udp.Listen("udp", udp.Options{Local: listen, RecvBuffer: 4 << 20, SendBuffer: 4 << 20}); err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	for i, uc := range cfg.Next.Uplinks {
		opt := udp.Options{Device: uc.Device, RecvBuffer: 4 << 20, SendBuffer: 4 << 20}
		if uc.Source != "" {
			opt.Local, _ = parseHostPort(uc.Source)
		}
		next, _ := netip.ParseAddrPort(uc.Proxy)
		network := "udp4"
		if next.Addr().Is6() && !next.Addr().Is4In6() {
			network = "udp6"
		}
		conn, err := udp.Listen(network, opt)
		if err != nil {
			return nil, fmt.Errorf("uplink %s: %w", uc.Name, err)
		}
		lbl := `{uplink="` + uc.Name + `"}`
		s.uplinks = append(s.uplinks, &uplink{
			idx: i, name: uc.Name, conn: conn, next: next,
			sent:      s.reg.Counter("intermediate_uplink_datagrams_sent_total"+lbl, "Datagrams sent to the next hop per uplink."),
			recv:      s.reg.Counter("intermediate_uplink_datagrams_received_total"+lbl, "Datagrams received from the next hop per uplink."),
			srttGauge: s.reg.Gauge("intermediate_uplink_srtt_microseconds"+lbl, "Smoothed keepalive RTT to the next hop per uplink."),
		})
	}
	if s.ctrl, err = s.newCtrl(); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

// newSessionID returns a random session ID that is not 0.
func newSessionID() (uint64, error) {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, err
		}
		if id := binary.LittleEndian.Uint64(b[:]); id != 0 {
			return id, nil
		}
	}
}

// newOutHalf makes the sending and receiving halves of a new session with the
// next hop towards target (zero for the control session), with a fresh ID and
// salt, so its keys are new even when the intermediate restarts.
// sealKey is the AEAD the sender seals with, returned for control messages
// passed on under IDs the sender did not choose (see sealPassed).
func (s *Server) newOutHalf(target netip.AddrPort) (id uint64, send *tunnel.Sender, sealKey cipher.AEAD, recv *tunnel.Receiver, err error) {
	if id, err = newSessionID(); err != nil {
		return 0, nil, nil, nil, err
	}
	salt, err := wire.NewSalt()
	if err != nil {
		return 0, nil, nil, nil, err
	}
	sk, rk, err := wire.DeriveKeys(&s.nextKey, &salt, id, wire.RoleClient)
	if err != nil {
		return 0, nil, nil, nil, err
	}
	hello := &wire.Hello{Salt: salt, Target: target}
	if err := hello.SetClientID(s.cfg.Next.ClientID); err != nil {
		return 0, nil, nil, nil, err
	}
	if send, err = tunnel.NewSender(sk, id, raic.Params{Scheme: raic.SchemeCopy, K: 1}, hello); err != nil {
		return 0, nil, nil, nil, err
	}
	return id, send, sk, tunnel.NewReceiver(rk, raic.DecoderConfig{}), nil
}

func (s *Server) newCtrl() (*ctrlSession, error) {
	id, send, _, recv, err := s.newOutHalf(netip.AddrPort{})
	if err != nil {
		return nil, err
	}
	return &ctrlSession{id: id, send: send, recv: recv}, nil
}

// Addr is the address routers send to.
func (s *Server) Addr() netip.AddrPort { return s.conn.LocalAddr() }

// Metrics returns the intermediate's metric registry.
func (s *Server) Metrics() *metrics.Registry { return s.reg }

// Sessions returns the number of relayed sessions.
func (s *Server) Sessions() int { return s.relays.Len() }

// UplinkRTT returns the smoothed keepalive RTT to the next hop over uplink i
// (0 before the first answer).
func (s *Server) UplinkRTT(i int) time.Duration { return time.Duration(s.uplinks[i].srtt.Load()) }

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	if s.cfg.Metrics != "" {
		ln, err := net.Listen("tcp", s.cfg.Metrics)
		if err != nil {
			s.Close()
			return fmt.Errorf("metrics listener: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", s.reg.Handler())
		s.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go s.httpSrv.Serve(ln)
	}
	s.log.Info("intermediate serving", "listen", s.Addr().String(), "clients", len(s.clients),
		"next_client_id", s.cfg.Next.ClientID, "max_sessions", s.cfg.MaxSessions)
	for _, u := range s.uplinks {
		s.log.Info("uplink ready", "uplink", u.name, "local", u.conn.LocalAddr().String(), "next", u.next.String())
	}
	s.loops.Add(1 + len(s.uplinks))
	go s.janitor()
	s.reading.Add(1)
	go func() {
		defer s.reading.Done()
		s.readLoop()
	}()
	for _, u := range s.uplinks {
		go func() {
			defer s.loops.Done()
			s.uplinkLoop(u)
		}()
	}
	select {
	case <-ctx.Done():
	case <-s.closed:
	}
	s.Close()
	return nil
}

// Close stops the intermediate: it stops reading from routers, tells the next
// hop that every relayed session is over, and closes every socket.
func (s *Server) Close() {
	if s.closing.Swap(true) {
		return
	}
	close(s.closed)
	s.conn.Close()
	if s.httpSrv != nil {
		s.httpSrv.Close()
	}
	s.reading.Wait()
	s.closeAtNext()
	s.closeSockets()
	s.loops.Wait()
	var ids []uint64
	s.relays.Range(func(id uint64, _ *relay) bool { ids = append(ids, id); return true })
	for _, id := range ids {
		s.relays.Delete(id)
	}
}

// closeAtNext sends a Close on every relayed session to the next hop, so it
// frees them now rather than after its idle timeout. Nothing else seals towards
// the next hop any more (the router side's read loop has ended), so the ID after
// the highest one used is unused and stays so.
func (s *Server) closeAtNext() {
	buf := make([]byte, wire.MaxDatagram)
	now := mono.Now()
	s.relays.Range(func(_ uint64, rl *relay) bool {
		if rl.outSend == nil || rl.closed.Swap(true) {
			return true
		}
		dg, err := sealPassed(rl.outSeal, rl.outSend, buf, wire.TypeClose, rl.outID, rl.outMax.Load()+1, nil, now)
		if err == nil {
			s.sendCopies(dg)
		}
		return true
	})
}

func (s *Server) closeSockets() {
	if s.conn != nil {
		s.conn.Close()
	}
	for _, u := range s.uplinks {
		u.conn.Close()
	}
}

// janitor expires idle sessions and stale decode groups, and sends keepalives
// to the next hop on every uplink.
func (s *Server) janitor() {
	defer s.loops.Done()
	t := time.NewTicker(s.cfg.Next.PingInterval.Duration)
	defer t.Stop()
	buf := make([]byte, wire.MaxDatagram)
	lastSweep := mono.Now()
	for {
		s.ping(buf, mono.Now())
		select {
		case <-s.closed:
			return
		case <-t.C:
		}
		now := mono.Now()
		if now-lastSweep < int64(time.Second) {
			continue
		}
		lastSweep = now
		s.relays.Sweep(now)
		s.relays.Range(func(_ uint64, rl *relay) bool {
			rl.inRecv.Expire(now)
			if rl.outRecv != nil {
				rl.outRecv.Expire(now)
			}
			return true
		})
		s.m.sessions.Set(int64(s.relays.Len()))
	}
}

// ping sends a keepalive on every uplink over the control session.
func (s *Server) ping(buf []byte, now int64) {
	for _, u := range s.uplinks {
		p := wire.Ping{Seq: u.pingSeq.Add(1), Uplink: uint8(u.idx), SentAt: now}
		var pb [wire.PingLen]byte
		dg, err := s.ctrl.send.SealControl(buf, wire.TypePing, p.Put(pb[:]), now)
		if err != nil {
			s.m.sealErrors.Inc()
			continue
		}
		s.sendOn(u, dg)
	}
}

func (s *Server) onRemove(_ uint64, rl *relay, why session.Reason) {
	switch why {
	case session.ReasonEvicted:
		s.m.sessionsEvicted.Inc()
		if ok, n := s.refusedLog.Allow(); ok {
			s.log.Warn("session evicted: table full", "session", rl.inID, "client", rl.client.ID, "max_sessions", s.cfg.MaxSessions, "lines_suppressed", n)
		}
	case session.ReasonIdle:
		s.m.sessionsIdle.Inc()
		s.log.Debug("session idle, ended", "session", rl.inID, "client", rl.client.ID)
	}
	rl.client.CloseSession()
	rl.closed.Store(true)
	if rl.outSend != nil {
		s.byOut.Delete(rl.outID)
	}
}

// reader holds one read goroutine's buffers, so nothing is allocated per datagram.
type reader struct {
	msgs    []udp.Message
	ctrl    []byte // control datagrams this goroutine seals
	scratch []byte // a copy for authenticating hellos before a session exists
	hdr     wire.Header
	hello   wire.Hello
	// sink passes a router's decoded packets on to the next hop, but first learns
	// the address the completing datagram came from as a live path: the answer
	// may come back at once. Set per datagram, so passing it allocates nothing.
	sink replypath.Learner
}

func newReader() *reader {
	r := &reader{msgs: make([]udp.Message, batch), ctrl: make([]byte, wire.MaxDatagram), scratch: make([]byte, wire.MaxDatagram)}
	for i := range r.msgs {
		// One byte more than the largest datagram, so an oversized one shows as
		// such instead of being silently truncated to a plausible length.
		r.msgs[i].Buf = make([]byte, wire.MaxDatagram+1)
	}
	return r
}

// readLoop reads what routers send.
func (s *Server) readLoop() {
	r := newReader()
	for {
		n, err := s.conn.ReadBatch(r.msgs)
		if err != nil {
			if s.closing.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("read", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		now := mono.Now() // once per batch
		for i := 0; i < n; i++ {
			m := &r.msgs[i]
			s.handle(r, m.Buf[:m.N], m.Addr, now)
		}
	}
}

// uplinkLoop reads what the next hop sends back on one uplink.
func (s *Server) uplinkLoop(u *uplink) {
	r := newReader()
	for {
		n, err := u.conn.ReadBatch(r.msgs)
		if err != nil {
			if s.closing.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		now := mono.Now()
		for i := 0; i < n; i++ {
			m := &r.msgs[i]
			s.fromNext(r, u, m.Buf[:m.N], now)
		}
	}
}

// handle processes one datagram from a router.
func (s *Server) handle(r *reader, dg []byte, from netip.AddrPort, now int64) {
	s.m.received.Inc()
	off, err := wire.Parse(dg, &r.hdr, &r.hello)
	if err != nil {
		s.m.malformed.Inc()
		return
	}
	h := &r.hdr
	rl, ok := s.relays.Get(h.Session, now)
	if !ok {
		if h.Flags&wire.FlagHello == 0 {
			s.m.unknownSession.Inc()
			return
		}
		if rl = s.open(r, dg, off, now); rl == nil {
			return
		}
	} else if h.Flags&wire.FlagHello != 0 && r.hello.Salt != rl.salt {
		// Another session claims this ID; it cannot be ours (different keys).
		s.m.sessionConflict.Inc()
		return
	} else if h.Flags&wire.FlagHello != 0 && r.hello.Epoch == s.run.Epoch && rl.epoch.Load() != s.run.Epoch {
		// The router moved the session's keys to this run's epoch after it
		// opened it (see proxy): follow, once the hello proves it.
		if !s.upgradeEpoch(r, rl, dg, off) {
			return
		}
	}
	r.sink = replypath.Learner{Paths: &rl.paths, Next: rl.toNext, From: from, Now: now}
	body, err := rl.inRecv.Receive(dg, h, off, now, &r.sink)
	switch {
	case errors.Is(err, tunnel.ErrDuplicate):
		s.m.duplicate.Inc()
		// A router's copies on its slower uplinks arrive as duplicates: they keep
		// a path already known fresh, never add one.
		rl.paths.Refresh(from, now)
		return
	case err != nil:
		s.m.authFailed.Inc()
		return
	}
	// Authenticated: this address is a live path of the session (this is also how
	// a NAT rebinding on the router's side is learned).
	rl.paths.Learn(from, now)
	switch h.Type {
	case wire.TypeData:
		rl.inScheme.note(h)
		return
	case wire.TypeKeepalive:
		// It says how many paths the router has, and how many copies it sends on
		// each: replies get as many on each path, and make up for the paths
		// never heard from.
		rl.paths.NoteKeepalive(body)
	}
	if rl.outSend == nil {
		s.answer(r, rl, body, from, now)
		return
	}
	switch h.Type {
	case wire.TypePing, wire.TypeProbe, wire.TypeClose:
		s.passOut(r, rl, body, now)
	case wire.TypeKeepalive:
		// It refreshed the path it came on; its packet ID carries one of this
		// intermediate's own keepalives on towards the next hop.
		s.keepNextPathAlive(r, rl, now)
	default:
		s.m.malformed.Inc()
	}
	if h.Type == wire.TypeClose {
		s.relays.Delete(rl.inID)
	}
}

// answer handles a control message on a control-only session (one without a
// target, such as a router's keepalive session): the intermediate is the far end
// of it and answers itself.
func (s *Server) answer(r *reader, rl *relay, body []byte, from netip.AddrPort, now int64) {
	h := &r.hdr
	switch h.Type {
	case wire.TypePing:
		var ping wire.Ping
		if wire.ParsePing(body, &ping) != nil {
			s.m.malformed.Inc()
			return
		}
		pong := wire.Pong{Ping: ping, PeerTime: now, Overloaded: s.nextOverloaded(), Epoch: s.run.Epoch}
		var pb [wire.PongEpochLen]byte
		if out, err := rl.inSend.SealControl(r.ctrl, wire.TypePong, pong.Put(pb[:]), now); err == nil {
			s.sendTo(out, from)
			s.m.pongsOut.Inc()
		}
	case wire.TypeProbe:
		s.answerProbe(r, rl, body, from, now)
	case wire.TypeClose:
		s.relays.Delete(rl.inID)
		return
	}
	if h.Flags&wire.FlagHello != 0 && rl.ackDue(now) {
		var ab [8]byte
		binary.BigEndian.PutUint64(ab[:], h.Packet)
		if out, err := rl.inSend.SealControl(r.ctrl, wire.TypeAck, ab[:], now); err == nil {
			s.sendTo(out, from)
		}
	}
}

// nextOverloaded reports whether the next hop said it is overloaded in its last
// keepalive answer on any uplink: a router choosing between proxies should hear
// that through this hop too.
func (s *Server) nextOverloaded() bool {
	for _, u := range s.uplinks {
		if u.overloaded.Load() {
			return true
		}
	}
	return false
}

// open authenticates the first datagram of an unknown session (it carries a
// hello), checks the target against the client's allowlist, and creates the
// relay with its session towards the next hop. It returns nil, counting why,
// when the datagram must be dropped.
func (s *Server) open(r *reader, dg []byte, off int, now int64) *relay {
	hello := &r.hello
	// An intermediate admits its [[client]] tables only (no token key):
	// a hello with a token is refused as TokenMalformed.
	a, why := clients.Admit(&clients.Roster{Clients: s.clients}, &r.hdr, hello, dg, off, r.scratch, s.cfg.HelloMaxAge.Duration, time.Now(), &s.run)
	if why == clients.Admitted {
		why = a.Client.OpenSession(now)
	}
	switch why {
	case clients.UnknownClient:
		s.m.unknownClient.Inc()
		return nil
	case clients.AuthFailed:
		s.m.authFailed.Inc()
		return nil
	case clients.StaleHello:
		s.m.staleHello.Inc()
		if ok, n := s.refusedLog.Allow(); ok {
			s.log.Warn("hello refused: its time is too far from ours (replayed, or a clock is wrong)",
				"client", a.Client.ID, "hello_unix_ms", hello.UnixMilli, "hello_max_age", s.cfg.HelloMaxAge.Duration, "lines_suppressed", n)
		}
		return nil
	case clients.ForbiddenTarget:
		s.m.forbiddenTarget.Inc()
		if ok, n := s.refusedLog.Allow(); ok {
			s.log.Warn("target refused: not in the client's allowlist", "client", a.Client.ID, "target", hello.Target.String(), "lines_suppressed", n)
		}
		return nil
	case clients.OldEpoch, clients.SessionLimit, clients.SessionRate:
		switch why {
		case clients.OldEpoch:
			s.m.oldEpoch.Inc()
		case clients.SessionLimit:
			s.m.sessionLimit.Inc()
		default:
			s.m.sessionRate.Inc()
		}
		if ok, n := s.refusedLog.Allow(); ok {
			s.log.Warn("hello refused", "client", a.Client.ID, "reason", why.String(), "session", r.hdr.Session, "lines_suppressed", n)
		}
		return nil
	case clients.Admitted:
	default:
		// A connect token: an intermediate has no token key, so to it the
		// sender is a client it does not know.
		s.m.unknownClient.Inc()
		return nil
	}
	c, send, recv, target := a.Client, a.Send, a.Recv, hello.Target
	id, salt := r.hdr.Session, hello.Salt
	rl, created, err := s.relays.GetOrCreate(id, now, func() (*relay, error) {
		return s.newRelay(c, id, salt, target, send, recv)
	})
	if !created {
		c.CloseSession() // reserved above, not used
	}
	if err != nil {
		s.m.sealErrors.Inc()
		s.log.Warn("cannot open a session towards the next hop", "client", c.ID, "err", err)
		return nil
	}
	if created {
		rl.epoch.Store(hello.Epoch)
		if !target.IsValid() {
			// As in the proxy: a control session re-opened with keys it may
			// have had before a restart takes nothing sealed before this.
			rl.inRecv.SetFloor(r.hdr.Packet)
		}
		if rl.outSend != nil {
			s.byOut.GetOrCreate(rl.outID, now, func() (*relay, error) { return rl, nil })
		}
		s.m.sessionsCreated.Inc()
		s.log.Info("session opened", "client", c.ID, "session", id, "next_session", rl.outID, "target", target.String())
	}
	return rl
}

// upgradeEpoch re-keys the router side of rl for this run's epoch when the
// datagram, a hello naming it, authenticates with those keys.
func (s *Server) upgradeEpoch(r *reader, rl *relay, dg []byte, off int) bool {
	send, recv, err := wire.DeriveKeysEpoch(&rl.client.Key, &rl.salt, rl.inID, s.run.Epoch, wire.RoleServer)
	if err != nil {
		return false
	}
	cp := r.scratch[:len(dg)]
	copy(cp, dg)
	if _, err := wire.Open(recv, cp, off); err != nil {
		s.m.authFailed.Inc()
		return false
	}
	rl.inRecv.Upgrade(recv)
	rl.inSend.Rekey(send, 0, 0)
	rl.epoch.Store(s.run.Epoch)
	return true
}

// fromNext processes one datagram the next hop sent back on uplink u.
func (s *Server) fromNext(r *reader, u *uplink, dg []byte, now int64) {
	s.m.fromNext.Inc()
	u.recv.Inc()
	off, err := wire.Parse(dg, &r.hdr, nil)
	h := &r.hdr
	if err != nil || h.Flags&wire.FlagHello != 0 {
		s.m.malformed.Inc()
		return
	}
	if h.Session == s.ctrl.id {
		s.fromNextCtrl(r, dg, off, now)
		return
	}
	rl, ok := s.byOut.Get(h.Session, now)
	if !ok {
		s.m.unknownSession.Inc()
		return
	}
	s.relays.Get(rl.inID, now) // an answer keeps the session alive too
	body, err := rl.outRecv.Receive(dg, h, off, now, rl.toRouter)
	switch {
	case errors.Is(err, tunnel.ErrDuplicate):
		s.m.duplicate.Inc()
		return
	case err != nil:
		s.m.authFailed.Inc()
		return
	}
	rl.outSend.Heard(now)
	if h.Type == wire.TypeData {
		rl.outScheme.note(h)
		return
	}
	switch h.Type {
	case wire.TypePong, wire.TypeAck, wire.TypeProbeReply, wire.TypeClose:
		s.passBack(r, rl, body, now)
	default:
		s.m.malformed.Inc()
	}
	if h.Type == wire.TypeClose {
		s.relays.Delete(rl.inID)
	}
}

// fromNextCtrl handles the answers on the intermediate's own control session.
func (s *Server) fromNextCtrl(r *reader, dg []byte, off int, now int64) {
	h := &r.hdr
	body, err := s.ctrl.recv.Receive(dg, h, off, now, s.ctrl)
	switch {
	case errors.Is(err, tunnel.ErrDuplicate):
		s.m.duplicate.Inc()
		return
	case err != nil:
		s.m.authFailed.Inc()
		return
	}
	s.ctrl.send.Heard(now)
	switch h.Type {
	case wire.TypePong:
		var pong wire.Pong
		if wire.ParsePong(body, &pong) != nil || int(pong.Ping.Uplink) >= len(s.uplinks) {
			s.m.malformed.Inc()
			return
		}
		s.m.pongsIn.Inc()
		// The pong answers the uplink its ping left on, whichever socket it came
		// back to.
		pu := s.uplinks[pong.Ping.Uplink]
		pu.overloaded.Store(pong.Overloaded)
		rtt := now - pong.Ping.SentAt
		if rtt <= 0 {
			return
		}
		old := pu.srtt.Load()
		if old == 0 {
			old = rtt
		}
		srtt := old + (rtt-old)/8
		pu.srtt.Store(srtt)
		pu.srttGauge.Set(srtt / 1e3)
	case wire.TypeProbeReply:
		var rep wire.ProbeReply
		if wire.ParseProbeReply(body, &rep) != nil {
			s.m.malformed.Inc()
			return
		}
		s.probes.answered(&rep, now)
	case wire.TypeClose:
		// The next hop forgot us; the next keepalive re-creates the session, since
		// the sender re-hellos after a silence.
	}
}

func (s *Server) sendTo(dg []byte, to netip.AddrPort) {
	if err := s.conn.WriteTo(dg, to); err != nil {
		s.m.sendErrors.Inc()
	}
}

func (s *Server) sendOn(u *uplink, dg []byte) {
	if err := u.conn.WriteTo(dg, u.next); err != nil {
		s.m.sendErrors.Inc()
		return
	}
	u.sent.Inc()
}

// sendNext puts one packet's datagrams on the uplinks: copies (a single
// RAIC-1 datagram, or each X-fragment of a copy scheme) go on every uplink,
// copies_per_uplink times; coded shards are spread over the uplinks by
// raic.Place.
func (s *Server) sendNext(dgs [][]byte, copies bool) {
	if copies {
		for _, dg := range dgs {
			s.sendCopies(dg)
		}
		return
	}
	var live [maxUplinks]raic.UplinkState
	states := live[:len(s.uplinks)]
	for i := range states {
		states[i] = raic.UplinkState{Up: true, Weight: 1}
	}
	var placement [64]int
	out := raic.Place(len(dgs), states, placement[:0])
	for i, dg := range dgs {
		s.sendOn(s.uplinks[out[i]], dg)
	}
}

// sendCopies sends one datagram on every uplink, copies_per_uplink times.
func (s *Server) sendCopies(dg []byte) {
	for _, u := range s.uplinks {
		for c := 0; c < s.cfg.Next.CopiesPerUplink; c++ {
			s.sendOn(u, dg)
		}
	}
}
