package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/linkem"
	"github.com/raicnet/raic/router"
)

// chromiumArgs are the flags for a headless run that touches nothing outside
// the test: no sandbox (root), no GPU, no background traffic.
func chromiumArgs(profile string, extra ...string) []string {
	return append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + profile}, extra...)
}

// freePort returns a loopback TCP address nothing listens on.
func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestDashboardInChromium runs a router (two emulated uplinks of 15 and 30 ms,
// the second losing 5%) with a game session, loads its live page in headless
// Chromium and checks the page renders both uplinks, their charts and the
// session, and that it updates (the poll count grows between two loads, and
// /status reflects the uplinks). The screenshot goes to $RAIC_SCREENSHOT when
// set (docs/dashboard.png is made that way).
func TestDashboardInChromium(t *testing.T) {
	chrome, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not installed (Debian package chromium): the dashboard test needs it")
	}
	addr := freePort(t)
	const n = 3000
	server := newCheckServer(t, n)
	p := startProxy(t, server.addr().String())
	var ups []netip.AddrPort
	for i, c := range []linkem.Config{{Delay: linkem.Duration(15 * time.Millisecond)}, {Delay: linkem.Duration(30 * time.Millisecond), Loss: 0.05}} {
		c.Seed = uint64(700 + i)
		rl, err := linkem.NewUDPRelay(netip.MustParseAddrPort("127.0.0.1:0"), p.Addr(), c, c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rl.Close() })
		ups = append(ups, rl.Addr())
	}
	r := startRouter(t, server.addr(), fmt.Sprintf("metrics = %q", addr), ups...)
	client, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go stream(ctx, n, 100, 'C', func(b []byte) { client.WriteToUDPAddrPort(b, r.ForwardAddr(0)) })
	waitFor(t, 5*time.Second, "a session and keepalive answers on both uplinks", func() bool {
		st := r.Status()
		return len(st.Sessions) == 1 && len(st.Uplinks) == 2 && st.Uplinks[0].Up && st.Uplinks[1].Up && st.Uplinks[1].RTTMs > 0
	})

	// /status as JSON, and the histograms in /metrics.
	var st router.Status
	resp, err := http.Get("http://" + addr + "/status")
	if err != nil {
		t.Fatal(err)
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Uplinks) != 2 || st.Uplinks[0].Name != "isp0" || st.Uplinks[1].RTTMs < 25 || len(st.Sessions) != 1 || st.Sessions[0].Rule != "forward" {
		t.Errorf("status %+v", st)
	}
	resp, err = http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !regexp.MustCompile(`router_uplink_rtt_seconds_bucket\{uplink="isp1",le="0.075"\} [1-9]`).Match(body) ||
		!strings.Contains(string(body), "# TYPE router_uplink_rtt_seconds histogram") {
		t.Errorf("no RTT histogram for isp1 in /metrics")
	}

	run := func(budgetMs int, extra ...string) string {
		profile := t.TempDir()
		args := chromiumArgs(profile, append([]string{fmt.Sprintf("--virtual-time-budget=%d", budgetMs)}, extra...)...)
		args = append(args, "http://"+addr+"/")
		cctx, ccancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer ccancel()
		out, err := exec.CommandContext(cctx, chrome, args...).Output()
		if err != nil {
			t.Fatalf("chromium %v: %v", extra, err)
		}
		return string(out)
	}
	polls := func(dom string) int {
		m := regexp.MustCompile(`data-polls="(\d+)"`).FindStringSubmatch(dom)
		if m == nil {
			return 0
		}
		v, _ := strconv.Atoi(m[1])
		return v
	}
	short := run(1200, "--dump-dom")
	long := run(4000, "--dump-dom")
	for _, want := range []string{`data-uplink="isp0"`, `data-uplink="isp1"`, `class="lat"`, `class="loss"`, `id="session-table"`, "RAIC-1"} {
		if !strings.Contains(long, want) {
			t.Errorf("the page lacks %s", want)
		}
	}
	if a, b := polls(short), polls(long); a < 1 || b <= a {
		t.Errorf("the page did not update: %d polls after 1.2 s, %d after 4 s", a, b)
	} else {
		t.Logf("page polls: %d after 1.2 s, %d after 4 s (virtual time)", a, b)
	}
	shot := filepath.Join(t.TempDir(), "dashboard.png")
	run(15000, "--window-size=1100,720", "--hide-scrollbars", "--screenshot="+shot)
	if fi, err := os.Stat(shot); err != nil || fi.Size() < 5000 {
		t.Fatalf("no screenshot: %v", err)
	}
	if dst := os.Getenv("RAIC_SCREENSHOT"); dst != "" {
		b, _ := os.ReadFile(shot)
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot saved to %s", dst)
	}
}
