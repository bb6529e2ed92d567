package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/wire"
)

// freeUDPPort returns a loopback port free at the time of asking.
func freeUDPPort(t *testing.T) int {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

func freeTCPAddr(t *testing.T) string {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startCommand starts bin and stops it (SIGKILL) when the test ends, unless
// the test waited for it. Its stderr goes to the test log with RAIC_TEST_LOG.
func startCommand(t *testing.T, bin string, args ...string) (*exec.Cmd, io.Reader) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	stdout, _ := cmd.StdoutPipe()
	if os.Getenv("RAIC_TEST_LOG") != "" {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, stdout
}

func httpStatus(url string) int {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func httpBody(t *testing.T, url string) string {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// startPPServer starts the example game server ppserver (bin) behind a
// header of kind ("proxy-v2" or "spp") on a loopback port, and returns its
// address.
func startPPServer(t *testing.T, bin, kind string) netip.AddrPort {
	t.Helper()
	_, out := startCommand(t, bin, "-listen", "127.0.0.1:0", "-header", kind)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return netip.MustParseAddrPort(strings.TrimSpace(line))
}

// TestStudioProxyFleet runs the shipped programs as a studio would: a token
// key from raic-token -genkey on the proxy, a token minted for one player
// given to the router (no [[client]] for it at the proxy), and a game server
// behind a PROXY v2 header (ppserver) that must see the router's address,
// not the proxy's. Then it reloads the proxy with SIGHUP (the session keeps
// going; a client taken out of the config can open nothing new) and drains
// it with SIGTERM (/readyz fails at once, the session is still served, the
// proxy exits when the drain timeout passes).
func TestStudioProxyFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the programs; skipped with -short")
	}
	tokenBin := buildCommand(t, "proxy/cmd/raic-token")
	proxyBin := buildCommand(t, "proxy/cmd/raic-proxy")
	routerBin := buildCommand(t, "router/cmd/raic-router")
	ppBin := buildCommand(t, "integration/cmd/ppserver")
	dir := t.TempDir()

	keyText, code := run(tokenBin, "-genkey")
	if code != 0 {
		t.Fatalf("raic-token -genkey: %s", keyText)
	}
	keyFile := filepath.Join(dir, "token.key")
	os.WriteFile(keyFile, []byte(keyText), 0o600)

	// The game servers, one behind a PROXY v2 header, one behind SPP.
	server, sppServer := startPPServer(t, ppBin, "proxy-v2"), startPPServer(t, ppBin, "spp")

	minted, code := run(tokenBin, "mint", "-key-file", keyFile, "-client", "player-1",
		"-server", server.String(), "-server", sppServer.String(), "-ttl", "5m")
	if code != 0 {
		t.Fatalf("raic-token mint: %s", minted)
	}

	proxyPort := freeUDPPort(t)
	health := freeTCPAddr(t)
	pskKey := wire.Key{5}.String()
	proxyCfg := func(withPSK bool) string {
		s := fmt.Sprintf(`listen = "127.0.0.1:%d"
metrics = "%s"
health_listen = "%s"
token_key_file = "%s"
drain_timeout = "1500ms"
[[server]]
match = "%s"
client_addr_header = "proxy-v2"
[[server]]
match = "%s"
client_addr_header = "spp"
`, proxyPort, health, health, keyFile, server, sppServer)
		if withPSK {
			s += fmt.Sprintf("[[client]]\nid = \"psk-gamer\"\nkey = \"%s\"\nallow = [\"%s\"]\n", pskKey, server)
		}
		return s
	}
	proxyFile := filepath.Join(dir, "proxy.toml")
	os.WriteFile(proxyFile, []byte(proxyCfg(true)), 0o600)
	proxyCmd, _ := startCommand(t, proxyBin, "-config", proxyFile)
	waitFor(t, 5*time.Second, "/healthz", func() bool { return httpStatus("http://"+health+"/healthz") == 200 })
	if got := httpStatus("http://" + health + "/readyz"); got != 200 {
		t.Fatalf("/readyz = %d, want 200", got)
	}

	// A router with the token: its one uplink has a fixed source port, the
	// address the server must be told.
	// It also forwards a second port to the SPP server.
	var sppFwd netip.AddrPort
	startRouterCmd := func(name, auth string) (netip.AddrPort, netip.AddrPort) {
		up := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(freeUDPPort(t)))
		fwd := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(freeUDPPort(t)))
		sppFwd = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(freeUDPPort(t)))
		cfg := fmt.Sprintf(`%s
proxy = "127.0.0.1:%d"
[[uplink]]
name = "isp"
source = "%s"
[[forward]]
listen = "%s"
server = "%s"
[[forward]]
listen = "%s"
server = "%s"
`, auth, proxyPort, up, fwd, server, sppFwd, sppServer)
		f := filepath.Join(dir, name+".toml")
		os.WriteFile(f, []byte(cfg), 0o600)
		startCommand(t, routerBin, "-config", f)
		return up, fwd
	}
	up, fwd := startRouterCmd("router-token", minted)
	game, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(fwd))
	if err != nil {
		t.Fatal(err)
	}
	defer game.Close()
	// echo sends one packet through router, proxy and server, and returns
	// what came back ("" when nothing did).
	echo := func(c *net.UDPConn, msg string) string {
		buf := make([]byte, 2048)
		// The router may still be starting (its port refuses) at first.
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); {
			c.Write([]byte(msg))
			c.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
			n, err := c.Read(buf)
			if err == nil {
				return string(buf[:n])
			}
			time.Sleep(20 * time.Millisecond)
		}
		return ""
	}
	got := echo(game, "hello")
	want := fmt.Sprintf("client=%v ", up)
	if !strings.HasPrefix(got, want) || !strings.HasSuffix(got, " hello") {
		t.Fatalf("server answered %q, want it to have seen %s (the router's uplink)", got, want)
	}
	if strings.Contains(got, fmt.Sprintf("peer=%v", up)) {
		t.Fatalf("the server's peer is the router itself: %q", got)
	}
	sppGame, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(sppFwd))
	if err != nil {
		t.Fatal(err)
	}
	defer sppGame.Close()
	if got := echo(sppGame, "spp"); !strings.HasPrefix(got, want) || !strings.HasSuffix(got, " spp") {
		t.Fatalf("SPP server answered %q, want it to have seen %s", got, want)
	}

	// A PSK router works beside the token one.
	_, pskFwd := startRouterCmd("router-psk", fmt.Sprintf("client_id = \"psk-gamer\"\nkey = \"%s\"", pskKey))
	pskGame, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(pskFwd))
	if err != nil {
		t.Fatal(err)
	}
	defer pskGame.Close()
	if got := echo(pskGame, "psk"); !strings.HasSuffix(got, " psk") {
		t.Fatalf("PSK client: %q", got)
	}

	// SIGHUP with psk-gamer removed: both open sessions keep going, the
	// reload is counted, and psk-gamer's new sessions are refused.
	os.WriteFile(proxyFile, []byte(proxyCfg(false)), 0o600)
	proxyCmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 5*time.Second, "the reload", func() bool {
		return strings.Contains(httpBody(t, "http://"+health+"/metrics"), "proxy_reloads_total 1")
	})
	if got := echo(game, "after reload"); !strings.HasSuffix(got, " after reload") {
		t.Fatalf("token session after reload: %q", got)
	}
	if got := echo(pskGame, "psk after reload"); !strings.HasSuffix(got, " psk after reload") {
		t.Fatalf("PSK session after reload: %q", got)
	}
	_, psk2 := startRouterCmd("router-psk2", fmt.Sprintf("client_id = \"psk-gamer\"\nkey = \"%s\"", pskKey))
	c2, _ := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(psk2))
	defer c2.Close()
	if got := echo(c2, "new"); got != "" {
		t.Fatalf("a removed client opened a session: %q", got)
	}
	if m := httpBody(t, "http://"+health+"/metrics"); !strings.Contains(m, `proxy_dropped_total{reason="unknown_client"}`) ||
		strings.Contains(m, `proxy_dropped_total{reason="unknown_client"} 0`) {
		t.Fatalf("removed client's hellos not counted:\n%s", m)
	}

	// SIGTERM: not ready at once, still serving, gone after drain_timeout.
	start := time.Now()
	proxyCmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, 2*time.Second, "/readyz to fail", func() bool { return httpStatus("http://"+health+"/readyz") == 503 })
	if got := httpStatus("http://" + health + "/healthz"); got != 200 {
		t.Fatalf("/healthz while draining = %d, want 200", got)
	}
	if got := echo(game, "draining"); !strings.HasSuffix(got, " draining") {
		t.Fatalf("session while draining: %q", got)
	}
	done := make(chan error, 1)
	go func() { done <- proxyCmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("proxy exit: %v", err)
		}
		if el := time.Since(start); el < time.Second {
			t.Fatalf("proxy exited after %v, before its drain timeout, with a live session", el)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("proxy did not exit after its drain timeout")
	}
}
