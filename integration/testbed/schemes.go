package testbed

import (
	"context"
	"fmt"
	"io"
	"math"
	"sync"
	"time"

	"github.com/raicnet/raic/integration/linkem"
	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/raic"
)

// SchemeCase is one scheme of the residual-loss table, on the uplinks it
// uses.
type SchemeCase struct {
	Name    string
	Scheme  string      // the router's scheme
	Params  raic.Params // what the theory assumes
	Uplinks []int
	// Direct sends over Uplinks[0] alone, without the suite: a reference whose
	// loss must match the link's, or the testbed itself (an overloaded
	// machine) lost packets and the other cells mean little.
	Direct bool
}

// SchemeCases are the schemes of issue #4's table. RAIC-1 ×3 runs the
// router's "copy" over three uplinks: it sends one copy on each uplink, which
// is what "copy:3" describes for the theory.
func SchemeCases() []SchemeCase {
	mk := func(name, scheme, theory string, uplinks ...int) SchemeCase {
		p, err := raic.ParseParams(theory)
		if err != nil {
			panic(err) // the table above is fixed; a bad entry is a programming error
		}
		return SchemeCase{Name: name, Scheme: scheme, Params: p, Uplinks: uplinks}
	}
	return []SchemeCase{
		{Name: "direct (uplink 1)", Uplinks: []int{1}, Direct: true},
		mk("RAIC-1 ×2", "copy", "copy", 0, 1),
		mk("RAIC-1 ×3", "copy", "copy:3", 0, 1, 2),
		mk("RAIC-5 2+1", "xor:2", "xor:2", 0, 1),
		mk("RAIC-6 2+2", "rs:2+2", "rs:2+2", 0, 1),
		mk("RAICT d=2", "time:2", "time:2", 0, 1),
	}
}

// Condition is the impairment of the three uplinks for one block of the table.
type Condition struct {
	Name string
	// Loss is each uplink's loss rate as the theory takes it; 1 is a dead
	// uplink.
	Loss [3]float64
	// Bursty marks Gilbert–Elliott loss: the theory (independent loss at the
	// same mean) is shown for comparison, not checked.
	Bursty bool
	// GEBurst is the mean burst length in packets when Bursty.
	GEBurst float64
}

// Conditions are the blocks of issue #4's table.
func Conditions() []Condition {
	return []Condition{
		{Name: "independent 1%", Loss: [3]float64{0.01, 0.01, 0.01}},
		{Name: "independent 5%", Loss: [3]float64{0.05, 0.05, 0.05}},
		{Name: "independent 10%", Loss: [3]float64{0.10, 0.10, 0.10}},
		{Name: "GE bursts 5% (mean burst 4)", Loss: [3]float64{0.05, 0.05, 0.05}, Bursty: true, GEBurst: 4},
		{Name: "uplink 0 dead, others 5%", Loss: [3]float64{1, 0.05, 0.05}},
	}
}

// GameOptions returns a three-uplink topology with c's impairment on both
// directions of every uplink and a small fixed delay (5 ms), so the test
// measures coding, not the emulator's timing.
func (c Condition) GameOptions() (netns.GameOptions, error) {
	o := netns.GameOptions{Uplinks: 3}
	for _, l := range c.Loss {
		cfg := linkem.Config{Delay: linkem.Duration(5 * time.Millisecond)}
		switch {
		case l >= 1:
			cfg.Loss = 1
		case c.Bursty:
			ge, err := linkem.GEFromMean(l, c.GEBurst)
			if err != nil {
				return o, err
			}
			cfg.GE = &ge
		default:
			cfg.Loss = l
		}
		o.Links = append(o.Links, netns.LinkPair{Up: cfg, Down: cfg})
	}
	return o, nil
}

// Measured is one direction of one cell.
type Measured struct {
	Sent uint64  `json:"sent"`
	Lost int64   `json:"lost"`
	Rate float64 `json:"rate"` // Lost/Sent
	// Lo and Hi bound the lost count the theory allows at this sample size
	// (Poisson quantiles at 0.05 % and 99.95 %).
	Lo int64 `json:"lo"`
	Hi int64 `json:"hi"`
	// OK: within 20 % of theory, or within [Lo, Hi].
	OK bool `json:"ok"`
}

// SchemeRow is one cell of the table: a scheme under a condition.
type SchemeRow struct {
	Condition string   `json:"condition"`
	Scheme    string   `json:"scheme"`
	Uplinks   int      `json:"uplinks"`
	Overhead  float64  `json:"overhead"`
	Theory    float64  `json:"theory"`
	Checked   bool     `json:"checked"` // false for bursty loss: the theory assumes independence
	Up        Measured `json:"up"`
	Down      Measured `json:"down"`
	// NoLiveUplink counts packets the router sent while every uplink looked
	// down (no keepalive answer within down_after), so it spread shards over
	// all of them, dead ones included. On a healthy testbed it stays 0; a
	// busy machine that stalls the emulators for longer than down_after
	// raises it, and the coded cells then overstate the loss.
	NoLiveUplink uint64 `json:"no_live_uplink"`
	Error        string `json:"error,omitempty"`
}

// SchemeTraffic is the load of one cell: rate ticks per second each way.
func SchemeTraffic(rate float64, d time.Duration) Traffic {
	return Traffic{Rate: rate, Size: 100, ServerRate: rate, ServerSize: 100,
		Warmup: time.Second, Duration: d, Deadline: 100 * time.Millisecond}
}

// RunSchemes runs every case at once on b, whose topology was built from
// c.GameOptions(), and compares each with theory.
func RunSchemes(ctx context.Context, b *Bed, c Condition, cases []SchemeCase, tr Traffic) []SchemeRow {
	rows := make([]SchemeRow, len(cases))
	var wg sync.WaitGroup
	for i, sc := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loss := make([]float64, len(sc.Uplinks))
			for j, u := range sc.Uplinks {
				loss[j] = c.Loss[u]
			}
			row := SchemeRow{Condition: c.Name, Scheme: sc.Name, Uplinks: len(sc.Uplinks), Checked: !c.Bursty}
			if sc.Direct {
				row.Overhead, row.Theory = 1, loss[0]
			} else {
				row.Overhead, row.Theory = raic.Overhead(sc.Params), raic.ResidualLoss(sc.Params, loss)
			}
			res, err := b.Run(ctx, Path{Name: sc.Name, Direct: sc.Direct, Uplinks: sc.Uplinks, Scheme: sc.Scheme}, tr)
			if err != nil {
				row.Error = err.Error()
			}
			if res != nil {
				row.NoLiveUplink = uint64(res.RouterMetrics["router_no_live_uplink_total"])
			}
			if res != nil && res.Report != nil && res.Report.ServerReport {
				row.Up = measure(res.Report.Up.Sent, res.Report.Up.Lost, row.Theory)
				row.Down = measure(res.Report.Down.Sent, res.Report.Down.Lost, row.Theory)
			}
			rows[i] = row
		}()
	}
	wg.Wait()
	return rows
}

func measure(sent uint64, lost int64, p float64) Measured {
	m := Measured{Sent: sent, Lost: lost}
	if sent > 0 {
		m.Rate = float64(lost) / float64(sent)
	}
	m.Lo, m.Hi = poissonBounds(float64(sent)*p, 0.0005)
	m.OK = (p > 0 && math.Abs(m.Rate-p) <= 0.2*p) || (lost >= m.Lo && lost <= m.Hi)
	return m
}

// poissonBounds returns the quantiles of a Poisson distribution of mean lambda
// at tail and 1−tail. Losses are rare events among many packets, so Poisson is
// a close (slightly wide) stand-in for the binomial and also right when the
// expected count is below one, where a normal bound is not.
func poissonBounds(lambda, tail float64) (lo, hi int64) {
	if lambda <= 0 {
		return 0, 0
	}
	// Walk the probability mass from k = 0 in log space (exp(-lambda) alone
	// underflows for large lambda).
	logP := -lambda
	cum := 0.0
	lo = -1
	for k := int64(0); ; k++ {
		if k > 0 {
			logP += math.Log(lambda) - math.Log(float64(k))
		}
		cum += math.Exp(logP)
		if lo < 0 && cum > tail {
			lo = k
		}
		if cum >= 1-tail {
			return lo, k
		}
		if k > int64(lambda*10+1000) {
			return lo, k
		}
	}
}

// WriteSchemeTable writes rows as a markdown table.
func WriteSchemeTable(w io.Writer, rows []SchemeRow) {
	fmt.Fprintln(w, "| condition | scheme | uplinks | overhead | theory | measured ↑ (lost/sent) | bound ↑ | measured ↓ (lost/sent) | bound ↓ | within |")
	fmt.Fprintln(w, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |")
	for _, r := range rows {
		if r.Error != "" && r.Up.Sent == 0 {
			fmt.Fprintf(w, "| %s | %s | %d | %.2f× | %s | error: %s | | | | |\n", r.Condition, r.Scheme, r.Uplinks, r.Overhead, pct(r.Theory), r.Error)
			continue
		}
		within := "n/a (bursty)"
		if r.Checked {
			within = "no"
			if r.Up.OK && r.Down.OK {
				within = "yes"
			}
		}
		fmt.Fprintf(w, "| %s | %s | %d | %.2f× | %s | %s (%d/%d) | %d–%d | %s (%d/%d) | %d–%d | %s |\n",
			r.Condition, r.Scheme, r.Uplinks, r.Overhead, pct(r.Theory),
			pct(r.Up.Rate), r.Up.Lost, r.Up.Sent, r.Up.Lo, r.Up.Hi,
			pct(r.Down.Rate), r.Down.Lost, r.Down.Sent, r.Down.Lo, r.Down.Hi, within)
	}
}

// pct prints a probability as a percentage with enough digits for small ones.
func pct(p float64) string {
	switch {
	case p == 0:
		return "0%"
	case p >= 0.01:
		return fmt.Sprintf("%.2f%%", 100*p)
	case p >= 0.0001:
		return fmt.Sprintf("%.3f%%", 100*p)
	default:
		return fmt.Sprintf("%.1e", p)
	}
}
