// Package session is a bounded, sharded table of per-flow state, keyed by any
// comparable key (a client address pair, a session ID).
//
// The per-packet path does one Get: a read lock on one of N shards, a map
// lookup, and an atomic store of the last-use time. There is no global lock,
// so packets of different sessions on different cores do not serialise, and
// readers of one shard do not block each other. Inserts and sweeps take a
// shard's write lock; they happen once per session, not per packet.
//
// The table is bounded (the design rule for every table an attacker or a busy
// LAN can grow): when it is full, an insert evicts an old entry and counts it.
package session

import (
	"sync"
	"sync/atomic"
	"time"
)

// DefaultShards is the shard count used when Config.Shards is 0.
const DefaultShards = 16

// DefaultMaxEntries is the bound used when Config.MaxEntries is 0 or less: the
// table is never unbounded.
const DefaultMaxEntries = 1 << 16

// Reason tells OnRemove why an entry left the table.
type Reason int

const (
	// ReasonEvicted: the table was full and the entry was the least recently
	// used one chosen to make room.
	ReasonEvicted Reason = iota
	// ReasonIdle: Sweep found the entry unused for longer than IdleTimeout.
	ReasonIdle
	// ReasonDeleted: Delete removed it.
	ReasonDeleted
)

func (r Reason) String() string {
	switch r {
	case ReasonEvicted:
		return "evicted"
	case ReasonIdle:
		return "idle"
	case ReasonDeleted:
		return "deleted"
	}
	return "unknown"
}

// Config configures a Table.
type Config[K comparable, V any] struct {
	// MaxEntries is the total bound. When the table is full, inserting evicts
	// the least recently used entry (approximately: see Table) and counts it in
	// Stats.Evicted. 0 or less means DefaultMaxEntries.
	MaxEntries int
	// IdleTimeout is how long an entry may go untouched before Sweep removes it
	// (counted in Stats.Expired). 0 means never.
	IdleTimeout time.Duration
	// Shards is the number of independently locked parts; rounded up to a
	// power of two, default DefaultShards. More shards mean less contention and
	// cheaper eviction scans.
	Shards int
	// Hash chooses a key's shard. It should spread keys evenly and is required;
	// if it is nil every key lands in one shard, which is correct but slow.
	Hash func(K) uint64
	// OnRemove, if set, is called for every entry that leaves the table. It is
	// called without any table lock held, so it may call back into the table.
	OnRemove func(k K, v V, why Reason)
}

// Stats counts what happened to the table since it was created.
type Stats struct {
	Entries  uint64 // entries now in the table
	Inserted uint64 // entries created by GetOrCreate
	Evicted  uint64 // entries removed to make room (ReasonEvicted)
	Expired  uint64 // entries removed by Sweep (ReasonIdle)
	Deleted  uint64 // entries removed by Delete (ReasonDeleted)
}

type entry[K comparable, V any] struct {
	key     K
	val     V
	lastUse atomic.Int64 // mono ns; written under a read lock, hence atomic
}

// touch moves lastUse forward to now. Reading first avoids dirtying the cache
// line when a batch of packets of one session shares one clock reading.
func (e *entry[K, V]) touch(now int64) {
	if old := e.lastUse.Load(); now > old {
		e.lastUse.CompareAndSwap(old, now) // losing to a concurrent touch is fine
	}
}

type shard[K comparable, V any] struct {
	mu sync.RWMutex
	m  map[K]*entry[K, V]
	// Keep each shard's lock on its own cache lines so that readers of one
	// shard do not invalidate the lock word of the next.
	_ [128 - 32]byte
}

// Table is a bounded map split into shards, each with its own RWMutex. All
// methods are safe for concurrent use.
//
// Eviction is least-recently-used per shard: when the table is full, an insert
// removes the entry with the oldest last-use time from the shard the new key
// hashes to, found by scanning that shard (inserts are rare; the scan costs
// MaxEntries/Shards steps, so give large tables more shards). If that shard is
// empty, the oldest entry of the next non-empty shard goes instead. With one
// shard, eviction is exact LRU. Concurrent inserts into empty shards may exceed
// MaxEntries by at most one entry per concurrent inserter, for the moment until
// each has evicted its victim.
type Table[K comparable, V any] struct {
	shards     []shard[K, V]
	mask       uint64
	maxEntries int64
	idle       int64
	hash       func(K) uint64
	onRemove   func(K, V, Reason)

	count    atomic.Int64 // entries, plus inserts not yet matched by an eviction
	inserted atomic.Uint64
	evicted  atomic.Uint64
	expired  atomic.Uint64
	deleted  atomic.Uint64
}

// NewTable returns an empty table configured by cfg.
func NewTable[K comparable, V any](cfg Config[K, V]) *Table[K, V] {
	n := cfg.Shards
	if n <= 0 {
		n = DefaultShards
	}
	p := 1
	for p < n && p < 1<<16 {
		p <<= 1
	}
	maxEntries := cfg.MaxEntries
	if maxEntries <= 0 {
		maxEntries = DefaultMaxEntries
	}
	t := &Table[K, V]{
		shards:     make([]shard[K, V], p),
		mask:       uint64(p - 1),
		maxEntries: int64(maxEntries),
		idle:       int64(cfg.IdleTimeout),
		hash:       cfg.Hash,
		onRemove:   cfg.OnRemove,
	}
	if t.hash == nil {
		t.hash = func(K) uint64 { return 0 }
	}
	for i := range t.shards {
		t.shards[i].m = make(map[K]*entry[K, V])
	}
	return t
}

func (t *Table[K, V]) shardFor(k K) *shard[K, V] {
	return &t.shards[t.shardIndex(k)]
}

func (t *Table[K, V]) shardIndex(k K) int { return int(t.hash(k) & t.mask) }

// Get returns the value for k and records now (mono ns) as its last use. It
// does not allocate.
func (t *Table[K, V]) Get(k K, now int64) (V, bool) {
	s := t.shardFor(k)
	s.mu.RLock()
	e, ok := s.m[k]
	if !ok {
		s.mu.RUnlock()
		var zero V
		return zero, false
	}
	e.touch(now)
	v := e.val
	s.mu.RUnlock()
	return v, true
}

// Peek returns the value for k without touching its last-use time.
func (t *Table[K, V]) Peek(k K) (V, bool) {
	s := t.shardFor(k)
	s.mu.RLock()
	e, ok := s.m[k]
	var v V
	if ok {
		v = e.val
	}
	s.mu.RUnlock()
	return v, ok
}

// Entry is what PeekEntry found: its value, and a way to touch it later
// without a second lookup. The zero Entry has the zero value and touches
// nothing. Touching an entry removed since is harmless.
type Entry[K comparable, V any] struct{ e *entry[K, V] }

// Value is the entry's value.
func (en Entry[K, V]) Value() V {
	if en.e == nil {
		var zero V
		return zero
	}
	return en.e.val
}

// Touch moves the entry's last use forward to now, as Get does.
func (en Entry[K, V]) Touch(now int64) {
	if en.e != nil {
		en.e.touch(now)
	}
}

// PeekEntry is Peek that also returns the entry, for a caller that decides
// after the lookup whether the use counts (Entry.Touch): one lookup, one
// read lock, instead of a Peek and a Get.
func (t *Table[K, V]) PeekEntry(k K) (Entry[K, V], bool) {
	s := t.shardFor(k)
	s.mu.RLock()
	e, ok := s.m[k]
	s.mu.RUnlock()
	return Entry[K, V]{e}, ok
}

// GetOrCreate returns the value for k, touching it, or creates it with create,
// inserts it with last use now, and reports created. create runs with k's shard
// locked, so it runs at most once per key even when many packets of a new flow
// arrive at once; it must be quick and must not use the table. If create
// returns an error, nothing is inserted and the error is returned.
func (t *Table[K, V]) GetOrCreate(k K, now int64, create func() (V, error)) (v V, created bool, err error) {
	if v, ok := t.Get(k, now); ok {
		return v, false, nil
	}
	si := t.shardIndex(k)
	s := &t.shards[si]
	s.mu.Lock()
	if e, ok := s.m[k]; ok { // created between the read and the write lock
		e.touch(now)
		v = e.val
		s.mu.Unlock()
		return v, false, nil
	}
	v, err = create()
	if err != nil {
		s.mu.Unlock()
		var zero V
		return zero, false, err
	}
	e := &entry[K, V]{key: k, val: v}
	e.lastUse.Store(now)

	var victim *entry[K, V]
	over := t.count.Add(1) > t.maxEntries
	if over && len(s.m) > 0 {
		victim = s.removeOldest()
	}
	s.m[k] = e
	s.mu.Unlock()
	t.inserted.Add(1)

	if over && victim == nil {
		victim = t.evictElsewhere(si)
	}
	if victim != nil {
		t.count.Add(-1)
		t.evicted.Add(1)
		if t.onRemove != nil {
			t.onRemove(victim.key, victim.val, ReasonEvicted)
		}
	}
	return v, true, nil
}

// removeOldest deletes and returns the entry of s with the oldest last use.
// The caller holds s.mu for writing and knows s is not empty.
func (s *shard[K, V]) removeOldest() *entry[K, V] {
	var oldest *entry[K, V]
	var oldestUse int64
	for _, e := range s.m {
		if u := e.lastUse.Load(); oldest == nil || u < oldestUse {
			oldest, oldestUse = e, u
		}
	}
	if oldest != nil {
		delete(s.m, oldest.key)
	}
	return oldest
}

// evictElsewhere removes the oldest entry of the first non-empty shard after
// shard from, the one just inserted into. It locks one shard at a time, so it
// cannot deadlock with inserts.
func (t *Table[K, V]) evictElsewhere(from int) *entry[K, V] {
	for i := 1; i <= len(t.shards); i++ {
		si := (from + i) % len(t.shards)
		s := &t.shards[si]
		s.mu.Lock()
		// Never evict the only entry of the inserting shard: it is the new one.
		if len(s.m) > 0 && !(si == from && len(s.m) == 1) {
			e := s.removeOldest()
			s.mu.Unlock()
			return e
		}
		s.mu.Unlock()
	}
	// Nothing to evict: deletes made room meanwhile.
	return nil
}

// Delete removes k and reports whether it was present.
func (t *Table[K, V]) Delete(k K) bool {
	s := t.shardFor(k)
	s.mu.Lock()
	e, ok := s.m[k]
	if ok {
		delete(s.m, k)
	}
	s.mu.Unlock()
	if !ok {
		return false
	}
	t.count.Add(-1)
	t.deleted.Add(1)
	if t.onRemove != nil {
		t.onRemove(e.key, e.val, ReasonDeleted)
	}
	return true
}

// Sweep removes the entries whose last use is more than IdleTimeout before now
// and returns how many it removed. Call it from a timer, not per packet. It
// locks one shard at a time.
func (t *Table[K, V]) Sweep(now int64) int {
	if t.idle <= 0 {
		return 0
	}
	removed := 0
	var gone []*entry[K, V]
	for i := range t.shards {
		s := &t.shards[i]
		gone = gone[:0]
		s.mu.Lock()
		for k, e := range s.m {
			if now-e.lastUse.Load() > t.idle {
				delete(s.m, k)
				gone = append(gone, e)
			}
		}
		s.mu.Unlock()
		if len(gone) == 0 {
			continue
		}
		removed += len(gone)
		t.count.Add(-int64(len(gone)))
		t.expired.Add(uint64(len(gone)))
		if t.onRemove != nil {
			for _, e := range gone {
				t.onRemove(e.key, e.val, ReasonIdle)
			}
		}
	}
	return removed
}

// Len returns the number of entries.
func (t *Table[K, V]) Len() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}

// Range calls fn for each entry until fn returns false. It copies one shard at
// a time and calls fn without locks, so fn may use the table; entries added or
// removed meanwhile may or may not be seen.
func (t *Table[K, V]) Range(fn func(K, V) bool) {
	var buf []*entry[K, V]
	for i := range t.shards {
		s := &t.shards[i]
		buf = buf[:0]
		s.mu.RLock()
		for _, e := range s.m {
			buf = append(buf, e)
		}
		s.mu.RUnlock()
		for _, e := range buf {
			if !fn(e.key, e.val) {
				return
			}
		}
	}
}

// Stats returns the table's counters.
func (t *Table[K, V]) Stats() Stats {
	return Stats{
		Entries:  uint64(t.Len()),
		Inserted: t.inserted.Load(),
		Evicted:  t.evicted.Load(),
		Expired:  t.expired.Load(),
		Deleted:  t.deleted.Load(),
	}
}
