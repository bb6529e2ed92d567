package suppress

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/BurntSushi/toml"
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

// ParseConfig decodes TOML over DefaultConfig and validates the result. An app
// entry that sets only some keys takes the rest from the built-in entry of the
// same name, or from "default".
func ParseConfig(data []byte) (Config, error) {
	cfg := DefaultConfig()
	builtin := cfg.Apps
	cfg.Apps = nil
	md, err := toml.Decode(string(data), &cfg)
	if err != nil {
		return Config{}, err
	}
	if und := md.Undecoded(); len(und) > 0 {
		return Config{}, fmt.Errorf("unknown key %s", und[0])
	}
	apps := DefaultApps()
	for name, a := range cfg.Apps {
		base, ok := builtin[name]
		if !ok {
			base = builtin["default"]
			if d, ok := cfg.Apps["default"]; ok {
				base = mergeApp(md, "default", d, builtin["default"])
			}
		}
		apps[name] = mergeApp(md, name, a, base)
	}
	cfg.Apps = apps
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

func mergeApp(md toml.MetaData, name string, a, base AppLimits) AppLimits {
	def := func(k string) bool { return md.IsDefined("apps", name, k) }
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

// Validate checks the configuration; the error names the offending key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("suppress: %s: %s", key, fmt.Sprintf(format, args...)))
	}
	if len(c.Uplinks) == 0 {
		bad("uplink", "at least one uplink is required")
	}
	seen := map[string]bool{}
	for i, u := range c.Uplinks {
		k := fmt.Sprintf("uplink[%d]", i)
		if u.Name == "" {
			bad(k+".name", "must be set")
		} else if seen[u.Name] {
			bad(k+".name", "duplicate uplink %q", u.Name)
		}
		seen[u.Name] = true
		if u.UpBitsPerSec == 0 {
			bad(k+".up_bps", "must be > 0")
		}
		if u.DownBitsPerSec == 0 {
			bad(k+".down_bps", "must be > 0")
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
	if l.HoldDown < 0 {
		bad("levels.hold_down", "must not be negative")
	}
	if l.MinHold < 0 {
		bad("levels.min_hold", "must not be negative")
	}
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
	if l.BurstTime <= 0 {
		bad("levels.burst_time", "must be > 0")
	}
	if l.DeficitTime <= 0 {
		bad("levels.ecn_deficit_time", "must be > 0")
	}
	fraction("levels.cut_drop_fraction", l.CutDropFraction, true)
	fraction("levels.cut_drop_step", l.CutDropStep, true)
	fraction("levels.drop_cover", l.DropCover, false)
	if l.MaxDropRun < 0 {
		bad("levels.max_drop_run", "must not be negative")
	}
	if l.ReserveC < 0 {
		bad("levels.reserve_c", "must not be negative")
	}
	if l.MaxBulkPacket < 64 || l.MaxBulkPacket > 65535 {
		bad("levels.max_bulk_packet", "%d is not within 64..65535 bytes", l.MaxBulkPacket)
	}
	if l.Epsilon < 0 {
		bad("levels.epsilon", "must not be negative")
	}

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
			case math.IsNaN(x.t.Raise) || math.IsNaN(x.t.Lower) || x.t.Raise < 0 || x.t.Lower < 0:
				bad(k, "thresholds must be >= 0")
			case x.t.Raise > 0 && x.t.Lower >= x.t.Raise:
				bad(k+".lower", "%v must be below raise (%v), or the level flaps", x.t.Lower, x.t.Raise)
			}
		}
		if s, c := th.t.Shape.Raise, th.t.Cut.Raise; s > 0 && c > 0 && c < s {
			bad(th.key+".cut.raise", "%v is below shape.raise (%v)", c, s)
		}
	}
	if d.RTTBaselineWindow < time.Second {
		bad("detect.rtt_baseline_window", "%v is shorter than 1s", d.RTTBaselineWindow)
	}
	if d.OWDWindow < 100*time.Millisecond {
		bad("detect.owd_window", "%v is shorter than 100ms", d.OWDWindow)
	}

	tc := &c.Timing
	if tc.MinPeriod <= 0 {
		bad("timing.min_period", "must be > 0")
	}
	if tc.MaxPeriod <= tc.MinPeriod {
		bad("timing.max_period", "%v is not above min_period (%v)", tc.MaxPeriod, tc.MinPeriod)
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
	if tc.MaxGap <= 0 {
		bad("timing.max_gap", "must be > 0")
	}
	if tc.Tolerance <= 0 {
		bad("timing.tolerance", "must be > 0")
	}

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
		if a.Linger < 0 {
			bad(k+".linger", "must not be negative")
		}
	}
	return errors.Join(errs...)
}
