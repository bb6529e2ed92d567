package router

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/raicnet/raic/bpf"
	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/suppress"
)

// SuppressConfig is the [suppress] table: holding back bulk traffic while a game
// runs. Enforcement runs in the eBPF program suppress_egress (package bpf) on
// the egress of each uplink's device (uploads) and of the LAN device
// (downloads); the decisions come from package suppress.
//
//	[suppress]
//	enabled = true
//	lan_device = "lan0"          # downloads are held back on its egress
//	[[suppress.uplink]]
//	name = "isp0"                # a [[uplink]] name
//	device = "up0"               # default: that uplink's device
//	up_bps = 5_000_000
//	down_bps = 20_000_000
//	enforce = "both"             # up, down, none
//	[suppress.levels]            # passed to package suppress, over its defaults
//	shape_share = 0.9
type SuppressConfig struct {
	Enabled bool `toml:"enabled"`
	// LANDevice is the LAN-side interface; downloads are enforced on its
	// egress. Needed when an uplink enforces downloads.
	LANDevice string `toml:"lan_device"`
	// App is the app type (see suppress.Config.Apps) of the game sessions the
	// router carries; its limits apply while they run. Default "default".
	App string `toml:"app"`
	// LCMark is set as SO_MARK on the router's own sockets (uplinks and
	// forwards), so suppress_egress recognises their datagrams as LC. It is
	// matched as a bit mask, so it can share skb->mark with other users as
	// long as its bits are its own. Default 0x20000000.
	LCMark uint32 `toml:"lc_mark"`
	// Interval is the control loop's sampling period. Default 100ms.
	Interval config.Duration `toml:"interval"`

	Uplinks []SuppressUplink `toml:"uplink"`

	// Passed through to package suppress; keys left out keep its defaults.
	Levels suppress.LevelConfig          `toml:"levels"`
	Detect suppress.DetectConfig         `toml:"detect"`
	Apps   map[string]suppress.AppLimits `toml:"apps"`
	Timing suppress.TimingConfig         `toml:"timing"`

	// Filled by check.
	resolved suppress.Config
	devices  []string // egress device per resolved uplink ("" when uploads are not enforced)
	uplinkIx []int    // index into Config.Uplinks per resolved uplink
}

// SuppressUplink is one [[suppress.uplink]]: the rates of a router uplink.
type SuppressUplink struct {
	Name           string `toml:"name"`
	Device         string `toml:"device"`
	UpBitsPerSec   uint64 `toml:"up_bps"`
	DownBitsPerSec uint64 `toml:"down_bps"`
	Enforce        string `toml:"enforce"`
}

// Defaults of the [suppress] table.
const (
	DefaultSuppressMark     = 0x20000000
	DefaultSuppressInterval = 100 * time.Millisecond
	DefaultSuppressApp      = "default"
)

// l2Overhead is what suppress_egress counts beyond the IP packet (skb->len
// includes the Ethernet header, with room for a VLAN tag): the bucket must hold a
// full bulk frame, not only max_bulk_packet bytes of IP, or such frames could
// never pass.
const l2Overhead = 18

func (s *SuppressConfig) check(c *Config, meta *config.Meta) {
	if !s.Enabled {
		return
	}
	if s.App == "" {
		s.App = DefaultSuppressApp
	}
	if s.LCMark == 0 {
		s.LCMark = DefaultSuppressMark
	}
	if c.Transparent.Enabled && s.LCMark&(c.Transparent.MarkMask|c.Transparent.KeepMark) != 0 {
		meta.Report("suppress.lc_mark", "%#x shares bits with transparent mode's mark_mask (%#x) or keep_mark (%#x): its sockets would be routed as LAN traffic",
			s.LCMark, c.Transparent.MarkMask, c.Transparent.KeepMark)
	}
	if s.Interval.Duration == 0 {
		s.Interval.Duration = DefaultSuppressInterval
	}
	if s.Interval.Duration < 10*time.Millisecond || s.Interval.Duration > time.Second {
		meta.Report("suppress.interval", "must be between 10ms and 1s")
	}
	if s.LANDevice != "" && !validIfname(s.LANDevice) {
		meta.Report("suppress.lan_device", "%q is not an interface name", s.LANDevice)
	}
	if len(s.Uplinks) == 0 {
		meta.Report("suppress.uplink", "no [[suppress.uplink]]: suppression needs each uplink's rates")
		return
	}

	// The levels, detectors and timing were filled with the package's
	// defaults before decoding (defaultSuppressConfig); app entries take the
	// keys they leave out from the built-in entries.
	res := suppress.DefaultConfig()
	res.Levels, res.Detect, res.Timing = s.Levels, s.Detect, s.Timing
	res.Apps = suppress.MergeApps(s.Apps, func(app, key string) bool {
		return meta.IsDefined("suppress.apps." + app + "." + key)
	})

	s.devices, s.uplinkIx = nil, nil
	byName := map[string]int{}
	for i, u := range c.Uplinks {
		byName[u.Name] = i
	}
	seen := map[string]bool{}
	needLAN := false
	for i := range s.Uplinks {
		u := &s.Uplinks[i]
		key := func(k string) string { return fmt.Sprintf("suppress.uplink.%d.%s", i, k) }
		ix, ok := byName[u.Name]
		if !ok {
			meta.Report(key("name"), "%q is not the name of an [[uplink]]", u.Name)
			// Still validated below, at the same index, for its other keys.
			res.Uplinks = append(res.Uplinks, suppress.UplinkConfig{Name: u.Name, UpBitsPerSec: u.UpBitsPerSec, DownBitsPerSec: u.DownBitsPerSec, Enforce: u.Enforce})
			continue
		}
		if seen[u.Name] {
			meta.Report(key("name"), "uplink %q is configured twice", u.Name)
		}
		seen[u.Name] = true
		if u.UpBitsPerSec == 0 {
			meta.Report(key("up_bps"), "must be set: the uplink's upload rate in bits/s")
		}
		if u.DownBitsPerSec == 0 {
			meta.Report(key("down_bps"), "must be set: the uplink's download rate in bits/s")
		}
		uc := suppress.UplinkConfig{Name: u.Name, UpBitsPerSec: u.UpBitsPerSec, DownBitsPerSec: u.DownBitsPerSec, Enforce: u.Enforce}
		switch u.Enforce {
		case "", "both", "up", "down", "none":
		default:
			meta.Report(key("enforce"), "%q is not one of both, up, down, none", u.Enforce)
		}
		dev := u.Device
		if dev == "" {
			dev = c.Uplinks[ix].Device
		}
		if dev != "" && !validIfname(dev) {
			meta.Report(key("device"), "%q is not an interface name", dev)
		}
		if uc.Enforces(suppress.Up) && dev == "" {
			meta.Report(key("device"), "uploads are enforced on the uplink's egress device: set device here or in its [[uplink]]")
		}
		if !uc.Enforces(suppress.Up) {
			dev = ""
		}
		needLAN = needLAN || uc.Enforces(suppress.Down)
		res.Uplinks = append(res.Uplinks, uc)
		s.devices = append(s.devices, dev)
		s.uplinkIx = append(s.uplinkIx, ix)
	}
	if needLAN && s.LANDevice == "" {
		meta.Report("suppress.lan_device", "downloads are enforced on the LAN device's egress: set lan_device (or enforce = \"up\")")
	}
	// Keys refused above (an uplink's rates, say) are not refused again.
	res.Check(func(key, msg string) { meta.Report("suppress."+key, "%s", msg) })
	s.resolved = res
}

// defaultSuppressConfig is the [suppress] table before the file is read: the
// levels, detectors and timing of package suppress, so that a
// [suppress.levels] table with one key keeps every other default.
func defaultSuppressConfig() SuppressConfig {
	d := suppress.DefaultConfig()
	return SuppressConfig{Levels: d.Levels, Detect: d.Detect, Timing: d.Timing}
}

func validIfname(s string) bool {
	return s != "" && len(s) < syscall.IFNAMSIZ && !strings.ContainsAny(s, "/ \t\n:")
}

// suppression is the running side of [suppress]: the datapath, the controller,
// and the goroutines that feed one and drive the other.
type suppression struct {
	r    *Router
	cfg  *SuppressConfig
	ctrl *suppress.Controller
	dp   *bpf.Datapath
	nl   *netlink.Handle
	// sharedDP: dp is transparent mode's; it closes it, and it owns the
	// promotion of LC flows.
	sharedDP bool
	timing   suppress.TimingConfig

	links []*supLink
	lan   *supIface // nil when no uplink enforces downloads
	ifs   []*supIface

	// sessions is the control loop's latest list of session states, read by the
	// cutoff loop.
	sessions atomic.Pointer[[]*supSession]
	// promoted holds the flows made LC in suppress_egress (control loop only).
	promoted map[*routerSession]bpf.FlowKey
	wake     chan struct{} // a policy changed: the cutoff loop re-plans

	m    supMetrics
	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// supLink is one uplink under suppression.
type supLink struct {
	name     string
	uplink   *uplinkConn
	wan      *supIface // nil when uploads are not enforced on it
	statsIdx int       // ifindex of the device whose counters give its rates (0: none)
	prevTx   uint64
	prevRx   uint64
	prevAt   int64
	pongs    uint64 // Stats.PongsReceived at the previous sample
	owds     uint64 // Stats.OWDSamples at the previous sample
	present  map[string]bool
	pol      [2]suppress.Policy
	level    [2]*metrics.Gauge
	changes  [2]*metrics.Counter
	rate     [2]*metrics.Gauge
}

// supIface is one egress where suppress_egress enforces a policy.
type supIface struct {
	name    string
	ifindex int
	dir     suppress.Direction
	att     *bpf.Attachment

	mu      sync.Mutex // the control and cutoff loops both write the maps
	written bpf.SuppressConfig
	pol     suppress.Policy
	cutNext int64 // T_next of the cutoff window in the map, 0 = none
}

type supMetrics struct {
	actions               map[string]*metrics.Counter
	prev                  bpf.SuppressCounters
	cutoffs, writes, errs *metrics.Counter
	sessions, locked      *metrics.Gauge
	lastErrLog            atomic.Int64 // both loops report errors
	ifLevel               map[string]*metrics.Gauge
	flowThreshold         *metrics.Gauge
}

// supSession is the suppression state of one game session: a Timing per
// direction. It lives in routerSession.sup.
type supSession struct {
	dir [2]supDirTiming
}

// supDirTiming learns one direction's packet timing. The Timing itself belongs
// to whoever holds busy (the game-side reader for up packets; the uplink readers
// take turns for down packets and skip an observation rather than wait); the
// grid it finds is published through a sequence lock for the cutoff loop.
type supDirTiming struct {
	busy   atomic.Bool
	t      *suppress.Timing
	last   atomic.Int64 // time of the latest packet
	seq    atomic.Uint64
	anchor atomic.Int64
	period atomic.Int64 // 0: no trusted grid
}

// observe records a packet at now. It never blocks and, once the Timing
// exists, never allocates.
func (d *supDirTiming) observe(cfg *suppress.TimingConfig, now int64) {
	d.last.Store(now)
	if !d.busy.CompareAndSwap(false, true) {
		return // another reader is observing this direction: a missed sample is harmless
	}
	if d.t == nil {
		d.t = suppress.NewTiming(*cfg)
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
func (d *supDirTiming) grid() (anchor, period int64) {
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
func (d *supDirTiming) nextDue(now, after, maxGap int64) int64 {
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
		return int(suppress.Up)
	}
	return int(suppress.Down)
}

// observeGamePacket is called for every game packet of a session after it was
// sent on (up) or delivered back to the game (down); suppression learns the
// sessions' timing from it. It must not allocate or block.
func (r *Router) observeGamePacket(rs *routerSession, now int64, up bool) {
	s := r.sup
	if s == nil || rs.side == nil {
		return
	}
	rs.sup.dir[dirIndex(up)].observe(&s.timing, now)
}

// setupSuppression loads the eBPF programs, attaches suppress_egress to each
// enforced egress and marks the router's own sockets as LC. It runs inside the
// router's network namespace (from New), so interface names, the netlink handle
// and the attachments all refer to that namespace.
func (r *Router) setupSuppression() (err error) {
	sc := &r.cfg.Suppress
	if !sc.Enabled {
		return nil
	}
	ctrl, err := suppress.NewController(sc.resolved)
	if err != nil {
		return fmt.Errorf("suppress: %w", err)
	}
	s := &suppression{r: r, cfg: sc, ctrl: ctrl, timing: sc.resolved.Timing,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), promoted: map[*routerSession]bpf.FlowKey{}}
	defer func() {
		if err != nil {
			s.release()
		}
	}()
	if s.nl, err = netlink.NewHandle(); err != nil {
		return fmt.Errorf("suppress: netlink: %w", err)
	}
	// With transparent mode on, its datapath is shared: its classifier's LC
	// flows (port table, DSCP, promotions) then count as LC here too.
	if s.dp = r.transparentDatapath(); s.dp != nil {
		s.sharedDP = true
	} else if s.dp, err = bpf.Load(); err != nil {
		return fmt.Errorf("suppress: %w", err)
	}
	attach := func(dev string, dir suppress.Direction) (*supIface, error) {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return nil, fmt.Errorf("suppress: device %s: %w", dev, err)
		}
		for _, f := range s.ifs {
			if f.ifindex == ifi.Index {
				if f.dir != dir {
					return nil, fmt.Errorf("suppress: device %s would enforce both uploads and downloads", dev)
				}
				return f, nil
			}
		}
		att, err := s.dp.AttachSuppressor(ifi.Index)
		if err != nil {
			return nil, fmt.Errorf("suppress: attach to %s egress: %w", dev, err)
		}
		f := &supIface{name: dev, ifindex: ifi.Index, dir: dir, att: att}
		s.ifs = append(s.ifs, f)
		return f, nil
	}
	if sc.LANDevice != "" {
		if s.lan, err = attach(sc.LANDevice, suppress.Down); err != nil {
			return err
		}
	}
	reg := r.reg
	for i, uc := range sc.resolved.Uplinks {
		u := r.uplinks[sc.uplinkIx[i]]
		l := &supLink{name: uc.Name, uplink: u, present: map[string]bool{}}
		// The rates come from the uplink's device even where uploads are
		// not enforced on it.
		dev := sc.Uplinks[i].Device
		if dev == "" {
			dev = r.cfg.Uplinks[sc.uplinkIx[i]].Device
		}
		if sc.devices[i] != "" {
			if l.wan, err = attach(sc.devices[i], suppress.Up); err != nil {
				return err
			}
		}
		if dev != "" {
			if ifi, err := net.InterfaceByName(dev); err == nil {
				l.statsIdx = ifi.Index
			}
		}
		for _, d := range []suppress.Direction{suppress.Up, suppress.Down} {
			lbl := `{uplink="` + uc.Name + `",dir="` + d.String() + `"}`
			l.level[d] = reg.Gauge("router_suppress_level"+lbl, "Suppression level per uplink and direction: 0 off, 1 watch, 2 shape, 3 cut.")
			l.changes[d] = reg.Counter("router_suppress_level_changes_total"+lbl, "Suppression level changes per uplink and direction.")
			l.rate[d] = reg.Gauge("router_suppress_bytes_per_second"+lbl, "Traffic rate per uplink and direction as suppression measures it.")
		}
		s.links = append(s.links, l)
	}
	s.m = supMetrics{
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

	// The router's own datagrams are the game's: mark them so suppress_egress
	// lets them pass whatever the level.
	for _, u := range r.uplinks {
		if err := setMark(u.conn.UDPConn(), sc.LCMark); err != nil {
			return fmt.Errorf("suppress: mark uplink %s socket: %w", u.name, err)
		}
	}
	for _, f := range r.forwards {
		if err := setMark(f.conn.UDPConn(), sc.LCMark); err != nil {
			return fmt.Errorf("suppress: mark forward socket: %w", err)
		}
	}
	r.sup = s
	return nil
}

func setMark(c *net.UDPConn, mark uint32) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, int(mark))
	}); err != nil {
		return err
	}
	return serr
}

// startSuppression starts the control loop and the cutoff loop.
func (r *Router) startSuppression(ctx context.Context) error {
	s := r.sup
	if s == nil {
		return nil
	}
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.controlLoop(ctx) }()
	go func() { defer s.wg.Done(); s.cutoffLoop(ctx) }()
	r.log.Info("suppression on", "links", len(s.links), "devices", len(s.ifs), "app", s.cfg.App)
	return nil
}

// closeSuppression stops the loops, detaches the programs and releases the maps.
func (r *Router) closeSuppression() {
	if s := r.sup; s != nil {
		s.release()
	}
}

func (s *suppression) release() {
	s.once.Do(func() {
		close(s.stop)
		s.wg.Wait()
		if s.dp != nil {
			for _, f := range s.ifs {
				f.att.Detach()
				s.dp.DeleteSuppressConfig(f.ifindex)
			}
			if !s.sharedDP {
				s.dp.Close()
			}
		}
		if s.nl != nil {
			s.nl.Close()
		}
	})
}

// controlLoop samples every interval: LC presence, byte rates, uplink RTT and
// loss go into the controller, and policy changes go into the eBPF maps.
func (s *suppression) controlLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.Interval.Duration)
	defer t.Stop()
	var list []*supSession
	prevSample := mono.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.stop:
			return
		case <-t.C:
		}
		now := mono.Now()
		// Sessions seen since the previous sample make the app present.
		list = list[:0]
		present := false
		locked := 0
		seen := make(map[*routerSession]bool, len(s.promoted))
		s.r.byID.Range(func(_ uint64, rs *routerSession) bool {
			// The game side knows a flow by its head, which holds the
			// timing whichever proxy the flow moved to.
			if rs.side == nil || rs.head != rs {
				return true
			}
			seen[rs] = true
			list = append(list, &rs.sup)
			for d := range rs.sup.dir {
				dt := &rs.sup.dir[d]
				if dt.last.Load() > prevSample {
					present = true
				}
				if _, p := dt.grid(); p > 0 {
					locked++
				}
			}
			return true
		})
		prevSample = now
		s.promote(seen, now)
		published := append([]*supSession(nil), list...)
		s.sessions.Store(&published)
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
	}
}

// promote makes each session's flow LC in suppress_egress, and forgets the
// flows of sessions that ended. The router's own sockets are marked already;
// this covers replies that reach the LAN without passing a socket of the router
// (transparent mode writes them into its TUN device, so they carry no mark).
// Suppression matches the reversed tuple too, so server → client passes.
func (s *suppression) promote(seen map[*routerSession]bool, now int64) {
	if s.sharedDP {
		return // transparent mode promotes and demotes its flows itself
	}
	for rs := range seen {
		if _, ok := s.promoted[rs]; ok || !rs.client.IsValid() || !rs.target.IsValid() {
			continue
		}
		k := bpf.FlowKey{Proto: bpf.ProtoUDP, Src: rs.client, Dst: rs.target}
		if err := s.dp.Promote(k, 0); err != nil {
			s.error(now, "promote flow", err)
			continue
		}
		s.promoted[rs] = k
	}
	for rs, k := range s.promoted {
		if !seen[rs] {
			if err := s.dp.Demote(k); err != nil && !errors.Is(err, bpf.ErrNotFound) {
				s.error(now, "demote flow", err)
			}
			delete(s.promoted, rs)
		}
	}
}

// sampleLink feeds one uplink's two samples to the controller; it reports
// whether a policy changed.
func (s *suppression) sampleLink(l *supLink, now int64, present bool) bool {
	clear(l.present)
	if present {
		l.present[s.cfg.App] = true
	}
	var up, down uint64
	if l.statsIdx != 0 {
		if link, err := s.nl.LinkByIndex(l.statsIdx); err == nil && link.Attrs().Statistics != nil {
			st := link.Attrs().Statistics
			if l.prevAt != 0 && now > l.prevAt {
				dt := float64(now-l.prevAt) / 1e9
				up = uint64(float64(st.TxBytes-l.prevTx) / dt)
				down = uint64(float64(st.RxBytes-l.prevRx) / dt)
			}
			l.prevTx, l.prevRx, l.prevAt = st.TxBytes, st.RxBytes, now
		} else if err != nil {
			s.error(now, "read device counters", err)
		}
	}
	h := l.uplink.health.Stats(now)
	smp := suppress.Sample{Uplink: l.name, Now: now, LCPresent: l.present}
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
	for _, d := range []suppress.Direction{suppress.Up, suppress.Down} {
		smp.Dir = d
		smp.BytesPerSec = up
		if d == suppress.Down {
			smp.BytesPerSec = down
		}
		if newOWD {
			// Keepalive loss cannot tell which way a packet was lost, so
			// it still counts for both.
			smp.HasOWD, smp.HasQuality, smp.Loss = true, true, h.Loss
			smp.OWD, smp.QueueDelay, smp.Jitter = h.UpOWD, h.UpQueue, h.UpJitter
			if d == suppress.Down {
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
			s.r.log.Info("suppression level", "uplink", ev.Uplink, "dir", ev.Dir.String(),
				"from", ev.From.String(), "to", ev.To.String(), "reason", ev.Reason)
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
func (s *suppression) apply() {
	now := mono.Now()
	for _, f := range s.ifs {
		var pol suppress.Policy
		if f.dir == suppress.Up {
			for _, l := range s.links {
				if l.wan == f {
					pol = combine(pol, l.pol[suppress.Up], l, suppress.Up, s.cfg)
				}
			}
		} else {
			for _, l := range s.links {
				pol = combine(pol, l.pol[suppress.Down], l, suppress.Down, s.cfg)
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
func combine(acc, p suppress.Policy, l *supLink, d suppress.Direction, cfg *SuppressConfig) suppress.Policy {
	if p.Level == suppress.Off && acc.Level == suppress.Off {
		return acc
	}
	rate := p.BulkRateBytesPerSec
	if rate == 0 {
		for _, u := range cfg.resolved.Uplinks {
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

// bpfConfig translates a policy into suppress_egress's configuration.
func (s *suppression) bpfConfig(p suppress.Policy, threshold uint64) bpf.SuppressConfig {
	if p.Level == suppress.Off {
		return bpf.SuppressConfig{}
	}
	c := bpf.SuppressConfig{
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
		c.Burst = max(c.Burst, s.cfg.resolved.Levels.MaxBulkPacket+l2Overhead)
		c.Deficit = max(c.Deficit, s.cfg.resolved.Levels.MaxBulkPacket+l2Overhead)
	}
	return c
}

// write puts a policy into the maps, only if the resulting configuration
// differs from the one there: writing refills the token bucket, so rewriting an
// unchanged policy every sample would let an extra burst through each time.
func (s *suppression) write(f *supIface, pol suppress.Policy, now int64) {
	thr := uint64(0)
	if pol.DropFraction > 0 {
		thr = s.flowThreshold(now)
	}
	c := s.bpfConfig(pol, thr)
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
	if err := s.dp.SetSuppressConfig(f.ifindex, c); err != nil {
		s.error(now, "write suppress config", err)
		return
	}
	c.TNext, c.TReserve, c.Epsilon = 0, 0, 0
	f.written = c
	s.m.writes.Inc()
	if g := s.m.ifLevel[f.name]; g != nil {
		g.Set(int64(pol.Level))
	}
	s.r.log.Debug("suppression enforced", "device", f.name, "level", pol.Level.String(),
		"bulk_rate_bps", c.RateBytesPerSec*8, "drop", c.DropFraction, "cutoff", pol.Cutoff)
}

// flowThreshold picks the flow rate from which fraction drops apply: the
// largest bulk flows that carry drop_cover of the bulk bytes. It is rounded down
// to a power of two so that the configuration, and with it the token bucket,
// does not change on every sample.
func (s *suppression) flowThreshold(now int64) uint64 {
	var rates []uint64
	since := now - int64(time.Second)
	err := s.dp.BulkFlows(func(_ bpf.FlowKey, f bpf.BulkFlow) bool {
		if f.LastSeen >= since {
			rates = append(rates, max(f.RateBPS, f.WindowBytes*10))
		}
		return true
	})
	if err != nil {
		s.error(now, "read bulk flows", err)
		return 0
	}
	thr := suppress.FlowRateThreshold(rates, s.cfg.resolved.Levels.DropCover)
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
func (s *suppression) cutoffLoop(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	maxGap := int64(s.timing.MaxGap)
	for {
		now := mono.Now()
		wakeAt := now + int64(s.cfg.Interval.Duration)
		var list []*supSession
		if p := s.sessions.Load(); p != nil {
			list = *p
		}
		for _, f := range s.ifs {
			f.mu.Lock()
			pol := f.pol
			if !pol.Cutoff || !f.written.Enabled {
				if f.cutNext != 0 {
					if err := s.dp.SetCutoff(f.ifindex, 0, 0, 0); err != nil {
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
				if err := s.dp.SetCutoff(f.ifindex, next, int64(pol.TReserve), eps); err != nil {
					s.error(now, "set cutoff", err)
				} else {
					f.cutNext = next
					s.m.cutoffs.Inc()
					wakeAt = min(wakeAt, next+eps)
				}
			}
			f.mu.Unlock()
		}
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

// readCounters copies suppress_egress's counters into the metrics.
func (s *suppression) readCounters(now int64) {
	c, err := s.dp.SuppressCounters()
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
func (s *suppression) error(now int64, what string, err error) {
	s.m.errs.Inc()
	if last := s.m.lastErrLog.Load(); now-last > int64(time.Second) && s.m.lastErrLog.CompareAndSwap(last, now) {
		s.r.log.Warn("suppression: "+what, "err", err)
	}
}
