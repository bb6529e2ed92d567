package proxy

import (
	"testing"
	"time"

	"github.com/raicnet/raic/integration/testkit"
	"golang.org/x/sys/unix"
)

// A server port sends to its server and reads what the server answers
// without waiting; closed while a call holds it, the descriptor stays open
// until that call ends, and every call after the close fails.
func TestServerPort(t *testing.T) {
	server := testkit.UDPListen(t)
	sp, err := dialServer(testkit.AddrOf(server), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if err := sp.writeHeaded([]byte("hdr:"), []byte("ping")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 64)
	server.SetReadDeadline(time.Now().Add(2 * time.Second))
	for _, want := range []string{"ping", "hdr:ping"} {
		n, from, err := server.ReadFromUDPAddrPort(b)
		if err != nil || string(b[:n]) != want || from != sp.localAddr() {
			t.Fatalf("server got %q from %v (%v), want %q from %v", b[:n], from, err, want, sp.localAddr())
		}
	}
	if _, err := sp.read(b); err != unix.EAGAIN {
		t.Fatalf("read with nothing queued: %v, want EAGAIN", err)
	}
	server.WriteToUDPAddrPort([]byte("pong"), sp.localAddr())
	deadline := time.Now().Add(2 * time.Second)
	for {
		n, err := sp.read(b)
		if err == nil {
			if string(b[:n]) != "pong" {
				t.Fatalf("read %q", b[:n])
			}
			break
		}
		if err != unix.EAGAIN || time.Now().After(deadline) {
			t.Fatalf("read: %v", err)
		}
		time.Sleep(time.Millisecond)
	}

	if !sp.acquire() {
		t.Fatal("acquire on an open port")
	}
	sp.close()
	if !sp.isClosed() || sp.acquire() {
		t.Fatal("closed port still taken")
	}
	if _, err := unix.FcntlInt(uintptr(sp.fd), unix.F_GETFD, 0); err != nil {
		t.Fatalf("descriptor closed under a call holding it: %v", err)
	}
	sp.release()
	if _, err := unix.FcntlInt(uintptr(sp.fd), unix.F_GETFD, 0); err == nil {
		t.Fatal("descriptor open after the last call ended")
	}
	if err := sp.write([]byte("late")); err != errPortClosed {
		t.Fatalf("write after close: %v", err)
	}
	sp.close() // twice is harmless
}
