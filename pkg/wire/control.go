package wire

import (
	"encoding/binary"
	"net/netip"
	"time"
)

// Ping is the body of a keepalive. The receiver echoes it in a Pong on the path it
// came from, so the sender learns the round-trip time of that uplink.
type Ping struct {
	Seq    uint32 // per uplink
	Uplink uint8  // the sender's uplink index, echoed back
	SentAt int64  // the sender's monotonic clock, echoed back
}

// PingLen is the body length of a Ping.
const PingLen = 16

// Put writes p into b[:PingLen].
func (p *Ping) Put(b []byte) []byte {
	_ = b[PingLen-1]
	binary.BigEndian.PutUint32(b[0:], p.Seq)
	b[4] = p.Uplink
	b[5], b[6], b[7] = 0, 0, 0
	binary.BigEndian.PutUint64(b[8:], uint64(p.SentAt))
	return b[:PingLen]
}

// ParsePing reads a Ping body.
func ParsePing(b []byte, p *Ping) error {
	if len(b) != PingLen {
		return ErrPayload
	}
	p.Seq = binary.BigEndian.Uint32(b[0:])
	p.Uplink = b[4]
	p.SentAt = int64(binary.BigEndian.Uint64(b[8:]))
	return nil
}

// Pong answers a Ping.
type Pong struct {
	Ping       Ping  // echoed unchanged
	Overloaded bool  // the proxy asks its clients to move elsewhere if they can
	PeerTime   int64 // the answering side's monotonic clock when it answered
	// Epoch is the answering side's restart epoch, random per start (see
	// package doc); 0 when it has none. A pong with one is PongEpochLen long.
	Epoch uint64
}

// PongLen is the body length of a Pong without an epoch (older proxies).
const PongLen = PingLen + 16

// PongEpochLen is the body length of a Pong that carries an epoch.
const PongEpochLen = PongLen + 8

const pongOverloaded = 1 << 0

// Put writes p into b[:PongLen], or b[:PongEpochLen] when p has an epoch.
func (p *Pong) Put(b []byte) []byte {
	_ = b[PongLen-1]
	p.Ping.Put(b)
	var flags byte
	if p.Overloaded {
		flags |= pongOverloaded
	}
	b[PingLen] = flags
	for i := PingLen + 1; i < PingLen+8; i++ {
		b[i] = 0
	}
	binary.BigEndian.PutUint64(b[PingLen+8:], uint64(p.PeerTime))
	if p.Epoch != 0 {
		binary.BigEndian.PutUint64(b[PongLen:], p.Epoch)
		return b[:PongEpochLen]
	}
	return b[:PongLen]
}

// ParsePong reads a Pong body, with or without an epoch.
func ParsePong(b []byte, p *Pong) error {
	if len(b) != PongLen && len(b) != PongEpochLen {
		return ErrPayload
	}
	p.Epoch = 0
	if len(b) == PongEpochLen {
		p.Epoch = binary.BigEndian.Uint64(b[PongLen:])
	}
	if err := ParsePing(b[:PingLen], &p.Ping); err != nil {
		return err
	}
	p.Overloaded = b[PingLen]&pongOverloaded != 0
	p.PeerTime = int64(binary.BigEndian.Uint64(b[PingLen+8:]))
	return nil
}

// Probe asks a proxy how far it is from a game server: the router adds its own
// RTT to the proxy to the answer and picks the proxy with the lowest sum. It
// travels on any authenticated session (usually the control session, which has
// no target of its own), so Target names the server.
type Probe struct {
	Seq    uint32
	SentAt int64 // the asker's monotonic clock, echoed back
	Target netip.AddrPort
}

// ProbeLen is the body length of a Probe (an IPv6 target fits).
const ProbeLen = 4 + 8 + 1 + 16 + 2

// Put writes p into b[:ProbeLen].
func (p *Probe) Put(b []byte) []byte {
	_ = b[ProbeLen-1]
	binary.BigEndian.PutUint32(b[0:], p.Seq)
	binary.BigEndian.PutUint64(b[4:], uint64(p.SentAt))
	putAddrPort(b[12:], p.Target)
	return b[:ProbeLen]
}

// ParseProbe reads a Probe body.
func ParseProbe(b []byte, p *Probe) error {
	if len(b) != ProbeLen {
		return ErrPayload
	}
	p.Seq = binary.BigEndian.Uint32(b[0:])
	p.SentAt = int64(binary.BigEndian.Uint64(b[4:]))
	var ok bool
	p.Target, ok = parseAddrPort(b[12:])
	if !ok {
		return ErrPayload
	}
	return nil
}

// ProbeReply answers a Probe.
type ProbeReply struct {
	Probe      Probe         // echoed unchanged
	ServerRTT  time.Duration // the proxy's current RTT to Target; 0 when unknown
	Allowed    bool          // the asking client may reach Target through this proxy
	Overloaded bool          // the proxy would rather not take new sessions
}

// ProbeReplyLen is the body length of a ProbeReply.
const ProbeReplyLen = ProbeLen + 8 + 1

const (
	probeAllowed    = 1 << 0
	probeOverloaded = 1 << 1
)

// Put writes r into b[:ProbeReplyLen].
func (r *ProbeReply) Put(b []byte) []byte {
	_ = b[ProbeReplyLen-1]
	r.Probe.Put(b)
	binary.BigEndian.PutUint64(b[ProbeLen:], uint64(r.ServerRTT))
	var f byte
	if r.Allowed {
		f |= probeAllowed
	}
	if r.Overloaded {
		f |= probeOverloaded
	}
	b[ProbeLen+8] = f
	return b[:ProbeReplyLen]
}

// ParseProbeReply reads a ProbeReply body.
func ParseProbeReply(b []byte, r *ProbeReply) error {
	if len(b) != ProbeReplyLen {
		return ErrPayload
	}
	if err := ParseProbe(b[:ProbeLen], &r.Probe); err != nil {
		return err
	}
	rtt := int64(binary.BigEndian.Uint64(b[ProbeLen:]))
	if rtt < 0 {
		return ErrPayload
	}
	r.ServerRTT = time.Duration(rtt)
	f := b[ProbeLen+8]
	r.Allowed, r.Overloaded = f&probeAllowed != 0, f&probeOverloaded != 0
	return nil
}

// putAddrPort writes a family byte (0, 4 or 6), 16 address bytes and a port.
func putAddrPort(b []byte, ap netip.AddrPort) {
	for i := range b[:19] {
		b[i] = 0
	}
	a := ap.Addr()
	switch {
	case !a.IsValid():
		return
	case a.Is4():
		b[0] = 4
		a4 := a.As4()
		copy(b[1:], a4[:])
	default:
		b[0] = 6
		a16 := a.As16()
		copy(b[1:], a16[:])
	}
	binary.BigEndian.PutUint16(b[17:], ap.Port())
}

func parseAddrPort(b []byte) (netip.AddrPort, bool) {
	port := binary.BigEndian.Uint16(b[17:])
	switch b[0] {
	case 0:
		return netip.AddrPort{}, true
	case 4:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[1:5])), port), true
	case 6:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[1:17])), port), true
	}
	return netip.AddrPort{}, false
}
