package udp

import (
	"errors"
	"os"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SendRing sends many datagrams, each on its own connected socket, in one
// system call: an io_uring whose submission queue gets one IORING_OP_SEND per
// datagram and is entered once for the lot. sendmmsg cannot do this (it
// takes one socket); a proxy with a socket per session would otherwise make
// one write(2) per forwarded packet, and the system call's entry and exit are
// a large part of a small datagram's cost.
//
// Every send carries MSG_DONTWAIT, so a socket whose buffer is full completes
// at once with EAGAIN instead of being parked inside the ring: Send returns
// with every datagram either sent or failed, and the caller may retry a
// failed one its own way (a blocking write, say).
//
// The ring is made with raw system calls (io_uring_setup, mmap,
// io_uring_enter), no library: the few structures it needs are fixed by the
// kernel's ABI. A SendRing is used by one goroutine at a time.
type SendRing struct {
	fd      int
	entries uint32

	sqRing, cqRing, sqeMem []byte

	sqHead, sqTail, sqMask *uint32
	sqArray                unsafe.Pointer // uint32[entries]
	cqHead, cqTail, cqMask *uint32
	cqes                   unsafe.Pointer // ioUringCQE[cq entries]
	sqes                   unsafe.Pointer // ioUringSQE[entries]
}

// ErrRingUnsupported is NewSendRing's error where the kernel has no io_uring
// or refuses it (an old kernel, kernel.io_uring_disabled, a seccomp filter,
// no IORING_OP_SEND): the caller then writes datagram by datagram.
var ErrRingUnsupported = errors.New("io_uring with IORING_OP_SEND not available")

// The kernel ABI (include/uapi/linux/io_uring.h).
const (
	ioringOffSQRing = 0
	ioringOffCQRing = 0x8000000
	ioringOffSQEs   = 0x10000000

	ioringOpSend = 26 // since 5.6

	ioringEnterGetEvents = 1 << 0

	ioringSetupCoopTaskrun = 1 << 8 // since 5.19: no interrupt to run completions we wait for anyway

	ioringRegisterProbe = 8
	ioOpSupported       = 1 << 0
)

type ioSQRingOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type ioCQRingOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type ioUringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff                                                                  ioSQRingOffsets
	cqOff                                                                  ioCQRingOffsets
}

type ioUringSQE struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	opFlags     uint32 // msg_flags for a send
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFDIn  int32
	addr3       uint64
	pad         uint64
}

type ioUringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

// NewSendRing makes a ring for up to entries datagrams a Send (rounded up to
// a power of two by the kernel).
func NewSendRing(entries int) (*SendRing, error) {
	if entries < 1 || entries > 4096 {
		return nil, errors.New("send ring: entries must be 1..4096")
	}
	var p ioUringParams
	p.flags = ioringSetupCoopTaskrun
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno == unix.EINVAL { // a kernel before 5.19: no COOP_TASKRUN
		p = ioUringParams{}
		fd, _, errno = unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	}
	if errno != 0 {
		return nil, errors.Join(ErrRingUnsupported, os.NewSyscallError("io_uring_setup", errno))
	}
	r := &SendRing{fd: int(fd), entries: p.sqEntries}
	if err := r.mapRings(&p); err != nil {
		r.Close()
		return nil, err
	}
	if !r.supportsSend() {
		r.Close()
		return nil, ErrRingUnsupported
	}
	return r, nil
}

func (r *SendRing) mapRings(p *ioUringParams) error {
	var err error
	sqSize := int(p.sqOff.array) + int(p.sqEntries)*4
	if r.sqRing, err = unix.Mmap(r.fd, ioringOffSQRing, sqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return os.NewSyscallError("mmap", err)
	}
	cqSize := int(p.cqOff.cqes) + int(p.cqEntries)*int(unsafe.Sizeof(ioUringCQE{}))
	if r.cqRing, err = unix.Mmap(r.fd, ioringOffCQRing, cqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return os.NewSyscallError("mmap", err)
	}
	sqeSize := int(p.sqEntries) * int(unsafe.Sizeof(ioUringSQE{}))
	if r.sqeMem, err = unix.Mmap(r.fd, ioringOffSQEs, sqeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return os.NewSyscallError("mmap", err)
	}
	sq, cq := unsafe.Pointer(&r.sqRing[0]), unsafe.Pointer(&r.cqRing[0])
	r.sqHead = (*uint32)(unsafe.Add(sq, p.sqOff.head))
	r.sqTail = (*uint32)(unsafe.Add(sq, p.sqOff.tail))
	r.sqMask = (*uint32)(unsafe.Add(sq, p.sqOff.ringMask))
	r.sqArray = unsafe.Add(sq, p.sqOff.array)
	r.cqHead = (*uint32)(unsafe.Add(cq, p.cqOff.head))
	r.cqTail = (*uint32)(unsafe.Add(cq, p.cqOff.tail))
	r.cqMask = (*uint32)(unsafe.Add(cq, p.cqOff.ringMask))
	r.cqes = unsafe.Add(cq, p.cqOff.cqes)
	r.sqes = unsafe.Pointer(&r.sqeMem[0])
	return nil
}

// supportsSend asks the kernel whether IORING_OP_SEND exists (the probe of
// IORING_REGISTER_PROBE: a header of 16 bytes, then 8 bytes an opcode).
func (r *SendRing) supportsSend() bool {
	const ops = 64
	var probe [16 + ops*8]byte
	_, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), ioringRegisterProbe, uintptr(unsafe.Pointer(&probe[0])), ops, 0, 0)
	if errno != 0 {
		return false
	}
	lastOp := probe[0]
	op := probe[16+ioringOpSend*8:]
	return lastOp >= ioringOpSend && (uint16(op[2])|uint16(op[3])<<8)&ioOpSupported != 0
}

// Entries is the most datagrams one Send takes.
func (r *SendRing) Entries() int { return int(r.entries) }

// Send sends bufs[i] on the connected socket fds[i], all in one
// io_uring_enter, and waits for every one: res[i] is then the bytes sent or
// the negated errno (-EAGAIN: the socket's buffer was full). len(fds),
// len(bufs) and len(res) must be equal and at most Entries. An error means
// the ring itself failed; res then says nothing.
//
// The kernel reads the buffers during the call only, so they need not
// outlive it.
func (r *SendRing) Send(fds []int32, bufs [][]byte, res []int32) error {
	n := len(fds)
	if n == 0 {
		return nil
	}
	if n != len(bufs) || n != len(res) || n > int(r.entries) {
		return errors.New("send ring: bad batch")
	}
	mask := atomic.LoadUint32(r.sqMask)
	tail := atomic.LoadUint32(r.sqTail) // ours alone: the kernel moves the head
	for i := 0; i < n; i++ {
		idx := (tail + uint32(i)) & mask
		sqe := (*ioUringSQE)(unsafe.Add(r.sqes, uintptr(idx)*unsafe.Sizeof(ioUringSQE{})))
		*sqe = ioUringSQE{opcode: ioringOpSend, fd: fds[i], len: uint32(len(bufs[i])), opFlags: unix.MSG_DONTWAIT, userData: uint64(i)}
		if len(bufs[i]) > 0 {
			sqe.addr = uint64(uintptr(unsafe.Pointer(&bufs[i][0])))
		}
		*(*uint32)(unsafe.Add(r.sqArray, uintptr(idx)*4)) = idx
		res[i] = -int32(unix.EINPROGRESS)
	}
	atomic.StoreUint32(r.sqTail, tail+uint32(n)) // publishes the entries (release)

	// RawSyscall6, as for recvmmsg and sendmmsg (see Conn.recv): the call
	// does not sleep, since a MSG_DONTWAIT send completes while it is
	// submitted (-EAGAIN when the socket is full), so waiting for every
	// completion waits for nothing.
	submitted, done := 0, 0
	for done < n {
		toSubmit := n - submitted
		got, _, errno := unix.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(toSubmit), uintptr(n-done), ioringEnterGetEvents, 0, 0)
		if errno == unix.EINTR || errno == unix.EAGAIN || errno == unix.EBUSY {
			done += r.reap(res)
			continue
		}
		if errno != 0 {
			runtime.KeepAlive(bufs)
			return os.NewSyscallError("io_uring_enter", errno)
		}
		submitted += int(got)
		done += r.reap(res)
	}
	runtime.KeepAlive(bufs)
	return nil
}

// reap takes the completions queued so far into res, by the index each send
// carries; it returns how many it took.
func (r *SendRing) reap(res []int32) int {
	head := atomic.LoadUint32(r.cqHead)
	tail := atomic.LoadUint32(r.cqTail) // acquire: the entries up to it are written
	mask := atomic.LoadUint32(r.cqMask)
	n := 0
	for ; head != tail; head++ {
		cqe := (*ioUringCQE)(unsafe.Add(r.cqes, uintptr(head&mask)*unsafe.Sizeof(ioUringCQE{})))
		if i := int(cqe.userData); i < len(res) {
			res[i] = cqe.res
		}
		n++
	}
	atomic.StoreUint32(r.cqHead, head)
	return n
}

// Close releases the ring.
func (r *SendRing) Close() error {
	for _, m := range [][]byte{r.sqeMem, r.cqRing, r.sqRing} {
		if m != nil {
			unix.Munmap(m)
		}
	}
	r.sqeMem, r.cqRing, r.sqRing = nil, nil, nil
	if r.fd >= 0 {
		unix.Close(r.fd)
		r.fd = -1
	}
	return nil
}
