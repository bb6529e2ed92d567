// Package tunnel holds what both ends of a session do to a packet: the sender
// numbers it, codes it into RAIC shards and seals each shard once; the receiver
// drops what the anti-replay window has already seen, authenticates, feeds the
// decoder, and releases each packet once. Routers, proxies and intermediate
// proxies differ only in where packets come from and where they go.
package tunnel

import (
	"crypto/cipher"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
	"github.com/raicnet/raic/raic/replay"
)

// ErrDuplicate means the window had already seen the packet: dropped before any
// cryptographic work.
var ErrDuplicate = errors.New("tunnel: duplicate or too old")

// RehelloAfter is how long a sender may hear nothing from the far side before it
// puts the hello back on its datagrams: if the far side restarted and forgot the
// session, the next datagram re-creates it.
const RehelloAfter = 2 * time.Second

// Sender seals what one end sends in one session. Seal is called by one goroutine
// at a time (the one that reads the session's packets); SealControl and the hello
// state may be used from any goroutine.
type Sender struct {
	keys    atomic.Pointer[sendKeys] // replaced whole by Rekey
	session uint64
	lastPID atomic.Uint64
	// pathPID numbers path challenges and responses (SealPath), in a nonce
	// space of their own; it starts from the wall clock, as a re-created
	// session may have its keys of before a restart.
	pathPID atomic.Uint64

	enc    *raic.Encoder // and its Params, the scheme in use
	own    *SealBuffers  // Seal's, made on the first Seal (SealWith takes the caller's)
	copies bool          // the datagrams of the last Seal are copy fragments (see Copies)

	hasHello  bool
	heard     atomic.Bool  // the far side has answered at least once
	lastHeard atomic.Int64 // mono ns of the last authenticated datagram received
	// forcedAt: ForceHello's time; the hello rides again until something is
	// heard after it.
	forcedAt atomic.Int64
}

// sendKeys is what Rekey swaps at once: the sealing key and the hello that
// names the epoch it was derived for (nil for a sender with no hello that was
// never re-keyed: a proxy's, which holds one per session).
type sendKeys struct {
	aead  cipher.AEAD
	hello *wire.Hello
}

// helloOf is k's hello, or the zero one.
func (k *sendKeys) helloOf() wire.Hello {
	if k.hello == nil {
		return wire.Hello{}
	}
	return *k.hello
}

// NewSender makes the sending half of a session. hello, if not nil, rides on
// every datagram until the far side is heard from (and again after a silence of
// RehelloAfter), so the session needs no round trip to start.
func NewSender(aead cipher.AEAD, session uint64, p raic.Params, hello *wire.Hello) (*Sender, error) {
	s := &Sender{session: session}
	s.pathPID.Store(ClockPIDBase(time.Now().UnixMilli()))
	k := &sendKeys{aead: aead}
	if hello != nil {
		h := *hello
		k.hello, s.hasHello = &h, true
	}
	s.keys.Store(k)
	if err := s.SetParams(p); err != nil {
		return nil, err
	}
	return s, nil
}

// SetParams switches the RAIC scheme for the packets sealed after it. It must not
// run concurrently with Seal.
func (s *Sender) SetParams(p raic.Params) error {
	enc, err := raic.NewEncoder(p)
	if err != nil {
		return err
	}
	s.enc = enc
	return nil
}

// Params returns the scheme in use.
func (s *Sender) Params() raic.Params { return s.enc.Params() }

// Session returns the session ID.
func (s *Sender) Session() uint64 { return s.session }

// Heard records that an authenticated datagram of this session arrived from the
// far side: it has the session, so hellos can stop.
func (s *Sender) Heard(now int64) {
	s.lastHeard.Store(now)
	if !s.heard.Load() {
		s.heard.Store(true)
	}
}

// HelloDue reports whether the next datagram should carry the hello.
func (s *Sender) HelloDue(now int64) bool {
	if !s.hasHello {
		return false
	}
	last := s.lastHeard.Load()
	return !s.heard.Load() || now-last > int64(RehelloAfter) || last <= s.forcedAt.Load()
}

// ForceHello puts the hello back on every datagram from now until the far side
// is heard from again: a router calls it when a proxy stops answering (it may
// have restarted and lost the session) or says it restarted, so the first
// datagram that reaches it re-creates the session.
func (s *Sender) ForceHello(now int64) {
	if s.lastHeard.Load() >= now {
		now = s.lastHeard.Load() + 1
	}
	s.forcedAt.Store(now)
}

// Rekey switches the session to keys derived for the far side's new restart
// epoch: aead seals from the next datagram on, and the hello (forced back on)
// names epoch. Packet IDs keep growing. Safe to call while Seal runs.
func (s *Sender) Rekey(aead cipher.AEAD, epoch uint64, now int64) {
	h := s.keys.Load().helloOf()
	h.Epoch = epoch
	k := &sendKeys{aead: aead, hello: &h}
	s.keys.Store(k)
	s.ForceHello(now)
}

// AEAD returns the key the sender seals with now (it changes on Rekey), for a
// caller that seals a datagram of its own under this session's key.
func (s *Sender) AEAD() cipher.AEAD { return s.keys.Load().aead }

// Epoch returns the restart epoch the session's keys are derived for (0: none).
func (s *Sender) Epoch() uint64 {
	if h := s.keys.Load().hello; h != nil {
		return h.Epoch
	}
	return 0
}

func (s *Sender) nextPID() uint64 { return s.lastPID.Add(1) }

// StartAt makes the sender's packet IDs start after pid. A proxy starts the
// sessions it creates at a value taken from the wall clock: a session it
// re-creates after a restart may have the same keys as before (a control
// session, whose hello names the old epoch), and its packet IDs must then be
// new (the nonce rule) and ahead of what the far side's window saw.
func (s *Sender) StartAt(pid uint64) {
	for {
		last := s.lastPID.Load()
		if pid <= last || s.lastPID.CompareAndSwap(last, pid) {
			return
		}
	}
}

// ClockPIDBase is a packet ID base from the wall clock for StartAt: Unix ms
// times 2^20, so a session would have to send over a million datagrams per
// millisecond of its life to overtake the base of a later restart.
func ClockPIDBase(unixMilli int64) uint64 { return uint64(unixMilli) << 20 }

// SealBuffers hold the datagrams a Seal writes: a buffer of wire.MaxDatagram
// bytes per shard, grown on use. A Sender has its own; many senders may
// share one set (SealWith) when they seal one at a time and each sends its
// datagrams before the next Seal into the set: a proxy's sessions replying on
// one goroutine share one, so a session holds no datagram buffer of its own.
// The zero value is ready.
type SealBuffers struct {
	bufs [][]byte // one datagram buffer per shard, reused
	dgs  [][]byte // the sealed datagrams returned by Seal
}

// Seal codes pkt into shards and seals each into a datagram of its own. The
// datagrams stay valid until the next Seal; every copy sent of a shard must be
// this same buffer (see package wire on nonces).
func (s *Sender) Seal(pkt []byte, now int64) (pid uint64, dgs [][]byte, err error) {
	return s.SealWith(s.ownBuffers(), pkt, now)
}

// ownBuffers returns Seal's buffers, made on first use: a proxy's senders
// seal into their pollers' (SealWith), so theirs are never made.
func (s *Sender) ownBuffers() *SealBuffers {
	if s.own == nil {
		s.own = new(SealBuffers)
	}
	return s.own
}

// SealWith is Seal into b, whose datagrams stay valid until the next Seal
// into b, by any sender.
func (s *Sender) SealWith(b *SealBuffers, pkt []byte, now int64) (pid uint64, dgs [][]byte, err error) {
	pid = s.nextPID()
	dgs, err = s.sealPID(b, pid, pkt, now)
	return pid, dgs, err
}

// SealPID is Seal with the packet ID chosen by the caller: an intermediate proxy
// keeps the packet IDs of the hop before it, so they are the same end to end.
// The caller must never seal two packets under one ID in a session (the nonce
// rule); IDs used here also move the sender's counter past them.
func (s *Sender) SealPID(pid uint64, pkt []byte, now int64) (dgs [][]byte, err error) {
	return s.sealPID(s.ownBuffers(), pid, pkt, now)
}

func (s *Sender) sealPID(b *SealBuffers, pid uint64, pkt []byte, now int64) (dgs [][]byte, err error) {
	for {
		last := s.lastPID.Load()
		if pid <= last || s.lastPID.CompareAndSwap(last, pid) {
			break
		}
	}
	shards, err := s.enc.Encode(pid, pkt)
	if err != nil {
		return nil, err
	}
	// The hello is stamped with the time it is sent, so a re-hello after a long
	// session still passes the far side's age check.
	keys := s.keys.Load()
	var hl wire.Hello
	var hello *wire.Hello
	if s.HelloDue(now) {
		hl = keys.helloOf()
		hl.UnixMilli = time.Now().UnixMilli()
		hello = &hl
	}
	for len(b.bufs) < len(shards) {
		b.bufs = append(b.bufs, make([]byte, wire.MaxDatagram))
	}
	b.dgs = b.dgs[:0]
	s.copies = true
	for i := range shards {
		sh := &shards[i]
		// A shard that is the only one of its fragment (Count 1: RAIC-1, or a
		// fragmented RAICT packet) is a copy: nothing else can rebuild it.
		s.copies = s.copies && sh.Desc.Count == 1
		h := wire.Header{
			Type:    wire.TypeData,
			Scheme:  uint8(sh.Scheme),
			Session: s.session,
			Packet:  pid,
			Desc:    wire.Desc(sh.Desc),
		}
		dg, err := wire.Seal(keys.aead, b.bufs[i], &h, hello, sh.Data)
		if err != nil {
			return nil, err
		}
		b.dgs = append(b.dgs, dg)
	}
	return b.dgs, nil
}

// Copies reports whether each datagram of the last Seal is a copy: the whole
// packet or one X-fragment of it, each needed and rebuilt by nothing else. Such
// datagrams go on every path (as RAIC-1 copies do); otherwise they are coded
// shards, to be spread over the paths once each. One datagram alone is always
// a copy.
func (s *Sender) Copies() bool { return s.copies }

// SealControl seals a control message of type t into buf with a fresh packet ID.
func (s *Sender) SealControl(buf []byte, t wire.Type, body []byte, now int64) ([]byte, error) {
	h := wire.Header{Type: t, Session: s.session, Packet: s.nextPID()}
	keys := s.keys.Load()
	var hl wire.Hello
	var hello *wire.Hello
	if s.HelloDue(now) {
		hl = keys.helloOf()
		hl.UnixMilli = time.Now().UnixMilli()
		hello = &hl
	}
	return wire.Seal(keys.aead, buf, &h, hello, body)
}

// SealPath seals a path challenge or response (t) with token as its body into
// buf. Its packet ID comes from the sender's own path counter and its
// descriptor is wire.PathDesc, so its nonce is none that data or another
// control message takes, whoever chose their IDs (see wire.TypePathChallenge).
// It never carries a hello.
func (s *Sender) SealPath(buf []byte, t wire.Type, token []byte) ([]byte, error) {
	h := wire.Header{Type: t, Session: s.session, Packet: s.pathPID.Add(1), Desc: wire.PathDesc}
	return wire.Seal(s.keys.Load().aead, buf, &h, nil, token)
}

// Sink takes the packets a Receiver releases. Deliver runs with the receiver's
// lock held and must not keep pkt; now is the receive time of the datagram
// that completed it (the clock is read once per datagram).
type Sink interface {
	Deliver(pid uint64, pkt []byte, now int64)
}

// ReceiverStats counts what a receiver did.
type ReceiverStats struct {
	Delivered, Duplicates, AuthFailed, DecodeDropped uint64
}

// Receiver opens what one end receives in one session. It is kept to 568
// bytes, so with the allocator's 8-byte header it takes a 576-byte block (a
// proxy holds one per session): the window, the key and what every packet
// touches; the rest (rest) is made when first needed, which a session of
// copies (once each or again from another uplink), on a new key, never does. Safe for
// concurrent use: datagrams of one session may arrive on several uplink
// goroutines at once; a per-session lock (never a global one) orders them.
type Receiver struct {
	mu     sync.Mutex
	aead   cipher.AEAD
	window replay.Window
	// ReceiverStats.Delivered and Duplicates, their low 32 bits: each
	// carries into receiverRest when it wraps, so a session of copies over
	// two uplinks (a duplicate for every packet) makes no rest for them.
	delivered, duplicates uint32
	more                  atomic.Pointer[receiverRest] // nil until needed; made under mu
}

// receiverRest is what a receiver keeps besides the window, made on first
// use (Receiver.rest): by a failed open, the first shard that is not a whole
// RAIC-1 copy, a decoder configuration, SetFloor, Upgrade, or a counter's
// wrap.
type receiverRest struct {
	floor uint64 // packet IDs below it are refused (SetFloor)
	// up holds the key before Upgrade (nil before the first one).
	up        *upgrade
	upgrading atomic.Bool // up.prev is set: the far side may not have followed yet
	// dec is made on the first shard that is not a whole RAIC-1 copy: a
	// copy needs only the window, so a copy-only session (most of a
	// proxy's) never holds a decoder. copies is how many copies were
	// released without one (all of them before it was made).
	dec    *raic.Decoder
	decCfg raic.DecoderConfig // zero: the defaults
	copies uint64
	// deliveredHigh and duplicatesHigh are the counters' bits above the
	// receiver's 32 (its delivered and duplicates).
	deliveredHigh, duplicatesHigh, authFailed uint64
}

// countDelivered and countDuplicate bump the receiver's counters. r.mu is
// held.
func (r *Receiver) countDelivered() {
	if r.delivered++; r.delivered == 0 {
		r.rest().deliveredHigh++
	}
}

func (r *Receiver) countDuplicate() {
	if r.duplicates++; r.duplicates == 0 {
		r.rest().duplicatesHigh++
	}
}

// deliveredTotal is ReceiverStats.Delivered. r.mu is held.
func (r *Receiver) deliveredTotal(m *receiverRest) uint64 {
	n := uint64(r.delivered)
	if m != nil {
		n |= m.deliveredHigh << 32
	}
	return n
}

// upgrade is a receiver's state for Upgrade: prev is the key before it, still
// taken until a datagram opens with the new one (nil then); spare keeps a copy
// of a datagram meanwhile, since a failed open leaves the datagram unusable.
type upgrade struct {
	prev  cipher.AEAD
	spare []byte
}

// NewReceiver makes the receiving half of a session; dec bounds its decoder,
// which is made when the first coded shard arrives.
func NewReceiver(aead cipher.AEAD, dec raic.DecoderConfig) *Receiver {
	r := &Receiver{aead: aead}
	if dec != (raic.DecoderConfig{}) {
		r.rest().decCfg = dec
	}
	return r
}

// rest returns the receiver's receiverRest, making it. r.mu is held (or r is
// not yet shared).
func (r *Receiver) rest() *receiverRest {
	m := r.more.Load()
	if m == nil {
		m = new(receiverRest)
		r.more.Store(m)
	}
	return m
}

// open opens dg with the receiver's key, or either key during an Upgrade.
func (r *Receiver) open(m *receiverRest, dg []byte, bodyOff int) ([]byte, error) {
	if m != nil && m.up != nil && m.up.prev != nil {
		return r.openEither(m.up, dg, bodyOff)
	}
	return wire.Open(r.aead, dg, bodyOff)
}

// Receive handles one parsed datagram (h and bodyOff from wire.Parse); dg is
// decrypted in place. A nil error means it authenticated. For data, each packet it
// completes that was not released before goes to sink; for control types the
// opened body is returned (a sub-slice of dg).
func (r *Receiver) Receive(dg []byte, h *wire.Header, bodyOff int, now int64, sink Sink) (body []byte, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.more.Load()
	if h.IsPath() {
		// Their IDs are another counter's (Sender.SealPath): they neither
		// check nor move the window. A replayed one does no harm: a response
		// counts only from the address its challenge went to, with that
		// challenge's token, and the answer to a challenge goes only to the
		// far end's own address.
		body, err = r.open(m, dg, bodyOff)
		if err != nil {
			r.rest().authFailed++
		}
		return body, err
	}
	if (m != nil && h.Packet < m.floor) || r.window.Seen(h.Packet) {
		r.countDuplicate()
		return nil, ErrDuplicate
	}
	body, err = r.open(m, dg, bodyOff)
	if err != nil {
		r.rest().authFailed++
		return nil, err
	}
	if h.Type != wire.TypeData {
		// The window moves only now that the datagram authenticated.
		if !r.window.Mark(h.Packet) {
			r.countDuplicate()
			return nil, ErrDuplicate
		}
		return body, nil
	}
	sh := raic.Shard{Scheme: raic.Scheme(h.Scheme), PID: h.Packet, Desc: raic.Desc(h.Desc), Data: body}
	if m == nil || m.dec == nil {
		if raic.WholeCopy(&sh) {
			// What the decoder's copy path does, with the window (checked
			// above, under the lock) as its record of released packets.
			if r.window.Mark(sh.PID) {
				r.countDelivered()
				sink.Deliver(sh.PID, sh.Data, now)
			} else {
				r.countDuplicate()
			}
			return nil, nil
		}
		m = r.rest()
		m.copies = r.deliveredTotal(m) // all released so far were copies
		m.dec = raic.NewDecoder(m.decCfg)
	}
	released := m.dec.Add(sh, now)
	for i := range released {
		if r.window.Mark(released[i].PID) {
			r.countDelivered()
			sink.Deliver(released[i].PID, released[i].Data, now)
		} else {
			r.countDuplicate()
		}
	}
	return nil, nil
}

// Rekey switches the receiver to keys of a new restart epoch (see
// Sender.Rekey). The window starts over: the far side re-created the session,
// and nothing sealed with the old keys opens any more.
func (r *Receiver) Rekey(aead cipher.AEAD) {
	r.mu.Lock()
	r.aead = aead
	if m := r.more.Load(); m != nil {
		if m.up != nil {
			m.up.prev = nil
		}
		m.upgrading.Store(false)
	}
	r.window.Reset()
	r.mu.Unlock()
}

// Upgrade moves the receiver to a new key of the same session, the far side
// continuing (a router and its proxy agreeing on the proxy's epoch after the
// session began): the window stays, and datagrams sealed with the old key
// still open until the first one with the new key does, so the packets in
// flight during the switch are not lost.
func (r *Receiver) Upgrade(aead cipher.AEAD) {
	r.mu.Lock()
	m := r.rest()
	if m.up == nil {
		m.up = &upgrade{spare: make([]byte, wire.MaxDatagram+1)}
	}
	m.up.prev, r.aead = r.aead, aead
	m.upgrading.Store(true)
	r.mu.Unlock()
}

// Upgrading reports whether the far side has not yet been heard with the key
// of the last Upgrade: what arrives still opens with the old one, so it does
// not show the far side has followed (and the hello that makes it follow must
// go on riding).
func (r *Receiver) Upgrading() bool {
	m := r.more.Load()
	return m != nil && m.upgrading.Load()
}

// openEither opens dg with the new key or, failing that, the one before
// Upgrade (up's); the first success with the new key retires the old one.
func (r *Receiver) openEither(up *upgrade, dg []byte, bodyOff int) ([]byte, error) {
	if len(dg) > len(up.spare) {
		return wire.Open(r.aead, dg, bodyOff)
	}
	cp := up.spare[:len(dg)]
	copy(cp, dg)
	if body, err := wire.Open(r.aead, dg, bodyOff); err == nil {
		up.prev = nil
		r.more.Load().upgrading.Store(false)
		return body, nil
	}
	copy(dg, cp)
	return wire.Open(up.prev, dg, bodyOff)
}

// SetFloor refuses every packet ID below pid from now on. A proxy sets it to
// the ID of the datagram that re-opened a session whose keys it may have had
// before a restart: whatever was sealed before that, a replay may bring.
func (r *Receiver) SetFloor(pid uint64) {
	r.mu.Lock()
	r.rest().floor = pid
	r.mu.Unlock()
}

// Expire gives up decode groups older than the decoder's limit.
func (r *Receiver) Expire(now int64) {
	r.mu.Lock()
	if m := r.more.Load(); m != nil && m.dec != nil {
		m.dec.Expire(now)
	}
	r.mu.Unlock()
}

// Stats returns the receiver's counters and its decoder's.
func (r *Receiver) Stats() (ReceiverStats, raic.DecoderStats) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.more.Load()
	st := ReceiverStats{Delivered: r.deliveredTotal(m), Duplicates: uint64(r.duplicates)}
	// With no decoder, every whole copy that authenticated was released
	// (the window dropped the rest before).
	copies := st.Delivered
	if m != nil {
		st.Duplicates |= m.duplicatesHigh << 32
		st.AuthFailed = m.authFailed
		if m.dec != nil {
			copies = m.copies
		}
	}
	ds := raic.DecoderStats{Shards: copies, Released: copies}
	if m != nil && m.dec != nil {
		d := m.dec.Stats()
		ds.Shards += d.Shards
		ds.Released += d.Released
		ds.Recovered += d.Recovered
		ds.Duplicates += d.Duplicates
		ds.Malformed += d.Malformed
		ds.Evicted += d.Evicted
		ds.Expired += d.Expired
		ds.Lost += d.Lost
		ds.Late += d.Late
		ds.NoBuffer += d.NoBuffer
		ds.Grown += d.Grown
	}
	return st, ds
}

// Hello returns the hello this sender puts on its datagrams while it is due,
// and whether it has one.
func (s *Sender) Hello() (wire.Hello, bool) { return s.keys.Load().helloOf(), s.hasHello }

// FollowEpoch moves a client-side session (send, recv) to the far side's
// restart epoch: keys derived anew from key with the session's salt, the
// receiver upgraded (the far side continues the session: the window stays)
// or re-keyed (it re-created it: the window starts over), then the sender.
// The router and the intermediate's next-hop side both call it.
func FollowEpoch(send *Sender, recv *Receiver, key *wire.Key, session, epoch uint64, upgrade bool, now int64) error {
	hl, _ := send.Hello()
	sk, rk, err := wire.DeriveKeysEpoch(key, &hl.Salt, session, epoch, wire.RoleClient)
	if err != nil {
		return err
	}
	if upgrade {
		recv.Upgrade(rk)
	} else {
		recv.Rekey(rk)
	}
	send.Rekey(sk, epoch, now)
	return nil
}
