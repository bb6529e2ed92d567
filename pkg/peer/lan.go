package peer

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/raicnet/raic/pkg/wire"
)

// LAN frames (transparent mode, site to site). A router that is its LAN's
// gateway carries the UDP packets its LAN hosts send to the peer's LAN
// prefixes inside Link packets, with their original addresses, so the peer
// writes them to its own LAN from the original source: the far host sees the
// near host's real address (SIP and SDP need no rewriting), and its replies
// come back the same way.
//
// A LAN frame shares the first byte, the frame kind, with the vport frames
// (frameToService 1, frameReply 2):
//
//	0       kind (FrameLAN)
//	1       TOS byte of the original IPv4 header
//	2..5    source IPv4 address  6..7   source port
//	8..11   destination IPv4     12..13 destination port
//	14..    the UDP payload
const (
	FrameLAN       = 3
	LANFrameHeader = 14
	// MaxLANPayload is the largest UDP payload a LAN frame carries: a Link
	// packet is one datagram of at most wire.MaxDatagram bytes, with its
	// header, a hello (until the peer has it) and the AEAD tag around the frame.
	MaxLANPayload = wire.MaxDatagram - wire.HeaderLen - wire.HelloMaxLen - wire.TagLen - LANFrameHeader
)

// LANFrame is one UDP packet between the two LANs.
type LANFrame struct {
	TOS      uint8
	Src, Dst netip.AddrPort // IPv4
	Payload  []byte         // a slice of the parsed buffer
}

// Errors of the LAN frame codec; sentinel values, so a caller counts each
// reason without allocating.
var (
	ErrLANShort   = errors.New("peer: LAN frame shorter than its header")
	ErrLANKind    = errors.New("peer: not a LAN frame")
	ErrLANAddress = errors.New("peer: LAN frame address not IPv4, or port 0")
	ErrLANTooBig  = errors.New("peer: LAN payload too large for one datagram")
	ErrLANBuffer  = errors.New("peer: buffer too small for the LAN frame")
)

// PutLANFrame writes f into b and returns the frame's length. The payload
// may already sit at b[LANFrameHeader:] (then it is not copied).
func PutLANFrame(b []byte, f *LANFrame) (int, error) {
	if !f.Src.Addr().Is4() || !f.Dst.Addr().Is4() || f.Src.Port() == 0 || f.Dst.Port() == 0 {
		return 0, ErrLANAddress
	}
	if len(f.Payload) > MaxLANPayload {
		return 0, ErrLANTooBig
	}
	n := LANFrameHeader + len(f.Payload)
	if len(b) < n {
		return 0, ErrLANBuffer
	}
	b[0], b[1] = FrameLAN, f.TOS
	s, d := f.Src.Addr().As4(), f.Dst.Addr().As4()
	copy(b[2:6], s[:])
	binary.BigEndian.PutUint16(b[6:8], f.Src.Port())
	copy(b[8:12], d[:])
	binary.BigEndian.PutUint16(b[12:14], f.Dst.Port())
	if len(f.Payload) > 0 && &f.Payload[0] != &b[LANFrameHeader] {
		copy(b[LANFrameHeader:n], f.Payload)
	}
	return n, nil
}

// ParseLANFrame reads a LAN frame; f.Payload is a slice of b.
func ParseLANFrame(b []byte, f *LANFrame) error {
	if len(b) < LANFrameHeader {
		return ErrLANShort
	}
	if b[0] != FrameLAN {
		return ErrLANKind
	}
	f.TOS = b[1]
	f.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[2:6])), binary.BigEndian.Uint16(b[6:8]))
	f.Dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[8:12])), binary.BigEndian.Uint16(b[12:14]))
	if f.Src.Port() == 0 || f.Dst.Port() == 0 {
		return ErrLANAddress
	}
	f.Payload = b[LANFrameHeader:]
	if len(f.Payload) > MaxLANPayload {
		return ErrLANTooBig
	}
	return nil
}

// IsVPortFrame reports whether a Link packet is a vport frame (for Mux.Deliver).
func IsVPortFrame(b []byte) bool {
	return len(b) > 0 && (b[0] == frameToService || b[0] == frameReply)
}
