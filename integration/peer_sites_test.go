package integration

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/pkg/mono"
)

// Site to site: two raic-router binaries in transparent mode, each the
// gateway of its LAN (198.18.170.0/24 and 198.18.171.0/24), peer-only, 2+2
// uplinks behind port-restricted NATs, raic-rendezvous introducing them. The
// LAN hosts know nothing of the routers: the caller on LAN A calls the
// callee on LAN B by its LAN address, and the callee sees the caller's own
// address.

// The call's ports: SIP 5060 on both hosts, RTP in the classifier's RTP range.
const (
	siteCallerRTP, siteCalleeRTP = 20000, 22000
	siteProbePort, siteProbeFrom = 7300, 7301 // the probe streams' receiver and sender ports
)

// siteRouterConfig is side s's router.toml: peerRouterConfig with the
// other side's LAN on the [[peer]] and transparent mode on lan0. Side A
// names its own LAN; side B takes it from lan0's address.
func siteRouterConfig(s int, keys peerKeys) string {
	extra := fmt.Sprintf("lan = [\"198.18.%d.0/24\"]\n\n[transparent]\nenabled = true\nlan = \"lan0\"\ntun_address = \"198.18.255.%d/32\"\n",
		170+(1-s), 250+s)
	if s == 0 {
		extra += "lan_prefixes = [\"198.18.170.0/24\"]\n"
	}
	return peerRouterConfig(s, 2, keys, extra)
}

// siteProbes records what one LAN host's probe socket received, and from
// which source addresses.
type siteProbes struct {
	mu      sync.Mutex
	n       map[uint32]int
	delay   []time.Duration
	sources map[netip.AddrPort]int
}

func startSiteProbeReceiver(t *testing.T, p *netns.Peers, s int) *siteProbes {
	t.Helper()
	var c *net.UDPConn
	if err := p.LAN[s].Do(func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netns.PeerLANAddr(s), siteProbePort)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ps := &siteProbes{n: map[uint32]int{}, sources: map[netip.AddrPort]int{}}
	go func() {
		b := make([]byte, 2048)
		for {
			k, from, err := c.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			now := mono.Now()
			seq, ok := parseVoice(b[:k])
			if !ok {
				continue
			}
			ps.mu.Lock()
			ps.sources[from]++
			if ps.n[seq] == 0 {
				ps.delay = append(ps.delay, time.Duration(now-int64(binary.BigEndian.Uint64(b[8:]))))
			}
			ps.n[seq]++
			ps.mu.Unlock()
		}
	}()
	return ps
}

func (ps *siteProbes) result(sent int) (probeResult, map[netip.AddrPort]int) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	r := probeResult{got: len(ps.n), loss: 100 * (1 - float64(len(ps.n))/float64(sent)), q: quantiles(slices.Clone(ps.delay))}
	for _, c := range ps.n {
		r.dups += c - 1
	}
	return r, cloneSources(ps.sources)
}

func cloneSources(m map[netip.AddrPort]int) map[netip.AddrPort]int {
	out := make(map[netip.AddrPort]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// sendSiteProbes sends n voice packets every gap from side s's LAN host
// straight to the other LAN host's address: its router is only its gateway.
func sendSiteProbes(t *testing.T, p *netns.Peers, s, n int, gap time.Duration) {
	var c *net.UDPConn
	if err := p.LAN[s].Do(func() (err error) {
		c, err = net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netns.PeerLANAddr(s), siteProbeFrom)),
			net.UDPAddrFromAddrPort(netip.AddrPortFrom(netns.PeerLANAddr(1-s), siteProbePort)))
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

// seenFrom counts, with nft in a LAN host's namespace, the UDP packets that
// arrive from the other LAN host's own address to the SIP and RTP ports.
func seenFrom(t *testing.T, h *netns.Host, from netip.Addr, ports ...int) func() map[int]int {
	t.Helper()
	var rules strings.Builder
	for _, p := range ports {
		fmt.Fprintf(&rules, "    ip saddr %s udp dport %d counter comment \"port%d\"\n", from, p, p)
	}
	cmd := h.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader("table ip raic_seen {\n  chain in {\n    type filter hook input priority 0; policy accept;\n" + rules.String() + "  }\n}\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v: %s", h.Name, err, out)
	}
	re := regexp.MustCompile(`dport (\d+) counter packets (\d+)`)
	return func() map[int]int {
		out, _ := h.Command("nft", "list", "table", "ip", "raic_seen").CombinedOutput()
		got := map[int]int{}
		for _, m := range re.FindAllStringSubmatch(string(out), -1) {
			p, _ := strconv.Atoi(m[1])
			n, _ := strconv.Atoi(m[2])
			got[p] = n
		}
		return got
	}
}

// TestPeerSitesVoIPCall: the call of TestPeerRoutersVoIPCall with the
// routers in transparent mode, site to site. sipp's caller on LAN A calls
// sipp's callee on LAN B at its LAN address (SIP 5060, RTP echoed), while
// uplink 1 of each side loses 5% and goes dark for 2 s. The call completes;
// the callee's host sees SIP and RTP from the caller's own address (an nft
// counter on it), and so do the probe streams between the LAN hosts; the
// RTP loss the routers count is reported beside each single path's.
func TestPeerSitesVoIPCall(t *testing.T) {
	sipp := needSipp(t)
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("no /dev/net/tun: transparent mode needs a TUN device")
	}
	bin := buildCommand(t, "router/cmd/raic-router")
	p := netns.NewPeersForTest(t, callLinks(routerCallOutages[0], routerCallOutages[1]))
	keys := newPeerKeys(t)
	rv := startRendezvousProcess(t, p, keys)
	callerA, calleeB := netns.PeerLANAddr(0), netns.PeerLANAddr(1)
	var rs [2]*peerRouterProcess
	for s := 0; s < 2; s++ {
		rs[s] = startPeerRouter(t, bin, p, s, siteRouterConfig(s, keys))
		waitFor(t, 10*time.Second, "raic-router "+peerIDs[s]+" to set up transparent mode", func() bool {
			return strings.Contains(rs[s].String(), "transparent mode ready")
		})
	}
	waitPathsUp(t, rs, 4, 15*time.Second)
	seenAtB := seenFrom(t, p.LAN[1], callerA, sipPort, siteCalleeRTP, siteProbePort)
	seenAtA := seenFrom(t, p.LAN[0], calleeB, sipPort, siteCallerRTP, siteProbePort)
	probes := [2]*siteProbes{startSiteProbeReceiver(t, p, 0), startSiteProbeReceiver(t, p, 1)}
	checkCallInTime(t, p)

	// The callee offers its own address in its SDP: nothing on the way
	// rewrites addresses.
	call := runSippCall(t, p, sipp,
		[]string{"-sf", "uas.xml", "-i", calleeB.String(), "-p", fmt.Sprint(sipPort),
			"-mp", fmt.Sprint(siteCalleeRTP), "-rtp_echo", "-key", "rtp_addr", calleeB.String(), "-key", "rtp_port", fmt.Sprint(siteCalleeRTP),
			"-m", "1", "-nostdin", "-trace_err"},
		[]string{fmt.Sprintf("%s:%d", calleeB, sipPort), "-sf", "uac.xml",
			"-i", callerA.String(), "-p", fmt.Sprint(sipPort), "-mp", fmt.Sprint(siteCallerRTP), "-s", "callee",
			"-d", fmt.Sprint(callSeconds*1000 + 500), "-m", "1", "-nostdin", "-trace_err"},
		func() {
			var wg sync.WaitGroup
			for sd := 0; sd < 2; sd++ {
				wg.Add(1)
				go func() { defer wg.Done(); sendSiteProbes(t, p, sd, voicePPS*callSeconds, time.Second/voicePPS) }()
			}
			wg.Wait()
		})
	time.Sleep(500 * time.Millisecond)
	failSippCall(t, call)

	// The far hosts saw the near hosts' own addresses.
	atB, atA := seenAtB(), seenAtA()
	if atB[sipPort] == 0 || atB[siteCalleeRTP] < callSeconds*voicePPS*9/10 || atB[siteProbePort] == 0 {
		t.Errorf("the callee's host got from %v: SIP %d, RTP %d, probes %d packets: want SIP, ≥ 90%% of the RTP and the probes from the caller's own address",
			callerA, atB[sipPort], atB[siteCalleeRTP], atB[siteProbePort])
	}
	if atA[sipPort] == 0 || atA[siteCallerRTP] < callSeconds*voicePPS*9/10 || atA[siteProbePort] == 0 {
		t.Errorf("the caller's host got from %v: SIP %d, RTP %d, probes %d packets: want SIP, ≥ 90%% of the echoed RTP and the probes from the callee's own address",
			calleeB, atA[sipPort], atA[siteCallerRTP], atA[siteProbePort])
	}

	m := [2]map[string]float64{rs[0].metrics(t), rs[1].metrics(t)}
	var sb strings.Builder
	fmt.Fprintf(&sb, "%-26s %9s %8s\n", "path (every data packet)", "packets", "loss %")
	for _, d := range callDirections {
		worst := checkSessionLoss(t, &sb, m, d, 1, 0.5)
		pr, sources := probes[d.receiver].result(voicePPS * callSeconds)
		fmt.Fprintf(&sb, "%-26s %9d %8.2f  one-way p50 %s ms, p99 %s ms, duplicates delivered %d, sources %v\n",
			d.name+" LAN→LAN probe stream", pr.got, pr.loss, ms(pr.q.p50), ms(pr.q.p99), pr.dups, sources)
		want := netip.AddrPortFrom(netns.PeerLANAddr(d.sender), siteProbeFrom)
		if len(sources) != 1 || sources[want] == 0 {
			t.Errorf("%s: the probes came from %v, want only from the sending host's own %v", d.name, sources, want)
		}
		if pr.dups != 0 {
			t.Errorf("%s: %d duplicates delivered to the LAN", d.name, pr.dups)
		}
		if pr.loss > 0.5 || pr.loss >= worst {
			t.Errorf("%s: the probe stream lost %.2f%%, want ≤ 0.5%% and below the worst path's %.2f%%", d.name, pr.loss, worst)
		}
	}
	// RTP and SIP as the routers classify and count them: what A captured
	// from the caller, what B wrote to the callee's LAN, what B captured of
	// the echo, what A wrote back.
	lan := func(s int, class, dir string) float64 {
		return m[s][fmt.Sprintf(`router_peer_lan_packets_total{peer=%q,class=%q,dir=%q}`, peerIDs[1-s], class, dir)]
	}
	fromCaller, atCallee := lan(0, "rtp", "to_peer"), lan(1, "rtp", "from_peer")
	echoed, backAtCaller := lan(1, "rtp", "to_peer"), lan(0, "rtp", "from_peer")
	if fromCaller < float64(callSeconds*50) {
		t.Errorf("A captured %v RTP packets from the caller, want ≥ %d (16 s at 50/s)", fromCaller, callSeconds*50)
	}
	if lan(0, "sip", "to_peer") < 3 || lan(1, "sip", "from_peer") < 3 || lan(1, "sip", "to_peer") < 2 {
		t.Errorf("SIP packets: A captured %v, B wrote %v, B captured %v: want the INVITE, ACK, BYE and their answers",
			lan(0, "sip", "to_peer"), lan(1, "sip", "from_peer"), lan(1, "sip", "to_peer"))
	}
	up, rt := checkRTPLoss(t, fromCaller, atCallee, echoed, backAtCaller)
	fmt.Fprintf(&sb, "SIP call: completed, caller %v → callee %v by LAN address; RTP %.0f packets from the caller, %.0f reached the callee (loss %.2f%%), %.0f echoed, %.0f back at the caller (round-trip loss %.2f%%)\n",
		callerA, calleeB, fromCaller, atCallee, up, echoed, backAtCaller, rt)
	for s := 0; s < 2; s++ {
		for name, v := range m[s] {
			if strings.HasPrefix(name, "router_peer_lan_dropped_total") && v != 0 {
				fmt.Fprintf(&sb, "%s: %s %v\n", peerIDs[s], name, v)
			}
		}
	}
	t.Logf("raic-router ×2, transparent, site to site, 2+2 uplinks behind port-restricted NATs, uplink 1 of each side 5%% loss and a 2 s outage:\n%s", sb.String())
	if v := rv.metrics(t)["raic_rendezvous_relayed_total"]; v != 0 {
		t.Errorf("the call was relayed (%v datagrams) although punching works", v)
	}
}
