// Package quality measures, per path of one session, what the receiving side
// gets of the far side's data: datagrams received, lost, late, and how far each
// path lags behind the fastest one. The figures go back to the sender in
// wire.TypeQuality reports, one per path on that path, every report interval;
// the router adapts its RAIC scheme to them (router/auto.go).
//
// Everything is computed from the packet IDs and shard descriptors the data
// already carries, in a fixed window of the last Window packet IDs: no
// timestamps on the wire, nothing allocated per datagram, one small mutex per
// session.
//
// How loss is found. A packet's datagrams are told apart by their shard
// descriptor (index, and fragment for X-fragments), mapped to one of 16 bits.
// Each path learns which bits it carries (the union of what arrived on it over
// the last two report intervals: every bit for copies, its share of the shards
// for codes spread over the uplinks). When a packet ID leaves the window, each
// path is charged one lost datagram for every bit it carries that the packet
// had (what any path received of it, and every shard of an unfragmented coded
// packet, whose count the descriptor says) but that never arrived on it.
// Control messages take packet IDs too, but never reach a tracker, so they are
// not mistaken for gaps. A packet lost on every path is seen by none and not
// counted (the figures are per path, for choosing a scheme). Right after the
// sender moves shards between paths (an uplink went down) the carried bits lag
// by up to two intervals, which can overstate a path's loss meanwhile; a
// change of scheme (another shard count or k) starts the carried bits over.
package quality

import (
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/wire"
)

// Window is how many packet IDs are tracked (64: a second at 60 packets/s): a
// datagram that arrives more than this many packets after the newest one is
// counted late (and it was counted lost when its packet left the window).
const Window = 64

// MaxPaths bounds the paths tracked per session (a router has up to four
// uplinks); a new path takes the place of
// the one heard from least recently.
const MaxPaths = 4

// LateAfter is how long after the first datagram of a packet (on any path) a
// datagram of the same packet counts as late: a game takes the first copy, so a
// copy this far behind is of no use.
const LateAfter = 50 * time.Millisecond

// DefaultInterval is the report interval when none is configured;
// MinInterval and MaxInterval bound the configured one.
const (
	DefaultInterval = time.Second
	MinInterval     = 100 * time.Millisecond
	MaxInterval     = 10 * time.Second
)

// A packet of the window is in two rings, each made on first need: firsts
// (when its first datagram arrived, on any path, in ticks; 136 bytes with the
// pointer to the other) and metas (what it has and its scheme's shape; 256
// bytes). Neither holds a packet ID: a filled slot (Tracker.filled) always
// holds the one ID of the window that maps to it, since advance empties a
// slot as its ID leaves. The bits each path delivered of it are in that
// path's got.
type rings struct {
	firsts [Window]uint16
	metas  *[Window]meta // nil until needed
}

// A tick is the unit of firsts: 64 µs, so a lag is known to 64 µs, and a
// uint16 of them wraps after 4.19 s. A datagram that comes more than that
// after its packet's first one is read as coming that much less late: it is
// still late (past LateAfter) unless it lands within 50 ms of a wrap, and
// only a path seconds behind, of a session of under 15 packets a second
// (so that its packet is still in the window), sends one.
const tick = 64 * time.Microsecond

// ticks is now (ns of the clock) in ticks, modulo 2^16.
func ticks(now int64) uint16 { return uint16(now / int64(tick)) }

type meta struct {
	all   uint16 // the bits an unfragmented coded packet has
	shape uint16 // the scheme's shape when it arrived (Tracker.shape)
}

// path is one path's figures and what it delivered of each packet of the
// window: bit 0 of a slot's bits in one (bit i for ring slot i), the other
// bits in more, made when the first datagram of another bit arrives (a
// shard of a code, a second X-fragment). A path of unfragmented copies (most
// of a proxy's) never makes it: 96 bytes a path, not 208.
type path[K comparable] struct {
	key                  K
	last                 int64
	lagSum, lagMax       int64
	received, lost, late uint32
	lagN                 uint32
	carried, carriedPrev uint16
	one                  uint64
	more                 *[Window]uint16
}

// got returns the bits that arrived on p of ring slot i.
func (p *path[K]) got(i uint64) uint16 {
	g := uint16(p.one >> i & 1)
	if p.more != nil {
		g |= p.more[i]
	}
	return g
}

// add records bits b arriving on p for ring slot i.
func (p *path[K]) add(i uint64, b uint16) {
	if b&1 != 0 {
		p.one |= 1 << i
	}
	if b&^1 != 0 {
		if p.more == nil {
			p.more = new([Window]uint16)
		}
		p.more[i] |= b &^ 1
	}
}

// drop forgets what arrived on p for ring slot i.
func (p *path[K]) drop(i uint64) {
	p.one &^= 1 << i
	if p.more != nil {
		p.more[i] = 0
	}
}

// Tracker keeps the figures of one session's paths, each path known by a key:
// the proxy uses the router's address, the router its uplink index. The zero
// value is ready.
//
// The rings are made when something needs them. firsts: the second datagram
// of a packet (another path's copy, a duplicate, another shard or fragment:
// the time of its first one gives the lag). Both: an unfragmented coded
// datagram (the bits its packet has) or a change of scheme while packets are
// in the window (their shape). A session whose packets each arrive once, as
// unfragmented copies (one uplink, RAIC-1: most of a proxy's), makes neither:
// its tracker is 72 bytes and its path 96, not 576 and 208; one of copies
// over two uplinks makes firsts only (144 bytes, not 512). The packets already in the window when
// firsts is made take that moment as their first datagram's time, so their
// later datagrams count a lag from then (at most one window of packets, once
// a session); what was received and lost is counted as before.
type Tracker[K comparable] struct {
	mu sync.Mutex
	// paths grows as paths appear, to MaxPaths at most (a session of one
	// uplink holds one).
	paths   []path[K]
	rings   *rings // nil until needed (see above)
	filled  uint64 // bit i: ring slot i holds a packet (so Window ≤ 64, checked below)
	highest uint64
	last    atomic.Int64 // when the last reports were taken
	packets uint32
	shape   uint16 // Count and K of the last data datagram: the scheme's shape
}

var _ [64 - Window]struct{} // Tracker.filled has a bit per slot

// makeFirsts makes firsts, the packets in the window taking now (ticks) as
// their first datagram's time.
func (t *Tracker[K]) makeFirsts(nowT uint16) {
	t.rings = new(rings)
	for f := t.filled; f != 0; f &= f - 1 {
		t.rings.firsts[bits.TrailingZeros64(f)] = nowT
	}
}

// metas is the metas ring, nil when not made.
func (t *Tracker[K]) metas() *[Window]meta {
	if t.rings == nil {
		return nil
	}
	return t.rings.metas
}

// makeRings makes the rings not made yet, the packets in the window taking
// shape as theirs (no coded packet was in it, or metas would be made) and
// now (ticks) as their first datagram's time if firsts is new.
func (t *Tracker[K]) makeRings(shape uint16, nowT uint16) {
	if t.rings == nil {
		t.makeFirsts(nowT)
	}
	if t.rings.metas == nil {
		m := new([Window]meta)
		for f := t.filled; f != 0; f &= f - 1 {
			m[bits.TrailingZeros64(f)] = meta{shape: shape}
		}
		t.rings.metas = m
	}
}

// Report is the figures of one path over one interval.
type Report[K comparable] struct {
	Key K
	Q   wire.Quality
}

// shardBit maps a datagram's descriptor to its bit: the shard index, plus the
// fragment index times the shard count, so each datagram of a packet has its
// own bit (modulo 16).
func shardBit(d wire.Desc) uint16 {
	n := int(d.Count)
	if n == 0 {
		n = 1
	}
	return 1 << ((int(d.Index) + n*int(d.Frag&0x7f)) % 16)
}

// Note records one data datagram of packet pid, with descriptor d, that
// arrived on path k at now (duplicates too: they are what the slower paths
// deliver).
func (t *Tracker[K]) Note(k K, pid uint64, d wire.Desc, now int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.last.Load() == 0 {
		t.last.Store(now)
	}
	nowT := ticks(now)
	if sh := uint16(d.Count)<<8 | uint16(d.K); sh != t.shape {
		// The sender changed its scheme: which bits a path carries is to be
		// learned again, or the old scheme's bits would count as lost.
		if t.metas() == nil && t.filled != 0 {
			t.makeRings(t.shape, nowT) // the packets in the window are of the old shape
		}
		t.shape = sh
		for i := range t.paths {
			t.paths[i].carried, t.paths[i].carriedPrev = 0, 0
		}
	}
	p := t.path(k, now)
	ps := &t.paths[p]
	ps.received++
	if t.highest == 0 {
		t.highest = pid - 1
	}
	if pid+Window <= t.highest {
		ps.late++ // long after its packet left the window (and was counted lost)
		return
	}
	if pid > t.highest {
		t.advance(pid)
	}
	i := pid % Window
	coded := d.Frag == 0x80 && d.Count > 1 // one fragment only, coded: all its shards are known
	switch {
	case t.filled&(1<<i) == 0:
		if t.rings != nil {
			t.rings.firsts[i] = nowT
			if m := t.rings.metas; m != nil {
				m[i] = meta{shape: t.shape}
			}
		}
		t.filled |= 1 << i
		t.packets++
	case t.rings == nil:
		t.makeFirsts(nowT) // a second datagram of the packet
	}
	if coded && t.metas() == nil {
		t.makeRings(t.shape, nowT)
	}
	var since int64 // ns since its first datagram, to the tick
	if t.rings != nil {
		since = int64(nowT-t.rings.firsts[i]) * int64(tick)
	}
	if coded {
		t.rings.metas[i].all |= uint16(1<<min(int(d.Count), 16) - 1)
	}
	b := shardBit(d)
	if ps.got(i) == 0 {
		lag := since
		ps.lagSum += lag
		ps.lagN++
		ps.lagMax = max(ps.lagMax, lag)
	}
	if since > int64(LateAfter) {
		ps.late++
	}
	ps.add(i, b)
	ps.carried |= b
}

// path returns the index of path k, taking a slot for it when it is new.
func (t *Tracker[K]) path(k K, now int64) int {
	oldest := 0
	for i := range t.paths {
		p := &t.paths[i]
		if p.key == k {
			p.last = now
			return i
		}
		if p.last < t.paths[oldest].last {
			oldest = i
		}
	}
	if len(t.paths) < MaxPaths {
		// A fresh index: no slot of the ring has bits of it.
		t.paths = append(t.paths, path[K]{key: k, last: now})
		return len(t.paths) - 1
	}
	// The new path starts with no bits (its more, if any, is kept, emptied).
	m := t.paths[oldest].more
	if m != nil {
		*m = [Window]uint16{}
	}
	t.paths[oldest] = path[K]{key: k, last: now, more: m}
	return oldest
}

// advance moves the window's newest packet ID to pid, charging each path for
// what the packets leaving the window lacked.
func (t *Tracker[K]) advance(pid uint64) {
	steps := min(pid-t.highest, Window)
	for id := pid - steps + 1; id <= pid; id++ {
		i := id % Window
		if t.filled&(1<<i) != 0 {
			t.settle(i)
		}
		if t.rings != nil {
			t.rings.firsts[i] = 0
			if m := t.rings.metas; m != nil {
				m[i] = meta{}
			}
		}
		for j := range t.paths {
			t.paths[j].drop(i)
		}
		t.filled &^= 1 << i
	}
	t.highest = pid
}

func (t *Tracker[K]) settle(i uint64) {
	var had uint16
	if m := t.metas(); m != nil {
		s := &m[i]
		if s.shape != t.shape {
			return // sent before a change of scheme: the paths' carried bits are the new scheme's
		}
		had = s.all
	} // else it is of the current shape, and uncoded (or metas would be made)
	for j := range t.paths {
		had |= t.paths[j].got(i)
	}
	for j := range t.paths {
		p := &t.paths[j]
		if miss := had & (p.carried | p.carriedPrev) &^ p.got(i); miss != 0 {
			p.lost += uint32(bits.OnesCount16(miss))
		}
	}
}

// Due reports, to one caller, that reports are due: every interval since the
// last. Lock-free, for the receive path.
func (t *Tracker[K]) Due(now int64, interval time.Duration) bool {
	last := t.last.Load()
	return last != 0 && now-last >= int64(interval) && t.last.CompareAndSwap(last, now)
}

// Take fills out with the figures of each path heard from since the last Take
// (or whose datagrams were lost meanwhile), resets them for the next interval,
// and returns how many it filled. Figures of the packets still in the window
// are left for the next interval.
func (t *Tracker[K]) Take(now int64, interval time.Duration, out *[MaxPaths]Report[K]) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for i := range t.paths {
		p := &t.paths[i]
		if p.received+p.lost > 0 {
			q := wire.Quality{IntervalMs: uint16(min(interval.Milliseconds(), 65535)),
				Received: p.received, Lost: p.lost, Late: p.late, Packets: t.packets}
			if p.lagN > 0 {
				q.LagMeanUs = uint32(min(p.lagSum/int64(p.lagN)/1000, 1<<32-1))
			}
			q.LagMaxUs = uint32(min(p.lagMax/1000, 1<<32-1))
			out[n] = Report[K]{Key: p.key, Q: q}
			n++
		}
		p.received, p.lost, p.late, p.lagSum, p.lagMax, p.lagN = 0, 0, 0, 0, 0, 0
		p.carriedPrev, p.carried = p.carried, 0
	}
	t.packets = 0
	return n
}
