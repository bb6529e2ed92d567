package integration

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/icmp"

	"github.com/raicnet/raic/integration/netns"
)

// TestTransparentDFTooBigGetsICMP: transparent.mtu is the largest packet the
// router captures. A game packet above it with DF set cannot pass, and the
// LAN host hears so: an ICMP "fragmentation needed" naming that MTU (the
// kernel sends it when it routes the packet to the TUN device), so its path
// MTU discovery works through the router. The packet never reaches the TUN.
func TestTransparentDFTooBigGetsICMP(t *testing.T) {
	const mtu = 1280
	b := startTransparentBedKeys(t, netns.GameOptions{Uplinks: 2}, nil, true, "mtu = 1280\n", "")
	var ic *icmp.PacketConn
	if err := b.g.LAN.Do(func() error {
		var err error
		ic, err = icmp.ListenPacket("ip4:icmp", netns.LANAddr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ic.Close()

	cl := udpIn(t, b.g.LAN, netip.AddrPortFrom(netns.LANAddr, 0))
	raw, err := cl.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	// PROBE sets DF but ignores the learned path MTU, so every send leaves.
	raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_MTU_DISCOVER, syscall.IP_PMTUDISC_PROBE)
	})
	if serr != nil {
		t.Fatal(serr)
	}
	server := netip.AddrPortFrom(netns.ServerAddr, tpGamePort)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go func() {
		pkt := make([]byte, 1400)
		for ctx.Err() == nil {
			cl.WriteToUDPAddrPort(pkt, server)
			time.Sleep(50 * time.Millisecond)
		}
	}()
	buf := make([]byte, 1500)
	for {
		ic.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := ic.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no ICMP fragmentation-needed reached the LAN host: %v", err)
		}
		if n < 8 || buf[0] != 3 || buf[1] != 4 {
			continue // another ICMP message
		}
		got := binary.BigEndian.Uint16(buf[6:8])
		t.Logf("ICMP fragmentation needed from %v, next-hop MTU %d", from, got)
		if got != mtu {
			t.Errorf("next-hop MTU %d, want the transparent mtu %d", got, mtu)
		}
		if a, ok := from.(*net.IPAddr); !ok || !a.IP.Equal(net.IP(netns.LANGateway.AsSlice())) {
			t.Errorf("ICMP from %v, want the router %v", from, netns.LANGateway)
		}
		break
	}
	cancel()
	if v := b.metric("router_transparent_tun_packets_total"); v != 0 {
		t.Errorf("%v oversized packets reached the TUN device", v)
	}
}
