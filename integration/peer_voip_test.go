package integration

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/pkg/peer"
	"github.com/raicnet/raic/pkg/wire"
)

// The call's virtual ports: A's LAN reaches B's SIP and media ports through
// A's router (explicit mode), as an office reaches a phone behind a NAT.
const (
	sipPort      = 5060
	rtpPort      = 6000
	vportSIP     = 1
	vportRTP     = 2
	callSeconds  = 16 // call.wav length; 50 RTP packets/s
	voicePPS     = 50
	voiceSeconds = 20
)

// pathKey names one of the N×M paths in one direction: the sender's uplink
// and the receiver's.
type pathKey struct{ from, to int }

// copyLog collects, per path, the one-way delay of every copy of the
// measurement stream that arrived.
type copyLog struct {
	mu     sync.Mutex
	side   int // the sending side
	delays map[pathKey]map[uint32]time.Duration
}

func newCopyLog(side int) *copyLog {
	return &copyLog{side: side, delays: map[pathKey]map[uint32]time.Duration{}}
}

func (c *copyLog) observe(local int, from netip.AddrPort, t wire.Type, body []byte, now int64) {
	if t != wire.TypeData {
		return
	}
	seq, ok := parseVoice(body)
	if !ok {
		return
	}
	sent := int64(binary.BigEndian.Uint64(body[8:]))
	fromUp := -1
	for i := 0; i < netns.MaxUplinks; i++ {
		if from.Addr() == netns.PeerNATAddr(c.side, i) {
			fromUp = i
		}
	}
	k := pathKey{fromUp, local}
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.delays[k]
	if m == nil {
		m = map[uint32]time.Duration{}
		c.delays[k] = m
	}
	if _, dup := m[seq]; !dup {
		m[seq] = time.Duration(now - sent)
	}
}

// rtpCount counts the distinct RTP sequence numbers a Mux wrote out.
type rtpCount struct {
	mu  sync.Mutex
	seq map[uint16]bool
}

func (r *rtpCount) add(payload []byte) {
	if len(payload) < 12 || payload[0]>>6 != 2 {
		return
	}
	r.mu.Lock()
	r.seq[binary.BigEndian.Uint16(payload[2:])] = true
	r.mu.Unlock()
}

func (r *rtpCount) n() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seq)
}

// writeCallWAV writes seconds of 8 kHz mu-law audio for sipp's rtp_stream.
func writeCallWAV(t *testing.T, path string, seconds int) {
	n := 8000 * seconds
	var b bytes.Buffer
	le := binary.LittleEndian
	b.WriteString("RIFF")
	binary.Write(&b, le, uint32(36+n))
	b.WriteString("WAVEfmt ")
	binary.Write(&b, le, []any{uint32(16), uint16(7), uint16(1), uint32(8000), uint32(8000), uint16(1), uint16(8)})
	b.WriteString("data")
	binary.Write(&b, le, uint32(n))
	for i := 0; i < n; i++ {
		b.WriteByte(0xff ^ byte(i%32)) // a quiet tone
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

type pctl struct{ p50, p99 time.Duration }

func quantiles(ds []time.Duration) pctl {
	if len(ds) == 0 {
		return pctl{}
	}
	slices.Sort(ds)
	q := func(f float64) time.Duration { return ds[min(len(ds)-1, int(f*float64(len(ds))))] }
	return pctl{q(0.5), q(0.99)}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }

// TestPeerVoIPCall: two routers with 2 uplinks each, both behind
// port-restricted NATs, find each other through raic-rendezvous and carry a
// real SIP call (sipp caller on A's LAN, sipp callee with RTP echo on B's)
// over the 4 paths, while uplink 1 of each side loses 5% and goes dark for
// 2 s. The call completes; its RTP loss and a 50 pps measurement stream
// each way are reported beside every single path's.
func TestPeerVoIPCall(t *testing.T) {
	sipp := needSipp(t)
	p := netns.NewPeersForTest(t, callLinks([2]time.Duration{8 * time.Second, 10 * time.Second}, [2]time.Duration{13 * time.Second, 15 * time.Second}))
	keys := newPeerKeys(t)
	rv := startRendezvousProcess(t, p, keys)

	rtpAtB := &rtpCount{seq: map[uint16]bool{}}   // caller → callee, as B hands it to the callee
	rtpBackA := &rtpCount{seq: map[uint16]bool{}} // the echo, as A hands it back to the caller
	rtpFromA := &rtpCount{seq: map[uint16]bool{}} // what the caller sent into A's vport
	inNS := func(h *netns.Host) func(netip.AddrPort) (*net.UDPConn, error) {
		return func(a netip.AddrPort) (c *net.UDPConn, err error) {
			err = h.Do(func() error {
				c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(a))
				return err
			})
			return c, err
		}
	}
	gwA := netns.PeerLANGateway(0)
	calleeB := netns.PeerLANAddr(1)
	logs := [2]*copyLog{newCopyLog(1), newCopyLog(0)} // what A received (sent by B), what B received
	a := startNSPeer(t, p, 0, 2, keys, nsPeerOptions{
		observe: logs[0].observe,
		mux: &peer.MuxConfig{
			VPorts: []peer.VPort{
				{ID: vportSIP, Listen: netip.AddrPortFrom(gwA, sipPort)},
				{ID: vportRTP, Listen: netip.AddrPortFrom(gwA, rtpPort)},
			},
			OnPacket: func(id uint16, toService bool, b []byte) {
				if id == vportRTP && !toService {
					rtpBackA.add(b)
				}
			},
			OnInput: func(id uint16, fromService bool, b []byte) {
				if id == vportRTP && !fromService {
					rtpFromA.add(b)
				}
			},
		},
	})
	b := startNSPeer(t, p, 1, 2, keys, nsPeerOptions{
		observe: logs[1].observe,
		mux: &peer.MuxConfig{
			Services: []peer.Service{
				{ID: vportSIP, Target: netip.AddrPortFrom(calleeB, sipPort)},
				{ID: vportRTP, Target: netip.AddrPortFrom(calleeB, rtpPort)},
			},
			Dial: inNS(p.Router[1]),
			OnPacket: func(id uint16, toService bool, b []byte) {
				if id == vportRTP && toService {
					rtpAtB.add(b)
				}
			},
		},
	})
	deadline := time.Now().Add(10 * time.Second)
	for pathsAnswering(a.link) < 4 || pathsAnswering(b.link) < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("paths not punched within 10 s\nA:\n%sB:\n%s", peerPathReport(a.link), peerPathReport(b.link))
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The call.
	call := runSippCall(t, p, sipp,
		[]string{"-sf", "uas.xml", "-i", calleeB.String(), "-p", fmt.Sprint(sipPort),
			"-mp", fmt.Sprint(rtpPort), "-rtp_echo", "-key", "rtp_addr", gwA.String(), "-key", "rtp_port", fmt.Sprint(rtpPort),
			"-m", "1", "-nostdin", "-trace_err"},
		[]string{fmt.Sprintf("%s:%d", gwA, sipPort), "-sf", "uac.xml",
			"-i", netns.PeerLANAddr(0).String(), "-p", "5062", "-mp", "6100", "-s", "callee",
			"-d", fmt.Sprint(callSeconds*1000 + 500), "-m", "1", "-nostdin", "-trace_err", "-trace_stat", "-fd", "1"},
		func() {
			// The measurement stream, both ways, during the call.
			var wg sync.WaitGroup
			for _, np := range []*nsPeer{a, b} {
				wg.Add(1)
				go func() { defer wg.Done(); np.sendVoice(t, voicePPS*voiceSeconds, time.Second/voicePPS) }()
			}
			wg.Wait()
		})
	time.Sleep(300 * time.Millisecond)
	if call.failed() {
		t.Fatalf("the call failed: caller %v, callee %v\ncaller:\n%s\ncallee:\n%s\nA:\n%sB:\n%s", call.uacErr, call.uasErr,
			tail(call.uacOut.String(), 30), tail(call.uasOut.String(), 30), peerPathReport(a.link), peerPathReport(b.link))
	}

	// Report.
	sent := voicePPS * voiceSeconds
	rtpSent := rtpFromA.n() // 800 or 801: sipp may send one more
	if rtpSent < callSeconds*50 {
		t.Fatalf("the caller sent %d RTP packets into A's vport, want ≥ %d", rtpSent, callSeconds*50)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "%-22s %8s %8s %8s %6s\n", "path", "loss %", "p50 ms", "p99 ms", "dups")
	worst := map[int]float64{}
	for dirIdx, name := range []string{"B→A", "A→B"} {
		cl := logs[dirIdx]
		sender, receiver := "B", "A"
		if dirIdx == 1 {
			sender, receiver = "A", "B"
		}
		for i := 0; i < 2; i++ {
			for j := 0; j < 2; j++ {
				cl.mu.Lock()
				m := cl.delays[pathKey{i, j}]
				var ds []time.Duration
				for _, d := range m {
					ds = append(ds, d)
				}
				cl.mu.Unlock()
				loss := 100 * (1 - float64(len(ds))/float64(sent))
				worst[dirIdx] = max(worst[dirIdx], loss)
				q := quantiles(ds)
				fmt.Fprintf(&sb, "%-22s %8.2f %8s %8s %6s\n", fmt.Sprintf("%s path %s%d→%s%d", name, sender, i, receiver, j), loss, ms(q.p50), ms(q.p99), "–")
			}
		}
		np := []*nsPeer{a, b}[dirIdx]
		np.mu.Lock()
		var ds []time.Duration
		dups := 0
		for seq, n := range np.got {
			if n > 1 {
				dups += n - 1
			}
			_ = seq
		}
		cl.mu.Lock()
		for seq := range np.got {
			best := time.Duration(-1)
			for _, m := range cl.delays {
				if d, ok := m[seq]; ok && (best < 0 || d < best) {
					best = d
				}
			}
			if best >= 0 {
				ds = append(ds, best)
			}
		}
		cl.mu.Unlock()
		got := len(np.got)
		np.mu.Unlock()
		q := quantiles(ds)
		loss := 100 * (1 - float64(got)/float64(sent))
		fmt.Fprintf(&sb, "%-22s %8.2f %8s %8s %6d\n", name+" peer session 2×2", loss, ms(q.p50), ms(q.p99), dups)
		if dups != 0 {
			t.Errorf("%s: %d duplicates delivered", name, dups)
		}
		if loss > 0.5 || loss >= worst[dirIdx] {
			t.Errorf("%s: the session lost %.2f%%, want ≤ 0.5%% and below the worst path's %.2f%%", name, loss, worst[dirIdx])
		}
	}
	up := 100 * (1 - float64(rtpAtB.n())/float64(rtpSent))
	echo := 100 * (1 - float64(rtpBackA.n())/float64(rtpSent))
	fmt.Fprintf(&sb, "SIP call: completed; RTP %d packets sent, loss caller→callee %.2f%%, round trip (echo) %.2f%%\n", rtpSent, up, echo)
	t.Logf("2+2 uplinks behind NATs, uplink 1 of each side 5%% loss and a 2 s outage:\n%s", sb.String())
	if up > 1 || echo > 2 {
		t.Errorf("RTP loss %.2f%% one way, %.2f%% round trip: want ≤ 1%% and ≤ 2%%", up, echo)
	}
	if m := rv.metrics(t); m["raic_rendezvous_relayed_total"] != 0 {
		t.Errorf("the call was relayed: %v", m)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
