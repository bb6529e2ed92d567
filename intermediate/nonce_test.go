package intermediate

import (
	"bytes"
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

// nonceSink keeps every datagram sent to it by nonce (packet ID and
// descriptor, wire.Seal), and counts two different datagrams under one.
type nonceSink struct {
	addr netip.AddrPort
	mu   sync.Mutex
	seen map[[12]byte][]byte
	n    int
	bad  []string
}

func newNonceSink(t *testing.T) *nonceSink {
	c := udpListen(t)
	c.SetReadBuffer(8 << 20)
	s := &nonceSink{addr: addrOf(c), seen: map[[12]byte][]byte{}}
	go func() {
		b := make([]byte, 2048)
		for {
			n, _, err := c.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			if n < wire.HeaderLen {
				continue
			}
			var k [12]byte
			copy(k[:], b[12:24])
			s.mu.Lock()
			s.n++
			if old, ok := s.seen[k]; ok && !bytes.Equal(old, b[:n]) {
				s.bad = append(s.bad, wire.Type(old[1]).String()+" and "+wire.Type(b[1]).String())
			} else {
				s.seen[k] = append([]byte(nil), b[:n]...)
			}
			s.mu.Unlock()
		}
	}()
	return s
}

// TestNoNonceSealsTwoDatagramsTowardsTheRouter: everything the intermediate
// sends a router on a relayed session (the next hop's replies and controls
// passed back under the next hop's packet IDs, and its own path challenges to
// each new router address) is sealed under one key, so no two different
// datagrams may share a nonce. Its own messages must not take "the ID after
// the highest seen", which is the next hop's next.
func TestNoNonceSealsTwoDatagramsTowardsTheRouter(t *testing.T) {
	target := netip.MustParseAddrPort("198.18.41.2:27015")
	next := newCountingSink(t)
	h := newHandRelay(t, target, next.Addr())
	s, rs := h.s, h.rs
	rd := ingress.NewReader()
	payload := make([]byte, 100)
	now := mono.Now()
	var paths []*nonceSink
	for i := 0; i < 4; i++ {
		paths = append(paths, newNonceSink(t))
	}

	s.in.Handle(rd, h.seal(t, rs, payload, now), paths[0].addr, now) // opens the relay
	rl, ok := s.relays.Peek(h.id)
	if !ok || rl.outSend == nil {
		t.Fatal("relay not created")
	}
	outHello, _ := rl.outSend.Hello()
	psk, _, _ := wire.DeriveKeys(&midKeys[0], &outHello.Salt, rl.outID, wire.RoleServer)
	ps, err := tunnel.NewSender(psk, rl.outID, raic.Params{Scheme: raic.SchemeCopy, K: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, wire.MaxDatagram)
	ack, _ := ps.SealControl(buf, wire.TypeAck, make([]byte, 8), now)
	s.fromNext(rd, 0, append([]byte(nil), ack...), now)
	for round := 0; round < 40; round++ {
		now += int64(10 * time.Millisecond)
		// The router's datagrams, now and then from a new address (a NAT
		// rebinding): each new one is challenged.
		from := paths[(round/10)%len(paths)].addr
		s.in.Handle(rd, h.seal(t, rs, payload, now), from, now)
		// The next hop answers each, under its own next packet ID.
		s.fromNext(rd, 0, h.seal(t, ps, payload, now), now)
	}
	time.Sleep(200 * time.Millisecond)
	total := 0
	for i, p := range paths {
		p.mu.Lock()
		total += p.n
		if len(p.bad) > 0 {
			t.Errorf("path %d: %d nonces sealed two different datagrams (first: %s)", i, len(p.bad), p.bad[0])
		}
		p.mu.Unlock()
	}
	if c := counter(s, "intermediate_path_challenges_total"); c < float64(len(paths)) {
		t.Errorf("%v path challenges sent, want one per new address at least (%d)", c, len(paths))
	}
	if total < 40 {
		t.Fatalf("the router's addresses received %d datagrams, want the 40 replies at least", total)
	}
}
