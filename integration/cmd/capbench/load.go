package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/integration/internal/hostinfo"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/udp"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// loadOptions are the load test's flags (capbench -load).
type loadOptions struct {
	routers int           // simulated routers, one session each
	clients int           // [[client]] tables (PSK) the routers are spread over
	sources int           // sockets the routers send from (routers behind a few NATs)
	steps   string        // packets per second per router, one timed step each
	step    time.Duration // length of each step
	maxLoss float64       // loss (fraction) above which a step counts as broken
}

func addLoadFlags(fs *flag.FlagSet, o *loadOptions) {
	fs.IntVar(&o.routers, "routers", 10000, "load test: routers (one session each)")
	fs.IntVar(&o.clients, "clients", 10, "load test: PSK clients the routers are spread over (each with a per-client session limit above its share)")
	fs.IntVar(&o.sources, "load-sources", 16, "load test: sockets the routers send from")
	fs.StringVar(&o.steps, "steps", "2,5,10,20,30", "load test: packets/s per router, one step each")
	fs.DurationVar(&o.step, "step", 5*time.Second, "load test: length of each step")
	fs.Float64Var(&o.maxLoss, "max-loss", 0.01, "load test: loss above which a step is where the proxy breaks")
}

// loadRouter is one simulated router (one session).
type loadRouter struct {
	mu    sync.Mutex // its Receiver is shared by the ack readers of every source
	send  *tunnel.Sender
	recv  *tunnel.Receiver
	acked atomic.Bool
	src   int
}

// loadStep is what one step of the load test measured.
type loadStep struct {
	pps              int // per router
	offered          float64
	sent, got        uint64
	elapsed          time.Duration
	proxyCPU, genCPU float64 // percent of one core
	coreBusy         float64 // the proxy's CPUs, any cause, percent
	rss, hwm         int64
	rcvbuf           uint64             // kernel receive-buffer drops, all sockets
	proxySocketDrops uint64             // of those, on the proxy's sockets
	drops            map[string]float64 // the proxy's drop counters that moved
}

func (s *loadStep) loss() float64 {
	if s.sent == 0 {
		return 0
	}
	return max(0, 1-float64(s.got)/float64(s.sent))
}

// loadResult is the whole load test.
type loadResult struct {
	routers, admitted int
	admitTime         time.Duration
	refused           map[string]float64
	rssIdle           int64
	steps             []loadStep
	breaks            string
}

// loadTest runs a proxy (argv, short of its config) against o.routers
// simulated routers on loopback: it opens their sessions, then sends game
// traffic at each step's rate and measures each.
func loadTest(ctx context.Context, opt *options, argv []string) (*loadResult, error) {
	lo := opt.loadOpt
	if lo.routers < 1 || lo.clients < 1 || lo.sources < 1 {
		return nil, errors.New("need routers, clients and load-sources ≥ 1")
	}
	var rates []int
	for _, f := range strings.Split(lo.steps, ",") {
		r, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || r < 1 {
			return nil, fmt.Errorf("steps: %q is not a rate", f)
		}
		rates = append(rates, r)
	}
	tmp, err := os.MkdirTemp("", "capbench-load-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	sink, err := newSink()
	if err != nil {
		return nil, err
	}
	defer sink.close()
	proxyAddr, err := freePort("udp")
	if err != nil {
		return nil, err
	}
	metricsAddr, err := freePort("tcp")
	if err != nil {
		return nil, err
	}
	// Each client may hold more than its share (so a limit never decides),
	// and open sessions as fast as the routers ask.
	share := (lo.routers + lo.clients - 1) / lo.clients
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "listen = %q\nmetrics = %q\nlog_level = \"warn\"\nmax_sessions = %d\nworkers = %d\n",
		proxyAddr.String(), metricsAddr.String(), 2*lo.routers+16, opt.workers)
	keys := make([]wire.Key, lo.clients)
	for c := range keys {
		if keys[c], err = wire.GenerateKey(); err != nil {
			return nil, err
		}
		fmt.Fprintf(&cfg, "[[client]]\nid = \"load%d\"\nkey = %q\nallow = [%q]\nmax_sessions = %d\nsession_rate = 1000000\nrate_pps = 1000000\nburst = 1000000\n",
			c, keys[c].String(), sink.addr().String(), 2*share)
	}
	cfgPath := filepath.Join(tmp, "proxy.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o600); err != nil {
		return nil, err
	}

	// The routers' sockets, and their sessions.
	conns := make([]*udp.Conn, lo.sources)
	for i := range conns {
		if conns[i], err = udp.Listen("udp4", udp.Options{Local: netip.MustParseAddrPort("127.0.0.1:0"), RecvBuffer: 4 << 20, SendBuffer: 4 << 20}); err != nil {
			return nil, err
		}
		defer conns[i].Close()
	}
	routers := make([]*loadRouter, lo.routers)
	byID := make(map[uint64]*loadRouter, lo.routers)
	base := uint64(mono.Now())
	for i := range routers {
		c := i % lo.clients
		salt, err := wire.NewSalt()
		if err != nil {
			return nil, err
		}
		id := simSessionID(base, i)
		send, recv, err := wire.DeriveKeys(&keys[c], &salt, id, wire.RoleClient)
		if err != nil {
			return nil, err
		}
		hello := &wire.Hello{Salt: salt, Target: sink.addr()}
		if err := hello.SetClientID(fmt.Sprintf("load%d", c)); err != nil {
			return nil, err
		}
		s, err := tunnel.NewSender(send, id, raic.Params{Scheme: raic.SchemeCopy, K: 1}, hello)
		if err != nil {
			return nil, err
		}
		routers[i] = &loadRouter{send: s, recv: tunnel.NewReceiver(recv, raic.DecoderConfig{}), src: i % lo.sources}
		byID[id] = routers[i]
	}
	var acked atomic.Int64
	for _, c := range conns {
		go readLoadAcks(c, byID, &acked)
	}

	p, err := startProxy(append(argv, cfgPath), opt.proxyCPU, opt.workers, strings.Fields(opt.proxyEnv))
	if err != nil {
		return nil, err
	}
	defer p.stop()
	if err := waitMetrics(ctx, metricsAddr, p); err != nil {
		return nil, err
	}
	res := &loadResult{routers: lo.routers}
	pkt := make([]byte, opt.size)

	// Admission: every router sends its first packet (with its hello), a few
	// thousand at a time, again while unanswered.
	fmt.Printf("admitting %d routers (%d clients, %d source sockets) ...\n", lo.routers, lo.clients, lo.sources)
	t0 := time.Now()
	deadline := t0.Add(30*time.Second + time.Duration(lo.routers/1000)*time.Second)
	for int(acked.Load()) < lo.routers && time.Now().Before(deadline) && ctx.Err() == nil {
		sent := 0
		for _, r := range routers {
			if sent == helloRound {
				break
			}
			if r.acked.Load() {
				continue
			}
			r.mu.Lock()
			_, dgs, err := r.send.Seal(pkt, mono.Now())
			r.mu.Unlock()
			if err != nil {
				return nil, err
			}
			for _, dg := range dgs {
				conns[r.src].WriteTo(dg, proxyAddr)
			}
			sent++
		}
		want := acked.Load() + int64(sent)
		for end := time.Now().Add(50 * time.Millisecond); acked.Load() < want && time.Now().Before(end); {
			time.Sleep(time.Millisecond)
		}
	}
	res.admitTime = time.Since(t0)
	res.admitted = int(acked.Load())
	m, err := scrape(metricsAddr)
	if err != nil {
		return nil, err
	}
	res.refused = movedDrops(nil, m)
	if err := p.alive(); err != nil {
		return nil, err
	}
	time.Sleep(1200 * time.Millisecond) // the janitor and GC settle
	res.rssIdle, _ = hostinfo.RSS(p.cmd.Process.Pid)
	fmt.Printf("%d of %d admitted in %v\n", res.admitted, lo.routers, res.admitTime.Round(time.Millisecond))

	for _, rate := range rates {
		fmt.Printf("step: %d packets/s per router (%d/s offered) for %v ...\n", rate, rate*lo.routers, lo.step)
		st, err := loadStepRun(ctx, lo, rate, routers, conns, proxyAddr, sink, p, metricsAddr, pkt, opt)
		if err != nil {
			return nil, err
		}
		res.steps = append(res.steps, *st)
		if res.breaks == "" && st.loss() > lo.maxLoss {
			res.breaks = breakReason(st, opt)
		}
		if err := p.alive(); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// waitMetrics waits until the proxy serves its metrics (it is then bound).
func waitMetrics(ctx context.Context, addr netip.AddrPort, p *proxyProc) error {
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if _, err := scrape(addr); err == nil {
			return nil
		}
		if err := p.alive(); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return fmt.Errorf("proxy metrics not served within 10 s\n%s", p.logTail())
}

// readLoadAcks marks routers acked when their first ack authenticates.
func readLoadAcks(c *udp.Conn, byID map[uint64]*loadRouter, acked *atomic.Int64) {
	msgs := make([]udp.Message, udp.MaxBatch)
	for i := range msgs {
		msgs[i].Buf = make([]byte, wire.MaxDatagram+1)
	}
	var h wire.Header
	for {
		n, err := c.ReadBatch(msgs)
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
			r, ok := byID[h.Session]
			if !ok {
				continue
			}
			r.mu.Lock()
			_, err = r.recv.Receive(dg, &h, off, now, nil)
			if err == nil {
				r.send.Heard(now)
			}
			r.mu.Unlock()
			if err == nil && !r.acked.Swap(true) {
				acked.Add(1)
			}
		}
	}
}

// loadStepRun sends rate packets per second from every router for lo.step,
// paced every millisecond, sealed as they go, in sendmmsg batches per source
// socket, and measures what arrives and what it cost.
func loadStepRun(ctx context.Context, lo loadOptions, rate int, routers []*loadRouter, conns []*udp.Conn, proxyAddr netip.AddrPort,
	sink *sink, p *proxyProc, metricsAddr netip.AddrPort, pkt []byte, opt *options) (*loadStep, error) {
	st := &loadStep{pps: rate, offered: float64(rate * len(routers))}
	type queue struct {
		msgs [udp.MaxBatch]udp.Message
		bufs [udp.MaxBatch][wire.MaxDatagram]byte
		n    int
	}
	qs := make([]*queue, len(conns))
	for i := range qs {
		qs[i] = &queue{}
	}
	flush := func(i int) {
		q := qs[i]
		msgs := q.msgs[:q.n]
		for len(msgs) > 0 {
			n, err := conns[i].WriteBatch(msgs)
			st.sent += uint64(n)
			if err == nil {
				break
			}
			msgs = msgs[n+1:] // count the refused one as lost: it was offered
			st.sent++
		}
		q.n = 0
	}
	m0, err := scrape(metricsAddr)
	if err != nil {
		return nil, err
	}
	rb0, pd0 := hostinfo.RcvbufErrors(), sumDrops(hostinfo.SocketDrops(p.cmd.Process.Pid))
	pc0, gc0 := hostinfo.CPUTime(p.cmd.Process.Pid), hostinfo.CPUTime(os.Getpid())
	cpus := make([]string, max(opt.workers, 1))
	for i := range cpus {
		cpus[i] = fmt.Sprintf("cpu%d", opt.proxyCPU+i)
	}
	busy := func() (b float64) {
		for _, c := range cpus {
			b += hostinfo.StatBusy(c, false)
		}
		return b
	}
	core0 := busy()
	s0 := sink.count.Load()
	start := time.Now()
	total := float64(rate * len(routers))
	var due uint64
	k := 0
	for {
		el := time.Since(start)
		if el >= lo.step || ctx.Err() != nil {
			break
		}
		due = uint64(total * el.Seconds())
		for sent := st.sent; sent < due; sent++ { // the queues are empty here: flushed every tick
			r := routers[k%len(routers)]
			k++
			r.mu.Lock()
			_, dgs, err := r.send.Seal(pkt, mono.Now())
			if err == nil && len(dgs) == 1 {
				q := qs[r.src]
				n := copy(q.bufs[q.n][:], dgs[0])
				q.msgs[q.n] = udp.Message{Buf: q.bufs[q.n][:n], N: n, Addr: proxyAddr}
				q.n++
			}
			r.mu.Unlock()
			if q := qs[r.src]; q.n == udp.MaxBatch {
				flush(r.src)
			}
		}
		for i := range qs {
			if qs[i].n > 0 {
				flush(i)
			}
		}
		time.Sleep(time.Millisecond)
	}
	// What is still in flight is part of the step: wait for the sink to settle.
	for last, i := sink.count.Load(), 0; i < 30; i++ {
		time.Sleep(10 * time.Millisecond)
		c := sink.count.Load()
		if c == last {
			break
		}
		last = c
	}
	st.elapsed = time.Since(start)
	st.got = sink.count.Load() - s0
	st.proxyCPU = 100 * (hostinfo.CPUTime(p.cmd.Process.Pid) - pc0) / st.elapsed.Seconds()
	st.genCPU = 100 * (hostinfo.CPUTime(os.Getpid()) - gc0) / st.elapsed.Seconds()
	st.coreBusy = 100 * (busy() - core0) / st.elapsed.Seconds()
	st.rcvbuf = hostinfo.RcvbufErrors() - rb0
	st.proxySocketDrops = sumDrops(hostinfo.SocketDrops(p.cmd.Process.Pid)) - pd0
	st.rss, st.hwm = hostinfo.RSS(p.cmd.Process.Pid)
	m1, err := scrape(metricsAddr)
	if err != nil {
		return nil, err
	}
	st.drops = movedDrops(m0, m1)
	return st, nil
}

func sumDrops(m map[string]uint64) (n uint64) {
	for _, v := range m {
		n += v
	}
	return n
}

// movedDrops returns the proxy's drop counters that grew from m0 to m1.
func movedDrops(m0, m1 map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m1 {
		if strings.Contains(k, "_dropped_total") && v-m0[k] > 0 {
			out[strings.TrimPrefix(k, "proxy_dropped_total")] = v - m0[k]
		}
	}
	return out
}

// breakReason says what gave out in the first step over the loss bound.
func breakReason(st *loadStep, opt *options) string {
	sentRate := float64(st.sent) / st.elapsed.Seconds()
	switch {
	case sentRate < 0.9*st.offered:
		return fmt.Sprintf("the generator: it sent %.0f of the %.0f packets/s asked (%.0f%% of its core)", sentRate, st.offered, st.genCPU)
	case st.proxySocketDrops > 0:
		return fmt.Sprintf("the proxy's CPU: at %.0f%% of %d core(s) it fell behind and the kernel dropped %d datagrams at its listen socket(s)",
			st.coreBusy, max(opt.workers, 1), st.proxySocketDrops)
	case len(st.drops) > 0:
		return "the proxy dropped datagrams: " + dropList(st.drops)
	case st.rcvbuf > 0:
		return fmt.Sprintf("the sink (game server) side: %d datagrams dropped at receive buffers outside the proxy", st.rcvbuf)
	}
	return fmt.Sprintf("loss of %.2f%% with no drop counted anywhere", 100*st.loss())
}

func dropList(m map[string]float64) string {
	var out []string
	for k, v := range m {
		out = append(out, fmt.Sprintf("%s %.0f", k, v))
	}
	sort.Strings(out)
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

// runLoad is capbench -load: the load test, its table printed and written.
func runLoad(ctx context.Context, opt *options) error {
	start := time.Now()
	load0 := hostinfo.LoadAvg()
	if err := setup(opt); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "capbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	argv, err := proxyArgv(ctx, opt, tmp)
	if err != nil {
		return err
	}
	res, err := loadTest(ctx, opt, argv)
	if err != nil {
		return err
	}
	env := environment(opt, load0, hostinfo.LoadAvg())
	rows := loadTable(res, opt)
	fmt.Println()
	printRows(rows)
	summary := loadSummary(res)
	fmt.Printf("\n%s\n\n%s\nrun took %v\n", summary, env, time.Since(start).Round(time.Second))
	if opt.out == "" {
		return nil
	}
	lo := opt.loadOpt
	var b strings.Builder
	b.WriteString("# Load test: many routers against one proxy\n\n")
	fmt.Fprintf(&b, "Written by `go run ./integration/cmd/capbench -load` (`make loadtest`). %d simulated routers (one session each, "+
		"spread over %d PSK clients), from %d loopback sockets of one process, against one raic-proxy process (%d worker(s), "+
		"GOMAXPROCS=%d, pinned to CPU %s); the generator and the game server (a sink that counts) run on CPU %d. The routers "+
		"first open their sessions (a hello each, answered by an ack, a few thousand at a time); then each step sends %d-byte "+
		"game packets from every router at the step's rate, sealed as they go, for %v. Loss is what the sink did not get of what "+
		"was sent, server-bound.\n\n",
		lo.routers, lo.clients, lo.sources, opt.workers, opt.workers, cpuList(opt.proxyCPU, opt.workers), opt.genCPU, opt.size, lo.step)
	writeMarkdownRows(&b, rows)
	fmt.Fprintf(&b, "\n%s\n\nMachine: %s. A shared 2-core development machine, with other work running.\n", summary, env)
	return writeResults(opt.out, &b)
}

func loadSummary(res *loadResult) string {
	s := fmt.Sprintf("Admission: %d of %d routers admitted in %v (%.0f sessions/s); refused on the way: %s. RSS with every session open, idle: %.1f MB.",
		res.admitted, res.routers, res.admitTime.Round(time.Millisecond), float64(res.admitted)/res.admitTime.Seconds(), dropList(res.refused), float64(res.rssIdle)/(1<<20))
	if res.breaks != "" {
		return s + " What breaks first: " + res.breaks + "."
	}
	return s + " No step lost more than the bound."
}

func loadTable(res *loadResult, opt *options) [][]string {
	rows := [][]string{{"per router", "offered", "sent", "forwarded (at the server)", "loss", "proxy CPU", "proxy's cores busy", "generator CPU", "proxy RSS (peak)", "dropped: proxy socket / proxy / elsewhere"}}
	for _, st := range res.steps {
		sec := st.elapsed.Seconds()
		rows = append(rows, []string{
			fmt.Sprintf("%d packets/s", st.pps),
			fmt.Sprintf("%.0f/s", st.offered),
			fmt.Sprintf("%.0f/s", float64(st.sent)/sec),
			fmt.Sprintf("%.0f/s", float64(st.got)/sec),
			fmt.Sprintf("%.2f%%", 100*st.loss()),
			fmt.Sprintf("%.0f%%", st.proxyCPU),
			fmt.Sprintf("%.0f%% of %d", st.coreBusy, max(opt.workers, 1)),
			fmt.Sprintf("%.0f%%", st.genCPU),
			fmt.Sprintf("%.1f MB (%.1f MB)", float64(st.rss)/(1<<20), float64(st.hwm)/(1<<20)),
			fmt.Sprintf("%d / %s / %d", st.proxySocketDrops, dropList(st.drops), st.rcvbuf-min(st.rcvbuf, st.proxySocketDrops)),
		})
	}
	return rows
}
