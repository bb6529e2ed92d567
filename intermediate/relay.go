package intermediate

import (
	"crypto/cipher"
	"github.com/raicnet/raic/pkg/clients"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/replypath"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// relay is one session a router opened here together with the session the
// intermediate opened with the next hop for it. "in" is the router's side, "out"
// the next hop's side.
type relay struct {
	srv    *Server
	client *clients.Client
	target netip.AddrPort // zero for a control-only session (no out side)

	inID   uint64
	salt   [16]byte
	inRecv *tunnel.Receiver
	inSend *tunnel.Sender
	// epoch is the restart epoch the router side's keys are for (0: none);
	// control messages passed back with the next hop's IDs are sealed with
	// inSend's current key.
	epoch atomic.Uint64

	outID   uint64
	outRecv *tunnel.Receiver // nil for a control-only session
	outSend *tunnel.Sender
	outSeal cipher.AEAD   // for control messages passed on with the router's IDs
	outMax  atomic.Uint64 // the highest packet ID sealed towards the next hop
	// kaNext picks the uplink of the next keepalive towards the next hop (see
	// keepNextPathAlive). Only the router side's read loop touches it.
	kaNext uint32

	// The sinks of the two receivers, made once so that handing them to Receive
	// does not allocate.
	toNext, toRouter tunnel.Sink

	// Each direction is re-encoded with the scheme it arrived in. The scheme is
	// noted after a data datagram authenticated and applied by whoever seals in
	// that direction (always under the other side's receiver lock, one at a time).
	inScheme, outScheme schemeState

	closed  atomic.Bool
	lastAck atomic.Int64

	paths replypath.Set // the router addresses replies go to
}

// newRelay makes the relay of a session a router opened: the router side from
// the keys derived for it, and a fresh session towards the next hop when the
// session has a target.
func (s *Server) newRelay(c *clients.Client, id uint64, salt [16]byte, target netip.AddrPort, send, recv cipher.AEAD) (*relay, error) {
	rl := &relay{srv: s, client: c, target: target, inID: id, salt: salt}
	rl.inRecv = tunnel.NewReceiver(recv, raic.DecoderConfig{})
	var err error
	// Towards the router no hello ever rides: the router opened the session.
	if rl.inSend, err = tunnel.NewSender(send, id, raic.Params{Scheme: raic.SchemeCopy, K: 1}, nil); err != nil {
		return nil, err
	}
	rl.toNext, rl.toRouter = (*toNext)(rl), (*toRouter)(rl)
	if !target.IsValid() {
		// A control session's packet IDs are all its own: from the clock, as
		// the proxy's, so a run after a restart repeats no nonce under the
		// keys the router's hello may bring back.
		rl.inSend.StartAt(tunnel.ClockPIDBase(time.Now().UnixMilli()))
		return rl, nil
	}
	if rl.outID, rl.outSend, rl.outSeal, rl.outRecv, err = s.newOutHalf(target); err != nil {
		return nil, err
	}
	return rl, nil
}

// toNext is the sink of the router side's receiver: each packet decoded from the
// router goes on to the next hop, re-encoded under the same packet ID.
type toNext relay

// Deliver implements tunnel.Sink.
func (t *toNext) Deliver(pid uint64, pkt []byte, now int64) {
	rl := (*relay)(t)
	s := rl.srv
	if rl.closed.Load() || rl.outSend == nil {
		return
	}
	if !rl.client.Take(now) {
		s.m.rateLimited.Inc()
		return
	}
	rl.inScheme.apply(rl.outSend)
	dgs, err := rl.outSend.SealPID(pid, pkt, now)
	if err != nil {
		s.m.sealErrors.Inc()
		return
	}
	s.sendNext(dgs, rl.outSend.Copies())
	rl.noteOut(pid)
	s.m.relayedOut.Inc()
}

// toRouter is the sink of the next hop side's receiver: each packet decoded from
// the next hop goes back to the router over every live path, re-encoded under
// the same packet ID.
type toRouter relay

// Deliver implements tunnel.Sink.
func (t *toRouter) Deliver(pid uint64, pkt []byte, now int64) {
	rl := (*relay)(t)
	s := rl.srv
	if rl.closed.Load() {
		return
	}
	var live replypath.Live
	rl.paths.Live(now, s.cfg.ReplyWindow.Duration, &live)
	if live.Len() == 0 {
		s.m.noPath.Inc()
		return
	}
	rl.outScheme.apply(rl.inSend)
	dgs, err := rl.inSend.SealPID(pid, pkt, now)
	if err != nil {
		s.m.sealErrors.Inc()
		return
	}
	if rl.inSend.Copies() {
		for _, dg := range dgs {
			s.sendBack(&live, dg)
		}
	} else {
		var placement [64]int
		out := live.Place(len(dgs), placement[:0])
		for i, dg := range dgs {
			s.sendTo(dg, live.Addr(out[i]))
		}
	}
	s.m.relayedBack.Inc()
}

// sendBack sends a single datagram to the router: a copy to every live path,
// and for each path lagging behind or never heard from one more on a fresh path
// (see replypath.Live.Copies).
func (s *Server) sendBack(live *replypath.Live, dg []byte) {
	var to [replypath.MaxCopies]netip.AddrPort
	n, extra := live.Copies(&to)
	for _, a := range to[:n] {
		s.sendTo(dg, a)
	}
	if extra > 0 {
		s.m.movedCopies.Add(uint64(extra))
	}
}

// passOut passes a control message of a relayed session (its opened body in
// r.hdr's datagram) on to the next hop under the same packet ID. The hello rides
// along while it is due, so a session whose first datagram is a ping opens at
// the next hop as well.
func (s *Server) passOut(r *reader, rl *relay, body []byte, now int64) {
	if rl.closed.Load() {
		return
	}
	dg, err := sealPassed(rl.outSeal, rl.outSend, r.ctrl, r.hdr.Type, rl.outID, r.hdr.Packet, body, now)
	if err != nil {
		s.m.sealErrors.Inc()
		return
	}
	s.sendCopies(dg)
	rl.noteOut(r.hdr.Packet)
	s.m.controlOut.Inc()
}

// keepNextPathAlive sends the next hop one keepalive of the relayed session for
// a router's keepalive on it (r.hdr), under the router's packet ID, on the next
// uplink in turn. Its body says how many uplinks this intermediate has and how
// many copies of each single datagram it sends on each (next.copies_per_uplink),
// so the next hop's replies get as many.
//
// The next hop learns this intermediate's paths as the proxy learns a router's:
// only from datagrams that pass its replay window, so an uplink whose data copies
// always arrive second is never learned from data, and it needs keepalives of
// its own, each under an ID of its own, as the router sends. The IDs are the
// catch: this session's IDs are the router's (kept end to end), and a fresh one
// (Sender.SealControl) is one the router will use next: the next hop would drop
// that packet as a replay, and were it a control message passed on, its nonce
// would be sealed twice (see sealPassed). A router keepalive's
// ID is used once by the router and never passed on, so it is free here; and the
// router sends one per path at the session's start and once a second, which is
// the cadence wanted. With at least as many router paths as uplinks every uplink
// gets one each round; with fewer, they take turns.
//
// It runs on the router side's read loop, the only goroutine sealing towards
// the next hop (which closeAtNext relies on), and allocates nothing (r.ctrl).
func (s *Server) keepNextPathAlive(r *reader, rl *relay, now int64) {
	if rl.closed.Load() {
		return
	}
	body := [2]byte{byte(len(s.uplinks)), byte(s.cfg.Next.CopiesPerUplink)}
	dg, err := sealPassed(rl.outSeal, rl.outSend, r.ctrl, wire.TypeKeepalive, rl.outID, r.hdr.Packet, body[:], now)
	if err != nil {
		s.m.sealErrors.Inc()
		return
	}
	u := s.uplinks[rl.kaNext%uint32(len(s.uplinks))]
	rl.kaNext++
	s.sendOn(u, dg)
	rl.noteOut(r.hdr.Packet)
	s.m.keepalivesSent.Inc()
}

// noteOut records a packet ID sealed towards the next hop. Only the router
// side's read loop seals there, so a load and a store suffice.
func (rl *relay) noteOut(pid uint64) {
	if pid > rl.outMax.Load() {
		rl.outMax.Store(pid)
	}
}

// passBack passes a control message of the next hop back to the router under the
// same packet ID. A pong also carries this hop's overload state.
func (s *Server) passBack(r *reader, rl *relay, body []byte, now int64) {
	if r.hdr.Type == wire.TypePong {
		var pong wire.Pong
		if wire.ParsePong(body, &pong) != nil {
			s.m.malformed.Inc()
			return
		}
		pong.Overloaded = pong.Overloaded || s.nextOverloaded()
		pong.Put(body)
	}
	var live replypath.Live
	rl.paths.Live(now, s.cfg.ReplyWindow.Duration, &live)
	if live.Len() == 0 {
		s.m.noPath.Inc()
		return
	}
	dg, err := sealPassed(rl.inSend.AEAD(), rl.inSend, r.ctrl, r.hdr.Type, rl.inID, r.hdr.Packet, body, now)
	if err != nil {
		s.m.sealErrors.Inc()
		return
	}
	s.sendBack(&live, dg)
	s.m.controlBack.Inc()
}

// sealPassed seals a control message with a packet ID the other side chose.
// tunnel.Sender.SealControl would take the sender's next ID, which the other
// side may use for a packet later: two datagrams under one ID would break the
// nonce rule and the later one would be dropped as a replay. An ID the other
// side used once (its window saw to that) is sealed here once.
func sealPassed(aead cipher.AEAD, snd *tunnel.Sender, buf []byte, t wire.Type, session, pid uint64, body []byte, now int64) ([]byte, error) {
	h := wire.Header{Type: t, Session: session, Packet: pid}
	if !snd.HelloDue(now) {
		return wire.Seal(aead, buf, &h, nil, body)
	}
	hl, _ := snd.Hello()
	hl.UnixMilli = time.Now().UnixMilli()
	return wire.Seal(aead, buf, &h, &hl, body)
}

// ackDue limits acks to one per 10 ms per session: a router sends hellos until
// its first answer, and one ack per burst of them is enough.
func (rl *relay) ackDue(now int64) bool {
	last := rl.lastAck.Load()
	if now-last < int64(10*time.Millisecond) {
		return false
	}
	return rl.lastAck.CompareAndSwap(last, now)
}

// schemeState carries the RAIC scheme of one direction's incoming data to the
// encoder of its outgoing data, packed into one word (scheme, k, m, depth).
type schemeState struct {
	seen    atomic.Uint32
	applied uint32 // touched only by the goroutine that seals, under a receiver lock
}

// note remembers the scheme of an authenticated data datagram.
func (st *schemeState) note(h *wire.Header) {
	var p raic.Params
	switch raic.Scheme(h.Scheme) {
	case raic.SchemeCopy:
		p = raic.Params{Scheme: raic.SchemeCopy, K: 1}
	case raic.SchemeXOR:
		p = raic.Params{Scheme: raic.SchemeXOR, K: int(h.Desc.K), M: 1}
	case raic.SchemeRS:
		p = raic.Params{Scheme: raic.SchemeRS, K: int(h.Desc.K), M: int(h.Desc.Count) - int(h.Desc.K)}
	case raic.SchemeTime:
		if h.Desc.Count < 2 {
			return // a fragmented RAICT packet says nothing about the depth
		}
		p = raic.Params{Scheme: raic.SchemeTime, K: 1, Depth: int(h.Desc.Count) - 1}
	default:
		return
	}
	if p.K < 1 || p.M < 0 || p.K > 255 || p.M > 255 || p.Depth > 255 {
		return
	}
	st.seen.Store(uint32(p.Scheme) | uint32(p.K)<<8 | uint32(p.M)<<16 | uint32(p.Depth)<<24)
}

// apply switches snd to the noted scheme when it changed.
func (st *schemeState) apply(snd *tunnel.Sender) {
	v := st.seen.Load()
	if v == 0 || v == st.applied {
		return
	}
	// Applied or not (a scheme that cannot be built keeps the old encoder), this
	// value is not tried again.
	st.applied = v
	p := raic.Params{Scheme: raic.Scheme(v & 0xff), K: int(v >> 8 & 0xff), M: int(v >> 16 & 0xff), Depth: int(v >> 24)}
	if p.Validate() == nil {
		snd.SetParams(p)
	}
}
