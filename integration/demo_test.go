package integration

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/integration/testbed"
	"github.com/raicnet/raic/proxy"
)

// TestMain turns the test binary into a child program when a test started it
// as one inside a namespace (a program whose sockets must open there), and
// runs the tests otherwise.
func TestMain(m *testing.M) {
	testbed.ProxyChild()
	children := map[string]func(string) error{
		"RAIC_CHAIN_HOP":         hopChild,
		"RAIC_FAILOVER_PROXY":    proxyUntilKilled,
		"RAIC_TRANSPARENT_PROXY": proxyUntilKilled,
	}
	for env, run := range children {
		if v, ok := os.LookupEnv(env); ok {
			if err := run(v); err != nil {
				fmt.Fprintf(os.Stderr, "%s child: %v\n", env, err)
				os.Exit(1)
			}
			os.Exit(0)
		}
	}
	os.Exit(m.Run())
}

// proxyUntilKilled runs a proxy from the config file at path until the process
// is killed (the failover and transparent-mode tests kill it).
func proxyUntilKilled(path string) error {
	cfg, err := proxy.LoadConfig(path)
	if err != nil {
		return err
	}
	p, err := proxy.New(cfg, testLogger())
	if err != nil {
		return err
	}
	return p.Run(context.Background())
}

// newBed builds a game topology with the suite's proxy, removed when t ends;
// it skips t without root.
func newBed(t *testing.T, o netns.GameOptions) *testbed.Bed {
	t.Helper()
	g := netns.NewGameForTest(t, o)
	b := testbed.New(g)
	// Registered after the topology's cleanup, so it runs first.
	t.Cleanup(b.Close)
	return b
}

// TestDemoShort is a short run of the demo (integration/cmd/demo): uplink A
// with 2 % random loss, uplink B with bursty loss and a 2-second outage inside
// the measured window. The game through the suite must lose fewer packets than
// over either uplink alone, and nothing during B's outage, either way: the
// router has three sockets on A, its per-path keepalives keep all three known to
// the proxy as reply paths, and three copies over a 2 % link lose a tick with
// probability 8·10⁻⁶.
func TestDemoShort(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	cfg := testbed.DemoConfig{
		Duration: 5 * time.Second,
		Paths: []testbed.Path{
			{Name: "direct A", Direct: true, Uplinks: []int{0}, Tap: true},
			{Name: "direct B", Direct: true, Uplinks: []int{1}, Tap: true},
			{Name: "RAIC-1 copy 3×A+B", Uplinks: []int{0, 0, 0, 1}, Scheme: "copy", Tap: true},
		},
	}
	opts, err := testbed.DemoGameOptions(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b := newBed(t, opts)
	rows, err := testbed.RunDemo(context.Background(), b, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	testbed.WriteDemoTable(&sb, rows)
	t.Logf("\n%s", sb.String())
	for _, r := range rows {
		if r.Error != "" {
			t.Fatalf("%s: %s", r.Path, r.Error)
		}
	}
	directA, directB, suite := rows[0], rows[1], rows[2]
	// The outage window must lie inside the measured window, or the check
	// below proves nothing: direct B loses (almost) everything sent in it.
	if directB.OutageUp.Sent < 100 || directB.OutageDown.Sent < 100 {
		t.Fatalf("outage window holds %d/%d ticks, want about 120 each way", directB.OutageUp.Sent, directB.OutageDown.Sent)
	}
	if directB.OutageUp.Lost < directB.OutageUp.Sent-2 || directB.OutageDown.Lost < directB.OutageDown.Sent-2 {
		t.Errorf("direct B lost only %d/%d and %d/%d ticks during its outage", directB.OutageUp.Lost, directB.OutageUp.Sent,
			directB.OutageDown.Lost, directB.OutageDown.Sent)
	}
	lost := func(r testbed.DemoRow) int64 { return r.Up.Lost + r.Down.Lost }
	for _, d := range []testbed.DemoRow{directA, directB} {
		if lost(suite) >= lost(d) {
			t.Errorf("%s lost %d ticks, not fewer than %s (%d)", suite.Path, lost(suite), d.Path, lost(d))
		}
	}
	if suite.OutageUp.Sent < 100 || suite.OutageDown.Sent < 100 {
		t.Errorf("%s sent %d/%d ticks during the outage, want about 120 each way", suite.Path, suite.OutageUp.Sent, suite.OutageDown.Sent)
	}
	if suite.OutageUp.Lost != 0 {
		t.Errorf("%s lost %d of %d upstream ticks during B's outage, want none", suite.Path, suite.OutageUp.Lost, suite.OutageUp.Sent)
	}
	if suite.OutageDown.Lost != 0 {
		t.Errorf("%s lost %d of %d downstream ticks during B's outage, want none", suite.Path, suite.OutageDown.Lost, suite.OutageDown.Sent)
	}
	if suite.Up.Duplicates+suite.Down.Duplicates != 0 {
		t.Errorf("%s delivered %d duplicates", suite.Path, suite.Up.Duplicates+suite.Down.Duplicates)
	}
}
