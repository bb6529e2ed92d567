package integration

import (
	"fmt"
	"math"
	"net/netip"
	"testing"

	"github.com/raicnet/raic/integration/linkem"
	"github.com/raicnet/raic/raic"
)

// TestLoopbackFragmentsUnderLoss sends packets bigger than one shard (1,400
// and 4,000 bytes, and 1,400 bytes forced into 500-byte fragments) through two
// uplinks that each lose 5% independently, both ways. Each X-fragment of a copy
// scheme must travel on every uplink like a plain copy, so a fragment is lost
// only when both its copies are (0.25%), and a packet of f fragments with
// probability 1-(1-0.0025)^f: 0.5% for two fragments, 1% for four. Sent once
// each, as coded shards, the same packets lose 10% and 19%.
func TestLoopbackFragmentsUnderLoss(t *testing.T) {
	const loss = 0.05
	for _, c := range []struct {
		size   int
		scheme string
	}{
		{1400, "copy"},
		{4000, "copy"},
		{1400, "copy,frag=500"},
	} {
		t.Run(fmt.Sprintf("%d_%s", c.size, c.scheme), func(t *testing.T) {
			// 300 pps: 4,000-byte packets still make 9,600 datagrams a second
			// on loopback, which a busy machine's socket buffers must hold.
			const n = 2000
			params, err := raic.ParseParams(c.scheme)
			if err != nil {
				t.Fatal(err)
			}
			frags := raic.FragCount(params, c.size)
			if frags < 2 {
				t.Fatalf("%d bytes under %s make %d fragment, the test needs several", c.size, c.scheme, frags)
			}
			up, down, r := runSizedGame(t, n, 300, c.size, `scheme = "`+c.scheme+`"`, func(proxyAddr netip.AddrPort) []netip.AddrPort {
				var addrs []netip.AddrPort
				for i := uint64(0); i < 2; i++ {
					rl, err := linkem.NewUDPRelay(netip.MustParseAddrPort("127.0.0.1:0"), proxyAddr,
						linkem.Config{Loss: loss, Seed: 500 + i}, linkem.Config{Loss: loss, Seed: 600 + i})
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { rl.Close() })
					addrs = append(addrs, rl.Addr())
				}
				return addrs
			})
			p := 1 - math.Pow(1-loss*loss, float64(frags))
			mean, sd := n*p, math.Sqrt(n*p*(1-p))
			hi := mean + 4.5*sd
			for _, d := range []struct {
				name string
				t    *tally
			}{{"client→server", up}, {"server→client", down}} {
				got, dups, bad := d.t.snapshot()
				lost := n - got
				t.Logf("%s: %d fragments per packet, received %d of %d, lost %d (%.2f%%; as copies %.2f%%, allowed ≤ %.0f), duplicates %d, corrupted %d",
					d.name, frags, got, n, lost, 100*float64(lost)/n, 100*p, hi, dups, bad)
				if float64(lost) > hi {
					t.Errorf("%s: lost %d of %d packets of %d fragments; copies of every fragment on both uplinks lose %.0f ± %.0f",
						d.name, lost, n, frags, mean, 4.5*sd)
				}
				if dups != 0 || bad != 0 {
					t.Errorf("%s: %d duplicates and %d corrupted packets reached the game", d.name, dups, bad)
				}
			}
			if tooBig := r.Metrics().Snapshot()["router_too_large_total"]; tooBig != 0 {
				t.Errorf("router_too_large_total = %v, want 0 for %d-byte packets", tooBig, c.size)
			}
		})
	}
}
