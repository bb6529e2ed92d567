package integration

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/integration/testkit"
	"github.com/raicnet/raic/pkg/mono"
)

// The product path of peer mode: raic-router binaries, peer-only configs,
// 2+2 uplinks behind NATs, raic-rendezvous between them.

const routerMetricsPort = 9100

// peerRouterProcess is one side's raic-router running in its namespace.
type peerRouterProcess struct {
	side              int
	host              *netns.Host
	testkit.LogBuffer // its log
}

func (r *peerRouterProcess) metrics(t *testing.T) map[string]float64 {
	t.Helper()
	return nsMetrics(t, r.host, fmt.Sprintf("%s:%d", netns.PeerLANGateway(r.side), routerMetricsPort))
}

// peerRouterConfig is side s's router.toml: peer-only, one [[uplink]] per
// uplink of the topology, the other side as its [[peer]] through the
// rendezvous, and extra ([[vport]] or [[peer.service]] tables).
func peerRouterConfig(s, uplinks int, keys peerKeys, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "client_id = %q\nping_interval = \"50ms\"\ndown_after = \"150ms\"\nmetrics = \"%s:%d\"\n",
		peerIDs[s], netns.PeerLANGateway(s), routerMetricsPort)
	for i := 0; i < uplinks; i++ {
		fmt.Fprintf(&b, "\n[[uplink]]\nname = \"up%d\"\nsource = %q\n", i, netns.PeerUplinkAddr(s, i).String())
	}
	fmt.Fprintf(&b, "\n[[peer]]\nid = %q\nkey = %q\nrendezvous = \"%s:%d\"\nrendezvous_key = %q\nport = %d\n",
		peerIDs[1-s], keys.pair.String(), netns.RendezvousAddr, rendezvousPort, keys.rv[s].String(), peerPort)
	b.WriteString(extra)
	return b.String()
}

// startPeerRouter writes side s's config, checks it with -check and runs
// raic-router with it in the router's namespace until the test ends.
func startPeerRouter(t *testing.T, bin string, p *netns.Peers, s int, config string) *peerRouterProcess {
	t.Helper()
	path := filepath.Join(t.TempDir(), fmt.Sprintf("router-%s.toml", peerIDs[s]))
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := run(bin, "-config", path, "-check"); code != 0 {
		t.Fatalf("raic-router -check %s: exit %d\n%s\n%s", path, code, out, config)
	}
	r := &peerRouterProcess{side: s, host: p.Router[s]}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := p.Router[s].CommandContext(ctx, bin, "-config", path)
	cmd.Stdout, cmd.Stderr = r, r
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		if t.Failed() {
			t.Logf("raic-router %s log:\n%s", peerIDs[s], tail(r.String(), 40))
		}
	})
	waitFor(t, 5*time.Second, "raic-router "+peerIDs[s]+" to start its peer", func() bool {
		return strings.Contains(r.String(), "peer ready")
	})
	return r
}

// waitPathsUp waits until both routers have n paths answering keepalives.
func waitPathsUp(t *testing.T, rs [2]*peerRouterProcess, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		a := rs[0].metrics(t)[`router_peer_paths_up{peer="bob"}`]
		b := rs[1].metrics(t)[`router_peer_paths_up{peer="alice"}`]
		if a >= float64(n) && b >= float64(n) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v and %v of %d paths up", within, a, b, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var pathSeries = regexp.MustCompile(`^router_peer_path_copies_received_total\{peer="([^"]*)",uplink="up(\d+)",remote="([^"]*)"\}$`)

// pathCopies sums, from a router's metrics, the data copies received per
// path (the sender's uplink i, known by its NAT's address; the receiver's
// uplink j). sender is the sending side.
func pathCopies(m map[string]float64, sender int) map[pathKey]float64 {
	out := map[pathKey]float64{}
	for name, v := range m {
		f := pathSeries.FindStringSubmatch(name)
		if f == nil || f[1] != peerIDs[sender] {
			continue
		}
		var j int
		fmt.Sscan(f[2], &j)
		from, err := netip.ParseAddrPort(f[3])
		if err != nil {
			continue
		}
		for i := 0; i < netns.MaxUplinks; i++ {
			if from.Addr() == netns.PeerNATAddr(sender, i) {
				out[pathKey{i, j}] += v
			}
		}
	}
	return out
}

// TestPeerRoutersVoIPCall: the VoIP call of TestPeerVoIPCall through the
// product: two raic-router binaries, peer-only, 2 uplinks each behind
// port-restricted NATs, raic-rendezvous introducing them. sipp's caller on
// A's LAN calls A's vports (SIP and RTP), which lead to sipp's callee on B's
// LAN, while uplink 1 of each side loses 5% and goes dark for 2 s. The call
// completes; the RTP loss, as the routers count it, is reported beside each
// single path's (the copies each router counted per path against the
// packets the other sent). scheme is the [[peer]] scheme of both routers
// ("" for the default copies; see TestPeerRoutersVoIPCall).
func peerRoutersVoIPCall(t *testing.T, scheme string) {
	sipp := needSipp(t)
	bin := buildCommand(t, "router/cmd/raic-router")
	p := netns.NewPeersForTest(t, callLinks(routerCallOutages[0], routerCallOutages[1]))
	keys := newPeerKeys(t)
	rv := startRendezvousProcess(t, p, keys)
	gwA, calleeB := netns.PeerLANGateway(0), netns.PeerLANAddr(1)
	var rs [2]*peerRouterProcess
	rs[0] = startPeerRouter(t, bin, p, 0, peerRouterConfig(0, 2, keys, schemeLine(scheme)+fmt.Sprintf(
		"\n[[vport]]\npeer = \"bob\"\nlisten = \"%s:%d\"\nservice = \"sip\"\n\n[[vport]]\npeer = \"bob\"\nlisten = \"%s:%d\"\nservice = \"rtp\"\n",
		gwA, sipPort, gwA, rtpPort)+probeConfig(0)))
	rs[1] = startPeerRouter(t, bin, p, 1, peerRouterConfig(1, 2, keys, schemeLine(scheme)+fmt.Sprintf(
		"\n[[peer.service]]\nname = \"sip\"\ntarget = \"%s:%d\"\n\n[[peer.service]]\nname = \"rtp\"\ntarget = \"%s:%d\"\n",
		calleeB, sipPort, calleeB, rtpPort)+probeConfig(1)))
	waitPathsUp(t, rs, 4, 15*time.Second)
	probes := [2]*probeStream{startProbeReceiver(t, p, 0), startProbeReceiver(t, p, 1)} // what each side's LAN receives
	checkCallInTime(t, p)

	call := runSippCall(t, p, sipp,
		[]string{"-sf", "uas.xml", "-i", calleeB.String(), "-p", fmt.Sprint(sipPort),
			"-mp", fmt.Sprint(rtpPort), "-rtp_echo", "-key", "rtp_addr", gwA.String(), "-key", "rtp_port", fmt.Sprint(rtpPort),
			"-m", "1", "-nostdin", "-trace_err"},
		[]string{fmt.Sprintf("%s:%d", gwA, sipPort), "-sf", "uac.xml",
			"-i", netns.PeerLANAddr(0).String(), "-p", "5062", "-mp", "6100", "-s", "callee",
			"-d", fmt.Sprint(callSeconds*1000 + 500), "-m", "1", "-nostdin", "-trace_err"},
		func() {
			// The measurement stream, LAN to LAN both ways, during the call.
			var wg sync.WaitGroup
			for sd := 0; sd < 2; sd++ {
				wg.Add(1)
				go func() { defer wg.Done(); sendProbes(t, p, sd, voicePPS*callSeconds, time.Second/voicePPS) }()
			}
			wg.Wait()
		})
	time.Sleep(500 * time.Millisecond)
	failSippCall(t, call)

	m := [2]map[string]float64{rs[0].metrics(t), rs[1].metrics(t)}
	// Copies: every packet on every path. A coded scheme puts its shards
	// on the paths, each its share of them; a path's loss is then what it
	// fell short of its share (a path that is down hands its share over).
	share := schemeShare(t, scheme, 4)
	// Four copies survive any three lost; a coded scheme fewer (rs 2+2:
	// any two of four shards), so it may lose a few packets more, mostly
	// in the 150 ms before a dead uplink's paths are found down.
	maxLoss := 0.5
	if scheme != "" {
		maxLoss = 1
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "%-26s %9s %8s\n", "path (every data packet)", "packets", "loss %")
	for _, d := range callDirections {
		worst := checkSessionLoss(t, &sb, m, d, share, maxLoss)
		pr := probes[d.receiver].result(voicePPS * callSeconds)
		fmt.Fprintf(&sb, "%-26s %9d %8.2f  one-way p50 %s ms, p99 %s ms, duplicates delivered %d\n",
			d.name+" LAN→LAN probe stream", pr.got, pr.loss, ms(pr.q.p50), ms(pr.q.p99), pr.dups)
		if pr.dups != 0 {
			t.Errorf("%s: %d duplicates delivered to the LAN", d.name, pr.dups)
		}
		if pr.loss > maxLoss || pr.loss >= worst {
			t.Errorf("%s: the probe stream lost %.2f%%, want ≤ %v%% and below the worst path's %.2f%%", d.name, pr.loss, maxLoss, worst)
		}
	}
	// RTP as the routers count it: what A's vport took from the caller,
	// what B handed the callee, what the callee echoed into B, what A
	// handed back to the caller.
	vp := func(s int, dir string) float64 {
		return m[s][fmt.Sprintf(`router_peer_vport_packets_total{peer=%q,service="rtp",dir=%q}`, peerIDs[1-s], dir)]
	}
	fromCaller, atCallee := vp(0, "client_to_peer"), vp(1, "peer_to_service")
	echoed, backAtCaller := vp(1, "service_to_peer"), vp(0, "peer_to_client")
	if fromCaller < float64(callSeconds*50) {
		t.Errorf("A's rtp vport took %v packets from the caller, want ≥ %d (16 s at 50/s)", fromCaller, callSeconds*50)
	}
	up, rt := checkRTPLoss(t, fromCaller, atCallee, echoed, backAtCaller)
	fmt.Fprintf(&sb, "SIP call: completed; RTP %.0f packets from the caller, %.0f reached the callee (loss %.2f%%), %.0f echoed, %.0f back at the caller (round-trip loss %.2f%%)\n",
		fromCaller, atCallee, up, echoed, backAtCaller, rt)
	sb.WriteString(peerWireCost(t, rs, scheme))
	t.Logf("raic-router ×2, peer-only, 2+2 uplinks behind port-restricted NATs, uplink 1 of each side 5%% loss and a 2 s outage, scheme %s:\n%s",
		cmp.Or(scheme, "copy"), sb.String())
	if v := rv.metrics(t)["raic_rendezvous_relayed_total"]; v != 0 {
		t.Errorf("the call was relayed (%v datagrams) although punching works", v)
	}
}

// The probe stream: each LAN sends voice-sized packets through its router's
// "probe" vport to the other LAN's probe service, which records them.
const probeVPort, probeService = 7100, 7200

func probeConfig(s int) string {
	return fmt.Sprintf("\n[[vport]]\npeer = %q\nlisten = \"%s:%d\"\nservice = \"probe\"\n\n[[peer.service]]\nname = \"probe\"\ntarget = \"%s:%d\"\n",
		peerIDs[1-s], netns.PeerLANGateway(s), probeVPort, netns.PeerLANAddr(s), probeService)
}

// probeStream records what one LAN's probe service received.
type probeStream struct {
	mu    sync.Mutex
	n     map[uint32]int
	delay []time.Duration // of first copies
}

type probeResult struct {
	got, dups int
	loss      float64
	q         pctl
}

func (ps *probeStream) result(sent int) probeResult {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	r := probeResult{got: len(ps.n), loss: 100 * (1 - float64(len(ps.n))/float64(sent)), q: quantiles(slices.Clone(ps.delay))}
	for _, c := range ps.n {
		r.dups += c - 1
	}
	return r
}

// startProbeReceiver listens on side s's LAN host for the other side's
// probes. The namespaces share one clock, so send times are comparable.
func startProbeReceiver(t *testing.T, p *netns.Peers, s int) *probeStream {
	t.Helper()
	var c *net.UDPConn
	if err := p.LAN[s].Do(func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netns.PeerLANAddr(s), probeService)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ps := &probeStream{n: map[uint32]int{}}
	go func() {
		b := make([]byte, 2048)
		for {
			k, err := c.Read(b)
			if err != nil {
				return
			}
			now := mono.Now()
			seq, ok := parseVoice(b[:k])
			if !ok {
				continue
			}
			ps.mu.Lock()
			if ps.n[seq] == 0 {
				ps.delay = append(ps.delay, time.Duration(now-int64(binary.BigEndian.Uint64(b[8:]))))
			}
			ps.n[seq]++
			ps.mu.Unlock()
		}
	}()
	return ps
}

// sendProbes sends n voice packets every gap from side s's LAN host to its
// router's probe vport.
func sendProbes(t *testing.T, p *netns.Peers, s, n int, gap time.Duration) {
	var c *net.UDPConn
	if err := p.LAN[s].Do(func() (err error) {
		c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(netns.PeerLANGateway(s), probeVPort)))
		return err
	}); err != nil {
		t.Error(err)
		return
	}
	defer c.Close()
	buf := make([]byte, 256)
	tk := time.NewTicker(gap)
	defer tk.Stop()
	for seq := 0; seq < n; seq++ {
		c.Write(voicePacket(buf, uint32(seq), mono.Now()))
		<-tk.C
	}
}

// TestPeerRoutersRelayWhenPunchingBlocked: raic-router binaries behind a
// symmetric NAT and a port-restricted one cannot punch; both routers log it,
// raic-rendezvous relays (and counts it), and a UDP flow through a vport
// still gets every packet through and back.
func TestPeerRoutersRelayWhenPunchingBlocked(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	bin := buildCommand(t, "router/cmd/raic-router")
	p := netns.NewPeersForTest(t, netns.PeersOptions{NAT: [2]netns.NAT{netns.NATSymmetric, netns.NATPortRestricted}})
	keys := newPeerKeys(t)
	rv := startRendezvousProcess(t, p, keys)
	const echoPort = 7000
	var echo *net.UDPConn
	if err := p.LAN[1].Do(func() (err error) {
		echo, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netns.PeerLANAddr(1), echoPort)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		b := make([]byte, 2048)
		for {
			n, from, err := echo.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			echo.WriteToUDPAddrPort(b[:n], from)
		}
	}()
	gwA := netns.PeerLANGateway(0)
	var rs [2]*peerRouterProcess
	rs[0] = startPeerRouter(t, bin, p, 0, peerRouterConfig(0, 2, keys,
		fmt.Sprintf("\n[[vport]]\npeer = \"bob\"\nlisten = \"%s:%d\"\nservice = \"echo\"\n", gwA, echoPort)))
	rs[1] = startPeerRouter(t, bin, p, 1, peerRouterConfig(1, 2, keys,
		fmt.Sprintf("\n[[peer.service]]\nname = \"echo\"\ntarget = \"%s:%d\"\n", netns.PeerLANAddr(1), echoPort)))
	waitFor(t, 20*time.Second, "both routers to say the rendezvous relays", func() bool {
		return strings.Contains(rs[0].String(), "the rendezvous relays this call") &&
			strings.Contains(rs[1].String(), "the rendezvous relays this call")
	})
	var c *net.UDPConn
	if err := p.LAN[0].Do(func() (err error) {
		c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(gwA, echoPort)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 200
	got := map[string]bool{}
	buf := make([]byte, 2048)
	for i := 0; i < n; i++ {
		fmt.Fprintf(c, "relayed %d", i)
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		k, err := c.Read(buf)
		if err != nil {
			t.Fatalf("packet %d: no echo through the relay: %v", i, err)
		}
		got[string(buf[:k])] = true
		time.Sleep(5 * time.Millisecond)
	}
	if len(got) != n {
		t.Fatalf("%d distinct echoes of %d", len(got), n)
	}
	ma, mb := rs[0].metrics(t), rs[1].metrics(t)
	if ma[`router_peer_paths_up{peer="bob"}`] != 0 || mb[`router_peer_paths_up{peer="alice"}`] != 0 {
		t.Fatalf("paths up through a NAT that blocks punching: A %v, B %v", ma[`router_peer_paths_up{peer="bob"}`], mb[`router_peer_paths_up{peer="alice"}`])
	}
	if ma[`router_peer_relay_received{peer="bob"}`] < n || mb[`router_peer_relay_received{peer="alice"}`] < n {
		t.Fatalf("relay_received: A %v, B %v, want ≥ %d each", ma[`router_peer_relay_received{peer="bob"}`], mb[`router_peer_relay_received{peer="alice"}`], n)
	}
	mr := rv.metrics(t)
	if mr["raic_rendezvous_relayed_total"] < 2*n || mr["raic_rendezvous_relay_pairs"] != 1 {
		t.Fatalf("rendezvous metrics %v: want ≥ %d relayed and 1 relay pair", mr, 2*n)
	}
	if !strings.Contains(rv.String(), "relay on") {
		t.Fatalf("the rendezvous did not log the relay:\n%s", rv.String())
	}
}
