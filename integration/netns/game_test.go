package netns

import (
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/linkem"
	"github.com/raicnet/raic/pkg/mono"
)

// listen opens a UDP socket inside h.
func listen(t *testing.T, h *Host, a netip.AddrPort) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := h.Do(func() (err error) {
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(a))
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s on %v: %v", h.Name, a, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// echo answers each datagram on c and reports the one-way delay (from the mono
// stamp in bytes 0-7) and the sender address.
type seen struct {
	oneWay int64
	from   netip.AddrPort
}

func echo(c *net.UDPConn) <-chan seen {
	ch := make(chan seen, 4096)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if n >= 8 {
				select {
				case ch <- seen{mono.Now() - int64(binary.BigEndian.Uint64(buf)), from}:
				default:
				}
			}
			c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return ch
}

// ping sends n stamped datagrams from c to dst every gap and returns the round
// trips of the replies that came back within a second of the last send.
func ping(t *testing.T, c *net.UDPConn, dst netip.AddrPort, n int, gap time.Duration) []int64 {
	t.Helper()
	got := make(chan []int64)
	go func() {
		var v []int64
		buf := make([]byte, 2048)
		c.SetReadDeadline(time.Now().Add(time.Duration(n)*gap + time.Second))
		for len(v) < n {
			k, err := c.Read(buf)
			if err != nil {
				break
			}
			if k >= 8 {
				v = append(v, mono.Now()-int64(binary.BigEndian.Uint64(buf)))
			}
		}
		got <- v
	}()
	buf := make([]byte, 100)
	for i := 0; i < n; i++ {
		binary.BigEndian.PutUint64(buf, uint64(mono.Now()))
		if _, err := c.WriteToUDPAddrPort(buf, dst); err != nil {
			t.Fatalf("send to %v: %v", dst, err)
		}
		time.Sleep(gap)
	}
	return <-got
}

func median(v []int64) time.Duration {
	s := slices.Clone(v)
	slices.Sort(s)
	return time.Duration(s[len(s)/2])
}

// tookDelay says whether a measured median d shows a configured delay want
// that crossed hops emulated links. The emulator never sends early, so the
// floor is tight (1 ms for clock granularity); it may send late when the host
// is busy (CI runs several test packages at once on two cores), so each hop
// may add up to 3 ms. That still tells 5, 10 and 20 ms links apart.
func tookDelay(d, want time.Duration, hops int) bool {
	return d >= want-time.Millisecond && d <= want+time.Duration(hops)*3*time.Millisecond
}

func TestGameTopology(t *testing.T) {
	ups := []LinkPair{
		{Up: linkem.Config{Delay: linkem.Duration(20 * time.Millisecond)}},
		{Up: linkem.Config{Delay: linkem.Duration(10 * time.Millisecond)}, Down: linkem.Config{Delay: linkem.Duration(5 * time.Millisecond)}},
	}
	g := NewGameForTest(t, GameOptions{Uplinks: 2, Links: ups})
	for _, h := range g.Net.hosts {
		if _, err := os.Stat("/run/netns/" + h.NS); err != nil {
			t.Fatalf("namespace of %s missing: %v", h.Name, err)
		}
	}

	// Router uplink i reaches the proxy through ISP i, with ISP i's delay.
	proxy := listen(t, g.Proxy, netip.AddrPortFrom(ProxyAddr, 7000))
	seenAtProxy := echo(proxy)
	for i, lp := range ups {
		before := g.Emu[i].AToB().Stats().In
		other := g.Emu[1-i].AToB().Stats().In
		c := listen(t, g.Router, netip.AddrPortFrom(g.UplinkAddr(i), 0))
		const n = 200
		rtts := ping(t, c, netip.AddrPortFrom(ProxyAddr, 7000), n, 2*time.Millisecond)
		if len(rtts) != n {
			t.Fatalf("uplink %d: %d of %d replies", i, len(rtts), n)
		}
		var ows []int64
		for len(ows) < n {
			s := <-seenAtProxy
			if s.from.Addr() != g.UplinkAddr(i) {
				t.Fatalf("uplink %d: proxy saw source %v", i, s.from)
			}
			ows = append(ows, s.oneWay)
		}
		ow, rtt := median(ows), median(rtts)
		wantOW, wantRTT := lp.Up.Delay.D(), lp.Up.Delay.D()+lp.Down.Delay.D()
		t.Logf("uplink %d via %s: one-way p50 %v (configured %v), rtt p50 %v (configured %v)", i, g.ISPs[i].Name, ow, wantOW, rtt, wantRTT)
		if !tookDelay(ow, wantOW, 1) {
			t.Errorf("uplink %d: one-way p50 %v, want %v (-1ms, +3ms)", i, ow, wantOW)
		}
		if !tookDelay(rtt, wantRTT, 2) {
			t.Errorf("uplink %d: rtt p50 %v, want %v (-1ms, +6ms)", i, rtt, wantRTT)
		}
		if d := g.Emu[i].AToB().Stats().In - before; d != n {
			t.Errorf("uplink %d: its ISP's emulator saw %d packets, want %d", i, d, n)
		}
		if g.Emu[1-i].AToB().Stats().In != other {
			t.Errorf("uplink %d: traffic leaked through the other ISP", i)
		}
	}

	// The LAN host reaches the internet host through the router (forwarding).
	inet := listen(t, g.Internet, netip.AddrPortFrom(InternetAddr, 7001))
	seenAtInet := echo(inet)
	lanc := listen(t, g.LAN, netip.AddrPortFrom(LANAddr, 0))
	if rt := ping(t, lanc, netip.AddrPortFrom(InternetAddr, 7001), 20, time.Millisecond); len(rt) != 20 {
		t.Fatalf("LAN to internet: %d of 20 replies", len(rt))
	} else {
		s := <-seenAtInet
		t.Logf("LAN to internet: rtt p50 %v, source seen %v", median(rt), s.from)
	}

	// The proxy reaches the game server.
	srv := listen(t, g.Server, netip.AddrPortFrom(ServerAddr, 7002))
	echo(srv)
	pc := listen(t, g.Proxy, netip.AddrPortFrom(ProxyAddr, 0))
	if rt := ping(t, pc, netip.AddrPortFrom(ServerAddr, 7002), 20, time.Millisecond); len(rt) != 20 {
		t.Fatalf("proxy to server: %d of 20 replies", len(rt))
	}

	// Commands run inside the namespaces.
	out, err := g.Router.Command("ip", "-4", "-o", "addr", "show", "dev", "up1").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "198.18.11.2/24") {
		t.Fatalf("ip addr in router: %v %s", err, out)
	}
}

// TestGameRelaysTeardown builds three uplinks with relays, checks each path and
// that Close removes every namespace.
func TestGameRelaysTeardown(t *testing.T) {
	n := NewForTest(t)
	g, err := BuildGame(n, GameOptions{Uplinks: 3, Relays: true})
	if err != nil {
		t.Fatal(err)
	}
	proxy := listen(t, g.Proxy, netip.AddrPortFrom(ProxyAddr, 7000))
	echo(proxy)
	for i := 0; i < 3; i++ {
		c := listen(t, g.Router, netip.AddrPortFrom(g.UplinkAddr(i), 0))
		if rt := ping(t, c, netip.AddrPortFrom(ProxyAddr, 7000), 5, time.Millisecond); len(rt) != 5 {
			t.Fatalf("uplink %d via relay: %d of 5 replies", i, len(rt))
		}
		c.Close()
	}
	proxy.Close()
	var names []string
	for _, h := range n.hosts {
		names = append(names, h.NS)
	}
	if len(names) != 6+3+3 {
		t.Fatalf("%d namespaces, want 12", len(names))
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ns := range names {
		if _, err := os.Stat("/run/netns/" + ns); err == nil {
			t.Errorf("namespace %s left after Close", ns)
		}
	}
}

func TestRejectsForeignAddresses(t *testing.T) {
	n := NewForTest(t)
	a, err := n.AddHost("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := n.AddHost("b")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Link(a, "x", netip.MustParsePrefix("10.0.0.1/24"), b, "y", netip.MustParsePrefix("198.18.0.1/24")); err == nil {
		t.Fatal("address outside 198.18.0.0/15 accepted")
	}
	if _, err := n.AddHost("a"); err == nil {
		t.Fatal("duplicate host accepted")
	}
	if err := a.Do(func() error { panic("boom") }); err == nil {
		t.Fatal("panic in Do not reported")
	}
}

// TestGameInternetLink puts the internet host behind an emulated link: its
// traffic takes the configured delay, the game's paths do not.
func TestGameInternetLink(t *testing.T) {
	const oneWay = 10 * time.Millisecond
	g := NewGameForTest(t, GameOptions{Uplinks: 1, InternetLink: &LinkPair{
		Up:   linkem.Config{Delay: linkem.Duration(oneWay)},
		Down: linkem.Config{Delay: linkem.Duration(oneWay)},
	}})
	inet := listen(t, g.Internet, netip.AddrPortFrom(InternetAddr, 7001))
	echo(inet)
	lanc := listen(t, g.LAN, netip.AddrPortFrom(LANAddr, 0))
	// The first packets on new paths wait for neighbour resolution.
	ping(t, lanc, netip.AddrPortFrom(InternetAddr, 7001), 5, time.Millisecond)
	rt := ping(t, lanc, netip.AddrPortFrom(InternetAddr, 7001), 50, time.Millisecond)
	if len(rt) != 50 {
		t.Fatalf("LAN to internet: %d of 50 replies", len(rt))
	}
	m := median(rt)
	t.Logf("LAN to internet: rtt p50 %v (configured %v)", m, 2*oneWay)
	if !tookDelay(m, 2*oneWay, 2) {
		t.Errorf("LAN to internet: rtt p50 %v, want %v (-1ms, +6ms)", m, 2*oneWay)
	}
	if in := g.FarEmu.AToB().Stats().In; in < 20 {
		t.Errorf("internet link emulator saw %d packets towards the internet host, want ≥ 20", in)
	}

	srv := listen(t, g.Server, netip.AddrPortFrom(ServerAddr, 7002))
	echo(srv)
	rt = ping(t, lanc, netip.AddrPortFrom(ServerAddr, 7002), 20, time.Millisecond)
	if len(rt) != 20 {
		t.Fatalf("LAN to game server: %d of 20 replies", len(rt))
	}
	if m := median(rt); m >= oneWay {
		t.Errorf("LAN to game server: rtt p50 %v, want well under the internet link's %v", m, oneWay)
	}
}
