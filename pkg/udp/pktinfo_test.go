package udp

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// A socket bound to the unspecified address, with PacketInfo, learns which of
// the host's addresses each datagram was sent to, and answers from it: the
// peer sees the reply come from the address it wrote to (127.0.0.1 and
// 127.0.0.2 are both loopback addresses), not the kernel's first choice.
func TestPacketInfoStickySource(t *testing.T) {
	for _, tc := range []struct{ network, bind string }{{"udp4", "0.0.0.0:0"}, {"udp", ""}} {
		t.Run(tc.network, func(t *testing.T) {
			var local netip.AddrPort
			if tc.bind != "" {
				local = netip.MustParseAddrPort(tc.bind)
			}
			srv, err := Listen(tc.network, Options{Local: local, PacketInfo: true})
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			port := srv.LocalAddr().Port()
			for _, dst := range []string{"127.0.0.2", "127.0.0.1", "127.0.0.3"} {
				to := netip.AddrPortFrom(netip.MustParseAddr(dst), port)
				cl, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := cl.Write([]byte("hi " + dst)); err != nil {
					t.Fatal(err)
				}
				msgs := []Message{{Buf: make([]byte, 64)}, {Buf: make([]byte, 64)}}
				srv.SetReadDeadline(time.Now().Add(2 * time.Second))
				n, err := srv.ReadBatch(msgs)
				if err != nil || n != 1 {
					t.Fatalf("read: %d, %v", n, err)
				}
				if got := msgs[0].Local; got != to.Addr() {
					t.Fatalf("Local = %v, want %v", got, to.Addr())
				}
				// A TOS byte as well: both control messages in one datagram.
				reply := []Message{{Buf: []byte("back"), N: 4, Addr: msgs[0].Addr, Local: msgs[0].Local, TOS: 0xb8}}
				if n, err := srv.WriteBatch(reply); n != 1 || err != nil {
					t.Fatalf("write: %d, %v", n, err)
				}
				// An unconnected read shows the reply's source: the connected
				// socket would filter a reply from another address out.
				cl.Close()
				raw, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(msgs[0].Addr))
				if err != nil {
					t.Fatal(err)
				}
				if err := srv.WriteToFrom([]byte("again"), msgs[0].Addr, msgs[0].Local); err != nil {
					t.Fatal(err)
				}
				raw.SetReadDeadline(time.Now().Add(2 * time.Second))
				buf := make([]byte, 64)
				nb, from, err := raw.ReadFromUDPAddrPort(buf)
				raw.Close()
				if err != nil || string(buf[:nb]) != "again" {
					t.Fatalf("reply: %q, %v", buf[:nb], err)
				}
				if from.Addr().Unmap() != to.Addr() || from.Port() != port {
					t.Fatalf("reply came from %v, want %v", from, to)
				}
			}
		})
	}
}

// Without PacketInfo no control buffer is read and Local stays zero.
func TestPacketInfoOff(t *testing.T) {
	srv, err := Listen("udp4", Options{Local: netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cl, _ := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(srv.LocalAddr()))
	defer cl.Close()
	cl.Write([]byte("x"))
	msgs := []Message{{Buf: make([]byte, 8), Local: netip.MustParseAddr("10.0.0.1")}}
	srv.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := srv.ReadBatch(msgs); n != 1 || err != nil {
		t.Fatal(n, err)
	}
	if msgs[0].Local.IsValid() {
		t.Fatalf("Local = %v without PacketInfo", msgs[0].Local)
	}
}

// Reading the destination and sending from a chosen source allocate nothing.
func TestPacketInfoDoesNotAllocate(t *testing.T) {
	srv, err := Listen("udp4", Options{Local: netip.MustParseAddrPort("0.0.0.0:0"), PacketInfo: true, RecvBuffer: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	peer, err := Listen("udp4", Options{Local: netip.MustParseAddrPort("127.0.0.1:0"), RecvBuffer: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), srv.LocalAddr().Port())
	buf := make([]byte, 64)
	msgs := []Message{{Buf: make([]byte, 64)}}
	round := func() {
		peer.WriteTo(buf[:32], to)
		if n, err := srv.ReadBatch(msgs); n != 1 || err != nil || msgs[0].Local != to.Addr() {
			t.Fatalf("ReadBatch = %d, %v, local %v", n, err, msgs[0].Local)
		}
		if err := srv.WriteToFrom(buf[:16], msgs[0].Addr, msgs[0].Local); err != nil {
			t.Fatal(err)
		}
		if _, from, err := peer.ReadFrom(buf); err != nil || from != to {
			t.Fatalf("reply from %v (%v), want %v", from, err, to)
		}
	}
	round()
	if a := testing.AllocsPerRun(200, round); a != 0 {
		t.Errorf("PacketInfo read and sourced write: %v allocs per round, want 0", a)
	}
}
