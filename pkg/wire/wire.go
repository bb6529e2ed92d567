// Package wire is the one datagram format shared by routers, proxies and
// intermediate proxies: a fixed header, an optional hello extension that lets a
// session start without a round trip, and an AEAD-sealed body.
//
// Layout (all integers big-endian):
//
//	0      version (1)
//	1      type    (Data, Ping, Pong, Ack, Close, ...)
//	2      flags   (FlagHello: a hello extension follows the header;
//	               FlagEpoch: the hello carries the far side's restart epoch;
//	               FlagToken: the hello carries a connect token;
//	               FlagFlow: the hello carries a flow token)
//	3      scheme  (RAIC scheme of a Data shard; 0 for control messages)
//	4..11  session ID
//	12..19 packet ID (per session and direction, starts at 1)
//	20..23 shard descriptor: index, count, k, frag (meaning per scheme, see raic)
//	24..   hello extension, when FlagHello is set (see Hello)
//	..     ciphertext of the body, then a 16-byte Poly1305 tag
//
// Restart epochs (FlagEpoch, a compatible addition to version 1). A proxy picks
// a random epoch each time it starts and puts it in its pongs (see Pong). A
// router that knows it puts it at the end of its hellos (FlagEpoch) and derives
// the session's keys from it too (DeriveKeysEpoch). So datagrams sealed for an
// earlier run of the proxy never open in a session re-created after a restart,
// and their hellos are refused: nothing captured before a restart can be
// replayed into the new run. A sender that has no epoch (it heard no pong that
// carries one, or an older proxy) leaves the flag clear and derives keys as
// before; an older proxy's pongs carry no epoch, so a router never sets the flag
// towards it.
//
// Hello trailers. After the fixed part of a hello (salt, time, client ID,
// target) come the optional trailers, always in this order:
//
//	epoch  8 bytes, nonzero             when FlagEpoch
//	flow   16 bytes, nonzero            when FlagFlow
//	token  2-byte length (1..MaxToken), when FlagToken
//	       then the token
//
// The fixed-size trailers go first so the token's length prefix is the last
// thing read and nothing is ambiguous; the flags sit in the header and the
// trailers in the hello, so all of it is associated data and authenticated.
// Size budget: a hello with the longest client ID, an IPv6 target, an epoch,
// a flow token and a MaxToken token, plus a full 1,200-byte shard (raic's
// default max shard), is exactly MaxDatagram (1,472 bytes); see
// TestHelloBudget.
//
// Flow tokens (FlagFlow, a compatible addition to version 1). A router names
// each game flow with a token that stays the same across its restarts (see
// FlowToken): a proxy that kept the server-side socket of an ended session
// gives it to the new session of the same client with the same flow token and
// target, so the game server sees the same source port after a router
// restart. A sender without one leaves the flag clear.
//
// Bytes 12..23 (packet ID and descriptor) are the AEAD nonce. The header and the
// hello extension are the associated data, so nothing in them can be altered.
//
// The nonce rule: a (key, nonce) pair seals exactly one datagram. Keys are derived
// per session and direction from the client's pre-shared key and a random salt
// chosen when the session starts (so a restart never reuses a key); packet IDs only
// grow within a session; two shards of one packet differ in their descriptor.
// Copies of a datagram sent over several uplinks are byte-identical copies of one
// sealed buffer, never sealed twice: sealing the same nonce with different
// associated data would expose the Poly1305 key.
package wire

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// Version is the only header version this code speaks; others are dropped.
const Version = 1

// Sizes of the parts of a datagram.
const (
	HeaderLen = 24
	NonceLen  = 12
	TagLen    = 16
	// HelloMaxLen is the largest hello extension (IPv6 target, longest client ID).
	HelloMaxLen = 16 + 8 + 1 + MaxClientID + 1 + 16 + 2 + EpochLen + FlowLen
	// EpochLen is the size of a restart epoch at the end of a hello.
	EpochLen = 8
	// FlowLen is the size of a flow token at the end of a hello.
	FlowLen = 16
	// MaxClientID is the longest client identifier, in bytes.
	MaxClientID = 32
	// MaxToken is the longest connect token a hello carries (see package
	// token): a hello with the longest client ID, an IPv6 target, an epoch,
	// a flow token, a MaxToken token and a full shard of fullShard bytes is MaxDatagram.
	MaxToken = MaxDatagram - HeaderLen - HelloMaxLen - 2 - TagLen - fullShard
	// fullShard is raic's default max shard (raic.DefaultMaxShard), the
	// largest body a data datagram carries by default.
	fullShard = 1200
	// MaxDatagram is the largest datagram any role sends or accepts.
	MaxDatagram = 1472
	// MaxOverhead is what the wire adds to a body in the worst case.
	MaxOverhead = HeaderLen + HelloMaxLen + 2 + MaxToken + TagLen
)

// Type says what a datagram's body is.
type Type uint8

// Datagram types.
const (
	TypeData  Type = 1 // a RAIC shard of a game packet
	TypePing  Type = 2 // keepalive with the sender's timestamp (Ping payload)
	TypePong  Type = 3 // answer to a ping, echoing it (Pong payload)
	TypeAck   Type = 4 // the proxy has the session: stop sending hellos
	TypeClose Type = 5 // the session is over
	// TypeProbe asks a proxy for its current RTT to the session's target server;
	// TypeProbeReply answers it (see probe messages in control.go).
	TypeProbe      Type = 6
	TypeProbeReply Type = 7
	// TypeKeepalive refreshes the path it arrives on and is never answered. A
	// router sends one per session on each uplink now and then: the far side
	// learns paths only from datagrams that pass its replay window, so an
	// uplink whose copies always arrive second would otherwise be forgotten, and
	// replies would stop taking it. Its body is
	//
	//	[0] the number of paths the sender has (0 when it does not say)
	//	[1] how many copies of each single datagram (RAIC-1) it sends on each
	//	    path, 1 to 4; the far side sends its single-datagram replies as many
	//	    times on each path. A body without it (an older sender) means 1, and
	//	    a value out of range is clamped to 1..4.
	TypeKeepalive Type = 8
	// TypePathChallenge asks the far end to prove it owns the address the
	// challenge went to; TypePathResponse answers on the same path, echoing its
	// body (PathTokenLen random bytes), as QUIC's PATH_CHALLENGE/PATH_RESPONSE.
	// The side answering routers sends a challenge to every router address it
	// learns, and until the answer comes back that address gets at most
	// replypath.AmplificationLimit times the bytes received from it. Both are
	// sealed with PathDesc as their descriptor and a packet ID of the sender's
	// own path counter (tunnel.Sender.SealPath), a nonce space no other
	// datagram uses, and they never move the replay window: an intermediate
	// passes its sessions' packet IDs through from hop to hop, so an ID of its
	// own on those sessions could be one the next hop uses next.
	TypePathChallenge Type = 9
	TypePathResponse  Type = 10
	// TypeQuality is a quality report: what the sender received on the path
	// the report travels on over the last interval (Quality in quality.go).
	TypeQuality Type = 11
	typeLimit   Type = 12
)

// PathTokenLen is the body length of a path challenge and its response.
const PathTokenLen = 8

// PathDesc is the descriptor of path challenges and responses: no shard has it
// (a shard's Count is at most 64), so their nonces never meet another
// datagram's under the same key.
var PathDesc = Desc{Index: 0xff, Count: 0xff, K: 0xff, Frag: 0xff}

// IsPath reports whether h is a path challenge or response in the path nonce
// space.
func (h *Header) IsPath() bool {
	return (h.Type == TypePathChallenge || h.Type == TypePathResponse) && h.Desc == PathDesc
}

func (t Type) String() string {
	switch t {
	case TypeData:
		return "data"
	case TypePing:
		return "ping"
	case TypePong:
		return "pong"
	case TypeAck:
		return "ack"
	case TypeClose:
		return "close"
	case TypeProbe:
		return "probe"
	case TypeProbeReply:
		return "probe-reply"
	case TypeKeepalive:
		return "keepalive"
	case TypePathChallenge:
		return "path-challenge"
	case TypePathResponse:
		return "path-response"
	case TypeQuality:
		return "quality"
	}
	return "unknown"
}

// Flags are header bits.
type Flags uint8

// FlagHello marks a datagram that carries a hello extension after the header.
// FlagEpoch marks a hello that ends with a restart epoch (only with FlagHello).
// FlagToken says the hello ends with a connect token (a 2-byte length, then the
// token; only with FlagHello): the client is admitted by the token rather than
// by a pre-shared key configured for its ID. FlagFlow says the hello carries
// a flow token (only with FlagHello). Trailers come in the order epoch, flow,
// token.
const (
	FlagHello Flags = 1 << 0
	FlagEpoch Flags = 1 << 1
	FlagToken Flags = 1 << 2
	FlagFlow  Flags = 1 << 3
)

const knownFlags = FlagHello | FlagToken | FlagEpoch | FlagFlow

// Desc is the 4-byte shard descriptor; its meaning per scheme belongs to raic.
type Desc struct{ Index, Count, K, Frag uint8 }

// Header is the fixed part of every datagram.
type Header struct {
	Type    Type
	Flags   Flags
	Scheme  uint8
	Session uint64
	Packet  uint64
	Desc    Desc
}

// Hello lets the far side create a session from the first datagram it sees: who
// the client is (to find its key), the salt the session keys are derived from,
// where the traffic goes, and when the session began (so an old captured hello
// cannot open a session again after a proxy restart).
type Hello struct {
	Salt      [16]byte
	UnixMilli int64
	ClientLen uint8
	Client    [MaxClientID]byte
	Target    netip.AddrPort // zero for a control-only session
	// Token is the connect token, when the client has one instead of a
	// pre-shared key; after Parse it points into the datagram.
	Token []byte
	// Epoch is the far side's restart epoch this hello (and the session's
	// keys) are for; 0 when the sender knows none (FlagEpoch clear).
	Epoch uint64
	// Flow names the game flow across the sender's restarts (FlowToken); all
	// zero when the sender gives none (FlagFlow clear).
	Flow [FlowLen]byte
}

// HasFlow reports whether the hello carries a flow token.
func (h *Hello) HasFlow() bool { return h.Flow != [FlowLen]byte{} }

// ClientID returns the client identifier as bytes (no copy).
func (h *Hello) ClientID() []byte { return h.Client[:h.ClientLen] }

// SetClientID stores id; it fails when id is empty or longer than MaxClientID.
func (h *Hello) SetClientID(id string) error {
	if len(id) == 0 || len(id) > MaxClientID {
		return ErrClientID
	}
	h.ClientLen = uint8(copy(h.Client[:], id))
	return nil
}

// Errors of parsing and opening. They are fixed values so that dropping a bad
// datagram allocates nothing; callers count them by kind.
var (
	ErrShort     = errors.New("wire: datagram too short")
	ErrLong      = errors.New("wire: datagram too long")
	ErrVersion   = errors.New("wire: unknown version")
	ErrType      = errors.New("wire: unknown type")
	ErrFlags     = errors.New("wire: unknown flags")
	ErrHello     = errors.New("wire: malformed hello")
	ErrClientID  = errors.New("wire: client ID must be 1 to 32 bytes")
	ErrAuth      = errors.New("wire: authentication failed")
	ErrPayload   = errors.New("wire: malformed control payload")
	ErrNoSession = errors.New("wire: session ID 0 is reserved")
	ErrNoPacket  = errors.New("wire: packet ID 0 is reserved")
)

// PutHeader writes h into b[:HeaderLen] (b must be at least that long).
func PutHeader(b []byte, h *Header) {
	_ = b[HeaderLen-1]
	b[0] = Version
	b[1] = byte(h.Type)
	b[2] = byte(h.Flags)
	b[3] = h.Scheme
	binary.BigEndian.PutUint64(b[4:], h.Session)
	binary.BigEndian.PutUint64(b[12:], h.Packet)
	b[20], b[21], b[22], b[23] = h.Desc.Index, h.Desc.Count, h.Desc.K, h.Desc.Frag
}

// PutHello writes the hello extension into b and returns its length. b must have
// room for HelloMaxLen bytes.
func PutHello(b []byte, h *Hello) int {
	n := copy(b, h.Salt[:])
	binary.BigEndian.PutUint64(b[n:], uint64(h.UnixMilli))
	n += 8
	b[n] = h.ClientLen
	n++
	n += copy(b[n:], h.Client[:h.ClientLen])
	addr := h.Target.Addr()
	switch {
	case !addr.IsValid():
		b[n] = 0
		n++
	case addr.Is4():
		b[n] = 4
		a := addr.As4()
		n++
		n += copy(b[n:], a[:])
		binary.BigEndian.PutUint16(b[n:], h.Target.Port())
		n += 2
	default:
		b[n] = 6
		a := addr.As16()
		n++
		n += copy(b[n:], a[:])
		binary.BigEndian.PutUint16(b[n:], h.Target.Port())
		n += 2
	}
	// The optional trailers, in their one order: the fixed-size epoch and
	// flow first, then the length-prefixed token (see "Hello trailers" in the
	// package doc).
	if h.Epoch != 0 {
		binary.BigEndian.PutUint64(b[n:], h.Epoch)
		n += EpochLen
	}
	if h.HasFlow() {
		n += copy(b[n:], h.Flow[:])
	}
	if len(h.Token) > 0 {
		binary.BigEndian.PutUint16(b[n:], uint16(len(h.Token)))
		n += 2
		n += copy(b[n:], h.Token)
	}
	return n
}

// Parse reads the header, and the hello extension when FlagHello is set, from a
// received datagram. It returns the offset where the sealed body starts, which is
// also the length of the associated data. It never panics on any input.
func Parse(b []byte, h *Header, hello *Hello) (bodyOff int, err error) {
	if len(b) < HeaderLen+TagLen {
		return 0, ErrShort
	}
	if len(b) > MaxDatagram {
		return 0, ErrLong
	}
	if b[0] != Version {
		return 0, ErrVersion
	}
	h.Type = Type(b[1])
	if h.Type == 0 || h.Type >= typeLimit {
		return 0, ErrType
	}
	h.Flags = Flags(b[2])
	if h.Flags&^knownFlags != 0 {
		return 0, ErrFlags
	}
	h.Scheme = b[3]
	h.Session = binary.BigEndian.Uint64(b[4:])
	h.Packet = binary.BigEndian.Uint64(b[12:])
	h.Desc = Desc{b[20], b[21], b[22], b[23]}
	if h.Session == 0 {
		return 0, ErrNoSession
	}
	if h.Packet == 0 {
		return 0, ErrNoPacket
	}
	off := HeaderLen
	if h.Flags&(FlagEpoch|FlagToken|FlagFlow) != 0 && h.Flags&FlagHello == 0 {
		return 0, ErrFlags
	}
	if h.Flags&FlagHello != 0 {
		n, err := parseHello(b[off:len(b)-TagLen], hello)
		if err != nil {
			return 0, err
		}
		off += n
		// Trailers in their one order: epoch, flow, then token.
		hello.Epoch = 0
		if h.Flags&FlagEpoch != 0 {
			if len(b)-TagLen < off+EpochLen {
				return 0, ErrHello
			}
			hello.Epoch = binary.BigEndian.Uint64(b[off:])
			if hello.Epoch == 0 {
				return 0, ErrHello
			}
			off += EpochLen
		}
		hello.Flow = [FlowLen]byte{}
		if h.Flags&FlagFlow != 0 {
			if len(b)-TagLen < off+FlowLen {
				return 0, ErrHello
			}
			copy(hello.Flow[:], b[off:off+FlowLen])
			if !hello.HasFlow() {
				return 0, ErrHello
			}
			off += FlowLen
		}
		hello.Token = nil
		if h.Flags&FlagToken != 0 {
			rest := b[off : len(b)-TagLen]
			if len(rest) < 2 {
				return 0, ErrHello
			}
			tl := int(binary.BigEndian.Uint16(rest))
			if tl == 0 || tl > MaxToken || len(rest) < 2+tl {
				return 0, ErrHello
			}
			hello.Token = rest[2 : 2+tl]
			off += 2 + tl
		}
	}
	return off, nil
}

func parseHello(b []byte, h *Hello) (int, error) {
	if len(b) < 16+8+1 {
		return 0, ErrHello
	}
	n := copy(h.Salt[:], b)
	h.UnixMilli = int64(binary.BigEndian.Uint64(b[n:]))
	n += 8
	cl := int(b[n])
	n++
	if cl == 0 || cl > MaxClientID || len(b) < n+cl+1 {
		return 0, ErrHello
	}
	h.ClientLen = uint8(cl)
	copy(h.Client[:], b[n:n+cl])
	n += cl
	fam := b[n]
	n++
	switch fam {
	case 0:
		h.Target = netip.AddrPort{}
	case 4:
		if len(b) < n+4+2 {
			return 0, ErrHello
		}
		addr := netip.AddrFrom4([4]byte(b[n : n+4]))
		h.Target = netip.AddrPortFrom(addr, binary.BigEndian.Uint16(b[n+4:]))
		n += 6
	case 6:
		if len(b) < n+16+2 {
			return 0, ErrHello
		}
		addr := netip.AddrFrom16([16]byte(b[n : n+16]))
		h.Target = netip.AddrPortFrom(addr, binary.BigEndian.Uint16(b[n+16:]))
		n += 18
	default:
		return 0, ErrHello
	}
	return n, nil
}
