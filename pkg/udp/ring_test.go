package udp

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// newTestRing makes a ring or skips where the kernel has none to give.
func newTestRing(t testing.TB, entries int) *SendRing {
	t.Helper()
	r, err := NewSendRing(entries)
	if errors.Is(err, ErrRingUnsupported) {
		t.Skipf("this kernel gives no io_uring with IORING_OP_SEND: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// connectedSocket is a bare non-blocking UDP socket connected to to.
func connectedSocket(t testing.TB, to *net.UDPAddr) int32 {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	sa := &unix.SockaddrInet4{Port: to.Port}
	copy(sa.Addr[:], to.IP.To4())
	if err := unix.Connect(fd, sa); err != nil {
		t.Fatal(err)
	}
	return int32(fd)
}

// TestSendRingSendsEveryDatagramOnItsSocket sends a batch over many sockets
// in one Send, several times over (the ring's indices wrap), and checks
// each datagram arrives once, intact, from its own socket.
func TestSendRingSendsEveryDatagramOnItsSocket(t *testing.T) {
	r := newTestRing(t, 32)
	sink, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	sink.SetReadBuffer(1 << 20)
	to := sink.LocalAddr().(*net.UDPAddr)
	const sockets = 8
	fds := make([]int32, sockets)
	ports := map[int]int{} // source port → socket index
	for i := range fds {
		fds[i] = connectedSocket(t, to)
		sa, _ := unix.Getsockname(int(fds[i]))
		ports[sa.(*unix.SockaddrInet4).Port] = i
	}
	for round := 0; round < 5; round++ {
		n := r.Entries() - round // batches of several sizes
		batchFDs, bufs, res := make([]int32, n), make([][]byte, n), make([]int32, n)
		for i := range batchFDs {
			batchFDs[i] = fds[i%sockets]
			bufs[i] = []byte(fmt.Sprintf("round %d datagram %d socket %d", round, i, i%sockets))
		}
		if err := r.Send(batchFDs, bufs, res); err != nil {
			t.Fatal(err)
		}
		for i, v := range res {
			if int(v) != len(bufs[i]) {
				t.Fatalf("round %d: datagram %d: result %d, want %d bytes", round, i, v, len(bufs[i]))
			}
		}
		seen := map[string]bool{}
		buf := make([]byte, 2048)
		sink.SetReadDeadline(time.Now().Add(2 * time.Second))
		for len(seen) < n {
			m, from, err := sink.ReadFromUDP(buf)
			if err != nil {
				t.Fatalf("round %d: %d of %d datagrams arrived: %v", round, len(seen), n, err)
			}
			var rr, i, s int
			fmt.Sscanf(string(buf[:m]), "round %d datagram %d socket %d", &rr, &i, &s)
			if rr != round || !bytes.Equal(buf[:m], bufs[i]) || seen[string(buf[:m])] {
				t.Fatalf("round %d: unexpected datagram %q", round, buf[:m])
			}
			if ports[from.Port] != s {
				t.Fatalf("datagram %q came from socket %d", buf[:m], ports[from.Port])
			}
			seen[string(buf[:m])] = true
		}
	}
}

// TestSendRingReportsEachFailure: a send on a descriptor that is no socket
// fails alone, with its errno, and the others in the batch still go.
func TestSendRingReportsEachFailure(t *testing.T) {
	r := newTestRing(t, 4)
	sink, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	good := connectedSocket(t, sink.LocalAddr().(*net.UDPAddr))
	notSocket, err := unix.Open("/dev/null", unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(notSocket)
	res := make([]int32, 3)
	if err := r.Send([]int32{good, int32(notSocket), good}, [][]byte{[]byte("a"), []byte("b"), []byte("c")}, res); err != nil {
		t.Fatal(err)
	}
	if res[0] != 1 || res[2] != 1 || res[1] != -int32(unix.ENOTSOCK) {
		t.Fatalf("results %v, want [1 %d 1]", res, -int32(unix.ENOTSOCK))
	}
	if err := r.Send([]int32{good}, [][]byte{[]byte("a"), []byte("b")}, res[:1]); err == nil {
		t.Fatal("a batch of unequal lengths was taken")
	}
}

// TestSendRingDoesNotAllocate: Send is on the proxy's forwarding path.
func TestSendRingDoesNotAllocate(t *testing.T) {
	r := newTestRing(t, 16)
	sink, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	fd := connectedSocket(t, sink.LocalAddr().(*net.UDPAddr))
	fds, bufs, res := make([]int32, 16), make([][]byte, 16), make([]int32, 16)
	for i := range fds {
		fds[i], bufs[i] = fd, make([]byte, 100)
	}
	if a := testing.AllocsPerRun(200, func() { r.Send(fds, bufs, res) }); a != 0 {
		t.Fatalf("Send allocates %.1f times a batch", a)
	}
}

// BenchmarkSendRing compares one ring Send of a batch with a write(2) per
// datagram, on 32 sockets (a datagram each, as a proxy's read batch forwards
// to 32 sessions).
func BenchmarkSendRing(b *testing.B) {
	sink, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	go func() { // drain, so the sink's buffer never fills
		buf := make([]byte, 2048)
		for {
			if _, _, err := sink.ReadFromUDP(buf); err != nil {
				return
			}
		}
	}()
	const n = 32
	fds, bufs, res := make([]int32, n), make([][]byte, n), make([]int32, n)
	for i := range fds {
		fds[i], bufs[i] = connectedSocket(b, sink.LocalAddr().(*net.UDPAddr)), make([]byte, 100)
	}
	b.Run("ring", func(b *testing.B) {
		r := newTestRing(b, n)
		b.SetBytes(100 * n)
		for i := 0; i < b.N; i++ {
			r.Send(fds, bufs, res)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/datagram")
	})
	b.Run("write", func(b *testing.B) {
		b.SetBytes(100 * n)
		for i := 0; i < b.N; i++ {
			for j := range fds {
				unix.Write(int(fds[j]), bufs[j])
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/datagram")
	})
}
