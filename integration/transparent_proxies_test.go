package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/router"
)

// Preferred proxies in transparent mode: an app table entry (apps_file) names
// the proxies its sessions should use; the router's real configuration has two
// [[proxy]] tables.

const tpPrefPort = 28500 // in no shipped table: the test's own app entry

// startTPProxy runs a proxy process listening on port in the proxy host and
// returns it; it is killed when t ends. The proxy opens a socket towards the
// server per session, from whichever thread its goroutine runs on: only a
// process of its own in the proxy's namespace puts all of them there.
func startTPProxy(t *testing.T, g *netns.Game, port int) *exec.Cmd {
	t.Helper()
	path := filepath.Join(t.TempDir(), fmt.Sprintf("proxy-%d.toml", port))
	ptext := fmt.Sprintf("listen = \"%s:%d\"\n[[client]]\nid = \"gamer\"\nkey = \"%s\"\nallow = [\"198.18.41.0/24\"]\nrate_pps = 100000\n",
		netns.ProxyAddr, port, testKey)
	if err := os.WriteFile(path, []byte(ptext), 0o600); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := g.Proxy.Command(exe, "-test.run=^$", "-test.count=1")
	cmd.Env = append(os.Environ(), "RAIC_TRANSPARENT_PROXY="+path)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFor(t, 10*time.Second, "the proxy to listen", func() bool {
		o, _ := g.Proxy.Command("ss", "-Hlun", "sport", "=", fmt.Sprint(port)).Output()
		return strings.Contains(string(o), fmt.Sprint(port))
	})
	return cmd
}

// sessionTo returns the router's /status entry of the session to server.
func sessionTo(r *router.Router, server netip.AddrPort) (router.SessionStatus, bool) {
	for _, s := range r.Status().Sessions {
		if s.Server == server.String() {
			return s, true
		}
	}
	return router.SessionStatus{}, false
}

// TestTransparentPreferredProxy: two proxies, "near" first in the config and
// "studio" second; the app table's entry for the game prefers "studio". The
// session goes to studio (status: proxy studio, reason preferred), the game
// gets its echoes, and when the studio proxy process dies, the session moves
// to near (reason down) and the game keeps going.
func TestTransparentPreferredProxy(t *testing.T) {
	g := netns.NewGameForTest(t, netns.GameOptions{Uplinks: 2})
	startTPProxy(t, g, tpProxyPort)
	studio := startTPProxy(t, g, tpProxyPort+1)

	apps := filepath.Join(t.TempDir(), "apps.toml")
	if err := os.WriteFile(apps, []byte(fmt.Sprintf(`[[app]]
name = "studio-game"
type = "shooter"
proto = "udp"
server_ports = ["%d"]
pps = 100
proxies = ["studio"]
`, tpPrefPort)), 0o600); err != nil {
		t.Fatal(err)
	}
	text := fmt.Sprintf(`
client_id = "gamer"
key = "%s"
[transparent]
enabled = true
lan = "lan0"
tun_address = "198.18.255.254/32"
apps_file = %q
`, testKey, apps)
	for i := range g.ISPs {
		text += fmt.Sprintf("[[uplink]]\nname = \"isp%d\"\nsource = \"%s\"\n", i, netns.UplinkAddr(i))
	}
	text += fmt.Sprintf("[[proxy]]\nname = \"near\"\naddress = \"%s:%d\"\n[[proxy]]\nname = \"studio\"\naddress = \"%s:%d\"\n",
		netns.ProxyAddr, tpProxyPort, netns.ProxyAddr, tpProxyPort+1)
	rcfg, err := router.ParseConfig("router.toml", text)
	if err != nil {
		t.Fatal(err)
	}
	var r *router.Router
	if err := g.Router.Do(func() error { r, err = router.New(rcfg, testLogger()); return err }); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(context.Background())
	rdone := make(chan struct{})
	go func() { r.Run(rctx); close(rdone) }()
	t.Cleanup(func() { rcancel(); <-rdone })

	server := netip.AddrPortFrom(netns.ServerAddr, tpPrefPort)
	const n, pps = 1200, 100
	srv := newEchoServer(t, g.Server, tpPrefPort, n)
	cl := newGameClient(t, g, server, n)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sent := make(chan struct{})
	go func() { cl.send(ctx, server, n, pps); close(sent) }()

	waitFor(t, 5*time.Second, "the session and its first echoes", func() bool {
		got, _, _ := cl.got.snapshot()
		_, ok := sessionTo(r, server)
		return ok && got > 50
	})
	s, _ := sessionTo(r, server)
	js, _ := json.Marshal(s)
	t.Logf("status before: %s", js)
	if s.Proxy != "studio" || s.ProxyReason != "preferred" || len(s.Preferred) != 1 || s.Preferred[0] != "studio" {
		t.Fatalf("session on %q (%q, preferred %v), want studio (preferred)", s.Proxy, s.ProxyReason, s.Preferred)
	}
	if s.App != "studio-game" || s.Rule != "port:studio-game" {
		t.Errorf("app %q rule %q, want the apps_file entry", s.App, s.Rule)
	}
	if !strings.Contains(string(js), `"proxy_reason":"preferred"`) {
		t.Errorf("status JSON lacks the reason: %s", js)
	}

	// The studio proxy dies: the session must move to near within a second
	// or so (down_after 300 ms) and the game keep getting echoes.
	before, _, _ := cl.got.snapshot()
	studio.Process.Kill()
	killed := time.Now()
	waitFor(t, 5*time.Second, "the session to move to the other proxy", func() bool {
		s, _ := sessionTo(r, server)
		return s.Proxy == "near"
	})
	moved := time.Since(killed)
	s, _ = sessionTo(r, server)
	js, _ = json.Marshal(s)
	t.Logf("status after the studio proxy died (moved after %v): %s", moved.Round(time.Millisecond), js)
	if s.ProxyReason != "down" {
		t.Errorf("moved for %q, want down", s.ProxyReason)
	}
	if moved > 2*time.Second {
		t.Errorf("moved %v after the kill, want within 2 s", moved)
	}
	mid, _, _ := cl.got.snapshot()
	time.Sleep(2 * time.Second)
	after, _, _ := cl.got.snapshot()
	t.Logf("echoes: %d before the kill, %d when moved, %d two seconds later", before, mid, after)
	if after-mid < pps { // 2 s at 100 pps: at least half must come back
		t.Errorf("only %d echoes in the 2 s after the move, want about %d", after-mid, 2*pps)
	}
	if got := r.Metrics().Snapshot()[`router_proxy_switches_total{reason="down"}`]; got != 1 {
		t.Errorf("%v moves for down, want 1", got)
	}
	cancel()
	<-sent
	for a, k := range srv.sources() {
		if a != netns.ProxyAddr {
			t.Errorf("server saw %d packets from %v, not from a proxy", k, a)
		}
	}
}
