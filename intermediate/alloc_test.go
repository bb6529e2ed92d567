package intermediate

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/raicnet/raic/integration/testkit"
	"github.com/raicnet/raic/pkg/ingress"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// TestRelayPathDoesNotAllocate drives the intermediate's per-datagram functions
// directly, both ways: a router's datagram is authenticated, deduplicated,
// decoded, re-sealed under the same packet ID and sent on two uplinks; a next
// hop's datagram the same way back to the router's path. In steady state
// neither allocates.
func TestRelayPathDoesNotAllocate(t *testing.T) {
	target := netip.MustParseAddrPort("198.18.41.2:27015")
	next := newCountingSink(t)
	routerSide := newCountingSink(t)
	h := newHandRelay(t, target, next.Addr(), next.Addr())
	s, rs := h.s, h.rs
	seal := func(snd *tunnel.Sender, pkt []byte) []byte { return h.seal(t, snd, pkt, mono.Now()) }
	rd := ingress.NewReader()
	from := routerSide.Addr()
	payload := make([]byte, 100)

	s.in.Handle(rd, seal(rs, payload), from, mono.Now()) // opens the relay (allocates, once)
	rs.Heard(mono.Now())
	rl, ok := s.relays.Peek(h.id)
	if !ok || rl.outSend == nil {
		t.Fatal("relay not created")
	}
	next.WaitFor(t, 2)

	// The decoder's ring of groups gets its buffers on first use: warm it up.
	const runs, warmup = 1000, 2048
	dgs := make([][]byte, warmup+runs+1)
	for i := range dgs {
		dgs[i] = seal(rs, payload)
	}
	for i := 0; i < warmup; i++ {
		s.in.Handle(rd, dgs[i], from, mono.Now())
	}
	i := warmup
	allocs := testing.AllocsPerRun(runs, func() {
		s.in.Handle(rd, dgs[i], from, mono.Now())
		i++
	})
	if allocs != 0 {
		t.Errorf("router to next hop: %v allocations per datagram", allocs)
	}
	total := int64(1 + warmup + runs + 1)
	next.WaitFor(t, 2*total) // a copy on each uplink
	if c := counter(s, `intermediate_relayed_total{dir="out"}`); c != float64(total) {
		t.Fatalf("relayed %v packets out, want %d", c, total)
	}

	// The next hop's side of the same session: it answers under the session the
	// intermediate opened there.
	outHello, _ := rl.outSend.Hello()
	psk, _, _ := wire.DeriveKeys(&midKeys[0], &outHello.Salt, rl.outID, wire.RoleServer)
	ps, err := tunnel.NewSender(psk, rl.outID, raic.Params{Scheme: raic.SchemeCopy, K: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	u := 0 // the first uplink
	back := make([][]byte, warmup+runs+1)
	for i := range back {
		back[i] = seal(ps, payload)
	}
	for i := 0; i < warmup; i++ {
		s.fromNext(rd, u, back[i], mono.Now())
	}
	i = warmup
	allocs = testing.AllocsPerRun(runs, func() {
		s.fromNext(rd, u, back[i], mono.Now())
		i++
	})
	if allocs != 0 {
		t.Errorf("next hop to router: %v allocations per datagram", allocs)
	}
	routerSide.WaitFor(t, total-1) // nothing opened this direction
	if c := counter(s, `intermediate_relayed_total{dir="back"}`); c != float64(total-1) {
		t.Fatalf("relayed %v packets back, want %d", c, total-1)
	}
}

// newCountingSink is testkit's counting sink, not counting the path checks
// the answering side sends to a new address (they are not replies).
func newCountingSink(t testing.TB) *testkit.CountingSink {
	return testkit.NewCountingSinkSkipping(t, func(dg []byte) bool {
		return len(dg) > 1 && wire.Type(dg[1]) == wire.TypePathChallenge
	})
}

// handRelay is an intermediate with a game session the test drives by hand:
// the router's sender for it (its first datagram not sent yet) and a helper
// that seals one datagram.
type handRelay struct {
	s  *Server
	rs *tunnel.Sender // the router's side of the session
	id uint64
}

// newHandRelay starts an intermediate that forwards target's sessions to the
// next hop on one uplink per address in next.
func newHandRelay(t *testing.T, target netip.AddrPort, next ...netip.AddrPort) *handRelay {
	t.Helper()
	conf := fmt.Sprintf(`
listen = "127.0.0.1:0"
[[client]]
id = "gamer"
key = "%s"
allow = ["%s"]
rate_pps = 100000000
burst = 100000000
[next]
client_id = "mid1"
key = "%s"
`, routerKey, target, midKeys[0])
	for _, n := range next {
		conf += fmt.Sprintf("[[next.uplink]]\nsource = \"127.0.0.1\"\nproxy = \"%s\"\n", n)
	}
	cfg, err := ParseConfig("intermediate.toml", conf)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	salt, _ := wire.NewSalt()
	id := uint64(mono.Now()) | 1
	sk, _, _ := wire.DeriveKeys(&routerKey, &salt, id, wire.RoleClient)
	hello := &wire.Hello{Salt: salt, Target: target}
	hello.SetClientID("gamer")
	rs, err := tunnel.NewSender(sk, id, raic.Params{Scheme: raic.SchemeCopy, K: 1}, hello)
	if err != nil {
		t.Fatal(err)
	}
	return &handRelay{s: s, rs: rs, id: id}
}

// seal seals pkt as one datagram of snd at now and returns a copy of it.
func (h *handRelay) seal(t *testing.T, snd *tunnel.Sender, pkt []byte, now int64) []byte {
	t.Helper()
	_, dgs, err := snd.Seal(pkt, now)
	if err != nil || len(dgs) != 1 {
		t.Fatalf("seal: %v", err)
	}
	return append([]byte(nil), dgs[0]...)
}
