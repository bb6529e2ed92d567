//go:build linux

package bpf

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/cilium/ebpf"
)

// Mirrors SUP_F_* in raic.c.
const (
	supEnabled  uint32 = 0x1
	supECN      uint32 = 0x2
	supDSCPCS1  uint32 = 0x4
	fractionOne        = 65536
)

// rateWindow mirrors RATE_WINDOW_NS in raic.c.
const rateWindow = 100 * time.Millisecond

// SuppressConfig drives suppress_egress on one interface (a WAN uplink for
// uploads, the LAN side for downloads).
//
// Actions apply to bulk packets only, in this order: cutoff window, fraction
// drop, token bucket, then DSCP rewrite on whatever passes. LC packets (mark,
// promoted flow in either direction, LC port, or a flow the classifier found
// LC) always pass untouched.
type SuppressConfig struct {
	// Enabled turns enforcement on; when false every packet passes.
	Enabled bool

	// RateBytesPerSec caps bulk bytes (skb->len, including the L2 header) per
	// second with a token bucket Burst bytes deep; 0 disables the cap.
	// Setting the config refills the bucket.
	RateBytesPerSec uint64
	Burst           uint64
	// Deficit is how far below zero (bytes) ECN-capable packets, which then
	// carry CE, and ACK-sized TCP packets, which are never dropped, may take
	// the bucket; other bulk passes only while the bucket is not in deficit.
	// 0 means Burst.
	Deficit uint64

	// DropFraction of eligible bulk packets is dropped (0..1, kept in 1/65536
	// units). A flow is eligible when its rate over the last 100 ms window, or
	// its bytes in the current one, reach FlowRateThreshold bytes/s; 0 makes
	// every bulk flow eligible. Userspace hits the biggest flows first by
	// ranking BulkFlows and setting the threshold to the rate of the smallest
	// flow it wants to hit.
	DropFraction      float64
	FlowRateThreshold uint64

	// MaxDropRun bounds consecutive fraction drops from one flow, so that a
	// TCP sender sees isolated losses rather than a timeout; 0 means no bound.
	// Cutoff and rate drops do not count towards it.
	MaxDropRun uint32

	// ECN sets CE on ECT(0)/ECT(1) packets instead of dropping them: for
	// fraction drops always, for the rate cap while the deficit stays within
	// Deficit (with a probability that grows with the deficit); the cutoff
	// window always drops.
	ECN bool

	// DSCPRewrite sets DSCP CS1 (lower effort) on bulk packets that pass.
	DSCPRewrite bool

	// Cutoff window [TNext-TReserve, TNext+Epsilon] in CLOCK_MONOTONIC ns
	// (package mono, bpf_ktime_get_ns): bulk packets inside it are dropped.
	// TNext == 0 disables it. SetCutoff moves the window alone, cheaply.
	TNext    int64
	TReserve int64
	Epsilon  int64

	// LCMark identifies LC packets by skb->mark (bits LCMask, 0 = all);
	// 0 disables the mark test.
	LCMark uint32
	LCMask uint32
}

func (c SuppressConfig) raw() (raicSupConfig, error) {
	if math.IsNaN(c.DropFraction) || c.DropFraction < 0 || c.DropFraction > 1 {
		return raicSupConfig{}, fmt.Errorf("drop fraction %v outside [0, 1]", c.DropFraction)
	}
	if c.RateBytesPerSec > 0 && c.Burst == 0 {
		return raicSupConfig{}, errors.New("rate cap needs a non-zero burst")
	}
	if c.Deficit == 0 {
		c.Deficit = c.Burst
	}
	r := raicSupConfig{
		RateBps:           c.RateBytesPerSec,
		Burst:             c.Burst,
		Deficit:           c.Deficit,
		FlowRateThreshold: c.FlowRateThreshold,
		DropFraction:      uint32(math.Round(c.DropFraction * fractionOne)),
		MaxDropRun:        c.MaxDropRun,
		LcMark:            c.LCMark,
		LcMask:            maskOrAll(c.LCMask),
	}
	if c.Enabled {
		r.Flags |= supEnabled
	}
	if c.ECN {
		r.Flags |= supECN
	}
	if c.DSCPRewrite {
		r.Flags |= supDSCPCS1
	}
	return r, nil
}

// SetSuppressConfig writes the configuration for interface ifindex and resets
// its token bucket to a full burst.
func (d *Datapath) SetSuppressConfig(ifindex int, c SuppressConfig) error {
	r, err := c.raw()
	if err != nil {
		return fmt.Errorf("suppress config for ifindex %d: %w", ifindex, err)
	}
	key := uint32(ifindex)
	// The bucket is dropped first so the kernel recreates it from the new
	// burst; a packet in between is judged by the old config and bucket.
	if err := d.objs.SupBucket.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("reset bucket for ifindex %d: %w", ifindex, err)
	}
	if err := d.objs.SupConfig.Put(key, &r); err != nil {
		return fmt.Errorf("set suppress config for ifindex %d: %w", ifindex, err)
	}
	return d.SetCutoff(ifindex, c.TNext, c.TReserve, c.Epsilon)
}

// DeleteSuppressConfig stops enforcement on interface ifindex.
func (d *Datapath) DeleteSuppressConfig(ifindex int) error {
	key := uint32(ifindex)
	var errs []error
	for _, m := range []*ebpf.Map{d.objs.SupConfig, d.objs.SupCutoff, d.objs.SupBucket} {
		if err := m.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete suppress config for ifindex %d: %w", ifindex, err)
	}
	return nil
}

// SetCutoff moves the cutoff window of interface ifindex to
// [tNext-tReserve, tNext+epsilon] (CLOCK_MONOTONIC ns); tNext == 0 removes
// it. It costs one map update, so it can follow every T_next.
func (d *Datapath) SetCutoff(ifindex int, tNext, tReserve, epsilon int64) error {
	key := uint32(ifindex)
	if tNext == 0 {
		if err := d.objs.SupCutoff.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("clear cutoff for ifindex %d: %w", ifindex, err)
		}
		return nil
	}
	if tReserve < 0 || epsilon < 0 || tNext-tReserve < 0 {
		return fmt.Errorf("cutoff for ifindex %d: bad window %d-%d+%d", ifindex, tNext, tReserve, epsilon)
	}
	v := raicSupCutoff{StartNs: uint64(tNext - tReserve), EndNs: uint64(tNext + epsilon)}
	if err := d.objs.SupCutoff.Put(key, &v); err != nil {
		return fmt.Errorf("set cutoff for ifindex %d: %w", ifindex, err)
	}
	return nil
}

// SuppressCounters are suppress_egress's per-action packet counts, summed
// over CPUs. Every packet counts in exactly one of Passed, LCPassed or a
// Dropped* counter; ECNMarked and DSCPRewritten count modified packets among
// Passed, NotIP and Unconfigured count unexamined ones among Passed.
type SuppressCounters struct {
	Passed          uint64
	LCPassed        uint64
	DroppedRate     uint64
	DroppedFraction uint64
	DroppedCutoff   uint64
	ECNMarked       uint64
	DSCPRewritten   uint64
	NotIP           uint64
	Unconfigured    uint64
	Errors          uint64 // flow map or packet rewrite failures
}

// SuppressCounters reads the suppression counters.
func (d *Datapath) SuppressCounters() (SuppressCounters, error) {
	var c SuppressCounters
	dst := []*uint64{
		&c.Passed, &c.LCPassed, &c.DroppedRate, &c.DroppedFraction, &c.DroppedCutoff,
		&c.ECNMarked, &c.DSCPRewritten, &c.NotIP, &c.Unconfigured, &c.Errors,
	}
	return c, sumPerCPU(d.objs.SupCounters, dst)
}

// BulkFlow is what suppress_egress knows about one bulk flow.
type BulkFlow struct {
	Packets     uint64
	Bytes       uint64
	RateBPS     uint64 // bytes/s over the last complete 100 ms window
	WindowBytes uint64 // bytes in the current window
	LastSeen    int64  // CLOCK_MONOTONIC ns
	Drops       uint32 // all drops of this flow (cutoff, fraction, rate)
	DropRun     uint32 // current run of consecutive fraction drops
}

// BulkFlows calls fn for every bulk flow suppress_egress tracks until fn
// returns false; userspace ranks them to pick FlowRateThreshold.
func (d *Datapath) BulkFlows(fn func(FlowKey, BulkFlow) bool) error {
	var (
		k raicFlowKey
		v raicSupFlow
	)
	it := d.objs.SupFlows.Iterate()
	for it.Next(&k, &v) {
		b := BulkFlow{
			Packets:     v.Packets,
			Bytes:       v.Bytes,
			RateBPS:     v.RateBps,
			WindowBytes: v.WinBytes,
			LastSeen:    int64(v.LastNs),
			Drops:       v.Drops,
			DropRun:     v.DropRun,
		}
		if !fn(flowKeyFromRaw(&k), b) {
			return nil
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate bulk flows: %w", err)
	}
	return nil
}

// FlowRateThresholdFor returns the FlowRateThreshold that makes the n
// biggest bulk flows seen at or after activeSince (CLOCK_MONOTONIC ns)
// eligible for fraction drops: the rate of the n-th biggest one. Flows still
// in their first window count with their bytes so far. With n flows or fewer
// it returns 0 (every flow eligible). Ties at the threshold make more than n
// flows eligible.
func (d *Datapath) FlowRateThresholdFor(n int, activeSince int64) (uint64, error) {
	if n <= 0 {
		return 0, fmt.Errorf("flow rate threshold for %d flows", n)
	}
	var rates []uint64
	err := d.BulkFlows(func(_ FlowKey, f BulkFlow) bool {
		if f.LastSeen >= activeSince {
			rates = append(rates, max(f.RateBPS, f.WindowBytes*uint64(time.Second/rateWindow)))
		}
		return true
	})
	if err != nil {
		return 0, err
	}
	if len(rates) <= n {
		return 0, nil
	}
	slices.Sort(rates)
	return rates[len(rates)-n], nil
}
