package detect

// lru is a fixed-capacity hash table with least-recently-used eviction. The Go
// map would do for lookups, but under steady churn (flows come and go for
// hours) it occasionally grows or rehashes and so allocates on the packet path;
// this table allocates only in newLRU.
//
// Open addressing with linear probing over an index twice the capacity keeps
// probe sequences short; deletion shifts later entries back instead of leaving
// tombstones, so lookups never slow down as the table churns. Entries live in a
// slab and form a doubly linked list from most to least recently used.
type lru[K comparable, V any] struct {
	index   []int32 // slot → slab position + 1; 0 is empty
	mask    uint64
	ents    []lruEnt[K, V]
	head    int32   // most recently used, -1 when empty
	tail    int32   // least recently used
	free    []int32 // unused slab positions, a stack preallocated to capacity
	n       int
	hash    func(K) uint64
	evicted uint64
}

type lruEnt[K comparable, V any] struct {
	key        K
	val        V
	h          uint64
	prev, next int32
}

func newLRU[K comparable, V any](capacity int, hash func(K) uint64) *lru[K, V] {
	if capacity < 1 {
		capacity = 1
	}
	size := 2
	for size < 2*capacity {
		size <<= 1
	}
	free := make([]int32, capacity)
	for i := range free {
		free[i] = int32(capacity - 1 - i)
	}
	return &lru[K, V]{
		free:  free,
		index: make([]int32, size),
		mask:  uint64(size - 1),
		ents:  make([]lruEnt[K, V], capacity),
		head:  -1,
		tail:  -1,
		hash:  hash,
	}
}

// find returns the slab position of k, or -1.
func (t *lru[K, V]) find(k K, h uint64) int32 {
	for s := h & t.mask; ; s = (s + 1) & t.mask {
		p := t.index[s]
		if p == 0 {
			return -1
		}
		e := &t.ents[p-1]
		if e.h == h && e.key == k {
			return p - 1
		}
	}
}

// get returns the value of k and marks it most recently used.
func (t *lru[K, V]) get(k K) (*V, bool) {
	p := t.find(k, t.hash(k))
	if p < 0 {
		return nil, false
	}
	t.toFront(p)
	return &t.ents[p].val, true
}

// peek returns the value of k without changing its recency.
func (t *lru[K, V]) peek(k K) (*V, bool) {
	p := t.find(k, t.hash(k))
	if p < 0 {
		return nil, false
	}
	return &t.ents[p].val, true
}

// put returns the value slot for k, creating it (zeroed) if absent; when the
// table is full the least recently used entry is evicted and counted.
func (t *lru[K, V]) put(k K) (v *V, created bool) {
	h := t.hash(k)
	if p := t.find(k, h); p >= 0 {
		t.toFront(p)
		return &t.ents[p].val, false
	}
	var p int32
	if t.n == len(t.ents) {
		p = t.tail
		t.removeAt(p)
		t.evicted++
	} else {
		p = t.free[len(t.free)-1]
		t.free = t.free[:len(t.free)-1]
	}
	e := &t.ents[p]
	var zero V
	e.key, e.val, e.h = k, zero, h
	s := h & t.mask
	for t.index[s] != 0 {
		s = (s + 1) & t.mask
	}
	t.index[s] = p + 1
	t.n++
	e.prev, e.next = -1, t.head
	if t.head >= 0 {
		t.ents[t.head].prev = p
	}
	t.head = p
	if t.tail < 0 {
		t.tail = p
	}
	return &e.val, true
}

// del removes k if present.
func (t *lru[K, V]) del(k K) bool {
	p := t.find(k, t.hash(k))
	if p < 0 {
		return false
	}
	t.removeAt(p)
	var zero lruEnt[K, V]
	t.ents[p] = zero           // drop references held by the value
	t.free = append(t.free, p) // within capacity: never reallocates
	return true
}

// removeAt unlinks slab position p from the index and the recency list.
func (t *lru[K, V]) removeAt(p int32) {
	e := &t.ents[p]
	// Find the slot and shift the rest of the probe run back.
	i := e.h & t.mask
	for t.index[i] != p+1 {
		i = (i + 1) & t.mask
	}
	j := i
	for {
		j = (j + 1) & t.mask
		q := t.index[j]
		if q == 0 {
			break
		}
		home := t.ents[q-1].h & t.mask
		// Move q into the hole at i unless its home lies cyclically in (i, j].
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			t.index[i] = q
			i = j
		}
	}
	t.index[i] = 0
	if e.prev >= 0 {
		t.ents[e.prev].next = e.next
	} else {
		t.head = e.next
	}
	if e.next >= 0 {
		t.ents[e.next].prev = e.prev
	} else {
		t.tail = e.prev
	}
	t.n--
}

func (t *lru[K, V]) toFront(p int32) {
	if t.head == p {
		return
	}
	e := &t.ents[p]
	t.ents[e.prev].next = e.next
	if e.next >= 0 {
		t.ents[e.next].prev = e.prev
	} else {
		t.tail = e.prev
	}
	e.prev, e.next = -1, t.head
	t.ents[t.head].prev = p
	t.head = p
}

// each calls f from most to least recently used.
func (t *lru[K, V]) each(f func(k K, v *V) bool) {
	for p := t.head; p >= 0; p = t.ents[p].next {
		if !f(t.ents[p].key, &t.ents[p].val) {
			return
		}
	}
}

func (t *lru[K, V]) len() int { return t.n }
