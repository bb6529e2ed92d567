package detect

import (
	"math/bits"
	"net/netip"
)

// IP protocol numbers the tables know.
const (
	ProtoTCP uint8 = 6
	ProtoUDP uint8 = 17
)

// FiveTuple names a flow as the router sees it leaving the LAN: Src is the
// LAN client, Dst the remote server. Addresses should be unmapped (an IPv4
// peer as 4 bytes, not ::ffff:a.b.c.d) so that one destination has one key.
type FiveTuple struct {
	Proto uint8
	Src   netip.AddrPort
	Dst   netip.AddrPort
}

// Decision is the verdict for one packet of a flow.
type Decision struct {
	LC      bool   // latency-critical
	AppType string // "shooter", "voip", ...; empty when unknown
	App     string // application name from the table; empty when none
	// Rule names what matched: "port:cs2", "asn:AS32590", "dscp:EF",
	// "learned", "adhoc", "rdns:<pattern>"; empty when not LC.
	Rule string
	// Proxy reports that the flow may be sent through a proxy: it was LC
	// from its first packet, so no packet has yet left with its own address.
	Proxy bool
	// ExpectedPPS is the application's expected packet rate (0 if unknown),
	// a seed for the session's rate estimate.
	ExpectedPPS float64
	// Proxies lists the application's preferred proxies, if any. Shared with
	// the table: do not modify.
	Proxies []string
}

// mix64 is the finaliser of SplitMix64: cheap, and every input bit reaches
// every output bit, which linear probing needs.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

func hashAddr(seed uint64, a netip.Addr) uint64 {
	b := a.As16()
	hi := uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
	lo := uint64(b[8])<<56 | uint64(b[9])<<48 | uint64(b[10])<<40 | uint64(b[11])<<32 |
		uint64(b[12])<<24 | uint64(b[13])<<16 | uint64(b[14])<<8 | uint64(b[15])
	h := mix64(seed ^ hi)
	return mix64(h ^ bits.RotateLeft64(lo, 17))
}

func hashAddrPort(seed uint64, ap netip.AddrPort) uint64 {
	return mix64(hashAddr(seed, ap.Addr()) ^ uint64(ap.Port()))
}

// hashFlow seeds with a per-table random value so that remote hosts cannot
// pick addresses that pile up in one probe run.
func hashFlow(seed uint64, f FiveTuple) uint64 {
	h := hashAddrPort(seed, f.Src)
	return mix64(h ^ hashAddrPort(seed+uint64(f.Proto), f.Dst))
}
