package router

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/raicnet/raic/bpf"
	"github.com/raicnet/raic/pkg/config"
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

// suppression is the router's side of [suppress]: the runtime in package
// suppress, and the eBPF datapath and enforcer it drives.
type suppression struct {
	rt   *suppress.Runtime
	enf  *bpf.Enforcer
	dp   *bpf.Datapath // nil when transparent mode's is shared: it closes that one
	once sync.Once
}

// observeGamePacket is called for every game packet of a session after it was
// sent on (up) or delivered back to the game (down); suppression learns the
// sessions' timing from it. It must not allocate or block.
func (r *Router) observeGamePacket(rs *routerSession, now int64, up bool) {
	s := r.sup
	if s == nil || rs.side == nil {
		return
	}
	s.rt.Observe(&rs.sup, now, up)
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
	s := &suppression{}
	defer func() {
		if err != nil {
			s.release()
		}
	}()
	// With transparent mode on, its datapath is shared: its classifier's LC
	// flows (port table, DSCP, promotions) then count as LC here too, and it
	// owns the promotion of LC flows.
	dp := r.transparentDatapath()
	shared := dp != nil
	if !shared {
		if dp, err = bpf.Load(); err != nil {
			return fmt.Errorf("suppress: %w", err)
		}
		s.dp = dp
	}
	if s.enf, err = bpf.NewEnforcer(dp); err != nil {
		return fmt.Errorf("suppress: %w", err)
	}
	rc := suppress.RuntimeConfig{
		Config:       sc.resolved,
		App:          sc.App,
		LCMark:       sc.LCMark,
		Interval:     sc.Interval.Duration,
		LANDevice:    sc.LANDevice,
		PromoteFlows: !shared,
		Sessions:     r.suppressedSessions,
		Log:          r.log,
		Metrics:      r.reg,
	}
	for i := range sc.resolved.Uplinks {
		ix := sc.uplinkIx[i]
		dev := sc.Uplinks[i].Device
		if dev == "" {
			dev = r.cfg.Uplinks[ix].Device
		}
		rc.Links = append(rc.Links, suppress.LinkSetup{Egress: sc.devices[i], StatsDevice: dev, Health: r.uplinks[ix].health})
	}
	if s.rt, err = suppress.NewRuntime(rc, s.enf); err != nil {
		return err
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

// suppressedSessions gives suppression each game flow once, by its head: the
// game side knows a flow by its head, which holds the timing whichever proxy
// the flow moved to.
func (r *Router) suppressedSessions(yield func(*suppress.SessionTiming, netip.AddrPort, netip.AddrPort) bool) {
	r.byID.Range(func(_ uint64, rs *routerSession) bool {
		if rs.side == nil || rs.head != rs {
			return true
		}
		return yield(&rs.sup, rs.client, rs.target)
	})
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
	if s := r.sup; s != nil {
		s.rt.Start(ctx)
	}
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
		if s.rt != nil {
			s.rt.Close()
		}
		if s.enf != nil {
			s.enf.Close()
		}
		if s.dp != nil {
			s.dp.Close()
		}
	})
}
