// Package simple is the simple proxy: a keyless relay placed where paths are
// good. Routers send their datagrams to one of its listeners (over one uplink);
// it relays them to the latency-oriented proxy configured for that listener and
// relays the proxy's answers back. It never holds keys and never decrypts.
//
// Each source address (a router uplink) gets a mapping with an upstream socket of
// its own, connected to the route's proxy, much like a NAT: the proxy sees one
// distinct address per router uplink, so it can tell the paths of a session
// apart and answer on each, and its answers arrive on the socket of the right
// mapping. Being connected, an upstream socket accepts nothing from anywhere
// else, and the relay contacts no address but the configured upstreams.
//
// The relay cannot authenticate anything, so it does the cheap checks it can:
// only datagrams that look like the suite's wire format (version byte, sane
// length) are relayed, each source is held to a token-bucket rate, and the
// mapping table is bounded, with least-recently-used eviction. Everything
// dropped is counted by reason.
package simple

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/raicnet/raic/pkg/fleet"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/session"
	"github.com/raicnet/raic/pkg/udp"
	"github.com/raicnet/raic/pkg/wire"
)

// batch is how many datagrams one read of a listener may return. A read never
// waits to fill it: recvmmsg returns what is queued.
const batch = 32

// MinDatagram is the shortest datagram relayed: a header and an AEAD tag (an
// empty sealed body). Anything shorter cannot be a datagram of the suite.
const MinDatagram = wire.HeaderLen + wire.TagLen

// reportEvery is how often rate limiting and evictions are summarised in the log:
// often enough to notice, rarely enough that a flood cannot flood the log too.
const reportEvery = 10 * time.Second

// reportTop is how many rate-limited sources a report names one by one.
const reportTop = 5

// Relay is a running simple proxy.
type Relay struct {
	cfg      *Config
	log      *slog.Logger
	routes   []*route
	mappings *session.Table[mapKey, *mapping]
	reg      *metrics.Registry
	m        counters
	seed     uint64 // random, mixed into the mapping table's hash

	// rate and burst of every source's token bucket, in tokens per nanosecond
	// and tokens.
	ratePerNs, burst float64

	sweepEvery  time.Duration // janitor period, derived from mapping_idle
	reportEvery time.Duration // a field so tests can shorten it

	ran     atomic.Bool
	closing atomic.Bool
	closed  chan struct{}
	loops   sync.WaitGroup // listener read loops and the janitor
	pumps   sync.WaitGroup // one reply pump per mapping
	httpSrv *http.Server

	warnMu   sync.Mutex // guards lastWarn
	lastWarn map[string]int64
}

// route is one [[route]]: a listening socket and the proxy it relays to.
type route struct {
	idx      int
	conn     *udp.Conn // the listener: routers send here, replies leave from here
	upstream netip.AddrPort
	upAddr   *net.UDPAddr // upstream as net wants it, built once

	received, relayedUp, relayedDown *metrics.Counter
}

// mapKey names a mapping: a source address on one route.
type mapKey struct {
	route int
	src   netip.AddrPort
}

// counters are the relay's metrics; every dropped datagram is counted by reason.
type counters struct {
	malformed, malformedReply, badSource, rateLimited  *metrics.Counter
	upstreamSendErrors, upstreamRecvErrors, sendErrors *metrics.Counter
	mappingErrors                                      *metrics.Counter
	created, expired, evicted                          *metrics.Counter
	mappings                                           *metrics.Gauge
}

func newCounters(r *metrics.Registry) counters {
	drop := func(reason string) *metrics.Counter {
		return r.Counter(`simple_dropped_total{reason="`+reason+`"}`, "Datagrams dropped, by reason.")
	}
	return counters{
		malformed:          drop("malformed"),
		malformedReply:     drop("malformed_reply"),
		badSource:          drop("bad_source"),
		rateLimited:        drop("rate_limited"),
		upstreamSendErrors: drop("upstream_send_error"),
		sendErrors:         drop("send_error"),
		mappingErrors:      drop("no_mapping"),
		upstreamRecvErrors: r.Counter("simple_upstream_recv_errors_total", "Errors reading upstream sockets (ICMP unreachable from the proxy, mostly)."),
		created:            r.Counter("simple_mappings_created_total", "Mappings created."),
		expired:            r.Counter("simple_mappings_expired_total", "Mappings ended after being idle."),
		evicted:            r.Counter("simple_mappings_evicted_total", "Mappings evicted because the table was full."),
		mappings:           r.Gauge("simple_mappings", "Live mappings."),
	}
}

// New builds a relay from a checked config and binds its listeners, so Addr is
// known and datagrams queue when New returns.
func New(cfg *Config, log *slog.Logger) (*Relay, error) {
	if len(cfg.Routes) == 0 {
		return nil, errors.New("simple: no routes")
	}
	r := &Relay{
		cfg:         cfg,
		log:         log,
		reg:         metrics.NewRegistry(),
		ratePerNs:   cfg.RatePPS * 1e-9,
		burst:       float64(cfg.Burst),
		reportEvery: reportEvery,
		closed:      make(chan struct{}),
		lastWarn:    map[string]int64{},
	}
	r.m = newCounters(r.reg)
	var seed [8]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return nil, err
	}
	r.seed = binary.LittleEndian.Uint64(seed[:])
	// Sweep a few times per idle period, so a mapping outlives its idle time by
	// a quarter at most; a second is plenty for real idle times.
	r.sweepEvery = min(max(cfg.MappingIdle.Duration/4, 10*time.Millisecond), time.Second)
	r.mappings = session.NewTable(session.Config[mapKey, *mapping]{
		MaxEntries:  cfg.MaxMappings,
		IdleTimeout: cfg.MappingIdle.Duration,
		// Eviction scans one shard, so keep shards around a hundred entries;
		// small tables get one shard and exact LRU.
		Shards:   min(max(cfg.MaxMappings/128, 1), 256),
		Hash:     r.hash,
		OnRemove: r.onRemove,
	})
	for i := range cfg.Routes {
		listen, upstream, err := cfg.Routes[i].addrs()
		if err != nil {
			r.closeRoutes()
			return nil, fmt.Errorf("route %d: %v", i, err)
		}
		network := "udp6"
		switch {
		case listen.Addr().Is4():
			network = "udp4"
		case listen.Addr().IsUnspecified():
			network = "udp" // [::] takes IPv4 sources too
		}
		conn, err := udp.Listen(network, udp.Options{Local: listen, RecvBuffer: 4 << 20, SendBuffer: 4 << 20})
		if err != nil {
			r.closeRoutes()
			return nil, fmt.Errorf("route %d: listen %s: %w", i, listen, err)
		}
		lbl := fmt.Sprintf(`{route="%d"`, i)
		r.routes = append(r.routes, &route{
			idx:         i,
			conn:        conn,
			upstream:    upstream,
			upAddr:      net.UDPAddrFromAddrPort(upstream),
			received:    r.reg.Counter("simple_received_total"+lbl+"}", "Datagrams received from routers."),
			relayedUp:   r.reg.Counter("simple_relayed_total"+lbl+`,dir="up"}`, "Datagrams relayed (up: router to proxy, down: proxy to router)."),
			relayedDown: r.reg.Counter("simple_relayed_total"+lbl+`,dir="down"}`, "Datagrams relayed (up: router to proxy, down: proxy to router)."),
		})
	}
	return r, nil
}

func (r *Relay) closeRoutes() {
	for _, rt := range r.routes {
		rt.conn.Close()
	}
}

// hash spreads mapping keys over the table's shards. The random seed keeps a
// sender from choosing source ports that all land in one shard.
func (r *Relay) hash(k mapKey) uint64 {
	a := k.src.Addr().As16()
	h := r.seed ^ uint64(k.route)<<32 ^ uint64(k.src.Port())
	h = (h ^ binary.LittleEndian.Uint64(a[:8])) * 0x9e3779b97f4a7c15
	h = (h ^ binary.LittleEndian.Uint64(a[8:])) * 0x9e3779b97f4a7c15
	return h ^ h>>29
}

// Addr is the bound address of route i's listener (the port is known even when
// the config asked for port 0).
func (r *Relay) Addr(i int) netip.AddrPort { return r.routes[i].conn.LocalAddr() }

// Metrics returns the relay's metric registry.
func (r *Relay) Metrics() *metrics.Registry { return r.reg }

// Mappings returns the number of live mappings.
func (r *Relay) Mappings() int { return r.mappings.Len() }

// Run relays until ctx ends or Close is called, then closes the relay. It may be
// called once.
func (r *Relay) Run(ctx context.Context) error {
	if r.ran.Swap(true) {
		return errors.New("simple: Run called twice")
	}
	if r.closing.Load() {
		return net.ErrClosed
	}
	if r.cfg.Metrics != "" {
		ln, err := net.Listen("tcp", r.cfg.Metrics)
		if err != nil {
			r.Close()
			return fmt.Errorf("metrics listener: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", r.reg.Handler())
		// /healthz and /readyz beside it, as the proxy's and the
		// intermediate's (a relay has no drain: ready while it serves).
		fleet.State{Stopping: r.closing.Load, Draining: func() bool { return false }, Sessions: r.mappings.Len}.Handle(mux)
		r.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go r.httpSrv.Serve(ln)
	}
	for _, rt := range r.routes {
		r.log.Info("relaying", "route", rt.idx, "listen", rt.conn.LocalAddr().String(), "upstream", rt.upstream.String())
	}
	r.log.Info("simple proxy serving", "routes", len(r.routes), "max_mappings", r.cfg.MaxMappings,
		"mapping_idle", r.cfg.MappingIdle.Duration, "rate_pps", r.cfg.RatePPS, "burst", r.cfg.Burst)
	r.loops.Add(len(r.routes) + 1)
	go r.janitor()
	for _, rt := range r.routes {
		go func() {
			defer r.loops.Done()
			r.readLoop(rt)
		}()
	}
	select {
	case <-ctx.Done():
	case <-r.closed:
	}
	r.Close()
	return nil
}

// Close stops the relay and ends every mapping. It is safe to call more than
// once, and without Run.
func (r *Relay) Close() {
	if r.closing.Swap(true) {
		return
	}
	close(r.closed)
	r.closeRoutes()
	if r.httpSrv != nil {
		r.httpSrv.Close()
	}
	// Stop the loops first, so no mapping is created behind our back, then end
	// the mappings: closing their upstream sockets ends their reply pumps.
	r.loops.Wait()
	var keys []mapKey
	r.mappings.Range(func(k mapKey, _ *mapping) bool { keys = append(keys, k); return true })
	for _, k := range keys {
		r.mappings.Delete(k)
	}
	r.pumps.Wait()
}

// readLoop reads a listener until it is closed.
func (r *Relay) readLoop(rt *route) {
	msgs := make([]udp.Message, batch)
	for i := range msgs {
		// One byte more than the largest datagram, so an oversized one shows as
		// such instead of being silently truncated to a plausible length.
		msgs[i].Buf = make([]byte, wire.MaxDatagram+1)
	}
	for {
		n, err := rt.conn.ReadBatch(msgs)
		now := mono.Now() // once per batch
		for i := 0; i < n; i++ {
			m := &msgs[i]
			r.fromSource(rt, m.Buf[:m.N], m.Addr, now)
		}
		if err != nil {
			if r.closing.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			r.warnEvery("read", now, "listener read failed", "route", rt.idx, "err", err)
			time.Sleep(10 * time.Millisecond) // never spin on a persistent error
		}
	}
}

// looksLikeWire reports whether dg could be a datagram of the suite. The relay
// holds no keys, so this is all it can check; the proxy authenticates.
func looksLikeWire(dg []byte) bool {
	return len(dg) >= MinDatagram && len(dg) <= wire.MaxDatagram && dg[0] == wire.Version
}

// fromSource relays one datagram that a router sent to route rt's listener.
// now is the batch's clock reading.
func (r *Relay) fromSource(rt *route, dg []byte, from netip.AddrPort, now int64) {
	rt.received.Inc()
	if !looksLikeWire(dg) {
		r.m.malformed.Inc()
		return
	}
	// Port 0 cannot be answered; the upstream itself sending here would make a
	// loop through the relay.
	if from.Port() == 0 || from == rt.upstream {
		r.m.badSource.Inc()
		return
	}
	k := mapKey{route: rt.idx, src: from}
	m, ok := r.mappings.Get(k, now)
	if !ok {
		if m = r.openMapping(rt, k, now); m == nil {
			return
		}
	}
	if !m.take(now, r.ratePerNs, r.burst) {
		m.limited.Add(1)
		r.m.rateLimited.Inc()
		return
	}
	if _, err := m.up.Write(dg); err != nil {
		if !r.retry(rt, k, m, dg, now, err) {
			return
		}
	}
	rt.relayedUp.Inc()
	m.upPkts.Add(1)
}

// retry handles a failed send to the upstream and reports whether the datagram
// went out after all. A mapping that expired or was evicted between the lookup
// and the send has a closed socket: the datagram gets a fresh mapping rather
// than being lost. Any other error (ECONNREFUSED reporting an earlier ICMP port
// unreachable from the proxy, mostly) loses the datagram, and the mapping stays.
func (r *Relay) retry(rt *route, k mapKey, m *mapping, dg []byte, now int64, err error) bool {
	if m.closed.Load() && !r.closing.Load() {
		if m = r.openMapping(rt, k, now); m != nil && !m.closed.Load() {
			_, err = m.up.Write(dg)
		}
	}
	if err != nil || m == nil {
		r.m.upstreamSendErrors.Inc()
		return false
	}
	return true
}

// openMapping creates the mapping of a new source, or returns nil (counted) when
// no upstream socket can be opened.
func (r *Relay) openMapping(rt *route, k mapKey, now int64) *mapping {
	m, created, err := r.mappings.GetOrCreate(k, now, func() (*mapping, error) { return r.newMapping(rt, k, now) })
	if err != nil {
		r.m.mappingErrors.Inc()
		r.warnEvery("mapping", now, "cannot open an upstream socket: datagram dropped",
			"route", rt.idx, "source", k.src.String(), "upstream", rt.upstream.String(), "err", err)
		return nil
	}
	if created {
		r.m.created.Inc()
		r.m.mappings.Add(1)
		r.log.Info("mapping created", "route", rt.idx, "source", k.src.String(),
			"via", m.up.LocalAddr().String(), "upstream", rt.upstream.String())
		r.pumps.Add(1)
		go m.pump()
	}
	return m
}

func (r *Relay) onRemove(k mapKey, m *mapping, why session.Reason) {
	m.close()
	r.m.mappings.Add(-1)
	switch why {
	case session.ReasonEvicted:
		r.m.evicted.Inc()
		r.log.Debug("mapping evicted: table full", "route", k.route, "source", k.src.String(),
			"up", m.upPkts.Load(), "down", m.downPkts.Load(), "max_mappings", r.cfg.MaxMappings)
	case session.ReasonIdle:
		r.m.expired.Inc()
		r.log.Info("mapping expired", "route", k.route, "source", k.src.String(),
			"up", m.upPkts.Load(), "down", m.downPkts.Load(), "age", mono.Since(m.created).Round(time.Millisecond))
	}
}

// janitor expires idle mappings and writes the periodic reports.
func (r *Relay) janitor() {
	defer r.loops.Done()
	sweep := time.NewTicker(r.sweepEvery)
	defer sweep.Stop()
	report := time.NewTicker(r.reportEvery)
	defer report.Stop()
	var lastEvicted uint64
	for {
		select {
		case <-r.closed:
			return
		case <-sweep.C:
			r.mappings.Sweep(mono.Now())
		case <-report.C:
			r.reportLimited()
			if ev := r.m.evicted.Load(); ev != lastEvicted {
				r.log.Warn("mapping table full: least recently used mappings evicted",
					"evicted", ev-lastEvicted, "in", r.reportEvery, "max_mappings", r.cfg.MaxMappings)
				lastEvicted = ev
			}
		}
	}
}

// reportLimited logs the sources that were rate limited since the last report:
// the worst few by name, the rest as a count, so that a flood from many sources
// costs a few log lines, not one per source.
func (r *Relay) reportLimited() {
	type hit struct {
		k mapKey
		n uint64
	}
	var hits []hit
	var total uint64
	r.mappings.Range(func(k mapKey, m *mapping) bool {
		if n := m.limited.Swap(0); n > 0 {
			hits = append(hits, hit{k, n})
			total += n
		}
		return true
	})
	if len(hits) == 0 {
		return
	}
	slices.SortFunc(hits, func(a, b hit) int { return cmp.Compare(b.n, a.n) })
	for _, h := range hits[:min(len(hits), reportTop)] {
		r.log.Warn("source rate limited", "route", h.k.route, "source", h.k.src.String(), "dropped", h.n,
			"in", r.reportEvery, "rate_pps", r.cfg.RatePPS, "burst", r.cfg.Burst)
	}
	if len(hits) > reportTop {
		r.log.Warn("more sources rate limited", "sources", len(hits)-reportTop, "dropped_total", total, "in", r.reportEvery)
	}
}

// warnEvery logs a warning of the given kind at most once per second, for
// errors that may repeat per datagram.
func (r *Relay) warnEvery(kind string, now int64, msg string, args ...any) {
	r.warnMu.Lock()
	last, seen := r.lastWarn[kind]
	ok := !seen || now-last >= int64(time.Second)
	if ok {
		r.lastWarn[kind] = now
	}
	r.warnMu.Unlock()
	if ok {
		r.log.Warn(msg, args...)
	}
}

// mapping is one source address on one route: its own upstream socket, its
// token bucket and its counts.
type mapping struct {
	relay   *Relay
	rt      *route
	key     mapKey
	up      *net.UDPConn // connected to rt.upstream
	created int64
	closed  atomic.Bool

	// The token bucket. Only the route's read loop takes tokens, so the lock is
	// uncontended; it is there so that the bucket stays correct if a route ever
	// gets several readers.
	mu     sync.Mutex
	tokens float64
	last   int64

	limited          atomic.Uint64 // rate-limited drops since the last report
	upPkts, downPkts atomic.Uint64
}

// newMapping opens the upstream socket of a new mapping. It runs with the
// table's shard locked: one socket and one connect, nothing slow.
//
// Upstream sockets are plain connected net.UDPConns rather than udp.Conns: a
// mapping carries one router uplink's traffic, a few hundred datagrams a second,
// so batching would find nothing to batch, while udp.Conn's preallocated
// syscall arrays (some 14 KB a socket) would cost over 100 MB at 10,000
// mappings. Read and Write on a connected net.UDPConn allocate nothing either.
func (r *Relay) newMapping(rt *route, k mapKey, now int64) (*mapping, error) {
	up, err := net.DialUDP("udp", nil, rt.upAddr)
	if err != nil {
		return nil, err
	}
	return &mapping{relay: r, rt: rt, key: k, up: up, created: now, tokens: r.burst, last: now}, nil
}

// take reports whether the source may have one more datagram relayed now.
func (m *mapping) take(now int64, ratePerNs, burst float64) bool {
	m.mu.Lock()
	if now > m.last {
		m.tokens += float64(now-m.last) * ratePerNs
		m.last = now
		if m.tokens > burst {
			m.tokens = burst
		}
	}
	ok := m.tokens >= 1
	if ok {
		m.tokens--
	}
	m.mu.Unlock()
	return ok
}

// pump reads what the proxy sends to this mapping and relays it to the source.
func (m *mapping) pump() {
	r := m.relay
	defer r.pumps.Done()
	buf := make([]byte, wire.MaxDatagram+1) // +1: see readLoop
	for {
		n, err := m.up.Read(buf)
		if err != nil {
			if m.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			r.m.upstreamRecvErrors.Inc()
			// ECONNREFUSED is the kernel reporting an ICMP port unreachable from
			// the proxy (it is down or restarting): keep listening. Anything else
			// is unexpected; pause so that it cannot spin.
			if !errors.Is(err, syscall.ECONNREFUSED) {
				r.warnEvery("upstream-read", mono.Now(), "upstream read failed", "route", m.key.route,
					"source", m.key.src.String(), "err", err)
				time.Sleep(10 * time.Millisecond)
			}
			continue
		}
		m.fromUpstream(buf[:n], mono.Now())
	}
}

// fromUpstream relays one datagram the proxy sent to this mapping back to its
// source, from the route's listener (the address the router sent to).
func (m *mapping) fromUpstream(dg []byte, now int64) {
	r := m.relay
	// The proxy is trusted more than the open internet, but the same check keeps
	// the relay from ever sending a router anything that is not wire format.
	if !looksLikeWire(dg) {
		r.m.malformedReply.Inc()
		return
	}
	if err := m.rt.conn.WriteTo(dg, m.key.src); err != nil {
		r.m.sendErrors.Inc()
		return
	}
	// Bookkeeping after the send: a reply keeps the mapping alive as well.
	r.mappings.Get(m.key, now)
	m.rt.relayedDown.Inc()
	m.downPkts.Add(1)
}

func (m *mapping) close() {
	if m.closed.Swap(true) {
		return
	}
	m.up.Close()
}
