package intermediate

import (
	"crypto/cipher"
	"errors"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/clients"
	"github.com/raicnet/raic/pkg/ingress"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// relay is one session a router opened here together with the session the
// intermediate opened with the next hop for it. "in" is the router's side, "out"
// the next hop's side.
type relay struct {
	// The router's side: its keys, window, decoder, reply paths and scheme.
	// Its Sink is toNext.
	ingress.Peer

	srv    *Server
	target netip.AddrPort // zero for a control-only session (no out side)

	inID uint64
	// Control messages passed back with the next hop's IDs are sealed with
	// the current key of Peer.Send (it changes when the session moves to a
	// new restart epoch).

	outID   uint64
	outRecv *tunnel.Receiver // nil for a control-only session
	outSend *tunnel.Sender
	outMax  atomic.Uint64 // the highest packet ID sealed towards the next hop
	// kaNext picks the uplink of the next keepalive towards the next hop (see
	// keepNextPathAlive). Only the router side's read loop touches it.
	kaNext uint32

	// The sink of the next hop side's receiver, made once so that handing it to
	// Receive does not allocate.
	toRouter tunnel.Sink

	// Each direction is re-encoded with the scheme it arrived in (the router's
	// is Peer.Scheme). The scheme is noted after a data datagram authenticated
	// and applied by whoever seals in that direction (always under the other
	// side's receiver lock, one at a time).
	outScheme ingress.Scheme

	closed atomic.Bool
}

// RouterSide implements ingress.Session.
func (rl *relay) RouterSide() *ingress.Peer { return &rl.Peer }

// DataSink implements ingress.Session: the router's packets go on to the next
// hop.
func (rl *relay) DataSink() tunnel.Sink { return (*toNext)(rl) }

// program is the intermediate as package ingress sees it: what a router's new
// session becomes (a relay), and which of its controls go on to the next hop.
type program Server

// NewSession makes the relay of a session a router opened (an admitted hello):
// the router side from the keys derived for it, and a fresh session towards
// the next hop when the session has a target.
func (p *program) NewSession(a *clients.Admission, id uint64, hello *wire.Hello, _ netip.AddrPort) (*relay, error) {
	s := (*Server)(p)
	rl := &relay{srv: s, target: hello.Target, inID: id}
	rl.Client, rl.Salt = a.Client, hello.Salt
	rl.Recv = tunnel.NewReceiver(a.Recv, raic.DecoderConfig{})
	rl.toRouter = (*toRouter)(rl)
	var err error
	// Towards the router no hello ever rides: the router opened the session.
	rl.Send, err = tunnel.NewSender(a.Send, id, raic.Params{Scheme: raic.SchemeCopy, K: 1}, nil)
	switch {
	case err != nil:
	case rl.target.IsValid():
		rl.outID, rl.outSend, _, rl.outRecv, err = s.newOutHalf(rl.target)
		// Its answers to the router keep the next hop's packet IDs: nothing
		// may be sealed towards the router under IDs of this hop's own.
		rl.KeepsIDs = true
	default:
		// A control session's packet IDs are all its own: from the clock, as
		// the proxy's, so a run after a restart repeats no nonce under the
		// keys the router's hello may bring back.
		rl.Send.StartAt(tunnel.ClockPIDBase(time.Now().UnixMilli()))
	}
	if err != nil {
		s.m.sealErrors.Inc()
		s.log.Warn("cannot open a session towards the next hop", "client", a.Client.ID, "err", err)
		return nil, err
	}
	return rl, nil
}

// Opened makes a new relay findable by its next hop's session ID.
func (p *program) Opened(rl *relay, now int64) {
	s := (*Server)(p)
	if rl.outSend != nil {
		s.byOut.GetOrCreate(rl.outID, now, func() (*relay, error) { return rl, nil })
	}
	s.log.Info("session opened", "client", rl.Client.ID, "session", rl.inID, "next_session", rl.outID, "target", rl.target.String())
}

// Pass takes the controls of a relayed session: they go on to the next hop,
// which answers them. A control-only session (a router's keepalive session,
// without a target) ends here, and ingress answers it.
func (p *program) Pass(r *ingress.Reader, rl *relay, body []byte, _ netip.AddrPort, now int64) bool {
	s := (*Server)(p)
	if rl.outSend == nil {
		return false
	}
	switch r.Hdr.Type {
	case wire.TypeData:
		// Delivered already (toNext).
	case wire.TypePing, wire.TypeProbe, wire.TypeClose:
		s.passOut(r, rl, body, now)
	case wire.TypeKeepalive:
		// It refreshed the path it came on; its packet ID carries one of this
		// intermediate's own keepalives on towards the next hop.
		s.keepNextPathAlive(r, rl, now)
	default:
		s.returns.Malformed()
	}
	if r.Hdr.Type == wire.TypeClose {
		s.relays.Delete(rl.inID)
	}
	return true
}

// Probe fills in a probe answer from the next hop's (probe.go).
func (p *program) Probe(rl *relay, rep *wire.ProbeReply, now int64) {
	(*Server)(p).answerProbe(rep, now)
}

// Overloaded: a router choosing between proxies should hear through this hop
// that the next one is overloaded.
func (p *program) Overloaded(int64) bool { return (*Server)(p).nextOverloaded() }

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
	if !rl.Client.Take(now) {
		s.m.rateLimited.Inc()
		return
	}
	rl.Scheme.Apply(rl.outSend)
	dgs, err := rl.outSend.SealPID(pid, pkt, now)
	if err != nil {
		s.m.sealErrors.Inc()
		return
	}
	s.sendNext(dgs, rl.outSend.Copies(), now)
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
	_, moved, err := s.in.Reply(&rl.Peer, s.cfg.ReplyWindow.Duration, now, func() ([][]byte, bool, error) {
		rl.outScheme.Apply(rl.Send)
		dgs, err := rl.Send.SealPID(pid, pkt, now)
		return dgs, rl.Send.Copies(), err
	})
	if !s.countReply(moved, err) {
		return
	}
	s.m.relayedBack.Inc()
}

// countReply counts what ingress.Reply did; false when nothing was sent.
func (s *Server) countReply(moved int, err error) bool {
	switch {
	case errors.Is(err, ingress.ErrNoPath):
		s.m.noPath.Inc()
		return false
	case err != nil:
		s.m.sealErrors.Inc()
		return false
	}
	if moved > 0 {
		s.m.movedCopies.Add(uint64(moved))
	}
	return true
}

// passOut passes a control message of a relayed session (its opened body in
// r.Hdr's datagram) on to the next hop under the same packet ID. The hello rides
// along while it is due, so a session whose first datagram is a ping opens at
// the next hop as well.
func (s *Server) passOut(r *ingress.Reader, rl *relay, body []byte, now int64) {
	if rl.closed.Load() {
		return
	}
	dg, err := sealPassed(rl.outSend.AEAD(), rl.outSend, r.Ctrl, r.Hdr.Type, rl.outID, r.Hdr.Packet, body, now)
	if err != nil {
		s.m.sealErrors.Inc()
		return
	}
	s.sendCopies(dg, now)
	rl.noteOut(r.Hdr.Packet)
	s.m.controlOut.Inc()
}

// keepNextPathAlive sends the next hop one keepalive of the relayed session for
// a router's keepalive on it (r.Hdr), under the router's packet ID, on the next
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
// the next hop (which closeAtNext relies on), and allocates nothing (r.Ctrl).
func (s *Server) keepNextPathAlive(r *ingress.Reader, rl *relay, now int64) {
	if rl.closed.Load() {
		return
	}
	body := [2]byte{byte(len(s.next.Paths)), byte(s.cfg.Next.CopiesPerUplink)}
	dg, err := sealPassed(rl.outSend.AEAD(), rl.outSend, r.Ctrl, wire.TypeKeepalive, rl.outID, r.Hdr.Packet, body[:], now)
	if err != nil {
		s.m.sealErrors.Inc()
		return
	}
	s.next.SendOn(int(rl.kaNext%uint32(len(s.next.Paths))), dg)
	rl.kaNext++
	rl.noteOut(r.Hdr.Packet)
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
func (s *Server) passBack(r *ingress.Reader, rl *relay, body []byte, now int64) {
	if r.Hdr.Type == wire.TypePong {
		var pong wire.Pong
		if wire.ParsePong(body, &pong) != nil {
			s.returns.Malformed()
			return
		}
		pong.Overloaded = pong.Overloaded || s.nextOverloaded()
		pong.Put(body)
	}
	var one [1][]byte
	_, moved, err := s.in.Reply(&rl.Peer, s.cfg.ReplyWindow.Duration, now, func() ([][]byte, bool, error) {
		dg, err := sealPassed(rl.Send.AEAD(), rl.Send, r.Ctrl, r.Hdr.Type, rl.inID, r.Hdr.Packet, body, now)
		one[0] = dg
		return one[:], true, err
	})
	if !s.countReply(moved, err) {
		return
	}
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
