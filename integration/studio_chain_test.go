package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/testkit"
	"github.com/raicnet/raic/pkg/tcpmux"
	"github.com/raicnet/raic/pkg/token"
	"github.com/raicnet/raic/pkg/wire"
)

// studioBins are the shipped programs the studio tests run.
type studioBins struct{ token, proxy, router, mid string }

func buildStudio(t *testing.T) studioBins {
	if testing.Short() {
		t.Skip("builds the programs; skipped with -short")
	}
	return studioBins{
		token:  buildCommand(t, "proxy/cmd/raic-token"),
		proxy:  buildCommand(t, "proxy/cmd/raic-proxy"),
		router: buildCommand(t, "router/cmd/raic-router"),
		mid:    buildCommand(t, "intermediate/cmd/raic-intermediate"),
	}
}

// tokenKeyFile writes a key from raic-token -genkey into dir.
func (b studioBins) tokenKeyFile(t *testing.T, dir string) (string, wire.Key) {
	t.Helper()
	text, code := run(b.token, "-genkey")
	if code != 0 {
		t.Fatalf("raic-token -genkey: %s", text)
	}
	f := filepath.Join(dir, "token.key")
	os.WriteFile(f, []byte(text), 0o600)
	k, err := wire.ParseKey(text)
	if err != nil {
		t.Fatal(err)
	}
	return f, k
}

// mint runs raic-token mint and returns the router's token and key lines.
func (b studioBins) mint(t *testing.T, keyFile string, args ...string) string {
	t.Helper()
	out, code := run(b.token, append([]string{"mint", "-key-file", keyFile, "-client", "player-1"}, args...)...)
	if code != 0 {
		t.Fatalf("raic-token mint: %s", out)
	}
	return out
}

// startConfig writes text to dir/name and starts bin with it.
func startConfig(t *testing.T, bin, dir, name, text string) *exec.Cmd {
	t.Helper()
	f := filepath.Join(dir, name)
	os.WriteFile(f, []byte(text), 0o600)
	cmd, _ := startCommand(t, bin, "-config", f)
	return cmd
}

// metricValue reads one metric from a /metrics page (-1 when absent).
func metricValue(addr, name string) float64 {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == name {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	return -1
}

// gameSocket is a game's socket to a router's forward: one flow, so one
// session, for as long as it is used.
func gameSocket(t *testing.T, fwd netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(fwd))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// gameEcho sends msg from the game socket c until an answer comes back within
// wait, and returns it ("" when none did).
func gameEcho(t *testing.T, c *net.UDPConn, msg string, wait time.Duration) string {
	t.Helper()
	buf := make([]byte, 2048)
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); {
		c.Write([]byte(msg))
		c.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
		if n, err := c.Read(buf); err == nil {
			return string(buf[:n])
		}
	}
	return ""
}

func loopback(port int) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
}

// TestStudioTokenFallback runs raic-proxy (token_key_file, tcp_listen) and
// raic-router with a connect token on a network where UDP reaches no proxy
// (its UDP proxy address answers nothing): the router moves its game session
// to the TLS/TCP fallback, admitted there by its token, and the game's
// packets come back. A router with a token for another server, and one with
// a token whose one session is already in use, get nothing through; a
// fallback connection with an expired or forged token, or without the token's
// client key, is refused. Each refusal is counted in the proxy's
// proxy_dropped_total by reason.
func TestStudioTokenFallback(t *testing.T) {
	b := buildStudio(t)
	dir := t.TempDir()
	keyFile, key := b.tokenKeyFile(t, dir)
	server, served := testkit.EchoServer(t)
	other, otherServed := testkit.EchoServer(t)
	tcpListen, metrics := freeTCPListen(t), freeTCPAddr(t)
	startConfig(t, b.proxy, dir, "proxy.toml", fmt.Sprintf(`listen = "127.0.0.1:%d"
tcp_listen = "%s"
metrics = "%s"
token_key_file = "%s"
`, freeUDPPort(t), tcpListen, metrics, keyFile))
	waitFor(t, 5*time.Second, "the proxy's metrics", func() bool { return metricValue(metrics, "proxy_received_total") >= 0 })

	deadUDP := freeUDPPort(t) // nothing answers: UDP to the proxy is lost
	startRouter := func(name, auth string, target netip.AddrPort) (fwd netip.AddrPort, metricsAddr string) {
		fwd, metricsAddr = loopback(freeUDPPort(t)), freeTCPAddr(t)
		startConfig(t, b.router, dir, name+".toml", fmt.Sprintf(`%s
proxy = "127.0.0.1:%d"
metrics = "%s"
ping_interval = "50ms"
down_after = "200ms"
[[uplink]]
name = "isp"
source = "127.0.0.1"
[[forward]]
listen = "%s"
server = "%s"
[tcp]
proxy = "%s"
fallback = true
`, auth, deadUDP, metricsAddr, fwd, target, tcpListen))
		return fwd, metricsAddr
	}
	minted := b.mint(t, keyFile, "-server", server.String(), "-sessions", "1")
	fwd, rm := startRouter("router", minted, server)
	game := gameSocket(t, fwd)
	waitFor(t, 10*time.Second, "the router on the fallback", func() bool {
		return metricValue(rm, "raic_router_udp_fallback_active") == 1
	})
	if got := gameEcho(t, game, "over tls", 5*time.Second); got != "over tls" {
		t.Fatalf("token session over the fallback: got %q", got)
	}
	if n := metricValue(metrics, "raic_proxy_udp_fallback_in_total"); n < 1 {
		t.Fatalf("the proxy received %v datagrams over the fallback", n)
	}
	if n := metricValue(rm, "raic_router_udp_fallback_datagrams_total"); n < 1 {
		t.Fatalf("the router carried %v datagrams over the fallback", n)
	}

	// Refused sessions, each on a connection its token opened.
	before := served.Load()
	wrong := b.mint(t, keyFile, "-server", other.String())
	wfwd, _ := startRouter("router-wrong", wrong, server)
	rfwd, _ := startRouter("router-replay", minted, server)
	for _, c := range []struct {
		name, reason string
		fwd          netip.AddrPort
	}{{"another server", "forbidden_target", wfwd}, {"its one session in use", "token_replayed", rfwd}} {
		g := gameSocket(t, c.fwd)
		waitFor(t, 10*time.Second, c.name+": counted", func() bool {
			gameEcho(t, g, c.name, 200*time.Millisecond)
			return metricValue(metrics, `proxy_dropped_total{reason="`+c.reason+`"}`) >= 1
		})
		if got := gameEcho(t, g, c.name, time.Second); got != "" {
			t.Fatalf("%s: the game got %q back", c.name, got)
		}
	}
	if n := served.Load() - before; n != 0 {
		t.Errorf("refused sessions reached the server: %d packets", n)
	}
	if n := otherServed.Load(); n != 0 {
		t.Errorf("the server outside the tokens got %d packets", n)
	}

	// Connections refused before any session: counted by the token's fault.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	now := time.Now()
	expired, ec, err := token.Mint(&key, token.Claims{ClientID: "late", Servers: []string{server.String()}, NotBefore: now.Add(-time.Hour), Expires: now.Add(-time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	forgedKey := wire.Key{1}
	forged, fc, _ := token.Mint(&forgedKey, token.Claims{ClientID: "forger", Servers: []string{server.String()}, NotBefore: now, Expires: now.Add(time.Minute)})
	good, _, _ := token.Mint(&key, token.Claims{ClientID: "thief", Servers: []string{server.String()}, NotBefore: now, Expires: now.Add(time.Minute)})
	var d net.Dialer
	for _, c := range []struct {
		name, reason string
		tok          []byte
		key          wire.Key
	}{
		{"expired", "token_expired", expired, ec.ClientKey},
		{"forged", "token_forged", forged, fc.ClientKey},
		{"without its client key", "", good, wire.Key{2}},
	} {
		if conn, err := tcpmux.DialFramesToken(ctx, &d, tcpListen, c.tok, c.key); err == nil {
			conn.Close()
			t.Fatalf("%s: the fallback connection was admitted", c.name)
		}
		if c.reason != "" {
			if n := metricValue(metrics, `proxy_dropped_total{reason="`+c.reason+`"}`); n < 1 {
				t.Errorf("%s: %s = %v", c.name, c.reason, n)
			}
		}
	}
	waitFor(t, 2*time.Second, "the refusals counted", func() bool {
		return metricValue(metrics, "raic_proxy_tcp_auth_refused_total") >= 3
	})
	// The admitted session kept going throughout.
	if got := gameEcho(t, game, "still", 3*time.Second); got != "still" {
		t.Fatalf("the token session after the refusals: got %q", got)
	}
}

// freeTCPListen is a loopback address free for TCP and UDP both, for a
// proxy's tcp_listen (QUIC and TLS on the one port).
func freeTCPListen(t *testing.T) string {
	for i := 0; i < 50; i++ {
		a := freeTCPAddr(t)
		if pc, err := net.ListenPacket("udp4", a); err == nil {
			pc.Close()
			return a
		}
	}
	t.Fatal("no loopback port free for both TCP and UDP")
	return ""
}

// loopbackTCPEcho echoes every TCP connection's bytes back; the counter
// counts the connections.
func loopbackTCPEcho(t *testing.T) (netip.AddrPort, *atomic.Int64) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort(), &n
}

// tcpEchoVia sends msg over a TCP connection to addr, half-closes it and
// returns what came back before the end.
func tcpEchoVia(t *testing.T, addr netip.AddrPort, msg string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte(msg))
	c.(*net.TCPConn).CloseWrite()
	b, _ := io.ReadAll(c)
	return string(b)
}

// TestTCPSplitByToken runs raic-proxy (token_key_file, tcp_listen, no
// [[client]]) and raic-router with a connect token and two [[tcp.forward]]s:
// the router opens its aggregated QUIC connection by its token, the forward
// to the token's server carries a TCP flow through the proxy (split TCP) and
// the one to another server is refused and counted, reaching nothing. QUIC
// connections with an expired or forged token, or without the token's
// client key, are refused and counted.
func TestTCPSplitByToken(t *testing.T) {
	b := buildStudio(t)
	dir := t.TempDir()
	keyFile, key := b.tokenKeyFile(t, dir)
	server, served := loopbackTCPEcho(t)
	other, otherServed := loopbackTCPEcho(t)
	tcpListen, metrics := freeTCPListen(t), freeTCPAddr(t)
	startConfig(t, b.proxy, dir, "proxy.toml", fmt.Sprintf(`listen = "127.0.0.1:%d"
tcp_listen = "%s"
metrics = "%s"
token_key_file = "%s"
`, freeUDPPort(t), tcpListen, metrics, keyFile))
	waitFor(t, 5*time.Second, "the proxy's metrics", func() bool { return metricValue(metrics, "proxy_received_total") >= 0 })

	allowed, outside := netip.MustParseAddrPort(freeTCPAddr(t)), netip.MustParseAddrPort(freeTCPAddr(t))
	rm := freeTCPAddr(t)
	startConfig(t, b.router, dir, "router.toml", fmt.Sprintf(`%s
proxy = "127.0.0.1:%d"
metrics = "%s"
[[uplink]]
name = "isp"
source = "127.0.0.1"
[tcp]
proxy = "%s"
[[tcp.forward]]
listen = "%s"
server = "%s"
[[tcp.forward]]
listen = "%s"
server = "%s"
`, b.mint(t, keyFile, "-server", server.String()), freeUDPPort(t), rm, tcpListen, allowed, server, outside, other))
	waitFor(t, 10*time.Second, "the router's QUIC connection by its token", func() bool {
		return metricValue(rm, `raic_router_tcp_conn_up{uplink="isp"}`) == 1
	})
	msg := strings.Repeat("split by token ", 100)
	if got := tcpEchoVia(t, allowed, msg); got != msg {
		t.Fatalf("the flow to the token's server: %d bytes back, want %d", len(got), len(msg))
	}
	if got := tcpEchoVia(t, outside, "elsewhere"); got != "" {
		t.Fatalf("the flow outside the token's servers got %q back", got)
	}
	if n := metricValue(metrics, "raic_proxy_tcp_flows_total"); n != 1 {
		t.Errorf("the proxy carried %v flows, want 1", n)
	}
	if n := metricValue(metrics, "raic_proxy_tcp_flows_refused_total"); n != 1 {
		t.Errorf("the proxy refused %v flows, want 1", n)
	}
	if served.Load() != 1 || otherServed.Load() != 0 {
		t.Errorf("the servers accepted %d and %d connections, want 1 and 0", served.Load(), otherServed.Load())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	now := time.Now()
	expired, ec, err := token.Mint(&key, token.Claims{ClientID: "late", Servers: []string{server.String()}, NotBefore: now.Add(-time.Hour), Expires: now.Add(-time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	forgedKey := wire.Key{1}
	forged, fc, _ := token.Mint(&forgedKey, token.Claims{ClientID: "forger", Servers: []string{server.String()}, NotBefore: now, Expires: now.Add(time.Minute)})
	good, _, _ := token.Mint(&key, token.Claims{ClientID: "thief", Servers: []string{server.String()}, NotBefore: now, Expires: now.Add(time.Minute)})
	proxyUDP := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(tcpListen))
	for _, c := range []struct {
		name, reason string
		tok          []byte
		key          wire.Key
	}{
		{"expired", "token_expired", expired, ec.ClientKey},
		{"forged", "token_forged", forged, fc.ClientKey},
		{"without its client key", "", good, wire.Key{2}},
	} {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := tcpmux.DialToken(dctx, pc, proxyUDP, c.tok, c.key)
		dcancel()
		if err == nil {
			conn.Close()
			t.Fatalf("%s: the QUIC connection was admitted", c.name)
		}
		pc.Close()
		if c.reason != "" {
			waitFor(t, 2*time.Second, c.name+": counted", func() bool {
				return metricValue(metrics, `proxy_dropped_total{reason="`+c.reason+`"}`) >= 1
			})
		}
	}
	waitFor(t, 2*time.Second, "the refusals counted", func() bool {
		return metricValue(metrics, "raic_proxy_tcp_auth_refused_total") >= 3
	})
	// The router's flows keep going.
	if got := tcpEchoVia(t, allowed, "still"); got != "still" {
		t.Fatalf("a flow after the refusals: got %q", got)
	}
}

// TestStudioIntermediateFleet runs a token router through raic-intermediate
// (the studio's token_key_file; no [[client]] for the player) to raic-proxy,
// which knows only the intermediate's own client ID. A PSK router uses the
// intermediate beside it. The intermediate then reloads on SIGHUP with the
// PSK client removed (both sessions keep going, the reload is counted, the
// removed client opens nothing new) and drains on SIGTERM (/readyz fails at
// once, /healthz answers, the token session is still served, the process
// exits once drain_timeout has passed).
func TestStudioIntermediateFleet(t *testing.T) {
	b := buildStudio(t)
	dir := t.TempDir()
	keyFile, _ := b.tokenKeyFile(t, dir)
	server, _ := testkit.EchoServer(t)
	midKey, pskKey := wire.Key{0x4d}, wire.Key{0x50}

	proxyPort, proxyMetrics := freeUDPPort(t), freeTCPAddr(t)
	startConfig(t, b.proxy, dir, "proxy.toml", fmt.Sprintf(`listen = "127.0.0.1:%d"
metrics = "%s"
[[client]]
id = "mid-eu1"
key = "%s"
allow = ["%s"]
`, proxyPort, proxyMetrics, midKey, server))

	midPort, midMetrics, health := freeUDPPort(t), freeTCPAddr(t), freeTCPAddr(t)
	midCfg := func(withPSK bool) string {
		s := fmt.Sprintf(`listen = "127.0.0.1:%d"
metrics = "%s"
health_listen = "%s"
token_key_file = "%s"
drain_timeout = "1500ms"
`, midPort, midMetrics, health, keyFile)
		if withPSK {
			s += fmt.Sprintf("[[client]]\nid = \"psk-gamer\"\nkey = \"%s\"\nallow = [\"%s\"]\n", pskKey, server)
		}
		return s + fmt.Sprintf("[next]\nclient_id = \"mid-eu1\"\nkey = \"%s\"\nproxy = \"127.0.0.1:%d\"\n", midKey, proxyPort)
	}
	mid := startConfig(t, b.mid, dir, "intermediate.toml", midCfg(true))
	waitFor(t, 5*time.Second, "/healthz", func() bool { return httpStatus("http://"+health+"/healthz") == 200 })
	if got := httpStatus("http://" + health + "/readyz"); got != 200 {
		t.Fatalf("/readyz = %d, want 200", got)
	}

	startRouter := func(name, auth string) netip.AddrPort {
		fwd := loopback(freeUDPPort(t))
		startConfig(t, b.router, dir, name+".toml", fmt.Sprintf(`%s
proxy = "127.0.0.1:%d"
[[uplink]]
name = "isp"
source = "127.0.0.1"
[[forward]]
listen = "%s"
server = "%s"
`, auth, midPort, fwd, server))
		return fwd
	}
	psk := fmt.Sprintf("client_id = \"psk-gamer\"\nkey = \"%s\"", pskKey)
	tfwd := startRouter("router-token", b.mint(t, keyFile, "-server", server.String()))
	pfwd := startRouter("router-psk", psk)
	tgame, pgame := gameSocket(t, tfwd), gameSocket(t, pfwd)
	if got := gameEcho(t, tgame, "token", 5*time.Second); got != "token" {
		t.Fatalf("token router through the intermediate: got %q", got)
	}
	if got := gameEcho(t, pgame, "psk", 5*time.Second); got != "psk" {
		t.Fatalf("PSK router through the intermediate: got %q", got)
	}
	if n := metricValue(proxyMetrics, `proxy_dropped_total{reason="unknown_client"}`); n > 0 {
		t.Errorf("the proxy refused %v hellos as from unknown clients: the intermediate must relay as its own client", n)
	}

	// SIGHUP with psk-gamer removed.
	os.WriteFile(filepath.Join(dir, "intermediate.toml"), []byte(midCfg(false)), 0o600)
	mid.Process.Signal(syscall.SIGHUP)
	waitFor(t, 5*time.Second, "the reload", func() bool { return metricValue(midMetrics, "intermediate_reloads_total") == 1 })
	if got := gameEcho(t, tgame, "token after reload", 3*time.Second); got != "token after reload" {
		t.Fatalf("token session after the reload: %q", got)
	}
	if got := gameEcho(t, pgame, "psk after reload", 3*time.Second); got != "psk after reload" {
		t.Fatalf("PSK session after the reload: %q", got)
	}
	pfwd2 := startRouter("router-psk2", psk)
	if got := gameEcho(t, gameSocket(t, pfwd2), "new", 2*time.Second); got != "" {
		t.Fatalf("a removed client opened a session: %q", got)
	}
	if n := metricValue(midMetrics, `intermediate_dropped_total{reason="unknown_client"}`); n < 1 {
		t.Fatalf("the removed client's hellos were not counted (%v)", n)
	}

	// SIGTERM: not ready at once, still serving, gone after drain_timeout.
	start := time.Now()
	mid.Process.Signal(syscall.SIGTERM)
	waitFor(t, 2*time.Second, "/readyz to fail", func() bool { return httpStatus("http://"+health+"/readyz") == 503 })
	if got := httpStatus("http://" + health + "/healthz"); got != 200 {
		t.Fatalf("/healthz while draining = %d, want 200", got)
	}
	if got := gameEcho(t, tgame, "draining", 1*time.Second); got != "draining" {
		t.Fatalf("token session while draining: %q", got)
	}
	done := make(chan error, 1)
	go func() { done <- mid.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("intermediate exit: %v", err)
		}
		if el := time.Since(start); el < time.Second {
			t.Fatalf("the intermediate exited after %v, before its drain timeout, with live sessions", el)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the intermediate did not exit after its drain timeout")
	}
}
