package gamegen

import (
	"encoding/binary"
	"math"
	"time"
)

// Wire format of every generator datagram (big-endian, 32-byte header, then
// zero padding up to the configured size or a kind-specific body):
//
//	0  magic   uint32  "GMGN"
//	4  version uint8   1
//	5  kind    uint8   KindClientTick ... KindReportReply
//	6  flags   uint8   flagEcho, flagWarmup
//	7  zero    uint8
//	8  length  uint16  total datagram length, so truncation is detected
//	10 dl      uint16  client ticks: the client's late deadline in units of
//	                   100 µs, so the server counts late ticks by the same rule
//	12 run     uint32  random per client run: a restarted client on the same
//	                   port is a new session, not a burst of duplicates
//	16 seq     uint64
//	24 sendTs  int64   CLOCK_MONOTONIC ns at send (an echo keeps the client's)
const (
	magic      = 0x474d474e // "GMGN"
	version    = 1
	HeaderLen  = 32
	MinSize    = HeaderLen
	MaxSize    = 65507 // largest UDP payload over IPv4
	maxReadLen = 65536
)

// Packet kinds.
const (
	KindClientTick  = 1 // client → server game tick
	KindServerTick  = 2 // server → client game tick (the server's own stream)
	KindEcho        = 3 // server → client copy of a client tick (RTT)
	KindReportReq   = 4 // client → server: stop your stream, send your counters
	KindReportReply = 5 // server → client: counters of the client → server direction
)

const (
	flagEcho   = 1 << 0 // client asks the server to echo this tick
	flagWarmup = 1 << 1 // sent during warm-up: not counted in statistics
)

// header is the decoded fixed part of a datagram.
type header struct {
	kind  uint8
	flags uint8
	dl    uint16 // deadline, in deadlineUnit
	run   uint32
	seq   uint64
	ts    int64
}

// deadlineUnit is the resolution of the deadline carried in client ticks.
const deadlineUnit = 100 * time.Microsecond

// maxDeadline is the largest deadline a tick can carry.
const maxDeadline = 0xffff * deadlineUnit

// putHeader writes h into b[:HeaderLen] and stamps the total length n.
func putHeader(b []byte, h header, n int) {
	_ = b[HeaderLen-1]
	binary.BigEndian.PutUint32(b[0:], magic)
	b[4] = version
	b[5] = h.kind
	b[6] = h.flags
	b[7] = 0
	binary.BigEndian.PutUint16(b[8:], uint16(n))
	binary.BigEndian.PutUint16(b[10:], h.dl)
	binary.BigEndian.PutUint32(b[12:], h.run)
	binary.BigEndian.PutUint64(b[16:], h.seq)
	binary.BigEndian.PutUint64(b[24:], uint64(h.ts))
}

// setSeqTs rewrites only the fields that change from tick to tick.
func setSeqTs(b []byte, seq uint64, ts int64) {
	binary.BigEndian.PutUint64(b[16:], seq)
	binary.BigEndian.PutUint64(b[24:], uint64(ts))
}

// parseHeader validates b and decodes its header. It reports false for
// anything that is not a well-formed datagram of a known kind.
func parseHeader(b []byte) (header, bool) {
	if len(b) < HeaderLen || binary.BigEndian.Uint32(b) != magic || b[4] != version {
		return header{}, false
	}
	if int(binary.BigEndian.Uint16(b[8:])) != len(b) {
		return header{}, false
	}
	h := header{
		kind:  b[5],
		flags: b[6],
		dl:    binary.BigEndian.Uint16(b[10:]),
		run:   binary.BigEndian.Uint32(b[12:]),
		seq:   binary.BigEndian.Uint64(b[16:]),
		ts:    int64(binary.BigEndian.Uint64(b[24:])),
	}
	switch h.kind {
	case KindClientTick, KindServerTick, KindEcho, KindReportReq:
	case KindReportReply:
		if len(b) != HeaderLen+replyBodyLen {
			return header{}, false
		}
	default:
		return header{}, false
	}
	return h, true
}

// serverReply is the body of a KindReportReply: the server's receive-side
// statistics of the client → server direction and its send-side count of
// the server → client direction.
type serverReply struct {
	up       DirectionStats // Sent is left zero: only the client knows it
	downSent uint64
	rate     float64
	size     uint64
	echoed   uint64
}

const replyFields = 21
const replyBodyLen = replyFields * 8

// marshal writes the reply body into b[:replyBodyLen]. Durations travel as
// nanoseconds and the rate as its IEEE 754 bits.
func (r *serverReply) marshal(b []byte) {
	u, l := &r.up, &r.up.Latency
	v := [replyFields]uint64{
		u.Received, u.Duplicates, u.Reordered, u.Late, u.Malformed, u.TooOld, u.Warmup,
		uint64(u.Deadline), l.Count, uint64(l.Min), uint64(l.Mean), uint64(l.P50),
		uint64(l.P99), uint64(l.P999), uint64(l.Max), uint64(l.Jitter), uint64(l.StdDev),
		r.downSent, math.Float64bits(r.rate), r.size, r.echoed,
	}
	for i, x := range v {
		binary.BigEndian.PutUint64(b[i*8:], x)
	}
}

// unmarshal is the inverse of marshal; b must hold replyBodyLen bytes.
func (r *serverReply) unmarshal(b []byte) {
	var v [replyFields]uint64
	for i := range v {
		v[i] = binary.BigEndian.Uint64(b[i*8:])
	}
	d := func(i int) time.Duration { return time.Duration(v[i]) }
	u, l := &r.up, &r.up.Latency
	u.Received, u.Duplicates, u.Reordered, u.Late, u.Malformed, u.TooOld, u.Warmup = v[0], v[1], v[2], v[3], v[4], v[5], v[6]
	u.Deadline, l.Count, l.Min, l.Mean, l.P50 = d(7), v[8], d(9), d(10), d(11)
	l.P99, l.P999, l.Max, l.Jitter, l.StdDev = d(12), d(13), d(14), d(15), d(16)
	r.downSent, r.rate, r.size, r.echoed = v[17], math.Float64frombits(v[18]), v[19], v[20]
	if math.IsNaN(r.rate) || math.IsInf(r.rate, 0) || r.rate < 0 {
		r.rate = 0
	}
}
