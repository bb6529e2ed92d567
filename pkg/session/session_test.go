package session

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

func hashU64(k uint64) uint64 {
	// SplitMix64 finaliser: consecutive keys spread over all shards.
	k ^= k >> 30
	k *= 0xbf58476d1ce4e5b9
	k ^= k >> 27
	k *= 0x94d049bb133111eb
	return k ^ k>>31
}

type removal struct {
	key uint64
	val string
	why Reason
}

type recorder struct {
	mu  sync.Mutex
	got []removal
}

func (r *recorder) onRemove(k uint64, v string, why Reason) {
	r.mu.Lock()
	r.got = append(r.got, removal{k, v, why})
	r.mu.Unlock()
}

func val(s string) func() (string, error) { return func() (string, error) { return s, nil } }

func TestGetOrCreateGetPeekDelete(t *testing.T) {
	var rec recorder
	tb := NewTable(Config[uint64, string]{MaxEntries: 10, Hash: hashU64, OnRemove: rec.onRemove})
	v, created, err := tb.GetOrCreate(1, 100, val("a"))
	if err != nil || !created || v != "a" {
		t.Fatalf("first GetOrCreate = %q %v %v", v, created, err)
	}
	v, created, err = tb.GetOrCreate(1, 200, val("other"))
	if err != nil || created || v != "a" {
		t.Fatalf("second GetOrCreate = %q %v %v", v, created, err)
	}
	if v, ok := tb.Get(1, 300); !ok || v != "a" {
		t.Fatalf("Get = %q %v", v, ok)
	}
	if _, ok := tb.Get(2, 300); ok {
		t.Fatal("Get of a missing key succeeded")
	}
	if v, ok := tb.Peek(1); !ok || v != "a" {
		t.Fatalf("Peek = %q %v", v, ok)
	}
	if tb.Len() != 1 {
		t.Fatalf("Len = %d", tb.Len())
	}
	if !tb.Delete(1) || tb.Delete(1) {
		t.Fatal("Delete did not report presence correctly")
	}
	if _, ok := tb.Peek(1); ok || tb.Len() != 0 {
		t.Fatal("entry survived Delete")
	}
	if len(rec.got) != 1 || rec.got[0] != (removal{1, "a", ReasonDeleted}) {
		t.Fatalf("OnRemove calls %v", rec.got)
	}
	st := tb.Stats()
	if st != (Stats{Entries: 0, Inserted: 1, Deleted: 1}) {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestCreateErrorInsertsNothing(t *testing.T) {
	tb := NewTable(Config[uint64, string]{Hash: hashU64})
	boom := errors.New("boom")
	_, created, err := tb.GetOrCreate(7, 1, func() (string, error) { return "x", boom })
	if !errors.Is(err, boom) || created {
		t.Fatalf("GetOrCreate = %v %v", created, err)
	}
	if tb.Len() != 0 || tb.Stats().Inserted != 0 {
		t.Fatal("failed create left an entry")
	}
}

// TestEvictsLeastRecentlyUsed fills a one-shard table (exact LRU), touches all
// but one entry later than it, and checks that the next insert removes exactly
// that one.
func TestEvictsLeastRecentlyUsed(t *testing.T) {
	var rec recorder
	const capacity = 100
	tb := NewTable(Config[uint64, string]{MaxEntries: capacity, Shards: 1, Hash: hashU64, OnRemove: rec.onRemove})
	for k := uint64(0); k < capacity; k++ {
		tb.GetOrCreate(k, int64(k), val("v"))
	}
	// Key 0 was inserted first but is now the most recent; key 1 is the oldest.
	tb.Get(0, 1000)
	if _, created, _ := tb.GetOrCreate(capacity, 1001, val("new")); !created {
		t.Fatal("insert into a full table failed")
	}
	if tb.Len() != capacity {
		t.Fatalf("Len = %d, want %d", tb.Len(), capacity)
	}
	if _, ok := tb.Peek(1); ok {
		t.Fatal("least recently used entry 1 still present")
	}
	if _, ok := tb.Peek(0); !ok {
		t.Fatal("recently touched entry 0 evicted")
	}
	if st := tb.Stats(); st.Evicted != 1 || st.Inserted != capacity+1 || st.Entries != capacity {
		t.Fatalf("Stats = %+v", st)
	}
	if len(rec.got) != 1 || rec.got[0] != (removal{1, "v", ReasonEvicted}) {
		t.Fatalf("OnRemove calls %v", rec.got)
	}
	// Peek must not count as use: entry 2 is now the oldest even if peeked.
	tb.Peek(2)
	tb.GetOrCreate(capacity+1, 1002, val("new"))
	if _, ok := tb.Peek(2); ok {
		t.Fatal("Peek refreshed an entry")
	}
}

// TestShardedBoundAndEviction checks the documented per-shard approximation:
// with many shards the total never exceeds MaxEntries, and each eviction takes
// the oldest entry of the shard the new key lands in.
func TestShardedBoundAndEviction(t *testing.T) {
	var rec recorder
	const capacity = 64
	tb := NewTable(Config[uint64, string]{MaxEntries: capacity, Shards: 8, Hash: hashU64, OnRemove: rec.onRemove})
	for k := uint64(0); k < capacity; k++ {
		tb.GetOrCreate(k, int64(k), val("v"))
	}
	if st := tb.Stats(); st.Evicted != 0 || st.Entries != capacity {
		t.Fatalf("evicted before full: %+v", st)
	}
	for k := uint64(capacity); k < 4*capacity; k++ {
		shard := hashU64(k) & 7
		// The expected victim: oldest key (all touched once, at their own
		// number) still present in the new key's shard.
		want := ^uint64(0)
		tb.Range(func(key uint64, _ string) bool {
			if hashU64(key)&7 == shard && key < want {
				want = key
			}
			return true
		})
		rec.got = nil
		tb.GetOrCreate(k, int64(k), val("v"))
		if tb.Len() != capacity {
			t.Fatalf("Len = %d after inserting %d, want %d", tb.Len(), k, capacity)
		}
		if want == ^uint64(0) {
			continue // empty shard: the victim comes from another shard
		}
		if len(rec.got) != 1 || rec.got[0].key != want || rec.got[0].why != ReasonEvicted {
			t.Fatalf("insert %d evicted %v, want key %d", k, rec.got, want)
		}
	}
	if st := tb.Stats(); st.Evicted != 3*capacity {
		t.Fatalf("Evicted = %d, want %d", st.Evicted, 3*capacity)
	}
}

func TestEvictFromOtherShardWhenOwnIsEmpty(t *testing.T) {
	var rec recorder
	// Keys 0..3 hash to shard 0, key 100 to shard 1.
	hash := func(k uint64) uint64 { return k / 100 }
	tb := NewTable(Config[uint64, string]{MaxEntries: 4, Shards: 2, Hash: hash, OnRemove: rec.onRemove})
	for k := uint64(0); k < 4; k++ {
		tb.GetOrCreate(k, int64(10-k), val("v")) // key 3 is the oldest
	}
	tb.GetOrCreate(100, 20, val("w"))
	if tb.Len() != 4 {
		t.Fatalf("Len = %d", tb.Len())
	}
	if _, ok := tb.Peek(100); !ok {
		t.Fatal("new entry missing")
	}
	if len(rec.got) != 1 || rec.got[0] != (removal{3, "v", ReasonEvicted}) {
		t.Fatalf("OnRemove calls %v", rec.got)
	}
}

func TestSweep(t *testing.T) {
	var rec recorder
	tb := NewTable(Config[uint64, string]{IdleTimeout: time.Second, Hash: hashU64, OnRemove: rec.onRemove})
	sec := int64(time.Second)
	for k := uint64(0); k < 10; k++ {
		tb.GetOrCreate(k, 0, val("v"))
	}
	for k := uint64(0); k < 5; k++ {
		tb.Get(k, 2*sec)
	}
	if n := tb.Sweep(sec); n != 0 {
		t.Fatalf("Sweep at exactly the timeout removed %d", n)
	}
	if n := tb.Sweep(2*sec + 1); n != 5 {
		t.Fatalf("Sweep removed %d, want 5", n)
	}
	for k := uint64(0); k < 10; k++ {
		if _, ok := tb.Peek(k); ok != (k < 5) {
			t.Fatalf("key %d present=%v after Sweep", k, ok)
		}
	}
	if st := tb.Stats(); st.Expired != 5 || st.Entries != 5 {
		t.Fatalf("Stats = %+v", st)
	}
	if len(rec.got) != 5 {
		t.Fatalf("OnRemove called %d times", len(rec.got))
	}
	for _, r := range rec.got {
		if r.why != ReasonIdle || r.key < 5 {
			t.Fatalf("bad removal %v", r)
		}
	}

	never := NewTable(Config[uint64, string]{Hash: hashU64})
	never.GetOrCreate(1, 0, val("v"))
	if n := never.Sweep(1 << 62); n != 0 || never.Len() != 1 {
		t.Fatal("IdleTimeout 0 must never expire entries")
	}
}

func TestOnRemoveMayUseTable(t *testing.T) {
	var tb *Table[uint64, string]
	called := false
	tb = NewTable(Config[uint64, string]{MaxEntries: 1, Shards: 1, Hash: hashU64,
		OnRemove: func(k uint64, v string, why Reason) {
			// Would deadlock if called with a lock held.
			tb.Len()
			tb.Peek(k)
			called = true
		}})
	tb.GetOrCreate(1, 1, val("a"))
	tb.GetOrCreate(2, 2, val("b"))
	tb.Delete(2)
	if !called {
		t.Fatal("OnRemove not called")
	}
}

func TestRange(t *testing.T) {
	tb := NewTable(Config[uint64, string]{Hash: hashU64})
	for k := uint64(0); k < 100; k++ {
		tb.GetOrCreate(k, 0, val("v"))
	}
	seen := map[uint64]bool{}
	tb.Range(func(k uint64, _ string) bool {
		seen[k] = true
		tb.Delete(k) // allowed: fn runs without locks
		return true
	})
	if len(seen) != 100 || tb.Len() != 0 {
		t.Fatalf("Range saw %d, left %d", len(seen), tb.Len())
	}
	for k := uint64(0); k < 10; k++ {
		tb.GetOrCreate(k, 0, val("v"))
	}
	n := 0
	tb.Range(func(uint64, string) bool { n++; return n < 3 })
	if n != 3 {
		t.Fatalf("Range did not stop: %d calls", n)
	}
}

func TestDefaultsAndNilHash(t *testing.T) {
	tb := NewTable(Config[string, int]{Shards: 5})
	if len(tb.shards) != 8 || tb.maxEntries != DefaultMaxEntries {
		t.Fatalf("shards=%d capacity=%d", len(tb.shards), tb.maxEntries)
	}
	tb.GetOrCreate("a", 0, func() (int, error) { return 1, nil })
	if v, ok := tb.Get("a", 1); !ok || v != 1 {
		t.Fatal("nil Hash table does not work")
	}
	if unsafe.Sizeof(shard[string, int]{}) != 128 {
		t.Fatalf("shard is %d bytes, want 128", unsafe.Sizeof(shard[string, int]{}))
	}
}

func TestCreateRunsOncePerKey(t *testing.T) {
	tb := NewTable(Config[uint64, int]{Hash: hashU64})
	var calls atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tb.GetOrCreate(42, 1, func() (int, error) { calls.Add(1); return 1, nil })
		}()
	}
	wg.Wait()
	if calls.Load() != 1 {
		t.Fatalf("create ran %d times", calls.Load())
	}
}

// TestConcurrent is meant for -race: readers, inserters, deleters and a
// sweeper on one small table, so that evictions happen all the time.
func TestConcurrent(t *testing.T) {
	var removed atomic.Int64
	const capacity = 200
	tb := NewTable(Config[uint64, int]{MaxEntries: capacity, IdleTimeout: time.Millisecond, Shards: 4, Hash: hashU64,
		OnRemove: func(uint64, int, Reason) { removed.Add(1) }})
	var clock atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5000; i++ {
				k := uint64((i*7 + w*131) % 1000)
				now := clock.Add(1000)
				if v, ok := tb.Get(k, now); ok && v != int(k) {
					t.Errorf("Get(%d) = %d", k, v)
					return
				}
				tb.GetOrCreate(k, now, func() (int, error) { return int(k), nil })
				if i%50 == 0 {
					tb.Delete(k + 1)
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 200; i++ {
			tb.Sweep(clock.Load())
			tb.Range(func(uint64, int) bool { return true })
			tb.Stats()
		}
	}()
	wg.Wait()
	st := tb.Stats()
	if st.Entries > capacity {
		t.Fatalf("%d entries exceed the bound %d", st.Entries, capacity)
	}
	if got := st.Inserted - st.Evicted - st.Expired - st.Deleted; got != st.Entries {
		t.Fatalf("counters do not add up: %+v", st)
	}
	if uint64(removed.Load()) != st.Evicted+st.Expired+st.Deleted {
		t.Fatalf("OnRemove called %d times, stats say %+v", removed.Load(), st)
	}
	if st.Evicted == 0 {
		t.Fatal("test did not exercise eviction")
	}
}

func TestGetDoesNotAllocate(t *testing.T) {
	tb := NewTable(Config[uint64, *int]{Hash: hashU64})
	x := 1
	for k := uint64(0); k < 100; k++ {
		tb.GetOrCreate(k, 0, func() (*int, error) { return &x, nil })
	}
	now := int64(0)
	if n := testing.AllocsPerRun(1000, func() {
		now++
		tb.Get(uint64(now%100), now)
		tb.Peek(uint64(now % 100))
	}); n != 0 {
		t.Fatalf("%v allocations per Get, want 0", n)
	}
}

func benchmarkGet(b *testing.B, entries int) {
	tb := NewTable(Config[uint64, *int]{MaxEntries: entries, Hash: hashU64})
	x := 1
	for k := uint64(0); k < uint64(entries); k++ {
		tb.GetOrCreate(k, 0, func() (*int, error) { return &x, nil })
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		k := uint64(0)
		for pb.Next() {
			k = (k + 7919) % uint64(entries)
			if _, ok := tb.Get(k, int64(k)); !ok {
				b.Fatal("missing")
			}
		}
	})
}

func BenchmarkGet1k(b *testing.B)   { benchmarkGet(b, 1000) }
func BenchmarkGet100k(b *testing.B) { benchmarkGet(b, 100000) }

// PeekEntry finds without touching; its Entry touches later as Get would, and
// the zero Entry touches nothing.
func TestPeekEntryTouchesOnlyWhenAsked(t *testing.T) {
	tb := NewTable(Config[uint64, string]{MaxEntries: 10, IdleTimeout: 100, Hash: hashU64})
	tb.GetOrCreate(1, 0, func() (string, error) { return "a", nil })
	tb.GetOrCreate(2, 0, func() (string, error) { return "b", nil })
	e1, ok := tb.PeekEntry(1)
	if !ok || e1.Value() != "a" {
		t.Fatalf("PeekEntry(1) = %q, %v", e1.Value(), ok)
	}
	e2, _ := tb.PeekEntry(2)
	e1.Touch(150)
	if _, ok := tb.PeekEntry(3); ok {
		t.Fatal("found a key never inserted")
	}
	var zero Entry[uint64, string]
	zero.Touch(150)
	if zero.Value() != "" {
		t.Fatal("the zero Entry has a value")
	}
	if n := tb.Sweep(200); n != 1 {
		t.Fatalf("swept %d, want 1 (the entry not touched)", n)
	}
	if _, ok := tb.Peek(1); !ok {
		t.Fatal("the touched entry was swept")
	}
	e2.Touch(300) // removed since: harmless
}
