package intermediate

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/ingress"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// TestKeepalivesOnEveryUplink drives a relayed session by hand with three
// next-hop uplinks and checks what the router's keepalives turn into: each
// uplink gets a keepalive of the session at the next hop, which opens with the
// next hop's key, carries the hello, says three paths and the intermediate's
// copies per uplink, and uses the packet ID of a router keepalive. With three
// router paths that takes one round; with one, the uplinks take turns over
// three (and the intermediate sends two copies per uplink). Everything each uplink carried then goes
// through one next-hop receiver, as at the next hop: every data packet is
// delivered and every keepalive accepted, which a keepalive under an ID of the
// router's data would break.
func TestKeepalivesOnEveryUplink(t *testing.T) {
	for _, routerPaths := range []int{3, 1} {
		t.Run(fmt.Sprintf("%d router paths", routerPaths), func(t *testing.T) {
			const uplinks = 3
			target := netip.MustParseAddrPort("198.18.41.2:27015")
			var ups [uplinks]*dgSink
			var addrs [uplinks]netip.AddrPort
			for i := range ups {
				ups[i] = newDgSink(t)
				addrs[i] = ups[i].addr()
			}
			h := newHandRelay(t, target, addrs[:]...)
			s, rs := h.s, h.rs
			copies := 1
			if routerPaths == 1 {
				copies = 2
			}
			s.cfg.Next.CopiesPerUplink = copies
			s.next.Copies = copies
			rd := ingress.NewReader()
			from := newCountingSink(t).Addr()
			pkt := make([]byte, 100)
			now := mono.Now()

			s.in.Handle(rd, h.seal(t, rs, pkt, now), from, now) // opens the relay
			rl, ok := s.relays.Peek(h.id)
			if !ok || rl.outSend == nil {
				t.Fatal("relay not created")
			}
			rounds := (uplinks + routerPaths - 1) / routerPaths
			routerKA := map[uint64]bool{}
			buf := make([]byte, wire.MaxDatagram)
			var hdr wire.Header
			var rhl wire.Hello
			for round := 0; round < rounds; round++ {
				now += int64(time.Second)
				var kas [][]byte
				for p := 0; p < routerPaths; p++ {
					ka, err := rs.SealControl(buf, wire.TypeKeepalive, []byte{byte(routerPaths)}, now)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := wire.Parse(ka, &hdr, &rhl); err != nil {
						t.Fatal(err)
					}
					routerKA[hdr.Packet] = true
					kas = append(kas, append([]byte(nil), ka...))
				}
				// The router's next packet overtakes its keepalives (they came on
				// slower paths): a keepalive taking the ID after the highest one
				// passed on would take the router's next packet's.
				s.in.Handle(rd, h.seal(t, rs, pkt, now), from, now)
				for _, ka := range kas {
					s.in.Handle(rd, ka, from, now)
				}
			}
			s.in.Handle(rd, h.seal(t, rs, pkt, now), from, now)
			dataPackets := 2 + rounds
			keepalives := rounds * routerPaths
			waitFor(t, 5*time.Second, "every datagram at the next hop", func() bool {
				n := 0
				for _, u := range ups {
					n += u.len()
				}
				return n == uplinks*dataPackets*copies+keepalives
			})
			if c := counter(s, "intermediate_keepalives_sent_total"); c != float64(keepalives) {
				t.Errorf("intermediate_keepalives_sent_total = %v, want %d", c, keepalives)
			}

			outHello, _ := rl.outSend.Hello()
			_, c2s, err := wire.DeriveKeys(&midKeys[0], &outHello.Salt, rl.outID, wire.RoleServer)
			if err != nil {
				t.Fatal(err)
			}
			var delivered countSink
			next := tunnel.NewReceiver(c2s, raic.DecoderConfig{})
			accepted := 0
			for i, u := range ups {
				got := 0
				for _, dg := range u.all() {
					var hl wire.Hello
					off, err := wire.Parse(dg, &hdr, &hl)
					if err != nil {
						t.Fatalf("uplink %d: %v", i, err)
					}
					if hdr.Session != rl.outID {
						t.Fatalf("uplink %d: session %x, want the next hop's %x", i, hdr.Session, rl.outID)
					}
					isKA := hdr.Type == wire.TypeKeepalive
					if isKA {
						got++
						if !routerKA[hdr.Packet] {
							t.Errorf("uplink %d: keepalive under packet ID %d, not one of the router's keepalives", i, hdr.Packet)
						}
						if hdr.Flags&wire.FlagHello == 0 || hl.Salt != outHello.Salt || hl.Target != target {
							t.Errorf("uplink %d: keepalive without the session's hello", i)
						}
					}
					body, err := next.Receive(dg, &hdr, off, now, &delivered)
					switch {
					case isKA && err != nil:
						t.Errorf("uplink %d: the next hop refuses the keepalive under ID %d: %v", i, hdr.Packet, err)
					case isKA:
						accepted++
						if len(body) != 2 || body[0] != uplinks || int(body[1]) != copies {
							t.Errorf("uplink %d: keepalive body %v, want [%d %d]", i, body, uplinks, copies)
						}
					}
				}
				if got != 1 {
					t.Errorf("uplink %d carried %d keepalives, want 1", i, got)
				}
			}
			if accepted != keepalives || delivered.n != dataPackets {
				t.Errorf("the next hop accepted %d keepalives and %d data packets, want %d and %d", accepted, delivered.n, keepalives, dataPackets)
			}
		})
	}
}

// TestKeepalivesKeepSlowUplinkInReplies runs router (two uplinks) →
// intermediate (two uplinks) → proxy → echo server on loopback, with the
// intermediate's second uplink 10 ms slower for data, so the proxy drops each of
// its data copies as a duplicate. The intermediate's keepalives must reach the
// proxy on both uplinks about once a second (saying two paths, one copy each),
// and so the proxy must answer on the slow uplink too.
func TestKeepalivesKeepSlowUplinkInReplies(t *testing.T) {
	server, _ := echoServer(t)
	p := startProxy(t, "mid1", midKeys[0], server)
	hop := &kaHop{salts: map[uint64][16]byte{}, epochs: map[uint64]uint64{}}
	fast := hop.tap(t, p.Addr(), 0)
	slow := hop.tap(t, p.Addr(), 10*time.Millisecond)
	m := startMid(t, "gamer", routerKey, server, "mid1", midKeys[0], 2, fast.addr(), slow.addr())
	r := startRouter(t, server, m.Addr(), m.Addr())

	game := udpListen(t)
	go func() {
		b := make([]byte, 2048)
		for {
			if _, err := game.Read(b); err != nil {
				return
			}
		}
	}()
	var pkt [100]byte
	start := time.Now()
	for i := 0; time.Since(start) < 3500*time.Millisecond; i++ {
		game.WriteToUDPAddrPort(gamePacket(pkt[:], uint32(i)), r.ForwardAddr(0))
		time.Sleep(40 * time.Millisecond)
	}
	elapsed := time.Since(start)
	time.Sleep(100 * time.Millisecond) // the last replies

	sessions, bad := hop.result()
	if bad != "" {
		t.Error(bad)
	}
	if len(sessions) != 1 {
		t.Fatalf("%d game sessions at the proxy, want 1", len(sessions))
	}
	for _, tp := range []*kaTap{fast, slow} {
		name := "fast"
		if tp == slow {
			name = "slow"
		}
		times, replies := tp.result(sessions[0])
		// Rounds go out at the session's start and then once a second: at least
		// three in 3.5 s, and never many more than one a second.
		if len(times) < 3 || len(times) > int(elapsed/time.Second)+3 {
			t.Errorf("%s uplink: %d keepalives of the game session in %v, want about one a second", name, len(times), elapsed)
		}
		for i := 1; i < len(times); i++ {
			if gap := times[i].Sub(times[i-1]); gap > 2*time.Second {
				t.Errorf("%s uplink: %v between keepalives %d and %d, want about a second", name, gap, i-1, i)
			}
		}
		if replies < 20 {
			t.Errorf("%s uplink: %d replies of the game session came back on it, want them all", name, replies)
		}
	}
	if c := counter(m, "intermediate_keepalives_sent_total"); c < 6 {
		t.Errorf("intermediate_keepalives_sent_total = %v, want at least 6", c)
	}
}

// kaHop watches the hop between the intermediate and the proxy, over one tap
// per uplink. The game session's hello may go on one uplink only (the
// intermediate stops sending it once the proxy answers), so the taps share what
// they learn of sessions.
type kaHop struct {
	mu     sync.Mutex
	salts  map[uint64][16]byte // the sessions with a target: game sessions
	epochs map[uint64]uint64   // the epoch of each session's latest hello
	bad    string
}

// kaTap relays one intermediate uplink to the proxy (one upstream socket, as
// that uplink has one source address), holds each data datagram going up for
// delay, opens the keepalives going up with the proxy's key, and counts the
// data that comes back down, per session.
type kaTap struct {
	hop    *kaHop
	ln, up *net.UDPConn
	delay  time.Duration

	mu      sync.Mutex
	mid     netip.AddrPort
	times   map[uint64][]time.Time // when each keepalive went up
	replies map[uint64]int
}

func (hop *kaHop) tap(t *testing.T, upstream netip.AddrPort, delay time.Duration) *kaTap {
	tp := &kaTap{hop: hop, ln: udpListen(t), up: udpListen(t), delay: delay,
		times: map[uint64][]time.Time{}, replies: map[uint64]int{}}
	go func() {
		b := make([]byte, 2048)
		for {
			k, from, err := tp.ln.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			tp.mu.Lock()
			tp.mid = from
			tp.mu.Unlock()
			if tp.watchUp(b[:k]) && tp.delay > 0 {
				time.Sleep(tp.delay)
			}
			tp.up.WriteToUDPAddrPort(b[:k], upstream)
		}
	}()
	go func() {
		b := make([]byte, 2048)
		var h wire.Header
		for {
			k, err := tp.up.Read(b)
			if err != nil {
				return
			}
			tp.mu.Lock()
			if _, err := wire.Parse(b[:k], &h, nil); err == nil && h.Type == wire.TypeData {
				tp.replies[h.Session]++
			}
			to := tp.mid
			tp.mu.Unlock()
			tp.ln.WriteToUDPAddrPort(b[:k], to)
		}
	}()
	return tp
}

func (tp *kaTap) addr() netip.AddrPort { return addrOf(tp.ln) }

// watchUp looks at a datagram going up and reports whether it is data.
func (tp *kaTap) watchUp(dg []byte) bool {
	var h wire.Header
	var hl wire.Hello
	cp := append([]byte(nil), dg...)
	off, err := wire.Parse(cp, &h, &hl)
	if err != nil {
		return false
	}
	hop := tp.hop
	hop.mu.Lock()
	defer hop.mu.Unlock()
	if h.Flags&wire.FlagHello != 0 && hl.Target.IsValid() {
		hop.salts[h.Session] = hl.Salt
		hop.epochs[h.Session] = hl.Epoch // the router re-keys when it learns one
	}
	salt, game := hop.salts[h.Session]
	if !game || h.Type != wire.TypeKeepalive {
		return h.Type == wire.TypeData
	}
	_, c2s, err := wire.DeriveKeysEpoch(&midKeys[0], &salt, h.Session, hop.epochs[h.Session], wire.RoleServer)
	if err != nil {
		return false
	}
	body, err := wire.Open(c2s, cp, off)
	switch {
	case err != nil:
		hop.bad = fmt.Sprintf("keepalive %d does not open with the proxy's key: %v", h.Packet, err)
	case len(body) != 2 || body[0] != 2 || body[1] != 1:
		hop.bad = fmt.Sprintf("keepalive body %v, want [2 1]", body)
	default:
		tp.mu.Lock()
		tp.times[h.Session] = append(tp.times[h.Session], time.Now())
		tp.mu.Unlock()
	}
	return false
}

func (hop *kaHop) result() (sessions []uint64, bad string) {
	hop.mu.Lock()
	defer hop.mu.Unlock()
	for id := range hop.salts {
		sessions = append(sessions, id)
	}
	return sessions, hop.bad
}

func (tp *kaTap) result(session uint64) (times []time.Time, replies int) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return append([]time.Time(nil), tp.times[session]...), tp.replies[session]
}

// dgSink keeps a copy of every datagram it receives, in order.
type dgSink struct {
	conn *net.UDPConn
	mu   sync.Mutex
	dgs  [][]byte
}

func newDgSink(t *testing.T) *dgSink {
	s := &dgSink{conn: udpListen(t)}
	go func() {
		b := make([]byte, 2048)
		for {
			k, err := s.conn.Read(b)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.dgs = append(s.dgs, append([]byte(nil), b[:k]...))
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *dgSink) addr() netip.AddrPort { return addrOf(s.conn) }

func (s *dgSink) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.dgs)
}

func (s *dgSink) all() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.dgs...)
}

// countSink counts the packets a receiver releases.
type countSink struct{ n int }

func (c *countSink) Deliver(uint64, []byte, int64) { c.n++ }
