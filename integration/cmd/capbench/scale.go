package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/raicnet/raic/integration/internal/hostinfo"
)

// Targets of issue #14, part 3.
const (
	targetRSS100k = 200 << 20
	bigSessions   = 100000
)

// fdLimit is the open-file limit when it kept the largest run under 100,000.
var fdLimit uint64

// scaleRun is one row of the scale table.
type scaleRun struct {
	name     string
	sessions int
	workers  int
	sources  int
	copies   int  // datagrams sent from this many sources each (0: 1)
	timed    bool // a full timed phase (otherwise a short one: memory is the point)
	shared   bool // SPP server on the proxy's shared upstream: no socket per session
	f        *figures
}

// runScale measures the proxy at one and two workers with 1,000 sessions, and
// its memory with 100,000, and prints (and writes to -out) one table. The
// single-worker run also rewrites docs/bench-capacity.md, its detailed table.
func runScale(ctx context.Context, opt *options) error {
	start := time.Now()
	load0 := hostinfo.LoadAvg()
	if err := setup(opt); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "capbench-scale-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if _, err := proxyArgv(ctx, opt, tmp); err != nil { // build once
		return err
	}
	// Each session holds a socket: the open-file limit (which this process
	// may not be allowed to raise) bounds the largest run. Below 100,000 the
	// table also gives the RSS that 100,000 would take at the measured cost
	// per session.
	big := bigSessions
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil && lim.Cur < uint64(big)+1000 {
		big = (int(lim.Cur) - 1000) / 1000 * 1000
		fdLimit = lim.Cur
	}
	// The shared rows hold no descriptor per session; memory (the
	// generator's sessions and the proxy's, well under 64 KB together)
	// bounds the largest.
	if avail := memAvailable(); avail > 0 && int64(opt.sharedBig)*(64<<10) > avail {
		opt.sharedBig = int(avail/(64<<10)) / 1000 * 1000
	}
	runs := []*scaleRun{
		{name: "1 worker, 1,000 sessions", sessions: 1000, workers: 1, sources: 1, timed: true},
		{name: "2 workers, 1,000 sessions", sessions: 1000, workers: 2, sources: 8, timed: true},
		{name: fmt.Sprintf("1 worker, %d sessions", big), sessions: big, workers: 1, sources: 8},
		// The shared upstream holds no descriptor per session: 100,000 needs
		// no open-file limit above the default.
		{name: "1 worker, 1,000 sessions, shared upstream (spp)", sessions: 1000, workers: 1, sources: 1, timed: true, shared: true},
		{name: "2 workers, 1,000 sessions, shared upstream", sessions: 1000, workers: 2, sources: 8, timed: true, shared: true},
		{name: fmt.Sprintf("1 worker, %d sessions, shared upstream", opt.sharedBig), sessions: opt.sharedBig, workers: 1, sources: 8, shared: true},
		// Routers with two uplinks: a copy of each datagram from each, so
		// every session has two paths (and its quality tracker the lag ring).
		{name: fmt.Sprintf("1 worker, %d sessions, shared upstream, two uplinks each", opt.sharedBig), sessions: opt.sharedBig, workers: 1, sources: 8, copies: 2, shared: true},
	}
	for i, r := range runs {
		o := *opt
		o.sessions, o.workers, o.sources, o.shared = r.sessions, r.workers, r.sources, r.shared
		o.copies = max(r.copies, 1)
		o.out, o.profile = "", ""
		if i > 0 {
			o.floor = 0 // the reference loops are the host's, measured once
		}
		if !r.timed {
			o.packets, o.duration, o.repeat, o.runs = 2*r.sessions, 2*time.Second, 1, 1
		}
		fmt.Printf("\n== %s ==\n", r.name)
		if r.f, err = measure(ctx, &o); err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
		if i == 0 && opt.out != "" {
			o.out = filepath.Join(filepath.Dir(opt.out), "bench-capacity.md")
			if err := writeMarkdown(&o, table(&o, r.f), environment(&o, load0, hostinfo.LoadAvg())); err != nil {
				return err
			}
		}
	}
	env := environment(opt, load0, hostinfo.LoadAvg())
	rows := scaleTable(runs)
	fmt.Println()
	printRows(rows)
	fmt.Printf("\n%s\nrun took %v\n", env, time.Since(start).Round(time.Second))
	if opt.out == "" {
		return nil
	}
	var b strings.Builder
	b.WriteString("# Proxy scale: workers and sessions\n\n")
	b.WriteString("Written by `go run ./integration/cmd/capbench -scale` (`make bench`). Each row is one raic-proxy process " +
		"on loopback, pinned to CPU 0 (one worker, GOMAXPROCS=1) or CPUs 0-1 (two workers: two SO_REUSEPORT sockets, " +
		"GOMAXPROCS=2); the generator and the sink run in the bench process on CPU 1, so with two workers they share " +
		"a core with the proxy. 100-byte game packets, sealed in advance, round-robin over the sessions, from 1 (one worker) " +
		"or 8 (otherwise) source ports, each session's from one of them (a router with one uplink; two with \"two uplinks each\", " +
		"a copy of every datagram from each, the second dropped as a duplicate), the workers steered by session ID (steer_sessions). \"Per proxy core\" is the forwarded rate " +
		"divided by the proxy process's own CPU time (softirq work of loopback delivery not included); \"at 100% of CPU 0\" " +
		"divides by CPU 0's busy time from any cause. \"RSS per session\" is the growth of the proxy's RSS from ready to every session open, over the sessions (at 1,000 sessions it also holds what the first traffic makes the runtime take once); \"heap per session\" is the growth of the proxy's live Go heap (its memory report on SIGUSR1, after a collection) from ready to every session open, over the sessions; RSS also holds the runtime's and the allocator's share. The largest row (100,000 sessions where the open-file limit allows) is about memory: its timed phase is short. " +
		fmt.Sprintf("Each timed row is %d proxy processes, each started anew with its sessions, of %d timed phases each (fresh datagrams every phase): "+
			"its figures are the median phase's by rate per proxy core, \"spread\" the range over all its phases (± half of it, of the median), "+
			"\"steal\" the time the hypervisor took from the proxy's CPU(s) in that phase. ", opt.runs, opt.repeat) +
		"The shared-upstream rows give the sink the SPP header (upstream = \"shared\"): every session leaves on one socket per worker, " +
		"each read batch's forwards in one sendmmsg, so no descriptor per session bounds them; the sink checks each header " +
		"(datagrams without a valid one are in the dropped column).\n\n")
	writeMarkdownRows(&b, rows)
	b.WriteString("\nTargets (issue #14): ≥ 200,000 packets/s forwarded per core with 1,000 sessions; near-linear to 2 cores; " +
		"≤ 20 MB RSS at 1,000 sessions and ≤ 200 MB at 100,000.\n")
	fmt.Fprintf(&b, "\nMachine: %s. A shared 2-core development machine: other work ran during the runs (the noise column), "+
		"so rates are lower bounds of what the proxy does on a quiet host.\n", env)
	return writeResults(opt.out, &b)
}

func scaleTable(runs []*scaleRun) [][]string {
	mark := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	mb := func(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/(1<<20)) }
	rows := [][]string{{"run", "forwarded", "proxy CPU", "per proxy core", "at 100% of CPU 0", "spread per proxy core (phases)", "steal", "dropped", "noise (others)", "RSS idle", "peak RSS", "RSS per session", "heap per session", "targets"}}
	var perCore1 float64
	base := runs[0] // the 1-worker row a 2-worker row compares with: the first of its upstream mode
	for i, r := range runs {
		f := r.f
		fwd := f.forwarded / f.elapsed.Seconds()
		perCore := fwd / max(f.proxyCPU/100, 0.01)
		if i == 0 {
			perCore1 = perCore
		}
		if r.timed && r.workers == 1 && r.shared != base.shared {
			base = r
		}
		var verdict []string
		limit := int64(targetRSS)
		if r.sessions >= bigSessions {
			limit = targetRSS100k
		}
		if r.sessions >= 10000 && r.sessions < bigSessions && !r.shared {
			// Extrapolated from the cost per session above the empty proxy.
			per := float64(f.rssIdle-f.rssStart) / float64(r.sessions)
			at := float64(f.rssStart) + per*bigSessions
			verdict = append(verdict, fmt.Sprintf("%.1f KB of RSS per session, so %.0f MB at 100,000 (the open-file limit, %d, allows no more here): RSS ≤ 200 MB at 100,000: %s",
				per/1024, at/(1<<20), fdLimit, mark(at <= targetRSS100k)))
		} else {
			if r.shared && r.sessions >= 10000 {
				verdict = append(verdict, fmt.Sprintf("%.1f KB per session", float64(f.rssIdle-f.rssStart)/float64(r.sessions)/1024))
			}
			verdict = append(verdict, fmt.Sprintf("RSS ≤ %d MB: %s", limit>>20, mark(f.hwm <= limit)))
		}
		if r.timed && r.workers == 1 {
			verdict = append(verdict, fmt.Sprintf("≥ %d/s per core: %s", targetPPS, mark(perCore >= targetPPS)))
		}
		if r.timed && r.workers > 1 && perCore1 > 0 {
			bf := base.f.forwarded / base.f.elapsed.Seconds()
			verdict = append(verdict, fmt.Sprintf("%.2f× the 1-worker rate; %.2f× its rate per proxy core (forwarded per proxy CPU-second)",
				fwd/bf, perCore/(bf/max(base.f.proxyCPU/100, 0.01))))
		}
		rows = append(rows, []string{
			r.name,
			fmt.Sprintf("%.0f packets/s", fwd),
			fmt.Sprintf("%.0f%%", f.proxyCPU),
			fmt.Sprintf("%.0f packets/s", perCore),
			fmt.Sprintf("%.0f packets/s", fwd/max(f.coreBusy/100, 0.01)),
			spreadOf(r),
			fmt.Sprintf("%.1f%%", f.phases[f.median].steal),
			fmt.Sprintf("%.0f", f.dropped+float64(f.rcvbufErrors)+float64(f.sppBad)),
			fmt.Sprintf("%.0f%% of a core", f.others),
			mb(f.rssIdle),
			mb(f.hwm),
			perSession(f.rssIdle-f.rssStart, r.sessions),
			heapPerSession(f, r.sessions),
			strings.Join(verdict, "; "),
		})
	}
	if f := runs[0].f; f.floorPPS.sent > 0 {
		rows = append(rows, []string{"reference: bare write(2) loop, one socket per session", fmt.Sprintf("%.0f packets/s", f.floorPPS.sent), "", "", "", "", "", "", "", "", "", "", "", "one send system call per packet"})
		rows = append(rows, []string{"reference: bare sendmmsg loop, batches of 64", fmt.Sprintf("%.0f packets/s", f.floorBatchPPS.sent), "", "", "", "", "", "", "", "", "", "", "", "batched sends"})
		rows = append(rows, []string{"reference: bare io_uring send loop, batches of 64, one socket per session", fmt.Sprintf("%.0f packets/s", f.floorRingPPS.sent), "", "", "", "", "", "", "", "", "", "", "", "the proxy's batched forwards"})
	}
	return rows
}

// spreadOf is a timed row's range of rates per proxy core over its phases.
func spreadOf(r *scaleRun) string {
	if !r.timed {
		return "short phase"
	}
	return r.f.spread((*phase).perCore)
}

// memAvailable is the host's MemAvailable in bytes (0 if unknown).
func memAvailable() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		var kb int64
		if _, err := fmt.Sscanf(l, "MemAvailable: %d kB", &kb); err == nil {
			return kb << 10
		}
	}
	return 0
}
