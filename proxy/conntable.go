package proxy

import "sync"

// connTable bounds one kind of tcp_listen connection (tcp.go): at most max
// open or authenticating at once, and at most perClient held by one client,
// whose oldest is evicted when it opens one more.
type connTable[C comparable] struct {
	mu             sync.Mutex
	max, perClient int
	open, pending  int
	byClient       map[connClient][]C // oldest first
}

// connClient is whose a connection is: a token's client ID is the minter's
// name, so it is kept apart from the [[client]] IDs.
type connClient struct {
	id    string
	token bool
}

func newConnTable[C comparable](max, perClient int) *connTable[C] {
	return &connTable[C]{max: max, perClient: perClient, byClient: map[connClient][]C{}}
}

// reserve takes a place for a connection about to authenticate; false when
// all are taken.
func (t *connTable[C]) reserve() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.open+t.pending >= t.max {
		return false
	}
	t.pending++
	return true
}

// release gives back a place reserve took, for a connection that failed.
func (t *connTable[C]) release() {
	t.mu.Lock()
	t.pending--
	t.mu.Unlock()
}

// add files c, an authenticated connection of cl, in the place reserve took
// (reserved) or in a free one: false when there is none (never for a
// reserved place). When cl now holds more than perClient, its oldest is
// forgotten and returned (evicted true): the caller closes it.
func (t *connTable[C]) add(cl connClient, c C, reserved bool) (oldest C, evicted, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if reserved {
		t.pending--
	} else if t.open+t.pending >= t.max {
		return oldest, false, false
	}
	t.open++
	list := append(t.byClient[cl], c)
	if len(list) > t.perClient {
		oldest, evicted = list[0], true
		list = list[1:]
		t.open--
	}
	t.byClient[cl] = list
	return oldest, evicted, true
}

// remove forgets c when it ends; nothing if it was evicted (forgotten)
// already.
func (t *connTable[C]) remove(cl connClient, c C) {
	t.mu.Lock()
	defer t.mu.Unlock()
	list := t.byClient[cl]
	for i, o := range list {
		if o == c {
			list = append(list[:i:i], list[i+1:]...)
			t.open--
			break
		}
	}
	if len(list) == 0 {
		delete(t.byClient, cl)
	} else {
		t.byClient[cl] = list
	}
}
