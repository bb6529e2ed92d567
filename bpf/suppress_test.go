//go:build linux

package bpf

import (
	"bytes"
	"math"
	"testing"
	"time"
)

const lcMark = 0x200

var (
	bulkSrc = ap("198.18.0.10:40000")
	bulkDst = ap("198.19.2.2:443")
)

func suppressForTest(t *testing.T, cfg SuppressConfig) *Datapath {
	t.Helper()
	d := loadForTest(t)
	setSuppress(t, d, cfg)
	return d
}

func setSuppress(t *testing.T, d *Datapath, cfg SuppressConfig) {
	t.Helper()
	cfg.Enabled = true
	cfg.LCMark = lcMark
	cfg.LCMask = 0xffff // the high bits belong to other users of the mark
	if err := d.SetSuppressConfig(loIfindex, cfg); err != nil {
		t.Fatal(err)
	}
}

func supCounters(t *testing.T, d *Datapath) SuppressCounters {
	t.Helper()
	c, err := d.SuppressCounters()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestSuppressDisabledPasses(t *testing.T) {
	d := loadForTest(t)
	pkt := buildPacket(bulkSrc, bulkDst, pktOpts{payload: 1000})
	// Configured for another interface only: loopback is untouched.
	if err := d.SetSuppressConfig(loIfindex+1000, SuppressConfig{Enabled: true, DropFraction: 1}); err != nil {
		t.Fatal(err)
	}
	// Configured but not enabled.
	if r := runProg(t, d.objs.SuppressEgress, pkt, 0); r.verdict != verdictPass || !bytes.Equal(r.out, pkt) {
		t.Fatalf("unconfigured interface: verdict %#x", r.verdict)
	}
	if err := d.SetSuppressConfig(loIfindex, SuppressConfig{DropFraction: 1, DSCPRewrite: true}); err != nil {
		t.Fatal(err)
	}
	if r := runProg(t, d.objs.SuppressEgress, pkt, 0); r.verdict != verdictPass || !bytes.Equal(r.out, pkt) {
		t.Fatalf("disabled config: verdict %#x or packet modified", r.verdict)
	}
	c := supCounters(t, d)
	if c != (SuppressCounters{Passed: 2, Unconfigured: 2}) {
		t.Errorf("counters %+v", c)
	}
}

func TestSuppressTokenBucket(t *testing.T) {
	pkt := buildPacket(bulkSrc, bulkDst, pktOpts{payload: 958})
	n := uint64(len(pkt)) // 1000 bytes on the wire
	// 1 byte/s refills nothing during the test. Packets pass while tokens
	// are left and are charged in full, so the fourth takes the 3.5-packet
	// bucket into deficit and the rest are dropped.
	d := suppressForTest(t, SuppressConfig{RateBytesPerSec: 1, Burst: 3*n + n/2})
	var verdicts []uint32
	for range 8 {
		verdicts = append(verdicts, runProg(t, d.objs.SuppressEgress, pkt, 0).verdict)
	}
	for i, v := range verdicts {
		want := uint32(verdictShot)
		if i < 4 {
			want = verdictPass
		}
		if v != want {
			t.Errorf("packet %d: verdict %#x, want %#x", i, v, want)
		}
	}
	c := supCounters(t, d)
	if c != (SuppressCounters{Passed: 4, DroppedRate: 4}) {
		t.Errorf("counters %+v, want 4 passed and 4 rate drops", c)
	}

	// Setting the config again refills the bucket; a fast rate refills it
	// over time.
	// 1 packet/s leaves a second of slack for a loaded machine between the
	// checks that expect an empty bucket.
	setSuppress(t, d, SuppressConfig{RateBytesPerSec: n, Burst: n})
	if r := runProg(t, d.objs.SuppressEgress, pkt, 0); r.verdict != verdictPass {
		t.Fatalf("after reset: verdict %#x, want pass", r.verdict)
	}
	if r := runProg(t, d.objs.SuppressEgress, pkt, 0); r.verdict != verdictShot {
		t.Fatalf("bucket empty: verdict %#x, want drop", r.verdict)
	}
	time.Sleep(1600 * time.Millisecond) // 1.6 packets' worth, capped at the 1-packet burst
	if r := runProg(t, d.objs.SuppressEgress, pkt, 0); r.verdict != verdictPass {
		t.Fatalf("after refill: verdict %#x, want pass", r.verdict)
	}
	if r := runProg(t, d.objs.SuppressEgress, pkt, 0); r.verdict != verdictShot {
		t.Fatalf("burst cap: verdict %#x, want drop", r.verdict)
	}
}

func TestSuppressDropFraction(t *testing.T) {
	const frac, packets = 0.25, 4000
	d := suppressForTest(t, SuppressConfig{DropFraction: frac})
	pkt := buildPacket(bulkSrc, bulkDst, pktOpts{proto: 6, payload: 200}) // TCP bulk
	drops := 0
	for range packets {
		if runProg(t, d.objs.SuppressEgress, pkt, 0).verdict == verdictShot {
			drops++
		}
	}
	got := float64(drops) / packets
	// Binomial sd is sqrt(.25*.75/4000) = 0.0068; 4.5 sd keeps flakes out.
	if math.Abs(got-frac) > 0.03 {
		t.Errorf("dropped %.4f of packets, want %.2f", got, frac)
	}
	c := supCounters(t, d)
	if c.DroppedFraction != uint64(drops) || c.Passed != uint64(packets-drops) {
		t.Errorf("counters %+v, want %d fraction drops", c, drops)
	}
	var flows int
	if err := d.BulkFlows(func(k FlowKey, f BulkFlow) bool {
		flows++
		if k.Src != bulkSrc || k.Dst != bulkDst || k.Proto != 6 {
			t.Errorf("bulk flow %v", k)
		}
		if f.Packets != packets || f.Drops != uint32(drops) || f.Bytes != packets*uint64(len(pkt)) {
			t.Errorf("bulk flow %+v, want %d packets and %d drops", f, packets, drops)
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if flows != 1 {
		t.Errorf("%d bulk flows, want 1", flows)
	}
}

func TestSuppressMaxDropRun(t *testing.T) {
	for _, tc := range []struct {
		frac   float64
		maxRun uint32
	}{{1, 3}, {0.9, 2}, {1, 1}} {
		d := suppressForTest(t, SuppressConfig{DropFraction: tc.frac, MaxDropRun: tc.maxRun})
		pkt := buildPacket(bulkSrc, bulkDst, pktOpts{payload: 100})
		run, longest, drops := 0, 0, 0
		const packets = 2000
		for range packets {
			if runProg(t, d.objs.SuppressEgress, pkt, 0).verdict == verdictShot {
				run++
				drops++
				longest = max(longest, run)
			} else {
				run = 0
			}
		}
		if longest != int(tc.maxRun) {
			t.Errorf("fraction %v max run %d: longest run %d", tc.frac, tc.maxRun, longest)
		}
		if tc.frac == 1 {
			// Every packet is picked, so the pattern is exact: maxRun drops, one pass.
			want := packets / int(tc.maxRun+1) * int(tc.maxRun)
			if drops < want || drops > want+int(tc.maxRun) {
				t.Errorf("fraction 1 max run %d: %d drops, want about %d", tc.maxRun, drops, want)
			}
		}
	}
}

// skipIfWindowPassed skips a test whose packets had to fall into one 100 ms
// rate window when the machine stalled for longer than that: its results
// would say nothing about the program. Call it before asserting.
func skipIfWindowPassed(t *testing.T, start int64) {
	if elapsed := time.Duration(monoNow(t) - start); elapsed >= rateWindow {
		t.Skipf("skipping: the packets took %v, longer than one rate window; results are not meaningful", elapsed)
	}
}

func TestSuppressFlowThreshold(t *testing.T) {
	// Only flows at or above 1 MB/s are eligible: a single 1000-byte packet
	// is below it and passes even at fraction 1.
	d := suppressForTest(t, SuppressConfig{DropFraction: 1, FlowRateThreshold: 1 << 20})
	small := buildPacket(ap("198.18.0.10:40001"), bulkDst, pktOpts{payload: 958})
	if r := runProg(t, d.objs.SuppressEgress, small, 0); r.verdict != verdictPass {
		t.Fatalf("small flow: verdict %#x, want pass", r.verdict)
	}
	// A flow that put more than 100 KB (1 MB/s over the 100 ms window) into
	// the current window becomes eligible and is dropped.
	big := buildPacket(bulkSrc, bulkDst, pktOpts{payload: 1400})
	start := monoNow(t)
	passed := 0
	for range 200 {
		if runProg(t, d.objs.SuppressEgress, big, 0).verdict == verdictPass {
			passed++
		}
	}
	skipIfWindowPassed(t, start)
	if passed == 0 || passed == 200 {
		t.Fatalf("big flow: %d of 200 passed, want the first ones only", passed)
	}
	if want := (1<<20)/10/len(big) + 1; passed > want+1 {
		t.Errorf("big flow: %d passed before drops started, want about %d", passed, want)
	}
	if r := runProg(t, d.objs.SuppressEgress, small, 0); r.verdict != verdictPass {
		t.Errorf("small flow after big one: verdict %#x, want pass", r.verdict)
	}
}

func TestSuppressECN(t *testing.T) {
	d := suppressForTest(t, SuppressConfig{DropFraction: 1, ECN: true})
	for _, tc := range []struct {
		name string
		src  string
		dst  string
		ecn  uint8
	}{
		{"v4 ECT(0)", "198.18.0.10:40000", "198.19.2.2:443", 2},
		{"v4 ECT(1)", "198.18.0.10:40001", "198.19.2.2:443", 1},
		{"v6 ECT(0)", "[2001:db8::10]:40000", "[2001:db8:1::1]:443", 2},
	} {
		dscp := uint8(10) // AF11, kept as is: only ECN changes
		pkt := buildPacket(ap(tc.src), ap(tc.dst), pktOpts{tos: dscp<<2 | tc.ecn, payload: 500})
		r := runProg(t, d.objs.SuppressEgress, pkt, 0)
		if r.verdict != verdictPass {
			t.Fatalf("%s: verdict %#x, want pass with CE", tc.name, r.verdict)
		}
		if ap(tc.src).Addr().Is4() {
			if tos := r.out[15]; tos != dscp<<2|3 {
				t.Errorf("%s: TOS %#x, want %#x", tc.name, tos, dscp<<2|3)
			}
			if !ipv4HeaderValid(r.out) {
				t.Errorf("%s: IPv4 header checksum wrong after CE", tc.name)
			}
		} else {
			tcls, flow := v6TrafficClass(r.out)
			if tcls != dscp<<2|3 || flow != 0xabcde {
				t.Errorf("%s: traffic class %#x flow label %#x, want %#x and 0xabcde", tc.name, tcls, flow, dscp<<2|3)
			}
		}
		// Only the ECN bits and the checksum changed.
		diff := 0
		for i := range pkt {
			if pkt[i] != r.out[i] {
				diff++
			}
		}
		if diff == 0 || diff > 3 {
			t.Errorf("%s: %d bytes changed", tc.name, diff)
		}
	}
	// Not ECN-capable: dropped. Already CE: passes unchanged.
	notECT := buildPacket(bulkSrc, bulkDst, pktOpts{tos: 0, payload: 500})
	if r := runProg(t, d.objs.SuppressEgress, notECT, 0); r.verdict != verdictShot {
		t.Errorf("not-ECT: verdict %#x, want drop", r.verdict)
	}
	ce := buildPacket(bulkSrc, bulkDst, pktOpts{tos: 3, payload: 500})
	if r := runProg(t, d.objs.SuppressEgress, ce, 0); r.verdict != verdictShot {
		// CE is not ECT: the sender already saw congestion and the packet
		// counts as not ECN-capable for this hop.
		t.Errorf("CE: verdict %#x, want drop", r.verdict)
	}
	c := supCounters(t, d)
	if c != (SuppressCounters{Passed: 3, ECNMarked: 3, DroppedFraction: 2}) {
		t.Errorf("counters %+v", c)
	}

}

// Over the rate, ECN-capable packets leave while the bucket's deficit stays
// within Deficit, marked CE with a probability that grows with the deficit;
// beyond it they are dropped like the rest, so ECN cannot take bulk past its
// cap.
func TestSuppressECNDeficit(t *testing.T) {
	ect := buildPacket(bulkSrc, bulkDst, pktOpts{tos: 2, payload: 958})
	n := uint64(len(ect))
	const steps = 100
	// 1 byte/s refills nothing during the test.
	d := suppressForTest(t, SuppressConfig{RateBytesPerSec: 1, Burst: n, Deficit: steps * n, ECN: true})
	if r := runProg(t, d.objs.SuppressEgress, ect, 0); r.verdict != verdictPass || r.out[15] != 2 {
		t.Fatalf("within the burst: verdict %#x TOS %#x, want pass unmarked", r.verdict, r.out[15])
	}
	// Packet k meets a deficit of k packets: marked with probability k/steps.
	var early, late int
	for k := range steps {
		r := runProg(t, d.objs.SuppressEgress, ect, 0)
		if r.verdict != verdictPass || !ipv4HeaderValid(r.out) {
			t.Fatalf("deficit %d of %d packets: verdict %#x (checksum ok %v), want pass", k, steps, r.verdict, ipv4HeaderValid(r.out))
		}
		switch r.out[15] {
		case 3:
			if k < steps/2 {
				early++
			} else {
				late++
			}
		case 2:
		default:
			t.Fatalf("deficit %d: TOS %#x, want ECT(0) or CE", k, r.out[15])
		}
	}
	// Expected 12.25 and 37.25 marks (standard deviations about 2.9 and 2.9).
	if early < 3 || early > 24 || late < 26 || late > 49 {
		t.Errorf("CE marks: %d in the first half of the deficit, %d in the second; want about 12 and 37", early, late)
	}
	// The deficit is used up: ECN-capable and other bulk are dropped.
	if r := runProg(t, d.objs.SuppressEgress, ect, 0); r.verdict != verdictShot {
		t.Errorf("ECT beyond the deficit: verdict %#x, want drop", r.verdict)
	}
	plain := buildPacket(bulkSrc, bulkDst, pktOpts{tos: 0, payload: 958})
	if r := runProg(t, d.objs.SuppressEgress, plain, 0); r.verdict != verdictShot {
		t.Errorf("not-ECT over the rate: verdict %#x, want drop", r.verdict)
	}
	c := supCounters(t, d)
	if c != (SuppressCounters{Passed: steps + 1, ECNMarked: uint64(early + late), DroppedRate: 2}) {
		t.Errorf("counters %+v, want %d passed, %d marked, 2 rate drops", c, steps+1, early+late)
	}
}

// A GSO packet costs the bucket what its segments cost the line: each
// segment carries its own headers.
func TestSuppressChargesEverySegment(t *testing.T) {
	const mss = 1448
	gso := buildPacket(bulkSrc, bulkDst, pktOpts{proto: 6, payload: 2 * mss})
	probe := buildPacket(bulkSrc, bulkDst, pktOpts{proto: 6, payload: 500})
	hdr := uint64(14 + 20 + 20) // Ethernet, IPv4, TCP without options
	for _, tc := range []struct {
		segs uint32
		want uint32 // the probe's verdict
	}{
		{1, verdictPass}, // one packet: hdr bytes of the bucket are left
		{2, verdictShot}, // two segments: the second's headers use them up
	} {
		d := suppressForTest(t, SuppressConfig{RateBytesPerSec: 1, Burst: uint64(len(gso)) + hdr})
		if r := runProgGSO(t, d.objs.SuppressEgress, gso, tc.segs, mss); r.verdict != verdictPass {
			t.Fatalf("%d segments: verdict %#x, want pass", tc.segs, r.verdict)
		}
		if r := runProg(t, d.objs.SuppressEgress, probe, 0); r.verdict != tc.want {
			t.Errorf("after a packet of %d segments: probe verdict %#x, want %#x", tc.segs, r.verdict, tc.want)
		}
	}
}

// ACK-sized TCP packets are charged to the bucket but never dropped by the
// cap, fraction drops or a cutoff window: dropping them saves the line almost
// nothing and stalls the transfer they acknowledge.
func TestSuppressACKsNeverDropped(t *testing.T) {
	ack := buildPacket(bulkSrc, bulkDst, pktOpts{proto: 6})
	data := buildPacket(bulkSrc, bulkDst, pktOpts{proto: 6, payload: 946})
	n := uint64(len(data))
	d := suppressForTest(t, SuppressConfig{RateBytesPerSec: 1, Burst: n})
	for i := range 50 {
		if r := runProg(t, d.objs.SuppressEgress, ack, 0); r.verdict != verdictPass {
			t.Fatalf("ACK %d over the rate: verdict %#x, want pass", i, r.verdict)
		}
	}
	// The ACKs took the tokens a data packet needed.
	if r := runProg(t, d.objs.SuppressEgress, data, 0); r.verdict != verdictShot {
		t.Errorf("data after the ACKs used the bucket: verdict %#x, want drop", r.verdict)
	}

	setSuppress(t, d, SuppressConfig{DropFraction: 1, TNext: monoNow(t) + int64(time.Second), TReserve: int64(2 * time.Second)})
	if r := runProg(t, d.objs.SuppressEgress, ack, 0); r.verdict != verdictPass {
		t.Errorf("ACK in a cutoff window with every packet dropped: verdict %#x, want pass", r.verdict)
	}
	if r := runProg(t, d.objs.SuppressEgress, data, 0); r.verdict != verdictShot {
		t.Errorf("data in a cutoff window: verdict %#x, want drop", r.verdict)
	}
	setSuppress(t, d, SuppressConfig{DropFraction: 1})
	if r := runProg(t, d.objs.SuppressEgress, ack, 0); r.verdict != verdictPass {
		t.Errorf("ACK with every packet dropped: verdict %#x, want pass", r.verdict)
	}
	if r := runProg(t, d.objs.SuppressEgress, data, 0); r.verdict != verdictShot {
		t.Errorf("data with every packet dropped: verdict %#x, want drop", r.verdict)
	}
}

func TestSuppressDSCPRewrite(t *testing.T) {
	d := suppressForTest(t, SuppressConfig{DSCPRewrite: true})
	v4 := buildPacket(bulkSrc, bulkDst, pktOpts{tos: 10<<2 | 2, payload: 300}) // AF11, ECT(0)
	r := runProg(t, d.objs.SuppressEgress, v4, 0)
	if r.verdict != verdictPass {
		t.Fatalf("v4: verdict %#x", r.verdict)
	}
	if r.out[15] != 8<<2|2 {
		t.Errorf("v4: TOS %#x, want CS1 with ECT(0) %#x", r.out[15], 8<<2|2)
	}
	if !ipv4HeaderValid(r.out) {
		t.Error("v4: IPv4 header checksum wrong after DSCP rewrite")
	}

	v6 := buildPacket(ap("[2001:db8::10]:40000"), ap("[2001:db8:1::1]:443"), pktOpts{tos: 46<<2 | 1, payload: 300})
	r = runProg(t, d.objs.SuppressEgress, v6, 0)
	tcls, flow := v6TrafficClass(r.out)
	if r.verdict != verdictPass || tcls != 8<<2|1 || flow != 0xabcde {
		t.Errorf("v6: verdict %#x traffic class %#x flow label %#x", r.verdict, tcls, flow)
	}
	if !bytes.Equal(r.out[16:], v6[16:]) {
		t.Error("v6: bytes beyond the traffic class changed")
	}

	// Already CS1: left alone and not counted.
	cs1 := buildPacket(bulkSrc, bulkDst, pktOpts{tos: 8 << 2})
	if r := runProg(t, d.objs.SuppressEgress, cs1, 0); !bytes.Equal(r.out, cs1) {
		t.Error("CS1 packet modified")
	}
	c := supCounters(t, d)
	if c != (SuppressCounters{Passed: 3, DSCPRewritten: 2}) {
		t.Errorf("counters %+v", c)
	}
}

func TestSuppressCutoffWindow(t *testing.T) {
	d := loadForTest(t)
	pkt := buildPacket(bulkSrc, bulkDst, pktOpts{payload: 500})
	now := monoNow(t)
	for _, tc := range []struct {
		name                 string
		tNext, tReserve, eps int64
		drop                 bool
	}{
		{"inside", now + int64(time.Second), int64(2 * time.Second), int64(time.Millisecond), true},
		{"before", now + int64(time.Hour), int64(time.Millisecond), int64(time.Millisecond), false},
		{"after", now - int64(time.Second), int64(time.Millisecond), int64(time.Millisecond), false},
		{"disabled", 0, 0, 0, false},
	} {
		setSuppress(t, d, SuppressConfig{TNext: tc.tNext, TReserve: tc.tReserve, Epsilon: tc.eps})
		want := uint32(verdictPass)
		if tc.drop {
			want = verdictShot
		}
		if r := runProg(t, d.objs.SuppressEgress, pkt, 0); r.verdict != want {
			t.Errorf("%s: verdict %#x, want %#x", tc.name, r.verdict, want)
		}
	}
	// SetCutoff alone moves the window.
	if err := d.SetCutoff(loIfindex, monoNow(t)+int64(time.Second), int64(2*time.Second), 0); err != nil {
		t.Fatal(err)
	}
	if r := runProg(t, d.objs.SuppressEgress, pkt, 0); r.verdict != verdictShot {
		t.Errorf("SetCutoff window: verdict %#x, want drop", r.verdict)
	}
	c := supCounters(t, d)
	if c != (SuppressCounters{Passed: 3, DroppedCutoff: 2}) {
		t.Errorf("counters %+v", c)
	}
}

// TestSuppressLCAlwaysPasses turns every action up to "drop everything" and
// checks that LC packets of every kind pass byte for byte.
func TestSuppressLCAlwaysPasses(t *testing.T) {
	now := monoNow(t)
	configs := []SuppressConfig{
		{RateBytesPerSec: 1, Burst: 1},
		{DropFraction: 1},
		{DropFraction: 1, ECN: true},
		{DSCPRewrite: true},
		{TNext: now + int64(30*time.Second), TReserve: int64(time.Minute)},
		{RateBytesPerSec: 1, Burst: 1, DropFraction: 1, ECN: true, DSCPRewrite: true,
			TNext: now + int64(30*time.Second), TReserve: int64(time.Minute)},
	}
	client, server := ap("198.18.0.10:40000"), ap("198.19.3.3:27015")
	v6client, v6server := ap("[2001:db8::10]:40000"), ap("[2001:db8:1::1]:9000")
	gamePort := ap("198.19.3.3:3074")
	dscpClient, dscpServer := ap("198.18.0.11:41000"), ap("198.19.4.4:5000")
	opts := pktOpts{tos: 10<<2 | 2, payload: 200} // AF11 + ECT(0): every action would change it

	for i, cfg := range configs {
		d := suppressForTest(t, cfg)
		if err := d.SetClassifierConfig(ClassifierConfig{LCMark: testMark}); err != nil {
			t.Fatal(err)
		}
		if err := d.SetPort(ProtoUDP, 3074, PortEntry{LC: true}); err != nil {
			t.Fatal(err)
		}
		if err := d.Promote(FlowKey{Proto: ProtoUDP, Src: client, Dst: server}, 0); err != nil {
			t.Fatal(err)
		}
		if err := d.Promote(FlowKey{Proto: ProtoUDP, Src: v6client, Dst: v6server}, 0); err != nil {
			t.Fatal(err)
		}
		// The classifier sees the LAN side of a flow marked EF; its replies
		// (not marked) must pass suppression on the LAN egress.
		runProg(t, d.objs.ClassifyIngress, buildPacket(dscpClient, dscpServer, pktOpts{tos: 46 << 2}), 0)

		lc := []struct {
			name string
			pkt  []byte
			mark uint32
		}{
			{"mark", buildPacket(bulkSrc, bulkDst, opts), lcMark},
			{"mark with other bits", buildPacket(bulkSrc, bulkDst, opts), lcMark | 0x10000},
			{"port (upload)", buildPacket(client, gamePort, opts), 0},
			{"port (download)", buildPacket(gamePort, client, opts), 0},
			{"promoted upload", buildPacket(client, server, opts), 0},
			{"promoted download", buildPacket(server, client, opts), 0},
			{"promoted v6 download", buildPacket(v6server, v6client, opts), 0},
			{"classifier DSCP reply", buildPacket(dscpServer, dscpClient, opts), 0},
		}
		for _, tc := range lc {
			r := runProg(t, d.objs.SuppressEgress, tc.pkt, tc.mark)
			if r.verdict != verdictPass || !bytes.Equal(r.out, tc.pkt) {
				t.Errorf("config %d, %s: verdict %#x, modified %v", i, tc.name, r.verdict, !bytes.Equal(r.out, tc.pkt))
			}
		}
		// The same packet without an LC attribute is acted on (by the second
		// time: a full bucket lets the first through).
		bulk := buildPacket(bulkSrc, bulkDst, opts)
		runProg(t, d.objs.SuppressEgress, bulk, 0x10000)
		if r := runProg(t, d.objs.SuppressEgress, bulk, 0x10000); r.verdict == verdictPass && bytes.Equal(r.out, bulk) {
			t.Errorf("config %d: bulk control packet untouched", i)
		}
		c := supCounters(t, d)
		if c.LCPassed != uint64(len(lc)) {
			t.Errorf("config %d: counters %+v, want %d LC passed", i, c, len(lc))
		}
		if c.Passed+c.DroppedRate+c.DroppedFraction+c.DroppedCutoff != 2 {
			t.Errorf("config %d: counters %+v, want two bulk verdicts", i, c)
		}
	}
}

func TestSuppressNonIPPasses(t *testing.T) {
	d := suppressForTest(t, SuppressConfig{RateBytesPerSec: 1, Burst: 1, DropFraction: 1,
		TNext: monoNow(t) + int64(30*time.Second), TReserve: int64(time.Minute)})
	arp := append(append(append([]byte{}, macB...), macA...), 0x08, 0x06)
	arp = append(arp, make([]byte, 28)...)
	if r := runProg(t, d.objs.SuppressEgress, arp, 0); r.verdict != verdictPass {
		t.Errorf("ARP: verdict %#x, want pass", r.verdict)
	}
	c := supCounters(t, d)
	if c != (SuppressCounters{Passed: 1, NotIP: 1}) {
		t.Errorf("counters %+v", c)
	}
}

func TestSuppressConfigValidation(t *testing.T) {
	for _, c := range []SuppressConfig{
		{DropFraction: -0.1},
		{DropFraction: 1.5},
		{DropFraction: math.NaN()},
		{RateBytesPerSec: 1000},
	} {
		if _, err := c.raw(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	r, err := SuppressConfig{Enabled: true, DropFraction: 0.5, ECN: true, DSCPRewrite: true}.raw()
	if err != nil {
		t.Fatal(err)
	}
	if r.DropFraction != 32768 || r.Flags != supEnabled|supECN|supDSCPCS1 || r.LcMask != ^uint32(0) {
		t.Errorf("raw %+v", r)
	}
}

func TestFlowRateThresholdFor(t *testing.T) {
	d := suppressForTest(t, SuppressConfig{})
	start := monoNow(t)
	big := buildPacket(ap("198.18.0.10:40000"), bulkDst, pktOpts{payload: 958})
	mid := buildPacket(ap("198.18.0.10:40001"), bulkDst, pktOpts{payload: 958})
	small := buildPacket(ap("198.18.0.10:40002"), bulkDst, pktOpts{payload: 958})
	send := func(pkt []byte, n int) {
		for range n {
			runProg(t, d.objs.SuppressEgress, pkt, 0)
		}
	}
	send(big, 30)
	send(mid, 20)
	send(small, 10)
	skipIfWindowPassed(t, start)

	th, err := d.FlowRateThresholdFor(1, start)
	if err != nil {
		t.Fatal(err)
	}
	// 30 packets of 1000 bytes in the first window project to 300 kB/s.
	if th != 300000 {
		t.Errorf("threshold for 1 flow = %d, want 300000", th)
	}
	if th, _ := d.FlowRateThresholdFor(2, start); th != 200000 {
		t.Errorf("threshold for 2 flows = %d, want 200000", th)
	}
	if th, _ := d.FlowRateThresholdFor(3, start); th != 0 {
		t.Errorf("threshold for 3 of 3 flows = %d, want 0", th)
	}
	if th, _ := d.FlowRateThresholdFor(1, monoNow(t)+1); th != 0 {
		t.Errorf("threshold with no active flows = %d, want 0", th)
	}

	// With the threshold for the biggest flow, only that flow loses packets
	// (as long as all of this fits in the flows' first rate window).
	setSuppress(t, d, SuppressConfig{DropFraction: 1, FlowRateThreshold: 300000})
	verdicts := []uint32{
		runProg(t, d.objs.SuppressEgress, big, 0).verdict,
		runProg(t, d.objs.SuppressEgress, mid, 0).verdict,
		runProg(t, d.objs.SuppressEgress, small, 0).verdict,
	}
	skipIfWindowPassed(t, start)
	if verdicts[0] != verdictShot {
		t.Errorf("biggest flow: verdict %#x, want drop", verdicts[0])
	}
	for _, v := range verdicts[1:] {
		if v != verdictPass {
			t.Errorf("smaller flow: verdict %#x, want pass", v)
		}
	}
}

// LC packets always pass but are charged to the bucket: they use the line, so
// bulk gets what they leave of the cap.
func TestSuppressLCCharged(t *testing.T) {
	lc := buildPacket(bulkSrc, bulkDst, pktOpts{payload: 958})
	n := uint64(len(lc))
	d := suppressForTest(t, SuppressConfig{RateBytesPerSec: 1, Burst: n})
	for i := range 3 {
		if r := runProg(t, d.objs.SuppressEgress, lc, lcMark); r.verdict != verdictPass {
			t.Fatalf("LC packet %d over the rate: verdict %#x, want pass", i, r.verdict)
		}
	}
	bulk := buildPacket(bulkSrc, bulkDst, pktOpts{payload: 100})
	if r := runProg(t, d.objs.SuppressEgress, bulk, 0); r.verdict != verdictShot {
		t.Errorf("bulk after LC used the bucket: verdict %#x, want drop", r.verdict)
	}
	c := supCounters(t, d)
	if c.LCPassed != 3 || c.DroppedRate != 1 {
		t.Errorf("counters %+v, want 3 LC passed and 1 rate drop", c)
	}
}

// A TCP sender clears ECT on retransmissions: a flow that has sent
// ECN-capable packets may overdraw the bucket with its others too (they pass
// unmarked), while a flow that never did is dropped.
func TestSuppressECNFlowRetransmits(t *testing.T) {
	ect := buildPacket(bulkSrc, bulkDst, pktOpts{proto: 6, tos: 2, payload: 958})
	retrans := buildPacket(bulkSrc, bulkDst, pktOpts{proto: 6, tos: 0, payload: 958})
	other := buildPacket(ap("198.18.0.10:40001"), bulkDst, pktOpts{proto: 6, tos: 0, payload: 958})
	n := uint64(len(ect))
	d := suppressForTest(t, SuppressConfig{RateBytesPerSec: 1, Burst: n, Deficit: 10 * n, ECN: true})
	if r := runProg(t, d.objs.SuppressEgress, ect, 0); r.verdict != verdictPass {
		t.Fatalf("ECT within the burst: verdict %#x, want pass", r.verdict)
	}
	if r := runProg(t, d.objs.SuppressEgress, other, 0); r.verdict != verdictShot {
		t.Errorf("not-ECT flow in deficit: verdict %#x, want drop", r.verdict)
	}
	r := runProg(t, d.objs.SuppressEgress, retrans, 0)
	if r.verdict != verdictPass || r.out[15] != 0 {
		t.Errorf("not-ECT packet of an ECN flow in deficit: verdict %#x TOS %#x, want pass unmarked", r.verdict, r.out[15])
	}
	// Without ECN enforcement the same packet is dropped.
	setSuppress(t, d, SuppressConfig{RateBytesPerSec: 1, Burst: n, Deficit: 10 * n})
	runProg(t, d.objs.SuppressEgress, ect, 0) // drains the refilled bucket
	if r := runProg(t, d.objs.SuppressEgress, retrans, 0); r.verdict != verdictShot {
		t.Errorf("ECN off: verdict %#x, want drop", r.verdict)
	}
}
