package integration

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/linkem"
	"github.com/raicnet/raic/integration/netns"
)

// The TCP side end to end: raic-router and raic-proxy as programs in the
// standard topology, TCP flows split through them over the aggregated QUIC
// connection, and game datagrams over the TLS/TCP fallback while UDP is
// blocked.

const tcpTestKey = "5241494354435000000000000000000000000000000000000000000000000001"

// tcpSuite holds the programs of one test.
type tcpSuite struct {
	g             *netns.Game
	routerMetrics string
	stopRouter    func() // SIGTERM, then wait (kill after 5 s)
}

// startTCPSuite builds and starts raic-proxy (tcp_listen on 443, metrics on
// its namespace's 127.0.0.1:9191, and any top-level keys in proxyKeys) and
// raic-router with routerTail as its [tcp] section (and any more TOML).
func startTCPSuite(t *testing.T, g *netns.Game, uplinks int, routerTail string, proxyKeys ...string) *tcpSuite {
	t.Helper()
	dir := t.TempDir()
	proxyBin := buildCommand(t, "proxy/cmd/raic-proxy")
	routerBin := buildCommand(t, "router/cmd/raic-router")
	proxyCfg := fmt.Sprintf(`listen = "%s:4500"
tcp_listen = "%s:443"
metrics = "127.0.0.1:9191"
%s
[[client]]
id = "gamer"
key = "%s"
allow = ["198.18.41.0/24"]
`, netns.ProxyAddr, netns.ProxyAddr, strings.Join(proxyKeys, "\n"), tcpTestKey)
	var ups strings.Builder
	for i := 0; i < uplinks; i++ {
		fmt.Fprintf(&ups, "[[uplink]]\nname = \"up%d\"\nsource = \"%s\"\n", i, netns.UplinkAddr(i))
	}
	routerCfg := fmt.Sprintf(`client_id = "gamer"
key = "%s"
proxy = "%s:4500"
metrics = "127.0.0.1:9190"
%s
%s`, tcpTestKey, netns.ProxyAddr, ups.String(), routerTail)
	start := func(h *netns.Host, bin, name, text string) func() {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := h.Command(bin, "-config", path)
		if os.Getenv("RAIC_TESTBED_LOG") != "" {
			cmd.Stderr = os.Stderr
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var once sync.Once
		stop := func() {
			once.Do(func() {
				cmd.Process.Signal(syscall.SIGTERM)
				done := make(chan struct{})
				go func() { cmd.Wait(); close(done) }()
				select {
				case <-done:
				case <-time.After(5 * time.Second):
					cmd.Process.Kill()
					<-done
				}
			})
		}
		t.Cleanup(stop)
		return stop
	}
	start(g.Proxy, proxyBin, "proxy.toml", proxyCfg)
	time.Sleep(200 * time.Millisecond)
	stop := start(g.Router, routerBin, "router.toml", routerCfg)
	s := &tcpSuite{g: g, routerMetrics: "127.0.0.1:9190", stopRouter: stop}
	waitFor(t, 10*time.Second, "the router's aggregated connection", func() bool {
		return s.metric(t, `raic_router_tcp_conn_up{uplink="up0"}`) == 1
	})
	return s
}

// metric reads one of the router's metrics (-1 if absent).
func (s *tcpSuite) metric(t *testing.T, name string) float64 {
	return nsMetric(s.g.Router, s.routerMetrics, name)
}

// proxyMetric reads one of the proxy's metrics (-1 if absent).
func (s *tcpSuite) proxyMetric(t *testing.T, name string) float64 {
	return nsMetric(s.g.Proxy, "127.0.0.1:9191", name)
}

// nsMetric reads metric name from the /metrics endpoint at addr in host's
// namespace (-1 if absent or unreachable).
func nsMetric(h *netns.Host, addr, name string) float64 {
	v := -1.0
	// By hand: net/http would dial from another goroutine, outside the
	// host's namespace.
	h.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return nil
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprintf(c, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
				v, _ = strconv.ParseFloat(f[1], 64)
			}
		}
		return nil
	})
	return v
}

// objectServer serves, per connection, as many bytes as the decimal number on
// the request's first line.
func objectServer(t *testing.T, h *netns.Host, addr netip.AddrPort) {
	var ln net.Listener
	if err := h.Do(func() (err error) { ln, err = net.Listen("tcp", addr.String()); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	body := make([]byte, 1<<20)
	for i := range body {
		body[i] = byte(i*7 + i>>9) // not text: compression is off in the benchmark anyway
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				n, _ := strconv.Atoi(strings.TrimSpace(line))
				for n > 0 {
					k := min(n, len(body))
					if _, err := c.Write(body[:k]); err != nil {
						return
					}
					n -= k
				}
			}()
		}
	}()
}

// fetch connects from the LAN host to addr, asks for size bytes and returns
// the time to the first byte and to the last, from the start of the connect.
func fetch(t *testing.T, h *netns.Host, addr netip.AddrPort, size int) (ttfb, done time.Duration) {
	t.Helper()
	err := h.Do(func() error {
		start := time.Now()
		c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		fmt.Fprintf(c, "%d\n", size)
		buf := make([]byte, 64<<10)
		got := 0
		for got < size {
			n, err := c.Read(buf)
			if got == 0 && n > 0 {
				ttfb = time.Since(start)
			}
			got += n
			if err != nil {
				return fmt.Errorf("after %d of %d bytes: %w", got, size, err)
			}
		}
		done = time.Since(start)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ttfb, done
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// TestTCPSplitDownload fetches 25 KB and 1 MB objects from the game server
// host over a 100 ms path (50 ms each way on the uplink), directly and split
// through router and proxy, and prints the median time to first byte and to
// completion. It asserts that the split path delivers every byte and that
// its time to first byte is below the direct path's (the direct path pays the
// TCP handshake over the long leg; the split path's long leg is a warm QUIC
// connection).
func TestTCPSplitDownload(t *testing.T) {
	g := netns.NewGameForTest(t, netns.GameOptions{Uplinks: 1, Links: []netns.LinkPair{{
		Up:   linkem.Config{Delay: linkem.Duration(50 * time.Millisecond)},
		Down: linkem.Config{Delay: linkem.Duration(50 * time.Millisecond)},
	}}})
	server := netip.AddrPortFrom(netns.ServerAddr, 8080)
	objectServer(t, g.Server, server)
	startTCPSuite(t, g, 1, fmt.Sprintf(`[[forward]]
listen = "%s:27015"
server = "%s:27015"
[tcp]
proxy = "%s:443"
[[tcp.forward]]
listen = "%s:8080"
server = "%s"
`, netns.LANGateway, netns.ServerAddr, netns.ProxyAddr, netns.LANGateway, server))
	split := netip.AddrPortFrom(netns.LANGateway, 8080)
	fetch(t, g.LAN, split, 1000) // the first flow on the connection
	const runs = 5
	var table strings.Builder
	fmt.Fprintf(&table, "| object | path | TTFB ms (median of %d) | completion ms |\n| ---: | --- | ---: | ---: |\n", runs)
	for _, size := range []int{25 << 10, 1 << 20} {
		var dt, dd, st, sd []time.Duration
		for i := 0; i < runs; i++ {
			a, b := fetch(t, g.LAN, server, size)
			dt, dd = append(dt, a), append(dd, b)
			a, b = fetch(t, g.LAN, split, size)
			st, sd = append(st, a), append(sd, b)
		}
		ms := func(d time.Duration) string { return fmt.Sprintf("%.0f", float64(d)/1e6) }
		fmt.Fprintf(&table, "| %d KB | direct | %s | %s |\n", size>>10, ms(median(dt)), ms(median(dd)))
		fmt.Fprintf(&table, "| %d KB | split (router + proxy) | %s | %s |\n", size>>10, ms(median(st)), ms(median(sd)))
		if median(st) >= median(dt) {
			t.Errorf("%d KB: split TTFB %v is not below direct %v", size>>10, median(st), median(dt))
		}
	}
	t.Logf("TCP download over a 100 ms path:\n%s", table.String())
}

// TestTCPProxySharesPerClient runs raic-proxy with tcp_flows_per_client = 1
// and tcp_pending_per_address = 2. While one split flow of the router is
// open, a second is refused (and counted by the proxy); once the first ends
// a new one is served. Two silent TCP connections from one address take its
// places to authenticate, and a third from it is closed at once and counted.
func TestTCPProxySharesPerClient(t *testing.T) {
	g := netns.NewGameForTest(t, netns.GameOptions{Uplinks: 1})
	server := netip.AddrPortFrom(netns.ServerAddr, 8080)
	objectServer(t, g.Server, server)
	s := startTCPSuite(t, g, 1, fmt.Sprintf(`[tcp]
proxy = "%s:443"
[[tcp.forward]]
listen = "%s:8080"
server = "%s"
`, netns.ProxyAddr, netns.LANGateway, server), "tcp_flows_per_client = 1", "tcp_pending_per_address = 2")
	split := netip.AddrPortFrom(netns.LANGateway, 8080)
	fetch(t, g.LAN, split, 1000)
	// A flow is live at the proxy until both directions have ended: the
	// LAN side's close reaches it a moment after the last byte.
	waitFor(t, 5*time.Second, "the first flow ended at the proxy", func() bool {
		return s.proxyMetric(t, "raic_proxy_tcp_flows_active") == 0
	})

	// A flow held open: its request has no end of line yet, so the object
	// server waits and the flow stays live at the proxy.
	var held net.Conn
	if err := g.LAN.Do(func() (err error) { held, err = net.DialTimeout("tcp", split.String(), 5*time.Second); return }); err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	fmt.Fprint(held, "1000")
	waitFor(t, 5*time.Second, "the held flow live at the proxy", func() bool {
		return s.proxyMetric(t, "raic_proxy_tcp_flows_active") == 1
	})
	refused := s.proxyMetric(t, "raic_proxy_tcp_flows_refused_total")
	err := g.LAN.Do(func() error {
		c, err := net.DialTimeout("tcp", split.String(), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprint(c, "1000\n")
		n, err := io.ReadFull(c, make([]byte, 1000))
		switch {
		case err == nil:
			return fmt.Errorf("a second flow got all %d bytes past tcp_flows_per_client = 1", n)
		case errors.Is(err, os.ErrDeadlineExceeded):
			return fmt.Errorf("a second flow was neither served nor closed in 5 s (%d bytes)", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "the second flow's refusal counted", func() bool {
		return s.proxyMetric(t, "raic_proxy_tcp_flows_refused_total") == refused+1
	})
	held.Close()
	waitFor(t, 5*time.Second, "the held flow ended at the proxy", func() bool {
		return s.proxyMetric(t, "raic_proxy_tcp_flows_active") == 0
	})
	fetch(t, g.LAN, split, 1000) // the client's place is back

	// Silent connections from the router's address to tcp_listen.
	proxyTCP := netip.AddrPortFrom(netns.ProxyAddr, 443).String()
	for i := 0; i < 2; i++ {
		var c net.Conn
		if err := g.Router.Do(func() (err error) { c, err = net.DialTimeout("tcp", proxyTCP, 5*time.Second); return }); err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	// The proxy accepts in order, so the third is judged after these two.
	var extra net.Conn
	if err := g.Router.Do(func() (err error) { extra, err = net.DialTimeout("tcp", proxyTCP, 5*time.Second); return }); err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	extra.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a third connection from one address with tcp_pending_per_address = 2: %v, want it closed at once", err)
	}
	waitFor(t, 2*time.Second, "the third connection's refusal counted", func() bool {
		return s.proxyMetric(t, "raic_proxy_udp_fallback_source_busy_total") == 1
	})
}

// TestUDPFallbackOverTLS blocks UDP from the router to the proxy on every
// uplink for a while: game datagrams must keep flowing over the TLS/TCP
// connection and move back to UDP when it is unblocked.
func TestUDPFallbackOverTLS(t *testing.T) {
	g := netns.NewGameForTest(t, netns.GameOptions{Uplinks: 2})
	game := netip.AddrPortFrom(netns.ServerAddr, 27015)
	var echo *net.UDPConn
	if err := g.Server.Do(func() (err error) { echo, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(game)); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := echo.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			echo.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	s := startTCPSuite(t, g, 2, fmt.Sprintf(`[[forward]]
listen = "%s:27015"
server = "%s"
[tcp]
proxy = "%s:443"
fallback = true
`, netns.LANGateway, game, netns.ProxyAddr))

	var client *net.UDPConn
	if err := g.LAN.Do(func() (err error) {
		client, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(netns.LANGateway, 27015)))
		return
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	// 50 packets/s, each carrying its phase; echoes are counted per phase,
	// and the longest gap between echoes is the time the switch cost.
	var phase atomic.Int32
	var mu sync.Mutex
	sent, got := [3]int{}, [3]int{}
	var gap [3]time.Duration
	last := time.Now()
	go func() {
		buf := make([]byte, 64)
		for {
			n, err := client.Read(buf)
			if err != nil {
				return
			}
			if n >= 1 && buf[0] < 3 {
				mu.Lock()
				now := time.Now()
				p := buf[0]
				got[p]++
				if d := now.Sub(last); d > gap[p] {
					gap[p] = d
				}
				last = now
				mu.Unlock()
			}
		}
	}()
	stop := make(chan struct{})
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		pkt := make([]byte, 64)
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			p := phase.Load()
			pkt[0] = byte(p)
			mu.Lock()
			sent[p]++
			mu.Unlock()
			client.Write(pkt)
		}
	}()
	defer close(stop)
	// UDP from the router to the proxy is refused on every uplink by a
	// policy rule ahead of the uplink tables; TCP (and the LAN) pass.
	rule := []string{"rule", "add", "pref", "10", "ipproto", "udp", "to", netns.ProxyAddr.String(), "prohibit"}
	waitFor(t, 5*time.Second, "the warm fallback connection", func() bool {
		return s.metric(t, "raic_router_udp_fallback_connects_total") == 1
	})
	time.Sleep(2 * time.Second)
	phase.Store(1)
	if err := g.Router.IP(rule...); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the router to move to the fallback", func() bool {
		return s.metric(t, "raic_router_udp_fallback_active") == 1
	})
	time.Sleep(3 * time.Second)
	phase.Store(2)
	rule[1] = "del"
	if err := g.Router.IP(rule...); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the router to move back to UDP", func() bool {
		return s.metric(t, "raic_router_udp_fallback_active") == 0
	})
	time.Sleep(300 * time.Millisecond) // fallback datagrams in flight
	carried := s.metric(t, "raic_router_udp_fallback_datagrams_total")
	time.Sleep(2 * time.Second)
	after := s.metric(t, "raic_router_udp_fallback_datagrams_total")
	phase.Store(0)
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	names := []string{"UDP", "UDP blocked (switch included)", "UDP again (switch included)"}
	for i := range sent {
		t.Logf("%-30s sent %4d, echoed %4d (%.1f%%), longest gap %v", names[i], sent[i], got[i], 100*float64(got[i])/float64(max(sent[i], 1)), gap[i].Round(time.Millisecond))
	}
	// Noticing that UDP is gone takes down_after (300 ms) and a tick: the
	// packets of that moment are lost, the rest must arrive.
	if gap[1] > 1500*time.Millisecond || got[1] < sent[1]*70/100 {
		t.Errorf("blocked phase: %d of %d echoed, longest gap %v; want at least 70%% and a gap under 1.5 s", got[1], sent[1], gap[1])
	}
	if got[2] < sent[2]*95/100 {
		t.Errorf("back on UDP: %d of %d echoed, want at least 95%%", got[2], sent[2])
	}
	if carried < float64(sent[1])/2 {
		t.Errorf("the fallback carried %.0f datagrams, want most of the %d sent while UDP was blocked", carried, sent[1])
	}
	if after != carried {
		t.Errorf("datagrams still went over the fallback after UDP came back (%.0f → %.0f)", carried, after)
	}
	t.Logf("fallback: %.0f datagrams carried, %.0f switches", carried, s.metric(t, "raic_router_udp_fallback_switches_total"))
}

// echoTCP echoes every connection's bytes back.
func echoTCP(t *testing.T, h *netns.Host, addr netip.AddrPort) {
	var ln net.Listener
	if err := h.Do(func() (err error) { ln, err = net.Listen("tcp", addr.String()); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*net.TCPConn).SetNoDelay(true)
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
}

// stallStats is what one game-like TCP stream measured.
type stallStats struct {
	msgs, stalled     int
	p50, p99, max     time.Duration
	stallTime         time.Duration // the sum of every stalled message's delay above base
	base, stallThresh time.Duration
}

// gameStream sends a 64-byte message every 20 ms for d over a TCP connection
// to addr and times each echo. A message is stalled when its round trip
// exceeds the path's (the fastest echo) by more than 30 ms.
func gameStream(t *testing.T, h *netns.Host, addr netip.AddrPort, d time.Duration) stallStats {
	t.Helper()
	var c net.Conn
	if err := h.Do(func() (err error) { c, err = net.DialTimeout("tcp", addr.String(), 5*time.Second); return }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetNoDelay(true)
	n := int(d / (20 * time.Millisecond))
	rtts := make([]time.Duration, 0, n)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64)
		c.SetReadDeadline(time.Now().Add(d + 10*time.Second))
		for len(rtts) < n {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			rtts = append(rtts, time.Duration(time.Now().UnixNano()-int64(binary.BigEndian.Uint64(buf))))
		}
	}()
	pkt := make([]byte, 64)
	tick := time.NewTicker(20 * time.Millisecond)
	for i := 0; i < n; i++ {
		<-tick.C
		binary.BigEndian.PutUint64(pkt, uint64(time.Now().UnixNano()))
		c.Write(pkt)
	}
	tick.Stop()
	<-done
	if len(rtts) < n {
		t.Fatalf("%d of %d echoes came back", len(rtts), n)
	}
	s := stallStats{msgs: n}
	sorted := append([]time.Duration(nil), rtts...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	s.base, s.p50, s.p99, s.max = sorted[0], sorted[n/2], sorted[n*99/100], sorted[n-1]
	s.stallThresh = s.base + 30*time.Millisecond
	for _, r := range rtts {
		if r > s.stallThresh {
			s.stalled++
			s.stallTime += r - s.base
		}
	}
	return s
}

// TestTCPGameStreamLossyUplink carries a game-like TCP stream (a message each
// 20 ms, echoed) over two uplinks of 20 ms each way, the first losing 5% of
// its packets: once on the first uplink's connection only, once duplicated on
// both; and, for reference, directly (kernel TCP end to end over the lossy
// uplink). Duplication must remove at least half the stalls (most, on a quiet machine) (messages held up behind a lost
// segment while it is repaired).
func TestTCPGameStreamLossyUplink(t *testing.T) {
	delay := linkem.Duration(20 * time.Millisecond)
	g := netns.NewGameForTest(t, netns.GameOptions{Uplinks: 2, Links: []netns.LinkPair{
		{Up: linkem.Config{Delay: delay, Loss: 0.05}, Down: linkem.Config{Delay: delay, Loss: 0.05}},
		{Up: linkem.Config{Delay: delay}, Down: linkem.Config{Delay: delay}},
	}})
	server := netip.AddrPortFrom(netns.ServerAddr, 9000)
	echoTCP(t, g.Server, server)
	s := startTCPSuite(t, g, 2, fmt.Sprintf(`[tcp]
proxy = "%s:443"
[[tcp.forward]]
listen = "%s:9000"
server = "%s"
[[tcp.forward]]
listen = "%s:9001"
server = "%s"
duplicate = true
`, netns.ProxyAddr, netns.LANGateway, server, netns.LANGateway, server))
	waitFor(t, 10*time.Second, "the connection over the second uplink", func() bool {
		return s.metric(t, `raic_router_tcp_conn_up{uplink="up1"}`) == 1
	})
	const d = 10 * time.Second
	direct := gameStream(t, g.LAN, server, d) // kernel TCP end to end, over uplink 0
	single := gameStream(t, g.LAN, netip.AddrPortFrom(netns.LANGateway, 9000), d)
	dup := gameStream(t, g.LAN, netip.AddrPortFrom(netns.LANGateway, 9001), d)
	ms := func(x time.Duration) string { return fmt.Sprintf("%.1f", float64(x)/1e6) }
	var table strings.Builder
	table.WriteString("| stream | messages | stalled (> base + 30 ms) | stall time ms | RTT p50 / p99 / max ms |\n| --- | ---: | ---: | ---: | --- |\n")
	for _, r := range []struct {
		name string
		s    stallStats
	}{{"direct (kernel TCP, lossy uplink)", direct}, {"split, lossy uplink only", single}, {"duplicated on both uplinks", dup}} {
		fmt.Fprintf(&table, "| %s | %d | %d | %s | %s / %s / %s |\n", r.name, r.s.msgs, r.s.stalled, ms(r.s.stallTime), ms(r.s.p50), ms(r.s.p99), ms(r.s.max))
	}
	t.Logf("game-like TCP stream, uplink 0 losing 5%% each way:\n%s", table.String())
	if single.stalled == 0 {
		t.Fatalf("no stall on the lossy uplink alone: the test does not exercise loss")
	}
	if dup.stalled*2 > single.stalled {
		t.Errorf("duplicated stream stalled %d times, want at most half the single stream's %d", dup.stalled, single.stalled)
	}
}

// TestTCPTransparentSplit: the router, as the LAN's gateway, terminates the
// LAN host's connections to port 9000 of the game server network (an nft
// redirect) and carries them through the proxy; other ports are routed
// untouched. The server tells by the peer address which way each came.
func TestTCPTransparentSplit(t *testing.T) {
	g := netns.NewGameForTest(t, netns.GameOptions{Uplinks: 1})
	var mu sync.Mutex
	peers := map[netip.AddrPort][]netip.Addr{}
	for _, port := range []uint16{9000, 9001} {
		addr := netip.AddrPortFrom(netns.ServerAddr, port)
		var ln net.Listener
		if err := g.Server.Do(func() (err error) { ln, err = net.Listen("tcp", addr.String()); return }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				peers[addr] = append(peers[addr], c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr())
				mu.Unlock()
				go func() { io.Copy(c, c); c.Close() }()
			}
		}()
	}
	s := startTCPSuite(t, g, 1, fmt.Sprintf(`[tcp]
proxy = "%s:443"
[tcp.split]
lan = "lan0"
ports = [9000]
apps = ["ffxiv"]                  # port ranges in the redirect too
to = ["198.18.41.0/24"]
compress = true
`, netns.ProxyAddr))
	msg := []byte(strings.Repeat("split me ", 1000))
	for _, port := range []uint16{9000, 9001} {
		addr := netip.AddrPortFrom(netns.ServerAddr, port)
		err := g.LAN.Do(func() error {
			c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write(msg)
			c.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil {
				return err
			}
			if string(got) != string(msg) {
				return fmt.Errorf("echo of %d bytes came back as %d", len(msg), len(got))
			}
			return nil
		})
		if err != nil {
			t.Fatalf("port %d: %v", port, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	split, routed := peers[netip.AddrPortFrom(netns.ServerAddr, 9000)], peers[netip.AddrPortFrom(netns.ServerAddr, 9001)]
	if len(split) != 1 || split[0] != netns.ProxyAddr {
		t.Errorf("port 9000 connections came from %v, want one from the proxy %v", split, netns.ProxyAddr)
	}
	if len(routed) != 1 || routed[0] != netns.LANAddr {
		t.Errorf("port 9001 connections came from %v, want one from the LAN host %v (routed, not split)", routed, netns.LANAddr)
	}
	if n := s.metric(t, "raic_router_tcp_flows_total"); n != 1 {
		t.Errorf("router carried %v flows, want 1", n)
	}
	if saved := s.metric(t, "raic_router_tcp_compress_saved_permille"); saved < 500 {
		t.Errorf("compression saved %v‰ of repetitive text, want at least 500‰", saved)
	}
	// On exit the router removes its redirect: the LAN's connections are
	// routed again.
	s.stopRouter()
	out, err := g.Router.Command("nft", "list", "tables").CombinedOutput()
	if err != nil || strings.Contains(string(out), "raic_tcpsplit") {
		t.Errorf("after the router's exit: nft list tables = %q, %v; want no raic_tcpsplit", out, err)
	}
}
