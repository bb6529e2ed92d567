package router

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"

	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// sink is a loopback socket that reads and discards, so sends to it succeed.
func sink(t testing.TB) netip.AddrPort {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadBuffer(8 << 20)
	go func() {
		b := make([]byte, 2048)
		for {
			if _, _, err := c.ReadFromUDPAddrPort(b); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { c.Close() })
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// TestPacketPathDoesNotAllocate drives the router's per-packet functions
// directly: a game packet coded, sealed and sent on two uplinks, and a datagram
// from the proxy authenticated, deduplicated and written back to the game. In
// steady state neither allocates.
func TestPacketPathDoesNotAllocate(t *testing.T) {
	key := wire.Key{7}
	proxyAddr, server, game := sink(t), sink(t), sink(t)
	cfg, err := ParseConfig("router.toml", fmt.Sprintf(`
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
`, key, proxyAddr, server))
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer r.closeSockets()
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
	psend, _, err := wire.DeriveKeys(&key, &hello.Salt, rs.id, wire.RoleServer)
	if err != nil {
		t.Fatal(err)
	}
	proxySide, err := tunnel.NewSender(psend, rs.id, raic.Params{Scheme: raic.SchemeCopy, K: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The decoder's ring of groups (1,024 slots) gets its buffers on first use:
	// warm it up, then measure.
	dgs := make([][]byte, warmup+runs+1)
	for i := range dgs {
		_, d, err := proxySide.Seal(pkt, mono.Now())
		if err != nil {
			t.Fatal(err)
		}
		dgs[i] = append([]byte(nil), d[0]...)
	}
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
	cfg, err := ParseConfig("router.toml", fmt.Sprintf(`
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
scheme = "rs:2+2"
`, key, proxyAddr, server))
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer r.closeSockets()
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
