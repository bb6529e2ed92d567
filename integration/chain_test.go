package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/raicnet/raic/integration/linkem"
	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/intermediate"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/proxy"
	"github.com/raicnet/raic/router"
	"github.com/raicnet/raic/simple"
)

// The chain tests carry a game over two paths whose every hop loses 10% of the
// datagrams in each direction, independently:
//
//	router up0 ─[10%]─ hop0 ─[10%]─┐
//	                               proxy ── game server
//	router up1 ─[10%]─ hop1 ─[10%]─┘
//
// With simple relays as hop0 and hop1 nothing between the router and the proxy
// can replace a lost copy: a packet survives a path with (1-p)² and is lost when
// both paths lose it. With one intermediate as both hop0 and hop1, the copies
// lost on the first hops are replaced by fresh ones after it: a packet is lost
// only when both copies die on the same side of the intermediate. Each test
// checks the game's loss in both directions against that theory (binomial bound,
// 4.5 σ), that no packet reaches the server or the game twice, and, with a
// packet socket in the proxy's namespace, that every datagram arriving there
// carries the router's packet ID for the game packet inside it.
//
// Every lossy hop is a host of its own running a linkem.TUNLink (this kernel has
// no netem). The proxy and the simple relays open sockets on their goroutines, so
// they run as child processes inside their namespaces (hopChild); the
// router and the intermediate open all their sockets in New, so they run in this
// process, built inside their namespaces.

const (
	chainLoss    = 0.10
	chainPackets = 4000
	chainRate    = 1000 // packets per second, each way
	chainHopPort = 4600 // where the relays and the intermediate listen
	chainPxPort  = 4500 // where the proxy listens
	chainSrvPort = 27015
	chainMidID   = "mid"
)

var chainMidKey = wire.Key{0x4d, 0x49, 0x44}

// chainNet is the chain topology. Addresses, one /24 per link:
//
//	router up0 198.18.60.1 ─ w0a ─ 198.18.61.2 in0  hop0  out0 198.18.62.1 ─ w0b ─ 198.18.63.2 e0 proxy
//	router up1 198.18.64.1 ─ w1a ─ 198.18.65.2 in1  hop1  out1 198.18.66.1 ─ w1b ─ 198.18.67.2 e1 proxy
//	proxy  srv 198.18.70.1 ─ 198.18.70.2 eth0 server
//
// Each path has its own addresses end to end, so plain destination routes keep
// the two paths apart with no policy routing.
type chainNet struct {
	net                *netns.Net
	router, proxy, srv *netns.Host
	hops               [2]*netns.Host // the same host twice for an intermediate
	upAddr, hopIn      [2]netip.Addr
	hopOut, proxyAddr  [2]netip.Addr
	serverAddr         netip.Addr
	emu                []*linkem.TUNLink
	linkNames          []string
	seed               uint64 // of the last emulated link direction; fixed, so a run can be replayed
}

func chainAddr(c, d byte) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, c, d}) }

func chainPrefix(c, d byte) netip.Prefix { return netip.PrefixFrom(chainAddr(c, d), 24) }

// newChainNet builds the topology; with oneHop the two paths share one middle
// host (the intermediate), else each has its own (a simple relay each).
func newChainNet(t *testing.T, oneHop bool) *chainNet {
	t.Helper()
	n := netns.NewForTest(t) // skips without root
	cn := &chainNet{net: n, serverAddr: chainAddr(70, 2), seed: 7000}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	host := func(name string) *netns.Host {
		h, err := n.AddHost(name)
		must(err)
		return h
	}
	cn.router, cn.proxy, cn.srv = host("router"), host("proxy"), host("server")
	if oneHop {
		cn.hops[0] = host("mid")
		cn.hops[1] = cn.hops[0]
	} else {
		cn.hops[0], cn.hops[1] = host("relay0"), host("relay1")
	}
	// lossyLink joins a and b through a wire host that drops chainLoss of the
	// datagrams each way: a is .1 on net c1, b is .2 on net c2.
	lossyLink := func(name string, a *netns.Host, ifA string, c1 byte, b *netns.Host, ifB string, c2 byte) {
		w := host(name)
		must(n.Link(a, ifA, chainPrefix(c1, 1), w, "a", chainPrefix(c1, 2)))
		must(n.Link(w, "b", chainPrefix(c2, 1), b, ifB, chainPrefix(c2, 2)))
		must(a.AddRoute(chainPrefix(c2, 0), chainAddr(c1, 2), "", 0))
		must(b.AddRoute(chainPrefix(c1, 0), chainAddr(c2, 1), "", 0))
		up := linkem.Config{Loss: chainLoss, Seed: cn.seed + 1}
		down := linkem.Config{Loss: chainLoss, Seed: cn.seed + 2}
		cn.seed += 2
		e, err := linkem.AttachTUN(w.NS, "a", "b", up, down)
		must(err)
		n.OnClose(func() { e.Close() })
		cn.emu = append(cn.emu, e)
		cn.linkNames = append(cn.linkNames, name)
	}
	for i := 0; i < 2; i++ {
		b := byte(4 * i)
		lossyLink(fmt.Sprintf("w%da", i), cn.router, fmt.Sprintf("up%d", i), 60+b, cn.hops[i], fmt.Sprintf("in%d", i), 61+b)
		lossyLink(fmt.Sprintf("w%db", i), cn.hops[i], fmt.Sprintf("out%d", i), 62+b, cn.proxy, fmt.Sprintf("e%d", i), 63+b)
		cn.upAddr[i], cn.hopIn[i] = chainAddr(60+b, 1), chainAddr(61+b, 2)
		cn.hopOut[i], cn.proxyAddr[i] = chainAddr(62+b, 1), chainAddr(63+b, 2)
	}
	must(n.Link(cn.proxy, "srv", chainPrefix(70, 1), cn.srv, "eth0", chainPrefix(70, 2)))
	return cn
}

// linkReport says how many datagrams each emulated link carried and dropped.
func (cn *chainNet) linkReport() string {
	var b strings.Builder
	for i, e := range cn.emu {
		up, down := e.AToB().Stats(), e.BToA().Stats()
		fmt.Fprintf(&b, "%s: toward proxy dropped %d, toward router dropped %d; ", cn.linkNames[i], up.Dropped(), down.Dropped())
	}
	return b.String()
}

// hopChild runs in a child process: the chain tests start the test binary again
// inside a namespace with RAIC_CHAIN_HOP=kind:config-file (see TestMain), and
// this runs that program (proxy or simple relay) until its standard input
// closes.
func hopChild(spec string) error {
	kind, path, _ := strings.Cut(spec, ":")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		io.Copy(io.Discard, os.Stdin) // the parent closed it, or died
		cancel()
	}()
	var runFn func(context.Context) error
	switch kind {
	case "proxy":
		cfg, err := proxy.LoadConfig(path)
		if err != nil {
			return err
		}
		p, err := proxy.New(cfg, testLogger())
		if err != nil {
			return err
		}
		runFn = p.Run
	case "simple":
		cfg, err := simple.LoadConfig(path)
		if err != nil {
			return err
		}
		r, err := simple.New(cfg, testLogger())
		if err != nil {
			return err
		}
		runFn = r.Run
	default:
		return fmt.Errorf("unknown hop kind %q", kind)
	}
	fmt.Println("ready") // the sockets are bound
	return runFn(ctx)
}

// startHopProcess runs program kind with config text in h's namespace and
// returns once it has bound its sockets.
func startHopProcess(t *testing.T, h *netns.Host, kind, text string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), h.Name+".toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := h.Command(exe, "-test.run=^$", "-test.count=1")
	cmd.Env = append(os.Environ(), "RAIC_CHAIN_HOP="+kind+":"+path)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		ok := sc.Scan() && sc.Text() == "ready"
		ready <- ok
		io.Copy(io.Discard, stdout)
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("%s in %s exited before it was ready", kind, h.Name)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("%s in %s not ready within 15 s", kind, h.Name)
	}
}

// proxyConfig is the proxy's config: it serves client id with key.
func (cn *chainNet) proxyConfig(id string, key wire.Key) string {
	return fmt.Sprintf(`listen = "0.0.0.0:%d"
[[client]]
id = %q
key = "%s"
allow = ["%s"]
rate_pps = 100000
`, chainPxPort, id, key, cn.serverAddr)
}

// chainInNS runs fn inside h and fails the test on error.
func chainInNS(t *testing.T, h *netns.Host, fn func() error) {
	t.Helper()
	if err := h.Do(fn); err != nil {
		t.Fatalf("in %s: %v", h.Name, err)
	}
}

// startRouter runs the router (in-process, sockets in its namespace) with
// uplink i sending from upAddr[i] to hopIn[i], and returns it.
func (cn *chainNet) startRouter(t *testing.T) *router.Router {
	t.Helper()
	text := fmt.Sprintf(`client_id = "gamer"
key = "%s"
[[forward]]
listen = "127.0.0.1:0"
server = "%s"
`, testKey, netip.AddrPortFrom(cn.serverAddr, chainSrvPort))
	for i := 0; i < 2; i++ {
		text += fmt.Sprintf("[[uplink]]\nname = \"isp%d\"\nsource = \"%s\"\nproxy = \"%s\"\n",
			i, cn.upAddr[i], netip.AddrPortFrom(cn.hopIn[i], chainHopPort))
	}
	cfg, err := router.ParseConfig("router.toml", text)
	if err != nil {
		t.Fatal(err)
	}
	var r *router.Router
	chainInNS(t, cn.router, func() (err error) { r, err = router.New(cfg, testLogger()); return err })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// playGame streams chainPackets packets each way between a game client in
// the router's namespace and a game server in the server's, and returns what
// each side received.
func (cn *chainNet) playGame(t *testing.T, r *router.Router) (up, down *tally) {
	t.Helper()
	var sc, client *net.UDPConn
	chainInNS(t, cn.srv, func() (err error) {
		sc, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(cn.serverAddr, chainSrvPort)))
		return err
	})
	chainInNS(t, cn.router, func() (err error) {
		client, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		return err
	})
	defer sc.Close()
	defer client.Close()
	sc.SetReadBuffer(4 << 20)
	client.SetReadBuffer(4 << 20)
	srv := &checkServer{conn: sc, up: newTally(chainPackets)}
	go func() {
		buf := make([]byte, 2048)
		for {
			k, from, err := sc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if srv.client.Load() == nil {
				srv.client.Store(&from)
			}
			srv.up.add(buf[:k], 'C')
		}
	}()
	down = newTally(chainPackets)
	go func() {
		buf := make([]byte, 2048)
		for {
			k, _, err := client.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			down.add(buf[:k], 'S')
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fwd := r.ForwardAddr(0)
	serverDone := make(chan struct{})
	go func() {
		defer close(serverDone)
		for srv.client.Load() == nil { // the server answers once it knows the client
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Millisecond):
			}
		}
		to := *srv.client.Load()
		stream(ctx, chainPackets, chainRate, 'S', func(b []byte) { sc.WriteToUDPAddrPort(b, to) })
	}()
	stream(ctx, chainPackets, chainRate, 'C', func(b []byte) { client.WriteToUDPAddrPort(b, fwd) })
	<-serverDone
	time.Sleep(500 * time.Millisecond) // the last packets are in flight
	return srv.up, down
}

// checkChainLoss compares each direction's loss with the theory for the path,
// and checks no packet arrived twice or altered.
func checkChainLoss(t *testing.T, cn *chainNet, pLost float64, up, down *tally) {
	t.Helper()
	n := float64(chainPackets)
	mean, sd := n*pLost, math.Sqrt(n*pLost*(1-pLost))
	for _, d := range []struct {
		name string
		t    *tally
	}{{"client→server", up}, {"server→client", down}} {
		got, dups, bad := d.t.snapshot()
		lost := chainPackets - got
		t.Logf("%s: received %d of %d, lost %d (%.2f%%); theory %.0f ± %.0f (4.5 σ, %.2f%%); duplicates %d, corrupted %d",
			d.name, got, chainPackets, lost, 100*float64(lost)/n, mean, 4.5*sd, 100*pLost, dups, bad)
		if math.Abs(float64(lost)-mean) > 4.5*sd {
			t.Errorf("%s: lost %d packets, outside the binomial bound %.0f ± %.0f", d.name, lost, mean, 4.5*sd)
		}
		if dups != 0 || bad != 0 {
			t.Errorf("%s: %d duplicates and %d corrupted packets reached the %s", d.name, dups, bad,
				map[bool]string{true: "server", false: "game"}[d.name == "client→server"])
		}
	}
	t.Logf("links: %s", cn.linkReport())
}

// TestChainSimpleRelays: router → a simple relay per uplink → proxy → server.
// A path survives with (1-p)², and a packet is lost when both paths lose it:
// (1-(1-p)²)² = 3.61% at p = 10%.
func TestChainSimpleRelays(t *testing.T) {
	cn := newChainNet(t, false)
	startHopProcess(t, cn.proxy, "proxy", cn.proxyConfig("gamer", testKey))
	for i := 0; i < 2; i++ {
		startHopProcess(t, cn.hops[i], "simple", fmt.Sprintf(`[[route]]
listen = "%s"
upstream = "%s"
`, netip.AddrPortFrom(cn.hopIn[i], chainHopPort), netip.AddrPortFrom(cn.proxyAddr[i], chainPxPort)))
	}
	// The relays do not re-encode: the proxy sees the router's sessions and keys.
	atProxy := newChainTap(t, cn.proxy, chainPxPort, testKey)
	r := cn.startRouter(t)
	up, down := cn.playGame(t, r)

	path := (1 - chainLoss) * (1 - chainLoss)
	checkChainLoss(t, cn, (1-path)*(1-path), up, down)
	atProxy.check(t, "at the proxy", 1)
}

// TestChainIntermediate: router → intermediate (both uplinks) → proxy (over two
// uplinks of the intermediate) → server. The intermediate keeps the first copy
// and sends two fresh ones on, so a packet is lost only when both copies die
// before it (p²) or both die after it (p²): 1-(1-p²)² = 1.99% at p = 10%.
func TestChainIntermediate(t *testing.T) {
	cn := newChainNet(t, true)
	startHopProcess(t, cn.proxy, "proxy", cn.proxyConfig(chainMidID, chainMidKey))
	text := fmt.Sprintf(`listen = "0.0.0.0:%d"
[[client]]
id = "gamer"
key = "%s"
allow = ["%s"]
rate_pps = 100000
[next]
client_id = %q
key = "%s"
`, chainHopPort, testKey, cn.serverAddr, chainMidID, chainMidKey)
	for i := 0; i < 2; i++ {
		text += fmt.Sprintf("[[next.uplink]]\nname = \"path%d\"\nsource = \"%s\"\nproxy = \"%s\"\n",
			i, cn.hopOut[i], netip.AddrPortFrom(cn.proxyAddr[i], chainPxPort))
	}
	cfg, err := intermediate.ParseConfig("intermediate.toml", text)
	if err != nil {
		t.Fatal(err)
	}
	var mid *intermediate.Server
	chainInNS(t, cn.hops[0], func() (err error) { mid, err = intermediate.New(cfg, testLogger()); return err })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { mid.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	// Before the intermediate the router's session and keys; after it the
	// intermediate's own: both must carry the router's packet IDs.
	atMid := newChainTap(t, cn.hops[0], chainHopPort, testKey)
	atProxy := newChainTap(t, cn.proxy, chainPxPort, chainMidKey)
	atProxy.ref = atMid
	r := cn.startRouter(t)
	up, down := cn.playGame(t, r)

	hop := 1 - chainLoss*chainLoss
	checkChainLoss(t, cn, 1-hop*hop, up, down)
	before := atMid.check(t, "at the intermediate", 1)
	after := atProxy.check(t, "at the proxy", 1)
	if len(before) == 1 && len(after) == 1 && before[0] == after[0] {
		t.Errorf("the intermediate kept the router's session ID %x towards the proxy; want a session of its own", before[0])
	}
	snap := mid.Metrics().Snapshot()
	t.Logf("intermediate: relayed out %v, back %v, duplicates dropped %v; next-hop RTT %v / %v",
		snap[`intermediate_relayed_total{dir="out"}`], snap[`intermediate_relayed_total{dir="back"}`],
		snap[`intermediate_dropped_total{reason="duplicate"}`], mid.UplinkRTT(0), mid.UplinkRTT(1))
}

// chainTap reads, through a packet socket in a namespace, every UDP datagram
// arriving there for one port, opens the data datagrams with the key of that hop
// (learning each session's salt from its hello), and checks packet IDs: every
// copy of a game packet carries one ID, IDs grow with the game's sequence
// numbers, and (with ref set) each packet carries the ID it had at an earlier
// hop, so the router's IDs are kept end to end.
type chainTap struct {
	key  wire.Key
	port uint16
	fd   int
	stop chan struct{}
	done chan struct{}

	mu       sync.Mutex
	sessions map[uint64][16]byte // game sessions seen (hello with a target)
	epochs   map[uint64][]uint64 // the epochs of each session's hellos, the latest last
	checked  int
	wrong    int
	firstBad string
	ids      map[uint32]uint64 // game sequence number → packet ID seen here
	ref      *chainTap         // an earlier hop, whose IDs must be kept here
	// unopened: data datagrams no epoch known yet opens. The hello naming a
	// new epoch may be lost on its lossy link while data under the new keys
	// gets through; check tries these again with the epochs learned since.
	unopened []heldDatagram
}

// heldDatagram is a datagram kept for a later try.
type heldDatagram struct {
	dg      []byte
	off     int
	session uint64
	salt    [16]byte
}

func newChainTap(t *testing.T, h *netns.Host, port uint16, key wire.Key) *chainTap {
	t.Helper()
	ct := &chainTap{key: key, port: port, stop: make(chan struct{}), done: make(chan struct{}), sessions: map[uint64][16]byte{}, epochs: map[uint64][]uint64{}}
	chainInNS(t, h, func() (err error) {
		// The protocol goes in network byte order.
		proto := int(binary.NativeEndian.Uint16([]byte{unix.ETH_P_IP >> 8, unix.ETH_P_IP & 0xff}))
		ct.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, proto)
		if err != nil {
			return err
		}
		// A receive timeout lets the reader notice it should stop.
		tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
		return unix.SetsockoptTimeval(ct.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	})
	unix.SetsockoptInt(ct.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	go ct.read()
	t.Cleanup(func() {
		close(ct.stop)
		<-ct.done
		unix.Close(ct.fd)
	})
	return ct
}

func (ct *chainTap) read() {
	defer close(ct.done)
	buf := make([]byte, 65536)
	for {
		select {
		case <-ct.stop:
			return
		default:
		}
		n, from, err := unix.Recvfrom(ct.fd, buf, 0)
		if err != nil {
			continue // timeout, or an interrupted call
		}
		if sll, ok := from.(*unix.SockaddrLinklayer); !ok || sll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		ip := buf[:n]
		if len(ip) < 20 || ip[0]>>4 != 4 || ip[9] != unix.IPPROTO_UDP {
			continue
		}
		ihl := int(ip[0]&0xf) * 4
		total := int(binary.BigEndian.Uint16(ip[2:]))
		if total > len(ip) || ihl+8 > total || binary.BigEndian.Uint16(ip[ihl+2:]) != ct.port {
			continue
		}
		ct.watch(ip[ihl+8 : total])
	}
}

func (ct *chainTap) watch(dg []byte) {
	var h wire.Header
	var hl wire.Hello
	off, err := wire.Parse(dg, &h, &hl)
	if err != nil {
		return
	}
	ct.mu.Lock()
	defer ct.mu.Unlock()
	salt, ok := ct.sessions[h.Session]
	if !ok {
		if h.Flags&wire.FlagHello == 0 || !hl.Target.IsValid() {
			return // not a game session, or its hello is still to come
		}
		salt = hl.Salt
		ct.sessions[h.Session] = salt
	}
	if h.Flags&wire.FlagHello != 0 && !slices.Contains(ct.epochs[h.Session], hl.Epoch) {
		// The router re-keys when it learns the proxy's epoch; its copies on
		// the two paths may cross that moment in either order, so a datagram
		// is opened with any epoch the session's hellos have named.
		ct.epochs[h.Session] = append(ct.epochs[h.Session], hl.Epoch)
	}
	if h.Type != wire.TypeData {
		return
	}
	body, err := ct.open(dg, off, h.Session, salt)
	if err != nil && len(ct.unopened) < 1024 {
		ct.unopened = append(ct.unopened, heldDatagram{dg: append([]byte(nil), dg...), off: off, session: h.Session, salt: salt})
		return
	}
	if err != nil || len(body) != checkPktLen || body[0] != 'C' {
		ct.wrong++
		if ct.firstBad == "" {
			ct.firstBad = fmt.Sprintf("session %x packet %d does not open as a game packet with this hop's key (%v)", h.Session, h.Packet, err)
		}
		return
	}
	seq := binary.BigEndian.Uint32(body[1:])
	ct.checked++
	if bad := ct.checkID(seq, h.Packet); bad != "" {
		ct.wrong++
		if ct.firstBad == "" {
			ct.firstBad = fmt.Sprintf("session %x: %s", h.Session, bad)
		}
	}
}

// open opens a data datagram of session id with the keys of the newest epoch
// its hellos named that opens it, or of epoch 0 (the router keys a session
// for epoch 0 until it hears the proxy's epoch). Each try opens a copy:
// wire.Open decrypts in place, and a failed try leaves the bytes spoilt
// (the AEAD clears them), so the next epoch's try must start from the
// datagram as it came. dg is left as it came.
func (ct *chainTap) open(dg []byte, off int, id uint64, salt [16]byte) ([]byte, error) {
	epochs := ct.epochs[id]
	if !slices.Contains(epochs, 0) {
		epochs = append([]uint64{0}, epochs...)
	}
	var err error
	for i := len(epochs) - 1; i >= 0; i-- {
		var c2s cipher.AEAD
		if _, c2s, err = wire.DeriveKeysEpoch(&ct.key, &salt, id, epochs[i], wire.RoleServer); err != nil {
			return nil, err
		}
		var body []byte
		if body, err = wire.Open(c2s, append([]byte(nil), dg...), off); err == nil {
			return body, nil
		}
	}
	return nil, err
}

// TestChainTapOpensEitherEpoch: the tap opens a datagram sealed under epoch
// 0 after a hello named the proxy's epoch (the two paths crossed the
// re-key), and leaves the datagram as it came, so a datagram no epoch opens
// yet can be tried again once a later hello names its epoch.
func TestChainTapOpensEitherEpoch(t *testing.T) {
	const id, epoch = 0x5241494300000001, 77
	salt := [16]byte{1, 2, 3}
	ct := &chainTap{key: testKey, sessions: map[uint64][16]byte{id: salt}, epochs: map[uint64][]uint64{id: {epoch}}}
	seal := func(e, pid uint64) []byte {
		c2s, _, err := wire.DeriveKeysEpoch(&ct.key, &salt, id, e, wire.RoleClient)
		if err != nil {
			t.Fatal(err)
		}
		body := make([]byte, checkPktLen)
		body[0] = 'C'
		dg, err := wire.Seal(c2s, make([]byte, wire.MaxDatagram), &wire.Header{Type: wire.TypeData, Session: id, Packet: pid}, nil, body)
		if err != nil {
			t.Fatal(err)
		}
		return dg
	}
	for _, e := range []uint64{0, epoch} {
		dg := seal(e, 5)
		came := append([]byte(nil), dg...)
		var h wire.Header
		off, err := wire.Parse(dg, &h, nil)
		if err != nil {
			t.Fatal(err)
		}
		if body, err := ct.open(dg, off, id, salt); err != nil || len(body) != checkPktLen || body[0] != 'C' {
			t.Errorf("epoch %d: open = %d bytes, %v", e, len(body), err)
		}
		if !bytes.Equal(dg, came) {
			t.Errorf("epoch %d: open changed the datagram", e)
		}
	}
	later := seal(99, 6) // an epoch no hello has named yet
	came := append([]byte(nil), later...)
	if _, err := ct.open(later, wire.HeaderLen, id, salt); err == nil {
		t.Fatal("a datagram of an epoch no hello named opened")
	}
	if !bytes.Equal(later, came) {
		t.Fatal("a failed open spoilt the datagram, so no later try can open it")
	}
	ct.epochs[id] = append(ct.epochs[id], 99)
	if _, err := ct.open(later, wire.HeaderLen, id, salt); err != nil {
		t.Fatalf("once a hello named its epoch: %v", err)
	}
}

// checkID records that game packet seq arrived as pid and returns what is wrong
// with that: copies with different IDs, an ID out of order with the packets
// before it, or an ID other than the one the earlier hop (ref) saw.
func (ct *chainTap) checkID(seq uint32, pid uint64) string {
	if ct.ids == nil {
		ct.ids = map[uint32]uint64{}
	}
	if prev, ok := ct.ids[seq]; ok {
		if prev != pid {
			return fmt.Sprintf("copies of game packet %d arrived as packet IDs %d and %d", seq, prev, pid)
		}
		return ""
	}
	if pid < uint64(seq)+1 {
		return fmt.Sprintf("game packet %d arrived as packet ID %d, below the first the router could give it", seq, pid)
	}
	if seq > 0 {
		if p, ok := ct.ids[seq-1]; ok && p >= pid {
			return fmt.Sprintf("game packets %d and %d arrived as packet IDs %d and %d: out of order", seq-1, seq, p, pid)
		}
	}
	ct.ids[seq] = pid
	if ct.ref != nil {
		ct.ref.mu.Lock()
		want, ok := ct.ref.ids[seq]
		ct.ref.mu.Unlock()
		if ok && want != pid {
			return fmt.Sprintf("game packet %d arrived as packet ID %d, but had %d at the earlier hop", seq, pid, want)
		}
	}
	return ""
}

// check asserts the tap saw the expected number of game sessions and that every
// data datagram of them carried the router's packet ID; it returns the sessions.
func (ct *chainTap) check(t *testing.T, where string, wantSessions int) []uint64 {
	t.Helper()
	ct.mu.Lock()
	defer ct.mu.Unlock()
	var ids []uint64
	for id := range ct.sessions {
		ids = append(ids, id)
	}
	for _, u := range ct.unopened {
		body, err := ct.open(u.dg, u.off, u.session, u.salt)
		if err != nil || len(body) != checkPktLen || body[0] != 'C' {
			ct.wrong++
			if ct.firstBad == "" {
				var h wire.Header
				var hl wire.Hello
				wire.Parse(u.dg, &h, &hl)
				ct.firstBad = fmt.Sprintf("session %x: a datagram opens with no epoch its hellos named, nor epoch 0 (%v): packet %d, flags %#x, %d bytes, epochs known %v",
					u.session, err, h.Packet, h.Flags, len(u.dg), ct.epochs[u.session])
			}
			continue
		}
		ct.checked++ // its ID was not checked: it opened late
	}
	ct.unopened = nil
	t.Logf("%s: %d game datagrams opened, %d with a wrong packet ID or key; sessions %x", where, ct.checked, ct.wrong, ids)
	// Each copy crossing the last lossy hop arrives with probability 1-p; far
	// fewer than the packets sent means the tap saw nothing real.
	if ct.checked < chainPackets {
		t.Errorf("%s: only %d game datagrams seen", where, ct.checked)
	}
	if ct.wrong != 0 {
		t.Errorf("%s: %d datagrams with a wrong packet ID or key; first: %s", where, ct.wrong, ct.firstBad)
	}
	if len(ids) != wantSessions {
		t.Errorf("%s: %d game sessions, want %d", where, len(ids), wantSessions)
	}
	return ids
}
