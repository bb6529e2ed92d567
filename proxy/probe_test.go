package proxy

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/wire"
)

// control sends a control message of type typ on the fake router's session and
// returns the body of the first answer of type want.
func (f *fakeRouter) control(t testing.TB, to netip.AddrPort, typ wire.Type, body []byte, want wire.Type) []byte {
	t.Helper()
	buf := make([]byte, wire.MaxDatagram)
	dg, err := f.send.SealControl(buf, typ, body, mono.Now())
	if err != nil {
		t.Fatal(err)
	}
	f.sendTo(t, dg, to)
	for {
		b := f.sock.expect(t, "answer to "+typ.String())
		var h wire.Header
		off, err := wire.Parse(b, &h, nil)
		if err != nil {
			t.Fatalf("answer does not parse: %v", err)
		}
		got, err := f.recv.Receive(b, &h, off, mono.Now(), nil)
		if err != nil {
			t.Fatalf("answer does not open: %v", err)
		}
		f.send.Heard(mono.Now())
		if h.Type == want {
			return got
		}
	}
}

func (f *fakeRouter) probe(t testing.TB, to, target netip.AddrPort, seq uint32) wire.ProbeReply {
	t.Helper()
	p := wire.Probe{Seq: seq, SentAt: mono.Now(), Target: target}
	var pb [wire.ProbeLen]byte
	body := f.control(t, to, wire.TypeProbe, p.Put(pb[:]), wire.TypeProbeReply)
	var rep wire.ProbeReply
	if err := wire.ParseProbeReply(body, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Probe != p {
		t.Fatalf("probe reply echoes %+v, want %+v", rep.Probe, p)
	}
	return rep
}

// TestProbeAnswers asks a proxy about a server in the client's allowlist (unknown
// at first, then the measured RTT) and about one outside it (not allowed, and
// never measured), over the router's control session.
func TestProbeAnswers(t *testing.T) {
	server := newPeer(t)
	p := startTestProxy(t, server.addr().String(), "")
	measured := make(chan netip.Addr, 16)
	p.probes.setMeasure(func(_ context.Context, a netip.Addr) (time.Duration, error) {
		measured <- a
		return 7 * time.Millisecond, nil
	})
	r := newFakeRouter(t, goodKey, netip.AddrPort{}) // a control session: no target

	rep := r.probe(t, p.Addr(), server.addr(), 1)
	if !rep.Allowed || rep.ServerRTT != 0 || rep.Overloaded {
		t.Errorf("first probe: %+v; want allowed, RTT unknown (0), not overloaded", rep)
	}
	select {
	case a := <-measured:
		if a != server.addr().Addr() {
			t.Errorf("measured %v, want %v", a, server.addr().Addr())
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the probed server was never measured")
	}
	var got wire.ProbeReply
	deadline := time.Now().Add(2 * time.Second)
	for seq := uint32(2); got.ServerRTT == 0 && time.Now().Before(deadline); seq++ {
		got = r.probe(t, p.Addr(), server.addr(), seq)
		time.Sleep(5 * time.Millisecond)
	}
	if !got.Allowed || got.ServerRTT != 7*time.Millisecond {
		t.Errorf("probe after the measurement: %+v; want allowed, RTT 7ms", got)
	}

	forbidden := netip.MustParseAddrPort("198.18.99.1:27015")
	rep = r.probe(t, p.Addr(), forbidden, 100)
	if rep.Allowed || rep.ServerRTT != 0 {
		t.Errorf("probe for a server outside the allowlist: %+v; want not allowed, RTT 0", rep)
	}
	select {
	case a := <-measured:
		t.Errorf("measured %v: a fresh measurement is not renewed, and a forbidden target is never measured", a)
	case <-time.After(100 * time.Millisecond):
	}
	if c := counter(p, "proxy_probes_total"); c < 3 {
		t.Errorf("proxy_probes_total = %v, want at least 3", c)
	}
}

// TestProberTable checks the RTT table itself: bounded (least recently asked
// target forgotten first), renewed after the TTL, and an old value no longer
// served once it is twice the TTL old.
func TestProberTable(t *testing.T) {
	cfg := &Config{ProbeTTL: durationOf(time.Second), ProbeMaxTargets: 2}
	p := newProber(cfg, quietLog(), metrics.NewRegistry())
	defer p.close()
	calls := make(chan netip.Addr, 16)
	p.setMeasure(func(_ context.Context, a netip.Addr) (time.Duration, error) {
		calls <- a
		return 3 * time.Millisecond, nil
	})
	a, b, c := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.3")
	now := mono.Now()
	wait := func(want netip.Addr) {
		t.Helper()
		select {
		case got := <-calls:
			if got != want {
				t.Fatalf("measured %v, want %v", got, want)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("%v never measured", want)
		}
		waitUntil(t, func() bool { p.mu.Lock(); defer p.mu.Unlock(); return !p.targets[want].pending })
	}
	if rtt := p.lookup(a, now); rtt != 0 {
		t.Fatalf("unmeasured target: RTT %v, want 0", rtt)
	}
	wait(a)
	measuredAt := p.targets[a].measuredAt
	if rtt := p.lookup(a, measuredAt+1); rtt != 3*time.Millisecond {
		t.Fatalf("measured target: RTT %v, want 3ms", rtt)
	}
	p.lookup(b, measuredAt+2)
	wait(b)
	p.lookup(a, measuredAt+3) // a is now the most recently asked
	p.lookup(c, measuredAt+4) // the table is full: b goes
	wait(c)
	p.mu.Lock()
	_, hasA := p.targets[a]
	_, hasB := p.targets[b]
	n := len(p.targets)
	p.mu.Unlock()
	if n != 2 || !hasA || hasB || p.evicted.Load() != 1 {
		t.Fatalf("after eviction: %d targets (a: %v, b: %v), evicted %d; want a and c, 1 evicted", n, hasA, hasB, p.evicted.Load())
	}
	// Past the TTL the old value is still served while it is renewed...
	later := measuredAt + int64(1500*time.Millisecond)
	if rtt := p.lookup(a, later); rtt != 3*time.Millisecond {
		t.Errorf("within twice the TTL: RTT %v, want the last value 3ms", rtt)
	}
	wait(a)
	// ...but a value more than twice the TTL old is not.
	p.mu.Lock()
	p.targets[c].measuredAt -= int64(3 * time.Second)
	p.targets[c].triedAt = later // a renewal is already under way
	p.mu.Unlock()
	if rtt := p.lookup(c, later); rtt != 0 {
		t.Errorf("measurement 3 TTLs old: RTT %v, want 0 (unknown)", rtt)
	}
}

// TestICMPRTT measures the RTT to the loopback address for real. It needs a ping
// socket (net.ipv4.ping_group_range) or root.
func TestICMPRTT(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rtt, err := icmpRTT(ctx, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		if errors.Is(err, os.ErrPermission) || strings.Contains(err.Error(), "permitted") || strings.Contains(err.Error(), "denied") {
			t.Skipf("no ICMP socket allowed here: %v", err)
		}
		t.Fatal(err)
	}
	if rtt <= 0 || rtt > time.Second {
		t.Fatalf("loopback RTT %v", rtt)
	}
	t.Logf("loopback RTT %v", rtt)
}

func TestProbeConfig(t *testing.T) {
	for _, tc := range []struct{ extra, want string }{
		{`probe_ttl = "10ms"`, "probe_ttl"},
		{`probe_max_targets = -1`, "probe_max_targets"},
		{`overload_cpu = 1.5`, "overload_cpu"},
		{`overload_latency = "-1ms"`, "overload_latency"},
	} {
		_, err := ParseConfig("proxy.toml", tc.extra+`
[[client]]
id = "gamer"
key = "`+goodKey.String()+`"
allow = ["198.18.41.2"]
`)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one naming %s", tc.extra, err, tc.want)
		}
	}
	c, err := ParseConfig("proxy.toml", `
[[client]]
id = "gamer"
key = "`+goodKey.String()+`"
allow = ["198.18.41.2"]
`)
	if err != nil {
		t.Fatal(err)
	}
	if c.ProbeTTL.Duration != DefaultProbeTTL || c.ProbeMaxTargets != DefaultProbeMaxTargets ||
		c.OverloadLatency.Duration != DefaultOverloadLatency || c.OverloadCPU != DefaultOverloadCPU {
		t.Errorf("defaults not applied: %+v", c)
	}
}

func waitUntil(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(time.Millisecond)
	}
}
