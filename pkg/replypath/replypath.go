// Package replypath keeps the router paths of one session on the far side of
// the tunnel, and chooses where each reply goes.
//
// A router sends every packet over each of its uplinks; the side that answers
// (the proxy, or an intermediate towards the routers that use it) sees one
// source address per uplink and must send each reply back over all of them, so
// every uplink carries a copy. It learns those addresses only from what it can
// trust and keeps them only while they are heard from:
//
//   - an address is learned from a datagram that authenticated and passed the
//     replay window (Set.Learn; Learner does it before the packet goes on, since
//     the far end may answer that very packet at once);
//   - a duplicate the replay window drops proves nothing about its source, so it
//     never adds a path, but it refreshes a path already known (Set.Refresh): the
//     copies on a router's slower uplinks arrive as such duplicates, and they show
//     those uplinks still work;
//   - an address learned from a datagram (Set.Heard) is not yet validated: the
//     datagram may be one an attacker held back and released from an address
//     it wants flooded. Until the router answers a path challenge sent there
//     (wire.TypePathChallenge, Set.Validate) the path may receive at most
//     AmplificationLimit times the bytes received from it (Set.Spend), as
//     QUIC limits an unvalidated address;
//   - a path not heard from within the reply window is no longer used;
//   - a path that falls more than LagBehind behind the freshest one has most
//     likely failed: it still gets its copy, and one more goes on a fresh path;
//   - the router's keepalives say how many paths it has and how many copies of
//     each datagram it sends on each (Set.NoteKeepalive): a single-datagram
//     reply goes that many times on every live path, as the router's packets do,
//     and for each path never heard from, as many more go on fresh paths.
//
// The proxy and the intermediate both answer routers, and both used to keep a
// copy of this logic; this package is the one place it lives, so a fix reaches
// both.
//
// Everything here is per session and bounded (MaxPaths addresses): one small
// mutex per session, no global lock, and nothing allocates per packet.
package replypath

import (
	"bytes"
	"crypto/rand"
	"math/bits"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/raic"
)

// MaxPaths bounds the reply addresses kept per session (one per router uplink,
// plus room for a NAT rebinding in progress).
const MaxPaths = 8

// MaxCopiesPerPath bounds the copies per path a keepalive may ask for (the
// routers' copies_per_uplink, 1 to 4).
const MaxCopiesPerPath = 4

// MaxCopies bounds the copies Live.Copies lists for one datagram: copies-per-path
// on each live path, plus as many again for each lagging path (never all of
// them) and each router path never heard from, so at most copies-per-path times
// (MaxPaths + MaxPaths-1).
const MaxCopies = 2 * MaxPaths * MaxCopiesPerPath

// DefaultWindow is the reply window both answering sides use unless configured
// otherwise: routers refresh every path once a second (keepalives), so a path
// silent for 2.5 s has missed two refreshes.
const DefaultWindow = 2500 * time.Millisecond

// LagBehind is how far a path may fall behind the session's freshest one before
// its replies are also sent over the fresh ones. While the router sends, every
// path hears from it at the game's packet rate (duplicates count, see
// Set.Refresh), so a path this far behind has most likely failed.
const LagBehind = 400 * time.Millisecond

// AmplificationLimit is how many times the bytes received from an address not
// yet validated may be sent to it (QUIC's limit).
const AmplificationLimit = 3

// ChallengeEvery is how often a path not yet validated is challenged again
// while it is heard from (the challenge or its answer may be lost).
const ChallengeEvery = 200 * time.Millisecond

// ChallengeCost is what a path challenge datagram costs from an unvalidated
// path's budget (header, token, tag).
const ChallengeCost = 24 + 8 + 16

// Set is the router paths of one session. The zero value is empty and ready.
type Set struct {
	mu sync.Mutex // guards paths
	// paths grows as the router's addresses appear, to MaxPaths at most: a
	// session of one uplink holds one (the proxy holds a set per session).
	paths []path
	// routerPaths is how many paths the router has (from its keepalives): when
	// fewer are known here, replies get extra copies on the known ones.
	routerPaths atomic.Uint32
	// copies is how many copies of a single datagram the router sends on each
	// path (from its keepalives; 0 before one said, meaning 1).
	copies atomic.Uint32
}

type path struct {
	addr netip.AddrPort
	last int64
	// local is the proxy's own address this path reached it at (IP_PKTINFO,
	// for a proxy bound to 0.0.0.0 or [::]): replies to it leave from there,
	// since each path may reach another address of the proxy.
	local netip.Addr
	// validated: the router answered a challenge from this address (or the
	// caller learned it as trusted, Learn). Until then budget is what may
	// still be sent there: AmplificationLimit times what came from it, less
	// what went.
	validated    bool
	budget       int64
	token        [8]byte // the challenge outstanding
	challengedAt int64   // when it was sent; 0: never
}

// Challenge is a path challenge to send (Set.Heard): Token to To.
type Challenge struct {
	To    netip.AddrPort
	Token [8]byte
}

// Learn records from as a live, validated path of the session, heard from at
// now: for an address the caller has proved otherwise. Datagrams from routers
// go through Heard instead.
func (s *Set) Learn(from netip.AddrPort, now int64) {
	s.mu.Lock()
	p := s.find(from, now)
	p.last, p.validated = max(p.last, now), true
	s.mu.Unlock()
}

// SetLocal records that the path from reached the proxy at its address local.
// A path not in the set is left alone.
func (s *Set) SetLocal(from netip.AddrPort, local netip.Addr) {
	s.mu.Lock()
	for i := range s.paths {
		if p := &s.paths[i]; p.addr == from {
			p.local = local
			break
		}
	}
	s.mu.Unlock()
}

// LocalOf returns the proxy address the path to reached it at (SetLocal), or
// the zero Addr when none is known.
func (s *Set) LocalOf(to netip.AddrPort) netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.paths {
		if p := &s.paths[i]; p.addr == to {
			return p.local
		}
	}
	return netip.Addr{}
}

// find returns the path of addr, or makes one: a new address takes the place
// of the one heard from least recently when the set is full, a path not yet
// validated first (so datagrams released from new addresses cannot push the
// router's own paths out). s.mu is held.
func (s *Set) find(addr netip.AddrPort, now int64) *path {
	oldest, oldestUnval := -1, -1
	for i := range s.paths {
		p := &s.paths[i]
		if p.addr == addr {
			return p
		}
		if oldest < 0 || p.last < s.paths[oldest].last {
			oldest = i
		}
		if !p.validated && (oldestUnval < 0 || p.last < s.paths[oldestUnval].last) {
			oldestUnval = i
		}
	}
	if len(s.paths) < MaxPaths {
		s.paths = append(s.paths, path{addr: addr, last: now})
		return &s.paths[len(s.paths)-1]
	}
	if oldestUnval >= 0 {
		oldest = oldestUnval
	}
	s.paths[oldest] = path{addr: addr, last: now}
	return &s.paths[oldest]
}

// Heard records from as a live path of the session, heard from at now with a
// datagram of n bytes. Call it only for a datagram that authenticated and
// passed the replay window (this is also how a NAT rebinding on the router's
// side is learned). A path not yet validated gains AmplificationLimit*n bytes
// of budget, and when a challenge is due there (a new path, or none sent for
// ChallengeEvery) Heard returns it, its cost already spent: the caller seals
// and sends it.
func (s *Set) Heard(from netip.AddrPort, n int, now int64) (c Challenge, due bool) {
	s.mu.Lock()
	p := s.find(from, now)
	p.last = max(p.last, now)
	if !p.validated {
		p.budget += AmplificationLimit * int64(n)
		if (p.challengedAt == 0 || now-p.challengedAt >= int64(ChallengeEvery)) && p.budget >= ChallengeCost {
			if p.challengedAt == 0 {
				rand.Read(p.token[:]) // never fails (crypto/rand)
			}
			p.challengedAt = now
			p.budget -= ChallengeCost
			c, due = Challenge{To: from, Token: p.token}, true
		}
	}
	s.mu.Unlock()
	return c, due
}

// Validate marks the path of from validated when token is the one of the
// challenge sent there; it reports whether it did. Only an authenticated
// response arriving from that address may be passed.
func (s *Set) Validate(from netip.AddrPort, token []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.paths {
		p := &s.paths[i]
		if p.addr == from && !p.validated && p.challengedAt != 0 && bytes.Equal(token, p.token[:]) {
			p.validated = true
			return true
		}
	}
	return false
}

// Spend reports whether n bytes may go to to now, and takes them from its
// budget when the path is not yet validated. An address the set does not
// hold gets nothing.
func (s *Set) Spend(to netip.AddrPort, n int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.paths {
		p := &s.paths[i]
		if p.addr != to {
			continue
		}
		if p.validated {
			return true
		}
		if p.budget < int64(n) {
			return false
		}
		p.budget -= int64(n)
		return true
	}
	return false
}

// Validated reports whether from is a validated path.
func (s *Set) Validated(from netip.AddrPort) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.paths {
		if p := &s.paths[i]; p.addr == from {
			return p.validated
		}
	}
	return false
}

// Refresh marks a path already known as heard from at now. It is for datagrams
// the replay window drops: they prove nothing about their source, so they never
// add a path, but the router's copies on its slower uplinks arrive as such
// duplicates, and they show those uplinks still work. Their bytes (n) count
// towards a path not yet validated, as any received from it.
func (s *Set) Refresh(from netip.AddrPort, n int, now int64) {
	s.mu.Lock()
	for i := range s.paths {
		if p := &s.paths[i]; p.addr == from {
			p.last = max(p.last, now)
			if !p.validated {
				p.budget += AmplificationLimit * int64(n)
			}
			break
		}
	}
	s.mu.Unlock()
}

// NoteKeepalive takes the router's path count and copies per path from the
// body of an authenticated keepalive (wire.TypeKeepalive: its first byte is the
// path count, 0 when the router does not say, capped at MaxPaths; its second the
// copies per path, clamped to 1..MaxCopiesPerPath, and 1 when the body has no
// second byte, as an older router's does not).
func (s *Set) NoteKeepalive(body []byte) {
	if len(body) < 1 {
		return
	}
	s.routerPaths.Store(uint32(min(int(body[0]), MaxPaths)))
	copies := 1
	if len(body) >= 2 {
		copies = min(max(int(body[1]), 1), MaxCopiesPerPath)
	}
	s.copies.Store(uint32(copies))
}

// RouterPaths returns the router's path count from its last keepalive (0 before
// one said).
func (s *Set) RouterPaths() int { return int(s.routerPaths.Load()) }

// CopiesPerPath returns how many copies of a single datagram go on each path,
// from the router's last keepalive (1 before one said).
func (s *Set) CopiesPerPath() int { return max(int(s.copies.Load()), 1) }

// Live fills l with the paths heard from within window before now, for one
// reply.
func (s *Set) Live(now int64, window time.Duration, l *Live) {
	var last [MaxPaths]int64
	var freshest int64
	var limited uint8
	n := 0
	s.mu.Lock()
	for i := range s.paths {
		p := &s.paths[i]
		if p.addr.IsValid() && now-p.last <= int64(window) && (p.validated || p.budget > 0) {
			if !p.validated {
				limited |= 1 << n
			}
			l.addrs[n], last[n] = p.addr, p.last
			freshest = max(freshest, p.last)
			n++
		}
	}
	s.mu.Unlock()
	l.n, l.lagging, l.limited, l.now = n, 0, limited, now
	for i := 0; i < n; i++ {
		if freshest-last[i] > int64(LagBehind) {
			l.lagging |= 1 << i
		}
	}
	l.missing = max(s.RouterPaths()-n, 0)
	l.copies = s.CopiesPerPath()
}

// Live is the live paths of a session at one moment (see Set.Live): where one
// reply goes. It is a value meant for the stack of the goroutine sending.
type Live struct {
	addrs   [MaxPaths]netip.AddrPort
	n       int
	lagging uint8 // bit i: path i lags behind the freshest
	limited uint8 // bit i: path i is not validated yet (Set.Spend before sending)
	missing int   // router paths never heard from
	copies  int   // copies of a single datagram per path, 1..MaxCopiesPerPath
	now     int64
}

// Len returns the number of live paths; 0 means the reply has nowhere to go.
func (l *Live) Len() int { return l.n }

// Addr returns live path i.
func (l *Live) Addr(i int) netip.AddrPort { return l.addrs[i] }

// Limited reports whether a path not yet validated is among the live ones:
// then each datagram to one of them must pass Set.Spend (Limits).
func (l *Live) Limited() bool { return l.limited != 0 }

// Limits reports whether to is a live path not yet validated.
func (l *Live) Limits(to netip.AddrPort) bool {
	for i := 0; i < l.n; i++ {
		if l.addrs[i] == to {
			return l.limited&(1<<i) != 0
		}
	}
	return false
}

// Lagging reports whether live path i lags behind the freshest one.
func (l *Live) Lagging(i int) bool { return l.lagging&(1<<i) != 0 }

// Copies lists in out where the copies of a single datagram (RAIC-1) go, and
// returns how many there are and how many of them are extra. Every live path
// gets the router's copies per path (Set.NoteKeepalive; 1 unless it said more),
// first, one round over the paths after another, so each path has its first
// copy before any has a second. A path lagging behind still gets its copies (it
// may only be slow), and as many more go on fresh paths, as the router does for
// an uplink that looks down; so do the copies of each router path never heard
// from. The fresh paths take the extra copies in turn, starting at one that
// changes about once a second. Copies per path are for single datagrams only:
// coded shards are spread by Place, once each.
func (l *Live) Copies(out *[MaxCopies]netip.AddrPort) (n, extra int) {
	np, copies := l.n, max(l.copies, 1)
	for c := 0; c < copies; c++ {
		n += copy(out[n:], l.addrs[:np])
	}
	lag := bits.OnesCount8(l.lagging)
	extra = (lag + l.missing) * copies
	if extra == 0 || lag >= np {
		return n, 0
	}
	next := int(l.now>>10) % np
	for sent := 0; sent < extra; next++ {
		if i := next % np; l.lagging&(1<<i) == 0 {
			out[n] = l.addrs[i]
			n++
			sent++
		}
	}
	return n, extra
}

// Place spreads the shards of one coded packet over the live paths, lagging ones
// counted as down: out[i] (appended to out[:0]) is the index of the path that
// carries shard i (see raic.Place).
func (l *Live) Place(shards int, out []int) []int {
	var states [MaxPaths]raic.UplinkState
	for i := 0; i < l.n; i++ {
		states[i] = raic.UplinkState{Up: !l.Lagging(i), Weight: 1}
	}
	return raic.Place(shards, states[:l.n], out[:0])
}

// Learner is a tunnel.Sink that records the address the completing datagram
// came from as a live path of the session before passing the packet on: the far
// end may answer that very packet at once, and the answer must go over this path
// too. Only authenticated data reaches a sink, so only authenticated addresses
// are learned. Keep one per read goroutine and set it per datagram, so handing
// it to a receiver allocates nothing.
type Learner struct {
	Paths *Set
	Next  tunnel.Sink
	From  netip.AddrPort
	Now   int64 // when the datagram was read
	// Size is the datagram's length, counted (Set.Heard) by the first packet
	// it completes and then set to 0, so a datagram counts once.
	Size int
	// Challenge is the path challenge Set.Heard asked for, if Due; the caller
	// sends it after Receive.
	Challenge Challenge
	Due       bool
}

// Deliver implements tunnel.Sink.
func (l *Learner) Deliver(pid uint64, pkt []byte, now int64) {
	if c, due := l.Paths.Heard(l.From, l.Size, l.Now); due {
		l.Challenge, l.Due = c, true
	}
	l.Size = 0
	l.Next.Deliver(pid, pkt, now)
}
