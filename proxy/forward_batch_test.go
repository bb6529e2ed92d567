package proxy

import (
	"encoding/binary"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/testkit"
	"github.com/raicnet/raic/pkg/ingress"
	"github.com/raicnet/raic/pkg/mono"
)

// orderSink records the first 4 bytes (a sequence number) of each datagram it
// receives, in arrival order.
type orderSink struct {
	conn *net.UDPConn
	mu   sync.Mutex
	seqs []uint32
}

func newOrderSink(t *testing.T) *orderSink {
	o := &orderSink{conn: testkit.UDPListen(t)}
	o.conn.SetReadBuffer(4 << 20)
	go func() {
		b := make([]byte, 2048)
		for {
			n, _, err := o.conn.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			if n >= 4 {
				o.mu.Lock()
				o.seqs = append(o.seqs, binary.BigEndian.Uint32(b))
				o.mu.Unlock()
			}
		}
	}()
	return o
}

// received is what arrived after waiting d (nothing more is expected).
func (o *orderSink) received(d time.Duration) []uint32 {
	time.Sleep(d)
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]uint32(nil), o.seqs...)
}

// waitFor waits up to 5 s for n datagrams and returns them.
func (o *orderSink) waitFor(t *testing.T, n int) []uint32 {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		if got := o.received(5 * time.Millisecond); len(got) >= n {
			return got
		}
	}
	t.Fatalf("received %d datagrams, want %d", len(o.received(0)), n)
	return nil
}

// newBatchingProxy is a one-worker proxy, not running: the test is its read
// loop. It skips where the kernel gives no io_uring (forwards are then
// written one by one, as TestReadLoopForwardDoesNotAllocate covers).
func newBatchingProxy(t *testing.T, server *orderSink) *Server {
	s := newOneWorkerProxy(t, server, "")
	if s.batchOf(0) == nil {
		t.Skip("no io_uring send on this kernel: the proxy forwards with a write per packet")
	}
	return s
}

// newOneWorkerProxy is a one-worker proxy, not running, with extra config.
func newOneWorkerProxy(t *testing.T, server *orderSink, extra string) *Server {
	cfg, err := ParseConfig("proxy.toml", extra+`
listen = "127.0.0.1:0"
workers = 1
[[client]]
id = "gamer"
key = "`+goodKey.String()+`"
allow = ["`+testkit.AddrOf(server.conn).String()+`"]
rate_pps = 100000000
burst = 100000000
`)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// TestIOURingOffForwardsAtOnce: io_uring = false keeps a write per packet,
// the forward leaving before its read batch ends.
func TestIOURingOffForwardsAtOnce(t *testing.T) {
	server := newOrderSink(t)
	s := newOneWorkerProxy(t, server, "io_uring = false")
	if s.batchOf(0) != nil {
		t.Fatal("io_uring = false, yet the read loop batches its forwards")
	}
	fr := newFakeRouter(t, goodKey, testkit.AddrOf(server.conn))
	s.in.Handle(ingress.NewWorkerReader(0), fr.seal(t, seqPacket(7)), testkit.NewCountingSink(t).Addr(), mono.Now())
	if got := server.waitFor(t, 1); got[0] != 7 {
		t.Fatalf("arrived %v", got)
	}
}

func seqPacket(i int) []byte {
	p := make([]byte, 100)
	binary.BigEndian.PutUint32(p, uint32(i))
	return p
}

// TestReadBatchForwardsLeaveTogetherInOrder: a read loop's forwards wait for
// the end of its batch (or a full batch), then all leave, in the order they
// came.
func TestReadBatchForwardsLeaveTogetherInOrder(t *testing.T) {
	server := newOrderSink(t)
	s := newBatchingProxy(t, server)
	rd := ingress.NewWorkerReader(0)
	fr := newFakeRouter(t, goodKey, testkit.AddrOf(server.conn))
	from := testkit.NewCountingSink(t).Addr()

	s.in.Handle(rd, fr.seal(t, seqPacket(0)), from, mono.Now())
	if got := server.received(50 * time.Millisecond); len(got) != 0 {
		t.Fatalf("a forward left before its read batch ended: %v", got)
	}
	s.endBatch(0)
	server.waitFor(t, 1)

	// More than a batch holds: the first full batch leaves on its own.
	room := s.batchOf(0).ring.Entries()
	total := room + room/2
	for i := 1; i <= total; i++ {
		s.in.Handle(rd, fr.seal(t, seqPacket(i)), from, mono.Now())
	}
	if got := server.waitFor(t, 1+room); len(got) != 1+room {
		t.Fatalf("%d datagrams arrived before the batch's end, want the %d of the full batch", len(got)-1, room)
	}
	s.endBatch(0)
	got := server.waitFor(t, 1+total)
	for i, seq := range got {
		if seq != uint32(i) {
			t.Fatalf("datagram %d arrived as number %d: order lost (%v)", seq, i, got)
		}
	}
	if f := counter(s, "proxy_forwarded_total"); f != float64(1+total) {
		t.Fatalf("proxy_forwarded_total %v, want %d", f, 1+total)
	}
}

// TestQueuedForwardOutlivesItsPortClose: a session's port closed while its
// packet waits in the batch (the session ended) stays open until the batch
// is sent, so the packet leaves on it, and is closed after.
func TestQueuedForwardOutlivesItsPortClose(t *testing.T) {
	server := newOrderSink(t)
	s := newBatchingProxy(t, server)
	rd := ingress.NewWorkerReader(0)
	fr := newFakeRouter(t, goodKey, testkit.AddrOf(server.conn))
	from := testkit.NewCountingSink(t).Addr()
	s.in.Handle(rd, fr.seal(t, seqPacket(0)), from, mono.Now())
	s.endBatch(0)
	server.waitFor(t, 1)

	ps, ok := s.sessions.Peek(fr.send.Session())
	if !ok {
		t.Fatal("no session")
	}
	sp := ps.port.Load()
	s.in.Handle(rd, fr.seal(t, seqPacket(1)), from, mono.Now())
	sp.close()
	if err := sp.write(seqPacket(9)); err != errPortClosed {
		t.Fatalf("write on a closed port: %v, want %v", err, errPortClosed)
	}
	s.endBatch(0)
	if got := server.waitFor(t, 2); got[1] != 1 {
		t.Fatalf("arrived %v, want the queued packet 1 second", got)
	}
	if st := sp.state.Load(); st != portClosed {
		t.Fatalf("port state %#x after the batch, want closed with no user (%#x)", st, portClosed)
	}
}
