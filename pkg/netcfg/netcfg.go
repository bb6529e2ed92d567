// Package netcfg installs and removes the kernel configuration of the router's
// transparent mode: policy routing rules and routes (through netlink), sysctls,
// and the masquerade table (through nf_tables netlink, package nftnat).
//
// A Net is bound to the network namespace it was opened in, and every change
// goes to that namespace whichever goroutine makes it: the router's cleanup
// runs from its Close, which may run on any thread, and the namespace tests run
// several routers in one process.
package netcfg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/raicnet/raic/pkg/nftnat"
)

// Net is a handle on one network namespace.
type Net struct {
	ns vnetns.NsHandle
	h  *netlink.Handle
}

// Open returns a handle on the calling thread's network namespace.
func Open() (*Net, error) {
	ns, err := vnetns.Get()
	if err != nil {
		return nil, fmt.Errorf("netcfg: current namespace: %w", err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("netcfg: netlink: %w", err)
	}
	return &Net{ns: ns, h: h}, nil
}

// Close releases the handle; it changes nothing in the namespace.
func (n *Net) Close() {
	n.h.Close()
	n.ns.Close()
}

// Do runs fn on a thread that has joined the namespace, for what netlink does
// not cover (sysctls under /proc/sys/net, child processes, tc detach).
func (n *Net) Do(fn func() error) error { return InNamespace(n.ns, fn) }

// InNamespaceNamed runs fn on a thread that has joined the namespace named ns
// (as "ip netns add" names it, under /run/netns). See InNamespace.
func InNamespaceNamed(ns string, fn func() error) error {
	target, err := vnetns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("namespace %s: %w", ns, err)
	}
	defer target.Close()
	return InNamespace(target, fn)
}

// InNamespace runs fn on an OS thread that has joined namespace target and
// returns what fn returns; a panic in fn is returned as an error. Sockets fn
// opens stay in target after it returns; goroutines fn starts run in the
// caller's namespace. A thread that cannot go back to its own namespace stays
// locked, so the runtime retires it when fn's goroutine ends instead of
// running other goroutines in the wrong namespace.
func InNamespace(target vnetns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := vnetns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer func() {
			if vnetns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
		}()
		defer func() {
			if r := recover(); r != nil {
				errc <- fmt.Errorf("panic in namespace: %v", r)
			}
		}()
		errc <- fn()
	}()
	return <-errc
}

// LinkIndex returns the index of interface name.
func (n *Net) LinkIndex(name string) (int, error) {
	l, err := n.h.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("netcfg: interface %q: %w", name, err)
	}
	return l.Attrs().Index, nil
}

// LinkUp sets interface name's MTU (when mtu > 0) and brings it up.
func (n *Net) LinkUp(name string, mtu int) error {
	l, err := n.h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("netcfg: interface %q: %w", name, err)
	}
	if mtu > 0 {
		if err := n.h.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("netcfg: mtu of %q: %w", name, err)
		}
	}
	if err := n.h.LinkSetUp(l); err != nil {
		return fmt.Errorf("netcfg: bring %q up: %w", name, err)
	}
	return nil
}

// AddAddr puts address p on interface name (an address already there is not
// an error).
func (n *Net) AddAddr(name string, p netip.Prefix) error {
	l, err := n.h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("netcfg: interface %q: %w", name, err)
	}
	if err := n.h.AddrReplace(l, &netlink.Addr{IPNet: ipnet(p)}); err != nil {
		return fmt.Errorf("netcfg: address %v on %s: %w", p, name, err)
	}
	return nil
}

// DeleteLink removes interface name if it exists (a TUN device left behind by
// a process that held it with the persist flag, or of another kind with our
// name).
func (n *Net) DeleteLink(name string) error {
	l, err := n.h.LinkByName(name)
	if err != nil {
		return nil
	}
	return n.h.LinkDel(l)
}

// SetDefaultRoute makes dev the default route of table (replacing any).
func (n *Net) SetDefaultRoute(table int, dev string) error {
	idx, err := n.LinkIndex(dev)
	if err != nil {
		return err
	}
	_, all, _ := net.ParseCIDR("0.0.0.0/0")
	r := &netlink.Route{LinkIndex: idx, Dst: all, Table: table, Scope: netlink.SCOPE_LINK, Family: unix.AF_INET}
	if err := n.h.RouteReplace(r); err != nil {
		return fmt.Errorf("netcfg: default route of table %d via %s: %w", table, dev, err)
	}
	return nil
}

// FlushTable deletes every IPv4 route of table.
func (n *Net) FlushTable(table int) error {
	routes, err := n.h.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return err
	}
	var errs []error
	for i := range routes {
		if err := n.h.RouteDel(&routes[i]); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Rule is an IPv4 policy routing rule in the terms the router uses.
type Rule struct {
	Priority int
	Table    int    // table to look up (254 = main)
	Iif      string // input interface; "" matches any
	Mark     uint32 // firewall mark; 0 with Mask 0 means no mark match
	Mask     uint32
	Src, Dst netip.Prefix // zero matches any
	Proto    uint8        // IP protocol; 0 matches any
	// SportLo..SportHi and DportLo..DportHi are port ranges; 0 matches any.
	// The kernel refuses port 65535 in rules, so a range is cut at 65534.
	SportLo, SportHi uint16
	DportLo, DportHi uint16
}

func ipnet(p netip.Prefix) *net.IPNet {
	if !p.IsValid() {
		return nil
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func (r Rule) netlink() *netlink.Rule {
	nr := netlink.NewRule()
	nr.Family = unix.AF_INET
	nr.Priority = r.Priority
	nr.Table = r.Table
	nr.IifName = r.Iif
	if r.Mark != 0 || r.Mask != 0 {
		nr.Mark = r.Mark
		m := r.Mask
		nr.Mask = &m
	}
	nr.Src, nr.Dst = ipnet(r.Src), ipnet(r.Dst)
	nr.IPProto = int(r.Proto)
	if r.SportLo != 0 {
		nr.Sport = portRange(r.SportLo, r.SportHi)
	}
	if r.DportLo != 0 {
		nr.Dport = portRange(r.DportLo, r.DportHi)
	}
	return nr
}

// maxRulePort is the highest port a rule may name (fib_rule_port_range_valid).
const maxRulePort = 0xfffe

func portRange(lo, hi uint16) *netlink.RulePortRange {
	hi = min(max(hi, lo), maxRulePort)
	return netlink.NewRulePortRange(min(lo, hi), hi)
}

// AddRule installs r. An identical rule already present is not an error, so
// that setup can be repeated.
func (n *Net) AddRule(r Rule) error {
	if err := n.h.RuleAdd(r.netlink()); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("netcfg: add rule %+v: %w", r, err)
	}
	return nil
}

// DelRule removes r; a rule already gone is not an error.
func (n *Net) DelRule(r Rule) error {
	if err := n.h.RuleDel(r.netlink()); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("netcfg: delete rule %+v: %w", r, err)
	}
	return nil
}

// DelRulesWhere removes every IPv4 rule for which match(priority, table) holds
// and returns how many it removed: the cleanup of a run that crashed, which
// knows the priorities and table it uses but not the exact rules.
func (n *Net) DelRulesWhere(match func(priority, table int) bool) (int, error) {
	rules, err := n.h.RuleList(unix.AF_INET)
	if err != nil {
		return 0, err
	}
	var errs []error
	removed := 0
	for i := range rules {
		r := &rules[i]
		if !match(r.Priority, r.Table) {
			continue
		}
		// Delete by exact attributes: priority alone would remove the first
		// rule of that priority, which may be another one of ours.
		if err := n.h.RuleDel(r); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, err)
			continue
		}
		removed++
	}
	return removed, errors.Join(errs...)
}

// ListRules returns the IPv4 rules for which match(priority, table) holds.
func (n *Net) ListRules(match func(priority, table int) bool) ([]netlink.Rule, error) {
	rules, err := n.h.RuleList(unix.AF_INET)
	if err != nil {
		return nil, err
	}
	out := rules[:0]
	for _, r := range rules {
		if match(r.Priority, r.Table) {
			out = append(out, r)
		}
	}
	return out, nil
}

// ForgetConnection deletes the kernel's connection tracking entry of the
// IPv4 flow proto src → dst (original direction), so that the flow's next
// packet starts a new one and gets a NAT binding for the route it takes then.
// It names the entry by its tuple, so it costs one request whatever the size
// of the table. A missing entry is not an error.
func (n *Net) ForgetConnection(proto uint8, src, dst netip.AddrPort) error {
	if !src.Addr().Is4() || !dst.Addr().Is4() {
		return fmt.Errorf("netcfg: forget connection: IPv4 only")
	}
	req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_CTNETLINK<<8|nl.IPCTNL_MSG_CT_DELETE, unix.NLM_F_ACK)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_INET, Version: nl.NFNETLINK_V0})
	tuple := nl.NewRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_ORIG, nil)
	ip := tuple.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_IP, nil)
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	ip.AddRtAttr(nl.CTA_IP_V4_SRC, s4[:])
	ip.AddRtAttr(nl.CTA_IP_V4_DST, d4[:])
	pr := tuple.AddRtAttr(unix.NLA_F_NESTED|nl.CTA_TUPLE_PROTO, nil)
	pr.AddRtAttr(nl.CTA_PROTO_NUM, []byte{proto})
	var sp, dp [2]byte
	binary.BigEndian.PutUint16(sp[:], src.Port())
	binary.BigEndian.PutUint16(dp[:], dst.Port())
	pr.AddRtAttr(nl.CTA_PROTO_SRC_PORT, sp[:])
	pr.AddRtAttr(nl.CTA_PROTO_DST_PORT, dp[:])
	req.AddData(tuple)
	// The request opens its socket on the calling thread: Do puts that in
	// the namespace.
	return n.Do(func() error {
		if _, err := req.Execute(unix.NETLINK_NETFILTER, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("netcfg: forget connection %v → %v: %w", src, dst, err)
		}
		return nil
	})
}

// Sysctl reads /proc/sys/<key> (dotted or slashed) in the namespace.
func (n *Net) Sysctl(key string) (string, error) {
	var v string
	err := n.Do(func() error {
		b, err := os.ReadFile(sysctlPath(key))
		v = strings.TrimSpace(string(b))
		return err
	})
	return v, err
}

// SetSysctl writes value to /proc/sys/<key> in the namespace.
func (n *Net) SetSysctl(key, value string) error {
	return n.Do(func() error { return os.WriteFile(sysctlPath(key), []byte(value), 0) })
}

func sysctlPath(key string) string {
	return "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
}

// ErrNoNAT says that masquerade cannot be installed: the kernel lacks
// nf_tables NAT (the error says which feature).
var ErrNoNAT = errors.New("netcfg: kernel NAT unavailable")

// Keep asks Masquerade to set Mark on packets coming in through Iif that
// belong to a connection the kernel already masquerades. A policy rule on that
// mark keeps such connections on the route they started on: the kernel kills a
// masqueraded connection (and drops its packet) when its output interface
// changes, which a mark set mid-flow by a classifier would otherwise cause.
type Keep = nftnat.Keep

// Masquerade replaces the nf_tables table "ip <table>" with one that
// masquerades IPv4 traffic leaving through each of devs (and, with keep, marks
// packets of masqueraded connections), over netlink (package nftnat). The
// table is the router's alone, so replacing and deleting it never touches
// anyone else's rules.
func (n *Net) Masquerade(table string, devs []string, keep *Keep) error {
	err := nftnat.Masquerade(int(n.ns), table, devs, keep)
	if errors.Is(err, nftnat.ErrNoNAT) {
		return fmt.Errorf("%w: %w", ErrNoNAT, err)
	}
	return err
}

// DeleteMasquerade removes the table "ip <table>" if it exists.
func (n *Net) DeleteMasquerade(table string) error {
	return nftnat.Delete(int(n.ns), table)
}
