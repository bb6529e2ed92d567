package intermediate

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/ingress"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/udp"
	"github.com/raicnet/raic/pkg/uplink"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// The next hop's side: towards it the intermediate is a router. Its uplinks
// form an uplink.Set, which pings each of them on the control session, keeps
// their health, and moves copies and shards off the uplinks that stop
// answering.

// ctrlSession is the intermediate's own session with the next hop, for
// keepalives: it has no target and carries no relayed traffic.
type ctrlSession struct {
	id   uint64
	send *tunnel.Sender
	recv *tunnel.Receiver
}

// Deliver is never called: the control session carries no data.
func (*ctrlSession) Deliver(uint64, []byte, int64) {}

// newSessionID returns a random session ID that is not 0.
func newSessionID() (uint64, error) {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, err
		}
		if id := binary.LittleEndian.Uint64(b[:]); id != 0 {
			return id, nil
		}
	}
}

// newOutHalf makes the sending and receiving halves of a new session with the
// next hop towards target (zero for the control session), with a fresh ID and
// salt, so its keys are new even when the intermediate restarts.
// sealKey is the AEAD the sender seals with, returned for control messages
// passed on under IDs the sender did not choose (see sealPassed).
func (s *Server) newOutHalf(target netip.AddrPort) (id uint64, send *tunnel.Sender, sealKey cipher.AEAD, recv *tunnel.Receiver, err error) {
	if id, err = newSessionID(); err != nil {
		return 0, nil, nil, nil, err
	}
	salt, err := wire.NewSalt()
	if err != nil {
		return 0, nil, nil, nil, err
	}
	// Bound to the next hop's epoch once a pong named it, so nothing sealed
	// for this session opens in another run of the next hop.
	epoch := s.nextEpoch.Load()
	sk, rk, err := wire.DeriveKeysEpoch(&s.nextKey, &salt, id, epoch, wire.RoleClient)
	if err != nil {
		return 0, nil, nil, nil, err
	}
	hello := &wire.Hello{Salt: salt, Target: target, Epoch: epoch}
	if err := hello.SetClientID(s.cfg.Next.ClientID); err != nil {
		return 0, nil, nil, nil, err
	}
	if send, err = tunnel.NewSender(sk, id, raic.Params{Scheme: raic.SchemeCopy, K: 1}, hello); err != nil {
		return 0, nil, nil, nil, err
	}
	return id, send, sk, tunnel.NewReceiver(rk, raic.DecoderConfig{}), nil
}

func (s *Server) newCtrl() (*ctrlSession, error) {
	id, send, _, recv, err := s.newOutHalf(netip.AddrPort{})
	if err != nil {
		return nil, err
	}
	return &ctrlSession{id: id, send: send, recv: recv}, nil
}

// nextUplink is what the intermediate keeps per uplink besides its path.
type nextUplink struct {
	recv       *metrics.Counter
	up, srtt   *metrics.Gauge
	overloaded atomic.Bool // the next hop said so in its last pong on this uplink
	wasUp      bool        // the janitor only
}

// openUplinks binds a socket per [[next.uplink]] and makes the Set.
func (s *Server) openUplinks() error {
	hc := uplink.HealthConfig{PingInterval: s.cfg.Next.PingInterval.Duration, DownAfter: 3 * s.cfg.Next.PingInterval.Duration}
	s.returns = uplink.NewReturns(s.reg, "intermediate_dropped_total", "Datagrams dropped, by reason.")
	s.next = &uplink.Set{Copies: s.cfg.Next.CopiesPerUplink, Errors: s.m.sendErrors}
	for i, uc := range s.cfg.Next.Uplinks {
		opt := udp.Options{Device: uc.Device, RecvBuffer: 4 << 20, SendBuffer: 4 << 20}
		if uc.Source != "" {
			opt.Local, _ = uplink.ParseSource(uc.Source)
		}
		next, _ := netip.ParseAddrPort(uc.Proxy)
		network := "udp4"
		if next.Addr().Is6() && !next.Addr().Is4In6() {
			network = "udp6"
		}
		conn, err := udp.Listen(network, opt)
		if err != nil {
			return fmt.Errorf("uplink %s: %w", uc.Name, err)
		}
		lbl := `{uplink="` + uc.Name + `"}`
		s.next.Paths = append(s.next.Paths, &uplink.Path{
			Index: i, Name: uc.Name, Conn: conn, To: next, Health: uplink.NewHealth(hc),
			Sent: s.reg.Counter("intermediate_uplink_datagrams_sent_total"+lbl, "Datagrams sent to the next hop per uplink."),
		})
		s.uplinks = append(s.uplinks, &nextUplink{wasUp: true,
			recv: s.reg.Counter("intermediate_uplink_datagrams_received_total"+lbl, "Datagrams received from the next hop per uplink."),
			up:   s.reg.Gauge("intermediate_uplink_up"+lbl, "1 when the uplink's path to the next hop answers keepalives."),
			srtt: s.reg.Gauge("intermediate_uplink_srtt_microseconds"+lbl, "Smoothed keepalive RTT to the next hop per uplink."),
		})
	}
	return nil
}

// ping sends the keepalives that are due, over the control session.
func (s *Server) ping(buf []byte, now int64) {
	s.next.SendPings(now, func(p wire.Ping) []byte {
		var pb [wire.PingLen]byte
		dg, err := s.ctrl.send.SealControl(buf, wire.TypePing, p.Put(pb[:]), now)
		if err != nil {
			s.m.sealErrors.Inc()
			return nil
		}
		return dg
	})
}

// noteUplinks logs uplinks going down and up and exports their state.
func (s *Server) noteUplinks(now int64) {
	for i, p := range s.next.Paths {
		u := s.uplinks[i]
		st := p.Health.Stats(now)
		if st.Up != u.wasUp {
			u.wasUp = st.Up
			if st.Up {
				s.log.Info("uplink up", "uplink", p.Name, "srtt", st.SRTT)
			} else {
				s.log.Warn("uplink down: no keepalive answer from the next hop", "uplink", p.Name)
			}
		}
		u.up.Set(b2i(st.Up))
		u.srtt.Set(st.SRTT.Microseconds())
	}
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// nextOverloaded reports whether the next hop said it is overloaded in its last
// keepalive answer on any uplink.
func (s *Server) nextOverloaded() bool {
	for _, u := range s.uplinks {
		if u.overloaded.Load() {
			return true
		}
	}
	return false
}

// nextRTT is the smallest smoothed RTT to the next hop over the live uplinks, 0
// before any keepalive was answered.
func (s *Server) nextRTT(now int64) time.Duration {
	rtt, _ := s.next.BestRTT(now)
	return rtt
}

// fromNext processes one datagram the next hop sent back on uplink i.
func (s *Server) fromNext(r *ingress.Reader, i int, dg []byte, now int64) {
	s.m.fromNext.Inc()
	s.uplinks[i].recv.Inc()
	h := &r.Hdr
	off, ok := s.returns.Parse(dg, h)
	if !ok {
		return
	}
	if h.Session == s.ctrl.id {
		s.fromNextCtrl(r, i, dg, off, now)
		return
	}
	rl, ok := s.byOut.Get(h.Session, now)
	if !ok {
		s.returns.Unknown()
		return
	}
	s.relays.Get(rl.inID, now) // an answer keeps the session alive too
	body, ok := s.returns.Open(rl.outRecv, dg, h, off, now, rl.toRouter)
	if !ok {
		return
	}
	if h.IsPath() {
		s.answerPath(r, i, rl.outSend, h, body)
		return
	}
	if !rl.outRecv.Upgrading() {
		// Heard with the keys before an upgrade, the next hop has not
		// followed yet, and the hello that makes it follow must ride on.
		rl.outSend.Heard(now)
	}
	if h.Type == wire.TypeData {
		rl.outScheme.Note(h)
		return
	}
	switch h.Type {
	case wire.TypePong, wire.TypeAck, wire.TypeProbeReply, wire.TypeClose:
		s.passBack(r, rl, body, now)
	case wire.TypeQuality:
		// The next hop's figures of this hop's paths: the intermediate codes
		// as the router does and does not adapt, so they end here.
	default:
		s.returns.Malformed()
	}
	if h.Type == wire.TypeClose {
		s.relays.Delete(rl.inID)
	}
}

// fromNextCtrl handles the answers on the intermediate's own control session.
func (s *Server) fromNextCtrl(r *ingress.Reader, i int, dg []byte, off int, now int64) {
	h := &r.Hdr
	body, ok := s.returns.Open(s.ctrl.recv, dg, h, off, now, s.ctrl)
	if !ok {
		return
	}
	if h.IsPath() {
		s.answerPath(r, i, s.ctrl.send, h, body)
		return
	}
	s.ctrl.send.Heard(now)
	switch h.Type {
	case wire.TypePong:
		var pong wire.Pong
		if wire.ParsePong(body, &pong) != nil || !s.next.OnPong(&pong, now) {
			s.returns.Malformed()
			return
		}
		s.m.pongsIn.Inc()
		s.uplinks[pong.Ping.Uplink].overloaded.Store(pong.Overloaded)
		s.noteNextEpoch(pong.Epoch, now)
	case wire.TypeProbeReply:
		var rep wire.ProbeReply
		if wire.ParseProbeReply(body, &rep) != nil {
			s.returns.Malformed()
			return
		}
		s.probes.answered(&rep, now)
	case wire.TypeClose:
		// The next hop forgot us; the next keepalive re-creates the session, since
		// the sender re-hellos after a silence.
	}
}

// noteNextEpoch records the restart epoch of the next hop's pong, as a router
// does its proxy's. A change from a known one means the next hop restarted and
// lost every session: each relay's session there is re-keyed for the new epoch
// (the next hop refuses game hellos of an old one, so nothing captured before
// its restart can be replayed into it) and says hello again at once. The first
// epoch heard moves the sessions opened before it to it too (the next hop
// follows on their next hello). Called on the uplink goroutines.
func (s *Server) noteNextEpoch(epoch uint64, now int64) {
	old := s.nextEpoch.Load()
	if epoch == 0 || epoch == old || !s.nextEpoch.CompareAndSwap(old, epoch) {
		return
	}
	if old != 0 {
		s.m.nextRestarts.Inc()
		s.log.Warn("next hop restarted: re-opening its sessions")
	}
	s.relays.Range(func(_ uint64, rl *relay) bool {
		if rl.outSend != nil {
			s.rekeyOut(rl, epoch, old == 0, now)
		}
		return true
	})
}

// rekeyOut derives the keys of rl's session at the next hop for its new epoch,
// on both halves, and forces the hello back on. upgrade: the next hop did not
// restart, it only named its epoch for the first time, so what it seals with
// the old keys until it follows still opens.
func (s *Server) rekeyOut(rl *relay, epoch uint64, upgrade bool, now int64) {
	if rl.outSend.Epoch() == epoch {
		return
	}
	if err := tunnel.FollowEpoch(rl.outSend, rl.outRecv, &s.nextKey, rl.outID, epoch, upgrade, now); err != nil {
		s.m.sealErrors.Inc()
	}
}

// forceNextHellos puts the hello back on every datagram towards the next hop
// once no uplink answers (a restarted next hop knows none of the sessions),
// instead of waiting for tunnel.RehelloAfter: the control session's first ping
// after it is back re-opens that session, its pong names the new epoch, and
// the relays' sessions follow (noteNextEpoch). The janitor only.
func (s *Server) forceNextHellos(now int64) {
	up := s.next.AnyUp(now)
	if up || s.nextSilent {
		s.nextSilent = !up
		if !up {
			// While silent, a keepalive goes out every janitor tick
			// instead of every ping interval: the pong that names a
			// restarted next hop's epoch, which its sessions wait for
			// (their hellos of the old one are refused), comes sooner.
			for _, p := range s.next.Paths {
				p.Health.PingSoon()
			}
		}
		return
	}
	s.nextSilent = true
	s.ctrl.send.ForceHello(now)
	s.relays.Range(func(_ uint64, rl *relay) bool {
		if rl.outSend != nil {
			rl.outSend.ForceHello(now)
		}
		return true
	})
}

// answerPath answers the next hop's path challenge (h, its token in body) on
// uplink i, sealed by snd in the path nonce space (wire.TypePathChallenge), as
// a router does: it proves the uplink's address is this intermediate's, and
// lifts the next hop's 3x limit on it. It goes to the next hop's address on
// that uplink. A path message is outside the replay window: it shows nothing
// about the next hop being there and refreshes nothing.
func (s *Server) answerPath(r *ingress.Reader, i int, snd *tunnel.Sender, h *wire.Header, token []byte) {
	if h.Type != wire.TypePathChallenge {
		return
	}
	dg, err := snd.SealPath(r.Ctrl, wire.TypePathResponse, token)
	if err != nil {
		s.m.sealErrors.Inc()
		return
	}
	s.next.SendOn(i, dg)
}

// sendNext puts one packet's datagrams on the uplinks (see uplink.Set; copies
// is what tunnel.Sender.Copies said of them).
func (s *Server) sendNext(dgs [][]byte, copies bool, now int64) {
	res := s.next.Send(dgs, copies, false, now)
	if res.Moved > 0 {
		s.m.nextMoved.Add(uint64(res.Moved))
	}
	if res.AllDown {
		s.m.nextAllDown.Inc()
	}
}

// sendCopies sends one datagram on every uplink, copies_per_uplink times (and
// the copies of uplinks that look down on the live ones).
func (s *Server) sendCopies(dg []byte, now int64) {
	one := [1][]byte{dg}
	s.sendNext(one[:], true, now)
}
