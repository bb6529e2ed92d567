package integration

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/pkg/wire"
)

// wireTap counts, on one interface of a namespace, the router's data
// datagrams to the proxy by the DSCP of their IPv4 header. It reads an
// AF_PACKET socket (no libpcap).
type wireTap struct {
	fd     int
	mu     sync.Mutex
	byDSCP map[uint8]int
	done   chan struct{}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func newWireTap(t *testing.T, h *netns.Host, iface string) *wireTap {
	t.Helper()
	w := &wireTap{byDSCP: map[uint8]int{}, done: make(chan struct{})}
	err := h.Do(func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		// ETH_P_ALL: the kernel shows outgoing packets only to such taps.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		w.fd = fd
		tv := unix.Timeval{Usec: 100000}
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
	})
	if err != nil {
		t.Fatal(err)
	}
	go w.read()
	t.Cleanup(w.close)
	return w
}

func (w *wireTap) read() {
	defer close(w.done)
	buf := make([]byte, 65536)
	for {
		n, from, err := unix.Recvfrom(w.fd, buf, 0)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); !ok || ll.Protocol != htons(unix.ETH_P_IP) {
			continue
		}
		p := buf[:n]
		if n < 20 || p[0]>>4 != 4 || p[9] != 17 {
			continue
		}
		ihl := int(p[0]&0x0f) * 4
		if n < ihl+8+wire.HeaderLen {
			continue
		}
		u := p[ihl:]
		if binary.BigEndian.Uint16(u[2:4]) != tpProxyPort || wire.Type(u[8+1]) != wire.TypeData {
			continue
		}
		w.mu.Lock()
		w.byDSCP[p[1]>>2]++
		w.mu.Unlock()
	}
}

func (w *wireTap) close() {
	unix.Shutdown(w.fd, unix.SHUT_RDWR)
	unix.Close(w.fd)
	<-w.done
}

func (w *wireTap) counts() map[uint8]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[uint8]int{}
	for k, v := range w.byDSCP {
		out[k] = v
	}
	return out
}

// TestTransparentDSCPOnTheWire: uplink isp1 has dscp = "EF", isp0 none. A game
// (CS2's ports: 64 pps expected) sends at 200 pps; captured on the router's
// uplink interfaces, isp1's data datagrams carry EF for at most the expected
// 64 per second (plus a small burst) and none beyond, isp0's carry none.
func TestTransparentDSCPOnTheWire(t *testing.T) {
	b := startTransparentBedKeys(t, netns.GameOptions{Uplinks: 2}, nil, true, "", "dscp = \"EF\"\n")
	tap0 := newWireTap(t, b.g.Router, netns.UplinkIface(0))
	tap1 := newWireTap(t, b.g.Router, netns.UplinkIface(1))
	server := netip.AddrPortFrom(netns.ServerAddr, tpGamePort)
	const n, pps, expected = 600, 200, 64
	srv := newEchoServer(t, b.g.Server, tpGamePort, n)
	cl := newGameClient(t, b.g, server, n)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	cl.send(ctx, server, n, pps)
	el := time.Since(start)
	time.Sleep(200 * time.Millisecond)
	c0, c1 := tap0.counts(), tap1.counts()
	got, _, _ := srv.got.snapshot()
	marked := b.metric("router_dscp_marked_packets_total")
	t.Logf("%d packets in %v; isp0 data datagrams by DSCP %v, isp1 %v; router marked %v packets, %v over rate; server got %d",
		n, el.Round(time.Millisecond), c0, c1, marked, b.metric("router_dscp_over_rate_packets_total"), got)
	if c0[46] != 0 {
		t.Errorf("isp0 (no dscp) sent %d EF datagrams", c0[46])
	}
	limit := expected*el.Seconds() + 4
	if ef := float64(c1[46]); ef < 0.9*expected*el.Seconds() || ef > limit {
		t.Errorf("isp1 sent %v EF datagrams in %v, want about %d per second and at most %.0f", ef, el.Round(time.Millisecond), expected, limit)
	}
	if float64(c1[46]) != marked {
		t.Errorf("%d EF datagrams on the wire, the router counted %v marked packets", c1[46], marked)
	}
	if c1[0] < n/2 {
		t.Errorf("isp1 sent only %d unmarked datagrams: the packets above the rate must still go, unmarked", c1[0])
	}
	if got < n*95/100 {
		t.Errorf("server got %d/%d", got, n)
	}
}
