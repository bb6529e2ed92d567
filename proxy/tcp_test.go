package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/testkit"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/tcpmux"
	"github.com/raicnet/raic/pkg/tcpsplit"
	"github.com/raicnet/raic/pkg/token"
	"github.com/raicnet/raic/pkg/wire"
)

func TestTCPListenConfig(t *testing.T) {
	base := "[[client]]\nid = \"gamer\"\nkey = \"0102030405060708090a0b0c0d0e0f100102030405060708090a0b0c0d0e0f10\"\nallow = [\"198.18.41.0/24\"]\n"
	c, err := ParseConfig("proxy.toml", "tcp_listen = \"198.18.40.2:443\"\n"+base)
	if err != nil || c.TCPListen != "198.18.40.2:443" {
		t.Fatalf("config %+v, err %v", c, err)
	}
	if _, err := ParseConfig("proxy.toml", "tcp_listen = \"443\"\n"+base); err == nil || !strings.Contains(err.Error(), "proxy.toml:1: tcp_listen") {
		t.Fatalf("error %v, want proxy.toml:1: tcp_listen", err)
	}
}

func TestFallbackAddressesAreSynthetic(t *testing.T) {
	if isFallback(netip.MustParseAddrPort("198.18.10.2:4500")) || isFallback(netip.MustParseAddrPort("[2001:db8::1]:443")) {
		t.Error("a real address taken for a fallback connection")
	}
	var b [16]byte
	copy(b[:], fallbackPrefix[:])
	b[15] = 7
	if !isFallback(netip.AddrPortFrom(netip.AddrFrom16(b), 443)) {
		t.Error("a fallback address not recognised")
	}
	var s *tcpSide
	if s.send(nil, netip.MustParseAddrPort("198.18.10.2:4500")) {
		t.Error("no tcp side, yet a datagram was taken")
	}
}

// freeTCPPort is a loopback port free at the time of asking, for TCP and
// for UDP both: tcp_listen takes the port on both (QUIC and TLS), and a port
// free for TCP alone may be some other socket's UDP port.
func freeTCPPort(t testing.TB) int {
	for i := 0; i < 50; i++ {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp4", fmt.Sprintf("127.0.0.1:%d", port))
		ln.Close()
		if err == nil {
			pc.Close()
			return port
		}
	}
	t.Fatal("no loopback port free for both TCP and UDP")
	return 0
}

// A router admitted by a connect token reaches the proxy over the TLS/TCP
// fallback too: the connection authenticates by the token and its client
// key, and the datagrams it carries are admitted by their hellos with every
// check of a token hello over UDP. Expired and forged tokens get no
// connection; a wrong server, and a session over the token's limit (one
// already open over UDP counts too), reach nothing and get no reply; each
// refusal is counted by reason.
func TestFallbackByToken(t *testing.T) {
	server, other := newPeer(t), newPeer(t)
	tcpAddr := fmt.Sprintf("127.0.0.1:%d", freeTCPPort(t))
	p := startConfigProxy(t, fmt.Sprintf("listen = \"127.0.0.1:0\"\ntcp_listen = \"%s\"\ntoken_key = \"%s\"\n", tcpAddr, tokenKey))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var d net.Dialer
	var fc *tcpmux.FrameConn
	tok, ck := mintFor(t, tokenKey, server.addr().String(), -time.Second, time.Minute, 2)
	testkit.WaitFor(t, 5*time.Second, "tcp_listen", func() bool {
		var err error
		fc, err = tcpmux.DialFramesToken(ctx, &d, tcpAddr, tok, ck)
		return err == nil
	})
	defer fc.Close()

	// One session over UDP, one over the fallback: the token's two.
	udp := newTokenRouter(t, tok, ck, server.addr())
	udp.sendTo(t, udp.seal(t, []byte("over udp")), p.Addr())
	if got := server.expect(t, "the UDP session"); string(got) != "over udp" {
		t.Fatalf("server got %q", got)
	}
	r := newTokenRouter(t, tok, ck, server.addr())
	if err := fc.Send(r.seal(t, []byte("over tls"))); err != nil {
		t.Fatal(err)
	}
	if got := server.expect(t, "the fallback session"); string(got) != "over tls" {
		t.Fatalf("server got %q", got)
	}
	if _, err := fc.Receive(); err != nil { // its ack, over the connection
		t.Fatalf("no answer over the fallback: %v", err)
	}
	replies := make(chan []byte, 16)
	go func() {
		for {
			b, err := fc.Receive()
			if err != nil {
				return
			}
			replies <- append([]byte(nil), b...)
		}
	}()
	for _, tc := range []struct {
		name, reason string
		r            *fakeRouter
	}{
		{"wrong server", "forbidden_target", newTokenRouter(t, tok, ck, other.addr())},
		{"a third session", "token_replayed", newTokenRouter(t, tok, ck, server.addr())},
	} {
		dg := tc.r.seal(t, []byte(tc.name))
		var h wire.Header
		var hl wire.Hello
		if _, err := wire.Parse(dg, &h, &hl); err != nil {
			t.Fatal(err)
		}
		if err := fc.Send(dg); err != nil {
			t.Fatal(err)
		}
		name := `proxy_dropped_total{reason="` + tc.reason + `"}`
		testkit.WaitFor(t, 2*time.Second, tc.name+" counted", func() bool { return counter(p, name) >= 1 })
		for deadline := time.After(50 * time.Millisecond); ; {
			var rh wire.Header
			var rhl wire.Hello
			select {
			case b := <-replies:
				if _, err := wire.Parse(b, &rh, &rhl); err == nil && rh.Session == h.Session {
					t.Fatalf("%s: %d bytes came back", tc.name, len(b))
				}
				continue // the admitted session's
			case <-deadline:
			}
			break
		}
	}
	server.expectNothing(t, 50*time.Millisecond, "refused sessions")
	other.expectNothing(t, 10*time.Millisecond, "the server outside the token")

	expired, eck := mintFor(t, tokenKey, server.addr().String(), -time.Hour, -time.Minute, 1)
	forged, fck := mintFor(t, wire.Key{1}, server.addr().String(), -time.Second, time.Minute, 1)
	for _, tc := range []struct {
		name, reason string
		tok          []byte
		key          wire.Key
	}{
		{"expired", "token_expired", expired, eck},
		{"another key", "token_forged", forged, fck},
	} {
		if c, err := tcpmux.DialFramesToken(ctx, &d, tcpAddr, tc.tok, tc.key); err == nil {
			c.Close()
			t.Fatalf("%s: a fallback connection was admitted", tc.name)
		}
		name := `proxy_dropped_total{reason="` + tc.reason + `"}`
		testkit.WaitFor(t, 2*time.Second, tc.name+" counted", func() bool { return counter(p, name) >= 1 })
	}
	// A real token with a wrong key proves nothing.
	if c, err := tcpmux.DialFramesToken(ctx, &d, tcpAddr, tok, wire.Key{3}); err == nil {
		c.Close()
		t.Fatal("a token without its client key was admitted")
	}
	testkit.WaitFor(t, 2*time.Second, "refusals counted", func() bool { return counter(p, "raic_proxy_tcp_auth_refused_total") >= 3 })
}

// closedSoon reports whether the proxy ends fc within d (its reader sees an
// error); an open connection's reader goes on waiting.
func closedSoon(fc *tcpmux.FrameConn, d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		for {
			if _, err := fc.Receive(); err != nil {
				close(done)
				return
			}
		}
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// One client holds at most PerClientConns fallback connections: one more
// closes its oldest, counted, and leaves the others open. A router admitted
// by a token that names the same client ID is another client.
func TestFallbackPerClientEvictsOldest(t *testing.T) {
	tcpAddr := fmt.Sprintf("127.0.0.1:%d", freeTCPPort(t))
	p := pskProxy(t, "198.18.41.0/24", fmt.Sprintf("tcp_listen = \"%s\"\ntoken_key = \"%s\"", tcpAddr, tokenKey))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var d net.Dialer
	now := time.Now()
	tok, c, err := token.Mint(&tokenKey, token.Claims{ClientID: "gamer", Servers: []string{"198.18.41.2:27015"}, NotBefore: now.Add(-time.Second), Expires: now.Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	var byToken *tcpmux.FrameConn
	testkit.WaitFor(t, 5*time.Second, "tcp_listen", func() bool {
		byToken, err = tcpmux.DialFramesToken(ctx, &d, tcpAddr, tok, c.ClientKey)
		return err == nil
	})
	defer byToken.Close()
	testkit.WaitFor(t, 2*time.Second, "the token's connection filed", func() bool { return counter(p, "raic_proxy_udp_fallback_active") == 1 })
	var conns []*tcpmux.FrameConn
	for i := 0; i <= PerClientConns; i++ {
		fc, err := tcpmux.DialFrames(ctx, &d, tcpAddr, "gamer", goodKey)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		defer fc.Close()
		conns = append(conns, fc)
		// Filed in the order they opened.
		want := float64(min(i+1, PerClientConns) + 1)
		testkit.WaitFor(t, 2*time.Second, fmt.Sprintf("connection %d filed", i), func() bool { return counter(p, "raic_proxy_udp_fallback_active") == want })
	}
	if !closedSoon(conns[0], 2*time.Second) {
		t.Fatal("the oldest connection is still open")
	}
	if n := counter(p, "raic_proxy_udp_fallback_evicted_total"); n != 1 {
		t.Errorf("evicted %v, want 1", n)
	}
	for i, fc := range append(conns[1:], byToken) {
		if closedSoon(fc, 50*time.Millisecond) {
			t.Errorf("connection %d was closed too", i+1)
		}
	}
	if n := counter(p, "raic_proxy_udp_fallback_active"); n != PerClientConns+1 {
		t.Errorf("%v open, want %d", n, PerClientConns+1)
	}
}

// A connection that never starts its TLS handshake is closed after
// tcpmux.AuthTimeout and counted as refused. Open and authenticating
// connections together are at most max_sessions: one more is closed at
// accept and counted, and a place freed by a dropped connection serves the
// next router.
func TestFallbackHandshakeTimeoutAndTotalLimit(t *testing.T) {
	tcpAddr := fmt.Sprintf("127.0.0.1:%d", freeTCPPort(t))
	p := pskProxy(t, "198.18.41.0/24", fmt.Sprintf("tcp_listen = \"%s\"\nmax_sessions = 2", tcpAddr))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var d net.Dialer
	var silent []net.Conn
	testkit.WaitFor(t, 5*time.Second, "tcp_listen", func() bool {
		c, err := net.Dial("tcp", tcpAddr)
		if err == nil {
			silent = append(silent, c)
		}
		return err == nil
	})
	c, err := net.Dial("tcp", tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	silent = append(silent, c)
	start := time.Now()
	for _, c := range silent {
		defer c.Close()
	}
	// Two silent peers hold both places: a router is turned away at once.
	if fc, err := tcpmux.DialFrames(ctx, &d, tcpAddr, "gamer", goodKey); err == nil {
		fc.Close()
		t.Fatal("a third connection was admitted beside two authenticating ones")
	}
	testkit.WaitFor(t, time.Second, "the refusal counted", func() bool { return counter(p, "raic_proxy_udp_fallback_refused_total") == 1 })
	// The silent ones are closed after the auth timeout.
	for i, c := range silent {
		c.SetReadDeadline(time.Now().Add(tcpmux.AuthTimeout + 2*time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("silent connection %d: %v, want it closed by the proxy", i, err)
		}
	}
	if held := time.Since(start); held < tcpmux.AuthTimeout-time.Second {
		t.Errorf("silent connections dropped after %v, before the auth timeout %v", held, tcpmux.AuthTimeout)
	}
	testkit.WaitFor(t, time.Second, "the silent ones counted", func() bool { return counter(p, "raic_proxy_tcp_auth_refused_total") == 2 })
	// Their places serve routers now; a third router is refused again.
	for i := 0; i < 2; i++ {
		fc, err := tcpmux.DialFrames(ctx, &d, tcpAddr, "gamer", goodKey)
		if err != nil {
			t.Fatalf("router %d after the timeouts: %v", i, err)
		}
		defer fc.Close()
	}
	testkit.WaitFor(t, time.Second, "both filed", func() bool { return counter(p, "raic_proxy_udp_fallback_active") == 2 })
	if fc, err := tcpmux.DialFrames(ctx, &d, tcpAddr, "gamer", goodKey); err == nil {
		fc.Close()
		t.Fatal("a third connection was admitted beside two open ones")
	}
	testkit.WaitFor(t, time.Second, "the second refusal counted", func() bool { return counter(p, "raic_proxy_udp_fallback_refused_total") == 2 })
	if n := counter(p, "raic_proxy_udp_fallback_evicted_total"); n != 0 {
		t.Errorf("evicted %v: the total limit refuses, it does not evict", n)
	}
}

// tcpEcho echoes every connection's bytes back; accepted counts them.
func tcpEcho(t *testing.T) (netip.AddrPort, *atomic.Int64) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort(), &accepted
}

type liveConns []*tcpmux.Conn

func (l liveConns) Live() []*tcpmux.Conn { return l }

// splitFlow carries one flow to target over c as a router does, and returns
// the LAN end: what it reads back is the server's answer ("" when the flow
// was refused and closed).
func splitFlow(t *testing.T, c *tcpmux.Conn, target netip.AddrPort, msg string) string {
	t.Helper()
	lan, router := net.Pipe()
	go tcpsplit.Carry(router, target, tcpsplit.Rule{}, liveConns{c}, tcpsplit.NewStats(metrics.NewRegistry(), "r"), quietLog())
	defer lan.Close()
	lan.SetDeadline(time.Now().Add(5 * time.Second))
	got := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(lan)
		got <- string(b)
	}()
	if _, err := lan.Write([]byte(msg)); err != nil {
		return "" // refused: the router closed the LAN end
	}
	select {
	case s := <-got:
		return s
	case <-time.After(500 * time.Millisecond):
	}
	lan.Close()
	return <-got
}

// A router admitted by a connect token carries TCP flows over the QUIC
// connection (split TCP): a flow to one of the token's servers reaches it
// and is answered; one to another server is refused (counted) even where a
// [[client]] of the same name may go; once the token expires, an open
// connection opens no new flow. Expired and forged tokens, and a token
// without its client key, get no connection; each refusal is counted.
func TestSplitTCPByToken(t *testing.T) {
	server, served := tcpEcho(t)
	other, otherServed := tcpEcho(t)
	port := freeTCPPort(t)
	tcpAddr := fmt.Sprintf("127.0.0.1:%d", port)
	p := startConfigProxy(t, fmt.Sprintf("listen = \"127.0.0.1:0\"\ntcp_listen = \"%s\"\ntoken_key = \"%s\"\n[[client]]\nid = \"player\"\nkey = \"%s\"\nallow = [\"%s\"]\n",
		tcpAddr, tokenKey, goodKey, other))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	proxyAddr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
	dial := func(tok []byte, key wire.Key) (*tcpmux.Conn, error) {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		c, err := tcpmux.DialToken(dctx, pc, proxyAddr, tok, key)
		if err != nil {
			pc.Close()
			return nil, err
		}
		t.Cleanup(func() { c.Close() })
		return c, nil
	}
	tok, ck := mintFor(t, tokenKey, server.String(), -time.Second, time.Minute, 1) // client ID "player"
	var c *tcpmux.Conn
	testkit.WaitFor(t, 5*time.Second, "tcp_listen", func() bool {
		var err error
		c, err = dial(tok, ck)
		return err == nil
	})
	if got := splitFlow(t, c, server, "by token"); got != "by token" {
		t.Fatalf("a flow to the token's server: got %q", got)
	}
	// Flows are not sessions: the token's one session does not limit them.
	if got := splitFlow(t, c, server, "again"); got != "again" {
		t.Fatalf("a second flow to the token's server: got %q", got)
	}
	if got := splitFlow(t, c, other, "elsewhere"); got != "" {
		t.Fatalf("a flow outside the token's servers got %q back", got)
	}
	if n := counter(p, "raic_proxy_tcp_flows_refused_total"); n != 1 {
		t.Errorf("flows refused %v, want 1", n)
	}
	if served.Load() != 2 || otherServed.Load() != 0 {
		t.Errorf("servers accepted %d and %d connections, want 2 and 0", served.Load(), otherServed.Load())
	}

	// A token that expires while its connection is open.
	now := time.Now()
	short, sc, err := token.Mint(&tokenKey, token.Claims{ClientID: "brief", Servers: []string{server.String()},
		NotBefore: now.Add(-time.Second), Expires: now.Truncate(time.Second).Add(2 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	bc, err := dial(short, sc.ClientKey)
	if err != nil {
		t.Fatalf("a valid short token: %v", err)
	}
	if got := splitFlow(t, bc, server, "in time"); got != "in time" {
		t.Fatalf("a flow before expiry: got %q", got)
	}
	time.Sleep(time.Until(now.Truncate(time.Second).Add(2 * time.Second)))
	if got := splitFlow(t, bc, server, "too late"); got != "" {
		t.Fatalf("a flow after the token expired got %q back", got)
	}
	if n := counter(p, `proxy_dropped_total{reason="token_expired"}`); n != 1 {
		t.Errorf("token_expired %v, want 1", n)
	}
	if served.Load() != 3 {
		t.Errorf("the server accepted %d connections, want 3", served.Load())
	}

	expired, eck := mintFor(t, tokenKey, server.String(), -time.Hour, -time.Minute, 1)
	forged, fck := mintFor(t, wire.Key{1}, server.String(), -time.Second, time.Minute, 1)
	for _, tc := range []struct {
		name, reason string
		tok          []byte
		key          wire.Key
	}{
		{"expired", `proxy_dropped_total{reason="token_expired"}`, expired, eck},
		{"another key", `proxy_dropped_total{reason="token_forged"}`, forged, fck},
		{"without its client key", "", tok, wire.Key{3}},
	} {
		before := counter(p, tc.reason)
		if _, err := dial(tc.tok, tc.key); err == nil {
			t.Fatalf("%s: a QUIC connection was admitted", tc.name)
		}
		if tc.reason != "" {
			testkit.WaitFor(t, 2*time.Second, tc.name+" counted", func() bool { return counter(p, tc.reason) == before+1 })
		}
	}
	testkit.WaitFor(t, 2*time.Second, "refusals counted", func() bool { return counter(p, "raic_proxy_tcp_auth_refused_total") == 3 })
}

// Aggregated QUIC connections are bounded as the fallback's are: one
// client's ninth closes its oldest (counted), the others and another
// client's stay open; beyond max_sessions open, one more is closed and
// counted.
func TestQUICConnLimits(t *testing.T) {
	dial := func(t *testing.T, port int, tok []byte, key wire.Key) *tcpmux.Conn {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		addr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
		var c *tcpmux.Conn
		if tok != nil {
			c, err = tcpmux.DialToken(ctx, pc, addr, tok, key)
		} else {
			c, err = tcpmux.Dial(ctx, pc, addr, "gamer", key)
		}
		if err != nil {
			pc.Close()
			return nil
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	closed := func(c *tcpmux.Conn, d time.Duration) bool {
		select {
		case <-c.Context().Done():
			return true
		case <-time.After(d):
			return false
		}
	}
	t.Run("per client", func(t *testing.T) {
		port := freeTCPPort(t)
		p := pskProxy(t, "198.18.41.0/24", fmt.Sprintf("tcp_listen = \"127.0.0.1:%d\"\ntoken_key = \"%s\"", port, tokenKey))
		tok, ck := mintFor(t, tokenKey, "198.18.41.2:80", -time.Second, time.Minute, 1)
		var byToken *tcpmux.Conn
		testkit.WaitFor(t, 5*time.Second, "tcp_listen", func() bool { byToken = dial(t, port, tok, ck); return byToken != nil })
		testkit.WaitFor(t, 2*time.Second, "the token's connection filed", func() bool { return counter(p, "raic_proxy_tcp_conns_active") == 1 })
		var conns []*tcpmux.Conn
		for i := 0; i <= PerClientConns; i++ {
			c := dial(t, port, nil, goodKey)
			if c == nil {
				t.Fatalf("connection %d refused", i)
			}
			conns = append(conns, c)
			want := float64(min(i+1, PerClientConns) + 1)
			testkit.WaitFor(t, 2*time.Second, fmt.Sprintf("connection %d filed", i), func() bool { return counter(p, "raic_proxy_tcp_conns_active") == want })
		}
		if !closed(conns[0], 2*time.Second) {
			t.Fatal("the oldest connection is still open")
		}
		if n := counter(p, "raic_proxy_tcp_conns_evicted_total"); n != 1 {
			t.Errorf("evicted %v, want 1", n)
		}
		for i, c := range append(conns[1:], byToken) {
			if closed(c, 20*time.Millisecond) {
				t.Errorf("connection %d was closed too", i+1)
			}
		}
	})
	t.Run("total", func(t *testing.T) {
		port := freeTCPPort(t)
		p := pskProxy(t, "198.18.41.0/24", fmt.Sprintf("tcp_listen = \"127.0.0.1:%d\"\nmax_sessions = 2", port))
		var first *tcpmux.Conn
		testkit.WaitFor(t, 5*time.Second, "tcp_listen", func() bool { first = dial(t, port, nil, goodKey); return first != nil })
		second := dial(t, port, nil, goodKey)
		testkit.WaitFor(t, 2*time.Second, "both filed", func() bool { return counter(p, "raic_proxy_tcp_conns_active") == 2 })
		if third := dial(t, port, nil, goodKey); third != nil && !closed(third, 2*time.Second) {
			t.Fatal("a third connection stays open beside two")
		}
		testkit.WaitFor(t, time.Second, "the refusal counted", func() bool { return counter(p, "raic_proxy_tcp_conns_refused_total") == 1 })
		if closed(first, 20*time.Millisecond) || closed(second, 20*time.Millisecond) {
			t.Error("an open connection was closed for the refused one")
		}
		// A place freed serves the next router.
		first.Close()
		testkit.WaitFor(t, 2*time.Second, "the place freed", func() bool { return counter(p, "raic_proxy_tcp_conns_active") == 1 })
		if c := dial(t, port, nil, goodKey); c == nil || closed(c, 200*time.Millisecond) {
			t.Fatal("no place after one connection ended")
		}
	})
}

// A router that stops reading its fallback connection does not hold the
// proxy's replies: once a write to it has waited fallbackSendTimeout, the
// connection is closed and the failure counted.
func TestFallbackStalledRouterIsClosed(t *testing.T) {
	server := newPeer(t)
	tcpAddr := fmt.Sprintf("127.0.0.1:%d", freeTCPPort(t))
	p := pskProxy(t, server.addr().String(), fmt.Sprintf("tcp_listen = \"%s\"\nreport_interval = \"0s\"", tcpAddr))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var d net.Dialer
	var fc *tcpmux.FrameConn
	testkit.WaitFor(t, 5*time.Second, "tcp_listen", func() bool {
		var err error
		fc, err = tcpmux.DialFrames(ctx, &d, tcpAddr, "gamer", goodKey)
		return err == nil
	})
	defer fc.Close()
	r := newFakeRouter(t, goodKey, server.addr())
	if err := fc.Send(r.seal(t, []byte("open"))); err != nil {
		t.Fatal(err)
	}
	_, upstream := server.expectFrom(t, "the session's first packet")
	// The proxy checks the new path before it sends replies there: answer
	// its challenge, as a router does.
	for answered := false; !answered; {
		dg, err := fc.Receive()
		if err != nil {
			t.Fatal(err)
		}
		var h wire.Header
		off, err := wire.Parse(dg, &h, nil)
		if err != nil || h.Type != wire.TypePathChallenge {
			continue
		}
		tok, err := r.recv.Receive(dg, &h, off, mono.Now(), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := r.send.SealPath(make([]byte, 2048), wire.TypePathResponse, tok)
		if err != nil {
			t.Fatal(err)
		}
		if err := fc.Send(resp); err != nil {
			t.Fatal(err)
		}
		answered = true
	}
	// The server answers far more than the connection's buffers hold; the
	// router reads none of it.
	reply := make([]byte, 1200)
	start := time.Now()
	for time.Since(start) < 5*time.Second && counter(p, "raic_proxy_udp_fallback_send_failed_total") == 0 {
		for i := 0; i < 200; i++ {
			server.conn.WriteToUDPAddrPort(reply, upstream)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := counter(p, "raic_proxy_udp_fallback_send_failed_total"); n == 0 {
		t.Fatalf("no send failed in 5s; %v datagrams went out", counter(p, "raic_proxy_udp_fallback_out_total"))
	}
	testkit.WaitFor(t, 2*time.Second, "the stalled connection closed", func() bool { return counter(p, "raic_proxy_udp_fallback_active") == 0 })
	t.Logf("%v datagrams went out before a write waited %v", counter(p, "raic_proxy_udp_fallback_out_total"), fallbackSendTimeout)
}

// TestFallbackSilentConnsPerSource: silent connections from one address take
// at most tcp_pending_per_address places (its default here); one more from it is closed at once and
// counted, while a router from another address still gets in.
func TestFallbackSilentConnsPerSource(t *testing.T) {
	tcpAddr := fmt.Sprintf("127.0.0.1:%d", freeTCPPort(t))
	p := pskProxy(t, "198.18.41.0/24", fmt.Sprintf("tcp_listen = \"%s\"\nmax_sessions = 1000", tcpAddr))
	testkit.WaitFor(t, 5*time.Second, "tcp_listen", func() bool {
		c, err := net.Dial("tcp", tcpAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	testkit.WaitFor(t, tcpmux.AuthTimeout+2*time.Second, "the probe's place back", func() bool {
		return counter(p, "raic_proxy_tcp_auth_refused_total") >= 1
	})
	for i := 0; i < DefaultTCPPendingPerAddress; i++ {
		c, err := net.Dial("tcp", tcpAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	extra, err := net.Dial("tcp", tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	extra.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection %d from one address: %v, want it closed at once", DefaultTCPPendingPerAddress+1, err)
	}
	testkit.WaitFor(t, time.Second, "the refusal counted", func() bool {
		return counter(p, "raic_proxy_udp_fallback_source_busy_total") == 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	fc, err := tcpmux.DialFrames(ctx, &d, tcpAddr, "gamer", goodKey)
	if err != nil {
		t.Fatalf("a router from another address beside the silent ones: %v", err)
	}
	fc.Close()
}

// TestConnTablePendingPerSource: the places reserve takes per address come
// back by release and by add of a reserved place.
func TestConnTablePendingPerSource(t *testing.T) {
	const perSource = 3
	tb := newConnTable[int](1000, 4, perSource)
	a, b := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	for i := 0; i < perSource; i++ {
		if got := tb.reserve(a); got != reservedOK {
			t.Fatalf("reserve %d from a: %d", i, got)
		}
	}
	if got := tb.reserve(a); got != reserveSourceBusy {
		t.Fatalf("reserve %d from a: %d, want reserveSourceBusy", perSource+1, got)
	}
	if got := tb.reserve(b); got != reservedOK {
		t.Fatalf("reserve from b: %d", got)
	}
	tb.release(a)
	if _, _, ok := tb.add(connClient{id: "gamer"}, 1, true, a); !ok {
		t.Fatal("add of a reserved place refused")
	}
	for i := 0; i < 2; i++ { // one released, one authenticated: two places back
		if got := tb.reserve(a); got != reservedOK {
			t.Fatalf("reserve after release and add, %d: %d", i, got)
		}
	}
	if got := tb.reserve(a); got != reserveSourceBusy {
		t.Fatalf("reserve beyond: %d, want reserveSourceBusy", got)
	}
	if full := newConnTable[int](1, 4, perSource); full.reserve(a) != reservedOK || full.reserve(b) != reserveFull {
		t.Fatal("a table of one place gave a second")
	}
}
