package router

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/songgao/water"

	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/nat"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

func TestTransparentConfig(t *testing.T) {
	base := `
client_id = "gamer"
key = "%s"
proxy = "198.18.40.2:4500"
[[uplink]]
source = "198.18.10.2"
[transparent]
enabled = true
%s
`
	key := wire.Key{1}
	c, err := ParseConfig("r.toml", fmt.Sprintf(base, key, `lan = "lan0"`))
	if err != nil {
		t.Fatal(err)
	}
	tc := c.Transparent
	if tc.TUN != DefaultTUN || tc.Mark != DefaultMark || tc.MarkMask != DefaultMarkMask || tc.Table != DefaultTable ||
		tc.RulePriority != DefaultRulePriority || tc.PollInterval.Duration != DefaultPollInterval || tc.MTU != DefaultTUNMTU {
		t.Fatalf("defaults not applied: %+v", tc)
	}
	for _, bad := range []struct{ text, key string }{
		{``, "transparent.lan"},
		{"lan = \"lan0\"\nmark = 0x10000", "transparent.mark"},
		{"lan = \"lan0\"\ntable = 254", "transparent.table"},
		{"lan = \"lan0\"\nudp_ports = [\"9-3\"]", "transparent.udp_ports.0"},
		{"lan = \"lan0\"\nrule_priority = 32765", "transparent.rule_priority"},
		{"lan = \"lan0\"\npoll_interval = \"1ms\"", "transparent.poll_interval"},
		{"lan = \"a-very-long-interface-name\"", "transparent.tun"},
	} {
		_, err := ParseConfig("r.toml", fmt.Sprintf(base, key, bad.text))
		if err == nil || !strings.Contains(err.Error(), bad.key) {
			t.Errorf("%q: got %v, want an error naming %s", bad.text, err, bad.key)
		}
	}
}

// newTestTransparent builds a router with transparent mode's userspace side
// only: the TUN device is /dev/null, so writes succeed and go nowhere.
func newTestTransparent(t testing.TB) (*Router, *transparent) {
	t.Helper()
	key := wire.Key{7}
	proxyAddr, server := sink(t), sink(t)
	r := newQuietRouter(t, twoUplinkConfig(key, proxyAddr, server, "[transparent]\nlan = \"lan0\"\n"))
	r.cfg.Transparent.Enabled = true // after New: no kernel setup
	tp, err := newTransparent(r)
	if err != nil {
		t.Fatal(err)
	}
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { null.Close() })
	tp.tun = &water.Interface{ReadWriteCloser: null}
	r.tp = tp
	return r, tp
}

var (
	tClient = netip.MustParseAddrPort("198.18.1.2:40001")
	tServer = netip.MustParseAddrPort("198.18.41.2:27020") // CS2's port range: LC by the app table
)

// TestTransparentPathsDoNotAllocate: a captured packet of a proxied flow is
// parsed, looked up and sent on the uplinks, and a reply from the proxy is
// authenticated, rebuilt as the server's packet and written to the TUN device,
// without allocating.
func TestTransparentPathsDoNotAllocate(t *testing.T) {
	r, tp := newTestTransparent(t)
	buf := make([]byte, 2048)
	n, _ := nat.Build(buf, tClient, tServer, 1, make([]byte, 100))
	pkt := buf[:n]

	tp.fromLAN(pkt, mono.Now())
	rs, ok := tp.flows.Peek(flowKey{tClient, tServer})
	if !ok {
		t.Fatalf("the first packet of an LC flow made no session (passed %d, not LC %d)", tp.m.passed.Load(), tp.m.notLC.Load())
	}
	if rs.client != tClient || rs.target != tServer {
		t.Fatalf("session %v → %v", rs.client, rs.target)
	}
	const runs, warmup = 1000, 2048
	for i := 0; i < warmup; i++ {
		tp.fromLAN(pkt, mono.Now())
	}
	sent := r.uplinks[0].sent.Load()
	if a := testing.AllocsPerRun(runs, func() { tp.fromLAN(pkt, mono.Now()) }); a != 0 {
		t.Errorf("TUN read → classify → send: %v allocations per packet", a)
	}
	if got := r.uplinks[0].sent.Load() - sent; got != runs+1 {
		t.Fatalf("uplink 0 sent %d datagrams, want %d", got, runs+1)
	}

	hello, _ := rs.send.Hello()
	psend, _, err := wire.DeriveKeys(&r.key, &hello.Salt, rs.id, wire.RoleServer)
	if err != nil {
		t.Fatal(err)
	}
	proxySide, err := tunnel.NewSender(psend, rs.id, raic.Params{Scheme: raic.SchemeCopy, K: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dgs := make([][]byte, warmup+runs+1)
	for i := range dgs {
		_, d, err := proxySide.Seal(make([]byte, 100), mono.Now())
		if err != nil {
			t.Fatal(err)
		}
		dgs[i] = append([]byte(nil), d[0]...)
	}
	var h wire.Header
	for i := 0; i < warmup; i++ {
		r.fromProxy(r.uplinks[0], dgs[i], &h, mono.Now())
	}
	i := warmup
	replies := tp.m.replies.Load()
	if a := testing.AllocsPerRun(runs, func() {
		r.fromProxy(r.uplinks[0], dgs[i], &h, mono.Now())
		i++
	}); a != 0 {
		t.Errorf("reply → rebuild → TUN write: %v allocations per packet", a)
	}
	if got := tp.m.replies.Load() - replies; got != runs+1 {
		t.Fatalf("%d replies written to the TUN, want %d", got, runs+1)
	}
}

// TestTransparentCountsBadPackets: malformed packets are counted and dropped;
// packets that are not UDP go back to the kernel; a flow no rule finds LC is
// not proxied.
func TestTransparentCountsBadPackets(t *testing.T) {
	_, tp := newTestTransparent(t)
	buf := make([]byte, 2048)
	n, _ := nat.Build(buf, tClient, tServer, 1, make([]byte, 100))
	now := mono.Now()
	tp.fromLAN(buf[:10], now)
	tp.fromLAN(append([]byte{0x60}, buf[1:n]...), now)
	if got := tp.m.bad.Load(); got != 2 {
		t.Fatalf("bad = %d, want 2", got)
	}
	tcp := append([]byte(nil), buf[:n]...)
	tcp[9] = nat.ProtoTCP
	tp.fromLAN(tcp, now)
	if got := tp.m.reinjected.Load(); got != 1 {
		t.Fatalf("reinjected = %d, want 1", got)
	}
	other := netip.MustParseAddrPort("198.18.41.2:45123")
	n, _ = nat.Build(buf, tClient, other, 1, make([]byte, 100))
	tp.fromLAN(buf[:n], now)
	if _, ok := tp.flows.Peek(flowKey{tClient, other}); ok || tp.m.notLC.Load() != 1 || tp.m.reinjected.Load() != 2 {
		t.Fatalf("a flow to an unknown port was proxied (not LC %d, reinjected %d)", tp.m.notLC.Load(), tp.m.reinjected.Load())
	}
	if tp.m.proxied.Load() != 0 {
		t.Fatal("nothing should be proxied")
	}
}

// BenchmarkTransparentClassify is the userspace classification cost of one
// captured packet of a known flow: IPv4/UDP parse and flow-table lookup (what
// the TUN path does per packet), and the full rule evaluation the classifier
// does for each packet it is shown.
func BenchmarkTransparentClassify(b *testing.B) {
	_, tp := newTestTransparent(b)
	buf := make([]byte, 2048)
	n, _ := nat.Build(buf, tClient, tServer, 1, make([]byte, 100))
	pkt := buf[:n]
	tp.fromLAN(pkt, mono.Now())
	b.Run("parse+lookup", func(b *testing.B) {
		var p nat.Packet
		b.ReportAllocs()
		for b.Loop() {
			nat.Parse(pkt, &p)
			tp.flows.Get(flowKey{p.Src, p.Dst}, 1)
		}
	})
	b.Run("detect.Classify", func(b *testing.B) {
		var p nat.Packet
		nat.Parse(pkt, &p)
		now := mono.Now()
		b.ReportAllocs()
		for b.Loop() {
			now += 16e6
			tp.cls.Classify(detectTuple(&p), p.DSCP, p.Len, now)
		}
	})
	b.Run("fromLAN(parse+lookup+seal+send 2 uplinks)", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			tp.fromLAN(pkt, mono.Now())
		}
	})
}
