package rendezvous

import (
	"crypto/cipher"
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/wire"
)

// Client is a peer's side of the rendezvous: it builds the messages a peer
// sends to the server and opens the server's answers. It owns no socket: the
// peer sends what it builds on each of its uplinks, so the server sees every
// uplink's NAT mapping, and hands it whatever starts with Magic.
type Client struct {
	id, want string
	aead     cipher.AEAD
	counter  atomic.Uint64

	punchFailed atomic.Bool

	mu         sync.Mutex
	lastServer uint64 // highest introduce counter accepted
}

// NewClient returns the client of peer id, whose rendezvous key is key, for
// reaching peer want.
func NewClient(id string, key wire.Key, want string) (*Client, error) {
	if len(id) == 0 || len(id) > MaxID || len(want) == 0 || len(want) > MaxID {
		return nil, ErrID
	}
	aead, err := NewAEAD(&key)
	if err != nil {
		return nil, err
	}
	c := &Client{id: id, want: want, aead: aead}
	c.counter.Store(uint64(time.Now().UnixNano()))
	return c, nil
}

// SetPunchFailed says whether punching failed (no authenticated datagram from
// the peer since the introduction); the next registers carry it, and the
// server relays once both sides say so.
func (c *Client) SetPunchFailed(v bool) { c.punchFailed.Store(v) }

// Register builds a register message sent on local uplink `uplink` of
// `uplinks`, into buf (at least 128 bytes), and returns it.
func (c *Client) Register(buf []byte, uplink, uplinks int) ([]byte, error) {
	var body [8 + 1 + MaxID + 3]byte
	b := binary.BigEndian.AppendUint64(body[:0], c.counter.Add(1))
	b = putID(b, c.want)
	var flags byte
	if c.punchFailed.Load() {
		flags |= FlagPunchFailed
	}
	b = append(b, byte(uplink), byte(uplinks), flags)
	return seal(c.aead, buf, TypeRegister, c.id, b)
}

// Relay builds a relay message carrying payload (a peer datagram) for the
// wanted peer's uplink dstUplink (AnyUplink: each of them) into buf, which
// needs room for len(payload)+128 bytes.
func (c *Client) Relay(buf, scratch, payload []byte, dstUplink int) ([]byte, error) {
	b := binary.BigEndian.AppendUint64(scratch[:0], c.counter.Add(1))
	b = putID(b, c.want)
	b = append(b, byte(dstUplink))
	b = append(b, payload...)
	return seal(c.aead, buf, TypeRelay, c.id, b)
}

// AnyUplink as a relay destination sends the datagram to every registered
// uplink of the peer.
const AnyUplink = 0xff

// UplinkAddr is one observed address of the peer.
type UplinkAddr struct {
	Uplink int
	Addr   netip.AddrPort
}

// Event is what a server message said.
type Event struct {
	Type    byte   // TypeIntroduce or TypeRelayed
	Peer    string // the peer it is about (Introduce) or from (Relayed)
	RelayOn bool   // Introduce: the server relays between the pair
	N       int    // Introduce: addresses in Addrs
	Addrs   [MaxUplinks]UplinkAddr
	Payload []byte // Relayed: the peer datagram, a sub-slice of the message
}

// Handle authenticates and reads a server message, in place. It fails on
// anything not sealed by the server for this peer, or an old introduce.
func (c *Client) Handle(b []byte, ev *Event) error {
	h, err := parseHeader(b)
	if err != nil {
		return err
	}
	if string(h.id) != c.id {
		return ErrID
	}
	if h.typ != TypeIntroduce && h.typ != TypeRelayed {
		return ErrType
	}
	body, err := open(c.aead, b, h)
	if err != nil {
		return err
	}
	ctr := binary.BigEndian.Uint64(body)
	peer, rest, err := readID(body[8:])
	if err != nil {
		return err
	}
	ev.Type = h.typ
	ev.Peer = string(peer)
	if h.typ == TypeRelayed {
		ev.Payload = rest
		return nil
	}
	if len(rest) < 2 {
		return ErrBody
	}
	flags, n := rest[0], int(rest[1])
	rest = rest[2:]
	if n > MaxUplinks || len(rest) != n*(1+addrLen) {
		return ErrBody
	}
	c.mu.Lock()
	// One introduction goes to every uplink with one counter: a copy of the
	// newest one is accepted (it says the same), anything older is not.
	if ctr < c.lastServer {
		c.mu.Unlock()
		return ErrReplay
	}
	c.lastServer = ctr
	c.mu.Unlock()
	ev.RelayOn = flags&FlagRelayOn != 0
	ev.N = 0
	for i := 0; i < n; i++ {
		e := rest[i*(1+addrLen):]
		a, ok := readAddr(e[1:])
		if !ok {
			return ErrBody
		}
		ev.Addrs[ev.N] = UplinkAddr{Uplink: int(e[0]), Addr: a}
		ev.N++
	}
	return nil
}
