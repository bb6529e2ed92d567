package raic

import (
	"encoding/binary"

	"github.com/klauspost/reedsolomon"
)

// Shard is one coded piece of a packet; it travels in one datagram.
type Shard struct {
	Scheme Scheme
	PID    uint64
	Desc   Desc
	Data   []byte // valid until the next Encode; copies may alias the packet
}

// Encoder turns packets into shards for one session and direction. It is not
// safe for concurrent use: the router owns one per session. A copy scheme's
// is 80 bytes: the state of the coded schemes is made only for them (a
// proxy holds an encoder per session, most of them RAIC-1).
type Encoder struct {
	p      Params
	shards []Shard
	*coder // nil for SchemeCopy
}

// coder is what the coded schemes keep between packets.
type coder struct {
	rs   reedsolomon.Encoder
	buf  []byte
	rsIn [][]byte
	hist *[MaxDepth]histEnt // RAICT only: the last packets, indexed by pid % MaxDepth
}

type histEnt struct {
	pid     uint64
	inChain bool
	data    []byte
}

// NewEncoder returns an encoder for p.
func NewEncoder(p Params) (*Encoder, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	e := &Encoder{p: p}
	if p.Scheme != SchemeCopy {
		e.coder = new(coder)
	}
	if p.Scheme == SchemeTime {
		e.hist = new([MaxDepth]histEnt)
	}
	if p.Scheme == SchemeRS {
		// The library computes the parity with SIMD; the Cauchy matrix is given
		// explicitly so the decoder in this package solves the same code.
		rs, err := reedsolomon.New(p.K, p.M,
			reedsolomon.WithCustomMatrix(cauchyMatrix(p.K, p.M)),
			reedsolomon.WithMaxGoroutines(1))
		if err != nil {
			return nil, err
		}
		e.rs = rs
		e.rsIn = make([][]byte, p.K+p.M)
	}
	return e, nil
}

// Params returns the parameters the encoder was built with.
func (e *Encoder) Params() Params { return e.p }

// fragCap is the largest fragment the scheme carries within MaxShard per shard.
func fragCap(p Params) int {
	ms := p.maxShard()
	c := ms
	if p.Scheme == SchemeXOR || p.Scheme == SchemeRS {
		c = p.K*ms - 1 // one byte of the block holds the padding length
	}
	if p.FragAbove > 0 && p.FragAbove < c {
		c = p.FragAbove
	}
	return c
}

// chainCap is the largest packet RAICT codes in its XOR chain: the XOR shards
// carry a two-byte length in front of the packet bytes.
func chainCap(p Params) int {
	c := p.maxShard() - 2
	if p.FragAbove > 0 && p.FragAbove < c {
		c = p.FragAbove
	}
	return c
}

// FragCount reports into how many fragments p splits a packet of n bytes.
func FragCount(p Params, n int) int {
	if p.Scheme == SchemeTime && n <= chainCap(p) {
		return 1
	}
	c := fragCap(p)
	if n <= c {
		return 1
	}
	return (n + c - 1) / c
}

func (e *Encoder) grow(n int) []byte {
	if cap(e.buf) < n {
		e.buf = make([]byte, n)
	}
	return e.buf[:n]
}

// Encode codes one packet. pid is the packet ID (starts at 1, +1 per packet).
// The returned slice and its buffers are owned by e until the next Encode.
// It returns ErrTooLarge for a packet over 65,535 bytes, or one that would need
// more than 128 fragments or more than 512 data shards in all (only possible
// with a small forced fragment size).
func (e *Encoder) Encode(pid uint64, pkt []byte) ([]Shard, error) {
	if pid == 0 {
		return nil, ErrPID
	}
	n := len(pkt)
	if n > MaxPacket {
		return nil, ErrTooLarge
	}
	p := &e.p
	e.shards = e.shards[:0]
	if p.Scheme == SchemeTime && n <= chainCap(*p) {
		e.encodeChain(pid, pkt)
		return e.shards, nil
	}
	c := fragCap(*p)
	nf := 1
	if n > c {
		nf = (n + c - 1) / c
	}
	// The decoder stores up to k shards per fragment and at most maxEntries
	// per packet; a packet beyond either bound could never be rebuilt.
	if nf > maxFrags || (p.Scheme != SchemeCopy && p.Scheme != SchemeTime && nf*p.K > maxEntries) {
		return nil, ErrTooLarge
	}
	base, rem := n/nf, n%nf
	switch p.Scheme {
	case SchemeCopy, SchemeTime:
		// A fragmented RAICT packet travels as plain fragments and is absent
		// from the XOR chain (see the package comment).
		if p.Scheme == SchemeTime {
			h := &e.hist[pid%MaxDepth]
			h.pid, h.inChain = pid, false
		}
		off := 0
		for f := range nf {
			sz := base
			if f < rem {
				sz++
			}
			e.shards = append(e.shards, Shard{Scheme: p.Scheme, PID: pid,
				Desc: Desc{Index: 0, Count: 1, K: 1, Frag: fragByte(f, nf)}, Data: pkt[off : off+sz : off+sz]})
			off += sz
		}
	case SchemeXOR, SchemeRS:
		k, tot := p.K, p.K+p.M
		smax := (base + 1 + 1 + k - 1) / k
		buf := e.grow(nf * tot * smax)
		off, bo := 0, 0
		for f := range nf {
			sz := base
			if f < rem {
				sz++
			}
			s := (sz + 1 + k - 1) / k
			blk := buf[bo : bo+tot*s : bo+tot*s]
			bo += tot * s
			copy(blk, pkt[off:off+sz])
			off += sz
			data := blk[:k*s]
			clear(data[sz:])
			data[k*s-1] = byte(k*s - 1 - sz)
			if p.Scheme == SchemeXOR {
				par := blk[k*s:]
				copy(par, data[:s])
				for i := 1; i < k; i++ {
					xorInto(par, data[i*s:(i+1)*s])
				}
			} else {
				if err := e.rsParity(blk, k, tot, s); err != nil {
					return nil, err
				}
			}
			fb := fragByte(f, nf)
			for i := range tot {
				e.shards = append(e.shards, Shard{Scheme: p.Scheme, PID: pid,
					Desc: Desc{Index: uint8(i), Count: uint8(tot), K: uint8(k), Frag: fb}, Data: blk[i*s : (i+1)*s : (i+1)*s]})
			}
		}
	}
	return e.shards, nil
}

// rsChunk keeps each library call below its smallest per-round size (1 KiB),
// where EncodeIdx runs the SIMD multiply directly; above it the library builds
// a code-generation matrix per call, which allocates.
const rsChunk = 512

// rsSmall is the shard size up to which parity is computed in this package.
const rsSmall = 48

// rsParity fills the m parity shards after the k data shards in blk (shard
// size s). Encode itself allocates a pooled temporary per call, so the parity
// is accumulated data shard by data shard with EncodeIdx, which does not.
func (e *Encoder) rsParity(blk []byte, k, tot, s int) error {
	clear(blk[k*s : tot*s])
	if s <= rsSmall {
		// Tiny shards: the library's per-call setup costs more than the
		// table multiply it saves.
		for r := range tot - k {
			par := blk[(k+r)*s : (k+r+1)*s]
			for i := range k {
				mulAdd(par, blk[i*s:(i+1)*s], cauchy(k, r, i))
			}
		}
		return nil
	}
	for a := 0; a < s; a += rsChunk {
		b := min(a+rsChunk, s)
		par := e.rsIn[:tot-k]
		for r := range par {
			o := (k + r) * s
			par[r] = blk[o+a : o+b : o+b]
		}
		for i := range k {
			if err := e.rs.EncodeIdx(blk[i*s+a:i*s+b:i*s+b], i, par); err != nil {
				return err
			}
		}
	}
	return nil
}

func fragByte(f, nf int) uint8 {
	b := uint8(f)
	if f == nf-1 {
		b |= fragLast
	}
	return b
}

// encodeChain emits the RAICT shards of a packet that fits one shard: the packet
// and, for j = 1..d, the packet XORed with packet pid-j.
func (e *Encoder) encodeChain(pid uint64, pkt []byte) {
	d := e.p.Depth
	cnt := uint8(d + 1)
	e.shards = append(e.shards, Shard{Scheme: SchemeTime, PID: pid,
		Desc: Desc{Index: 0, Count: cnt, K: 1, Frag: fragLast}, Data: pkt})
	ms := e.p.maxShard()
	buf := e.grow(d * ms)
	lp := uint16(len(pkt) + 1)
	for j := 1; j <= d; j++ {
		var prev []byte
		var lq uint16
		if uint64(j) < pid {
			h := &e.hist[(pid-uint64(j))%MaxDepth]
			if h.pid == pid-uint64(j) && h.inChain {
				prev, lq = h.data, uint16(len(h.data)+1)
			}
		}
		n := 2 + max(len(pkt), len(prev))
		x := buf[(j-1)*ms : (j-1)*ms+n : (j-1)*ms+n]
		binary.BigEndian.PutUint16(x, lp^lq)
		copy(x[2:], pkt)
		clear(x[2+len(pkt):])
		xorInto(x[2:], prev)
		e.shards = append(e.shards, Shard{Scheme: SchemeTime, PID: pid,
			Desc: Desc{Index: uint8(j), Count: cnt, K: 1, Frag: fragLast}, Data: x})
	}
	h := &e.hist[pid%MaxDepth]
	h.pid, h.inChain = pid, true
	h.data = append(h.data[:0], pkt...)
}
