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
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/fleet"
	"github.com/raicnet/raic/pkg/ingress"
	"github.com/raicnet/raic/pkg/logging"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/session"
	"github.com/raicnet/raic/pkg/uplink"
	"github.com/raicnet/raic/pkg/wire"
)

// Server is a running intermediate proxy.
type Server struct {
	cfg     *Config
	log     *slog.Logger
	reg     *metrics.Registry
	m       counters
	in      *ingress.Ingress[*relay] // towards routers: read loop, admission, receive, answers
	next    *uplink.Set              // towards the next hop: one path per uplink, with its health
	returns *uplink.Returns          // opens what the next hop sends back, counting drops
	uplinks []*nextUplink            // what the intermediate keeps per uplink besides (next.go)
	nextKey wire.Key

	// relays owns the sessions' lifetimes (idle expiry, eviction), keyed by the
	// router side's session ID; byOut finds the same relays by the session ID of
	// the next hop's side, for the reply path.
	relays *session.Table[uint64, *relay]
	byOut  *session.Table[uint64, *relay]
	ctrl   *ctrlSession
	probes probeCache // the next hop's answers about servers (probe.go)
	// nextEpoch is the next hop's restart epoch from its pongs (0: none heard
	// yet): sessions opened there derive their keys from it, and a change
	// means it restarted (see noteNextEpoch).
	nextEpoch atomic.Uint64
	// nextSilent: no uplink answers and every session towards the next hop
	// carries its hello again (see forceNextHellos). The janitor only.
	nextSilent bool

	closing atomic.Bool
	closed  chan struct{}  // closed by Close, so the janitor stops however Close was reached
	reading sync.WaitGroup // the router side's read loop: the only one sealing towards the next hop
	loops   sync.WaitGroup // the uplink read loops and the janitor
	http    *fleet.HTTP    // metrics and health (studio.go)
	ends    *ingress.Ends  // evictions and idle ends, counted and logged
	// drainTimeout is drain_timeout as the last reload left it (studio.go).
	drainTimeout atomic.Int64
}

// counters are the intermediate's own metrics; the router side's (received,
// drops by reason, pongs, send errors, sessions created) are package
// ingress's, under the prefix "intermediate", and the next hop side's drops
// are uplink.Returns', under the same names.
type counters struct {
	fromNext, relayedOut, relayedBack, controlOut, controlBack *metrics.Counter
	rateLimited, sealErrors, sendErrors, noPath, pongsIn       *metrics.Counter
	sessionsEvicted, sessionsIdle, movedCopies                 *metrics.Counter
	keepalivesSent, nextMoved, nextAllDown, nextRestarts       *metrics.Counter
	sessions                                                   *metrics.Gauge
	reloads                                                    *metrics.Counter // SIGHUP (studio.go)
}

func newCounters(r *metrics.Registry) counters {
	return counters{
		fromNext:        r.Counter("intermediate_next_received_total", "Datagrams received from the next hop."),
		relayedOut:      r.Counter("intermediate_relayed_total{dir=\"out\"}", "Packets relayed (out: towards the next hop, back: towards the router)."),
		relayedBack:     r.Counter("intermediate_relayed_total{dir=\"back\"}", "Packets relayed (out: towards the next hop, back: towards the router)."),
		controlOut:      r.Counter("intermediate_control_passed_total{dir=\"out\"}", "Control messages of relayed sessions passed on."),
		controlBack:     r.Counter("intermediate_control_passed_total{dir=\"back\"}", "Control messages of relayed sessions passed on."),
		rateLimited:     r.Counter(`intermediate_dropped_total{reason="rate_limited"}`, "Datagrams dropped, by reason."),
		sealErrors:      r.Counter(`intermediate_dropped_total{reason="seal_error"}`, "Datagrams dropped, by reason."),
		sendErrors:      r.Counter("intermediate_send_errors_total", "Errors sending datagrams."),
		noPath:          r.Counter("intermediate_reply_no_path_total", "Packets from the next hop with no recent router address to send to."),
		pongsIn:         r.Counter("intermediate_next_pongs_total", "Keepalive answers received from the next hop."),
		sessionsEvicted: r.Counter("intermediate_sessions_evicted_total", "Sessions evicted because the table was full."),
		sessionsIdle:    r.Counter("intermediate_sessions_expired_total", "Sessions ended after being idle."),
		sessions:        r.Gauge("intermediate_sessions", "Live relayed sessions."),
		movedCopies:     r.Counter("intermediate_moved_copies_total", "Extra copies sent to routers on fresh paths for paths lagging behind or never heard from."),
		keepalivesSent:  r.Counter("intermediate_keepalives_sent_total", "Keepalives sent to the next hop on relayed sessions, each on one uplink."),
		nextMoved:       r.Counter("intermediate_next_moved_copies_total", "Extra copies sent to the next hop on live uplinks for uplinks that look down."),
		nextAllDown:     r.Counter("intermediate_next_no_live_uplink_total", "Packets sent to the next hop while every uplink looked down (sent on all)."),
		nextRestarts:    r.Counter("intermediate_next_restarts_total", "Restarts of the next hop seen (a new epoch in its pongs); its sessions were re-keyed."),
		reloads:         r.Counter("intermediate_reloads_total", "Client and token tables reloaded (SIGHUP)."),
	}
}

// New builds an intermediate from a checked config and binds every socket, so it
// is ready to serve when New returns (and sockets opened inside a network
// namespace stay there).
func New(cfg *Config, log *slog.Logger) (*Server, error) {
	s := &Server{cfg: cfg, log: log, reg: metrics.NewRegistry(), closed: make(chan struct{})}
	s.m = newCounters(s.reg)
	// Evictions are logged at most 5 lines a second (ingress bounds its own).
	s.ends = ingress.NewEnds(s.m.sessionsEvicted, s.m.sessionsIdle, log, logging.NewLimiter(5, 20), cfg.MaxSessions)
	var err error
	if s.nextKey, err = wire.ParseKey(cfg.Next.Key); err != nil {
		return nil, fmt.Errorf("next.key: %v", err)
	}
	if s.relays, err = ingress.NewSessions(cfg.MaxSessions, cfg.SessionIdle.Duration, s.onRemove); err != nil {
		return nil, err
	}
	hash, err := ingress.IDHash()
	if err != nil {
		return nil, err
	}
	// byOut only mirrors relays (entries leave it when they leave relays), so it
	// is sized never to evict on its own.
	s.byOut = session.NewTable(session.Config[uint64, *relay]{MaxEntries: 2 * cfg.MaxSessions, Hash: hash})

	ok := false
	defer func() {
		if !ok {
			s.closeSockets()
		}
	}()
	s.drainTimeout.Store(int64(cfg.DrainTimeout.Duration))
	// The [[client]] tables and, with a token key, connect tokens: admitted
	// as the proxy admits them (package fleet builds the roster for both).
	roster, err := cfg.Config.Roster(cfg.Clients, nil)
	if err != nil {
		return nil, err
	}
	if s.in, err = ingress.New(ingress.Config{
		Listen: cfg.Listen, Roster: roster, Tokens: cfg.Config.Key() != nil,
		MaxSessions: cfg.MaxSessions, HelloMaxAge: cfg.HelloMaxAge.Duration,
		Prefix: "intermediate", Registry: s.reg, Log: log,
	}, s.relays, (*program)(s)); err != nil {
		return nil, err
	}
	if err = s.openUplinks(); err != nil {
		return nil, err
	}
	if s.ctrl, err = s.newCtrl(); err != nil {
		return nil, err
	}
	if err = s.listenHTTP(); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

// Addr is the address routers send to.
func (s *Server) Addr() netip.AddrPort { return s.in.Addr() }

// Metrics returns the intermediate's metric registry.
func (s *Server) Metrics() *metrics.Registry { return s.reg }

// Sessions returns the number of relayed sessions.
func (s *Server) Sessions() int { return s.relays.Len() }

// UplinkRTT returns the smoothed keepalive RTT to the next hop over uplink i
// (0 before the first answer).
func (s *Server) UplinkRTT(i int) time.Duration {
	return s.next.Paths[i].Health.Stats(mono.Now()).SRTT
}

// UplinkStats returns the health of each uplink towards the next hop, in
// config order.
func (s *Server) UplinkStats() []uplink.Stats {
	now := mono.Now()
	out := make([]uplink.Stats, len(s.next.Paths))
	for i, p := range s.next.Paths {
		out[i] = p.Health.Stats(now)
	}
	return out
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	s.http.Serve()
	s.log.Info("intermediate serving", "listen", s.Addr().String(), "clients", s.in.Clients(),
		"tokens", s.cfg.Config.Key() != nil, "next_client_id", s.cfg.Next.ClientID, "max_sessions", s.cfg.MaxSessions)
	for _, p := range s.next.Paths {
		s.log.Info("uplink ready", "uplink", p.Name, "local", p.Conn.LocalAddr().String(), "next", p.To.String())
	}
	s.loops.Add(1 + len(s.next.Paths))
	go s.janitor()
	s.reading.Add(1)
	go func() {
		defer s.reading.Done()
		s.in.Run()
	}()
	for i, p := range s.next.Paths {
		go func() {
			defer s.loops.Done()
			r := ingress.NewReader()
			uplink.ReadLoop(p.Conn, func(dg []byte, _ netip.AddrPort, now int64) { s.fromNext(r, i, dg, now) })
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
	s.in.Close()
	s.http.Close()
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
		dg, err := sealPassed(rl.outSend.AEAD(), rl.outSend, buf, wire.TypeClose, rl.outID, rl.outMax.Load()+1, nil, now)
		if err == nil {
			s.sendCopies(dg, now)
		}
		return true
	})
}

func (s *Server) closeSockets() {
	if s.in != nil {
		s.in.Close()
	}
	if s.next != nil {
		for _, p := range s.next.Paths {
			p.Conn.Close()
		}
	}
}

// janitor expires idle sessions and stale decode groups, sends keepalives to
// the next hop on every uplink and notes which uplinks answer.
func (s *Server) janitor() {
	defer s.loops.Done()
	// Four ticks per ping interval, so a ping is never a whole interval late.
	t := time.NewTicker(s.cfg.Next.PingInterval.Duration / 4)
	defer t.Stop()
	buf := make([]byte, wire.MaxDatagram)
	lastSweep := mono.Now()
	for {
		now := mono.Now()
		s.ping(buf, now)
		s.noteUplinks(now)
		s.forceNextHellos(now)
		select {
		case <-s.closed:
			return
		case <-t.C:
		}
		now = mono.Now()
		if now-lastSweep < int64(time.Second) {
			continue
		}
		lastSweep = now
		s.relays.Sweep(now)
		s.relays.Range(func(_ uint64, rl *relay) bool {
			rl.Recv.Expire(now)
			if rl.outRecv != nil {
				rl.outRecv.Expire(now)
			}
			return true
		})
		s.m.sessions.Set(int64(s.relays.Len()))
		s.in.TokenTick(time.Now())
	}
}

func (s *Server) onRemove(id uint64, rl *relay, why session.Reason) {
	s.ends.Ended(id, &rl.Peer, why)
	rl.closed.Store(true)
	if rl.outSend != nil {
		s.byOut.Delete(rl.outID)
	}
}
