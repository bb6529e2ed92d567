package quality

import (
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/wire"
)

// refTracker is the tracker as it was before its arrays were made on first use: a full ring and 64 bits per slot and path, always. The trace test holds the Tracker to its figures.
type refSlot struct {
	first uint16 // when its first datagram arrived, on any path, in ticks (the tracker's unit of time, kept alike)
	all   uint16 // the bits an unfragmented coded packet has
	shape uint16 // the scheme's shape when it arrived (Tracker.shape)
}

type refPath[K comparable] struct {
	key                  K
	last                 int64
	carried, carriedPrev uint16
	received, lost, late uint32
	lagSum, lagMax       int64
	lagN                 uint32
	got                  [Window]uint16 // per refSlot of the ring: the bits that arrived on this path
}

// Tracker keeps the figures of one session's paths, each path known by a key:
// the proxy uses the router's address, the router its uplink index. The zero
// value is ready.
type refTracker[K comparable] struct {
	mu sync.Mutex
	// paths grows as paths appear, to MaxPaths at most (a session of one
	// uplink holds one).
	paths   []refPath[K]
	ring    [Window]refSlot
	filled  uint64 // bit i: ring[i] holds a packet (so Window ≤ 64, checked below)
	highest uint64
	packets uint32
	shape   uint16       // Count and K of the last data datagram: the scheme's shape
	last    atomic.Int64 // when the last reports were taken
}

// Note records one data datagram of packet pid, with descriptor d, that
// arrived on path k at now (duplicates too: they are what the slower paths
// deliver).
func (t *refTracker[K]) Note(k K, pid uint64, d wire.Desc, now int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.last.Load() == 0 {
		t.last.Store(now)
	}
	if sh := uint16(d.Count)<<8 | uint16(d.K); sh != t.shape {
		// The sender changed its scheme: which bits a path carries is to be
		// learned again, or the old scheme's bits would count as lost.
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
	s := &t.ring[i]
	nowT := ticks(now)
	if t.filled&(1<<i) == 0 {
		*s = refSlot{first: nowT, shape: t.shape}
		t.filled |= 1 << i
		t.packets++
	}
	// ns since its first datagram, to the tick
	since := int64(nowT-s.first) * int64(tick)
	if d.Frag == 0x80 && d.Count > 1 { // one fragment only, coded: all its shards are known
		s.all |= uint16(1<<min(int(d.Count), 16) - 1)
	}
	b := shardBit(d)
	if ps.got[i] == 0 {
		lag := since
		ps.lagSum += lag
		ps.lagN++
		ps.lagMax = max(ps.lagMax, lag)
	}
	if since > int64(LateAfter) {
		ps.late++
	}
	ps.got[i] |= b
	ps.carried |= b
}

// path returns the index of path k, taking a refSlot for it when it is new.
func (t *refTracker[K]) path(k K, now int64) int {
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
		// A fresh index: no refSlot of the ring has bits of it.
		t.paths = append(t.paths, refPath[K]{key: k, last: now})
		return len(t.paths) - 1
	}
	t.paths[oldest] = refPath[K]{key: k, last: now} // its got is empty too
	return oldest
}

// advance moves the window's newest packet ID to pid, charging each path for
// what the packets leaving the window lacked.
func (t *refTracker[K]) advance(pid uint64) {
	steps := min(pid-t.highest, Window)
	for id := pid - steps + 1; id <= pid; id++ {
		i := id % Window
		if t.filled&(1<<i) != 0 {
			t.settle(i)
		}
		t.ring[i] = refSlot{}
		for j := range t.paths {
			t.paths[j].got[i] = 0
		}
		t.filled &^= 1 << i
	}
	t.highest = pid
}

func (t *refTracker[K]) settle(i uint64) {
	s := &t.ring[i]
	if s.shape != t.shape {
		return // sent before a change of scheme: the paths' carried bits are the new scheme's
	}
	had := s.all
	for j := range t.paths {
		had |= t.paths[j].got[i]
	}
	for j := range t.paths {
		p := &t.paths[j]
		if miss := had & (p.carried | p.carriedPrev) &^ p.got[i]; miss != 0 {
			p.lost += uint32(bits.OnesCount16(miss))
		}
	}
}

// Due reports, to one caller, that reports are due: every interval since the
// last. Lock-free, for the receive path.
func (t *refTracker[K]) Due(now int64, interval time.Duration) bool {
	last := t.last.Load()
	return last != 0 && now-last >= int64(interval) && t.last.CompareAndSwap(last, now)
}

// Take fills out with the figures of each path heard from since the last Take
// (or whose datagrams were lost meanwhile), resets them for the next interval,
// and returns how many it filled. Figures of the packets still in the window
// are left for the next interval.
func (t *refTracker[K]) Take(now int64, interval time.Duration, out *[MaxPaths]Report[K]) int {
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
