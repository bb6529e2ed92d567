package proxy

import (
	"net/netip"
	"sync"
)

// connTable bounds one kind of tcp_listen connection (tcp.go): at most max
// open or authenticating at once, at most perSource of them authenticating
// from one address (tcp_pending_per_address; only the fallback's table
// reserves places, QUIC connections authenticate before they are filed), and
// at most perClient held by one client, whose oldest is evicted when it
// opens one more.
type connTable[C comparable] struct {
	mu             sync.Mutex
	max, perClient int
	perSource      int // authenticating at once from one address
	open, pending  int
	byClient       map[connClient][]C // oldest first
	pendingFrom    map[netip.Addr]int // authenticating connections by source address
}

// DefaultTCPPendingPerAddress is tcp_pending_per_address's default: the
// connections one address may have authenticating at once. A silent
// connection holds its place for tcpmux.AuthTimeout; without this bound one
// host could hold every place (max_sessions) with silent connections. An
// honest router authenticates one or two at a time, so even many routers
// behind one carrier-grade NAT address stay well under it.
const DefaultTCPPendingPerAddress = 64

// connClient is whose a connection is: a token's client ID is the minter's
// name, so it is kept apart from the [[client]] IDs.
type connClient struct {
	id    string
	token bool
}

func newConnTable[C comparable](max, perClient, perSource int) *connTable[C] {
	return &connTable[C]{max: max, perClient: perClient, perSource: perSource, byClient: map[connClient][]C{}, pendingFrom: map[netip.Addr]int{}}
}

// Why reserve refused a place.
const (
	reservedOK = iota
	reserveFull
	reserveSourceBusy // its address has perSource authenticating
)

// reserve takes a place for a connection from address from about to
// authenticate.
func (t *connTable[C]) reserve(from netip.Addr) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.open+t.pending >= t.max {
		return reserveFull
	}
	if t.pendingFrom[from] >= t.perSource {
		return reserveSourceBusy
	}
	t.pending++
	t.pendingFrom[from]++
	return reservedOK
}

// release gives back a place reserve took, for a connection that failed.
func (t *connTable[C]) release(from netip.Addr) {
	t.mu.Lock()
	t.pending--
	t.donePending(from)
	t.mu.Unlock()
}

// donePending ends one authentication from address from; t.mu is held.
func (t *connTable[C]) donePending(from netip.Addr) {
	if t.pendingFrom[from]--; t.pendingFrom[from] <= 0 {
		delete(t.pendingFrom, from)
	}
}

// add files c, an authenticated connection of cl, in the place reserve took
// for it from address from (reserved) or in a free one: false when there is
// none (never for a reserved place). When cl now holds more than perClient,
// its oldest is forgotten and returned (evicted true): the caller closes it.
func (t *connTable[C]) add(cl connClient, c C, reserved bool, from netip.Addr) (oldest C, evicted, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if reserved {
		t.pending--
		t.donePending(from)
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
