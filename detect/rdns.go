package detect

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/raicnet/raic/pkg/mono"
)

// Resolver answers reverse lookups. *net.Resolver satisfies it; tests inject
// their own so that nothing touches the network.
type Resolver interface {
	LookupAddr(ctx context.Context, addr string) ([]string, error)
}

// RDNS matches destinations' PTR names against patterns. It is an option,
// off unless the configuration sets it up, because PTR names are set by the
// address owner and are a hint at best.
//
// The packet path only reads a bounded cache (Classify asks once per new
// flow); a miss queues the address, without blocking, for a worker goroutine
// (Run) that asks the resolver. So the first flow to a new address never
// waits for DNS and usually misses this rule; later flows find the answer.
type RDNS struct {
	pats  []RDNSPattern
	decs  []Decision
	res   Resolver
	queue chan netip.Addr

	mu      sync.Mutex
	cache   *lru[netip.Addr, rdnsVal]
	dropped uint64 // queue full
	// lookups asked of the resolver, answers that matched a pattern, and
	// lookups that failed (timeout, no answer, error).
	lookups, matched, failed uint64

	posTTL, negTTL, timeout time.Duration
	now                     func() int64
}

type rdnsVal struct {
	pat     int16 // index into pats; -1 no match; rdnsPending while queued
	expires int64
}

const rdnsPending = -2

// NewRDNS returns a matcher over pats (from ParseConfig, so compiled) with a
// cache of capacity addresses and a queue of queueLen lookups.
func NewRDNS(pats []RDNSPattern, res Resolver, capacity, queueLen int) *RDNS {
	seed := rand.Uint64()
	r := &RDNS{
		res:     res,
		queue:   make(chan netip.Addr, max(queueLen, 1)),
		cache:   newLRU[netip.Addr, rdnsVal](capacity, func(a netip.Addr) uint64 { return hashAddr(seed, a) }),
		posTTL:  time.Hour,
		negTTL:  10 * time.Minute,
		timeout: 2 * time.Second,
		now:     mono.Now,
	}
	for _, p := range pats {
		if p.re == nil {
			continue // not compiled by ParseConfig: refuse silently rather than guess
		}
		r.pats = append(r.pats, p)
		r.decs = append(r.decs, Decision{LC: true, AppType: p.Type, App: p.App, Rule: "rdns:" + p.Name, Proxy: true})
	}
	return r
}

// SetTimeout sets how long one lookup may take (default 2 s); call it before
// Run.
func (r *RDNS) SetTimeout(d time.Duration) {
	if d > 0 {
		r.timeout = d
	}
}

// rdnsState is what the cache knows of an address.
type rdnsState uint8

const (
	rdnsMiss    rdnsState = iota // answered without a match, or not queued (queue full)
	rdnsHit                      // the name matched a pattern
	rdnsWaiting                  // a lookup is queued or under way
)

// check returns the decision for a's cached PTR match, queueing a lookup on a
// miss. It does not allocate.
func (r *RDNS) check(a netip.Addr, now int64) (Decision, bool) {
	d, st := r.lookup(a, now)
	return d, st == rdnsHit
}

// lookup is check that also tells a pending lookup from a known miss.
func (r *RDNS) lookup(a netip.Addr, now int64) (Decision, rdnsState) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.cache.get(a)
	if ok && (v.pat == rdnsPending || now < v.expires) {
		switch {
		case v.pat >= 0:
			return r.decs[v.pat], rdnsHit
		case v.pat == rdnsPending:
			return Decision{}, rdnsWaiting
		}
		return Decision{}, rdnsMiss
	}
	select {
	case r.queue <- a:
		v, _ = r.cache.put(a)
		v.pat = rdnsPending
		return Decision{}, rdnsWaiting
	default:
		r.dropped++ // retried by the next flow to a
	}
	return Decision{}, rdnsMiss
}

// Run serves queued lookups until ctx ends.
func (r *RDNS) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case a := <-r.queue:
			r.resolve(ctx, a)
		}
	}
}

func (r *RDNS) resolve(ctx context.Context, a netip.Addr) {
	lctx, cancel := context.WithTimeout(ctx, r.timeout)
	names, err := r.res.LookupAddr(lctx, a.String())
	cancel()
	pat, ttl := int16(-1), r.negTTL
	if err == nil {
		pat = r.match(names)
		if pat >= 0 {
			ttl = r.posTTL
		}
	}
	r.mu.Lock()
	r.lookups++
	switch {
	case err != nil:
		r.failed++
	case pat >= 0:
		r.matched++
	}
	v, _ := r.cache.put(a)
	v.pat, v.expires = pat, r.now()+int64(ttl)
	r.mu.Unlock()
}

// match returns the first pattern (configuration order) matching any name.
func (r *RDNS) match(names []string) int16 {
	for i, p := range r.pats {
		for _, n := range names {
			if p.re.MatchString(strings.TrimSpace(n)) {
				return int16(i)
			}
		}
	}
	return -1
}

// Stats returns lookups dropped because the queue was full, and cache
// entries evicted for room.
func (r *RDNS) Stats() (dropped, evicted uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dropped, r.cache.evicted
}

// RDNSCounters are the matcher's counters since it was made.
type RDNSCounters struct {
	Lookups, Matched, Failed uint64 // asked of the resolver; matched a pattern; failed or timed out
	Dropped, Evicted         uint64 // not queued (queue full); cache entries evicted for room
}

// Counters returns the counters; safe from any goroutine.
func (r *RDNS) Counters() RDNSCounters {
	r.mu.Lock()
	defer r.mu.Unlock()
	return RDNSCounters{Lookups: r.lookups, Matched: r.matched, Failed: r.failed, Dropped: r.dropped, Evicted: r.cache.evicted}
}
