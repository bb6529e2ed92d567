package router

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/songgao/water"

	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/nat"
	"github.com/raicnet/raic/pkg/peer"
	"github.com/raicnet/raic/pkg/wire"
)

// siteConfig is a peer-only router in transparent mode whose peer's LAN is
// peerLAN and whose own is ownLAN.
func siteConfig(self, other string, port, otherPort int, key wire.Key, ownLAN, peerLAN string) string {
	return peerOnlyConfig(self, other, port, otherPort, key, fmt.Sprintf("lan = [%q]\n\n[transparent]\nenabled = true\nlan = \"lan0\"\nlan_prefixes = [%q]\n", peerLAN, ownLAN))
}

// TestPeerLANConfigCheck: lan needs transparent mode, valid IPv4 networks,
// none overlapping this router's LAN or another peer's; each error names
// its file, line and key.
func TestPeerLANConfigCheck(t *testing.T) {
	key := wire.Key{7}
	good := siteConfig("alice", "bob", 4611, 4612, key, "198.18.170.0/24", "198.18.171.0/24")
	c, err := ParseConfig("r.toml", good)
	if err != nil {
		t.Fatalf("site config refused: %v", err)
	}
	if !c.peerOnly() || len(c.Peers[0].lan) != 1 || c.Peers[0].lan[0] != netip.MustParsePrefix("198.18.171.0/24") {
		t.Fatalf("peer-only %v, lan %v", c.peerOnly(), c.Peers[0].lan)
	}
	for _, tc := range []struct{ text, want string }{
		{strings.Replace(good, "enabled = true", "enabled = false", 1), "r.toml:16: peer.0.lan: needs transparent mode"},
		{strings.Replace(good, `lan = ["198.18.171.0/24"]`, `lan = ["198.18.171.1/24"]`, 1), "r.toml:16: peer.0.lan.0: \"198.18.171.1/24\" is not a network"},
		{strings.Replace(good, `lan = ["198.18.171.0/24"]`, `lan = ["2001:db8::/64"]`, 1), "r.toml:16: peer.0.lan.0: 2001:db8::/64: only IPv4"},
		{strings.Replace(good, `lan = ["198.18.171.0/24"]`, `lan = ["198.18.170.128/25"]`, 1), "r.toml:16: peer.0.lan.0: 198.18.170.128/25 overlaps this router's LAN 198.18.170.0/24"},
		{strings.Replace(good, `lan = ["198.18.171.0/24"]`, `lan = ["198.18.171.0/24", "198.18.171.64/26"]`, 1), "r.toml:16: peer.0.lan.1: 198.18.171.64/26 overlaps 198.18.171.0/24 (peer.0.lan.0)"},
		{strings.Replace(good, `lan_prefixes = ["198.18.170.0/24"]`, `lan_prefixes = ["lan"]`, 1), "transparent.lan_prefixes.0: \"lan\" is not a network"},
	} {
		_, err := ParseConfig("r.toml", tc.text)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v, want %q", err, tc.want)
		}
	}
}

// fakeTUN records the packets written to it.
type fakeTUN struct {
	mu   sync.Mutex
	pkts [][]byte
	keep bool // false: count only (the allocation test)
	n    int
}

func (f *fakeTUN) Read([]byte) (int, error) { return 0, io.EOF }
func (f *fakeTUN) Close() error             { return nil }
func (f *fakeTUN) Write(b []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	if f.keep {
		f.pkts = append(f.pkts, append([]byte(nil), b...))
	}
	return len(b), nil
}

func (f *fakeTUN) take() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.pkts
	f.pkts = nil
	return p
}

// newLANSide builds a router of config text with transparent mode's
// userspace side only: New sets up no kernel state, and the LAN is not set up.
func newLANSide(t testing.TB, text string) (*Router, *transparent) {
	t.Helper()
	cfg, err := ParseConfig("r.toml", text)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Transparent.Enabled = false
	r, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Transparent.Enabled = true
	tp, err := newTransparent(r)
	if err != nil {
		t.Fatal(err)
	}
	return r, tp
}

// newSiteRouter builds a site router with transparent mode's userspace side
// only (no kernel setup) and a fake TUN device, and starts its peer.
func newSiteRouter(t testing.TB, ctx context.Context, text string) (*Router, *fakeTUN) {
	t.Helper()
	r, tp := newLANSide(t, text)
	tun := &fakeTUN{keep: true}
	tp.tun = &water.Interface{ReadWriteCloser: tun}
	r.tp = tp
	if err := r.setupLAN(tp); err != nil {
		t.Fatal(err)
	}
	if err := r.startPeers(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.closePeers(); r.wg.Wait() })
	return r, tun
}

var (
	siteA = netip.MustParseAddrPort("198.18.170.2:5060")
	siteB = netip.MustParseAddrPort("198.18.171.2:5060")
)

// TestPeerLANSiteToSite: two peer-only routers in transparent mode on
// loopback. A packet a host of A's LAN sends to B's LAN reaches B's TUN
// device as the packet the host sent (addresses, TOS, payload, checksums),
// and B's reply comes back the same way; flows are counted by class. What a
// peer sends outside what both sides configured is refused and counted:
// destinations outside B's LAN, B's broadcast address, sources outside A's
// LAN; so are malformed and unknown frames, fragments and packets from
// outside A's own LAN.
func TestPeerLANSiteToSite(t *testing.T) {
	needLoopback2(t)
	key, _ := wire.GenerateKey()
	const pa, pb = 4641, 4642
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ra, tunA := newSiteRouter(t, ctx, siteConfig("alice", "bob", pa, pb, key, "198.18.170.0/24", "198.18.171.0/24"))
	rb, tunB := newSiteRouter(t, ctx, siteConfig("bob", "alice", pb, pa, key, "198.18.171.0/24", "198.18.170.0/24"))
	if got := ra.tp.steering().Prefixes; len(got) != 1 || got[0] != netip.MustParsePrefix("198.18.171.0/24") {
		t.Fatalf("A steers %v into its TUN, want bob's LAN only", got)
	}
	waitPackets := func(tun *fakeTUN, n int) [][]byte {
		t.Helper()
		var got [][]byte
		deadline := time.Now().Add(3 * time.Second)
		for len(got) < n {
			got = append(got, tun.take()...)
			if time.Now().After(deadline) {
				t.Fatalf("%d packets written to the TUN, want %d", len(got), n)
			}
			time.Sleep(5 * time.Millisecond)
		}
		return got
	}
	check := func(pkt []byte, src, dst netip.AddrPort, tos uint8, payload string) {
		t.Helper()
		var p nat.Packet
		if err := nat.Parse(pkt, &p); err != nil {
			t.Fatal(err)
		}
		if p.Src != src || p.Dst != dst || pkt[1] != tos || string(p.Payload) != payload || !nat.UDPChecksumOK(pkt) || nat.Checksum(pkt[:20]) != 0 {
			t.Fatalf("packet %v → %v tos %#x %q (checksums %v %v), want %v → %v tos %#x %q", p.Src, p.Dst, pkt[1], p.Payload,
				nat.UDPChecksumOK(pkt), nat.Checksum(pkt[:20]) == 0, src, dst, tos, payload)
		}
	}
	build := func(src, dst netip.AddrPort, tos uint8, payload string) []byte {
		b := make([]byte, 2048)
		n, _ := nat.Build(b, src, dst, 7, []byte(payload))
		b[1] = tos
		b[10], b[11] = 0, 0
		cs := nat.Checksum(b[:20])
		b[10], b[11] = byte(cs>>8), byte(cs)
		return b[:n]
	}
	// The first packets go before the paths answer keepalives (static
	// addresses are tried at once); send until one arrives.
	deadline := time.Now().Add(5 * time.Second)
	var got [][]byte
	for len(got) == 0 {
		ra.tp.fromLAN(build(siteA, siteB, 0xb8, "INVITE"), mono.Now())
		time.Sleep(20 * time.Millisecond)
		got = tunB.take()
		if time.Now().After(deadline) {
			t.Fatal("nothing from A's LAN reached B's TUN")
		}
	}
	check(got[0], siteA, siteB, 0xb8, "INVITE")
	sentA := len(got)
	rb.tp.fromLAN(build(siteB, siteA, 0, "200 OK"), mono.Now())
	check(waitPackets(tunA, 1)[0], siteB, siteA, 0, "200 OK")

	// RTP, in the classifier's RTP range, 100 packets each way.
	rtpA, rtpB := netip.MustParseAddrPort("198.18.170.2:20000"), netip.MustParseAddrPort("198.18.171.2:22000")
	for i := 0; i < 100; i++ {
		ra.tp.fromLAN(build(rtpA, rtpB, 0xb8, fmt.Sprint("rtp ", i)), mono.Now())
		rb.tp.fromLAN(build(rtpB, rtpA, 0xb8, fmt.Sprint("rtp ", i)), mono.Now())
	}
	waitPackets(tunB, 100)
	waitPackets(tunA, 100)
	ma, mb := ra.Metrics().Snapshot(), rb.Metrics().Snapshot()
	for _, c := range []struct {
		m      map[string]float64
		series string
		want   float64
	}{
		{ma, `router_peer_lan_flows_total{peer="bob",class="sip",dir="to_peer"}`, 1},
		{ma, `router_peer_lan_packets_total{peer="bob",class="sip",dir="to_peer"}`, float64(sentA)},
		{mb, `router_peer_lan_flows_total{peer="alice",class="sip",dir="from_peer"}`, 1},
		{mb, `router_peer_lan_flows_total{peer="alice",class="sip",dir="to_peer"}`, 1},
		{ma, `router_peer_lan_packets_total{peer="bob",class="sip",dir="from_peer"}`, 1},
		{ma, `router_peer_lan_packets_total{peer="bob",class="rtp",dir="to_peer"}`, 100},
		{mb, `router_peer_lan_packets_total{peer="alice",class="rtp",dir="from_peer"}`, 100},
		{mb, `router_peer_lan_packets_total{peer="alice",class="rtp",dir="to_peer"}`, 100},
		{ma, `router_peer_lan_packets_total{peer="bob",class="rtp",dir="from_peer"}`, 100},
	} {
		if v := c.m[c.series]; v != c.want {
			t.Errorf("%s = %v, want %v", c.series, v, c.want)
		}
	}

	// A peer that sends what B did not agree to: frames sealed by A's link
	// as a peer would, outside B's LAN or from outside A's.
	link := ra.peers[0].link
	frame := func(src, dst netip.AddrPort) []byte {
		b := make([]byte, 256)
		n, err := peer.PutLANFrame(b, &peer.LANFrame{Src: src, Dst: dst, Payload: []byte("relay me")})
		if err != nil {
			t.Fatal(err)
		}
		return b[:n]
	}
	for _, f := range [][]byte{
		frame(siteA, netip.MustParseAddrPort("198.18.172.9:5060")),   // not B's LAN
		frame(siteA, netip.MustParseAddrPort("198.18.171.255:5060")), // B's broadcast
		frame(siteA, netip.MustParseAddrPort("198.18.171.0:5060")),   // B's network address
		frame(netip.MustParseAddrPort("198.18.99.2:5060"), siteB),    // not A's LAN
		{peer.FrameLAN, 0, 1}, // malformed
		{9, 1, 2, 3},          // no such kind
	} {
		link.Send(f, mono.Now())
	}
	drop := func(m map[string]float64, p, reason string) float64 {
		return m[fmt.Sprintf(`router_peer_lan_dropped_total{peer=%q,reason=%q}`, p, reason)]
	}
	deadline = time.Now().Add(3 * time.Second)
	for {
		mb = rb.Metrics().Snapshot()
		if drop(mb, "alice", "refused_destination") == 3 && drop(mb, "alice", "refused_source") == 1 &&
			drop(mb, "alice", "malformed") == 1 && drop(mb, "alice", "unknown_kind") == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("B's drops: destination %v (want 3), source %v (want 1), malformed %v, unknown kind %v (want 1 each)",
				drop(mb, "alice", "refused_destination"), drop(mb, "alice", "refused_source"), drop(mb, "alice", "malformed"), drop(mb, "alice", "unknown_kind"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if p := tunB.take(); len(p) != 0 {
		t.Fatalf("B wrote %d refused packets to its LAN", len(p))
	}

	// What A's own LAN sends that cannot go: a fragment, a source outside
	// A's LAN; TCP to B's LAN keeps the kernel's path.
	frag := build(siteA, siteB, 0, "fragment")
	frag[6] = 0x20 // more fragments
	ra.tp.fromLAN(frag, mono.Now())
	ra.tp.fromLAN(build(netip.MustParseAddrPort("198.18.99.2:5060"), siteB, 0, "spoofed"), mono.Now())
	tcp := build(siteA, siteB, 0, "tcp")
	tcp[9] = nat.ProtoTCP
	reinjected := ra.tp.m.reinjected.Load()
	ra.tp.fromLAN(tcp, mono.Now())
	ma = ra.Metrics().Snapshot()
	if drop(ma, "bob", "fragment") != 1 || drop(ma, "bob", "refused_source") != 1 || ra.tp.m.reinjected.Load() != reinjected+1 {
		t.Errorf("A: fragment drops %v, source drops %v (want 1 each), reinjected %d (want 1)",
			drop(ma, "bob", "fragment"), drop(ma, "bob", "refused_source"), ra.tp.m.reinjected.Load()-reinjected)
	}
	// A flow to a server elsewhere is not the peer's: with no proxy it keeps
	// the kernel's path.
	ra.tp.fromLAN(build(siteA, netip.MustParseAddrPort("198.18.41.2:27020"), 0, "game"), mono.Now())
	if ra.tp.m.reinjected.Load() != reinjected+2 || ra.tp.m.proxied.Load() != 0 {
		t.Errorf("a flow outside the peer's LAN on a peer-only router: reinjected %d, proxied %d",
			ra.tp.m.reinjected.Load()-reinjected, ra.tp.m.proxied.Load())
	}
}

// newSiteSink is alice's site router (ports pa, pb) whose TUN device only
// counts what it is written, running until the test ends, and a captured
// packet from A's LAN to B's with a 160-byte payload.
func newSiteSink(tb testing.TB, pa, pb int) (*Router, *fakeTUN, []byte) {
	tb.Helper()
	key, _ := wire.GenerateKey()
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	r, tun := newSiteRouter(tb, ctx, siteConfig("alice", "bob", pa, pb, key, "198.18.170.0/24", "198.18.171.0/24"))
	tun.keep = false
	b := make([]byte, 2048)
	n, _ := nat.Build(b, siteA, siteB, 1, make([]byte, 160))
	return r, tun, b[:n]
}

// TestPeerLANPathsDoNotAllocate: a captured packet to the peer's LAN is
// parsed, framed, sealed and sent, and a frame from the peer is checked,
// rebuilt and written to the TUN device, without allocating.
func TestPeerLANPathsDoNotAllocate(t *testing.T) {
	r, tun, pkt := newSiteSink(t, 4651, 4652)
	for i := 0; i < 100; i++ {
		r.tp.fromLAN(pkt, mono.Now())
	}
	sent := r.peers[0].link.Counters().Sent
	const runs = 1000
	if a := testing.AllocsPerRun(runs, func() { r.tp.fromLAN(pkt, mono.Now()) }); a != 0 {
		t.Errorf("TUN read → LAN frame → seal → send: %v allocations per packet", a)
	}
	if got := r.peers[0].link.Counters().Sent - sent; got != runs+1 {
		t.Fatalf("%d packets sent to the peer, want %d", got, runs+1)
	}
	fb := make([]byte, 2048)
	fn, _ := peer.PutLANFrame(fb, &peer.LANFrame{TOS: 0xb8, Src: siteB, Dst: siteA, Payload: make([]byte, 160)})
	lp := r.peers[0].lan
	for i := 0; i < 100; i++ {
		r.peers[0].deliver(fb[:fn])
	}
	before := tun.n
	if a := testing.AllocsPerRun(runs, func() { r.peers[0].deliver(fb[:fn]) }); a != 0 {
		t.Errorf("LAN frame → check → rebuild → TUN write: %v allocations per packet", a)
	}
	if got := tun.n - before; got != runs+1 {
		t.Fatalf("%d packets written to the TUN, want %d (drops %v)", got, runs+1, lp.drops)
	}
}

// TestPeerLANOwnFromInterface: without lan_prefixes, this router's LAN is
// the LAN interface's networks (here lo's 127.0.0.0/8); the router's own
// address, the network and the broadcast address are never destinations;
// a peer's lan overlapping them stops the start.
func TestPeerLANOwnFromInterface(t *testing.T) {
	key := wire.Key{7}
	text := strings.Replace(siteConfig("alice", "bob", 4661, 4662, key, "198.18.170.0/24", "198.18.171.0/24"),
		"lan = \"lan0\"\nlan_prefixes = [\"198.18.170.0/24\"]", "lan = \"lo\"", 1)
	build := func(text string) (*Router, *transparent, error) {
		r, tp := newLANSide(t, text)
		return r, tp, r.setupLAN(tp)
	}
	r, _, err := build(text)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.lan.own) != 1 || r.lan.own[0] != netip.MustParsePrefix("127.0.0.0/8") {
		t.Fatalf("own LAN %v, want lo's 127.0.0.0/8", r.lan.own)
	}
	for a, want := range map[string]bool{"127.0.0.1": false, "127.0.0.2": true, "127.0.0.0": false, "127.255.255.255": false,
		"198.18.171.2": false, "224.0.0.1": false, "255.255.255.255": false} {
		if got := r.lan.acceptsDestination(netip.MustParseAddr(a)); got != want {
			t.Errorf("destination %s accepted %v, want %v", a, got, want)
		}
	}
	_, _, err = build(strings.Replace(text, `lan = ["198.18.171.0/24"]`, `lan = ["127.0.0.0/16"]`, 1))
	if err == nil || !strings.Contains(err.Error(), "peer bob: lan 127.0.0.0/16 overlaps this router's LAN 127.0.0.0/8 (from the networks of lo)") {
		t.Fatalf("a peer's lan overlapping lo's network: %v", err)
	}
}

// BenchmarkPeerLAN is the per-packet cost of both site-to-site paths: a
// captured packet to the peer's LAN (parse, flow lookup, frame, seal, send
// on 2 uplinks to 2 static addresses: 4 copies) and a frame from the peer
// (check, flow lookup, rebuild, TUN write to a counting sink).
func BenchmarkPeerLAN(b *testing.B) {
	r, _, pkt := newSiteSink(b, 4671, 4672)
	fb := make([]byte, 2048)
	fn, _ := peer.PutLANFrame(fb, &peer.LANFrame{Src: siteB, Dst: siteA, Payload: make([]byte, 160)})
	b.Run("fromLAN(parse+lookup+frame+seal+send)", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r.tp.fromLAN(pkt, mono.Now())
		}
	})
	b.Run("fromPeer(check+lookup+rebuild+TUN write)", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r.peers[0].deliver(fb[:fn])
		}
	})
}
