package router

import (
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/uplink"
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

// sampleRig is a suppression with a controller and one uplink "isp0", but no
// datapath and no device counters: enough for sampleLink.
func sampleRig(t *testing.T) (*suppression, *supLink) {
	t.Helper()
	cfg := suppress.DefaultConfig()
	cfg.Uplinks = []suppress.UplinkConfig{{Name: "isp0", UpBitsPerSec: 10_000_000, DownBitsPerSec: 50_000_000}}
	ctrl, err := suppress.NewController(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := &Router{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	s := &suppression{r: r, cfg: &SuppressConfig{App: "shooter"}, ctrl: ctrl}
	l := &supLink{name: "isp0", uplink: &uplinkConn{health: uplink.NewHealth(uplink.HealthConfig{})}, present: map[string]bool{}}
	for d := range 2 {
		l.level[d], l.changes[d], l.rate[d] = &metrics.Gauge{}, &metrics.Counter{}, &metrics.Gauge{}
	}
	return s, l
}

// runKeepalives answers a ping every 100 ms over 10 ms each way plus queue(i)
// on the way up, stamped with the proxy's clock (offset by an hour) when
// stamped, and samples the link after each pong.
func runKeepalives(s *suppression, l *supLink, start int64, n int, stamped bool, queue func(i int) int64) int64 {
	const ms = int64(time.Millisecond)
	h := l.uplink.health
	now := start
	for i := 0; i < n; i++ {
		seq := uint32(now / (100 * ms))
		h.OnPingSent(seq, now)
		atProxy := now + 10*ms + queue(i)
		peer := int64(0)
		if stamped {
			peer = atProxy + int64(time.Hour)
		}
		h.OnPong(seq, now, peer, atProxy+10*ms)
		s.sampleLink(l, now+50*ms, true)
		now += 100 * ms
	}
	return now
}

// TestSampleLinkPerDirection: with pongs stamped by the proxy, an upload queue
// raises the upload level only; the download level stays at Watch.
func TestSampleLinkPerDirection(t *testing.T) {
	s, l := sampleRig(t)
	start := int64(time.Hour)
	now := runKeepalives(s, l, start, 50, true, func(int) int64 { return 0 })
	up, down := s.ctrl.Level("isp0", suppress.Up), s.ctrl.Level("isp0", suppress.Down)
	if up != suppress.Watch || down != suppress.Watch {
		t.Fatalf("calm: up %v down %v", up, down)
	}
	// The upload queue grows 5 ms per ping to 60 ms.
	runKeepalives(s, l, now, 50, true, func(i int) int64 { return int64(min(5*(i+1), 60)) * int64(time.Millisecond) })
	up, down = s.ctrl.Level("isp0", suppress.Up), s.ctrl.Level("isp0", suppress.Down)
	if up != suppress.Cut || down != suppress.Watch {
		t.Fatalf("upload queue: up %v down %v, want cut and watch", up, down)
	}
	if g := l.level[suppress.Up].Load(); g != int64(suppress.Cut) {
		t.Fatalf("up level gauge %d", g)
	}
	var why string
	for _, ev := range s.ctrl.Events(nil) {
		if ev.Dir == suppress.Up && ev.To == suppress.Cut {
			why = ev.Reason
		}
	}
	if !strings.Contains(why, "up queueing delay") || strings.Contains(why, "rtt") {
		t.Fatalf("cut reason %q, want the up queueing delay", why)
	}
}

// TestSampleLinkRTTFallback: a proxy that does not stamp its pongs leaves only
// the RTT, which speaks for both directions.
func TestSampleLinkRTTFallback(t *testing.T) {
	s, l := sampleRig(t)
	now := runKeepalives(s, l, int64(time.Hour), 50, false, func(int) int64 { return 0 })
	runKeepalives(s, l, now, 50, false, func(i int) int64 { return 60 * int64(time.Millisecond) })
	up, down := s.ctrl.Level("isp0", suppress.Up), s.ctrl.Level("isp0", suppress.Down)
	if up < suppress.Shape || down < suppress.Shape {
		t.Fatalf("rtt fallback: up %v down %v, want both raised", up, down)
	}
}
