package intermediate

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/wire"
)

// A router that probes an intermediate asks how far the game server is through
// it. The intermediate does not measure servers itself: it asks the next hop
// (with a probe of its own on its control session) and answers with the next
// hop's RTT to the server plus its own RTT to the next hop. Answers never wait:
// a router's probe is answered at once from what the intermediate last heard,
// 0 (unknown) until then, and the question goes on to the next hop at most once
// per probeRefresh per target.

const (
	// probeRefresh is how often a target a router keeps asking about is asked
	// about again at the next hop.
	probeRefresh = time.Second
	// probeStale: an answer from the next hop older than this is not passed on.
	probeStale = 30 * time.Second
	// maxProbeTargets bounds the targets remembered.
	maxProbeTargets = 1024
)

// probeCache holds the next hop's answers per target.
type probeCache struct {
	seq atomic.Uint32

	mu sync.Mutex
	m  map[netip.AddrPort]*probeEntry
}

type probeEntry struct {
	serverRTT  time.Duration // the next hop's RTT to the target; 0 = unknown
	allowed    bool          // the next hop lets us reach the target
	overloaded bool
	answeredAt int64 // mono ns of the last answer; 0 = none yet
	askedAt    int64 // mono ns a router last asked (for eviction)
	sentAt     int64 // mono ns the question last went to the next hop
}

// ask records that a router asked about target and returns what is known, and
// whether the question should go on to the next hop now.
func (c *probeCache) ask(target netip.AddrPort, now int64) (e probeEntry, send bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[netip.AddrPort]*probeEntry{}
	}
	p := c.m[target]
	if p == nil {
		if len(c.m) >= maxProbeTargets {
			var victim netip.AddrPort
			var oldest int64
			for t, q := range c.m {
				if !victim.IsValid() || q.askedAt < oldest {
					victim, oldest = t, q.askedAt
				}
			}
			delete(c.m, victim)
		}
		p = &probeEntry{}
		c.m[target] = p
	}
	p.askedAt = now
	if p.sentAt == 0 || now-p.sentAt > int64(probeRefresh) {
		p.sentAt, send = now, true
	}
	e = *p
	if e.answeredAt == 0 || now-e.answeredAt > int64(probeStale) {
		e = probeEntry{}
	}
	return e, send
}

// answered stores the next hop's reply.
func (c *probeCache) answered(r *wire.ProbeReply, now int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.m[r.Probe.Target]; p != nil {
		p.serverRTT, p.allowed, p.overloaded, p.answeredAt = r.ServerRTT, r.Allowed, r.Overloaded, now
	}
}

// answerProbe fills in the answer to a router's probe (ingress has parsed it,
// and checked the target against the client's allowlist).
func (s *Server) answerProbe(rep *wire.ProbeReply, now int64) {
	if !rep.Allowed {
		return
	}
	target := rep.Probe.Target
	e, send := s.probes.ask(target, now)
	if send {
		s.probeNext(target, now)
	}
	if e.answeredAt != 0 {
		// Refused by the next hop means refused through us.
		rep.Allowed = e.allowed
		rep.Overloaded = rep.Overloaded || e.overloaded
		if hop := s.nextRTT(now); e.serverRTT > 0 && hop > 0 {
			rep.ServerRTT = e.serverRTT + hop
		}
	}
}

// probeNext asks the next hop about target on every uplink (the copies share one
// packet ID, so the next hop answers the first to arrive).
func (s *Server) probeNext(target netip.AddrPort, now int64) {
	p := wire.Probe{Seq: s.probes.seq.Add(1), SentAt: now, Target: target}
	var pb [wire.ProbeLen]byte
	buf := make([]byte, wire.MaxDatagram) // once per target per probeRefresh at most
	dg, err := s.ctrl.send.SealControl(buf, wire.TypeProbe, p.Put(pb[:]), now)
	if err != nil {
		s.m.sealErrors.Inc()
		return
	}
	for i := range s.next.Paths {
		s.next.SendOn(i, dg)
	}
}
