package uplink

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/udp"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// A Set is the way to one far end (a proxy, or the next hop of an
// intermediate) over every uplink: one Path per uplink, each a socket, the far
// end's address on it and that path's Health. It decides where each datagram
// of a packet goes and sends them, a batch per socket (sendmmsg):
//
//   - a single datagram (RAIC-1) goes on every path Copies times, whether the
//     path looks up or not: a copy on a path that merely looks down costs only
//     bandwidth, while skipping one on a false alarm (three keepalives lost in
//     a row happens on a lossy link) loses a copy that would have arrived. The
//     copies of each path that looks down go on the live paths as well, so a
//     dead uplink costs no protection;
//   - coded shards are placed by raic.Place on the paths that answer
//     keepalives, since a shard on a dead path is a lost shard; when none
//     answers, on all of them rather than going silent.
//
// Send is safe for concurrent use and allocates nothing in steady state.
type Set struct {
	Paths  []*Path
	Copies int              // copies of a single datagram per path (copies_per_uplink), at least 1
	Errors *metrics.Counter // send errors; may be nil
}

// Path is one uplink's way to the far end.
type Path struct {
	Index  int // the uplink's index, as pings carry it
	Name   string
	Conn   *udp.Conn      // the uplink's socket; several Sets may share it
	To     netip.AddrPort // the far end's address on this uplink
	Health *Health
	Sent   *metrics.Counter // datagrams sent on this uplink; may be nil, may be shared
	TOS    uint8            // TOS byte of marked datagrams on this uplink (DSCP<<2); 0: none

	pingSeq uint32 // the pinging goroutine only
}

// MaxSend bounds the datagrams one Send puts on one path: config checking keeps
// copies × paths and shard counts well under it.
const MaxSend = 256

// Result says what a Send did beyond the plain copies.
type Result struct {
	Moved   int  // extra copies sent on live paths for paths that look down
	AllDown bool // shards were spread over every path because none answers
}

// stage is one Send's scratch: the path of each datagram, then one path's
// messages at a time. Pooled, so Send allocates nothing once warm.
type stage struct {
	to   [2 * MaxSend]int16 // path index per planned send
	dg   [2 * MaxSend]int16 // datagram index per planned send
	msgs [MaxSend]udp.Message
}

var stagePool = sync.Pool{New: func() any { return new(stage) }}

// Send puts one packet's datagrams on the paths; see Set. copies says they are
// copies (the one datagram of RAIC-1, or each X-fragment of a copy scheme:
// tunnel.Sender.Copies), each of which goes on every path; otherwise they are
// coded shards. mark sends them with each path's TOS byte.
func (s *Set) Send(dgs [][]byte, copies, mark bool, now int64) Result {
	var res Result
	if len(dgs) == 0 || len(s.Paths) == 0 {
		return res
	}
	st := stagePool.Get().(*stage)
	n := 0
	plan := func(path, dg int) {
		if n < len(st.to) {
			st.to[n], st.dg[n] = int16(path), int16(dg)
			n++
		}
	}
	np := len(s.Paths)
	per := max(s.Copies, 1)
	if copies || len(dgs) == 1 {
		down := 0
		for _, p := range s.Paths {
			if !p.Health.Up(now) {
				down++
			}
		}
		for d := range dgs {
			for i := range s.Paths {
				for c := 0; c < per; c++ {
					plan(i, d)
				}
			}
			if down > 0 && down < np {
				next := int(now>>10) % np // spreads the extra copies
				for moved := 0; moved < down*per; next++ {
					if i := next % np; s.Paths[i].Health.Up(now) {
						plan(i, d)
						moved++
					}
				}
				res.Moved += down * per
			}
		}
	} else {
		var live [16]raic.UplinkState
		states := live[:min(np, len(live))]
		anyUp := false
		for i := range states {
			up := s.Paths[i].Health.Up(now)
			states[i] = raic.UplinkState{Up: up, Weight: 1}
			anyUp = anyUp || up
		}
		if !anyUp {
			res.AllDown = true
			for i := range states {
				states[i].Up = true
			}
		}
		var placement [64]int
		out := raic.Place(len(dgs), states, placement[:0])
		for i := range dgs {
			plan(out[i], i)
		}
	}
	// One batch per path, in path order.
	for i, p := range s.Paths {
		k := 0
		for j := 0; j < n && k < len(st.msgs); j++ {
			if int(st.to[j]) == i {
				dg := dgs[st.dg[j]]
				st.msgs[k] = udp.Message{Buf: dg, N: len(dg), Addr: p.To}
				if mark {
					st.msgs[k].TOS = p.TOS
				}
				k++
			}
		}
		if k > 0 {
			s.flush(p, st.msgs[:k])
		}
	}
	clear(st.msgs[:])
	stagePool.Put(st)
	return res
}

// flush writes msgs on p's socket, skipping a datagram the kernel refuses and
// going on with the rest.
func (s *Set) flush(p *Path, msgs []udp.Message) {
	for len(msgs) > 0 {
		n, err := p.Conn.WriteBatch(msgs)
		n = max(0, min(n, len(msgs)))
		if p.Sent != nil {
			p.Sent.Add(uint64(n))
		}
		if err == nil {
			return
		}
		if s.Errors != nil {
			s.Errors.Inc()
		}
		if errors.Is(err, net.ErrClosed) {
			return
		}
		msgs = msgs[min(n+1, len(msgs)):]
	}
}

// SendOn sends one datagram on path i.
func (s *Set) SendOn(i int, dg []byte) {
	var m [1]udp.Message
	m[0] = udp.Message{Buf: dg, N: len(dg), Addr: s.Paths[i].To}
	s.flush(s.Paths[i], m[:])
}

// SendPings sends a keepalive on every path whose ping is due. seal makes the
// datagram of ping p (Seq and Uplink filled in, SentAt = now), or returns nil
// when it cannot. One goroutine pings a Set.
func (s *Set) SendPings(now int64, seal func(p wire.Ping) []byte) {
	for _, pt := range s.Paths {
		if !pt.Health.PingDue(now) {
			continue
		}
		pt.pingSeq++
		dg := seal(wire.Ping{Seq: pt.pingSeq, Uplink: uint8(pt.Index), SentAt: now})
		if dg == nil {
			continue
		}
		pt.Health.OnPingSent(pt.pingSeq, now)
		s.SendOn(pt.Index, dg)
	}
}

// OnPong records a keepalive answer on the path its ping left on, whichever
// socket it came back to; false when the pong names no path of the Set.
func (s *Set) OnPong(p *wire.Pong, now int64) bool {
	i := int(p.Ping.Uplink)
	if i >= len(s.Paths) {
		return false
	}
	s.Paths[i].Health.OnPong(p.Ping.Seq, p.Ping.SentAt, p.PeerTime, now)
	return true
}

// BestRTT is the lowest smoothed RTT of the paths that are up (every copy goes
// on every path, so the fastest sets the latency); ok is false while none has
// an RTT sample.
func (s *Set) BestRTT(now int64) (rtt time.Duration, ok bool) {
	for _, p := range s.Paths {
		if !p.Health.Up(now) {
			continue
		}
		st := p.Health.Stats(now)
		if st.PongsReceived == 0 || st.SRTT <= 0 {
			continue
		}
		if !ok || st.SRTT < rtt {
			rtt, ok = st.SRTT, true
		}
	}
	return rtt, ok
}

// AnyUp reports whether some path answers keepalives.
func (s *Set) AnyUp(now int64) bool {
	for _, p := range s.Paths {
		if p.Health.Up(now) {
			return true
		}
	}
	return false
}

// ReadLoop reads conn in batches until it is closed and hands each datagram to
// fn with its source and the batch's clock (read once per batch). The buffers
// are the loop's own, so fn must not keep dg.
func ReadLoop(conn *udp.Conn, fn func(dg []byte, from netip.AddrPort, now int64)) {
	msgs := make([]udp.Message, readBatch)
	for i := range msgs {
		// One byte more than the largest datagram, so an oversized one shows as
		// such instead of being cut to a plausible length.
		msgs[i].Buf = make([]byte, wire.MaxDatagram+1)
	}
	for {
		n, err := conn.ReadBatch(msgs)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// An ICMP error for an earlier send surfaces here; the next read
			// goes on at once, or the socket's queue fills meanwhile.
			continue
		}
		now := mono.Now()
		for i := 0; i < n; i++ {
			fn(msgs[i].Buf[:msgs[i].N], msgs[i].Addr, now)
		}
	}
}

// readBatch is how many datagrams one read may return; a read never waits to
// fill it.
const readBatch = 32
