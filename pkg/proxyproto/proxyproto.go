// Package proxyproto writes and reads the headers a proxy puts in front of
// each UDP datagram it forwards so that the game server learns the player's
// real address: the PROXY protocol version 2 header in its DGRAM form (HAProxy's
// spec) and Cloudflare's Simple Proxy Protocol (SPP) header.
//
// PROXY v2 (28 bytes for IPv4, 52 for IPv6, TLVs skipped on reading):
//
//	0..11  signature \r\n\r\n\0\r\nQUIT\n
//	12     0x21: version 2, command PROXY (0x20, LOCAL, carries no addresses)
//	13     0x12: IPv4 over DGRAM, or 0x22: IPv6 over DGRAM
//	14..15 length of what follows
//	16..   source address, destination address, source port, destination port
//
// SPP (38 bytes): magic 0x56EC, client address (16 bytes, IPv4 as ::ffff:a.b.c.d),
// proxy address (16), client port, proxy port; all big-endian.
//
// Encoding writes into the caller's buffer and allocates nothing.
package proxyproto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Kind is which header, if any, goes in front of forwarded datagrams.
type Kind uint8

// Kinds, as the config writes them (client_addr_header).
const (
	None    Kind = iota // no header (the default)
	ProxyV2             // "proxy-v2"
	SPP                 // "spp"
)

// Lengths.
const (
	V2Len4 = 16 + 12
	V2Len6 = 16 + 36
	SPPLen = 38
	// MaxLen is the longest header Put writes.
	MaxLen = V2Len6
)

// SPPMagic starts every SPP header.
const SPPMagic = 0x56EC

var v2sig = [12]byte{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A}

// Errors of parsing.
var (
	ErrShort  = errors.New("proxyproto: datagram shorter than its header")
	ErrHeader = errors.New("proxyproto: no valid header")
)

// ParseKind reads a config value: "", "none", "proxy-v2" or "spp".
func ParseKind(s string) (Kind, error) {
	switch s {
	case "", "none":
		return None, nil
	case "proxy-v2":
		return ProxyV2, nil
	case "spp":
		return SPP, nil
	}
	return None, fmt.Errorf("%q: must be \"proxy-v2\" or \"spp\" (or left out)", s)
}

func (k Kind) String() string {
	switch k {
	case ProxyV2:
		return "proxy-v2"
	case SPP:
		return "spp"
	}
	return "none"
}

// Put writes the header of kind k for a datagram from src to dst into b (at
// least MaxLen bytes) and returns its length (0 for None).
func (k Kind) Put(b []byte, src, dst netip.AddrPort) int {
	switch k {
	case ProxyV2:
		return PutV2(b, src, dst)
	case SPP:
		return PutSPP(b, src, dst)
	}
	return 0
}

// PutV2 writes a PROXY v2 DGRAM header into b (at least V2Len6 bytes when
// either address is IPv6) and returns its length. When one address is IPv4
// and the other IPv6, both are written as IPv6.
func PutV2(b []byte, src, dst netip.AddrPort) int {
	sa, da := src.Addr().Unmap(), dst.Addr().Unmap()
	copy(b, v2sig[:])
	b[12] = 0x21
	if sa.Is4() && da.Is4() {
		_ = b[V2Len4-1]
		b[13] = 0x12
		binary.BigEndian.PutUint16(b[14:], 12)
		s4, d4 := sa.As4(), da.As4()
		copy(b[16:], s4[:])
		copy(b[20:], d4[:])
		binary.BigEndian.PutUint16(b[24:], src.Port())
		binary.BigEndian.PutUint16(b[26:], dst.Port())
		return V2Len4
	}
	_ = b[V2Len6-1]
	b[13] = 0x22
	binary.BigEndian.PutUint16(b[14:], 36)
	s16, d16 := src.Addr().As16(), dst.Addr().As16()
	copy(b[16:], s16[:])
	copy(b[32:], d16[:])
	binary.BigEndian.PutUint16(b[48:], src.Port())
	binary.BigEndian.PutUint16(b[50:], dst.Port())
	return V2Len6
}

// PutSPP writes an SPP header into b (at least SPPLen bytes) and returns its
// length.
func PutSPP(b []byte, src, dst netip.AddrPort) int {
	_ = b[SPPLen-1]
	binary.BigEndian.PutUint16(b, SPPMagic)
	s16, d16 := src.Addr().As16(), dst.Addr().As16()
	copy(b[2:], s16[:])
	copy(b[18:], d16[:])
	binary.BigEndian.PutUint16(b[34:], src.Port())
	binary.BigEndian.PutUint16(b[36:], dst.Port())
	return SPPLen
}

// ParseV2 reads a PROXY v2 header at the start of b. It returns the addresses
// (zero for a LOCAL header or an unspecified family) and the header's length,
// so the payload is b[n:]. It never panics on any input.
func ParseV2(b []byte) (src, dst netip.AddrPort, n int, err error) {
	if len(b) < 16 {
		return src, dst, 0, ErrShort
	}
	if [12]byte(b[:12]) != v2sig || b[12]>>4 != 2 {
		return src, dst, 0, ErrHeader
	}
	l := int(binary.BigEndian.Uint16(b[14:]))
	n = 16 + l
	if len(b) < n {
		return src, dst, 0, ErrShort
	}
	switch b[12] & 0x0f {
	case 0: // LOCAL: a health check of the proxy itself, no addresses
		return src, dst, n, nil
	case 1: // PROXY
	default:
		return src, dst, 0, ErrHeader
	}
	switch b[13] {
	case 0x12, 0x11: // IPv4 (DGRAM, or STREAM from a lenient sender)
		if l < 12 {
			return src, dst, 0, ErrHeader
		}
		src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[16:20])), binary.BigEndian.Uint16(b[24:]))
		dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[20:24])), binary.BigEndian.Uint16(b[26:]))
	case 0x22, 0x21:
		if l < 36 {
			return src, dst, 0, ErrHeader
		}
		src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[16:32])), binary.BigEndian.Uint16(b[48:]))
		dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[32:48])), binary.BigEndian.Uint16(b[50:]))
	case 0x00: // unspecified: addresses unknown
	default:
		return src, dst, 0, ErrHeader
	}
	return src, dst, n, nil
}

// ParseSPP reads an SPP header at the start of b; IPv4-mapped addresses come
// back as IPv4.
func ParseSPP(b []byte) (src, dst netip.AddrPort, n int, err error) {
	if len(b) < SPPLen {
		return src, dst, 0, ErrShort
	}
	if binary.BigEndian.Uint16(b) != SPPMagic {
		return src, dst, 0, ErrHeader
	}
	src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[2:18])).Unmap(), binary.BigEndian.Uint16(b[34:]))
	dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[18:34])).Unmap(), binary.BigEndian.Uint16(b[36:]))
	return src, dst, SPPLen, nil
}

// Parse reads the header of kind k at the start of b and returns the
// addresses and the payload (a sub-slice of b).
func (k Kind) Parse(b []byte) (src, dst netip.AddrPort, payload []byte, err error) {
	var n int
	switch k {
	case ProxyV2:
		src, dst, n, err = ParseV2(b)
	case SPP:
		src, dst, n, err = ParseSPP(b)
	}
	if err != nil {
		return src, dst, nil, err
	}
	return src, dst, b[n:], nil
}
