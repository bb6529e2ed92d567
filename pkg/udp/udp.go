// Package udp provides the UDP sockets that uplinks and the proxy send and receive
// game datagrams on, with batched I/O (recvmmsg/sendmmsg) that allocates nothing per
// packet.
//
// golang.org/x/net/ipv4's ReadBatch allocates a net.UDPAddr for every message it
// returns, which breaks the project's zero-allocation rule, so this package issues the
// syscalls itself over syscall.RawConn. Every Conn owns preallocated mmsghdr, iovec
// and sockaddr arrays, one set per direction, and the callbacks handed to
// RawConn.Read/Write are method values stored once at construction, so a call builds
// no closure. The callbacks return false on EAGAIN, which parks the goroutine in Go's
// netpoller: deadlines, Close and the scheduler work as for any net.UDPConn.
//
// Addresses are netip.AddrPort values. IPv4-mapped IPv6 sources are unmapped on read
// so callers always compare plain 4-byte addresses; on write, IPv4 destinations are
// mapped as needed when the socket is IPv6.
package udp

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MaxBatch is the largest number of datagrams one ReadBatch or sendmmsg call
// handles; it bounds the per-Conn preallocated arrays. wireguard-go uses 128 for
// bulk tunnels; game traffic is a few hundred packets per second per session, so 64
// is already far more than a single wake-up ever finds queued.
const MaxBatch = 64

// Options configure Listen.
type Options struct {
	Local      netip.AddrPort // address to bind (zero = any, port 0)
	Device     string         // SO_BINDTODEVICE (uplink interface); needs CAP_NET_RAW
	ReusePort  bool           // SO_REUSEPORT
	RecvBuffer int            // SO_RCVBUF (SO_RCVBUFFORCE tried first), 0 = leave
	SendBuffer int            // SO_SNDBUF (SO_SNDBUFFORCE tried first), 0 = leave
	Mark       uint32         // SO_MARK, 0 = none; needs CAP_NET_ADMIN
	// PacketInfo asks for each datagram's destination address on read
	// (IP_PKTINFO, IPV6_RECVPKTINFO), so a socket bound to the unspecified
	// address can answer from the address it was reached on (Message.Local).
	PacketInfo bool
}

// Message is one datagram in a batch.
type Message struct {
	Buf  []byte         // caller-owned buffer; on read filled, on write sent
	N    int            // bytes read / to write (write uses Buf[:N])
	Addr netip.AddrPort // source on read, destination on write
	// TOS, on write, is the IPv4 TOS byte (IPv6 traffic class) of this
	// datagram alone, set by a control message; 0 leaves the socket's own.
	TOS uint8
	// Local, on read from a PacketInfo socket, is the address the datagram was
	// sent to; on write, when valid, the source address to send from
	// (IP_PKTINFO / IPV6_PKTINFO). Zero: the kernel's choice.
	Local netip.Addr
}

// ErrAddress is returned when a destination cannot be expressed on this socket:
// invalid, or IPv6 on an IPv4 socket. It is a preallocated value so that rejecting a
// bad address on the hot path does not allocate either.
var ErrAddress = errors.New("udp: destination address not usable on this socket")

// ioState is the preallocated syscall argument block for one direction. Reads and
// writes have separate blocks so that a reader and a writer goroutine never contend.
type ioState struct {
	mu    sync.Mutex // serialises callers of one direction; uncontended in practice
	hdrs  [MaxBatch]unix.Mmsghdr
	iovs  [MaxBatch]unix.Iovec
	names [MaxBatch]unix.RawSockaddrInet6 // large enough for sockaddr_in too
	ctrls [MaxBatch][ctrlSpace]byte       // per-header control messages: TOS, packet info, segment size
	runs  [MaxBatch]uint8                 // write: messages each header carries (more than 1 when segmented)
	n     int                             // messages handed to the syscall
	got   int                             // messages the syscall processed
	errno syscall.Errno                   // error of the last syscall, 0 if none
	one   [1]Message                      // scratch for ReadFrom/WriteTo
}

// Conn is a UDP socket with allocation-free batched I/O. It is safe for concurrent
// use; calls in the same direction are serialised.
type Conn struct {
	uc      *net.UDPConn
	rc      syscall.RawConn
	v6      bool // socket family is AF_INET6 (dual-stack unless bound to an IPv6 address)
	pktinfo bool // Options.PacketInfo: reads carry their destination address
	local   netip.AddrPort

	// Stored once so that RawConn.Read/Write get the same func value every call
	// instead of a freshly allocated closure.
	recvFn func(fd uintptr) bool
	sendFn func(fd uintptr) bool

	gso atomic.Bool  // WriteBatch sends same-sized runs as one segmented send
	seg Segmentation // its counter and refusal hook (EnableSegmentation)
	// unsegmented lists the destinations whose path refused a segmented
	// send (an IPsec route, a narrower MTU): they get a datagram per header
	// while others keep segmenting. Guarded by w.mu; see refusePath.
	unsegmented  [maxRefusedPaths]netip.AddrPort
	nUnsegmented int

	r ioState
	w ioState
}

// Listen opens a UDP socket. network is "udp4", "udp6" or "udp" (dual stack when
// Local has no address). Socket options are applied before bind so that
// SO_BINDTODEVICE and SO_REUSEPORT take effect for the bind itself.
func Listen(network string, opt Options) (*Conn, error) {
	switch network {
	case "udp", "udp4", "udp6":
	default:
		return nil, net.UnknownNetworkError(network)
	}
	addr := ":" + strconv.Itoa(int(opt.Local.Port()))
	if opt.Local.Addr().IsValid() {
		addr = opt.Local.String()
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = setOptions(int(fd), &opt) })
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), network, addr)
	if err != nil {
		return nil, err
	}
	uc := pc.(*net.UDPConn)
	c, err := newConn(uc)
	if err != nil {
		uc.Close()
		return nil, err
	}
	c.pktinfo = opt.PacketInfo
	return c, nil
}

// NewConn wraps an existing UDP socket (for example one handed over by a parent
// process) with batched I/O. The Conn takes ownership of uc.
func NewConn(uc *net.UDPConn) (*Conn, error) { return newConn(uc) }

func newConn(uc *net.UDPConn) (*Conn, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	c := &Conn{uc: uc, rc: rc}
	var domain int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		domain, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, os.NewSyscallError("getsockopt SO_DOMAIN", serr)
	}
	c.v6 = domain == unix.AF_INET6
	if la, ok := uc.LocalAddr().(*net.UDPAddr); ok {
		ap := la.AddrPort()
		c.local = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	c.recvFn = c.recv
	c.sendFn = c.send
	return c, nil
}

func setOptions(fd int, opt *Options) error {
	if opt.Device != "" {
		if err := unix.BindToDevice(fd, opt.Device); err != nil {
			return os.NewSyscallError("setsockopt SO_BINDTODEVICE", err)
		}
	}
	if opt.ReusePort {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return os.NewSyscallError("setsockopt SO_REUSEPORT", err)
		}
	}
	if opt.PacketInfo {
		// Both families on a dual-stack socket: IPv4 peers arrive mapped and
		// report through IP_PKTINFO, IPv6 ones through IPV6_PKTINFO.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1); err != nil && !opt.Local.Addr().Is6() {
			return os.NewSyscallError("setsockopt IP_PKTINFO", err)
		}
		if opt.Local.Addr().Is6() || !opt.Local.Addr().IsValid() {
			// Fails on an IPv4 socket, which needs only the above.
			unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
		}
	}
	if opt.Mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(opt.Mark)); err != nil {
			return os.NewSyscallError("setsockopt SO_MARK", err)
		}
	}
	// The FORCE variants ignore net.core.[rw]mem_max, which on most hosts is far too
	// small for a burst of game traffic; they need CAP_NET_ADMIN, so fall back.
	if opt.RecvBuffer > 0 {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, opt.RecvBuffer) != nil {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, opt.RecvBuffer); err != nil {
				return os.NewSyscallError("setsockopt SO_RCVBUF", err)
			}
		}
	}
	if opt.SendBuffer > 0 {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, opt.SendBuffer) != nil {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, opt.SendBuffer); err != nil {
				return os.NewSyscallError("setsockopt SO_SNDBUF", err)
			}
		}
	}
	return nil
}

// recv is the RawConn.Read callback. It runs on the reading goroutine with r.mu held.
//
// recv and send make their calls with RawSyscall6, which does not tell the
// Go scheduler that the thread is in a system call. They never block
// (MSG_DONTWAIT on a non-blocking socket: EAGAIN goes back to the netpoller),
// but a batch of 64 takes tens of microseconds, and the runtime's monitor
// takes the P from any thread that is in a system call for more than 20 µs:
// under load it then woke every 20 µs and handed the P back and forth, about
// a tenth of a busy proxy's CPU (perf). Holding the P for the call instead
// delays the process's other goroutines by that long at most.
func (c *Conn) recv(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd,
			uintptr(unsafe.Pointer(&c.r.hdrs[0])), uintptr(c.r.n), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // not ready: let the netpoller wait for readability
		}
		c.r.got, c.r.errno = int(n), e
		return true
	}
}

// send is the RawConn.Write callback. It runs on the writing goroutine with w.mu held.
func (c *Conn) send(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd,
			uintptr(unsafe.Pointer(&c.w.hdrs[0])), uintptr(c.w.n), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // send buffer full: wait for writability
		}
		if e != 0 {
			n = 0 // the raw result is -1 then, not a count
		}
		c.w.got, c.w.errno = int(n), e
		return true
	}
}

// ReadBatch blocks until at least one datagram is available and then reads up to
// min(len(msgs), MaxBatch) of them without waiting for more: a packet is never held
// back to fill a batch. It returns the number of messages filled; for each, N is the
// datagram length (truncated to len(Buf)) and Addr its source, unmapped to IPv4 when
// it was IPv4-mapped. It does not allocate.
func (c *Conn) ReadBatch(msgs []Message) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	c.r.mu.Lock()
	n, err := c.readLocked(msgs)
	c.r.mu.Unlock()
	return n, err
}

func (c *Conn) readLocked(msgs []Message) (int, error) {
	s := &c.r
	n := min(len(msgs), MaxBatch)
	for i := 0; i < n; i++ {
		h := &s.hdrs[i]
		setIov(&s.iovs[i], msgs[i].Buf)
		h.Hdr.Iov = &s.iovs[i]
		h.Hdr.Iovlen = 1
		h.Hdr.Name = (*byte)(unsafe.Pointer(&s.names[i]))
		h.Hdr.Namelen = unix.SizeofSockaddrInet6
		h.Hdr.Control = nil
		h.Hdr.Controllen = 0
		if c.pktinfo {
			h.Hdr.Control = &s.ctrls[i][0]
			h.Hdr.SetControllen(ctrlSpace)
		}
		h.Hdr.Flags = 0
		h.Len = 0
	}
	s.n, s.got, s.errno = n, 0, 0
	err := c.rc.Read(c.recvFn)
	got := s.got
	for i := 0; i < got; i++ {
		msgs[i].N = int(s.hdrs[i].Len)
		msgs[i].Addr = parseSockaddr(&s.names[i], s.hdrs[i].Hdr.Namelen)
		msgs[i].Local = netip.Addr{}
		if c.pktinfo {
			msgs[i].Local = parsePktinfo(s.ctrls[i][:s.hdrs[i].Hdr.Controllen])
		}
	}
	// Drop the references to the caller's buffers so the Conn does not keep them
	// alive after the call.
	for i := 0; i < n; i++ {
		s.iovs[i].Base = nil
	}
	if err != nil {
		return got, err
	}
	if s.errno != 0 {
		return got, os.NewSyscallError("recvmmsg", s.errno)
	}
	return got, nil
}

// ReadFrom reads one datagram into b. It does not allocate.
func (c *Conn) ReadFrom(b []byte) (int, netip.AddrPort, error) {
	c.r.mu.Lock()
	m := &c.r.one
	m[0].Buf = b
	n, err := c.readLocked(m[:])
	nb, addr := m[0].N, m[0].Addr
	m[0] = Message{}
	c.r.mu.Unlock()
	if n == 0 {
		return 0, netip.AddrPort{}, err
	}
	return nb, addr, err
}

// WriteBatch sends msgs[i].Buf[:msgs[i].N] to msgs[i].Addr with as few sendmmsg
// calls as possible. It returns the number of leading messages sent; on error,
// msgs[n] is the message that failed and later ones were not attempted, so the
// caller may skip it and retry the rest. It does not allocate (except for
// destinations with a non-numeric IPv6 zone, which need an interface lookup).
func (c *Conn) WriteBatch(msgs []Message) (int, error) {
	c.w.mu.Lock()
	n, err := c.writeLocked(msgs)
	c.w.mu.Unlock()
	return n, err
}

func (c *Conn) writeLocked(msgs []Message) (int, error) {
	s := &c.w
	sent := 0
	for sent < len(msgs) {
		// Build up to MaxBatch headers from at most MaxBatch messages (the iovec
		// array is per message). With segmentation on, a run of messages to the
		// same destination, of one size (the last may be shorter), shares one
		// header: one datagram in the kernel's send path, cut into its segments
		// at the device.
		gso := c.gso.Load()
		nh, used := 0, 0
		for used < MaxBatch && sent+used < len(msgs) {
			m := &msgs[sent+used]
			if m.N < 0 || m.N > len(m.Buf) {
				if used == 0 {
					return sent, errShortBuf
				}
				break
			}
			nl, ok := c.putSockaddr(&s.names[nh], m.Addr)
			if !ok {
				if used == 0 {
					return sent, ErrAddress
				}
				break
			}
			k := 1
			if gso && !c.pathRefused(m.Addr) {
				k = segmentRun(msgs[sent+used : min(len(msgs), sent+MaxBatch)])
			}
			for j := 0; j < k; j++ {
				mj := &msgs[sent+used+j]
				setIov(&s.iovs[used+j], mj.Buf[:mj.N])
			}
			h := &s.hdrs[nh]
			h.Hdr.Iov = &s.iovs[used]
			h.Hdr.SetIovlen(k)
			h.Hdr.Name = (*byte)(unsafe.Pointer(&s.names[nh]))
			h.Hdr.Namelen = nl
			h.Hdr.Control = nil
			h.Hdr.Controllen = 0
			cl := 0
			if m.TOS != 0 {
				c.putTOS((*[tosCmsgSpace]byte)(s.ctrls[nh][:tosCmsgSpace]), m.Addr, m.TOS)
				cl = tosCmsgSpace
			}
			if m.Local.IsValid() {
				cl += putPktinfo(s.ctrls[nh][cl:], m.Addr, m.Local)
			}
			if k > 1 {
				cl += putSegment(s.ctrls[nh][cl:], m.N)
			}
			if cl > 0 {
				h.Hdr.Control = &s.ctrls[nh][0]
				h.Hdr.SetControllen(cl)
			}
			h.Hdr.Flags = 0
			h.Len = 0
			s.runs[nh] = uint8(k)
			nh++
			used += k
		}
		s.n, s.got, s.errno = nh, 0, 0
		err := c.rc.Write(c.sendFn)
		for i := 0; i < used; i++ {
			s.iovs[i].Base = nil
		}
		done := 0
		for i := 0; i < s.got; i++ {
			done += int(s.runs[i])
		}
		sent += done
		if done > 0 && gso {
			seg := 0
			for i := 0; i < s.got; i++ {
				if s.runs[i] > 1 {
					seg += int(s.runs[i])
				}
			}
			if seg > 0 && c.seg.Sent != nil {
				c.seg.Sent.Add(uint64(seg))
			}
		}
		if err != nil {
			return sent, err
		}
		if s.errno != 0 {
			if s.got < nh && s.runs[s.got] > 1 && refusesSegments(s.errno) {
				// The path refused a segmented send: that destination gets
				// one datagram per header from now on, and the run is sent
				// again. The caller hears of it once per destination, since
				// the change is for good.
				if dst := msgs[sent].Addr; c.refusePath(dst) && c.seg.Refused != nil {
					c.seg.Refused(dst, os.NewSyscallError("sendmmsg", s.errno))
				}
				continue
			}
			return sent, os.NewSyscallError("sendmmsg", s.errno)
		}
		if s.got == 0 {
			return sent, io.ErrShortWrite // cannot happen per sendmmsg(2); never spin
		}
		// A short count without an error means the kernel stopped early (it
		// reports the failing message's error on the next call); go round again
		// starting at the first unsent message.
	}
	return sent, nil
}

// maxRefusedPaths bounds the destinations remembered as refusing segmented
// sends. Past it the refusals are taken to be the socket's device's, not a
// path's, and segmentation goes off for the whole socket.
const maxRefusedPaths = 16

// pathRefused tells whether dst's path refused a segmented send; w.mu is
// held. Nothing to scan on a socket none refused.
func (c *Conn) pathRefused(dst netip.AddrPort) bool {
	for _, a := range c.unsegmented[:c.nUnsegmented] {
		if a == dst {
			return true
		}
	}
	return false
}

// refusePath records that dst's path refused a segmented send, or, past
// maxRefusedPaths destinations, turns segmentation off for the socket; w.mu
// is held. It reports whether this changed anything (the caller is told).
func (c *Conn) refusePath(dst netip.AddrPort) bool {
	if c.pathRefused(dst) {
		return false
	}
	if c.nUnsegmented < maxRefusedPaths {
		c.unsegmented[c.nUnsegmented] = dst
		c.nUnsegmented++
		return true
	}
	return c.gso.Swap(false)
}

// refusesSegments tells the errors with which the kernel refuses a segmented
// send that plain datagrams may pass: EIO (a device without checksum
// offload), EMSGSIZE (a segment above the path's MTU, which IP would have
// fragmented) and EINVAL (a run the kernel finds too long).
func refusesSegments(e syscall.Errno) bool {
	return e == unix.EIO || e == unix.EMSGSIZE || e == unix.EINVAL
}

// Limits of one segmented send. maxSegments stays under the kernel's
// UDP_MAX_SEGMENTS (64 before Linux 6.8). maxSegmentSize keeps a segment and
// its IPv6 and UDP headers inside the smallest IPv6 MTU (1,280), so no path
// refuses it for size; game datagrams are smaller. maxRunBytes keeps the whole
// run inside one IP datagram's 64 KiB.
const (
	maxSegments    = 64
	maxSegmentSize = 1280 - 48
	maxRunBytes    = 65535 - 48 - 1280
)

// segmentRun returns how many leading messages of msgs can leave as one
// segmented send: same destination, source and TOS, each as long as the first
// except the last, which may be shorter. It is 1 when segmentation does not
// apply.
func segmentRun(msgs []Message) int {
	m := &msgs[0]
	size := m.N
	if size <= 0 || size > maxSegmentSize {
		return 1
	}
	total, k := size, 1
	for k < len(msgs) && k < maxSegments {
		nx := &msgs[k]
		if nx.N <= 0 || nx.N > size || nx.N > len(nx.Buf) || total+nx.N > maxRunBytes ||
			nx.Addr != m.Addr || nx.Local != m.Local || nx.TOS != m.TOS {
			break
		}
		total += nx.N
		k++
		if nx.N < size {
			break // only the last segment may be shorter
		}
	}
	return k
}

// segmentCmsgSpace is CMSG_SPACE(2): the UDP_SEGMENT message's room.
const segmentCmsgSpace = unix.SizeofCmsghdr + 8

// putSegment writes the control message that has the kernel cut one send into
// datagrams of size bytes (UDP_SEGMENT), and returns its room.
func putSegment(b []byte, size int) int {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&b[unix.SizeofCmsghdr])) = uint16(size)
	return segmentCmsgSpace
}

// Adder is a counter (a metrics counter, an atomic.Uint64).
type Adder interface{ Add(uint64) }

// Segmentation is what EnableSegmentation reports to its caller. Both fields
// may be nil.
type Segmentation struct {
	// Sent is added the datagrams that leave inside segmented sends.
	Sent Adder
	// Refused is called on the writing goroutine when a path refuses a
	// segmented send, once for each destination: dst is the refused run's
	// destination, err the kernel's error. The Conn then sends to dst a
	// datagram per header for good, and to others segmented as before;
	// after maxRefusedPaths (16) destinations it turns segmentation off for
	// the whole socket (Conn.Segmentation reports false) and calls Refused
	// once more. It runs while the Conn's write lock is held, so it must
	// not write to the same Conn (that would deadlock); log and count, and
	// return.
	Refused func(dst netip.AddrPort, err error)
}

// EnableSegmentation has WriteBatch send runs of same-sized datagrams to one
// destination as one segmented send (UDP GSO), which costs the kernel's send
// path once per run instead of once per datagram. It reports whether the
// kernel supports it; a destination whose path refuses a segmented send is
// then sent a datagram each (the run again at once, and seg.Refused called).
// Receivers see ordinary datagrams. Call it before the Conn's first write.
func (c *Conn) EnableSegmentation(seg Segmentation) bool {
	c.seg = seg
	var ok bool
	c.rc.Control(func(fd uintptr) {
		_, err := unix.GetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_SEGMENT)
		ok = err == nil
	})
	c.gso.Store(ok)
	return ok
}

// ReceiveBuffer is the socket's receive buffer in bytes as the kernel set it
// (SO_RCVBUF reads twice the bytes of data it allows, the rest being its
// bookkeeping; this is that half), or 0 if it cannot be read.
func (c *Conn) ReceiveBuffer() int {
	v := 0
	c.rc.Control(func(fd uintptr) {
		if n, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF); err == nil {
			v = n / 2
		}
	})
	return v
}

// Segmentation reports whether segmented sends are on for the socket (a
// destination whose path refused them aside).
func (c *Conn) Segmentation() bool { return c.gso.Load() }

var errShortBuf = errors.New("udp: Message.N outside Buf")

// WriteTo sends one datagram. It does not allocate.
func (c *Conn) WriteTo(b []byte, to netip.AddrPort) error {
	c.w.mu.Lock()
	m := &c.w.one
	m[0] = Message{Buf: b, N: len(b), Addr: to}
	_, err := c.writeLocked(m[:])
	m[0] = Message{}
	c.w.mu.Unlock()
	return err
}

// WriteToTOS sends one datagram with the IPv4 TOS byte (or IPv6 traffic
// class) tos, whatever the socket's own; the DSCP is tos>>2. It does not
// allocate.
func (c *Conn) WriteToTOS(b []byte, to netip.AddrPort, tos uint8) error {
	c.w.mu.Lock()
	m := &c.w.one
	m[0] = Message{Buf: b, N: len(b), Addr: to, TOS: tos}
	_, err := c.writeLocked(m[:])
	m[0] = Message{}
	c.w.mu.Unlock()
	return err
}

// WriteToFrom sends one datagram from the local address from (a
// PacketInfo-style source; zero: the kernel's choice). It does not allocate.
func (c *Conn) WriteToFrom(b []byte, to netip.AddrPort, from netip.Addr) error {
	c.w.mu.Lock()
	m := &c.w.one
	m[0] = Message{Buf: b, N: len(b), Addr: to, Local: from}
	_, err := c.writeLocked(m[:])
	m[0] = Message{}
	c.w.mu.Unlock()
	return err
}

// pktinfoSpace is CMSG_SPACE(sizeof(struct in6_pktinfo)), the larger of the
// two packet-info messages; ctrlSpace holds a TOS message and one of them.
const (
	pktinfoSpace = unix.SizeofCmsghdr + (unix.SizeofInet6Pktinfo+7)&^7
	ctrlSpace    = tosCmsgSpace + pktinfoSpace + segmentCmsgSpace
)

// parsePktinfo returns the destination address a read's control messages
// carry (zero if none).
func parsePktinfo(b []byte) netip.Addr {
	for len(b) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(b) {
			return netip.Addr{}
		}
		data := b[unix.SizeofCmsghdr:l]
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
			return netip.AddrFrom4(pi.Addr)
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			pi := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
			return netip.AddrFrom16(pi.Addr).Unmap()
		}
		sp := (l + 7) &^ 7
		if sp > len(b) {
			break
		}
		b = b[sp:]
	}
	return netip.Addr{}
}

// putPktinfo writes the control message that sends a datagram to to from the
// local address from, and returns its length (0 when the families differ).
// An IPv4 destination takes IP_PKTINFO (ipi_spec_dst), also on a dual-stack
// socket, as for TOS.
func putPktinfo(b []byte, to netip.AddrPort, from netip.Addr) int {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	if a := to.Addr(); a.Is4() || a.Is4In6() {
		if !from.Unmap().Is4() {
			return 0
		}
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
		pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&b[unix.SizeofCmsghdr]))
		*pi = unix.Inet4Pktinfo{Spec_dst: from.Unmap().As4()}
		return unix.CmsgSpace(unix.SizeofInet4Pktinfo)
	}
	if from.Unmap().Is4() {
		return 0
	}
	h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
	h.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
	pi := (*unix.Inet6Pktinfo)(unsafe.Pointer(&b[unix.SizeofCmsghdr]))
	*pi = unix.Inet6Pktinfo{Addr: from.As16()}
	return unix.CmsgSpace(unix.SizeofInet6Pktinfo)
}

// tosCmsgSpace is the room of one control message carrying an int:
// CMSG_SPACE(4) on 64-bit Linux.
const tosCmsgSpace = unix.SizeofCmsghdr + 8

// putTOS writes the control message that sets a datagram's TOS. An IPv4
// destination, on an IPv4 or a dual-stack socket, takes IP_TOS (the kernel
// sends a mapped destination on the IPv4 path, which reads SOL_IP messages);
// an IPv6 one takes IPV6_TCLASS.
func (c *Conn) putTOS(b *[tosCmsgSpace]byte, to netip.AddrPort, tos uint8) {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	if a := to.Addr(); a.Is4() || a.Is4In6() {
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_TOS
	} else {
		h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_TCLASS
	}
	h.SetLen(unix.CmsgLen(4))
	*(*int32)(unsafe.Pointer(&b[unix.SizeofCmsghdr])) = int32(tos)
}

// LocalAddr returns the bound address (unmapped when it is IPv4-mapped).
func (c *Conn) LocalAddr() netip.AddrPort { return c.local }

// SetReadDeadline sets the deadline for ReadBatch and ReadFrom; a blocked call
// returns an error satisfying errors.Is(err, os.ErrDeadlineExceeded).
func (c *Conn) SetReadDeadline(t time.Time) error { return c.uc.SetReadDeadline(t) }

// SetWriteDeadline sets the deadline for WriteBatch and WriteTo.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.uc.SetWriteDeadline(t) }

// Close closes the socket; blocked calls return an error satisfying
// errors.Is(err, net.ErrClosed).
func (c *Conn) Close() error { return c.uc.Close() }

// UDPConn returns the underlying socket, for options this package does not cover.
// Reading from it directly competes with ReadBatch for datagrams.
func (c *Conn) UDPConn() *net.UDPConn { return c.uc }

func setIov(iov *unix.Iovec, b []byte) {
	if len(b) == 0 {
		iov.Base = nil
		iov.Len = 0
		return
	}
	iov.Base = &b[0]
	iov.SetLen(len(b))
}

// parseSockaddr decodes the source address the kernel wrote. Port fields are in
// network byte order.
func parseSockaddr(sa *unix.RawSockaddrInet6, namelen uint32) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		p := (*[2]byte)(unsafe.Pointer(&sa4.Port))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), uint16(p[0])<<8|uint16(p[1]))
	case unix.AF_INET6:
		if namelen < unix.SizeofSockaddrInet6 {
			return netip.AddrPort{}
		}
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		port := uint16(p[0])<<8 | uint16(p[1])
		a := netip.AddrFrom16(sa.Addr)
		if a.Is4In6() {
			return netip.AddrPortFrom(a.Unmap(), port)
		}
		if sa.Scope_id != 0 {
			// Link-local sources carry a scope; keep it numeric so that no
			// interface-name lookup (and allocation) happens here. Zoned addresses
			// are rare on game paths.
			a = a.WithZone(strconv.FormatUint(uint64(sa.Scope_id), 10))
		}
		return netip.AddrPortFrom(a, port)
	}
	return netip.AddrPort{}
}

// putSockaddr encodes a destination for this socket's family and returns the
// sockaddr length.
func (c *Conn) putSockaddr(sa *unix.RawSockaddrInet6, ap netip.AddrPort) (uint32, bool) {
	a := ap.Addr()
	if !a.IsValid() {
		return 0, false
	}
	port := ap.Port()
	if !c.v6 {
		if !a.Is4() && !a.Is4In6() {
			return 0, false
		}
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.Unmap().As4()}
		p := (*[2]byte)(unsafe.Pointer(&sa4.Port))
		p[0], p[1] = byte(port>>8), byte(port)
		return unix.SizeofSockaddrInet4, true
	}
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16()}
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(port>>8), byte(port)
	if z := a.Zone(); z != "" {
		if id, err := strconv.ParseUint(z, 10, 32); err == nil {
			sa.Scope_id = uint32(id)
		} else if ifi, err := net.InterfaceByName(z); err == nil {
			sa.Scope_id = uint32(ifi.Index)
		} else {
			return 0, false
		}
	}
	return unix.SizeofSockaddrInet6, true
}
