package intermediate

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/token"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/router"
)

// An intermediate without a token key: a hello with a connect token (and an
// epoch, both trailers) is counted as from an unknown client and dropped,
// and the intermediate keeps serving.
func TestTokenHelloIsRefused(t *testing.T) {
	server, served := echoServer(t)
	p := startProxy(t, "mid1", midKeys[0], server)
	m := startMid(t, "gamer", routerKey, server, "mid1", midKeys[0], 1, p.Addr())
	salt, _ := wire.NewSalt()
	key := wire.Key{5}
	send, _, err := wire.DeriveKeysEpoch(&key, &salt, 77, 9, wire.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	hl := &wire.Hello{Salt: salt, UnixMilli: time.Now().UnixMilli(), Target: server, Epoch: 9, Token: []byte("not a token this hop can open")}
	hl.SetClientID("player")
	hdr := wire.Header{Type: wire.TypeData, Scheme: 1, Session: 77, Packet: 1}
	dg, err := wire.Seal(send, make([]byte, wire.MaxDatagram), &hdr, hl, []byte("tick"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), m.Addr().Port())))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 5; i++ {
		c.Write(dg)
	}
	waitFor(t, 2*time.Second, "token hellos counted", func() bool {
		return counter(m, `intermediate_dropped_total{reason="unknown_client"}`) >= 5
	})
	if s := served.Load(); s != 0 {
		t.Errorf("server received %d packets of a token session", s)
	}
	if c := counter(m, `intermediate_relayed_total{dir="out"}`); c != 0 {
		t.Errorf("relayed %v packets of a token session", c)
	}
}

var studioKey = wire.Key{9, 8, 7}

// startTokenMid runs an intermediate with the studio's token key, client
// "gamer" (routerKey) and the keys in extra, relaying as mid1 to next.
func startTokenMid(t testing.TB, server, next netip.AddrPort, extra string) *Server {
	t.Helper()
	cfg, err := ParseConfig("intermediate.toml", midTokenConfig(server, next, extra, true))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	run(t, s.Run)
	return s
}

func midTokenConfig(server, next netip.AddrPort, extra string, withGamer bool) string {
	text := fmt.Sprintf("listen = \"127.0.0.1:0\"\ntoken_key = \"%s\"\n%s\n", studioKey, extra)
	if withGamer {
		text += fmt.Sprintf("[[client]]\nid = \"gamer\"\nkey = \"%s\"\nallow = [\"%s\"]\n", routerKey, server)
	}
	return text + fmt.Sprintf("[next]\nclient_id = \"mid1\"\nkey = \"%s\"\nping_interval = \"50ms\"\nproxy = \"%s\"\n", midKeys[0], next)
}

func mint(t testing.TB, key wire.Key, server string, nbf, exp time.Duration, sessions int) ([]byte, wire.Key) {
	t.Helper()
	now := time.Now()
	tok, c, err := token.Mint(&key, token.Claims{ClientID: "player", Servers: []string{server},
		NotBefore: now.Add(nbf), Expires: now.Add(exp), Sessions: sessions})
	if err != nil {
		t.Fatal(err)
	}
	return tok, c.ClientKey
}

// startTokenRouter runs a router that holds tok and its client key, with one
// uplink to mid and one forward to server.
func startTokenRouter(t testing.TB, tok []byte, key wire.Key, server, mid netip.AddrPort) *router.Router {
	t.Helper()
	cfg, err := router.ParseConfig("router.toml", fmt.Sprintf(`
token = "%s"
key = "%s"
ping_interval = "50ms"
[[forward]]
listen = "127.0.0.1:0"
server = "%s"
[[uplink]]
name = "isp"
source = "127.0.0.1"
proxy = "%s"
`, token.Encode(tok), key, server, mid))
	if err != nil {
		t.Fatal(err)
	}
	r, err := router.New(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	run(t, r.Run)
	return r
}

// echoThrough sends msg from a game socket to the router's forward until an
// answer comes back, and returns it ("" if none did).
func echoThrough(t testing.TB, game *net.UDPConn, fwd netip.AddrPort, msg string) string {
	b := make([]byte, 2048)
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); {
		game.WriteToUDPAddrPort([]byte(msg), fwd)
		game.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, err := game.Read(b); err == nil {
			return string(b[:n])
		}
	}
	return ""
}

// tokenHello is a first datagram of session id, sealed as a router holding tok
// and its client key seals it (no epoch), for target.
func tokenHello(t testing.TB, tok []byte, key wire.Key, id uint64, target netip.AddrPort) []byte {
	t.Helper()
	salt, _ := wire.NewSalt()
	send, _, err := wire.DeriveKeys(&key, &salt, id, wire.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	hl := &wire.Hello{Salt: salt, UnixMilli: time.Now().UnixMilli(), Target: target, Token: tok}
	hl.SetClientID("token")
	hdr := wire.Header{Type: wire.TypeData, Scheme: 1, Session: id, Packet: 1}
	dg, err := wire.Seal(send, make([]byte, wire.MaxDatagram), &hdr, hl, []byte("tick"))
	if err != nil {
		t.Fatal(err)
	}
	return dg
}

// An intermediate with the studio's token key admits a router by its connect
// token, as the proxy does, and relays its session under its own client ID
// (the proxy knows only mid1): the game's packets reach the server and come
// back. Expired, not yet valid, forged, wrong-server and replayed tokens
// reach nothing, get no answer and are counted by reason; the PSK client
// keeps working beside them.
func TestTokenRouterThroughIntermediate(t *testing.T) {
	server, served := echoServer(t)
	other, otherServed := echoServer(t)
	p := startProxy(t, "mid1", midKeys[0], server)
	m := startTokenMid(t, server, p.Addr(), "")
	good, ck := mint(t, studioKey, server.String(), -time.Second, time.Minute, 1)
	r := startTokenRouter(t, good, ck, server, m.Addr())
	game := udpListen(t)
	if got := echoThrough(t, game, r.ForwardAddr(0), "by token"); got != "by token" {
		t.Fatalf("token session through the intermediate: got %q", got)
	}
	if c := counter(m, `intermediate_relayed_total{dir="out"}`); c < 1 {
		t.Fatalf("relayed %v packets", c)
	}
	psk := startRouter(t, server, m.Addr())
	if got := echoThrough(t, udpListen(t), psk.ForwardAddr(0), "psk"); got != "psk" {
		t.Fatalf("PSK session beside the token one: got %q", got)
	}

	expired, eck := mint(t, studioKey, server.String(), -time.Hour, -time.Minute, 1)
	notYet, nck := mint(t, studioKey, server.String(), time.Hour, 2*time.Hour, 1)
	forged, fck := mint(t, wire.Key{1}, server.String(), -time.Second, time.Minute, 1)
	cases := []struct {
		name, reason string
		dg           []byte
	}{
		{"expired", "token_expired", tokenHello(t, expired, eck, 101, server)},
		{"not yet valid", "token_not_yet_valid", tokenHello(t, notYet, nck, 102, server)},
		{"another key", "token_forged", tokenHello(t, forged, fck, 103, server)},
		{"wrong server", "forbidden_target", tokenHello(t, good, ck, 104, other)},
		{"replayed", "token_replayed", tokenHello(t, good, ck, 105, server)},
	}
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), m.Addr().Port())))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before := served.Load()
	for _, tc := range cases {
		c.Write(tc.dg)
		name := `intermediate_dropped_total{reason="` + tc.reason + `"}`
		waitFor(t, 2*time.Second, tc.name+" counted", func() bool { return counter(m, name) >= 1 })
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if n, err := c.Read(make([]byte, 2048)); err == nil {
			t.Errorf("%s: the intermediate answered %d bytes", tc.name, n)
		}
	}
	if s := served.Load(); s != before {
		t.Errorf("refused hellos reached the server (%d packets)", s-before)
	}
	if s := otherServed.Load(); s != 0 {
		t.Errorf("the server outside the token got %d packets", s)
	}
}
