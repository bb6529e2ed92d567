// Package nat parses the IPv4/UDP packets that the router captures from its TUN
// device and rebuilds the server's replies as the packets the game client
// expects: an IPv4 header and a UDP header around the payload, addressed from
// the original server to the client, with both checksums computed.
//
// Nothing here allocates; both directions work in caller-owned buffers, so the
// capture and reply paths stay allocation-free.
package nat

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// Header sizes of what this package reads and writes.
const (
	IPv4HeaderLen = 20
	UDPHeaderLen  = 8
	// HeaderLen is the size of the headers Build writes before the payload.
	HeaderLen = IPv4HeaderLen + UDPHeaderLen
	// MaxPayload is the largest UDP payload an IPv4 packet can carry.
	MaxPayload = 65535 - HeaderLen
)

// Protocol numbers.
const (
	ProtoTCP = 6
	ProtoUDP = 17
)

// Parse errors. They are sentinel values so a caller can count each reason
// without allocating.
var (
	ErrShort    = errors.New("nat: packet shorter than its headers")
	ErrVersion  = errors.New("nat: not an IPv4 packet")
	ErrLength   = errors.New("nat: length fields disagree with the packet")
	ErrNotUDP   = errors.New("nat: not UDP")
	ErrFragment = errors.New("nat: IP fragment")
	ErrTooBig   = errors.New("nat: payload too large for one IPv4 packet")
	ErrBuffer   = errors.New("nat: buffer too small")
)

// Packet is what the router needs from one captured IPv4 packet.
type Packet struct {
	Proto   uint8
	DSCP    uint8 // upper six bits of the TOS byte
	Src     netip.AddrPort
	Dst     netip.AddrPort
	Len     int    // IPv4 total length
	Payload []byte // UDP payload, a slice of the parsed buffer
}

// Parse reads the IPv4 header of b and, for UDP, the ports and payload. A
// packet of another protocol fills Proto, DSCP and the addresses (ports zero)
// and returns ErrNotUDP, so the caller can still hand it back to the kernel.
// Fragments return ErrFragment: only a first fragment has ports, and the game
// packets worth proxying are never fragmented.
func Parse(b []byte, p *Packet) error {
	if len(b) < IPv4HeaderLen {
		return ErrShort
	}
	if b[0]>>4 != 4 {
		return ErrVersion
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if ihl < IPv4HeaderLen || total < ihl || total > len(b) {
		return ErrLength
	}
	p.DSCP = b[1] >> 2
	p.Proto = b[9]
	p.Len = total
	src := netip.AddrFrom4([4]byte(b[12:16]))
	dst := netip.AddrFrom4([4]byte(b[16:20]))
	p.Src, p.Dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
	p.Payload = nil
	if binary.BigEndian.Uint16(b[6:8])&0x3fff != 0 { // MF set or an offset
		return ErrFragment
	}
	if p.Proto != ProtoUDP {
		return ErrNotUDP
	}
	u := b[ihl:total]
	if len(u) < UDPHeaderLen {
		return ErrShort
	}
	ulen := int(binary.BigEndian.Uint16(u[4:6]))
	if ulen < UDPHeaderLen || ulen > len(u) {
		return ErrLength
	}
	p.Src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(u[0:2]))
	p.Dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(u[2:4]))
	p.Payload = u[UDPHeaderLen:ulen]
	return nil
}

// Build writes into buf an IPv4/UDP packet from src to dst carrying payload and
// returns its length. Both addresses must be IPv4. id is the IPv4
// identification; the packet is sent without DF so that a router on the LAN
// side with a smaller MTU may still fragment it, as the original server's
// packet could have been. TTL is 64, as a host would send it; the packet is
// written to the TUN device and then forwarded once more by this machine.
func Build(buf []byte, src, dst netip.AddrPort, id uint16, payload []byte) (int, error) {
	if len(payload) > MaxPayload {
		return 0, ErrTooBig
	}
	n := HeaderLen + len(payload)
	if len(buf) < n {
		return 0, ErrBuffer
	}
	copy(buf[HeaderLen:n], payload)
	BuildHeaders(buf[:n], src, dst, id)
	return n, nil
}

// BuildHeaders writes the IPv4 and UDP headers and checksums for a packet
// whose payload already sits at pkt[HeaderLen:]; len(pkt) is the packet
// length. It lets a caller receive the payload straight into place.
func BuildHeaders(pkt []byte, src, dst netip.AddrPort, id uint16) {
	n := len(pkt)
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	ip := pkt[:IPv4HeaderLen]
	ip[0] = 0x45
	ip[1] = 0
	binary.BigEndian.PutUint16(ip[2:4], uint16(n))
	binary.BigEndian.PutUint16(ip[4:6], id)
	binary.BigEndian.PutUint16(ip[6:8], 0)
	ip[8] = 64
	ip[9] = ProtoUDP
	ip[10], ip[11] = 0, 0
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[10:12], ^fold(sum(ip, 0)))

	u := pkt[IPv4HeaderLen:n]
	ulen := uint16(len(u))
	binary.BigEndian.PutUint16(u[0:2], src.Port())
	binary.BigEndian.PutUint16(u[2:4], dst.Port())
	binary.BigEndian.PutUint16(u[4:6], ulen)
	u[6], u[7] = 0, 0
	// Pseudo-header: source, destination, protocol, UDP length.
	acc := sum(ip[12:20], uint32(ProtoUDP)+uint32(ulen))
	cs := ^fold(sum(u, acc))
	if cs == 0 {
		cs = 0xffff // RFC 768: a computed zero is sent as all ones
	}
	binary.BigEndian.PutUint16(u[6:8], cs)
}

// sum adds b as big-endian 16-bit words to acc (one's complement, unfolded).
func sum(b []byte, acc uint32) uint32 {
	a := uint64(acc)
	for len(b) >= 8 {
		a += uint64(binary.BigEndian.Uint32(b)) + uint64(binary.BigEndian.Uint32(b[4:]))
		b = b[8:]
	}
	for len(b) >= 2 {
		a += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		a += uint64(b[0]) << 8
	}
	for a > 0xffffffff {
		a = a>>32 + a&0xffffffff
	}
	return uint32(a>>16) + uint32(a&0xffff)
}

func fold(a uint32) uint16 {
	for a > 0xffff {
		a = a>>16 + a&0xffff
	}
	return uint16(a)
}

// Checksum returns the Internet checksum of b (RFC 1071); a header whose
// checksum field is correct sums to zero.
func Checksum(b []byte) uint16 { return ^fold(sum(b, 0)) }

// UDPChecksumOK verifies the UDP checksum of an IPv4/UDP packet (a zero
// checksum, "none", is accepted).
func UDPChecksumOK(pkt []byte) bool {
	ihl := int(pkt[0]&0x0f) * 4
	u := pkt[ihl:binary.BigEndian.Uint16(pkt[2:4])]
	if binary.BigEndian.Uint16(u[6:8]) == 0 {
		return true
	}
	acc := sum(pkt[12:20], uint32(ProtoUDP)+uint32(len(u)))
	return fold(sum(u, acc)) == 0xffff
}
