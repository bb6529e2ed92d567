package intermediate

import (
	"net/netip"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/ingress"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// TestRepliesFollowRouterPaths drives one relayed session by hand, on a clock of
// its own, through the ways a router's two paths behave, and checks where the
// next hop's answers go back to:
//
//   - path B's copies always arrive second (duplicates here), for longer than
//     the reply window: B still gets every reply, since the duplicates keep it
//     fresh, and no copy is moved;
//   - B falls silent: for the first half second or so it lags behind and still
//     gets its copy, and one more goes on A;
//   - B stays silent past the reply window: it gets nothing, and since the
//     router's keepalive said it has two paths, A gets two copies.
func TestRepliesFollowRouterPaths(t *testing.T) {
	target := netip.MustParseAddrPort("198.18.41.2:27015")
	next := newCountingSink(t)
	pathA, pathB := newCountingSink(t), newCountingSink(t)
	h := newHandRelay(t, target, next.Addr())
	if h.s.cfg.ReplyWindow.Duration != 2500*time.Millisecond {
		t.Fatalf("default reply window %v, want 2.5 s", h.s.cfg.ReplyWindow.Duration)
	}
	s, rs := h.s, h.rs
	seal := func(snd *tunnel.Sender, pkt []byte, now int64) []byte { return h.seal(t, snd, pkt, now) }
	rd := ingress.NewReader()
	payload := make([]byte, 100)
	now := mono.Now()

	s.in.Handle(rd, seal(rs, payload, now), pathA.Addr(), now) // opens the relay on A
	rs.Heard(now)
	rl, ok := s.relays.Peek(h.id)
	if !ok || rl.outSend == nil {
		t.Fatal("relay not created")
	}
	// A keepalive makes B known and says the router has two paths.
	ka, err := rs.SealControl(make([]byte, wire.MaxDatagram), wire.TypeKeepalive, []byte{2}, now)
	if err != nil {
		t.Fatal(err)
	}
	s.in.Handle(rd, ka, pathB.Addr(), now)

	// The next hop's side of the session, answering.
	outHello, _ := rl.outSend.Hello()
	psk, _, _ := wire.DeriveKeys(&midKeys[0], &outHello.Salt, rl.outID, wire.RoleServer)
	ps, err := tunnel.NewSender(psk, rl.outID, raic.Params{Scheme: raic.SchemeCopy, K: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wantA, wantB int64
	moved := 0.0
	answer := func(what string, toA, toB int64, movedNow float64) {
		t.Helper()
		s.fromNext(rd, 0, seal(ps, payload, now), now)
		wantA, wantB, moved = wantA+toA, wantB+toB, moved+movedNow
		deadline := time.Now().Add(2 * time.Second)
		for (pathA.N.Load() < wantA || pathB.N.Load() < wantB) && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(20 * time.Millisecond) // anything more would show now
		if a, b := pathA.N.Load(), pathB.N.Load(); a != wantA || b != wantB {
			t.Errorf("%s: A received %d, B %d; want %d and %d", what, a, b, wantA, wantB)
		}
		if c := counter(s, "intermediate_moved_copies_total"); c != moved {
			t.Errorf("%s: %v copies moved, want %v", what, c, moved)
		}
	}
	step := int64(10 * time.Millisecond)

	// Six seconds, more than twice the reply window, of packets arriving first
	// on A and a copy of each 3 ms later on B.
	for end := now + int64(6*time.Second); now < end; {
		now += step
		dg := seal(rs, payload, now)
		s.in.Handle(rd, dg, pathA.Addr(), now)
		s.in.Handle(rd, dg, pathB.Addr(), now+3*int64(time.Millisecond))
	}
	if c := counter(s, `intermediate_dropped_total{reason="duplicate"}`); c < 600 {
		t.Fatalf("%v duplicates counted, want B's 600 copies", c)
	}
	answer("copies on B arrive second", 1, 1, 0)

	// B falls silent; after half a second it lags behind A.
	for end := now + int64(500*time.Millisecond); now < end; {
		now += step
		s.in.Handle(rd, seal(rs, payload, now), pathA.Addr(), now)
	}
	answer("B lags behind", 2, 1, 1)

	// B silent past the reply window: its copy goes on A.
	for end := now + int64(2500*time.Millisecond); now < end; {
		now += step
		s.in.Handle(rd, seal(rs, payload, now), pathA.Addr(), now)
	}
	answer("B gone", 2, 0, 1)
}
