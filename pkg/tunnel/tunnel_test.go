package tunnel

import (
	"errors"
	"testing"
	"time"

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
