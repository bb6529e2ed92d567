package integration

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/raicnet/raic/integration/cmd/suppressbench/bed"
	"github.com/raicnet/raic/integration/linkem"
	"github.com/raicnet/raic/integration/netns"
)

// Transparent mode with [suppress]: the classifier on the LAN ingress and
// suppress_egress on the uplink's and the LAN's egress run from one eBPF
// datapath (transparent mode's), and transparent mode's proxied sessions are
// what suppression protects.

const (
	tsUpBps     = 4_000_000 // [[suppress.uplink]] up_bps
	tsTbfBps    = 5_000_000 // the line: tbf on the router's uplink egress
	tsQueue     = 250 * time.Millisecond
	tsBulkPort  = 5001
	tsBulkFlows = 4
	tsBulkRTT   = 20 * time.Millisecond
)

// TestTransparentWithSuppression: a 60 pps game flow that transparent mode
// captures and proxies, beside saturating TCP uploads through a 5 Mbit/s line
// with a 250 ms queue. Suppression, on transparent mode's datapath, must see the
// session, raise the upload level to shape or cut, hold bulk back (rate drops
// or CE marks) and let the game's packets pass as LC; the game keeps its
// tunnel, loses almost nothing and does not wait in the line's queue.
func TestTransparentWithSuppression(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, tc and eBPF")
	}
	sup := fmt.Sprintf(`
[suppress]
enabled = true
lan_device = "lan0"
[[suppress.uplink]]
name = "isp0"
device = "up0"
up_bps = %d
down_bps = 20_000_000
[suppress.levels]
shape_share = 1.0
ecn = true
`, tsUpBps)
	var routerNS *netns.Host
	// The bulk peer is a server 20 ms away, as in the suppression benchmark:
	// TCP a fraction of a millisecond from the LAN host has a window of a
	// packet or two, and every drop would cost it a retransmission timeout.
	oneWay := linkem.Duration(tsBulkRTT / 2)
	o := netns.GameOptions{Uplinks: 1, InternetLink: &netns.LinkPair{Up: linkem.Config{Delay: oneWay}, Down: linkem.Config{Delay: oneWay}}}
	b := startTransparentBedConfig(t, o, func(g *netns.Game) {
		routerNS = g.Router
		// One segment per skb, as a router behind real NICs sees them
		// (see integration/cmd/suppressbench/bed), and ECN-capable bulk.
		for _, h := range []*netns.Host{g.LAN, g.Internet} {
			if err := h.IP("link", "set", "dev", "eth0", "gso_max_size", "1500"); err != nil {
				t.Fatal(err)
			}
			if err := h.Sysctl("net.ipv4.tcp_ecn", "1"); err != nil {
				t.Fatal(err)
			}
		}
		limit := tsTbfBps / 8 * int(tsQueue/time.Millisecond) / 1000
		if out, err := g.Router.Command("tc", "qdisc", "replace", "dev", "up0", "root", "tbf",
			"rate", fmt.Sprintf("%dkbit", tsTbfBps/1000), "burst", "4000", "limit", fmt.Sprint(limit)).CombinedOutput(); err != nil {
			t.Fatalf("tbf on up0: %v: %s", err, out)
		}
		// Registered before the router's cleanup, so it runs after the
		// router has stopped: nothing of the datapath may stay attached.
		t.Cleanup(func() {
			if att, err := tcxPrograms(g.Router); err != nil {
				t.Logf("tcx attachments not checked after exit: %v", err)
			} else if len(att) > 0 {
				t.Errorf("eBPF programs still attached after the router exited: %v", att)
			}
		})
	}, true, sup)

	// The datapath: classify_ingress on lan0's ingress, suppress_egress on
	// lan0's and up0's egress, all sharing their maps (one object loaded).
	if att, err := tcxPrograms(routerNS); err != nil {
		t.Logf("tcx attachments not checked: %v", err)
	} else {
		checkSharedDatapath(t, att)
	}

	// Bulk sink on the internet host.
	var sunk atomic.Uint64
	var ln net.Listener
	if err := b.g.Internet.Do(func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(netns.InternetAddr, tsBulkPort).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var sinks sync.WaitGroup
	var connMu sync.Mutex
	var conns []net.Conn
	defer func() {
		ln.Close()
		connMu.Lock()
		for _, c := range conns {
			c.Close()
		}
		connMu.Unlock()
		sinks.Wait()
	}()
	sinks.Add(1)
	go func() {
		defer sinks.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			connMu.Lock()
			conns = append(conns, c)
			connMu.Unlock()
			sinks.Add(1)
			go func() {
				defer sinks.Done()
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					sunk.Add(uint64(n))
					if err != nil {
						return
					}
				}
			}()
		}
	}()

	// Metrics, sampled throughout: the level may move between shape and cut.
	var (
		mmu      sync.Mutex
		maxLevel float64
		maxSess  float64
		shapedAt time.Time
		pollDone = make(chan struct{})
		stopPoll = make(chan struct{})
	)
	go func() {
		defer close(pollDone)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopPoll:
				return
			case <-tick.C:
			}
			m := b.r.Metrics().Snapshot()
			mmu.Lock()
			lvl := m[`router_suppress_level{uplink="isp0",dir="up"}`]
			if lvl >= 2 && shapedAt.IsZero() {
				shapedAt = time.Now()
			}
			maxLevel = max(maxLevel, lvl)
			maxSess = max(maxSess, m["router_suppress_sessions"])
			mmu.Unlock()
		}
	}()
	defer func() {
		select {
		case <-stopPoll:
		default:
			close(stopPoll)
		}
		<-pollDone
	}()

	// The game starts first, as a match would.
	const (
		pps      = 60
		lead     = time.Second
		gameTime = 15 * time.Second
		settle   = 5 * time.Second // after bulk starts: RTT and loss measured from here
		n        = int(pps * gameTime / time.Second)
	)
	server := netip.AddrPortFrom(netns.ServerAddr, tpGamePort)
	srv := newEchoServer(t, b.g.Server, tpGamePort, n)
	cl := newRTTClient(t, b.g, server, n)
	ctx, cancel := context.WithTimeout(context.Background(), gameTime+10*time.Second)
	defer cancel()
	start := time.Now()
	gameDone := make(chan struct{})
	go func() { cl.send(ctx, server, n, pps); close(gameDone) }()

	waitFor(t, 3*time.Second, "the game flow to be proxied", func() bool {
		return b.metric("router_transparent_flows_proxied_total") >= 1
	})
	time.Sleep(time.Until(start.Add(lead)))

	bctx, bcancel := context.WithCancel(ctx)
	var bulk sync.WaitGroup
	defer func() { bcancel(); bulk.Wait() }()
	bulkStart := time.Now()
	for i := 0; i < tsBulkFlows; i++ {
		if err := bed.Saturate(bctx, b.g.LAN, netip.AddrPortFrom(netns.InternetAddr, tsBulkPort), &bulk); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Until(bulkStart.Add(settle)))
	sunk0, t0 := sunk.Load(), time.Now()

	<-gameDone
	sunk1, el := sunk.Load(), time.Since(t0)
	time.Sleep(500 * time.Millisecond) // the last replies
	m := b.r.Metrics().Snapshot()
	close(stopPoll)
	<-pollDone
	bcancel()
	bulk.Wait()

	// Game: through the tunnel, all of it.
	windowFrom := bulkStart.Add(settle)
	st := cl.stats(windowFrom)
	up, _, upBad := srv.got.snapshot()
	down, dups, downBad := cl.got.snapshot()
	goodput := float64(sunk1-sunk0) * 8 / el.Seconds()
	mmu.Lock()
	lvlMax, sessMax, shaped := maxLevel, maxSess, shapedAt
	mmu.Unlock()
	t.Logf("game: %d sent, %d reached the server, %d replies; from %v after bulk start: %d sent, %d lost, RTT p50 %v p99 %v max %v",
		n, up, down, settle, st.sent, st.lost, st.p50, st.p99, st.max)
	t.Logf("bulk upload goodput %.2f Mbit/s (line %d, up_bps %d)", goodput/1e6, tsTbfBps/1_000_000, tsUpBps/1_000_000)
	shapeAfter := "never"
	if !shaped.IsZero() {
		shapeAfter = shaped.Sub(bulkStart).Round(time.Millisecond).String()
	}
	t.Logf("suppression: max up level %v (shape or above %s after bulk start), level at end up %v down %v, changes up %v; sessions %v",
		lvlMax, shapeAfter, m[`router_suppress_level{uplink="isp0",dir="up"}`], m[`router_suppress_level{uplink="isp0",dir="down"}`],
		m[`router_suppress_level_changes_total{uplink="isp0",dir="up"}`], sessMax)
	var acts []string
	for _, a := range []string{"passed", "lc_passed", "dropped_rate", "dropped_fraction", "dropped_cutoff", "ecn_marked", "dscp_rewritten", "errors"} {
		acts = append(acts, fmt.Sprintf("%s=%v", a, m[`router_suppress_packets_total{action="`+a+`"}`]))
	}
	t.Logf("suppress_egress: %s; controller errors %v", strings.Join(acts, " "), m["router_suppress_errors_total"])
	t.Logf("transparent: %v TUN packets, %v replies, %v flows proxied",
		m["router_transparent_tun_packets_total"], m["router_transparent_replies_total"], m["router_transparent_flows_proxied_total"])

	// The classifier found the flow LC from its first packet and the router
	// proxied it: one flow, every packet through the TUN, the server sees
	// only the proxy.
	if v := m["router_transparent_flows_proxied_total"]; v != 1 {
		t.Errorf("%v flows proxied, want 1", v)
	}
	for a, k := range srv.sources() {
		if a != netns.ProxyAddr {
			t.Errorf("server saw %d game packets from %v, not from the proxy %v", k, a, netns.ProxyAddr)
		}
	}
	if v := m["router_transparent_tun_packets_total"]; v < float64(n)*0.95 {
		t.Errorf("%v packets reached the TUN device, want about %d: the game flow left the tunnel", v, n)
	}
	if upBad+downBad+dups > 0 {
		t.Errorf("game: corrupted %d/%d, duplicates %d", upBad, downBad, dups)
	}
	// Loss: small over the whole run (the line's queue may tail-drop a few
	// before suppression acts), very small once it has.
	if down < n*90/100 {
		t.Errorf("game: %d/%d replies over the run, want at least 90%%", down, n)
	}
	if st.sent < 300 || st.lost*20 > st.sent {
		t.Errorf("game: %d of %d lost after suppression settled, want under 5%%", st.lost, st.sent)
	}

	// Suppression followed the transparent session and acted on bulk.
	if sessMax < 1 {
		t.Error("suppression never saw a game session: transparent mode's sessions are not followed")
	}
	if lvlMax < 2 {
		t.Errorf("upload level reached %v at most, want shape (2) or cut (3)", lvlMax)
	}
	if v := m[`router_suppress_packets_total{action="lc_passed"}`]; v < float64(n)/2 {
		t.Errorf("%v packets passed suppress_egress as LC, want at least about the game's %d", v, n)
	}
	if m[`router_suppress_packets_total{action="dropped_rate"}`]+m[`router_suppress_packets_total{action="ecn_marked"}`] == 0 {
		t.Error("no bulk packet dropped by the rate cap or ECN-marked: bulk was not held back")
	}
	if v := m["router_suppress_errors_total"]; v != 0 {
		t.Errorf("%v suppression errors (map writes or reads on the shared datapath)", v)
	}
	// Held back, not stopped.
	if goodput < 300_000 {
		t.Errorf("bulk upload starved: %.2f Mbit/s", goodput/1e6)
	}
	// The game does not wait behind bulk in the line's 250 ms queue, which
	// it would without suppression. The bound is far from both.
	if st.p99 > 100*time.Millisecond {
		t.Errorf("game RTT p99 %v after suppression settled, want under 100 ms (the line's queue holds %v)", st.p99, tsQueue)
	}
}

// tcxAttached is an eBPF program attached with tcx: where, and its maps.
type tcxAttached struct {
	where string // "lan0 ingress"
	name  string
	maps  []ebpf.MapID
}

func (a tcxAttached) String() string { return a.where + ":" + a.name }

// tcxPrograms lists the tcx programs on the router's lan0 and up0.
func tcxPrograms(h *netns.Host) ([]tcxAttached, error) {
	var out []tcxAttached
	err := h.Do(func() error {
		for _, dev := range []string{"lan0", "up0"} {
			ifi, err := net.InterfaceByName(dev)
			if err != nil {
				return err
			}
			for _, dir := range []struct {
				name string
				typ  ebpf.AttachType
			}{{"ingress", ebpf.AttachTCXIngress}, {"egress", ebpf.AttachTCXEgress}} {
				res, err := link.QueryPrograms(link.QueryOptions{Target: ifi.Index, Attach: dir.typ})
				if err != nil {
					return fmt.Errorf("query %s %s: %w", dev, dir.name, err)
				}
				for _, p := range res.Programs {
					a := tcxAttached{where: dev + " " + dir.name, name: fmt.Sprint(p.ID)}
					if prog, err := ebpf.NewProgramFromID(p.ID); err == nil {
						if info, err := prog.Info(); err == nil {
							a.name = info.Name
							a.maps, _ = info.MapIDs()
						}
						prog.Close()
					}
					out = append(out, a)
				}
			}
		}
		return nil
	})
	return out, err
}

// checkSharedDatapath asserts the classifier on lan0's ingress and the
// suppressor on both egresses, from one loaded object: they use the same maps.
func checkSharedDatapath(t *testing.T, att []tcxAttached) {
	t.Helper()
	want := map[string]string{"lan0 ingress": "classify", "lan0 egress": "suppress", "up0 egress": "suppress"}
	got := map[string]tcxAttached{}
	for _, a := range att {
		if _, dup := got[a.where]; dup {
			t.Errorf("more than one program on %s: %v", a.where, att)
		}
		got[a.where] = a
	}
	for where, prefix := range want {
		if a, ok := got[where]; !ok || !strings.HasPrefix(a.name, prefix) {
			t.Errorf("%s: want a %s program, have %v", where, prefix, att)
		}
	}
	if a, ok := got["up0 ingress"]; ok {
		t.Errorf("unexpected program on up0 ingress: %v", a)
	}
	cls := got["lan0 ingress"]
	for _, where := range []string{"lan0 egress", "up0 egress"} {
		s := got[where]
		shared := 0
		for _, id := range s.maps {
			if slices.Contains(cls.maps, id) {
				shared++
			}
		}
		if len(cls.maps) == 0 || shared == 0 {
			t.Errorf("%s (maps %v) shares no map with the classifier (maps %v): two datapaths, not one", where, s.maps, cls.maps)
		}
	}
}

// rttClient is the game client of TestTransparentWithSuppression: an
// unconnected UDP socket on the LAN host that remembers when it sent each
// packet and times the server's echo.
type rttClient struct {
	conn *net.UDPConn
	got  *tally
	mu   sync.Mutex
	sent []time.Time
	rtt  []time.Duration // 0: no reply
}

func newRTTClient(t *testing.T, g *netns.Game, server netip.AddrPort, n int) *rttClient {
	c := &rttClient{conn: udpIn(t, g.LAN, netip.AddrPortFrom(netns.LANAddr, 0)), got: newTally(n),
		sent: make([]time.Time, n), rtt: make([]time.Duration, n)}
	go c.receive(server)
	return c
}

func (c *rttClient) receive(server netip.AddrPort) {
	buf := make([]byte, 2048)
	for {
		k, from, err := c.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		now := time.Now()
		if from != server || k != checkPktLen || buf[0] != 'S' {
			continue
		}
		c.got.add(buf[:k], 'S')
		seq := binary.BigEndian.Uint32(buf[1:])
		c.mu.Lock()
		if int(seq) < len(c.rtt) && c.rtt[seq] == 0 && !c.sent[seq].IsZero() {
			c.rtt[seq] = max(now.Sub(c.sent[seq]), 1)
		}
		c.mu.Unlock()
	}
}

func (c *rttClient) send(ctx context.Context, to netip.AddrPort, n int, pps float64) {
	stream(ctx, n, pps, 'C', func(b []byte) {
		seq := binary.BigEndian.Uint32(b[1:])
		c.mu.Lock()
		c.sent[seq] = time.Now()
		c.mu.Unlock()
		c.conn.WriteToUDPAddrPort(b, to)
	})
}

type rttStats struct {
	sent, lost    int
	p50, p99, max time.Duration
}

// stats summarises the packets sent from from on.
func (c *rttClient) stats(from time.Time) rttStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	var s rttStats
	var rtts []time.Duration
	for i, at := range c.sent {
		if at.IsZero() || at.Before(from) {
			continue
		}
		s.sent++
		if c.rtt[i] == 0 {
			s.lost++
			continue
		}
		rtts = append(rtts, c.rtt[i])
	}
	if len(rtts) > 0 {
		slices.Sort(rtts)
		s.p50 = rtts[len(rtts)/2]
		s.p99 = rtts[len(rtts)*99/100]
		s.max = rtts[len(rtts)-1]
	}
	return s
}
