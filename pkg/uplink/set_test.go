package uplink

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/udp"
	"github.com/raicnet/raic/pkg/wire"
)

// farEnd is the far side of one path: it counts what arrives and remembers the
// last datagram.
type farEnd struct {
	conn *net.UDPConn
	n    atomic.Int64

	mu   sync.Mutex
	last []byte
}

func (f *farEnd) lastDatagram() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return string(f.last)
}

func newFarEnd(t *testing.T) *farEnd {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadBuffer(4 << 20)
	f := &farEnd{conn: c, last: make([]byte, 0, 2048)}
	go func() {
		// Allocation-free, so the allocation test sees only the sender's.
		b := make([]byte, 2048)
		for {
			k, err := c.Read(b)
			if err != nil {
				return
			}
			f.mu.Lock()
			f.last = append(f.last[:0], b[:k]...)
			f.mu.Unlock()
			f.n.Add(1)
		}
	}()
	t.Cleanup(func() { c.Close() })
	return f
}

func (f *farEnd) addr() netip.AddrPort { return f.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// testSet makes a Set of n loopback paths, each to a far end of its own, with
// a health that says up; down(i) makes path i look dead at time 100 ms.
func testSet(t *testing.T, n, copies int) (*Set, []*farEnd, *metrics.Registry) {
	t.Helper()
	reg := metrics.NewRegistry()
	s := &Set{Copies: copies, Errors: reg.Counter("send_errors_total", "")}
	var ends []*farEnd
	for i := 0; i < n; i++ {
		conn, err := udp.Listen("udp4", udp.Options{Local: netip.MustParseAddrPort("127.0.0.1:0")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		f := newFarEnd(t)
		ends = append(ends, f)
		s.Paths = append(s.Paths, &Path{Index: i, Conn: conn, To: f.addr(),
			Health: NewHealth(HealthConfig{PingInterval: 10 * time.Millisecond, DownAfter: 30 * time.Millisecond}),
			Sent:   reg.Counter(`sent_total{uplink="`+string(rune('a'+i))+`"}`, "")})
	}
	return s, ends, reg
}

// at is the time the tests send at: paths pinged at 0 and never answered are
// down by then.
const at = int64(100 * time.Millisecond)

func down(s *Set, i int) { s.Paths[i].Health.OnPingSent(1, 0) }

func waitCounts(t *testing.T, ends []*farEnd, want ...int64) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		ok := true
		for i, f := range ends {
			ok = ok && f.n.Load() == want[i]
		}
		if ok {
			// Nothing more arrives than wanted.
			time.Sleep(20 * time.Millisecond)
			for i, f := range ends {
				if f.n.Load() != want[i] {
					t.Fatalf("path %d: %d datagrams, want %d", i, f.n.Load(), want[i])
				}
			}
			return
		}
		if time.Now().After(deadline) {
			got := make([]int64, len(ends))
			for i, f := range ends {
				got[i] = f.n.Load()
			}
			t.Fatalf("datagrams per path %v, want %v", got, want)
		}
		time.Sleep(time.Millisecond)
	}
}

// A single datagram goes on every path Copies times, the dead one too, and the
// dead one's copies go on the live ones as well.
func TestSendCopiesMoveOffDeadPath(t *testing.T) {
	s, ends, reg := testSet(t, 3, 2)
	down(s, 1)
	res := s.Send([][]byte{[]byte("copy")}, false, false, at)
	if res.Moved != 2 || res.AllDown {
		t.Fatalf("result %+v, want 2 copies moved", res)
	}
	// The two moved copies go to the two live paths one after the other.
	waitCounts(t, ends, 3, 2, 3)
	if got := ends[0].lastDatagram(); got != "copy" {
		t.Fatalf("far end got %q", got)
	}
	if v := reg.Snapshot()[`sent_total{uplink="a"}`]; v != 3 {
		t.Fatalf("sent counter of path a = %v, want 3", v)
	}
}

// With every path alive nothing moves; with every path dead the copies still
// go out on all of them.
func TestSendCopiesAllUpAllDown(t *testing.T) {
	s, ends, _ := testSet(t, 2, 1)
	if res := s.Send([][]byte{[]byte("x")}, false, false, at); res.Moved != 0 {
		t.Fatalf("all up: %+v", res)
	}
	waitCounts(t, ends, 1, 1)
	down(s, 0)
	down(s, 1)
	if res := s.Send([][]byte{[]byte("x")}, false, false, at); res.Moved != 0 || res.AllDown {
		t.Fatalf("all down: %+v", res)
	}
	waitCounts(t, ends, 2, 2)
}

// Shards go only on the paths that answer; when none does, on all of them.
func TestSendShardsOnLivePaths(t *testing.T) {
	s, ends, _ := testSet(t, 2, 1)
	shards := [][]byte{[]byte("s0"), []byte("s1"), []byte("s2"), []byte("s3")}
	s.Send(shards, false, false, at)
	waitCounts(t, ends, 2, 2)
	down(s, 0)
	if res := s.Send(shards, false, false, at); res.AllDown || res.Moved != 0 {
		t.Fatalf("one down: %+v", res)
	}
	waitCounts(t, ends, 2, 6)
	down(s, 1)
	if res := s.Send(shards, false, false, at); !res.AllDown {
		t.Fatalf("all down: %+v, want AllDown", res)
	}
	waitCounts(t, ends, 4, 8)
}

// A datagram the socket refuses is counted and the rest still go.
func TestSendCountsErrors(t *testing.T) {
	s, ends, reg := testSet(t, 2, 1)
	s.Paths[0].To = netip.MustParseAddrPort("[2001:db8::1]:9") // not on an IPv4 socket
	s.Send([][]byte{[]byte("x")}, false, false, at)
	waitCounts(t, ends, 0, 1)
	if v := reg.Snapshot()["send_errors_total"]; v != 1 {
		t.Fatalf("send errors %v, want 1", v)
	}
}

// Pings go out on the paths that are due, and their answers give each path
// its RTT.
func TestSendPingsAndPongs(t *testing.T) {
	s, ends, _ := testSet(t, 2, 1)
	var pings []wire.Ping
	seal := func(p wire.Ping) []byte {
		pings = append(pings, p)
		return []byte("ping")
	}
	s.SendPings(0, seal)
	waitCounts(t, ends, 1, 1)
	s.SendPings(int64(5*time.Millisecond), seal) // not due yet
	if len(pings) != 2 || pings[0].Uplink != 0 || pings[1].Uplink != 1 || pings[0].Seq != 1 {
		t.Fatalf("pings %+v", pings)
	}
	if _, ok := s.BestRTT(0); ok {
		t.Fatal("an RTT before any pong")
	}
	pong := wire.Pong{Ping: pings[1], PeerTime: int64(2 * time.Millisecond)}
	if !s.OnPong(&pong, int64(4*time.Millisecond)) {
		t.Fatal("pong refused")
	}
	if rtt, ok := s.BestRTT(int64(4 * time.Millisecond)); !ok || rtt != 4*time.Millisecond {
		t.Fatalf("best RTT %v %v, want 4ms", rtt, ok)
	}
	bad := wire.Pong{Ping: wire.Ping{Uplink: 7}}
	if s.OnPong(&bad, 0) {
		t.Fatal("a pong for a path the set does not have was taken")
	}
}

// Sending copies or shards allocates nothing.
func TestSendDoesNotAllocate(t *testing.T) {
	s, _, _ := testSet(t, 3, 2)
	down(s, 2)
	one := [][]byte{make([]byte, 100)}
	shards := [][]byte{make([]byte, 40), make([]byte, 40), make([]byte, 40), make([]byte, 40)}
	s.Send(one, false, false, at)
	if a := testing.AllocsPerRun(200, func() { s.Send(one, false, false, at) }); a != 0 {
		t.Errorf("copies: %v allocations per packet", a)
	}
	if a := testing.AllocsPerRun(200, func() { s.Send(shards, false, false, at) }); a != 0 {
		t.Errorf("shards: %v allocations per packet", a)
	}
}
