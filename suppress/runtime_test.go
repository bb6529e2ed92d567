package suppress

import (
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/uplink"
)

// testRuntime is a runtime with nothing attached: enough for the packet hook
// and the timing hand-off.
func testRuntime() (*Runtime, *SessionTiming) {
	return &Runtime{timing: DefaultTimingConfig()}, &SessionTiming{}
}

func TestObserveDoesNotAllocate(t *testing.T) {
	r, rs := testRuntime()
	now := int64(time.Hour)
	const period = int64(time.Second / 60)
	for i := 0; i < 100; i++ { // lock, and create both Timings
		now += period
		r.Observe(rs, now, true)
		r.Observe(rs, now+int64(time.Millisecond), false)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		now += period
		r.Observe(rs, now, true)
		r.Observe(rs, now+int64(time.Millisecond), false)
	})
	if allocs != 0 {
		t.Fatalf("Observe allocates %v times per packet", allocs)
	}
}

// TestTimingHandOffPredictsTheNextPacket checks what the cutoff loop reads: after
// a few dozen packets at 60 pps with a little jitter, the next due time is
// within a millisecond of the true tick, it moves on once a window has passed,
// and it is withdrawn after a silence.
func TestTimingHandOffPredictsTheNextPacket(t *testing.T) {
	r, rs := testRuntime()
	d := &rs.dir[Up]
	const period = int64(time.Second / 60)
	start := int64(10 * time.Second)
	jitter := []int64{0, 150e3, -100e3, 50e3, -150e3, 100e3}
	n := 120
	for i := 0; i < n; i++ {
		r.Observe(rs, start+int64(i)*period+jitter[i%len(jitter)], true)
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
	if got := rs.dir[Down].nextDue(now, eps, maxGap); got != 0 {
		t.Fatal("prediction for a direction without packets")
	}
}

func TestPolicyTranslation(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Uplinks = []UplinkConfig{
		{Name: "isp0", UpBitsPerSec: 1_000_000, DownBitsPerSec: 8_000_000},
		{Name: "isp1", UpBitsPerSec: 1_000_000, DownBitsPerSec: 4_000_000},
	}
	const mark = 0x20000000
	s := &Runtime{cfg: RuntimeConfig{Config: cfg, LCMark: mark}}
	if got := s.egressConfig(Policy{}, 0); got.Enabled {
		t.Fatalf("Off enforces: %+v", got)
	}
	// A slow link's bucket still holds a full frame.
	p := Policy{Level: Shape, BulkRateBytesPerSec: 50_000, Burst: 1500, DSCPRewrite: true}
	got := s.egressConfig(p, 12345)
	if !got.Enabled || got.Burst < 1500+14 || got.RateBytesPerSec != 50_000 || got.LCMark != mark || got.LCMask != mark {
		t.Fatalf("shape: %+v", got)
	}
	if got.FlowRateThreshold != 0 {
		t.Fatal("a flow threshold without fraction drops")
	}
	// The LAN device carries both uplinks' downloads: a capped uplink and an
	// uncapped one add up to the cap plus the uncapped one's rate.
	l0 := &rtLink{name: "isp0"}
	l1 := &rtLink{name: "isp1"}
	capped := Policy{Level: Shape, BulkRateBytesPerSec: 700_000, Burst: 3500}
	watch := Policy{Level: Watch, DSCPRewrite: true}
	sum := s.combine(s.combine(Policy{}, capped, l0, Down), watch, l1, Down)
	if sum.Level != Shape || !sum.DSCPRewrite || sum.BulkRateBytesPerSec != 700_000+4_000_000/8 {
		t.Fatalf("combined %+v", sum)
	}
	if off := s.combine(Policy{}, Policy{}, l0, Down); off != (Policy{}) {
		t.Fatalf("two Off policies combine to %+v", off)
	}
}

// TestDownObservationsFromSeveralReaders: replies of one session are delivered
// by whichever uplink reader got them, concurrently; the hand-off must stay
// consistent (run with -race) while the cutoff loop reads it.
func TestDownObservationsFromSeveralReaders(t *testing.T) {
	r, rs := testRuntime()
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
				r.Observe(rs, int64(time.Second)+i*period, false)
			}
		}()
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		d := &rs.dir[Down]
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
		r.Observe(rs, int64(time.Second)+i*period, false)
	}
	close(stop)
	<-done
	if _, p := rs.dir[Down].grid(); p == 0 {
		t.Fatal("no grid after a second of packets")
	}
}

// sampleRig is a runtime with a controller and one uplink "isp0", but no
// enforcer and no device counters: enough for sampleLink.
func sampleRig(t *testing.T) (*Runtime, *rtLink) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Uplinks = []UplinkConfig{{Name: "isp0", UpBitsPerSec: 10_000_000, DownBitsPerSec: 50_000_000}}
	ctrl, err := NewController(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := &Runtime{cfg: RuntimeConfig{App: "shooter"}, ctrl: ctrl, log: slog.New(slog.DiscardHandler)}
	l := &rtLink{name: "isp0", health: uplink.NewHealth(uplink.HealthConfig{}), present: map[string]bool{}}
	for d := range 2 {
		l.level[d], l.changes[d], l.rate[d] = &metrics.Gauge{}, &metrics.Counter{}, &metrics.Gauge{}
	}
	return s, l
}

// runKeepalives answers a ping every 100 ms over 10 ms each way plus queue(i)
// on the way up, stamped with the proxy's clock (offset by an hour) when
// stamped, and samples the link after each pong.
func runKeepalives(s *Runtime, l *rtLink, start int64, n int, stamped bool, queue func(i int) int64) int64 {
	const ms = int64(time.Millisecond)
	h := l.health.(*uplink.Health)
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
	up, down := s.ctrl.Level("isp0", Up), s.ctrl.Level("isp0", Down)
	if up != Watch || down != Watch {
		t.Fatalf("calm: up %v down %v", up, down)
	}
	// The upload queue grows 5 ms per ping to 60 ms.
	runKeepalives(s, l, now, 50, true, func(i int) int64 { return int64(min(5*(i+1), 60)) * int64(time.Millisecond) })
	up, down = s.ctrl.Level("isp0", Up), s.ctrl.Level("isp0", Down)
	if up != Cut || down != Watch {
		t.Fatalf("upload queue: up %v down %v, want cut and watch", up, down)
	}
	if g := l.level[Up].Load(); g != int64(Cut) {
		t.Fatalf("up level gauge %d", g)
	}
	var why string
	for _, ev := range s.ctrl.Events(nil) {
		if ev.Dir == Up && ev.To == Cut {
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
	up, down := s.ctrl.Level("isp0", Up), s.ctrl.Level("isp0", Down)
	if up < Shape || down < Shape {
		t.Fatalf("rtt fallback: up %v down %v, want both raised", up, down)
	}
}

// fakeEnforcer records what the runtime asks of the kernel side.
type fakeEnforcer struct {
	mu       sync.Mutex
	ifaces   map[string]int
	tx, rx   map[int]uint64
	attached map[int]bool
	egress   map[int]EgressConfig
	writes   int
	cutoffs  map[int]int64
	promoted map[Flow]bool
	counters Counters
}

func newFakeEnforcer(devs ...string) *fakeEnforcer {
	f := &fakeEnforcer{ifaces: map[string]int{}, tx: map[int]uint64{}, rx: map[int]uint64{},
		attached: map[int]bool{}, egress: map[int]EgressConfig{}, cutoffs: map[int]int64{}, promoted: map[Flow]bool{}}
	for i, d := range devs {
		f.ifaces[d] = i + 2
	}
	return f
}

type fakeAttachment struct {
	f  *fakeEnforcer
	ix int
}

func (a fakeAttachment) Detach() error {
	a.f.mu.Lock()
	defer a.f.mu.Unlock()
	delete(a.f.attached, a.ix)
	return nil
}

func (f *fakeEnforcer) Ifindex(name string) (int, error) {
	if ix, ok := f.ifaces[name]; ok {
		return ix, nil
	}
	return 0, errors.New("no such device")
}

func (f *fakeEnforcer) DeviceBytes(ix int) (uint64, uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tx[ix], f.rx[ix], nil
}

func (f *fakeEnforcer) AttachEgress(ix int) (Detacher, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attached[ix] = true
	return fakeAttachment{f, ix}, nil
}

func (f *fakeEnforcer) SetEgress(ix int, c EgressConfig) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.egress[ix] = c
	f.writes++
	return nil
}

func (f *fakeEnforcer) DeleteEgress(ix int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.egress, ix)
	return nil
}

func (f *fakeEnforcer) SetCutoff(ix int, tNext, _, _ int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cutoffs[ix] = tNext
	return nil
}

func (f *fakeEnforcer) Counters() (Counters, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counters, nil
}

func (f *fakeEnforcer) BulkFlows(func(BulkFlow) bool) error { return nil }

func (f *fakeEnforcer) Promote(k Flow) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.promoted[k] = true
	return nil
}

func (f *fakeEnforcer) Demote(k Flow) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.promoted, k)
	return nil
}

// TestRuntimeDrivesTheEnforcer runs the control loop's steps against a fake
// enforcer: a game session makes the app present (Watch: DSCP rewrite on both
// egresses, its flow promoted), an upload near the line rate shapes the
// uplink's egress only, the session's end demotes its flow, and Close detaches
// and clears every device.
func TestRuntimeDrivesTheEnforcer(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Uplinks = []UplinkConfig{{Name: "isp0", UpBitsPerSec: 8_000_000, DownBitsPerSec: 40_000_000}}
	fe := newFakeEnforcer("lan0", "up0")
	lan, wan := fe.ifaces["lan0"], fe.ifaces["up0"]
	st := &SessionTiming{}
	flow := Flow{Src: netip.MustParseAddrPort("198.18.0.2:5000"), Dst: netip.MustParseAddrPort("198.18.41.2:9000")}
	live := true
	reg := metrics.NewRegistry()
	rt, err := NewRuntime(RuntimeConfig{
		Config: cfg, App: "default", LCMark: 0x20000000, Interval: 100 * time.Millisecond,
		LANDevice: "lan0", PromoteFlows: true, Metrics: reg,
		Links: []LinkSetup{{Egress: "up0", StatsDevice: "up0", Health: uplink.NewHealth(uplink.HealthConfig{})}},
		Sessions: func(yield func(*SessionTiming, netip.AddrPort, netip.AddrPort) bool) {
			if live {
				yield(st, flow.Src, flow.Dst)
			}
		},
	}, fe)
	if err != nil {
		t.Fatal(err)
	}
	if !fe.attached[lan] || !fe.attached[wan] {
		t.Fatalf("attached %v, want both lan0 and up0", fe.attached)
	}

	const ms = int64(time.Millisecond)
	now := int64(time.Hour)
	prev := now - 100*ms
	step := func(upBytesPerSec uint64) {
		fe.mu.Lock()
		fe.tx[wan] += upBytesPerSec / 10
		fe.mu.Unlock()
		rt.Observe(st, now-10*ms, true)
		prev = rt.sample(now, prev)
		now += 100 * ms
	}
	step(0)
	step(0)
	if !fe.promoted[flow] {
		t.Fatal("the session's flow was not promoted")
	}
	for _, ix := range []int{lan, wan} {
		c := fe.egress[ix]
		if !c.Enabled || !c.DSCPRewrite || c.RateBytesPerSec != 0 || c.LCMark != 0x20000000 {
			t.Fatalf("device %d at Watch: %+v", ix, c)
		}
	}
	writes := fe.writes
	step(0)
	if fe.writes != writes {
		t.Fatal("an unchanged policy was written again")
	}

	// 95% of the upload rate: the uplink's egress is shaped, the LAN's is not.
	for i := 0; i < 10; i++ {
		step(950_000)
	}
	if rt.ctrl.Level("isp0", Up) < Shape {
		t.Fatalf("upload level %v at 95%% utilisation", rt.ctrl.Level("isp0", Up))
	}
	if c := fe.egress[wan]; c.RateBytesPerSec == 0 || c.Burst < cfg.Levels.MaxBulkPacket+L2Overhead {
		t.Fatalf("up0 not shaped: %+v", c)
	}
	if c := fe.egress[lan]; c.RateBytesPerSec != 0 {
		t.Fatalf("lan0 shaped by an upload: %+v", c)
	}
	if v := reg.Snapshot()[`router_suppress_level{uplink="isp0",dir="up"}`]; v < float64(Shape) {
		t.Fatalf("level metric %v", v)
	}

	live = false
	step(0)
	if fe.promoted[flow] {
		t.Fatal("the ended session's flow is still promoted")
	}
	rt.Close()
	if len(fe.attached) != 0 || len(fe.egress) != 0 {
		t.Fatalf("after Close: attached %v, configs %v", fe.attached, fe.egress)
	}
}

// TestRuntimeRefusesADeviceForBothDirections: one egress cannot enforce
// uploads and downloads; what was attached before the error is detached.
func TestRuntimeRefusesADeviceForBothDirections(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Uplinks = []UplinkConfig{{Name: "isp0", UpBitsPerSec: 8_000_000, DownBitsPerSec: 40_000_000}}
	fe := newFakeEnforcer("eth0")
	_, err := NewRuntime(RuntimeConfig{Config: cfg, Interval: time.Second, LANDevice: "eth0",
		Links: []LinkSetup{{Egress: "eth0", Health: uplink.NewHealth(uplink.HealthConfig{})}}}, fe)
	if err == nil || !strings.Contains(err.Error(), "would enforce both uploads and downloads") {
		t.Fatalf("error %v", err)
	}
	if len(fe.attached) != 0 {
		t.Fatalf("left attached: %v", fe.attached)
	}
}
