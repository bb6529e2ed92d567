package raic

import (
	"encoding/binary"
	"github.com/raicnet/raic/raic/replay"
	"time"
)

// Released is a packet the decoder completed.
type Released struct {
	PID  uint64
	Data []byte // valid until the next Add
}

// DecoderConfig bounds the decoder's memory.
type DecoderConfig struct {
	MaxGroups  int           // packets in flight (a ring indexed by packet ID, grown on use from 64); default 1024, rounded up to a power of two
	MaxAge     time.Duration // an incomplete packet older than this is given up by Expire; default 2s
	MaxBuffers int           // shard buffers (1,500 bytes each) held at once; default 8*MaxGroups
}

// DecoderStats counts what the decoder did with the shards it was given.
type DecoderStats struct {
	Shards     uint64 // shards given to Add
	Released   uint64 // packets released
	Recovered  uint64 // of those, rebuilt with parity or XOR shards
	Duplicates uint64 // shards that brought nothing new (copies, surplus parity, already released)
	Malformed  uint64 // shards (or groups) with impossible fields, dropped
	Evicted    uint64 // incomplete packets pushed out by newer ones (also counted in Lost)
	Expired    uint64 // incomplete packets given up by age (also counted in Lost)
	Lost       uint64 // packets given up: Evicted + Expired + malformed at completion
	Late       uint64 // shards for a packet too old for the ring or already given up
	NoBuffer   uint64 // shards dropped because the buffer budget was spent
	Grown      uint64 // times the ring of packets in flight doubled (up to MaxGroups)
}

const (
	bufCap     = MaxShardLimit
	maxEntries = 512 // stored shards per packet; the encoder never needs more (see Encode)
	// histKeep is how far behind the newest packet a RAICT packet's bytes stay
	// for rebuilding neighbours: any shard still useful is within 2*MaxDepth.
	histKeep = 2*MaxDepth + 1
	// maxOut bounds a reassembled packet: the payload plus the padding bytes.
	maxOut = MaxPacket + maxFrags*MaxK + MaxShardLimit
)

const (
	stFree uint8 = iota
	stPending
	stDone
	stGone
)

type entry struct {
	frag, idx, k, count uint8
	data                []byte
}

type group struct {
	pid     uint64
	first   int64
	ents    []entry
	hist    []byte // RAICT: the released packet (a pool buffer), for its neighbours
	last    int16  // index of the last fragment, -1 until seen
	done    uint16 // fragments with enough shards
	state   uint8
	scheme  Scheme
	inChain bool
}

// Decoder rebuilds packets of one session and direction from their shards. It
// is not safe for concurrent use.
//
// In-flight packets live in a ring indexed by packet ID: a newer packet evicts
// an older one in its slot, and a slot remembers a released packet until it is
// reused, so the same packet is never released twice within the ring.
type Decoder struct {
	groups  []group       // allocated on the first shard that needs a group (see Add)
	size    int           // len(groups) once allocated
	copies  replay.Window // packet IDs released by the copy fast path
	copyMax uint64        // the highest of them
	mask    uint64
	maxAge  int64
	maxBufs int
	nbufs   int
	free    [][]byte
	maxPID  uint64
	out     []byte
	rel     []Released
	work    []uint64
	stats   DecoderStats
	// sc is the scratch space of block decoding, kept on the decoder so nothing
	// escapes per call, and allocated with the ring: a copy-only decoder (one per
	// proxy session) never needs its 3.5 KB.
	sc *blockScratch
}

type blockScratch struct {
	have [MaxTotal][]byte
	rows [MaxK]int
	a    [MaxK][MaxK]byte
	inv  [MaxK][MaxK]byte
}

// NewDecoder returns a decoder; it accepts every scheme, per shard.
func NewDecoder(cfg DecoderConfig) *Decoder {
	n := cfg.MaxGroups
	if n <= 0 {
		n = 1024
	}
	sz := 1
	for sz < n {
		sz <<= 1
	}
	age := cfg.MaxAge
	if age <= 0 {
		age = 2 * time.Second
	}
	mb := cfg.MaxBuffers
	if mb <= 0 {
		mb = 8 * sz
	}
	return &Decoder{
		size:    sz,
		mask:    uint64(sz - 1),
		maxAge:  int64(age),
		maxBufs: mb,
		rel:     make([]Released, 0, 4),
	}
}

// Stats returns the counters.
func (d *Decoder) Stats() DecoderStats { return d.stats }

// InFlight reports the packets waiting for more shards.
func (d *Decoder) InFlight() int {
	n := 0
	for i := range d.groups {
		if d.groups[i].state == stPending {
			n++
		}
	}
	return n
}

func (d *Decoder) getBuf() []byte {
	if n := len(d.free); n > 0 {
		b := d.free[n-1]
		d.free = d.free[:n-1]
		return b
	}
	if d.nbufs >= d.maxBufs {
		return nil
	}
	d.nbufs++
	return make([]byte, bufCap)
}

func (d *Decoder) putBuf(b []byte) {
	if cap(b) == bufCap {
		d.free = append(d.free, b[:bufCap])
	}
}

// clearGroup returns the group's buffers to the pool.
func (d *Decoder) clearGroup(g *group) {
	for i := range g.ents {
		d.putBuf(g.ents[i].data)
		g.ents[i].data = nil
	}
	g.ents = g.ents[:0]
	d.dropHist(g)
}

func (d *Decoder) dropHist(g *group) {
	if g.hist != nil {
		d.putBuf(g.hist)
		g.hist = nil
	}
}

// slot returns the group of pid, claiming its ring slot when create is set;
// nil means pid is too old for the ring.
func (d *Decoder) slot(pid uint64, create, grow bool, now int64) *group {
	g := &d.groups[pid&d.mask]
	// The ring starts small and doubles, up to MaxGroups, whenever a packet
	// would lose its slot to one less than MaxGroups away: an older one
	// still decoding, or a newer one (which would refuse it). A ring of
	// MaxGroups gives each of those its own slot, so the decoder acts as
	// with the whole ring, short of remembering released packets for as
	// long (a late shard of one is refused then, not counted a duplicate;
	// a receiver's replay window drops those before). Only Add grows it,
	// holding no group: RAICT rebuilds (within 2*MaxDepth of the newest
	// packet, so apart in any ring) hold one.
	for grow && create && len(d.groups) < d.size && g.state != stFree && g.pid != pid &&
		((g.pid > pid && g.pid-pid < uint64(d.size)) || (g.pid < pid && g.state == stPending && pid-g.pid < uint64(d.size))) {
		d.grow()
		g = &d.groups[pid&d.mask]
	}
	if g.state != stFree && g.pid == pid {
		return g
	}
	if g.state != stFree && g.pid > pid {
		return nil
	}
	if !create {
		return nil
	}
	if g.state == stPending {
		d.stats.Evicted++
		d.stats.Lost++
	}
	d.clearGroup(g)
	*g = group{pid: pid, first: now, ents: g.ents, last: -1, state: stPending}
	return g
}

// minGroups is the decoder's first ring: it doubles as packets in flight
// need (slot), up to MaxGroups.
const minGroups = 64

// grow doubles the ring; each group keeps a slot of its own (two packet IDs
// apart in the smaller ring are apart in the larger one).
func (d *Decoder) grow() {
	n := 2 * len(d.groups)
	ng := make([]group, n)
	m := uint64(n - 1)
	for i := range d.groups {
		if g := &d.groups[i]; g.state != stFree {
			ng[g.pid&m] = *g
		}
	}
	d.groups, d.mask = ng, m
	d.stats.Grown++
}

// validDesc checks the fields that need no state.
func validDesc(s *Shard) bool {
	ds := s.Desc
	if s.PID == 0 || len(s.Data) > bufCap {
		return false
	}
	switch s.Scheme {
	case SchemeCopy:
		return ds.Index == 0 && ds.Count == 1 && ds.K == 1
	case SchemeXOR:
		return ds.K >= 1 && ds.K <= MaxK && int(ds.Count) == int(ds.K)+1 && ds.Index < ds.Count && len(s.Data) > 0
	case SchemeRS:
		return ds.K >= 1 && ds.K <= MaxK && ds.Count > ds.K && ds.Count <= MaxTotal && ds.Count-ds.K <= MaxM &&
			ds.Index < ds.Count && len(s.Data) > 0
	case SchemeTime:
		if ds.K != 1 || ds.Count < 1 || ds.Count > MaxDepth+1 || ds.Index >= ds.Count {
			return false
		}
		if ds.Count == 1 {
			return true
		}
		return ds.Frag == fragLast && (ds.Index == 0 || len(s.Data) >= 2)
	}
	return false
}

// WholeCopy reports whether s is a valid RAIC-1 copy of a whole packet (no
// X-fragments): the packet itself, released as it is by the first copy.
// Such a shard needs no decoding state, only a record of the packet IDs
// released, so a receiver that keeps one (an anti-replay window) may deliver
// it without a Decoder; Add takes it too.
func WholeCopy(s *Shard) bool {
	return s.Scheme == SchemeCopy && s.Desc.Frag == fragLast && validDesc(s)
}

// Add takes one shard and returns the packets it completed: at most one, except
// under RAICT, where one shard may rebuild a chain of earlier packets. The
// packet is released by the first shard that makes it complete.
func (d *Decoder) Add(s Shard, now int64) []Released {
	d.rel = d.rel[:0]
	d.stats.Shards++
	if !validDesc(&s) {
		d.stats.Malformed++
		return nil
	}
	// An unfragmented copy is a whole packet: release it in place, with no group
	// and no copy of its bytes. Copies are the common case (RAIC-1), and a proxy
	// holds one decoder per session, so this keeps a copy-only decoder to a few
	// kilobytes. A small window remembers what was released, to drop the other
	// copies.
	if s.Scheme == SchemeCopy && s.Desc.Frag == fragLast {
		if d.groups != nil {
			// The same packet ID already decoding under another scheme: only a
			// broken sender does that.
			if g := &d.groups[s.PID&d.mask]; g.state != stFree && g.pid == s.PID {
				d.stats.Malformed++
				return nil
			}
		}
		if !d.copies.Mark(s.PID) {
			if s.PID+replay.Size <= d.copyMax {
				d.stats.Late++
			} else {
				d.stats.Duplicates++
			}
			return nil
		}
		if s.PID > d.copyMax {
			d.copyMax = s.PID
		}
		d.stats.Released++
		d.rel = append(d.rel, Released{PID: s.PID, Data: s.Data})
		return d.rel
	}
	if d.groups == nil {
		n := min(minGroups, d.size)
		d.groups, d.mask = make([]group, n), uint64(n-1)
		d.sc = new(blockScratch)
	}
	if s.PID > d.maxPID {
		old := d.maxPID
		d.maxPID = s.PID
		// Trim the RAICT history that no shard can use any more.
		if old > histKeep && s.PID-old < uint64(len(d.groups)) {
			for q := old - histKeep + 1; q <= s.PID-histKeep; q++ {
				if g := &d.groups[q&d.mask]; g.pid == q && g.state == stDone {
					d.dropHist(g)
				}
			}
		}
	}
	g := d.slot(s.PID, true, true, now)
	if g == nil || g.state == stGone {
		d.stats.Late++
		return nil
	}
	if g.state == stPending && len(g.ents) == 0 && g.hist == nil && g.last < 0 {
		g.scheme = s.Scheme // first shard of this packet
	} else if g.scheme != s.Scheme {
		d.stats.Malformed++
		return nil
	}
	if s.Scheme == SchemeTime && s.Desc.Count > 1 {
		d.addChain(g, &s, now)
		return d.rel
	}
	if g.state == stDone {
		d.stats.Duplicates++
		return nil
	}
	d.addBlock(g, &s, now)
	return d.rel
}

func (d *Decoder) addBlock(g *group, s *Shard, now int64) {
	ds := s.Desc
	f := int16(ds.Frag & fragIdxMask)
	last := ds.Frag&fragLast != 0
	if g.last >= 0 && (f > g.last || (f == g.last) != last) {
		d.stats.Malformed++
		return
	}
	n := uint8(0)
	for i := range g.ents {
		e := &g.ents[i]
		if int16(e.frag) == f {
			if e.k != ds.K || e.count != ds.Count || (s.Scheme != SchemeCopy && s.Scheme != SchemeTime && len(e.data) != len(s.Data)) {
				d.stats.Malformed++
				return
			}
			if e.idx == ds.Index {
				d.stats.Duplicates++
				return
			}
			n++
		} else if last && int16(e.frag) > f {
			d.stats.Malformed++
			return
		}
	}
	if n >= ds.K {
		d.stats.Duplicates++ // this fragment is already complete
		return
	}
	if len(g.ents) >= maxEntries {
		d.stats.NoBuffer++
		return
	}
	b := d.getBuf()
	if b == nil {
		d.stats.NoBuffer++
		return
	}
	if last {
		g.last = f
	}
	g.ents = append(g.ents, entry{frag: uint8(f), idx: ds.Index, k: ds.K, count: ds.Count, data: b[:copy(b, s.Data)]})
	if n+1 == ds.K {
		g.done++
	}
	if g.last >= 0 && int(g.done) == int(g.last)+1 {
		d.finishBlock(g, now)
	}
}

// finishBlock reassembles a packet whose every fragment has enough shards.
func (d *Decoder) finishBlock(g *group, now int64) {
	off := 0
	recovered := false
	for f := 0; f <= int(g.last); f++ {
		var k, cnt, size int
		for i := range g.ents {
			if e := &g.ents[i]; int(e.frag) == f {
				k, cnt, size = int(e.k), int(e.count), len(e.data)
				break
			}
		}
		if g.scheme == SchemeCopy || g.scheme == SchemeTime {
			if off+size > maxOut {
				d.giveUpMalformed(g)
				return
			}
			d.ensureOut(off + size)
			for i := range g.ents {
				if e := &g.ents[i]; int(e.frag) == f {
					copy(d.out[off:], e.data)
					break
				}
			}
			off += size
			continue
		}
		blk := k * size
		if off+blk > maxOut {
			d.giveUpMalformed(g)
			return
		}
		d.ensureOut(off + blk)
		for i := range cnt {
			d.sc.have[i] = nil
		}
		for i := range g.ents {
			if e := &g.ents[i]; int(e.frag) == f {
				d.sc.have[e.idx] = e.data
			}
		}
		dst := d.out[off : off+blk]
		rec, ok := d.decodeBlock(g.scheme, dst, k, cnt, size)
		if !ok {
			d.giveUpMalformed(g)
			return
		}
		recovered = recovered || rec
		// The encoder pads fewer than k bytes (S = ceil((len+1)/k)).
		pad := int(dst[blk-1])
		if pad >= k || pad > blk-1 {
			d.giveUpMalformed(g)
			return
		}
		off += blk - 1 - pad
	}
	d.clearGroup(g)
	g.state = stDone
	g.inChain = false
	d.stats.Released++
	if recovered {
		d.stats.Recovered++
	}
	d.rel = append(d.rel, Released{PID: g.pid, Data: d.out[:off:off]})
	if g.scheme == SchemeTime {
		// A fragmented RAICT packet is absent from the chain, which is itself
		// knowledge: XOR shards of later packets that name it are plain copies.
		d.work = append(d.work[:0], g.pid)
		d.runChain(now)
	}
}

func (d *Decoder) ensureOut(n int) {
	if cap(d.out) < n {
		c := max(n, 2*cap(d.out), 2048)
		if c > maxOut {
			c = maxOut
		}
		// Earlier fragments of this packet are already in d.out: keep them.
		nb := make([]byte, c)
		copy(nb, d.out)
		d.out = nb
	}
	d.out = d.out[:cap(d.out)]
}

func (d *Decoder) giveUpMalformed(g *group) {
	d.clearGroup(g)
	g.state = stGone
	d.stats.Malformed++
	d.stats.Lost++
}

// decodeBlock writes the k data shards of one fragment into dst (k*size bytes)
// from the shards in d.sc.have. It reports whether parity was needed.
func (d *Decoder) decodeBlock(sc Scheme, dst []byte, k, cnt, size int) (bool, bool) {
	missing := 0
	for i := range k {
		if d.sc.have[i] != nil {
			copy(dst[i*size:(i+1)*size], d.sc.have[i])
		} else {
			missing++
		}
	}
	if missing == 0 {
		return false, true
	}
	if sc == SchemeXOR {
		// Exactly one data shard is missing: it is the parity XOR the others.
		for i := range k {
			if d.sc.have[i] != nil {
				continue
			}
			out := dst[i*size : (i+1)*size]
			copy(out, d.sc.have[k])
			for j := range k {
				if j != i {
					xorInto(out, dst[j*size:(j+1)*size])
				}
			}
		}
		return true, true
	}
	// Reed-Solomon: take the first k shards present, invert their rows of the
	// generator matrix, and compute only the missing data rows.
	r := 0
	for i := 0; i < cnt && r < k; i++ {
		if d.sc.have[i] == nil {
			continue
		}
		d.sc.rows[r] = i
		for c := range k {
			if i < k {
				d.sc.a[r][c] = 0
				if c == i {
					d.sc.a[r][c] = 1
				}
			} else {
				d.sc.a[r][c] = cauchy(k, i-k, c)
			}
		}
		r++
	}
	if r < k || !invert(&d.sc.a, &d.sc.inv, k) {
		return true, false
	}
	for i := range k {
		if d.sc.have[i] != nil {
			continue
		}
		out := dst[i*size : (i+1)*size]
		clear(out)
		for j := range k {
			mulAdd(out, d.sc.have[d.sc.rows[j]], d.sc.inv[i][j])
		}
	}
	return true, true
}

// chainVal returns what the decoder knows of packet q in the RAICT chain: its
// bytes and L(q) (0 when absent from the chain), and whether q is known at all.
func (d *Decoder) chainVal(q uint64) ([]byte, uint16, bool) {
	if q == 0 {
		return nil, 0, true // before the first packet: absent by definition
	}
	g := &d.groups[q&d.mask]
	if g.pid != q || g.state != stDone || g.scheme != SchemeTime {
		return nil, 0, false
	}
	if !g.inChain {
		return nil, 0, true
	}
	if g.hist == nil {
		return nil, 0, false // trimmed
	}
	return g.hist, uint16(len(g.hist) + 1), true
}

func (d *Decoder) addChain(g *group, s *Shard, now int64) {
	p := s.PID
	j := uint64(s.Desc.Index)
	if j == 0 {
		if g.state == stDone {
			d.stats.Duplicates++
			return
		}
		b := d.getBuf()
		if b == nil {
			d.stats.NoBuffer++
			return
		}
		d.releaseChain(g, b[:copy(b, s.Data)], false)
		d.work = append(d.work[:0], p)
		d.runChain(now)
		return
	}
	var q uint64 // p-j, 0 when before the first packet
	if j < p {
		q = p - j
	}
	if g.state == stDone {
		// Packet p is known; its XOR shard can still rebuild p-j.
		if _, _, known := d.chainVal(q); known || q == 0 {
			d.stats.Duplicates++
			return
		}
		data, l, _ := d.chainVal(p)
		if d.rebuild(q, s.Data, data, l, now) {
			d.work = append(d.work[:0], q)
			d.runChain(now)
		} else {
			d.stats.Duplicates++
		}
		return
	}
	if data, l, known := d.chainVal(q); known {
		if d.rebuild(p, s.Data, data, l, now) {
			d.work = append(d.work[:0], p)
			d.runChain(now)
		}
		return
	}
	for i := range g.ents {
		if uint64(g.ents[i].idx) == j {
			d.stats.Duplicates++
			return
		}
	}
	if len(g.ents) >= maxEntries {
		d.stats.NoBuffer++
		return
	}
	b := d.getBuf()
	if b == nil {
		d.stats.NoBuffer++
		return
	}
	g.ents = append(g.ents, entry{frag: fragLast, idx: uint8(j), k: 1, count: s.Desc.Count, data: b[:copy(b, s.Data)]})
}

func (d *Decoder) releaseChain(g *group, data []byte, recovered bool) {
	d.dropHist(g)
	g.hist = data
	g.inChain = true
	g.state = stDone
	d.stats.Released++
	if recovered {
		d.stats.Recovered++
	}
	d.rel = append(d.rel, Released{PID: g.pid, Data: data})
}

// rebuild recovers packet t from an XOR shard x = t^k and the known packet k
// (bytes kd, chain length lk). It reports whether t was released.
func (d *Decoder) rebuild(t uint64, x, kd []byte, lk uint16, now int64) bool {
	if t == 0 {
		return false
	}
	lt := binary.BigEndian.Uint16(x) ^ lk
	if lt == 0 {
		return false // t is absent from the chain: nothing to rebuild
	}
	n := int(lt) - 1
	if n > len(x)-2 {
		d.stats.Malformed++
		return false
	}
	g := d.slot(t, true, false, now)
	if g == nil || g.state != stPending {
		return false
	}
	if len(g.ents) == 0 && g.last < 0 {
		g.scheme = SchemeTime
	} else if g.scheme != SchemeTime {
		return false
	}
	b := d.getBuf()
	if b == nil {
		d.stats.NoBuffer++
		return false
	}
	data := b[:copy(b, x[2:2+n])]
	xorInto(data, kd)
	d.releaseChain(g, data, true)
	return true
}

// runChain propagates knowledge along the RAICT chain from the packets in
// d.work: each known packet turns its own stored XOR shards into the earlier
// packets they name, and the later packets' XOR shards that name it into those
// later packets.
func (d *Decoder) runChain(now int64) {
	for len(d.work) > 0 {
		q := d.work[len(d.work)-1]
		d.work = d.work[:len(d.work)-1]
		qd, ql, ok := d.chainVal(q)
		if !ok {
			continue
		}
		g := &d.groups[q&d.mask]
		for i := range g.ents {
			e := &g.ents[i]
			j := uint64(e.idx)
			if j < q {
				if _, _, known := d.chainVal(q - j); !known && d.rebuild(q-j, e.data, qd, ql, now) {
					d.work = append(d.work, q-j)
				}
			}
		}
		// The stored XOR shards have served: q-j is now known or never will be.
		for i := range g.ents {
			d.putBuf(g.ents[i].data)
			g.ents[i].data = nil
		}
		g.ents = g.ents[:0]
		for j := uint64(1); j <= MaxDepth; j++ {
			r := q + j
			gr := &d.groups[r&d.mask]
			if gr.pid != r || gr.state != stPending || gr.scheme != SchemeTime {
				continue
			}
			for i := range gr.ents {
				if e := &gr.ents[i]; uint64(e.idx) == j && e.frag == fragLast {
					if d.rebuild(r, e.data, qd, ql, now) {
						d.work = append(d.work, r)
					}
					break
				}
			}
		}
	}
}

// Expire gives up the incomplete packets older than MaxAge (counted as lost).
// It scans the ring, so call it on a timer (every 100 ms or so), not per packet.
func (d *Decoder) Expire(now int64) {
	for i := range d.groups {
		g := &d.groups[i]
		if g.state == stPending && now-g.first > d.maxAge {
			d.clearGroup(g)
			g.state = stGone
			d.stats.Expired++
			d.stats.Lost++
		}
	}
}
