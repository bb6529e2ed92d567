package suppress

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/raicnet/raic/pkg/config"
)

// Level is an enforcement level. Higher levels hold bulk traffic back harder.
type Level uint8

const (
	// Off: no LC traffic; bulk traffic is left alone.
	Off Level = iota
	// Watch: LC traffic present, link calm; bulk is marked CS1 so queues that
	// honour DSCP already favour LC packets.
	Watch
	// Shape: the link is busy or latency is creeping up; bulk is capped by a
	// token bucket at a share of the link rate and ECN-marked.
	Shape
	// Cut: latency is inflated or packets are lost; a fraction of bulk is
	// dropped (largest flows first) and cutoff windows hold bulk before T_next.
	Cut
)

var levelNames = [...]string{"off", "watch", "shape", "cut"}

func (l Level) String() string {
	if int(l) < len(levelNames) {
		return levelNames[l]
	}
	return fmt.Sprintf("level(%d)", uint8(l))
}

// MarshalText writes the level's name, as TOML and logs show it.
func (l Level) MarshalText() ([]byte, error) {
	if int(l) >= len(levelNames) {
		return nil, fmt.Errorf("invalid level %d", uint8(l))
	}
	return []byte(levelNames[l]), nil
}

// UnmarshalText reads a level name ("off", "watch", "shape", "cut").
func (l *Level) UnmarshalText(b []byte) error {
	i := slices.Index(levelNames[:], string(b))
	if i < 0 {
		return fmt.Errorf("unknown level %q (want off, watch, shape or cut)", b)
	}
	*l = Level(i)
	return nil
}

// Direction is the direction of traffic on an uplink.
type Direction uint8

const (
	// Up is LAN → WAN (enforced on the WAN egress).
	Up Direction = iota
	// Down is WAN → LAN (enforced on the LAN egress).
	Down
)

func (d Direction) String() string {
	if d == Up {
		return "up"
	}
	return "down"
}

// Config is the suppression configuration, the [suppress] part of the router's
// TOML file. Start from DefaultConfig (ParseConfig does) so unset keys keep their
// defaults.
type Config struct {
	Uplinks []UplinkConfig `toml:"uplink"`
	Levels  LevelConfig    `toml:"levels"`
	Detect  DetectConfig   `toml:"detect"`
	// Apps holds the limits per app type (the names detect/ gives them). The
	// entry "default" applies to app types without an entry of their own.
	Apps map[string]AppLimits `toml:"apps"`
	// Timing tunes the per-session T_next estimator (NewTiming).
	Timing TimingConfig `toml:"timing"`
}

// UplinkConfig is one uplink's configured rates. Utilisation and the bulk cap are
// computed against these, not against what the link happens to carry.
type UplinkConfig struct {
	Name           string `toml:"name"`
	UpBitsPerSec   uint64 `toml:"up_bps"`
	DownBitsPerSec uint64 `toml:"down_bps"`
	// Enforce selects the directions enforcement acts on: "both" (default),
	// "up", "down" or "none". Detection runs either way, so events still tell
	// what would have been done.
	Enforce string `toml:"enforce"`
}

// Rate returns the configured rate of a direction in bits per second.
func (u UplinkConfig) Rate(d Direction) uint64 {
	if d == Up {
		return u.UpBitsPerSec
	}
	return u.DownBitsPerSec
}

// Enforces reports whether enforcement is on for direction d.
func (u UplinkConfig) Enforces(d Direction) bool {
	switch u.Enforce {
	case "", "both":
		return true
	case "up":
		return d == Up
	case "down":
		return d == Down
	}
	return false
}

// LevelConfig says how levels change and what each level does.
type LevelConfig struct {
	// A level is raised when the detectors asked for more in at least
	// RaiseSamples of the last RaiseWindow samples: one spike does not raise,
	// and a signal that crosses its threshold every other sample still does.
	RaiseWindow  int `toml:"raise_window"`
	RaiseSamples int `toml:"raise_samples"`
	// A level is lowered one step once the detectors have asked for less for
	// HoldDown without a break, and not before the level has lasted MinHold.
	HoldDown time.Duration `toml:"hold_down"`
	MinHold  time.Duration `toml:"min_hold"`

	// Shape and Cut: bulk is capped at ShapeShare (Shape) or CutShare (Cut)
	// of the link rate left after the apps' reserves, with a bucket that holds
	// BurstTime at that rate (at least one bulk packet).
	ShapeShare float64       `toml:"shape_share"`
	CutShare   float64       `toml:"cut_share"`
	BurstTime  time.Duration `toml:"burst_time"`
	ECN        bool          `toml:"ecn"`
	// DeficitTime bounds, at the capped rate, how far ECN-capable bulk may
	// overdraw the bucket (marked CE) before it is dropped: the virtual queue
	// a responsive sender gets to react in (at least one bulk packet).
	DeficitTime time.Duration `toml:"ecn_deficit_time"`

	// Cut: drop CutDropFraction of bulk packets at first, and CutDropStep more
	// for every sample the Cut condition persists, up to the apps' limit. No
	// flow loses more than MaxDropRun packets in a row (0: no limit), so TCP
	// recovers with fast retransmit instead of a timeout.
	CutDropFraction float64 `toml:"cut_drop_fraction"`
	CutDropStep     float64 `toml:"cut_drop_step"`
	MaxDropRun      int     `toml:"max_drop_run"`
	// DropCover: drops hit the fewest largest bulk flows that together carry
	// this share of bulk bytes (see FlowRateThreshold).
	DropCover float64 `toml:"drop_cover"`

	// Cutoff windows: bulk is held from T_next − T_reserve to T_next + Epsilon,
	// with T_reserve = ReserveC + MaxBulkPacket·8 / link rate (the time the
	// largest bulk packet occupies the link, plus a margin for the clock and
	// the prediction).
	Cutoff        bool          `toml:"cutoff"`
	ReserveC      time.Duration `toml:"reserve_c"`
	MaxBulkPacket uint64        `toml:"max_bulk_packet"`
	Epsilon       time.Duration `toml:"epsilon"`
}

// Threshold is a Schmitt trigger: on at or above Raise, off at or below Lower.
// Raise 0 disables it.
type Threshold struct {
	Raise float64 `toml:"raise"`
	Lower float64 `toml:"lower"`
}

// Thresholds are a detector's triggers for Shape and for Cut.
type Thresholds struct {
	Shape Threshold `toml:"shape"`
	Cut   Threshold `toml:"cut"`
}

// DetectConfig holds the detectors' thresholds and windows. Units are in the key
// names: utilisation and loss are fractions (0–1), delays milliseconds, the
// one-way delay trend milliseconds per second.
type DetectConfig struct {
	Utilisation  Thresholds `toml:"utilisation"`
	RTTInflation Thresholds `toml:"rtt_inflation_ms"`
	// OWDInflation judges a direction's queueing delay (its one-way delay
	// over its windowed minimum, Sample.QueueDelay), in place of RTTInflation
	// when the samples carry it. Its thresholds are lower than the RTT's: a
	// queue in one direction adds its whole delay to its own measurement,
	// without the other direction's noise.
	OWDInflation Thresholds `toml:"owd_inflation_ms"`
	OWDTrend     Thresholds `toml:"owd_trend_ms_per_s"`
	Jitter       Thresholds `toml:"jitter_ms"`
	Loss         Thresholds `toml:"loss"`

	// The RTT baseline is the minimum RTT over RTTBaselineWindow: long enough
	// to have seen the queue empty, short enough to follow a route change.
	RTTBaselineWindow time.Duration `toml:"rtt_baseline_window"`
	// The one-way delay trend is the least-squares slope over OWDWindow.
	OWDWindow time.Duration `toml:"owd_window"`
}

// AppLimits bound what suppression may do while an app type's LC traffic is
// present. When several app types are present, the most permissive limit of any
// of them applies (each is entitled to the protection it needs) and reserves add
// up.
type AppLimits struct {
	// MaxLevel caps the level (e.g. "shape" for an app that cannot benefit
	// from dropping others).
	MaxLevel Level `toml:"max_level"`
	// MaxDropFraction caps the share of bulk packets dropped at Cut (voip:
	// 0.2, a shooter may cut bulk entirely: 1).
	MaxDropFraction float64 `toml:"max_drop_fraction"`
	// ReserveUpBitsPerSec and ReserveDownBitsPerSec are bandwidth the app's
	// own stream needs (cloud gaming's video). The reserve comes off the link
	// rate before bulk gets its share, but never more than half of it, so a
	// reserve sized for the main link does not starve bulk on a slow backup.
	ReserveUpBitsPerSec   uint64 `toml:"reserve_up_bps"`
	ReserveDownBitsPerSec uint64 `toml:"reserve_down_bps"`
	// Cutoff allows cutoff windows before the app's packets.
	Cutoff bool `toml:"cutoff"`
	// Linger keeps the app counted as present for this long after its last LC
	// packet, so a pause in a match does not release bulk traffic.
	Linger time.Duration `toml:"linger"`
}

// DefaultConfig returns the defaults. It has no uplinks: those must be
// configured.
func DefaultConfig() Config {
	return Config{
		Levels: LevelConfig{
			RaiseWindow:  4,
			RaiseSamples: 2,
			HoldDown:     3 * time.Second,
			MinHold:      5 * time.Second,
			// The configured rates are the line's; bulk and LC together
			// stay 5% under them, which absorbs a rate set a little high.
			// Set 1 when the rates are measured exactly.
			ShapeShare: 0.95,
			CutShare:   0.4,
			// A shallow bucket and deficit keep the line's queue to a
			// few milliseconds (docs/bench-suppression.md).
			BurstTime:       2 * time.Millisecond,
			DeficitTime:     time.Millisecond,
			ECN:             true,
			CutDropFraction: 0.1,
			CutDropStep:     0.05,
			MaxDropRun:      3,
			DropCover:       0.8,
			Cutoff:          true,
			ReserveC:        500 * time.Microsecond,
			MaxBulkPacket:   1500,
			Epsilon:         time.Millisecond,
		},
		Detect: DetectConfig{
			Utilisation:       Thresholds{Shape: Threshold{Raise: 0.85, Lower: 0.7}},
			RTTInflation:      Thresholds{Shape: Threshold{Raise: 15, Lower: 8}, Cut: Threshold{Raise: 40, Lower: 20}},
			OWDInflation:      Thresholds{Shape: Threshold{Raise: 8, Lower: 3}, Cut: Threshold{Raise: 30, Lower: 12}},
			OWDTrend:          Thresholds{Shape: Threshold{Raise: 5, Lower: 1}},
			Jitter:            Thresholds{Shape: Threshold{Raise: 10, Lower: 5}},
			Loss:              Thresholds{Shape: Threshold{Raise: 0.01, Lower: 0.002}, Cut: Threshold{Raise: 0.03, Lower: 0.01}},
			RTTBaselineWindow: 2 * time.Minute,
			OWDWindow:         2 * time.Second,
		},
		Apps:   DefaultApps(),
		Timing: DefaultTimingConfig(),
	}
}

// DefaultApps returns the built-in limits per app type.
func DefaultApps() map[string]AppLimits {
	return map[string]AppLimits{
		"default": {MaxLevel: Cut, MaxDropFraction: 0.5, Cutoff: true, Linger: 5 * time.Second},
		// A shooter's packets are small and frequent; nothing else matters
		// during a match.
		"shooter": {MaxLevel: Cut, MaxDropFraction: 1, Cutoff: true, Linger: 10 * time.Second},
		// A call often runs beside other work; protect it without stopping
		// everything else.
		"voip": {MaxLevel: Cut, MaxDropFraction: 0.2, Cutoff: false, Linger: 3 * time.Second},
		// Cloud gaming streams video at tens of Mbit/s: bulk must leave room
		// for it, and cutoff windows would sit on every frame.
		"cloud": {MaxLevel: Cut, MaxDropFraction: 0.5, ReserveUpBitsPerSec: 1_000_000, ReserveDownBitsPerSec: 30_000_000, Cutoff: false, Linger: 5 * time.Second},
	}
}

// ParseConfig decodes a suppression table file (name is used in errors) over
// DefaultConfig and validates the result; every error of the file is
// returned at once, naming its line and key. An app entry that sets only some
// keys takes the rest from the built-in entry of the same name, or from
// "default". The router reads the same keys as its [suppress] table.
func ParseConfig(name string, data []byte) (Config, error) {
	cfg := DefaultConfig()
	cfg.Apps = nil // entries are merged key by key below
	err := config.CheckText(name, string(data), &cfg, func(m *config.Meta) {
		cfg.Apps = MergeApps(cfg.Apps, func(app, key string) bool {
			return m.IsDefined("apps." + app + "." + key)
		})
		cfg.Check(func(key, msg string) { m.Report(key, "%s", msg) })
	})
	if err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// MergeApps returns the built-in app limits with the written entries laid
// over them: a written key replaces the built-in value, a key left out
// (isDefined(app, key) false) keeps the built-in entry of the same name, or
// else that of "default" (itself merged with a written "default").
func MergeApps(written map[string]AppLimits, isDefined func(app, key string) bool) map[string]AppLimits {
	builtin := DefaultApps()
	apps := DefaultApps()
	if d, ok := written["default"]; ok {
		apps["default"] = mergeApp(isDefined, "default", d, builtin["default"])
	}
	for name, a := range written {
		if name == "default" {
			continue
		}
		base, ok := builtin[name]
		if !ok {
			base = apps["default"]
		}
		apps[name] = mergeApp(isDefined, name, a, base)
	}
	return apps
}

func mergeApp(isDefined func(app, key string) bool, name string, a, base AppLimits) AppLimits {
	def := func(k string) bool { return isDefined(name, k) }
	if !def("max_level") {
		a.MaxLevel = base.MaxLevel
	}
	if !def("max_drop_fraction") {
		a.MaxDropFraction = base.MaxDropFraction
	}
	if !def("reserve_up_bps") {
		a.ReserveUpBitsPerSec = base.ReserveUpBitsPerSec
	}
	if !def("reserve_down_bps") {
		a.ReserveDownBitsPerSec = base.ReserveDownBitsPerSec
	}
	if !def("cutoff") {
		a.Cutoff = base.Cutoff
	}
	if !def("linger") {
		a.Linger = base.Linger
	}
	return a
}

// maxBitsPerSec bounds the configured link rates (1 Tbit/s): a rate beyond it
// is a typo, and the token bucket's arithmetic stays far from overflow.
const maxBitsPerSec = 1e12

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// Validate checks the configuration; each error reads "suppress: KEY:
// message", and all of them are returned at once.
func (c *Config) Validate() error {
	var errs []error
	c.Check(func(key, msg string) { errs = append(errs, fmt.Errorf("suppress: %s: %s", key, msg)) })
	return errors.Join(errs...)
}

// Check calls bad for every refused key (dotted, with array indexes:
// "uplink.0.up_bps", "levels.shape_share") with the reason, so that a config
// loader can point at the key's line.
func (c *Config) Check(report func(key, msg string)) {
	bad := func(key, format string, args ...any) { report(key, fmt.Sprintf(format, args...)) }
	if len(c.Uplinks) == 0 {
		bad("uplink", "at least one uplink is required")
	}
	seen := map[string]bool{}
	for i, u := range c.Uplinks {
		k := fmt.Sprintf("uplink.%d", i)
		if u.Name == "" {
			bad(k+".name", "must be set")
		} else if seen[u.Name] {
			bad(k+".name", "duplicate uplink %q", u.Name)
		}
		seen[u.Name] = true
		if u.UpBitsPerSec == 0 || u.UpBitsPerSec > maxBitsPerSec {
			bad(k+".up_bps", "%d is not within 1 to %d bits/s", u.UpBitsPerSec, uint64(maxBitsPerSec))
		}
		if u.DownBitsPerSec == 0 || u.DownBitsPerSec > maxBitsPerSec {
			bad(k+".down_bps", "%d is not within 1 to %d bits/s", u.DownBitsPerSec, uint64(maxBitsPerSec))
		}
		switch u.Enforce {
		case "", "both", "up", "down", "none":
		default:
			bad(k+".enforce", "%q is not one of both, up, down, none", u.Enforce)
		}
	}

	l := &c.Levels
	if l.RaiseWindow < 1 || l.RaiseWindow > 8 {
		bad("levels.raise_window", "%d is not within 1..8", l.RaiseWindow)
	}
	if l.RaiseSamples < 1 || l.RaiseSamples > l.RaiseWindow {
		bad("levels.raise_samples", "%d is not within 1..raise_window (%d)", l.RaiseSamples, l.RaiseWindow)
	}
	// between refuses a duration outside [lo, hi].
	between := func(key string, d, lo, hi time.Duration) {
		if d < lo || d > hi {
			bad(key, "%v is not within %v to %v", d, lo, hi)
		}
	}
	between("levels.hold_down", l.HoldDown, 0, time.Hour)
	between("levels.min_hold", l.MinHold, 0, time.Hour)
	fraction := func(key string, v float64, zeroOK bool) {
		if math.IsNaN(v) || v < 0 || v > 1 || (!zeroOK && v == 0) {
			if zeroOK {
				bad(key, "%v is not within [0, 1]", v)
			} else {
				bad(key, "%v is not within (0, 1]", v)
			}
		}
	}
	fraction("levels.shape_share", l.ShapeShare, false)
	fraction("levels.cut_share", l.CutShare, true)
	if l.CutShare > l.ShapeShare {
		bad("levels.cut_share", "%v is above shape_share (%v); Cut must not allow more than Shape", l.CutShare, l.ShapeShare)
	}
	between("levels.burst_time", l.BurstTime, time.Microsecond, time.Second)
	between("levels.ecn_deficit_time", l.DeficitTime, time.Microsecond, time.Second)
	fraction("levels.cut_drop_fraction", l.CutDropFraction, true)
	fraction("levels.cut_drop_step", l.CutDropStep, true)
	fraction("levels.drop_cover", l.DropCover, false)
	if l.MaxDropRun < 0 || l.MaxDropRun > 1000 {
		bad("levels.max_drop_run", "%d is not within 0 to 1000", l.MaxDropRun)
	}
	between("levels.reserve_c", l.ReserveC, 0, time.Second)
	if l.MaxBulkPacket < 64 || l.MaxBulkPacket > 65535 {
		bad("levels.max_bulk_packet", "%d is not within 64..65535 bytes", l.MaxBulkPacket)
	}
	between("levels.epsilon", l.Epsilon, 0, time.Second)

	d := &c.Detect
	for _, th := range []struct {
		key string
		t   Thresholds
	}{
		{"detect.utilisation", d.Utilisation},
		{"detect.rtt_inflation_ms", d.RTTInflation},
		{"detect.owd_inflation_ms", d.OWDInflation},
		{"detect.owd_trend_ms_per_s", d.OWDTrend},
		{"detect.jitter_ms", d.Jitter},
		{"detect.loss", d.Loss},
	} {
		for _, x := range []struct {
			name string
			t    Threshold
		}{{"shape", th.t.Shape}, {"cut", th.t.Cut}} {
			k := th.key + "." + x.name
			switch {
			case !finite(x.t.Raise) || !finite(x.t.Lower) || x.t.Raise < 0 || x.t.Lower < 0:
				bad(k, "thresholds must be numbers >= 0")
			case x.t.Raise > 0 && x.t.Lower >= x.t.Raise:
				bad(k+".lower", "%v must be below raise (%v), or the level flaps", x.t.Lower, x.t.Raise)
			}
		}
		if s, c := th.t.Shape.Raise, th.t.Cut.Raise; s > 0 && c > 0 && c < s {
			bad(th.key+".cut.raise", "%v is below shape.raise (%v)", c, s)
		}
	}
	between("detect.rtt_baseline_window", d.RTTBaselineWindow, time.Second, 24*time.Hour)
	between("detect.owd_window", d.OWDWindow, 100*time.Millisecond, time.Hour)

	tc := &c.Timing
	between("timing.min_period", tc.MinPeriod, time.Microsecond, time.Second)
	if tc.MaxPeriod <= tc.MinPeriod || tc.MaxPeriod > time.Minute {
		bad("timing.max_period", "%v is not above min_period (%v) and at most 1m", tc.MaxPeriod, tc.MinPeriod)
	}
	if tc.Acquire < 3 || tc.Acquire > acqCap-1 {
		bad("timing.acquire", "%d is not within 3..%d", tc.Acquire, acqCap-1)
	}
	open01 := func(key string, v float64) {
		if !(v > 0 && v < 1) {
			bad(key, "%v is not within (0, 1)", v)
		}
	}
	open01("timing.alpha", tc.Alpha)
	open01("timing.beta", tc.Beta)
	open01("timing.unlock_fraction", tc.UnlockFraction)
	between("timing.max_gap", tc.MaxGap, time.Millisecond, time.Hour)
	between("timing.tolerance", tc.Tolerance, time.Microsecond, time.Second)

	if _, ok := c.Apps["default"]; !ok {
		bad("apps.default", "must exist (limits for app types without an entry)")
	}
	names := make([]string, 0, len(c.Apps))
	for n := range c.Apps {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		a := c.Apps[n]
		k := "apps." + n
		if a.MaxLevel > Cut {
			bad(k+".max_level", "invalid level %d", a.MaxLevel)
		}
		fraction(k+".max_drop_fraction", a.MaxDropFraction, true)
		if a.Linger < 0 || a.Linger > time.Hour {
			bad(k+".linger", "%v is not within 0 to 1h", a.Linger)
		}
	}
}
