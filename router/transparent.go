package router

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/songgao/water"

	"github.com/raicnet/raic/bpf"
	"github.com/raicnet/raic/detect"
	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/gateway"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/nat"
	"github.com/raicnet/raic/pkg/session"
	"github.com/raicnet/raic/raic"
)

// TransparentConfig is the [transparent] table: transparent mode, where the router
// is the LAN's gateway and finds latency-critical sessions on its own.
//
// What the router installs, and removes again on exit (and, first of all, at
// start, in case an earlier run crashed):
//
//   - a TUN device (tun) and routing table (table) whose default route is it;
//   - the classifier eBPF program on the LAN ingress, which sets mark/mark_mask
//     on packets of LC flows (UDP port table, DSCP, promoted flows);
//   - policy rules, all with iif = lan: at rule_priority, "lookup main" for
//     single flows that must keep their kernel path (flows already in flight
//     when found LC) and, with masquerade, for packets carrying keep_mark
//     (connections the kernel masquerades already); at rule_priority+1, "fwmark mark/mark_mask lookup table";
//     at rule_priority+2, "lookup table" for UDP destination port ranges that
//     overlap the ephemeral ports (the eBPF port table also matches source
//     ports, so these ranges are matched by destination here instead),
//     operator prefixes, the peers' LANs (peer_lan.go) and learned
//     destinations;
//   - net.ipv4.ip_forward = 1 (the old value is restored) and loose reverse
//     path filtering on the TUN device, whose packets come from LAN addresses;
//   - when masquerade lists interfaces, the nft table "ip raic_<tun>" that
//     masquerades what leaves through them and sets keep_mark on LAN packets
//     of connections it masquerades.
//
// The router's own datagrams to the proxy are never captured: the mark is set
// only on the LAN ingress and every rule matches iif = lan, while they are
// sent from the router itself. Replies written to the TUN and packets handed
// back to the kernel arrive from the TUN without the mark, so no rule of ours
// matches them either and the main table forwards them.
type TransparentConfig struct {
	Enabled bool `toml:"enabled"`
	// LAN is the LAN-side interface: the classifier runs on its ingress and
	// every policy rule matches packets that came in through it.
	LAN string `toml:"lan"`
	// LANPrefixes are this LAN's networks, where a peer's LAN flows may go
	// (peer_lan.go); default: the LAN interface's IPv4 networks at start.
	LANPrefixes []string `toml:"lan_prefixes"`
	// TUN is the name of the TUN device latency-critical packets are routed
	// into (default "raic0"); MTU its MTU (default 1500).
	TUN string `toml:"tun"`
	MTU int    `toml:"mtu"`
	// TUNAddress is put on the TUN device (default 169.254.82.65/32, link
	// local). The kernel's reverse-path filter drops every packet arriving on
	// an interface without an address when rp_filter is on (net.ipv4.conf.all
	// or the device), and the replies the router writes arrive that way.
	TUNAddress string `toml:"tun_address"`
	// Mark and MarkMask are the firewall mark the classifier sets on LC
	// packets and the bits of skb->mark it owns (defaults 0x5241 and 0xffff).
	Mark     uint32 `toml:"mark"`
	MarkMask uint32 `toml:"mark_mask"`
	// KeepMark (default 0x10000, outside mark_mask) is set by the masquerade
	// table on LAN packets of connections the kernel already masquerades; a
	// rule sends them to the main table. Without it, a flow that becomes LC
	// mid-flight (DSCP set later) would be steered into the TUN, and the
	// kernel kills a masqueraded connection whose output interface changes.
	KeepMark uint32 `toml:"keep_mark"`
	// Table is the routing table holding the route into the TUN device
	// (default 21057); RulePriority the first of the three rule priorities
	// the router uses (default 5240).
	Table        int `toml:"table"`
	RulePriority int `toml:"rule_priority"`
	// Masquerade lists the interfaces (usually the uplinks) whose outgoing
	// traffic is masqueraded by the kernel. Empty: no NAT, the LAN's
	// addresses are routed as they are.
	Masquerade []string `toml:"masquerade"`
	// UDPPorts adds UDP server ports ("N" or "N-M") whose traffic is LC, on top
	// of the application table.
	UDPPorts []string `toml:"udp_ports"`
	// AppsFile is a user application table merged over the shipped one.
	AppsFile string `toml:"apps_file"`
	// ASNFiles are IP-to-ASN range files (range_start,range_end,asn,org, or
	// the iptoasn.com layout), so operators in the application table match by
	// AS number: see router/asn.go.
	ASNFiles []string `toml:"asn_files"`
	// LearnedFile keeps learned destinations across restarts ("" = memory only).
	LearnedFile string `toml:"learned_file"`
	// RDNS turns on the reverse-DNS rule (off by default), RDNSServer names
	// the resolver ("" = the system's), RDNSTimeout bounds one lookup and
	// RDNSCache the addresses remembered: see router/rdns.go.
	RDNS        bool            `toml:"rdns"`
	RDNSServer  string          `toml:"rdns_server"`
	RDNSTimeout config.Duration `toml:"rdns_timeout"`
	RDNSCache   int             `toml:"rdns_cache"`
	// MaxRules bounds the destination rules (learned destinations) and,
	// separately, the single-flow rules (default 256 each).
	MaxRules int `toml:"max_rules"`
	// PollInterval is how often the flow statistics of the eBPF classifier
	// are read to find game-like timing in flows it did not mark (default
	// 100ms).
	PollInterval config.Duration `toml:"poll_interval"`
}

// Defaults of the [transparent] table.
const (
	DefaultTUN          = "raic0"
	DefaultTUNMTU       = 1500
	DefaultTUNAddress   = "169.254.82.65/32"
	DefaultMark         = 0x5241
	DefaultMarkMask     = 0xffff
	DefaultKeepMark     = 0x10000
	DefaultTable        = 21057
	DefaultRulePriority = 5240
	DefaultMaxRules     = 256
	DefaultPollInterval = 100 * time.Millisecond
)

func (t *TransparentConfig) check(c *Config, meta *config.Meta) {
	if !t.Enabled {
		return
	}
	if t.LAN == "" {
		meta.Report("transparent.lan", "transparent mode needs the LAN interface")
	}
	if t.TUN == "" {
		t.TUN = DefaultTUN
	}
	if len(t.TUN) > 15 || len(t.LAN) > 15 {
		meta.Report("transparent.tun", "interface names are at most 15 bytes")
	}
	if t.MTU == 0 {
		t.MTU = DefaultTUNMTU
	}
	if t.MTU < 576 || t.MTU > 65535 {
		meta.Report("transparent.mtu", "must be 576 to 65535")
	}
	if t.TUNAddress == "" {
		t.TUNAddress = DefaultTUNAddress
	}
	if p, err := netip.ParsePrefix(t.TUNAddress); err != nil || !p.Addr().Is4() {
		meta.Report("transparent.tun_address", "not an IPv4 address/prefix: %q", t.TUNAddress)
	}
	if t.Mark == 0 {
		t.Mark = DefaultMark
	}
	if t.MarkMask == 0 {
		t.MarkMask = DefaultMarkMask
	}
	if t.Mark&^t.MarkMask != 0 {
		meta.Report("transparent.mark", "mark %#x has bits outside mark_mask %#x", t.Mark, t.MarkMask)
	}
	if t.KeepMark == 0 {
		t.KeepMark = DefaultKeepMark
	}
	if t.KeepMark&t.MarkMask != 0 {
		meta.Report("transparent.keep_mark", "keep_mark %#x shares bits with mark_mask %#x", t.KeepMark, t.MarkMask)
	}
	if t.Table == 0 {
		t.Table = DefaultTable
	}
	if t.Table < 1 || t.Table >= 252 && t.Table <= 255 || t.Table > math.MaxInt32 {
		meta.Report("transparent.table", "must be 1 to 2^31-1 and not a reserved table (252-255)")
	}
	if t.RulePriority == 0 {
		t.RulePriority = DefaultRulePriority
	}
	if t.RulePriority < 1 || t.RulePriority+2 >= 32766 {
		meta.Report("transparent.rule_priority", "must be 1 to 32763, before the main table's rule")
	}
	for i, p := range t.UDPPorts {
		if _, _, err := parsePortRange(p); err != nil {
			meta.Report(fmt.Sprintf("transparent.udp_ports.%d", i), "%v", err)
		}
	}
	if t.MaxRules == 0 {
		t.MaxRules = DefaultMaxRules
	}
	if t.MaxRules < 1 || t.MaxRules > 4096 {
		meta.Report("transparent.max_rules", "must be 1 to 4096")
	}
	if t.PollInterval.Duration == 0 {
		t.PollInterval.Duration = DefaultPollInterval
	}
	if t.PollInterval.Duration < 10*time.Millisecond || t.PollInterval.Duration > 5*time.Second {
		meta.Report("transparent.poll_interval", "must be 10ms to 5s")
	}
	t.checkRDNS(meta)
}

// parsePortRange reads "N" or "N-M" (1 to 65535).
func parsePortRange(s string) (lo, hi uint16, err error) {
	a, b, isRange := strings.Cut(strings.TrimSpace(s), "-")
	x, err := strconv.ParseUint(strings.TrimSpace(a), 10, 16)
	if err != nil || x == 0 {
		return 0, 0, fmt.Errorf("bad port %q", s)
	}
	y := x
	if isRange {
		if y, err = strconv.ParseUint(strings.TrimSpace(b), 10, 16); err != nil || y < x {
			return 0, 0, fmt.Errorf("bad port range %q", s)
		}
	}
	return uint16(x), uint16(y), nil
}

// flowKey names a transparent flow: the LAN client and the server it sends to.
type flowKey struct {
	client, server netip.AddrPort
}

func hashFlow(k flowKey, seed uint64) uint64 {
	return hashAddrPort(k.client, seed) ^ hashAddrPort(k.server, ^seed)*0x9e3779b97f4a7c15
}

// passEntry is a flow whose packets keep the kernel's path.
type passEntry struct {
	promoted bool // promoted in the eBPF classifier (demote when it ends)
	ruled    bool // has a single-flow rule that keeps it out of the TUN
}

// transparent is the running transparent mode.
type transparent struct {
	r      *Router
	cfg    *TransparentConfig
	gw     *gateway.Gateway // the kernel side; nil in tests of the userspace side
	tun    *water.Interface // gw's, read and written by the data path
	dp     *bpf.Datapath    // gw's, read by the data path
	params raic.Params
	auto   bool // scheme = "auto" (auto.go)
	done   chan struct{}

	// Proxied flows (their sessions) and flows handed back to the kernel.
	flows *session.Table[flowKey, *routerSession]
	pass  *session.Table[flowKey, passEntry]
	// ended remembers flows whose session ended (idle, evicted, closed by the
	// proxy) for a while: when one resumes, the eBPF statistics say it is old,
	// but it was ours, not in flight on the kernel's path, so it is proxied
	// again.
	ended *session.Table[flowKey, struct{}]

	tables  *detect.Config     // application and operator tables
	asnNets []netip.Prefix     // the operators' ASN ranges (router/asn.go)
	cls     *detect.Classifier // the TUN goroutine's
	pollCls *detect.Classifier // the poller's
	learned *detect.Learned
	delayed *delayQueue
	rdns    *rdnsRun // nil: the rDNS rule is off

	polls   map[bpf.FlowKey]*pollState // poller goroutine only
	pollGen uint32

	loops sync.WaitGroup // tunLoop and maintLoop, which use the datapath
	bufs  sync.Pool      // reply buffers (*[]byte)
	ipID  atomic.Uint32
	m     tpCounters
}

type tpCounters struct {
	in, bad, reinjected, proxied, passed          *metrics.Counter
	inFlight, notLC, adhoc, replies, replyErrors  *metrics.Counter
	destRules, rulesFull, ruleErrors, pollSkipped *metrics.Counter
}

func newTPCounters(r *metrics.Registry) tpCounters {
	c := func(name, help string) *metrics.Counter { return r.Counter("router_transparent_"+name, help) }
	return tpCounters{
		in:          c("tun_packets_total", "Packets read from the TUN device."),
		bad:         c("tun_malformed_total", "Packets from the TUN device dropped as malformed."),
		reinjected:  c("tun_reinjected_total", "Packets written back to the kernel's path (not UDP, fragments, flows not proxied)."),
		proxied:     c("flows_proxied_total", "Flows carried through the proxy."),
		passed:      c("flows_passed_total", "Flows captured but kept on the kernel's path."),
		inFlight:    c("flows_in_flight_total", "LC flows found already in flight: kept on their path."),
		notLC:       c("flows_not_lc_total", "Captured flows the userspace classifier did not find LC."),
		adhoc:       c("flows_adhoc_total", "Flows found LC by timing (kept on their path, prioritised, destination learned)."),
		replies:     c("replies_total", "Reply packets rebuilt and written to the TUN device."),
		replyErrors: c("reply_errors_total", "Reply packets that could not be rebuilt or written."),
		destRules:   c("dest_rules_total", "Destination rules installed (learned destinations)."),
		rulesFull:   c("rules_full_total", "Rules not installed because max_rules was reached."),
		ruleErrors:  c("rule_errors_total", "Policy rule changes that failed."),
		pollSkipped: c("poll_flows_skipped_total", "Flows the timing poller could not track (table full)."),
	}
}

// The transparent mode's sessions keep their flows alive in its table and write
// replies as rebuilt IPv4/UDP packets to the TUN device.
func (t *transparent) writeBack(rs *routerSession, pkt []byte) error {
	bp := t.bufs.Get().(*[]byte)
	n, err := nat.Build(*bp, rs.target, rs.client, uint16(t.ipID.Add(1)), pkt)
	if err == nil {
		_, err = t.tun.Write((*bp)[:n])
	}
	t.bufs.Put(bp)
	if err != nil {
		t.m.replyErrors.Inc()
		return err
	}
	t.m.replies.Inc()
	return nil
}
func (t *transparent) touch(rs *routerSession, now int64) {
	t.flows.Get(flowKey{rs.client, rs.target}, now)
}
func (t *transparent) end(rs *routerSession) { t.flows.Delete(flowKey{rs.client, rs.target}) }

func (r *Router) setupTransparent() error {
	if !r.cfg.Transparent.Enabled {
		return nil
	}
	t, err := newTransparent(r)
	if err != nil {
		return err
	}
	if err := r.setupLAN(t); err != nil { // peer_lan.go
		return err
	}
	tc := t.cfg
	gw, err := gateway.Open(gateway.Config{
		LAN: tc.LAN, TUN: tc.TUN, MTU: tc.MTU, TUNAddress: netip.MustParsePrefix(tc.TUNAddress),
		Mark: tc.Mark, MarkMask: tc.MarkMask, KeepMark: tc.KeepMark,
		Table: tc.Table, RulePriority: tc.RulePriority, Masquerade: tc.Masquerade, MaxRules: tc.MaxRules,
	}, gateway.Counters{DestRules: t.m.destRules, RulesFull: t.m.rulesFull, RuleErrors: t.m.ruleErrors}, r.log)
	if err != nil {
		return err
	}
	info, err := gw.Setup(t.steering(), t.learnedDests(mono.Now()))
	if err != nil {
		gw.Close()
		return err
	}
	t.gw, t.tun, t.dp = gw, gw.TUN(), gw.Datapath()
	r.log.Info("transparent mode ready", "lan", tc.LAN, "tun", tc.TUN, "table", tc.Table,
		"mark", fmt.Sprintf("%#x/%#x", tc.Mark, tc.MarkMask), "rule_priority", tc.RulePriority,
		"apps", t.cls.Apps().Len(), "bpf_udp_ports", info.BPFUDPPorts, "dest_port_rules", info.DestPortRules)
	r.tp = t
	return nil
}

// newTransparent builds the userspace side of transparent mode: flow tables,
// classifiers, reply buffers. setupKernel adds the kernel side.
func newTransparent(r *Router) (*transparent, error) {
	tc := &r.cfg.Transparent
	params, auto, err := parseScheme(r.cfg.Scheme)
	if err != nil {
		return nil, err
	}
	t := &transparent{
		r: r, cfg: tc, params: params, auto: auto, done: make(chan struct{}),
		polls: map[bpf.FlowKey]*pollState{}, m: newTPCounters(r.reg),
	}
	t.bufs.New = func() any { b := make([]byte, nat.HeaderLen+nat.MaxPayload); return &b }
	t.flows = session.NewTable(session.Config[flowKey, *routerSession]{
		MaxEntries: r.cfg.MaxSessions, IdleTimeout: r.cfg.SessionIdle.Duration,
		Hash: func(k flowKey) uint64 { return hashFlow(k, r.seed) },
		OnRemove: func(k flowKey, rs *routerSession, why session.Reason) {
			t.ended.GetOrCreate(k, mono.Now(), func() (struct{}, error) { return struct{}{}, nil })
			r.onFlowRemoved(k.client, rs, why)
		},
	})
	t.ended = session.NewTable(session.Config[flowKey, struct{}]{
		MaxEntries: r.cfg.MaxSessions, IdleTimeout: endedMemory,
		Hash: func(k flowKey) uint64 { return hashFlow(k, r.seed) },
	})
	t.pass = session.NewTable(session.Config[flowKey, passEntry]{
		MaxEntries: r.cfg.MaxSessions, IdleTimeout: r.cfg.SessionIdle.Duration,
		Hash:     func(k flowKey) uint64 { return hashFlow(k, r.seed) },
		OnRemove: t.passRemoved,
	})
	if r.cfg.DelayedCopy > 0 {
		t.delayed = newDelayQueue(256)
	}
	if err := t.setupClassifiers(); err != nil {
		return nil, err
	}
	return t, nil
}

// setupClassifiers builds the userspace classifiers over the shipped
// application table, the user's table and udp_ports.
func (t *transparent) setupClassifiers() error {
	tc := t.cfg
	base, err := detect.ShippedConfig()
	if err != nil {
		return err
	}
	if tc.AppsFile != "" {
		user, err := detect.LoadConfigFile(tc.AppsFile)
		if err != nil {
			return fmt.Errorf("transparent.apps_file: %w", err)
		}
		base = detect.Merge(base, user)
	}
	if len(tc.UDPPorts) > 0 {
		var b strings.Builder
		b.WriteString("[[app]]\nname = \"config-udp-ports\"\ntitle = \"[transparent] udp_ports\"\ntype = \"game\"\nproto = \"udp\"\nserver_ports = [")
		for i, p := range tc.UDPPorts {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%q", strings.TrimSpace(p))
		}
		b.WriteString("]\n")
		user, err := detect.ParseConfig("transparent.udp_ports", []byte(b.String()))
		if err != nil {
			return fmt.Errorf("transparent.udp_ports: %w", err)
		}
		base = detect.Merge(base, user)
	}
	t.tables = base
	t.learned = detect.NewLearned(4096, 30*24*time.Hour)
	if tc.LearnedFile != "" {
		n := t.learned.Restore(tc.LearnedFile, mono.Now(), time.Now(), t.r.log)
		t.r.log.Info("learned destinations restored", "file", tc.LearnedFile, "entries", n)
	}
	asn, err := t.loadASN()
	if err != nil {
		return err
	}
	t.asnNets = t.operatorPrefixes(asn)
	opt := detect.Options{Config: base, ASN: asn, Learned: t.learned, MaxFlows: t.r.cfg.MaxSessions}
	if t.cls, err = detect.NewClassifier(opt); err != nil {
		return err
	}
	// Only the poller asks rDNS: it sees the flows the kernel forwards, and
	// it is off the packet path (router/rdns.go).
	opt.RDNS = t.newRDNS()
	if t.pollCls, err = detect.NewClassifier(opt); err != nil {
		return err
	}
	return nil
}

// steering is what the kernel is told makes a flow LC from its first
// packet: the UDP server ports of the enabled applications and the operators'
// prefixes.
func (t *transparent) steering() gateway.Steering {
	// The peers' LANs (peer_lan.go), and nothing else without a proxy.
	s := gateway.Steering{Prefixes: t.r.peerLANPrefixes()}
	if len(t.r.proxies) == 0 {
		return s
	}
	for _, a := range t.tables.Apps {
		if a.Disabled || (a.Proto != "udp" && a.Proto != "both") {
			continue
		}
		for _, p := range a.ServerPorts {
			if lo, hi, err := parsePortRange(p); err == nil {
				s.UDPPorts = append(s.UDPPorts, [2]uint16{lo, hi})
			}
		}
	}
	for _, op := range t.tables.Operators {
		for _, p := range op.Prefixes {
			if pf, err := netip.ParsePrefix(p); err == nil {
				s.Prefixes = append(s.Prefixes, pf)
			}
		}
	}
	// The ranges of the operators' ASNs (router/asn.go).
	s.Prefixes = append(s.Prefixes, t.asnNets...)
	return s
}

// learnedDests returns the learned UDP destinations, most recently used first.
func (t *transparent) learnedDests(now int64) []netip.AddrPort {
	var out []netip.AddrPort
	if len(t.r.proxies) == 0 {
		return nil // a peer-only router proxies nothing
	}
	for _, e := range t.learned.Entries(now) {
		if e.Proto == detect.ProtoUDP {
			out = append(out, e.Dst)
		}
	}
	return out
}

// syncDestRules makes the destination rules match the learned destinations:
// the next flow to one of them is steered into the TUN from its first packet.
func (t *transparent) syncDestRules(now int64) {
	if t.gw != nil {
		t.gw.SyncDestRules(t.learnedDests(now))
	}
}

func (r *Router) startTransparent(ctx context.Context) error {
	t := r.tp
	if t == nil {
		return nil
	}
	r.wg.Add(2)
	t.loops.Add(2)
	go t.tunLoop()
	go t.maintLoop(ctx)
	t.startRDNS(ctx)
	if t.delayed != nil {
		r.wg.Add(1)
		go r.delayLoop(ctx, &forward{delayed: t.delayed})
	}
	return nil
}

func (r *Router) closeTransparent() {
	t := r.tp
	if t == nil {
		return
	}
	close(t.done)
	if t.delayed != nil {
		t.delayed.close()
	}
	// The loops end before the datapath and rules they use go away: closing
	// the device ends the TUN reader.
	t.tun.Close()
	t.loops.Wait()
	t.gw.Close()
	if t.cfg.LearnedFile != "" {
		if err := t.learned.Save(t.cfg.LearnedFile, mono.Now(), time.Now()); err != nil {
			r.log.Warn("transparent: save learned destinations", "err", err)
		}
	}
}

// maintLoop polls the classifier's flow statistics for game-like timing,
// sweeps idle flows and keeps the destination rules in step with what was
// learned.
func (t *transparent) maintLoop(ctx context.Context) {
	defer t.r.wg.Done()
	defer t.loops.Done()
	tick := time.NewTicker(t.cfg.PollInterval.Duration)
	defer tick.Stop()
	var lastSweep, lastSync, lastSave int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.done:
			return
		case <-tick.C:
		}
		now := mono.Now()
		t.poll(now)
		t.rdnsCounters()
		if now-lastSweep > int64(time.Second) {
			lastSweep = now
			t.flows.Sweep(now)
			t.pass.Sweep(now)
			t.ended.Sweep(now)
		}
		if now-lastSync > int64(10*time.Second) {
			lastSync = now
			t.syncDestRules(now)
		}
		if t.cfg.LearnedFile != "" && now-lastSave > int64(time.Minute) {
			if lastSave != 0 {
				if err := t.learned.Save(t.cfg.LearnedFile, now, time.Now()); err != nil {
					t.r.log.Warn("transparent: save learned destinations", "err", err)
				}
			}
			lastSave = now
		}
	}
}

// tunLoop reads the packets the policy rules steered into the TUN device.
func (t *transparent) tunLoop() {
	defer t.r.wg.Done()
	defer t.loops.Done()
	buf := make([]byte, 65536)
	for {
		n, err := t.tun.Read(buf)
		if err != nil {
			if t.r.closing.Load() || errors.Is(err, os.ErrClosed) {
				return
			}
			// Not ours to fix (the device was removed under us, say): count
			// it and do not spin.
			t.m.bad.Inc()
			select {
			case <-t.done:
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		t.fromLAN(buf[:n], mono.Now())
	}
}

// transparentDatapath returns the eBPF datapath transparent mode loaded, or
// nil. Suppression may share it instead of loading its own, so that the flows
// promoted here (ad-hoc LC flows kept on the kernel's path) count as LC for
// suppress_egress too; with two datapaths the promotion maps are separate.
func (r *Router) transparentDatapath() *bpf.Datapath {
	if r.tp == nil {
		return nil
	}
	return r.tp.dp
}

// transparentMark returns the mark and mask the classifier sets on LC packets
// (zero when transparent mode is off).
func (r *Router) transparentMark() (mark, mask uint32) {
	if r.tp == nil {
		return 0, 0
	}
	return r.tp.cfg.Mark, r.tp.cfg.MarkMask
}
