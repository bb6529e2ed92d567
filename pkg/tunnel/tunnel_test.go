package tunnel

import (
	"errors"
	"testing"
	"time"
	"unsafe"

	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// collect is a Sink that records what it is given.
type collect struct{ pids []uint64 }

func (c *collect) Deliver(pid uint64, pkt []byte, now int64) { c.pids = append(c.pids, pid) }

func pair(t *testing.T, p raic.Params) (*Sender, *Receiver) {
	t.Helper()
	psk := wire.Key{5}
	salt := [16]byte{6}
	send, _, err := wire.DeriveKeys(&psk, &salt, 9, wire.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	_, recv, err := wire.DeriveKeys(&psk, &salt, 9, wire.RoleServer)
	if err != nil {
		t.Fatal(err)
	}
	hello := &wire.Hello{Salt: salt}
	hello.SetClientID("c")
	s, err := NewSender(send, 9, p, hello)
	if err != nil {
		t.Fatal(err)
	}
	return s, NewReceiver(recv, raic.DecoderConfig{})
}

// receive parses and hands one datagram (a copy) to r.
func receive(t *testing.T, r *Receiver, dg []byte, sink Sink) ([]byte, error) {
	t.Helper()
	b := append([]byte(nil), dg...)
	var h wire.Header
	var hl wire.Hello
	off, err := wire.Parse(b, &h, &hl)
	if err != nil {
		t.Fatal(err)
	}
	return r.Receive(b, &h, off, 0, sink)
}

func TestCopiesAreDeliveredOnce(t *testing.T) {
	s, r := pair(t, raic.Params{Scheme: raic.SchemeCopy, K: 1})
	var got collect
	for i := 0; i < 3; i++ {
		pid, dgs, err := s.Seal([]byte("pkt"), 0)
		if err != nil || pid != uint64(i+1) {
			t.Fatalf("seal: pid %d, %v", pid, err)
		}
		dg := append([]byte(nil), dgs[0]...)
		if _, err := receive(t, r, dg, &got); err != nil {
			t.Fatal(err)
		}
		if _, err := receive(t, r, dg, &got); !errors.Is(err, ErrDuplicate) {
			t.Fatalf("second copy: %v, want ErrDuplicate", err)
		}
	}
	if len(got.pids) != 3 || got.pids[0] != 1 || got.pids[2] != 3 {
		t.Fatalf("delivered %v, want [1 2 3]", got.pids)
	}
}

// TestWindowMovesOnlyAfterAuthentication sends a forged datagram with a far
// higher packet ID: it must fail to open and leave the window where it was, so
// the genuine packets after it are still accepted.
func TestWindowMovesOnlyAfterAuthentication(t *testing.T) {
	s, r := pair(t, raic.Params{Scheme: raic.SchemeCopy, K: 1})
	var got collect
	_, dgs, _ := s.Seal([]byte("a"), 0)
	forged := append([]byte(nil), dgs[0]...)
	forged[19] = 0xff // packet ID far ahead
	if _, err := receive(t, r, forged, &got); !errors.Is(err, wire.ErrAuth) {
		t.Fatalf("forged datagram: %v, want ErrAuth", err)
	}
	if _, err := receive(t, r, dgs[0], &got); err != nil {
		t.Fatalf("genuine datagram after a forged one: %v", err)
	}
	if len(got.pids) != 1 {
		t.Fatalf("delivered %v", got.pids)
	}
	st, _ := r.Stats()
	if st.AuthFailed != 1 || st.Delivered != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestCodedShardsReleaseOnceFromAnyK(t *testing.T) {
	s, r := pair(t, raic.Params{Scheme: raic.SchemeXOR, K: 2, M: 1})
	var got collect
	_, dgs, err := s.Seal([]byte("a coded game packet"), 0)
	if err != nil || len(dgs) != 3 {
		t.Fatalf("%d shards, %v", len(dgs), err)
	}
	all := [][]byte{append([]byte(nil), dgs[0]...), append([]byte(nil), dgs[1]...), append([]byte(nil), dgs[2]...)}
	// Parity and the second data shard are enough; the first arriving later is
	// dropped without a second release.
	for _, i := range []int{2, 1, 0} {
		receive(t, r, all[i], &got)
	}
	if len(got.pids) != 1 {
		t.Fatalf("delivered %v, want one packet", got.pids)
	}
}

func TestControlBodyAndHello(t *testing.T) {
	s, r := pair(t, raic.Params{Scheme: raic.SchemeCopy, K: 1})
	buf := make([]byte, wire.MaxDatagram)
	dg, err := s.SealControl(buf, wire.TypeKeepalive, []byte{2}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if dg[2]&byte(wire.FlagHello) == 0 {
		t.Fatal("no hello before the far side was heard from")
	}
	body, err := receive(t, r, dg, &collect{})
	if err != nil || len(body) != 1 || body[0] != 2 {
		t.Fatalf("control body %v, %v", body, err)
	}
	s.Heard(int64(time.Second))
	if s.HelloDue(int64(time.Second) + 1) {
		t.Fatal("hello still due after the far side answered")
	}
	if !s.HelloDue(int64(time.Second) + int64(RehelloAfter) + 1) {
		t.Fatal("no hello after a silence of RehelloAfter")
	}
}

func TestSealPIDKeepsTheCounterAhead(t *testing.T) {
	s, _ := pair(t, raic.Params{Scheme: raic.SchemeCopy, K: 1})
	if _, err := s.SealPID(100, []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	if pid, _, _ := s.Seal([]byte("y"), 0); pid != 101 {
		t.Fatalf("next packet ID %d after SealPID(100), want 101", pid)
	}
}

// ForceHello brings the hello back until the far side is heard again; Rekey
// switches both halves to new keys, so what was sealed before no longer opens.
func TestForceHelloAndRekey(t *testing.T) {
	key := wire.Key{3}
	salt, _ := wire.NewSalt()
	cs, _, _ := wire.DeriveKeys(&key, &salt, 9, wire.RoleClient)
	_, sr, _ := wire.DeriveKeys(&key, &salt, 9, wire.RoleServer)
	hl := &wire.Hello{Salt: salt}
	hl.SetClientID("x")
	snd, err := NewSender(cs, 9, raic.Params{Scheme: raic.SchemeCopy, K: 1}, hl)
	if err != nil {
		t.Fatal(err)
	}
	rcv := NewReceiver(sr, raic.DecoderConfig{})
	snd.Heard(100)
	if snd.HelloDue(200) {
		t.Fatal("hello due right after the far side was heard")
	}
	snd.ForceHello(300)
	if !snd.HelloDue(400) {
		t.Fatal("no hello after ForceHello")
	}
	snd.Heard(500)
	if snd.HelloDue(600) {
		t.Fatal("hello still due after the far side was heard again")
	}
	_, dgs, _ := snd.Seal([]byte("old"), 700)
	old := append([]byte(nil), dgs[0]...)

	// Re-key for epoch 5: the hello names it, and the old datagram no longer opens.
	cs5, _, _ := wire.DeriveKeysEpoch(&key, &salt, 9, 5, wire.RoleClient)
	_, sr5, _ := wire.DeriveKeysEpoch(&key, &salt, 9, 5, wire.RoleServer)
	snd.Rekey(cs5, 5, 800)
	rcv.Rekey(sr5)
	if !snd.HelloDue(900) || snd.Epoch() != 5 {
		t.Fatalf("after Rekey: hello due %v, epoch %d", snd.HelloDue(900), snd.Epoch())
	}
	_, dgs, _ = snd.Seal([]byte("new"), 900)
	var h wire.Header
	var got wire.Hello
	off, err := wire.Parse(dgs[0], &h, &got)
	if err != nil || got.Epoch != 5 || h.Flags&wire.FlagEpoch == 0 {
		t.Fatalf("new datagram: %v, epoch %d, flags %x", err, got.Epoch, h.Flags)
	}
	sink := &countSink{}
	if _, err := rcv.Receive(dgs[0], &h, off, 900, sink); err != nil || sink.n != 1 {
		t.Fatalf("new datagram: %v, delivered %d", err, sink.n)
	}
	off, _ = wire.Parse(old, &h, &got)
	if _, err := rcv.Receive(old, &h, off, 900, sink); err == nil || sink.n != 1 {
		t.Fatalf("a datagram sealed before Rekey was taken (err %v)", err)
	}
}

// StartAt moves packet IDs ahead; SetFloor refuses what lies below.
func TestStartAtAndFloor(t *testing.T) {
	key := wire.Key{4}
	salt, _ := wire.NewSalt()
	cs, _, _ := wire.DeriveKeys(&key, &salt, 9, wire.RoleClient)
	_, sr, _ := wire.DeriveKeys(&key, &salt, 9, wire.RoleServer)
	snd, _ := NewSender(cs, 9, raic.Params{Scheme: raic.SchemeCopy, K: 1}, nil)
	var early [][]byte
	for i := 0; i < 3; i++ {
		_, dgs, _ := snd.Seal([]byte("e"), 1)
		early = append(early, append([]byte(nil), dgs[0]...))
	}
	base := ClockPIDBase(1_800_000_000_000)
	snd.StartAt(base)
	pid, dgs, _ := snd.Seal([]byte("late"), 2)
	if pid != base+1 {
		t.Fatalf("packet ID %d after StartAt(%d)", pid, base)
	}
	rcv := NewReceiver(sr, raic.DecoderConfig{})
	rcv.SetFloor(base + 1)
	sink := &countSink{}
	var h wire.Header
	off, _ := wire.Parse(dgs[0], &h, nil)
	if _, err := rcv.Receive(dgs[0], &h, off, 2, sink); err != nil {
		t.Fatal(err)
	}
	for _, dg := range early {
		off, _ := wire.Parse(dg, &h, nil)
		if _, err := rcv.Receive(dg, &h, off, 2, sink); err == nil {
			t.Fatalf("packet %d below the floor was taken", h.Packet)
		}
	}
	if sink.n != 1 {
		t.Fatalf("delivered %d, want 1", sink.n)
	}
}

type countSink struct{ n int }

func (c *countSink) Deliver(uint64, []byte, int64) { c.n++ }

// TestCopiesTellsFragmentsFromShards pins what decides whether a packet's
// datagrams go on every path: the X-fragments of a copy scheme (and of a
// fragmented RAICT packet) are copies, each needed; coded shards are not.
func TestCopiesTellsFragmentsFromShards(t *testing.T) {
	big := make([]byte, 4000)
	cases := []struct {
		p      raic.Params
		n      int
		ndg    int
		copies bool
	}{
		{raic.Params{Scheme: raic.SchemeCopy, K: 1}, 100, 1, true},
		{raic.Params{Scheme: raic.SchemeCopy, K: 1}, 4000, 4, true},
		{raic.Params{Scheme: raic.SchemeCopy, K: 1, FragAbove: 500}, 1400, 3, true},
		{raic.Params{Scheme: raic.SchemeTime, K: 1, Depth: 2}, 4000, 4, true},
		{raic.Params{Scheme: raic.SchemeTime, K: 1, Depth: 2}, 100, 3, false},
		{raic.Params{Scheme: raic.SchemeXOR, K: 2, M: 1}, 100, 3, false},
		{raic.Params{Scheme: raic.SchemeRS, K: 2, M: 2}, 4000, 8, false},
	}
	for _, c := range cases {
		s, _ := pair(t, c.p)
		_, dgs, err := s.Seal(big[:c.n], 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(dgs) != c.ndg || s.Copies() != c.copies {
			t.Errorf("%v, %d bytes: %d datagrams, copies %v; want %d, %v", c.p, c.n, len(dgs), s.Copies(), c.ndg, c.copies)
		}
	}
}

// TestReceiverCountersCarry: the receiver's 32-bit counters carry into its
// rest when they wrap, so Stats still counts past 2^32.
func TestReceiverCountersCarry(t *testing.T) {
	_, r := pair(t, raic.Params{Scheme: raic.SchemeCopy, K: 1})
	r.mu.Lock()
	r.delivered, r.duplicates = 1<<32-1, 1<<32-2
	r.countDelivered()
	r.countDuplicate()
	r.countDuplicate()
	r.countDuplicate()
	r.mu.Unlock()
	if st, _ := r.Stats(); st.Delivered != 1<<32 || st.Duplicates != 1<<32+1 {
		t.Fatalf("stats %+v: want %d delivered, %d duplicates", st, uint64(1<<32), uint64(1<<32+1))
	}
}

// TestReceiverFitsItsBlock: a proxy holds a Receiver per session; past 568
// bytes (576 less the allocator's header) each would take a 640-byte block.
func TestReceiverFitsItsBlock(t *testing.T) {
	if n := unsafe.Sizeof(Receiver{}); n > 568 {
		t.Errorf("Receiver is %d bytes, want ≤ 568", n)
	}
}

// TestCopiesOnceKeepOnlyTheWindow: copies make no receiverRest, whether
// each arrives once or again (as over two uplinks); the first coded packet
// makes it, and the counters add up across.
func TestCopiesOnceKeepOnlyTheWindow(t *testing.T) {
	s, r := pair(t, raic.Params{Scheme: raic.SchemeCopy, K: 1})
	var got collect
	var last []byte
	for range 100 {
		_, dgs, err := s.Seal([]byte("pkt"), 0)
		if err != nil {
			t.Fatal(err)
		}
		last = append([]byte(nil), dgs[0]...)
		if _, err := receive(t, r, last, &got); err != nil {
			t.Fatal(err)
		}
	}
	if r.more.Load() != nil {
		t.Fatal("100 copies, each once, made the receiver's rest")
	}
	if st, ds := r.Stats(); st != (ReceiverStats{Delivered: 100}) || ds.Shards != 100 || ds.Released != 100 {
		t.Fatalf("stats %+v, decoder %+v; want 100 delivered", st, ds)
	}
	if _, err := receive(t, r, last, &got); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("a duplicate: %v", err)
	}
	if r.more.Load() != nil {
		t.Fatal("a duplicate copy made the receiver's rest")
	}
	// Then coded packets: the decoder is made, and the copies before it
	// still count.
	if err := s.SetParams(raic.Params{Scheme: raic.SchemeXOR, K: 2, M: 1}); err != nil {
		t.Fatal(err)
	}
	_, dgs, err := s.Seal([]byte("coded"), 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, dg := range dgs[:2] {
		if _, err := receive(t, r, dg, &got); err != nil {
			t.Fatal(err)
		}
	}
	st, ds := r.Stats()
	if r.more.Load() == nil || st != (ReceiverStats{Delivered: 101, Duplicates: 1}) || ds.Shards != 102 || ds.Released != 101 {
		t.Fatalf("stats %+v, decoder %+v; want 101 delivered, 1 duplicate, 102 shards", st, ds)
	}
	if len(got.pids) != 101 {
		t.Fatalf("%d packets delivered, want 101", len(got.pids))
	}
}
