package suppress

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/uplink"
)

// L2Overhead is what the enforcing program counts beyond the IP packet
// (skb->len includes the Ethernet header, with room for a VLAN tag): the bucket
// must hold a full bulk frame, not only max_bulk_packet bytes of IP, or such
// frames could never pass.
const L2Overhead = 18

// RuntimeConfig is what a Runtime runs with.
type RuntimeConfig struct {
	// Config is the validated configuration; Config.Uplinks are the links.
	Config Config
	// App is the app type of the sessions; its limits apply while they run.
	App string
	// LCMark marks the program's own LC packets (matched as a bit mask).
	LCMark uint32
	// Interval is the control loop's sampling period.
	Interval time.Duration
	// LANDevice enforces downloads on its egress; "" when no link does.
	LANDevice string
	// Links has one entry per Config.Uplinks entry, in the same order.
	Links []LinkSetup
	// PromoteFlows makes each session's flow LC in the enforcer. Off when
	// another part (transparent mode) promotes its flows itself.
	PromoteFlows bool
	// Sessions calls yield for each live game session, with its timing and
	// its (client, server) addresses, until yield returns false. The control
	// loop calls it once per sample.
	Sessions func(yield func(st *SessionTiming, client, target netip.AddrPort) bool)
	Log      *slog.Logger
	Metrics  *metrics.Registry
}

// LinkSetup is one uplink under suppression (named by its Config.Uplinks
// entry).
type LinkSetup struct {
	// Egress is the device that enforces the link's uploads ("" when they
	// are not enforced).
	Egress string
	// StatsDevice is the device whose counters give the link's rates (""
	// when there is none).
	StatsDevice string
	// Health gives the link's RTT, one-way delays and loss.
	Health Health
}

// Health is the measured quality of an uplink (an *uplink.Health).
type Health interface{ Stats(now int64) uplink.Stats }

// Runtime is suppression at run time: every Interval it samples LC presence,
// byte rates and link quality into a Controller, translates the policies into
// the enforcer's per-device configurations, and keeps each device's cutoff
// window ahead of the next predicted game packet.
type Runtime struct {
	cfg    RuntimeConfig
	ctrl   *Controller
	enf    Enforcer
	timing TimingConfig
	log    *slog.Logger

	links []*rtLink
	ifs   []*rtIface

	// sessions is the control loop's latest list of session timings, read by
	// the cutoff loop.
	sessions atomic.Pointer[[]*SessionTiming]
	// promoted holds the flows made LC in the enforcer (control loop only).
	promoted map[*SessionTiming]Flow
	wake     chan struct{} // a policy changed: the cutoff loop re-plans

	m    rtMetrics
	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// rtLink is one uplink under suppression.
type rtLink struct {
	name     string
	why      [2]atomic.Pointer[string] // reason of the last level change (Levels)
	health   Health
	wan      *rtIface // nil when uploads are not enforced on it
	statsIdx int      // ifindex of the device whose counters give its rates (0: none)
	prevTx   uint64
	prevRx   uint64
	prevAt   int64
	pongs    uint64 // Stats.PongsReceived at the previous sample
	owds     uint64 // Stats.OWDSamples at the previous sample
	present  map[string]bool
	pol      [2]Policy
	level    [2]*metrics.Gauge
	changes  [2]*metrics.Counter
	rate     [2]*metrics.Gauge
}

// rtIface is one egress where the enforcer applies a policy.
type rtIface struct {
	name    string
	ifindex int
	dir     Direction
	att     Detacher

	mu      sync.Mutex // the control and cutoff loops both write the maps
	written EgressConfig
	pol     Policy
	cutNext int64 // T_next of the cutoff window in the map, 0 = none
}

type rtMetrics struct {
	actions               map[string]*metrics.Counter
	prev                  Counters
	cutoffs, writes, errs *metrics.Counter
	sessions, locked      *metrics.Gauge
	lastErrLog            atomic.Int64 // both loops report errors
	ifLevel               map[string]*metrics.Gauge
	flowThreshold         *metrics.Gauge
}

// SessionTiming is the suppression state of one game session: its packet
// timing per direction. The caller embeds one per session and passes it to
// Runtime.Observe; its address must not change while the session lives.
type SessionTiming struct {
	dir [2]dirTiming
}

// dirTiming learns one direction's packet timing. The Timing itself belongs
// to whoever holds busy (the game-side reader for up packets; the uplink readers
// take turns for down packets and skip an observation rather than wait); the
// grid it finds is published through a sequence lock for the cutoff loop.
type dirTiming struct {
	busy   atomic.Bool
	t      *Timing
	last   atomic.Int64 // time of the latest packet
	seq    atomic.Uint64
	anchor atomic.Int64
	period atomic.Int64 // 0: no trusted grid
}

// observe records a packet at now. It never blocks and, once the Timing
// exists, never allocates.
func (d *dirTiming) observe(cfg *TimingConfig, now int64) {
	d.last.Store(now)
	if !d.busy.CompareAndSwap(false, true) {
		return // another reader is observing this direction: a missed sample is harmless
	}
	if d.t == nil {
		d.t = NewTiming(*cfg)
	}
	d.t.Observe(now)
	anchor, period, ok := d.t.Grid()
	if !ok || !d.t.Locked() {
		period = 0
	}
	d.seq.Add(1)
	d.anchor.Store(anchor)
	d.period.Store(int64(period))
	d.seq.Add(1)
	d.busy.Store(false)
}

// grid returns a consistent snapshot of the published grid.
func (d *dirTiming) grid() (anchor, period int64) {
	for {
		s := d.seq.Load()
		if s&1 != 0 {
			runtime.Gosched() // the writer was preempted mid-update
			continue
		}
		anchor, period = d.anchor.Load(), d.period.Load()
		if d.seq.Load() == s {
			return anchor, period
		}
	}
}

// nextDue returns the first tick of the session's grid whose window [tick −
// before, tick + after] has not ended at now; 0 without a trusted grid or after
// maxGap of silence.
func (d *dirTiming) nextDue(now, after, maxGap int64) int64 {
	anchor, period := d.grid()
	if period <= 0 || now-d.last.Load() > maxGap {
		return 0
	}
	k := (now - after - anchor + period - 1) / period
	if k < 1 {
		k = 1
	}
	return anchor + k*period
}

func dirIndex(up bool) int {
	if up {
		return int(Up)
	}
	return int(Down)
}

// Observe records a game packet of a session, sent on (up) or delivered back
// to the game (down); the runtime learns the sessions' timing from it. It is
// called on the packet path: it never blocks and never allocates once both
// directions have been seen.
func (s *Runtime) Observe(st *SessionTiming, now int64, up bool) {
	st.dir[dirIndex(up)].observe(&s.timing, now)
}

// NewRuntime attaches the enforcing program to each enforced egress and
// registers the metrics; Start starts the loops.
func NewRuntime(cfg RuntimeConfig, enf Enforcer) (_ *Runtime, err error) {
	if len(cfg.Links) != len(cfg.Config.Uplinks) {
		return nil, fmt.Errorf("suppress: %d links for %d uplinks", len(cfg.Links), len(cfg.Config.Uplinks))
	}
	ctrl, err := NewController(cfg.Config)
	if err != nil {
		return nil, fmt.Errorf("suppress: %w", err)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewRegistry()
	}
	s := &Runtime{cfg: cfg, ctrl: ctrl, enf: enf, timing: cfg.Config.Timing, log: cfg.Log,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), promoted: map[*SessionTiming]Flow{}}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	attach := func(dev string, dir Direction) (*rtIface, error) {
		ix, err := enf.Ifindex(dev)
		if err != nil {
			return nil, fmt.Errorf("suppress: device %s: %w", dev, err)
		}
		for _, f := range s.ifs {
			if f.ifindex == ix {
				if f.dir != dir {
					return nil, fmt.Errorf("suppress: device %s would enforce both uploads and downloads", dev)
				}
				return f, nil
			}
		}
		att, err := enf.AttachEgress(ix)
		if err != nil {
			return nil, fmt.Errorf("suppress: attach to %s egress: %w", dev, err)
		}
		f := &rtIface{name: dev, ifindex: ix, dir: dir, att: att}
		s.ifs = append(s.ifs, f)
		return f, nil
	}
	if cfg.LANDevice != "" {
		if _, err = attach(cfg.LANDevice, Down); err != nil {
			return nil, err
		}
	}
	reg := cfg.Metrics
	for i, uc := range cfg.Config.Uplinks {
		ls := cfg.Links[i]
		l := &rtLink{name: uc.Name, health: ls.Health, present: map[string]bool{}}
		if ls.Egress != "" {
			if l.wan, err = attach(ls.Egress, Up); err != nil {
				return nil, err
			}
		}
		// The rates come from the uplink's device even where uploads are
		// not enforced on it.
		if ls.StatsDevice != "" {
			if ix, err := enf.Ifindex(ls.StatsDevice); err == nil {
				l.statsIdx = ix
			}
		}
		for _, d := range []Direction{Up, Down} {
			lbl := `{uplink="` + uc.Name + `",dir="` + d.String() + `"}`
			l.level[d] = reg.Gauge("router_suppress_level"+lbl, "Suppression level per uplink and direction: 0 off, 1 watch, 2 shape, 3 cut.")
			l.changes[d] = reg.Counter("router_suppress_level_changes_total"+lbl, "Suppression level changes per uplink and direction.")
			l.rate[d] = reg.Gauge("router_suppress_bytes_per_second"+lbl, "Traffic rate per uplink and direction as suppression measures it.")
		}
		s.links = append(s.links, l)
	}
	s.m = rtMetrics{
		actions:       map[string]*metrics.Counter{},
		cutoffs:       reg.Counter("router_suppress_cutoff_windows_total", "Cutoff windows written ahead of a predicted game packet."),
		writes:        reg.Counter("router_suppress_config_writes_total", "Enforcement configurations written to the eBPF maps (policy changes)."),
		errs:          reg.Counter("router_suppress_errors_total", "Errors reading counters or writing eBPF maps."),
		sessions:      reg.Gauge("router_suppress_sessions", "Game sessions suppression follows."),
		locked:        reg.Gauge("router_suppress_sessions_locked", "Session directions whose packet timing is locked (cutoff windows possible)."),
		ifLevel:       map[string]*metrics.Gauge{},
		flowThreshold: reg.Gauge("router_suppress_flow_rate_threshold_bytes_per_second", "Rate from which bulk flows are eligible for fraction drops."),
	}
	for _, a := range []string{"passed", "lc_passed", "dropped_rate", "dropped_fraction", "dropped_cutoff", "ecn_marked", "dscp_rewritten", "errors"} {
		s.m.actions[a] = reg.Counter(`router_suppress_packets_total{action="`+a+`"}`, "Packets seen by suppress_egress, by action (ecn_marked and dscp_rewritten are among passed).")
	}
	for _, f := range s.ifs {
		s.m.ifLevel[f.name] = reg.Gauge(`router_suppress_device_level{device="`+f.name+`"}`, "Enforced level per egress device.")
	}
	return s, nil
}

// Start starts the control loop and the cutoff loop; they end with ctx or Close.
func (s *Runtime) Start(ctx context.Context) {
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.controlLoop(ctx) }()
	go func() { defer s.wg.Done(); s.cutoffLoop(ctx) }()
	s.log.Info("suppression on", "links", len(s.links), "devices", len(s.ifs), "app", s.cfg.App)
}

// Close stops the loops, detaches the programs and removes the devices'
// configurations. The enforcer itself stays open: it is the caller's.
func (s *Runtime) Close() {
	s.once.Do(func() {
		close(s.stop)
		s.wg.Wait()
		for _, f := range s.ifs {
			f.att.Detach()
			s.enf.DeleteEgress(f.ifindex)
		}
	})
}

// controlLoop samples every interval: LC presence, byte rates, uplink RTT and
// loss go into the controller, and policy changes go into the eBPF maps.
func (s *Runtime) controlLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	prevSample := mono.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.stop:
			return
		case <-t.C:
		}
		prevSample = s.sample(mono.Now(), prevSample)
	}
}

// sample is one step of the control loop at now; prev is the previous step's
// time. It returns now.
func (s *Runtime) sample(now, prev int64) int64 {
	// Sessions seen since the previous sample make the app present.
	var list []*SessionTiming
	present := false
	locked := 0
	seen := make(map[*SessionTiming]Flow, len(s.promoted))
	if s.cfg.Sessions != nil {
		s.cfg.Sessions(func(st *SessionTiming, client, target netip.AddrPort) bool {
			seen[st] = Flow{Src: client, Dst: target}
			list = append(list, st)
			for d := range st.dir {
				dt := &st.dir[d]
				if dt.last.Load() > prev {
					present = true
				}
				if _, p := dt.grid(); p > 0 {
					locked++
				}
			}
			return true
		})
	}
	s.promote(seen, now)
	s.sessions.Store(&list)
	s.m.sessions.Set(int64(len(list)))
	s.m.locked.Set(int64(locked))

	changed := false
	for _, l := range s.links {
		changed = s.sampleLink(l, now, present) || changed
	}
	if changed {
		s.apply()
	}
	s.readCounters(now)
	return now
}

// promote makes each session's flow LC in the enforcer, and forgets the flows
// of sessions that ended. The router's own sockets are marked already; this
// covers replies that reach the LAN without passing a socket of the router
// (transparent mode writes them into its TUN device, so they carry no mark).
// Suppression matches the reversed tuple too, so server → client passes.
func (s *Runtime) promote(seen map[*SessionTiming]Flow, now int64) {
	if !s.cfg.PromoteFlows {
		return // transparent mode promotes and demotes its flows itself
	}
	for st, k := range seen {
		if _, ok := s.promoted[st]; ok || !k.Src.IsValid() || !k.Dst.IsValid() {
			continue
		}
		if err := s.enf.Promote(k); err != nil {
			s.error(now, "promote flow", err)
			continue
		}
		s.promoted[st] = k
	}
	for st, k := range s.promoted {
		if _, ok := seen[st]; !ok {
			if err := s.enf.Demote(k); err != nil {
				s.error(now, "demote flow", err)
			}
			delete(s.promoted, st)
		}
	}
}

// sampleLink feeds one uplink's two samples to the controller; it reports
// whether a policy changed.
func (s *Runtime) sampleLink(l *rtLink, now int64, present bool) bool {
	clear(l.present)
	if present {
		l.present[s.cfg.App] = true
	}
	var up, down uint64
	if l.statsIdx != 0 {
		if tx, rx, err := s.enf.DeviceBytes(l.statsIdx); err == nil {
			if l.prevAt != 0 && now > l.prevAt {
				dt := float64(now-l.prevAt) / 1e9
				up = uint64(float64(tx-l.prevTx) / dt)
				down = uint64(float64(rx-l.prevRx) / dt)
			}
			l.prevTx, l.prevRx, l.prevAt = tx, rx, now
		} else {
			s.error(now, "read device counters", err)
		}
	}
	h := l.health.Stats(now)
	smp := Sample{Uplink: l.name, Now: now, LCPresent: l.present}
	// Pongs stamped with the proxy's clock split the keepalive round trip
	// into one-way delays, so each direction is judged by its own queue:
	// an upload must not raise the download level, nor the reverse.
	newOWD := h.OWDSamples != l.owds
	if !newOWD && h.OWDSamples == 0 && h.PongsReceived != l.pongs {
		// A proxy that stamps no pongs: the RTT, which crosses the queues
		// of both directions, speaks for both. Half the smoothed RTT stands
		// in for the one-way delay (only its trend counts) and the RTT
		// variation for jitter.
		smp.RTT = h.SRTT
		smp.HasQuality = true
		smp.OWD = h.SRTT / 2
		smp.Jitter = h.RTTVar
		smp.Loss = h.Loss
	}
	l.pongs, l.owds = h.PongsReceived, h.OWDSamples
	changed := false
	for _, d := range []Direction{Up, Down} {
		smp.Dir = d
		smp.BytesPerSec = up
		if d == Down {
			smp.BytesPerSec = down
		}
		if newOWD {
			// Keepalive loss cannot tell which way a packet was lost, so
			// it still counts for both.
			smp.HasOWD, smp.HasQuality, smp.Loss = true, true, h.Loss
			smp.OWD, smp.QueueDelay, smp.Jitter = h.UpOWD, h.UpQueue, h.UpJitter
			if d == Down {
				smp.OWD, smp.QueueDelay, smp.Jitter = h.DownOWD, h.DownQueue, h.DownJitter
			}
		}
		l.rate[d].Set(int64(smp.BytesPerSec))
		pol, ev, err := s.ctrl.Update(smp)
		if err != nil {
			s.error(now, "controller", err)
			continue
		}
		if ev != nil {
			l.changes[d].Inc()
			s.log.Info("suppression level", "uplink", ev.Uplink, "dir", ev.Dir.String(),
				"from", ev.From.String(), "to", ev.To.String(), "reason", ev.Reason)
			l.why[d].Store(&ev.Reason)
		}
		l.level[d].Set(int64(pol.Level))
		if pol != l.pol[d] {
			l.pol[d] = pol
			changed = true
		}
	}
	return changed
}

// apply writes each egress's policy to the eBPF maps when it changed. An
// uplink's upload policy goes to its device; the LAN device carries the
// downloads of every uplink, so it gets their combination.
func (s *Runtime) apply() {
	now := mono.Now()
	for _, f := range s.ifs {
		var pol Policy
		if f.dir == Up {
			for _, l := range s.links {
				if l.wan == f {
					pol = s.combine(pol, l.pol[Up], l, Up)
				}
			}
		} else {
			for _, l := range s.links {
				pol = s.combine(pol, l.pol[Down], l, Down)
			}
		}
		s.write(f, pol, now)
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// combine merges the policy of one more uplink into acc for a device shared by
// several: the strongest level and actions, and a bulk cap that is the sum of
// the uplinks' caps (an uncapped uplink adds its configured rate).
func (s *Runtime) combine(acc, p Policy, l *rtLink, d Direction) Policy {
	if p.Level == Off && acc.Level == Off {
		return acc
	}
	rate := p.BulkRateBytesPerSec
	if rate == 0 {
		for _, u := range s.cfg.Config.Uplinks {
			if u.Name == l.name {
				rate = u.Rate(d) / 8
			}
		}
	}
	wasCapped := acc.BulkRateBytesPerSec > 0
	out := acc
	out.Level = max(acc.Level, p.Level)
	if p.BulkRateBytesPerSec > 0 || wasCapped {
		out.BulkRateBytesPerSec = acc.BulkRateBytesPerSec + rate
		out.Burst = acc.Burst + p.Burst
		out.Deficit = acc.Deficit + p.Deficit
	}
	out.DropFraction = max(acc.DropFraction, p.DropFraction)
	out.MaxDropRun = max(acc.MaxDropRun, p.MaxDropRun)
	out.ECN = acc.ECN || p.ECN
	out.DSCPRewrite = acc.DSCPRewrite || p.DSCPRewrite
	out.Cutoff = acc.Cutoff || p.Cutoff
	out.TReserve = max(acc.TReserve, p.TReserve)
	out.Epsilon = max(acc.Epsilon, p.Epsilon)
	return out
}

// egressConfig translates a policy into the enforcing program's configuration.
func (s *Runtime) egressConfig(p Policy, threshold uint64) EgressConfig {
	if p.Level == Off {
		return EgressConfig{}
	}
	c := EgressConfig{
		Enabled:         true,
		RateBytesPerSec: p.BulkRateBytesPerSec,
		Burst:           p.Burst,
		Deficit:         p.Deficit,
		DropFraction:    p.DropFraction,
		MaxDropRun:      uint32(p.MaxDropRun),
		ECN:             p.ECN,
		DSCPRewrite:     p.DSCPRewrite,
		LCMark:          s.cfg.LCMark,
		LCMask:          s.cfg.LCMark,
	}
	if c.DropFraction > 0 {
		c.FlowRateThreshold = threshold
	}
	if c.RateBytesPerSec > 0 {
		c.Burst = max(c.Burst, s.cfg.Config.Levels.MaxBulkPacket+L2Overhead)
		c.Deficit = max(c.Deficit, s.cfg.Config.Levels.MaxBulkPacket+L2Overhead)
	}
	return c
}

// write puts a policy into the maps, only if the resulting configuration
// differs from the one there: writing refills the token bucket, so rewriting an
// unchanged policy every sample would let an extra burst through each time.
func (s *Runtime) write(f *rtIface, pol Policy, now int64) {
	thr := uint64(0)
	if pol.DropFraction > 0 {
		thr = s.flowThreshold(now)
	}
	c := s.egressConfig(pol, thr)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pol = pol
	if c == f.written {
		return
	}
	if !pol.Cutoff {
		f.cutNext = 0
	}
	c.TNext, c.TReserve, c.Epsilon = f.cutNext, int64(pol.TReserve), int64(pol.Epsilon)
	if f.cutNext == 0 {
		c.TReserve, c.Epsilon = 0, 0
	}
	if err := s.enf.SetEgress(f.ifindex, c); err != nil {
		s.error(now, "write suppress config", err)
		return
	}
	c.TNext, c.TReserve, c.Epsilon = 0, 0, 0
	f.written = c
	s.m.writes.Inc()
	if g := s.m.ifLevel[f.name]; g != nil {
		g.Set(int64(pol.Level))
	}
	s.log.Debug("suppression enforced", "device", f.name, "level", pol.Level.String(),
		"bulk_rate_bps", c.RateBytesPerSec*8, "drop", c.DropFraction, "cutoff", pol.Cutoff)
}

// flowThreshold picks the flow rate from which fraction drops apply: the
// largest bulk flows that carry drop_cover of the bulk bytes. It is rounded down
// to a power of two so that the configuration, and with it the token bucket,
// does not change on every sample.
func (s *Runtime) flowThreshold(now int64) uint64 {
	var rates []uint64
	since := now - int64(time.Second)
	err := s.enf.BulkFlows(func(f BulkFlow) bool {
		if f.LastSeen >= since {
			rates = append(rates, max(f.RateBPS, f.WindowBytes*10))
		}
		return true
	})
	if err != nil {
		s.error(now, "read bulk flows", err)
		return 0
	}
	thr := FlowRateThreshold(rates, s.cfg.Config.Levels.DropCover)
	if thr > 0 {
		p := uint64(1)
		for p*2 <= thr {
			p *= 2
		}
		thr = p
	}
	s.m.flowThreshold.Set(int64(thr))
	return thr
}

// cutoffLoop keeps each enforcing device's cutoff window on the next predicted
// game packet of its direction: once a window has passed, the next one is
// written, a period ahead of its T_next.
func (s *Runtime) cutoffLoop(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wakeAt := s.planCutoffs(mono.Now())
		d := time.Duration(wakeAt - mono.Now())
		if d < 100*time.Microsecond {
			d = 100 * time.Microsecond
		}
		timer.Reset(d)
		select {
		case <-ctx.Done():
			return
		case <-s.stop:
			return
		case <-s.wake:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		case <-timer.C:
		}
	}
}

// planCutoffs is one pass of the cutoff loop at now: it writes, moves or
// clears each device's window and returns when to look again.
func (s *Runtime) planCutoffs(now int64) (wakeAt int64) {
	maxGap := int64(s.timing.MaxGap)
	wakeAt = now + int64(s.cfg.Interval)
	var list []*SessionTiming
	if p := s.sessions.Load(); p != nil {
		list = *p
	}
	for _, f := range s.ifs {
		f.mu.Lock()
		pol := f.pol
		if !pol.Cutoff || !f.written.Enabled {
			if f.cutNext != 0 {
				if err := s.enf.SetCutoff(f.ifindex, 0, 0, 0); err != nil {
					s.error(now, "clear cutoff", err)
				}
				f.cutNext = 0
			}
			f.mu.Unlock()
			continue
		}
		eps := int64(pol.Epsilon)
		if f.cutNext != 0 && f.cutNext+eps > now {
			// The current window has not ended; look again after it.
			wakeAt = min(wakeAt, f.cutNext+eps)
			f.mu.Unlock()
			continue
		}
		next := int64(0)
		for _, ss := range list {
			if t := ss.dir[f.dir].nextDue(now, eps, maxGap); t != 0 && (next == 0 || t < next) {
				next = t
			}
		}
		if next != 0 && next-int64(pol.TReserve) > 0 {
			if err := s.enf.SetCutoff(f.ifindex, next, int64(pol.TReserve), eps); err != nil {
				s.error(now, "set cutoff", err)
			} else {
				f.cutNext = next
				s.m.cutoffs.Inc()
				wakeAt = min(wakeAt, next+eps)
			}
		}
		f.mu.Unlock()
	}
	return wakeAt
}

// readCounters copies the enforcer's counters into the metrics.
func (s *Runtime) readCounters(now int64) {
	c, err := s.enf.Counters()
	if err != nil {
		s.error(now, "read suppress counters", err)
		return
	}
	p := &s.m.prev
	add := func(name string, cur, prev uint64) {
		if cur >= prev {
			s.m.actions[name].Add(cur - prev)
		}
	}
	add("passed", c.Passed, p.Passed)
	add("lc_passed", c.LCPassed, p.LCPassed)
	add("dropped_rate", c.DroppedRate, p.DroppedRate)
	add("dropped_fraction", c.DroppedFraction, p.DroppedFraction)
	add("dropped_cutoff", c.DroppedCutoff, p.DroppedCutoff)
	add("ecn_marked", c.ECNMarked, p.ECNMarked)
	add("dscp_rewritten", c.DSCPRewritten, p.DSCPRewritten)
	add("errors", c.Errors, p.Errors)
	*p = c
}

// error counts a failure and logs it at most once a second.
func (s *Runtime) error(now int64, what string, err error) {
	s.m.errs.Inc()
	if last := s.m.lastErrLog.Load(); now-last > int64(time.Second) && s.m.lastErrLog.CompareAndSwap(last, now) {
		s.log.Warn("suppression: "+what, "err", err)
	}
}

// LinkLevel is one uplink's enforcement level per direction and the reason of
// its last change ("" before any), for a status report.
type LinkLevel struct {
	Uplink               string
	Up, Down             Level
	UpReason, DownReason string
}

// Levels reports every link's level; safe from any goroutine.
func (s *Runtime) Levels() []LinkLevel {
	out := make([]LinkLevel, 0, len(s.links))
	for _, l := range s.links {
		ll := LinkLevel{Uplink: l.name, Up: Level(l.level[Up].Load()), Down: Level(l.level[Down].Load())}
		if w := l.why[Up].Load(); w != nil {
			ll.UpReason = *w
		}
		if w := l.why[Down].Load(); w != nil {
			ll.DownReason = *w
		}
		out = append(out, ll)
	}
	return out
}
