package integration

import (
	"context"
	"math"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/internal/hostinfo"
	"github.com/raicnet/raic/integration/linkem"
	"github.com/raicnet/raic/router"
)

// runCheckedGame plays n packets each way at rate through a router whose uplinks
// go to the given relay addresses, and returns the tallies of both directions.
func runCheckedGame(t *testing.T, n int, rate float64, routerExtra string, uplinks func(proxyAddr netip.AddrPort) []netip.AddrPort) (up, down *tally) {
	up, down, _ = runCheckedGameWith(t, n, rate, routerExtra, uplinks)
	return up, down
}

// runCheckedGameWith is runCheckedGame that also returns the router, for its
// metrics.
func runCheckedGameWith(t *testing.T, n int, rate float64, routerExtra string, uplinks func(proxyAddr netip.AddrPort) []netip.AddrPort) (up, down *tally, r *router.Router) {
	return runSizedGame(t, n, rate, checkPktLen, routerExtra, uplinks)
}

// runSizedGame is runCheckedGameWith with packets of size bytes each way.
func runSizedGame(t *testing.T, n int, rate float64, size int, routerExtra string, uplinks func(proxyAddr netip.AddrPort) []netip.AddrPort) (up, down *tally, r *router.Router) {
	// Losses in the kernel's socket buffers (a loaded machine) are not the
	// suite's: they are logged so that a failing bound can be told apart.
	rcvbuf := hostinfo.RcvbufErrors()
	t.Cleanup(func() {
		if d := hostinfo.RcvbufErrors() - rcvbuf; d > 0 {
			t.Logf("the kernel dropped %d UDP datagrams for full receive buffers during this test", d)
		}
	})
	server := newSizedCheckServer(t, n, size)
	p := startProxy(t, server.addr().String())
	r = startRouter(t, server.addr(), routerExtra, uplinks(p.Addr())...)

	client, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	client.SetReadBuffer(4 << 20)
	down = newSizedTally(n, size)
	go func() {
		buf := make([]byte, maxCheckPktLen+1)
		for {
			k, _, err := client.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			down.add(buf[:k], 'S')
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fwd := r.ForwardAddr(0)
	serverDone := make(chan struct{})
	go func() {
		defer close(serverDone)
		// The server starts its own stream once it knows where the client is.
		for server.client.Load() == nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Millisecond):
			}
		}
		to := *server.client.Load()
		sizedStream(ctx, n, rate, 'S', size, func(b []byte) { server.conn.WriteToUDPAddrPort(b, to) })
	}()
	sizedStream(ctx, n, rate, 'C', size, func(b []byte) { client.WriteToUDPAddrPort(b, fwd) })
	<-serverDone
	time.Sleep(500 * time.Millisecond) // the last packets are in flight
	return server.up, down, r
}

// TestLoopbackTwoLossyUplinks sends 20,000 packets each way over two uplinks that
// each drop 10% independently: with RAIC-1 a packet is lost only when both copies
// are, so the game must see about 1% loss, no duplicate and no corrupted byte.
func TestLoopbackTwoLossyUplinks(t *testing.T) {
	const n = 20000
	var relays []*linkem.UDPRelay
	up, down := runCheckedGame(t, n, 2000, "", func(proxyAddr netip.AddrPort) []netip.AddrPort {
		var addrs []netip.AddrPort
		for i := uint64(0); i < 2; i++ {
			rl, err := linkem.NewUDPRelay(netip.MustParseAddrPort("127.0.0.1:0"), proxyAddr,
				linkem.Config{Loss: 0.10, Seed: 100 + i}, linkem.Config{Loss: 0.10, Seed: 200 + i})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { rl.Close() })
			relays = append(relays, rl)
			addrs = append(addrs, rl.Addr())
		}
		return addrs
	})
	// Binomial bound: loss probability 0.1 × 0.1 = 1% per packet; allow 4.5 σ.
	p := 0.01
	mean, sd := n*p, math.Sqrt(n*p*(1-p))
	for _, d := range []struct {
		name string
		t    *tally
	}{{"client→server", up}, {"server→client", down}} {
		got, dups, bad := d.t.snapshot()
		lost := n - got
		t.Logf("%s: received %d of %d, lost %d (%.2f%%; expected %.0f ± %.0f), duplicates %d, corrupted %d",
			d.name, got, n, lost, 100*float64(lost)/n, mean, 4.5*sd, dups, bad)
		if math.Abs(float64(lost)-mean) > 4.5*sd {
			t.Errorf("%s: lost %d packets, outside the binomial bound %.0f ± %.0f", d.name, lost, mean, 4.5*sd)
		}
		if dups != 0 || bad != 0 {
			t.Errorf("%s: %d duplicates and %d corrupted packets reached the game", d.name, dups, bad)
		}
	}
	for i, rl := range relays {
		st := rl.Up().Stats()
		t.Logf("relay %d up-link stats: %+v", i, st)
	}
}

// TestLoopbackOneDeadUplink cuts one of two uplinks entirely: every packet still
// arrives over the other.
func TestLoopbackOneDeadUplink(t *testing.T) {
	const n = 5000
	up, down, r := runCheckedGameWith(t, n, 2500, "", func(proxyAddr netip.AddrPort) []netip.AddrPort {
		dead, err := linkem.NewUDPRelay(netip.MustParseAddrPort("127.0.0.1:0"), proxyAddr,
			linkem.Config{Loss: 1}, linkem.Config{Loss: 1})
		if err != nil {
			t.Fatal(err)
		}
		clean, err := linkem.NewUDPRelay(netip.MustParseAddrPort("127.0.0.1:0"), proxyAddr, linkem.Config{}, linkem.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dead.Close(); clean.Close() })
		return []netip.AddrPort{dead.Addr(), clean.Addr()}
	})
	for name, tl := range map[string]*tally{"client→server": up, "server→client": down} {
		got, dups, bad := tl.snapshot()
		if got != n || dups != 0 || bad != 0 {
			t.Errorf("%s: received %d of %d, %d duplicates, %d corrupted; want all, none, none", name, got, n, dups, bad)
		}
	}
	// Once the dead uplink is marked down (300 ms), its copy goes on the live one.
	if moved := r.Metrics().Snapshot()["router_moved_copies_total"]; moved < n/2 {
		t.Errorf("router_moved_copies_total = %v, want most of the %d packets' copies moved to the live uplink", moved, n)
	}
}

// TestLoopbackCodedSchemes runs each coded scheme through two lossy uplinks (5%
// each way) and checks every packet that arrives is intact and arrives once; the
// proxy answers with the router's scheme.
func TestLoopbackCodedSchemes(t *testing.T) {
	for _, scheme := range []string{"xor:2", "rs:2+2", "time:2"} {
		t.Run(scheme, func(t *testing.T) {
			const n = 3000
			up, down := runCheckedGame(t, n, 1500, `scheme = "`+scheme+`"`, func(proxyAddr netip.AddrPort) []netip.AddrPort {
				var addrs []netip.AddrPort
				for i := uint64(0); i < 2; i++ {
					rl, err := linkem.NewUDPRelay(netip.MustParseAddrPort("127.0.0.1:0"), proxyAddr,
						linkem.Config{Loss: 0.05, Seed: 300 + i}, linkem.Config{Loss: 0.05, Seed: 400 + i})
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { rl.Close() })
					addrs = append(addrs, rl.Addr())
				}
				return addrs
			})
			for name, tl := range map[string]*tally{"client→server": up, "server→client": down} {
				got, dups, bad := tl.snapshot()
				t.Logf("%s %s: received %d of %d", scheme, name, got, n)
				if dups != 0 || bad != 0 {
					t.Errorf("%s: %d duplicates, %d corrupted", name, dups, bad)
				}
				// Each scheme survives the loss of one uplink's shard; with 5% loss
				// per uplink the residual loss stays well under 5%.
				if lost := n - got; float64(lost) > 0.03*n {
					t.Errorf("%s: lost %d of %d packets, more than a coded scheme should", name, lost, n)
				}
			}
		})
	}
}

// TestLoopbackCopiesAndDelayedCopy checks the RAIC-1 options: two copies per
// uplink plus one delayed copy each means three datagrams per packet on every
// uplink, and the game still sees each packet exactly once.
func TestLoopbackCopiesAndDelayedCopy(t *testing.T) {
	const n = 2000
	up, down, r := runCheckedGameWith(t, n, 1000, "copies_per_uplink = 2\ndelayed_copy = 0.5\nexpected_pps = 1000", func(proxyAddr netip.AddrPort) []netip.AddrPort {
		return []netip.AddrPort{proxyAddr, proxyAddr}
	})
	for name, tl := range map[string]*tally{"client→server": up, "server→client": down} {
		got, dups, bad := tl.snapshot()
		if got != n || dups != 0 || bad != 0 {
			t.Errorf("%s: received %d of %d, %d duplicates, %d corrupted; want all, none, none", name, got, n, dups, bad)
		}
	}
	snap := r.Metrics().Snapshot()
	delayed := snap["router_delayed_copies_total"]
	if delayed < 2*n*0.99 || delayed > 2*n {
		t.Errorf("delayed copies sent: %v, want about %d (one per uplink per packet)", delayed, 2*n)
	}
	for _, u := range []string{"isp0", "isp1"} {
		sent := snap[`router_uplink_datagrams_sent_total{uplink="`+u+`"}`]
		// 2 copies + 1 delayed per packet, plus keepalives (10 per second).
		if sent < 3*n*0.99 || sent > 3*n+100 {
			t.Errorf("uplink %s sent %v datagrams, want about %d", u, sent, 3*n)
		}
	}
}

// TestLoopbackSlowPathStillGetsReplies has one fast uplink that loses 20% of the
// replies and one slower, perfect one. The router's copies on the slow uplink
// always arrive second (duplicates at the proxy), yet the proxy must keep
// sending replies over it: the router's per-path keepalives keep it known.
func TestLoopbackSlowPathStillGetsReplies(t *testing.T) {
	const n = 3000
	up, down := runCheckedGame(t, n, 1000, "", func(proxyAddr netip.AddrPort) []netip.AddrPort {
		fast, err := linkem.NewUDPRelay(netip.MustParseAddrPort("127.0.0.1:0"), proxyAddr,
			linkem.Config{}, linkem.Config{Loss: 0.2, Seed: 7})
		if err != nil {
			t.Fatal(err)
		}
		slow, err := linkem.NewUDPRelay(netip.MustParseAddrPort("127.0.0.1:0"), proxyAddr,
			linkem.Config{Delay: linkem.Duration(3 * time.Millisecond)}, linkem.Config{Delay: linkem.Duration(3 * time.Millisecond)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fast.Close(); slow.Close() })
		return []netip.AddrPort{fast.Addr(), slow.Addr()}
	})
	for name, tl := range map[string]*tally{"client→server": up, "server→client": down} {
		got, dups, bad := tl.snapshot()
		t.Logf("%s: received %d of %d", name, got, n)
		// Without the slow path the replies would lose 20%; with it, nothing
		// (a few packets allowed for a loaded machine).
		if n-got > n/200 || dups != 0 || bad != 0 {
			t.Errorf("%s: received %d of %d, %d duplicates, %d corrupted", name, got, n, dups, bad)
		}
	}
}

// TestLoopbackOutageMovesCopies cuts one of two uplinks for two seconds while
// the other loses 10% each way. Once the router marks the cut uplink down (and
// the proxy sees that path fall silent), each side sends the cut uplink's copy
// on the live one too, so the outage costs far less than the live uplink's 10%.
func TestLoopbackOutageMovesCopies(t *testing.T) {
	const n, rate = 4000, 1000 // 4 s; the outage is from 1 s to 3 s
	up, down, r := runCheckedGameWith(t, n, rate, "", func(proxyAddr netip.AddrPort) []netip.AddrPort {
		lossy, err := linkem.NewUDPRelay(netip.MustParseAddrPort("127.0.0.1:0"), proxyAddr,
			linkem.Config{Loss: 0.1, Seed: 31}, linkem.Config{Loss: 0.1, Seed: 32})
		if err != nil {
			t.Fatal(err)
		}
		outage := []linkem.Outage{{Start: linkem.Duration(time.Second), End: linkem.Duration(3 * time.Second)}}
		cut, err := linkem.NewUDPRelay(netip.MustParseAddrPort("127.0.0.1:0"), proxyAddr,
			linkem.Config{Outages: outage}, linkem.Config{Outages: outage})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { lossy.Close(); cut.Close() })
		return []netip.AddrPort{lossy.Addr(), cut.Addr()}
	})
	// Without moving copies the outage would cost 10% of its 2,000 packets (about
	// 200) each way. Moving them leaves the ~400 ms it takes to notice (about
	// 40) plus 1% of the rest (about 16).
	for name, tl := range map[string]*tally{"client→server": up, "server→client": down} {
		got, dups, bad := tl.snapshot()
		t.Logf("%s: lost %d of %d", name, n-got, n)
		if n-got > 120 || dups != 0 || bad != 0 {
			t.Errorf("%s: lost %d of %d (want under 120), %d duplicates, %d corrupted", name, n-got, n, dups, bad)
		}
	}
	if moved := r.Metrics().Snapshot()["router_moved_copies_total"]; moved < 1000 {
		t.Errorf("router moved %v copies, want most of the outage's packets", moved)
	}
}

// TestLoopbackDeadFromStart has one uplink dead from the start and the other
// losing 10% each way. The proxy never hears from the dead uplink, but the
// router's keepalives say it has two, so the replies get two copies over the
// live one, as the router's packets do: about 1% lost each way instead of 10%.
func TestLoopbackDeadFromStart(t *testing.T) {
	const n = 3000
	up, down := runCheckedGame(t, n, 1000, "", func(proxyAddr netip.AddrPort) []netip.AddrPort {
		dead, err := linkem.NewUDPRelay(netip.MustParseAddrPort("127.0.0.1:0"), proxyAddr,
			linkem.Config{Loss: 1}, linkem.Config{Loss: 1})
		if err != nil {
			t.Fatal(err)
		}
		lossy, err := linkem.NewUDPRelay(netip.MustParseAddrPort("127.0.0.1:0"), proxyAddr,
			linkem.Config{Loss: 0.1, Seed: 41}, linkem.Config{Loss: 0.1, Seed: 42})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dead.Close(); lossy.Close() })
		return []netip.AddrPort{dead.Addr(), lossy.Addr()}
	})
	for name, tl := range map[string]*tally{"client→server": up, "server→client": down} {
		got, dups, bad := tl.snapshot()
		t.Logf("%s: lost %d of %d", name, n-got, n)
		// Two copies: 1% (30 expected); one copy: 10% (300). The first ~300 ms,
		// before the dead uplink is marked down, have one copy upstream.
		if n-got > 100 || dups != 0 || bad != 0 {
			t.Errorf("%s: lost %d of %d (want under 100), %d duplicates, %d corrupted", name, n-got, n, dups, bad)
		}
	}
}
