package intermediate

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/ingress"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// TestChainKeepsPacketIDs runs a game session through one and then two
// intermediates on loopback: router (two uplinks) → intermediate(s) (two uplinks
// each) → proxy → echo server. Every packet must come back exactly once; on the
// first hop and on the last, every data datagram must open with that hop's key
// and carry the router's packet ID; and the session IDs must differ per hop.
func TestChainKeepsPacketIDs(t *testing.T) {
	for _, mids := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d intermediates", mids), func(t *testing.T) {
			const n = 2000
			server, served := echoServer(t)
			lastID, lastKey := fmt.Sprintf("mid%d", mids), midKeys[mids-1]
			p := startProxy(t, lastID, lastKey, server)
			last := newWireWatcher(lastKey)
			next := newTap(t, p.Addr(), last.watch).addr()
			var chain []*Server
			for i := mids; i >= 1; i-- {
				id, key := "gamer", routerKey
				if i > 1 {
					id, key = fmt.Sprintf("mid%d", i-1), midKeys[i-2]
				}
				m := startMid(t, id, key, server, fmt.Sprintf("mid%d", i), midKeys[i-1], 2, next)
				chain = append([]*Server{m}, chain...)
				next = m.Addr()
			}
			first := newWireWatcher(routerKey)
			// The last tap already runs (it reads ref under mu); no
			// traffic flows before the router starts.
			last.mu.Lock()
			last.ref = first
			last.mu.Unlock()
			entry := newTap(t, next, first.watch).addr()
			r := startRouter(t, server, entry, entry)

			game := udpListen(t)
			var mu sync.Mutex
			got := make([]int, n)
			go func() {
				b := make([]byte, 2048)
				for {
					k, err := game.Read(b)
					if err != nil {
						return
					}
					if k == 100 {
						mu.Lock()
						if seq := binary.BigEndian.Uint32(b); seq < n {
							got[seq]++
						}
						mu.Unlock()
					}
				}
			}()
			var pkt [100]byte
			fwd := r.ForwardAddr(0)
			for i := 0; i < n; i++ {
				game.WriteToUDPAddrPort(gamePacket(pkt[:], uint32(i)), fwd)
				if i%20 == 19 {
					time.Sleep(10 * time.Millisecond) // about 2,000 packets per second
				}
			}
			received := func() (once, more int) {
				mu.Lock()
				defer mu.Unlock()
				for _, c := range got {
					if c >= 1 {
						once++
					}
					if c > 1 {
						more++
					}
				}
				return
			}
			deadline := time.Now().Add(5 * time.Second)
			for o, _ := received(); o != n && time.Now().Before(deadline); o, _ = received() {
				time.Sleep(5 * time.Millisecond)
			}
			if o, _ := received(); o != n {
				for i, m := range chain {
					t.Logf("intermediate %d: %v", i+1, m.Metrics().Snapshot())
				}
				t.Logf("proxy: %v", p.Metrics().Snapshot())
				t.Logf("router: %v", r.Metrics().Snapshot())
			}
			time.Sleep(100 * time.Millisecond) // late duplicates would show now
			if once, more := received(); once != n || more != 0 {
				t.Errorf("game received %d of %d packets, %d more than once", once, n, more)
			}
			if s := served.Load(); s != n {
				t.Errorf("server received %d packets, want %d (each once)", s, n)
			}

			fs, fc, fw, fbad := first.result()
			ls, lc, lw, lbad := last.result()
			t.Logf("first hop: %d data datagrams checked, %d wrong; last hop: %d checked, %d wrong", fc, fw, lc, lw)
			// Two uplinks carry a copy each on both hops.
			if fc < 2*n || fw != 0 {
				t.Errorf("first hop: %d datagrams checked (want ≥ %d), %d wrong: %s", fc, 2*n, fw, fbad)
			}
			if lc < 2*n || lw != 0 {
				t.Errorf("last hop: %d datagrams checked (want ≥ %d), %d wrong: %s", lc, 2*n, lw, lbad)
			}
			if len(fs) != 1 || len(ls) != 1 || fs[0] == ls[0] {
				t.Errorf("game sessions: %x on the first hop, %x on the last; want one each, different", fs, ls)
			}
			for i, m := range chain {
				if c := counter(m, `intermediate_relayed_total{dir="out"}`); c != n {
					t.Errorf("intermediate %d relayed %v packets out, want %d", i+1, c, n)
				}
				if c := counter(m, `intermediate_relayed_total{dir="back"}`); c != n {
					t.Errorf("intermediate %d relayed %v packets back, want %d", i+1, c, n)
				}
				waitFor(t, 2*time.Second, "keepalive answers from the next hop", func() bool { return m.UplinkRTT(0) > 0 && m.UplinkRTT(1) > 0 })
			}
			// The router's own keepalives are answered by the first intermediate.
			waitFor(t, 2*time.Second, "router uplinks up", func() bool {
				st := r.UplinkStats()
				return st[0].Up && st[1].Up && st[0].PongsReceived > 0
			})

			// Stopping the last intermediate ends its game session at the proxy at
			// once (its keepalive session stays until it idles out).
			gauge := func() float64 { return p.Metrics().Snapshot()["proxy_sessions"] }
			waitFor(t, 3*time.Second, "the proxy to count both sessions", func() bool { return gauge() == 2 })
			chain[len(chain)-1].Close()
			waitFor(t, 3*time.Second, "the proxy to end the game session", func() bool { return gauge() == 1 })
		})
	}
}

// TestForbiddenTargetIsNotRelayed checks the intermediate applies the client's
// allowlist itself: a session towards a server the client may not reach never
// reaches the next hop.
func TestForbiddenTargetIsNotRelayed(t *testing.T) {
	server, served := echoServer(t)
	other := netip.MustParseAddrPort("127.0.0.1:9") // the only server the client may reach
	p := startProxy(t, "mid1", midKeys[0], server)
	m := startMid(t, "gamer", routerKey, other, "mid1", midKeys[0], 1, p.Addr())
	r := startRouter(t, server, m.Addr())
	game := udpListen(t)
	var pkt [100]byte
	for i := 0; i < 20; i++ {
		game.WriteToUDPAddrPort(gamePacket(pkt[:], uint32(i)), r.ForwardAddr(0))
	}
	waitFor(t, 2*time.Second, "refusals counted", func() bool {
		return counter(m, `intermediate_dropped_total{reason="forbidden_target"}`) >= 20
	})
	if s := served.Load(); s != 0 {
		t.Errorf("server received %d packets of a forbidden session", s)
	}
	if c := counter(m, `intermediate_relayed_total{dir="out"}`); c != 0 {
		t.Errorf("relayed %v packets of a forbidden session", c)
	}
}

func TestConfig(t *testing.T) {
	key := routerKey.String()
	good := `
[[client]]
id = "gamer"
key = "` + key + `"
allow = ["198.18.41.2"]
[next]
client_id = "mid"
key = "` + key + `"
proxy = "198.18.40.2:4500"
`
	c, err := ParseConfig("i.toml", good)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ingress.DefaultListen || len(c.Next.Uplinks) != 1 || c.Next.Uplinks[0].Proxy != "198.18.40.2:4500" ||
		c.Next.CopiesPerUplink != 1 || c.Next.PingInterval.Duration != DefaultPingInterval || c.Clients[0].RatePPS != DefaultRatePPS {
		t.Errorf("defaults not applied: %+v", c)
	}
	for _, tc := range []struct{ text, want string }{
		{`[next]
client_id = "m"
key = "` + key + `"
proxy = "198.18.40.2:4500"`, "client: no [[client]]"},
		{good + "copies_per_uplink = 9\n", "next.copies_per_uplink"},
		{`[[client]]
id = "gamer"
key = "` + key + `"
allow = ["198.18.41.2"]
[next]
client_id = "mid"
key = "` + key + `"`, "next.proxy"},
		{`[[client]]
id = "gamer"
key = "` + key + `"
allow = ["198.18.41.2"]
[next]
client_id = "mid"
key = "short"
proxy = "198.18.40.2:4500"`, "next.key"},
		{`[[client]]
id = "gamer"
key = "` + key + `"
allow = ["not an address"]
[next]
client_id = "mid"
key = "` + key + `"
proxy = "198.18.40.2:4500"`, "client.0.allow"},
		{good + "[[next.uplink]]\nsource = \"nowhere\"\n", "next.uplink.0.source"},
	} {
		_, err := ParseConfig("i.toml", tc.text)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config error %v, want one naming %q", err, tc.want)
		}
	}
}

// TestProbeThroughIntermediate asks an intermediate, on a router's control
// session, about servers: it answers at once (RTT unknown at first), asks the
// proxy behind it, and then answers with the proxy's RTT to the server plus its
// own RTT to the proxy; a server the proxy refuses becomes refused here too, and
// one outside the client's allowlist is refused at once.
func TestProbeThroughIntermediate(t *testing.T) {
	server, _ := echoServer(t)
	p := startProxy(t, "mid1", midKeys[0], server)
	m := startMidAllow(t, "127.0.0.1", "mid1", midKeys[0], p.Addr())
	c := newProbeClient(t)
	ask := func(target netip.AddrPort, seq uint32) wire.ProbeReply { return c.probe(t, m.Addr(), target, seq) }

	if rep := ask(server, 1); !rep.Allowed || rep.ServerRTT != 0 {
		t.Errorf("first probe: %+v; want allowed, RTT unknown", rep)
	}
	var rep wire.ProbeReply
	deadline := time.Now().Add(4 * time.Second)
	for seq := uint32(2); rep.ServerRTT == 0 && time.Now().Before(deadline); seq++ {
		time.Sleep(100 * time.Millisecond)
		rep = ask(server, seq)
	}
	if rep.ServerRTT == 0 {
		if p.Metrics().Snapshot()["proxy_probe_measurement_errors_total"] > 0 {
			t.Skip("the proxy cannot send ICMP echo here (needs root or net.ipv4.ping_group_range)")
		}
		t.Fatalf("RTT still unknown after 4 s: %+v", rep)
	}
	// The answer adds the hop's smoothed RTT at the time; that moves, but never
	// below the hop's minimum.
	hop := m.UplinkStats()[0].MinRTT
	if !rep.Allowed || rep.ServerRTT < hop || hop <= 0 {
		t.Errorf("probe: %+v; want allowed, RTT at least the hop to the proxy (min %v)", rep, hop)
	}
	t.Logf("server RTT through the intermediate: %v (hop to the proxy: min %v, now %v)", rep.ServerRTT, hop, m.nextRTT(mono.Now()))

	refused := netip.AddrPortFrom(server.Addr(), server.Port()+1) // not in the proxy's allowlist
	deadline = time.Now().Add(2 * time.Second)
	rep = ask(refused, 100)
	for seq := uint32(101); rep.Allowed && time.Now().Before(deadline); seq++ {
		time.Sleep(50 * time.Millisecond)
		rep = ask(refused, seq)
	}
	if rep.Allowed {
		t.Errorf("a server the proxy refuses is still allowed through the intermediate: %+v", rep)
	}
	if rep := ask(netip.MustParseAddrPort("198.18.99.1:27015"), 200); rep.Allowed {
		t.Errorf("a server outside the client's allowlist: %+v, want not allowed", rep)
	}
}

// startMidAllow is startMid for client "gamer" with a single allow entry.
func startMidAllow(t testing.TB, allow, nextID string, nextKey wire.Key, next netip.AddrPort) *Server {
	t.Helper()
	cfg, err := ParseConfig("intermediate.toml", fmt.Sprintf(`
listen = "127.0.0.1:0"
[[client]]
id = "gamer"
key = "%s"
allow = [%q]
[next]
client_id = %q
key = "%s"
proxy = "%s"
ping_interval = "50ms"
`, routerKey, allow, nextID, nextKey, next))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	run(t, s.Run)
	return s
}

// probeClient is a router's control session, driven by hand.
type probeClient struct {
	conn *net.UDPConn
	send *tunnel.Sender
	recv *tunnel.Receiver
}

func newProbeClient(t testing.TB) *probeClient {
	salt, _ := wire.NewSalt()
	id := uint64(mono.Now()) | 1
	sk, rk, err := wire.DeriveKeys(&routerKey, &salt, id, wire.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	hello := &wire.Hello{Salt: salt}
	hello.SetClientID("gamer")
	snd, err := tunnel.NewSender(sk, id, raic.Params{Scheme: raic.SchemeCopy, K: 1}, hello)
	if err != nil {
		t.Fatal(err)
	}
	return &probeClient{conn: udpListen(t), send: snd, recv: tunnel.NewReceiver(rk, raic.DecoderConfig{})}
}

func (c *probeClient) probe(t testing.TB, to, target netip.AddrPort, seq uint32) wire.ProbeReply {
	t.Helper()
	p := wire.Probe{Seq: seq, SentAt: mono.Now(), Target: target}
	var pb [wire.ProbeLen]byte
	dg, err := c.send.SealControl(make([]byte, wire.MaxDatagram), wire.TypeProbe, p.Put(pb[:]), mono.Now())
	if err != nil {
		t.Fatal(err)
	}
	c.conn.WriteToUDPAddrPort(dg, to)
	b := make([]byte, 2048)
	c.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		n, err := c.conn.Read(b)
		if err != nil {
			t.Fatalf("no answer to probe %d: %v", seq, err)
		}
		var h wire.Header
		off, err := wire.Parse(b[:n], &h, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, err := c.recv.Receive(b[:n], &h, off, mono.Now(), nil)
		if err != nil {
			t.Fatalf("answer does not open: %v", err)
		}
		c.send.Heard(mono.Now())
		if h.Type != wire.TypeProbeReply {
			continue
		}
		var rep wire.ProbeReply
		if err := wire.ParseProbeReply(body, &rep); err != nil || rep.Probe != p {
			t.Fatalf("probe reply %+v (%v), want one echoing %+v", rep, err, p)
		}
		return rep
	}
}
