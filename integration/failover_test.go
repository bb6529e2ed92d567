package integration

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/linkem"
	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/router"
)

// The failover tests run one game flow through a router that knows two
// proxies at different distances: the session must go to the nearer one, and
// when that one stops, move to the reserve within a second, with the game
// seeing no gap in either direction longer than a second.

const (
	failoverRate    = 200 // packets per second each way
	failoverMaxGap  = time.Second
	failoverMaxMove = time.Second
)

// arrivals records, per direction, every packet's arrival time and checks its
// bytes (the checker's format), so a gap, a loss, a duplicate or a corrupted
// packet is seen.
type arrivals struct {
	tally *tally
	mu    sync.Mutex
	times []int64
}

func newArrivals(n int) *arrivals { return &arrivals{tally: newTally(n), times: make([]int64, 0, n)} }

func (a *arrivals) add(b []byte, stream byte, now int64) {
	a.tally.add(b, stream)
	a.mu.Lock()
	a.times = append(a.times, now)
	a.mu.Unlock()
}

func (a *arrivals) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.times)
}

// maxGap is the longest time between two arrivals after from (mono ns), and
// when it began.
func (a *arrivals) maxGap(from int64) (gap time.Duration, at int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var prev int64
	for _, t := range a.times {
		if t < from {
			continue
		}
		if prev != 0 && time.Duration(t-prev) > gap {
			gap, at = time.Duration(t-prev), prev
		}
		prev = t
	}
	return gap, at
}

// gapServer is the game server: it checks stream 'C' and, once it has heard a
// client, streams 'S' to the address it heard from last. A flow moved to
// another proxy arrives from a new address (the other proxy's socket), and the
// server follows it, as a game server keyed by its own session token would.
type gapServer struct {
	conn    *net.UDPConn
	up      *arrivals
	latest  atomic.Pointer[netip.AddrPort]
	sources sync.Map // netip.AddrPort -> struct{}
}

func newGapServer(t testing.TB, conn *net.UDPConn, n int) *gapServer {
	conn.SetReadBuffer(1 << 20)
	s := &gapServer{conn: conn, up: newArrivals(n)}
	go func() {
		buf := make([]byte, 2048)
		for {
			k, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			s.up.add(buf[:k], 'C', mono.Now())
			if p := s.latest.Load(); p == nil || *p != from {
				s.latest.Store(&from)
				s.sources.Store(from, struct{}{})
			}
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return s
}

func (s *gapServer) addr() netip.AddrPort { return s.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (s *gapServer) nsources() int {
	n := 0
	s.sources.Range(func(_, _ any) bool { n++; return true })
	return n
}

// playFlow runs the game both ways for n packets at failoverRate: the client
// on conn sends to fwd; the server streams back once it has heard the client.
// It returns when both streams have been sent and a moment has passed for the
// last packets.
type flow struct {
	down *arrivals
	done chan struct{}
}

func playFlow(ctx context.Context, client *net.UDPConn, fwd netip.AddrPort, srv *gapServer, n int) *flow {
	client.SetReadBuffer(1 << 20)
	f := &flow{down: newArrivals(n), done: make(chan struct{})}
	go func() {
		buf := make([]byte, 2048)
		for {
			k, _, err := client.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			f.down.add(buf[:k], 'S', mono.Now())
		}
	}()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		stream(ctx, n, failoverRate, 'C', func(b []byte) { client.WriteToUDPAddrPort(b, fwd) })
	}()
	go func() {
		defer wg.Done()
		for srv.latest.Load() == nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Millisecond):
			}
		}
		stream(ctx, n, failoverRate, 'S', func(b []byte) { srv.conn.WriteToUDPAddrPort(b, *srv.latest.Load()) })
	}()
	go func() {
		wg.Wait()
		time.Sleep(300 * time.Millisecond)
		close(f.done)
	}()
	return f
}

// failoverRouterConfig is a router with two uplinks and two proxies: far
// first, so that choosing near is the router's doing, not config order.
func failoverRouterConfig(src [2]string, listen, server, near, far netip.AddrPort, nearVia string) string {
	return fmt.Sprintf(`
client_id = "gamer"
key = "%s"
ping_interval = "50ms"
down_after = "300ms"
[[uplink]]
name = "isp0"
source = "%s"
[[uplink]]
name = "isp1"
source = "%s"
[[proxy]]
name = "far"
address = "%s"
[[proxy]]
name = "near"
address = "%s"
%s
[[forward]]
listen = "%s"
server = "%s"
`, testKey, src[0], src[1], far, near, nearVia, listen, server)
}

// proxyStats returns the router's view of the proxy named name.
func proxyStats(r *router.Router, name string) router.ProxyStats {
	for _, s := range r.ProxyStats() {
		if s.Name == name {
			return s
		}
	}
	return router.ProxyStats{}
}

// checkFailover drives the common part of both tests: wait until the router
// has measured both proxies, play, check the session is on near, stop near,
// and check where and how fast the session went and what the game saw.
func checkFailover(t *testing.T, r *router.Router, stopNear func(), client *net.UDPConn, srv *gapServer) {
	waitFor(t, 5*time.Second, "RTT to both proxies", func() bool {
		return proxyStats(r, "near").RTT > 0 && proxyStats(r, "far").RTT > 0
	})
	nearRTT, farRTT := proxyStats(r, "near").RTT, proxyStats(r, "far").RTT
	t.Logf("router RTT: near %v, far %v", nearRTT, farRTT)
	if nearRTT >= farRTT {
		t.Fatalf("the test needs near nearer than far: %v vs %v", nearRTT, farRTT)
	}

	const before, after = 2 * time.Second, 2500 * time.Millisecond
	n := int((before + after).Seconds() * failoverRate)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := mono.Now()
	f := playFlow(ctx, client, r.ForwardAddr(0), srv, n)

	time.Sleep(before)
	if s := proxyStats(r, "near"); s.Sessions != 1 || proxyStats(r, "far").Sessions != 0 {
		t.Fatalf("sessions before the stop: near %d, far %d; want 1 and 0", s.Sessions, proxyStats(r, "far").Sessions)
	}
	if got := srv.up.count(); got == 0 || f.down.count() == 0 {
		t.Fatalf("no traffic through the near proxy: server got %d, client got %d", got, f.down.count())
	}

	stopped := mono.Now()
	stopNear()
	waitFor(t, 3*time.Second, "the session to move to the far proxy", func() bool {
		return proxyStats(r, "far").Sessions == 1
	})
	moved := time.Duration(mono.Now() - stopped)
	t.Logf("session moved to the reserve %v after the near proxy stopped", moved)
	if moved > failoverMaxMove {
		t.Errorf("the move took %v, want at most %v", moved, failoverMaxMove)
	}
	// A stopped proxy stops answering keepalives: the move is counted as "down"
	// (every path timed out), "loss" (the keepalive loss crossed its threshold
	// first, which the ping timing decides) or "refused" (the kernel answered a
	// datagram to the closed port with port-unreachable first); either way
	// exactly one move.
	snap := r.Metrics().Snapshot()
	down, loss := snap[`router_proxy_switches_total{reason="down"}`], snap[`router_proxy_switches_total{reason="loss"}`]
	refused := snap[`router_proxy_switches_total{reason="refused"}`]
	t.Logf("switches: down %v, loss %v, refused %v", down, loss, refused)
	if down+loss+refused != 1 {
		t.Errorf("switches for down %v + loss %v + refused %v, want exactly 1", down, loss, refused)
	}
	<-f.done

	// The first packets of each direction are allowed their setup time: the
	// gaps are measured from one second into the game.
	from := start + int64(time.Second)
	for _, d := range []struct {
		name string
		a    *arrivals
	}{{"client→server", srv.up}, {"server→client", f.down}} {
		gap, at := d.a.maxGap(from)
		got, dups, bad := d.a.tally.snapshot()
		t.Logf("%s: received %d of %d, duplicates %d, corrupted %d, longest gap %v (began %v after the stop)",
			d.name, got, n, dups, bad, gap, time.Duration(at-stopped))
		if gap > failoverMaxGap {
			t.Errorf("%s: the game saw a gap of %v, want at most %v", d.name, gap, failoverMaxGap)
		}
		if dups != 0 || bad != 0 {
			t.Errorf("%s: %d duplicates and %d corrupted packets", d.name, dups, bad)
		}
		// Everything but the outage itself arrives.
		if lost := n - got; time.Duration(lost)*time.Second/failoverRate > failoverMaxGap+500*time.Millisecond {
			t.Errorf("%s: lost %d packets, more than the outage explains", d.name, lost)
		}
	}
	if ns := srv.nsources(); ns != 2 {
		t.Errorf("the server heard the game from %d addresses, want 2 (one per proxy)", ns)
	}
}

// TestFailoverLoopback needs no root: two proxies on loopback, the far one
// behind a relay that adds 15 ms each way, and the near one reached over
// uplink isp1 through a relay of its own (a via address).
func TestFailoverLoopback(t *testing.T) {
	sc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	srv := newGapServer(t, sc, 10000)
	near, stopNear := runLoopbackProxy(t, srv.addr().String())
	far, _ := runLoopbackProxy(t, srv.addr().String())
	relay := func(to netip.AddrPort, delay time.Duration) netip.AddrPort {
		c := linkem.Config{Delay: linkem.Duration(delay)}
		rl, err := linkem.NewUDPRelay(netip.MustParseAddrPort("127.0.0.1:0"), to, c, c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rl.Close() })
		return rl.Addr()
	}
	farAddr := relay(far.Addr(), 15*time.Millisecond)
	nearVia := relay(near.Addr(), 0)

	text := failoverRouterConfig([2]string{"127.0.0.1", "127.0.0.1"}, netip.MustParseAddrPort("127.0.0.1:0"),
		srv.addr(), near.Addr(), farAddr, fmt.Sprintf(`via = { isp1 = "%s" }`, nearVia))
	cfg, err := router.ParseConfig("router.toml", text)
	if err != nil {
		t.Fatal(err)
	}
	r, err := router.New(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	client, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	checkFailover(t, r, stopNear, client, srv)
}

func TestFailoverNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	g := netns.NewGameForTest(t, netns.GameOptions{Uplinks: 2})
	dly, err := g.Net.AddHost("dly")
	if err != nil {
		t.Fatal(err)
	}
	farHost, err := g.Net.AddHost("far")
	if err != nil {
		t.Fatal(err)
	}
	p := func(s string) netip.Prefix { return netip.MustParsePrefix(s) }
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	steps := []func() error{
		func() error { return g.Net.Link(g.Core, "dly", p("198.18.43.1/24"), dly, "core", p("198.18.43.2/24")) },
		func() error { return g.Net.Link(dly, "far", p("198.18.44.1/24"), farHost, "eth0", p("198.18.44.2/24")) },
		func() error { return g.Core.AddRoute(p("198.18.44.0/24"), a("198.18.43.2"), "", 0) },
		func() error { return dly.AddRoute(netip.Prefix{}, a("198.18.43.1"), "", 0) },
		func() error { return farHost.AddRoute(netip.Prefix{}, a("198.18.44.1"), "", 0) },
		dly.EnableForwarding,
	}
	for _, s := range steps {
		if err := s(); err != nil {
			t.Fatal(err)
		}
	}
	d := linkem.Config{Delay: linkem.Duration(10 * time.Millisecond)}
	emu, err := linkem.AttachTUN(dly.NS, "core", "far", d, d)
	if err != nil {
		t.Fatal(err)
	}
	g.Net.OnClose(func() { emu.Close() })

	serverAddr := netip.AddrPortFrom(netns.ServerAddr, 27015)
	nearAddr := netip.AddrPortFrom(netns.ProxyAddr, 4500)
	farAddr := netip.AddrPortFrom(a("198.18.44.2"), 4500)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	startProxyProcess := func(h *netns.Host, listen netip.AddrPort) *exec.Cmd {
		path := filepath.Join(t.TempDir(), h.Name+".toml")
		text := fmt.Sprintf("listen = %q\n[[client]]\nid = \"gamer\"\nkey = \"%s\"\nallow = [\"%s\"]\nrate_pps = 100000\n",
			listen.String(), testKey, netns.ServerAddr)
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := h.Command(exe, "-test.run=^$", "-test.count=1")
		cmd.Env = append(os.Environ(), "RAIC_FAILOVER_PROXY="+path)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	nearCmd := startProxyProcess(g.Proxy, nearAddr)
	startProxyProcess(farHost, farAddr)

	var sc, client *net.UDPConn
	if err := g.Server.Do(func() (err error) {
		sc, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(serverAddr))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := newGapServer(t, sc, 10000)
	if err := g.LAN.Do(func() (err error) {
		client, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netns.LANAddr, 0)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	text := failoverRouterConfig([2]string{netns.UplinkAddr(0).String(), netns.UplinkAddr(1).String()},
		netip.AddrPortFrom(netns.LANGateway, 27015), serverAddr, nearAddr, farAddr, "")
	cfg, err := router.ParseConfig("router.toml", text)
	if err != nil {
		t.Fatal(err)
	}
	var r *router.Router
	// New opens every socket the router uses, so opening them in the router's
	// namespace is enough; its goroutines may run anywhere.
	if err := g.Router.Do(func() (err error) {
		r, err = router.New(cfg, testLogger())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	checkFailover(t, r, func() { nearCmd.Process.Kill() }, client, srv)
}
