package proxy

import (
	"context"
	"crypto/cipher"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/replypath"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

var goodKey = wire.Key{1, 1, 1}

// udpPeer is a loopback socket that records what it receives.
type udpPeer struct {
	conn *net.UDPConn
	got  chan []byte
	from chan netip.AddrPort
}

func newPeer(t testing.TB) *udpPeer {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p := &udpPeer{conn: c, got: make(chan []byte, 1024), from: make(chan netip.AddrPort, 1024)}
	go func() {
		for {
			b := make([]byte, 2048)
			n, from, err := c.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			p.got <- b[:n]
			p.from <- from
		}
	}()
	t.Cleanup(func() { c.Close() })
	return p
}

func (p *udpPeer) addr() netip.AddrPort { return p.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// expectNothing asserts that nothing arrives within d.
func (p *udpPeer) expectNothing(t testing.TB, d time.Duration, what string) {
	t.Helper()
	select {
	case b := <-p.got:
		t.Fatalf("%s: received %d bytes, want nothing", what, len(b))
	case <-time.After(d):
	}
}

func (p *udpPeer) expect(t testing.TB, what string) []byte {
	t.Helper()
	b, _ := p.expectFrom(t, what)
	return b
}

func (p *udpPeer) expectFrom(t testing.TB, what string) ([]byte, netip.AddrPort) {
	t.Helper()
	select {
	case b := <-p.got:
		return b, <-p.from
	case <-time.After(2 * time.Second):
		t.Fatalf("%s: nothing received", what)
		return nil, netip.AddrPort{}
	}
}

// fakeRouter seals datagrams as a router would.
type fakeRouter struct {
	send *tunnel.Sender
	recv *tunnel.Receiver
	sock *udpPeer
}

func newFakeRouter(t testing.TB, key wire.Key, target netip.AddrPort) *fakeRouter {
	return newFakeRouterID(t, key, target, uint64(mono.Now())|1)
}

// newFakeRouterID is newFakeRouter with the session ID id.
func newFakeRouterID(t testing.TB, key wire.Key, target netip.AddrPort, id uint64) *fakeRouter {
	salt, _ := wire.NewSalt()
	send, recv, err := wire.DeriveKeys(&key, &salt, id, wire.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	hello := &wire.Hello{Salt: salt, Target: target}
	hello.SetClientID("gamer")
	s, err := tunnel.NewSender(send, id, raic.Params{Scheme: raic.SchemeCopy, K: 1}, hello)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeRouter{send: s, recv: tunnel.NewReceiver(recv, raic.DecoderConfig{}), sock: newPeer(t)}
}

// seal returns a copy of the datagram carrying pkt.
func (f *fakeRouter) seal(t testing.TB, pkt []byte) []byte {
	_, dgs, err := f.send.Seal(pkt, mono.Now())
	if err != nil || len(dgs) != 1 {
		t.Fatalf("seal: %v (%d datagrams)", err, len(dgs))
	}
	return append([]byte(nil), dgs[0]...)
}

func (f *fakeRouter) sendTo(t testing.TB, dg []byte, to netip.AddrPort) {
	if _, err := f.sock.conn.WriteToUDPAddrPort(dg, to); err != nil {
		t.Fatal(err)
	}
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func startTestProxy(t testing.TB, allow string, extra string) *Server {
	t.Helper()
	cfg, err := ParseConfig("proxy.toml", fmt.Sprintf(`
listen = "127.0.0.1:0"
[[client]]
id = "gamer"
key = "%s"
allow = ["%s"]
%s
`, goodKey, allow, extra))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

func counter(s *Server, name string) float64 { return s.Metrics().Snapshot()[name] }

// TestHostileInputGetsNothing covers what must never reach a server or get an
// answer: a replayed datagram, a flipped bit, a client with a wrong key, a target
// outside the allowlist, and an unknown session.
func TestHostileInputGetsNothing(t *testing.T) {
	server := newPeer(t)
	forbidden := newPeer(t)
	p := startTestProxy(t, server.addr().String(), "")

	// A good first datagram opens the session, reaches the server, and is acked.
	r := newFakeRouter(t, goodKey, server.addr())
	first := r.seal(t, []byte("hello server"))
	r.sendTo(t, first, p.Addr())
	if got := server.expect(t, "first packet"); string(got) != "hello server" {
		t.Fatalf("server got %q", got)
	}
	ack := r.sock.expect(t, "ack")
	var h wire.Header
	if wire.Parse(ack, &h, nil); h.Type == wire.TypePathChallenge {
		ack = r.sock.expect(t, "ack") // the proxy checks the new address first
	}
	off, err := wire.Parse(ack, &h, nil)
	if err != nil || h.Type != wire.TypeAck {
		t.Fatalf("answer is not an ack: %v %v", h.Type, err)
	}
	if _, err := r.recv.Receive(ack, &h, off, mono.Now(), nil); err != nil {
		t.Fatalf("ack does not authenticate: %v", err)
	}

	t.Run("replay", func(t *testing.T) {
		before := counter(p, `proxy_dropped_total{reason="duplicate"}`)
		r.sendTo(t, first, p.Addr())
		server.expectNothing(t, 200*time.Millisecond, "server after replay")
		r.sock.expectNothing(t, 50*time.Millisecond, "router after replay")
		if counter(p, `proxy_dropped_total{reason="duplicate"}`) != before+1 {
			t.Fatal("replay not counted as duplicate")
		}
	})
	t.Run("flipped bit", func(t *testing.T) {
		for _, pos := range []int{3, 15, 22, wire.HeaderLen + 2} {
			dg := r.seal(t, []byte("tampered"))
			dg[len(dg)-1-pos%8] ^= 0x10 // in the tag
			dg[pos] ^= 0x01
			r.sendTo(t, dg, p.Addr())
		}
		server.expectNothing(t, 200*time.Millisecond, "server after flipped bits")
		r.sock.expectNothing(t, 50*time.Millisecond, "router after flipped bits")
	})
	t.Run("wrong key", func(t *testing.T) {
		created := counter(p, "proxy_sessions_created_total")
		bad := newFakeRouter(t, wire.Key{9, 9, 9}, server.addr())
		for i := 0; i < 3; i++ {
			bad.sendTo(t, bad.seal(t, []byte("let me in")), p.Addr())
		}
		server.expectNothing(t, 200*time.Millisecond, "server after wrong key")
		bad.sock.expectNothing(t, 50*time.Millisecond, "wrong-key client")
		if counter(p, "proxy_sessions_created_total") != created {
			t.Fatal("a session was created for a wrong key")
		}
		if counter(p, `proxy_dropped_total{reason="auth"}`) < 3 {
			t.Fatal("wrong-key datagrams not counted as auth failures")
		}
	})
	t.Run("target outside allowlist", func(t *testing.T) {
		evil := newFakeRouter(t, goodKey, forbidden.addr())
		evil.sendTo(t, evil.seal(t, []byte("scan")), p.Addr())
		forbidden.expectNothing(t, 200*time.Millisecond, "forbidden server")
		evil.sock.expectNothing(t, 50*time.Millisecond, "client asking for a forbidden target")
		if counter(p, `proxy_dropped_total{reason="forbidden_target"}`) != 1 {
			t.Fatal("forbidden target not counted")
		}
	})
	t.Run("unknown session", func(t *testing.T) {
		stranger := newFakeRouter(t, goodKey, server.addr())
		stranger.send.Heard(mono.Now()) // no hello on its datagrams
		stranger.sendTo(t, stranger.seal(t, []byte("who am i")), p.Addr())
		server.expectNothing(t, 200*time.Millisecond, "server after unknown session")
		stranger.sock.expectNothing(t, 50*time.Millisecond, "unknown session")
	})
	t.Run("garbage", func(t *testing.T) {
		before := counter(p, `proxy_dropped_total{reason="malformed"}`)
		r.sendTo(t, []byte("GET / HTTP/1.0\r\n\r\n"), p.Addr())
		r.sendTo(t, make([]byte, 60), p.Addr())
		r.sock.expectNothing(t, 150*time.Millisecond, "garbage")
		if counter(p, `proxy_dropped_total{reason="malformed"}`) != before+2 {
			t.Fatal("garbage not counted as malformed")
		}
	})
}

// TestRepliesFollowEveryPathAndRebinding checks that server replies go to every
// address the session was recently seen from, and that a new source address (a
// NAT rebinding) is learned from its first authenticated datagram.
func TestRepliesFollowEveryPathAndRebinding(t *testing.T) {
	server := newPeer(t)
	p := startTestProxy(t, server.addr().String(), "")
	r := newFakeRouter(t, goodKey, server.addr())
	r.sendTo(t, r.seal(t, []byte("a")), p.Addr())
	_, upstream := server.expectFrom(t, "first packet")
	r.sock.expect(t, "ack")

	// The same session now also arrives from a second socket (another uplink, or
	// the first one after its NAT rebound).
	second := newPeer(t)
	dg := r.seal(t, []byte("b"))
	if _, err := second.conn.WriteToUDPAddrPort(dg, p.Addr()); err != nil {
		t.Fatal(err)
	}
	if _, from := server.expectFrom(t, "packet from the new address"); from != upstream {
		t.Fatalf("the server sees the session from %v and %v: one upstream socket per session expected", upstream, from)
	}

	server.conn.WriteToUDPAddrPort([]byte("reply"), upstream)
	for name, peer := range map[string]*udpPeer{"first path": r.sock, "second path": second} {
		// Skip acks (the hello is still on the router's datagrams); wait for data.
		var dg []byte
		var h wire.Header
		var off int
		for {
			dg = peer.expect(t, "reply on "+name)
			var err error
			if off, err = wire.Parse(dg, &h, nil); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if h.Type == wire.TypeData {
				break
			}
		}
		pt, err := wire.Open(mustRecvKey(t, r), dg, off)
		if err != nil || string(pt) != "reply" {
			t.Fatalf("%s: reply %q, %v", name, pt, err)
		}
	}
}

func mustRecvKey(t testing.TB, r *fakeRouter) cipher.AEAD {
	hello, _ := r.send.Hello()
	_, recv, err := wire.DeriveKeys(&goodKey, &hello.Salt, r.send.Session(), wire.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	return recv
}

// TestClientRateLimit checks that a client's packets beyond its rate and burst
// are dropped and counted.
func TestClientRateLimit(t *testing.T) {
	server := newPeer(t)
	p := startTestProxy(t, server.addr().String(), "rate_pps = 1\nburst = 5")
	r := newFakeRouter(t, goodKey, server.addr())
	for i := 0; i < 20; i++ {
		r.sendTo(t, r.seal(t, []byte{byte(i)}), p.Addr())
	}
	for i := 0; i < 5; i++ {
		server.expect(t, "packet within the burst")
	}
	server.expectNothing(t, 200*time.Millisecond, "server beyond the burst")
	if got := counter(p, `proxy_dropped_total{reason="rate_limited"}`); got != 15 {
		t.Fatalf("rate_limited = %v, want 15", got)
	}
}

// TestRepliesCopiesPerPath: the router's keepalives say it sends two copies of
// each datagram on each of its two paths, so each single-datagram reply goes
// twice on each path. A keepalive of one byte (an older router) means one copy,
// and coded replies spread their shards once each whatever the keepalives say.
func TestRepliesCopiesPerPath(t *testing.T) {
	server := newPeer(t)
	p := startTestProxy(t, server.addr().String(), "")
	r := newFakeRouter(t, goodKey, server.addr())
	r.sendTo(t, r.seal(t, []byte("a")), p.Addr())
	_, upstream := server.expectFrom(t, "first packet")
	r.sock.expect(t, "ack")
	r.send.Heard(mono.Now()) // acked: no more hellos

	second := newPeer(t)
	ps, ok := p.sessions.Peek(r.send.Session())
	if !ok {
		t.Fatal("session not created")
	}
	keepalive := func(body []byte, copies int) {
		t.Helper()
		before := counter(p, "proxy_received_total")
		buf := make([]byte, wire.MaxDatagram)
		for _, from := range []*net.UDPConn{r.sock.conn, second.conn} {
			dg, err := r.send.SealControl(buf, wire.TypeKeepalive, body, mono.Now())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := from.WriteToUDPAddrPort(dg, p.Addr()); err != nil {
				t.Fatal(err)
			}
		}
		// Keepalives are never answered: wait until the proxy has taken both
		// (the second path learned, the copies noted).
		waitUntil(t, func() bool {
			var l replypath.Live
			ps.Paths.Live(mono.Now(), replypath.DefaultWindow, &l)
			return counter(p, "proxy_received_total") >= before+2 && l.Len() == 2 && ps.Paths.CopiesPerPath() == copies
		})
		// This router answers no path challenges: take its two addresses as
		// validated, so replies are not held to 3x what came from them.
		ps.Paths.Learn(r.sock.addr(), mono.Now())
		ps.Paths.Learn(second.addr(), mono.Now())
	}
	// dataOn counts the reply datagrams that reach peer within a short while.
	dataOn := func(peer *udpPeer) int {
		n := 0
		for {
			select {
			case b := <-peer.got:
				<-peer.from
				var h wire.Header
				if _, err := wire.Parse(b, &h, nil); err == nil && h.Type == wire.TypeData {
					n++
				}
			case <-time.After(200 * time.Millisecond):
				return n
			}
		}
	}
	reply := func(what string, want int) {
		t.Helper()
		server.conn.WriteToUDPAddrPort([]byte("reply"), upstream)
		if a, b := dataOn(r.sock), dataOn(second); a != want || b != want {
			t.Errorf("%s: the paths received %d and %d datagrams, want %d each", what, a, b, want)
		}
	}

	keepalive([]byte{2, 2}, 2)
	reply("two copies per path", 2)
	keepalive([]byte{2}, 1)
	reply("a one-byte keepalive", 1)
	keepalive([]byte{2, 9}, 4)
	reply("copies out of range", 4)

	// A coded scheme: the router's data says RAIC-5 (2+1), and the reply's
	// three shards go once each over the two paths.
	keepalive([]byte{2, 2}, 2)
	if err := r.send.SetParams(raic.Params{Scheme: raic.SchemeXOR, K: 2, M: 1}); err != nil {
		t.Fatal(err)
	}
	_, dgs, err := r.send.Seal([]byte("coded"), mono.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, dg := range dgs {
		r.sendTo(t, dg, p.Addr())
	}
	server.expect(t, "coded packet")
	server.conn.WriteToUDPAddrPort([]byte("reply"), upstream)
	if a, b := dataOn(r.sock), dataOn(second); a+b != 3 {
		t.Errorf("coded reply: the paths received %d and %d shards, want 3 in all", a, b)
	}
}
