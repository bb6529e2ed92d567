package router

import (
	"context"
	"net"
	"time"

	"github.com/raicnet/raic/detect"
	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/metrics"
)

// The reverse-DNS rule in transparent mode ([transparent] rdns = true).
//
// A flow the kernel forwards (no port, prefix, ASN or learned rule steered it
// into the TUN device) is seen by the timing poller. Its classifier asks the
// rDNS cache for the destination once, on the flow's first poll; a miss
// queues a lookup for one goroutine that asks the resolver, with a timeout,
// and fills the bounded cache (least recently used addresses are evicted,
// and counted). So no lookup ever runs on the packet path. When the PTR name
// matches an [[rdns]] pattern of the app tables, the flow that asked is
// already in flight: it keeps its path, with priority, like a flow found by
// timing, and its destination is learned, so the next session to it is
// steered and proxied from its first packet.

// Defaults of the rDNS keys.
const (
	DefaultRDNSTimeout = 2 * time.Second
	DefaultRDNSCache   = 4096
	rdnsQueue          = 256 // lookups waiting for the resolver; beyond, counted and retried by the next flow
)

func (t *TransparentConfig) checkRDNS(meta *config.Meta) {
	if t.RDNSServer != "" {
		meta.AddrPort("transparent.rdns_server", t.RDNSServer)
	}
	if !meta.IsDefined("transparent.rdns_timeout") {
		t.RDNSTimeout.Duration = DefaultRDNSTimeout
	}
	meta.Duration("transparent.rdns_timeout", t.RDNSTimeout.Duration, 10*time.Millisecond, 30*time.Second)
	if !meta.IsDefined("transparent.rdns_cache") {
		t.RDNSCache = DefaultRDNSCache
	}
	meta.Int("transparent.rdns_cache", t.RDNSCache, 16, 1<<20)
}

// rdnsRun is the running rule: the matcher and the counters it feeds.
type rdnsRun struct {
	m    *detect.RDNS
	last detect.RDNSCounters

	lookups, matched, failed, dropped, evicted *metrics.Counter
}

// newRDNS returns the matcher over the app tables' [[rdns]] patterns, or nil
// when the rule is off.
func (t *transparent) newRDNS() *detect.RDNS {
	tc := t.cfg
	if !tc.RDNS {
		return nil
	}
	res := net.DefaultResolver
	if tc.RDNSServer != "" {
		server := tc.RDNSServer
		var d net.Dialer
		res = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, server)
		}}
	}
	if len(t.tables.RDNS) == 0 {
		t.r.log.Warn("transparent: rdns is on but the app tables have no [[rdns]] patterns: nothing can match")
	}
	m := detect.NewRDNS(t.tables.RDNS, res, tc.RDNSCache, rdnsQueue)
	m.SetTimeout(tc.RDNSTimeout.Duration)
	c := func(name, help string) *metrics.Counter {
		return t.r.reg.Counter("router_transparent_rdns_"+name, help)
	}
	t.rdns = &rdnsRun{m: m,
		lookups: c("lookups_total", "Reverse lookups asked of the resolver."),
		matched: c("matched_total", "Reverse lookups whose name matched an [[rdns]] pattern."),
		failed:  c("failed_total", "Reverse lookups that failed or timed out (cached as no match)."),
		dropped: c("queue_full_total", "Reverse lookups not queued: the queue was full (asked again by a later flow)."),
		evicted: c("cache_evicted_total", "Addresses evicted from the full rDNS cache."),
	}
	server := tc.RDNSServer
	if server == "" {
		server = "system"
	}
	t.r.log.Info("transparent: rdns rule on", "server", server, "patterns", len(t.tables.RDNS),
		"cache", tc.RDNSCache, "timeout", tc.RDNSTimeout.Duration)
	return m
}

// startRDNS runs the lookup goroutine until ctx ends.
func (t *transparent) startRDNS(ctx context.Context) {
	if t.rdns == nil {
		return
	}
	t.r.wg.Add(1)
	go func() {
		defer t.r.wg.Done()
		t.rdns.m.Run(ctx)
	}()
}

// rdnsCounters brings the metrics up to the matcher's counters.
func (t *transparent) rdnsCounters() {
	if t.rdns == nil {
		return
	}
	r := t.rdns
	n := r.m.Counters()
	r.lookups.Add(n.Lookups - r.last.Lookups)
	r.matched.Add(n.Matched - r.last.Matched)
	r.failed.Add(n.Failed - r.last.Failed)
	r.dropped.Add(n.Dropped - r.last.Dropped)
	r.evicted.Add(n.Evicted - r.last.Evicted)
	r.last = n
}
