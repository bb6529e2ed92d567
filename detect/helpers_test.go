package detect

import (
	"net/netip"
)

// testFlow returns a distinct UDP flow from a LAN host in 198.18.0.0/15 to a
// server in 198.19.0.0/16; addresses are data only.
func testFlow(i int) FiveTuple {
	return FiveTuple{
		Proto: ProtoUDP,
		Src:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(i % 250)}), uint16(40000+i%20000)),
		Dst:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), 4000),
	}
}

func udp(src, dst string) FiveTuple {
	return FiveTuple{Proto: ProtoUDP, Src: netip.MustParseAddrPort(src), Dst: netip.MustParseAddrPort(dst)}
}
