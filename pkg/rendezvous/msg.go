// Package rendezvous introduces two routers in peer mode to each other so that
// they can punch holes through their NATs, and relays their datagrams (like a
// TURN server) only when both say punching failed.
//
// Each peer registers from every one of its uplinks, naming the peer it wants
// to reach. The server notes the address each register came from (what that
// uplink's NAT shows the world) and, once two peers have each asked for the
// other, tells each side every observed address of the other ("introduce").
// Both then send keepalives over every (local uplink, remote address) pair;
// outgoing packets open the NAT mappings that let the other side's packets in.
//
// Everything is authenticated with a key per peer that the server's config
// holds. The server answers nothing it could not authenticate, introduces only
// peers that asked for each other, and relays only between such a pair when
// both sides reported that punching failed; the relay is rate limited per
// peer, logged when it starts and stops, and counted in the metrics.
//
// Message layout (integers big-endian):
//
//	0      Magic (0x52, 'R'; a peer datagram starts with wire.Version, 1)
//	1      type (Register, Introduce, Relay, Relayed)
//	2      n, the length of the peer ID
//	3..    peer ID: the sender's for messages to the server, the addressee's
//	       for messages from it
//	..+24  random XChaCha20-Poly1305 nonce
//	..     sealed body, then a 16-byte tag; everything before it is the
//	       associated data
//
// Bodies start with a counter that only grows per sender (unix nanoseconds at
// start, then +1 per message): the receiver drops a register or introduce
// whose counter is not above the last one it accepted, so a captured register
// cannot point the server at an attacker's address. Relayed datagrams carry
// peer datagrams with their own anti-replay window and are not held to it (so
// that reordering does not drop them).
package rendezvous

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net/netip"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/hkdf"

	"crypto/sha256"
	"io"

	"github.com/raicnet/raic/pkg/wire"
)

// Magic is the first byte of every rendezvous message.
const Magic = 0x52

// Message types.
const (
	TypeRegister  = 1 // peer → server: I am here (on this uplink), I want to reach X
	TypeIntroduce = 2 // server → peer: X is at these addresses
	TypeRelay     = 3 // peer → server: pass this datagram to X
	TypeRelayed   = 4 // server → peer: X sent you this datagram
	typeLimit     = 5
)

// Limits.
const (
	MaxID      = wire.MaxClientID
	MaxUplinks = 16 // addresses one peer may register
	nonceLen   = chacha20poly1305.NonceSizeX
	tagLen     = chacha20poly1305.Overhead
	// MaxMessage is the largest message; a relayed peer datagram fits.
	MaxMessage = 3 + MaxID + nonceLen + 8 + 1 + MaxID + 1 + wire.MaxDatagram + tagLen
	addrLen    = 19 // family, 16 address bytes, port
)

// Register flags.
const (
	// FlagPunchFailed: the sender has heard nothing from the peer over any
	// path since the introduction and asks for the relay.
	FlagPunchFailed = 1 << 0
)

// Introduce flags.
const (
	// FlagRelayOn: both sides asked for the relay and the server relays.
	FlagRelayOn = 1 << 0
)

// Errors. Fixed values, so that dropping bad input allocates nothing.
var (
	ErrShort   = errors.New("rendezvous: message too short")
	ErrMagic   = errors.New("rendezvous: not a rendezvous message")
	ErrType    = errors.New("rendezvous: unknown message type")
	ErrID      = errors.New("rendezvous: bad peer ID")
	ErrAuth    = errors.New("rendezvous: authentication failed")
	ErrBody    = errors.New("rendezvous: malformed body")
	ErrReplay  = errors.New("rendezvous: old counter")
	ErrTooLong = errors.New("rendezvous: message too long")
)

// NewAEAD derives the rendezvous key of a peer from its configured key, so
// the same bytes are never used as a key anywhere else.
func NewAEAD(k *wire.Key) (cipher.AEAD, error) {
	r := hkdf.New(sha256.New, k[:], nil, []byte("raic/1 rendezvous"))
	var km [chacha20poly1305.KeySize]byte
	if _, err := io.ReadFull(r, km[:]); err != nil {
		return nil, err
	}
	return chacha20poly1305.NewX(km[:])
}

// IsMessage reports whether b looks like a rendezvous message (and not a peer
// datagram) without authenticating it.
func IsMessage(b []byte) bool { return len(b) > 0 && b[0] == Magic }

// header is the parsed clear part of a message.
type header struct {
	typ  byte
	id   []byte // a sub-slice of the message
	body int    // offset of the nonce
}

func parseHeader(b []byte) (header, error) {
	var h header
	if len(b) < 3 {
		return h, ErrShort
	}
	if len(b) > MaxMessage {
		return h, ErrTooLong
	}
	if b[0] != Magic {
		return h, ErrMagic
	}
	h.typ = b[1]
	if h.typ == 0 || h.typ >= typeLimit {
		return h, ErrType
	}
	n := int(b[2])
	if n == 0 || n > MaxID {
		return h, ErrID
	}
	if len(b) < 3+n+nonceLen+8+tagLen {
		return h, ErrShort
	}
	h.id = b[3 : 3+n]
	h.body = 3 + n
	return h, nil
}

// seal writes a message of type typ for id with plaintext body into buf and
// returns it.
func seal(aead cipher.AEAD, buf []byte, typ byte, id string, body []byte) ([]byte, error) {
	n := 3 + len(id) + nonceLen
	if len(id) == 0 || len(id) > MaxID {
		return nil, ErrID
	}
	if n+len(body)+tagLen > cap(buf) || n+len(body)+tagLen > MaxMessage {
		return nil, ErrTooLong
	}
	buf = buf[:n]
	buf[0], buf[1], buf[2] = Magic, typ, byte(len(id))
	copy(buf[3:], id)
	nonce := buf[3+len(id) : n]
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return aead.Seal(buf, nonce, body, buf[:n]), nil
}

// open authenticates a parsed message in place and returns its plaintext body.
func open(aead cipher.AEAD, b []byte, h header) ([]byte, error) {
	n := h.body + nonceLen
	out, err := aead.Open(b[n:n], b[h.body:n], b[n:], b[:n])
	if err != nil {
		return nil, ErrAuth
	}
	if len(out) < 8 {
		return nil, ErrBody
	}
	return out, nil
}

// putID appends a length-prefixed peer ID.
func putID(b []byte, id string) []byte {
	b = append(b, byte(len(id)))
	return append(b, id...)
}

// readID reads a length-prefixed peer ID from b and returns it and the rest.
func readID(b []byte) (id, rest []byte, err error) {
	if len(b) < 1 {
		return nil, nil, ErrBody
	}
	n := int(b[0])
	if n == 0 || n > MaxID || len(b) < 1+n {
		return nil, nil, ErrBody
	}
	return b[1 : 1+n], b[1+n:], nil
}

func putAddr(b []byte, ap netip.AddrPort) []byte {
	var a [addrLen]byte
	addr := ap.Addr().Unmap()
	switch {
	case addr.Is4():
		a[0] = 4
		a4 := addr.As4()
		copy(a[1:], a4[:])
	case addr.Is6():
		a[0] = 6
		a16 := addr.As16()
		copy(a[1:], a16[:])
	}
	binary.BigEndian.PutUint16(a[17:], ap.Port())
	return append(b, a[:]...)
}

func readAddr(b []byte) (netip.AddrPort, bool) {
	port := binary.BigEndian.Uint16(b[17:])
	switch b[0] {
	case 4:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[1:5])), port), true
	case 6:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[1:17])), port), true
	}
	return netip.AddrPort{}, false
}
