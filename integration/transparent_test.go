package integration

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	vnetns "github.com/vishvananda/netns"
	"golang.org/x/net/ipv4"

	"github.com/raicnet/raic/detect"
	"github.com/raicnet/raic/integration/linkem"
	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/pkg/nftnat"
	"github.com/raicnet/raic/router"
)

// Transparent mode in the namespace testbed: the router is the LAN host's
// gateway, the game client is an ordinary UDP program that knows nothing of the
// router, the proxy runs on the proxy host and the game server on the server
// host.

const (
	tpProxyPort = 4500
	tpGamePort  = 27020 // inside CS2's server ports: LC by the shipped app table
	tpAdhocPort = 45123 // in no table: only timing can find it
)

// tpBed is the game topology with a proxy and a transparent router running.
type tpBed struct {
	g *netns.Game
	r *router.Router
}

// startTransparentBed builds the topology, runs before (if not nil) and then
// the proxy and the router.
func startTransparentBed(t *testing.T, links []netns.LinkPair, before func(*netns.Game)) *tpBed {
	return startTransparentBedNAT(t, links, before, true)
}

// startTransparentBedNAT is startTransparentBed with masquerade on the
// uplinks, or off (the testbed routes the LAN's addresses back via ISP 0).
func startTransparentBedNAT(t *testing.T, links []netns.LinkPair, before func(*netns.Game), masquerade bool) *tpBed {
	t.Helper()
	return startTransparentBedConfig(t, netns.GameOptions{Uplinks: 2, Links: links}, before, masquerade, "")
}

// startTransparentBedConfig is startTransparentBedNAT with the topology's
// options (the router gets one [[uplink]] per uplink) and extra TOML appended
// to the router's configuration (after its [[uplink]] tables).
func startTransparentBedConfig(t *testing.T, o netns.GameOptions, before func(*netns.Game), masquerade bool, extra string) *tpBed {
	t.Helper()
	return startTransparentBedKeys(t, o, before, masquerade, "", extra)
}

// startTransparentBedKeys is startTransparentBedConfig with tpKeys added to the
// router's [transparent] table.
func startTransparentBedKeys(t *testing.T, o netns.GameOptions, before func(*netns.Game), masquerade bool, tpKeys, extra string) *tpBed {
	t.Helper()
	g := netns.NewGameForTest(t, o)
	uplinks := len(g.ISPs)
	b := &tpBed{g: g}
	if before != nil {
		before(g)
	}

	// The proxy opens a socket towards the server per session, from whichever
	// thread its goroutine runs on: only a process of its own in the proxy's
	// namespace puts all of them there.
	startTPProxy(t, g, tpProxyPort)

	text := fmt.Sprintf(`
client_id = "gamer"
key = "%s"
proxy = "%s:%d"
[transparent]
enabled = true
lan = "lan0"
tun_address = "198.18.255.254/32"
`, testKey, netns.ProxyAddr, tpProxyPort)
	var ifaces []string
	for i := 0; i < uplinks; i++ {
		ifaces = append(ifaces, fmt.Sprintf("%q", netns.UplinkIface(i)))
	}
	if masquerade {
		text += "masquerade = [" + strings.Join(ifaces, ", ") + "]\n"
	}
	text += tpKeys
	for i := 0; i < uplinks; i++ {
		text += fmt.Sprintf("[[uplink]]\nname = \"isp%d\"\nsource = \"%s\"\n", i, netns.UplinkAddr(i))
	}
	text += extra
	rcfg, err := router.ParseConfig("router.toml", text)
	if err != nil {
		t.Fatal(err)
	}
	// The router is built in its namespace: the TUN device, the rules and the
	// eBPF attachment go there.
	if err := g.Router.Do(func() error { b.r, err = router.New(rcfg, testLogger()); return err }); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(context.Background())
	rdone := make(chan struct{})
	go func() { b.r.Run(rctx); close(rdone) }()
	t.Cleanup(func() {
		rcancel()
		<-rdone
		b.checkClean(t)
	})
	return b
}

// checkClean asserts that the router removed what it installed.
func (b *tpBed) checkClean(t *testing.T) {
	t.Helper()
	out := func(args ...string) string {
		o, _ := b.g.Router.Command(args[0], args[1:]...).CombinedOutput()
		return string(o)
	}
	if rules := out("ip", "rule", "show"); strings.Contains(rules, fmt.Sprint(router.DefaultTable)) ||
		strings.Contains(rules, fmt.Sprint(router.DefaultRulePriority)) {
		t.Errorf("policy rules left after exit:\n%s", rules)
	}
	if links := out("ip", "link", "show"); strings.Contains(links, router.DefaultTUN) {
		t.Errorf("TUN device left after exit:\n%s", links)
	}
	if _, ok := b.masquerade(t); ok {
		t.Errorf("masquerade table %s left after exit", b.natTable())
	}
}

// natTable is the name of the router's masquerade table.
func (b *tpBed) natTable() string { return "raic_" + router.DefaultTUN }

// masquerade reads the router's nf_tables masquerade table over netlink:
// masquerade statements per chain, and whether the table exists.
func (b *tpBed) masquerade(t *testing.T) (map[string]int, bool) {
	t.Helper()
	ns, err := vnetns.GetFromName(b.g.Router.NS)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	masq, ok, err := nftnat.Rules(int(ns), b.natTable())
	if err != nil {
		t.Fatalf("reading the masquerade table: %v", err)
	}
	return masq, ok
}

func (b *tpBed) metric(name string) float64 { return b.r.Metrics().Snapshot()[name] }

// natOn reports whether the router masquerades: its table is installed.
// (With masquerade configured and no kernel NAT the router refuses to start.)
func (b *tpBed) natOn() bool {
	o, err := b.g.Router.Command("ip", "link", "show").CombinedOutput()
	if err != nil || !strings.Contains(string(o), router.DefaultTUN) {
		return false
	}
	ns, err := vnetns.GetFromName(b.g.Router.NS)
	if err != nil {
		return false
	}
	defer ns.Close()
	masq, ok, err := nftnat.Rules(int(ns), b.natTable())
	return err == nil && ok && masq["postrouting"] > 0
}

// udpIn opens a UDP socket inside host h.
func udpIn(t *testing.T, h *netns.Host, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := h.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadBuffer(4 << 20)
	t.Cleanup(func() { c.Close() })
	return c
}

// echoServer answers every checker packet ('C', seq) with ('S', seq) to its
// sender and records, per sequence number, the address it came from.
type echoServer struct {
	conn *net.UDPConn
	mu   sync.Mutex
	from map[uint32]netip.AddrPort
	got  *tally
	sent int
}

func newEchoServer(t *testing.T, h *netns.Host, port uint16, n int) *echoServer {
	s := &echoServer{conn: udpIn(t, h, netip.AddrPortFrom(netns.ServerAddr, port)), from: map[uint32]netip.AddrPort{}, got: newTally(n)}
	go s.serve()
	return s
}

func (s *echoServer) serve() {
	{
		buf := make([]byte, 2048)
		var reply [checkPktLen]byte
		for {
			k, from, err := s.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if k != checkPktLen || buf[0] != 'C' {
				continue
			}
			seq := binary.BigEndian.Uint32(buf[1:])
			s.got.add(buf[:k], 'C')
			s.mu.Lock()
			if _, seen := s.from[seq]; !seen {
				s.from[seq] = from
			}
			s.sent++
			s.mu.Unlock()
			fillPacket(reply[:], 'S', seq)
			s.conn.WriteToUDPAddrPort(reply[:], from)
		}
	}
}

func (s *echoServer) sourceOf(seq uint32) (netip.AddrPort, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.from[seq]
	return a, ok
}

func (s *echoServer) sources() map[netip.Addr]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[netip.Addr]int{}
	for _, a := range s.from {
		out[a.Addr()]++
	}
	return out
}

// gameClient is an unmodified UDP program on the LAN host: an unconnected
// socket that sends to the server's address and reads whatever comes back.
type gameClient struct {
	conn     *net.UDPConn
	got      *tally
	mu       sync.Mutex
	badFroms int
}

func newGameClient(t *testing.T, g *netns.Game, server netip.AddrPort, n int) *gameClient {
	c := &gameClient{conn: udpIn(t, g.LAN, netip.AddrPortFrom(netns.LANAddr, 0)), got: newTally(n)}
	go c.receive(server)
	return c
}

// receive tallies what comes from server and counts what comes from elsewhere.
func (c *gameClient) receive(server netip.AddrPort) {
	{
		buf := make([]byte, 2048)
		for {
			k, from, err := c.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if from != server {
				c.mu.Lock()
				c.badFroms++
				c.mu.Unlock()
				continue
			}
			c.got.add(buf[:k], 'S')
		}
	}
}

func (c *gameClient) send(ctx context.Context, to netip.AddrPort, n int, pps float64) {
	stream(ctx, n, pps, 'C', func(b []byte) { c.conn.WriteToUDPAddrPort(b, to) })
}

// TestTransparentUDPThroughProxy: an unmodified UDP program talks to the game
// server through router and proxy. The server sees the proxy's address, the
// client sees the server's, and with each of two uplinks losing 10% in each
// direction independently, about 1% of packets are lost each way.
func TestTransparentUDPThroughProxy(t *testing.T) {
	loss := linkem.Config{Loss: 0.10}
	b := startTransparentBed(t, []netns.LinkPair{{Up: loss, Down: loss}, {Up: loss, Down: loss}}, nil)
	server := netip.AddrPortFrom(netns.ServerAddr, tpGamePort)
	const n, pps = 1500, 250
	srv := newEchoServer(t, b.g.Server, tpGamePort, n)
	cl := newGameClient(t, b.g, server, n)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl.send(ctx, server, n, pps)
	time.Sleep(300 * time.Millisecond) // the last replies

	up, _, upBad := srv.got.snapshot()
	down, dups, downBad := cl.got.snapshot()
	upLoss := 1 - float64(up)/n
	srv.mu.Lock()
	echoed := srv.sent
	srv.mu.Unlock()
	downLoss := 1 - float64(down)/float64(max(echoed, 1))
	t.Logf("client → server: %d/%d delivered (loss %.2f%%); server → client: %d/%d (loss %.2f%%); expected about 1%% each (0.1²)",
		up, n, 100*upLoss, down, echoed, 100*downLoss)
	for a, k := range srv.sources() {
		if a != netns.ProxyAddr {
			t.Errorf("server saw %d packets from %v, not from the proxy %v", k, a, netns.ProxyAddr)
		}
	}
	cl.mu.Lock()
	badFroms := cl.badFroms
	cl.mu.Unlock()
	if badFroms > 0 {
		t.Errorf("client got %d packets from an address other than the server's", badFroms)
	}
	if upBad+downBad+dups > 0 {
		t.Errorf("corrupted %d/%d, duplicates %d", upBad, downBad, dups)
	}
	// One lossy path alone would lose 10%; two independent copies lose 1%.
	// The bound leaves room for chance (1,500 packets: σ ≈ 0.26%) and a
	// keepalive-induced slow start.
	if upLoss > 0.03 || downLoss > 0.03 {
		t.Errorf("loss %.2f%% up, %.2f%% down: want about 1%%", 100*upLoss, 100*downLoss)
	}
	if got := b.metric("router_transparent_flows_proxied_total"); got != 1 {
		t.Errorf("%v flows proxied, want 1", got)
	}
}

// TestTransparentTCPUsesKernel: a TCP download from the internet host is
// forwarded (and masqueraded where the kernel can) by the kernel; none of it
// reaches the TUN device or the proxy.
func TestTransparentTCPUsesKernel(t *testing.T) {
	b := startTransparentBed(t, nil, nil)
	const size = 8 << 20
	var ln net.Listener
	if err := b.g.Internet.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", netns.InternetAddr.String()+":8080")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer := make(chan netip.AddrPort, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		peer <- c.RemoteAddr().(*net.TCPAddr).AddrPort()
		chunk := make([]byte, 64<<10)
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}()
	var conn net.Conn
	if err := b.g.LAN.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp4", netns.InternetAddr.String()+":8080", 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	start := time.Now()
	got, err := io.Copy(io.Discard, conn)
	if err != nil || got != size {
		t.Fatalf("downloaded %d of %d bytes: %v", got, size, err)
	}
	el := time.Since(start)
	p := <-peer
	// Masquerade is configured, so the router runs only with kernel NAT in
	// force: the download must come to the uplink's address, never to the
	// LAN's (which the testbed would route back through ISP 0 un-NATed).
	want := netns.UplinkAddr(0)
	if masq, ok := b.masquerade(t); !ok || masq["postrouting"] != len(b.g.ISPs) {
		t.Errorf("masquerade table: %v (present %v), want one masquerade per uplink", masq, ok)
	}
	t.Logf("downloaded %d MiB in %v (%.0f Mbit/s); the internet host saw %v", size>>20, el.Round(time.Millisecond), float64(size)*8/el.Seconds()/1e6, p)
	if p.Addr() != want {
		t.Errorf("internet host saw %v, want %v", p.Addr(), want)
	}
	if v := b.metric("router_transparent_tun_packets_total"); v != 0 {
		t.Errorf("%v packets reached the TUN device", v)
	}
	if v := b.metric("router_sessions_created_total"); v != 0 {
		t.Errorf("%v sessions created for a TCP download", v)
	}
}

// TestTransparentAdhocThenLearned: a flow matching no table but with game-like
// timing is found within 2 s and stays on its original path (its source as the
// server sees it never changes); the next flow to the same destination is
// proxied from its first packet.
func TestTransparentAdhocThenLearned(t *testing.T) {
	if app, ok := detectApps(t).Lookup(detect.ProtoUDP, tpAdhocPort, 50000); ok {
		t.Fatalf("port %d is in the app table (%s): pick another", tpAdhocPort, app.Name)
	}
	b := startTransparentBed(t, nil, nil)
	server := netip.AddrPortFrom(netns.ServerAddr, tpAdhocPort)
	const n, pps = 300, 60
	srv := newEchoServer(t, b.g.Server, tpAdhocPort, n)
	cl := newGameClient(t, b.g, server, n)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	done := make(chan struct{})
	go func() { cl.send(ctx, server, n, pps); close(done) }()
	waitFor(t, 3*time.Second, "ad-hoc detection", func() bool { return b.metric("router_transparent_flows_adhoc_total") >= 1 })
	detected := time.Since(start)
	t.Logf("ad-hoc timing found the flow after %v", detected.Round(time.Millisecond))
	if detected > 2*time.Second {
		t.Errorf("detection took %v, want within 2 s", detected)
	}
	// What keeps it on its path and proxies the next flow: a single-flow rule
	// to the main table before the mark rule, and a destination rule.
	rules, _ := b.g.Router.Command("ip", "rule", "show").CombinedOutput()
	flowRule := fmt.Sprintf("%d:\tfrom %s to %s iif lan0 ipproto udp sport", router.DefaultRulePriority, netns.LANAddr, netns.ServerAddr)
	destRule := fmt.Sprintf("%d:\tfrom all to %s iif lan0 ipproto udp dport %d lookup %d", router.DefaultRulePriority+2, netns.ServerAddr, tpAdhocPort, router.DefaultTable)
	if !strings.Contains(string(rules), flowRule) || !strings.Contains(string(rules), destRule) {
		t.Errorf("want rules %q and %q, have:\n%s", flowRule, destRule, rules)
	}
	<-done
	time.Sleep(200 * time.Millisecond)
	first, _ := srv.sourceOf(0)
	srcs := srv.sources()
	path := netns.LANAddr // routed as it is
	if b.natOn() {
		path = netns.UplinkAddr(0) // masqueraded on the main table's uplink
	}
	if len(srcs) != 1 || first.Addr() != path {
		t.Errorf("the in-flight flow changed path: server saw %v (first packet from %v), want all from %v", srcs, first, path)
	}
	up, _, _ := srv.got.snapshot()
	down, _, _ := cl.got.snapshot()
	if up < n*95/100 || down < up*95/100 {
		t.Errorf("in-flight flow disturbed: %d/%d up, %d down", up, n, down)
	}

	// The next flow to the destination: a new socket, so a new source port.
	srv.conn.Close()
	srvB := newEchoServer(t, b.g.Server, tpAdhocPort, 50)
	cl2 := newGameClient(t, b.g, server, 50)
	cl2.send(ctx, server, 50, pps)
	time.Sleep(300 * time.Millisecond)
	src0, ok := srvB.sourceOf(0)
	if !ok {
		t.Fatal("the first packet of the second flow did not arrive")
	}
	if src0.Addr() != netns.ProxyAddr {
		t.Errorf("second flow's first packet came from %v, want the proxy %v", src0, netns.ProxyAddr)
	}
	for a, k := range srvB.sources() {
		if a != netns.ProxyAddr {
			t.Errorf("second flow: %d packets from %v", k, a)
		}
	}
	if got, _, _ := cl2.got.snapshot(); got < 45 {
		t.Errorf("second flow: %d/50 replies", got)
	}
}

// TestTransparentDSCPMidFlightKeepsPath: a flow that starts unmarked goes
// through the kernel; when it begins to carry DSCP EF the classifier marks it
// and the mark steers it into the TUN, but it is already in flight, so the
// router hands its packets back to the kernel and installs a rule that keeps
// the rest off the TUN: the server sees one source throughout.
func TestTransparentDSCPMidFlightKeepsPath(t *testing.T) {
	for _, nat := range []bool{true, false} {
		t.Run(fmt.Sprintf("masquerade=%v", nat), func(t *testing.T) { testDSCPMidFlight(t, nat) })
	}
}

func testDSCPMidFlight(t *testing.T, masquerade bool) {
	b := startTransparentBedNAT(t, nil, nil, masquerade)
	const port = tpAdhocPort + 7
	server := netip.AddrPortFrom(netns.ServerAddr, port)
	const n, pps = 170, 100
	srv := newEchoServer(t, b.g.Server, port, n)
	cl := newGameClient(t, b.g, server, n)
	var pkt [checkPktLen]byte
	for i := 0; i < n; i++ {
		if i == 70 { // 0.7 s in: long enough to count as in flight
			if err := ipv4.NewConn(cl.conn).SetTOS(0xb8); err != nil { // EF
				t.Fatal(err)
			}
		}
		fillPacket(pkt[:], 'C', uint32(i))
		cl.conn.WriteToUDPAddrPort(pkt[:], server)
		time.Sleep(time.Second / pps)
	}
	time.Sleep(200 * time.Millisecond)
	// With masquerade the kernel keeps the connection on its route (keep
	// mark); without, the router hands the flow back.
	wantInFlight := 1.0
	if b.natOn() {
		wantInFlight = 0
	}
	if v := b.metric("router_transparent_flows_in_flight_total"); v != wantInFlight {
		t.Errorf("in-flight flows seen by the router: %v, want %v", v, wantInFlight)
	}
	if v := b.metric("router_transparent_flows_proxied_total"); v != 0 {
		t.Errorf("%v flows proxied, want none", v)
	}
	if srcs := srv.sources(); len(srcs) != 1 {
		t.Errorf("the flow changed path when it got DSCP EF: sources %v", srcs)
	}
	up, _, _ := srv.got.snapshot()
	down, _, _ := cl.got.snapshot()
	if up < n-2 || down < up-2 {
		t.Errorf("flow disturbed: %d/%d up, %d down", up, n, down)
	}
	t.Logf("%d/%d up, %d down; %v packets handed back to the kernel", up, n, down, b.metric("router_transparent_tun_reinjected_total"))
}

// TestTransparentFalseCaptureIsMasqueraded: a LAN program that happens to use
// a game's port as its source port is marked by the eBPF port table (which
// matches source ports too) and steered into the TUN; the userspace table,
// which knows that port is a server port, finds the flow not LC and hands it
// back, and the kernel masquerades it like any other flow.
func TestTransparentFalseCaptureIsMasqueraded(t *testing.T) {
	b := startTransparentBed(t, nil, nil)
	if !b.natOn() {
		t.Skip("kernel NAT unavailable")
	}
	const port = 9999
	if app, ok := detectApps(t).Lookup(detect.ProtoUDP, port, tpGamePort); ok {
		t.Fatalf("port %d is in the app table (%s)", port, app.Name)
	}
	srv := &echoServer{conn: udpIn(t, b.g.Internet, netip.AddrPortFrom(netns.InternetAddr, port)), from: map[uint32]netip.AddrPort{}, got: newTally(50)}
	go srv.serve()
	cl := &gameClient{conn: udpIn(t, b.g.LAN, netip.AddrPortFrom(netns.LANAddr, tpGamePort)), got: newTally(50)}
	go cl.receive(netip.AddrPortFrom(netns.InternetAddr, port))
	cl.send(context.Background(), netip.AddrPortFrom(netns.InternetAddr, port), 50, 100)
	time.Sleep(200 * time.Millisecond)
	if v := b.metric("router_transparent_flows_not_lc_total"); v != 1 {
		t.Errorf("flows captured and found not LC: %v, want 1", v)
	}
	for a, k := range srv.sources() {
		if a != netns.UplinkAddr(0) {
			t.Errorf("%d packets from %v, want all masqueraded to %v", k, a, netns.UplinkAddr(0))
		}
	}
	up, _, _ := srv.got.snapshot()
	down, _, _ := cl.got.snapshot()
	if up < 49 || down < up-1 {
		t.Errorf("%d/50 up, %d down", up, down)
	}
}

// TestTransparentRestartAfterCrash: a run that died left its TUN device, rules,
// routes and masquerade table behind; the next run removes them, installs its
// own, carries a game flow, and on exit leaves nothing.
func TestTransparentRestartAfterCrash(t *testing.T) {
	b := startTransparentBed(t, nil, func(g *netns.Game) {
		for _, c := range [][]string{
			{"ip", "tuntap", "add", "dev", router.DefaultTUN, "mode", "tun"},
			{"ip", "link", "set", router.DefaultTUN, "up"},
			{"ip", "route", "add", "default", "dev", router.DefaultTUN, "table", fmt.Sprint(router.DefaultTable)},
			{"ip", "rule", "add", "pref", fmt.Sprint(router.DefaultRulePriority + 1), "fwmark", "0x5241/0xffff", "lookup", fmt.Sprint(router.DefaultTable)},
			{"ip", "rule", "add", "pref", fmt.Sprint(router.DefaultRulePriority), "iif", "lan0", "to", "198.18.41.2", "lookup", "main"},
			{"ip", "rule", "add", "pref", "100", "iif", "lan0", "lookup", fmt.Sprint(router.DefaultTable)},
		} {
			if out, err := g.Router.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v: %s", c, err, out)
			}
		}
		// A leftover masquerade table, with a rule for a device of no use.
		if err := g.Router.Do(func() error { return nftnat.Masquerade(0, "raic_"+router.DefaultTUN, []string{"gone0"}, nil) }); err != nil {
			t.Fatal(err)
		}
	})
	rules, _ := b.g.Router.Command("ip", "rule", "show").CombinedOutput()
	if strings.Contains(string(rules), "100:") || strings.Contains(string(rules), "to 198.18.41.2 iif lan0 lookup main") {
		t.Errorf("leftover rules not removed:\n%s", rules)
	}
	if masq, ok := b.masquerade(t); !ok || masq["postrouting"] != len(b.g.ISPs) {
		t.Errorf("masquerade table after a restart: %v (present %v), want the leftover replaced by one masquerade per uplink", masq, ok)
	}
	server := netip.AddrPortFrom(netns.ServerAddr, tpGamePort)
	srv := newEchoServer(t, b.g.Server, tpGamePort, 20)
	cl := newGameClient(t, b.g, server, 20)
	cl.send(context.Background(), server, 20, 100)
	time.Sleep(200 * time.Millisecond)
	if src, ok := srv.sourceOf(0); !ok || src.Addr() != netns.ProxyAddr {
		t.Errorf("after a restart the game flow's first packet came from %v (arrived: %v), want the proxy", src, ok)
	}
	if got, _, _ := cl.got.snapshot(); got < 19 {
		t.Errorf("%d/20 replies after a restart", got)
	}
}

func detectApps(t *testing.T) *detect.AppTable {
	c, err := detect.ShippedConfig()
	if err != nil {
		t.Fatal(err)
	}
	return detect.NewAppTable(c)
}
