package proxy

import (
	"golang.org/x/sys/unix"
)

// rawWriter writes a forwarded packet to a session's own upstream socket for
// one read loop: the write(2) runs inside RawConn.Control, which only holds
// a reference to the descriptor, instead of net.UDPConn.Write, which also
// re-arms the netpoller for every packet (runtime.pollReset, ~4% of the
// proxy's profile at one write per packet). When the socket's send buffer is
// full the packet goes through conn.Write after all, which waits for room as
// before. fn is stored once, so a write builds no closure.
type rawWriter struct {
	b   []byte
	err error
	fn  func(fd uintptr)
}

func newRawWriter() *rawWriter {
	w := &rawWriter{}
	w.fn = w.raw
	return w
}

func (w *rawWriter) raw(fd uintptr) {
	for {
		_, err := unix.Write(int(fd), w.b)
		if err == unix.EINTR {
			continue
		}
		w.err = err
		return
	}
}

// write sends pkt on sp; a nil w (not a read loop's) writes through conn.
func (w *rawWriter) write(sp *serverPort, pkt []byte) error {
	if w == nil {
		_, err := sp.conn.Write(pkt)
		return err
	}
	w.b = pkt
	err := sp.rc.Control(w.fn) // fails only when the socket is closed
	if err == nil {
		err = w.err
	}
	w.b, w.err = nil, nil
	if err == unix.EAGAIN {
		_, err = sp.conn.Write(pkt)
	}
	return err
}
