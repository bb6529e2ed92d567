package detect

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"
)

const testASN = "" +
	"198.51.100.0,198.51.100.255,32590,US,VALVE-CORPORATION\n" +
	"203.0.113.0,203.0.113.255,64500,ZZ,EXAMPLE-CLOUD\n" +
	"192.0.2.0,192.0.2.255,64501,ZZ,EXAMPLE-ISP\n"

type testEnv struct {
	c   *Classifier
	res *fakeResolver
	r   *RDNS
}

func newTestClassifier(t testing.TB, opt Options) *testEnv {
	t.Helper()
	asn, err := ImportASN("test.csv", strings.NewReader(testASN))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Merge(mustShipped(t), rdnsConfig(t))
	res := &fakeResolver{names: map[string][]string{"192.0.2.9": {"sdr-x.valve.example."}}}
	r := NewRDNS(cfg.RDNS, res, 64, 16)
	opt.Config, opt.ASN, opt.RDNS = cfg, asn, r
	c, err := NewClassifier(opt)
	if err != nil {
		t.Fatal(err)
	}
	return &testEnv{c, res, r}
}

// drain answers queued rDNS lookups synchronously.
func (e *testEnv) drain() {
	for len(e.r.queue) > 0 {
		e.r.resolve(context.Background(), <-e.r.queue)
	}
}

// gamePackets sends n small packets at 50 pps and returns the last decision
// and the time after it.
func gamePackets(c *Classifier, f FiveTuple, dscp uint8, n int, now int64) (Decision, int64) {
	var d Decision
	for i := 0; i < n; i++ {
		d = c.Classify(f, dscp, 120, now)
		now += int64(20 * time.Millisecond)
	}
	return d, now
}

func TestClassifierEachRule(t *testing.T) {
	e := newTestClassifier(t, Options{})
	now := int64(1e12)
	cases := []struct {
		name  string
		flow  FiveTuple
		dscp  uint8
		rule  string
		app   string
		proxy bool
	}{
		{"port", udp("198.18.0.2:50000", "192.0.2.200:27015"), 0, "port:cs2", "cs2", true},
		{"asn", udp("198.18.0.2:50000", "198.51.100.7:4000"), 0, "asn:AS32590", "valve", true},
		{"dscp first packet", udp("198.18.0.2:50001", "203.0.113.1:4000"), DSCPEF, "dscp:EF", "", true},
		{"dscp cs4", udp("198.18.0.2:50002", "203.0.113.1:4000"), DSCPCS4, "dscp:CS4", "", true},
		{"nothing", udp("198.18.0.2:50003", "203.0.113.1:4000"), DSCPDF, "", "", false},
		{"cs1", udp("198.18.0.2:50004", "203.0.113.1:4000"), DSCPCS1, "", "", false},
		{"af41 neutral", udp("198.18.0.2:50005", "203.0.113.1:4000"), 34, "", "", false},
	}
	for _, tc := range cases {
		d := e.c.Classify(tc.flow, tc.dscp, 100, now)
		if d.Rule != tc.rule || d.App != tc.app || d.Proxy != tc.proxy || d.LC != (tc.rule != "") {
			t.Errorf("%s: %+v, want rule %q app %q proxy %v", tc.name, d, tc.rule, tc.app, tc.proxy)
		}
	}
	d := e.c.Classify(udp("198.18.0.2:50000", "192.0.2.200:27015"), 0, 100, now)
	if d.AppType != "shooter" || d.ExpectedPPS != 64 {
		t.Errorf("port decision lacks the table's type/rate: %+v", d)
	}
}

func TestClassifierPrecedence(t *testing.T) {
	e := newTestClassifier(t, Options{})
	now := int64(1e12)
	teacher := netip.MustParseAddrPort("198.18.9.9:1")
	// Everything below is learned and carries EF, so each case shows the
	// rule above winning over all the rules below it.
	for _, dst := range []string{"198.51.100.7:27015", "198.51.100.7:4000", "192.0.2.9:4000"} {
		e.c.Learned().Learn(ProtoUDP, netip.MustParseAddrPort(dst), teacher, "game", 30, now)
	}
	e.c.Classify(udp("198.18.0.3:1", "192.0.2.9:4001"), 0, 100, now) // queue the PTR lookup
	e.drain()
	now = e.r.now()
	cases := []struct{ dst, rule string }{
		{"198.51.100.7:27015", "port:cs2"},   // port > asn > learned > dscp
		{"198.51.100.7:4000", "asn:AS32590"}, // asn > learned > dscp
		{"192.0.2.9:4000", "learned"},        // learned > rdns > dscp
		{"192.0.2.9:4002", "rdns:valve-sdr"}, // rdns > dscp
		{"192.0.2.10:4000", "dscp:EF"},
	}
	for i, tc := range cases {
		f := udp("198.18.0.4:"+string(rune('1'+i))+"000", tc.dst)
		if d := e.c.Classify(f, DSCPEF, 100, now); d.Rule != tc.rule || !d.Proxy {
			t.Errorf("%s: %+v, want %s proxied", tc.dst, d, tc.rule)
		}
	}
}

func TestAdhocFlowNotProxiedThenLearned(t *testing.T) {
	e := newTestClassifier(t, Options{})
	now := int64(1e12)
	f := udp("198.18.0.5:50000", "203.0.113.50:41234")
	d, now := gamePackets(e.c, f, 0, 1, now)
	if d.LC {
		t.Fatalf("first packet of an unknown flow LC: %+v", d)
	}
	d, now = gamePackets(e.c, f, 0, 100, now) // 2 s at 50 pps
	if !d.LC || d.Rule != "adhoc" || d.Proxy {
		t.Fatalf("after 2 s of game timing: %+v, want adhoc LC without proxy", d)
	}
	if d.AppType != "voip" || d.ExpectedPPS < 45 || d.ExpectedPPS > 55 {
		t.Fatalf("50 pps flow: type %q pps %v", d.AppType, d.ExpectedPPS)
	}
	// The flow itself keeps its verdict and its addresses.
	if d, _ = gamePackets(e.c, f, 0, 1, now); d.Rule != "adhoc" || d.Proxy {
		t.Fatalf("in-flight flow changed to %+v", d)
	}
	// The next session to that server is LC and proxied from packet 1.
	next := udp("198.18.0.5:50001", "203.0.113.50:41234")
	if d = e.c.Classify(next, 0, 120, now); !d.LC || d.Rule != "learned" || !d.Proxy || d.AppType != "voip" {
		t.Fatalf("next session: %+v, want learned and proxied", d)
	}
	// The teaching flow, forgotten (table eviction), is still in flight.
	e.c.Forget(f)
	if d = e.c.Classify(f, 0, 120, now); d.Rule != "learned" || d.Proxy {
		t.Fatalf("teaching flow after eviction: %+v, want learned but not proxied", d)
	}
}

func TestClassifierDSCPMidFlowAndCS1Veto(t *testing.T) {
	e := newTestClassifier(t, Options{})
	now := int64(1e12)
	f := udp("198.18.0.6:50000", "203.0.113.60:4000")
	e.c.Classify(f, 0, 100, now)
	if d := e.c.Classify(f, DSCPEF, 100, now+1); !d.LC || d.Rule != "dscp:EF" || d.Proxy {
		t.Fatalf("EF on a later packet: %+v, want LC, not proxied", d)
	}
	g := udp("198.18.0.6:50001", "203.0.113.61:4000")
	if d, _ := gamePackets(e.c, g, DSCPCS1, 200, now); d.LC {
		t.Fatalf("CS1 flow with game timing flagged: %+v", d)
	}
	if e.c.Learned().Contains(ProtoUDP, g.Dst, now) {
		t.Fatal("CS1 flow's destination learned")
	}
}

func TestClassifierIdleFlowIsNew(t *testing.T) {
	e := newTestClassifier(t, Options{FlowIdle: 10 * time.Second})
	now := int64(1e12)
	f := udp("198.18.0.7:50000", "203.0.113.70:4000")
	e.c.Classify(f, 0, 100, now)
	// Same 5-tuple after the NAT mapping would have expired: a new session,
	// so EF on its first packet makes it proxiable.
	if d := e.c.Classify(f, DSCPEF, 100, now+int64(11*time.Second)); d.Rule != "dscp:EF" || !d.Proxy {
		t.Fatalf("flow after idle: %+v", d)
	}
}

func TestClassifierFlowTableBounded(t *testing.T) {
	e := newTestClassifier(t, Options{MaxFlows: 128})
	for i := 0; i < 1000; i++ {
		e.c.Classify(testFlow(i), 0, 100, int64(i))
	}
	s := e.c.Stats()
	if s.Flows != 128 || s.FlowsEvicted != 1000-128 {
		t.Fatalf("stats %+v", s)
	}
}

func TestOperatorPrefixesInsideACloudAS(t *testing.T) {
	asn, err := ImportASN("t.csv", strings.NewReader(testASN))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig("ops.toml", []byte(`
[[operator]]
name = "fleet-wide"
type = "shooter"
prefixes = ["203.0.113.0/24"]

[[operator]]
name = "fleet-eu"
type = "racing"
prefixes = ["203.0.113.64/26", "2001:db8:5::/48"]
`))
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClassifier(Options{Config: cfg, ASN: asn})
	if err != nil {
		t.Fatal(err)
	}
	for dst, want := range map[string]string{
		"203.0.113.70:4000": "prefix:fleet-eu", "203.0.113.7:4000": "prefix:fleet-wide",
		"[2001:db8:5::9]:4000": "prefix:fleet-eu", "[2001:db8:6::9]:4000": "", "192.0.2.1:4000": "",
	} {
		if d := c.Classify(udp("198.18.0.8:2", dst), 0, 100, 1); d.Rule != want {
			t.Errorf("%s: %q, want %q", dst, d.Rule, want)
		}
	}
	if _, err := ParseConfig("x", []byte("[[operator]]\nname = \"x\"\ntype = \"moba\"\nprefixes = [\"203.0.113.1/24\"]\n")); err == nil {
		t.Fatal("a prefix with host bits set was accepted")
	}
}

func TestOperatorByOwner(t *testing.T) {
	asn, err := ImportASN("t.csv", strings.NewReader(testASN))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig("ops.toml", []byte("[[operator]]\nname = \"cloud-fleet\"\ntype = \"shooter\"\nowners = [\"example-cloud\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClassifier(Options{Config: cfg, ASN: asn})
	if err != nil {
		t.Fatal(err)
	}
	if d := c.Classify(udp("198.18.0.8:1", "203.0.113.9:9"), 0, 100, 1); d.Rule != "asn:AS64500" || d.App != "cloud-fleet" {
		t.Fatalf("owner-named operator: %+v", d)
	}
	cfg.Operators[0].Owners = []string{"NO-SUCH-OWNER"}
	if _, err := NewClassifier(Options{Config: cfg, ASN: asn}); err == nil {
		t.Fatal("an owner matching no AS was accepted")
	}
}

func TestClassifyAllocatesNothing(t *testing.T) {
	e := newTestClassifier(t, Options{MaxFlows: 512})
	now := int64(1e12)
	static := udp("198.18.0.9:50000", "192.0.2.200:27015")
	adhoc := udp("198.18.0.9:50001", "203.0.113.90:4000")
	gamePackets(e.c, adhoc, 0, 200, now) // warm up: learn outside the measurement
	i := 0
	n := testing.AllocsPerRun(10000, func() {
		now += int64(time.Millisecond)
		e.c.Classify(static, 0, 100, now)
		e.c.Classify(adhoc, 0, 100, now)
		e.c.Classify(testFlow(i), DSCPEF, 100, now) // new flows: evictions, rDNS queue
		i++
	})
	if n != 0 {
		t.Fatalf("%v allocs per round", n)
	}
}

func BenchmarkClassifyStaticHit(b *testing.B) {
	e := newTestClassifier(b, Options{})
	f := udp("198.18.0.9:50000", "192.0.2.200:27015")
	now := int64(1e12)
	for b.Loop() {
		now += 1000
		e.c.Classify(f, 0, 100, now)
	}
}

func BenchmarkClassifyAdhocFlow(b *testing.B) {
	e := newTestClassifier(b, Options{})
	f := udp("198.18.0.9:50001", "203.0.113.90:4000")
	now := int64(1e12)
	for b.Loop() {
		now += int64(10 * time.Millisecond)
		e.c.Classify(f, 0, 100, now)
	}
}

// BenchmarkClassifyNewFlows is the worst case: every packet a new flow, so
// every packet runs all first-packet rules and evicts an old flow.
func BenchmarkClassifyNewFlows(b *testing.B) {
	e := newTestClassifier(b, Options{MaxFlows: 4096})
	flows := make([]FiveTuple, 65536)
	for i := range flows {
		flows[i] = testFlow(i)
	}
	now := int64(1e12)
	for i := 0; b.Loop(); i++ {
		now += 1000
		e.c.Classify(flows[i&65535], 0, 100, now)
	}
}
