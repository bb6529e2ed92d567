// Package token mints and opens connect tokens: a studio's backend (its
// matchmaker) gives a player a short-lived token that a proxy admits with no
// per-player config and no database, as netcode.io's connect tokens do.
//
// The backend and its proxies share one token key. A token is sealed with
// XChaCha20-Poly1305 under that key and holds the client ID, the servers the
// player may reach (allowlist entries, as in a proxy's [[client]] allow), a
// validity window, how many sessions it may open, and a fresh random client
// key. The backend hands the player the token and, beside it, the same client
// key in the clear (over its own TLS): the router derives its session keys from
// that client key exactly as it would from a pre-shared key, and puts the token
// in its hello. The proxy opens the token, takes the client key from it and
// authenticates the datagram with it, so session setup still costs no round
// trip, and nobody who only saw the token on the wire can use it.
//
// Layout of a token (version 1):
//
//	0      version (1)
//	1..24  XChaCha20 nonce, random; its first 16 bytes are the token ID
//	25..   sealed claims, then the 16-byte tag; the version byte is the
//	       associated data
//
// Claims (big-endian): not-before and expiry (uint32 Unix seconds each), the
// session limit (1 byte), the client key (32 bytes), the client ID (length
// byte + bytes), then the servers (count byte, then per entry: family 4 or 6,
// prefix bits, address, first port, last port).
package token

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/raicnet/raic/pkg/allow"
	"github.com/raicnet/raic/pkg/wire"
)

// Version is the token format this package writes and reads.
const Version = 1

// Sizes.
const (
	nonceLen   = chacha20poly1305.NonceSizeX
	headerLen  = 1 + nonceLen
	fixedClaim = 4 + 4 + 1 + wire.KeyLen + 1 + 1
	// MaxLen is the longest token: it rides in the hello of a datagram that
	// also carries a full shard, so it must stay small (wire.MaxToken).
	MaxLen = wire.MaxToken
	// IDLen is the length of a token ID.
	IDLen = 16
	// DefaultSessions is how many sessions a token may open when the minter
	// does not say (a router opens one per game flow).
	DefaultSessions = 4
)

// Key is the key a backend and its proxies share to seal and open tokens.
type Key = wire.Key

// ID identifies one token (for the replay table).
type ID [IDLen]byte

// Claims are what a token says.
type Claims struct {
	ClientID  string
	Servers   []string // allowlist entries, e.g. "198.18.41.2:27015", "198.18.41.0/24:27000-27050"
	NotBefore time.Time
	Expires   time.Time
	// Sessions is how many sessions (a router's flows) the token may open; 0
	// means DefaultSessions.
	Sessions  int
	ClientKey wire.Key
	ID        ID // set by Open
}

// Errors of Open. Fixed values so that refusing a token allocates nothing.
var (
	ErrMalformed = errors.New("token: malformed")
	ErrVersion   = errors.New("token: unknown version")
	ErrForged    = errors.New("token: does not open with the token key (forged, altered, or another key)")
	ErrExpired   = errors.New("token: expired")
	ErrNotYet    = errors.New("token: not valid yet")
)

// Mint seals c under key. A zero ClientKey is filled with a fresh random key;
// the returned claims hold it (give it to the player beside the token).
func Mint(key *Key, c Claims) (tok []byte, out Claims, err error) {
	if c.ClientID == "" || len(c.ClientID) > wire.MaxClientID {
		return nil, c, fmt.Errorf("client id must be 1 to %d bytes", wire.MaxClientID)
	}
	if len(c.Servers) == 0 || len(c.Servers) > 255 {
		return nil, c, errors.New("a token needs 1 to 255 servers")
	}
	if !c.Expires.After(c.NotBefore) {
		return nil, c, errors.New("expiry must be after not-before")
	}
	if c.Sessions == 0 {
		c.Sessions = DefaultSessions
	}
	if c.Sessions < 1 || c.Sessions > MaxSessions {
		return nil, c, fmt.Errorf("sessions must be 1 to %d", MaxSessions)
	}
	if c.ClientKey == (wire.Key{}) {
		if c.ClientKey, err = wire.GenerateKey(); err != nil {
			return nil, c, err
		}
	}
	pt := make([]byte, 0, MaxLen)
	pt = binary.BigEndian.AppendUint32(pt, uint32(c.NotBefore.Unix()))
	pt = binary.BigEndian.AppendUint32(pt, uint32(c.Expires.Unix()))
	pt = append(pt, byte(c.Sessions))
	pt = append(pt, c.ClientKey[:]...)
	pt = append(pt, byte(len(c.ClientID)))
	pt = append(pt, c.ClientID...)
	pt = append(pt, byte(len(c.Servers)))
	for _, s := range c.Servers {
		var err error
		if pt, err = appendServer(pt, s); err != nil {
			return nil, c, fmt.Errorf("server %q: %v", s, err)
		}
	}
	n := headerLen + len(pt) + chacha20poly1305.Overhead
	if n > MaxLen {
		return nil, c, fmt.Errorf("token would be %d bytes, more than %d: use fewer servers (a prefix covers many) or a shorter client id", n, MaxLen)
	}
	aead, err := chacha20poly1305.NewX(key[:])
	if err != nil {
		return nil, c, err
	}
	tok = make([]byte, headerLen, n)
	tok[0] = Version
	if _, err := rand.Read(tok[1:headerLen]); err != nil {
		return nil, c, err
	}
	tok = aead.Seal(tok, tok[1:headerLen], pt, tok[:1])
	copy(c.ID[:], tok[1:])
	return tok, c, nil
}

// MaxSessions is the most sessions one token may open (the replay table keeps
// that many session IDs per token).
const MaxSessions = 8

// appendServer writes one allowlist entry in the token's binary form. Entries
// are parsed by package allow first, so a token says only what a [[client]]
// allow could.
func appendServer(b []byte, s string) ([]byte, error) {
	if _, err := allow.Parse([]string{s}); err != nil {
		return b, err
	}
	host, lo, hi, err := splitPorts(s)
	if err != nil {
		return b, err
	}
	var p netip.Prefix
	if strings.Contains(host, "/") {
		p, err = netip.ParsePrefix(host)
	} else {
		var a netip.Addr
		a, err = netip.ParseAddr(host)
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if err != nil {
		return b, err
	}
	p = p.Masked()
	a := p.Addr().Unmap()
	if a.Is4() {
		b = append(b, 4, byte(p.Bits()))
		a4 := a.As4()
		b = append(b, a4[:]...)
	} else {
		b = append(b, 6, byte(p.Bits()))
		a16 := a.As16()
		b = append(b, a16[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, lo)
	return binary.BigEndian.AppendUint16(b, hi), nil
}

// splitPorts splits an allowlist entry into its host part and port range.
func splitPorts(s string) (host string, lo, hi uint16, err error) {
	s = strings.TrimSpace(s)
	host, ports := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		host, ports = s[1:end], strings.TrimPrefix(s[end+1:], ":")
	} else if i := strings.LastIndex(s, ":"); i >= 0 && strings.Count(s, ":") == 1 {
		host, ports = s[:i], s[i+1:]
	}
	if ports == "" {
		return host, 1, 65535, nil
	}
	l, h, ok := strings.Cut(ports, "-")
	if !ok {
		h = l
	}
	a, err1 := strconv.ParseUint(l, 10, 16)
	z, err2 := strconv.ParseUint(h, 10, 16)
	if err1 != nil || err2 != nil {
		return "", 0, 0, errors.New("bad port range")
	}
	return host, uint16(a), uint16(z), nil
}

// Opener opens tokens sealed under one key. It is safe for concurrent use.
type Opener struct {
	aead cipher.AEAD
}

// NewOpener makes an Opener for key.
func NewOpener(key *Key) (*Opener, error) {
	aead, err := chacha20poly1305.NewX(key[:])
	if err != nil {
		return nil, err
	}
	return &Opener{aead: aead}, nil
}

// Opened is a token opened by a proxy: its claims in the form admission uses.
type Opened struct {
	ID        ID
	ClientID  []byte // into the caller's scratch buffer
	ClientKey wire.Key
	Allow     allow.List
	NotBefore int64 // Unix seconds
	Expires   int64
	Sessions  int
}

// Open authenticates tok and checks its validity window at now. It decrypts
// into scratch (at least len(tok) bytes), so that only the allowlist it
// returns allocates. The returned error is one of the package's Err values.
func (o *Opener) Open(tok, scratch []byte, now time.Time, out *Opened) error {
	if len(tok) < headerLen+chacha20poly1305.Overhead+fixedClaim || len(tok) > MaxLen {
		return ErrMalformed
	}
	if tok[0] != Version {
		return ErrVersion
	}
	pt, err := o.aead.Open(scratch[:0], tok[1:headerLen], tok[headerLen:], tok[:1])
	if err != nil {
		return ErrForged
	}
	copy(out.ID[:], tok[1:])
	out.NotBefore = int64(binary.BigEndian.Uint32(pt))
	out.Expires = int64(binary.BigEndian.Uint32(pt[4:]))
	out.Sessions = int(pt[8])
	copy(out.ClientKey[:], pt[9:])
	n := 9 + wire.KeyLen
	cl := int(pt[n])
	n++
	if cl == 0 || cl > wire.MaxClientID || len(pt) < n+cl+1 {
		return ErrMalformed
	}
	out.ClientID = pt[n : n+cl]
	n += cl
	count := int(pt[n])
	n++
	sec := now.Unix()
	if sec >= out.Expires {
		return ErrExpired
	}
	if sec < out.NotBefore {
		return ErrNotYet
	}
	if out.Sessions < 1 || out.Sessions > MaxSessions || count == 0 {
		return ErrMalformed
	}
	out.Allow = make(allow.List, 0, count)
	for i := 0; i < count; i++ {
		if len(pt) < n+2 {
			return ErrMalformed
		}
		fam, bits := pt[n], int(pt[n+1])
		n += 2
		var a netip.Addr
		switch fam {
		case 4:
			if len(pt) < n+4+4 {
				return ErrMalformed
			}
			a = netip.AddrFrom4([4]byte(pt[n:]))
			n += 4
		case 6:
			if len(pt) < n+16+4 {
				return ErrMalformed
			}
			a = netip.AddrFrom16([16]byte(pt[n:]))
			n += 16
		default:
			return ErrMalformed
		}
		if bits > a.BitLen() {
			return ErrMalformed
		}
		lo, hi := binary.BigEndian.Uint16(pt[n:]), binary.BigEndian.Uint16(pt[n+2:])
		n += 4
		if lo == 0 || lo > hi {
			return ErrMalformed
		}
		out.Allow = append(out.Allow, allow.NewRule(netip.PrefixFrom(a, bits), lo, hi))
	}
	if n != len(pt) {
		return ErrMalformed
	}
	return nil
}

// Encode renders a token as text for configs and backends (standard base64).
func Encode(tok []byte) string { return base64.StdEncoding.EncodeToString(tok) }

// Decode reads a token written by Encode.
func Decode(s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) == 0 || len(b) > MaxLen {
		return nil, fmt.Errorf("not a token: must be base64 of at most %d bytes", MaxLen)
	}
	return b, nil
}
