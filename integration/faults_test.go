package integration

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/internal/hostinfo"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/proxy"
	"github.com/raicnet/raic/raic"
	"github.com/raicnet/raic/router"
)

// The fault and attack suite (make faults): a router and a proxy on loopback
// with a capturing relay between them, a game client and a counting server,
// and an attacker socket that replays, flips and floods. Each row is measured
// and printed in one table; each has a bound it must keep.

// floodKey is the key of the second client, the one that floods.
var floodKey = wire.Key{0x46, 0x4c, 0x4f, 0x4f, 0x44}

// faultProxy is a proxy that can be stopped and started again on one address,
// as a kill and restart would: a new run keeps nothing of the old one.
type faultProxy struct {
	t      *testing.T
	text   string
	p      *proxy.Server
	cancel func()
	done   chan struct{}
}

func startFaultProxy(t *testing.T, listen, allow, extra string) *faultProxy {
	fp := &faultProxy{t: t, text: fmt.Sprintf(`
listen = "%s"
%s
[[client]]
id = "gamer"
key = "%s"
allow = ["%s"]
rate_pps = 100000
[[client]]
id = "flood"
key = "%s"
allow = ["%s"]
rate_pps = 100000
`, listen, extra, testKey, allow, floodKey, allow)}
	fp.start()
	t.Cleanup(fp.stop)
	return fp
}

func (fp *faultProxy) start() {
	cfg, err := proxy.ParseConfig("proxy.toml", fp.text)
	if err != nil {
		fp.t.Fatal(err)
	}
	if fp.p, err = proxy.New(cfg, testLogger()); err != nil {
		fp.t.Fatal(err)
	}
	// From now on the address is fixed, so a restart comes back on it.
	fp.text = strings.Replace(fp.text, "127.0.0.1:0", fp.p.Addr().String(), 1)
	ctx, cancel := context.WithCancel(context.Background())
	fp.cancel, fp.done = cancel, make(chan struct{})
	go func() { fp.p.Run(ctx); close(fp.done) }()
}

func (fp *faultProxy) stop() {
	if fp.cancel != nil {
		fp.cancel()
		<-fp.done
		fp.cancel = nil
	}
}

func (fp *faultProxy) metric(name string) float64 { return fp.p.Metrics().Snapshot()[name] }

// tapRelay stands between the router's uplinks and the proxy: one upstream
// socket per router address (so the proxy sees each uplink as its own path),
// and a copy of every datagram the router sends. While hold is set, data
// datagrams are kept back instead of forwarded.
type tapRelay struct {
	ln    *net.UDPConn
	proxy netip.AddrPort
	mu    sync.Mutex
	ups   map[netip.AddrPort]*net.UDPConn
	log   []tapped
	held  [][]byte
	hold  atomic.Bool
}

type tapped struct {
	at int64
	dg []byte
}

func newTapRelay(t *testing.T, proxyAddr netip.AddrPort) *tapRelay {
	ln, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &tapRelay{ln: ln, proxy: proxyAddr, ups: map[netip.AddrPort]*net.UDPConn{}}
	go tr.run()
	t.Cleanup(func() {
		ln.Close()
		tr.mu.Lock()
		for _, u := range tr.ups {
			u.Close()
		}
		tr.mu.Unlock()
	})
	return tr
}

func (tr *tapRelay) addr() netip.AddrPort { return tr.ln.LocalAddr().(*net.UDPAddr).AddrPort() }

func (tr *tapRelay) run() {
	buf := make([]byte, 2048)
	for {
		n, from, err := tr.ln.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		dg := append([]byte(nil), buf[:n]...)
		tr.mu.Lock()
		tr.log = append(tr.log, tapped{mono.Now(), dg})
		if tr.hold.Load() && n > 1 && wire.Type(dg[1]) == wire.TypeData {
			tr.held = append(tr.held, dg)
			tr.mu.Unlock()
			continue
		}
		up := tr.ups[from]
		if up == nil {
			up, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(tr.proxy))
			if err != nil {
				tr.mu.Unlock()
				continue
			}
			tr.ups[from] = up
			go func() {
				b := make([]byte, 2048)
				for {
					k, err := up.Read(b)
					if err != nil {
						if strings.Contains(err.Error(), "closed") {
							return
						}
						continue // port unreachable while the proxy is down
					}
					tr.ln.WriteToUDPAddrPort(b[:k], from)
				}
			}()
		}
		tr.mu.Unlock()
		up.Write(dg)
	}
}

// rebind gives every router address a new upstream socket (a new source
// port at the proxy), as a NAT that rebinds mid-session would.
func (tr *tapRelay) rebind() {
	tr.mu.Lock()
	old := tr.ups
	tr.ups = map[netip.AddrPort]*net.UDPConn{}
	tr.mu.Unlock()
	time.AfterFunc(500*time.Millisecond, func() { // late replies still arrive
		for _, u := range old {
			u.Close()
		}
	})
}

// capturedSince returns copies of what the router sent in [from, to).
func (tr *tapRelay) capturedSince(from, to int64) [][]byte {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var out [][]byte
	for _, c := range tr.log {
		if c.at >= from && c.at < to {
			out = append(out, c.dg)
		}
	}
	return out
}

// seqServer counts the game packets (an 8-byte sequence number first) it
// gets, and duplicates: a replayed packet that got through arrives twice.
type seqServer struct {
	conn  *net.UDPConn
	mu    sync.Mutex
	seen  map[uint64]int64 // seq -> arrival
	dups  int
	bytes map[uint64]int
}

func newSeqServer(t *testing.T) *seqServer {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	conn.SetReadBuffer(4 << 20)
	s := &seqServer{conn: conn, seen: map[uint64]int64{}, bytes: map[uint64]int{}}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 70000)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if n < 8 {
				continue
			}
			seq := binary.BigEndian.Uint64(buf)
			s.mu.Lock()
			if _, ok := s.seen[seq]; ok {
				s.dups++
			} else {
				s.seen[seq] = mono.Now()
				s.bytes[seq] = n
			}
			s.mu.Unlock()
			if seq < 1<<40 { // game packets are echoed; flood packets are not
				conn.WriteToUDPAddrPort(buf[:n], from)
			}
		}
	}()
	return s
}

func (s *seqServer) addr() netip.AddrPort { return s.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (s *seqServer) snapshot() (seen map[uint64]int64, dups int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen = make(map[uint64]int64, len(s.seen))
	for k, v := range s.seen {
		seen[k] = v
	}
	return seen, s.dups
}

// faultGame sends seq-numbered packets at rate to the router's forward.
type faultGame struct {
	size    atomic.Int64 // packet size; 100 unless set
	replies sync.Map     // size -> *atomic.Int64, replies received
	conn    *net.UDPConn
	seq     atomic.Uint64
	sent    sync.Map // seq -> send time
	stop    chan struct{}
	wg      sync.WaitGroup
}

func startGame(t *testing.T, fwd netip.AddrPort, pps int) *faultGame {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	g := &faultGame{conn: conn, stop: make(chan struct{})}
	go func() { // replies are counted by size
		b := make([]byte, 70000)
		for {
			n, err := conn.Read(b)
			if err != nil {
				return
			}
			c, _ := g.replies.LoadOrStore(n, new(atomic.Int64))
			c.(*atomic.Int64).Add(1)
		}
	}()
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		tk := time.NewTicker(time.Second / time.Duration(pps))
		defer tk.Stop()
		pkt := make([]byte, 65535)
		for {
			select {
			case <-g.stop:
				return
			case <-tk.C:
			}
			seq := g.seq.Add(1)
			size := int(g.size.Load())
			if size == 0 {
				size = 100
			}
			binary.BigEndian.PutUint64(pkt, seq)
			g.sent.Store(seq, mono.Now())
			conn.WriteToUDPAddrPort(pkt[:size], fwd)
		}
	}()
	t.Cleanup(g.close)
	return g
}

func (g *faultGame) close() {
	select {
	case <-g.stop:
	default:
		close(g.stop)
		g.wg.Wait()
		g.conn.Close()
	}
}

// lostBetween counts packets sent in [from, to) that the server never got.
func (g *faultGame) lostBetween(seen map[uint64]int64, from, to int64) (sent, lost int) {
	g.sent.Range(func(k, v any) bool {
		if at := v.(int64); at >= from && at < to {
			sent++
			if _, ok := seen[k.(uint64)]; !ok {
				lost++
			}
		}
		return true
	})
	return sent, lost
}

// attacker is a socket of a third party: what it sends and gets back.
type attacker struct {
	conn      *net.UDPConn
	sentBytes atomic.Uint64
	gotBytes  atomic.Uint64
	gotDgs    atomic.Uint64
}

func newAttacker(t *testing.T) *attacker {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	a := &attacker{conn: conn}
	t.Cleanup(func() { conn.Close() })
	go func() {
		b := make([]byte, 70000)
		for {
			n, err := conn.Read(b)
			if err != nil {
				return
			}
			a.gotBytes.Add(uint64(n))
			a.gotDgs.Add(1)
		}
	}()
	return a
}

func (a *attacker) send(dg []byte, to netip.AddrPort) {
	a.sentBytes.Add(uint64(len(dg)))
	a.conn.WriteToUDPAddrPort(dg, to)
	// Pace a little: the bound under test is the proxy's, not the kernel
	// buffer's.
}

type faultRow struct{ name, measured, bound string }

// faultTable is the rows of the fault suite's table (| fault / attack |
// measured | must |) that one test measured.
type faultTable struct{ rows []faultRow }

// row adds a row: what was done, what it must keep to, what was measured.
func (ft *faultTable) row(name, bound, format string, args ...any) {
	ft.rows = append(ft.rows, faultRow{name, fmt.Sprintf(format, args...), bound})
}

// log prints the table. With RAIC_FAULTS_TABLE set (make faults), the table
// is written to that file, or, with under, its rows are appended to the
// table TestFaults (first in this file) wrote there.
func (ft *faultTable) log(t *testing.T, under bool) {
	var b strings.Builder
	fmt.Fprintf(&b, "\n| fault / attack | measured | must |\n| --- | --- | --- |\n")
	for _, r := range ft.rows {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", r.name, r.measured, r.bound)
	}
	t.Log(b.String())
	p := os.Getenv("RAIC_FAULTS_TABLE")
	switch {
	case p == "":
	case under:
		appendRows(t, p, ft.rows)
	default:
		os.WriteFile(p, []byte(b.String()), 0o644)
	}
}

// TestFaults runs the fault and attack suite and prints its table. Set
// RAIC_FAULTS_LONG=1 (make faults) for the replay after 10 s.
func TestFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault suite takes about 20 s; not in -short")
	}
	var table faultTable
	row := table.row
	defer table.log(t, false)

	srv := newSeqServer(t)
	fp := startFaultProxy(t, "127.0.0.1:0", srv.addr().String(), "max_sessions = 1000")
	tap := newTapRelay(t, fp.p.Addr())
	r := startRouter(t, srv.addr(), "", tap.addr(), tap.addr())
	game := startGame(t, r.ForwardAddr(0), 100)
	att := newAttacker(t)
	proxyAddr := fp.p.Addr()
	waitFor(t, 5*time.Second, "game traffic through router and proxy", func() bool {
		seen, _ := srv.snapshot()
		return len(seen) > 50
	})
	time.Sleep(2 * time.Second)

	// Replay now: everything the router sent so far, from another address.
	_, dups0 := srv.snapshot()
	got0 := att.gotBytes.Load()
	early := tap.capturedSince(0, mono.Now())
	for _, dg := range early {
		att.send(dg, proxyAddr)
	}
	time.Sleep(300 * time.Millisecond)
	_, dups1 := srv.snapshot()
	row("replay now ("+fmt.Sprint(len(early))+" tapped datagrams)", "0 delivered, 0 bytes back",
		"%d delivered, %d bytes back", dups1-dups0, att.gotBytes.Load()-got0)
	if dups1 != dups0 || att.gotBytes.Load() != got0 {
		t.Errorf("replay now: %d delivered, %d bytes back", dups1-dups0, att.gotBytes.Load()-got0)
	}

	if os.Getenv("RAIC_FAULTS_LONG") != "" {
		time.Sleep(10 * time.Second)
		got0 = att.gotBytes.Load()
		for _, dg := range early {
			att.send(dg, proxyAddr)
		}
		time.Sleep(300 * time.Millisecond)
		_, dups2 := srv.snapshot()
		row("replay after 10 s", "0 delivered, 0 bytes back", "%d delivered, %d bytes back", dups2-dups1, att.gotBytes.Load()-got0)
		if dups2 != dups1 || att.gotBytes.Load() != got0 {
			t.Errorf("replay after 10 s: %d delivered, %d bytes back", dups2-dups1, att.gotBytes.Load()-got0)
		}
	}

	// Every single-byte flip and every truncation of a datagram the proxy never
	// saw: none may deliver; the original then does (the check can fail).
	// The relay holds back every copy of the game's packets for 50 ms: those
	// packets never reach the proxy, so one delivered later came from the
	// attacker.
	hold0 := mono.Now()
	tap.hold.Store(true)
	time.Sleep(50 * time.Millisecond)
	tap.hold.Store(false)
	hold1 := mono.Now()
	tap.mu.Lock()
	heldAll := tap.held
	tap.held = nil
	tap.mu.Unlock()
	if len(heldAll) == 0 {
		t.Fatal("the relay held back no data datagram")
	}
	heldArrived := func() int {
		seen, _ := srv.snapshot()
		_, lost := game.lostBetween(seen, hold0, hold1)
		sent, _ := game.lostBetween(seen, hold0, hold1)
		return sent - lost
	}
	time.Sleep(100 * time.Millisecond) // packets in flight at the edges of the hold land first
	before := heldArrived()
	got0 = att.gotBytes.Load()
	tries := 0
	for _, held := range heldAll {
		for i := range held {
			for _, x := range []byte{0x01, 0x80, 0xff} {
				m := append([]byte(nil), held...)
				m[i] ^= x
				att.send(m, proxyAddr)
				tries++
			}
		}
		for n := 0; n < len(held); n++ {
			att.send(held[:n], proxyAddr)
			tries++
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	flipped := heldArrived() - before
	flipBack := att.gotBytes.Load() - got0
	// The originals do get through: the check above could have failed. They
	// go from a socket of their own: their address becomes a reply path.
	holder := newAttacker(t)
	for _, held := range heldAll {
		holder.send(held, proxyAddr)
	}
	time.Sleep(200 * time.Millisecond)
	originals := heldArrived() - before - flipped
	row(fmt.Sprintf("byte flips (3 patterns) and truncations of %d held datagrams (%d sent)", len(heldAll), tries), "0 delivered, 0 bytes back",
		"%d delivered, %d bytes back (the unchanged originals then delivered %d)", flipped, flipBack, originals)
	if flipped != 0 || flipBack != 0 || originals == 0 {
		t.Errorf("flips: %d delivered, %d bytes back; originals delivered %d", flipped, flipBack, originals)
	}

	// What the holder's address gets back for the reply window: it sent
	// genuine datagrams never seen, so it became a reply path, but one not
	// validated (it cannot answer the proxy's path challenge): it may get at
	// most 3x what it sent, challenges included.
	time.Sleep(2800 * time.Millisecond)
	hs, hg := holder.sentBytes.Load(), holder.gotBytes.Load()
	row("held datagrams released from a new address (reply window 2.5 s)", "<= 3x",
		"%d bytes sent, %d back (%.2fx)", hs, hg, float64(hg)/float64(max(hs, 1)))
	if hg > 3*hs {
		t.Errorf("released datagrams: %d bytes sent from a new address, %d back (over 3x)", hs, hg)
	}

	// 100,000 garbage datagrams: random bytes, and random bodies behind valid
	// headers (some with a live session's ID and the hello flag).
	var live uint64
	if len(early) > 0 && len(early[0]) >= 12 {
		live = binary.BigEndian.Uint64(early[0][4:12])
	}
	got0, sent0 := att.gotBytes.Load(), att.sentBytes.Load()
	junk := make([]byte, wire.MaxDatagram)
	for i := 0; i < 100000; i++ {
		n := 1 + int(uint(i*7919)%wire.MaxDatagram)
		rand.Read(junk[:n])
		if i%2 == 1 && n >= wire.HeaderLen+wire.TagLen {
			junk[0] = wire.Version
			junk[1] = byte(1 + i%8)
			junk[2] = byte(i % 4)
			if i%4 == 1 {
				binary.BigEndian.PutUint64(junk[4:], live)
			}
		}
		att.send(junk[:n], proxyAddr)
		if i%256 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	time.Sleep(300 * time.Millisecond)
	back, in := att.gotBytes.Load()-got0, att.sentBytes.Load()-sent0
	row("100,000 garbage datagrams", "amplification 0", "%d bytes in, %d back: amplification %.3f", in, back, float64(back)/float64(in))
	if back != 0 {
		t.Errorf("garbage got %d bytes back", back)
	}

	// Session flood by a second client while the gamer plays.
	fl0 := mono.Now()
	floodSessions(t, att, proxyAddr, srv.addr(), 5000)
	time.Sleep(500 * time.Millisecond)
	floodAdmitted := srv.flooded()
	fl1 := mono.Now()
	seen, _ := srv.snapshot()
	sentF, lostF := game.lostBetween(seen, fl0, fl1-int64(200*time.Millisecond))
	evicted := fp.metric("proxy_sessions_evicted_total")
	limit := fp.metric(`proxy_dropped_total{reason="client_session_limit"}`) + fp.metric(`proxy_dropped_total{reason="client_session_rate"}`)
	row("session flood: 5,000 hellos of one client", "other client loses 0%, 0 evicted",
		"%d flood packets delivered, %.0f refused (counted), %.0f evicted; gamer lost %d of %d (%.1f%%)",
		floodAdmitted, limit, evicted, lostF, sentF, 100*float64(lostF)/float64(max(sentF, 1)))
	if evicted != 0 || lostF*100 > sentF {
		t.Errorf("flood: %.0f evicted, gamer lost %d of %d", evicted, lostF, sentF)
	}

	// A target outside the client's allowlist: a hello with the client's own
	// key asking for it. Its listener must see nothing.
	forbidden := newSeqServer(t)
	{
		salt, _ := wire.NewSalt()
		send, _, _ := wire.DeriveKeys(&testKey, &salt, 77, wire.RoleClient)
		h := &wire.Hello{Salt: salt, Target: forbidden.addr()}
		h.SetClientID("gamer")
		s, _ := tunnel.NewSender(send, 77, raic.Params{Scheme: raic.SchemeCopy, K: 1}, h)
		for i := 0; i < 100; i++ {
			_, dgs, _ := s.Seal([]byte("12345678 knock"), mono.Now())
			att.send(dgs[0], proxyAddr)
		}
		time.Sleep(200 * time.Millisecond)
		seenF, _ := forbidden.snapshot()
		refused := fp.metric(`proxy_dropped_total{reason="forbidden_target"}`)
		row("target outside the allowlist (100 hellos)", "its listener sees 0", "listener saw %d, %.0f refused (counted)", len(seenF), refused)
		if len(seenF) != 0 || refused == 0 {
			t.Errorf("forbidden target: listener saw %d, %.0f refused", len(seenF), refused)
		}
	}

	// NAT rebinding: the router's uplinks appear from new source ports, twice.
	{
		rb0 := mono.Now()
		tap.rebind()
		time.Sleep(700 * time.Millisecond)
		tap.rebind()
		time.Sleep(700 * time.Millisecond)
		rb1 := mono.Now()
		time.Sleep(300 * time.Millisecond)
		seen, _ := srv.snapshot()
		sent, lost := game.lostBetween(seen, rb0, rb1)
		row("NAT rebinding mid-session (twice)", "0 lost", "%d of %d lost", lost, sent)
		if lost > 0 {
			t.Errorf("NAT rebinding: lost %d of %d", lost, sent)
		}
	}

	// Big game datagrams: delivered intact, or refused with a counter.
	for _, size := range []int{1400, 1500, 9000, 65000} {
		s0 := game.seq.Load()
		game.size.Store(int64(size))
		time.Sleep(200 * time.Millisecond)
		game.size.Store(100)
		s1 := game.seq.Load()
		time.Sleep(200 * time.Millisecond)
		srv.mu.Lock()
		intact, sent := 0, 0
		for q := s0 + 2; q < s1; q++ { // the edges may straddle the size change
			sent++
			if srv.bytes[q] == size {
				intact++
			}
		}
		srv.mu.Unlock()
		back := int64(0)
		if c, ok := game.replies.Load(size); ok {
			back = c.(*atomic.Int64).Load()
		}
		tooLarge := fp.metric(`proxy_dropped_total{reason="server_packet_too_large"}`)
		row(fmt.Sprintf("game datagrams of %d bytes", size), "intact, or refused with a counter",
			"up: %d of %d intact; replies back: %d (server packets over 8,192 B dropped and counted: %.0f so far)", intact, sent, back, tooLarge)
		if intact != sent {
			t.Errorf("%d-byte packets: %d of %d intact", size, intact, sent)
		}
		if size <= 8192 && back == 0 || size > 8192 && tooLarge == 0 && back == 0 {
			t.Errorf("%d-byte replies: %d back, %.0f counted as too large", size, back, tooLarge)
		}
	}

	// Proxy restart: stop it, start a new run on the same address 1 s later.
	kill := mono.Now()
	fp.stop()
	time.Sleep(time.Second)
	fp.start()
	back0 := mono.Now()
	waitFor(t, 10*time.Second, "game traffic after the proxy restart", func() bool {
		seen, _ := srv.snapshot()
		for _, at := range seen {
			if at > back0 {
				return true
			}
		}
		return false
	})
	seen, _ = srv.snapshot()
	first := int64(0)
	for _, at := range seen {
		if at > back0 && (first == 0 || at < first) {
			first = at
		}
	}
	gap := time.Duration(first - back0)
	sentR, lostR := game.lostBetween(seen, kill-int64(time.Second), first)
	row("proxy stopped, started again 1 s later (100 pps)", "flows within 200 ms of the proxy being back (test fails past 500 ms)",
		"flows %v after it is back; %d of %d lost (outage %v)", gap.Round(time.Millisecond), lostR, sentR, time.Duration(back0-kill).Round(time.Millisecond))
	// The target is 200 ms (the table shows it); the test fails only past
	// 500 ms, so a loaded machine does not fail it, while the old behaviour
	// (about a second after the proxy was back) still would.
	if gap > 500*time.Millisecond {
		t.Errorf("traffic flowed %v after the proxy was back, want <= 200 ms (fails past 500 ms)", gap)
	}
	if n := r.Metrics().Snapshot()["router_proxy_restarts_total"]; n != 1 {
		t.Errorf("router_proxy_restarts_total = %.0f, want 1 (the new epoch noticed)", n)
	}

	// Replay after the restart: everything tapped before it (the outage
	// included), once the router has re-opened its session.
	time.Sleep(500 * time.Millisecond)
	_, dr0 := srv.snapshot()
	got0 = att.gotBytes.Load()
	pre := tap.capturedSince(0, back0)
	for i, dg := range pre {
		att.send(dg, fp.p.Addr())
		if i%256 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	time.Sleep(300 * time.Millisecond)
	_, dr1 := srv.snapshot()
	row(fmt.Sprintf("replay after a proxy restart (%d datagrams tapped before it)", len(pre)), "0 delivered, 0 bytes back",
		"%d delivered, %d bytes back (%.0f hellos refused for an old epoch)", dr1-dr0, att.gotBytes.Load()-got0,
		fp.metric(`proxy_dropped_total{reason="old_epoch"}`))
	if dr1 != dr0 || att.gotBytes.Load() != got0 {
		t.Errorf("replay after restart: %d delivered, %d bytes back", dr1-dr0, att.gotBytes.Load()-got0)
	}
}

// floodSessions opens n sessions as client "flood" as fast as it can, each
// with one packet, and returns how many reached the server.
func floodSessions(t *testing.T, a *attacker, proxyAddr, target netip.AddrPort, n int) int {
	buf := make([]byte, 8)
	for i := 0; i < n; i++ {
		var rb [8]byte
		rand.Read(rb[:])
		id := binary.LittleEndian.Uint64(rb[:]) | 1
		salt, _ := wire.NewSalt()
		send, _, err := wire.DeriveKeys(&floodKey, &salt, id, wire.RoleClient)
		if err != nil {
			t.Fatal(err)
		}
		h := &wire.Hello{Salt: salt, Target: target}
		h.SetClientID("flood")
		s, err := tunnel.NewSender(send, id, raic.Params{Scheme: raic.SchemeCopy, K: 1}, h)
		if err != nil {
			t.Fatal(err)
		}
		binary.BigEndian.PutUint64(buf, 1<<40+uint64(i))
		_, dgs, err := s.Seal(buf, mono.Now())
		if err != nil {
			t.Fatal(err)
		}
		a.send(dgs[0], proxyAddr)
		if i%100 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	time.Sleep(200 * time.Millisecond)
	return 0 // counted by the server (sequence numbers from 1<<40)
}

// flooded counts the flood's packets the server got.
func (s *seqServer) flooded() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k := range s.seen {
		if k >= 1<<40 {
			n++
		}
	}
	return n
}

// TestFaultsIdleExpiry: idle sessions end on both sides after session_idle;
// the router's keepalives and the proxy's acks do not keep them alive.
func TestFaultsIdleExpiry(t *testing.T) {
	if testing.Short() {
		t.Skip("takes about 5 s; not in -short")
	}
	srv := newSeqServer(t)
	// The proxy's idle time is the shorter one, so it cannot learn the end
	// from the router's close: it must expire the session itself.
	fp := startFaultProxy(t, "127.0.0.1:0", srv.addr().String(), `session_idle = "2s"`)
	r := startRouter(t, srv.addr(), `session_idle = "3s"`, fp.p.Addr(), fp.p.Addr())
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pkt := make([]byte, 16)
	for i := 0; i < 3; i++ {
		binary.BigEndian.PutUint64(pkt, uint64(i+1))
		c.WriteToUDPAddrPort(pkt, r.ForwardAddr(0))
		time.Sleep(10 * time.Millisecond)
	}
	waitFor(t, 8*time.Second, "both sides to expire the idle session", func() bool {
		return fp.metric("proxy_sessions_expired_total") >= 1 && r.Metrics().Snapshot()["router_sessions_expired_total"] >= 1
	})
	t.Logf("\n| fault / attack | measured | must |\n| --- | --- | --- |\n| idle session, session_idle 2 s (proxy) / 3 s (router) | proxy expired %.0f, router expired %.0f | both >= 1 |\n",
		fp.metric("proxy_sessions_expired_total"), r.Metrics().Snapshot()["router_sessions_expired_total"])
}

// faultRouter is a router that can be stopped and started again with the
// same config and forward address, as a kill and restart would.
type faultRouter struct {
	t      *testing.T
	text   string
	r      *router.Router
	cancel func()
	done   chan struct{}
}

func startFaultRouter(t *testing.T, fwd, server netip.AddrPort, uplinks ...netip.AddrPort) *faultRouter {
	text := fmt.Sprintf("client_id = \"gamer\"\nkey = \"%s\"\n[[forward]]\nlisten = \"%s\"\nserver = \"%s\"\n", testKey, fwd, server)
	for i, up := range uplinks {
		text += fmt.Sprintf("[[uplink]]\nname = \"isp%d\"\nsource = \"127.0.0.1\"\nproxy = \"%s\"\n", i, up)
	}
	fr := &faultRouter{t: t, text: text}
	fr.start()
	t.Cleanup(fr.stop)
	return fr
}

func (fr *faultRouter) start() {
	cfg, err := router.ParseConfig("router.toml", fr.text)
	if err != nil {
		fr.t.Fatal(err)
	}
	if fr.r, err = router.New(cfg, testLogger()); err != nil {
		fr.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	fr.cancel, fr.done = cancel, make(chan struct{})
	go func() { fr.r.Run(ctx); close(fr.done) }()
}

// kill stops the router without telling the proxy (no close messages): the
// forward and uplink sockets go away as with kill -9.
func (fr *faultRouter) stop() {
	if fr.cancel != nil {
		fr.cancel()
		<-fr.done
		fr.cancel = nil
	}
}

// TestFaultsRouterRestart: the router stops and starts again 1 s later on the
// same forward address; the game's traffic flows again at once.
func TestFaultsRouterRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("takes about 4 s; not in -short")
	}
	srv := newSeqServer(t)
	fp := startFaultProxy(t, "127.0.0.1:0", srv.addr().String(), "")
	probe, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	fwd := probe.LocalAddr().(*net.UDPAddr).AddrPort()
	probe.Close()
	fr := startFaultRouter(t, fwd, srv.addr(), fp.p.Addr(), fp.p.Addr())
	game := startGame(t, fwd, 100)
	waitFor(t, 5*time.Second, "game traffic", func() bool { seen, _ := srv.snapshot(); return len(seen) > 50 })
	kill := mono.Now()
	fr.stop()
	time.Sleep(time.Second)
	fr.start()
	back := mono.Now()
	waitFor(t, 10*time.Second, "game traffic after the router restart", func() bool {
		seen, _ := srv.snapshot()
		for _, at := range seen {
			if at > back {
				return true
			}
		}
		return false
	})
	seen, _ := srv.snapshot()
	first := int64(0)
	for _, at := range seen {
		if at > back && (first == 0 || at < first) {
			first = at
		}
	}
	sent, lost := game.lostBetween(seen, kill-int64(time.Second), first)
	gap := time.Duration(first - back)
	t.Logf("\n| fault / attack | measured | must |\n| --- | --- | --- |\n| router stopped, started again 1 s later (100 pps) | flows %v after it is back; %d of %d lost (outage %v) | flows within 200 ms (test fails past 500 ms) |\n",
		gap.Round(time.Millisecond), lost, sent, time.Duration(back-kill).Round(time.Millisecond))
	if gap > 500*time.Millisecond { // target 200 ms; see TestFaults
		t.Errorf("traffic flowed %v after the router was back, want <= 200 ms (fails past 500 ms)", gap)
	}
}

// TestFaultsRouterRestartServerPort: the game server sees the same source
// address and port from the proxy after the router restarts (kill -9: no close
// messages), whether the proxy's old session is still open (the router is back
// in 1 s) or has ended after session_idle (back in 4 s): the proxy keeps the
// server side of the session for keep_server_port and gives it to the router's
// new session of the same flow. With keep_server_port = "0" the server sees a
// new port (the behaviour before), so the test can tell them apart.
func TestFaultsRouterRestartServerPort(t *testing.T) {
	if testing.Short() {
		t.Skip("takes about 12 s; not in -short")
	}
	// A server that notes where each game packet came from, and echoes it.
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var mu sync.Mutex
	var last netip.AddrPort
	var lastAt int64
	go func() {
		b := make([]byte, 70000)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			mu.Lock()
			last, lastAt = from, mono.Now()
			mu.Unlock()
			conn.WriteToUDPAddrPort(b[:n], from)
		}
	}()
	srv := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	source := func(after int64, what string) netip.AddrPort {
		var got netip.AddrPort
		waitFor(t, 10*time.Second, what, func() bool {
			mu.Lock()
			defer mu.Unlock()
			got = last
			return lastAt > after
		})
		return got
	}
	restart := func(keep string, down time.Duration) (before, after netip.AddrPort, fp *faultProxy) {
		fp = startFaultProxy(t, "127.0.0.1:0", srv.String(), `session_idle = "2s"`+"\n"+`keep_server_port = "`+keep+`"`)
		probe, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		fwd := probe.LocalAddr().(*net.UDPAddr).AddrPort()
		probe.Close()
		fr := startFaultRouter(t, fwd, srv, fp.p.Addr(), fp.p.Addr())
		game := startGame(t, fwd, 100)
		defer game.close()
		before = source(mono.Now(), "game traffic")
		fr.stop()
		time.Sleep(down)
		fr.start()
		defer fr.stop()
		after = source(mono.Now()+int64(100*time.Millisecond), "game traffic after the router restart")
		return before, after, fp
	}

	b1, a1, fp1 := restart("30s", time.Second)
	replaced := fp1.metric("proxy_server_ports_reused_total")
	fp1.stop()
	b2, a2, fp2 := restart("30s", 4*time.Second)
	kept, reused := fp2.metric("proxy_server_ports_kept_total"), fp2.metric("proxy_server_ports_reused_total")
	fp2.stop()
	b0, a0, fp0 := restart("0", time.Second)
	fp0.stop()

	var table faultTable
	table.row("router killed, back 1 s / 4 s later (proxy session open / ended after session_idle 2 s): the server's view of the player", "same port",
		"same source port both times (%v, then %v; %.0f and %.0f sessions took their flow's port); with keep_server_port 0 it moves %v → %v", a1, a2, replaced, reused, b0, a0)
	table.log(t, true)
	if a1 != b1 || replaced < 1 {
		t.Errorf("router back while the proxy's session was open: server saw %v, then %v (ports reused %.0f)", b1, a1, replaced)
	}
	if a2 != b2 || kept < 1 || reused < 1 {
		t.Errorf("router back after the proxy's session ended: server saw %v, then %v (kept %.0f, reused %.0f)", b2, a2, kept, reused)
	}
	if a0 == b0 {
		t.Errorf("keep_server_port 0: the server saw the same port %v after the restart", a0)
	}
}

// TestFaultsSoak plays 5,000 pps each way for RAIC_FAULTS_SOAK (default 10 s;
// make faults: 5 min) through router and proxy, and prints loss, RSS and
// goroutines (of this process, which runs router, proxy and the game) at 30 s
// (or a third of a shorter run) and at the end.
func TestFaultsSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 10 s or more; not in -short")
	}
	dur := 10 * time.Second
	if v := os.Getenv("RAIC_FAULTS_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("RAIC_FAULTS_SOAK: %v", err)
		}
		dur = d
	}
	const pps = 5000
	n := int(dur.Seconds() * pps)
	rcvbuf := hostinfo.RcvbufErrors() // the kernel's drops are the machine's, not the suite's
	srvConn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srvConn.Close()
	srvConn.SetReadBuffer(4 << 20)
	up, down := make([]uint64, n/64+1), make([]uint64, n/64+1)
	var upN, downN atomic.Int64
	go func() {
		b := make([]byte, 2048)
		for {
			k, from, err := srvConn.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			if q := binary.BigEndian.Uint64(b); k >= 8 && q < uint64(n) {
				if up[q/64]&(1<<(q%64)) == 0 {
					up[q/64] |= 1 << (q % 64)
					upN.Add(1)
				}
				srvConn.WriteToUDPAddrPort(b[:k], from)
			}
		}
	}()
	srvAddr := srvConn.LocalAddr().(*net.UDPAddr).AddrPort()
	fp := startFaultProxy(t, "127.0.0.1:0", srvAddr.String(), "")
	r := startRouter(t, srvAddr, "", fp.p.Addr(), fp.p.Addr())
	client, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	client.SetReadBuffer(4 << 20)
	go func() {
		b := make([]byte, 2048)
		for {
			k, err := client.Read(b)
			if err != nil {
				return
			}
			if q := binary.BigEndian.Uint64(b); k >= 8 && q < uint64(n) && down[q/64]&(1<<(q%64)) == 0 {
				down[q/64] |= 1 << (q % 64)
				downN.Add(1)
			}
		}
	}()
	type sample struct {
		at       time.Duration
		rssKB    int64
		routines int
	}
	var samples []sample
	take := func(at time.Duration) {
		samples = append(samples, sample{at, rssKB(), runtime.NumGoroutine()})
	}
	mid := 30 * time.Second
	if dur < 3*mid {
		mid = dur / 3
	}
	pkt := make([]byte, 100)
	start := time.Now()
	fwd := r.ForwardAddr(0)
	midTaken := false
	for i := 0; i < n; i++ {
		due := start.Add(time.Duration(i) * time.Second / pps)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		binary.BigEndian.PutUint64(pkt, uint64(i))
		client.WriteToUDPAddrPort(pkt, fwd)
		if !midTaken && time.Since(start) >= mid {
			take(time.Since(start))
			midTaken = true
		}
	}
	time.Sleep(500 * time.Millisecond)
	take(time.Since(start))
	lostUp, lostDown := n-int(upN.Load()), n-int(downN.Load())
	var b strings.Builder
	fmt.Fprintf(&b, "\n| soak, %d pps for %v | measured |\n| --- | --- |\n", pps, dur)
	fmt.Fprintf(&b, "| lost up / down | %d / %d of %d (the kernel dropped %d UDP datagrams for full receive buffers meanwhile) |\n",
		lostUp, lostDown, n, hostinfo.RcvbufErrors()-rcvbuf)
	for _, s := range samples {
		fmt.Fprintf(&b, "| at %v: RSS (whole test process) / goroutines | %.1f MB / %d |\n", s.at.Round(time.Second), float64(s.rssKB)/1024, s.routines)
	}
	t.Log(b.String())
	if len(samples) == 2 {
		if g := samples[1].routines - samples[0].routines; g > 10 {
			t.Errorf("goroutines grew by %d during the soak", g)
		}
		if g := samples[1].rssKB - samples[0].rssKB; g > 20<<10 {
			t.Errorf("RSS grew by %d kB during the soak", g)
		}
	}
	if lostUp > n/100 || lostDown-lostUp > n/100 { // down cannot get what never went up
		t.Errorf("soak lost %d up and %d down of %d", lostUp, lostDown, n)
	}
}

// rssKB reads this process's resident set size.
func rssKB() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(l, "VmRSS:")), "%d", &kb)
			return kb
		}
	}
	return 0
}

// TestFaultsIntermediate: restarts with an intermediate between router and
// proxy (router -> intermediate -> capturing relay -> proxy -> server): the
// proxy restarting behind it, a replay of what crossed the last hop before that
// restart, and the intermediate itself stopping and starting again.
func TestFaultsIntermediate(t *testing.T) {
	if testing.Short() {
		t.Skip("takes about 8 s; not in -short")
	}
	var table faultTable
	row := table.row
	defer table.log(t, true)

	srv := newSeqServer(t)
	fp := startFaultProxy(t, "127.0.0.1:0", srv.addr().String(),
		fmt.Sprintf("[[client]]\nid = \"mid\"\nkey = \"%s\"\nallow = [\"%s\"]\nrate_pps = 100000\n", midKey, srv.addr()))
	tap := newTapRelay(t, fp.p.Addr())
	fm := startFaultMid(t, srv.addr(), tap.addr(), tap.addr())
	r := startRouter(t, srv.addr(), "", fm.s.Addr(), fm.s.Addr())
	game := startGame(t, r.ForwardAddr(0), 100)
	att := newAttacker(t)
	waitFor(t, 5*time.Second, "game traffic through router, intermediate and proxy", func() bool {
		seen, _ := srv.snapshot()
		return len(seen) > 100
	})

	// The proxy restarts behind the intermediate.
	kill := mono.Now()
	fp.stop()
	time.Sleep(time.Second)
	fp.start()
	back := mono.Now()
	first := firstAfter(t, srv, back, "game traffic after the proxy restart")
	seen, _ := srv.snapshot()
	sent, lost := game.lostBetween(seen, kill-int64(time.Second), first)
	gap := time.Duration(first - back)
	row("proxy stopped behind an intermediate, started again 1 s later (100 pps)", "flows within 200 ms of the proxy being back (test fails past 500 ms)",
		"flows %v after it is back; %d of %d lost (outage %v); intermediate saw %.0f restart", gap.Round(time.Millisecond), lost, sent,
		time.Duration(back-kill).Round(time.Millisecond), fm.metric("intermediate_next_restarts_total"))
	if gap > 500*time.Millisecond {
		t.Errorf("traffic flowed %v after the proxy was back behind the intermediate, want <= 200 ms (fails past 500 ms)", gap)
	}

	// Replay into the new run everything the intermediate sent the proxy
	// before it was back, once the sessions are re-opened.
	time.Sleep(500 * time.Millisecond)
	_, d0 := srv.snapshot()
	got0 := att.gotBytes.Load()
	pre := tap.capturedSince(0, back)
	for i, dg := range pre {
		att.send(dg, fp.p.Addr())
		if i%256 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	time.Sleep(300 * time.Millisecond)
	_, d1 := srv.snapshot()
	row(fmt.Sprintf("replay after a proxy restart, through an intermediate (%d datagrams tapped before it)", len(pre)), "0 delivered, 0 bytes back",
		"%d delivered, %d bytes back (%.0f hellos refused for an old epoch)", d1-d0, att.gotBytes.Load()-got0,
		fp.metric(`proxy_dropped_total{reason="old_epoch"}`))
	if d1 != d0 || att.gotBytes.Load() != got0 {
		t.Errorf("replay after a proxy restart through an intermediate: %d delivered, %d bytes back", d1-d0, att.gotBytes.Load()-got0)
	}

	// The intermediate stops and starts again on its address.
	kill = mono.Now()
	fm.stop()
	time.Sleep(time.Second)
	fm.start()
	back = mono.Now()
	first = firstAfter(t, srv, back, "game traffic after the intermediate restart")
	seen, _ = srv.snapshot()
	sent, lost = game.lostBetween(seen, kill-int64(time.Second), first)
	gap = time.Duration(first - back)
	row("intermediate stopped, started again 1 s later (100 pps)", "flows within 200 ms of it being back (test fails past 500 ms)",
		"flows %v after it is back; %d of %d lost (outage %v)", gap.Round(time.Millisecond), lost, sent, time.Duration(back-kill).Round(time.Millisecond))
	if gap > 500*time.Millisecond {
		t.Errorf("traffic flowed %v after the intermediate was back, want <= 200 ms (fails past 500 ms)", gap)
	}
	// Both hops proved their addresses: the router answered the
	// intermediate's path challenges, the intermediate the proxy's.
	time.Sleep(200 * time.Millisecond)
	if v := fm.metric("intermediate_paths_validated_total"); v < 1 {
		t.Errorf("intermediate_paths_validated_total = %v: the router answered no path challenge", v)
	}
	if v := fp.metric("proxy_paths_validated_total"); v < 1 {
		t.Errorf("proxy_paths_validated_total = %v: the intermediate answered no path challenge", v)
	}
}
