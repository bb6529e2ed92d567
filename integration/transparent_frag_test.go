package integration

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/linkem"
	"github.com/raicnet/raic/integration/netns"
)

// TestTransparentLargePackets: an unmodified LAN program sends 1,400-byte
// game packets, two X-fragments each in the tunnel, through the transparent
// router over two uplinks losing 5% each way; the server echoes them. They
// arrive through the proxy, whole, each way, losing about what copies of
// every fragment lose (0.5%).
//
// Packets the LAN host itself IP-fragments (UDP payloads over ~1,472 bytes on
// a 1,500-byte LAN) are not covered: the eBPF classifier leaves IP fragments
// alone, so they take the kernel's path un-proxied.
func TestTransparentLargePackets(t *testing.T) {
	loss := linkem.Config{Loss: 0.05}
	b := startTransparentBed(t, []netns.LinkPair{{Up: loss, Down: loss}, {Up: loss, Down: loss}}, nil)
	for _, size := range []int{1400} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			port := uint16(tpGamePort + size%7)
			server := netip.AddrPortFrom(netns.ServerAddr, port)
			const n = 600
			srvConn := udpIn(t, b.g.Server, server)
			got := newSizedTally(n, size)
			var mu sync.Mutex
			from := map[netip.Addr]int{}
			go func() {
				buf := make([]byte, maxCheckPktLen+1)
				reply := make([]byte, size)
				for {
					k, src, err := srvConn.ReadFromUDPAddrPort(buf)
					if err != nil {
						return
					}
					mu.Lock()
					from[src.Addr()]++
					mu.Unlock()
					got.add(buf[:k], 'C')
					if k == size {
						copy(reply, buf[:k])
						fillPacket(reply, 'S', uint32(buf[1])<<24|uint32(buf[2])<<16|uint32(buf[3])<<8|uint32(buf[4]))
						srvConn.WriteToUDPAddrPort(reply, src)
					}
				}
			}()
			cl := udpIn(t, b.g.LAN, netip.AddrPortFrom(netns.LANAddr, 0))
			down := newSizedTally(n, size)
			go func() {
				buf := make([]byte, maxCheckPktLen+1)
				for {
					k, _, err := cl.ReadFromUDPAddrPort(buf)
					if err != nil {
						return
					}
					down.add(buf[:k], 'S')
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			sizedStream(ctx, n, 100, 'C', size, func(p []byte) { cl.WriteToUDPAddrPort(p, server) })
			time.Sleep(500 * time.Millisecond)
			mu.Lock()
			defer mu.Unlock()
			up, _, upBad := got.snapshot()
			dn, _, dnBad := down.snapshot()
			t.Logf("%d bytes: %d/%d reached the server (from %v), %d replies came back; corrupted %d/%d; TUN packets %v, reinjected %v",
				size, up, n, from, dn, upBad, dnBad, b.metric("router_transparent_tun_packets_total"), b.metric("router_transparent_tun_reinjected_total"))
			if up < n*95/100 || dn < up*95/100 {
				t.Errorf("%d-byte packets: %d/%d up, %d down", size, up, n, dn)
			}
			for a := range from {
				if a != netns.ProxyAddr {
					t.Errorf("packets reached the server from %v, not through the proxy", a)
				}
			}
		})
	}
}
