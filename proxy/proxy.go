// Package proxy is the latency-oriented proxy that sits near game servers. For
// each datagram a router sends it: authenticate (drop silently on failure), drop
// what the anti-replay window has seen, decode RAIC shards (the first complete
// copy wins), and forward the packet to the game server from a socket of the
// session's own, like a NAT. What the server answers is coded with the same scheme
// and sent back to every address the session's datagrams came from recently, so
// each of the router's uplinks carries a copy.
//
// Nothing unauthenticated ever gets an answer, and no server outside the client's
// allowlist is ever contacted.
package proxy

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
	"github.com/raicnet/raic/pkg/proxyproto"
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

// maxServerPacket is the largest server packet the proxy carries back (it is
// X-fragmented on the way); game servers keep theirs under the path MTU. A
// larger one is dropped, counted (server_packet_too_large) and logged at a
// bounded rate.
const maxServerPacket = 8 << 10

// recvBuffer is the listening socket's receive buffer: about 10 ms of
// datagrams at the proxy's capacity, so an overload drops at the socket
// instead of queueing seconds of stale game traffic.
const recvBuffer = 1 << 20

// Server is a running proxy.
type Server struct {
	cfg      *Config
	log      *slog.Logger
	conn     *udp.Conn
	roster   atomic.Pointer[clients.Roster] // swapped whole on reload (studio.go)
	studio   atomic.Pointer[StudioConfig]   // per-server options, drain timeout; swapped on reload
	sessions *session.Table[uint64, *proxySession]
	reg      *metrics.Registry
	m        counters
	sid      [8]byte    // random, mixed into session table hashing
	probes   *prober    // RTT-to-server answers (probe.go)
	load     *loadMeter // overload reporting (overload.go)
	// run is this start's restart epoch, sent in pongs; hellos sealed for
	// another epoch cannot re-open a game session (clients.Admit).
	run clients.Run
	// refusedLog bounds the log lines of per-datagram refusals (replayed or
	// stale hellos, clients over their limits, oversized replies).
	refusedLog *logging.Limiter

	closing  atomic.Bool
	draining atomic.Bool    // no new sessions (studio.go)
	loops    sync.WaitGroup // the read loop and the janitor
	pumps    sync.WaitGroup // one reply pump per session with a server

	httpSrvs  []*http.Server // metrics and health (studio.go)
	httpLns   []net.Listener
	httpAddrs []string
	tcp       *tcpSide // tcp_listen at run time (tcp.go); nil when off
}

// counters are the proxy's metrics; every dropped datagram is counted by reason.
type counters struct {
	received, forwarded, replies, replyDatagrams             *metrics.Counter
	malformed, unknownSession, unknownClient, authFailed     *metrics.Counter
	duplicate, staleHello, forbiddenTarget, rateLimited      *metrics.Counter
	sessionConflict, upstreamErrors, sendErrors, noPath      *metrics.Counter
	sessionsCreated, sessionsEvicted, sessionsIdle, pongsOut *metrics.Counter
	sessions                                                 *metrics.Gauge
	oversize, movedCopies                                    *metrics.Counter
	oldEpoch, sessionLimit, sessionRate                      *metrics.Counter
	// Connect-token refusals by clients.Refusal, refusals while draining, reloads.
	tokenRefused                         map[clients.Refusal]*metrics.Counter
	drainRefused, reloads, tokensEvicted *metrics.Counter
	tokensSeen                           *metrics.Gauge
}

func newCounters(r *metrics.Registry) counters {
	drop := func(reason string) *metrics.Counter {
		return r.Counter(`proxy_dropped_total{reason="`+reason+`"}`, "Datagrams dropped, by reason.")
	}
	return counters{
		received:        r.Counter("proxy_received_total", "Datagrams received from routers."),
		forwarded:       r.Counter("proxy_forwarded_total", "Packets forwarded to game servers."),
		replies:         r.Counter("proxy_replies_total", "Packets received from game servers and sent back."),
		replyDatagrams:  r.Counter("proxy_reply_datagrams_total", "Datagrams sent to routers (all copies and shards)."),
		malformed:       drop("malformed"),
		unknownSession:  drop("unknown_session"),
		unknownClient:   drop("unknown_client"),
		authFailed:      drop("auth"),
		duplicate:       drop("duplicate"),
		staleHello:      drop("stale_hello"),
		forbiddenTarget: drop("forbidden_target"),
		rateLimited:     drop("rate_limited"),
		sessionConflict: drop("session_conflict"),
		upstreamErrors:  r.Counter("proxy_upstream_errors_total", "Errors writing to game servers."),
		sendErrors:      r.Counter("proxy_send_errors_total", "Errors sending to routers."),
		noPath:          r.Counter("proxy_reply_no_path_total", "Server packets with no recent router address to send to."),
		sessionsCreated: r.Counter("proxy_sessions_created_total", "Sessions created."),
		sessionsEvicted: r.Counter("proxy_sessions_evicted_total", "Sessions evicted because the table was full."),
		sessionsIdle:    r.Counter("proxy_sessions_expired_total", "Sessions ended after being idle."),
		pongsOut:        r.Counter("proxy_pongs_total", "Keepalive answers sent."),
		sessions:        r.Gauge("proxy_sessions", "Live sessions."),
		movedCopies:     r.Counter("proxy_moved_copies_total", "Extra reply copies sent on fresh paths for paths lagging behind."),
		oversize:        r.Counter(`proxy_dropped_total{reason="server_packet_too_large"}`, "Server packets larger than the proxy carries."),
		oldEpoch:        drop("old_epoch"),
		sessionLimit:    drop("client_session_limit"),
		sessionRate:     drop("client_session_rate"),
		tokenRefused: map[clients.Refusal]*metrics.Counter{
			clients.TokenMalformed: drop(clients.TokenMalformed.String()),
			clients.TokenForged:    drop(clients.TokenForged.String()),
			clients.TokenExpired:   drop(clients.TokenExpired.String()),
			clients.TokenNotYet:    drop(clients.TokenNotYet.String()),
			clients.TokenReplayed:  drop(clients.TokenReplayed.String()),
		},
		drainRefused:  drop("draining"),
		reloads:       r.Counter("proxy_reloads_total", "Client and token tables reloaded (SIGHUP)."),
		tokensSeen:    r.Gauge("proxy_tokens_seen", "Connect tokens remembered until they expire (replay table)."),
		tokensEvicted: r.Counter("proxy_tokens_evicted_total", "Unexpired tokens dropped from the full replay table."),
	}
}

// New builds a proxy from a checked config and binds its socket, so it is ready
// to serve when New returns.
func New(cfg *Config, log *slog.Logger) (*Server, error) {
	s := &Server{cfg: cfg, log: log, reg: metrics.NewRegistry(),
		refusedLog: logging.NewLimiter(5, 20)}
	s.m = newCounters(s.reg)
	s.load = newLoadMeter(cfg, s.reg)
	if _, err := rand.Read(s.sid[:]); err != nil {
		return nil, err
	}
	roster, err := newRoster(cfg, nil)
	if err != nil {
		return nil, err
	}
	s.roster.Store(roster)
	s.studio.Store(&cfg.StudioConfig)
	if s.run, err = clients.NewRun(time.Now()); err != nil {
		return nil, err
	}
	seed := binary.LittleEndian.Uint64(s.sid[:])
	s.sessions = session.NewTable(session.Config[uint64, *proxySession]{
		MaxEntries:  cfg.MaxSessions,
		IdleTimeout: cfg.SessionIdle.Duration,
		Hash:        func(id uint64) uint64 { return (id ^ seed) * 0x9e3779b97f4a7c15 },
		OnRemove:    s.onRemove,
	})
	listen, _ := netip.ParseAddrPort(cfg.Listen)
	conn, err := udp.Listen("udp", udp.Options{Local: listen, RecvBuffer: recvBuffer, SendBuffer: 4 << 20})
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	s.conn = conn
	if err := s.listenHTTP(); err != nil {
		conn.Close()
		return nil, err
	}
	s.probes = newProber(cfg, log, s.reg)
	return s, nil
}

// Addr is the address the proxy listens on.
func (s *Server) Addr() netip.AddrPort { return s.conn.LocalAddr() }

// Metrics returns the proxy's metric registry.
func (s *Server) Metrics() *metrics.Registry { return s.reg }

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	for i, hs := range s.httpSrvs {
		go hs.Serve(s.httpLns[i])
	}
	s.log.Info("proxy serving", "listen", s.Addr().String(), "clients", len(s.roster.Load().Clients),
		"tokens", s.cfg.tokenKey != nil, "max_sessions", s.cfg.MaxSessions)
	if err := s.startTCP(ctx); err != nil {
		return fmt.Errorf("tcp_listen: %w", err)
	}
	s.loops.Add(2)
	go s.janitor(ctx)
	go func() {
		defer s.loops.Done()
		s.readLoop()
	}()
	<-ctx.Done()
	s.Close()
	return nil
}

// Close stops the proxy and ends every session.
func (s *Server) Close() {
	if s.closing.Swap(true) {
		return
	}
	s.conn.Close()
	for i, hs := range s.httpSrvs {
		hs.Close()
		s.httpLns[i].Close() // Close does not close a listener Serve never took
	}
	// Stop the loops first, so no session is created behind our back, then end
	// the sessions: closing their upstream sockets ends their reply pumps.
	s.loops.Wait()
	var ids []uint64
	s.sessions.Range(func(id uint64, _ *proxySession) bool { ids = append(ids, id); return true })
	for _, id := range ids {
		s.sessions.Delete(id)
	}
	s.pumps.Wait()
	s.probes.close()
}

func (s *Server) janitor(ctx context.Context) {
	defer s.loops.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			now := mono.Now()
			s.sessions.Sweep(now)
			s.sessions.Range(func(_ uint64, ps *proxySession) bool { ps.recv.Expire(now); return true })
			s.m.sessions.Set(int64(s.sessions.Len()))
			s.tokenTick()
		}
	}
}

func (s *Server) onRemove(id uint64, ps *proxySession, why session.Reason) {
	switch why {
	case session.ReasonEvicted:
		s.m.sessionsEvicted.Inc()
		if ok, n := s.refusedLog.Allow(); ok {
			s.log.Warn("session evicted: table full", "session", id, "client", ps.client.ID, "max_sessions", s.cfg.MaxSessions, "lines_suppressed", n)
		}
	case session.ReasonIdle:
		s.m.sessionsIdle.Inc()
		s.log.Debug("session idle, ended", "session", id, "client", ps.client.ID)
	}
	ps.client.CloseSession()
	ps.close()
}

// reader holds one read goroutine's buffers, so nothing is allocated per datagram.
type reader struct {
	msgs    []udp.Message
	ctrl    []byte // control replies (pong, ack)
	scratch []byte // a copy for authenticating hellos before a session exists
	hdr     wire.Header
	hello   wire.Hello
	// sink forwards a session's decoded packets to the server, but first learns
	// the address the completing datagram came from as a live path: the server
	// may answer that very packet at once. One lives in each reader, so passing
	// it allocates nothing.
	sink replypath.Learner
}

func (s *Server) readLoop() {
	r := &reader{msgs: make([]udp.Message, batch), ctrl: make([]byte, wire.MaxDatagram), scratch: make([]byte, wire.MaxDatagram)}
	for i := range r.msgs {
		r.msgs[i].Buf = make([]byte, wire.MaxDatagram+1)
	}
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
		s.load.observeBatch(now, mono.Now())
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
	// Peek, not Get: only an authenticated datagram may keep a session alive.
	ps, ok := s.sessions.Peek(h.Session)
	if !ok {
		if h.Flags&wire.FlagHello == 0 {
			s.m.unknownSession.Inc()
			return
		}
		if ps = s.openSession(r, dg, off, from, now); ps == nil {
			return
		}
	} else if h.Flags&wire.FlagHello != 0 && r.hello.Salt != ps.salt {
		// Another session claims this ID; it cannot be ours (different keys).
		s.m.sessionConflict.Inc()
		return
	} else if h.Flags&wire.FlagHello != 0 && r.hello.Epoch == s.run.Epoch && ps.epoch.Load() != s.run.Epoch {
		// The router learned this run's epoch after it opened the session and
		// moved the session's keys to it (so a restart of ours cannot take a
		// replay of them): follow, once the hello proves it.
		if !s.upgradeEpoch(r, ps, dg, off) {
			return
		}
	}
	r.sink = replypath.Learner{Paths: &ps.paths, Next: ps, From: from, Now: now}
	body, err := ps.recv.Receive(dg, h, off, now, &r.sink)
	switch {
	case errors.Is(err, tunnel.ErrDuplicate):
		s.m.duplicate.Inc()
		ps.paths.Refresh(from, now)
		return
	case err != nil:
		s.m.authFailed.Inc()
		return
	}
	// Authenticated: this address is a live path of the session (this is also how
	// a NAT rebinding on the router's side is learned).
	ps.paths.Learn(from, now)
	if h.Type == wire.TypeData || h.Type == wire.TypePing || h.Type == wire.TypeProbe {
		// Game traffic (and a control session's keepalive pings) keeps the
		// session alive; keepalives of an idle game session do not, so it
		// ends after session_idle as the router's does.
		s.sessions.Get(h.Session, now)
	}
	if h.Type == wire.TypeData {
		ps.noteScheme(h)
	}
	switch h.Type {
	case wire.TypePing:
		var ping wire.Ping
		if wire.ParsePing(body, &ping) != nil {
			s.m.malformed.Inc()
			return
		}
		pong := wire.Pong{Ping: ping, PeerTime: now, Overloaded: s.load.overloaded(now), Epoch: s.run.Epoch}
		var pb [wire.PongEpochLen]byte
		if out, err := ps.send.SealControl(r.ctrl, wire.TypePong, pong.Put(pb[:]), now); err == nil {
			s.sendTo(out, from)
			s.m.pongsOut.Inc()
		}
	case wire.TypeProbe:
		s.answerProbe(r, ps, body, from, now)
	case wire.TypeClose:
		s.sessions.Delete(h.Session)
		return
	case wire.TypeKeepalive:
		ps.paths.NoteKeepalive(body)
	}
	if h.Flags&wire.FlagHello != 0 && ps.ackDue(now) {
		var ab [8]byte
		binary.BigEndian.PutUint64(ab[:], h.Packet)
		if out, err := ps.send.SealControl(r.ctrl, wire.TypeAck, ab[:], now); err == nil {
			s.sendTo(out, from)
		}
	}
}

// openSession authenticates the first datagram of an unknown session (it carries
// a hello) and creates the session. It returns nil, counting why, when the
// datagram must be dropped.
func (s *Server) openSession(r *reader, dg []byte, off int, from netip.AddrPort, now int64) *proxySession {
	hello := &r.hello
	if s.draining.Load() {
		s.m.drainRefused.Inc()
		return nil
	}
	a, why := clients.Admit(s.roster.Load(), &r.hdr, hello, dg, off, r.scratch, s.cfg.HelloMaxAge.Duration, time.Now(), &s.run)
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
	case clients.OldEpoch:
		s.m.oldEpoch.Inc()
		if ok, n := s.refusedLog.Allow(); ok {
			s.log.Warn("hello refused: made for an earlier run of this proxy (a replay, or a router that has not heard of the restart yet)",
				"client", a.Client.ID, "session", r.hdr.Session, "lines_suppressed", n)
		}
		return nil
	case clients.ForbiddenTarget:
		s.m.forbiddenTarget.Inc()
		if ok, n := s.refusedLog.Allow(); ok {
			s.log.Warn("target refused: not in the client's allowlist", "client", a.Client.ID, "target", hello.Target.String(), "lines_suppressed", n)
		}
		return nil
	case clients.SessionLimit, clients.SessionRate:
		if why == clients.SessionLimit {
			s.m.sessionLimit.Inc()
		} else {
			s.m.sessionRate.Inc()
		}
		if ok, n := s.refusedLog.Allow(); ok {
			s.log.Warn("session refused: client over its limit", "client", a.Client.ID, "limit", why.String(),
				"sessions", a.Client.Sessions(), "max_sessions", a.Client.MaxSessions(), "lines_suppressed", n)
		}
		return nil
	case clients.Admitted:
	default: // connect tokens: expired, forged, replayed...
		if c := s.m.tokenRefused[why]; c != nil {
			c.Inc()
		}
		return nil
	}
	c, send, recv, target := a.Client, a.Send, a.Recv, hello.Target
	ps, created, err := s.sessions.GetOrCreate(r.hdr.Session, now, func() (*proxySession, error) {
		return s.newSession(c, r.hdr.Session, hello.Salt, target, from, send, recv)
	})
	if !created {
		c.CloseSession() // reserved above, not used
	}
	if err != nil {
		s.m.upstreamErrors.Inc()
		s.log.Warn("cannot open upstream socket", "client", c.ID, "target", target.String(), "err", err)
		return nil
	}
	if created {
		ps.epoch.Store(hello.Epoch)
		if !target.IsValid() {
			// A control session may be re-opened with the keys it had before a
			// restart (clients.Admit): nothing sealed before this datagram is
			// taken, so a replayed capture gets no answer.
			ps.recv.SetFloor(r.hdr.Packet)
		}
		s.m.sessionsCreated.Inc()
		s.log.Info("session opened", "client", c.ID, "session", r.hdr.Session, "target", target.String())
		if ps.upstream != nil {
			s.pumps.Add(1)
			go ps.pumpReplies()
		}
	}
	return ps
}

// upgradeEpoch re-keys ps for this run's epoch when the datagram, a hello
// naming it, authenticates with those keys; it reports whether it did.
func (s *Server) upgradeEpoch(r *reader, ps *proxySession, dg []byte, off int) bool {
	send, recv, err := wire.DeriveKeysEpoch(&ps.client.Key, &ps.salt, ps.id, s.run.Epoch, wire.RoleServer)
	if err != nil {
		return false
	}
	cp := r.scratch[:len(dg)]
	copy(cp, dg)
	if _, err := wire.Open(recv, cp, off); err != nil {
		s.m.authFailed.Inc()
		return false
	}
	ps.recv.Upgrade(recv)
	ps.send.Rekey(send, 0, 0)
	ps.epoch.Store(s.run.Epoch)
	return true
}

func (s *Server) sendTo(dg []byte, to netip.AddrPort) {
	if s.tcp.send(dg, to) {
		return // a TLS/TCP fallback path (tcp.go)
	}
	if err := s.conn.WriteTo(dg, to); err != nil {
		s.m.sendErrors.Inc()
	}
}

// proxySession is one router session: its keys, its window and decoder, its
// upstream socket and the router addresses it was seen from.
type proxySession struct {
	srv    *Server
	id     uint64
	client *clients.Client
	salt   [16]byte
	target netip.AddrPort
	recv   *tunnel.Receiver
	send   *tunnel.Sender

	upstream *net.UDPConn // connected to target; nil for a control-only session
	closed   atomic.Bool

	// The player's address for the server (studio.go): the router address
	// the session began from, written in a header of kind header in front of
	// each forwarded packet, assembled in hbuf (the read loop's, per session).
	origin netip.AddrPort
	header proxyproto.Kind
	hbuf   []byte

	paths   replypath.Set // the router addresses replies go to
	lastAck atomic.Int64
	epoch   atomic.Uint64 // the epoch the session's keys are for (0: none)
	applied uint32        // the packed scheme the reply encoder uses; reply pump only
	scheme  atomic.Uint32 // packed scheme of the router's data, mirrored for replies (see noteScheme)
}

func (s *Server) newSession(c *clients.Client, id uint64, salt [16]byte, target, from netip.AddrPort, send, recv cipher.AEAD) (*proxySession, error) {
	ps := &proxySession{srv: s, id: id, client: c, salt: salt, target: target, origin: from}
	if ps.header = s.studio.Load().headerFor(target); ps.header != proxyproto.None {
		ps.hbuf = make([]byte, proxyproto.MaxLen+raic.MaxPacket)
	}
	ps.recv = tunnel.NewReceiver(recv, raic.DecoderConfig{})
	var err error
	ps.send, err = tunnel.NewSender(send, id, raic.Params{Scheme: raic.SchemeCopy, K: 1}, nil)
	if err != nil {
		return nil, err
	}
	// Packet IDs from the clock: ahead of anything an earlier run of this proxy
	// sealed in this session, so the router's window takes them and no nonce
	// repeats even when the keys do (a re-opened control session).
	ps.send.StartAt(tunnel.ClockPIDBase(time.Now().UnixMilli()))
	if target.IsValid() {
		ps.upstream, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(target))
		if err != nil {
			return nil, err
		}
		// The default buffer holds only ~20 ms of a 10,000 pps server stream; the
		// memory is used only while packets wait.
		ps.upstream.SetReadBuffer(1 << 20)
	}
	return ps, nil
}

// Deliver forwards a decoded packet to the game server (tunnel.Sink).
func (ps *proxySession) Deliver(_ uint64, pkt []byte, now int64) {
	s := ps.srv
	if ps.upstream == nil {
		return
	}
	if !ps.client.Take(now) {
		s.m.rateLimited.Inc()
		return
	}
	if ps.header != proxyproto.None && len(pkt) <= raic.MaxPacket {
		n := ps.clientAddrHeader(ps.hbuf)
		pkt = ps.hbuf[:n+copy(ps.hbuf[n:], pkt)]
	}
	if _, err := ps.upstream.Write(pkt); err != nil {
		s.m.upstreamErrors.Inc()
		return
	}
	s.m.forwarded.Inc()
}

// ackDue limits acks to one per 10 ms per session: a router sends hellos until
// its first answer, and one ack per burst of them is enough.
func (ps *proxySession) ackDue(now int64) bool {
	last := ps.lastAck.Load()
	if now-last < int64(10*time.Millisecond) {
		return false
	}
	return ps.lastAck.CompareAndSwap(last, now)
}

// pumpReplies reads what the game server sends and returns it to the router.
func (ps *proxySession) pumpReplies() {
	s := ps.srv
	defer s.pumps.Done()
	// One buffer per session, so it is sized for game packets rather than for the
	// largest UDP datagram: a thousand sessions must not cost 64 MB. A datagram
	// that fills it may have been cut short, so it is dropped and counted.
	buf := make([]byte, maxServerPacket+1)
	for {
		n, err := ps.upstream.Read(buf)
		if err != nil {
			if ps.closed.Load() {
				return
			}
			// ICMP port unreachable from the server surfaces here; keep going.
			s.m.upstreamErrors.Inc()
			continue
		}
		if n > maxServerPacket {
			s.m.oversize.Inc()
			if ok, sup := s.refusedLog.Allow(); ok {
				s.log.Warn("server packet dropped: larger than the proxy carries back", "client", ps.client.ID,
					"target", ps.target.String(), "limit_bytes", maxServerPacket, "lines_suppressed", sup)
			}
			continue
		}
		ps.reply(buf[:n], mono.Now())
	}
}

// reply codes one server packet and sends it over every live path of the
// session: a single datagram (RAIC-1) to each path, as many times as the
// router's keepalives say it sends on each, shards spread over them once each.
func (ps *proxySession) reply(pkt []byte, now int64) {
	s := ps.srv
	s.sessions.Get(ps.id, now) // a server reply keeps the session alive too
	var live replypath.Live
	ps.paths.Live(now, s.cfg.ReplyWindow.Duration, &live)
	np := live.Len()
	if np == 0 {
		s.m.noPath.Inc()
		return
	}
	ps.applyScheme()
	_, dgs, err := ps.send.Seal(pkt, now)
	if err != nil {
		s.m.upstreamErrors.Inc()
		return
	}
	// Send every copy first; counting comes after. A path lagging behind still
	// gets its copies and as many more go on fresh paths; so do the copies of
	// each router path never heard from (see replypath.Live.Copies).
	// The X-fragments of a copy scheme are copies too (ps.send.Copies): each
	// one goes to every path.
	sent := len(dgs)
	if ps.send.Copies() {
		var to [replypath.MaxCopies]netip.AddrPort
		n, extra := live.Copies(&to)
		for _, dg := range dgs {
			for _, a := range to[:n] {
				s.sendTo(dg, a)
			}
		}
		sent = n * len(dgs)
		if extra > 0 {
			s.m.movedCopies.Add(uint64(extra * len(dgs)))
		}
	} else {
		var placement [64]int
		out := live.Place(len(dgs), placement[:0])
		for i, dg := range dgs {
			s.sendTo(dg, live.Addr(out[i]))
		}
	}
	s.m.replies.Inc()
	s.m.replyDatagrams.Add(uint64(sent))
}

// noteScheme remembers the RAIC scheme of a data shard from the router, so the
// replies use the same one. The header is authenticated data, and handle calls
// this only after the datagram opened.
func (ps *proxySession) noteScheme(h *wire.Header) {
	var p raic.Params
	switch raic.Scheme(h.Scheme) {
	case raic.SchemeCopy:
		p = raic.Params{Scheme: raic.SchemeCopy, K: 1}
	case raic.SchemeXOR:
		p = raic.Params{Scheme: raic.SchemeXOR, K: int(h.Desc.K), M: 1}
	case raic.SchemeRS:
		p = raic.Params{Scheme: raic.SchemeRS, K: int(h.Desc.K), M: int(h.Desc.Count) - int(h.Desc.K)}
	case raic.SchemeTime:
		if h.Desc.Count < 2 {
			return // a fragmented RAICT packet says nothing about the depth
		}
		p = raic.Params{Scheme: raic.SchemeTime, K: 1, Depth: int(h.Desc.Count) - 1}
	default:
		return
	}
	if p.K < 1 || p.M < 0 || p.K > 255 || p.M > 255 || p.Depth > 255 {
		return
	}
	// Written only on a change: this runs per data datagram, and a store on
	// every one would bounce the session's cache line between the read loop and
	// the reply pump.
	if v := uint32(p.Scheme) | uint32(p.K)<<8 | uint32(p.M)<<16 | uint32(p.Depth)<<24; ps.scheme.Load() != v {
		ps.scheme.Store(v)
	}
}

// applyScheme switches the reply encoder to the router's scheme when it changed.
// Only the reply pump calls it, the one goroutine that seals replies.
func (ps *proxySession) applyScheme() {
	v := ps.scheme.Load()
	if v == 0 || v == ps.applied {
		return
	}
	p := raic.Params{Scheme: raic.Scheme(v & 0xff), K: int(v >> 8 & 0xff), M: int(v >> 16 & 0xff), Depth: int(v >> 24)}
	// Applied or not (a scheme that cannot be built keeps the old encoder), this
	// value is not tried again.
	ps.applied = v
	if p.Validate() == nil {
		ps.send.SetParams(p)
	}
}

func (ps *proxySession) close() {
	if ps.closed.Swap(true) {
		return
	}
	if ps.upstream != nil {
		ps.upstream.Close()
	}
}
