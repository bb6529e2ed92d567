package udp

import (
	"fmt"
	"os"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// SteerByPayload makes the kernel pick, for each datagram that reaches c's
// SO_REUSEPORT group, the socket at index (the 32-bit big-endian word at
// offset bytes into the UDP payload) mod n, instead of a hash of the 4-tuple.
// Index i is the group's i-th socket to bind, so call it after all n are
// bound. A datagram too short for the word goes to socket 0.
//
// The program is classic BPF (SO_ATTACH_REUSEPORT_CBPF): it needs no
// privilege, no BTF and no compiler, and costs a load and a modulo per
// datagram. It holds for the whole group until the group's last socket closes.
func (c *Conn) SteerByPayload(offset uint32, n int) error {
	if n < 1 || n > 1<<16 {
		return fmt.Errorf("udp: steering over %d sockets", n)
	}
	prog, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: offset, Size: 4},
		bpf.ALUOpConstant{Op: bpf.ALUOpMod, Val: uint32(n)},
		bpf.RetA{},
	})
	if err != nil {
		return err
	}
	filter := make([]unix.SockFilter, len(prog))
	for i, ins := range prog {
		filter[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	var serr error
	if err := c.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fprog)
	}); err != nil {
		return err
	}
	if serr != nil {
		return os.NewSyscallError("setsockopt SO_ATTACH_REUSEPORT_CBPF", serr)
	}
	return nil
}
