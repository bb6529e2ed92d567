package netcfg_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/pkg/netcfg"
)

// TestRulesAndRoutes installs, lists and removes rules and routes in a
// namespace of its own, from goroutines that are not in that namespace.
func TestRulesAndRoutes(t *testing.T) {
	n := netns.NewForTest(t)
	h, err := n.AddHost("cfg")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Link(h, "a0", netip.MustParsePrefix("198.18.200.1/24"), h, "b0", netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
	var nc *netcfg.Net
	if err := h.Do(func() (err error) { nc, err = netcfg.Open(); return err }); err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	if err := nc.SetDefaultRoute(777, "a0"); err != nil {
		t.Fatal(err)
	}
	rules := []netcfg.Rule{
		{Priority: 900, Table: 777, Iif: "a0", Mark: 0x10, Mask: 0xff},
		{Priority: 901, Table: 777, Iif: "a0", Proto: 17, DportLo: 50000, DportHi: 65535},
		{Priority: 902, Table: 254, Iif: "a0", Proto: 17, Src: netip.MustParsePrefix("198.18.1.2/32"), SportLo: 4000,
			Dst: netip.MustParsePrefix("198.18.41.2/32"), DportLo: 27015},
	}
	for _, r := range rules {
		if err := nc.AddRule(r); err != nil {
			t.Fatal(err)
		}
		if err := nc.AddRule(r); err != nil {
			t.Fatalf("adding a rule twice: %v", err)
		}
	}
	out, err := h.Command("ip", "rule", "show").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"900:	from all fwmark 0x10/0xff iif a0 lookup 777",
		"901:	from all iif a0 ipproto udp dport 50000-65534 lookup 777",
		"902:	from 198.18.1.2 to 198.18.41.2 iif a0 ipproto udp sport 4000 dport 27015 lookup main",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	ours := func(prio, table int) bool { return prio >= 900 && prio <= 902 }
	if got, _ := nc.ListRules(ours); len(got) != 3 {
		t.Errorf("ListRules: %d rules, want 3", len(got))
	}
	if err := nc.DelRule(rules[2]); err != nil {
		t.Fatal(err)
	}
	if err := nc.DelRule(rules[2]); err != nil {
		t.Fatalf("deleting a rule twice: %v", err)
	}
	if n, err := nc.DelRulesWhere(ours); err != nil || n != 2 {
		t.Fatalf("DelRulesWhere removed %d: %v", n, err)
	}
	if err := nc.FlushTable(777); err != nil {
		t.Fatal(err)
	}
	out, _ = h.Command("sh", "-c", "ip rule show; ip route show table 777").CombinedOutput()
	if strings.Contains(string(out), "777") || strings.Contains(string(out), "a0") {
		t.Errorf("left behind:\n%s", out)
	}
	if err := nc.SetSysctl("net.ipv4.conf.a0.rp_filter", "2"); err != nil {
		t.Fatal(err)
	}
	if v, err := nc.Sysctl("net.ipv4.conf.a0.rp_filter"); err != nil || v != "2" {
		t.Fatalf("sysctl in the namespace: %q %v", v, err)
	}
}
