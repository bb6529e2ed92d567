package integration

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/integration/testbed"
)

// TestMain lets the namespace tests run the proxy as a child process of the
// test binary (see testbed.ProxyChild); for every other run it only runs the
// tests.
func TestMain(m *testing.M) {
	testbed.ProxyChild()
	os.Exit(m.Run())
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
// over either uplink alone, and nothing upstream during B's outage: the
// router has three sockets on A, and three copies over a 2 % link lose a tick
// with probability 8·10⁻⁶.
//
// Downstream the proxy answers only the addresses it learned from first
// copies (a duplicate is dropped before its address is looked at), so during
// the outage the replies may have a single copy over A and lose about 2 % of
// their ticks. Until the proxy learns paths from every authenticated copy, the
// test bounds the replies' outage loss by what one copy over A loses instead
// of asserting zero.
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
	// One copy over A: binomial with p = 2 %, about 2.4 of 120 ticks; more
	// than 10 happens with probability below 10⁻⁴.
	if suite.OutageDown.Lost > 10 {
		t.Errorf("%s lost %d of %d downstream ticks during B's outage, more than one copy over A would", suite.Path, suite.OutageDown.Lost, suite.OutageDown.Sent)
	} else if suite.OutageDown.Lost > 0 {
		t.Logf("%s lost %d downstream ticks during B's outage: the proxy answered on A once (see the doc comment)", suite.Path, suite.OutageDown.Lost)
	}
	if suite.Up.Duplicates+suite.Down.Duplicates != 0 {
		t.Errorf("%s delivered %d duplicates", suite.Path, suite.Up.Duplicates+suite.Down.Duplicates)
	}
}
