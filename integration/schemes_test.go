package integration

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/testbed"
)

// TestSchemesResidualLoss runs three schemes and a direct reference through
// two uplinks that each lose 5 % independently, both ways, at 500 pps for
// 8 s, and checks each scheme's residual loss against raic.ResidualLoss: the
// measured rate within 20 % of theory or the lost count within the Poisson
// bound for the sample (see testbed.SchemeRow). The direct session must lose
// what the link loses, and no socket of the testbed may have overflowed; when
// either fails the machine was too busy for the testbed to keep up, and the
// comparison is skipped rather than failed.
func TestSchemesResidualLoss(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	cond := testbed.Condition{Name: "independent 5%", Loss: [3]float64{0.05, 0.05, 0.05}}
	var cases []testbed.SchemeCase
	for _, sc := range testbed.SchemeCases() {
		switch sc.Scheme {
		case "", "xor:2", "rs:2+2":
			cases = append(cases, sc)
		case "copy":
			if len(sc.Uplinks) == 2 {
				cases = append(cases, sc)
			}
		}
	}
	if len(cases) != 4 {
		t.Fatalf("found %d of the 4 cases in testbed.SchemeCases", len(cases))
	}
	opts, err := cond.GameOptions()
	if err != nil {
		t.Fatal(err)
	}
	b := newBed(t, opts)
	rows := testbed.RunSchemes(context.Background(), b, cond, cases, testbed.SchemeTraffic(500, 8*time.Second))
	var sb strings.Builder
	testbed.WriteSchemeTable(&sb, rows)
	t.Logf("\n%s", sb.String())
	for _, r := range rows {
		if r.Error != "" {
			t.Fatalf("%s: %s", r.Scheme, r.Error)
		}
		if r.Up.Sent < 3500 || r.Down.Sent < 3500 {
			t.Fatalf("%s: only %d/%d ticks sent, want about 4,000 each way", r.Scheme, r.Up.Sent, r.Down.Sent)
		}
	}
	for host, n := range testbed.UDPRcvbufErrors(b.G) {
		if n > 0 {
			t.Skipf("%d datagrams dropped in full UDP receive buffers in the %s namespace: the machine was too busy to measure the codes", n, host)
		}
	}
	if ref := rows[0]; !ref.Up.OK || !ref.Down.OK {
		t.Skipf("the direct reference lost %.2f%%/%.2f%% on a 5%% link: the testbed dropped packets itself (machine overloaded)",
			100*ref.Up.Rate, 100*ref.Down.Rate)
	}
	for _, r := range rows[1:] {
		for _, d := range []struct {
			name string
			m    testbed.Measured
		}{{"client→server", r.Up}, {"server→client", r.Down}} {
			if !d.m.OK {
				t.Errorf("%s %s: lost %d of %d (%.3f%%), theory %.3f%% allows %d to %d",
					r.Scheme, d.name, d.m.Lost, d.m.Sent, 100*d.m.Rate, 100*r.Theory, d.m.Lo, d.m.Hi)
			}
		}
	}
}
