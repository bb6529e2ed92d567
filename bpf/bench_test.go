//go:build linux

package bpf

import (
	"testing"

	"github.com/cilium/ebpf"
)

// benchProg reports the kernel's own per-run time of prog on pkt. The
// kernel times b.N runs of the program inside one BPF_PROG_TEST_RUN call, so
// the figure excludes the syscall and the copy of the packet.
func benchProg(b *testing.B, prog *ebpf.Program, pkt []byte) {
	b.Helper()
	ret, perRun, err := prog.Benchmark(pkt, b.N, b.ResetTimer)
	if err != nil {
		b.Fatal(err)
	}
	if ret != verdictPass && ret != verdictShot {
		b.Fatalf("verdict %#x", ret)
	}
	b.ReportMetric(float64(perRun.Nanoseconds()), "ns/packet")
}

// BenchmarkClassifier measures the classifier's per-packet cost for the
// common cases: an existing bulk flow, an existing LC flow (port table hit
// and mark), IPv6, and a packet it skips early.
func BenchmarkClassifier(b *testing.B) {
	d := loadForTest(b)
	if err := d.SetClassifierConfig(ClassifierConfig{LCMark: testMark}); err != nil {
		b.Fatal(err)
	}
	if err := d.SetPort(ProtoUDP, 3074, PortEntry{AppID: 7, LC: true}); err != nil {
		b.Fatal(err)
	}
	cases := []struct {
		name string
		pkt  []byte
	}{
		{"v4-bulk", buildPacket(ap("198.18.0.10:40000"), ap("198.19.1.1:443"), pktOpts{payload: 1200})},
		{"v4-lc-port", buildPacket(ap("198.18.0.10:40000"), ap("198.19.1.1:3074"), pktOpts{payload: 100})},
		{"v6-lc-dscp", buildPacket(ap("[2001:db8::10]:40000"), ap("[2001:db8:1::1]:9000"), pktOpts{tos: 46 << 2, payload: 100})},
		{"v4-tcp-skipped", buildPacket(ap("198.18.0.10:40000"), ap("198.19.1.1:443"), pktOpts{proto: 6, payload: 1200})},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) { benchProg(b, d.objs.ClassifyIngress, c.pkt) })
	}
}

// BenchmarkSuppress measures suppress_egress on a bulk packet that goes
// through every check (cutoff, fraction, token bucket, DSCP) and passes, and
// on an LC packet matched by the port table. The kernel reruns one skb, so
// the DSCP rewrite itself happens on the first run only.
func BenchmarkSuppress(b *testing.B) {
	d := loadForTest(b)
	err := d.SetSuppressConfig(loIfindex, SuppressConfig{
		Enabled: true, RateBytesPerSec: 1 << 40, Burst: 1 << 40, DropFraction: 1.0 / 65536,
		DSCPRewrite: true, LCMark: lcMark, TNext: 1 << 62, TReserve: 1,
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := d.SetPort(ProtoUDP, 3074, PortEntry{LC: true}); err != nil {
		b.Fatal(err)
	}
	bulk := buildPacket(ap("198.18.0.10:40000"), ap("198.19.1.1:443"), pktOpts{tos: 2, payload: 1200})
	lc := buildPacket(ap("198.18.0.10:40000"), ap("198.19.1.1:3074"), pktOpts{payload: 100})
	b.Run("v4-bulk-pass", func(b *testing.B) { benchProg(b, d.objs.SuppressEgress, bulk) })
	b.Run("v4-lc-port", func(b *testing.B) { benchProg(b, d.objs.SuppressEgress, lc) })
}
