package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/detect"
	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/router"
)

// TestTransparentASNOperatorFirstPacket: an operator listed in the
// application table only by AS number, with transparent.asn_files naming a
// range file (public CSV layout, one malformed row) that puts the game
// server's network in that AS. A flow to a port in no table is proxied from
// its first packet: the operator's range became a policy rule into the TUN
// device, and the classifier's ASN rule matched.
func TestTransparentASNOperatorFirstPacket(t *testing.T) {
	if app, ok := detectApps(t).Lookup(detect.ProtoUDP, tpAdhocPort, 50000); ok {
		t.Fatalf("port %d is in the app table (%s): pick another", tpAdhocPort, app.Name)
	}
	dir := t.TempDir()
	asnFile := filepath.Join(dir, "ip2asn.csv")
	csv := "range_start,range_end,asn,org\n" +
		"198.18.40.0,198.18.40.255,64497,Proxy Hosting\n" +
		"198.18.41.0,198.18.41.127,64496,Test Games Inc\n" +
		"198.18.41.128,198.18.41.200,64496,Test Games Inc\n" +
		"198.18.42.0,garbage,64498,Broken Row\n" +
		"2001:db8::,2001:db8::ffff,64496,Test Games Inc\n"
	appsFile := filepath.Join(dir, "apps.toml")
	apps := "[[operator]]\nname = \"testgames\"\ntype = \"shooter\"\nasns = [64496]\n"
	for p, text := range map[string]string{asnFile: csv, appsFile: apps} {
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	keys := fmt.Sprintf("asn_files = [%q]\napps_file = %q\n", asnFile, appsFile)
	b := startTransparentBedKeys(t, netns.GameOptions{Uplinks: 2}, nil, true, keys, "")

	rules, _ := b.g.Router.Command("ip", "rule", "show").CombinedOutput()
	for _, p := range []string{"198.18.41.0/25", "198.18.41.128/26", "198.18.41.192/29", "198.18.41.200"} {
		want := fmt.Sprintf("to %s iif lan0 ipproto udp lookup %d", p, router.DefaultTable)
		if !strings.Contains(string(rules), want) {
			t.Errorf("no rule %q for the operator's ranges:\n%s", want, rules)
		}
	}
	if strings.Contains(string(rules), "198.18.40.0/24") {
		t.Errorf("a rule for an AS that is no operator:\n%s", rules)
	}
	if v := b.metric("router_transparent_asn_rows_skipped_total"); v != 1 {
		t.Errorf("router_transparent_asn_rows_skipped_total = %v, want 1 (the malformed row)", v)
	}

	server := netip.AddrPortFrom(netns.ServerAddr, tpAdhocPort)
	const n = 50
	srv := newEchoServer(t, b.g.Server, tpAdhocPort, n)
	cl := newGameClient(t, b.g, server, n)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl.send(ctx, server, n, 60)
	time.Sleep(300 * time.Millisecond)
	src0, ok := srv.sourceOf(0)
	if !ok {
		t.Fatal("the flow's first packet did not arrive")
	}
	if src0.Addr() != netns.ProxyAddr {
		t.Errorf("first packet came from %v, want the proxy %v", src0, netns.ProxyAddr)
	}
	for a, k := range srv.sources() {
		if a != netns.ProxyAddr {
			t.Errorf("%d packets from %v, not through the proxy", k, a)
		}
	}
	if got, _, _ := cl.got.snapshot(); got < n*9/10 {
		t.Errorf("%d/%d replies", got, n)
	}
	if v := b.metric("router_transparent_flows_proxied_total"); v != 1 {
		t.Errorf("%v flows proxied, want 1", v)
	}
	// /status names the operator and the rule that matched.
	if ss := b.r.Status().Sessions; len(ss) != 1 || ss[0].App != "testgames" || ss[0].Rule != "asn:AS64496" {
		t.Errorf("status sessions %+v, want one of app testgames by rule asn:AS64496", ss)
	}
}
