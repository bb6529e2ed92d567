package detect

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"time"
)

// Options configure a Classifier. Zero values mean the defaults.
type Options struct {
	Config   *Config   // application, operator and rDNS tables; nil: shipped
	ASN      *ASNTable // nil: no ASN rule
	Learned  *Learned  // nil: an in-memory store of 4,096 destinations, 30 days
	RDNS     *RDNS     // nil: rDNS rule off (the default)
	Adhoc    AdhocConfig
	MaxFlows int // per-flow state table size; default 16,384
	// FlowIdle is how long a flow may be silent before its next packet counts
	// as a new flow (its rules are evaluated again and it may be proxied).
	// Default 120 s, Linux conntrack's timeout for UDP streams: after that
	// the kernel's NAT mapping is gone too, so the old session is broken
	// anyway.
	FlowIdle time.Duration
}

// Classifier combines the rules (see the package comment for the order).
// It is not safe for concurrent use: one per packet-handling goroutine.
type Classifier struct {
	apps   *AppTable
	asn    *ASNTable
	ops    map[uint32]int32 // ASN → index into opDecs
	opDecs []Decision
	// nets are operator prefixes, longest first so the most specific wins.
	// A linear scan: such lists are tens of entries, and a scan of tens of
	// Contains calls is cheaper than the ASN table's search.
	nets    []opNet
	learned *Learned
	rdns    *RDNS
	adhoc   AdhocConfig
	flows   *lru[FiveTuple, flowState]
	idle    int64
}

type opNet struct {
	p   netip.Prefix
	dec Decision
}

type flowState struct {
	dec      Decision // verdict of the first packet, when static
	static   bool     // LC from the first packet by rules 1-5
	lastSeen int64
	adhoc    adhocState
	rdnsWait bool // the first packet queued an rDNS lookup for the destination
}

// NewClassifier builds a classifier. Operators named by owner are resolved
// against opt.ASN here; an owner that names no AS in the table is an error,
// since the operator would silently match nothing.
func NewClassifier(opt Options) (*Classifier, error) {
	cfg := opt.Config
	if cfg == nil {
		var err error
		if cfg, err = ShippedConfig(); err != nil {
			return nil, err
		}
	}
	c := &Classifier{
		apps:    NewAppTable(cfg),
		asn:     opt.ASN,
		ops:     map[uint32]int32{},
		learned: opt.Learned,
		rdns:    opt.RDNS,
		adhoc:   opt.Adhoc.withDefaults(),
		idle:    int64(opt.FlowIdle),
	}
	if c.learned == nil {
		c.learned = NewLearned(4096, 30*24*time.Hour)
	}
	if c.idle <= 0 {
		c.idle = int64(120 * time.Second)
	}
	n := opt.MaxFlows
	if n <= 0 {
		n = 16384
	}
	seed := rand.Uint64()
	c.flows = newLRU[FiveTuple, flowState](n, func(f FiveTuple) uint64 { return hashFlow(seed, f) })
	for _, o := range cfg.Operators {
		for _, s := range o.Prefixes {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("operator %q: prefix %q: %v", o.Name, s, err)
			}
			c.nets = append(c.nets, opNet{p.Masked(), Decision{
				LC: true, AppType: o.Type, App: o.Name, Rule: "prefix:" + o.Name,
				Proxy: true, Proxies: o.Proxies,
			}})
		}
		asns := append([]uint32(nil), o.ASNs...)
		for _, name := range o.Owners {
			found := c.asn.ASNsOwnedBy(name)
			if c.asn != nil && len(found) == 0 {
				return nil, fmt.Errorf("operator %q: owner %q names no AS in the ASN table", o.Name, name)
			}
			asns = append(asns, found...)
		}
		for _, a := range asns {
			if _, dup := c.ops[a]; dup {
				continue // first operator listing an AS keeps it
			}
			c.ops[a] = int32(len(c.opDecs))
			c.opDecs = append(c.opDecs, Decision{
				LC: true, AppType: o.Type, App: o.Name, Rule: fmt.Sprintf("asn:AS%d", a),
				Proxy: true, Proxies: o.Proxies,
			})
		}
	}
	slices.SortStableFunc(c.nets, func(a, b opNet) int { return b.p.Bits() - a.p.Bits() })
	return c, nil
}

// Classify returns the verdict for one packet of flow, of size bytes, with
// DSCP value dscp (0-63), seen at now (monotonic ns, e.g. mono.Now read once
// per batch). It allocates nothing.
func (c *Classifier) Classify(flow FiveTuple, dscp uint8, size int, now int64) Decision {
	st, created := c.flows.put(flow)
	if !created && now-st.lastSeen > c.idle {
		*st, created = flowState{}, true
	}
	st.lastSeen = now
	if created {
		st.dec, st.static = c.firstPacket(flow, dscp, now, st)
	}
	if st.static {
		return st.dec
	}
	if st.rdnsWait {
		if d, ok := c.rdnsAnswered(flow, st, now); ok {
			return d
		}
	}
	verdict, rule := ClassifyDSCP(dscp)
	if dscp == DSCPCS1 {
		// The sender marked this flow scavenger: timing must not promote it.
		st.adhoc = adhocState{}
	} else if lc, changed := st.adhoc.feed(&c.adhoc, size, now); changed && lc {
		c.learned.Learn(flow.Proto, flow.Dst, flow.Src, guessAppType(float64(st.adhoc.pps)), float64(st.adhoc.pps), now)
	}
	// Both rules below found the flow in flight: LC, but never proxied.
	if verdict == DSCPLC {
		return Decision{LC: true, Rule: rule}
	}
	if st.adhoc.lc {
		pps := float64(st.adhoc.pps)
		return Decision{LC: true, AppType: guessAppType(pps), Rule: "adhoc", ExpectedPPS: pps}
	}
	return Decision{}
}

// rdnsAnswered looks again at the rDNS cache for a flow whose first packet
// queued a lookup. When the name matched, the flow is LC but in flight (its
// first packets left on their own path), so it is not proxied; its
// destination is learned, so the next session to it is proxied from its first
// packet, as with ad-hoc timing.
func (c *Classifier) rdnsAnswered(f FiveTuple, st *flowState, now int64) (Decision, bool) {
	d, state := c.rdns.lookup(f.Dst.Addr(), now)
	switch state {
	case rdnsWaiting:
		return Decision{}, false
	case rdnsMiss:
		st.rdnsWait = false
		return Decision{}, false
	}
	st.rdnsWait = false
	d.Proxy = false
	c.learned.Learn(f.Proto, f.Dst, f.Src, d.AppType, float64(st.adhoc.pps), now)
	st.dec, st.static = d, true
	return d, true
}

// firstPacket applies rules 1-5 in order.
func (c *Classifier) firstPacket(f FiveTuple, dscp uint8, now int64, st *flowState) (Decision, bool) {
	if i := c.apps.lookup(f.Proto, f.Dst.Port(), f.Src.Port()); i >= 0 {
		return c.apps.decs[i], true
	}
	for i := range c.nets {
		if c.nets[i].p.Contains(f.Dst.Addr()) {
			return c.nets[i].dec, true
		}
	}
	if len(c.ops) > 0 {
		if asn := c.asn.Lookup(f.Dst.Addr()); asn != 0 {
			if i, ok := c.ops[asn]; ok {
				return c.opDecs[i], true
			}
		}
	}
	if typ, pps, ok, inFlight := c.learned.lookup(f.Proto, f.Dst, f.Src, now); ok {
		return Decision{LC: true, AppType: typ, Rule: "learned", Proxy: !inFlight, ExpectedPPS: pps}, true
	}
	if c.rdns != nil {
		switch d, state := c.rdns.lookup(f.Dst.Addr(), now); state {
		case rdnsHit:
			// Learned too: where the caller finds this flow already in
			// flight (the router's timing poller sees only flows the kernel
			// forwards), the next session to it is still steered and
			// proxied from its first packet.
			c.learned.Learn(f.Proto, f.Dst, f.Src, d.AppType, d.ExpectedPPS, now)
			return d, true
		case rdnsWaiting:
			st.rdnsWait = true
		}
	}
	if v, rule := ClassifyDSCP(dscp); v == DSCPLC {
		return Decision{LC: true, Rule: rule, Proxy: true}, true
	}
	return Decision{}, false
}

// Forget drops a flow's state, for the session layer to call when it closes
// a flow, so that its next packet is a new flow.
func (c *Classifier) Forget(flow FiveTuple) { c.flows.del(flow) }

// Stats are the classifier's counters.
type Stats struct {
	Flows          int    // flows tracked now
	FlowsEvicted   uint64 // flows dropped from the full table
	LearnedEvicted uint64
	LearnedExpired uint64
	RDNSDropped    uint64 // lookups not queued: queue full
	RDNSEvicted    uint64
}

// Stats returns the counters. Call it from the classifier's goroutine.
func (c *Classifier) Stats() Stats {
	s := Stats{Flows: c.flows.len(), FlowsEvicted: c.flows.evicted}
	s.LearnedEvicted, s.LearnedExpired = c.learned.Stats()
	if c.rdns != nil {
		s.RDNSDropped, s.RDNSEvicted = c.rdns.Stats()
	}
	return s
}

// Learned returns the classifier's learned-destination store (for Save).
func (c *Classifier) Learned() *Learned { return c.learned }

// Apps returns the application table.
func (c *Classifier) Apps() *AppTable { return c.apps }
