package router

import (
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/suppress"
)

const supBase = `
client_id = "gamer"
key = "0102030405060708090a0b0c0d0e0f100102030405060708090a0b0c0d0e0f10"
proxy = "198.18.40.2:7000"
[[uplink]]
name = "isp0"
device = "up0"
[[uplink]]
name = "isp1"
source = "198.18.11.2"
[[forward]]
listen = "127.0.0.1:0"
server = "198.18.41.2:9000"
`

func TestSuppressConfigDefaultsAndOverrides(t *testing.T) {
	c, err := ParseConfig("router.toml", supBase+`
[suppress]
enabled = true
lan_device = "lan0"
app = "shooter"
[[suppress.uplink]]
name = "isp0"
up_bps = 5_000_000
down_bps = 20_000_000
[[suppress.uplink]]
name = "isp1"
device = "up1"
up_bps = 1_000_000
down_bps = 8_000_000
enforce = "down"
[suppress.levels]
shape_share = 0.9
hold_down = "1s"
[suppress.detect.rtt_inflation_ms.cut]
raise = 60
lower = 30
[suppress.detect.owd_inflation_ms]
shape = { raise = 6, lower = 2 }
[suppress.apps.voip]
max_drop_fraction = 0.1
[suppress.apps.racing]
linger = "2s"
`)
	if err != nil {
		t.Fatal(err)
	}
	s := &c.Suppress
	def := suppress.DefaultConfig()
	r := s.resolved
	if r.Levels.ShapeShare != 0.9 || r.Levels.HoldDown != time.Second {
		t.Errorf("levels not applied: %+v", r.Levels)
	}
	// Keys not written keep the package defaults.
	if r.Levels.CutShare != def.Levels.CutShare || r.Levels.MinHold != def.Levels.MinHold || r.Detect.Utilisation != def.Detect.Utilisation {
		t.Errorf("defaults lost: %+v %+v", r.Levels, r.Detect.Utilisation)
	}
	if got := r.Detect.RTTInflation; got.Cut != (suppress.Threshold{Raise: 60, Lower: 30}) || got.Shape != def.Detect.RTTInflation.Shape {
		t.Errorf("rtt thresholds %+v", got)
	}
	if got := r.Detect.OWDInflation; got.Shape != (suppress.Threshold{Raise: 6, Lower: 2}) || got.Cut != def.Detect.OWDInflation.Cut {
		t.Errorf("owd thresholds %+v", got)
	}
	// A partial app entry keeps its built-in values; a new app starts from
	// "default".
	if v := r.Apps["voip"]; v.MaxDropFraction != 0.1 || v.Linger != def.Apps["voip"].Linger || v.Cutoff != def.Apps["voip"].Cutoff {
		t.Errorf("voip %+v", v)
	}
	if v := r.Apps["racing"]; v.Linger != 2*time.Second || v.MaxLevel != def.Apps["default"].MaxLevel {
		t.Errorf("racing %+v", v)
	}
	// isp0 takes its [[uplink]] device; isp1 enforces only downloads, so it
	// needs no egress device of its own.
	if len(s.devices) != 2 || s.devices[0] != "up0" || s.devices[1] != "" {
		t.Errorf("devices %q", s.devices)
	}
	if s.LCMark != DefaultSuppressMark || s.Interval.Duration != DefaultSuppressInterval || s.App != "shooter" {
		t.Errorf("defaults: mark %#x interval %v app %q", s.LCMark, s.Interval.Duration, s.App)
	}
}

func TestSuppressConfigErrorsPointAtTheKey(t *testing.T) {
	uplink := "[[suppress.uplink]]\nname = \"isp0\"\nup_bps = 5_000_000\ndown_bps = 20_000_000\n"
	for _, tc := range []struct{ name, text, want string }{
		{"unknown uplink", "[suppress]\nenabled = true\nlan_device = \"lan0\"\n[[suppress.uplink]]\nname = \"isp9\"\nup_bps = 1\ndown_bps = 1\n",
			`suppress.uplink.0.name: "isp9" is not the name of an [[uplink]]`},
		{"no rates", "[suppress]\nenabled = true\nlan_device = \"lan0\"\n[[suppress.uplink]]\nname = \"isp0\"\n",
			"suppress.uplink.0.up_bps: must be set"},
		{"no lan device", "[suppress]\nenabled = true\n" + uplink,
			"suppress.lan_device: downloads are enforced"},
		{"no egress device", "[suppress]\nenabled = true\nlan_device = \"lan0\"\n[[suppress.uplink]]\nname = \"isp1\"\nup_bps = 1\ndown_bps = 1\n",
			"suppress.uplink.0.device: uploads are enforced"},
		{"bad enforce", "[suppress]\nenabled = true\nlan_device = \"lan0\"\n" + uplink + "enforce = \"sideways\"\n",
			`suppress.uplink.0.enforce: "sideways" is not one of`},
		{"validated by package suppress", "[suppress]\nenabled = true\nlan_device = \"lan0\"\n" + uplink + "[suppress.levels]\nshape_share = 0.3\n",
			"suppress.levels.cut_share: 0.4 is above shape_share"},
		{"threshold", "[suppress]\nenabled = true\nlan_device = \"lan0\"\n" + uplink + "[suppress.detect.jitter_ms.shape]\nraise = 5\nlower = 9\n",
			"suppress.detect.jitter_ms.shape.lower: 9 must be below raise"},
		{"interval", "[suppress]\nenabled = true\ninterval = \"1ms\"\n" + uplink,
			"suppress.interval: must be between"},
		{"unknown key", "[suppress]\nenabled = true\nlan_dev = \"x\"\n", `router.toml:16: suppress.lan_dev: unknown key`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig("router.toml", supBase+tc.text)
			if err == nil {
				t.Fatalf("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "router.toml") {
				t.Fatalf("error %q, want it to contain %q", err, tc.want)
			}
		})
	}
	// Written keys get their line.
	_, err := ParseConfig("router.toml", supBase+"[suppress]\nenabled = true\nlan_device = \"lan0\"\n"+uplink+"[suppress.levels]\nmax_drop_run = -1\n")
	if err == nil || !strings.Contains(err.Error(), "router.toml:22: suppress.levels.max_drop_run") {
		t.Fatalf("error %v, want it at line 22", err)
	}
	_, err = ParseConfig("router.toml", supBase+"[suppress]\nenabled = true\nlan_device = \"lan0\"\n"+uplink+"[suppress.detect.owd_inflation_ms.cut]\nraise = 30\nlower = 35\n")
	if err == nil || !strings.Contains(err.Error(), "router.toml:23: suppress.detect.owd_inflation_ms.cut.lower: 35 must be below raise") {
		t.Fatalf("error %v, want it at line 23", err)
	}
	_, err = ParseConfig("router.toml", supBase+"[suppress]\nenabled = true\nlan_device = \"lan0\"\n"+uplink+"[suppress.detect.owd_inflation_ms]\nshape_raise = 3\n")
	if err == nil || !strings.Contains(err.Error(), "suppress.detect.owd_inflation_ms.shape_raise") {
		t.Fatalf("error %v, want the unknown key named", err)
	}
}

func TestSuppressConfigOffChecksNothing(t *testing.T) {
	if _, err := ParseConfig("router.toml", supBase+"[suppress]\nenabled = false\n"); err != nil {
		t.Fatal(err)
	}
}
