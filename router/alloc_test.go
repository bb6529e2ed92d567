package router

import (
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/raicnet/raic/integration/testkit"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/wire"
)

// sink is a loopback socket that reads and discards, so sends to it succeed.
var sink = testkit.Sink

// newQuietRouter builds a router from config text, not started and with no
// log, and closes its sockets when the test ends.
func newQuietRouter(t testing.TB, text string) *Router {
	t.Helper()
	cfg, err := ParseConfig("router.toml", text)
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.closeSockets)
	return r
}

// twoUplinkConfig is a router's config with key, one proxy, two uplinks on
// 127.0.0.1 and one forward to server; extra is appended to the forward.
func twoUplinkConfig(key wire.Key, proxy, server any, extra string) string {
	return fmt.Sprintf(`
client_id = "gamer"
key = "%s"
proxy = "%s"
[[uplink]]
source = "127.0.0.1"
[[uplink]]
source = "127.0.0.1"
[[forward]]
listen = "127.0.0.1:0"
server = "%s"
%s`, key, proxy, server, extra)
}

// TestPacketPathDoesNotAllocate drives the router's per-packet functions
// directly: a game packet coded, sealed and sent on two uplinks, and a datagram
// from the proxy authenticated, deduplicated and written back to the game. In
// steady state neither allocates.
func TestPacketPathDoesNotAllocate(t *testing.T) {
	key := wire.Key{7}
	proxyAddr, server, game := sink(t), sink(t), sink(t)
	r := newQuietRouter(t, twoUplinkConfig(key, proxyAddr, server, ""))
	f := r.forwards[0]
	pkt := make([]byte, 100)

	r.fromGame(f, pkt, game, mono.Now()) // creates the session (allocates, once)
	rs, ok := f.flows.Peek(game)
	if !ok {
		t.Fatal("no session after the first packet")
	}
	const runs, warmup = 1000, 2048
	for i := 0; i < warmup; i++ {
		r.fromGame(f, pkt, game, mono.Now())
	}
	sent := r.uplinks[0].sent.Load()
	if allocs := testing.AllocsPerRun(runs, func() { r.fromGame(f, pkt, game, mono.Now()) }); allocs != 0 {
		t.Errorf("send path: %v allocations per packet", allocs)
	}
	if got := r.uplinks[0].sent.Load() - sent; got != runs+1 {
		t.Fatalf("uplink 0 sent %d datagrams, want %d", got, runs+1)
	}

	// Datagrams as the proxy would seal them for this session.
	hello, _ := rs.send.Hello()
	// The decoder's ring of groups (1,024 slots) gets its buffers on first use:
	// warm it up, then measure.
	dgs := testkit.SealedAsProxy(t, key, hello.Salt, rs.id, pkt, warmup+runs+1)
	var h wire.Header
	for i := 0; i < warmup; i++ {
		r.fromProxy(r.uplinks[0], dgs[i], &h, mono.Now())
	}
	i := warmup
	delivered := r.m.toGame.Load()
	if allocs := testing.AllocsPerRun(runs, func() {
		r.fromProxy(r.uplinks[0], dgs[i], &h, mono.Now())
		i++
	}); allocs != 0 {
		t.Errorf("receive path: %v allocations per datagram", allocs)
	}
	if got := r.m.toGame.Load() - delivered; got != runs+1 {
		t.Fatalf("delivered %d packets to the game, want %d", got, runs+1)
	}
}

// TestCodedSendPathDoesNotAllocate is the send path with coded shards (RAIC-6
// 2+2 over two uplinks, one of them looking dead, so the uplink set moves its
// shards to the other): still no allocation per packet.
func TestCodedSendPathDoesNotAllocate(t *testing.T) {
	key := wire.Key{7}
	proxyAddr, server, game := sink(t), sink(t), sink(t)
	r := newQuietRouter(t, twoUplinkConfig(key, proxyAddr, server, `scheme = "rs:2+2"`))
	f := r.forwards[0]
	pkt := make([]byte, 100)
	now := mono.Now()
	r.proxies[0].paths[1].health.OnPingSent(1, now) // never answered
	r.fromGame(f, pkt, game, now)                   // creates the session (allocates, once)
	later := now + int64(2*DefaultDownAfter)
	for i := 0; i < 2048; i++ {
		r.fromGame(f, pkt, game, later)
	}
	sent0, sent1 := r.uplinks[0].sent.Load(), r.uplinks[1].sent.Load()
	const runs = 1000
	if allocs := testing.AllocsPerRun(runs, func() { r.fromGame(f, pkt, game, later) }); allocs != 0 {
		t.Errorf("coded send path: %v allocations per packet", allocs)
	}
	if got0, got1 := r.uplinks[0].sent.Load()-sent0, r.uplinks[1].sent.Load()-sent1; got0 != 4*(runs+1) || got1 != 0 {
		t.Fatalf("uplinks sent %d and %d shards, want all %d on the live one", got0, got1, 4*(runs+1))
	}
}
