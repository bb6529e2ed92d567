// Package peer keeps the paths of a peer session: two routers, with N and M
// uplinks, that carry each packet over every pair of (local uplink, remote
// address), up to N×M paths.
//
// A Paths table knows the local uplinks by index and the remote side by the
// addresses its datagrams come from. Remote addresses enter the table three
// ways: written in the config (static; kept for ever), told by a rendezvous
// service (introduced; forgotten unless heard from), and learned from
// datagrams that authenticated (learned; forgotten after AddrIdle of silence).
// Only the caller can tell that a datagram authenticated, so the table never
// sees raw input: Heard is called after the peer session opened a datagram.
//
// NAT rebinding: a home NAT may give the remote uplink a new public port (or a
// DHCP lease a new address) mid-call. The remote side says which of its
// uplinks each keepalive left from, so when an authenticated keepalive of
// remote uplink r arrives from an address the table did not know, every other
// learned address of r that has been quiet for RebindQuiet is replaced at once
// instead of lingering until AddrIdle. Addresses of r that are still heard
// (a symmetric NAT gives one uplink a different address per destination) stay.
//
// Each path has its own uplink.Health, fed by keepalives sent on that path and
// their pongs. The send path asks Targets for the paths that are up; it reads
// an immutable snapshot through an atomic pointer and each path's lock-free
// health, so it takes no lock and allocates nothing.
package peer

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/uplink"
)

// Sender sends one datagram on local uplink i to addr. It must not keep b.
// The uplink set of the router implements it; tests use a fake.
type Sender interface {
	SendTo(uplink int, b []byte, to netip.AddrPort) error
}

// Limits.
const (
	MaxUplinks = 16 // local uplinks per table
	// DefaultMaxRemote bounds the remote addresses: a peer with 4 uplinks
	// behind symmetric NATs shows up to 4 per local uplink.
	DefaultMaxRemote   = 16
	DefaultAddrIdle    = 10 * time.Second
	DefaultRebindQuiet = time.Second
)

// Kind says how a remote address entered the table.
type Kind uint8

// Kinds of remote addresses.
const (
	Learned    Kind = iota // from an authenticated datagram
	Introduced             // from the rendezvous service
	Static                 // from the config; never expires
)

func (k Kind) String() string {
	switch k {
	case Learned:
		return "learned"
	case Introduced:
		return "introduced"
	case Static:
		return "static"
	}
	return "unknown"
}

// Config tunes a Paths table. Zero fields take the defaults.
type Config struct {
	Uplinks     int           // local uplinks, 1..MaxUplinks
	MaxRemote   int           // remote addresses kept; default DefaultMaxRemote
	AddrIdle    time.Duration // a non-static address unheard this long is dropped
	RebindQuiet time.Duration // see the package comment
	Health      uplink.HealthConfig
}

// Path is one (local uplink, remote address) pair.
type Path struct {
	Local  int
	Remote netip.AddrPort
}

func (p Path) String() string { return fmt.Sprintf("%d→%s", p.Local, p.Remote) }

// path is the state of one Path. Its fields other than health are written
// under Paths.mu only.
type path struct {
	Path
	health *uplink.Health
	seq    uint32 // last keepalive sequence sent on this path
}

// remote is one address of the far side.
type remote struct {
	addr      netip.AddrPort
	kind      Kind
	uplink    int   // the far side's uplink index; -1 when it has not said
	lastHeard int64 // last authenticated datagram, or when it was added
	paths     []*path
}

// Counters of a table; read them with Counters.
type Counters struct {
	Learned  uint64 // addresses learned from authenticated datagrams
	Rebinds  uint64 // addresses replaced because the far uplink moved
	Expired  uint64 // addresses dropped after AddrIdle
	Evicted  uint64 // addresses dropped because the table was full
	Refused  uint64 // addresses not added: the table was full of static ones
	Fallback uint64 // Targets calls that found no path up and used all of them
}

// Paths is the path table of one peer session. Create it with New.
type Paths struct {
	cfg Config

	mu      sync.Mutex
	remotes []*remote
	c       Counters

	snap     atomic.Pointer[[]*path] // every path, rebuilt on each change
	fallback atomic.Uint64
}

// New returns an empty table.
func New(cfg Config) (*Paths, error) {
	if cfg.Uplinks < 1 || cfg.Uplinks > MaxUplinks {
		return nil, fmt.Errorf("peer: %d local uplinks, want 1 to %d", cfg.Uplinks, MaxUplinks)
	}
	if cfg.MaxRemote <= 0 {
		cfg.MaxRemote = DefaultMaxRemote
	}
	if cfg.AddrIdle <= 0 {
		cfg.AddrIdle = DefaultAddrIdle
	}
	if cfg.RebindQuiet <= 0 {
		cfg.RebindQuiet = DefaultRebindQuiet
	}
	p := &Paths{cfg: cfg}
	p.publish()
	return p, nil
}

// Uplinks returns the number of local uplinks.
func (p *Paths) Uplinks() int { return p.cfg.Uplinks }

// ErrFull is returned by Add when every slot holds a static address.
var ErrFull = errors.New("peer: remote address table full of static addresses")

// Add puts addr in the table as kind (a kind can only be raised: a learned
// address that is also configured becomes static). remoteUplink is the far
// side's uplink index, -1 when unknown.
func (p *Paths) Add(addr netip.AddrPort, kind Kind, remoteUplink int, now int64) error {
	addr = unmap(addr)
	p.mu.Lock()
	defer p.mu.Unlock()
	if r := p.find(addr); r != nil {
		if kind > r.kind {
			r.kind = kind
		}
		if remoteUplink >= 0 {
			r.uplink = remoteUplink
		}
		r.lastHeard = now
		return nil
	}
	if !p.makeRoom() {
		p.c.Refused++
		return ErrFull
	}
	p.insert(addr, kind, remoteUplink, now)
	return nil
}

// Heard records an authenticated datagram that arrived on local uplink local
// from addr; remoteUplink is the sender's uplink index when the datagram said
// (keepalives do), else -1. It learns new addresses and follows rebinding. It
// reports whether addr was new to the table.
func (p *Paths) Heard(local int, addr netip.AddrPort, remoteUplink int, now int64) bool {
	addr = unmap(addr)
	p.mu.Lock()
	defer p.mu.Unlock()
	if r := p.find(addr); r != nil {
		r.lastHeard = now
		if remoteUplink >= 0 {
			r.uplink = remoteUplink
		}
		return false
	}
	if remoteUplink >= 0 {
		// The far uplink may have moved: drop its quiet learned addresses.
		quiet := int64(p.cfg.RebindQuiet)
		kept := p.remotes[:0]
		for _, r := range p.remotes {
			if r.kind != Static && r.uplink == remoteUplink && now-r.lastHeard >= quiet {
				p.c.Rebinds++
				continue
			}
			kept = append(kept, r)
		}
		clear(p.remotes[len(kept):])
		p.remotes = kept
	}
	if !p.makeRoom() {
		p.c.Refused++
		p.publish()
		return false
	}
	p.insert(addr, Learned, remoteUplink, now)
	p.c.Learned++
	return true
}

// Expire drops non-static addresses unheard for AddrIdle. The keepalive timer
// calls it.
func (p *Paths) Expire(now int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	idle := int64(p.cfg.AddrIdle)
	kept := p.remotes[:0]
	for _, r := range p.remotes {
		if r.kind != Static && now-r.lastHeard > idle {
			p.c.Expired++
			continue
		}
		kept = append(kept, r)
	}
	if len(kept) != len(p.remotes) {
		clear(p.remotes[len(kept):])
		p.remotes = kept
		p.publish()
	}
}

// find returns the remote with addr; p.mu is held.
func (p *Paths) find(addr netip.AddrPort) *remote {
	for _, r := range p.remotes {
		if r.addr == addr {
			return r
		}
	}
	return nil
}

// makeRoom evicts the least recently heard non-static address if the table is
// full; it reports whether there is room. p.mu is held.
func (p *Paths) makeRoom() bool {
	if len(p.remotes) < p.cfg.MaxRemote {
		return true
	}
	victim := -1
	for i, r := range p.remotes {
		if r.kind == Static {
			continue
		}
		if victim < 0 || r.lastHeard < p.remotes[victim].lastHeard {
			victim = i
		}
	}
	if victim < 0 {
		return false
	}
	p.remotes = append(p.remotes[:victim], p.remotes[victim+1:]...)
	p.c.Evicted++
	return true
}

// insert adds a remote with one path per local uplink and publishes. p.mu is held.
func (p *Paths) insert(addr netip.AddrPort, kind Kind, remoteUplink int, now int64) {
	r := &remote{addr: addr, kind: kind, uplink: remoteUplink, lastHeard: now}
	for i := 0; i < p.cfg.Uplinks; i++ {
		r.paths = append(r.paths, &path{Path: Path{Local: i, Remote: addr}, health: uplink.NewHealth(p.cfg.Health)})
	}
	p.remotes = append(p.remotes, r)
	p.publish()
}

// publish rebuilds the send path's snapshot. p.mu is held (or p is new).
func (p *Paths) publish() {
	all := make([]*path, 0, len(p.remotes)*p.cfg.Uplinks)
	for _, r := range p.remotes {
		all = append(all, r.paths...)
	}
	p.snap.Store(&all)
}

// Targets appends to dst the paths a datagram should take at now: every path
// that is up, or every path when none is (so that a datagram still goes out
// while the health catches up, and its pongs can bring paths back). It takes
// no lock and allocates nothing when dst has room.
func (p *Paths) Targets(now int64, dst []Path) []Path {
	all := *p.snap.Load()
	n := len(dst)
	for _, ps := range all {
		if ps.health.Up(now) {
			dst = append(dst, ps.Path)
		}
	}
	if len(dst) == n && len(all) > 0 {
		p.fallback.Add(1)
		for _, ps := range all {
			dst = append(dst, ps.Path)
		}
	}
	return dst
}

// Len returns the number of paths.
func (p *Paths) Len() int { return len(*p.snap.Load()) }

// PingsDue calls fn for every path whose keepalive is due at now, with the
// sequence number to send, and records the ping as sent. fn runs under the
// table's lock: it should only build and send the keepalive.
func (p *Paths) PingsDue(now int64, fn func(pa Path, seq uint32)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.remotes {
		for _, ps := range r.paths {
			if !ps.health.PingDue(now) {
				continue
			}
			ps.seq++
			ps.health.OnPingSent(ps.seq, now)
			fn(ps.Path, ps.seq)
		}
	}
}

// OnPong feeds an authenticated pong that arrived on local uplink local from
// addr, answering keepalive seq sent at sentAt; peerTime is the far side's
// clock when it answered (0 if none). A pong from an unknown address is
// ignored: it can only answer a path the table has forgotten.
func (p *Paths) OnPong(local int, addr netip.AddrPort, seq uint32, sentAt, peerTime, now int64) {
	addr = unmap(addr)
	p.mu.Lock()
	r := p.find(addr)
	var ps *path
	if r != nil && local >= 0 && local < len(r.paths) {
		ps = r.paths[local]
	}
	p.mu.Unlock()
	if ps != nil {
		ps.health.OnPong(seq, sentAt, peerTime, now)
	}
}

// PathStats is one path's state for reports and metrics.
type PathStats struct {
	Path
	Kind         Kind
	RemoteUplink int // -1 when the far side has not said
	Health       uplink.Stats
}

// Stats returns every path's state.
func (p *Paths) Stats(now int64) []PathStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []PathStats
	for _, r := range p.remotes {
		for _, ps := range r.paths {
			out = append(out, PathStats{Path: ps.Path, Kind: r.kind, RemoteUplink: r.uplink, Health: ps.health.Stats(now)})
		}
	}
	return out
}

// Counters returns the table's counters.
func (p *Paths) Counters() Counters {
	p.mu.Lock()
	c := p.c
	p.mu.Unlock()
	c.Fallback = p.fallback.Load()
	return c
}

// unmap turns an IPv4-mapped IPv6 address (as a dual-stack socket reports it)
// into plain IPv4, so one remote is one key.
func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
