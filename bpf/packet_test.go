//go:build linux

package bpf

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Test packets are built by hand: the programs care about a handful of
// header fields, and building them directly keeps the checksum arithmetic in
// the tests explicit.

const (
	verdictPass = ^uint32(0) // TC_ACT_UNSPEC (TCX_NEXT) as the kernel returns it
	verdictShot = 2          // TC_ACT_SHOT
	loIfindex   = 1          // BPF_PROG_TEST_RUN runs skb programs on loopback
)

var (
	macA = []byte{0x02, 0, 0, 0, 0, 0xa}
	macB = []byte{0x02, 0, 0, 0, 0, 0xb}
)

type pktOpts struct {
	proto   uint8  // default UDP
	tos     uint8  // IPv4 TOS / IPv6 traffic class
	payload int    // bytes after the L4 header
	frag    uint16 // IPv4 frag_off field (host order)
	v6Ext   []byte // IPv6 extension headers as (next header, bytes) pairs, see ext6
	vlan    uint16 // 802.1Q VLAN id; 0 = untagged
}

// ext6 is one IPv6 extension header: its protocol number and its bytes
// (whose first byte, the next header, is filled in by buildPacket).
type ext6 struct {
	proto uint8
	data  []byte
}

func buildPacket(src, dst netip.AddrPort, o pktOpts, exts ...ext6) []byte {
	if o.proto == 0 {
		o.proto = unix.IPPROTO_UDP
	}
	l4len := 8
	if o.proto == unix.IPPROTO_TCP {
		l4len = 20
	}
	l4 := make([]byte, l4len+o.payload)
	binary.BigEndian.PutUint16(l4[0:], src.Port())
	binary.BigEndian.PutUint16(l4[2:], dst.Port())
	if o.proto == unix.IPPROTO_UDP {
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
	} else {
		l4[12] = 5 << 4 // data offset
	}
	for i := l4len; i < len(l4); i++ {
		l4[i] = byte(i)
	}

	var b []byte
	b = append(b, macB...)
	b = append(b, macA...)
	if o.vlan != 0 {
		b = binary.BigEndian.AppendUint16(b, 0x8100)
		b = binary.BigEndian.AppendUint16(b, o.vlan)
	}
	if src.Addr().Is4() {
		b = binary.BigEndian.AppendUint16(b, 0x0800)
		ip := make([]byte, 20)
		ip[0] = 0x45
		ip[1] = o.tos
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
		binary.BigEndian.PutUint16(ip[4:], 0x1234)
		binary.BigEndian.PutUint16(ip[6:], o.frag)
		ip[8] = 64
		ip[9] = o.proto
		s, d := src.Addr().As4(), dst.Addr().As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		binary.BigEndian.PutUint16(ip[10:], ipv4Checksum(ip))
		b = append(b, ip...)
	} else {
		b = binary.BigEndian.AppendUint16(b, 0x86dd)
		var ext []byte
		next := o.proto
		for i := len(exts) - 1; i >= 0; i-- {
			h := append([]byte{next}, exts[i].data[1:]...)
			ext = append(h, ext...)
			next = exts[i].proto
		}
		ip := make([]byte, 40)
		// Version 6, traffic class, flow label 0xabcde.
		binary.BigEndian.PutUint32(ip[0:], 6<<28|uint32(o.tos)<<20|0xabcde)
		binary.BigEndian.PutUint16(ip[4:], uint16(len(ext)+len(l4)))
		ip[6] = next
		ip[7] = 64
		s, d := src.Addr().As16(), dst.Addr().As16()
		copy(ip[8:], s[:])
		copy(ip[24:], d[:])
		b = append(b, ip...)
		b = append(b, ext...)
	}
	return append(b, l4...)
}

// ipv4Checksum is the RFC 1071 checksum of hdr with its checksum field zeroed.
func ipv4Checksum(hdr []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(hdr); i += 2 {
		if i == 10 {
			continue
		}
		sum += uint32(binary.BigEndian.Uint16(hdr[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// ipv4HeaderValid reports whether the IPv4 header of an untagged frame sums
// to 0xffff, i.e. its checksum field is right.
func ipv4HeaderValid(frame []byte) bool {
	hdr := frame[14 : 14+20]
	return binary.BigEndian.Uint16(hdr[10:]) == ipv4Checksum(hdr)
}

// v6TrafficClass returns the traffic class and flow label of an untagged
// IPv6 frame.
func v6TrafficClass(frame []byte) (tc uint8, flow uint32) {
	w := binary.BigEndian.Uint32(frame[14:])
	return uint8(w >> 20), w & 0xfffff
}

// skbCtx is struct __sk_buff as BPF_PROG_TEST_RUN exchanges it: callers may
// set a few fields (mark among them), and the kernel refuses to report back
// into anything shorter than the whole struct (192 bytes).
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol uint32
	VlanPresent, VlanTCI, VlanProto, Priority  uint32
	IngressIfindex, Ifindex                    uint32
	Rest                                       [148]byte
}

type runResult struct {
	verdict uint32
	mark    uint32
	out     []byte
}

func runProg(t testing.TB, prog *ebpf.Program, pkt []byte, mark uint32) runResult {
	t.Helper()
	return runProgCtx(t, prog, pkt, skbCtx{Mark: mark})
}

// runProgGSO runs prog on pkt as a GSO packet of segs segments of size bytes
// of payload each (as TSO or GRO would hand it over).
func runProgGSO(t testing.TB, prog *ebpf.Program, pkt []byte, segs, size uint32) runResult {
	t.Helper()
	in := skbCtx{}
	// __sk_buff.gso_segs is at offset 164 and gso_size at 176; Rest starts
	// at 44.
	binary.NativeEndian.PutUint32(in.Rest[164-44:], segs)
	binary.NativeEndian.PutUint32(in.Rest[176-44:], size)
	return runProgCtx(t, prog, pkt, in)
}

func runProgCtx(t testing.TB, prog *ebpf.Program, pkt []byte, in skbCtx) runResult {
	t.Helper()
	var out skbCtx
	buf := make([]byte, len(pkt)+256)
	opts := ebpf.RunOptions{Data: pkt, DataOut: buf, Context: in, ContextOut: &out}
	ret, err := prog.Run(&opts)
	if err != nil {
		t.Fatalf("prog.Run: %v", err)
	}
	return runResult{verdict: ret, mark: out.Mark, out: opts.DataOut}
}

// loadForTest loads the datapath or skips when the test cannot: not root, or
// a kernel without BPF, BPF_PROG_TEST_RUN or the map types used.
func loadForTest(t testing.TB) *Datapath {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: loading eBPF programs needs root (CAP_BPF, CAP_NET_ADMIN)")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Skipf("skipping: cannot lift RLIMIT_MEMLOCK for BPF maps: %v", err)
	}
	d, err := Load()
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOSYS) {
			t.Skipf("skipping: kernel cannot load the programs (BPF unavailable): %v", err)
		}
		t.Fatalf("Load: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	// Probe BPF_PROG_TEST_RUN once with a runt frame.
	if _, err := d.objs.ClassifyIngress.Run(&ebpf.RunOptions{Data: make([]byte, 14)}); err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			t.Skipf("skipping: BPF_PROG_TEST_RUN unsupported: %v", err)
		}
		t.Fatalf("probe run: %v", err)
	}
	zeroCounters(t, d.objs.ClsCounters, d.objs.SupCounters)
	return d
}

// zeroCounters clears per-CPU counter arrays so tests count from zero.
func zeroCounters(t testing.TB, maps ...*ebpf.Map) {
	t.Helper()
	n, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	zero := make([]uint64, n)
	for _, m := range maps {
		for i := uint32(0); i < m.MaxEntries(); i++ {
			if err := m.Put(i, zero); err != nil {
				t.Fatalf("zero counters: %v", err)
			}
		}
	}
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
