//go:build linux

package bpf

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const testMark = 0x100

func monoNow(t testing.TB) int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return ts.Nano()
}

func classifierForTest(t *testing.T) *Datapath {
	d := loadForTest(t)
	if err := d.SetClassifierConfig(ClassifierConfig{LCMark: testMark}); err != nil {
		t.Fatal(err)
	}
	return d
}

func counters(t *testing.T, d *Datapath) ClassifierCounters {
	t.Helper()
	c, err := d.ClassifierCounters()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestClassifierLCPort(t *testing.T) {
	d := classifierForTest(t)
	if err := d.SetPort(ProtoUDP, 3074, PortEntry{AppID: 7, LC: true}); err != nil {
		t.Fatal(err)
	}
	src, dst := ap("198.18.0.10:40000"), ap("198.19.1.1:3074")
	pkt := buildPacket(src, dst, pktOpts{payload: 60})

	before := monoNow(t)
	for i := 0; i < 3; i++ {
		if i > 0 {
			time.Sleep(2 * time.Millisecond)
		}
		r := runProg(t, d.objs.ClassifyIngress, pkt, 0)
		if r.verdict != verdictPass {
			t.Fatalf("packet %d: verdict %#x, want pass", i, r.verdict)
		}
		if r.mark != testMark {
			t.Fatalf("packet %d: mark %#x, want %#x", i, r.mark, testMark)
		}
		if !bytes.Equal(r.out, pkt) {
			t.Fatalf("packet %d: classifier modified the packet", i)
		}
	}
	after := monoNow(t)

	st, err := d.Flow(FlowKey{Proto: ProtoUDP, Src: src, Dst: dst})
	if err != nil {
		t.Fatal(err)
	}
	if st.Packets != 3 || st.Bytes != uint64(3*len(pkt)) {
		t.Errorf("flow packets/bytes = %d/%d, want 3/%d", st.Packets, st.Bytes, 3*len(pkt))
	}
	if st.AppID != 7 || st.Flags != FlowLCPort|FlowMarked || !st.LC() {
		t.Errorf("flow app %d flags %#x, want app 7 flags %#x", st.AppID, st.Flags, FlowLCPort|FlowMarked)
	}
	if st.FirstSeen < before || st.LastSeen > after || st.LastSeen-st.FirstSeen < int64(4*time.Millisecond) {
		t.Errorf("first/last seen %d/%d outside [%d, %d] or too close", st.FirstSeen, st.LastSeen, before, after)
	}
	if st.MinGap < 2*time.Millisecond || st.MinGap > time.Duration(after-before) {
		t.Errorf("min gap %v, want at least the 2ms sleep", st.MinGap)
	}
	if st.EWMAGap < st.MinGap {
		t.Errorf("EWMA gap %v below min gap %v", st.EWMAGap, st.MinGap)
	}

	// A reply from the game port is LC by its source port, and marking keeps
	// the bits outside the mask.
	if err := d.SetClassifierConfig(ClassifierConfig{LCMark: testMark, LCMask: 0xffff}); err != nil {
		t.Fatal(err)
	}
	r := runProg(t, d.objs.ClassifyIngress, buildPacket(dst, src, pktOpts{}), 0xab0000)
	if r.mark != 0xab0000|testMark {
		t.Errorf("reply mark %#x, want %#x", r.mark, 0xab0000|testMark)
	}

	c := counters(t, d)
	want := ClassifierCounters{Packets: 4, LCPort: 4, Marked: 4, FlowNew: 2}
	if c != want {
		t.Errorf("counters %+v, want %+v", c, want)
	}

	// Without the port entry the flow is bulk again.
	if err := d.DeletePort(ProtoUDP, 3074); err != nil {
		t.Fatal(err)
	}
	if err := d.DeletePort(ProtoUDP, 3074); !errors.Is(err, ErrNotFound) {
		t.Errorf("second DeletePort: %v, want ErrNotFound", err)
	}
	if r := runProg(t, d.objs.ClassifyIngress, pkt, 0); r.mark != 0 {
		t.Errorf("mark %#x after port removal, want 0", r.mark)
	}
}

func TestClassifierDSCP(t *testing.T) {
	d := classifierForTest(t)
	cases := []struct {
		name string
		src  string
		dst  string
		dscp uint8
		lc   bool
	}{
		{"v4 EF", "198.18.0.10:5000", "198.19.0.1:6000", 46, true},
		{"v4 CS3", "198.18.0.10:5001", "198.19.0.1:6000", 24, true},
		{"v4 CS4", "198.18.0.10:5002", "198.19.0.1:6000", 32, true},
		{"v4 CS5", "198.18.0.10:5003", "198.19.0.1:6000", 40, true},
		{"v4 AF41", "198.18.0.10:5004", "198.19.0.1:6000", 34, false},
		{"v4 best effort", "198.18.0.10:5005", "198.19.0.1:6000", 0, false},
		{"v6 EF", "[2001:db8::10]:5000", "[2001:db8:1::1]:6000", 46, true},
		{"v6 CS1", "[2001:db8::10]:5001", "[2001:db8:1::1]:6000", 8, false},
	}
	var lc, bulk uint64
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src, dst := ap(tc.src), ap(tc.dst)
			// ECT(0) in the low bits must not disturb the DSCP match.
			pkt := buildPacket(src, dst, pktOpts{tos: tc.dscp<<2 | 2})
			r := runProg(t, d.objs.ClassifyIngress, pkt, 0)
			if r.verdict != verdictPass {
				t.Fatalf("verdict %#x", r.verdict)
			}
			st, err := d.Flow(FlowKey{Proto: ProtoUDP, Src: src, Dst: dst})
			if err != nil {
				t.Fatal(err)
			}
			if tc.lc {
				lc++
				if r.mark != testMark || st.Flags != FlowLCDSCP|FlowMarked {
					t.Errorf("mark %#x flags %#x, want LC by DSCP", r.mark, st.Flags)
				}
			} else {
				bulk++
				if r.mark != 0 || st.Flags != 0 {
					t.Errorf("mark %#x flags %#x, want bulk", r.mark, st.Flags)
				}
			}
		})
	}
	c := counters(t, d)
	if c.LCDSCP != lc || c.Bulk != bulk || c.Marked != lc || c.Packets != lc+bulk {
		t.Errorf("counters %+v, want %d LC by DSCP and %d bulk", c, lc, bulk)
	}
}

func TestClassifierPromoted(t *testing.T) {
	d := classifierForTest(t)
	k := FlowKey{Proto: ProtoUDP, Src: ap("[2001:db8::10]:40000"), Dst: ap("[2001:db8:1::1]:27015")}
	pkt := buildPacket(k.Src, k.Dst, pktOpts{payload: 32})

	if r := runProg(t, d.objs.ClassifyIngress, pkt, 0); r.mark != 0 {
		t.Fatalf("mark %#x before promotion, want 0", r.mark)
	}
	if err := d.Promote(k, 42); err != nil {
		t.Fatal(err)
	}
	if r := runProg(t, d.objs.ClassifyIngress, pkt, 0); r.mark != testMark {
		t.Fatalf("mark %#x after promotion, want %#x", r.mark, testMark)
	}
	st, err := d.Flow(k)
	if err != nil {
		t.Fatal(err)
	}
	if st.Packets != 2 || st.AppID != 42 || st.Flags != FlowLCPromoted|FlowMarked {
		t.Errorf("stats %+v, want 2 packets, app 42, promoted and marked", st)
	}

	if err := d.Demote(k); err != nil {
		t.Fatal(err)
	}
	if err := d.Demote(k); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Demote: %v, want ErrNotFound", err)
	}
	if st, err := d.Flow(k); err != nil || st.Flags != 0 || st.Packets != 2 {
		t.Errorf("after demotion: stats %+v, %v; want flags cleared", st, err)
	}
	if r := runProg(t, d.objs.ClassifyIngress, pkt, 0); r.mark != 0 {
		t.Errorf("mark %#x after demotion, want 0", r.mark)
	}

	var seen int
	if err := d.Flows(func(fk FlowKey, fs FlowStats) bool {
		if fk == k {
			seen++
			if fs.Packets != 3 {
				t.Errorf("Flows: %d packets, want 3", fs.Packets)
			}
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if seen != 1 {
		t.Errorf("Flows saw the flow %d times, want 1", seen)
	}
	c := counters(t, d)
	want := ClassifierCounters{Packets: 3, LCPromoted: 1, Bulk: 2, Marked: 1, FlowNew: 1}
	if c != want {
		t.Errorf("counters %+v, want %+v", c, want)
	}
}

func TestClassifierBulkAndSkipped(t *testing.T) {
	d := classifierForTest(t)
	if err := d.SetPort(ProtoUDP, 3074, PortEntry{AppID: 7, LC: true}); err != nil {
		t.Fatal(err)
	}
	src, lcDst, bulkDst := ap("198.18.0.10:40000"), ap("198.19.1.1:3074"), ap("198.19.1.1:443")
	v6src, v6dst := ap("[2001:db8::10]:40000"), ap("[2001:db8:1::1]:3074")
	hopByHop := ext6{proto: 0, data: make([]byte, 8)}
	dstOpts := ext6{proto: 60, data: make([]byte, 8)}
	frag6 := ext6{proto: 44, data: []byte{0, 0, 0, 0, 0, 0, 0, 1}}
	arp := append(append(append([]byte{}, macB...), macA...), 0x08, 0x06)
	arp = append(arp, make([]byte, 28)...)

	cases := []struct {
		name string
		pkt  []byte
		mark uint32 // expected after the run (input mark is 0x7)
	}{
		{"bulk udp keeps mark", buildPacket(src, bulkDst, pktOpts{}), 0x7},
		{"tcp to LC port is not classified", buildPacket(src, lcDst, pktOpts{proto: unix.IPPROTO_TCP}), 0x7},
		{"non-IP", arp, 0x7},
		{"v4 first fragment", buildPacket(src, lcDst, pktOpts{frag: 0x2000}), 0x7},
		{"v4 later fragment", buildPacket(src, lcDst, pktOpts{frag: 0x0010}), 0x7},
		{"v6 fragment header", buildPacket(v6src, v6dst, pktOpts{}, frag6), 0x7},
		{"v6 through extension headers", buildPacket(v6src, v6dst, pktOpts{}, hopByHop, dstOpts), testMark},
		{"vlan tagged", buildPacket(src, lcDst, pktOpts{vlan: 12}), testMark},
	}
	for _, tc := range cases {
		r := runProg(t, d.objs.ClassifyIngress, tc.pkt, 0x7)
		if r.verdict != verdictPass {
			t.Errorf("%s: verdict %#x, want pass", tc.name, r.verdict)
		}
		if r.mark != tc.mark {
			t.Errorf("%s: mark %#x, want %#x", tc.name, r.mark, tc.mark)
		}
	}
	st, err := d.Flow(FlowKey{Proto: ProtoUDP, Src: src, Dst: bulkDst})
	if err != nil {
		t.Fatal(err)
	}
	if st.Flags != 0 || st.LC() || st.Packets != 1 {
		t.Errorf("bulk flow stats %+v, want 1 packet and no flags", st)
	}
	if _, err := d.Flow(FlowKey{Proto: ProtoUDP, Src: src, Dst: lcDst}); err != nil {
		t.Errorf("vlan-tagged LC flow not tracked: %v", err)
	}
	c := counters(t, d)
	want := ClassifierCounters{Packets: 8, NotIP: 1, NotUDP: 1, Fragment: 3, LCPort: 2, Bulk: 1, Marked: 2, FlowNew: 3}
	if c != want {
		t.Errorf("counters %+v, want %+v", c, want)
	}
}
