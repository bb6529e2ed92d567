package proxy

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/allow"
	"github.com/raicnet/raic/pkg/clients"
	"github.com/raicnet/raic/pkg/ingress"
	"github.com/raicnet/raic/pkg/logging"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/tcpmux"
	"github.com/raicnet/raic/pkg/tcpsplit"
	"github.com/raicnet/raic/pkg/wire"
)

// tcp_listen at run time: on one address:port, QUIC on UDP carries routers'
// TCP flows (package tcpsplit) and TLS on TCP carries the datagrams of
// routers whose network blocks UDP. A fallback connection is one more path of
// the sessions it carries: its datagrams enter handle with a synthetic source
// address (fallbackPrefix), and sendTo writes what goes to that address back
// over the connection.
//
// Both kinds of connection are bounded (connTable): a peer must finish the
// handshake and prove its key within tcpmux.AuthTimeout; at most max_sessions
// of a kind are open (fallback: or authenticating) at once, further ones
// closed and counted; one address has at most tcp_pending_per_address fallback
// connections authenticating; and one client (a [[client]] ID, or a token's client
// ID) holds at most PerClientConns of a kind, its oldest closed and counted
// when it opens one more. A router keeps one QUIC connection per uplink and
// one warm fallback connection, and redials when one ends, so a few are all
// an honest one ever has.
type tcpSide struct {
	s      *Server
	ql     *tcpmux.Listener
	fl     *tcpmux.FrameListener
	split  *tcpsplit.Server
	nextID atomic.Uint64

	quic *connTable[*tcpmux.Conn]
	fb   *connTable[*fbConn]
	mu   sync.RWMutex
	// conns finds a fallback connection by its synthetic address.
	conns map[netip.AddrPort]*fbConn

	refused, fbConns  *metrics.Counter
	fbIn, fbOut       *metrics.Counter
	fbEvicted, fbFull *metrics.Counter
	fbSourceBusy      *metrics.Counter
	busyLog           *logging.Limiter // bounds the lines of fbSourceBusy
	fbSendFailed      *metrics.Counter
	fbActive          *metrics.Gauge
	qEvicted, qFull   *metrics.Counter
	qActive           *metrics.Gauge
}

// fbConn is one authenticated fallback connection.
type fbConn struct {
	fc     *tcpmux.FrameConn
	addr   netip.AddrPort // its synthetic address
	client connClient
}

// PerClientConns is how many connections of each kind (QUIC, TLS/TCP
// fallback) one client may hold open; its oldest is closed when it opens one
// more.
const PerClientConns = 8

// fallbackPrefix holds the synthetic addresses of fallback connections. They
// never reach a socket.
var fallbackPrefix = [8]byte{0xfd, 0x72, 0x61, 0x69, 0x63, 0x74, 0x63, 0x70} // fd72:6169:6374:6370::/64

func isFallback(a netip.AddrPort) bool {
	if !a.Addr().Is6() {
		return false
	}
	b := a.Addr().As16()
	return [8]byte(b[:8]) == fallbackPrefix
}

func (s *Server) startTCP(ctx context.Context) error {
	if s.cfg.TCPListen == "" {
		return nil
	}
	t := &tcpSide{s: s, conns: map[netip.AddrPort]*fbConn{},
		// As many connections of a kind as sessions: a fallback
		// connection carries at least one, a QUIC one a flow or more.
		quic:      newConnTable[*tcpmux.Conn](s.cfg.MaxSessions, PerClientConns, s.cfg.TCPPendingPerAddress),
		fb:        newConnTable[*fbConn](s.cfg.MaxSessions, PerClientConns, s.cfg.TCPPendingPerAddress),
		refused:   s.reg.Counter("raic_proxy_tcp_auth_refused_total", "aggregated or fallback connections that failed authentication"),
		fbConns:   s.reg.Counter("raic_proxy_udp_fallback_connections_total", "TLS/TCP fallback connections accepted"),
		fbIn:      s.reg.Counter("raic_proxy_udp_fallback_in_total", "datagrams received over TLS/TCP fallback connections"),
		fbOut:     s.reg.Counter("raic_proxy_udp_fallback_out_total", "datagrams sent over TLS/TCP fallback connections"),
		fbEvicted: s.reg.Counter("raic_proxy_udp_fallback_evicted_total", "TLS/TCP fallback connections closed because their client opened more than its limit (the oldest goes)"),
		fbFull:    s.reg.Counter("raic_proxy_udp_fallback_refused_total", "TLS/TCP fallback connections closed at accept because max_sessions were open or authenticating"),
		fbSourceBusy: s.reg.Counter("raic_proxy_udp_fallback_source_busy_total",
			"TLS/TCP fallback connections closed at accept because their address had tcp_pending_per_address authenticating"),
		busyLog:  logging.NewLimiter(1, 5),
		fbActive: s.reg.Gauge("raic_proxy_udp_fallback_active", "TLS/TCP fallback connections open"),
		fbSendFailed: s.reg.Counter("raic_proxy_udp_fallback_send_failed_total",
			"datagrams not sent over a TLS/TCP fallback connection: its router stopped reading for 1s (or it broke), and it was closed"),
		qEvicted: s.reg.Counter("raic_proxy_tcp_conns_evicted_total", "aggregated QUIC connections closed because their client opened more than its limit (the oldest goes)"),
		qFull:    s.reg.Counter("raic_proxy_tcp_conns_refused_total", "aggregated QUIC connections closed after authenticating because max_sessions were open"),
		qActive:  s.reg.Gauge("raic_proxy_tcp_conns_active", "aggregated QUIC connections open"),
	}
	keys := func(id string) (wire.Key, bool) {
		c, ok := s.in.Client(id) // pre-shared-key clients only, as the roster has them now
		if !ok {
			return wire.Key{}, false
		}
		return c.Key, true
	}
	pc, err := net.ListenPacket("udp", s.cfg.TCPListen)
	if err != nil {
		return err
	}
	if t.ql, err = tcpmux.Listen(pc, keys); err != nil {
		pc.Close()
		return err
	}
	ln, err := net.Listen("tcp", s.cfg.TCPListen)
	if err != nil {
		t.ql.Close()
		return err
	}
	t.fl, _ = tcpmux.ListenFrames(ln, keys)
	// A router admitted by a connect token presents it in place of a client
	// ID, on either transport: opened against the token key as the roster
	// has it now, refusals counted by reason in proxy_dropped_total as a
	// token hello's. Its sessions are then admitted hello by hello, as over
	// UDP, and its TCP flows by the token's servers.
	tokens := func(tok []byte) (string, wire.Key, error) {
		id, key, _, why := s.in.OpenToken(tok, time.Now())
		if why != clients.Admitted {
			return "", key, fmt.Errorf("%w: connect token refused: %s", tcpmux.ErrAuth, why)
		}
		return id, key, nil
	}
	t.fl.Tokens, t.ql.Tokens = tokens, tokens
	t.split = &tcpsplit.Server{
		Allowed: func(c *tcpmux.Conn) (allow.List, bool) {
			if c.Token != nil {
				// Opened again for each flow: a token that expired since
				// the connection opened, or whose key was rotated away
				// (SIGHUP), opens no new flow (counted by reason).
				_, _, servers, why := s.in.OpenToken(c.Token, time.Now())
				return servers, why == clients.Admitted
			}
			cl, ok := s.in.Client(c.ClientID) // as the roster has it now
			if !ok {
				return nil, false
			}
			return cl.Allow, true
		},
		MaxFlowsPerClient: s.cfg.TCPFlowsPerClient,
		Stats:             tcpsplit.NewStats(s.reg, "raic_proxy_tcp"),
		Log:               s.log,
	}
	s.tcp = t
	s.log.Info("tcp serving", "listen", s.cfg.TCPListen,
		"tcp_flows_per_client", s.cfg.TCPFlowsPerClient, "tcp_pending_per_address", s.cfg.TCPPendingPerAddress)
	go func() {
		for {
			c, err := t.ql.Accept(ctx, func(error) { t.refused.Inc() })
			if err != nil {
				return
			}
			go t.serveQUIC(ctx, c)
		}
	}()
	go func() {
		for {
			nc, err := t.fl.Accept()
			if err != nil {
				return
			}
			from := remoteAddr(nc)
			switch t.fb.reserve(from) {
			case reserveFull:
				nc.Close()
				t.fbFull.Inc()
				continue
			case reserveSourceBusy:
				nc.Close()
				t.fbSourceBusy.Inc()
				if ok, held := t.busyLog.Allow(); ok {
					t.s.log.Warn("udp fallback connection refused: its address has too many authenticating",
						"from", from, "tcp_pending_per_address", s.cfg.TCPPendingPerAddress, "lines_suppressed", held)
				}
				continue
			}
			go t.serveFallback(nc, from)
		}
	}()
	go func() {
		<-ctx.Done()
		t.ql.Close()
		t.fl.Close()
		t.mu.Lock()
		for _, c := range t.conns {
			c.fc.Close()
		}
		t.mu.Unlock()
	}()
	return nil
}

// serveQUIC carries c's flows until it ends, within the bounds of t.quic.
func (t *tcpSide) serveQUIC(ctx context.Context, c *tcpmux.Conn) {
	cl := connClient{id: c.ClientID, token: c.Token != nil}
	old, evicted, ok := t.quic.add(cl, c, false, netip.Addr{})
	if !ok {
		t.qFull.Inc()
		c.CloseWithError(2, "full")
		return
	}
	if evicted {
		t.qEvicted.Inc()
		t.s.log.Info("tcp connection evicted: its client opened more", "client", cl.id, "max", PerClientConns)
		old.CloseWithError(3, "evicted") // its ServeConn ends and cleans up
	}
	t.qActive.Add(1)
	t.s.log.Info("tcp connection open", "client", c.ClientID, "from", c.RemoteAddr().String())
	t.split.ServeConn(ctx, c)
	t.quic.remove(cl, c)
	t.qActive.Add(-1)
	c.CloseWithError(0, "")
}

// remoteAddr is nc's peer address (unmapped), the zero Addr if it has none.
func remoteAddr(nc net.Conn) netip.Addr {
	if a, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

func (t *tcpSide) serveFallback(nc net.Conn, from netip.Addr) {
	fc, err := t.fl.Authenticate(nc) // within tcpmux.AuthTimeout
	if err != nil {
		t.fb.release(from)
		t.refused.Inc()
		return
	}
	var b [16]byte
	copy(b[:8], fallbackPrefix[:])
	binary.BigEndian.PutUint64(b[8:], t.nextID.Add(1))
	c := &fbConn{fc: fc, addr: netip.AddrPortFrom(netip.AddrFrom16(b), 443),
		client: connClient{id: fc.ClientID, token: fc.Token != nil}}
	fc.SendTimeout = fallbackSendTimeout
	old, evicted, _ := t.fb.add(c.client, c, true, from)
	t.mu.Lock()
	t.conns[c.addr] = c
	if evicted {
		delete(t.conns, old.addr)
	}
	t.mu.Unlock()
	if evicted {
		t.fbEvicted.Inc()
		t.s.log.Info("udp fallback connection evicted: its client opened more", "client", old.client.id, "max", PerClientConns)
		go old.fc.Close() // its reader ends and cleans up; a close notify may wait on a full socket
	}
	t.fbConns.Inc()
	t.fbActive.Add(1)
	t.s.log.Info("udp fallback connection open", "client", fc.ClientID, "from", fc.RemoteAddr().String())
	defer func() {
		t.fb.remove(c.client, c)
		t.mu.Lock()
		if t.conns[c.addr] == c {
			delete(t.conns, c.addr)
		}
		t.mu.Unlock()
		t.fbActive.Add(-1)
		fc.Close()
		t.s.log.Info("udp fallback connection closed", "client", fc.ClientID)
	}()
	r := ingress.NewReader()
	for {
		dg, err := fc.Receive()
		if err != nil || t.s.closing.Load() {
			return
		}
		t.fbIn.Inc()
		t.s.in.Handle(r, dg, c.addr, mono.Now())
	}
}

// send writes dg to the fallback connection behind to; false if there is none.
func (t *tcpSide) send(dg []byte, to netip.AddrPort) bool {
	if t == nil || !isFallback(to) {
		return false
	}
	t.mu.RLock()
	c := t.conns[to]
	t.mu.RUnlock()
	if c == nil {
		return true
	}
	if err := c.fc.Send(dg); err != nil {
		// A peer that stopped reading: the reply paths of its sessions
		// (and a shared upstream's) wait for it no longer.
		t.fbSendFailed.Inc()
		go c.fc.Close() // its reader ends and cleans up
		return true
	}
	t.fbOut.Inc()
	return true
}

// fallbackSendTimeout bounds a write to a fallback connection: past it the
// router is not reading, and its connection is closed.
const fallbackSendTimeout = time.Second
