package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/testkit"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/router"
)

// freeUDPPortPair returns a UDP port free on both 127.0.0.1 and 127.0.0.2.
func freeUDPPortPair(t *testing.T) int {
	t.Helper()
	for range 50 {
		a, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		port := a.LocalAddr().(*net.UDPAddr).Port
		b, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: port})
		a.Close()
		if err == nil {
			b.Close()
			return port
		}
	}
	t.Fatal("no UDP port free on both 127.0.0.1 and 127.0.0.2")
	return 0
}

// peerDashboardRouter is a peer-only router on the loopback uplinks
// 127.0.0.1 and 127.0.0.2, its peer at the same two addresses on otherPort.
func peerDashboardRouter(t *testing.T, self, other string, port, otherPort int, key wire.Key, extra string) *router.Router {
	t.Helper()
	text := fmt.Sprintf(`client_id = %q
ping_interval = "50ms"
down_after = "200ms"
%s
[[uplink]]
name = "fiber"
source = "127.0.0.1"

[[uplink]]
name = "lte"
source = "127.0.0.2"

[[peer]]
id = %q
key = %q
port = %d
addresses = ["127.0.0.1:%d", "127.0.0.2:%d"]
scheme = "rs:2+2"
`, self, extra, other, key.String(), port, otherPort, otherPort)
	cfg, err := router.ParseConfig(self+".toml", text)
	if err != nil {
		t.Fatal(err)
	}
	r, err := router.New(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, r.Run)
	return r
}

// TestDashboardPeersInChromium: two peer-only routers on loopback (2×2
// paths, RS 2+2); alice's live page, loaded in headless Chromium, shows bob
// with its scheme, "direct" (no relay), and its 4 paths, each up with its
// SRTT and loss.
func TestDashboardPeersInChromium(t *testing.T) {
	chrome, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not installed (Debian package chromium): the dashboard test needs it")
	}
	if c, err := net.ListenPacket("udp4", "127.0.0.2:0"); err != nil {
		t.Skipf("no 127.0.0.2 on this machine: %v", err)
	} else {
		c.Close()
	}
	key, err := wire.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	pa := freeUDPPortPair(t)
	pb := freeUDPPortPair(t)
	for pb == pa {
		pb = freeUDPPortPair(t)
	}
	a := peerDashboardRouter(t, "alice", "bob", pa, pb, key, fmt.Sprintf("metrics = %q\n", addr))
	peerDashboardRouter(t, "bob", "alice", pb, pa, key, "")
	waitFor(t, 5*time.Second, "alice's 4 paths to bob to answer keepalives", func() bool {
		st := a.Status()
		if len(st.Peers) != 1 || len(st.Peers[0].Paths) != 4 {
			return false
		}
		for _, p := range st.Peers[0].Paths {
			if !p.Up || p.PongsSeen == 0 {
				return false
			}
		}
		return true
	})
	profile := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, chrome, append(chromiumArgs(profile, "--virtual-time-budget=1500", "--dump-dom"), "http://"+addr+"/")...).Output()
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	dom := string(out)
	for _, want := range []string{`data-peer="bob"`, `data-scheme="RAIC-6 2+2"`, `data-relay="off"`, `class="peer-paths"`,
		`data-path="fiber→127.0.0.1:` + fmt.Sprint(pb) + `"`, `data-path="lte→127.0.0.2:` + fmt.Sprint(pb) + `"`} {
		if !strings.Contains(dom, want) {
			t.Errorf("the page lacks %s", want)
		}
	}
	if n := strings.Count(dom, `class="peer-path"`); n != 4 {
		t.Errorf("the page shows %d paths to bob, want 4", n)
	}
	if n := strings.Count(dom, `class="peer-path" data-path=`); n != 4 || strings.Count(dom, `data-up="1"`) != 4 {
		t.Errorf("the page shows %d of 4 paths up", strings.Count(dom, `data-up="1"`))
	}
	if !strings.Contains(dom, "SRTT ms") || !strings.Contains(dom, "no game session") || !strings.Contains(dom, "no uplink to a proxy") {
		t.Errorf("the page lacks the path columns or the empty sessions and uplinks lines")
	}
	if t.Failed() {
		i := strings.Index(dom, `id="peers"`)
		t.Logf("peers section: %s", dom[max(i, 0):min(len(dom), max(i, 0)+3000)])
	}
	// $RAIC_PEER_SCREENSHOT, when set, gets a screenshot of the page.
	if dst := os.Getenv("RAIC_PEER_SCREENSHOT"); dst != "" {
		args := chromiumArgs(t.TempDir(), "--virtual-time-budget=3000", "--window-size=1100,900", "--hide-scrollbars", "--screenshot="+dst)
		if err := exec.CommandContext(ctx, chrome, append(args, "http://"+addr+"/")...).Run(); err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		t.Logf("screenshot saved to %s", dst)
	}
}
