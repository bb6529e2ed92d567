package integration

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/linkem"
	"github.com/raicnet/raic/router"
)

// lossStepUplinks is the profile of TestLoopbackAutoSchemeLossStep: uplink 0
// loses 5% all along (a mobile link), uplink 1 is clean, loses 10% from 5 s to
// 15 s, and is clean again; both ways.
func lossStepUplinks(t *testing.T, seed uint64) func(proxyAddr netip.AddrPort) []netip.AddrPort {
	return func(proxyAddr netip.AddrPort) []netip.AddrPort {
		step := []linkem.LossStep{{Start: linkem.Duration(5 * time.Second), End: linkem.Duration(15 * time.Second), Loss: 0.10}}
		cfgs := [2][2]linkem.Config{
			{{Loss: 0.05, Seed: seed + 1}, {Loss: 0.05, Seed: seed + 2}},
			{{LossSteps: step, Seed: seed + 3}, {LossSteps: step, Seed: seed + 4}},
		}
		var addrs []netip.AddrPort
		for _, c := range cfgs {
			rl, err := linkem.NewUDPRelay(netip.MustParseAddrPort("127.0.0.1:0"), proxyAddr, c[0], c[1])
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { rl.Close() })
			addrs = append(addrs, rl.Addr())
		}
		return addrs
	}
}

type stepRun struct {
	scheme     string
	lostUp     int
	lostDown   int
	perPacket  float64  // datagrams sent on the uplinks per game packet
	schemes    []string // the auto session's scheme changes, from /status
	final      string   // its scheme at the end
	switches   uint64
	lossReport string
	reports    []uint64 // quality reports received per uplink
}

// TestLoopbackAutoSchemeLossStep runs the same loss step with scheme = "auto"
// and with fixed schemes. The auto session must leave copies when uplink 1
// turns lossy and come back to them when it is clean again, and its residual
// loss must stay near the best fixed scheme's: within 20% of it or, the counts
// being small, within 0.1% of the packets sent (the choice's target).
func TestLoopbackAutoSchemeLossStep(t *testing.T) {
	const rate, secs = 200, 34
	const n = rate * secs
	var runs []stepRun
	for _, scheme := range []string{"auto", "copy", "rs:2+2", "rs:2+3"} {
		t.Run(strings.ReplaceAll(scheme, ":", "_"), func(t *testing.T) {
			run := stepRun{scheme: scheme}
			up, down, r := runCheckedGameWith(t, n, rate, `scheme = "`+scheme+`"`, lossStepUplinks(t, 900))
			got, _, _ := up.snapshot()
			run.lostUp = n - got
			got, _, _ = down.snapshot()
			run.lostDown = n - got
			run.perPacket = float64(metricSum(r, "router_uplink_datagrams_sent_total")) / n
			run.switches = metricSum(r, "router_scheme_switches_total")
			st := r.Status()
			for _, ss := range st.Sessions {
				run.schemes = append(run.schemes, ss.SchemeChanges...)
				run.final = ss.Scheme
			}
			for _, u := range st.Uplinks {
				run.lossReport += fmt.Sprintf(" %s %.1f%% (%d reports)", u.Name, 100*u.ReportedLoss, u.Reports)
				run.reports = append(run.reports, u.Reports)
			}
			runs = append(runs, run)
		})
	}
	for _, r := range runs {
		t.Logf("%-7s lost up %3d (%.3f%%) down %3d (%.3f%%), %.2f datagrams per packet, %d switches; last reported loss:%s",
			r.scheme, r.lostUp, 100*float64(r.lostUp)/n, r.lostDown, 100*float64(r.lostDown)/n, r.perPacket, r.switches, r.lossReport)
		for _, c := range r.schemes {
			t.Logf("        %s", c)
		}
	}
	if len(runs) != 4 {
		t.Fatal("a run failed")
	}
	auto := runs[0]
	for i, n := range auto.reports {
		if n < secs/2 {
			t.Errorf("auto: uplink %d got %d quality reports in %d s, want about one a second", i, n, secs)
		}
	}
	left, back := false, false
	for _, c := range auto.schemes {
		left = left || strings.Contains(c, "RAIC-1 x2 -> ")
		back = back || (left && strings.Contains(c, "-> RAIC-1 x2"))
	}
	if !left || !back || auto.final != "RAIC-1 x2" {
		t.Errorf("auto: the scheme did not leave copies under the loss step and come back (changes %q, final %q)", auto.schemes, auto.final)
	}
	best := runs[1]
	for _, r := range runs[2:] {
		if r.lostUp < best.lostUp {
			best = r
		}
	}
	if bound := max(1.2*float64(best.lostUp), float64(best.lostUp)+0.001*n); float64(auto.lostUp) > bound {
		t.Errorf("auto lost %d packets upstream, the best fixed scheme (%s) %d: over the bound %.1f", auto.lostUp, best.scheme, best.lostUp, bound)
	}
}

// metricSum adds up every series of a metric family of r.
func metricSum(r *router.Router, family string) uint64 {
	var sum float64
	for name, v := range r.Metrics().Snapshot() {
		if name == family || strings.HasPrefix(name, family+"{") {
			sum += v
		}
	}
	return uint64(sum)
}
