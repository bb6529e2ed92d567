package router

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/raicnet/raic/detect"
	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/nat"
	"github.com/raicnet/raic/pkg/peer"
	"github.com/raicnet/raic/pkg/session"
)

// Site to site: transparent mode with peers. Each router is its LAN's
// gateway; a [[peer]] with lan = [prefixes] names the peer's LAN. Every UDP
// packet a LAN host sends to one of those prefixes is steered into the TUN
// device (a policy rule per prefix, beside the operator prefixes: see
// pkg/gateway) and carried over the peer session as a LAN frame (package
// peer) with its original addresses. The peer writes it to its own TUN device
// as the packet the host sent, so it reaches the far LAN host from the near
// host's real address: SIP and SDP need no rewriting. The far host's replies
// to the near LAN are captured by the peer the same way.
//
//	[transparent]
//	enabled = true
//	lan = "lan0"
//	lan_prefixes = ["198.18.170.0/24"]  # this LAN (default: lan0's networks)
//	[[peer]]
//	id = "bob"
//	lan = ["198.18.171.0/24"]           # bob's LAN
//
// Which flows: every UDP flow to the peer's LAN goes over the session, since
// that LAN has no other route; the classifier (detect/: SIP 5060, the RTP port
// range, DSCP, ...) names each flow's class, and the metrics count flows and
// packets per class and direction. Fragments and packets too large for one
// peer datagram are dropped and counted; everything that is not UDP keeps the
// kernel's path.
//
// What a router accepts from its peer: the source must lie in the peer's
// configured lan, the destination in this router's own LAN (lan_prefixes, or
// the LAN interface's networks), and not be the router itself, a network or
// broadcast address or multicast. Everything else is refused and counted: a
// peer cannot reach beyond what both sides configured.

// Reasons a LAN frame or captured packet is dropped.
const (
	lanDropMalformed     = iota // a frame that does not parse
	lanDropUnknownKind          // a Link packet of no known frame kind
	lanDropSource               // source outside what is allowed (far LAN → here, here → far LAN)
	lanDropDestination          // destination outside this router's LAN
	lanDropFragment             // an IP fragment to the peer's LAN
	lanDropTooBig               // payload larger than one peer datagram
	lanDropNoTransparent        // a LAN frame while transparent mode is off
	lanDropNoLink               // captured before the peer's link started
	lanDropSend                 // Link.Send failed
	lanDropWrite                // the TUN write failed
	lanDropReasons
)

var lanDropNames = [lanDropReasons]string{
	"malformed", "unknown_kind", "refused_source", "refused_destination", "fragment", "too_big",
	"transparent_off", "no_link", "send_error", "tun_write_error",
}

// maxLANClasses bounds the flow classes with counters of their own per peer;
// further classes are counted as "other".
const maxLANClasses = 32

// Directions of the LAN counters.
const (
	lanToPeer   = 0 // captured on this LAN, sent to the peer
	lanFromPeer = 1 // from the peer, written to this LAN
)

// siteLAN is transparent mode's side of the site-to-site flows.
type siteLAN struct {
	r     *Router
	own   []netip.Prefix // this router's LAN
	self  []netip.Addr   // the router's own LAN addresses: never a destination
	peers []*lanPeer     // those with a lan; config order
	buf   []byte         // the TUN goroutine's frame buffer
	bufs  sync.Pool      // packet buffers of the receive goroutines (*[]byte)
	ipID  atomic.Uint32
	clsMu sync.Mutex         // guards cls (first packets of flows from the peer only)
	cls   *detect.Classifier // classifies flows from the peer
}

// lanPeer is one peer's LAN flows and counters.
type lanPeer struct {
	id       string
	prefixes []netip.Prefix
	site     *siteLAN // nil: transparent mode is off
	link     atomic.Pointer[peer.Link]
	flows    [2]*session.Table[flowKey, *lanClass] // per direction

	reg     *metrics.Registry
	classMu sync.Mutex
	classes map[string]*lanClass
	drops   [lanDropReasons]*metrics.Counter
	evicted *metrics.Counter
}

// lanClass counts one class of flows of one peer.
type lanClass struct {
	flows, packets [2]*metrics.Counter
}

// initLAN builds each peer's LAN state and counters; transparent mode's side
// comes with setupTransparent.
func (r *Router) initLAN() {
	for i := range r.cfg.Peers {
		pc := &r.cfg.Peers[i]
		lp := &lanPeer{id: pc.ID, prefixes: pc.lan, reg: r.reg, classes: map[string]*lanClass{}}
		for k, name := range lanDropNames {
			lp.drops[k] = r.reg.Counter(fmt.Sprintf(`router_peer_lan_dropped_total{peer=%q,reason=%q}`, pc.ID, name),
				"LAN packets and frames to or from the peer dropped, by reason.")
		}
		lp.evicted = r.reg.Counter(`router_peer_lan_flows_evicted_total{peer="`+pc.ID+`"}`,
			"LAN flows to or from the peer evicted from the full flow table.")
		for d := range lp.flows {
			lp.flows[d] = session.NewTable(session.Config[flowKey, *lanClass]{
				MaxEntries: r.cfg.MaxSessions, IdleTimeout: r.cfg.SessionIdle.Duration,
				Hash: func(k flowKey) uint64 { return hashFlow(k, r.seed) },
				OnRemove: func(_ flowKey, _ *lanClass, why session.Reason) {
					if why == session.ReasonEvicted {
						lp.evicted.Inc()
					}
				},
			})
		}
		r.lanPeers = append(r.lanPeers, lp)
	}
}

// setupLAN starts transparent mode's side: this router's LAN (lan_prefixes,
// or the LAN interface's networks) and its own addresses, checked against
// the peers' LANs.
func (r *Router) setupLAN(t *transparent) error {
	s := &siteLAN{r: r, buf: make([]byte, 2048)}
	s.bufs.New = func() any { b := make([]byte, nat.HeaderLen+peer.MaxLANPayload); return &b }
	for _, p := range t.cfg.LANPrefixes {
		s.own = append(s.own, netip.MustParsePrefix(p)) // checked with the config
	}
	if ifc, err := net.InterfaceByName(t.cfg.LAN); err == nil {
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			n, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(n.IP)
			if !ok || !ip.Unmap().Is4() {
				continue
			}
			ones, _ := n.Mask.Size()
			s.self = append(s.self, ip.Unmap())
			if len(t.cfg.LANPrefixes) == 0 {
				s.own = append(s.own, netip.PrefixFrom(ip.Unmap(), ones).Masked())
			}
		}
	}
	any := false
	for _, lp := range r.lanPeers {
		lp.site = s
		if len(lp.prefixes) == 0 {
			continue
		}
		any = true
		s.peers = append(s.peers, lp)
		for _, p := range lp.prefixes {
			for _, o := range s.own {
				if p.Overlaps(o) {
					return fmt.Errorf("peer %s: lan %v overlaps this router's LAN %v (from %s)", lp.id, p, o, ownLANSource(t.cfg))
				}
			}
		}
	}
	if any && len(s.own) == 0 {
		return fmt.Errorf("transparent: LAN interface %s has no IPv4 network and lan_prefixes is empty: the peers' LAN flows need this router's LAN", t.cfg.LAN)
	}
	var err error
	if s.cls, err = detect.NewClassifier(detect.Options{Config: t.tables, MaxFlows: 64}); err != nil {
		return err
	}
	r.lan = s
	if any {
		r.log.Info("site to site: the peers' LANs go through the peer sessions", "own_lan", prefixList(s.own),
			"peers", len(s.peers))
	}
	return nil
}

func ownLANSource(tc *TransparentConfig) string {
	if len(tc.LANPrefixes) > 0 {
		return "transparent.lan_prefixes"
	}
	return "the networks of " + tc.LAN
}

func prefixList(ps []netip.Prefix) string {
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(p.String())
	}
	return b.String()
}

// peerLANPrefixes are the prefixes steered into the TUN device for the peers.
func (r *Router) peerLANPrefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, lp := range r.lanPeers {
		out = append(out, lp.prefixes...)
	}
	return out
}

// attachLAN gives a peer's LAN state its link, once the link exists.
func (r *Router) attachLAN(pr *peerRun) {
	for _, lp := range r.lanPeers {
		if lp.id == pr.id {
			pr.lan = lp
			lp.link.Store(pr.link)
		}
	}
}

// deliver is a peer link's Deliver: vport frames to the Mux, LAN frames to
// the LAN.
func (pr *peerRun) deliver(b []byte) {
	switch {
	case peer.IsVPortFrame(b):
		pr.mux.Deliver(b)
	case len(b) > 0 && b[0] == peer.FrameLAN && pr.lan != nil:
		pr.lan.fromPeer(b, mono.Now())
	case pr.lan != nil:
		pr.lan.drops[lanDropUnknownKind].Inc()
	}
}

func (lp *lanPeer) inLAN(a netip.Addr) bool {
	for _, p := range lp.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// class returns the counters of a flow's class, by the classifier's decision.
func (lp *lanPeer) class(dec detect.Decision) *lanClass {
	name := dec.App
	if name == "" {
		name, _, _ = strings.Cut(dec.Rule, ":")
	}
	if name == "" {
		name = "unknown"
	}
	lp.classMu.Lock()
	defer lp.classMu.Unlock()
	if c := lp.classes[name]; c != nil {
		return c
	}
	if len(lp.classes) >= maxLANClasses {
		name = "other"
		if c := lp.classes[name]; c != nil {
			return c
		}
	}
	c := &lanClass{}
	for d, dir := range [2]string{"to_peer", "from_peer"} {
		lbl := fmt.Sprintf(`{peer=%q,class=%q,dir=%q}`, lp.id, name, dir)
		c.flows[d] = lp.reg.Counter("router_peer_lan_flows_total"+lbl, "LAN flows to or from the peer's LAN, by class (the classifier's app or rule) and direction.")
		c.packets[d] = lp.reg.Counter("router_peer_lan_packets_total"+lbl, "LAN packets to or from the peer's LAN, by flow class and direction.")
	}
	lp.classes[name] = c
	return c
}

// fromLAN takes a packet from the TUN device if it is bound for a peer's LAN
// (true: it was handled, carried or dropped). It runs on the TUN goroutine;
// cls is that goroutine's classifier.
func (s *siteLAN) fromLAN(pkt []byte, cls *detect.Classifier, now int64) bool {
	if len(s.peers) == 0 || len(pkt) < nat.IPv4HeaderLen || pkt[0]>>4 != 4 {
		return false
	}
	lp := s.peerFor(netip.AddrFrom4([4]byte(pkt[16:20])))
	if lp == nil {
		return false
	}
	var p nat.Packet
	switch err := nat.Parse(pkt, &p); err {
	case nil:
	case nat.ErrFragment:
		lp.drops[lanDropFragment].Inc()
		return true
	default:
		return false // not UDP: the kernel's path; malformed: counted by the caller
	}
	if !s.isOwn(p.Src.Addr()) || p.Src.Port() == 0 || p.Dst.Port() == 0 {
		lp.drops[lanDropSource].Inc()
		return true
	}
	if len(p.Payload) > peer.MaxLANPayload {
		lp.drops[lanDropTooBig].Inc()
		return true
	}
	link := lp.link.Load()
	if link == nil {
		lp.drops[lanDropNoLink].Inc()
		return true
	}
	k := flowKey{p.Src, p.Dst}
	c, ok := lp.flows[lanToPeer].Get(k, now)
	if !ok {
		c = s.newFlow(lp, lanToPeer, k, cls, p.DSCP, p.Len, now)
	}
	f := peer.LANFrame{TOS: pkt[1], Src: p.Src, Dst: p.Dst, Payload: p.Payload}
	n, err := peer.PutLANFrame(s.buf, &f)
	if err != nil {
		lp.drops[lanDropMalformed].Inc()
		return true
	}
	if link.Send(s.buf[:n], now) != nil {
		lp.drops[lanDropSend].Inc()
		return true
	}
	c.packets[lanToPeer].Inc()
	return true
}

// newFlow classifies the first packet of a LAN flow and counts the flow in
// its class.
func (s *siteLAN) newFlow(lp *lanPeer, dir int, k flowKey, cls *detect.Classifier, dscp uint8, size int, now int64) *lanClass {
	ft := detect.FiveTuple{Proto: detect.ProtoUDP, Src: k.client, Dst: k.server}
	// Only the first packet's rules (ports, prefixes, DSCP): the flow's
	// timing is not worth learning, it never leaves by the proxy.
	dec := cls.Classify(ft, dscp, size, now)
	cls.Forget(ft)
	c := lp.class(dec)
	c2, created, _ := lp.flows[dir].GetOrCreate(k, now, func() (*lanClass, error) { return c, nil })
	if created {
		c.flows[dir].Inc()
		if ok, n := s.r.flowLines.Allow(); ok {
			d := "to the peer's LAN"
			if dir == lanFromPeer {
				d = "from the peer's LAN"
			}
			s.r.log.Info("site to site: flow "+d, "peer", lp.id, "source", k.client.String(), "destination", k.server.String(),
				"app", dec.App, "rule", dec.Rule, "lines_suppressed", n)
		}
	}
	return c2
}

// peerFor returns the peer whose LAN holds dst, or nil.
func (s *siteLAN) peerFor(dst netip.Addr) *lanPeer {
	for _, p := range s.peers {
		if p.inLAN(dst) {
			return p
		}
	}
	return nil
}

// isOwn reports whether a is a host of this router's LAN.
func (s *siteLAN) isOwn(a netip.Addr) bool {
	for _, p := range s.own {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// acceptsDestination reports whether a frame from the peer may go to a: a
// host of this LAN, not the router itself, not a network, broadcast or
// multicast address.
func (s *siteLAN) acceptsDestination(a netip.Addr) bool {
	if !a.Is4() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return false
	}
	for _, self := range s.self {
		if a == self {
			return false
		}
	}
	for _, p := range s.own {
		if !p.Contains(a) {
			continue
		}
		if p.Bits() <= 30 {
			b := a.As4()
			host := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
			mask := uint32(1)<<(32-p.Bits()) - 1
			if host&mask == 0 || host&mask == mask {
				return false
			}
		}
		return true
	}
	return false
}

// fromPeer writes a LAN frame from the peer to this LAN, as the packet the
// far host sent.
func (lp *lanPeer) fromPeer(b []byte, now int64) {
	var f peer.LANFrame
	if err := peer.ParseLANFrame(b, &f); err != nil {
		lp.drops[lanDropMalformed].Inc()
		return
	}
	s := lp.site
	if s == nil || s.r.tp == nil {
		lp.drops[lanDropNoTransparent].Inc()
		return
	}
	if !lp.inLAN(f.Src.Addr()) {
		lp.drops[lanDropSource].Inc()
		return
	}
	if !s.acceptsDestination(f.Dst.Addr()) {
		lp.drops[lanDropDestination].Inc()
		return
	}
	k := flowKey{f.Src, f.Dst}
	c, ok := lp.flows[lanFromPeer].Get(k, now)
	if !ok {
		s.clsMu.Lock()
		c = s.newFlow(lp, lanFromPeer, k, s.cls, f.TOS>>2, nat.HeaderLen+len(f.Payload), now)
		s.clsMu.Unlock()
	}
	bp := s.bufs.Get().(*[]byte)
	n, err := nat.Build(*bp, f.Src, f.Dst, uint16(s.ipID.Add(1)), f.Payload)
	if err == nil {
		pkt := (*bp)[:n]
		if f.TOS != 0 { // keep the sender's DSCP (EF for voice): the header checksum again
			pkt[1] = f.TOS
			pkt[10], pkt[11] = 0, 0
			cs := nat.Checksum(pkt[:nat.IPv4HeaderLen])
			pkt[10], pkt[11] = byte(cs>>8), byte(cs)
		}
		_, err = s.r.tp.tun.Write(pkt)
	}
	s.bufs.Put(bp)
	if err != nil {
		lp.drops[lanDropWrite].Inc()
		return
	}
	c.packets[lanFromPeer].Inc()
}

// sweepLAN ends the peer's idle LAN flows.
func (lp *lanPeer) sweep(now int64) {
	for _, t := range lp.flows {
		t.Sweep(now)
	}
}

// checkPeerLANs checks the peers' lan keys and transparent.lan_prefixes.
func (c *Config) checkPeerLANs(meta *config.Meta) {
	var own []netip.Prefix
	for j, s := range c.Transparent.LANPrefixes {
		if p, ok := meta.Prefix(fmt.Sprintf("transparent.lan_prefixes.%d", j), s); ok {
			if !p.Addr().Is4() {
				meta.Report(fmt.Sprintf("transparent.lan_prefixes.%d", j), "%v: only IPv4 networks", p)
				continue
			}
			own = append(own, p)
		}
	}
	type named struct {
		p   netip.Prefix
		key string
	}
	var seen []named
	for i := range c.Peers {
		pc := &c.Peers[i]
		pc.lan = nil
		if len(pc.LAN) > 0 && !c.Transparent.Enabled {
			meta.Report(fmt.Sprintf("peer.%d.lan", i), "needs transparent mode ([transparent] enabled = true): the router captures the LAN's flows to the peer's LAN as the LAN's gateway")
		}
		for j, s := range pc.LAN {
			key := fmt.Sprintf("peer.%d.lan.%d", i, j)
			p, ok := meta.Prefix(key, s)
			if !ok {
				continue
			}
			if !p.Addr().Is4() {
				meta.Report(key, "%v: only IPv4 networks", p)
				continue
			}
			for _, o := range own {
				if p.Overlaps(o) {
					meta.Report(key, "%v overlaps this router's LAN %v (transparent.lan_prefixes)", p, o)
				}
			}
			for _, o := range seen {
				if p.Overlaps(o.p) {
					meta.Report(key, "%v overlaps %v (%s): each address belongs to one peer's LAN", p, o.p, o.key)
				}
			}
			seen = append(seen, named{p, key})
			pc.lan = append(pc.lan, p)
		}
	}
}
