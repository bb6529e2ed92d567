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

	"github.com/raicnet/raic/pkg/replay"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
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
	aead    cipher.AEAD
	session uint64
	lastPID atomic.Uint64

	enc    *raic.Encoder
	params raic.Params
	bufs   [][]byte // one datagram buffer per shard, reused
	dgs    [][]byte // the sealed datagrams returned by Seal

	hello     wire.Hello
	hasHello  bool
	heard     atomic.Bool  // the far side has answered at least once
	lastHeard atomic.Int64 // mono ns of the last authenticated datagram received
}

// NewSender makes the sending half of a session. hello, if not nil, rides on
// every datagram until the far side is heard from (and again after a silence of
// RehelloAfter), so the session needs no round trip to start.
func NewSender(aead cipher.AEAD, session uint64, p raic.Params, hello *wire.Hello) (*Sender, error) {
	s := &Sender{aead: aead, session: session}
	if hello != nil {
		s.hello, s.hasHello = *hello, true
	}
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
	s.enc, s.params = enc, p
	return nil
}

// Params returns the scheme in use.
func (s *Sender) Params() raic.Params { return s.params }

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
	return !s.heard.Load() || now-s.lastHeard.Load() > int64(RehelloAfter)
}

func (s *Sender) nextPID() uint64 { return s.lastPID.Add(1) }

// Seal codes pkt into shards and seals each into a datagram of its own. The
// datagrams stay valid until the next Seal; every copy sent of a shard must be
// this same buffer (see package wire on nonces).
func (s *Sender) Seal(pkt []byte, now int64) (pid uint64, dgs [][]byte, err error) {
	pid = s.nextPID()
	dgs, err = s.SealPID(pid, pkt, now)
	return pid, dgs, err
}

// SealPID is Seal with the packet ID chosen by the caller: an intermediate proxy
// keeps the packet IDs of the hop before it, so they are the same end to end.
// The caller must never seal two packets under one ID in a session (the nonce
// rule); IDs used here also move the sender's counter past them.
func (s *Sender) SealPID(pid uint64, pkt []byte, now int64) (dgs [][]byte, err error) {
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
	var hl wire.Hello
	var hello *wire.Hello
	if s.HelloDue(now) {
		hl = s.hello
		hl.UnixMilli = time.Now().UnixMilli()
		hello = &hl
	}
	for len(s.bufs) < len(shards) {
		s.bufs = append(s.bufs, make([]byte, wire.MaxDatagram))
	}
	s.dgs = s.dgs[:0]
	for i := range shards {
		sh := &shards[i]
		h := wire.Header{
			Type:    wire.TypeData,
			Scheme:  uint8(sh.Scheme),
			Session: s.session,
			Packet:  pid,
			Desc:    wire.Desc(sh.Desc),
		}
		dg, err := wire.Seal(s.aead, s.bufs[i], &h, hello, sh.Data)
		if err != nil {
			return nil, err
		}
		s.dgs = append(s.dgs, dg)
	}
	return s.dgs, nil
}

// SealControl seals a control message of type t into buf with a fresh packet ID.
func (s *Sender) SealControl(buf []byte, t wire.Type, body []byte, now int64) ([]byte, error) {
	h := wire.Header{Type: t, Session: s.session, Packet: s.nextPID()}
	var hl wire.Hello
	var hello *wire.Hello
	if s.HelloDue(now) {
		hl = s.hello
		hl.UnixMilli = time.Now().UnixMilli()
		hello = &hl
	}
	return wire.Seal(s.aead, buf, &h, hello, body)
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

// Receiver opens what one end receives in one session. Safe for concurrent use:
// datagrams of one session may arrive on several uplink goroutines at once; a
// per-session lock (never a global one) orders them.
type Receiver struct {
	mu     sync.Mutex
	aead   cipher.AEAD
	window replay.Window
	dec    *raic.Decoder
	stats  ReceiverStats
}

// NewReceiver makes the receiving half of a session.
func NewReceiver(aead cipher.AEAD, dec raic.DecoderConfig) *Receiver {
	return &Receiver{aead: aead, dec: raic.NewDecoder(dec)}
}

// Receive handles one parsed datagram (h and bodyOff from wire.Parse); dg is
// decrypted in place. A nil error means it authenticated. For data, each packet it
// completes that was not released before goes to sink; for control types the
// opened body is returned (a sub-slice of dg).
func (r *Receiver) Receive(dg []byte, h *wire.Header, bodyOff int, now int64, sink Sink) (body []byte, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.window.Seen(h.Packet) {
		r.stats.Duplicates++
		return nil, ErrDuplicate
	}
	body, err = wire.Open(r.aead, dg, bodyOff)
	if err != nil {
		r.stats.AuthFailed++
		return nil, err
	}
	if h.Type != wire.TypeData {
		// The window moves only now that the datagram authenticated.
		if !r.window.Mark(h.Packet) {
			r.stats.Duplicates++
			return nil, ErrDuplicate
		}
		return body, nil
	}
	released := r.dec.Add(raic.Shard{Scheme: raic.Scheme(h.Scheme), PID: h.Packet, Desc: raic.Desc(h.Desc), Data: body}, now)
	for i := range released {
		if r.window.Mark(released[i].PID) {
			r.stats.Delivered++
			sink.Deliver(released[i].PID, released[i].Data, now)
		} else {
			r.stats.Duplicates++
		}
	}
	return nil, nil
}

// Expire gives up decode groups older than the decoder's limit.
func (r *Receiver) Expire(now int64) {
	r.mu.Lock()
	r.dec.Expire(now)
	r.mu.Unlock()
}

// Stats returns the receiver's counters and its decoder's.
func (r *Receiver) Stats() (ReceiverStats, raic.DecoderStats) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats, r.dec.Stats()
}

// Hello returns the hello this sender puts on its datagrams while it is due,
// and whether it has one.
func (s *Sender) Hello() (wire.Hello, bool) { return s.hello, s.hasHello }
