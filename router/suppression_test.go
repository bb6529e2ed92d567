package router

import (
	"strings"
	"sync"
	"sync/atomic"
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
		{"unknown key", "[suppress]\nenabled = true\nlan_dev = \"x\"\n", `unknown key "suppress.lan_dev"`},
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
}

func TestSuppressConfigOffChecksNothing(t *testing.T) {
	if _, err := ParseConfig("router.toml", supBase+"[suppress]\nenabled = false\n"); err != nil {
		t.Fatal(err)
	}
}

// testSuppression is a suppression with nothing loaded: enough for the packet
// hook and the timing hand-off.
func testSuppression() (*Router, *routerSession) {
	r := &Router{sup: &suppression{timing: suppress.DefaultTimingConfig()}}
	rs := &routerSession{r: r, side: &forward{}}
	return r, rs
}

func TestObserveGamePacketDoesNotAllocate(t *testing.T) {
	r, rs := testSuppression()
	now := int64(time.Hour)
	const period = int64(time.Second / 60)
	for i := 0; i < 100; i++ { // lock, and create both Timings
		now += period
		r.observeGamePacket(rs, now, true)
		r.observeGamePacket(rs, now+int64(time.Millisecond), false)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		now += period
		r.observeGamePacket(rs, now, true)
		r.observeGamePacket(rs, now+int64(time.Millisecond), false)
	})
	if allocs != 0 {
		t.Fatalf("observeGamePacket allocates %v times per packet", allocs)
	}
	// Without suppression the hook does nothing at all.
	r.sup = nil
	if a := testing.AllocsPerRun(100, func() { r.observeGamePacket(rs, now, true) }); a != 0 {
		t.Fatalf("%v allocations with suppression off", a)
	}
}

// TestTimingHandOffPredictsTheNextPacket checks what the cutoff loop reads: after
// a few dozen packets at 60 pps with a little jitter, the next due time is
// within a millisecond of the true tick, it moves on once a window has passed,
// and it is withdrawn after a silence.
func TestTimingHandOffPredictsTheNextPacket(t *testing.T) {
	r, rs := testSuppression()
	d := &rs.sup.dir[suppress.Up]
	const period = int64(time.Second / 60)
	start := int64(10 * time.Second)
	jitter := []int64{0, 150e3, -100e3, 50e3, -150e3, 100e3}
	n := 120
	for i := 0; i < n; i++ {
		r.observeGamePacket(rs, start+int64(i)*period+jitter[i%len(jitter)], true)
	}
	if _, p := d.grid(); p == 0 {
		t.Fatal("no grid published after 120 packets at 60 pps")
	}
	last := start + int64(n-1)*period
	now := last + period/4
	eps := int64(time.Millisecond)
	maxGap := int64(time.Second)
	want := last + period
	got := d.nextDue(now, eps, maxGap)
	if diff := time.Duration(got - want); diff < -time.Millisecond || diff > time.Millisecond {
		t.Fatalf("next due %v off the true tick", diff)
	}
	// Once that window has ended, the following tick is due.
	got = d.nextDue(want+2*eps, eps, maxGap)
	if diff := time.Duration(got - (want + period)); diff < -time.Millisecond || diff > time.Millisecond {
		t.Fatalf("following tick %v off", diff)
	}
	if got := d.nextDue(last+2*maxGap, eps, maxGap); got != 0 {
		t.Fatalf("prediction after a %v silence", time.Duration(2*maxGap))
	}
	// Nothing was seen the other way.
	if got := rs.sup.dir[suppress.Down].nextDue(now, eps, maxGap); got != 0 {
		t.Fatal("prediction for a direction without packets")
	}
}

func TestPolicyTranslation(t *testing.T) {
	c, err := ParseConfig("router.toml", supBase+`
[suppress]
enabled = true
lan_device = "lan0"
[[suppress.uplink]]
name = "isp0"
up_bps = 1_000_000
down_bps = 8_000_000
[[suppress.uplink]]
name = "isp1"
device = "up1"
up_bps = 1_000_000
down_bps = 4_000_000
`)
	if err != nil {
		t.Fatal(err)
	}
	s := &suppression{cfg: &c.Suppress}
	if got := s.bpfConfig(suppress.Policy{}, 0); got.Enabled {
		t.Fatalf("Off enforces: %+v", got)
	}
	// A slow link's bucket still holds a full frame.
	p := suppress.Policy{Level: suppress.Shape, BulkRateBytesPerSec: 50_000, Burst: 1500, DSCPRewrite: true}
	got := s.bpfConfig(p, 12345)
	if !got.Enabled || got.Burst < 1500+14 || got.RateBytesPerSec != 50_000 || got.LCMark != DefaultSuppressMark || got.LCMask != DefaultSuppressMark {
		t.Fatalf("shape: %+v", got)
	}
	if got.FlowRateThreshold != 0 {
		t.Fatal("a flow threshold without fraction drops")
	}
	// The LAN device carries both uplinks' downloads: a capped uplink and an
	// uncapped one add up to the cap plus the uncapped one's rate.
	l0 := &supLink{name: "isp0"}
	l1 := &supLink{name: "isp1"}
	capped := suppress.Policy{Level: suppress.Shape, BulkRateBytesPerSec: 700_000, Burst: 3500}
	watch := suppress.Policy{Level: suppress.Watch, DSCPRewrite: true}
	sum := combine(combine(suppress.Policy{}, capped, l0, suppress.Down, s.cfg), watch, l1, suppress.Down, s.cfg)
	if sum.Level != suppress.Shape || !sum.DSCPRewrite || sum.BulkRateBytesPerSec != 700_000+4_000_000/8 {
		t.Fatalf("combined %+v", sum)
	}
	if off := combine(suppress.Policy{}, suppress.Policy{}, l0, suppress.Down, s.cfg); off != (suppress.Policy{}) {
		t.Fatalf("two Off policies combine to %+v", off)
	}
}

// TestDownObservationsFromSeveralReaders: replies of one session are delivered
// by whichever uplink reader got them, concurrently; the hand-off must stay
// consistent (run with -race) while the cutoff loop reads it.
func TestDownObservationsFromSeveralReaders(t *testing.T) {
	r, rs := testSuppression()
	const period = int64(time.Second / 60)
	// Each reply is delivered once, by whichever reader got it; a reader may
	// come late with an older one, which the Timing ignores.
	var wg sync.WaitGroup
	var seq atomic.Int64
	for g := 0; g < 3; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := seq.Add(1); i <= 2000; i = seq.Add(1) {
				r.observeGamePacket(rs, int64(time.Second)+i*period, false)
			}
		}()
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		d := &rs.sup.dir[suppress.Down]
		for {
			select {
			case <-stop:
				return
			default:
			}
			if a, p := d.grid(); p != 0 && (p < period-int64(time.Millisecond) || p > period+int64(time.Millisecond) || a <= 0) {
				t.Errorf("torn or wrong grid: anchor %d period %v", a, time.Duration(p))
				return
			}
		}
	}()
	wg.Wait()
	// Readers that find the Timing busy skip their packet; racing through
	// 2000 packets in microseconds, they may skip so many in a row that the
	// Timing sees a silence and starts over. At 60 pps that cannot happen, so
	// what must hold is that the state is still usable: a second of ordinary
	// packets locks it again.
	for i := int64(2001); i <= 2060; i++ {
		r.observeGamePacket(rs, int64(time.Second)+i*period, false)
	}
	close(stop)
	<-done
	if _, p := rs.sup.dir[suppress.Down].grid(); p == 0 {
		t.Fatal("no grid after a second of packets")
	}
}
