package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/raicnet/raic/integration/internal/hostinfo"
)

// The drain test measures how the proxy scales from one worker to two on a
// host of two CPUs, where a generator running beside the proxy would take
// part of the second CPU and hide the scaling. So the generator works while
// the proxy is stopped: with the proxy under SIGSTOP, it fills the proxy's
// listening sockets (large receive buffers, receive_buffer_kb) with
// pre-sealed datagrams of every session, and the sink stops reading (its
// socket overflows and the kernel drops there, the same for every row). Then
// SIGCONT, and the proxy drains the queues with nothing else running. The
// rate is taken from the proxy's forwarded counter while 10% to 90% of the
// queued datagrams go out, so the start and the end of the drain (and the
// polling's step) do not enter it; per proxy CPU-second over the whole drain.

// drainBufferKB is the proxy's receive_buffer_kb in the drain test: a
// queue of about 300,000 datagrams of capbench's size per socket.
const drainBufferKB = 256 << 10

// drainPerWorker is the datagrams queued per worker each phase.
const drainPerWorker = 200_000

// drainResult is one drain phase.
type drainResult struct {
	queued   uint64  // datagrams in the proxy's queues at SIGCONT
	lost     uint64  // of those sent, dropped by the kernel before the proxy (its queue full)
	steady   float64 // packets/s forwarded from 10% to 90% of the queued
	perCPU   float64 // forwarded over the proxy's CPU seconds, the whole drain
	wall     time.Duration
	cpuShare float64   // proxy CPU over the drain's wall time, percent of one core
	genShare float64   // this process's (polling, the paused sink) the same
	busy     []float64 // each of the proxy's CPUs: busy for any cause, percent
}

// drainRow is one row of the drain table.
type drainRow struct {
	workers int
	pin     bool // pin_workers
}

// runDrain runs the drain test with 1 and 2 workers, unpinned and pinned,
// the rows in turn for each of -runs rounds (so a slow spell of the host
// spreads over them all), and prints their table.
func runDrain(ctx context.Context, opt *options) error {
	start := time.Now()
	load0 := hostinfo.LoadAvg()
	if err := setup(opt); err != nil {
		return err
	}
	rows := []drainRow{{1, false}, {2, false}, {1, true}, {2, true}}
	results := make([][]drainResult, len(rows))
	for run := 0; run < opt.runs; run++ {
		for i, row := range rows {
			o := *opt
			o.workers, o.floor, o.profile = row.workers, 0, ""
			o.packets = row.workers * drainPerWorker
			o.window = o.packets + 1 // no window: the proxy is stopped while they go
			o.proxySet = strings.TrimPrefix(o.proxySet+fmt.Sprintf("; receive_buffer_kb = %d; pin_workers = %v", drainBufferKB, row.pin), "; ")
			fmt.Printf("== round %d of %d: %d worker(s), pin_workers = %v, %d datagrams queued a phase\n", run+1, opt.runs, row.workers, row.pin, o.packets)
			f, err := measureOnce(ctx, &o)
			if err != nil {
				return err
			}
			results[i] = append(results[i], f.drains...)
		}
	}
	env := environment(opt, load0, hostinfo.LoadAvg())
	table := drainTable(rows, results)
	fmt.Println()
	printRows(table)
	fmt.Printf("\n%s\nrun took %v\n", env, time.Since(start).Round(time.Second))
	if opt.out == "" {
		return nil
	}
	var b strings.Builder
	b.WriteString("# Proxy scaling over two cores: the drain test\n\n")
	fmt.Fprintf(&b, "Written by `go run ./integration/cmd/capbench -drain` (`make bench`). On a host of two CPUs a generator beside the proxy "+
		"takes part of the second, so here it works while the proxy is stopped (SIGSTOP): it queues %d pre-sealed datagrams a worker "+
		"(100-byte game packets of 1,000 sessions, steered to the workers by session ID) in the proxy's listening sockets "+
		"(receive_buffer_kb = %d), the sink stops reading (its socket overflows, the kernel dropping there alike for every row), "+
		"and after SIGCONT the proxy drains the queues with nothing else running. \"Drain rate\" is the proxy's forwarded counter "+
		"from 10%% to 90%% of the queued datagrams (sampled every 50 ms, interpolated), \"per proxy CPU-second\" the forwarded "+
		"count over the proxy's CPU time for the whole drain. Each row is %d rounds (the rows in turn, a proxy process each) of %d "+
		"phases; medians. The figures are above the timed phases' of docs/bench-scale.md, where the sink reads every datagram "+
		"(that receive is charged to the proxy's CPU on loopback); the ratios are what this table is for.\n\n",
		drainPerWorker, drainBufferKB, opt.runs, opt.repeat)
	writeMarkdownRows(&b, table)
	fmt.Fprintf(&b, "\nTarget (issue #14): near-linear to 2 cores, taken as two workers at ≥ %.1f× one worker's rate.\n\nMachine: %s.\n", nearLinear, env)
	return writeResults(opt.out, &b)
}

// nearLinear is the least ratio of two workers' drain rate to one's that
// the table calls near-linear (90% of linear).
const nearLinear = 1.8

// drainTable is the drain test's rows: a header, then one per drainRow.
func drainTable(rows []drainRow, results [][]drainResult) [][]string {
	out := [][]string{{"workers", "pin_workers", "queued a phase", "drain rate (10%–90%)", "per proxy CPU-second", "× one worker alike (rate)", "× per CPU-second", "phases: rate (proxy CPU, lost)", "target"}}
	base, baseCPU := map[bool]float64{}, map[bool]float64{}
	for i, row := range rows {
		rs := results[i]
		if len(rs) == 0 {
			continue
		}
		steady := medianOf(rs, func(r drainResult) float64 { return r.steady })
		perCPU := medianOf(rs, func(r drainResult) float64 { return r.perCPU })
		if row.workers == 1 {
			base[row.pin], baseCPU[row.pin] = steady, perCPU
		}
		var each []string
		for _, r := range rs {
			each = append(each, fmt.Sprintf("%.0f/s (%.0f%%, %d)", r.steady, r.cpuShare, r.lost))
		}
		ratio := steady / max(base[row.pin], 1)
		verdict := ""
		if row.workers == 2 {
			verdict = fmt.Sprintf("near-linear (≥ %.1f×): ", nearLinear)
			if ratio >= nearLinear {
				verdict += "met"
			} else {
				verdict += "MISSED"
			}
		}
		out = append(out, []string{fmt.Sprint(row.workers), fmt.Sprint(row.pin), fmt.Sprint(rs[0].queued),
			fmt.Sprintf("%.0f packets/s", steady), fmt.Sprintf("%.0f packets/s", perCPU),
			fmt.Sprintf("%.2f×", ratio), fmt.Sprintf("%.2f×", perCPU/max(baseCPU[row.pin], 1)), strings.Join(each, ", "), verdict})
	}
	return out
}

// drainSample is the proxy's forwarded count at a time into the drain.
type drainSample struct {
	at  time.Duration
	fwd float64
}

// steadyRate is the forwarded rate while the count went from 10% to 90% of
// queued, the crossing times interpolated between the samples around them.
func steadyRate(samples []drainSample, queued uint64) (float64, error) {
	end := samples[len(samples)-1]
	lo, hi := 0.1*float64(queued), 0.9*float64(queued)
	if end.fwd < hi {
		return 0, fmt.Errorf("the proxy forwarded %.0f of the %d queued datagrams and stopped", end.fwd, queued)
	}
	cross := func(x float64) time.Duration {
		for i := 1; i < len(samples); i++ {
			a, b := samples[i-1], samples[i]
			if b.fwd >= x {
				if b.fwd == a.fwd {
					return b.at
				}
				return a.at + time.Duration(float64(b.at-a.at)*(x-a.fwd)/(b.fwd-a.fwd))
			}
		}
		return end.at
	}
	return (hi - lo) / max((cross(hi)-cross(lo)).Seconds(), 1e-6), nil
}

// medianOf is the median of v over rs.
func medianOf(rs []drainResult, v func(drainResult) float64) float64 {
	if len(rs) == 0 {
		return 0
	}
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = v(r)
	}
	sort.Float64s(xs)
	return xs[len(xs)/2]
}

// drainPhase queues opt.packets datagrams at the stopped proxy and times
// their drain.
func drainPhase(ctx context.Context, opt *options, gen *generator, sink *sink, p *proxyProc, metricsAddr netip.AddrPort) (drainResult, error) {
	var r drainResult
	if err := hostinfo.PinSelf(opt.genCPU); err != nil {
		return r, err
	}
	fmt.Printf("sealing %d datagrams in advance ...\n", opt.packets)
	if err := gen.preseal(); err != nil {
		return r, err
	}
	m0, err := scrape(metricsAddr)
	if err != nil {
		return r, err
	}
	sink.paused.Store(true)
	defer sink.paused.Store(false)
	if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		return r, err
	}
	resumed := false
	defer func() {
		if !resumed {
			p.cmd.Process.Signal(syscall.SIGCONT)
		}
	}()
	time.Sleep(50 * time.Millisecond) // stopped: every thread off its CPU
	rb0 := hostinfo.RcvbufErrors()
	sent, _ := gen.blast(ctx, sink, time.Minute)
	time.Sleep(50 * time.Millisecond)
	r.lost = hostinfo.RcvbufErrors() - rb0
	r.queued = sent - min(sent, r.lost)
	fmt.Printf("queued %d datagrams at the stopped proxy (%d dropped by the kernel: its queue was full); draining ...\n", r.queued, r.lost)

	busy0 := make([]float64, opt.workers)
	for c := range busy0 {
		busy0[c] = hostinfo.StatBusy(fmt.Sprintf("cpu%d", opt.proxyCPU+c), false)
	}
	pc0, gc0 := hostinfo.CPUTime(p.cmd.Process.Pid), hostinfo.CPUTime(os.Getpid())
	t0 := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		return r, err
	}
	resumed = true
	// Samples of the forwarded counter, every 50 ms (a scrape costs the
	// proxy and this process some CPU; fewer disturb the drain less), until
	// it reaches the queued count or stops moving for 300 ms.
	samples := []drainSample{{0, 0}}
	last, still := 0.0, time.Duration(0)
	for {
		time.Sleep(50 * time.Millisecond)
		m, err := scrape(metricsAddr)
		if err != nil {
			return r, err
		}
		s := drainSample{time.Since(t0), m["proxy_forwarded_total"] - m0["proxy_forwarded_total"]}
		samples = append(samples, s)
		if s.fwd >= float64(r.queued) {
			break
		}
		if s.fwd == last {
			if still == 0 {
				still = s.at
			} else if s.at-still > 300*time.Millisecond {
				break
			}
		} else {
			last, still = s.fwd, 0
		}
		if ctx.Err() != nil {
			return r, ctx.Err()
		}
	}
	end := samples[len(samples)-1]
	r.wall = end.at
	cpu := hostinfo.CPUTime(p.cmd.Process.Pid) - pc0
	r.genShare = 100 * (hostinfo.CPUTime(os.Getpid()) - gc0) / end.at.Seconds()
	for c := range busy0 {
		r.busy = append(r.busy, 100*(hostinfo.StatBusy(fmt.Sprintf("cpu%d", opt.proxyCPU+c), false)-busy0[c])/end.at.Seconds())
	}
	r.perCPU = end.fwd / max(cpu, 1e-6)
	r.cpuShare = 100 * cpu / end.at.Seconds()
	if r.steady, err = steadyRate(samples, r.queued); err != nil {
		return r, err
	}
	fmt.Printf("  drained %.0f in %v: %.0f packets/s from 10%% to 90%%, %.0f per proxy CPU-second (proxy %.0f%% of a core, capbench %.0f%%; CPUs busy %.0f%%)\n",
		end.fwd, r.wall.Round(time.Millisecond), r.steady, r.perCPU, r.cpuShare, r.genShare, r.busy)
	// Empty the sink's socket before the next phase.
	sink.paused.Store(false)
	time.Sleep(200 * time.Millisecond)
	return r, nil
}
