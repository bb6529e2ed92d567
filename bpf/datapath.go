//go:build linux

package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
)

// Flow flags reported in FlowStats.Flags; they mirror FLOW_F_* in raic.c.
const (
	FlowLCPort     uint32 = 0x1 // a port table entry with the LC flag matched
	FlowLCDSCP     uint32 = 0x2 // DSCP was EF, CS3, CS4 or CS5
	FlowLCPromoted uint32 = 0x4 // userspace promoted the flow
	FlowMarked     uint32 = 0x8 // skb->mark was set on the flow's packets
)

// FlowLC is the set of flags that make a flow latency-critical.
const FlowLC = FlowLCPort | FlowLCDSCP | FlowLCPromoted

// Mirror PORT_F_* in raic.c.
const (
	portFlagLC      uint32 = 0x1
	portFlagPresent uint32 = 0x2
)

// Protocol numbers accepted by the port table.
const (
	ProtoTCP uint8 = 6
	ProtoUDP uint8 = 17
)

// ErrNotFound is returned when a flow or port is not in its map.
var ErrNotFound = errors.New("bpf: not found")

// Datapath is the loaded set of programs and maps. Its methods are safe for
// concurrent use.
type Datapath struct {
	objs raicObjects

	mu       sync.Mutex
	attached map[*Attachment]struct{}
	closed   bool
}

// Load loads the programs and maps into the kernel. It needs CAP_BPF and
// CAP_NET_ADMIN (or root).
func Load() (*Datapath, error) {
	d := &Datapath{attached: make(map[*Attachment]struct{})}
	if err := loadRaicObjects(&d.objs, nil); err != nil {
		// A *ebpf.VerifierError in the chain prints the whole verifier
		// log with %+v.
		return nil, fmt.Errorf("load bpf objects: %w", err)
	}
	return d, nil
}

// Close detaches every attachment made through d and releases the programs
// and maps.
func (d *Datapath) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	list := make([]*Attachment, 0, len(d.attached))
	for a := range d.attached {
		list = append(list, a)
	}
	d.mu.Unlock()

	var errs []error
	for _, a := range list {
		errs = append(errs, a.Detach())
	}
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}

// ClassifierConfig is the classifier's global configuration.
type ClassifierConfig struct {
	// LCMark is written into skb->mark of LC packets; 0 disables marking.
	LCMark uint32
	// LCMask selects the bits of skb->mark that LCMark replaces; 0 means all.
	LCMask uint32
}

// SetClassifierConfig sets the mark the classifier puts on LC packets. Set it
// before attaching: the kernel may read the old mark with the new mask while
// the value is being replaced.
func (d *Datapath) SetClassifierConfig(c ClassifierConfig) error {
	v := raicClsConfig{LcMark: c.LCMark, LcMask: maskOrAll(c.LCMask)}
	if err := d.objs.ClsConfig.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("set classifier config: %w", err)
	}
	return nil
}

func maskOrAll(m uint32) uint32 {
	if m == 0 {
		return ^uint32(0)
	}
	return m
}

// PortEntry is the value of a port table entry.
type PortEntry struct {
	AppID uint32 // application ("app type") id reported in FlowStats
	LC    bool   // packets to or from this port are latency-critical
}

func (d *Datapath) portMap(proto uint8) (*ebpf.Map, error) {
	switch proto {
	case ProtoUDP:
		return d.objs.UdpPorts, nil
	case ProtoTCP:
		return d.objs.TcpPorts, nil
	}
	return nil, fmt.Errorf("port table: protocol %d is neither UDP nor TCP", proto)
}

// SetPort adds or replaces the port table entry for proto/port (ProtoUDP or
// ProtoTCP). The classifier matches UDP destination ports first, then source
// ports; suppression matches both for TCP and UDP.
func (d *Datapath) SetPort(proto uint8, port uint16, e PortEntry) error {
	m, err := d.portMap(proto)
	if err != nil {
		return err
	}
	v := raicPortValue{AppId: e.AppID, Flags: portFlagPresent}
	if e.LC {
		v.Flags |= portFlagLC
	}
	if err := m.Put(uint32(port), &v); err != nil {
		return fmt.Errorf("set port %d/%d: %w", proto, port, err)
	}
	return nil
}

// Port returns the port table entry for proto/port, or ErrNotFound.
func (d *Datapath) Port(proto uint8, port uint16) (PortEntry, error) {
	m, err := d.portMap(proto)
	if err != nil {
		return PortEntry{}, err
	}
	var v raicPortValue
	if err := m.Lookup(uint32(port), &v); err != nil {
		return PortEntry{}, fmt.Errorf("port %d/%d: %w", proto, port, err)
	}
	if v.Flags&portFlagPresent == 0 {
		return PortEntry{}, ErrNotFound
	}
	return PortEntry{AppID: v.AppId, LC: v.Flags&portFlagLC != 0}, nil
}

// DeletePort removes the port table entry for proto/port.
func (d *Datapath) DeletePort(proto uint8, port uint16) error {
	if _, err := d.Port(proto, port); err != nil {
		return err
	}
	m, _ := d.portMap(proto)
	// Array slots cannot be deleted; a zero value is an empty slot.
	if err := m.Put(uint32(port), &raicPortValue{}); err != nil {
		return fmt.Errorf("delete port %d/%d: %w", proto, port, err)
	}
	return nil
}

// FlowKey is a flow's 5-tuple as the LAN-side ingress sees it (client to
// server). IPv4 addresses may be given plain or IPv4-mapped.
type FlowKey struct {
	Proto uint8
	Src   netip.AddrPort
	Dst   netip.AddrPort
}

func (k FlowKey) String() string {
	return fmt.Sprintf("%d %s>%s", k.Proto, k.Src, k.Dst)
}

func addrWords(a netip.Addr) [4]uint32 {
	// As16 yields the IPv4-mapped form for IPv4, matching the kernel key.
	b := a.As16()
	var w [4]uint32
	for i := range w {
		// The kernel stores the address bytes in network order; reading
		// them in host order reproduces the same memory image.
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}

func wordsAddr(w [4]uint32) netip.Addr {
	var b [16]byte
	for i := range w {
		binary.NativeEndian.PutUint32(b[4*i:], w[i])
	}
	return netip.AddrFrom16(b).Unmap()
}

func (k FlowKey) raw() raicFlowKey {
	return raicFlowKey{
		Saddr: addrWords(k.Src.Addr()),
		Daddr: addrWords(k.Dst.Addr()),
		Sport: k.Src.Port(),
		Dport: k.Dst.Port(),
		Proto: k.Proto,
	}
}

func flowKeyFromRaw(r *raicFlowKey) FlowKey {
	return FlowKey{
		Proto: r.Proto,
		Src:   netip.AddrPortFrom(wordsAddr(r.Saddr), r.Sport),
		Dst:   netip.AddrPortFrom(wordsAddr(r.Daddr), r.Dport),
	}
}

// Promote marks a flow LC from its next packet on, with an optional app id
// (0 keeps the port table's). Suppression also matches the reversed tuple, so
// replies of a promoted flow pass too.
func (d *Datapath) Promote(k FlowKey, appID uint32) error {
	rk := k.raw()
	if err := d.objs.PromotedFlows.Put(&rk, appID); err != nil {
		return fmt.Errorf("promote %v: %w", k, err)
	}
	return nil
}

// Demote undoes Promote. It also clears the promoted flag in the flow's
// stats, because suppression trusts that flag; the flow stays LC if a port or
// DSCP rule still matches its next packet.
func (d *Datapath) Demote(k FlowKey) error {
	rk := k.raw()
	if err := d.objs.PromotedFlows.Delete(&rk); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return ErrNotFound
		}
		return fmt.Errorf("demote %v: %w", k, err)
	}
	var v raicFlowStats
	if err := d.objs.FlowStats.Lookup(&rk, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		return fmt.Errorf("demote %v: %w", k, err)
	}
	if v.Flags&FlowLCPromoted == 0 {
		return nil
	}
	// The read-modify-write may lose the counts of packets that arrive in
	// between; the flag matters more than an exact count.
	v.Flags &^= FlowLCPromoted
	if v.Flags&FlowLC == 0 {
		v.Flags &^= FlowMarked
	}
	if err := d.objs.FlowStats.Update(&rk, &v, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("demote %v: clear flow flags: %w", k, err)
	}
	return nil
}

// FlowStats is what the classifier knows about one UDP flow.
type FlowStats struct {
	Packets   uint64
	Bytes     uint64        // skb->len, including the Ethernet header
	FirstSeen int64         // CLOCK_MONOTONIC ns
	LastSeen  int64         // CLOCK_MONOTONIC ns
	MinGap    time.Duration // smallest inter-packet gap; 0 before the second packet
	EWMAGap   time.Duration // gap average with gain 1/8; 0 before the second packet
	AppID     uint32
	Flags     uint32 // Flow* bits
}

// LC reports whether the classifier found the flow latency-critical.
func (s FlowStats) LC() bool { return s.Flags&FlowLC != 0 }

func flowStatsFromRaw(r *raicFlowStats) FlowStats {
	return FlowStats{
		Packets:   r.Packets,
		Bytes:     r.Bytes,
		FirstSeen: int64(r.FirstNs),
		LastSeen:  int64(r.LastNs),
		MinGap:    time.Duration(r.MinGapNs),
		EWMAGap:   time.Duration(r.EwmaGapNs),
		AppID:     r.AppId,
		Flags:     r.Flags,
	}
}

// Flow returns the classifier's stats for k, or ErrNotFound.
func (d *Datapath) Flow(k FlowKey) (FlowStats, error) {
	rk := k.raw()
	var v raicFlowStats
	if err := d.objs.FlowStats.Lookup(&rk, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return FlowStats{}, ErrNotFound
		}
		return FlowStats{}, fmt.Errorf("lookup flow %v: %w", k, err)
	}
	return flowStatsFromRaw(&v), nil
}

// Flows calls fn for every tracked flow until fn returns false. The map keeps
// changing while it is walked: a flow may be missed or seen twice.
func (d *Datapath) Flows(fn func(FlowKey, FlowStats) bool) error {
	var (
		k raicFlowKey
		v raicFlowStats
	)
	it := d.objs.FlowStats.Iterate()
	for it.Next(&k, &v) {
		if !fn(flowKeyFromRaw(&k), flowStatsFromRaw(&v)) {
			return nil
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate flows: %w", err)
	}
	return nil
}

// ClassifierCounters are the classifier's per-action packet counts, summed
// over CPUs. Every packet counts in Packets and in exactly one of NotIP,
// NotUDP, Fragment, Bulk or one or more of the LC* counters.
type ClassifierCounters struct {
	Packets    uint64
	NotIP      uint64
	NotUDP     uint64
	Fragment   uint64 // IP fragments, passed unclassified
	LCPort     uint64
	LCDSCP     uint64
	LCPromoted uint64
	Bulk       uint64 // UDP, not LC
	Marked     uint64 // LC packets whose skb->mark was set
	FlowNew    uint64 // flows inserted into the flow map
	FlowError  uint64 // flow map updates that failed
}

// ClassifierCounters reads the classifier counters.
func (d *Datapath) ClassifierCounters() (ClassifierCounters, error) {
	var c ClassifierCounters
	dst := []*uint64{
		&c.Packets, &c.NotIP, &c.NotUDP, &c.Fragment, &c.LCPort, &c.LCDSCP,
		&c.LCPromoted, &c.Bulk, &c.Marked, &c.FlowNew, &c.FlowError,
	}
	return c, sumPerCPU(d.objs.ClsCounters, dst)
}

// sumPerCPU reads per-CPU counters 0..len(dst)-1 and stores their sums.
func sumPerCPU(m *ebpf.Map, dst []*uint64) error {
	var per []uint64
	for i, p := range dst {
		if err := m.Lookup(uint32(i), &per); err != nil {
			return fmt.Errorf("read counter %d: %w", i, err)
		}
		var s uint64
		for _, v := range per {
			s += v
		}
		*p = s
	}
	return nil
}
