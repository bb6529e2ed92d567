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
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/clients"
	"github.com/raicnet/raic/pkg/ingress"
	"github.com/raicnet/raic/pkg/logging"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/proxyproto"
	"github.com/raicnet/raic/pkg/session"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// maxServerPacket is the largest server packet the proxy carries back (it is
// X-fragmented on the way); game servers keep theirs under the path MTU. A
// larger one is dropped, counted (server_packet_too_large) and logged at a
// bounded rate.
const maxServerPacket = 8 << 10

// DefaultReceiveBufferKB is receive_buffer_kb's default: about 10 ms of
// datagrams at the proxy's capacity, so an overload drops at the socket
// instead of queueing seconds of stale game traffic.
const DefaultReceiveBufferKB = 1024

// Server is a running proxy.
type Server struct {
	cfg      *Config
	log      *slog.Logger
	in       *ingress.Ingress[*proxySession] // the router side: read loop, admission, receive, answers
	studio   atomic.Pointer[StudioConfig]    // per-server options, drain timeout; swapped on reload (studio.go)
	sessions *session.Table[uint64, *proxySession]
	reg      *metrics.Registry
	m        counters
	probes   *prober     // RTT-to-server answers (probe.go)
	load     *loadMeter  // overload reporting (overload.go)
	ports    *portKeeper // server ports kept for a flow's next session (keepport.go)
	// refusedLog bounds the log lines of per-datagram refusals (evictions,
	// oversized replies); ingress bounds its own.
	refusedLog *logging.Limiter
	ends       *ingress.Ends // evictions and idle ends, counted and logged

	closing atomic.Bool
	loops   sync.WaitGroup    // the read loops, the pollers and the janitor
	pollers []*upstreamPoller // read the servers' replies, one per worker (upstream.go)
	shared  *sharedUpstream   // the shared upstream sockets, nil when no [[server]] asks for them (shared_upstream.go)
	batches []*forwardBatch   // a read loop's forwards on the sessions' own sockets, one io_uring send a read batch (forward_batch.go); nil without io_uring

	httpSrvs  []*http.Server // metrics and health (studio.go)
	httpLns   []net.Listener
	httpAddrs []string
	tcp       *tcpSide // tcp_listen at run time (tcp.go); nil when off
}

// counters are the proxy's own metrics; the router side's (received, drops by
// reason, pongs, send errors, connect-token refusals and the token table, the
// refusals while draining) are package ingress's, under the prefix "proxy".
type counters struct {
	forwarded, replies, replyDatagrams, rateLimited *metrics.Counter
	upstreamErrors, noPath                          *metrics.Counter
	sessionsEvicted, sessionsIdle                   *metrics.Counter
	sessions                                        *metrics.Gauge
	oversize, movedCopies                           *metrics.Counter
	reloads                                         *metrics.Counter // SIGHUP (studio.go)
}

func newCounters(r *metrics.Registry) counters {
	return counters{
		forwarded:       r.Counter("proxy_forwarded_total", "Packets forwarded to game servers."),
		replies:         r.Counter("proxy_replies_total", "Packets received from game servers and sent back."),
		replyDatagrams:  r.Counter("proxy_reply_datagrams_total", "Datagrams sent to routers (all copies and shards)."),
		rateLimited:     r.Counter(`proxy_dropped_total{reason="rate_limited"}`, "Datagrams dropped, by reason."),
		upstreamErrors:  r.Counter("proxy_upstream_errors_total", "Errors writing to game servers."),
		noPath:          r.Counter("proxy_reply_no_path_total", "Server packets with no recent router address to send to."),
		sessionsEvicted: r.Counter("proxy_sessions_evicted_total", "Sessions evicted because the table was full."),
		sessionsIdle:    r.Counter("proxy_sessions_expired_total", "Sessions ended after being idle."),
		sessions:        r.Gauge("proxy_sessions", "Live sessions."),
		movedCopies:     r.Counter("proxy_moved_copies_total", "Extra reply copies sent on fresh paths for paths lagging behind."),
		oversize:        r.Counter(`proxy_dropped_total{reason="server_packet_too_large"}`, "Server packets larger than the proxy carries."),
		reloads:         r.Counter("proxy_reloads_total", "Client and token tables reloaded (SIGHUP)."),
	}
}

// New builds a proxy from a checked config and binds its socket, so it is ready
// to serve when New returns.
func New(cfg *Config, log *slog.Logger) (*Server, error) {
	s := &Server{cfg: cfg, log: log, reg: metrics.NewRegistry(), refusedLog: logging.NewLimiter(5, 20)}
	s.m = newCounters(s.reg)
	s.ends = ingress.NewEnds(s.m.sessionsEvicted, s.m.sessionsIdle, log, s.refusedLog, cfg.MaxSessions)
	s.load = newLoadMeter(cfg, s.reg)
	s.ports = newPortKeeper(int64(cfg.KeepServerPort.Duration), cfg.MaxSessions, s.reg)
	s.studio.Store(&cfg.StudioConfig)
	roster, err := newRoster(cfg, nil)
	if err != nil {
		return nil, err
	}
	if cfg.MemoryLimitMB > 0 {
		debug.SetMemoryLimit(int64(cfg.MemoryLimitMB) << 20) // the process's: one proxy a process
	}
	if s.sessions, err = ingress.NewSessions(cfg.MaxSessions, cfg.SessionIdle.Duration, s.onRemove); err != nil {
		return nil, err
	}
	s.in, err = ingress.New(ingress.Config{
		Listen: cfg.Listen, RecvBuffer: cfg.ReceiveBufferKB << 10, Roster: roster, Tokens: true, MaxSessions: cfg.MaxSessions,
		HelloMaxAge: cfg.HelloMaxAge.Duration, AuthenticatedKeepAlive: true,
		SendVia: func(dg []byte, to netip.AddrPort) bool { return s.tcp.send(dg, to) }, // a TLS/TCP fallback path (tcp.go)
		Prefix:  "proxy", Registry: s.reg, Log: log,
		OnBatch:    func(start int64) { s.load.observeBatch(start, mono.Now()) },
		AfterBatch: func(r *ingress.Reader) { s.endBatch(r.Worker()) }, // the batch's forwards (forward_batch.go)
		Workers:    cfg.workers(),
		// every path of a session to one worker (pkg/ingress listen)
		SteerBySession: cfg.SteerSessions,
		PinWorkers:     cfg.PinWorkers,
		// quality reports to the routers (pkg/quality)
		ReportInterval: reportInterval(cfg.ReportInterval.Duration),
	}, s.sessions, (*program)(s))
	if err != nil {
		return nil, err
	}
	// Forwarded per packet by every read loop: a shard each (fwd).
	s.m.forwarded = s.reg.ShardedCounter("proxy_forwarded_total", "", s.in.Workers())
	s.newForwardBatches()
	// undo releases what New made so far when a later step fails.
	undo := func() {
		s.in.Close()
		for _, p := range s.pollers {
			p.close()
		}
		if s.shared != nil {
			s.shared.close()
		}
		s.closeForwardBatches()
	}
	for i := 0; i < s.in.Workers(); i++ {
		p, err := newUpstreamPoller(s)
		if err != nil {
			undo()
			return nil, err
		}
		s.pollers = append(s.pollers, p)
	}
	if cfg.anyShared() {
		if s.shared, err = newSharedUpstream(s, s.in.Workers(), cfg.MaxSessions); err != nil {
			s.shared = nil
			undo()
			return nil, err
		}
	}
	if err := s.listenHTTP(); err != nil {
		undo()
		return nil, err
	}
	s.probes = newProber(cfg, log, s.reg)
	return s, nil
}

// workers is the number of listen sockets: workers = 0 is one per CPU.
func (c *Config) workers() int {
	if c.Workers == 0 {
		return runtime.GOMAXPROCS(0)
	}
	return c.Workers
}

// Addr is the address the proxy listens on.
func (s *Server) Addr() netip.AddrPort { return s.in.Addr() }

// Metrics returns the proxy's metric registry.
func (s *Server) Metrics() *metrics.Registry { return s.reg }

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	for i, hs := range s.httpSrvs {
		go hs.Serve(s.httpLns[i])
	}
	s.log.Info("proxy serving", "listen", s.Addr().String(), "clients", s.in.Clients(),
		"tokens", s.cfg.tokenKey != nil, "max_sessions", s.cfg.MaxSessions, "workers", s.in.Workers(),
		"receive_buffer_kb", s.in.ReceiveBuffer()>>10, "session_forwards", s.forwardMode())
	if err := s.startTCP(ctx); err != nil {
		return fmt.Errorf("tcp_listen: %w", err)
	}
	s.loops.Add(2 + len(s.pollers))
	for _, p := range s.pollers {
		go func() {
			defer s.loops.Done()
			p.run()
		}()
	}
	if s.shared != nil {
		s.loops.Add(len(s.shared.socks))
		for _, ss := range s.shared.socks {
			go func() {
				defer s.loops.Done()
				s.shared.readReplies(ss)
			}()
		}
	}
	go s.janitor(ctx)
	go func() {
		defer s.loops.Done()
		s.in.Run()
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
	s.in.Close()
	for _, p := range s.pollers {
		p.close()
	}
	if s.shared != nil {
		s.shared.close()
	}
	for i, hs := range s.httpSrvs {
		hs.Close()
		s.httpLns[i].Close() // Close does not close a listener Serve never took
	}
	// Stop the loops first (the read loops, the pollers of the servers'
	// replies), so no session is created or answered behind our back, then
	// end the sessions.
	s.loops.Wait()
	s.closeForwardBatches() // the read loops are done with them
	var ids []uint64
	s.sessions.Range(func(id uint64, _ *proxySession) bool { ids = append(ids, id); return true })
	for _, id := range ids {
		s.sessions.Delete(id)
	}
	s.ports.sweep(-1)
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
			s.ports.sweep(now)
			s.sessions.Range(func(_ uint64, ps *proxySession) bool { ps.Recv.Expire(now); return true })
			s.m.sessions.Set(int64(s.sessions.Len()))
			s.in.TokenTick(time.Now())
		}
	}
}

func (s *Server) onRemove(id uint64, ps *proxySession, why session.Reason) {
	s.ends.Ended(id, &ps.Peer, why)
	ps.close()
}

// program is the proxy as package ingress sees it: what it does with a router's
// new session and its controls.
type program Server

// NewSession makes the session of an admitted hello, with its upstream socket
// to the target; from is where the player's address header says it comes from.
func (p *program) NewSession(a *clients.Admission, id uint64, hello *wire.Hello, from netip.AddrPort) (*proxySession, error) {
	s := (*Server)(p)
	ps, err := s.newSession(a.Client, id, hello, from, a.Send, a.Recv)
	if err != nil {
		s.m.upstreamErrors.Inc()
		s.log.Warn("cannot open upstream socket", "client", a.Client.ID, "target", hello.Target.String(), "err", err)
	}
	return ps, err
}

// Opened logs the new session and has a poller read its server's replies.
func (p *program) Opened(ps *proxySession, _ int64) {
	s := (*Server)(p)
	s.log.Info("session opened", "client", ps.Client.ID, "session", ps.id, "target", ps.target.String(), "server_port_reused", ps.reused)
	if old := ps.replaces; old != nil {
		// The router restarted while its old session of this flow was open:
		// the new one has its server port now (keepport.go), the old one ends.
		ps.replaces = nil
		if cur, ok := s.sessions.Peek(old.id); ok && cur == old {
			s.sessions.Delete(old.id)
			s.log.Info("session replaced: a new session of its flow took its server port", "client", old.Client.ID, "session", old.id, "by", ps.id)
		}
	}
	if ps.flowed {
		s.ports.opened(ps.key(), ps)
	}
	if ps.port.Load() != nil {
		ps.poller = s.pollers[ps.id%uint64(len(s.pollers))]
		if err := ps.poller.add(ps); err != nil {
			s.m.upstreamErrors.Inc()
			s.log.Warn("cannot watch upstream socket", "client", ps.Client.ID, "target", ps.target.String(), "err", err)
		}
	}
}

// Pass: the proxy is the far end of every session and leaves every answer to
// ingress.
func (*program) Pass(*ingress.Reader, *proxySession, []byte, netip.AddrPort, int64) bool {
	return false
}

// Probe answers how far the server is (probe.go).
func (p *program) Probe(ps *proxySession, rep *wire.ProbeReply, now int64) {
	s := (*Server)(p)
	if rep.Allowed {
		rep.ServerRTT = s.probes.lookup(rep.Probe.Target.Addr(), now)
	}
	s.probes.asked.Inc()
}

// Overloaded is the proxy's own load (overload.go).
func (p *program) Overloaded(now int64) bool { return p.load.overloaded(now) }

// proxySession is one router session: its keys, its window and decoder, its
// upstream socket and the router addresses it was seen from. Its fields are
// in an order that leaves no padding between them: 320 bytes, a block of its
// own size class (a proxy holds one per session; a byte more takes 352).
type proxySession struct {
	ingress.Peer // keys, window, decoder, reply paths, the router's scheme
	srv          *Server
	id           uint64
	target       netip.AddrPort

	// port is the socket connected to target (nil for a control-only
	// session, or once another session of the flow took it over); reused
	// says it was an earlier session's. flow is the hello's flow token
	// (flowed: it had one); replaces is the open session whose port this one
	// took, ended once this one is in the table.
	port     atomic.Pointer[serverPort]
	poller   *upstreamPoller // reads port
	replaces *proxySession

	// shared is the shared upstream socket the session is sent from (nil:
	// its own, port), slot (below) its value in the SPP header's proxy-port field
	// (shared_upstream.go).
	shared *sharedSocket

	// The player's address for the server (studio.go): the router address
	// the session began from, written in a header of kind header in front of
	// each forwarded packet (header is below, with the small fields).
	origin netip.AddrPort

	closed atomic.Bool
	slot   uint16
	header proxyproto.Kind
	reused bool
	flow   [wire.FlowLen]byte
	flowed bool
}

// RouterSide implements ingress.Session.
func (ps *proxySession) RouterSide() *ingress.Peer { return &ps.Peer }

// DataSink implements ingress.Session: the decoded packets go to Deliver.
func (ps *proxySession) DataSink() tunnel.Sink { return ps }

func (s *Server) newSession(c *clients.Client, id uint64, hello *wire.Hello, from netip.AddrPort, send, recv cipher.AEAD) (*proxySession, error) {
	salt, target := hello.Salt, hello.Target
	ps := &proxySession{srv: s, id: id, target: target, origin: from, flow: hello.Flow, flowed: hello.HasFlow() && target.IsValid()}
	studio := s.studio.Load()
	// A shared-upstream session needs no socket (shared_upstream.go).
	shared := s.shared != nil && target.IsValid() && studio.sharedFor(target)
	ps.header = studio.headerFor(target)
	ps.Client, ps.Salt = c, salt
	ps.Recv = tunnel.NewReceiver(recv, raic.DecoderConfig{})
	var err error
	ps.Send, err = tunnel.NewSender(send, id, raic.Params{Scheme: raic.SchemeCopy, K: 1}, nil)
	if err != nil {
		return nil, err
	}
	// Packet IDs from the clock: ahead of anything an earlier run of this proxy
	// sealed in this session, so the router's window takes them and no nonce
	// repeats even when the keys do (a re-opened control session).
	ps.Send.StartAt(tunnel.ClockPIDBase(time.Now().UnixMilli()))
	if shared {
		// Last, once the session is whole: its replies may come at once.
		if s.shared.attach(ps) {
			ps.flowed = false // no server port of its own to keep for the flow
			return ps, nil
		}
		// No free slot: the session gets a socket of its own below.
	}
	if ps.flowed {
		// A kept port of this flow, or an open session's (keepport.go).
		if sp, old := s.ports.claim(ps.key()); sp != nil {
			ps.port.Store(sp)
			ps.reused, ps.replaces = true, old
			return ps, nil
		}
	}
	if target.IsValid() {
		// The default buffer holds only ~20 ms of a 10,000 pps server stream; the
		// memory is used only while packets wait.
		sp, err := dialServer(target, 1<<20)
		if err != nil {
			return nil, err
		}
		ps.port.Store(sp)
	}
	return ps, nil
}

// Deliver forwards a decoded packet to the game server (tunnel.Sink).
func (ps *proxySession) Deliver(pid uint64, pkt []byte, now int64) {
	if ps.shared != nil {
		ps.DeliverVia(nil, pid, pkt, now)
		return
	}
	ps.deliver(nil, pkt, now)
}

// workerOf is the read loop of r, -1 for none (nil: a packet not from a
// read loop).
func workerOf(r *ingress.Reader) int {
	if r == nil {
		return -1
	}
	return r.Worker()
}

// fwd is the forwarded counter's shard of the read loop r (the counter's own
// outside one).
func (s *Server) fwd(r *ingress.Reader) *metrics.Counter {
	if r == nil {
		return s.m.forwarded
	}
	return s.m.forwarded.Shard(r.Worker() + 1)
}

// deliver forwards on the session's own socket (serverPort: a bare
// non-blocking socket, written without the netpoller).
func (ps *proxySession) deliver(r *ingress.Reader, pkt []byte, now int64) {
	s := ps.srv
	sp := ps.port.Load()
	if sp == nil {
		return
	}
	if !ps.Client.Take(now) {
		s.m.rateLimited.Inc()
		return
	}
	if b := s.batchOf(workerOf(r)); b != nil && len(pkt) <= raic.MaxPacket {
		b.queue(s, ps, sp, pkt) // sent at the read batch's end
		return
	}
	var err error
	if ps.header != proxyproto.None && len(pkt) <= raic.MaxPacket {
		// The header is written on the stack and sent in front of the
		// packet (writev): no buffer per session.
		var h [proxyproto.MaxLen]byte
		err = sp.writeHeaded(h[:ps.clientAddrHeader(h[:])], pkt)
	} else {
		err = sp.write(pkt)
	}
	if err != nil {
		s.m.upstreamErrors.Inc()
		return
	}
	s.fwd(r).Inc()
}

// reply codes one server packet and sends it over every live path of the
// session: a single datagram (RAIC-1) to each path, as many times as the
// router's keepalives say it sends on each, shards spread over them once each.
func (ps *proxySession) reply(pkt []byte, now int64) {
	s := ps.srv
	s.sessions.Get(ps.id, now) // a server reply keeps the session alive too
	// While the session has a port, its replies come from the poller that
	// reads it, pollers[id % n], and nowhere else: they are sealed into that
	// poller's buffers. Otherwise into the sender's own.
	sb := (*tunnel.SealBuffers)(nil)
	if ps.port.Load() != nil {
		sb = &s.pollers[ps.id%uint64(len(s.pollers))].seal
	}
	// Every copy is sent first; counting comes after.
	sent, moved, err := s.in.Reply(&ps.Peer, s.cfg.ReplyWindow.Duration, now, func() ([][]byte, bool, error) {
		ps.Scheme.Apply(ps.Send)
		var dgs [][]byte
		var err error
		if sb != nil {
			_, dgs, err = ps.Send.SealWith(sb, pkt, now)
		} else {
			_, dgs, err = ps.Send.Seal(pkt, now)
		}
		return dgs, ps.Send.Copies(), err
	})
	switch {
	case errors.Is(err, ingress.ErrNoPath):
		s.m.noPath.Inc()
		return
	case err != nil:
		s.m.upstreamErrors.Inc()
		return
	}
	if moved > 0 {
		s.m.movedCopies.Add(uint64(moved))
	}
	s.m.replies.Inc()
	s.m.replyDatagrams.Add(uint64(sent))
}

func (ps *proxySession) close() {
	if ps.closed.Swap(true) {
		return
	}
	if ps.shared != nil {
		ps.srv.shared.detach(ps)
		return
	}
	// Its server port is kept for the flow's next session, unless the proxy
	// is stopping (keepport.go).
	ps.srv.ports.ended(ps, !ps.srv.closing.Load(), mono.Now())
}

// reportInterval is ingress's form of report_interval: "0s" means none.
func reportInterval(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}
