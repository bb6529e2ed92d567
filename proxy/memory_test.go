package proxy

import (
	"net/netip"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/raicnet/raic/integration/testkit"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// heapPerSessionBound is what one open RAIC-1 session of one uplink may cost
// in Go heap, all included, with a margin over the 1,417 bytes measured: the
// session with its router side (320 bytes, a 320-byte block: the quality
// tracker is 72 of them, its ring made only for a packet's second datagram, a
// coded one or a change of scheme) and its one quality path (96: the bits beyond bit 0
// made likewise), the receiver (its 4,096-packet anti-replay window, 528
// bytes, in 568: a 576-byte block; the decoder, the upgrade state and most
// counters come on first need), the sender (72: an 80-byte block), its keys
// (24) and its encoder (80: no coded state for copies), the two keys' AEADs
// (32 each), one reply path (96) and the table's entry (about 60 with its
// share of the map). No decoder, no datagram buffer: those come with coded
// schemes and replies, and replies are sealed into their poller's buffers.
// The upstream socket, when not shared, is a bare descriptor.
const heapPerSessionBound = 1504

// TestSessionHeapIsBounded opens sessions through the real path (datagrams on
// loopback, the read loop, admission, the session table, an upstream socket
// each, a packet forwarded per session) and fails if a session costs more heap
// than heapPerSessionBound.
func TestSessionHeapIsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 2,000 sockets")
	}
	const n = 2000
	server := testkit.NewCountingSink(t)
	s := startTestProxy(t, server.Addr().String(), "max_sessions = 4000\nsession_rate = 1000000\nrate_pps = 1000000\nburst = 1000000")
	router := testkit.NewCountingSink(t) // acks land here, read into one buffer

	// The datagrams are sealed first, so what the routers' side allocates is
	// in the heap before the first measurement.
	ids := make([]uint64, n)
	dgs := make([][]byte, n)
	for i := range dgs {
		ids[i], dgs[i] = sealHello(t, server.Addr(), uint64(i))
	}
	before := liveHeap()
	sent := make([]bool, n)
	deadline := time.Now().Add(20 * time.Second)
	for open := 0; open < n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d sessions opened", open, n)
		}
		open = 0
		for i, dg := range dgs {
			if _, ok := s.sessions.Peek(ids[i]); ok {
				open++
				continue
			}
			if !sent[i] || time.Now().After(deadline.Add(-15*time.Second)) {
				router.Conn.WriteToUDPAddrPort(dg, s.Addr())
				sent[i] = true
				if i%64 == 63 {
					time.Sleep(time.Millisecond) // the listen socket's buffer is finite
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	server.WaitFor(t, n)
	after := liveHeap()
	runtime.KeepAlive(dgs)
	per := float64(int64(after)-int64(before)) / n
	t.Logf("%d sessions: heap %d → %d bytes, %.0f bytes per session", n, before, after, per)
	if per > heapPerSessionBound {
		t.Errorf("a session costs %.0f bytes of heap, want ≤ %d", per, heapPerSessionBound)
	}
}

// liveHeap is the heap in use after a collection.
func liveHeap() uint64 {
	var m runtime.MemStats
	for i := 0; i < 2; i++ {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// sealHello returns a session ID and the first datagram of that session, as
// a RAIC-1 router seals it: the hello and a 100-byte packet for target.
func sealHello(t testing.TB, target netip.AddrPort, i uint64) (uint64, []byte) {
	t.Helper()
	salt, _ := wire.NewSalt()
	id := uint64(mono.Now())<<12 | i<<1 | 1
	send, _, err := wire.DeriveKeys(&goodKey, &salt, id, wire.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	hello := &wire.Hello{Salt: salt, Target: target}
	hello.SetClientID("gamer")
	snd, err := tunnel.NewSender(send, id, raic.Params{Scheme: raic.SchemeCopy, K: 1}, hello)
	if err != nil {
		t.Fatal(err)
	}
	_, out, err := snd.Seal(make([]byte, 100), mono.Now())
	if err != nil || len(out) != 1 {
		t.Fatalf("seal: %v", err)
	}
	return id, append([]byte(nil), out[0]...)
}

// TestSessionFitsItsBlock: past 320 bytes a proxySession takes a 352-byte
// block, 3.2 MB more at 100,000 sessions.
func TestSessionFitsItsBlock(t *testing.T) {
	if n := unsafe.Sizeof(proxySession{}); n > 320 {
		t.Errorf("proxySession is %d bytes, want ≤ 320", n)
	}
}
