package peer

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/rendezvous"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
	"github.com/raicnet/raic/raic/replay"
)

// A Link is one peer session: it seals each packet once and sends the same
// bytes (RAIC-1 copies) over every path that is up, or codes it into shards
// spread over the paths (LinkConfig.Scheme; see coded.go), opens what the
// peer sends, keeps the first copy of each packet or rebuilds it from its
// shards (the replay window of pkg/replay, which moves only after a datagram
// authenticated, delivers each packet once), answers and sends keepalives
// per path, and, given a rendezvous client, registers, learns the peer's
// addresses from introductions, and falls back to the relay when punching
// failed.
//
// Keys. Each side seals only with its own send session: a random session ID
// and salt, from which wire.DeriveKeys (as a client) gives the key; its
// datagrams carry a hello (the sender's ID and salt) until a pong proves the
// peer has it, and keepalives always carry it. The peer derives the same key
// from the hello (as a server, taking the client-to-server key). Two salts,
// two keys: the two directions never share a (key, nonce) pair, and a
// restarted side picks a new salt.
type Link struct {
	cfg   LinkConfig
	paths *Paths
	out   Sender

	// Own send session.
	sid       uint64
	hello     wire.Hello
	seal      cipher.AEAD
	pid       atomic.Uint64
	helloDone atomic.Bool

	sendMu  sync.Mutex // guards sendBuf, relayBuf, targets (one sender at a time)
	sendBuf []byte
	relBuf  []byte
	scratch []byte
	targets []Path
	coder   *coder // nil: copies

	// Receive side: the peer's current send session.
	rmu     sync.Mutex
	recv    *recvSession
	decPrev raic.DecoderStats // the decoders of sessions replaced

	// Rendezvous state.
	rv           *rendezvous.Client
	introducedAt atomic.Int64 // 0: never introduced
	lastDirect   atomic.Int64 // last authenticated datagram not through the relay
	relayOn      atomic.Bool
	lastRegister int64 // Tick only

	c linkCounters
}

type recvSession struct {
	sid     uint64
	started int64 // the hello's UnixMilli
	open    cipher.AEAD
	win     replay.Window
	dec     *raic.Decoder // coded shards; made at the first
}

type linkCounters struct {
	sent, copies, delivered, dups, unauth, malformed, noSession atomic.Uint64
	relaySent, relayRecv                                        atomic.Uint64
	bytes, payloadBytes                                         atomic.Uint64
}

// LinkCounters is a snapshot of a Link's counters.
type LinkCounters struct {
	Sent      uint64 // packets sent
	Copies    uint64 // datagrams sent for them (direct paths): copies or shards
	Delivered uint64 // packets delivered (first copies, or rebuilt from shards)
	Dups      uint64 // copies or shards dropped as duplicates (or replays, or surplus)
	Unauth    uint64 // datagrams that did not authenticate
	Malformed uint64
	NoSession uint64 // datagrams of a session whose hello never arrived
	RelaySent uint64 // datagrams sent through the rendezvous relay
	RelayRecv uint64 // datagrams received through it
	// Bytes is what the data datagrams on direct paths weighed (headers,
	// hellos and tags included), PayloadBytes what Send was given: their
	// ratio is the scheme's cost on the wire.
	Bytes, PayloadBytes uint64
	// Rebuilt: packets the decoder completed with parity (a shard lost or
	// late); Lost: coded packets given up with too few shards.
	Rebuilt, Lost uint64
}

// LinkConfig configures a Link.
type LinkConfig struct {
	LocalID, PeerID string   // 1 to 32 bytes each
	Key             wire.Key // the pair's shared key
	Paths           Config   // Uplinks is required
	// Scheme is how packets are sent: the zero value or RAIC-1 sends one
	// copy on every path that is up (the copy count is not used); RAIC-5,
	// RS k+m and RAICT code each packet into shards spread over the paths
	// (see coded.go). The receiver follows each datagram's own scheme.
	Scheme raic.Params
	// Static are the peer's addresses from the config.
	Static []netip.AddrPort
	// Rendezvous, when set, is used to find the peer (at RendezvousAddr).
	Rendezvous     *rendezvous.Client
	RendezvousAddr netip.AddrPort
	// RegisterInterval (default 1 s) is how often each uplink registers.
	RegisterInterval time.Duration
	// PunchTimeout (default 3 s): no direct datagram from the peer for this
	// long after an introduction means punching failed; the link asks for
	// the relay and sends through it while the server agrees.
	PunchTimeout time.Duration
	// Deliver receives each packet's payload once; it must not keep it. A
	// packet rebuilt from shards is delivered with the link's receive lock
	// held (the decoder's buffer is valid until its next shard), so Deliver
	// must not call the link's Receive.
	Deliver func(payload []byte)
	// Observe, when set, sees every authenticated copy that arrives directly
	// (duplicates too: it costs opening them), for per-path measurements.
	// Under a coded scheme, body is one shard.
	Observe func(local int, from netip.AddrPort, t wire.Type, body []byte, now int64)
	Log     *slog.Logger
}

// NewLink builds a link that sends through out.
func NewLink(cfg LinkConfig, out Sender, now int64) (*Link, error) {
	if cfg.Deliver == nil {
		return nil, errors.New("peer: no Deliver function")
	}
	if len(cfg.PeerID) == 0 || len(cfg.PeerID) > wire.MaxClientID {
		return nil, errors.New("peer: peer ID must be 1 to 32 bytes")
	}
	if cfg.RegisterInterval <= 0 {
		cfg.RegisterInterval = time.Second
	}
	if cfg.PunchTimeout <= 0 {
		cfg.PunchTimeout = 3 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Rendezvous != nil && !cfg.RendezvousAddr.IsValid() {
		return nil, errors.New("peer: a rendezvous client without an address")
	}
	paths, err := New(cfg.Paths)
	if err != nil {
		return nil, err
	}
	for _, a := range cfg.Static {
		if err := paths.Add(a, Static, -1, now); err != nil {
			return nil, err
		}
	}
	l := &Link{
		cfg: cfg, paths: paths, out: out, rv: cfg.Rendezvous,
		sendBuf: make([]byte, wire.MaxDatagram), relBuf: make([]byte, rendezvous.MaxMessage),
		scratch: make([]byte, rendezvous.MaxMessage),
		targets: make([]Path, 0, paths.cfg.MaxRemote*paths.cfg.Uplinks),
	}
	if !isCopyScheme(cfg.Scheme) {
		if l.coder, err = newCoder(cfg.Scheme); err != nil {
			return nil, err
		}
	}
	if err := l.hello.SetClientID(cfg.LocalID); err != nil {
		return nil, err
	}
	if l.hello.Salt, err = wire.NewSalt(); err != nil {
		return nil, err
	}
	var sid [8]byte
	for l.sid == 0 {
		if _, err := rand.Read(sid[:]); err != nil {
			return nil, err
		}
		l.sid = binary.BigEndian.Uint64(sid[:])
	}
	l.hello.UnixMilli = time.Now().UnixMilli()
	if l.seal, _, err = wire.DeriveKeys(&cfg.Key, &l.hello.Salt, l.sid, wire.RoleClient); err != nil {
		return nil, err
	}
	return l, nil
}

// Paths returns the link's path table.
func (l *Link) Paths() *Paths { return l.paths }

// RelayActive reports whether datagrams also go through the relay.
func (l *Link) RelayActive(now int64) bool { return l.relayOn.Load() && l.punchFailed(now) }

// Scheme returns the scheme the link sends with; copies (one on every path)
// are RAIC-1 with K=1, M=0.
func (l *Link) Scheme() raic.Params {
	if l.coder == nil {
		return raic.Params{Scheme: raic.SchemeCopy, K: 1}
	}
	return l.coder.params
}

// SchemeName names the scheme for reports: "copies" or, e.g., "RAIC-6 2+2".
func (l *Link) SchemeName() string {
	if l.coder == nil {
		return "copies"
	}
	return l.coder.params.String()
}

// Counters returns the link's counters.
func (l *Link) Counters() LinkCounters {
	c := &l.c
	l.rmu.Lock()
	ds := l.decoderStats()
	l.rmu.Unlock()
	return LinkCounters{
		Sent: c.sent.Load(), Copies: c.copies.Load(), Delivered: c.delivered.Load(), Dups: c.dups.Load(),
		Unauth: c.unauth.Load(), Malformed: c.malformed.Load(), NoSession: c.noSession.Load(),
		RelaySent: c.relaySent.Load(), RelayRecv: c.relayRecv.Load(),
		Bytes: c.bytes.Load(), PayloadBytes: c.payloadBytes.Load(),
		Rebuilt: ds.Recovered, Lost: ds.Lost,
	}
}

// sealNext seals one datagram of type t with body into l.sendBuf; sendMu is held.
func (l *Link) sealNext(t wire.Type, body []byte, withHello bool) ([]byte, error) {
	h := wire.Header{Type: t, Session: l.sid, Packet: l.pid.Add(1), Desc: wire.Desc{Count: 1, K: 1}}
	if t == wire.TypeData {
		h.Scheme = uint8(raic.SchemeCopy)
	}
	var hello *wire.Hello
	if withHello {
		hello = &l.hello
	}
	return wire.Seal(l.seal, l.sendBuf, &h, hello, body)
}

// Send sends one packet to the peer: sealed once, the same bytes on every
// path that is up, and through the relay while punching has failed; or,
// under a coded scheme, coded into shards spread over the paths.
func (l *Link) Send(payload []byte, now int64) error {
	l.sendMu.Lock()
	defer l.sendMu.Unlock()
	if l.coder != nil {
		return l.sendCoded(payload, now)
	}
	dg, err := l.sealNext(wire.TypeData, payload, !l.helloDone.Load())
	if err != nil {
		return err
	}
	l.c.sent.Add(1)
	l.c.payloadBytes.Add(uint64(len(payload)))
	l.targets = l.paths.Targets(now, l.targets[:0])
	for _, t := range l.targets {
		if l.out.SendTo(t.Local, dg, t.Remote) == nil {
			l.c.copies.Add(1)
			l.c.bytes.Add(uint64(len(dg)))
		}
	}
	if l.RelayActive(now) {
		l.sendRelay(dg)
	}
	return nil
}

// sendRelay sends dg through the rendezvous from every local uplink; sendMu is held.
func (l *Link) sendRelay(dg []byte) {
	msg, err := l.rv.Relay(l.relBuf, l.scratch, dg, rendezvous.AnyUplink)
	if err != nil {
		return
	}
	for i := 0; i < l.paths.Uplinks(); i++ {
		if l.out.SendTo(i, msg, l.cfg.RendezvousAddr) == nil {
			l.c.relaySent.Add(1)
		}
	}
}

func (l *Link) punchFailed(now int64) bool {
	at := l.introducedAt.Load()
	if at == 0 {
		return false
	}
	return now-max(at, l.lastDirect.Load()) > int64(l.cfg.PunchTimeout)
}

// Tick does the link's timed work: keepalives on every path that is due,
// forgetting silent addresses, and registering with the rendezvous. Call it
// every 10 to 50 ms.
func (l *Link) Tick(now int64) {
	l.paths.Expire(now)
	l.rmu.Lock()
	if l.recv != nil && l.recv.dec != nil {
		l.recv.dec.Expire(now)
	}
	l.rmu.Unlock()
	var pb [wire.PingLen]byte
	l.sendMu.Lock()
	l.paths.PingsDue(now, func(pa Path, seq uint32) {
		p := wire.Ping{Seq: seq, Uplink: uint8(pa.Local), SentAt: now}
		if dg, err := l.sealNext(wire.TypePing, p.Put(pb[:]), true); err == nil {
			l.out.SendTo(pa.Local, dg, pa.Remote)
		}
	})
	l.sendMu.Unlock()
	if l.rv == nil || now-l.lastRegister < int64(l.cfg.RegisterInterval) {
		return
	}
	l.lastRegister = now
	failed := l.punchFailed(now)
	l.rv.SetPunchFailed(failed)
	var buf [256]byte
	for i := 0; i < l.paths.Uplinks(); i++ {
		if msg, err := l.rv.Register(buf[:], i, l.paths.Uplinks()); err == nil {
			l.out.SendTo(i, msg, l.cfg.RendezvousAddr)
		}
	}
}

// Receive handles one datagram that arrived on local uplink `local` from
// `from`: a peer datagram or a rendezvous message. b is modified in place.
func (l *Link) Receive(local int, from netip.AddrPort, b []byte, now int64) {
	if rendezvous.IsMessage(b) {
		l.receiveRendezvous(local, from, b, now)
		return
	}
	l.receivePeer(local, from, b, now, false)
}

func (l *Link) receiveRendezvous(local int, from netip.AddrPort, b []byte, now int64) {
	if l.rv == nil || unmap(from) != unmap(l.cfg.RendezvousAddr) {
		l.c.malformed.Add(1)
		return
	}
	var ev rendezvous.Event
	if err := l.rv.Handle(b, &ev); err != nil || ev.Peer != l.cfg.PeerID {
		l.c.unauth.Add(1)
		return
	}
	switch ev.Type {
	case rendezvous.TypeIntroduce:
		if l.introducedAt.Load() == 0 {
			l.introducedAt.Store(now)
			l.cfg.Log.Info("peer introduced", "peer", l.cfg.PeerID, "addresses", ev.N)
		}
		for _, a := range ev.Addrs[:ev.N] {
			l.paths.Add(a.Addr, Introduced, a.Uplink, now)
		}
		if was := l.relayOn.Swap(ev.RelayOn); was != ev.RelayOn {
			if ev.RelayOn {
				l.cfg.Log.Warn("punching failed: the rendezvous relays this call", "peer", l.cfg.PeerID)
			} else {
				l.cfg.Log.Info("relay off", "peer", l.cfg.PeerID)
			}
		}
	case rendezvous.TypeRelayed:
		l.c.relayRecv.Add(1)
		l.receivePeer(local, from, ev.Payload, now, true)
	}
}

func (l *Link) receivePeer(local int, from netip.AddrPort, b []byte, now int64, relayed bool) {
	var h wire.Header
	var hello wire.Hello
	off, err := wire.Parse(b, &h, &hello)
	if err != nil {
		l.c.malformed.Add(1)
		return
	}
	hasHello := h.Flags&wire.FlagHello != 0
	if hasHello && string(hello.ClientID()) != l.cfg.PeerID {
		l.c.unauth.Add(1)
		return
	}
	l.rmu.Lock()
	rs := l.recv
	fresh := false
	if rs == nil || rs.sid != h.Session {
		if !hasHello || (rs != nil && hello.UnixMilli < rs.started) {
			l.rmu.Unlock()
			l.c.noSession.Add(1)
			return
		}
		_, open, err := wire.DeriveKeys(&l.cfg.Key, &hello.Salt, h.Session, wire.RoleServer)
		if err != nil {
			l.rmu.Unlock()
			return
		}
		// recv of RoleServer is the client-to-server key: what the peer seals with.
		rs = &recvSession{sid: h.Session, started: hello.UnixMilli, open: open}
		fresh = true
	}
	if l.cfg.Observe == nil && rs.win.Seen(h.Packet) {
		l.rmu.Unlock()
		l.c.dups.Add(1)
		return
	}
	body, err := wire.Open(rs.open, b, off)
	if err != nil {
		l.rmu.Unlock()
		l.c.unauth.Add(1)
		return
	}
	if fresh {
		if l.recv != nil && l.recv.dec != nil {
			addDecoderStats(&l.decPrev, l.recv.dec.Stats())
		}
		l.recv = rs // only an authenticated hello replaces the session
		l.cfg.Log.Info("peer session", "peer", l.cfg.PeerID, "session", h.Session)
	}
	if h.Type == wire.TypeData && !isWholeCopy(&h) {
		// A coded shard: its packet's ID enters the window when the
		// decoder releases it (coded.go).
		useful := !rs.win.Seen(h.Packet)
		if useful {
			useful = l.receiveShard(rs, &h, body, now)
		} else {
			l.c.dups.Add(1)
		}
		l.rmu.Unlock()
		if l.cfg.Observe != nil && !relayed {
			l.cfg.Observe(local, from, h.Type, body, now)
		}
		if useful && !relayed {
			l.lastDirect.Store(now)
			l.paths.Heard(local, from, -1, now)
		}
		return
	}
	isNew := rs.win.Mark(h.Packet)
	l.rmu.Unlock()
	if l.cfg.Observe != nil && !relayed {
		l.cfg.Observe(local, from, h.Type, body, now)
	}
	if !isNew {
		l.c.dups.Add(1)
		return
	}
	if !relayed {
		l.lastDirect.Store(now)
	}
	switch h.Type {
	case wire.TypeData:
		if !relayed {
			l.paths.Heard(local, from, -1, now)
		}
		l.c.delivered.Add(1)
		l.cfg.Deliver(body)
	case wire.TypePing:
		var p wire.Ping
		if wire.ParsePing(body, &p) != nil || relayed {
			return
		}
		l.paths.Heard(local, from, int(p.Uplink), now)
		var pb [wire.PongLen]byte
		pong := wire.Pong{Ping: p, PeerTime: now}
		l.sendMu.Lock()
		if dg, err := l.sealNext(wire.TypePong, pong.Put(pb[:]), !l.helloDone.Load()); err == nil {
			l.out.SendTo(local, dg, from)
		}
		l.sendMu.Unlock()
	case wire.TypePong:
		var p wire.Pong
		if wire.ParsePong(body, &p) != nil || relayed {
			return
		}
		// The pong opened with our key and echoes our ping, which carried
		// the hello: the peer has our session.
		l.helloDone.Store(true)
		l.paths.Heard(local, from, -1, now)
		l.paths.OnPong(int(p.Ping.Uplink), from, p.Ping.Seq, p.Ping.SentAt, p.PeerTime, now)
	}
}
