package proxy

// The shared upstream ([[server]] upstream = "shared"): for game servers that
// speak Cloudflare's Simple Proxy Protocol, every session to them is sent from
// a small fixed pool of sockets instead of a socket of its own. Each datagram
// carries its SPP header, and an SPP server answers with the same 38-byte
// header in front of its reply (the spec's rule for replies: the header as
// received, not swapped; ppserver does so), so the header, not the socket,
// tells whose reply it is. That saves a descriptor, a connected socket and a
// write(2) per packet per session: the forwards of one read batch that go
// out on one shared socket leave in one sendmmsg, and replies come in with
// recvmmsg.
//
// Telling sessions apart. The header's client address and port are the
// router's address the session began from (what the server must see as the
// player), and two sessions from one router socket (one router, two game
// flows) share them. So each session gets its own value in the header's
// proxy-port field: the index of a slot of its socket's table, unique among
// that socket's live sessions. A reply is found by that index alone, in a
// fixed array read without a lock, then checked against the session's client
// address and port and its server's address (the datagram's source), so a
// stale or forged reply is dropped, not misdelivered. Per-origin counters
// would need a map keyed by address and a lock on the reply path; the slot
// index needs neither, never collides, and bounds the table (65,535 sessions
// per socket; the pool has enough sockets for max_sessions). A server that
// keys its players must key them by the whole header (client address, client
// port and proxy port), as it would key them by the peer address without a
// proxy. Slots are reused in FIFO order, so a freed one rests as long as it
// can before a new session takes it. When every slot is taken (transiently,
// while the table evicts), the new session falls back to a socket of its own.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"github.com/raicnet/raic/pkg/ingress"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/proxyproto"
	"github.com/raicnet/raic/pkg/udp"
	"github.com/raicnet/raic/raic"
)

// Upstream modes, as [[server]] upstream writes them.
const (
	upstreamPerSession = "per-session"
	upstreamShared     = "shared"
)

// parseUpstream reads a [[server]] upstream value; shared needs the SPP header.
func parseUpstream(s string, h proxyproto.Kind) (shared bool, err error) {
	switch s {
	case "", upstreamPerSession:
		return false, nil
	case upstreamShared:
		if h != proxyproto.SPP {
			return false, fmt.Errorf("%q needs client_addr_header = \"spp\": only its header tells the sessions' replies apart", s)
		}
		return true, nil
	}
	return false, fmt.Errorf("%q: must be %q or %q", s, upstreamPerSession, upstreamShared)
}

// sharedFor reports whether sessions to target use the shared upstream: the
// first [[server]] that matches it decides, as for headerFor.
func (c *StudioConfig) sharedFor(target netip.AddrPort) bool {
	for _, r := range c.servers {
		if r.match.Allows(target) {
			return r.shared
		}
	}
	return false
}

// anyShared reports whether some [[server]] asks for the shared upstream.
func (c *StudioConfig) anyShared() bool {
	for _, r := range c.servers {
		if r.shared {
			return true
		}
	}
	return false
}

const (
	// sharedSlots is the proxy-port values of one socket; 0 is never given.
	sharedSlots = 1 << 16
	// sharedRoom is a queued forward's buffer: its header and a packet of up
	// to 2 KB (game packets are well under the path MTU); a larger one
	// leaves alone, after what is queued before it.
	sharedRoom = proxyproto.SPPLen + 2048
	// sharedRecvBuffer is each shared socket's receive buffer: it takes what
	// a thousand per-session sockets each held.
	sharedRecvBuffer = 8 << 20
	sharedSendBuffer = 4 << 20
)

// sharedUpstream is the pool of shared sockets and each read loop's batch of
// forwards per socket.
type sharedUpstream struct {
	srv    *Server
	socks  []*sharedSocket
	queues [][]sharedQueue // [worker][socket], each used by its read loop only
	big    [][]byte        // [worker]: a forward larger than sharedRoom
	next   atomic.Uint32   // where the next session starts looking for a slot

	unknown, badHeader, fallback *metrics.Counter
	attached                     *metrics.Gauge
	segmented                    *metrics.Counter // forwards sent inside segmented sends
	segRefused                   *metrics.Counter // sockets whose path refused a segmented send
	segRefusalLogged             atomic.Bool      // the first refusal is logged, the rest counted
}

// sharedSocket is one socket of the pool and its sessions by slot.
type sharedSocket struct {
	conn  *udp.Conn
	index int
	slots []atomic.Pointer[proxySession] // by proxy port; read without a lock

	mu   sync.Mutex // the free ring: opens and closes only
	free []uint16   // a ring of the free slots, oldest first
	head int
	n    int

	soloMu sync.Mutex // solo: a forward from outside a read loop
	solo   []byte
}

// sharedQueue is one read loop's forwards for one socket, sent at the end of
// its batch (or when full).
type sharedQueue struct {
	msgs [udp.MaxBatch]udp.Message
	n    int
}

// newSharedUpstream opens the pool: a socket per worker, and more when
// maxSessions (and the few a full table holds for a moment while it evicts)
// need more slots than that.
func newSharedUpstream(s *Server, workers, maxSessions int) (*sharedUpstream, error) {
	n := max(workers, (maxSessions+udp.MaxBatch*workers)/(sharedSlots-1)+1)
	su := &sharedUpstream{srv: s,
		unknown:    s.reg.Counter(`proxy_dropped_total{reason="shared_reply_unknown"}`, "Datagrams dropped, by reason."),
		badHeader:  s.reg.Counter(`proxy_dropped_total{reason="shared_reply_bad_header"}`, "Datagrams dropped, by reason."),
		fallback:   s.reg.Counter("proxy_shared_upstream_fallbacks_total", "Sessions of a shared-upstream server given a socket of their own (no free slot)."),
		attached:   s.reg.Gauge("proxy_shared_upstream_sessions", "Sessions sent over the shared upstream sockets."),
		segmented:  s.reg.Counter("proxy_shared_upstream_segmented_total", "Forwards the shared upstream sent inside segmented sends (UDP GSO runs to one server)."),
		segRefused: s.reg.Counter("proxy_shared_upstream_segmentation_refused_total", "Servers (per shared upstream socket) sent a datagram per forward because their path refused a segmented send."),
	}
	for i := 0; i < n; i++ {
		c, err := udp.Listen("udp", udp.Options{RecvBuffer: sharedRecvBuffer, SendBuffer: sharedSendBuffer})
		if err != nil {
			su.close()
			return nil, fmt.Errorf("shared upstream socket: %w", err)
		}
		if s.cfg.UDPSegmentation && !c.EnableSegmentation(udp.Segmentation{Sent: su.segmented, Refused: su.segmentsRefused}) && i == 0 {
			s.log.Info("UDP segmentation not available: the shared upstream sends a datagram per message")
		}
		ss := &sharedSocket{conn: c, index: i, slots: make([]atomic.Pointer[proxySession], sharedSlots),
			free: make([]uint16, sharedSlots-1), n: sharedSlots - 1, solo: make([]byte, proxyproto.SPPLen+raic.MaxPacket)}
		for j := range ss.free {
			ss.free[j] = uint16(j + 1)
		}
		su.socks = append(su.socks, ss)
	}
	su.queues = make([][]sharedQueue, workers)
	su.big = make([][]byte, workers)
	for w := range su.queues {
		su.queues[w] = make([]sharedQueue, n)
		for k := range su.queues[w] {
			q := &su.queues[w][k]
			for i := range q.msgs {
				q.msgs[i].Buf = make([]byte, sharedRoom)
			}
		}
		su.big[w] = make([]byte, proxyproto.SPPLen+raic.MaxPacket)
	}
	return su, nil
}

// segmentsRefused hears that a path refused a shared socket's segmented send:
// that socket now sends a datagram per forward to that server, and segmented
// runs to the others (udp.Segmentation.Refused). The first refusal is logged
// (with its path and error) and every one counted, so that a pool of many
// sockets meeting one narrow path does not flood the log.
func (su *sharedUpstream) segmentsRefused(dst netip.AddrPort, err error) {
	su.segRefused.Inc()
	if !su.segRefusalLogged.Swap(true) {
		su.srv.log.Warn("the path refused a segmented send: that shared upstream socket sends a datagram per forward to this server from now on",
			"server", dst, "err", err, "metric", "proxy_shared_upstream_segmentation_refused_total")
	}
}

func (su *sharedUpstream) close() {
	for _, ss := range su.socks {
		ss.conn.Close()
	}
}

// attach gives ps a slot of a shared socket; false when none is free.
func (su *sharedUpstream) attach(ps *proxySession) bool {
	start := int(su.next.Add(1))
	for k := range su.socks {
		ss := su.socks[(start+k)%len(su.socks)]
		ss.mu.Lock()
		if ss.n == 0 {
			ss.mu.Unlock()
			continue
		}
		slot := ss.free[ss.head]
		ss.head = (ss.head + 1) % len(ss.free)
		ss.n--
		ss.mu.Unlock()
		ps.shared, ps.slot = ss, slot
		ss.slots[slot].Store(ps)
		su.attached.Add(1)
		return true
	}
	su.fallback.Inc()
	return false
}

// detach frees ps's slot (the session ended).
func (su *sharedUpstream) detach(ps *proxySession) {
	ss := ps.shared
	if ss == nil || !ss.slots[ps.slot].CompareAndSwap(ps, nil) {
		return
	}
	ss.mu.Lock()
	ss.free[(ss.head+ss.n)%len(ss.free)] = ps.slot
	ss.n++
	ss.mu.Unlock()
	su.attached.Add(-1)
}

// putShared writes ps's SPP header and pkt into b and returns the length.
func (ps *proxySession) putShared(b []byte, pkt []byte) int {
	n := proxyproto.PutSPP(b, ps.origin, netip.AddrPortFrom(ps.target.Addr(), ps.slot))
	return n + copy(b[n:], pkt)
}

// DeliverVia forwards a decoded packet (ingress.ReaderSink): a shared
// session's is queued in the read loop's batch for its socket, sent at the
// batch's end (flushWorker); a per-session one's goes out at once on its
// own socket.
func (ps *proxySession) DeliverVia(r *ingress.Reader, pid uint64, pkt []byte, now int64) {
	ss := ps.shared
	if ss == nil {
		ps.deliver(r, pkt, now)
		return
	}
	s := ps.srv
	if !ps.Client.Take(now) {
		s.m.rateLimited.Inc()
		return
	}
	su := s.shared
	w := -1
	if r != nil {
		w = r.Worker()
	}
	if w < 0 || w >= len(su.queues) {
		// Not a read loop's (a TCP fallback connection): alone, now.
		ss.soloMu.Lock()
		err := ss.conn.WriteTo(ss.solo[:ps.putShared(ss.solo, pkt)], ps.target)
		ss.soloMu.Unlock()
		su.count(1, err)
		return
	}
	q := &su.queues[w][ss.index]
	if len(pkt) > sharedRoom-proxyproto.SPPLen {
		su.flush(ss, q) // what came before it leaves before it
		b := su.big[w]
		su.count(1, ss.conn.WriteTo(b[:ps.putShared(b, pkt)], ps.target))
		return
	}
	m := &q.msgs[q.n]
	m.N, m.Addr = ps.putShared(m.Buf, pkt), ps.target
	q.n++
	if q.n == len(q.msgs) {
		su.flush(ss, q)
	}
}

func (su *sharedUpstream) count(n int, err error) {
	if err != nil {
		su.srv.m.upstreamErrors.Inc()
		return
	}
	su.srv.m.forwarded.Add(uint64(n))
}

// flushWorker sends what read loop w queued (ingress's AfterBatch).
func (su *sharedUpstream) flushWorker(w int) {
	if w < 0 || w >= len(su.queues) {
		return
	}
	qs := su.queues[w]
	for i := range qs {
		if qs[i].n > 0 {
			su.flush(su.socks[i], &qs[i])
		}
	}
}

// flush sends q in one sendmmsg (more only if the kernel stops early); a
// datagram that fails is counted and skipped, the rest still leave.
func (su *sharedUpstream) flush(ss *sharedSocket, q *sharedQueue) {
	msgs := q.msgs[:q.n]
	q.n = 0
	sent := 0
	for len(msgs) > 0 {
		n, err := ss.conn.WriteBatch(msgs)
		sent += n
		if err == nil {
			break
		}
		su.srv.m.upstreamErrors.Inc()
		if errors.Is(err, net.ErrClosed) {
			break
		}
		msgs = msgs[min(n+1, len(msgs)):]
	}
	if sent > 0 {
		su.srv.m.forwarded.Add(uint64(sent))
	}
}

// readReplies reads the servers' replies on ss until it is closed, in
// batches, and hands each to its session.
func (su *sharedUpstream) readReplies(ss *sharedSocket) {
	s := su.srv
	msgs := make([]udp.Message, udp.MaxBatch)
	for i := range msgs {
		// One byte more than the largest reply carried, so an oversized one
		// shows as such.
		msgs[i].Buf = make([]byte, proxyproto.SPPLen+maxServerPacket+1)
	}
	for {
		n, err := ss.conn.ReadBatch(msgs)
		if err != nil {
			if errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) || s.closing.Load() {
				return
			}
			s.m.upstreamErrors.Inc()
			if n == 0 {
				continue
			}
		}
		now := mono.Now() // once per batch
		for i := 0; i < n; i++ {
			m := &msgs[i]
			su.demux(ss, m.Buf[:m.N], m.Addr, now)
		}
	}
}

// demux finds the session of one reply by its SPP header, strips the header
// and sends the payload back to the router; anything else is counted and
// dropped.
func (su *sharedUpstream) demux(ss *sharedSocket, dg []byte, from netip.AddrPort, now int64) {
	s := su.srv
	if len(dg) > proxyproto.SPPLen+maxServerPacket {
		s.m.oversize.Inc()
		return
	}
	client, proxy, n, err := proxyproto.ParseSPP(dg)
	if err != nil {
		su.badHeader.Inc()
		return
	}
	ps := ss.slots[proxy.Port()].Load()
	if ps == nil || !sameAddrPort(ps.origin, client) || !sameAddrPort(ps.target, from) {
		su.unknown.Inc()
		return
	}
	ps.reply(dg[n:], now)
}

// sameAddrPort compares two addresses with IPv4-mapped ones taken as IPv4.
func sameAddrPort(a, b netip.AddrPort) bool {
	return a.Port() == b.Port() && a.Addr().Unmap() == b.Addr().Unmap()
}

// stripReply takes the SPP header off a reply that came on a session's own
// socket, when the server puts one there (SPP origins answer with the header
// they got: it names the session's player); a reply without one passes as it
// is, so servers that answer bare keep working.
func (ps *proxySession) stripReply(pkt []byte) []byte {
	if ps.header != proxyproto.SPP {
		return pkt
	}
	if client, _, n, err := proxyproto.ParseSPP(pkt); err == nil && sameAddrPort(client, ps.origin) {
		return pkt[n:]
	}
	return pkt
}
