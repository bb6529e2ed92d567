package tcpsplit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"

	"github.com/raicnet/raic/pkg/metrics"
)

// A flow's bytes cross the stream in frames: kind (raw or zstd), length
// (four bytes), payload. A chunk is whatever one read from the TCP socket
// returned (at most MaxChunk), framed at once: nothing is held back to fill a
// frame, so a game's small writes leave as they come.
const (
	MaxChunk  = 32 << 10
	frameHead = 5
	kindRaw   = 0
	kindZstd  = 1
)

// Compression skips what does not shrink: a chunk whose zstd form saves less
// than 1/16 goes raw, and after skipRun such chunks in a row the flow stops
// trying for skipFor chunks (already-compressed content: video, archives,
// TLS).
const (
	skipRun = 4
	skipFor = 64
)

var (
	encoder, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	decoder, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(MaxChunk))
)

// Stats counts what compression saved. Every field must be set (see NewStats).
type Stats struct {
	RawBytes, WireBytes *metrics.Counter // chunks offered to compression, and what they became on the wire
	SavedPermille       *metrics.Gauge   // 1000 × (1 − wire/raw) over the program's life
	Flows, Refused      *metrics.Counter
	Active              *metrics.Gauge
}

// NewStats registers the counters under prefix (e.g. "raic_router_tcp").
func NewStats(reg *metrics.Registry, prefix string) *Stats {
	return &Stats{
		RawBytes:      reg.Counter(prefix+"_compress_raw_bytes_total", "bytes of TCP flows with compression on, before it"),
		WireBytes:     reg.Counter(prefix+"_compress_wire_bytes_total", "the same bytes as sent on the aggregated connection"),
		SavedPermille: reg.Gauge(prefix+"_compress_saved_permille", "share of bytes compression saved, in 1/1000"),
		Flows:         reg.Counter(prefix+"_flows_total", "TCP flows carried"),
		Refused:       reg.Counter(prefix+"_flows_refused_total", "TCP flows refused (target not allowed, dial failed, no connection, flow table or the client's share of it full)"),
		Active:        reg.Gauge(prefix+"_flows_active", "TCP flows open now"),
	}
}

func (s *Stats) account(raw, wire int) {
	s.RawBytes.Add(uint64(raw))
	s.WireBytes.Add(uint64(wire))
	if r := s.RawBytes.Load(); r > 0 {
		s.SavedPermille.Set(int64(1000 - s.WireBytes.Load()*1000/r))
	}
}

// framer turns chunks into frames.
type framer struct {
	compress bool
	fails    int // incompressible chunks in a row
	skip     int // chunks left to send raw without trying
	stats    *Stats
	out      []byte
}

// frame returns the frame for chunk; the slice is reused by the next call.
func (f *framer) frame(chunk []byte) []byte {
	f.out = f.out[:0]
	f.out = append(f.out, kindRaw, 0, 0, 0, 0)
	if f.compress {
		tried := false
		if f.skip > 0 {
			f.skip--
		} else {
			tried = true
			f.out = encoder.EncodeAll(chunk, f.out)
			if n := len(f.out) - frameHead; n < len(chunk)-len(chunk)/16 {
				f.fails = 0
				f.out[0] = kindZstd
				binary.BigEndian.PutUint32(f.out[1:5], uint32(n))
				f.stats.account(len(chunk), len(f.out))
				return f.out
			}
		}
		if tried {
			if f.fails++; f.fails >= skipRun {
				f.fails, f.skip = 0, skipFor
			}
		}
		f.out = f.out[:frameHead]
		f.stats.account(len(chunk), len(chunk)+frameHead)
	}
	f.out = append(f.out, chunk...)
	binary.BigEndian.PutUint32(f.out[1:5], uint32(len(chunk)))
	return f.out
}

var errBadFrame = errors.New("tcpsplit: malformed frame")

// readFrame reads one frame from r and returns its payload, decompressed,
// in buf's storage (grown as needed).
func readFrame(r io.Reader, buf, scratch []byte) (payload, wireBuf []byte, err error) {
	var h [frameHead]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, scratch, err
	}
	n := int(binary.BigEndian.Uint32(h[1:]))
	if n > MaxChunk+MaxChunk/8+64 {
		return nil, scratch, errBadFrame
	}
	if cap(scratch) < n {
		scratch = make([]byte, n)
	}
	scratch = scratch[:n]
	if _, err := io.ReadFull(r, scratch); err != nil {
		return nil, scratch, err
	}
	switch h[0] {
	case kindRaw:
		return scratch, scratch, nil
	case kindZstd:
		out, err := decoder.DecodeAll(scratch, buf[:0])
		if err != nil || len(out) > MaxChunk {
			return nil, scratch, fmt.Errorf("%w: %v", errBadFrame, err)
		}
		return out, scratch, nil
	}
	return nil, scratch, errBadFrame
}
