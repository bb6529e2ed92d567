package proxy

import (
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// serverPort is a socket connected to a game server: a session's source
// port as the server sees it. The poller of the session that owns it reads it
// (upstream.go); while kept (keepport.go), no one does and the server's
// datagrams wait in its buffer.
//
// It is a bare non-blocking descriptor, in the poller's epoll set only: a
// net.UDPConn would add a netFD, its two addresses, a RawConn and a runtime
// poll descriptor (about 550 bytes a session, some outside the Go heap: 55 MB
// at 100,000 sessions) for a netpoller registration the poller does not use.
//
// A write finds the socket's send buffer full (EAGAIN) only when the
// server's link is slower than the session's packets: it then waits for
// room, as net.UDPConn.Write did, but at most sendWait, after which the
// datagram is dropped and the caller counts the error like any other
// upstream error.
type serverPort struct {
	fd int32
	// state is the count of calls using fd, plus portClosed once close was
	// called; the last of them to finish closes fd, so a descriptor is never
	// closed under a read or write (and never reused by another socket while
	// one still uses its number).
	state atomic.Int32
}

const portClosed = 1 << 30

// sendWait bounds how long a write waits for room in a full send buffer.
const sendWait = 100 // ms

// dialServer opens a socket connected to target, with a receive buffer of
// rcvbuf bytes (0: the system's default).
func dialServer(target netip.AddrPort, rcvbuf int) (*serverPort, error) {
	target = netip.AddrPortFrom(target.Addr().Unmap(), target.Port())
	var sa unix.Sockaddr
	family := unix.AF_INET
	if a := target.Addr(); a.Is4() {
		sa = &unix.SockaddrInet4{Port: int(target.Port()), Addr: a.As4()}
	} else {
		family = unix.AF_INET6
		s6 := &unix.SockaddrInet6{Port: int(target.Port()), Addr: a.As16()}
		if z := a.Zone(); z != "" {
			if ifi, err := net.InterfaceByName(z); err == nil {
				s6.ZoneId = uint32(ifi.Index)
			}
		}
		sa = s6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	if rcvbuf > 0 {
		// Best effort, as net.UDPConn.SetReadBuffer: the kernel caps it.
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf)
	}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("connect", err)
	}
	return &serverPort{fd: int32(fd)}, nil
}

// acquire takes a use of fd; false once the port is closed.
func (sp *serverPort) acquire() bool {
	for {
		s := sp.state.Load()
		if s&portClosed != 0 {
			return false
		}
		if sp.state.CompareAndSwap(s, s+1) {
			return true
		}
	}
}

// release ends a use of fd, closing it if the port was closed meanwhile.
func (sp *serverPort) release() {
	if sp.state.Add(-1) == portClosed {
		unix.Close(int(sp.fd))
	}
}

// close closes the port: at once, or when the last call using it ends.
func (sp *serverPort) close() {
	for {
		s := sp.state.Load()
		if s&portClosed != 0 {
			return
		}
		if sp.state.CompareAndSwap(s, s|portClosed) {
			if s == 0 {
				unix.Close(int(sp.fd))
			}
			return
		}
	}
}

// isClosed reports whether close was called.
func (sp *serverPort) isClosed() bool { return sp.state.Load()&portClosed != 0 }

// errPortClosed is a write's or read's error on a closed port.
var errPortClosed = os.ErrClosed

// write sends pkt to the server.
func (sp *serverPort) write(pkt []byte) error {
	if !sp.acquire() {
		return errPortClosed
	}
	defer sp.release()
	waited := false
	for {
		_, err := unix.Write(int(sp.fd), pkt)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN && !waited:
			sp.waitWritable()
			waited = true
			continue
		}
		return err
	}
}

// waitWritable waits until fd has room to send, at most sendWait (fd held).
func (sp *serverPort) waitWritable() {
	fds := [1]unix.PollFd{{Fd: sp.fd, Events: unix.POLLOUT}}
	for {
		if _, err := unix.Poll(fds[:], sendWait); err != unix.EINTR {
			return
		}
	}
}

// writeHeaded sends one datagram of hdr followed by pkt (writev: nothing is
// copied, and the caller's header may live on its stack), waiting as write.
func (sp *serverPort) writeHeaded(hdr, pkt []byte) error {
	if len(hdr) == 0 {
		return sp.write(pkt)
	}
	if !sp.acquire() {
		return errPortClosed
	}
	defer sp.release()
	var iov [2]unix.Iovec
	iov[0].Base, iov[0].Len = &hdr[0], uint64(len(hdr))
	n := 1
	if len(pkt) > 0 {
		iov[1].Base, iov[1].Len = &pkt[0], uint64(len(pkt))
		n = 2
	}
	waited := false
	for {
		_, _, errno := unix.Syscall(unix.SYS_WRITEV, uintptr(sp.fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(n))
		switch {
		case errno == 0:
			return nil
		case errno == unix.EINTR:
			continue
		case errno == unix.EAGAIN && !waited:
			sp.waitWritable()
			waited = true
			continue
		}
		return errno
	}
}

// read reads one datagram into b; unix.EAGAIN when none is queued.
func (sp *serverPort) read(b []byte) (int, error) {
	if !sp.acquire() {
		return 0, errPortClosed
	}
	defer sp.release()
	for {
		n, err := unix.Read(int(sp.fd), b)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// epollCtl adds fd to (op EPOLL_CTL_ADD) or removes it from an epoll set,
// with ev; nothing when the port is closed.
func (sp *serverPort) epollCtl(epfd, op int, ev *unix.EpollEvent) error {
	if !sp.acquire() {
		return errPortClosed
	}
	defer sp.release()
	return unix.EpollCtl(epfd, op, int(sp.fd), ev)
}

// localAddr is the port's own address (the session's source as the server
// sees it).
func (sp *serverPort) localAddr() netip.AddrPort {
	if !sp.acquire() {
		return netip.AddrPort{}
	}
	defer sp.release()
	sa, err := unix.Getsockname(int(sp.fd))
	if err != nil {
		return netip.AddrPort{}
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	}
	return netip.AddrPort{}
}
