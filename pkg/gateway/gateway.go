// Package gateway is the kernel side of transparent mode, where the router is
// the LAN's gateway: a TUN device that latency-critical (LC) packets are
// routed into, policy rules on the firewall mark the eBPF classifier sets on
// the LAN ingress, the sysctls forwarding needs, and kernel NAT (masquerade)
// for everything else. It installs that state, changes the per-flow and
// per-destination rules while the router runs, and removes it all again on
// exit, or, at the next start, after a crash.
//
// What it installs, all rules with iif = LAN:
//
//   - a TUN device and routing table whose default route is it;
//   - the classifier eBPF program on the LAN ingress, which sets Mark/MarkMask
//     on packets of LC flows (UDP port table, DSCP, promoted flows);
//   - at RulePriority, "lookup main" for single flows that must keep their
//     kernel path (AddFlowRule) and, with masquerade, for packets carrying
//     KeepMark (connections the kernel masquerades already); at
//     RulePriority+1, "fwmark Mark/MarkMask lookup Table"; at RulePriority+2,
//     "lookup Table" for UDP destination port ranges that overlap the
//     ephemeral ports, operator prefixes and learned destinations
//     (SyncDestRules);
//   - net.ipv4.ip_forward = 1 (the old value is restored) and loose reverse
//     path filtering on the TUN device, whose packets come from LAN addresses;
//   - with Masquerade interfaces, the nft table "ip raic_<tun>" that
//     masquerades what leaves through them and sets KeepMark on LAN packets of
//     connections it masquerades.
//
// What travels through the TUN device (the data path) is the router's.
package gateway

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"

	"github.com/songgao/water"

	"github.com/raicnet/raic/bpf"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/nat"
	"github.com/raicnet/raic/pkg/netcfg"
)

// MainTable is the kernel's main routing table.
const MainTable = 254

// ephemeralLo is where the ephemeral source ports of common systems begin
// (Linux 32768, Windows and macOS 49152). The eBPF port table matches source
// ports as well as destination ports, so a range reaching into these ports
// would mark ordinary LAN flows; such ranges are matched by destination port
// with policy rules instead.
const ephemeralLo = 32768

// Config is the gateway's kernel state, as the router's [transparent] table
// names it (checked there).
type Config struct {
	LAN        string // the LAN-side interface
	TUN        string // the TUN device's name
	MTU        int
	TUNAddress netip.Prefix
	// Mark/MarkMask: what the classifier sets on LC packets; KeepMark: what
	// the masquerade table sets on packets of connections it NATs already.
	Mark, MarkMask, KeepMark uint32
	Table                    int // routing table of the route into the TUN
	RulePriority             int // the first of the three rule priorities
	Masquerade               []string
	// MaxRules bounds the destination rules and, separately, the
	// single-flow rules.
	MaxRules int
}

// Steering says which flows are LC from their first packet, by what the
// kernel can match.
type Steering struct {
	UDPPorts [][2]uint16    // UDP server port ranges
	Prefixes []netip.Prefix // operator prefixes and the peers' LANs (IPv4 ones are used)
}

// Counters are the router's counters for the rule changes.
type Counters struct {
	DestRules  *metrics.Counter // destination rules installed
	RulesFull  *metrics.Counter // rules not installed: MaxRules reached
	RuleErrors *metrics.Counter // rule changes that failed
}

// Flow is a UDP flow by its (client, server) addresses.
type Flow struct{ Client, Server netip.AddrPort }

// Gateway is the installed kernel state.
type Gateway struct {
	cfg Config
	log *slog.Logger
	m   Counters
	nc  *netcfg.Net
	tun *water.Interface
	dp  *bpf.Datapath

	mu          sync.Mutex // guards the rule sets and the kernel state flags
	flowRules   map[Flow]bool
	destRules   map[netip.AddrPort]bool
	staticRules []netcfg.Rule
	installed   struct{ route, markRule, nat, forward bool }
	oldForward  string
}

// SetupInfo says what Setup put where, for the router's log.
type SetupInfo struct {
	BPFUDPPorts   int // ports in the eBPF port table
	DestPortRules int // port ranges matched by policy rules instead
}

// Open opens the netlink handles of the current network namespace: the one
// every later change applies to.
func Open(cfg Config, m Counters, log *slog.Logger) (*Gateway, error) {
	nc, err := netcfg.Open()
	if err != nil {
		return nil, err
	}
	return &Gateway{cfg: cfg, log: log, m: m, nc: nc,
		flowRules: map[Flow]bool{}, destRules: map[netip.AddrPort]bool{}}, nil
}

// TUN is the TUN device (after Setup).
func (g *Gateway) TUN() *water.Interface { return g.tun }

// Datapath is the eBPF datapath whose classifier runs on the LAN ingress
// (after Setup).
func (g *Gateway) Datapath() *bpf.Datapath { return g.dp }

// Setup installs the kernel state, removing first whatever an earlier run left
// behind; dests are the learned destinations (see SyncDestRules). On error the
// caller calls Close.
func (g *Gateway) Setup(s Steering, dests []netip.AddrPort) (info SetupInfo, err error) {
	tc, log := &g.cfg, g.log
	if err := g.cleanKernel(); err != nil {
		log.Warn("transparent: leftover cleanup incomplete", "err", err)
	}
	// The TUN device. It is created in the namespace of the Net handle, which
	// is the one the router was started in.
	err = g.nc.Do(func() error {
		var err error
		g.tun, err = water.New(water.Config{DeviceType: water.TUN, PlatformSpecificParams: water.PlatformSpecificParams{Name: tc.TUN}})
		return err
	})
	if err != nil {
		return info, fmt.Errorf("transparent: create TUN %s: %w", tc.TUN, err)
	}
	if err := g.nc.LinkUp(tc.TUN, tc.MTU); err != nil {
		return info, err
	}
	if err := g.nc.AddAddr(tc.TUN, tc.TUNAddress); err != nil {
		return info, err
	}
	// Replies written to the TUN come from remote addresses and passed-back
	// packets from LAN addresses: neither is routed back through the TUN, so
	// strict reverse-path filtering would drop both. Loose mode (2) wins over
	// a strict "all" setting, which the kernel combines by taking the maximum;
	// it needs the address above.
	if err := g.nc.SetSysctl("net.ipv4.conf."+tc.TUN+".rp_filter", "2"); err != nil {
		return info, err
	}
	if err := g.nc.SetDefaultRoute(tc.Table, tc.TUN); err != nil {
		return info, err
	}
	g.installed.route = true
	if g.oldForward, err = g.nc.Sysctl("net.ipv4.ip_forward"); err != nil {
		return info, err
	}
	if err := g.nc.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		return info, err
	}
	g.installed.forward = true

	// The classifier on the LAN ingress.
	if g.dp, err = bpf.Load(); err != nil {
		return info, fmt.Errorf("transparent: load eBPF classifier: %w", err)
	}
	if err := g.dp.SetClassifierConfig(bpf.ClassifierConfig{LCMark: tc.Mark, LCMask: tc.MarkMask}); err != nil {
		return info, err
	}
	var destRanges [][2]uint16
	for _, rg := range s.UDPPorts {
		if rg[1] >= ephemeralLo {
			destRanges = append(destRanges, rg)
			continue
		}
		for p := uint32(rg[0]); p <= uint32(rg[1]); p++ {
			if err := g.dp.SetPort(bpf.ProtoUDP, uint16(p), bpf.PortEntry{LC: true}); err != nil {
				return info, err
			}
			info.BPFUDPPorts++
		}
	}
	info.DestPortRules = len(destRanges)
	err = g.nc.Do(func() error {
		a, err := g.dp.AttachClassifierByName(tc.LAN)
		if err == nil {
			log.Info("transparent: classifier attached", "lan", tc.LAN, "mode", a.Mode().String())
		}
		return err
	})
	if err != nil {
		return info, fmt.Errorf("transparent: attach classifier to %s: %w", tc.LAN, err)
	}

	// Policy rules.
	P := tc.RulePriority
	if err := g.nc.AddRule(netcfg.Rule{Priority: P + 1, Table: tc.Table, Iif: tc.LAN, Mark: tc.Mark, Mask: tc.MarkMask}); err != nil {
		return info, err
	}
	g.installed.markRule = true
	for _, rg := range destRanges {
		g.staticRules = append(g.staticRules, netcfg.Rule{Priority: P + 2, Table: tc.Table, Iif: tc.LAN, Proto: nat.ProtoUDP, DportLo: rg[0], DportHi: rg[1]})
	}
	for _, p := range s.Prefixes {
		if p.Addr().Is4() {
			g.staticRules = append(g.staticRules, netcfg.Rule{Priority: P + 2, Table: tc.Table, Iif: tc.LAN, Proto: nat.ProtoUDP, Dst: p.Masked()})
		}
	}
	for _, rule := range g.staticRules {
		if err := g.nc.AddRule(rule); err != nil {
			return info, err
		}
	}
	g.SyncDestRules(dests)

	if len(tc.Masquerade) > 0 {
		keep := &netcfg.Keep{Iif: tc.LAN, Mark: tc.KeepMark}
		switch err := g.nc.Masquerade(g.natTable(), tc.Masquerade, keep); {
		case err == nil:
			g.installed.nat = true
			if err := g.nc.AddRule(netcfg.Rule{Priority: P, Table: MainTable, Iif: tc.LAN, Mark: tc.KeepMark, Mask: tc.KeepMark}); err != nil {
				return info, err
			}
			log.Info("transparent: masquerading", "interfaces", strings.Join(tc.Masquerade, ","))
		case errors.Is(err, netcfg.ErrNoNAT):
			// Forwarding private addresses un-NATed would look like working
			// and fail at the first ISP: refuse instead.
			return info, fmt.Errorf("transparent.masquerade: %w", err)
		default:
			return info, err
		}
	} else {
		log.Info("transparent: masquerade off (no [transparent] masquerade interfaces): LAN addresses are routed as they are")
	}
	return info, nil
}

func (g *Gateway) natTable() string { return "raic_" + strings.ReplaceAll(g.cfg.TUN, "-", "_") }

// ours reports whether a rule belongs to this router: one of its priorities,
// or a lookup of its table.
func (g *Gateway) ours(prio, table int) bool {
	P := g.cfg.RulePriority
	return table == g.cfg.Table || prio >= P && prio <= P+2
}

// cleanKernel removes what a run with this configuration may have left: its
// rules, its table's routes, its TUN device and its nft table.
func (g *Gateway) cleanKernel() error {
	var errs []error
	if n, err := g.nc.DelRulesWhere(g.ours); err != nil {
		errs = append(errs, err)
	} else if n > 0 {
		g.log.Warn("transparent: removed policy rules left by an earlier run", "rules", n)
	}
	if err := g.nc.FlushTable(g.cfg.Table); err != nil {
		errs = append(errs, err)
	}
	if err := g.nc.DeleteLink(g.cfg.TUN); err != nil {
		errs = append(errs, err)
	}
	if err := g.nc.DeleteMasquerade(g.natTable()); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Close removes everything Setup installed and releases the handles. The
// router stops using the TUN device and the datapath first.
func (g *Gateway) Close() {
	log := g.log
	if g.dp != nil {
		// A legacy tc attachment must be detached in its namespace.
		if err := g.nc.Do(g.dp.Close); err != nil {
			log.Warn("transparent: detach classifier", "err", err)
		}
	}
	if _, err := g.nc.DelRulesWhere(g.ours); err != nil {
		log.Warn("transparent: remove rules", "err", err)
	}
	g.mu.Lock()
	clear(g.flowRules)
	clear(g.destRules)
	g.mu.Unlock()
	if g.installed.route {
		if err := g.nc.FlushTable(g.cfg.Table); err != nil {
			log.Warn("transparent: flush table", "err", err)
		}
	}
	if g.tun != nil {
		g.tun.Close() // the device goes with its last file descriptor
	}
	if g.installed.nat {
		if err := g.nc.DeleteMasquerade(g.natTable()); err != nil {
			log.Warn("transparent: remove masquerade", "err", err)
		}
	}
	if g.installed.forward && g.oldForward != "" && g.oldForward != "1" {
		if err := g.nc.SetSysctl("net.ipv4.ip_forward", g.oldForward); err != nil {
			log.Warn("transparent: restore ip_forward", "err", err)
		}
	}
	g.nc.Close()
}

// Masquerading reports whether the kernel NATs the LAN's traffic.
func (g *Gateway) Masquerading() bool { return g.installed.nat }

// ForgetConnection drops the kernel's connection-tracking entry of a UDP flow
// (and with it its NAT binding), when the kernel NATs at all.
func (g *Gateway) ForgetConnection(f Flow) error {
	if !g.installed.nat {
		return nil
	}
	return g.nc.ForgetConnection(nat.ProtoUDP, f.Client, f.Server)
}

func hostPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

func (g *Gateway) flowRule(f Flow) netcfg.Rule {
	return netcfg.Rule{
		Priority: g.cfg.RulePriority, Table: MainTable, Iif: g.cfg.LAN, Proto: nat.ProtoUDP,
		Src: hostPrefix(f.Client.Addr()), SportLo: f.Client.Port(),
		Dst: hostPrefix(f.Server.Addr()), DportLo: f.Server.Port(),
	}
}

// AddFlowRule keeps a flow on the kernel's path with a rule of its own, and
// reports whether it has one. At most MaxRules are installed.
func (g *Gateway) AddFlowRule(f Flow) bool {
	// Rules cannot name port 65535 (the kernel refuses it); such a flow is
	// still handed back packet by packet through the pass table.
	if !f.Client.Addr().Is4() || !f.Server.Addr().Is4() || f.Client.Port()-1 >= 0xfffe || f.Server.Port()-1 >= 0xfffe {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.flowRules[f] {
		return true
	}
	if len(g.flowRules) >= g.cfg.MaxRules {
		g.m.RulesFull.Inc()
		return false
	}
	if err := g.nc.AddRule(g.flowRule(f)); err != nil {
		g.m.RuleErrors.Inc()
		g.log.Warn("transparent: flow rule", "err", err)
		return false
	}
	g.flowRules[f] = true
	return true
}

// DelFlowRule removes a flow's rule.
func (g *Gateway) DelFlowRule(f Flow) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.flowRules[f] {
		return
	}
	delete(g.flowRules, f)
	if err := g.nc.DelRule(g.flowRule(f)); err != nil {
		g.m.RuleErrors.Inc()
	}
}

func (g *Gateway) destRule(dst netip.AddrPort) netcfg.Rule {
	return netcfg.Rule{
		Priority: g.cfg.RulePriority + 2, Table: g.cfg.Table, Iif: g.cfg.LAN, Proto: nat.ProtoUDP,
		Dst: hostPrefix(dst.Addr()), DportLo: dst.Port(),
	}
}

// SyncDestRules makes the destination rules match dests, the learned UDP
// destinations most recently used first: the next flow to one of them is
// steered into the TUN from its first packet. At most MaxRules are installed.
func (g *Gateway) SyncDestRules(dests []netip.AddrPort) {
	want := map[netip.AddrPort]bool{}
	for _, d := range dests {
		if !d.Addr().Is4() || d.Port() == 0 {
			continue
		}
		if len(want) >= g.cfg.MaxRules {
			g.m.RulesFull.Inc()
			break
		}
		want[d] = true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for d := range g.destRules {
		if !want[d] {
			delete(g.destRules, d)
			if err := g.nc.DelRule(g.destRule(d)); err != nil {
				g.m.RuleErrors.Inc()
			}
		}
	}
	for d := range want {
		if g.destRules[d] {
			continue
		}
		if err := g.nc.AddRule(g.destRule(d)); err != nil {
			g.m.RuleErrors.Inc()
			g.log.Warn("transparent: destination rule", "err", err)
			continue
		}
		g.destRules[d] = true
		g.m.DestRules.Inc()
		g.log.Info("transparent: learned destination proxied from the next flow on", "server", d.String())
	}
}
