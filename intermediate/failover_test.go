package intermediate

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/raicnet/raic/router"
)

// TestFailoverToLiveUplink runs router → intermediate (two uplinks, each through
// a hop the test can cut) → proxy → echo server on loopback, with the router's
// packets coded as XOR 3+1: four shards, which the intermediate re-encodes the
// same way and spreads two and two over its uplinks. Then one hop dies. A
// single parity shard cannot make up for two lost ones, so the packets keep
// reaching the server only if the intermediate notices the dead uplink (its
// keepalives go unanswered) and puts every shard on the live one.
func TestFailoverToLiveUplink(t *testing.T) {
	server, served := echoServer(t)
	p := startProxy(t, "mid1", midKeys[0], server)
	hops := [2]*tap{newTap(t, p.Addr(), func([]byte) {}), newTap(t, p.Addr(), func([]byte) {})}
	m := startMid(t, "gamer", routerKey, server, "mid1", midKeys[0], 2, hops[0].addr(), hops[1].addr())

	cfg, err := router.ParseConfig("router.toml", fmt.Sprintf(`
client_id = "gamer"
key = "%s"
ping_interval = "50ms"
down_after = "500ms"
[[forward]]
listen = "127.0.0.1:0"
server = "%s"
scheme = "xor:3"
[[uplink]]
name = "isp0"
source = "127.0.0.1"
proxy = "%s"
`, routerKey, server, m.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	r, err := router.New(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	run(t, r.Run)
	game := udpListen(t)
	to := net.UDPAddrFromAddrPort(r.ForwardAddr(0))
	buf := make([]byte, 120)
	seq := uint32(0)
	// send sends n game packets 5 ms apart and returns how many reached the
	// server (counted once the stragglers are in).
	send := func(n int) int64 {
		before := served.Load()
		for i := 0; i < n; i++ {
			seq++
			if _, err := game.WriteToUDP(gamePacket(buf, seq), to); err != nil {
				t.Fatal(err)
			}
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond)
		return served.Load() - before
	}

	waitFor(t, 5*time.Second, "both uplinks answering keepalives", func() bool {
		st := m.UplinkStats()
		return st[0].PongsReceived > 0 && st[1].PongsReceived > 0
	})
	if got := send(100); got < 95 {
		t.Fatalf("both uplinks alive: %d of 100 packets reached the server", got)
	}
	if c := counter(m, `intermediate_relayed_total{dir="out"}`); c < 95 {
		t.Fatalf("intermediate_relayed_total{dir=\"out\"} = %v, want the packets relayed", c)
	}

	for dead := range hops {
		live := 1 - dead
		hops[dead].cut.Store(true)
		hops[live].cut.Store(false)
		waitFor(t, 5*time.Second, fmt.Sprintf("uplink u%d down and u%d up", dead, live), func() bool {
			st := m.UplinkStats()
			return !st[dead].Up && st[live].Up
		})
		// The gauge follows within a janitor tick.
		waitFor(t, time.Second, "intermediate_uplink_up at 0", func() bool {
			return counter(m, fmt.Sprintf(`intermediate_uplink_up{uplink="u%d"}`, dead)) == 0
		})
		if got := send(200); got < 190 {
			t.Errorf("uplink u%d dead: %d of 200 packets reached the server, want the live uplink to carry them", dead, got)
		}
	}
}
