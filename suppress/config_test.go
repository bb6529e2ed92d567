package suppress

import (
	"strings"
	"testing"
	"time"
)

const sampleTOML = `
[[uplink]]
name = "fiber"
up_bps = 40_000_000
down_bps = 200_000_000

[[uplink]]
name = "lte"
up_bps = 10_000_000
down_bps = 50_000_000
enforce = "up"

[levels]
hold_down = "4s"
cut_drop_fraction = 0.2

[detect.rtt_inflation_ms]
cut = { raise = 50, lower = 25 }

[detect.owd_inflation_ms]
shape = { raise = 10, lower = 4 }

[apps.voip]
max_drop_fraction = 0.1

[apps.racing]
max_level = "shape"

[timing]
tolerance = "2ms"
`

func TestParseConfig(t *testing.T) {
	cfg, err := ParseConfig("s.toml", []byte(sampleTOML))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Uplinks) != 2 || cfg.Uplinks[1].Name != "lte" || cfg.Uplinks[1].UpBitsPerSec != 10_000_000 {
		t.Fatalf("uplinks = %+v", cfg.Uplinks)
	}
	if !cfg.Uplinks[0].Enforces(Up) || !cfg.Uplinks[0].Enforces(Down) {
		t.Error("enforce unset must mean both directions")
	}
	if !cfg.Uplinks[1].Enforces(Up) || cfg.Uplinks[1].Enforces(Down) {
		t.Error(`enforce = "up" must enforce up only`)
	}
	if cfg.Levels.HoldDown != 4*time.Second || cfg.Levels.CutDropFraction != 0.2 {
		t.Errorf("levels not decoded: %+v", cfg.Levels)
	}
	// Keys not in the file keep their defaults.
	def := DefaultConfig()
	if cfg.Levels.MinHold != def.Levels.MinHold || cfg.Levels.MaxBulkPacket != 1500 {
		t.Errorf("defaults lost: %+v", cfg.Levels)
	}
	// A table that sets one field of a pair keeps the other pair's defaults.
	if got := cfg.Detect.RTTInflation; got.Cut != (Threshold{50, 25}) || got.Shape != def.Detect.RTTInflation.Shape {
		t.Errorf("rtt_inflation_ms = %+v", got)
	}
	if got := cfg.Detect.OWDInflation; got.Shape != (Threshold{10, 4}) || got.Cut != def.Detect.OWDInflation.Cut {
		t.Errorf("owd_inflation_ms = %+v", got)
	}
	if got := def.Detect.OWDInflation; got.Shape != (Threshold{8, 3}) || got.Cut != (Threshold{30, 12}) {
		t.Errorf("owd_inflation_ms defaults = %+v", got)
	}
	// An app entry that sets one key takes the others from its built-in entry…
	voip := cfg.Apps["voip"]
	if voip.MaxDropFraction != 0.1 || voip.Linger != def.Apps["voip"].Linger || voip.MaxLevel != Cut {
		t.Errorf("voip = %+v", voip)
	}
	// …or, for a new app type, from "default".
	racing := cfg.Apps["racing"]
	if racing.MaxLevel != Shape || racing.MaxDropFraction != def.Apps["default"].MaxDropFraction || racing.Linger != def.Apps["default"].Linger {
		t.Errorf("racing = %+v", racing)
	}
	if cfg.Timing.Tolerance != 2*time.Millisecond || cfg.Timing.Alpha != DefaultTimingConfig().Alpha {
		t.Errorf("timing = %+v", cfg.Timing)
	}
	// Built-in apps not mentioned stay.
	if _, ok := cfg.Apps["shooter"]; !ok {
		t.Error("built-in shooter entry lost")
	}
}

func TestConfigValidateNamesTheKey(t *testing.T) {
	base := func() Config {
		c := DefaultConfig()
		c.Uplinks = []UplinkConfig{{Name: "a", UpBitsPerSec: 1e7, DownBitsPerSec: 1e8}}
		return c
	}
	if c := base(); c.Validate() != nil {
		t.Fatalf("valid config rejected: %v", c.Validate())
	}
	for _, tc := range []struct {
		key    string
		mutate func(*Config)
	}{
		{"uplink:", func(c *Config) { c.Uplinks = nil }},
		{"uplink.0.name", func(c *Config) { c.Uplinks[0].Name = "" }},
		{"uplink.1.name", func(c *Config) { c.Uplinks = append(c.Uplinks, c.Uplinks[0]) }},
		{"uplink.0.up_bps", func(c *Config) { c.Uplinks[0].UpBitsPerSec = 0 }},
		{"uplink.0.down_bps", func(c *Config) { c.Uplinks[0].DownBitsPerSec = 0 }},
		{"uplink.0.enforce", func(c *Config) { c.Uplinks[0].Enforce = "sideways" }},
		{"levels.raise_window", func(c *Config) { c.Levels.RaiseWindow = 9 }},
		{"levels.raise_samples", func(c *Config) { c.Levels.RaiseSamples = 5 }},
		{"levels.hold_down", func(c *Config) { c.Levels.HoldDown = -1 }},
		{"levels.shape_share", func(c *Config) { c.Levels.ShapeShare = 0 }},
		{"levels.cut_share", func(c *Config) { c.Levels.CutShare = c.Levels.ShapeShare + 0.01 }},
		{"levels.ecn_deficit_time", func(c *Config) { c.Levels.DeficitTime = 0 }},
		{"levels.burst_time", func(c *Config) { c.Levels.BurstTime = 0 }},
		{"levels.cut_drop_fraction", func(c *Config) { c.Levels.CutDropFraction = 1.5 }},
		{"levels.drop_cover", func(c *Config) { c.Levels.DropCover = 0 }},
		{"levels.max_bulk_packet", func(c *Config) { c.Levels.MaxBulkPacket = 10 }},
		{"levels.epsilon", func(c *Config) { c.Levels.Epsilon = -time.Millisecond }},
		{"detect.rtt_inflation_ms.shape.lower", func(c *Config) { c.Detect.RTTInflation.Shape = Threshold{Raise: 15, Lower: 15} }},
		{"detect.loss.cut.raise", func(c *Config) { c.Detect.Loss.Cut = Threshold{Raise: 0.005, Lower: 0.001} }},
		{"detect.owd_inflation_ms.cut.lower", func(c *Config) { c.Detect.OWDInflation.Cut.Lower = 40 }},
		{"detect.owd_inflation_ms.cut.raise", func(c *Config) { c.Detect.OWDInflation.Cut.Raise = 5 }},
		{"detect.jitter_ms.shape", func(c *Config) { c.Detect.Jitter.Shape.Lower = -1 }},
		{"detect.rtt_baseline_window", func(c *Config) { c.Detect.RTTBaselineWindow = 0 }},
		{"detect.owd_window", func(c *Config) { c.Detect.OWDWindow = time.Millisecond }},
		{"timing.max_period", func(c *Config) { c.Timing.MaxPeriod = c.Timing.MinPeriod }},
		{"timing.acquire", func(c *Config) { c.Timing.Acquire = 16 }},
		{"timing.alpha", func(c *Config) { c.Timing.Alpha = 1 }},
		{"timing.tolerance", func(c *Config) { c.Timing.Tolerance = 0 }},
		{"apps.default", func(c *Config) { delete(c.Apps, "default") }},
		{"apps.voip.max_drop_fraction", func(c *Config) { v := c.Apps["voip"]; v.MaxDropFraction = 2; c.Apps["voip"] = v }},
		{"apps.voip.linger", func(c *Config) { v := c.Apps["voip"]; v.Linger = -1; c.Apps["voip"] = v }},
	} {
		c := base()
		c.Apps = DefaultApps() // mutations must not leak between cases
		tc.mutate(&c)
		err := c.Validate()
		if err == nil {
			t.Errorf("%s: invalid config accepted", tc.key)
			continue
		}
		if !strings.Contains(err.Error(), "suppress: "+tc.key) {
			t.Errorf("%s: error does not name the key: %v", tc.key, err)
		}
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct{ name, toml, want string }{
		{"unknown key", "[[uplink]]\nname=\"a\"\nup_bps=1\ndown_bps=1\nspeed=3\n", "s.toml:5: uplink.0.speed: unknown key"},
		{"bad level", "[[uplink]]\nname=\"a\"\nup_bps=1\ndown_bps=1\n[apps.x]\nmax_level=\"panic\"\n", "unknown level"},
		{"bad duration", "[[uplink]]\nname=\"a\"\nup_bps=1\ndown_bps=1\n[levels]\nhold_down=\"soon\"\n", "soon"},
		{"invalid value", "[[uplink]]\nname=\"a\"\nup_bps=0\ndown_bps=1\n", "s.toml:3: uplink.0.up_bps"},
		{"nan share", "[[uplink]]\nname=\"a\"\nup_bps=1\ndown_bps=1\n[levels]\nshape_share=nan\n", "s.toml:6: levels.shape_share"},
		{"inf threshold", "[[uplink]]\nname=\"a\"\nup_bps=1\ndown_bps=1\n[detect.jitter_ms.shape]\nraise=inf\n", "s.toml:5: detect.jitter_ms.shape"},
		{"tiny burst", "[[uplink]]\nname=\"a\"\nup_bps=1\ndown_bps=1\n[levels]\nburst_time=\"1ns\"\n", "s.toml:6: levels.burst_time"},
	} {
		_, err := ParseConfig("s.toml", []byte(tc.toml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want mention of %q", tc.name, err, tc.want)
		}
	}
}

// TestParseConfigReportsEveryError: one run names every refused key of the
// file, each at its line.
func TestParseConfigReportsEveryError(t *testing.T) {
	text := "[[uplink]]\nname=\"a\"\nup_bps=0\ndown_bps=1\n[levels]\nshape_share=2.0\nhold_down=\"soon\"\nbogus=1\n[apps.voip]\nlinger=\"-1s\"\n"
	_, err := ParseConfig("s.toml", []byte(text))
	want := []string{
		"s.toml:3: uplink.0.up_bps:",
		"s.toml:6: levels.shape_share:",
		"s.toml:7: levels.hold_down:",
		"s.toml:8: levels.bogus: unknown key",
		"s.toml:10: apps.voip.linger:",
	}
	if err == nil {
		t.Fatal("accepted")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(want) {
		t.Fatalf("%d errors, want %d:\n%v", len(lines), len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("error %d is %q, want it to start %q", i, lines[i], w)
		}
	}
}

func TestLevelText(t *testing.T) {
	for l := Off; l <= Cut; l++ {
		b, err := l.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back Level
		if err := back.UnmarshalText(b); err != nil || back != l {
			t.Errorf("%v round-trips to %v, %v", l, back, err)
		}
	}
	if _, err := Level(7).MarshalText(); err == nil {
		t.Error("invalid level marshalled")
	}
}

// FuzzParseConfig: any input either fails to parse or yields a configuration
// that validates and builds a controller; nothing panics.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(sampleTOML))
	f.Add([]byte("[[uplink]]\nname=\"a\"\nup_bps=1\ndown_bps=1\n"))
	f.Add([]byte("[apps.x]\nmax_level=\"cut\"\nlinger=\"-1s\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig("f.toml", data)
		if err != nil {
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("ParseConfig returned an invalid config: %v", err)
		}
		if _, err := NewController(cfg); err != nil {
			t.Fatalf("NewController rejected a parsed config: %v", err)
		}
	})
}
