package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/testkit"
	"github.com/raicnet/raic/pkg/tcpmux"
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

// freeTCPPort is a loopback port free at the time of asking.
func freeTCPPort(t testing.TB) int {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
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
