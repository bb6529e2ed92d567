package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/linkem"
	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/pkg/mono"
)

// The call tests' shared pieces: the impaired 2+2 topology, sipp's caller
// and callee, and the per-path loss table.

// needSipp skips the test unless it runs as root and finds sipp; it returns
// sipp's path.
func needSipp(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	sipp, err := exec.LookPath("sipp")
	if err != nil {
		t.Skip("sipp is missing (apt-get install sip-tester): the call needs it")
	}
	return sipp
}

// callLinks is the 2+2 topology of the call tests, both sides behind
// port-restricted NATs: uplink 0 of each side good (1% loss), uplink 1 lossy
// (5%) and dark from outA[0] to outA[1] (side A) and outB[0] to outB[1]
// (side B), times from the links' start.
func callLinks(outA, outB [2]time.Duration) netns.PeersOptions {
	lossy := func(delay time.Duration, out [2]time.Duration, seed uint64) linkem.Config {
		return linkem.Config{Delay: linkem.Duration(delay), Jitter: linkem.Duration(2 * time.Millisecond), Loss: 0.05,
			Outages: []linkem.Outage{{Start: linkem.Duration(out[0]), End: linkem.Duration(out[1])}}, Seed: seed}
	}
	good := func(delay time.Duration, seed uint64) linkem.Config {
		return linkem.Config{Delay: linkem.Duration(delay), Jitter: linkem.Duration(2 * time.Millisecond), Loss: 0.01, Seed: seed}
	}
	return netns.PeersOptions{
		NAT: [2]netns.NAT{netns.NATPortRestricted, netns.NATPortRestricted},
		Links: [2][]netns.LinkPair{
			{{Up: good(8*time.Millisecond, 1), Down: good(8*time.Millisecond, 2)},
				{Up: lossy(12*time.Millisecond, outA, 3), Down: lossy(12*time.Millisecond, outA, 4)}},
			{{Up: good(10*time.Millisecond, 5), Down: good(10*time.Millisecond, 6)},
				{Up: lossy(15*time.Millisecond, outB, 7), Down: lossy(15*time.Millisecond, outB, 8)}},
		},
	}
}

// The routers' call tests: outages at 11-13 s (A) and 16-18 s (B), as the
// routers punch within a few seconds and the call then lasts 16.
var routerCallOutages = [2][2]time.Duration{{11 * time.Second, 13 * time.Second}, {16 * time.Second, 18 * time.Second}}

// checkCallInTime fails the test if the paths came up so late after the
// links started that the outages of routerCallOutages would miss the call.
func checkCallInTime(t *testing.T, p *netns.Peers) {
	t.Helper()
	linkStart := p.Emu[0][1].AToB().Start()
	if since := time.Duration(mono.Now() - linkStart); since > 10*time.Second {
		t.Fatalf("punching took until %v after the links started: the outages (from 11 s) would miss the call", since)
	} else {
		t.Logf("call starts %.1f s after the links started; outages at 11-13 s (A uplink 1) and 16-18 s (B uplink 1)", since.Seconds())
	}
}

// sippCall is how one call went.
type sippCall struct {
	dir            string
	uacErr, uasErr error
	uacOut, uasOut bytes.Buffer
}

func (c *sippCall) failed() bool { return c.uacErr != nil || c.uasErr != nil }

// errorLogs is the tail of every sipp error log of the call.
func (c *sippCall) errorLogs() string {
	errs, _ := filepath.Glob(filepath.Join(c.dir, "*_errors.log"))
	var el strings.Builder
	for _, f := range errs {
		b, _ := os.ReadFile(f)
		fmt.Fprintf(&el, "%s:\n%s\n", filepath.Base(f), tail(string(b), 30))
	}
	return el.String()
}

// runSippCall runs one call in a fresh directory with call.wav and the
// testdata scenarios: sipp's callee (arguments uas) on side B's LAN host,
// then its caller (uac) on side A's; during runs while the call lasts, and
// runSippCall returns when the call and during have ended.
func runSippCall(t *testing.T, p *netns.Peers, sipp string, uas, uac []string, during func()) *sippCall {
	t.Helper()
	c := &sippCall{dir: t.TempDir()}
	writeCallWAV(t, filepath.Join(c.dir, "call.wav"), callSeconds)
	for _, f := range []string{"uac.xml", "uas.xml"} {
		src, err := os.ReadFile(filepath.Join("testdata", "sipp", f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(c.dir, f), src, 0o644)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	uasCmd := p.LAN[1].CommandContext(ctx, sipp, uas...)
	uasCmd.Dir, uasCmd.Stdout, uasCmd.Stderr = c.dir, &c.uasOut, &c.uasOut
	if err := uasCmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	uacCmd := p.LAN[0].CommandContext(ctx, sipp, uac...)
	uacCmd.Dir, uacCmd.Stdout, uacCmd.Stderr = c.dir, &c.uacOut, &c.uacOut
	if err := uacCmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); during() }()
	c.uacErr = uacCmd.Wait()
	c.uasErr = uasCmd.Wait()
	<-done
	return c
}

// failSippCall fails the test, with sipp's output and error logs, if the
// call did not complete.
func failSippCall(t *testing.T, c *sippCall) {
	t.Helper()
	if c.failed() {
		t.Fatalf("the call failed: caller %v, callee %v\ncaller:\n%s\ncallee:\n%s\nsipp error logs:\n%s", c.uacErr, c.uasErr,
			tail(c.uacOut.String(), 30), tail(c.uasOut.String(), 30), c.errorLogs())
	}
}

// callDirection is one direction of a call between the sides.
type callDirection struct {
	name             string
	sender, receiver int
}

// callDirections are the two directions of a call between the sides.
var callDirections = []callDirection{{"A→B", 0, 1}, {"B→A", 1, 0}}

// checkSessionLoss writes direction d's rows to sb (each path's loss, from
// the copies the receiver counted against the packets sent × share, and the
// peer session's) and fails the test when the impairments did not reach a
// path (the worst lost under 5%), when the session lost more than maxLoss%
// or no less than the worst path, or delivered more than was sent. It
// returns the worst path's loss.
func checkSessionLoss(t *testing.T, sb *strings.Builder, m [2]map[string]float64, d callDirection, share, maxLoss float64) float64 {
	t.Helper()
	sent := m[d.sender][fmt.Sprintf(`router_peer_packets_sent{peer=%q}`, peerIDs[d.receiver])]
	got := m[d.receiver][fmt.Sprintf(`router_peer_packets_delivered{peer=%q}`, peerIDs[d.sender])]
	if sent == 0 {
		t.Fatalf("%s: no packets sent; metrics %v", d.name, m[d.sender])
	}
	worst := writePathLoss(sb, m, d.name, d.sender, d.receiver, sent, share)
	loss := 100 * (1 - got/sent)
	fmt.Fprintf(sb, "%-26s %9.0f %8.2f\n", d.name+" peer session 2×2", got, loss)
	if got > sent {
		t.Errorf("%s: %v packets delivered of %v sent: duplicates got through", d.name, got, sent)
	}
	if worst < 5 {
		t.Errorf("%s: the worst single path lost only %.2f%%: the impairments did not reach the call", d.name, worst)
	}
	if loss > maxLoss || loss >= worst {
		t.Errorf("%s: the session lost %.2f%%, want ≤ %v%% and below the worst path's %.2f%%", d.name, loss, maxLoss, worst)
	}
	return worst
}

// checkRTPLoss fails the test when more RTP left a side than came into it
// (duplicates got through) or the call lost more than 1% one way or 2% round
// trip, and returns both losses in percent.
func checkRTPLoss(t *testing.T, fromCaller, atCallee, echoed, backAtCaller float64) (up, rt float64) {
	t.Helper()
	up, rt = 100*(1-atCallee/fromCaller), 100*(1-backAtCaller/fromCaller)
	if atCallee > fromCaller || backAtCaller > echoed {
		t.Errorf("more RTP packets out than in (%v of %v, %v of %v): duplicates got through", atCallee, fromCaller, backAtCaller, echoed)
	}
	if up > 1 || rt > 2 {
		t.Errorf("RTP loss %.2f%% one way, %.2f%% round trip: want ≤ 1%% and ≤ 2%%", up, rt)
	}
	return up, rt
}

// writePathLoss writes to sb one row per path of direction name (the
// copies the receiver counted, their loss against sent×share) and returns
// the worst path's loss.
func writePathLoss(sb *strings.Builder, m [2]map[string]float64, name string, sender, receiver int, sent, share float64) float64 {
	copies := pathCopies(m[receiver], sender)
	worst := 0.0
	for i := 0; i < 2; i++ {
		for j := 0; j < 2; j++ {
			loss := 100 * (1 - copies[pathKey{i, j}]/(sent*share))
			worst = max(worst, loss)
			fmt.Fprintf(sb, "%-26s %9.0f %8.2f\n", fmt.Sprintf("%s path %c%d→%c%d", name, 'A'+sender, i, 'A'+receiver, j),
				copies[pathKey{i, j}], loss)
		}
	}
	return worst
}
