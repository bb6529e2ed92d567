package proxy

import (
	"container/list"
	"net/netip"
	"sync"

	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/wire"
)

// Kept server ports. A session's socket to its game server is its source port
// as the server sees it, and many game servers take a new source port for a
// new player. So when a session that named its flow (wire.FlagFlow) ends, the
// proxy keeps its socket for keep_server_port; a new session of the same
// client with the same flow token and target (a restarted router's: the token
// is stable across its restarts) takes it over. A new session that claims the
// port of a session still open (the router restarted before the old one went
// idle) takes it too, and the old session ends. The key holds the client ID
// and the token is made with the client's key, so no client ever gets
// another's socket.

// portKey names a flow's server port.
type portKey struct {
	client string
	flow   [wire.FlowLen]byte
	target netip.AddrPort
}

type keptPort struct {
	key   portKey
	port  *serverPort
	until int64 // mono time it is closed at
}

// portKeeper holds the open sessions' ports by flow and the kept ones, oldest
// first. Its lock is taken when a session opens or ends, never per packet.
type portKeeper struct {
	keep int64 // how long a port is kept (ns); 0: never
	max  int   // kept ports at most; the oldest is closed (evicted) past it

	mu    sync.Mutex
	live  map[portKey]*proxySession
	kept  map[portKey]*list.Element // of *keptPort, in order
	order list.List

	keptN, reused, evicted *metrics.Counter
}

func newPortKeeper(keep int64, max int, r *metrics.Registry) *portKeeper {
	return &portKeeper{keep: keep, max: max, live: map[portKey]*proxySession{}, kept: map[portKey]*list.Element{},
		keptN:   r.Counter("proxy_server_ports_kept_total", "Server-side sockets of ended sessions kept for a new session of the same flow (keep_server_port)."),
		reused:  r.Counter("proxy_server_ports_reused_total", "Sessions that took over the server-side socket of an earlier session of their flow."),
		evicted: r.Counter("proxy_server_ports_evicted_total", "Kept server-side sockets closed early: the table of kept sockets was full."),
	}
}

// claim returns the port kept for k, or the port of the open session of k
// (then also that session, which the caller ends); nil when there is none.
func (pk *portKeeper) claim(k portKey) (sp *serverPort, from *proxySession) {
	if pk.keep == 0 {
		return nil, nil
	}
	pk.mu.Lock()
	defer pk.mu.Unlock()
	if e, ok := pk.kept[k]; ok {
		pk.order.Remove(e)
		delete(pk.kept, k)
		pk.reused.Inc()
		return e.Value.(*keptPort).port, nil
	}
	if old, ok := pk.live[k]; ok {
		delete(pk.live, k)
		if sp = old.port.Swap(nil); sp != nil {
			old.unwatch(sp)
			pk.reused.Inc()
			return sp, old
		}
	}
	return nil, nil
}

// opened notes the port of ps, a session of flow k.
func (pk *portKeeper) opened(k portKey, ps *proxySession) {
	if pk.keep == 0 {
		return
	}
	pk.mu.Lock()
	pk.live[k] = ps
	pk.mu.Unlock()
}

// ended keeps the port of ps, which has ended, or closes it: when ps named
// no flow, keeping is off, or the proxy is stopping (keep false).
func (pk *portKeeper) ended(ps *proxySession, keep bool, now int64) {
	sp := ps.port.Swap(nil)
	if sp != nil {
		ps.unwatch(sp)
	}
	if !ps.flowed || pk.keep == 0 {
		if sp != nil {
			sp.close()
		}
		return
	}
	k := ps.key()
	pk.mu.Lock()
	defer pk.mu.Unlock()
	if pk.live[k] == ps {
		delete(pk.live, k)
	}
	if sp == nil {
		return
	}
	if !keep {
		sp.close()
		return
	}
	if e, ok := pk.kept[k]; ok { // cannot happen (claim takes it first), but never leak one
		pk.drop(e)
	}
	pk.kept[k] = pk.order.PushBack(&keptPort{key: k, port: sp, until: now + pk.keep})
	pk.keptN.Inc()
	for pk.order.Len() > pk.max {
		pk.drop(pk.order.Front())
		pk.evicted.Inc()
	}
}

// drop closes a kept port (pk.mu held).
func (pk *portKeeper) drop(e *list.Element) {
	kp := pk.order.Remove(e).(*keptPort)
	delete(pk.kept, kp.key)
	kp.port.close()
}

// sweep closes the ports kept past their time; all of them when now is -1
// (the proxy is stopping).
func (pk *portKeeper) sweep(now int64) {
	pk.mu.Lock()
	defer pk.mu.Unlock()
	for e := pk.order.Front(); e != nil && (now < 0 || e.Value.(*keptPort).until <= now); e = pk.order.Front() {
		pk.drop(e)
	}
}

// Len is the number of ports kept now.
func (pk *portKeeper) Len() int {
	pk.mu.Lock()
	defer pk.mu.Unlock()
	return pk.order.Len()
}

// key is the flow key of ps (meaningful when ps.flowed).
func (ps *proxySession) key() portKey {
	return portKey{client: ps.Client.ID, flow: ps.flow, target: ps.target}
}

// unwatch takes sp, ps's port, out of ps's poller: it is closed or handed on.
func (ps *proxySession) unwatch(sp *serverPort) {
	if ps.poller != nil {
		ps.poller.remove(sp)
	}
}
