package nat

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

var (
	server = netip.MustParseAddrPort("198.18.41.2:27020")
	client = netip.MustParseAddrPort("198.18.1.2:40001")
)

// TestBuildMatchesGopacket rebuilds a reply and checks it against an
// independent implementation: gopacket decodes it, and the checksums it
// computes for the same headers are the ones Build wrote.
func TestBuildMatchesGopacket(t *testing.T) {
	for _, n := range []int{0, 1, 2, 7, 100, 1371, 1472, 9000} {
		payload := make([]byte, n)
		for i := range payload {
			payload[i] = byte(i*7 + n)
		}
		buf := make([]byte, HeaderLen+MaxPayload)
		l, err := Build(buf, server, client, 0x1234, payload)
		if err != nil {
			t.Fatal(err)
		}
		pkt := buf[:l]
		p := gopacket.NewPacket(pkt, layers.LayerTypeIPv4, gopacket.Default)
		ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if ip == nil || udp == nil {
			t.Fatalf("len %d: gopacket could not decode: %v", n, p.ErrorLayer())
		}
		if !ip.SrcIP.Equal(server.Addr().AsSlice()) || !ip.DstIP.Equal(client.Addr().AsSlice()) ||
			uint16(udp.SrcPort) != server.Port() || uint16(udp.DstPort) != client.Port() || !bytes.Equal(udp.Payload, payload) {
			t.Fatalf("len %d: wrong addresses or payload: %v", n, p)
		}
		if Checksum(pkt[:IPv4HeaderLen]) != 0 {
			t.Fatalf("len %d: IPv4 header checksum wrong", n)
		}
		if !UDPChecksumOK(pkt) {
			t.Fatalf("len %d: UDP checksum wrong", n)
		}
		// gopacket's own checksums over the same headers.
		sb := gopacket.NewSerializeBuffer()
		ip2 := &layers.IPv4{Version: 4, TTL: 64, Id: 0x1234, Protocol: layers.IPProtocolUDP, SrcIP: ip.SrcIP, DstIP: ip.DstIP}
		udp2 := &layers.UDP{SrcPort: udp.SrcPort, DstPort: udp.DstPort}
		udp2.SetNetworkLayerForChecksum(ip2)
		if err := gopacket.SerializeLayers(sb, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}, ip2, udp2, gopacket.Payload(payload)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(sb.Bytes(), pkt) {
			t.Fatalf("len %d: differs from gopacket's packet\n got %x\nwant %x", n, pkt[:28], sb.Bytes()[:28])
		}
		var q Packet
		if err := Parse(pkt, &q); err != nil || q.Src != server || q.Dst != client || !bytes.Equal(q.Payload, payload) {
			t.Fatalf("len %d: parse back: %v %+v", n, err, q)
		}
	}
}

func TestParseRejects(t *testing.T) {
	buf := make([]byte, 200)
	l, _ := Build(buf, client, server, 1, make([]byte, 50))
	good := buf[:l]
	mut := func(f func(b []byte)) []byte {
		b := append([]byte(nil), good...)
		f(b)
		return b
	}
	cases := []struct {
		name string
		pkt  []byte
		want error
	}{
		{"short", good[:10], ErrShort},
		{"ipv6", mut(func(b []byte) { b[0] = 0x60 }), ErrVersion},
		{"ihl", mut(func(b []byte) { b[0] = 0x44 }), ErrLength},
		{"total beyond buffer", mut(func(b []byte) { b[2], b[3] = 0xff, 0xff }), ErrLength},
		{"fragment", mut(func(b []byte) { b[6] = 0x20 }), ErrFragment},
		{"offset", mut(func(b []byte) { b[7] = 1 }), ErrFragment},
		{"tcp", mut(func(b []byte) { b[9] = ProtoTCP }), ErrNotUDP},
		{"udp length", mut(func(b []byte) { b[24], b[25] = 0xff, 0 }), ErrLength},
		{"udp length too small", mut(func(b []byte) { b[24], b[25] = 0, 4 }), ErrLength},
		{"truncated udp", good[:24], ErrLength},
	}
	for _, c := range cases {
		var p Packet
		if err := Parse(c.pkt, &p); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
	if _, err := Build(make([]byte, 10), client, server, 1, nil); err != ErrBuffer {
		t.Errorf("small buffer: %v", err)
	}
}

func TestNoAllocs(t *testing.T) {
	buf := make([]byte, 2048)
	payload := make([]byte, 100)
	var p Packet
	if a := testing.AllocsPerRun(100, func() {
		n, _ := Build(buf, server, client, 9, payload)
		Parse(buf[:n], &p)
	}); a != 0 {
		t.Fatalf("%v allocations", a)
	}
}

func FuzzParse(f *testing.F) {
	buf := make([]byte, 200)
	l, _ := Build(buf, client, server, 1, []byte("hello"))
	f.Add(buf[:l])
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Packet
		if Parse(b, &p) == nil && len(p.Payload) > len(b) {
			t.Fatal("payload beyond the packet")
		}
	})
}

func BenchmarkBuild(b *testing.B) {
	buf := make([]byte, 2048)
	payload := make([]byte, 100)
	b.SetBytes(100)
	for b.Loop() {
		Build(buf, server, client, 9, payload)
	}
}
