package linkem_test

import (
	"encoding/binary"
	"math"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/linkem"
	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/pkg/mono"
)

var (
	addrA = netip.MustParseAddr("198.18.100.2")
	addrB = netip.MustParseAddr("198.18.101.2")
)

// chain builds a — mid — b with a TUN emulator in mid: aToB applies to traffic
// from a, bToA to traffic from b. It returns a socket in a and one in b.
func chain(t *testing.T, aToB, bToA string) (*linkem.TUNLink, *net.UDPConn, *net.UDPConn) {
	t.Helper()
	n := netns.NewForTest(t)
	var hs [3]*netns.Host
	for i, name := range []string{"a", "mid", "b"} {
		h, err := n.AddHost(name)
		if err != nil {
			t.Fatal(err)
		}
		hs[i] = h
	}
	a, mid, b := hs[0], hs[1], hs[2]
	steps := []func() error{
		func() error {
			return n.Link(a, "eth0", netip.MustParsePrefix("198.18.100.2/24"), mid, "a", netip.MustParsePrefix("198.18.100.1/24"))
		},
		func() error {
			return n.Link(mid, "b", netip.MustParsePrefix("198.18.101.1/24"), b, "eth0", netip.MustParsePrefix("198.18.101.2/24"))
		},
		func() error { return a.AddRoute(netip.Prefix{}, netip.MustParseAddr("198.18.100.1"), "", 0) },
		func() error { return b.AddRoute(netip.Prefix{}, netip.MustParseAddr("198.18.101.1"), "", 0) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			t.Fatal(err)
		}
	}
	ca, err := linkem.ParseConfig(aToB)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := linkem.ParseConfig(bToA)
	if err != nil {
		t.Fatal(err)
	}
	tl, err := linkem.AttachTUN(mid.NS, "a", "b", ca, cb)
	if err != nil {
		t.Fatal(err)
	}
	n.OnClose(func() { tl.Close() })
	sock := func(h *netns.Host, ip netip.Addr) *net.UDPConn {
		var c *net.UDPConn
		if err := h.Do(func() (err error) {
			c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 9000)))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		c.SetReadBuffer(4 << 20)
		t.Cleanup(func() { c.Close() })
		return c
	}
	return tl, sock(a, addrA), sock(b, addrB)
}

type rx struct {
	seq    uint64
	sent   int64
	oneWay int64
}

// blast sends count datagrams of size bytes from src to dst, one every gap,
// stamped with a sequence number and the send time, and returns what dst received
// until quiet for a second.
func blast(t *testing.T, src, dst *net.UDPConn, to netip.Addr, count, size int, gap time.Duration) []rx {
	t.Helper()
	done := make(chan []rx)
	go func() {
		var v []rx
		buf := make([]byte, 65536)
		for {
			dst.SetReadDeadline(time.Now().Add(time.Second))
			n, _, err := dst.ReadFromUDPAddrPort(buf)
			if err != nil {
				done <- v
				return
			}
			if n >= 16 {
				s := int64(binary.BigEndian.Uint64(buf[8:]))
				v = append(v, rx{binary.BigEndian.Uint64(buf), s, mono.Now() - s})
			}
		}
	}()
	buf := make([]byte, max(size, 16))
	start := mono.Now()
	for i := 0; i < count; i++ {
		// Pace against the clock rather than sleeping a fixed gap, so sleep
		// overshoot does not lower the offered rate.
		for d := start + int64(i)*int64(gap) - mono.Now(); d > 0; d = start + int64(i)*int64(gap) - mono.Now() {
			time.Sleep(time.Duration(min(d, int64(time.Millisecond))))
		}
		binary.BigEndian.PutUint64(buf, uint64(i))
		binary.BigEndian.PutUint64(buf[8:], uint64(mono.Now()))
		if _, err := src.WriteToUDPAddrPort(buf, netip.AddrPortFrom(to, 9000)); err != nil {
			t.Fatal(err)
		}
	}
	return <-done
}

func p50(v []rx) (p50, p99 time.Duration) {
	d := make([]int64, len(v))
	for i, r := range v {
		d[i] = r.oneWay
	}
	slices.Sort(d)
	return time.Duration(d[len(d)/2]), time.Duration(d[len(d)*99/100])
}

func TestTUNDelayAndOrder(t *testing.T) {
	tl, a, b := chain(t, "delay=20ms", "delay=5ms,jitter=4ms,seed=2")
	got := blast(t, a, b, addrB, 300, 100, 2*time.Millisecond)
	if len(got) != 300 {
		t.Fatalf("received %d of 300 through a lossless link", len(got))
	}
	m, p99 := p50(got)
	t.Logf("a→b through TUN: one-way p50 %v p99 %v (configured 20ms)", m, p99)
	if m < 19*time.Millisecond || m > 21*time.Millisecond {
		t.Errorf("one-way p50 %v, want 20ms ±1ms", m)
	}
	s := tl.AToB().Stats()
	if s.In != 300 || s.Out != 300 || s.Released != 300 {
		t.Errorf("a→b counters %+v", s)
	}
	// The scheduler's own precision: how late it released packets.
	// Single stalls of a loaded host dominate the mean and the maximum, so the
	// check is on the share of releases more than a millisecond late. Stalls
	// of the host (its other guests: steal) spoil whole runs of 300 here, so
	// up to two more runs are measured and the best counts; a scheduler that
	// misses its times is late for most releases of every run.
	late, released := s.LateOver1ms, s.Released
	t.Logf("scheduler lateness: mean %v, max %v, %d of %d over 1ms", s.MeanLate(), time.Duration(s.LateMax), late, released)
	for try := 0; try < 2 && late > released/10; try++ {
		before := tl.AToB().Stats()
		if again := blast(t, a, b, addrB, 300, 100, 2*time.Millisecond); len(again) != 300 {
			t.Fatalf("received %d of 300 through a lossless link", len(again))
		}
		after := tl.AToB().Stats()
		l, r := after.LateOver1ms-before.LateOver1ms, after.Released-before.Released
		t.Logf("scheduler lateness, run %d: %d of %d over 1ms", try+2, l, r)
		if l*released < late*r {
			late, released = l, r
		}
	}
	if late > released/10 {
		t.Errorf("%d of %d releases over 1ms late in the best run", late, released)
	}
	// Jitter without reordering: the order survives and no packet beats delay-jitter.
	back := blast(t, b, a, addrA, 1000, 100, 500*time.Microsecond)
	if len(back) != 1000 {
		t.Fatalf("received %d of 1000 b→a", len(back))
	}
	for i := 1; i < len(back); i++ {
		if back[i].seq < back[i-1].seq {
			t.Fatalf("b→a reordered: %d after %d", back[i].seq, back[i-1].seq)
		}
	}
	lo := slices.MinFunc(back, func(x, y rx) int { return int(x.oneWay - y.oneWay) })
	mb, p99b := p50(back)
	t.Logf("b→a jitter 5ms±4ms no reorder: min %v p50 %v p99 %v", time.Duration(lo.oneWay), mb, p99b)
	if lo.oneWay < int64(time.Millisecond) {
		t.Errorf("b→a packet delayed only %v", time.Duration(lo.oneWay))
	}
}

func TestTUNLossAndOutage(t *testing.T) {
	tl, a, b := chain(t, "loss=5%,outage=1s-1.5s,seed=4", "")
	start := tl.AToB().Start()
	const count = 2000 // 2 s at 1 kpps
	got := blast(t, a, b, addrB, count, 100, time.Millisecond)
	s := tl.AToB().Stats()
	// A packet is stamped before it is written; the link reads it from the TUN
	// a moment later and judges it by that time. So a packet stamped just before
	// the window's end may reach the link after it and cross. Those within
	// edgeSlack of the end are only logged; one stamped well inside must not cross.
	const edgeSlack = 5 * time.Millisecond
	for _, r := range got {
		rel := r.sent - start
		switch {
		case rel >= int64(time.Second) && rel < int64(1500*time.Millisecond-edgeSlack):
			t.Errorf("packet %d sent %v after start crossed the outage", r.seq, time.Duration(rel))
		case rel >= int64(1500*time.Millisecond-edgeSlack) && rel < int64(1500*time.Millisecond):
			t.Logf("packet %d sent %v after start reached the link after the outage", r.seq, time.Duration(rel))
		}
	}
	outside := float64(count) - float64(s.DropOutage)
	loss := float64(s.DropLoss) / outside
	t.Logf("received %d of %d; outage drops %d (window 500 ms at 1 kpps), loss %.2f%% of the rest", len(got), count, s.DropOutage, loss*100)
	// The sender catches up after a stall of the host, so a stall at an edge
	// of the window moves a few packets across it: ±10%.
	if s.DropOutage < 450 || s.DropOutage > 550 {
		t.Errorf("outage drops %d, want about 500", s.DropOutage)
	}
	if math.Abs(loss-0.05) > 0.025 {
		t.Errorf("loss %.3f, want 5%%", loss)
	}
	if uint64(len(got)) != s.Out || s.In != count {
		t.Errorf("received %d, counters %+v", len(got), s)
	}
}

func TestTUNRate(t *testing.T) {
	tl, a, b := chain(t, "rate=4mbit,queue=50ms", "")
	const size = 972                                           // 1000-byte IP packets
	got := blast(t, a, b, addrB, 2000, size, time.Millisecond) // 8 Mbit/s offered for 2 s
	if len(got) < 100 {
		t.Fatalf("received %d", len(got))
	}
	first, last := got[0].sent+got[0].oneWay, got[len(got)-1].sent+got[len(got)-1].oneWay
	rate := float64((len(got)-1)*1000*8) / (float64(last-first) / 1e9)
	_, p99 := p50(got)
	ows := make([]int64, len(got))
	for i, r := range got {
		ows[i] = r.oneWay
	}
	slices.Sort(ows)
	p90 := time.Duration(ows[len(ows)*90/100])
	s := tl.AToB().Stats()
	t.Logf("throughput %.3f Mbit/s (configured 4), one-way p90 %v p99 %v max %v, max queue wait %v, tail drops %d, release lateness mean %v",
		rate/1e6, p90, p99, time.Duration(ows[len(ows)-1]), time.Duration(s.QueueDelayMax), s.DropQueue, s.MeanLate())
	if math.Abs(rate-4e6)/4e6 > 0.05 {
		t.Errorf("throughput %.0f bit/s, want 4 Mbit/s ±5%%", rate)
	}
	// The emulator's accounting is exact; the measured delay adds one 2 ms
	// serialisation and the host's scheduling noise, hence a percentile.
	if time.Duration(s.QueueDelayMax) > 50*time.Millisecond || p90 > 57*time.Millisecond {
		t.Errorf("delay above the 50 ms queue: wait %v one-way p90 %v", time.Duration(s.QueueDelayMax), p90)
	}
	if s.DropQueue == 0 {
		t.Error("no tail drops at twice the rate")
	}
}

func TestTUNBadInput(t *testing.T) {
	n := netns.NewForTest(t)
	h, err := n.AddHost("solo")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := linkem.AttachTUN(h.NS, "lo", "nope", linkem.Config{}, linkem.Config{}); err == nil { // fails half-way
		t.Error("missing interface accepted")
	}
	if _, err := linkem.AttachTUN(n.Prefix()+"absent", "lo", "lo", linkem.Config{}, linkem.Config{}); err == nil {
		t.Error("missing namespace accepted")
	}
	if _, err := linkem.AttachTUN(h.NS, "lo", "lo", linkem.Config{Loss: -1}, linkem.Config{}); err == nil {
		t.Error("bad config accepted")
	}
	out, err := h.Command("ip", "-o", "link").CombinedOutput()
	if err != nil || strings.Contains(string(out), "lk-") {
		t.Errorf("failed attach left devices: %v %s", err, out)
	}
	out, _ = h.Command("ip", "rule").CombinedOutput()
	if strings.Contains(string(out), "iif") {
		t.Errorf("failed attach left rules: %s", out)
	}
}
