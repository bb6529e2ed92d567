package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/raicnet/raic/integration/gamegen"
	"github.com/raicnet/raic/integration/linkem"
	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/pkg/mono"
)

// The demo's two uplinks: A is a decent line with random loss, B a worse one
// with bursty loss and an outage in the middle of the measured window.
const (
	demoOutageUplink = 1 // B
	// demoLead is the time between the links' start and the sessions' start,
	// for setting up routers and proxies; outages are scheduled relative to the
	// links' start, so the sessions must start at a known instant.
	demoLead = 2 * time.Second
)

// DemoConfig shapes a demo run.
type DemoConfig struct {
	Warmup   time.Duration // default 1 s
	Duration time.Duration // measured time per session; default 20 s
	Outage   time.Duration // uplink B's outage, centred in the measured window; default 2 s
	Rate     float64       // ticks per second each way; default 60
	Paths    []Path        // default DemoPaths()
}

func (c *DemoConfig) defaults() {
	if c.Warmup == 0 {
		c.Warmup = time.Second
	}
	if c.Duration == 0 {
		c.Duration = 20 * time.Second
	}
	if c.Outage == 0 {
		c.Outage = 2 * time.Second
	}
	if c.Rate == 0 {
		c.Rate = 60
	}
	if c.Paths == nil {
		c.Paths = DemoPaths()
	}
}

// outageOffset is when B's outage starts, relative to the links' start.
func (c *DemoConfig) outageOffset() time.Duration {
	return demoLead + c.Warmup + c.Duration/2 - c.Outage/2
}

// DemoPaths are the demo's sessions: each uplink alone, then the suite with
// each scheme. While B is out only A carries the game, with its 2 % random
// loss, so one copy on A loses about 2 % of the ticks sent during the outage.
// "2×A+B" opens two router sockets on A, so the upstream direction gets two
// copies over A. The proxy answers once per address it has learned for the
// session, and it learns an address only from a datagram that is not a
// duplicate, that is from a copy that arrived first: a socket whose copies
// always lose the race is never answered on. So the replies get a second copy
// over A only once the first socket's copy was lost at least once (see the
// report in docs/bench-testbed.md).
func DemoPaths() []Path {
	return []Path{
		{Name: "direct A", Direct: true, Uplinks: []int{0}, Tap: true},
		{Name: "direct B", Direct: true, Uplinks: []int{1}, Tap: true},
		{Name: "RAIC-1 copy A+B", Uplinks: []int{0, 1}, Scheme: "copy", Tap: true},
		{Name: "RAIC-1 copy 2×A+B", Uplinks: []int{0, 0, 1}, Scheme: "copy", Tap: true},
		{Name: "RAIC-5 xor:2", Uplinks: []int{0, 1}, Scheme: "xor:2", Tap: true},
		{Name: "RAIC-6 rs:2+2", Uplinks: []int{0, 1}, Scheme: "rs:2+2", Tap: true},
		{Name: "RAICT time:2", Uplinks: []int{0, 1}, Scheme: "time:2", Tap: true},
	}
}

// DemoGameOptions returns the topology of the demo: uplink A 15 ms ± 3 ms with
// 2 % random loss, uplink B 25 ms ± 8 ms with Gilbert–Elliott bursts averaging
// 3 % (mean burst 4 packets) and one outage of c.Outage centred in the
// measured window. Both directions of a link get the same impairments, with
// their own random streams.
func DemoGameOptions(c DemoConfig) (netns.GameOptions, error) {
	c.defaults()
	ge, err := linkem.GEFromMean(0.03, 4)
	if err != nil {
		return netns.GameOptions{}, err
	}
	a := func(seed uint64) linkem.Config {
		return linkem.Config{Delay: ms(15), Jitter: ms(3), Loss: 0.02, Seed: seed}
	}
	start := c.outageOffset()
	b := func(seed uint64) linkem.Config {
		g := ge
		return linkem.Config{Delay: ms(25), Jitter: ms(8), GE: &g, Seed: seed,
			Outages: []linkem.Outage{{Start: linkem.Duration(start), End: linkem.Duration(start + c.Outage)}}}
	}
	return netns.GameOptions{Uplinks: 2, Links: []netns.LinkPair{
		{Up: a(0), Down: a(0)},
		{Up: b(0), Down: b(0)},
	}}, nil
}

func ms(n int) linkem.Duration { return linkem.Duration(time.Duration(n) * time.Millisecond) }

// DemoRow is one path of the demo table.
type DemoRow struct {
	Path       string                  `json:"path"`
	Up         gamegen.DirectionStats  `json:"up"`
	Down       gamegen.DirectionStats  `json:"down"`
	RTT        gamegen.LatencyStats    `json:"rtt"`
	OutageUp   WindowLoss              `json:"outage_up"`
	OutageDown WindowLoss              `json:"outage_down"`
	Report     *gamegen.Report         `json:"report,omitempty"`
	Error      string                  `json:"error,omitempty"`
	Windows    map[string]WindowMonoNs `json:"outage_window_mono_ns,omitempty"`
}

// WindowMonoNs is a Window for JSON output.
type WindowMonoNs struct {
	From int64 `json:"from"`
	To   int64 `json:"to"`
}

// OutageLost is the number of ticks lost inside the outage window, both ways.
func (r *DemoRow) OutageLost() int { return r.OutageUp.Lost + r.OutageDown.Lost }

// RunDemo runs every path of c at once on b, whose topology must have been built with
// DemoGameOptions(c) and just now: the sessions start demoLead after the
// links did, so that B's outage falls in the middle of their measured window.
func RunDemo(ctx context.Context, b *Bed, c DemoConfig) ([]DemoRow, error) {
	c.defaults()
	g := b.G
	emu := g.Emu[demoOutageUplink]
	if emu == nil {
		return nil, errors.New("testbed: the demo topology has no emulator on uplink B")
	}
	startAt := emu.AToB().Start() + int64(demoLead)
	if _, err := b.Proxy(); err != nil {
		return nil, err
	}
	if mono.Now() > startAt-int64(200*time.Millisecond) {
		return nil, fmt.Errorf("testbed: topology ready too late: the sessions had to start %v after the links", demoLead)
	}
	// The outage decision is taken when a packet enters the ISP, a fraction of
	// a millisecond after it was sent, so windows by send stamp are exact to
	// within that; a small margin keeps packets at the edges on the inside.
	const margin = int64(5 * time.Millisecond)
	off := int64(c.outageOffset())
	upW := Window{emu.AToB().Start() + off - margin, emu.AToB().Start() + off + int64(c.Outage) + margin}
	downW := Window{emu.BToA().Start() + off - margin, emu.BToA().Start() + off + int64(c.Outage) + margin}

	tr := Traffic{Rate: c.Rate, Size: 100, ServerRate: c.Rate, ServerSize: 200,
		Warmup: c.Warmup, Duration: c.Duration, Deadline: 50 * time.Millisecond, Echo: true, StartAt: startAt}
	rows := make([]DemoRow, len(c.Paths))
	var wg sync.WaitGroup
	for i, p := range c.Paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			row := DemoRow{Path: p.Name, Windows: map[string]WindowMonoNs{
				"up": {upW.From, upW.To}, "down": {downW.From, downW.To}}}
			res, err := b.Run(ctx, p, tr)
			if err != nil {
				row.Error = err.Error()
			}
			if res != nil && res.Report != nil {
				row.Report = res.Report
				row.Up, row.Down, row.RTT = res.Report.Up, res.Report.Down, res.Report.RTT
				row.OutageUp, _, _ = res.LostIn(upW)
				_, row.OutageDown, _ = res.LostIn(downW)
			}
			rows[i] = row
		}()
	}
	wg.Wait()
	return rows, nil
}

// WriteDemoTable prints the rows as one aligned comparison table.
func WriteDemoTable(w io.Writer, rows []DemoRow) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "path\tloss ↑ %\tloss ↓ %\toutage lost ↑\toutage lost ↓\towd ↑ p50/p99 ms\towd ↓ p50/p99 ms\tRTT p50/p99 ms\tlate ↑/↓\tdup ↑/↓\t")
	for _, r := range rows {
		if r.Error != "" && r.Report == nil {
			fmt.Fprintf(tw, "%s\terror: %s\t\t\t\t\t\t\t\t\t\n", r.Path, r.Error)
			continue
		}
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%d/%d\t%d/%d\t%s\t%s\t%s\t%d/%d\t%d/%d\t\n", r.Path,
			r.Up.LossPct, r.Down.LossPct,
			r.OutageUp.Lost, r.OutageUp.Sent, r.OutageDown.Lost, r.OutageDown.Sent,
			pair(r.Up.Latency), pair(r.Down.Latency), pair(r.RTT),
			r.Up.Late, r.Down.Late, r.Up.Duplicates, r.Down.Duplicates)
	}
	tw.Flush()
	for _, r := range rows {
		if r.Error != "" {
			fmt.Fprintf(w, "%s: %s\n", r.Path, r.Error)
		}
	}
}

func pair(l gamegen.LatencyStats) string {
	if l.Count == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f/%.1f", msf(l.P50), msf(l.P99))
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// DemoSummary checks the demo's claims and returns what does not hold: the
// suite's RAIC-1 rows must lose less than each direct path, and nothing inside
// the outage window.
func DemoSummary(rows []DemoRow) []string {
	var direct []DemoRow
	for _, r := range rows {
		if strings.HasPrefix(r.Path, "direct") {
			direct = append(direct, r)
		}
	}
	var bad []string
	for _, r := range rows {
		if !strings.HasPrefix(r.Path, "RAIC-1") {
			continue
		}
		lost := r.Up.Lost + r.Down.Lost
		for _, d := range direct {
			if dl := d.Up.Lost + d.Down.Lost; lost >= dl {
				bad = append(bad, fmt.Sprintf("%s lost %d packets, not fewer than %s (%d)", r.Path, lost, d.Path, dl))
			}
		}
		if n := r.OutageLost(); n > 0 {
			bad = append(bad, fmt.Sprintf("%s lost %d packets (↑%d ↓%d) during B's outage", r.Path, n, r.OutageUp.Lost, r.OutageDown.Lost))
		}
	}
	return bad
}
