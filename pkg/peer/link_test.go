package peer

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/rendezvous"
	"github.com/raicnet/raic/pkg/uplink"
	"github.com/raicnet/raic/pkg/wire"
)

var loop0 = netip.MustParseAddrPort("127.0.0.1:0")

// testPeer is one side: a Link over real loopback sockets, a ticker, and the
// packets it received.
type testPeer struct {
	link  *Link
	socks *Sockets
	mu    sync.Mutex
	got   map[uint32]int
	stop  chan struct{}
	done  sync.WaitGroup
}

func (p *testPeer) received(seq uint32) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.got[seq]
}

func (p *testPeer) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.got)
}

func startPeer(t *testing.T, cfg LinkConfig, uplinks int, drop func(int, netip.AddrPort) bool) *testPeer {
	t.Helper()
	addrs := make([]netip.AddrPort, uplinks)
	for i := range addrs {
		addrs[i] = loop0
	}
	socks, err := ListenSockets(addrs)
	if err != nil {
		t.Fatal(err)
	}
	socks.Drop = drop
	p := &testPeer{socks: socks, got: map[uint32]int{}, stop: make(chan struct{})}
	cfg.Paths.Uplinks = uplinks
	cfg.Paths.Health = uplink.HealthConfig{PingInterval: 50 * time.Millisecond, DownAfter: 200 * time.Millisecond}
	cfg.Deliver = func(b []byte) {
		if len(b) < 4 {
			return
		}
		seq := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		p.mu.Lock()
		p.got[seq]++
		p.mu.Unlock()
	}
	p.link, err = NewLink(cfg, socks, mono.Now())
	if err != nil {
		t.Fatal(err)
	}
	socks.Serve(p.link)
	p.done.Add(1)
	go func() {
		defer p.done.Done()
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-tk.C:
				p.link.Tick(mono.Now())
			}
		}
	}()
	t.Cleanup(func() {
		close(p.stop)
		p.done.Wait()
		socks.Close()
	})
	return p
}

// sendSeq sends packets numbered from..to-1, one every gap.
func (p *testPeer) sendSeq(t *testing.T, from, to uint32, gap time.Duration) {
	t.Helper()
	buf := make([]byte, 160)
	for s := from; s < to; s++ {
		buf[0], buf[1], buf[2], buf[3] = byte(s>>24), byte(s>>16), byte(s>>8), byte(s)
		if err := p.link.Send(buf, mono.Now()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(gap)
	}
}

func waitFor(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func mustKey(t *testing.T) wire.Key {
	k, err := wire.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestLinkStaticAddresses: A knows B's two addresses from its config; B knows
// nothing and learns A's from A's authenticated datagrams. Every packet is
// delivered exactly once each way over the 2×2 paths, and a path cut later
// (A's uplink 0) leaves the targets once its health notices, without loss.
func TestLinkStaticAddresses(t *testing.T) {
	key := mustKey(t)
	b := startPeer(t, LinkConfig{LocalID: "bob", PeerID: "alice", Key: key}, 2, nil)
	var cut atomic.Bool
	a := startPeer(t, LinkConfig{LocalID: "alice", PeerID: "bob", Key: key,
		Static: []netip.AddrPort{b.socks.Addr(0), b.socks.Addr(1)}}, 2,
		func(i int, _ netip.AddrPort) bool { return i == 0 && cut.Load() })

	a.sendSeq(t, 0, 50, time.Millisecond)
	waitFor(t, "B to learn A's two addresses", 2*time.Second, func() bool { return b.link.Paths().Len() == 4 })
	b.sendSeq(t, 0, 50, time.Millisecond)
	waitFor(t, "50 packets each way", 2*time.Second, func() bool { return a.count() == 50 && b.count() == 50 })
	for s := uint32(0); s < 50; s++ {
		if n := b.received(s); n != 1 {
			t.Fatalf("B got packet %d %d times", s, n)
		}
		if n := a.received(s); n != 1 {
			t.Fatalf("A got packet %d %d times", s, n)
		}
	}
	if c := b.link.Counters(); c.Dups == 0 {
		t.Errorf("B dropped no duplicate copy: %+v", c)
	}

	cut.Store(true)
	waitFor(t, "A's uplink 0 paths to go down", 2*time.Second, func() bool {
		for _, tg := range a.link.Paths().Targets(mono.Now(), nil) {
			if tg.Local == 0 {
				return false
			}
		}
		return true
	})
	before := a.link.Counters().Copies
	a.sendSeq(t, 100, 150, time.Millisecond)
	waitFor(t, "B to get 50 more", 2*time.Second, func() bool { return b.count() == 100 })
	if c := a.link.Counters().Copies - before; c != 100 {
		t.Errorf("A sent %d copies of 50 packets with uplink 0 down, want 100 (2 paths)", c)
	}
}

// TestLinkRefusesReplayAndStrangers: a captured datagram sent again is not
// delivered twice, and datagrams sealed with another key are dropped.
func TestLinkRefusesReplayAndStrangers(t *testing.T) {
	key := mustKey(t)
	var delivered atomic.Int64
	var sent [][]byte
	var mu sync.Mutex
	capture := senderFunc(func(_ int, b []byte, _ netip.AddrPort) error {
		mu.Lock()
		sent = append(sent, append([]byte(nil), b...))
		mu.Unlock()
		return nil
	})
	peerAddr := netip.MustParseAddrPort("198.18.70.2:4000")
	a, err := NewLink(LinkConfig{LocalID: "alice", PeerID: "bob", Key: key, Paths: Config{Uplinks: 1},
		Static: []netip.AddrPort{peerAddr}, Deliver: func([]byte) {}}, capture, 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewLink(LinkConfig{LocalID: "bob", PeerID: "alice", Key: key, Paths: Config{Uplinks: 1},
		Deliver: func([]byte) { delivered.Add(1) }}, senderFunc(func(int, []byte, netip.AddrPort) error { return nil }), 0)
	if err != nil {
		t.Fatal(err)
	}
	a.Send([]byte("hello"), 1)
	a.Send([]byte("again"), 2)
	from := netip.MustParseAddrPort("198.18.60.2:5000")
	for round := 0; round < 3; round++ {
		for _, dg := range sent {
			b.Receive(0, from, append([]byte(nil), dg...), 3)
		}
	}
	if delivered.Load() != 2 {
		t.Fatalf("delivered %d, want 2 (each packet once despite replays)", delivered.Load())
	}
	// A stranger with another key, claiming to be alice.
	var sent2 [][]byte
	m, _ := NewLink(LinkConfig{LocalID: "alice", PeerID: "bob", Key: mustKey(t), Paths: Config{Uplinks: 1},
		Static: []netip.AddrPort{peerAddr}, Deliver: func([]byte) {}},
		senderFunc(func(_ int, b []byte, _ netip.AddrPort) error {
			sent2 = append(sent2, append([]byte(nil), b...))
			return nil
		}), 0)
	m.Send([]byte("forged"), 4)
	for _, dg := range sent2 {
		b.Receive(0, from, dg, 5)
	}
	if delivered.Load() != 2 || b.Counters().Unauth == 0 {
		t.Fatalf("forged datagram: delivered %d, counters %+v", delivered.Load(), b.Counters())
	}
	if b.Paths().Len() != 1 {
		t.Fatalf("B has %d paths, want the 1 learned from alice's genuine datagrams", b.Paths().Len())
	}
}

type senderFunc func(int, []byte, netip.AddrPort) error

func (f senderFunc) SendTo(i int, b []byte, to netip.AddrPort) error { return f(i, b, to) }

func startRendezvous(t *testing.T, keys map[string]wire.Key) *rendezvous.Server {
	t.Helper()
	text := "listen = \"127.0.0.1:0\"\nlog_level = \"error\"\n"
	for id, k := range keys {
		text += fmt.Sprintf("[[peer]]\nid = %q\nkey = %q\n", id, k.String())
	}
	cfg, err := rendezvous.ParseConfig("rv.toml", text)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := rendezvous.NewServer(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return srv
}

// TestLinkRendezvous: neither side knows the other's address; the
// rendezvous introduces them and they talk directly. Then, with every direct
// datagram dropped, both fail to punch and the rendezvous relays.
func TestLinkRendezvous(t *testing.T) {
	for _, blocked := range []bool{false, true} {
		t.Run(fmt.Sprintf("blocked=%v", blocked), func(t *testing.T) {
			pairKey, ka, kb := mustKey(t), mustKey(t), mustKey(t)
			srv := startRendezvous(t, map[string]wire.Key{"alice": ka, "bob": kb})
			rvAddr := srv.Addr()
			direct := func(_ int, to netip.AddrPort) bool { return blocked && to != rvAddr }
			mk := func(id, peer string, k wire.Key) *testPeer {
				c, err := rendezvous.NewClient(id, k, peer)
				if err != nil {
					t.Fatal(err)
				}
				return startPeer(t, LinkConfig{LocalID: id, PeerID: peer, Key: pairKey, Rendezvous: c,
					RendezvousAddr: rvAddr, RegisterInterval: 100 * time.Millisecond, PunchTimeout: 500 * time.Millisecond}, 2, direct)
			}
			a, b := mk("alice", "bob", ka), mk("bob", "alice", kb)
			waitFor(t, "introductions", 3*time.Second, func() bool { return a.link.Paths().Len() == 4 && b.link.Paths().Len() == 4 })
			if blocked {
				waitFor(t, "the relay", 5*time.Second, func() bool {
					return a.link.RelayActive(mono.Now()) && b.link.RelayActive(mono.Now())
				})
			}
			a.sendSeq(t, 0, 100, time.Millisecond)
			b.sendSeq(t, 0, 100, time.Millisecond)
			waitFor(t, "100 packets each way", 3*time.Second, func() bool { return a.count() == 100 && b.count() == 100 })
			snap := srv.Metrics().Snapshot()
			relayed := snap["raic_rendezvous_relayed_total"]
			if blocked && (relayed < 200 || snap["raic_rendezvous_relay_pairs"] != 1) {
				t.Fatalf("blocked: relayed %v, relay pairs %v; want ≥ 200 and 1", relayed, snap["raic_rendezvous_relay_pairs"])
			}
			if !blocked && relayed != 0 {
				t.Fatalf("punching worked but the rendezvous relayed %v datagrams", relayed)
			}
			if !blocked && (a.link.Counters().RelaySent != 0 || snap["raic_rendezvous_relay_refused_total"] != 0) {
				t.Fatalf("relay used although punching worked: %+v", a.link.Counters())
			}
		})
	}
}

// startMuxPeer is a side whose link delivers to a Mux.
func startMuxPeer(t *testing.T, cfg LinkConfig, uplinks int, mc MuxConfig) (*Link, *Sockets, *Mux) {
	t.Helper()
	addrs := make([]netip.AddrPort, uplinks)
	for i := range addrs {
		addrs[i] = loop0
	}
	socks, err := ListenSockets(addrs)
	if err != nil {
		t.Fatal(err)
	}
	mux, err := NewMux(mc)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Paths.Uplinks = uplinks
	cfg.Deliver = mux.Deliver
	l, err := NewLink(cfg, socks, mono.Now())
	if err != nil {
		t.Fatal(err)
	}
	mux.Attach(l)
	socks.Serve(l)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				l.Tick(mono.Now())
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done; socks.Close(); mux.Close() })
	return l, socks, mux
}

// TestVPortsCarryFlowsToThePeersService: two clients on A's virtual port
// reach an echo service on B's side through the link, each as its own flow.
func TestVPortsCarryFlowsToThePeersService(t *testing.T) {
	echo, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(loop0))
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	sources := make(chan netip.AddrPort, 1000)
	echoDone := make(chan struct{})
	go func() {
		defer close(echoDone)
		buf := make([]byte, 2048)
		for {
			n, from, err := echo.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			sources <- from
			echo.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	key := mustKey(t)
	_, bs, _ := startMuxPeer(t, LinkConfig{LocalID: "bob", PeerID: "alice", Key: key}, 2,
		MuxConfig{Services: []Service{{ID: 7, Target: echo.LocalAddr().(*net.UDPAddr).AddrPort()}}})
	_, _, am := startMuxPeer(t, LinkConfig{LocalID: "alice", PeerID: "bob", Key: key,
		Static: []netip.AddrPort{bs.Addr(0), bs.Addr(1)}}, 2, MuxConfig{VPorts: []VPort{{ID: 7, Listen: loop0}}})
	vp, _ := am.ListenAddr(7)
	var clients [2]*net.UDPConn
	for i := range clients {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(vp))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients[i] = c
	}
	buf := make([]byte, 2048)
	for round := 0; round < 20; round++ {
		for i, c := range clients {
			msg := fmt.Sprintf("client %d round %d", i, round)
			c.Write([]byte(msg))
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("client %d round %d: %v", i, round, err)
			}
			if string(buf[:n]) != msg {
				t.Fatalf("client %d got %q, want %q", i, buf[:n], msg)
			}
		}
	}
	echo.Close()
	<-echoDone
	close(sources)
	distinct := map[netip.AddrPort]bool{}
	for s := range sources {
		distinct[s] = true
	}
	if len(distinct) != 2 {
		t.Fatalf("the service saw %d source addresses, want one per client flow (2)", len(distinct))
	}
}
