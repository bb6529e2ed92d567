package wire

import "encoding/binary"

// Quality is the body of a TypeQuality control message: what its sender
// received over the last interval on the one path the report travels on. The
// receiver of a report knows which of its uplinks that is (the socket it came
// in on), so the body names no path; a sender with several paths sends one
// report on each. Figures are built from packet IDs and shard descriptors of
// data datagrams (see package quality):
//
//	0      version (QualityVersion; a report of another version is dropped)
//	1      flags (0; unknown bits refuse the report)
//	2..3   interval the figures cover, ms
//	4..7   received: data datagrams of the session that arrived on this path
//	8..11  lost: datagrams this path was carrying that never arrived within
//	       the window (gaps in its packet IDs and shard indices)
//	12..15 late: datagrams that arrived more than the late threshold after the
//	       first datagram of the same packet on any path
//	16..19 lag mean, µs: how long this path's first datagram of a packet came
//	       after the first one on any path (0 on the fastest path): the
//	       one-way delay of this path relative to the session's best
//	20..23 lag max, µs
//	24..27 packets: distinct packet IDs the session saw on any path
//
// Counts saturate at 2^32-1. The body is QualityLen long; longer bodies (a
// later minor version appending fields) are read up to QualityLen.
type Quality struct {
	IntervalMs uint16
	Received   uint32
	Lost       uint32
	Late       uint32
	LagMeanUs  uint32
	LagMaxUs   uint32
	Packets    uint32
}

// QualityVersion is the version of the Quality body this code writes.
const QualityVersion = 1

// QualityLen is the length of a Quality body.
const QualityLen = 28

// QualityMaxLen bounds what ParseQuality accepts.
const QualityMaxLen = 64

// Put writes q into b[:QualityLen].
func (q *Quality) Put(b []byte) []byte {
	_ = b[QualityLen-1]
	b[0], b[1] = QualityVersion, 0
	binary.BigEndian.PutUint16(b[2:], q.IntervalMs)
	binary.BigEndian.PutUint32(b[4:], q.Received)
	binary.BigEndian.PutUint32(b[8:], q.Lost)
	binary.BigEndian.PutUint32(b[12:], q.Late)
	binary.BigEndian.PutUint32(b[16:], q.LagMeanUs)
	binary.BigEndian.PutUint32(b[20:], q.LagMaxUs)
	binary.BigEndian.PutUint32(b[24:], q.Packets)
	return b[:QualityLen]
}

// ParseQuality reads a Quality body.
func ParseQuality(b []byte, q *Quality) error {
	if len(b) < QualityLen || len(b) > QualityMaxLen || b[0] != QualityVersion || b[1] != 0 {
		return ErrPayload
	}
	q.IntervalMs = binary.BigEndian.Uint16(b[2:])
	q.Received = binary.BigEndian.Uint32(b[4:])
	q.Lost = binary.BigEndian.Uint32(b[8:])
	q.Late = binary.BigEndian.Uint32(b[12:])
	q.LagMeanUs = binary.BigEndian.Uint32(b[16:])
	q.LagMaxUs = binary.BigEndian.Uint32(b[20:])
	q.Packets = binary.BigEndian.Uint32(b[24:])
	return nil
}

// LossRate is lost / (received + lost), 0 when the path carried nothing.
func (q *Quality) LossRate() float64 {
	if q.Received+q.Lost == 0 {
		return 0
	}
	return float64(q.Lost) / (float64(q.Received) + float64(q.Lost))
}
