package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/integration/testkit"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/peer"
	"github.com/raicnet/raic/pkg/rendezvous"
	"github.com/raicnet/raic/pkg/uplink"
	"github.com/raicnet/raic/pkg/wire"
)

const (
	peerPort       = 4600
	rendezvousPort = 3478
	rvMetricsPort  = 9478
)

var peerIDs = [2]string{"alice", "bob"}

// peerKeys: the pair's key, and each side's rendezvous key.
type peerKeys struct {
	pair wire.Key
	rv   [2]wire.Key
}

func newPeerKeys(t *testing.T) peerKeys {
	var k peerKeys
	var err error
	if k.pair, err = wire.GenerateKey(); err != nil {
		t.Fatal(err)
	}
	for i := range k.rv {
		if k.rv[i], err = wire.GenerateKey(); err != nil {
			t.Fatal(err)
		}
	}
	return k
}

// rvProcess is raic-rendezvous running in the rendezvous host.
type rvProcess struct {
	host              *netns.Host
	testkit.LogBuffer // its log
}

// startRendezvousProcess builds and runs raic-rendezvous for alice and bob.
func startRendezvousProcess(t *testing.T, p *netns.Peers, keys peerKeys) *rvProcess {
	t.Helper()
	bin := buildCommand(t, "proxy/cmd/raic-rendezvous")
	cfg := filepath.Join(t.TempDir(), "rendezvous.toml")
	text := fmt.Sprintf("listen = \"%s:%d\"\nmetrics = \"%s:%d\"\n", netns.RendezvousAddr, rendezvousPort, netns.RendezvousAddr, rvMetricsPort)
	for s, id := range peerIDs {
		text += fmt.Sprintf("[[peer]]\nid = %q\nkey = %q\n", id, keys.rv[s].String())
	}
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	rv := &rvProcess{host: p.Rendezvous}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := p.Rendezvous.CommandContext(ctx, bin, "-config", cfg)
	cmd.Stdout, cmd.Stderr = rv, rv
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	waitFor(t, 5*time.Second, "raic-rendezvous to listen", func() bool { return strings.Contains(rv.String(), "rendezvous listening") })
	return rv
}

// metrics reads the rendezvous's metrics endpoint from inside its namespace.
func (r *rvProcess) metrics(t *testing.T) map[string]float64 {
	t.Helper()
	return nsMetrics(t, r.host, fmt.Sprintf("%s:%d", netns.RendezvousAddr, rvMetricsPort))
}

// nsGet is the response (headers and body) to GET /path from addr, asked
// from inside host's namespace.
func nsGet(t *testing.T, host *netns.Host, addr, path string) []byte {
	t.Helper()
	var body []byte
	err := host.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprintf(c, "GET /%s HTTP/1.0\r\nHost: m\r\n\r\n", path)
		body, err = io.ReadAll(c)
		return err
	})
	if err != nil {
		t.Fatalf("%s at %s: %v", path, addr, err)
	}
	return body
}

// nsMetrics reads a program's metrics endpoint at addr from inside host's
// namespace: series name (with its labels) to value.
func nsMetrics(t *testing.T, host *netns.Host, addr string) map[string]float64 {
	t.Helper()
	body := nsGet(t, host, addr, "metrics")
	m := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && !strings.HasPrefix(f[0], "#") {
			if v, err := strconv.ParseFloat(f[1], 64); err == nil {
				m[f[0]] = v
			}
		}
	}
	return m
}

// nsPeer is one side's peer link, its sockets in the router's namespace.
type nsPeer struct {
	link  *peer.Link
	socks *peer.Sockets
	mux   *peer.Mux
	mu    sync.Mutex
	got   map[uint32]int
	at    map[uint32]int64 // arrival time of each first copy
}

func (p *nsPeer) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.got)
}

// nsPeerOptions adds virtual ports and per-copy observation to a side.
type nsPeerOptions struct {
	mux     *peer.MuxConfig
	observe func(local int, from netip.AddrPort, t wire.Type, body []byte, now int64)
}

func startNSPeer(t *testing.T, p *netns.Peers, s int, uplinks int, keys peerKeys, opts ...nsPeerOptions) *nsPeer {
	t.Helper()
	var o nsPeerOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	addrs := make([]netip.AddrPort, uplinks)
	for i := range addrs {
		addrs[i] = netip.AddrPortFrom(netns.PeerUplinkAddr(s, i), peerPort)
	}
	np := &nsPeer{got: map[uint32]int{}, at: map[uint32]int64{}}
	if err := p.Router[s].Do(func() error {
		var err error
		np.socks, err = peer.ListenSockets(addrs)
		if err != nil || o.mux == nil {
			return err
		}
		np.mux, err = peer.NewMux(*o.mux)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	rv, err := rendezvous.NewClient(peerIDs[s], keys.rv[s], peerIDs[1-s])
	if err != nil {
		t.Fatal(err)
	}
	np.link, err = peer.NewLink(peer.LinkConfig{
		LocalID: peerIDs[s], PeerID: peerIDs[1-s], Key: keys.pair,
		Paths: peer.Config{Uplinks: uplinks, Health: uplink.HealthConfig{
			PingInterval: 50 * time.Millisecond, DownAfter: 150 * time.Millisecond}},
		Rendezvous: rv, RendezvousAddr: netip.AddrPortFrom(netns.RendezvousAddr, rendezvousPort),
		RegisterInterval: 250 * time.Millisecond, PunchTimeout: 2 * time.Second,
		Log:     testLogger(),
		Observe: o.observe,
		Deliver: func(b []byte) {
			now := mono.Now()
			seq, ok := parseVoice(b)
			if !ok {
				if np.mux != nil {
					np.mux.Deliver(b)
				}
				return
			}
			np.mu.Lock()
			if np.got[seq] == 0 {
				np.at[seq] = now
			}
			np.got[seq]++
			np.mu.Unlock()
		},
	}, np.socks, mono.Now())
	if err != nil {
		t.Fatal(err)
	}
	if np.mux != nil {
		np.mux.Attach(np.link)
	}
	np.socks.Serve(np.link)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				np.link.Tick(mono.Now())
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
		np.socks.Close()
		if np.mux != nil {
			np.mux.Close()
		}
	})
	return np
}

// voice packets: "VOIC", sequence number, send time (mono), padding to 172
// bytes (a 20 ms G.711 frame with its RTP header).
func voicePacket(b []byte, seq uint32, now int64) []byte {
	b = b[:172]
	copy(b, "VOIC")
	b[4], b[5], b[6], b[7] = byte(seq>>24), byte(seq>>16), byte(seq>>8), byte(seq)
	for i := 0; i < 8; i++ {
		b[8+i] = byte(uint64(now) >> (56 - 8*i))
	}
	return b
}

func parseVoice(b []byte) (uint32, bool) {
	if len(b) < 16 || string(b[:4]) != "VOIC" {
		return 0, false
	}
	return uint32(b[4])<<24 | uint32(b[5])<<16 | uint32(b[6])<<8 | uint32(b[7]), true
}

// sendVoice sends n packets every gap.
func (p *nsPeer) sendVoice(t *testing.T, n int, gap time.Duration) {
	buf := make([]byte, 256)
	tk := time.NewTicker(gap)
	defer tk.Stop()
	for seq := 0; seq < n; seq++ {
		now := mono.Now()
		if err := p.link.Send(voicePacket(buf, uint32(seq), now), now); err != nil {
			t.Error(err) // may run in its own goroutine
			return
		}
		<-tk.C
	}
}

// pathsAnswering counts the paths with pongs received in the last second.
func pathsAnswering(l *peer.Link) int {
	now := mono.Now()
	n := 0
	for _, ps := range l.Paths().Stats(now) {
		if ps.Health.Up && ps.Health.PongsReceived > 0 && now-ps.Health.LastPong < int64(time.Second) {
			n++
		}
	}
	return n
}

func peerPathReport(l *peer.Link) string {
	var sb strings.Builder
	for _, ps := range l.Paths().Stats(mono.Now()) {
		fmt.Fprintf(&sb, "  %v (%v, remote uplink %d): up=%v pings=%d pongs=%d srtt=%v\n", ps.Path, ps.Kind,
			ps.RemoteUplink, ps.Health.Up, ps.Health.PingsSent, ps.Health.PongsReceived, ps.Health.SRTT)
	}
	return sb.String()
}

// TestPeerPunchThroughNAT: two routers, each with 2 uplinks behind its own
// NATs, find each other through raic-rendezvous and punch all 4 paths. A
// symmetric NAT facing a full-cone one also works: the full-cone side
// learns the symmetric side's real ports from its authenticated datagrams.
// Nothing is relayed.
func TestPeerPunchThroughNAT(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for _, nats := range [][2]netns.NAT{
		{netns.NATPortRestricted, netns.NATPortRestricted},
		{netns.NATSymmetric, netns.NATFullCone},
	} {
		t.Run(nats[0].String()+"+"+nats[1].String(), func(t *testing.T) {
			p := netns.NewPeersForTest(t, netns.PeersOptions{NAT: nats})
			keys := newPeerKeys(t)
			rv := startRendezvousProcess(t, p, keys)
			a, b := startNSPeer(t, p, 0, 2, keys), startNSPeer(t, p, 1, 2, keys)
			deadline := time.Now().Add(10 * time.Second)
			for pathsAnswering(a.link) < 4 || pathsAnswering(b.link) < 4 {
				if time.Now().After(deadline) {
					t.Fatalf("paths not punched within 10 s\nA:\n%sB:\n%srendezvous log:\n%s",
						peerPathReport(a.link), peerPathReport(b.link), rv.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			go a.sendVoice(t, 200, 2*time.Millisecond)
			b.sendVoice(t, 200, 2*time.Millisecond)
			waitFor(t, 3*time.Second, "200 packets each way", func() bool { return a.count() == 200 && b.count() == 200 })
			m := rv.metrics(t)
			if m["raic_rendezvous_relayed_total"] != 0 || a.link.Counters().RelaySent != 0 || b.link.Counters().RelaySent != 0 {
				t.Fatalf("relay used although punching worked: rendezvous %v, A %+v", m, a.link.Counters())
			}
			if m["raic_rendezvous_introductions_total"] == 0 {
				t.Fatalf("no introductions counted: %v", m)
			}
			t.Logf("A paths:\n%sB paths:\n%s", peerPathReport(a.link), peerPathReport(b.link))
		})
	}
}

// TestPeerRelayWhenPunchingBlocked: a symmetric NAT facing a port-restricted
// one cannot be punched (each side sends to a port the other's NAT does not
// use or does not let in). Both sides report it, the rendezvous relays, logs
// it and counts it, and the call's packets all arrive.
func TestPeerRelayWhenPunchingBlocked(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	p := netns.NewPeersForTest(t, netns.PeersOptions{NAT: [2]netns.NAT{netns.NATSymmetric, netns.NATPortRestricted}})
	keys := newPeerKeys(t)
	rv := startRendezvousProcess(t, p, keys)
	a, b := startNSPeer(t, p, 0, 2, keys), startNSPeer(t, p, 1, 2, keys)
	deadline := time.Now().Add(15 * time.Second)
	for !a.link.RelayActive(mono.Now()) || !b.link.RelayActive(mono.Now()) {
		if time.Now().After(deadline) {
			t.Fatalf("no relay within 15 s\nA:\n%sB:\n%srendezvous log:\n%s",
				peerPathReport(a.link), peerPathReport(b.link), rv.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := pathsAnswering(a.link) + pathsAnswering(b.link); n != 0 {
		t.Fatalf("%d paths answer through a NAT that blocks punching", n)
	}
	go a.sendVoice(t, 200, 2*time.Millisecond)
	b.sendVoice(t, 200, 2*time.Millisecond)
	waitFor(t, 3*time.Second, "200 packets each way through the relay", func() bool { return a.count() == 200 && b.count() == 200 })
	m := rv.metrics(t)
	if m["raic_rendezvous_relayed_total"] < 400 || m["raic_rendezvous_relay_pairs"] != 1 {
		t.Fatalf("rendezvous metrics %v: want ≥ 400 relayed and 1 relay pair", m)
	}
	if !strings.Contains(rv.String(), "relay on") {
		t.Fatalf("the rendezvous did not log the relay:\n%s", rv.String())
	}
	for s, l := range []*nsPeer{a, b} {
		c := l.link.Counters()
		if c.RelayRecv == 0 || c.Delivered != 200 {
			t.Fatalf("side %d: %+v", s, c)
		}
	}
}
