package proxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/testkit"
	"github.com/raicnet/raic/pkg/ingress"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/proxyproto"
	"github.com/raicnet/raic/pkg/token"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

var tokenKey = wire.Key{9, 9, 9}

// startConfigProxy runs a proxy of the given config text.
func startConfigProxy(t testing.TB, text string) *Server {
	t.Helper()
	cfg, err := ParseConfig("proxy.toml", text)
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

// pskProxy runs a proxy with top-level keys top and client "gamer" allowed to
// reach allow.
func pskProxy(t testing.TB, allow, top string) *Server {
	return startConfigProxy(t, fmt.Sprintf("listen = \"127.0.0.1:0\"\n%s\n[[client]]\nid = \"gamer\"\nkey = \"%s\"\nallow = [\"%s\"]\n", top, goodKey, allow))
}

// newTokenRouter seals datagrams as a router holding tok and its client key.
func newTokenRouter(t testing.TB, tok []byte, key wire.Key, target netip.AddrPort) *fakeRouter {
	salt, _ := wire.NewSalt()
	id := uint64(mono.Now()) | 1
	send, recv, err := wire.DeriveKeys(&key, &salt, id, wire.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	hello := &wire.Hello{Salt: salt, Target: target, Token: tok}
	hello.SetClientID("token")
	s, err := tunnel.NewSender(send, id, raic.Params{Scheme: raic.SchemeCopy, K: 1}, hello)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeRouter{send: s, recv: tunnel.NewReceiver(recv, raic.DecoderConfig{}), sock: newPeer(t)}
}

func mintFor(t testing.TB, key wire.Key, server string, nbf, exp time.Duration, sessions int) ([]byte, wire.Key) {
	t.Helper()
	now := time.Now()
	tok, c, err := token.Mint(&key, token.Claims{ClientID: "player", Servers: []string{server},
		NotBefore: now.Add(nbf), Expires: now.Add(exp), Sessions: sessions})
	if err != nil {
		t.Fatal(err)
	}
	return tok, c.ClientKey
}

// A proxy with token_key and no [[client]] admits a router by its token: the
// server gets the packet, the router its ack. Expired, not-yet-valid, forged,
// replayed and wrong-server tokens reach no server, get no reply, and are
// counted by reason.
func TestTokenAdmission(t *testing.T) {
	server := newPeer(t)
	p := startConfigProxy(t, fmt.Sprintf("listen = \"127.0.0.1:0\"\ntoken_key = \"%s\"\n", tokenKey))
	good, ck := mintFor(t, tokenKey, server.addr().String(), -time.Second, time.Minute, 1)
	r := newTokenRouter(t, good, ck, server.addr())
	r.sendTo(t, r.seal(t, []byte("by token")), p.Addr())
	if got := server.expect(t, "token session"); string(got) != "by token" {
		t.Fatalf("server got %q", got)
	}
	r.sock.expect(t, "ack")

	other := newPeer(t)
	expired, eck := mintFor(t, tokenKey, server.addr().String(), -time.Hour, -time.Minute, 1)
	notYet, nck := mintFor(t, tokenKey, server.addr().String(), time.Hour, 2*time.Hour, 1)
	forged, fck := mintFor(t, wire.Key{1}, server.addr().String(), -time.Second, time.Minute, 1)
	flipped := append([]byte(nil), good...)
	flipped[30] ^= 4
	cases := []struct {
		name, reason string
		r            *fakeRouter
	}{
		{"expired", "token_expired", newTokenRouter(t, expired, eck, server.addr())},
		{"not yet valid", "token_not_yet_valid", newTokenRouter(t, notYet, nck, server.addr())},
		{"another key", "token_forged", newTokenRouter(t, forged, fck, server.addr())},
		{"bit flipped", "token_forged", newTokenRouter(t, flipped, ck, server.addr())},
		{"replayed", "token_replayed", newTokenRouter(t, good, ck, server.addr())},
		{"wrong server", "forbidden_target", newTokenRouter(t, good, ck, other.addr())},
	}
	for _, tc := range cases {
		tc.r.sendTo(t, tc.r.seal(t, []byte(tc.name)), p.Addr())
		server.expectNothing(t, 100*time.Millisecond, tc.name)
		tc.r.sock.expectNothing(t, 10*time.Millisecond, tc.name+": reply")
		name := `proxy_dropped_total{reason="` + tc.reason + `"}`
		waitUntil(t, func() bool { return counter(p, name) >= 1 })
	}
	other.expectNothing(t, 10*time.Millisecond, "the server outside the token")
}

// Each forwarded packet to a [[server]] with client_addr_header carries the
// router's address in a PROXY v2 or SPP header; other servers get plain
// packets.
func TestClientAddrHeader(t *testing.T) {
	v2, spp, plain := newPeer(t), newPeer(t), newPeer(t)
	p := startTestProxy(t, "127.0.0.0/8", fmt.Sprintf(`[[server]]
match = "%s"
client_addr_header = "proxy-v2"
[[server]]
match = "%s"
client_addr_header = "spp"
`, v2.addr(), spp.addr()))
	for _, tc := range []struct {
		peer *udpPeer
		kind proxyproto.Kind
	}{{v2, proxyproto.ProxyV2}, {spp, proxyproto.SPP}, {plain, proxyproto.None}} {
		r := newFakeRouter(t, goodKey, tc.peer.addr())
		r.sendTo(t, r.seal(t, []byte("payload")), p.Addr())
		got := tc.peer.expect(t, tc.kind.String())
		if tc.kind == proxyproto.None {
			if string(got) != "payload" {
				t.Errorf("plain server got %q", got)
			}
			continue
		}
		src, dst, payload, err := tc.kind.Parse(got)
		if err != nil || string(payload) != "payload" {
			t.Fatalf("%v: %v, payload %q", tc.kind, err, payload)
		}
		if src != r.sock.addr() || dst != tc.peer.addr() {
			t.Errorf("%v: header says %v -> %v, want %v -> %v", tc.kind, src, dst, r.sock.addr(), tc.peer.addr())
		}
	}
}

// A reload takes a new client table without dropping sessions: the open
// session still forwards both ways, and a client taken out can open no new
// session.
func TestReloadKeepsSessions(t *testing.T) {
	server := newPeer(t)
	p := startTestProxy(t, server.addr().String(), "")
	r := newFakeRouter(t, goodKey, server.addr())
	r.sendTo(t, r.seal(t, []byte("before")), p.Addr())
	server.expect(t, "before reload")

	newKey := wire.Key{4, 4}
	cfg, err := ParseConfig("proxy.toml", fmt.Sprintf(`listen = "127.0.0.1:0"
[[client]]
id = "newcomer"
key = "%s"
allow = ["%s"]
`, newKey, server.addr()))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	r.sendTo(t, r.seal(t, []byte("after")), p.Addr())
	if got := server.expect(t, "session after reload"); string(got) != "after" {
		t.Fatalf("got %q", got)
	}
	if p.sessions.Len() != 1 {
		t.Fatalf("%d sessions after reload, want 1", p.sessions.Len())
	}
	gone := newFakeRouter(t, goodKey, server.addr())
	gone.sendTo(t, gone.seal(t, []byte("removed")), p.Addr())
	server.expectNothing(t, 100*time.Millisecond, "a removed client's new session")
	if counter(p, `proxy_dropped_total{reason="unknown_client"}`) != 1 {
		t.Fatal("removed client's hello not counted as unknown_client")
	}
	if counter(p, "proxy_reloads_total") != 1 {
		t.Fatal("reload not counted")
	}
}

// Drain: /readyz fails at once while /healthz passes, new sessions are
// refused (counted), the open session is still served, and Drain returns as
// soon as the last session ends.
func TestDrainAndHealth(t *testing.T) {
	server := newPeer(t)
	p := pskProxy(t, server.addr().String(), "health_listen = \"127.0.0.1:0\"\ndrain_timeout = \"10s\"")
	base := "http://" + p.HTTPAddrs()[0]
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if c, _ := get("/healthz"); c != 200 {
		t.Fatalf("/healthz = %d", c)
	}
	if c, b := get("/readyz"); c != 200 || !strings.HasPrefix(b, "ready") {
		t.Fatalf("/readyz = %d %q", c, b)
	}
	r := newFakeRouter(t, goodKey, server.addr())
	r.sendTo(t, r.seal(t, []byte("one")), p.Addr())
	server.expect(t, "before drain")

	drained := make(chan time.Time, 1)
	go func() { p.Drain(); drained <- time.Now() }()
	waitUntil(t, p.Draining)
	if c, b := get("/readyz"); c != 503 || !strings.Contains(b, "draining") {
		t.Fatalf("/readyz while draining = %d %q", c, b)
	}
	if c, _ := get("/healthz"); c != 200 {
		t.Fatalf("/healthz while draining = %d", c)
	}
	late := newFakeRouter(t, goodKey, server.addr())
	late.sendTo(t, late.seal(t, []byte("late")), p.Addr())
	server.expectNothing(t, 100*time.Millisecond, "a new session while draining")
	if counter(p, `proxy_dropped_total{reason="draining"}`) != 1 {
		t.Fatal("refusal while draining not counted")
	}
	r.sendTo(t, r.seal(t, []byte("two")), p.Addr())
	if got := server.expect(t, "open session while draining"); string(got) != "two" {
		t.Fatalf("got %q", got)
	}
	select {
	case <-drained:
		t.Fatal("Drain returned with a session open")
	case <-time.After(100 * time.Millisecond):
	}
	// The router ends its session: the drain is over.
	buf := make([]byte, wire.MaxDatagram)
	dg, err := r.send.SealControl(buf, wire.TypeClose, nil, mono.Now())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r.sendTo(t, dg, p.Addr())
	select {
	case at := <-drained:
		if at.Sub(start) > 2*time.Second {
			t.Fatalf("drain took %v after the last session ended", at.Sub(start))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Drain did not return after the last session ended")
	}
}

// A drain with sessions that never end returns after drain_timeout.
func TestDrainTimeout(t *testing.T) {
	server := newPeer(t)
	p := pskProxy(t, server.addr().String(), "drain_timeout = \"300ms\"")
	r := newFakeRouter(t, goodKey, server.addr())
	r.sendTo(t, r.seal(t, []byte("one")), p.Addr())
	server.expect(t, "session")
	start := time.Now()
	p.Drain()
	if el := time.Since(start); el < 250*time.Millisecond || p.sessions.Len() != 1 {
		t.Fatalf("drain returned after %v with %d sessions", el, p.sessions.Len())
	}
}

// Health shares the metrics server when both keys name one address; config
// errors name the key.
func TestStudioConfig(t *testing.T) {
	p := pskProxy(t, "127.0.0.1", "metrics = \"127.0.0.1:0\"\nhealth_listen = \"127.0.0.1:0\"")
	if len(p.HTTPAddrs()) != 1 {
		t.Fatalf("listeners %v, want one shared", p.HTTPAddrs())
	}
	resp, err := http.Get("http://" + p.HTTPAddrs()[0] + "/readyz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/readyz on the metrics server: %v", err)
	}
	resp.Body.Close()
	keyFile := filepath.Join(t.TempDir(), "k")
	os.WriteFile(keyFile, []byte(tokenKey.String()+"\n"), 0o600)
	if _, err := ParseConfig("p.toml", "token_key_file = \""+keyFile+"\"\n"); err != nil {
		t.Fatalf("token_key_file without clients: %v", err)
	}
	for text, want := range map[string]string{
		"token_key = \"short\"\n":                                                "token_key",
		"token_key_file = \"/nonexistent\"\n":                                    "token_key_file",
		"token_key = \"" + tokenKey.String() + "\"\n[[server]]\nmatch = \"x\"\n": "server.0.match",
		"token_key = \"" + tokenKey.String() + "\"\n[[server]]\nmatch = \"198.18.41.2\"\nclient_addr_header = \"v1\"\n": "server.0.client_addr_header",
		"token_key = \"" + tokenKey.String() + "\"\nhealth_listen = \"nowhere\"\n":                                      "health_listen",
		"": "client",
	} {
		if _, err := ParseConfig("p.toml", text); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one naming %s", text, err, want)
		}
	}
}

// Forwarding with a client-address header allocates nothing per packet
// either (the header is written on the stack and sent with writev).
func TestHeaderPathDoesNotAllocate(t *testing.T) {
	for _, kind := range []string{"proxy-v2", "spp"} {
		server := testkit.NewCountingSink(t)
		cfg, err := ParseConfig("proxy.toml", fmt.Sprintf(`listen = "127.0.0.1:0"
[[client]]
id = "gamer"
key = "%s"
allow = ["%s"]
rate_pps = 100000000
burst = 100000000
[[server]]
match = "%s"
client_addr_header = "%s"
`, goodKey, server.Addr(), server.Addr(), kind))
		if err != nil {
			t.Fatal(err)
		}
		s, err := New(cfg, quietLog())
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		rd := ingress.NewReader()
		fr := newFakeRouter(t, goodKey, server.Addr())
		from := testkit.NewCountingSink(t).Addr()
		payload := make([]byte, 100)
		s.in.Handle(rd, fr.seal(t, payload), from, mono.Now())
		server.WaitFor(t, 1)
		fr.send.Heard(mono.Now())
		const runs, warmup = 500, 2048
		dgs := make([][]byte, warmup+runs+1)
		for i := range dgs {
			dgs[i] = fr.seal(t, payload)
		}
		for i := 0; i < warmup; i++ {
			s.in.Handle(rd, dgs[i], from, mono.Now())
		}
		server.WaitFor(t, 1+warmup)
		i := warmup
		if a := testing.AllocsPerRun(runs, func() { s.in.Handle(rd, dgs[i], from, mono.Now()); i++ }); a != 0 {
			t.Errorf("%s: %v allocations per datagram", kind, a)
		}
		server.WaitFor(t, int64(1+warmup+runs+1))
	}
}

// newTokenRouterEpoch is newTokenRouter for a router that knows the proxy's
// restart epoch: its hello carries both trailers (epoch, then token) and its
// keys are the epoch's.
func newTokenRouterEpoch(t testing.TB, tok []byte, key wire.Key, target netip.AddrPort, epoch uint64) *fakeRouter {
	salt, _ := wire.NewSalt()
	id := uint64(mono.Now()) | 1
	send, recv, err := wire.DeriveKeysEpoch(&key, &salt, id, epoch, wire.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	hello := &wire.Hello{Salt: salt, Target: target, Token: tok, Epoch: epoch}
	hello.SetClientID("token")
	s, err := tunnel.NewSender(send, id, raic.Params{Scheme: raic.SchemeCopy, K: 1}, hello)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeRouter{send: s, recv: tunnel.NewReceiver(recv, raic.DecoderConfig{}), sock: newPeer(t)}
}

// A token router that names the proxy's current epoch is admitted (the
// session keeps the epoch's keys); one that names an earlier run's epoch is
// refused as old_epoch before its token is used up.
func TestTokenWithEpoch(t *testing.T) {
	server := newPeer(t)
	p := startConfigProxy(t, fmt.Sprintf("listen = \"127.0.0.1:0\"\ntoken_key = \"%s\"\n", tokenKey))
	tok, ck := mintFor(t, tokenKey, server.addr().String(), -time.Second, time.Minute, 1)

	old := newTokenRouterEpoch(t, tok, ck, server.addr(), p.in.Epoch()^1)
	old.sendTo(t, old.seal(t, []byte("old run")), p.Addr())
	server.expectNothing(t, 100*time.Millisecond, "old epoch")
	waitUntil(t, func() bool { return counter(p, `proxy_dropped_total{reason="old_epoch"}`) >= 1 })

	r := newTokenRouterEpoch(t, tok, ck, server.addr(), p.in.Epoch())
	r.sendTo(t, r.seal(t, []byte("this run")), p.Addr())
	if got := server.expect(t, "token session of this epoch"); string(got) != "this run" {
		t.Fatalf("server got %q", got)
	}
	r.sock.expect(t, "ack")
}
