// Command rttbench measures the round-trip time that the router and the proxy
// add to a game's packets, on loopback.
//
// It runs a gamegen echo server and a gamegen client in this process, and
// raic-router and raic-proxy as separate processes (so the measuring process
// shares no Go runtime with them). For each packet rate it measures the RTT of
// 100-byte packets twice: direct (client → server) and through the suite
// (client → router → two uplinks on 127.0.0.1 → proxy → server and back). It
// prints a table of sent, lost and RTT p50/p99/p99.9 per path, and the
// difference through − direct, and writes the same table as markdown.
//
//	go run ./integration/cmd/rttbench                 # 1,000 and 10,000 pps, 15 s each
//	go run ./integration/cmd/rttbench -quick          # a ~15 s smoke run
//	go run ./integration/cmd/rttbench -pin            # router+proxy on CPU 0, this process on CPU 1
//
// The "added" columns are differences of percentiles (p99 through minus p99
// direct), not percentiles of per-packet differences: the two paths are
// measured one after the other, not packet by packet.
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
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/raicnet/raic/integration/gamegen"
	"github.com/raicnet/raic/pkg/wire"
)

// Targets of issue #2, for a 100-byte packet at the given rate.
const (
	targetP50At1k   = 60 * time.Microsecond
	targetP99At1k   = 250 * time.Microsecond
	targetP99At10k  = 500 * time.Microsecond
	reportDeadline  = 50 * time.Millisecond
	startupDeadline = 10 * time.Second
)

// options are the command's flags.
type options struct {
	routerBin, proxyBin string
	rates               []float64
	size                int
	duration, warmup    time.Duration
	spin                time.Duration
	pin                 bool
	nice                int
	out                 string
	quick               bool
	baseline            bool
	relayTarget         string // set when this binary runs as a baseline relay
}

func main() {
	opt, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "rttbench:", err)
		os.Exit(2)
	}
	if opt.relayTarget != "" {
		if err := runRelay(opt.relayTarget); err != nil {
			fmt.Fprintln(os.Stderr, "rttbench relay:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opt); err != nil {
		fmt.Fprintln(os.Stderr, "rttbench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (*options, error) {
	fs := flag.NewFlagSet("rttbench", flag.ContinueOnError)
	o := &options{}
	rates := fs.String("rates", "1000,10000", "packet rates to measure, packets per second, comma-separated")
	fs.StringVar(&o.routerBin, "router", "", "raic-router binary (default: build it into a temporary directory)")
	fs.StringVar(&o.proxyBin, "proxy", "", "raic-proxy binary (default: build it into a temporary directory)")
	fs.IntVar(&o.size, "size", 100, "packet size in bytes (UDP payload)")
	fs.DurationVar(&o.duration, "duration", 12*time.Second, "measured time per rate and path")
	fs.DurationVar(&o.warmup, "warmup", 2*time.Second, "warm-up time per rate and path, not measured")
	fs.DurationVar(&o.spin, "spin", -1, "client pacer busy-wait window (-1: 0 below 5,000 pps, 50µs from 5,000 pps)")
	fs.BoolVar(&o.pin, "pin", true, "pin router and proxy (and the baseline relays) to CPU 0 and this process to CPU 1")
	fs.IntVar(&o.nice, "nice", -20, "nice value for this process and the ones it starts, so other work on a shared host disturbs the measurement less (0: leave as is)")
	fs.BoolVar(&o.baseline, "baseline", true, "also measure the baseline path: two plain UDP relay processes in a chain")
	fs.StringVar(&o.relayTarget, "internal-relay", "", "run as a baseline relay to this address (used by rttbench itself)")
	fs.StringVar(&o.out, "out", "docs/bench-rtt.md", "markdown file to write the table to (empty: none)")
	fs.BoolVar(&o.quick, "quick", false, "short smoke run (2 s measured + 0.5 s warm-up per rate and path, no baseline, no -out unless given)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	for _, s := range strings.Split(*rates, ",") {
		r, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil || r <= 0 {
			return nil, fmt.Errorf("bad rate %q", s)
		}
		o.rates = append(o.rates, r)
	}
	if o.quick {
		o.duration, o.warmup, o.baseline = 2*time.Second, 500*time.Millisecond, false
		if !flagSet(fs, "out") {
			o.out = "" // a smoke run does not replace the published table
		}
	}
	return o, nil
}

// result is one measured run.
type result struct {
	rate     float64
	path     string // "direct" or "router+proxy"
	report   *gamegen.Report
	cpuRtr   float64 // router (or first relay) CPU, percent of one core, during the run
	cpuProxy float64 // proxy (or second relay) CPU
	others   float64 // CPU used by every other process on the host, percent of one core
	rcvbuf   uint64  // UDP datagrams the kernel dropped for a full receive buffer, any socket on the host
}

func run(ctx context.Context, opt *options) error {
	start := time.Now()
	load0 := hostinfo.LoadAvg()
	if opt.nice != 0 {
		if err := hostinfo.NiceSelf(opt.nice); err != nil {
			fmt.Fprintf(os.Stderr, "rttbench: cannot set nice %d (%v); going on\n", opt.nice, err)
			opt.nice = 0
		}
	}
	if opt.pin {
		if err := hostinfo.PinSelf(1); err != nil {
			return fmt.Errorf("pin this process to CPU 1: %w", err)
		}
	}
	tmp, err := os.MkdirTemp("", "rttbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if opt.routerBin == "" || opt.proxyBin == "" {
		fmt.Println("building raic-router and raic-proxy ...")
	}
	if opt.routerBin == "" {
		if opt.routerBin, err = build(ctx, tmp, "raic-router", "github.com/raicnet/raic/router/cmd/raic-router"); err != nil {
			return err
		}
	}
	if opt.proxyBin == "" {
		if opt.proxyBin, err = build(ctx, tmp, "raic-proxy", "github.com/raicnet/raic/proxy/cmd/raic-proxy"); err != nil {
			return err
		}
	}

	// The game server, echo only, in this process.
	srv, err := gamegen.NewServer(gamegen.ServerConfig{Listen: netip.MustParseAddrPort("127.0.0.1:0"), Echo: true})
	if err != nil {
		return err
	}
	srvCtx, srvStop := context.WithCancel(ctx)
	srvDone := make(chan struct{})
	go func() { srv.Serve(srvCtx); close(srvDone) }()
	defer func() { srvStop(); srv.Close(); <-srvDone }()

	key, err := wire.GenerateKey()
	if err != nil {
		return err
	}
	pinCPU := -1
	if opt.pin {
		pinCPU = 0
	}
	maxRate := 0.0
	for _, r := range opt.rates {
		maxRate = max(maxRate, r)
	}
	proxyCfg := fmt.Sprintf(`listen = "127.0.0.1:0"
log_level = "info"
[[client]]
id = "rttbench"
key = "%s"
allow = ["%s"]
rate_pps = %d
`, key, srv.Addr(), int(4*maxRate)+1000)
	proxy, err := startChild(ctx, tmp, "proxy", opt.proxyBin, proxyCfg, pinCPU, regexp.MustCompile(`msg="proxy serving".* listen=(\S+)`))
	if err != nil {
		return err
	}
	defer proxy.stop()
	routerCfg := fmt.Sprintf(`client_id = "rttbench"
key = "%s"
proxy = "%s"
log_level = "info"
[[uplink]]
name = "isp0"
source = "127.0.0.1"
[[uplink]]
name = "isp1"
source = "127.0.0.1"
[[forward]]
listen = "127.0.0.1:0"
server = "%s"
`, key, proxy.addr, srv.Addr())
	router, err := startChild(ctx, tmp, "router", opt.routerBin, routerCfg, pinCPU, regexp.MustCompile(`msg=forwarding.* listen=(\S+)`))
	if err != nil {
		return err
	}
	defer router.stop()
	fwd, err := netip.ParseAddrPort(router.addr)
	if err != nil {
		return fmt.Errorf("router forward address %q: %v", router.addr, err)
	}

	paths := []string{"direct", "router+proxy"}
	var relayIn netip.AddrPort
	var relays [2]*child
	if opt.baseline {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		ready := regexp.MustCompile(`msg="relay serving" listen=(\S+)`)
		r2, err := startChild(ctx, tmp, "relay2", self, "", pinCPU, ready, "-internal-relay", srv.Addr().String())
		if err != nil {
			return err
		}
		defer r2.stop()
		r1, err := startChild(ctx, tmp, "relay1", self, "", pinCPU, ready, "-internal-relay", r2.addr)
		if err != nil {
			return err
		}
		defer r1.stop()
		relays = [2]*child{r1, r2}
		if relayIn, err = netip.ParseAddrPort(r1.addr); err != nil {
			return err
		}
		paths = append(paths, "2 plain relays")
	}

	var results []result
	for _, rate := range opt.rates {
		for _, path := range paths {
			target := srv.Addr()
			switch path {
			case "router+proxy":
				target = fwd
			case "2 plain relays":
				target = relayIn
			}
			spin := opt.spin
			if spin < 0 {
				spin = 0
				if rate >= 5000 {
					spin = 50 * time.Microsecond
				}
			}
			fmt.Printf("measuring %s at %.0f pps for %v (+%v warm-up) ...\n", path, rate, opt.duration, opt.warmup)
			// CPU of the two processes in the path: router and proxy, or the relays.
			first, second := router, proxy
			if path == "2 plain relays" {
				first, second = relays[0], relays[1]
			}
			cr0, cp0 := hostinfo.CPUTime(first.cmd.Process.Pid), hostinfo.CPUTime(second.cmd.Process.Pid)
			bg := hostinfo.StartBackground(allPIDs(router, proxy, relays[0], relays[1])...)
			rb0 := hostinfo.RcvbufErrors()
			t0 := time.Now()
			rep, err := gamegen.RunClient(ctx, gamegen.ClientConfig{
				Server:   target,
				Local:    netip.MustParseAddrPort("127.0.0.1:0"),
				Rate:     rate,
				Size:     opt.size,
				Duration: opt.duration,
				Warmup:   opt.warmup,
				Echo:     true,
				Spin:     spin,
				Deadline: reportDeadline,
			})
			el := time.Since(t0).Seconds()
			if err != nil && !errors.Is(err, gamegen.ErrNoServerReport) {
				return fmt.Errorf("%s at %.0f pps: %w", path, rate, err)
			}
			res := result{rate: rate, path: path, report: rep, others: bg.Stop(el), rcvbuf: hostinfo.RcvbufErrors() - rb0}
			if path != "direct" {
				res.cpuRtr = 100 * (hostinfo.CPUTime(first.cmd.Process.Pid) - cr0) / el
				res.cpuProxy = 100 * (hostinfo.CPUTime(second.cmd.Process.Pid) - cp0) / el
			}
			results = append(results, res)
			if err := router.alive(); err != nil {
				return err
			}
			if err := proxy.alive(); err != nil {
				return err
			}
		}
	}
	load1 := hostinfo.LoadAvg()
	var dropNotes []string
	for _, c := range []*child{router, proxy, relays[0], relays[1]} {
		if c == nil {
			continue
		}
		for sock, n := range hostinfo.SocketDrops(c.cmd.Process.Pid) {
			dropNotes = append(dropNotes, fmt.Sprintf("%s socket %s: the kernel dropped %d datagrams (receive buffer full)", c.name, sock, n))
		}
	}
	sort.Strings(dropNotes)
	for _, n := range dropNotes {
		fmt.Println(n)
	}
	for _, c := range []*child{router, proxy} {
		c.mu.Lock()
		if c.nwarn > 0 {
			fmt.Printf("%s logged %d warnings or errors; the first:\n  %s\n", c.name, c.nwarn, strings.Join(c.warns, "\n  "))
		}
		c.mu.Unlock()
	}

	env := fmt.Sprintf("%s, %d CPUs (%s), Go %s, kernel %s; load average %s before, %s after; %s",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.NumCPU(), hostinfo.CPUModel(), runtime.Version(), hostinfo.Kernel(),
		load0, load1, pinNote(opt.pin, opt.nice))
	if src := hostinfo.SourceState(); src != "" {
		env += "; built from " + src
	}
	fmt.Println()
	writeText(os.Stdout, results)
	fmt.Println()
	verdict := verdicts(results)
	if w := noiseWarning(results); w != "" {
		verdict = append(verdict, w)
	}
	for _, v := range verdict {
		fmt.Println(v)
	}
	fmt.Printf("\n%s\nrun took %v\n", env, time.Since(start).Round(time.Second))
	if opt.out != "" {
		if err := writeMarkdown(opt, results, append(verdict, dropNotes...), env); err != nil {
			return err
		}
		fmt.Println("wrote", opt.out)
	}
	return nil
}

// allPIDs returns this process's PID and those of the children that run.
func allPIDs(cs ...*child) []int {
	pids := []int{os.Getpid()}
	for _, c := range cs {
		if c != nil {
			pids = append(pids, c.cmd.Process.Pid)
		}
	}
	return pids
}

func pinNote(pin bool, nice int) string {
	s := "no CPU pinning"
	if pin {
		s = "router, proxy and the baseline relays pinned to CPU 0, client and echo server to CPU 1"
	}
	if nice != 0 {
		s += fmt.Sprintf("; every measured process at nice %d", nice)
	}
	return s
}

// us formats a duration in microseconds.
func us(d time.Duration) string { return strconv.FormatInt(d.Microseconds(), 10) }

// added formats through − direct in microseconds, signed.
func added(through, direct time.Duration) string {
	return fmt.Sprintf("%+d", (through - direct).Microseconds())
}

// pair finds the direct run that goes with r.
func pair(results []result, r result) *result {
	for i := range results {
		if results[i].rate == r.rate && results[i].path == "direct" {
			return &results[i]
		}
	}
	return nil
}

// rows returns the table rows, each a list of cells.
func rows(results []result) [][]string {
	out := [][]string{{"rate pps", "path", "sent", "lost", "loss %", "RTT p50 µs", "p99 µs", "p99.9 µs", "max µs",
		"added p50 µs", "added p99 µs", "added p99.9 µs", "CPU % router/relay 1", "CPU % proxy/relay 2", "other processes CPU %", "host UDP rcvbuf drops"}}
	for _, r := range results {
		rep := r.report
		row := []string{fmt.Sprintf("%.0f", r.rate), r.path, fmt.Sprint(rep.Up.Sent), fmt.Sprint(rep.EchoLost),
			fmt.Sprintf("%.3f", pctOf(rep.EchoLost, rep.Up.Sent)),
			us(rep.RTT.P50), us(rep.RTT.P99), us(rep.RTT.P999), us(rep.RTT.Max)}
		if d := pair(results, r); d != nil && r.path != "direct" {
			row = append(row, added(rep.RTT.P50, d.report.RTT.P50), added(rep.RTT.P99, d.report.RTT.P99),
				added(rep.RTT.P999, d.report.RTT.P999), fmt.Sprintf("%.0f", r.cpuRtr), fmt.Sprintf("%.0f", r.cpuProxy))
		} else {
			row = append(row, "", "", "", "", "")
		}
		row = append(row, fmt.Sprintf("%.0f", r.others), fmt.Sprint(r.rcvbuf))
		out = append(out, row)
	}
	return out
}

func pctOf(n int64, of uint64) float64 {
	if of == 0 {
		return 0
	}
	return 100 * float64(n) / float64(of)
}

func writeText(w io.Writer, results []result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	for _, row := range rows(results) {
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
	}
	tw.Flush()
}

// noisyCPU is the other processes' CPU (percent of one core) above which a run
// is flagged: their load shows in the tails.
const noisyCPU = 20

// noiseWarning returns a warning when other processes loaded the host during
// any run, or "".
func noiseWarning(results []result) string {
	worst := 0.0
	for _, r := range results {
		worst = max(worst, r.others)
	}
	if worst <= noisyCPU {
		return ""
	}
	return fmt.Sprintf("WARNING: other processes used up to %.0f%% of a core during these runs; the tails (p99 and beyond) "+
		"measure them as much as the suite. Re-run on a quiet host.", worst)
}

// verdicts compares the results with the targets of issue #2.
func verdicts(results []result) []string {
	var out []string
	mark := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	for _, r := range results {
		d := pair(results, r)
		if d == nil || r.path != "router+proxy" {
			continue
		}
		a50 := r.report.RTT.P50 - d.report.RTT.P50
		a99 := r.report.RTT.P99 - d.report.RTT.P99
		switch r.rate {
		case 1000:
			out = append(out, fmt.Sprintf("1,000 pps: added p50 %d µs (target ≤ %d: %s), added p99 %d µs (target ≤ %d: %s)",
				a50.Microseconds(), targetP50At1k.Microseconds(), mark(a50 <= targetP50At1k),
				a99.Microseconds(), targetP99At1k.Microseconds(), mark(a99 <= targetP99At1k)))
		case 10000:
			lost := r.report.EchoLost
			out = append(out, fmt.Sprintf("10,000 pps: lost %d (target 0: %s), added p99 %d µs (target ≤ %d: %s)",
				lost, mark(lost == 0), a99.Microseconds(), targetP99At10k.Microseconds(), mark(a99 <= targetP99At10k)))
		}
	}
	return out
}

func writeMarkdown(opt *options, results []result, verdict []string, env string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# RTT added by router + proxy (loopback)\n\n")
	fmt.Fprintf(&b, "Written by `go run ./integration/cmd/rttbench%s` (also run by `make bench`). "+
		"%d-byte packets, %v measured after %v of warm-up per rate and path. "+
		"Direct: gamegen client → gamegen echo server. Through: client → raic-router (explicit mode, "+
		"two uplinks on 127.0.0.1, RAIC-1 copies) → raic-proxy → server, and back; router and proxy run as "+
		"separate processes. Baseline (\"2 plain relays\"): client → a plain Go UDP relay → a second one → server, "+
		"as many process hops as router and proxy with no sealing, copies or sessions; it is the floor this host "+
		"sets for any two-process path. \"Added\" is the path's percentile minus the direct percentile. "+
		"CPU is the share of one core each process in the path used during its run; \"other processes\" is the CPU "+
		"every process outside this benchmark used meanwhile (of 200%%), a measure of how noisy the host was; "+
		"\"host UDP rcvbuf drops\" counts datagrams the kernel dropped for a full socket receive buffer (any socket "+
		"on the host, from /proc/net/snmp), which tells where lost packets went.\n\n",
		argsNote(opt), opt.size, opt.duration, opt.warmup)
	for i, row := range rows(results) {
		b.WriteString("| " + strings.Join(row, " | ") + " |\n")
		if i == 0 {
			b.WriteString("|" + strings.Repeat(" ---: |", len(row)) + "\n")
		}
	}
	b.WriteString("\nTargets (issue #2): added RTT ≤ 60 µs p50 and ≤ 250 µs p99 at 1,000 pps; no loss and added p99 ≤ 500 µs at 10,000 pps. " +
		"For reference, an existing duplicating shim adds about 300 µs p50 and 760 µs p99 at 1,000 pps, " +
		"and loses 1.4% with a p99 of 19 ms at 10,000 pps.\n\n")
	for _, v := range verdict {
		b.WriteString("- " + v + "\n")
	}
	fmt.Fprintf(&b, "\nMachine: %s. This is a shared development machine with other builds and tests "+
		"running at the same time, so the tails (p99.9, max) are noisy; compare runs on a quiet host before "+
		"drawing conclusions from them.\n", env)
	if err := os.MkdirAll(filepath.Dir(opt.out), 0o755); err != nil {
		return err
	}
	return os.WriteFile(opt.out, []byte(b.String()), 0o644)
}

func argsNote(opt *options) string {
	var s string
	if opt.quick {
		s += " -quick"
	}
	if !opt.pin {
		s += " -pin=false"
	}
	if opt.nice != -20 {
		s += fmt.Sprintf(" -nice %d", opt.nice)
	}
	return s
}

// build compiles pkg into dir/name with the go command on PATH.
func build(ctx context.Context, dir, name, pkg string) (string, error) {
	out := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build %s: %w", pkg, err)
	}
	return out, nil
}

// child is a router or proxy process.
type child struct {
	name string
	cmd  *exec.Cmd
	addr string // the address its ready line named
	done chan struct{}

	mu    sync.Mutex
	tail  []string // its last log lines, for error messages
	warns []string // its first warnings and errors
	nwarn int
	err   error
}

// startChild writes cfg (if any) to dir/name.toml, runs bin with extra and
// -config on it (pinned to cpu when cpu ≥ 0) and waits for a log line matching ready, whose first group is
// the address it serves on.
func startChild(ctx context.Context, dir, name, bin, cfg string, cpu int, ready *regexp.Regexp, extra ...string) (*child, error) {
	args := append([]string{bin}, extra...)
	if cfg != "" {
		path := filepath.Join(dir, name+".toml")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			return nil, err
		}
		args = append(args, "-config", path)
	}
	if cpu >= 0 {
		ts, err := exec.LookPath("taskset")
		if err != nil {
			return nil, fmt.Errorf("-pin needs taskset: %w", err)
		}
		args = append([]string{ts, "-c", strconv.Itoa(cpu)}, args...)
	}
	c := &child{name: name, cmd: exec.Command(args[0], args[1:]...), done: make(chan struct{})}
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	c.cmd.Stdout = io.Discard
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	addrCh := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			c.mu.Lock()
			c.tail = append(c.tail, line)
			if len(c.tail) > 20 {
				c.tail = c.tail[1:]
			}
			if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
				c.nwarn++
				if len(c.warns) < 5 {
					c.warns = append(c.warns, line)
				}
			}
			c.mu.Unlock()
			if m := ready.FindStringSubmatch(line); m != nil {
				select {
				case addrCh <- m[1]:
				default:
				}
			}
		}
		err := c.cmd.Wait()
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
		close(c.done)
	}()
	t := time.NewTimer(startupDeadline)
	defer t.Stop()
	select {
	case c.addr = <-addrCh:
		return c, nil
	case <-c.done:
		return nil, fmt.Errorf("%s exited at start: %v\n%s", name, c.err, c.logTail())
	case <-t.C:
		c.stop()
		return nil, fmt.Errorf("%s not ready after %v\n%s", name, startupDeadline, c.logTail())
	case <-ctx.Done():
		c.stop()
		return nil, ctx.Err()
	}
}

func (c *child) logTail() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.tail, "\n")
}

// alive reports an error if the process has exited.
func (c *child) alive() error {
	select {
	case <-c.done:
		return fmt.Errorf("%s exited during the run: %v\n%s", c.name, c.err, c.logTail())
	default:
		return nil
	}
}

// stop asks the process to end (SIGTERM), and kills it after 3 s.
func (c *child) stop() {
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(3 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
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
