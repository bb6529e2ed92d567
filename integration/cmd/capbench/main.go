// Command capbench measures the proxy's capacity on one core: how many packets
// per second raic-proxy forwards with GOMAXPROCS=1 and 1,000 live sessions, its
// resident memory, and how soon after exec it answers its first hello.
//
// The proxy runs as a separate process pinned to CPU 0. This process, pinned to
// CPU 1, plays 1,000 routers and the game server: it opens the sessions (a hello
// each, answered by an ack), seals every datagram of the timed phase in advance
// (sealing costs CPU, and packet IDs must be fresh or the proxy's anti-replay
// window drops them), then sends them with sendmmsg while a sink socket counts
// what the proxy forwards with recvmmsg. The sender keeps at most -window
// datagrams in flight (sent but not yet at the sink), so the proxy always has
// work queued and the kernel drops nothing: the rate measured is what the proxy
// forwards, not what it was offered.
//
//	go run ./integration/cmd/capbench                   # 1,000 sessions, 8 s timed phase
//	go run ./integration/cmd/capbench -quick            # a ~15 s smoke run
//	go run ./integration/cmd/capbench -profile cpu.pprof # also profile the proxy (see below)
//	go run ./integration/cmd/capbench -scale            # workers 1 and 2, RSS at 1,000 and 100,000 sessions (make bench)
//	go run ./integration/cmd/capbench -load             # 10,000 routers in rate steps (make loadtest)
//
// Each measurement runs -runs proxy processes (3 with -scale) of -repeat timed
// phases each (3, or 2 with -scale) and reports the median phase by rate per
// proxy core with the spread, and per phase what could move the rate: steal
// time, other processes, a fixed loop's speed and a memory walk on the
// proxy's CPU, and whether the generator kept the proxy's queue full.
//
// With -profile, the proxy runs from this binary (the same proxy package, with
// pprof CPU profiling around it) instead of raic-proxy, and the top of the
// profile is printed at the end.
//
// It is a benchmark, not a test: it reports the targets it met or missed and
// exits 0 either way; it exits 1 only when it could not measure.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/raicnet/raic/integration/internal/hostinfo"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/proxyproto"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/udp"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// Targets of issue #2.
const (
	targetPPS   = 200000
	targetRSS   = 20 << 20
	targetReady = 50 * time.Millisecond
)

const clientID = "capbench"

// options are the command's flags.
type options struct {
	proxyBin    string
	sessions    int
	size        int
	duration    time.Duration
	packets     int
	window      int
	proxyCPU    int
	genCPU      int
	profile     string
	out         string
	quick       bool
	floor       time.Duration
	nice        int
	proxySet    string // extra top-level keys of the proxy's config, ';'-separated
	proxyEnv    string
	internalCfg string // set when this binary runs as the profiled proxy
	workers     int    // the proxy's workers key, and its GOMAXPROCS
	sources     int    // generator sockets (source ports) the sessions' datagrams leave from
	copies      int    // each datagram sent from this many sources (a router's uplinks)
	scale       bool   // run the scale table (scale.go) instead of one measurement
	load        bool   // run the load test (load.go) instead
	drain       bool   // run the drain test (drain.go) instead
	sharedBig   int    // -scale: sessions of the largest shared-upstream row
	shared      bool   // the sink is an SPP server on the proxy's shared upstream ([[server]] upstream = "shared")
	repeat      int    // timed phases per proxy process (the median is reported, with the spread)
	runs        int    // proxy processes per measurement, each with repeat phases
	loadOpt     loadOptions
}

func main() {
	opt, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "capbench:", err)
		os.Exit(2)
	}
	if opt.internalCfg != "" {
		if err := runProfiledProxy(opt.internalCfg, opt.profile); err != nil {
			fmt.Fprintln(os.Stderr, "capbench proxy:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	do := run
	switch {
	case opt.scale:
		do = runScale
	case opt.load:
		do = runLoad
	case opt.drain:
		do = runDrain
	}
	if err := do(ctx, opt); err != nil {
		fmt.Fprintln(os.Stderr, "capbench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (*options, error) {
	fs := flag.NewFlagSet("capbench", flag.ContinueOnError)
	o := &options{}
	fs.StringVar(&o.proxyBin, "proxy", "", "raic-proxy binary (default: build it into a temporary directory)")
	fs.IntVar(&o.sessions, "sessions", 1000, "live sessions")
	fs.IntVar(&o.size, "size", 100, "game packet size in bytes (before sealing)")
	fs.DurationVar(&o.duration, "duration", 8*time.Second, "longest timed phase (it ends sooner when the pre-sealed datagrams run out)")
	fs.IntVar(&o.packets, "packets", 2500000, "datagrams sealed in advance for the timed phase")
	fs.IntVar(&o.window, "window", 4096, "most datagrams in flight (sent, not yet counted at the sink)")
	fs.IntVar(&o.proxyCPU, "proxy-cpu", 0, "CPU the proxy is pinned to")
	fs.IntVar(&o.genCPU, "gen-cpu", 1, "CPU this process (generator and sink) is pinned to")
	fs.StringVar(&o.profile, "profile", "", "write a CPU profile of the proxy to this file and print its top")
	fs.StringVar(&o.out, "out", "docs/bench-capacity.md", "markdown file to write the results to (empty: none)")
	fs.BoolVar(&o.quick, "quick", false, "short smoke run (400,000 datagrams, at most 2 s timed, no -out unless given)")
	fs.DurationVar(&o.floor, "floor", 2*time.Second, "after the proxy, measure a bare write(2) loop on its CPU for this long, for reference (0: skip)")
	fs.IntVar(&o.nice, "nice", -20, "nice value for this process and the proxy, so other work on a shared host disturbs the measurement less (0: leave as is)")
	fs.StringVar(&o.proxySet, "proxy-set", "", "extra top-level keys for the proxy's config, separated by ';' (for example 'udp_segmentation = false')")
	fs.StringVar(&o.proxyEnv, "proxy-env", "", "extra environment for the proxy, space-separated NAME=VALUE (for example GOGC=50)")
	fs.StringVar(&o.internalCfg, "internal-run-proxy", "", "run the proxy in this process with this config (used by -profile)")
	fs.IntVar(&o.workers, "workers", 1, "the proxy's workers (SO_REUSEPORT sockets) and GOMAXPROCS; pinned to CPUs proxy-cpu onwards")
	fs.IntVar(&o.copies, "copies", 1, "send each datagram from this many sources, as a router with that many uplinks sends a copy on each (1 or 2; 2 needs -sources ≥ 2)")
	fs.IntVar(&o.sources, "sources", 1, "generator sockets the datagrams leave from, round-robin per batch (the kernel spreads them over the workers by source port)")
	fs.BoolVar(&o.scale, "scale", false, "the scale table: workers 1 and 2 at 1,000 sessions, RSS at 1,000 and 100,000 sessions (docs/bench-scale.md)")
	fs.BoolVar(&o.shared, "shared-upstream", false, "the game server speaks SPP and the proxy sends every session to it from its shared upstream sockets (upstream = \"shared\")")
	fs.IntVar(&o.repeat, "repeat", 3, "timed phases per measurement, each with fresh datagrams on the same proxy and sessions; the median (by rate per proxy core) is reported with the spread (-quick: 1; -scale: 2, with -runs 3)")
	fs.IntVar(&o.runs, "runs", 1, "proxy processes per measurement, each started anew with its sessions and -repeat timed phases; the median is over every phase (-scale: 3 for its timed rows)")
	fs.IntVar(&o.sharedBig, "shared-sessions", bigSessions, "-scale: sessions of the largest shared-upstream row (fewer if memory is short)")
	fs.BoolVar(&o.drain, "drain", false, "the drain test: 1 and 2 workers, pinned and not, each drain queues filled while the proxy was stopped, so no generator shares their CPUs (docs/bench-drain.md; -runs rounds of the rows, default 3, -repeat phases each, default 2)")
	fs.BoolVar(&o.load, "load", false, "the load test: many routers at a game's packet rate, in steps (docs/bench-load.md)")
	addLoadFlags(fs, &o.loadOpt)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if o.scale && !flagSet(fs, "out") {
		o.out = "docs/bench-scale.md"
	}
	if o.load && !flagSet(fs, "out") {
		o.out = "docs/bench-load.md"
	}
	if o.drain && !flagSet(fs, "out") {
		o.out = "docs/bench-drain.md"
	}
	if o.quick {
		o.packets, o.duration, o.floor = 400000, 2*time.Second, time.Second
		if !flagSet(fs, "repeat") {
			o.repeat = 1
		}
		if !flagSet(fs, "out") {
			o.out = "" // a smoke run does not replace the published table
		}
	}
	if (o.scale || o.drain) && !flagSet(fs, "runs") {
		o.runs = 3
		if !flagSet(fs, "repeat") {
			o.repeat = 2
		}
	}
	if o.repeat < 1 || o.runs < 1 {
		return nil, errors.New("need repeat ≥ 1 and runs ≥ 1")
	}
	if o.workers < 1 || o.sources < 1 {
		return nil, errors.New("need workers ≥ 1 and sources ≥ 1")
	}
	if o.copies < 1 || o.copies > 2 || (o.copies == 2 && o.sources < 2) {
		return nil, errors.New("-copies is 1, or 2 with -sources ≥ 2")
	}
	if o.sessions < 1 || o.packets < o.sessions || o.window < udp.MaxBatch {
		return nil, errors.New("need sessions ≥ 1, packets ≥ sessions, window ≥ 64")
	}
	if o.size < 1 || o.size+wire.MaxOverhead > wire.MaxDatagram {
		return nil, fmt.Errorf("size %d out of range", o.size)
	}
	return o, nil
}

// figures are what one run measured.
type figures struct {
	drains             []drainResult // the drain test's phases (drain.go)
	readyLog, readyAck time.Duration // exec → "proxy serving" log line, exec → first authenticated ack
	setup              time.Duration // opening every session
	sessionsLive       float64       // proxy_sessions_created_total minus expired and evicted
	rssStart, rssIdle  int64         // bytes: after ready; with every session open, before load
	rssLoad, hwm       int64         // after the timed phase; peak
	heapStart          int64         // the proxy's live heap after ready (bytes; -1: not reported)
	heapIdle           int64         // and with every session open, before load
	sent, sinkGot      uint64        // during the timed phase
	forwarded          float64       // proxy_forwarded_total delta
	segmented          float64       // proxy_shared_upstream_segmented_total delta
	dropped            float64       // proxy_dropped_total (all reasons) delta
	sppBad             uint64        // with -shared-upstream: datagrams at the sink without a valid SPP header
	rcvbufErrors       uint64        // kernel UDP receive-buffer drops (all sockets) during the phase
	elapsed            time.Duration
	proxyCPU, genCPU   float64 // percent of one core during the timed phase
	others             float64 // CPU of every other process on the host, same unit
	coreBusy           float64 // the proxy's CPU busy for any reason (softirq included), percent
	presealTime        time.Duration
	datagramLen        int
	floorPPS           floorResult // bare write(2) loop on the proxy's CPU, for reference
	floorBatchPPS      floorResult // bare sendmmsg loop on the proxy's CPU, for reference
	floorRingPPS       floorResult // bare io_uring send loop (a socket per session) on the proxy's CPU, for reference
	phases             []phase     // every timed phase; the fields above are the median's
	median             int         // index of the median phase (by rate per proxy core)
}

func run(ctx context.Context, opt *options) error {
	start := time.Now()
	load0 := hostinfo.LoadAvg()
	if err := setup(opt); err != nil {
		return err
	}
	f, err := measure(ctx, opt)
	if err != nil {
		return err
	}
	load1 := hostinfo.LoadAvg()
	env := environment(opt, load0, load1)
	fmt.Println()
	rowsOut := table(opt, f)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	for _, r := range rowsOut {
		fmt.Fprintf(tw, "%s\t%s\t%s\t\n", r[0], r[1], r[2])
	}
	tw.Flush()
	if f.others > 20 {
		env += fmt.Sprintf(". WARNING: other processes used %.0f%% of a core during the timed phase; re-run on a quiet host", f.others)
	}
	fmt.Printf("\n%s\nrun took %v\n", env, time.Since(start).Round(time.Second))
	if opt.profile != "" {
		fmt.Printf("\nCPU profile of the proxy: %s (go tool pprof -top %s)\n", opt.profile, opt.profile)
		top := exec.Command("go", "tool", "pprof", "-top", "-nodecount=35", opt.profile)
		top.Stdout, top.Stderr = os.Stdout, os.Stderr
		top.Run()
		fmt.Printf("\nheap of the proxy after the timed phase: %s.heap\n", opt.profile)
		top = exec.Command("go", "tool", "pprof", "-top", "-sample_index=inuse_space", "-nodecount=25", opt.profile+".heap")
		top.Stdout, top.Stderr = os.Stdout, os.Stderr
		top.Run()
	}
	if opt.out != "" {
		if err := writeMarkdown(opt, rowsOut, env); err != nil {
			return err
		}
		fmt.Println("wrote", opt.out)
	}
	return nil
}

// setup renices and pins this process, and raises its open-file limit (the
// proxy inherits it: each session holds a socket) as far as it may.
func setup(opt *options) error {
	if opt.nice != 0 {
		if err := hostinfo.NiceSelf(opt.nice); err != nil {
			fmt.Fprintf(os.Stderr, "capbench: cannot set nice %d (%v); going on\n", opt.nice, err)
			opt.nice = 0
		}
	}
	if err := hostinfo.PinSelf(opt.genCPU); err != nil {
		return fmt.Errorf("pin this process to CPU %d: %w", opt.genCPU, err)
	}
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
		want := uint64(4*opt.sessions + 4096)
		if lim.Cur < want {
			up := syscall.Rlimit{Cur: max(want, lim.Max), Max: max(want, lim.Max)}
			if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &up) != nil {
				lim.Cur = lim.Max // not root: as far as the hard limit
				syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
			}
		}
	}
	return nil
}

// environment describes the machine and the run, for the tables.
func environment(opt *options, load0, load1 string) string {
	env := fmt.Sprintf("%s, %d CPUs (%s), Go %s, kernel %s; load average %s before, %s after; proxy and generator at nice %d",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.NumCPU(), hostinfo.CPUModel(), runtime.Version(), hostinfo.Kernel(), load0, load1, opt.nice)
	if opt.proxyEnv != "" {
		env += "; proxy environment " + opt.proxyEnv
	}
	if src := hostinfo.SourceState(); src != "" {
		env += "; built from " + src
	}
	return env
}

// proxyArgv is the command line of the proxy process, short of its config
// path: this binary (profiling), the given binary, or one built into tmp.
func proxyArgv(ctx context.Context, opt *options, tmp string) ([]string, error) {
	switch {
	case opt.profile != "":
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		prof, err := filepath.Abs(opt.profile)
		if err != nil {
			return nil, err
		}
		return []string{self, "-profile", prof, "-internal-run-proxy"}, nil
	case opt.proxyBin != "":
		return []string{opt.proxyBin, "-config"}, nil
	}
	fmt.Println("building raic-proxy ...")
	bin := filepath.Join(tmp, "raic-proxy")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/raicnet/raic/proxy/cmd/raic-proxy")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go build raic-proxy: %w", err)
	}
	opt.proxyBin = bin // later runs of a table reuse it
	return []string{bin, "-config"}, nil
}

// measure is measureOnce opt.runs times, each with a proxy process of its
// own: the rate moves more between processes than between the phases of one
// (docs/bench-scale.md), so the median is taken over the phases of every
// run. The other figures (memory, ready, references) are the first run's.
func measure(ctx context.Context, opt *options) (*figures, error) {
	var f *figures
	for run := 0; run < opt.runs; run++ {
		if opt.runs > 1 {
			fmt.Printf("-- proxy process %d of %d\n", run+1, opt.runs)
		}
		o := *opt
		if run > 0 {
			o.floor, o.profile = 0, ""
		}
		g, err := measureOnce(ctx, &o)
		if err != nil {
			return nil, err
		}
		for i := range g.phases {
			g.phases[i].run = run
		}
		if f == nil {
			f = g
			continue
		}
		f.phases = append(f.phases, g.phases...)
	}
	f.pick()
	return f, nil
}

// measureOnce runs the proxy, opens the sessions, runs the timed phases and
// the reference loops, and returns what it measured.
func measureOnce(ctx context.Context, opt *options) (*figures, error) {
	// Every thread on the generator's CPU (a reference loop of an earlier
	// measurement may have left some on the proxy's).
	if err := hostinfo.PinSelf(opt.genCPU); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "capbench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	argv, err := proxyArgv(ctx, opt, tmp)
	if err != nil {
		return nil, err
	}
	// The game server: a sink that counts.
	sink, err := newSink()
	if err != nil {
		return nil, err
	}
	defer sink.close()
	sink.spp = opt.shared

	key, err := wire.GenerateKey()
	if err != nil {
		return nil, err
	}
	proxyAddr, err := freePort("udp")
	if err != nil {
		return nil, err
	}
	metricsAddr, err := freePort("tcp")
	if err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`listen = "%s"
metrics = "%s"
log_level = "info"
max_sessions = %d
workers = %d
[[client]]
id = "%s"
key = "%s"
allow = ["%s"]
rate_pps = 1000000000
burst = 10000000
session_rate = 1000000
`, proxyAddr, metricsAddr, 2*opt.sessions+16, opt.workers, clientID, key, sink.addr())
	if opt.proxySet != "" {
		// Top-level keys: before the first table.
		i := strings.Index(cfg, "[[client]]")
		cfg = cfg[:i] + strings.ReplaceAll(opt.proxySet, ";", "\n") + "\n" + cfg[i:]
	}
	if opt.shared {
		cfg += fmt.Sprintf("[[server]]\nmatch = \"%s\"\nclient_addr_header = \"spp\"\nupstream = \"shared\"\n", sink.addr())
	}
	cfgPath := filepath.Join(tmp, "proxy.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	argv = append(argv, cfgPath)

	gen, err := newGenerator(opt, key, sink.addr(), proxyAddr)
	if err != nil {
		return nil, err
	}
	defer gen.close()

	var f figures
	p, err := startProxy(argv, opt.proxyCPU, opt.workers, strings.Fields(opt.proxyEnv))
	if err != nil {
		return nil, err
	}
	defer p.stop()

	// Ready: the first authenticated ack of session 0.
	fmt.Printf("proxy started (pid %d, GOMAXPROCS=%d, CPU %s); probing for its first ack ...\n", p.cmd.Process.Pid, opt.workers, cpuList(opt.proxyCPU, opt.workers))
	if f.readyAck, err = gen.probe(ctx, p.started, p); err != nil {
		return nil, err
	}
	// The log line may still be in the pipe: give the reader a moment.
	for i := 0; i < 100 && p.readyLog() == 0; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	f.readyLog = p.readyLog()
	f.rssStart, _ = hostinfo.RSS(p.cmd.Process.Pid)
	f.heapStart = p.liveHeap()

	fmt.Printf("opening %d sessions ...\n", opt.sessions)
	t := time.Now()
	if err := gen.openAll(ctx); err != nil {
		if m, serr := scrape(metricsAddr); serr == nil {
			err = fmt.Errorf("%w; the proxy's drops: %s; created %.0f", err, dropList(movedDrops(nil, m)), m["proxy_sessions_created_total"])
		}
		return nil, err
	}
	f.setup = time.Since(t)
	m, err := scrape(metricsAddr)
	if err != nil {
		return nil, err
	}
	f.sessionsLive = m["proxy_sessions_created_total"] - m["proxy_sessions_expired_total"] - m["proxy_sessions_evicted_total"]

	for rep := 0; opt.drain && rep < opt.repeat; rep++ {
		r, err := drainPhase(ctx, opt, gen, sink, p, metricsAddr)
		if err != nil {
			return nil, err
		}
		f.drains = append(f.drains, r)
	}
	for rep := 0; !opt.drain && rep < opt.repeat; rep++ {
		ph, err := timedPhase(ctx, opt, gen, sink, p, metricsAddr, &f, rep)
		if err != nil {
			return nil, err
		}
		f.phases = append(f.phases, ph)
	}
	f.pick()
	f.rssLoad, f.hwm = hostinfo.RSS(p.cmd.Process.Pid)
	if opt.profile != "" {
		p.cmd.Process.Signal(syscall.SIGUSR1) // heap profile with every session live
		time.Sleep(500 * time.Millisecond)
	}
	if err := p.alive(); err != nil {
		return nil, err
	}
	p.stop()
	if opt.floor > 0 {
		fmt.Printf("reference: bare write(2) loop on CPU %d for %v ...\n", opt.proxyCPU, opt.floor)
		if f.floorPPS, err = floorRate(sink, opt.sessions, opt.proxyCPU, opt.size, opt.floor, false); err != nil {
			return nil, err
		}
		if f.floorRingPPS, err = floorRate(sink, opt.sessions, opt.proxyCPU, opt.size, opt.floor, true); err != nil {
			fmt.Printf("reference: no io_uring loop: %v\n", err)
		}
		if f.floorBatchPPS, err = floorBatchRate(sink, opt.proxyCPU, opt.size, opt.floor); err != nil {
			return nil, err
		}
	}
	return &f, nil
}

// phase is what one timed phase measured.
type phase struct {
	sent, sinkGot    uint64 // datagrams sent by the generator, counted at the sink
	forwarded        float64
	segmented        float64 // proxy_shared_upstream_segmented_total delta
	dropped          float64
	sppBad           uint64
	rcvbufErrors     uint64
	elapsed          time.Duration
	proxyCPU, genCPU float64 // percent of one core
	others           float64 // CPU of every other process on the host, percent of one core
	coreBusy         float64 // the proxy's CPU busy for any cause, steal included, percent
	steal            float64 // of the proxy's CPU(s): time the hypervisor gave to others, percent of one core
	genSteal         float64 // the same on the generator's CPU
	loopSpeed        float64 // a fixed loop on the proxy's CPU right after the phase, million iterations/s (loopSpeed)
	memLatency       float64 // ns per step of a random walk through 4 MB on the proxy's CPU right after the phase (memLatency)
	run              int     // which proxy process (measure)
	fullWaits        float64 // share of the generator's batches that waited for a full window: ~1 means the proxy, not the generator, set the pace
}

// fwd is the forwarded rate (proxy_forwarded_total), perCore the same over the
// proxy process's own CPU time.
func (ph *phase) fwd() float64     { return ph.forwarded / ph.elapsed.Seconds() }
func (ph *phase) perCore() float64 { return ph.fwd() / max(ph.proxyCPU/100, 0.01) }

// pick sets the figures of the timed phase to those of the median phase by
// rate per proxy core, and the spread to the other phases' range.
func (f *figures) pick() {
	if len(f.phases) == 0 {
		return
	}
	idx := make([]int, len(f.phases))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return f.phases[idx[a]].perCore() < f.phases[idx[b]].perCore() })
	f.median = idx[len(idx)/2]
	ph := f.phases[f.median]
	f.sent, f.sinkGot, f.forwarded, f.dropped, f.sppBad, f.rcvbufErrors = ph.sent, ph.sinkGot, ph.forwarded, ph.dropped, ph.sppBad, ph.rcvbufErrors
	f.segmented = ph.segmented
	f.elapsed, f.proxyCPU, f.genCPU, f.others, f.coreBusy = ph.elapsed, ph.proxyCPU, ph.genCPU, ph.others, ph.coreBusy
}

// spread is "min–max (±x% of the median)" of v over the phases.
func (f *figures) spread(v func(*phase) float64) string {
	if len(f.phases) < 2 {
		return "one phase"
	}
	lo, hi := v(&f.phases[0]), v(&f.phases[0])
	for i := range f.phases {
		lo, hi = min(lo, v(&f.phases[i])), max(hi, v(&f.phases[i]))
	}
	med := v(&f.phases[f.median])
	return fmt.Sprintf("%.0f–%.0f (±%.0f%%)", lo, hi, 50*(hi-lo)/max(med, 1))
}

// timedPhase seals opt.packets fresh datagrams and sends them through the
// proxy, measuring the rate and every CPU it took.
func timedPhase(ctx context.Context, opt *options, gen *generator, sink *sink, p *proxyProc, metricsAddr netip.AddrPort, f *figures, rep int) (phase, error) {
	var ph phase
	// Every thread back on the generator's CPU: one that ran a reference
	// loop on the proxy's CPU may have started threads there.
	if err := hostinfo.PinSelf(opt.genCPU); err != nil {
		return ph, err
	}
	fmt.Printf("sealing %d datagrams in advance ...\n", opt.packets)
	t := time.Now()
	if err := gen.preseal(); err != nil {
		return ph, err
	}
	if rep == 0 {
		f.presealTime = time.Since(t)
		f.datagramLen = gen.dgLen
		runtime.GC()
		time.Sleep(1200 * time.Millisecond) // let the proxy's janitor and GC settle
		f.rssIdle, _ = hostinfo.RSS(p.cmd.Process.Pid)
		f.heapIdle = p.liveHeap() // after the RSS: its collection does not flatter it
	} else {
		runtime.GC()
		time.Sleep(300 * time.Millisecond)
	}
	fmt.Printf("timed phase %d of %d: up to %v, %d datagrams ...\n", rep+1, opt.repeat, opt.duration, opt.packets)
	m0, err := scrape(metricsAddr)
	if err != nil {
		return ph, err
	}
	rb0 := hostinfo.RcvbufErrors()
	pc0, gc0 := hostinfo.CPUTime(p.cmd.Process.Pid), hostinfo.CPUTime(os.Getpid())
	s0, bad0 := sink.count.Load(), sink.bad.Load()
	bg := hostinfo.StartBackground(os.Getpid(), p.cmd.Process.Pid)
	cpuName := fmt.Sprintf("cpu%d", opt.proxyCPU)
	genName := fmt.Sprintf("cpu%d", opt.genCPU)
	core0 := hostinfo.StatBusy(cpuName, false)
	steal0, gsteal0 := proxySteal(opt), hostinfo.StatSteal(genName)
	t0 := time.Now()
	var full int
	unsent0 := gen.copiesUnsent
	ph.sent, full = gen.blast(ctx, sink, opt.duration)
	if u := gen.copiesUnsent - unsent0; u > 0 {
		fmt.Printf("  %d second copies were not sent (a send error): those datagrams reached the proxy once\n", u)
	}
	// The datagrams still in flight are part of the measurement: wait for the sink
	// to stop moving (at most 200 ms).
	for last, i := sink.count.Load(), 0; i < 20; i++ {
		time.Sleep(10 * time.Millisecond)
		c := sink.count.Load()
		if c == last {
			break
		}
		last = c
	}
	ph.elapsed = time.Since(t0)
	sec := ph.elapsed.Seconds()
	ph.sinkGot = sink.count.Load() - s0
	ph.sppBad = sink.bad.Load() - bad0
	ph.proxyCPU = 100 * (hostinfo.CPUTime(p.cmd.Process.Pid) - pc0) / sec
	ph.genCPU = 100 * (hostinfo.CPUTime(os.Getpid()) - gc0) / sec
	ph.rcvbufErrors = hostinfo.RcvbufErrors() - rb0
	ph.others = bg.Stop(sec)
	ph.coreBusy = 100 * (hostinfo.StatBusy(cpuName, false) - core0) / sec
	ph.steal = 100 * (proxySteal(opt) - steal0) / sec
	ph.genSteal = 100 * (hostinfo.StatSteal(genName) - gsteal0) / sec
	ph.fullWaits = float64(full) / max(float64(ph.sent)/udp.MaxBatch, 1)
	m1, err := scrape(metricsAddr)
	if err != nil {
		return ph, err
	}
	ph.loopSpeed = loopSpeed(opt.proxyCPU, 200*time.Millisecond)
	ph.memLatency = memLatency(opt.proxyCPU, 200*time.Millisecond)
	ph.forwarded = m1["proxy_forwarded_total"] - m0["proxy_forwarded_total"]
	ph.segmented = m1["proxy_shared_upstream_segmented_total"] - m0["proxy_shared_upstream_segmented_total"]
	for k, v := range m1 {
		if strings.HasPrefix(k, "proxy_dropped_total") {
			ph.dropped += v - m0[k]
		}
	}
	fmt.Printf("  %.0f packets/s forwarded, %.0f per proxy core (proxy %.0f%%, its CPU's steal %.1f%%; generator+sink %.0f%%, steal %.1f%%; others %.0f%%; %.0f%% of the generator's batches waited on a full window; CPU %d's loop speed after it %.0f M/s, memory walk %.1f ns a step)\n",
		ph.fwd(), ph.perCore(), ph.proxyCPU, ph.steal, ph.genCPU, ph.genSteal, ph.others, 100*ph.fullWaits, opt.proxyCPU, ph.loopSpeed, ph.memLatency)
	return ph, nil
}

// proxySteal is the steal time (seconds) of the proxy's CPUs.
func proxySteal(opt *options) float64 {
	var s float64
	for c := opt.proxyCPU; c < opt.proxyCPU+max(opt.workers, 1); c++ {
		s += hostinfo.StatSteal(fmt.Sprintf("cpu%d", c))
	}
	return s
}

// table returns the result rows: figure, value, target and verdict.
func table(opt *options, f *figures) [][3]string {
	mark := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	mb := func(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/(1<<20)) }
	sinkPPS := float64(f.sinkGot) / f.elapsed.Seconds()
	fwdPPS := f.forwarded / f.elapsed.Seconds()
	return [][3]string{
		{"figure", "value", "target"},
		{"forwarded, at the sink", fmt.Sprintf("%.0f packets/s", sinkPPS), fmt.Sprintf("≥ %d: %s", targetPPS, mark(sinkPPS >= targetPPS))},
		{"forwarded, proxy_forwarded_total", fmt.Sprintf("%.0f packets/s", fwdPPS), ""},
		{"timed phase", fmt.Sprintf("%v, %d datagrams of %d B sent, %d at the sink", f.elapsed.Round(time.Millisecond), f.sent, f.datagramLen, f.sinkGot), ""},
		{"dropped by the proxy (all reasons)", fmt.Sprintf("%.0f", f.dropped), ""},
		{"forwards sent in segmented runs (UDP GSO, shared upstream)", fmt.Sprintf("%.0f%%", 100*f.segmented/max(f.forwarded, 1)), ""},
		{"kernel UDP receive-buffer drops", fmt.Sprint(f.rcvbufErrors), ""},
		{"proxy CPU (GOMAXPROCS=1)", fmt.Sprintf("%.0f%% of CPU %d", f.proxyCPU, opt.proxyCPU), ""},
		{"proxy's core busy, any cause (softirq included)", fmt.Sprintf("%.0f%% of CPU %d", f.coreBusy, opt.proxyCPU), ""},
		{"generator + sink CPU", fmt.Sprintf("%.0f%% of CPU %d", f.genCPU, opt.genCPU), ""},
		{"capacity at 100% of the proxy's core (forwarded ÷ core busy)", fmt.Sprintf("%.0f packets/s", fwdPPS/max(f.coreBusy/100, 0.01)), fmt.Sprintf("≥ %d: %s", targetPPS, mark(fwdPPS/max(f.coreBusy/100, 0.01) >= targetPPS))},
		{"other processes on the host (noise)", fmt.Sprintf("%.0f%% of one core", f.others), ""},
		{"timed phases (median reported)", phaseList(f), "per proxy core, each phase; | starts a new proxy process"},
		{"spread of the rate per proxy core over the phases", f.spread((*phase).perCore), ""},
		{"steal (hypervisor) on the proxy's / generator's CPU", fmt.Sprintf("%.1f%% / %.1f%% of a core", f.phases[f.median].steal, f.phases[f.median].genSteal), ""},
		{"the proxy's CPU, speed of a fixed loop after each phase", loopList(f), "it moves with what no process sees (clock, sibling hyperthread, other guests)"},
		{"the proxy's CPU, a random walk through 4 MB after each phase", memList(f), "it moves with the shared cache's and memory's other users, other guests of the host included"},
		{"generator batches that waited on a full window", fmt.Sprintf("%.0f%%", 100*f.phases[f.median].fullWaits), "near 100%: the proxy, not the generator, set the pace"},
		{"proxy's core time per forwarded packet", fmt.Sprintf("%.2f µs (%.2f µs in the proxy process)", f.coreBusy/100*f.elapsed.Seconds()*1e6/max(f.forwarded, 1), f.proxyCPU/100*f.elapsed.Seconds()*1e6/max(f.forwarded, 1)), ""},
		{"reference: bare write(2) loop, 1 socket per session", floorRef(f.floorPPS), "ceiling for one send system call per packet on this host"},
		{"reference: bare sendmmsg loop, batches of 64", floorRef(f.floorBatchPPS), "ceiling for batched sends on this host"},
		{"reference: bare io_uring send loop, batches of 64, 1 socket per session", floorRef(f.floorRingPPS), "ceiling for the proxy's batched forwards (one submission a read batch) on this host"},
		{"live sessions", fmt.Sprintf("%.0f", f.sessionsLive), fmt.Sprintf("%d", opt.sessions)},
		{"RSS after ready, no session", mb(f.rssStart), ""},
		{"RSS with sessions open, idle", mb(f.rssIdle), fmt.Sprintf("≤ 20 MB: %s", mark(f.rssIdle <= targetRSS))},
		{"RSS after the timed phase", mb(f.rssLoad), fmt.Sprintf("≤ 20 MB: %s", mark(f.rssLoad <= targetRSS))},
		{"peak RSS (VmHWM)", mb(f.hwm), fmt.Sprintf("≤ 20 MB: %s", mark(f.hwm <= targetRSS))},
		{"RSS per session (idle minus after ready)", perSession(f.rssIdle-f.rssStart, opt.sessions), ""},
		{"live heap per session (Go heap after a collection, idle minus after ready)", heapPerSession(f, opt.sessions), ""},
		{"exec → first authenticated ack", fmt.Sprintf("%.1f ms", float64(f.readyAck)/1e6), fmt.Sprintf("≤ 50 ms: %s", mark(f.readyAck <= targetReady))},
		{"exec → \"proxy serving\" logged", fmt.Sprintf("%.1f ms", float64(f.readyLog)/1e6), ""},
		{"opening every session", f.setup.Round(time.Millisecond).String(), ""},
	}
}

// phaseList is every phase's rate per proxy core, the median marked.
func phaseList(f *figures) string {
	var l []string
	for i := range f.phases {
		v := fmt.Sprintf("%.0f", f.phases[i].perCore())
		if i > 0 && f.phases[i].run != f.phases[i-1].run {
			v = "| " + v // a new proxy process
		}
		if i == f.median && len(f.phases) > 1 {
			v += " (median)"
		}
		l = append(l, v)
	}
	return strings.Join(l, ", ") + " packets/s"
}

// loopList is every phase's loopSpeed.
func loopList(f *figures) string {
	var l []string
	for i := range f.phases {
		l = append(l, fmt.Sprintf("%.0f", f.phases[i].loopSpeed))
	}
	return strings.Join(l, ", ") + " M iterations/s"
}

// memList is every phase's memLatency.
func memList(f *figures) string {
	var l []string
	for i := range f.phases {
		l = append(l, fmt.Sprintf("%.1f", f.phases[i].memLatency))
	}
	return strings.Join(l, ", ") + " ns a step"
}

// perSession is b bytes over n sessions, in bytes or KB.
func perSession(b int64, n int) string {
	per := float64(b) / float64(max(n, 1))
	if per < 1024 {
		return fmt.Sprintf("%.0f B", per)
	}
	return fmt.Sprintf("%.1f KB", per/1024)
}

// heapPerSession is the growth of the proxy's live heap per session, or
// "not reported".
func heapPerSession(f *figures, n int) string {
	if f.heapStart < 0 || f.heapIdle < 0 {
		return "not reported"
	}
	return perSession(f.heapIdle-f.heapStart, n)
}

func writeMarkdown(opt *options, rows [][3]string, env string) error {
	var b strings.Builder
	args := ""
	if opt.quick {
		args += " -quick"
	}
	if opt.profile != "" {
		args += " -profile " + filepath.Base(opt.profile)
	}
	fmt.Fprintf(&b, "# Proxy capacity on one core\n\n")
	fmt.Fprintf(&b, "Written by `go run ./integration/cmd/capbench%s` (also run by `make bench`). "+
		"raic-proxy runs as its own process with GOMAXPROCS=1, pinned to CPU %d; the generator and the sink "+
		"(the game server) run in the bench process, pinned to CPU %d. %d sessions of one client are opened "+
		"(a hello each, answered by an ack), then %d-byte game packets, sealed in advance and spread "+
		"round-robin over the sessions, are sent with sendmmsg, at most %d in flight, so the proxy always "+
		"has work queued; the sink counts with recvmmsg. Loopback only: the kernel delivers each forwarded datagram "+
		"to the sink's socket on the proxy's core, inside the proxy's send (softirq), so \"core busy\" and \"core "+
		"time\" include work that a network card would take off that core; the proxy's own process time is shown "+
		"beside it.\n\n",
		args, opt.proxyCPU, opt.genCPU, opt.sessions, opt.size, opt.window)
	for i, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", r[0], r[1], r[2])
		if i == 0 {
			b.WriteString("| --- | ---: | --- |\n")
		}
	}
	b.WriteString("\nTargets (issue #2): ≥ 200,000 packets/s forwarded on one core with 1,000 live sessions, " +
		"≤ 20 MB RSS, ready to serve ≤ 50 ms after start. Ready is measured from exec to the first " +
		"authenticated answer (the ack of a hello) at the client.\n")
	fmt.Fprintf(&b, "\nMachine: %s. This is a shared development machine with other builds and tests "+
		"running at the same time: the forwarded rate moves from run to run with the other processes' load (see the "+
		"noise row and the reference loops, measured on the same core right after), and between proxy processes "+
		"more than between the timed phases of one: the figures are the median of %d timed phases over %d proxy "+
		"process(es), with their spread.\n", env, opt.repeat*opt.runs, opt.runs)
	if err := os.MkdirAll(filepath.Dir(opt.out), 0o755); err != nil {
		return err
	}
	return os.WriteFile(opt.out, []byte(b.String()), 0o644)
}

// sink is the game server: it counts what the proxy forwards. As an SPP
// server (spp) it also parses and strips each datagram's header, counting
// those without a valid one (bad), as a server must drop them.
type sink struct {
	paused atomic.Bool // the drain test: leave datagrams unread (the socket overflows)
	conn   *udp.Conn
	count  atomic.Uint64
	bad    atomic.Uint64
	spp    bool // set before the proxy sends
	done   chan struct{}
}

func newSink() (*sink, error) {
	c, err := udp.Listen("udp4", udp.Options{Local: netip.MustParseAddrPort("127.0.0.1:0"), RecvBuffer: 8 << 20})
	if err != nil {
		return nil, err
	}
	s := &sink{conn: c, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		msgs := make([]udp.Message, udp.MaxBatch)
		for i := range msgs {
			msgs[i].Buf = make([]byte, 2048)
		}
		for {
			if s.paused.Load() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			n, err := c.ReadBatch(msgs)
			if err != nil {
				return
			}
			if s.spp {
				bad := 0
				for i := 0; i < n; i++ {
					if client, _, _, err := proxyproto.SPP.Parse(msgs[i].Buf[:msgs[i].N]); err != nil || !client.IsValid() {
						bad++
					}
				}
				s.bad.Add(uint64(bad))
			}
			s.count.Add(uint64(n))
		}
	}()
	return s, nil
}

func (s *sink) addr() netip.AddrPort { return s.conn.LocalAddr() }

func (s *sink) close() { s.paused.Store(false); s.conn.Close(); <-s.done }

// simSessionID is the ID of simulated session i: spread over the 64 bits
// as a router's random ones are (the golden-ratio step is odd, so the low
// bits, which steer a session to a worker, take every value in turn), never 0.
func simSessionID(base uint64, i int) uint64 {
	if id := base + uint64(i)*0x9e3779b97f4a7c15; id != 0 {
		return id
	}
	return 1
}

// genSession is one simulated router session.
type genSession struct {
	mu    sync.Mutex
	send  *tunnel.Sender
	recv  *tunnel.Receiver
	acked atomic.Bool
}

// generator plays the routers.
type generator struct {
	opt   *options
	conn  *udp.Conn   // conns[0]
	conns []*udp.Conn // -sources sockets; blast takes them in turn per batch
	proxy netip.AddrPort
	sess  []*genSession
	byID  map[uint64]int
	acks  chan int // index of each session acked for the first time

	copiesUnsent uint64 // -copies 2: second copies a send error kept back (blast)

	buf   []byte // pre-sealed datagrams, stride dgLen
	dgLen int
	n     int
	pkt   []byte
}

func newGenerator(opt *options, key wire.Key, target, proxyAddr netip.AddrPort) (*generator, error) {
	c, err := udp.Listen("udp4", udp.Options{Local: netip.MustParseAddrPort("127.0.0.1:0"), RecvBuffer: 4 << 20, SendBuffer: 4 << 20})
	if err != nil {
		return nil, err
	}
	g := &generator{opt: opt, conn: c, conns: []*udp.Conn{c}, proxy: proxyAddr, byID: map[uint64]int{}, acks: make(chan int, opt.sessions+1),
		pkt: make([]byte, opt.size)}
	for len(g.conns) < opt.sources {
		c, err := udp.Listen("udp4", udp.Options{Local: netip.MustParseAddrPort("127.0.0.1:0"), RecvBuffer: 1 << 20, SendBuffer: 4 << 20})
		if err != nil {
			g.close()
			return nil, err
		}
		g.conns = append(g.conns, c)
	}
	for i := range g.pkt {
		g.pkt[i] = byte(i)
	}
	base := uint64(mono.Now())
	for i := 0; i < opt.sessions; i++ {
		salt, err := wire.NewSalt()
		if err != nil {
			return nil, err
		}
		id := simSessionID(base, i)
		send, recv, err := wire.DeriveKeys(&key, &salt, id, wire.RoleClient)
		if err != nil {
			return nil, err
		}
		hello := &wire.Hello{Salt: salt, Target: target}
		if err := hello.SetClientID(clientID); err != nil {
			return nil, err
		}
		s, err := tunnel.NewSender(send, id, raic.Params{Scheme: raic.SchemeCopy, K: 1}, hello)
		if err != nil {
			return nil, err
		}
		g.sess = append(g.sess, &genSession{send: s, recv: tunnel.NewReceiver(recv, raic.DecoderConfig{})})
		g.byID[id] = i
	}
	for _, c := range g.conns {
		go g.readAcks(c)
	}
	return g, nil
}

func (g *generator) close() {
	for _, c := range g.conns {
		c.Close()
	}
}

// readAcks authenticates what the proxy answers on c and marks sessions acked.
func (g *generator) readAcks(conn *udp.Conn) {
	msgs := make([]udp.Message, udp.MaxBatch)
	for i := range msgs {
		msgs[i].Buf = make([]byte, wire.MaxDatagram+1)
	}
	var h wire.Header
	for {
		n, err := conn.ReadBatch(msgs)
		if err != nil {
			return
		}
		now := mono.Now()
		for i := 0; i < n; i++ {
			dg := msgs[i].Buf[:msgs[i].N]
			off, err := wire.Parse(dg, &h, nil)
			if err != nil || h.Type != wire.TypeAck {
				continue
			}
			idx, ok := g.byID[h.Session]
			if !ok {
				continue
			}
			s := g.sess[idx]
			s.mu.Lock() // sessions answer on every source socket: a Receiver is one goroutine's
			_, err = s.recv.Receive(dg, &h, off, now, nil)
			s.mu.Unlock()
			if err != nil {
				continue
			}
			s.send.Heard(now)
			if !s.acked.Swap(true) {
				g.acks <- idx
			}
		}
	}
}

// sendOne seals one game packet of session i (with the hello while it is due)
// and sends it.
func (g *generator) sendOne(i int) error {
	_, dgs, err := g.sess[i].send.Seal(g.pkt, mono.Now())
	if err != nil {
		return err
	}
	// From the session's own source (see sessionOf), so that the hello
	// adds no path the data will not use.
	c := g.conns[i%len(g.conns)]
	for _, dg := range dgs {
		c.WriteTo(dg, g.proxy) // errors before the proxy binds are expected
	}
	return nil
}

// probe sends session 0's hello every 200 µs from the moment the proxy was
// exec'd until the first authenticated ack, and returns that time.
func (g *generator) probe(ctx context.Context, started time.Time, p *proxyProc) (time.Duration, error) {
	deadline := started.Add(5 * time.Second)
	for {
		if err := g.sendOne(0); err != nil {
			return 0, err
		}
		select {
		case <-g.acks:
			return time.Since(started), nil
		case <-time.After(200 * time.Microsecond):
		case <-p.done:
			return 0, p.alive()
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("no ack within 5 s of starting the proxy\n%s", p.logTail())
		}
	}
}

// helloRound is the most hellos openAll sends before waiting for their acks.
const helloRound = 2000

// openAll sends a hello for every session not yet acked, and again every 50 ms
// for those still waiting, until all are acked (at most 5 s, and 1 s more per
// 2,000 sessions).
func (g *generator) openAll(ctx context.Context) error {
	limit := 5*time.Second + time.Duration(len(g.sess)/2000)*time.Second
	deadline := time.Now().Add(limit)
	for {
		// The sessions' own flags say which are acked (session 0 by the
		// probe); the channel only wakes this loop up when one is.
		acked := g.ackedCount()
		if acked == len(g.sess) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d sessions acked within %v", acked, len(g.sess), limit)
		}
		// At most a few thousand hellos per round, so that the proxy's receive
		// buffer never overflows with them and a round's acks come back in it.
		sent := 0
		for i, s := range g.sess {
			if sent == helloRound {
				break
			}
			if !s.acked.Load() {
				if err := g.sendOne(i); err != nil {
					return err
				}
				sent++
			}
		}
		t := time.After(50 * time.Millisecond)
	wait:
		for got := 0; got < sent; {
			select {
			case <-g.acks:
				got++
			case <-t:
				break wait
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
}

// ackedCount is how many sessions have been acked.
func (g *generator) ackedCount() int {
	n := 0
	for _, s := range g.sess {
		if s.acked.Load() {
			n++
		}
	}
	return n
}

// preseal seals opt.packets datagrams, round-robin over the sessions, into one
// buffer. Every session is acked, so none carries the hello and all have the
// same length.
func (g *generator) preseal() error {
	now := mono.Now()
	for _, s := range g.sess {
		// Every session was acked, but opening many takes long enough that a
		// sender would put its hello back on as a keepalive would.
		s.send.Heard(now)
	}
	_, dgs, err := g.sess[0].send.Seal(g.pkt, now) // learn the length (and spend one ID)
	if err != nil {
		return err
	}
	g.dgLen = len(dgs[0])
	g.n = g.opt.packets
	if len(g.buf) != g.n*g.dgLen {
		g.buf = make([]byte, g.n*g.dgLen) // a later phase reuses it
	}
	for k := 0; k < g.n; k++ {
		s := g.sess[g.sessionOf(k)]
		_, dgs, err := s.send.Seal(g.pkt, now)
		if err != nil {
			return err
		}
		if len(dgs) != 1 || len(dgs[0]) != g.dgLen {
			return fmt.Errorf("session %d sealed %d datagrams of %d bytes, want 1 of %d", g.sessionOf(k), len(dgs), len(dgs[0]), g.dgLen)
		}
		copy(g.buf[k*g.dgLen:], dgs[0])
	}
	return nil
}

// sessionOf is the session of pre-sealed datagram k. blast sends batch b
// (datagrams 64b to 64b+63) from source b mod S, so datagram k goes to a
// session of that source's class (s mod S = b mod S), the class's sessions
// in turn: each session is heard from one source only, as a router with one
// uplink is (from two with -copies 2), not from every source.
func (g *generator) sessionOf(k int) int {
	n, src := len(g.sess), len(g.conns)
	if src == 1 || n < src {
		return k % n // (fewer sessions than sources: some have none of their own)
	}
	b := k / udp.MaxBatch
	c := b % src
	r := (b/src)*udp.MaxBatch + k%udp.MaxBatch // the class's r-th datagram
	inClass := (n - c + src - 1) / src         // sessions c, c+src, c+2·src, ...
	return c + src*(r%inClass)
}

// blast sends the pre-sealed datagrams in sendmmsg batches, keeping at most
// opt.window in flight, until they run out or d passes. It returns how many
// were sent.
func (g *generator) blast(ctx context.Context, s *sink, d time.Duration) (uint64, int) {
	msgs := make([]udp.Message, udp.MaxBatch)
	base := s.count.Load()
	end := time.Now().Add(d)
	var sent uint64
	k, full := 0, 0
	for batches := 0; k < g.n; batches++ {
		if batches%64 == 0 && (time.Now().After(end) || ctx.Err() != nil) {
			break
		}
		// Wait while the window is full; a lost datagram would keep it full,
		// so the wait is bounded.
		if sent-(s.count.Load()-base) > uint64(g.opt.window) {
			full++
		}
		// Yield rather than sleep while the proxy has a CPU of its own: a
		// sleep this short takes the runtime's timer path and can last long
		// enough for the proxy to run dry (its batches shrink, each packet
		// costs more). The sink runs when this yields. When a worker shares
		// this CPU, sleep, so as not to take its time.
		var wait time.Time
		for sent-(s.count.Load()-base) > uint64(g.opt.window) {
			if wait.IsZero() {
				wait = time.Now().Add(40 * time.Millisecond)
			} else if time.Now().After(wait) {
				break
			}
			if g.sharesCPU() {
				time.Sleep(20 * time.Microsecond)
			} else {
				runtime.Gosched()
			}
		}
		nb := min(udp.MaxBatch, g.n-k)
		for i := 0; i < nb; i++ {
			msgs[i].Buf = g.buf[(k+i)*g.dgLen : (k+i+1)*g.dgLen]
			msgs[i].N = g.dgLen
			msgs[i].Addr = g.proxy
		}
		src := k / udp.MaxBatch // the batch's source (see sessionOf)
		n, err := g.conns[src%len(g.conns)].WriteBatch(msgs[:nb])
		if err != nil {
			n++ // skip the failed one
		}
		if g.opt.copies > 1 && n > 0 {
			// The same datagrams from the next source too, as a router with
			// two uplinks sends a copy on each: the proxy forwards the first
			// and drops the other as a duplicate.
			want := min(n, nb)
			if got, _ := g.conns[(src+1)%len(g.conns)].WriteBatch(msgs[:want]); got < want {
				g.copiesUnsent += uint64(want - got) // the rest of that batch's copies
			}
		}
		k += n
		sent += uint64(n)
	}
	return sent, full
}

// sharesCPU reports whether a proxy worker is pinned to the generator's CPU.
func (g *generator) sharesCPU() bool {
	return g.opt.genCPU >= g.opt.proxyCPU && g.opt.genCPU < g.opt.proxyCPU+max(g.opt.workers, 1)
}

// proxyProc is the proxy process.
type proxyProc struct {
	cmd     *exec.Cmd
	started time.Time
	done    chan struct{}

	mu      sync.Mutex
	tail    []string
	err     error
	readyAt time.Time
	heaps   int   // memory reports read (SIGUSR1: cli.LogMemory)
	heap    int64 // the last one's heap_alloc_bytes
}

// liveHeap asks the proxy for a memory report (SIGUSR1: it collects garbage
// first) and returns its live heap in bytes; -1 when none comes within 5 s.
func (p *proxyProc) liveHeap() int64 {
	p.mu.Lock()
	n := p.heaps
	p.mu.Unlock()
	p.cmd.Process.Signal(syscall.SIGUSR1)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		p.mu.Lock()
		got, h := p.heaps, p.heap
		p.mu.Unlock()
		if got > n {
			return h
		}
	}
	return -1
}

// cpuList is the CPUs the proxy is pinned to: workers of them from cpu on.
func cpuList(cpu, workers int) string {
	if workers <= 1 {
		return strconv.Itoa(cpu)
	}
	return fmt.Sprintf("%d-%d", cpu, cpu+workers-1)
}

// startProxy runs argv with GOMAXPROCS=workers and env, pinned to as many
// CPUs from cpu on.
func startProxy(argv []string, cpu, workers int, env []string) (*proxyProc, error) {
	if ts, err := exec.LookPath("taskset"); err == nil {
		argv = append([]string{ts, "-c", cpuList(cpu, workers)}, argv...)
	}
	p := &proxyProc{cmd: exec.Command(argv[0], argv[1:]...), done: make(chan struct{})}
	p.cmd.Env = append(append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(max(workers, 1))), env...)
	p.cmd.Stdout = io.Discard
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	p.started = time.Now()
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		// No taskset: pin the process after the fact (its first threads only).
		hostinfo.PinPID(p.cmd.Process.Pid, cpu)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			if p.readyAt.IsZero() && strings.Contains(line, `msg="proxy serving"`) {
				p.readyAt = time.Now()
			}
			if _, v, ok := strings.Cut(line, " heap_alloc_bytes="); ok {
				v, _, _ = strings.Cut(v, " ")
				if h, err := strconv.ParseInt(v, 10, 64); err == nil {
					p.heaps, p.heap = p.heaps+1, h
				}
			}
			if !strings.Contains(line, `msg="session opened"`) {
				p.tail = append(p.tail, line)
				if len(p.tail) > 20 {
					p.tail = p.tail[1:]
				}
			}
			p.mu.Unlock()
		}
		err := p.cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

func (p *proxyProc) readyLog() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.readyAt.IsZero() {
		return 0
	}
	return p.readyAt.Sub(p.started)
}

func (p *proxyProc) logTail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}

func (p *proxyProc) alive() error {
	select {
	case <-p.done:
		return fmt.Errorf("proxy exited: %v\n%s", p.err, p.logTail())
	default:
		return nil
	}
}

// stop ends the proxy with SIGTERM (so a profile is written), killing it after 5 s.
func (p *proxyProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// freePort returns a loopback address whose port was free a moment ago.
func freePort(network string) (netip.AddrPort, error) {
	if network == "tcp" {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return netip.AddrPort{}, err
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).AddrPort(), nil
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort(), nil
}

// scrape reads the proxy's Prometheus text into name → value.
func scrape(addr netip.AddrPort) (map[string]float64, error) {
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m, sc.Err()
}

func floorRef(r floorResult) string {
	if r.sent == 0 {
		return "not measured"
	}
	return fmt.Sprintf("%.0f packets/s sent (%.2f µs each), %.0f/s at the sink", r.sent, 1e6/r.sent, r.got)
}

// flagSet reports whether the flag name was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}

// printRows prints a table's rows (the first is the header) in aligned
// columns.
func printRows(rows [][]string) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t")+"\t")
	}
	tw.Flush()
}

// writeMarkdownRows writes a table's rows (the first is the header) as a
// markdown table.
func writeMarkdownRows(b *strings.Builder, rows [][]string) {
	for i, r := range rows {
		b.WriteString("| " + strings.Join(r, " | ") + " |\n")
		if i == 0 {
			b.WriteString("|" + strings.Repeat(" --- |", len(r)) + "\n")
		}
	}
}

// writeResults writes a finished results file and says so.
func writeResults(path string, b *strings.Builder) error {
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return err
	}
	fmt.Println("wrote", path)
	return nil
}
