package wire

import (
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"

	"golang.org/x/crypto/chacha20poly1305"
)

// KeyLen is the length of a client's pre-shared key.
const KeyLen = 32

// Key is a client's pre-shared key.
type Key [KeyLen]byte

// GenerateKey returns a fresh random key.
func GenerateKey() (Key, error) {
	var k Key
	_, err := rand.Read(k[:])
	return k, err
}

// String renders the key as standard base64, the form the config files take.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// ParseKey reads a key written as base64 (44 characters) or hex (64 characters).
func ParseKey(s string) (Key, error) {
	var k Key
	s = strings.TrimSpace(s)
	var raw []byte
	var err error
	switch len(s) {
	case 64:
		raw, err = hex.DecodeString(s)
	default:
		raw, err = base64.StdEncoding.DecodeString(s)
	}
	if err != nil || len(raw) != KeyLen {
		return k, errors.New("key must be 32 bytes written as base64 (44 characters) or hex (64 characters)")
	}
	copy(k[:], raw)
	return k, nil
}

// Role says which end of a session derives keys, so each direction gets its own
// key: the same packet ID sent in both directions never shares a key.
type Role uint8

// Roles.
const (
	RoleClient Role = iota // router side: sends client-to-server
	RoleServer             // proxy side: sends server-to-client
)

// NewSalt returns a random session salt.
func NewSalt() (s [16]byte, err error) {
	_, err = rand.Read(s[:])
	return s, err
}

// DeriveKeys derives the two AEADs of a session from the client's pre-shared key,
// the session's random salt and its ID (HKDF-SHA256), and returns them as seen by
// role: send seals what this end sends, recv opens what it receives. A restarted
// router picks a new salt, so its keys are new even if packet IDs start over.
func DeriveKeys(psk *Key, salt *[16]byte, session uint64, role Role) (send, recv cipher.AEAD, err error) {
	return DeriveKeysEpoch(psk, salt, session, 0, role)
}

// DeriveKeysEpoch is DeriveKeys for a session bound to the far side's restart
// epoch (see package doc): the keys differ from those of any other epoch, so
// datagrams sealed before a proxy restart do not open after it. Epoch 0 gives
// DeriveKeys' keys, the derivation of senders that know no epoch.
func DeriveKeysEpoch(psk *Key, salt *[16]byte, session, epoch uint64, role Role) (send, recv cipher.AEAD, err error) {
	var info [8 + 16 + 8]byte
	copy(info[:], salt[:])
	binary.BigEndian.PutUint64(info[16:], session)
	in := info[:24]
	label := "raic/1 session keys"
	if epoch != 0 {
		binary.BigEndian.PutUint64(info[24:], epoch)
		in = info[:]
		label = "raic/1 session keys, epoch"
	}
	var km [2 * chacha20poly1305.KeySize]byte
	hkdf64(&km, psk[:], in, label)
	c2s, err := chacha20poly1305.New(km[:chacha20poly1305.KeySize])
	if err != nil {
		return nil, nil, err
	}
	s2c, err := chacha20poly1305.New(km[chacha20poly1305.KeySize:])
	if err != nil {
		return nil, nil, err
	}
	if role == RoleClient {
		return c2s, s2c, nil
	}
	return s2c, c2s, nil
}

// Seal writes a complete datagram into buf: the header, the hello extension when
// hello is not nil (FlagHello is set for it), then body sealed with aead. It
// returns the datagram, a prefix of buf. buf must have room for
// len(body)+MaxOverhead bytes. The nonce is the header's packet ID and descriptor.
func Seal(aead cipher.AEAD, buf []byte, h *Header, hello *Hello, body []byte) ([]byte, error) {
	// Checked against the capacity: if Seal had to grow buf it would allocate.
	if HeaderLen+helloLen(hello)+len(body)+TagLen > cap(buf) {
		return nil, ErrLong
	}
	if h.Session == 0 {
		return nil, ErrNoSession
	}
	if h.Packet == 0 {
		return nil, ErrNoPacket
	}
	h.Flags &^= FlagHello | FlagToken | FlagEpoch | FlagFlow
	if hello != nil {
		if len(hello.Token) > MaxToken {
			return nil, ErrHello
		}
		h.Flags |= FlagHello
		if hello.Epoch != 0 {
			h.Flags |= FlagEpoch
		}
		if hello.HasFlow() {
			h.Flags |= FlagFlow
		}
		if len(hello.Token) > 0 {
			h.Flags |= FlagToken
		}
	}
	PutHeader(buf, h)
	off := HeaderLen
	if hello != nil {
		off += PutHello(buf[off:], hello)
	}
	out := aead.Seal(buf[:off], buf[12:24], body, buf[:off])
	if len(out) > MaxDatagram {
		return nil, ErrLong
	}
	return out, nil
}

func helloLen(h *Hello) int {
	if h == nil {
		return 0
	}
	if len(h.Token) > 0 {
		return HelloMaxLen + 2 + len(h.Token)
	}
	return HelloMaxLen
}

// Open authenticates and decrypts the body of a parsed datagram in place and
// returns the plaintext, a sub-slice of b. bodyOff comes from Parse. On failure b
// is left unusable and ErrAuth is returned.
func Open(aead cipher.AEAD, b []byte, bodyOff int) ([]byte, error) {
	if bodyOff < HeaderLen || len(b) < bodyOff+TagLen {
		return nil, ErrShort
	}
	out, err := aead.Open(b[bodyOff:bodyOff], b[12:24], b[bodyOff:], b[:bodyOff])
	if err != nil {
		return nil, ErrAuth
	}
	return out, nil
}

// FlowToken names one game flow of a client across the client's restarts:
// HMAC-SHA256 under the client's key of the LAN client's and the server's
// addresses, cut to FlowLen bytes. It depends on nothing else, so a restarted
// router gives the flow the same token, and no one without the key can make
// another client's.
func FlowToken(psk *Key, client, server netip.AddrPort) (t [FlowLen]byte) {
	m := hmac.New(sha256.New, psk[:])
	m.Write([]byte("raic flow"))
	for _, a := range []netip.AddrPort{client, server} {
		b, _ := a.MarshalBinary() // 16-byte address (4 for IPv4), 2-byte port
		var l [1]byte
		l[0] = byte(len(b))
		m.Write(l[:])
		m.Write(b)
	}
	copy(t[:], m.Sum(nil))
	if t == ([FlowLen]byte{}) {
		t[0] = 1 // all zero means none on the wire
	}
	return t
}

// hkdf64 is HKDF-SHA256 (RFC 5869) of secret with salt and info, its first
// 64 bytes, computed in fixed arrays: hkdf.New's HMAC states were about a
// kilobyte of garbage for every session a proxy opens, which at a studio's
// admission rate is what its memory peaks with. salt and secret are at most
// 64 bytes and info at most 31 (the labels above).
func hkdf64(out *[64]byte, secret, salt []byte, info string) {
	var prk, t1, t2 [32]byte
	hmacSHA256(&prk, salt, secret) // extract
	var msg [64]byte               // T(i-1) || info || i
	n := copy(msg[:], info)
	msg[n] = 1
	hmacSHA256(&t1, prk[:], msg[:n+1])
	copy(msg[:32], t1[:])
	n = 32 + copy(msg[32:], info)
	msg[n] = 2
	hmacSHA256(&t2, prk[:], msg[:n+1])
	copy(out[:32], t1[:])
	copy(out[32:], t2[:])
}

// hmacSHA256 is HMAC-SHA256 (RFC 2104) of msg under key, both at most 64
// bytes, without crypto/hmac's heap state.
func hmacSHA256(out *[32]byte, key, msg []byte) {
	if len(key) > 64 || len(msg) > 64 {
		panic("wire: hmacSHA256 input too long")
	}
	var buf [64 + 64]byte
	for i := 0; i < 64; i++ {
		var k byte
		if i < len(key) {
			k = key[i]
		}
		buf[i] = k ^ 0x36
	}
	inner := sha256.Sum256(buf[:64+copy(buf[64:], msg)])
	for i := 0; i < 64; i++ {
		var k byte
		if i < len(key) {
			k = key[i]
		}
		buf[i] = k ^ 0x5c
	}
	copy(buf[64:], inner[:])
	*out = sha256.Sum256(buf[:64+32])
}
