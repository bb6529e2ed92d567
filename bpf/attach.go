//go:build linux

package bpf

import (
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// AttachMode says how a program is attached.
type AttachMode int

const (
	// ModeTCX is a tcx bpf_link (Linux 6.6+): owned by its file descriptor,
	// so it goes away with the process and cannot be clobbered by tc.
	ModeTCX AttachMode = iota + 1
	// ModeLegacyTC is a direct-action bpf filter on a clsact qdisc, used
	// where tcx is missing. It outlives the process until Detach.
	ModeLegacyTC
)

func (m AttachMode) String() string {
	switch m {
	case ModeTCX:
		return "tcx"
	case ModeLegacyTC:
		return "tc-clsact"
	}
	return fmt.Sprintf("AttachMode(%d)", int(m))
}

// Legacy filters use a fixed priority and handle so that Detach removes
// exactly the filter Attach added.
const (
	legacyPriority = 0xc1a5
	legacyHandle   = 1
)

// Attachment is one program attached to one interface hook.
type Attachment struct {
	d       *Datapath
	ifindex int
	ingress bool
	mode    AttachMode
	lnk     link.Link // ModeTCX
	filter  *netlink.BpfFilter
	nl      *netlink.Handle // ModeLegacyTC: sockets in the namespace of the attach

	once sync.Once
	err  error
}

// Mode reports how the program was attached.
func (a *Attachment) Mode() AttachMode { return a.mode }

// Ifindex is the interface the program is attached to.
func (a *Attachment) Ifindex() int { return a.ifindex }

// AttachClassifier attaches the classifier to the ingress of interface
// ifindex (the LAN side).
func (d *Datapath) AttachClassifier(ifindex int) (*Attachment, error) {
	return d.attach(ifindex, d.objs.ClassifyIngress, true, false)
}

// AttachClassifierByName is AttachClassifier by interface name.
func (d *Datapath) AttachClassifierByName(name string) (*Attachment, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("attach classifier: %w", err)
	}
	return d.AttachClassifier(ifi.Index)
}

// AttachSuppressor attaches suppression to the egress of interface ifindex
// (a WAN uplink or the LAN side). It enforces nothing until
// SetSuppressConfig enables it for that ifindex.
func (d *Datapath) AttachSuppressor(ifindex int) (*Attachment, error) {
	return d.attach(ifindex, d.objs.SuppressEgress, false, false)
}

// AttachSuppressorByName is AttachSuppressor by interface name.
func (d *Datapath) AttachSuppressorByName(name string) (*Attachment, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("attach suppressor: %w", err)
	}
	return d.AttachSuppressor(ifi.Index)
}

func (d *Datapath) attach(ifindex int, prog *ebpf.Program, ingress, forceLegacy bool) (*Attachment, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errors.New("bpf: datapath closed")
	}
	a := &Attachment{d: d, ifindex: ifindex, ingress: ingress}
	if !forceLegacy {
		typ := ebpf.AttachTCXEgress
		if ingress {
			typ = ebpf.AttachTCXIngress
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: typ})
		switch {
		case err == nil:
			a.mode, a.lnk = ModeTCX, l
			d.attached[a] = struct{}{}
			return a, nil
		case !errors.Is(err, ebpf.ErrNotSupported):
			return nil, fmt.Errorf("attach tcx to ifindex %d: %w", ifindex, err)
		}
	}
	// The handle's sockets are opened now, in the caller's network namespace,
	// so that Detach reaches the same interface from any thread.
	nl, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("netlink handle for ifindex %d: %w", ifindex, err)
	}
	f, err := attachLegacy(nl, ifindex, prog, ingress)
	if err != nil {
		nl.Close()
		return nil, err
	}
	a.mode, a.filter, a.nl = ModeLegacyTC, f, nl
	d.attached[a] = struct{}{}
	return a, nil
}

func attachLegacy(nl *netlink.Handle, ifindex int, prog *ebpf.Program, ingress bool) (*netlink.BpfFilter, error) {
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	// The qdisc may be shared with other users; an existing one is fine and
	// it is left in place on Detach.
	if err := nl.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("add clsact qdisc to ifindex %d: %w", ifindex, err)
	}
	parent := uint32(netlink.HANDLE_MIN_EGRESS)
	name := "raic_suppress"
	if ingress {
		parent, name = netlink.HANDLE_MIN_INGRESS, "raic_classify"
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    parent,
			Handle:    legacyHandle,
			Priority:  legacyPriority,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           prog.FD(),
		Name:         name,
		DirectAction: true,
	}
	if err := nl.FilterReplace(f); err != nil {
		return nil, fmt.Errorf("add tc filter to ifindex %d: %w", ifindex, err)
	}
	return f, nil
}

// Detach removes the program from the interface. It is idempotent and may be
// called from any thread: a tcx link is a file descriptor, and a legacy tc
// filter is removed through netlink sockets opened in the namespace where it
// was attached.
func (a *Attachment) Detach() error {
	a.once.Do(func() {
		switch a.mode {
		case ModeTCX:
			a.err = a.lnk.Close()
		case ModeLegacyTC:
			a.err = a.nl.FilterDel(a.filter)
			if errors.Is(a.err, unix.ENODEV) || errors.Is(a.err, unix.ENOENT) {
				// The interface or the filter is already gone.
				a.err = nil
			}
			a.nl.Close()
		}
		if a.err != nil {
			a.err = fmt.Errorf("detach from ifindex %d: %w", a.ifindex, a.err)
		}
		a.d.mu.Lock()
		delete(a.d.attached, a)
		a.d.mu.Unlock()
	})
	return a.err
}
