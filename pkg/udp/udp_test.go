package udp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var lo4 = netip.MustParseAddrPort("127.0.0.1:0")

func listen(t testing.TB, network string, opt Options) *Conn {
	t.Helper()
	c, err := Listen(network, opt)
	if err != nil {
		t.Fatalf("Listen(%s, %+v): %v", network, opt, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// dest returns the loopback address other sockets use to reach c.
func dest(c *Conn) netip.AddrPort {
	la := c.LocalAddr()
	if la.Addr().IsUnspecified() {
		if la.Addr().Is4() {
			return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), la.Port())
		}
		return netip.AddrPortFrom(netip.IPv6Loopback(), la.Port())
	}
	return la
}

func newMsgs(n, size int) []Message {
	msgs := make([]Message, n)
	for i := range msgs {
		msgs[i].Buf = make([]byte, size)
	}
	return msgs
}

// payload builds a datagram whose length and content both depend on i, so that a
// mix-up of buffers, lengths or order shows.
func payload(i int) []byte {
	b := make([]byte, 8+i*7)
	binary.BigEndian.PutUint32(b, uint32(i))
	for j := 4; j < len(b); j++ {
		b[j] = byte(i*31 + j)
	}
	return b
}

// readAll reads exactly want datagrams in batches of batch; it fails on a one
// second stall.
func readAll(t *testing.T, c *Conn, want, batch int) []Message {
	t.Helper()
	var out []Message
	msgs := newMsgs(batch, 2048)
	c.SetReadDeadline(time.Now().Add(time.Second))
	defer c.SetReadDeadline(time.Time{})
	for len(out) < want {
		n, err := c.ReadBatch(msgs)
		if err != nil {
			t.Fatalf("ReadBatch after %d of %d: %v", len(out), want, err)
		}
		if n < 1 || n > batch {
			t.Fatalf("ReadBatch returned n=%d for batch %d", n, batch)
		}
		for _, m := range msgs[:n] {
			out = append(out, Message{Buf: append([]byte(nil), m.Buf[:m.N]...), N: m.N, Addr: m.Addr})
		}
	}
	return out
}

func TestBatchRoundTrip(t *testing.T) {
	cases := []struct {
		name       string
		sendNet    string
		recvNet    string
		recvLocal  netip.AddrPort
		wantSource func(sender *Conn) netip.AddrPort
	}{
		{"udp4", "udp4", "udp4", lo4, func(s *Conn) netip.AddrPort { return s.LocalAddr() }},
		// A dual-stack socket sees IPv4 peers as ::ffff:a.b.c.d; ReadBatch must hand
		// back the plain 4-byte address.
		{"dualstack-v4-peer", "udp4", "udp", netip.AddrPort{}, func(s *Conn) netip.AddrPort { return s.LocalAddr() }},
		{"udp6", "udp6", "udp6", netip.MustParseAddrPort("[::1]:0"), func(s *Conn) netip.AddrPort { return s.LocalAddr() }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			local := lo4
			if tc.sendNet == "udp6" {
				local = netip.MustParseAddrPort("[::1]:0")
			}
			snd := listen(t, tc.sendNet, Options{Local: local})
			rcv := listen(t, tc.recvNet, Options{Local: tc.recvLocal, RecvBuffer: 1 << 20})
			if tc.recvNet == "udp" && !rcv.v6 {
				t.Skip("no dual-stack IPv6 socket on this host")
			}
			to := dest(rcv)
			if tc.name == "dualstack-v4-peer" {
				to = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), rcv.LocalAddr().Port())
			}
			const total = 64
			out := make([]Message, total)
			for i := range out {
				p := payload(i)
				out[i] = Message{Buf: p, N: len(p), Addr: to}
			}
			n, err := snd.WriteBatch(out)
			if err != nil || n != total {
				t.Fatalf("WriteBatch = %d, %v; want %d", n, err, total)
			}
			for _, batch := range []int{64} {
				got := readAll(t, rcv, total, batch)
				for i, m := range got {
					if want := payload(i); !bytes.Equal(m.Buf, want) || m.N != len(want) {
						t.Fatalf("datagram %d: got %d bytes %x, want %d bytes %x", i, m.N, m.Buf, len(want), want)
					}
					if ws := tc.wantSource(snd); m.Addr != ws {
						t.Fatalf("datagram %d: source %v, want %v", i, m.Addr, ws)
					}
					if tc.sendNet == "udp4" && !m.Addr.Addr().Is4() {
						t.Fatalf("source %v is not a plain IPv4 address", m.Addr)
					}
				}
			}
		})
	}
}

// TestReadBatchSmallBatches checks that batches smaller than the queue are filled
// completely and that the rest stays queued, in order.
func TestReadBatchSmallBatches(t *testing.T) {
	snd := listen(t, "udp4", Options{Local: lo4})
	rcv := listen(t, "udp4", Options{Local: lo4, RecvBuffer: 1 << 20})
	const total = 64
	for i := 0; i < total; i++ {
		if err := snd.WriteTo(payload(i), rcv.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	got := readAll(t, rcv, total, 5)
	for i, m := range got {
		if !bytes.Equal(m.Buf, payload(i)) || m.Addr != snd.LocalAddr() {
			t.Fatalf("datagram %d wrong: %x from %v", i, m.Buf, m.Addr)
		}
	}
}

// TestReadBatchCap: a batch larger than MaxBatch is served MaxBatch at a time.
func TestReadBatchCap(t *testing.T) {
	snd := listen(t, "udp4", Options{Local: lo4})
	rcv := listen(t, "udp4", Options{Local: lo4, RecvBuffer: 1 << 20})
	const total = 100
	out := make([]Message, total)
	for i := range out {
		p := payload(i % 10)
		out[i] = Message{Buf: p, N: len(p), Addr: rcv.LocalAddr()}
	}
	if n, err := snd.WriteBatch(out); n != total || err != nil {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	msgs := newMsgs(total, 200)
	rcv.SetReadDeadline(time.Now().Add(time.Second))
	got := 0
	for got < total {
		n, err := rcv.ReadBatch(msgs)
		if err != nil {
			t.Fatal(err)
		}
		if n > MaxBatch {
			t.Fatalf("ReadBatch returned %d > MaxBatch", n)
		}
		for i := 0; i < n; i++ {
			if !bytes.Equal(msgs[i].Buf[:msgs[i].N], payload((got+i)%10)) {
				t.Fatalf("datagram %d wrong", got+i)
			}
		}
		got += n
	}
}

// TestConcurrentUse reads on one goroutine while two others write, one with
// WriteTo and one with WriteBatch. Run with -race.
func TestConcurrentUse(t *testing.T) {
	rcv := listen(t, "udp4", Options{Local: lo4, RecvBuffer: 4 << 20})
	snd := listen(t, "udp4", Options{Local: lo4})
	const per = 2000
	errc := make(chan error, 2)
	go func() {
		for i := 0; i < per; i++ {
			if err := snd.WriteTo([]byte{1, byte(i)}, rcv.LocalAddr()); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	go func() {
		out := newMsgs(16, 2)
		for i := range out {
			out[i].Buf[0], out[i].N, out[i].Addr = 2, 2, rcv.LocalAddr()
		}
		for i := 0; i < per; i += len(out) {
			if _, err := snd.WriteBatch(out); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	var seen [3]int
	msgs := newMsgs(32, 16)
	// Without root the receive buffer is capped by net.core.rmem_max and the
	// kernel may drop some datagrams, so stop on a quiet socket rather than at a
	// count.
	for seen[1]+seen[2] < 2*per {
		rcv.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := rcv.ReadBatch(msgs)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatalf("after %v: %v", seen, err)
		}
		for _, m := range msgs[:n] {
			if m.N != 2 || m.Buf[0] < 1 || m.Buf[0] > 2 || m.Addr != snd.LocalAddr() {
				t.Fatalf("bad datagram %x from %v", m.Buf[:m.N], m.Addr)
			}
			seen[m.Buf[0]]++
		}
	}
	for i := 0; i < 2; i++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if seen[1] == 0 || seen[2] == 0 || (os.Geteuid() == 0 && seen[1]+seen[2] != 2*per) {
		t.Fatalf("received %d from WriteTo and %d from WriteBatch, sent %d each", seen[1], seen[2], per)
	}
}

func TestReadFromWriteTo(t *testing.T) {
	a := listen(t, "udp4", Options{Local: lo4})
	b := listen(t, "udp", Options{})
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), b.LocalAddr().Port())
	if err := a.WriteTo([]byte("ping"), to); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	b.SetReadDeadline(time.Now().Add(time.Second))
	n, from, err := b.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "ping" || from != a.LocalAddr() {
		t.Fatalf("ReadFrom = %q from %v, %v; want ping from %v", buf[:n], from, err, a.LocalAddr())
	}
	// Reply to the unmapped source from the dual-stack socket: WriteTo must map it.
	if err := b.WriteTo([]byte("pong"), from); err != nil {
		t.Fatal(err)
	}
	a.SetReadDeadline(time.Now().Add(time.Second))
	n, from, err = a.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "pong" || from != to {
		t.Fatalf("ReadFrom = %q from %v, %v; want pong from %v", buf[:n], from, err, to)
	}
	// Truncation: a datagram larger than the buffer fills the buffer only.
	a.WriteTo([]byte("0123456789"), to)
	n, _, err = b.ReadFrom(buf[:4])
	if err != nil || string(buf[:n]) != "0123" {
		t.Fatalf("truncated read = %q, %v", buf[:n], err)
	}
}

func TestWriteErrors(t *testing.T) {
	a := listen(t, "udp4", Options{Local: lo4})
	if err := a.WriteTo([]byte("x"), netip.MustParseAddrPort("[2001:db8::1]:9")); !errors.Is(err, ErrAddress) {
		t.Fatalf("IPv6 destination on IPv4 socket: err = %v, want ErrAddress", err)
	}
	if err := a.WriteTo([]byte("x"), netip.AddrPort{}); !errors.Is(err, ErrAddress) {
		t.Fatalf("zero destination: err = %v, want ErrAddress", err)
	}
	// A bad message in the middle: the ones before it go out, the count points at it.
	rcv := listen(t, "udp4", Options{Local: lo4})
	msgs := []Message{
		{Buf: []byte("a"), N: 1, Addr: rcv.LocalAddr()},
		{Buf: []byte("b"), N: 1, Addr: netip.AddrPort{}},
		{Buf: []byte("c"), N: 1, Addr: rcv.LocalAddr()},
	}
	n, err := a.WriteBatch(msgs)
	if n != 1 || !errors.Is(err, ErrAddress) {
		t.Fatalf("WriteBatch = %d, %v; want 1, ErrAddress", n, err)
	}
	got := readAll(t, rcv, 1, 4)
	if string(got[0].Buf) != "a" {
		t.Fatalf("got %q", got[0].Buf)
	}
}

func TestDeadlineUnblocksReadBatch(t *testing.T) {
	c := listen(t, "udp4", Options{Local: lo4})
	msgs := newMsgs(8, 1500)
	start := time.Now()
	c.SetReadDeadline(start.Add(50 * time.Millisecond))
	n, err := c.ReadBatch(msgs)
	if n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("ReadBatch = %d, %v; want deadline exceeded", n, err)
	}
	if d := time.Since(start); d < 40*time.Millisecond || d > 2*time.Second {
		t.Fatalf("ReadBatch returned after %v, deadline was 50ms", d)
	}
	// A deadline set while a read is already blocked must wake it too.
	c.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() { _, err := c.ReadBatch(msgs); done <- err }()
	time.Sleep(20 * time.Millisecond)
	c.SetReadDeadline(time.Now())
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("err = %v, want deadline exceeded", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("SetReadDeadline did not unblock ReadBatch")
	}
	// And after clearing the deadline the socket works again.
	c.SetReadDeadline(time.Time{})
	c.WriteTo([]byte("again"), c.LocalAddr())
	if got := readAll(t, c, 1, 8); string(got[0].Buf) != "again" {
		t.Fatalf("got %q", got[0].Buf)
	}
}

func TestCloseUnblocksReadBatch(t *testing.T) {
	c, err := Listen("udp4", Options{Local: lo4})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := c.ReadBatch(newMsgs(8, 1500)); done <- err }()
	time.Sleep(20 * time.Millisecond)
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("err = %v, want net.ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not unblock ReadBatch")
	}
	if _, err := c.ReadBatch(newMsgs(1, 10)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("ReadBatch after Close: %v", err)
	}
	if err := c.WriteTo([]byte("x"), lo4); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("WriteTo after Close: %v", err)
	}
}

func TestOptions(t *testing.T) {
	a := listen(t, "udp4", Options{Local: lo4, ReusePort: true, RecvBuffer: 1 << 20, SendBuffer: 1 << 20})
	// SO_REUSEPORT: a second socket may bind the same port.
	b := listen(t, "udp4", Options{Local: a.LocalAddr(), ReusePort: true})
	if b.LocalAddr() != a.LocalAddr() {
		t.Fatalf("second socket bound %v, want %v", b.LocalAddr(), a.LocalAddr())
	}
	if _, err := Listen("udp4", Options{Local: a.LocalAddr()}); err == nil {
		t.Fatal("bind without SO_REUSEPORT on a taken port succeeded")
	}
	if _, err := Listen("tcp", Options{}); err == nil {
		t.Fatal("Listen(tcp) succeeded")
	}
	if os.Geteuid() == 0 {
		c := listen(t, "udp4", Options{Local: lo4, Mark: 0x5a})
		var mark int
		c.rc.Control(func(fd uintptr) { mark, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
		if mark != 0x5a {
			t.Fatalf("SO_MARK = %#x, want 0x5a", mark)
		}
	}
}

func TestZeroAllocs(t *testing.T) {
	snd := listen(t, "udp4", Options{Local: lo4})
	rcv := listen(t, "udp4", Options{Local: lo4, RecvBuffer: 1 << 20})
	to := rcv.LocalAddr()
	out := newMsgs(MaxBatch, 200)
	for i := range out {
		out[i].N = 100 + i
		out[i].Addr = to
	}
	in := newMsgs(MaxBatch, 2048)
	one := make([]byte, 2048)
	drain := func() {
		for got := 0; got < len(out); {
			n, err := rcv.ReadBatch(in)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	}
	// Warm up: the first poll registration and the first deadline may allocate.
	snd.WriteBatch(out)
	drain()

	if a := testing.AllocsPerRun(50, func() {
		if n, err := snd.WriteBatch(out); n != len(out) || err != nil {
			t.Fatalf("WriteBatch = %d, %v", n, err)
		}
	}); a != 0 {
		t.Errorf("WriteBatch: %v allocs per batch, want 0", a)
	}
	// Throw away what the writes queued (the receive buffer may have dropped some).
	rcv.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	for {
		if _, err := rcv.ReadBatch(in); err != nil {
			break
		}
	}
	rcv.SetReadDeadline(time.Time{})

	// WriteBatch is 0 allocs (above), so the sum below is ReadBatch's count.
	if a := testing.AllocsPerRun(50, func() {
		snd.WriteBatch(out)
		drain()
	}); a != 0 {
		t.Errorf("WriteBatch+ReadBatch: %v allocs per round, want 0", a)
	}
	if a := testing.AllocsPerRun(200, func() {
		if err := snd.WriteTo(one[:64], to); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("WriteTo: %v allocs, want 0", a)
	}
	rcv.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	for {
		if _, err := rcv.ReadBatch(in); err != nil {
			break
		}
	}
	rcv.SetReadDeadline(time.Time{})
	if a := testing.AllocsPerRun(200, func() {
		snd.WriteTo(one[:64], to)
		if n, from, err := rcv.ReadFrom(one); n != 64 || err != nil || from != snd.LocalAddr() {
			t.Fatalf("ReadFrom = %d, %v, %v", n, from, err)
		}
	}); a != 0 {
		t.Errorf("WriteTo+ReadFrom: %v allocs, want 0", a)
	}
	// The dual-stack path (mapping on write, unmapping on read) is allocation-free
	// too.
	ds := listen(t, "udp", Options{})
	if ds.v6 {
		dsTo := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ds.LocalAddr().Port())
		snd.WriteTo(one[:64], dsTo)
		ds.ReadFrom(one)
		if a := testing.AllocsPerRun(200, func() {
			snd.WriteTo(one[:64], dsTo)
			n, from, err := ds.ReadFrom(one)
			if n != 64 || err != nil || from != snd.LocalAddr() {
				t.Fatalf("ReadFrom = %d, %v, %v", n, from, err)
			}
			ds.WriteTo(one[:32], from)
			rcv2, _, _ := snd.ReadFrom(one)
			_ = rcv2
		}); a != 0 {
			t.Errorf("dual-stack WriteTo/ReadFrom: %v allocs, want 0", a)
		}
	}
}
