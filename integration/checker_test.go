package integration

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The checker stands in for a game: every packet carries a stream tag, a
// sequence number and bytes derived from both, so a lost, duplicated or
// corrupted packet is counted exactly.

const checkPktLen = 100

// maxCheckPktLen bounds the sized streams (fragmentation tests).
const maxCheckPktLen = 8192

func fillPacket(b []byte, stream byte, seq uint32) {
	b[0] = stream
	binary.BigEndian.PutUint32(b[1:], seq)
	x := seq*2654435761 + uint32(stream)
	for i := 5; i < len(b); i++ {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
}

// tally counts what one direction received.
type tally struct {
	size      int // the length of every packet of the stream
	mu        sync.Mutex
	seen      []bool
	received  int
	dups      int
	corrupted int
}

func newTally(n int) *tally { return newSizedTally(n, checkPktLen) }

func newSizedTally(n, size int) *tally { return &tally{seen: make([]bool, n), size: size} }

func (t *tally) add(b []byte, stream byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(b) != t.size || b[0] != stream {
		t.corrupted++
		return
	}
	seq := binary.BigEndian.Uint32(b[1:])
	var wantBuf [maxCheckPktLen]byte
	want := wantBuf[:t.size]
	fillPacket(want, stream, seq)
	if int(seq) >= len(t.seen) || string(want) != string(b) {
		t.corrupted++
		return
	}
	if t.seen[seq] {
		t.dups++
		return
	}
	t.seen[seq] = true
	t.received++
}

func (t *tally) snapshot() (received, dups, corrupted int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.received, t.dups, t.corrupted
}

// checkServer receives stream 'C' packets and, once it knows the client's
// address, sends n stream 'S' packets to it at the given rate.
type checkServer struct {
	conn   *net.UDPConn
	up     *tally
	client atomic.Pointer[netip.AddrPort]
	sent   atomic.Int64
}

func newCheckServer(t testing.TB, n int) *checkServer { return newSizedCheckServer(t, n, checkPktLen) }

// newSizedCheckServer is newCheckServer for packets of size bytes.
func newSizedCheckServer(t testing.TB, n, size int) *checkServer {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	conn.SetReadBuffer(4 << 20)
	s := &checkServer{conn: conn, up: newSizedTally(n, size)}
	go func() {
		buf := make([]byte, maxCheckPktLen+1)
		for {
			k, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if s.client.Load() == nil {
				s.client.Store(&from)
			}
			s.up.add(buf[:k], 'C')
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return s
}

func (s *checkServer) addr() netip.AddrPort {
	return s.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// stream sends n packets of the given stream at rate pps through send.
func stream(ctx context.Context, n int, rate float64, streamTag byte, send func([]byte)) {
	sizedStream(ctx, n, rate, streamTag, checkPktLen, send)
}

// sizedStream is stream with packets of size bytes.
func sizedStream(ctx context.Context, n int, rate float64, streamTag byte, size int, send func([]byte)) {
	var buf [maxCheckPktLen]byte
	b := buf[:size]
	start := time.Now()
	for i := 0; i < n; i++ {
		due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
		}
		fillPacket(b[:], streamTag, uint32(i))
		send(b[:])
	}
}
