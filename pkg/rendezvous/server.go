package rendezvous

import (
	"context"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/wire"
)

// maxWants bounds the peers one peer may ask for at once; the oldest is
// forgotten (and counted) when a new one would exceed it.
const maxWants = 8

type want struct {
	id          string
	seen        int64 // last register naming it
	punchFailed bool
}

type observed struct {
	addr netip.AddrPort
	seen int64
}

// peerState is one configured peer. Only the read loop touches it.
type peerState struct {
	id       string
	aead     cipher.AEAD
	counter  uint64 // highest register counter accepted
	addrs    [MaxUplinks]observed
	wants    []want
	register bucket
	relay    bucket
}

// Server is the rendezvous service. Create it with NewServer, run it with Run.
type Server struct {
	cfg   *Config
	log   *slog.Logger
	peers map[string]*peerState
	// relayOn remembers, per pair ("a\x00b" with a < b), that the relay is on,
	// so that it is logged once when it starts and once when it stops.
	relayOn map[string]bool
	counter uint64 // introduce counter, unix nanoseconds at start

	conn    *net.UDPConn
	reg     *metrics.Registry
	m       serverMetrics
	httpSrv *http.Server

	rbuf, sbuf, body []byte
}

type serverMetrics struct {
	registers, introductions, relayed, relayBytes *metrics.Counter
	relayRefused, rateLimited, unauth, malformed  *metrics.Counter
	wantsEvicted                                  *metrics.Counter
	relayPairs                                    *metrics.Gauge
}

// NewServer builds a server from a checked config.
func NewServer(cfg *Config, log *slog.Logger) (*Server, error) {
	s := &Server{
		cfg: cfg, log: log, peers: map[string]*peerState{}, relayOn: map[string]bool{},
		counter: uint64(time.Now().UnixNano()),
		reg:     metrics.NewRegistry(),
		rbuf:    make([]byte, MaxMessage+1), sbuf: make([]byte, MaxMessage), body: make([]byte, MaxMessage),
	}
	now := mono.Now()
	for _, pc := range cfg.Peers {
		k, err := wire.ParseKey(pc.Key)
		if err != nil {
			return nil, fmt.Errorf("peer %q: %v", pc.ID, err)
		}
		aead, err := NewAEAD(&k)
		if err != nil {
			return nil, err
		}
		s.peers[pc.ID] = &peerState{
			id: pc.ID, aead: aead,
			register: newBucket(cfg.RegisterRatePPS, now),
			relay:    newBucket(cfg.RelayRatePPS, now),
		}
	}
	r := s.reg
	s.m = serverMetrics{
		registers:     r.Counter("raic_rendezvous_registers_total", "authenticated registers"),
		introductions: r.Counter("raic_rendezvous_introductions_total", "introduce messages sent"),
		relayed:       r.Counter("raic_rendezvous_relayed_total", "datagrams relayed between peers that failed to punch"),
		relayBytes:    r.Counter("raic_rendezvous_relayed_bytes_total", "bytes of peer datagrams relayed"),
		relayRefused:  r.Counter("raic_rendezvous_relay_refused_total", "relay requests refused: the pair has not both failed to punch, or the relay is off"),
		rateLimited:   r.Counter("raic_rendezvous_rate_limited_total", "messages dropped by a peer's rate limit"),
		unauth:        r.Counter("raic_rendezvous_unauthenticated_total", "messages dropped: unknown peer, bad tag or old counter"),
		malformed:     r.Counter("raic_rendezvous_malformed_total", "messages dropped: malformed"),
		wantsEvicted:  r.Counter("raic_rendezvous_wants_evicted_total", "wanted peers forgotten because a peer asked for too many"),
		relayPairs:    r.Gauge("raic_rendezvous_relay_pairs", "pairs the server relays for now"),
	}
	if err := r.Err(); err != nil {
		return nil, err
	}
	return s, nil
}

// Metrics returns the server's registry (for tests and the metrics endpoint).
func (s *Server) Metrics() *metrics.Registry { return s.reg }

// Listen opens the socket; Run calls it if the caller did not. Tests call it
// first to learn the bound address.
func (s *Server) Listen() error {
	if s.conn != nil {
		return nil
	}
	ap, err := netip.ParseAddrPort(s.cfg.Listen)
	if err != nil {
		return err
	}
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
	if err != nil {
		return err
	}
	s.conn = c
	return nil
}

// Addr returns the bound address (after Listen).
func (s *Server) Addr() netip.AddrPort { return s.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Listen(); err != nil {
		return err
	}
	if s.cfg.Metrics != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", s.reg.Handler())
		s.httpSrv = &http.Server{Addr: s.cfg.Metrics, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go s.httpSrv.ListenAndServe()
	}
	s.log.Info("rendezvous listening", "addr", s.Addr(), "peers", len(s.peers), "relay", s.cfg.RelayEnabled())
	stop := context.AfterFunc(ctx, func() { s.conn.Close() })
	defer stop()
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(s.rbuf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				if s.httpSrv != nil {
					s.httpSrv.Close()
				}
				return nil
			}
			continue
		}
		s.handle(s.rbuf[:n], unmap(from), mono.Now())
	}
}

// handle serves one datagram. It never answers what did not authenticate.
func (s *Server) handle(b []byte, from netip.AddrPort, now int64) {
	h, err := parseHeader(b)
	if err != nil {
		s.m.malformed.Inc()
		return
	}
	if h.typ != TypeRegister && h.typ != TypeRelay {
		s.m.malformed.Inc()
		return
	}
	p := s.peers[string(h.id)]
	if p == nil {
		s.m.unauth.Inc()
		return
	}
	body, err := open(p.aead, b, h)
	if err != nil {
		s.m.unauth.Inc()
		return
	}
	switch h.typ {
	case TypeRegister:
		s.onRegister(p, body, from, now)
	case TypeRelay:
		s.onRelay(p, body, now)
	}
}

func (s *Server) onRegister(p *peerState, body []byte, from netip.AddrPort, now int64) {
	ctr := binary.BigEndian.Uint64(body)
	wid, rest, err := readID(body[8:])
	if err != nil || len(rest) != 3 || int(rest[0]) >= MaxUplinks {
		s.m.malformed.Inc()
		return
	}
	if ctr <= p.counter {
		s.m.unauth.Inc() // a replayed or reordered register: never trusted
		return
	}
	if !p.register.take(now) {
		s.m.rateLimited.Inc()
		return
	}
	p.counter = ctr
	s.m.registers.Inc()
	up := int(rest[0])
	changed := p.addrs[up].addr != from
	p.addrs[up] = observed{addr: from, seen: now}
	w := p.want(string(wid), now, &s.m)
	failed := rest[2]&FlagPunchFailed != 0
	changed = changed || w.punchFailed != failed
	w.punchFailed = failed

	other := s.peers[w.id]
	if other == nil || other.wantOf(p.id, now, int64(s.cfg.AddrTTL.Duration)) == nil {
		return // not introduced: the other side has not asked for this peer
	}
	relay := s.updateRelay(p, other, now)
	// Answer the register where it came from, and tell the other side when
	// something it should know changed.
	s.introduce(p, other, relay, now, from)
	if changed {
		s.introduce(other, p, relay, now, netip.AddrPort{})
	}
}

// want returns p's entry for id, adding it (evicting the oldest) if needed.
func (p *peerState) want(id string, now int64, m *serverMetrics) *want {
	for i := range p.wants {
		if p.wants[i].id == id {
			p.wants[i].seen = now
			return &p.wants[i]
		}
	}
	if len(p.wants) >= maxWants {
		oldest := 0
		for i := range p.wants {
			if p.wants[i].seen < p.wants[oldest].seen {
				oldest = i
			}
		}
		p.wants = append(p.wants[:oldest], p.wants[oldest+1:]...)
		m.wantsEvicted.Inc()
	}
	p.wants = append(p.wants, want{id: id, seen: now})
	return &p.wants[len(p.wants)-1]
}

// wantOf returns p's live entry for id, or nil.
func (p *peerState) wantOf(id string, now, ttl int64) *want {
	for i := range p.wants {
		if p.wants[i].id == id && now-p.wants[i].seen <= ttl {
			return &p.wants[i]
		}
	}
	return nil
}

func pairKey(a, b string) string {
	if a > b {
		a, b = b, a
	}
	return a + "\x00" + b
}

// updateRelay decides whether the pair is relayed: both asked for each other
// and both say punching failed. It logs and counts each change.
func (s *Server) updateRelay(a, b *peerState, now int64) bool {
	ttl := int64(s.cfg.AddrTTL.Duration)
	wa, wb := a.wantOf(b.id, now, ttl), b.wantOf(a.id, now, ttl)
	on := s.cfg.RelayEnabled() && wa != nil && wb != nil && wa.punchFailed && wb.punchFailed
	k := pairKey(a.id, b.id)
	if on != s.relayOn[k] {
		if on {
			s.relayOn[k] = true
			s.m.relayPairs.Add(1)
			s.log.Warn("relay on: both peers failed to punch", "a", a.id, "b", b.id)
		} else {
			delete(s.relayOn, k)
			s.m.relayPairs.Add(-1)
			s.log.Info("relay off", "a", a.id, "b", b.id)
		}
	}
	return on
}

// introduce tells `to` the observed addresses of `about`: at dst if set, else
// at every live address of `to`.
func (s *Server) introduce(to, about *peerState, relay bool, now int64, dst netip.AddrPort) {
	ttl := int64(s.cfg.AddrTTL.Duration)
	s.counter++
	b := binary.BigEndian.AppendUint64(s.body[:0], s.counter)
	b = putID(b, about.id)
	var flags byte
	if relay {
		flags |= FlagRelayOn
	}
	b = append(b, flags, 0)
	nAt := len(b) - 1
	n := 0
	for i, o := range about.addrs {
		if o.addr.IsValid() && now-o.seen <= ttl {
			b = append(b, byte(i))
			b = putAddr(b, o.addr)
			n++
		}
	}
	b[nAt] = byte(n)
	msg, err := seal(to.aead, s.sbuf, TypeIntroduce, to.id, b)
	if err != nil {
		return
	}
	if dst.IsValid() {
		s.send(msg, dst)
		return
	}
	for _, o := range to.addrs {
		if o.addr.IsValid() && now-o.seen <= ttl {
			s.send(msg, o.addr)
		}
	}
}

func (s *Server) send(msg []byte, to netip.AddrPort) {
	if _, err := s.conn.WriteToUDPAddrPort(msg, to); err == nil && msg[1] == TypeIntroduce {
		s.m.introductions.Inc()
	}
}

func (s *Server) onRelay(p *peerState, body []byte, now int64) {
	did, rest, err := readID(body[8:])
	if err != nil || len(rest) < 1 {
		s.m.malformed.Inc()
		return
	}
	other := s.peers[string(did)]
	if other == nil || !s.relayOn[pairKey(p.id, other.id)] {
		s.m.relayRefused.Inc()
		return
	}
	ttl := int64(s.cfg.AddrTTL.Duration)
	if other.wantOf(p.id, now, ttl) == nil || p.wantOf(other.id, now, ttl) == nil {
		s.m.relayRefused.Inc()
		return
	}
	if !p.relay.take(now) {
		s.m.rateLimited.Inc()
		return
	}
	dstUp, payload := int(rest[0]), rest[1:]
	s.counter++
	b := binary.BigEndian.AppendUint64(s.body[:0], s.counter)
	b = putID(b, p.id)
	b = append(b, payload...)
	msg, err := seal(other.aead, s.sbuf, TypeRelayed, other.id, b)
	if err != nil {
		s.m.malformed.Inc()
		return
	}
	for i, o := range other.addrs {
		if (dstUp == AnyUplink || dstUp == i) && o.addr.IsValid() && now-o.seen <= ttl {
			if _, err := s.conn.WriteToUDPAddrPort(msg, o.addr); err == nil {
				s.m.relayed.Inc()
				s.m.relayBytes.Add(uint64(len(payload)))
			}
		}
	}
}

func unmap(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }

// bucket is a token bucket: rate per second, a burst of one second's worth.
type bucket struct {
	rate, tokens, burst float64
	last                int64
}

func newBucket(rate float64, now int64) bucket {
	burst := max(rate, 1)
	return bucket{rate: rate, tokens: burst, burst: burst, last: now}
}

func (b *bucket) take(now int64) bool {
	b.tokens = min(b.burst, b.tokens+float64(now-b.last)*b.rate/1e9)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
