package proxy

import (
	"net/netip"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/clients"
	"github.com/raicnet/raic/pkg/metrics"
)

func testPort(t *testing.T) *serverPort {
	t.Helper()
	sp, err := dialServer(netip.MustParseAddrPort("127.0.0.1:9"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sp.close)
	return sp
}

func flowSession(t *testing.T, client string, flow byte, target string) *proxySession {
	ps := &proxySession{target: netip.MustParseAddrPort(target), flowed: true}
	ps.flow[0] = flow
	ps.Client = &clients.Client{ID: client}
	ps.port.Store(testPort(t))
	return ps
}

// The table of kept server ports: the same client with the same flow token and
// target takes the port back; another client, token or target never does; a
// full table evicts the oldest and counts it; expired ports are closed.
func TestPortKeeper(t *testing.T) {
	reg := metrics.NewRegistry()
	pk := newPortKeeper(int64(30*time.Second), 2, reg)
	a := flowSession(t, "alice", 1, "198.18.9.2:27015")
	sp := a.port.Load()
	pk.opened(a.key(), a)
	pk.ended(a, true, 0)
	if a.port.Load() != nil || sp.isClosed() || pk.Len() != 1 || pk.keptN.Load() != 1 {
		t.Fatalf("ended session's port not kept: closed %v, kept %d", sp.isClosed(), pk.Len())
	}
	for _, other := range []*proxySession{
		flowSession(t, "mallory", 1, "198.18.9.2:27015"), // another client, same token
		flowSession(t, "alice", 2, "198.18.9.2:27015"),   // another flow
		flowSession(t, "alice", 1, "198.18.9.3:27015"),   // another target
	} {
		if got, _ := pk.claim(other.key()); got != nil {
			t.Fatalf("%s flow %x to %v took alice's port", other.Client.ID, other.flow[0], other.target)
		}
	}
	b := flowSession(t, "alice", 1, "198.18.9.2:27015")
	if got, old := pk.claim(b.key()); got != sp || old != nil {
		t.Fatalf("same client, token and target: got port %p (want %p), from live session %v", got, sp, old)
	}
	if pk.reused.Load() != 1 || pk.Len() != 0 {
		t.Fatalf("reused %d, kept %d", pk.reused.Load(), pk.Len())
	}

	// An open session's port goes to a new session of its flow, with the
	// session it came from (the caller ends it).
	b.port.Store(sp)
	pk.opened(b.key(), b)
	c := flowSession(t, "alice", 1, "198.18.9.2:27015")
	if got, old := pk.claim(c.key()); got != sp || old != b || b.port.Load() != nil {
		t.Fatalf("open session's port: got %p from %p, want %p from %p", got, old, sp, b)
	}
	pk.ended(b, true, 0) // it ends: nothing of its own to keep
	if pk.Len() != 0 || sp.isClosed() {
		t.Fatalf("the replaced session's end kept %d ports, closed %v", pk.Len(), sp.isClosed())
	}

	// Full: the oldest is closed and counted.
	var ports []*serverPort
	for i := byte(0); i < 3; i++ {
		s := flowSession(t, "alice", 10+i, "198.18.9.2:27015")
		ports = append(ports, s.port.Load())
		pk.ended(s, true, int64(i))
	}
	if pk.Len() != 2 || pk.evicted.Load() != 1 || !ports[0].isClosed() || ports[1].isClosed() {
		t.Fatalf("kept %d, evicted %d, oldest closed %v", pk.Len(), pk.evicted.Load(), ports[0].isClosed())
	}
	// Past keep_server_port they are closed.
	pk.sweep(int64(31 * time.Second))
	if pk.Len() != 0 || !ports[1].isClosed() || !ports[2].isClosed() {
		t.Fatalf("expired ports: kept %d", pk.Len())
	}
	// Stopping (keep false), or no flow token: closed at once.
	d := flowSession(t, "alice", 1, "198.18.9.2:27015")
	dp := d.port.Load()
	pk.ended(d, false, 0)
	e := flowSession(t, "alice", 1, "198.18.9.2:27015")
	e.flowed = false
	ep := e.port.Load()
	pk.ended(e, true, 0)
	if !dp.isClosed() || !ep.isClosed() || pk.Len() != 0 {
		t.Fatal("port kept while stopping or without a flow token")
	}
	// Off: nothing is kept or claimed.
	off := newPortKeeper(0, 2, metrics.NewRegistry())
	f := flowSession(t, "alice", 1, "198.18.9.2:27015")
	fp := f.port.Load()
	off.ended(f, true, 0)
	if !fp.isClosed() || off.Len() != 0 {
		t.Fatal("keep_server_port 0 kept a port")
	}
}
