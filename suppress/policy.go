package suppress

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// Policy is what enforcement does on one uplink in one direction. The router
// translates it into the eBPF programs' map values; the zero Policy (Level Off)
// leaves traffic alone.
type Policy struct {
	Level Level
	// BulkRateBytesPerSec and Burst (bytes) configure the token bucket that
	// caps bulk traffic (0: no cap).
	BulkRateBytesPerSec uint64
	Burst               uint64
	// Deficit (bytes) is how far ECN-capable bulk may take the bucket below
	// zero, marked CE, before it is dropped like the rest.
	Deficit uint64
	// DropFraction of bulk packets is dropped, largest flows first (the
	// router ranks flows with FlowRateThreshold and LevelConfig.DropCover), and
	// no flow loses more than MaxDropRun packets in a row (0: no limit).
	DropFraction float64
	MaxDropRun   int
	// ECN sets CE on ECN-capable bulk packets instead of (or before)
	// dropping them; DSCPRewrite marks bulk CS1.
	ECN, DSCPRewrite bool
	// Cutoff holds bulk packets in the window [T_next − TReserve, T_next +
	// Epsilon] around each expected LC packet (see CutoffWindow).
	Cutoff   bool
	TReserve time.Duration
	Epsilon  time.Duration
}

// CutoffWindow returns the window [start, end] (monotonic ns) in which bulk is
// held back for the LC packet due at tNext: starting T_reserve before it, so the
// largest bulk packet already on the wire has left by then, and ending ε after,
// to cover prediction error. ok is false when the policy has no cutoff.
func (p Policy) CutoffWindow(tNext int64) (start, end int64, ok bool) {
	if !p.Cutoff {
		return 0, 0, false
	}
	start, end = CutoffWindow(tNext, p.TReserve, p.Epsilon)
	return start, end, true
}

// CutoffWindow returns [tNext − reserve, tNext + epsilon].
func CutoffWindow(tNext int64, reserve, epsilon time.Duration) (start, end int64) {
	return tNext - int64(reserve), tNext + int64(epsilon)
}

// ReserveTime is T_reserve = c + packetBits / linkBitsPerSec: the time the link
// needs to finish the largest bulk packet, plus the margin c. A zero rate gives c
// alone (no rate known, nothing to add).
func ReserveTime(c time.Duration, packetBits, linkBitsPerSec uint64) time.Duration {
	if linkBitsPerSec == 0 {
		return c
	}
	ser := math.Ceil(float64(packetBits) * 1e9 / float64(linkBitsPerSec))
	return c + time.Duration(ser)
}

// appSet is the combined limits of the app types present.
type appSet struct {
	present     bool
	maxLevel    Level
	maxDrop     float64
	reserveUp   uint64
	reserveDown uint64
	cutoff      bool
}

func (a *appSet) add(l AppLimits) {
	if !a.present {
		*a = appSet{present: true}
	}
	a.maxLevel = max(a.maxLevel, l.MaxLevel)
	a.maxDrop = max(a.maxDrop, l.MaxDropFraction)
	a.reserveUp += l.ReserveUpBitsPerSec
	a.reserveDown += l.ReserveDownBitsPerSec
	a.cutoff = a.cutoff || l.Cutoff
}

func (a *appSet) reserve(d Direction) uint64 {
	if d == Up {
		return a.reserveUp
	}
	return a.reserveDown
}

// buildPolicy turns a level into a Policy for a link of rate bits/s. dropSteps
// counts the samples a Cut condition has persisted (it raises the drop
// fraction).
func buildPolicy(lc *LevelConfig, level Level, rate uint64, d Direction, apps *appSet, dropSteps int) Policy {
	if level == Off {
		return Policy{}
	}
	p := Policy{Level: level, DSCPRewrite: true}
	if level == Watch {
		return p
	}
	share := lc.ShapeShare
	if level == Cut {
		share = lc.CutShare
	}
	avail := rate - min(apps.reserve(d), rate/2)
	bulkBits := uint64(share * float64(avail))
	p.BulkRateBytesPerSec = bulkBits / 8
	// The bucket must hold at least one full bulk packet, or that packet could
	// never pass.
	p.Burst = max(uint64(float64(p.BulkRateBytesPerSec)*lc.BurstTime.Seconds()), lc.MaxBulkPacket)
	p.Deficit = max(uint64(float64(p.BulkRateBytesPerSec)*lc.DeficitTime.Seconds()), lc.MaxBulkPacket)
	p.ECN = lc.ECN
	if level == Shape {
		return p
	}
	p.DropFraction = min(lc.CutDropFraction+float64(dropSteps)*lc.CutDropStep, apps.maxDrop)
	p.MaxDropRun = lc.MaxDropRun
	if p.DropFraction >= 1 {
		// Everything is dropped; a run limit would let bulk through again.
		p.MaxDropRun = 0
	}
	if lc.Cutoff && apps.cutoff {
		p.Cutoff = true
		p.TReserve = ReserveTime(lc.ReserveC, lc.MaxBulkPacket*8, rate)
		p.Epsilon = lc.Epsilon
	}
	return p
}

// FlowRateThreshold picks which bulk flows fraction drops hit, biggest first:
// it returns the rate (bytes/s) of the smallest flow among the fewest largest
// flows that together carry at least cover (0–1) of the bulk bytes. Flows at or
// above the returned rate are eligible (the eBPF program's flow rate
// threshold); 0 means all flows. rates is sorted in place (descending), so the
// call does not allocate.
func FlowRateThreshold(rates []uint64, cover float64) uint64 {
	if len(rates) == 0 || cover >= 1 {
		return 0
	}
	slices.SortFunc(rates, func(a, b uint64) int { return cmp.Compare(b, a) })
	var total uint64
	for _, r := range rates {
		total += r
	}
	if total == 0 {
		return 0
	}
	need := cover * float64(total)
	var sum uint64
	for _, r := range rates {
		sum += r
		if float64(sum) >= need {
			return r
		}
	}
	return 0
}
