package suppress

import "net/netip"

// Enforcer is the kernel side of suppression as the Runtime sees it: the eBPF
// program suppress_egress on the egress of some devices, its maps, and the
// devices' byte counters. Package bpf provides the real one (bpf.Enforcer); a
// fake one lets the Runtime be tested without a kernel. Devices are named by
// ifindex, as the maps key them.
type Enforcer interface {
	// Ifindex resolves a device name.
	Ifindex(name string) (int, error)
	// DeviceBytes returns a device's transmitted and received byte counters.
	DeviceBytes(ifindex int) (tx, rx uint64, err error)

	// AttachEgress attaches the enforcing program to a device's egress.
	AttachEgress(ifindex int) (Detacher, error)
	// SetEgress writes a device's configuration (and refills its token
	// bucket); DeleteEgress removes it, so that every packet passes.
	SetEgress(ifindex int, c EgressConfig) error
	DeleteEgress(ifindex int) error
	// SetCutoff moves a device's cutoff window alone; tNext == 0 clears it.
	SetCutoff(ifindex int, tNext, tReserve, epsilon int64) error

	// Counters returns the program's per-action packet counts since load.
	Counters() (Counters, error)
	// BulkFlows calls fn for every bulk flow the program tracks until fn
	// returns false.
	BulkFlows(fn func(BulkFlow) bool) error
	// Promote makes a UDP flow LC (both directions pass untouched); Demote
	// undoes it. Demoting a flow that is not promoted is not an error.
	Promote(f Flow) error
	Demote(f Flow) error
}

// Detacher removes an attached program.
type Detacher interface{ Detach() error }

// Flow is a UDP flow by its (client, server) addresses.
type Flow struct{ Src, Dst netip.AddrPort }

// EgressConfig is what the enforcing program applies to bulk packets on one
// device; the field meanings are those of bpf.SuppressConfig.
type EgressConfig struct {
	Enabled           bool
	RateBytesPerSec   uint64 // token bucket over skb->len; 0: no cap
	Burst             uint64
	Deficit           uint64
	DropFraction      float64 // of eligible bulk packets, 0..1
	FlowRateThreshold uint64  // eligible from this flow rate, bytes/s; 0: all
	MaxDropRun        uint32
	ECN               bool
	DSCPRewrite       bool
	// Cutoff window [TNext-TReserve, TNext+Epsilon], CLOCK_MONOTONIC ns;
	// TNext == 0: none.
	TNext, TReserve, Epsilon int64
	LCMark, LCMask           uint32
}

// Counters are the enforcing program's per-action packet counts.
type Counters struct {
	Passed          uint64
	LCPassed        uint64
	DroppedRate     uint64
	DroppedFraction uint64
	DroppedCutoff   uint64
	ECNMarked       uint64
	DSCPRewritten   uint64
	Errors          uint64
}

// BulkFlow is what the enforcing program knows of one bulk flow's rate.
type BulkFlow struct {
	RateBPS     uint64 // bytes/s over the last complete window
	WindowBytes uint64 // bytes in the current window
	LastSeen    int64  // CLOCK_MONOTONIC ns
}
