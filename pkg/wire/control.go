package wire

import "encoding/binary"

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
}

// PongLen is the body length of a Pong.
const PongLen = PingLen + 16

const pongOverloaded = 1 << 0

// Put writes p into b[:PongLen].
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
	return b[:PongLen]
}

// ParsePong reads a Pong body.
func ParsePong(b []byte, p *Pong) error {
	if len(b) != PongLen {
		return ErrPayload
	}
	if err := ParsePing(b[:PingLen], &p.Ping); err != nil {
		return err
	}
	p.Overloaded = b[PingLen]&pongOverloaded != 0
	p.PeerTime = int64(binary.BigEndian.Uint64(b[PingLen+8:]))
	return nil
}
