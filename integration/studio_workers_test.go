package integration

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/testkit"
	"github.com/raicnet/raic/pkg/udp"
	"github.com/raicnet/raic/pkg/wire"
)

// TestStudioProxyWorkersSteerAndSegment runs raic-proxy with two workers and
// the shared upstream at their defaults (steer_sessions, udp_segmentation)
// and a raic-router of four uplinks in front of a game that sends in bursts.
// The proxy must say it steers its workers; every copy of the session, from
// all four uplinks, must be read by one worker (the kernel's address hash
// puts four source ports on one of two workers one time in eight); the
// server must answer every packet; and some forwards must leave segmented.
// Its receive_buffer_kb must reach the listening sockets (as root; otherwise
// the proxy must say the kernel capped it), and pin_workers its read loops.
//
// With steer_sessions, udp_segmentation and io_uring false the proxy must
// not steer (nor say it does), must send no forward segmented, must say
// its sessions' own sockets write per packet, and must still answer every
// packet.
func TestStudioProxyWorkersSteerAndSegment(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the programs; skipped with -short")
	}
	proxyBin := buildCommand(t, "proxy/cmd/raic-proxy")
	routerBin := buildCommand(t, "router/cmd/raic-router")
	ppBin := buildCommand(t, "integration/cmd/ppserver")
	t.Run("defaults", func(t *testing.T) { studioWorkersRun(t, proxyBin, routerBin, ppBin, true) })
	t.Run("steering and segmentation off", func(t *testing.T) { studioWorkersRun(t, proxyBin, routerBin, ppBin, false) })
}

// studioWorkersRun is one run of TestStudioProxyWorkersSteerAndSegment, with
// steer_sessions and udp_segmentation at their defaults (on) or false.
func studioWorkersRun(t *testing.T, proxyBin, routerBin, ppBin string, on bool) {
	dir := t.TempDir()
	keys := ""
	if !on {
		keys = "steer_sessions = false\nudp_segmentation = false\nio_uring = false\n"
	}

	server := startPPServer(t, ppBin, "spp")

	proxyPort := freeUDPPort(t)
	metrics := freeTCPAddr(t)
	key := wire.Key{7}.String()
	proxyFile := filepath.Join(dir, "proxy.toml")
	os.WriteFile(proxyFile, []byte(fmt.Sprintf(`listen = "127.0.0.1:%d"
metrics = "%s"
workers = 2
pin_workers = true
receive_buffer_kb = 3072
%s[[client]]
id = "gamer"
key = "%s"
allow = ["%s"]
rate_pps = 100000
burst = 10000
[[server]]
match = "%s"
client_addr_header = "spp"
upstream = "shared"
`, proxyPort, metrics, keys, key, server, server)), 0o600)
	proxy := exec.Command(proxyBin, "-config", proxyFile)
	var proxyLog testkit.LogBuffer
	proxy.Stderr = &proxyLog
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Process.Kill(); proxy.Wait() })
	waitFor(t, 5*time.Second, "the proxy's metrics", func() bool { return httpStatus("http://"+metrics+"/metrics") == 200 })
	if steered := strings.Contains(proxyLog.String(), "workers steered by session ID"); steered != on {
		t.Fatalf("steer_sessions %v, and the proxy says it steers its workers: %v\n%s", on, steered, proxyLog.String())
	}
	// The sessions' own sockets (a fallback here, where the shared upstream
	// has room) forward by io_uring unless io_uring = false, or the kernel
	// has none.
	ring, ringErr := udp.NewSendRing(1)
	if ringErr == nil {
		ring.Close()
	}
	if want := "session_forwards=write"; !on && !strings.Contains(proxyLog.String(), want) {
		t.Fatalf("io_uring = false, and the proxy does not say %s:\n%s", want, proxyLog.String())
	}
	if want := "session_forwards=io_uring"; on && ringErr == nil && !strings.Contains(proxyLog.String(), want) {
		t.Fatalf("io_uring on a kernel that has it, and the proxy does not say %s:\n%s", want, proxyLog.String())
	}
	if !strings.Contains(proxyLog.String(), "worker read loops pinned, each to a CPU") {
		t.Fatalf("pin_workers = true, and the proxy does not say it pinned its workers:\n%s", proxyLog.String())
	}
	if os.Geteuid() == 0 && !strings.Contains(proxyLog.String(), "receive_buffer_kb=3072") {
		t.Fatalf("as root, the proxy does not serve with the 3,072 KiB receive buffer asked for:\n%s", proxyLog.String())
	}
	if os.Geteuid() != 0 && !strings.Contains(proxyLog.String(), "smaller receive buffer than asked") {
		t.Fatalf("not root, and the proxy does not say the kernel capped its receive buffer:\n%s", proxyLog.String())
	}

	fwd := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(freeUDPPort(t)))
	var uplinks strings.Builder
	for i := 0; i < 4; i++ {
		fmt.Fprintf(&uplinks, "[[uplink]]\nname = \"isp%d\"\nsource = \"127.0.0.1:%d\"\n", i, freeUDPPort(t))
	}
	routerFile := filepath.Join(dir, "router.toml")
	os.WriteFile(routerFile, []byte(fmt.Sprintf(`client_id = "gamer"
key = "%s"
proxy = "127.0.0.1:%d"
%s[[forward]]
listen = "%s"
server = "%s"
`, key, proxyPort, uplinks.String(), fwd, server)), 0o600)
	startCommand(t, routerBin, "-config", routerFile)

	game, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(fwd))
	if err != nil {
		t.Fatal(err)
	}
	defer game.Close()
	// The session's first packet: until it is answered the router is still
	// opening it.
	buf := make([]byte, 2048)
	answered := false
	for deadline := time.Now().Add(5 * time.Second); !answered && time.Now().Before(deadline); {
		game.Write([]byte("hello 000"))
		game.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
		_, err := game.Read(buf)
		answered = err == nil
	}
	if !answered {
		t.Fatal("the first packet got no answer")
	}
	w0 := metricValue(metrics, `proxy_worker_received_total{worker="0"}`)
	w1 := metricValue(metrics, `proxy_worker_received_total{worker="1"}`)
	// Bursts of 20 same-sized packets, back to back: the proxy reads several
	// in a batch and sends their forwards as one run.
	const bursts, per = 10, 20
	got := map[string]bool{}
	for b := 0; b < bursts; b++ {
		for i := 0; i < per; i++ {
			game.Write([]byte(fmt.Sprintf("burst %02d %03d", b, i)))
		}
		game.SetReadDeadline(time.Now().Add(2 * time.Second))
		for n := 0; n < per; n++ {
			k, err := game.Read(buf)
			if err != nil {
				break
			}
			if f := strings.Fields(string(buf[:k])); len(f) >= 2 {
				got[strings.Join(f[len(f)-3:], " ")] = true
			}
		}
	}
	for b := 0; b < bursts; b++ {
		for i := 0; i < per; i++ {
			if !got[fmt.Sprintf("burst %02d %03d", b, i)] {
				t.Errorf("no answer to burst %02d packet %03d", b, i)
			}
		}
	}
	d0 := metricValue(metrics, `proxy_worker_received_total{worker="0"}`) - w0
	d1 := metricValue(metrics, `proxy_worker_received_total{worker="1"}`) - w1
	// Four copies of each of the 200 packets, and the router's keepalives
	// and reports, which name the session too. A few datagrams of no session
	// (probes) may go to either worker; without steering, a whole uplink's
	// share (200) does.
	if hi, lo := max(d0, d1), min(d0, d1); on && (hi < 4*bursts*per || lo > 20) {
		t.Fatalf("the workers read %v and %v datagrams of the session: want all (≥ %d) on one", d0, d1, 4*bursts*per)
	}
	seg := metricValue(metrics, "proxy_shared_upstream_segmented_total")
	if on && seg <= 0 {
		t.Fatalf("no forward left segmented (proxy_shared_upstream_segmented_total %v)", seg)
	}
	if !on && seg != 0 {
		t.Fatalf("udp_segmentation = false, and %v forwards left segmented", seg)
	}
	t.Logf("workers read %v and %v; %v forwards segmented", d0, d1, seg)
}
