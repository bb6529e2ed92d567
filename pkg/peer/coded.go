package peer

import (
	"github.com/raicnet/raic/pkg/rendezvous"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// Coded schemes. A link whose LinkConfig.Scheme is RAIC-5 (XOR parity),
// RS k+m or RAICT codes each packet with the codecs of package raic, as the
// router and the proxy do (pkg/tunnel): raic.Encoder turns the packet into
// shards, each shard is sealed once under the packet's ID (the shard index
// in the descriptor keeps every nonce distinct), and the shards are spread
// over the paths that are up, never two on one path while a path has none
// (raic.Place), fastest paths (by keepalive SRTT) first: a scheme with
// fewer shards than paths leaves the slowest idle, and one with more gives
// its extra shards to the fastest. A path that dies therefore costs each
// packet at most ceil(shards/paths) shards: one with rs 2+2 or xor 2+1 over
// 4 paths, which the scheme rebuilds.
//
// Why fastest first rather than turning over every path: a coded packet is
// whole when enough of its shards have arrived, so its delay is that of the
// slowest path it needs. Shards that took different paths for each packet
// would give each packet another delay: jitter, and packets overtaking each
// other (a SIP 180 Ringing behind its 200 OK). Taking the same fastest paths
// for every packet keeps the delay steady.
//
// The receiver needs no setting: every data datagram carries its scheme and
// descriptor, and a coded shard goes to the session's raic.Decoder, which
// takes every scheme per shard. The replay window is checked before a shard
// is opened and marked when its packet is released, so a shard of a packet
// already delivered costs no cryptographic work (unless Observe asked to see
// every authenticated datagram) and no packet is delivered twice.
//
// Copies (the default) keep the plain form: one datagram, the same bytes on
// every path.

// Decoder bounds of a peer session: a call's packets in flight and the
// shard buffers they hold.
const (
	decoderGroups  = 256
	decoderBuffers = 4 * decoderGroups
)

// coder is the send side of a coded scheme; it is used under Link.sendMu.
type coder struct {
	params raic.Params
	enc    *raic.Encoder
	bufs   [][]byte // one sealed datagram per shard, reused
	states []raic.UplinkState
	place  []int
	rtts   [maxSorted]int64 // fastest's sort keys
}

func newCoder(p raic.Params) (*coder, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	enc, err := raic.NewEncoder(p)
	if err != nil {
		return nil, err
	}
	return &coder{params: p, enc: enc, states: make([]raic.UplinkState, 0, maxPlace), place: make([]int, 0, 64)}, nil
}

// maxPlace is the number of paths raic.Place spreads over.
const maxPlace = 64

// maxSorted is the most paths fastest sorts (a table of DefaultMaxRemote
// addresses over MaxUplinks uplinks); any further paths keep table order.
const maxSorted = DefaultMaxRemote * MaxUplinks

// fastest appends to dst the paths Targets gives, those with the lowest
// keepalive SRTT first (a path not yet measured last, in table order). It
// takes no lock and allocates nothing when dst has room; keys is scratch.
func (p *Paths) fastest(now int64, dst []Path, keys *[maxSorted]int64) []Path {
	n0 := len(dst)
	k := 0
	for _, ps := range *p.snap.Load() {
		if !ps.health.Up(now) {
			continue
		}
		srtt := int64(ps.health.Stats(now).SRTT)
		if srtt <= 0 {
			srtt = 1 << 62
		}
		dst = append(dst, ps.Path)
		if k < len(keys) {
			keys[k] = srtt
		}
		k++
	}
	if len(dst) == n0 {
		// None up: every path, as Targets does.
		return p.Targets(now, dst)
	}
	// Insertion sort (stable): a handful of paths.
	out, m := dst[n0:], min(k, len(keys))
	for i := 1; i < m; i++ {
		for j := i; j > 0 && keys[j] < keys[j-1]; j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return dst
}

// isCopyScheme reports whether p asks for plain copies (the zero Params too).
func isCopyScheme(p raic.Params) bool { return p.Scheme == 0 || p.Scheme == raic.SchemeCopy }

// sendCoded codes payload and sends its shards over the paths; sendMu is held.
func (l *Link) sendCoded(payload []byte, now int64) error {
	c := l.coder
	pid := l.pid.Add(1)
	shards, err := c.enc.Encode(pid, payload)
	if err != nil {
		return err
	}
	var hello *wire.Hello
	if !l.helloDone.Load() {
		hello = &l.hello
	}
	for len(c.bufs) < len(shards) {
		c.bufs = append(c.bufs, make([]byte, wire.MaxDatagram))
	}
	l.c.sent.Add(1)
	l.c.payloadBytes.Add(uint64(len(payload)))
	l.targets = l.paths.fastest(now, l.targets[:0], &c.rtts)
	n := min(len(l.targets), maxPlace)
	c.states = c.states[:0]
	for range n {
		c.states = append(c.states, raic.UplinkState{Up: true, Weight: 1})
	}
	// Equal weights: Place hands out shards in path order, so the first
	// paths (the fastest) get a shard first, and the extra ones.
	c.place = raic.Place(len(shards), c.states, c.place[:0])
	relay := l.RelayActive(now)
	up := l.paths.Uplinks()
	for i := range shards {
		sh := &shards[i]
		h := wire.Header{Type: wire.TypeData, Scheme: uint8(sh.Scheme), Session: l.sid, Packet: pid, Desc: wire.Desc(sh.Desc)}
		dg, err := wire.Seal(l.seal, c.bufs[i], &h, hello, sh.Data)
		if err != nil {
			return err
		}
		if n > 0 {
			t := l.targets[c.place[i]]
			if l.out.SendTo(t.Local, dg, t.Remote) == nil {
				l.c.copies.Add(1)
				l.c.bytes.Add(uint64(len(dg)))
			}
		}
		if relay {
			// Through the relay, the shards take the local uplinks in turn.
			l.sendRelayOn(dg, (i+int(pid))%up)
		}
	}
	return nil
}

// sendRelayOn sends dg through the rendezvous from local uplink u; sendMu is held.
func (l *Link) sendRelayOn(dg []byte, u int) {
	msg, err := l.rv.Relay(l.relBuf, l.scratch, dg, rendezvous.AnyUplink)
	if err != nil {
		return
	}
	if l.out.SendTo(u, msg, l.cfg.RendezvousAddr) == nil {
		l.c.relaySent.Add(1)
	}
}

// isWholeCopy reports whether a data datagram is a whole packet (a copy):
// the plain form, which needs no decoder.
func isWholeCopy(h *wire.Header) bool {
	return (h.Scheme == 0 || h.Scheme == uint8(raic.SchemeCopy)) && h.Desc.Count == 1 && h.Desc.Index == 0 &&
		(h.Desc.Frag == 0 || h.Desc.Frag == 0x80)
}

// receiveShard feeds one authenticated coded shard to the session's decoder
// and delivers what it completes; rs is l.recv and rmu is held. It reports
// whether the shard was useful (not a duplicate).
func (l *Link) receiveShard(rs *recvSession, h *wire.Header, body []byte, now int64) bool {
	if rs.dec == nil {
		rs.dec = raic.NewDecoder(raic.DecoderConfig{MaxGroups: decoderGroups, MaxBuffers: decoderBuffers})
	}
	before := rs.dec.Stats()
	released := rs.dec.Add(raic.Shard{Scheme: raic.Scheme(h.Scheme), PID: h.Packet, Desc: raic.Desc(h.Desc), Data: body}, now)
	after := rs.dec.Stats()
	if after.Malformed > before.Malformed {
		l.c.malformed.Add(1)
		return false
	}
	useful := after.Duplicates == before.Duplicates && after.Late == before.Late
	for i := range released {
		if rs.win.Mark(released[i].PID) {
			l.c.delivered.Add(1)
			l.cfg.Deliver(released[i].Data)
		} else {
			l.c.dups.Add(1)
		}
	}
	if !useful {
		l.c.dups.Add(1)
	}
	return useful
}

// decoderStats returns the current session's decoder counters plus those
// of the sessions before it; rmu is held.
func (l *Link) decoderStats() raic.DecoderStats {
	s := l.decPrev
	if l.recv != nil && l.recv.dec != nil {
		addDecoderStats(&s, l.recv.dec.Stats())
	}
	return s
}

func addDecoderStats(s *raic.DecoderStats, d raic.DecoderStats) {
	s.Shards += d.Shards
	s.Released += d.Released
	s.Recovered += d.Recovered
	s.Duplicates += d.Duplicates
	s.Malformed += d.Malformed
	s.Evicted += d.Evicted
	s.Expired += d.Expired
	s.Lost += d.Lost
	s.Late += d.Late
	s.NoBuffer += d.NoBuffer
}
