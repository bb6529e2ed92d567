package gateway

import (
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/pkg/metrics"
)

func testConfig() Config {
	return Config{LAN: "lan0", TUN: "gwtun0", MTU: 1400, TUNAddress: netip.MustParsePrefix("169.254.82.65/32"),
		Mark: 0x5241, MarkMask: 0xffff, KeepMark: 0x10000, Table: 21057, RulePriority: 5240, MaxRules: 2}
}

func testCounters() Counters {
	return Counters{DestRules: &metrics.Counter{}, RulesFull: &metrics.Counter{}, RuleErrors: &metrics.Counter{}}
}

// open makes a gateway in h's namespace and sets it up.
func open(t *testing.T, h *netns.Host, m Counters) (*Gateway, SetupInfo) {
	t.Helper()
	var g *Gateway
	if err := h.Do(func() (err error) {
		g, err = Open(testConfig(), m, slog.New(slog.NewTextHandler(io.Discard, nil)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	info, err := g.Setup(Steering{
		UDPPorts: [][2]uint16{{27015, 27020}, {50000, 50010}},
		Prefixes: []netip.Prefix{netip.MustParsePrefix("198.18.50.7/24"), netip.MustParsePrefix("2001:db8::/32")},
	}, []netip.AddrPort{netip.MustParseAddrPort("198.18.41.2:9000"), netip.MustParseAddrPort("198.18.41.3:0")})
	if err != nil {
		g.Close()
		t.Fatal(err)
	}
	return g, info
}

func show(t *testing.T, h *netns.Host, args ...string) string {
	t.Helper()
	out, err := h.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestSetupRulesAndClose installs the kernel state in a namespace of its own,
// changes flow and destination rules, and removes it all again; a second run
// after a crash (nothing removed) starts clean.
func TestSetupRulesAndClose(t *testing.T) {
	n := netns.NewForTest(t)
	h, err := n.AddHost("gw")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Link(h, "lan0", netip.MustParsePrefix("198.18.201.1/24"), h, "lan1", netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
	m := testCounters()
	g, info := open(t, h, m)
	// Ports below the ephemeral range go into the eBPF table; a range
	// reaching into it is matched by a rule.
	if info.BPFUDPPorts != 6 || info.DestPortRules != 1 {
		t.Fatalf("setup info %+v", info)
	}
	rules := show(t, h, "ip", "rule", "show")
	for _, want := range []string{
		"5241:	from all fwmark 0x5241/0xffff iif lan0 lookup 21057",
		"5242:	from all iif lan0 ipproto udp dport 50000-50010 lookup 21057",
		"5242:	from all to 198.18.50.0/24 iif lan0 ipproto udp lookup 21057",
		"5242:	from all to 198.18.41.2 iif lan0 ipproto udp dport 9000 lookup 21057",
	} {
		if !strings.Contains(rules, want) {
			t.Errorf("missing %q in\n%s", want, rules)
		}
	}
	if strings.Contains(rules, "198.18.41.3") || strings.Contains(rules, "2001:db8") {
		t.Errorf("a portless destination or an IPv6 prefix got a rule:\n%s", rules)
	}
	if link := show(t, h, "ip", "link", "show", "gwtun0"); !strings.Contains(link, "mtu 1400") || !strings.Contains(link, "UP") {
		t.Errorf("TUN device: %s", link)
	}
	if route := show(t, h, "ip", "route", "show", "table", "21057"); !strings.Contains(route, "default dev gwtun0") {
		t.Errorf("table 21057: %s", route)
	}
	if fwd := show(t, h, "sysctl", "-n", "net.ipv4.ip_forward"); strings.TrimSpace(fwd) != "1" {
		t.Errorf("ip_forward %q", fwd)
	}

	// Flow rules: bounded by MaxRules, never for port 65535.
	f1 := Flow{netip.MustParseAddrPort("198.18.201.2:4000"), netip.MustParseAddrPort("198.18.41.2:27015")}
	f2 := Flow{netip.MustParseAddrPort("198.18.201.2:4001"), netip.MustParseAddrPort("198.18.41.2:27015")}
	f3 := Flow{netip.MustParseAddrPort("198.18.201.2:4002"), netip.MustParseAddrPort("198.18.41.2:27015")}
	if !g.AddFlowRule(f1) || !g.AddFlowRule(f1) || !g.AddFlowRule(f2) {
		t.Fatal("flow rules within the bound refused")
	}
	if g.AddFlowRule(f3) || m.RulesFull.Load() != 1 {
		t.Fatalf("a third flow rule past max_rules 2 (rules_full %d)", m.RulesFull.Load())
	}
	if g.AddFlowRule(Flow{netip.MustParseAddrPort("198.18.201.2:65535"), f1.Server}) {
		t.Fatal("a rule for port 65535")
	}
	rules = show(t, h, "ip", "rule", "show")
	if want := "5240:	from 198.18.201.2 to 198.18.41.2 iif lan0 ipproto udp sport 4000 dport 27015 lookup main"; !strings.Contains(rules, want) {
		t.Errorf("missing %q in\n%s", want, rules)
	}
	g.DelFlowRule(f1)
	if !g.AddFlowRule(f3) {
		t.Fatal("a freed flow rule slot not reused")
	}
	if rules = show(t, h, "ip", "rule", "show"); strings.Contains(rules, "sport 4000 ") {
		t.Errorf("deleted flow rule still there:\n%s", rules)
	}

	// Destination rules follow the learned list.
	g.SyncDestRules([]netip.AddrPort{netip.MustParseAddrPort("198.18.41.9:3074")})
	rules = show(t, h, "ip", "rule", "show")
	if strings.Contains(rules, "dport 9000") || !strings.Contains(rules, "to 198.18.41.9 iif lan0 ipproto udp dport 3074 lookup 21057") {
		t.Errorf("destination rules not in step:\n%s", rules)
	}
	if m.DestRules.Load() != 2 || m.RuleErrors.Load() != 0 {
		t.Errorf("dest_rules %d rule_errors %d", m.DestRules.Load(), m.RuleErrors.Load())
	}

	g.Close()
	assertClean(t, h, "0")

	// A crashed run leaves everything behind; the next one removes it first.
	crashed, _ := open(t, h, testCounters())
	crashed.AddFlowRule(f1)
	crashed.tun.Close()
	crashed.dp.Close()
	crashed.nc.Close()
	g, _ = open(t, h, testCounters())
	if got := strings.Count(show(t, h, "ip", "rule", "show"), "fwmark 0x5241/0xffff"); got != 1 {
		t.Errorf("%d mark rules after restart, want 1", got)
	}
	if strings.Contains(show(t, h, "ip", "rule", "show"), "sport 4000 ") {
		t.Error("the crashed run's flow rule survived the restart")
	}
	g.Close()
	// ip_forward was 1 when this run started (the crashed one set it).
	assertClean(t, h, "1")
}

func assertClean(t *testing.T, h *netns.Host, forward string) {
	t.Helper()
	rules := show(t, h, "ip", "rule", "show")
	for _, p := range []string{"5240:", "5241:", "5242:", "21057"} {
		if strings.Contains(rules, p) {
			t.Errorf("rule %s left after Close:\n%s", p, rules)
		}
	}
	if out, err := h.Command("ip", "link", "show", "gwtun0").CombinedOutput(); err == nil {
		t.Errorf("TUN device left after Close: %s", out)
	}
	if fwd := show(t, h, "sysctl", "-n", "net.ipv4.ip_forward"); strings.TrimSpace(fwd) != forward {
		t.Errorf("ip_forward not restored: %q", fwd)
	}
}
