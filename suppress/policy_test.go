package suppress

import (
	"slices"
	"testing"
	"time"
)

func TestReserveTime(t *testing.T) {
	for _, tc := range []struct {
		c          time.Duration
		bits, rate uint64
		want       time.Duration
	}{
		// 1,500 bytes at 10 Mbit/s: 12,000 bits / 1e7 = 1.2 ms.
		{500 * time.Microsecond, 1500 * 8, 10_000_000, 1700 * time.Microsecond},
		// At 1 Gbit/s: 12 µs.
		{0, 1500 * 8, 1_000_000_000, 12 * time.Microsecond},
		// At 1 Mbit/s: 12 ms; serialisation dominates on slow uplinks.
		{time.Millisecond, 1500 * 8, 1_000_000, 13 * time.Millisecond},
		// Rounds up: 1 bit at 3 bit/s = 333,333,333.3 ns.
		{0, 1, 3, 333_333_334},
		// Unknown rate: the margin alone.
		{time.Millisecond, 12000, 0, time.Millisecond},
	} {
		if got := ReserveTime(tc.c, tc.bits, tc.rate); got != tc.want {
			t.Errorf("ReserveTime(%v, %d, %d) = %v, want %v", tc.c, tc.bits, tc.rate, got, tc.want)
		}
	}
}

func TestCutoffWindow(t *testing.T) {
	p := Policy{Cutoff: true, TReserve: 1700 * time.Microsecond, Epsilon: time.Millisecond}
	start, end, ok := p.CutoffWindow(1_000_000_000)
	if !ok || start != 1_000_000_000-1_700_000 || end != 1_001_000_000 {
		t.Fatalf("window = [%d, %d] %v", start, end, ok)
	}
	if _, _, ok := (Policy{Level: Cut}).CutoffWindow(1); ok {
		t.Fatal("window from a policy without cutoff")
	}
}

func TestBuildPolicyLevels(t *testing.T) {
	lc := DefaultConfig().Levels
	apps := &appSet{}
	apps.add(DefaultApps()["shooter"])
	const rate = 100_000_000

	if p := buildPolicy(&lc, Off, rate, Up, apps, 0); p != (Policy{}) {
		t.Errorf("Off policy = %+v", p)
	}
	if p := buildPolicy(&lc, Watch, rate, Up, apps, 0); p != (Policy{Level: Watch, DSCPRewrite: true}) {
		t.Errorf("Watch policy = %+v", p)
	}
	p := buildPolicy(&lc, Shape, rate, Up, apps, 0)
	wantRate := uint64(lc.ShapeShare * rate / 8)
	if p.Level != Shape || !p.DSCPRewrite || !p.ECN || p.BulkRateBytesPerSec != wantRate || p.DropFraction != 0 || p.Cutoff {
		t.Errorf("Shape policy = %+v (want bulk %d B/s)", p, wantRate)
	}
	if want := uint64(float64(wantRate) * lc.BurstTime.Seconds()); p.Burst != want {
		t.Errorf("Shape burst = %d, want %d (%v at the bulk rate)", p.Burst, want, lc.BurstTime)
	}
	if want := uint64(float64(wantRate) * lc.DeficitTime.Seconds()); p.Deficit != want {
		t.Errorf("Shape deficit = %d, want %d (%v at the bulk rate)", p.Deficit, want, lc.DeficitTime)
	}
	// On a slow link both hold at least one full bulk packet.
	if slow := buildPolicy(&lc, Shape, 1_000_000, Up, apps, 0); slow.Burst != lc.MaxBulkPacket || slow.Deficit != lc.MaxBulkPacket {
		t.Errorf("1 Mbit/s: burst %d deficit %d, want %d each", slow.Burst, slow.Deficit, lc.MaxBulkPacket)
	}
	p = buildPolicy(&lc, Cut, rate, Up, apps, 0)
	if p.BulkRateBytesPerSec != uint64(0.4*rate/8) || p.DropFraction != lc.CutDropFraction || p.MaxDropRun != 3 {
		t.Errorf("Cut policy = %+v", p)
	}
	if !p.Cutoff || p.TReserve != ReserveTime(lc.ReserveC, 12000, rate) || p.Epsilon != lc.Epsilon {
		t.Errorf("Cut cutoff = %+v", p)
	}
	// A slow link: the burst never falls below one bulk packet.
	if p := buildPolicy(&lc, Shape, 100_000, Up, apps, 0); p.Burst != lc.MaxBulkPacket {
		t.Errorf("burst on a 100 kbit/s link = %d, want %d", p.Burst, lc.MaxBulkPacket)
	}
}

func TestAppLimitsApplied(t *testing.T) {
	lc := DefaultConfig().Levels
	all := DefaultApps()
	set := func(names ...string) *appSet {
		a := &appSet{}
		for _, n := range names {
			a.add(all[n])
		}
		return a
	}
	const rate = 100_000_000
	// The drop fraction grows with persistence up to the app's cap.
	const steps = 50
	if p := buildPolicy(&lc, Cut, rate, Up, set("voip"), steps); p.DropFraction != 0.2 {
		t.Errorf("voip drop fraction = %v, want capped at 0.2", p.DropFraction)
	}
	if p := buildPolicy(&lc, Cut, rate, Up, set("voip"), steps); p.Cutoff {
		t.Error("voip got cutoff windows")
	}
	p := buildPolicy(&lc, Cut, rate, Up, set("shooter"), steps)
	if p.DropFraction != 1 || p.MaxDropRun != 0 {
		t.Errorf("shooter: drop %v run %d, want 1 and no run limit", p.DropFraction, p.MaxDropRun)
	}
	// Several apps: the most permissive limit applies.
	if p := buildPolicy(&lc, Cut, rate, Up, set("voip", "shooter"), steps); p.DropFraction != 1 || !p.Cutoff {
		t.Errorf("voip+shooter = %+v", p)
	}
	// Cloud gaming: its reserve comes off the link before bulk gets a share.
	p = buildPolicy(&lc, Shape, rate, Down, set("cloud"), 0)
	if want := uint64(lc.ShapeShare * (rate - 30_000_000) / 8); p.BulkRateBytesPerSec != want {
		t.Errorf("cloud down bulk = %d, want %d", p.BulkRateBytesPerSec, want)
	}
	// …but never more than half of a slow link.
	p = buildPolicy(&lc, Shape, 20_000_000, Down, set("cloud"), 0)
	if want := uint64(lc.ShapeShare * 10_000_000 / 8); p.BulkRateBytesPerSec != want {
		t.Errorf("cloud on 20 Mbit/s bulk = %d, want %d", p.BulkRateBytesPerSec, want)
	}
}

func TestFlowRateThreshold(t *testing.T) {
	for _, tc := range []struct {
		rates []uint64
		cover float64
		want  uint64
	}{
		// One download dominates: hit it alone.
		{[]uint64{1_000, 9_000_000, 20_000}, 0.8, 9_000_000},
		// Two big flows carry 79.96%: 75% needs two, 80% needs the third.
		{[]uint64{5_000, 4_000_000, 4_000_000, 2_000_000}, 0.75, 4_000_000},
		{[]uint64{5_000, 4_000_000, 4_000_000, 2_000_000}, 0.8, 2_000_000},
		{[]uint64{100, 200, 300, 400}, 0.5, 300},
		{[]uint64{100, 200, 300, 400}, 0.75, 200},
		{[]uint64{100, 200, 300, 400}, 1, 0},
		{nil, 0.8, 0},
		{[]uint64{0, 0}, 0.8, 0},
	} {
		if got := FlowRateThreshold(slices.Clone(tc.rates), tc.cover); got != tc.want {
			t.Errorf("FlowRateThreshold(%v, %v) = %d, want %d", tc.rates, tc.cover, got, tc.want)
		}
	}
	rates := []uint64{3, 1, 2}
	if n := testing.AllocsPerRun(100, func() { FlowRateThreshold(rates, 0.5) }); n != 0 {
		t.Fatalf("allocates %v", n)
	}
}
