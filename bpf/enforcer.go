//go:build linux

package bpf

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"

	"github.com/raicnet/raic/suppress"
)

// Enforcer is a Datapath as suppress.Runtime drives it: suppress_egress on
// device egresses, its maps, and (through netlink) the devices' byte counters.
// It belongs to the network namespace it was made in.
type Enforcer struct {
	d  *Datapath
	nl *netlink.Handle
}

var _ suppress.Enforcer = (*Enforcer)(nil)

// NewEnforcer wraps d. Close releases the netlink handle; d stays open and
// remains its owner's.
func NewEnforcer(d *Datapath) (*Enforcer, error) {
	nl, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	return &Enforcer{d: d, nl: nl}, nil
}

// Close releases the netlink handle.
func (e *Enforcer) Close() error {
	e.nl.Close()
	return nil
}

// Ifindex resolves a device name.
func (e *Enforcer) Ifindex(name string) (int, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return 0, err
	}
	return ifi.Index, nil
}

// DeviceBytes returns a device's byte counters.
func (e *Enforcer) DeviceBytes(ifindex int) (tx, rx uint64, err error) {
	link, err := e.nl.LinkByIndex(ifindex)
	if err != nil {
		return 0, 0, err
	}
	st := link.Attrs().Statistics
	if st == nil {
		return 0, 0, fmt.Errorf("device %d has no statistics", ifindex)
	}
	return st.TxBytes, st.RxBytes, nil
}

// AttachEgress attaches suppress_egress to the device's egress.
func (e *Enforcer) AttachEgress(ifindex int) (suppress.Detacher, error) {
	return e.d.AttachSuppressor(ifindex)
}

// SetEgress writes the device's SuppressConfig.
func (e *Enforcer) SetEgress(ifindex int, c suppress.EgressConfig) error {
	return e.d.SetSuppressConfig(ifindex, SuppressConfig{
		Enabled:           c.Enabled,
		RateBytesPerSec:   c.RateBytesPerSec,
		Burst:             c.Burst,
		Deficit:           c.Deficit,
		DropFraction:      c.DropFraction,
		FlowRateThreshold: c.FlowRateThreshold,
		MaxDropRun:        c.MaxDropRun,
		ECN:               c.ECN,
		DSCPRewrite:       c.DSCPRewrite,
		TNext:             c.TNext,
		TReserve:          c.TReserve,
		Epsilon:           c.Epsilon,
		LCMark:            c.LCMark,
		LCMask:            c.LCMask,
	})
}

// DeleteEgress removes the device's SuppressConfig.
func (e *Enforcer) DeleteEgress(ifindex int) error { return e.d.DeleteSuppressConfig(ifindex) }

// SetCutoff moves the device's cutoff window.
func (e *Enforcer) SetCutoff(ifindex int, tNext, tReserve, epsilon int64) error {
	return e.d.SetCutoff(ifindex, tNext, tReserve, epsilon)
}

// Counters reads suppress_egress's counters.
func (e *Enforcer) Counters() (suppress.Counters, error) {
	c, err := e.d.SuppressCounters()
	return suppress.Counters{
		Passed:          c.Passed,
		LCPassed:        c.LCPassed,
		DroppedRate:     c.DroppedRate,
		DroppedFraction: c.DroppedFraction,
		DroppedCutoff:   c.DroppedCutoff,
		ECNMarked:       c.ECNMarked,
		DSCPRewritten:   c.DSCPRewritten,
		Errors:          c.Errors,
	}, err
}

// BulkFlows walks suppress_egress's bulk flows.
func (e *Enforcer) BulkFlows(fn func(suppress.BulkFlow) bool) error {
	return e.d.BulkFlows(func(_ FlowKey, f BulkFlow) bool {
		return fn(suppress.BulkFlow{RateBPS: f.RateBPS, WindowBytes: f.WindowBytes, LastSeen: f.LastSeen})
	})
}

// Promote makes a UDP flow LC.
func (e *Enforcer) Promote(f suppress.Flow) error {
	return e.d.Promote(FlowKey{Proto: ProtoUDP, Src: f.Src, Dst: f.Dst}, 0)
}

// Demote undoes Promote; an unknown flow is not an error.
func (e *Enforcer) Demote(f suppress.Flow) error {
	err := e.d.Demote(FlowKey{Proto: ProtoUDP, Src: f.Src, Dst: f.Dst})
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}
