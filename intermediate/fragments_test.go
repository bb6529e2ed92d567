package intermediate

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// TestFragmentsAreCopiedOnEveryUplink: 1,400-byte packets (two X-fragments
// under RAIC-1) from a router with two uplinks through an intermediate with
// two uplinks to a proxy and an echo server. Each fragment is a copy, so the
// intermediate sends every one on both of its uplinks (2 x 2 data datagrams
// per packet towards the proxy, not 2), and sends every reply fragment back
// on both router paths (each router uplink receives both fragments of every
// reply).
func TestFragmentsAreCopiedOnEveryUplink(t *testing.T) {
	const n, size = 300, 1400
	frags := raic.FragCount(raic.Params{Scheme: raic.SchemeCopy, K: 1}, size)
	if frags != 2 {
		t.Fatalf("%d bytes make %d fragments, want 2", size, frags)
	}
	server, served := echoServer(t)
	p := startProxy(t, "mid1", midKeys[0], server)
	var data atomic.Int64
	toProxy := newTap(t, p.Addr(), func(dg []byte) {
		if len(dg) > 1 && wire.Type(dg[1]) == wire.TypeData {
			data.Add(1)
		}
	}).addr()
	m := startMid(t, "gamer", routerKey, server, "mid1", midKeys[0], 2, toProxy)
	r := startRouter(t, server, m.Addr(), m.Addr())
	game := udpListen(t)
	var back atomic.Int64
	go func() {
		b := make([]byte, 4096)
		for {
			k, err := game.Read(b)
			if err != nil {
				return
			}
			if k == size {
				back.Add(1)
			}
		}
	}()
	pkt := make([]byte, size)
	fwd := r.ForwardAddr(0)
	for i := 0; i < n; i++ {
		game.WriteToUDPAddrPort(gamePacket(pkt, uint32(i)), fwd)
		time.Sleep(2 * time.Millisecond)
	}
	waitFor(t, 3*time.Second, "every packet back", func() bool { return back.Load() == n })
	time.Sleep(100 * time.Millisecond)
	if s := served.Load(); s != n {
		t.Errorf("server got %d of %d packets", s, n)
	}
	if d := data.Load(); d < int64(2*frags*n) {
		t.Errorf("the intermediate sent %d data datagrams towards the proxy for %d packets of %d fragments over 2 uplinks, want %d",
			d, n, frags, 2*frags*n)
	}
	snap := r.Metrics().Snapshot()
	for _, u := range []string{"isp0", "isp1"} {
		// Each uplink gets both fragments of every reply, plus keepalive answers.
		if got := snap[`router_uplink_datagrams_received_total{uplink="`+u+`"}`]; got < float64(frags*n) {
			t.Errorf("router uplink %s received %v datagrams, want at least %d (%d reply fragments per packet)", u, got, frags*n, frags)
		}
	}
}
