package udp

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestSegmentRun checks which neighbours share one segmented send: same
// destination, source and TOS, the first one's size, and a shorter one only
// at the end.
func TestSegmentRun(t *testing.T) {
	a := netip.MustParseAddrPort("198.18.0.1:7000")
	b := netip.MustParseAddrPort("198.18.0.2:7000")
	msg := func(n int, to netip.AddrPort) Message { return Message{Buf: make([]byte, 2000), N: n, Addr: to} }
	cases := []struct {
		name string
		msgs []Message
		want int
	}{
		{"alone", []Message{msg(100, a)}, 1},
		{"same size", []Message{msg(100, a), msg(100, a), msg(100, a)}, 3},
		{"shorter ends the run", []Message{msg(100, a), msg(60, a), msg(100, a)}, 2},
		{"longer breaks it", []Message{msg(100, a), msg(120, a)}, 1},
		{"other destination", []Message{msg(100, a), msg(100, a), msg(100, b)}, 2},
		{"other TOS", []Message{msg(100, a), {Buf: make([]byte, 200), N: 100, Addr: a, TOS: 0xb8}}, 1},
		{"other source", []Message{msg(100, a), {Buf: make([]byte, 200), N: 100, Addr: a, Local: netip.MustParseAddr("198.18.0.9")}}, 1},
		{"too large to segment", []Message{msg(maxSegmentSize+1, a), msg(maxSegmentSize+1, a)}, 1},
		{"empty", []Message{msg(0, a), msg(0, a)}, 1},
		{"bad length ends it", []Message{msg(100, a), {Buf: make([]byte, 50), N: 100, Addr: a}}, 1},
	}
	for _, c := range cases {
		if got := segmentRun(c.msgs); got != c.want {
			t.Errorf("%s: segmentRun = %d, want %d", c.name, got, c.want)
		}
	}
	long := make([]Message, 100)
	for i := range long {
		long[i] = msg(100, a)
	}
	if got := segmentRun(long); got != maxSegments {
		t.Errorf("100 alike: segmentRun = %d, want the cap %d", got, maxSegments)
	}
	big := make([]Message, 64)
	for i := range big {
		big[i] = msg(maxSegmentSize, a)
	}
	if got, want := segmentRun(big), maxRunBytes/maxSegmentSize; got != want {
		t.Errorf("64 of %d B: segmentRun = %d, want %d (the run's byte cap)", maxSegmentSize, got, want)
	}
}

// TestSegmentedBatchArrivesAsDatagrams sends a batch mixing runs (several
// sizes, two destinations) through a segmenting socket and checks that each
// receiver gets every datagram, whole, separate and in order, and that the
// runs were segmented.
func TestSegmentedBatchArrivesAsDatagrams(t *testing.T) {
	snd := listen(t, "udp4", Options{Local: lo4})
	var segmented sentCount
	if !snd.EnableSegmentation(Segmentation{Sent: &segmented}) {
		t.Skip("kernel has no UDP_SEGMENT (UDP GSO, Linux 4.18)")
	}
	r1 := listen(t, "udp4", Options{Local: lo4, RecvBuffer: 1 << 20})
	r2 := listen(t, "udp4", Options{Local: lo4, RecvBuffer: 1 << 20})
	// 20 to r1 of 120 B and one of 80 B (which ends that run), 10 to r2 of
	// 300 B, 5 to r1 of 1,000 B and one of 40 B (which ends that run), one to r2
	// of 50 B (alone).
	type spec struct {
		to   *Conn
		size int
	}
	var plan []spec
	for i := 0; i < 20; i++ {
		plan = append(plan, spec{r1, 120})
	}
	plan = append(plan, spec{r1, 80})
	for i := 0; i < 10; i++ {
		plan = append(plan, spec{r2, 300})
	}
	for i := 0; i < 5; i++ {
		plan = append(plan, spec{r1, 1000})
	}
	plan = append(plan, spec{r1, 40}, spec{r2, 50})
	msgs := make([]Message, len(plan))
	var want1, want2 [][]byte
	for i, p := range plan {
		b := make([]byte, p.size)
		copy(b, fmt.Sprintf("datagram %d of %d B", i, p.size))
		for j := 24; j < len(b); j++ {
			b[j] = byte(i + j)
		}
		msgs[i] = Message{Buf: b, N: len(b), Addr: p.to.LocalAddr()}
		if p.to == r1 {
			want1 = append(want1, b)
		} else {
			want2 = append(want2, b)
		}
	}
	n, err := snd.WriteBatch(msgs)
	if n != len(msgs) || err != nil {
		t.Fatalf("WriteBatch = %d, %v; want %d, nil", n, err, len(msgs))
	}
	// Runs of 21, 10 and 6 are segmented; the last datagram is not.
	if got, want := segmented.Load(), uint64(21+10+6); got != want {
		t.Errorf("segmented count = %d, want %d", got, want)
	}
	for _, rc := range []struct {
		c    *Conn
		want [][]byte
	}{{r1, want1}, {r2, want2}} {
		got := readAll(t, rc.c, len(rc.want), 8)
		for i := range rc.want {
			if !bytes.Equal(got[i].Buf, rc.want[i]) {
				t.Fatalf("receiver %v, datagram %d: got %d B %q..., want %d B %q...", rc.c.LocalAddr(), i,
					len(got[i].Buf), got[i].Buf[:min(24, len(got[i].Buf))], len(rc.want[i]), rc.want[i][:24])
			}
			if got[i].Addr != snd.LocalAddr() {
				t.Fatalf("datagram %d from %v, want %v", i, got[i].Addr, snd.LocalAddr())
			}
		}
		rc.c.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
		if n, _ := rc.c.ReadBatch(newMsgs(4, 2048)); n != 0 {
			t.Errorf("receiver %v got %d datagrams more than were sent", rc.c.LocalAddr(), n)
		}
	}
	if !snd.Segmentation() {
		t.Error("segmentation turned itself off on loopback")
	}
}

// TestSegmentedWriteBatchZeroAllocs: segmented sends allocate nothing either.
func TestSegmentedWriteBatchZeroAllocs(t *testing.T) {
	snd := listen(t, "udp4", Options{Local: lo4})
	var segmented sentCount
	if !snd.EnableSegmentation(Segmentation{Sent: &segmented}) {
		t.Skip("kernel has no UDP_SEGMENT (UDP GSO, Linux 4.18)")
	}
	rcv := listen(t, "udp4", Options{Local: lo4, RecvBuffer: 4 << 20})
	out := newMsgs(MaxBatch, 200)
	for i := range out {
		out[i].N = 140
		out[i].Addr = rcv.LocalAddr()
	}
	in := newMsgs(MaxBatch, 2048)
	drain := func() {
		rcv.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		for {
			if _, err := rcv.ReadBatch(in); err != nil {
				break
			}
		}
		rcv.SetReadDeadline(time.Time{})
	}
	snd.WriteBatch(out)
	drain()
	before := segmented.Load()
	if a := testing.AllocsPerRun(20, func() {
		if n, err := snd.WriteBatch(out); n != len(out) || err != nil {
			t.Fatalf("WriteBatch = %d, %v", n, err)
		}
	}); a != 0 {
		t.Errorf("segmented WriteBatch: %v allocs per batch, want 0", a)
	}
	if segmented.Load() == before {
		t.Error("no datagram went out segmented")
	}
	drain()
}

// TestSegmentationFallsBackOnSmallMTU sends a run of 1,000-byte datagrams over
// a veth with a 576-byte MTU: the kernel refuses a segment larger than the
// path's MTU, so the socket must send the run as plain datagrams (which IP
// then fragments), losing none, and stop segmenting to that destination only:
// a run to a destination over a 1,500-byte path still leaves segmented.
//
//	b: vb 198.18.9.2/24 (mtu 576) ─── va 198.18.9.1/24 (mtu 576) :a
//	c: wc 198.18.8.2/24           ─── wa 198.18.8.1/24           :a
func TestSegmentationFallsBackOnSmallMTU(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN for namespaces and veth)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs the ip command (iproute2) to build the namespaces")
	}
	// A sends to B over a veth of MTU 576 and to C over one of 1500.
	nsA, nsB, nsC := testNetns(t, "ga"), testNetns(t, "gb"), testNetns(t, "gc")
	ipCmd(t, "-n", nsA, "link", "add", "va", "mtu", "576", "type", "veth", "peer", "name", "vb", "netns", nsB)
	ipCmd(t, "-n", nsB, "link", "set", "vb", "mtu", "576")
	ipCmd(t, "-n", nsA, "link", "add", "wa", "type", "veth", "peer", "name", "wc", "netns", nsC)
	ipCmd(t, "-n", nsA, "addr", "add", "198.18.9.1/24", "dev", "va")
	ipCmd(t, "-n", nsB, "addr", "add", "198.18.9.2/24", "dev", "vb")
	ipCmd(t, "-n", nsA, "addr", "add", "198.18.8.1/24", "dev", "wa")
	ipCmd(t, "-n", nsC, "addr", "add", "198.18.8.2/24", "dev", "wc")
	for _, l := range [][2]string{{nsA, "va"}, {nsB, "vb"}, {nsA, "wa"}, {nsC, "wc"}} {
		ipCmd(t, "-n", l[0], "link", "set", l[1], "up")
	}
	snd := listenIn(t, nsA, "udp4", Options{})
	narrow := listenIn(t, nsB, "udp4", Options{Local: netip.MustParseAddrPort("198.18.9.2:0"), RecvBuffer: 1 << 20})
	wide := listenIn(t, nsC, "udp4", Options{Local: netip.MustParseAddrPort("198.18.8.2:0"), RecvBuffer: 1 << 20})
	var segmented sentCount
	var refusals []string
	seg := Segmentation{Sent: &segmented, Refused: func(dst netip.AddrPort, err error) {
		refusals = append(refusals, fmt.Sprintf("%v: %v", dst, err))
	}}
	if !snd.EnableSegmentation(seg) {
		t.Skip("kernel has no UDP_SEGMENT (UDP GSO, Linux 4.18)")
	}
	batch := func(to netip.AddrPort) []Message {
		msgs := make([]Message, 8)
		for i := range msgs {
			b := bytes.Repeat([]byte{byte('a' + i)}, 1000)
			msgs[i] = Message{Buf: b, N: len(b), Addr: to}
		}
		return msgs
	}
	toNarrow, toWide := batch(narrow.LocalAddr()), batch(wide.LocalAddr())
	if n, err := snd.WriteBatch(toNarrow); n != len(toNarrow) || err != nil {
		t.Fatalf("WriteBatch = %d, %v; want %d, nil (the refused run sent again unsegmented)", n, err, len(toNarrow))
	}
	if segmented.Load() != 0 {
		t.Errorf("segmented count = %d after the narrow path's batch, want 0", segmented.Load())
	}
	if !snd.Segmentation() {
		t.Error("one path's refusal turned segmentation off for the whole socket")
	}
	// The wide path still gets segmented sends; the narrow one is not tried
	// again, and the caller heard of its refusal once, naming it.
	if n, err := snd.WriteBatch(toWide); n != len(toWide) || err != nil {
		t.Fatalf("WriteBatch to the wide path = %d, %v", n, err)
	}
	if got := segmented.Load(); got != uint64(len(toWide)) {
		t.Errorf("segmented count = %d after the wide path's batch, want %d", got, len(toWide))
	}
	if n, err := snd.WriteBatch(toNarrow); n != len(toNarrow) || err != nil {
		t.Fatalf("second WriteBatch to the narrow path = %d, %v", n, err)
	}
	if len(refusals) != 1 || !strings.HasPrefix(refusals[0], narrow.LocalAddr().String()+": ") {
		t.Errorf("refusals reported: %q; want one, for %v", refusals, narrow.LocalAddr())
	}
	for _, rc := range []struct {
		c    *Conn
		want []Message
	}{{narrow, append(toNarrow, toNarrow...)}, {wide, toWide}} {
		got := readAll(t, rc.c, len(rc.want), 8)
		for i := range rc.want {
			if !bytes.Equal(got[i].Buf, rc.want[i].Buf) {
				t.Fatalf("%v, datagram %d: got %d B starting %q, want 1000 B of %q", rc.c.LocalAddr(), i, len(got[i].Buf), got[i].Buf[:1], rc.want[i].Buf[:1])
			}
		}
	}
}

// TestRefusedPathsBounded: past maxRefusedPaths destinations refused, the
// socket stops segmenting altogether, and says so once more.
func TestRefusedPathsBounded(t *testing.T) {
	c := listen(t, "udp4", Options{Local: lo4})
	if !c.EnableSegmentation(Segmentation{}) {
		t.Skip("kernel has no UDP_SEGMENT (UDP GSO, Linux 4.18)")
	}
	dst := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.MustParseAddr("198.18.7.1"), uint16(1000+i))
	}
	for i := 0; i < maxRefusedPaths; i++ {
		if !c.refusePath(dst(i)) || !c.Segmentation() {
			t.Fatalf("refusal %d: not recorded, or segmentation off already", i)
		}
		if c.refusePath(dst(i)) {
			t.Fatalf("refusal %d told twice", i)
		}
	}
	if !c.pathRefused(dst(3)) || c.pathRefused(dst(maxRefusedPaths)) {
		t.Fatal("pathRefused does not match the refusals recorded")
	}
	if !c.refusePath(dst(maxRefusedPaths)) || c.Segmentation() {
		t.Fatalf("refusal %d: segmentation still on for the socket", maxRefusedPaths+1)
	}
	if c.refusePath(dst(maxRefusedPaths + 1)) {
		t.Fatal("a refusal after segmentation went off was told again")
	}
}

// sentCount is an Adder for the tests.
type sentCount struct{ atomic.Uint64 }

func (c *sentCount) Add(n uint64) { c.Uint64.Add(n) }
