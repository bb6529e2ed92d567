package proxy

import (
	"errors"

	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/proxyproto"
	"github.com/raicnet/raic/pkg/udp"
	"github.com/raicnet/raic/raic"
	"golang.org/x/sys/unix"
)

// forwardBatch holds one read loop's forwards on the sessions' own sockets
// (serverPort) until the end of its read batch (ingress AfterBatch), then
// sends them all in one io_uring submission (udp.SendRing): a read batch of
// datagrams for as many sessions costs one system call instead of one
// write(2) each. A forward waits at most for the rest of its read batch
// (tens of microseconds at full load, nothing when one datagram came alone).
//
// Each queued packet is copied into the batch's own slot, behind its
// PROXY/SPP header if the server wants one: the decoded packet may live in a
// buffer the next datagram of the batch reuses. The slot's port is held
// (acquire) until the send, so a session ended meanwhile cannot have its
// descriptor closed, or its number reused, under the batch.
//
// Only its read loop touches a batch: no lock.
type forwardBatch struct {
	ring  *udp.SendRing
	fwd   *metrics.Counter // the read loop's shard of proxy_forwarded_total
	ports []*serverPort
	fds   []int32
	bufs  [][]byte // the slots' queued datagrams, views of store
	store [][]byte // a slot each: header and packet
	res   []int32
}

// slotSize is a slot's room: the largest header and the largest packet.
const slotSize = proxyproto.MaxLen + raic.MaxPacket

func newForwardBatch(ring *udp.SendRing, fwd *metrics.Counter) *forwardBatch {
	n := ring.Entries()
	b := &forwardBatch{ring: ring, fwd: fwd,
		ports: make([]*serverPort, 0, n), fds: make([]int32, 0, n), bufs: make([][]byte, 0, n),
		store: make([][]byte, n), res: make([]int32, n)}
	for i := range b.store {
		b.store[i] = make([]byte, slotSize)
	}
	return b
}

// newForwardBatches makes a batch per read loop, or none where the kernel
// gives no io_uring send or io_uring = false (then every forward is its own
// write).
func (s *Server) newForwardBatches() {
	if !s.cfg.IOURing {
		return
	}
	for w := 0; w < s.in.Workers(); w++ {
		ring, err := udp.NewSendRing(udp.MaxBatch)
		if err != nil {
			s.closeForwardBatches()
			if errors.Is(err, udp.ErrRingUnsupported) {
				s.log.Info("io_uring not available: forwarding with a write per packet", "err", err)
			} else {
				s.log.Warn("send ring", "err", err)
			}
			return
		}
		s.batches = append(s.batches, newForwardBatch(ring, s.m.forwarded.Shard(w+1)))
	}
}

// forwardMode says how forwards on the sessions' own sockets leave, for the
// start-up log: "io_uring" (a submission per read batch) or "write" (a
// write per packet: io_uring = false, or none in the kernel).
func (s *Server) forwardMode() string {
	if len(s.batches) > 0 {
		return "io_uring"
	}
	return "write"
}

func (s *Server) closeForwardBatches() {
	for _, b := range s.batches {
		b.ring.Close()
	}
	s.batches = nil
}

// batchOf is read loop w's batch; nil outside a read loop (w < 0: a TCP
// fallback connection's datagrams) or without io_uring.
func (s *Server) batchOf(w int) *forwardBatch {
	if w < 0 || w >= len(s.batches) {
		return nil
	}
	return s.batches[w]
}

// queue adds ps's packet to the batch, sending the batch first if it is full.
func (b *forwardBatch) queue(s *Server, ps *proxySession, sp *serverPort, pkt []byte) {
	if len(b.fds) == cap(b.fds) {
		b.flush(s)
	}
	if !sp.acquire() {
		s.m.upstreamErrors.Inc() // the session's port closed under it, as a write would say
		return
	}
	slot := b.store[len(b.fds)]
	n := 0
	if ps.header != proxyproto.None {
		n = ps.clientAddrHeader(slot)
	}
	n += copy(slot[n:], pkt)
	b.ports = append(b.ports, sp)
	b.fds = append(b.fds, sp.fd)
	b.bufs = append(b.bufs, slot[:n])
}

// flush sends what is queued, one submission for all; a datagram whose
// socket's buffer was full is written again the way a lone forward is
// (waiting a little for room), any other failure counted.
func (b *forwardBatch) flush(s *Server) {
	n := len(b.fds)
	if n == 0 {
		return
	}
	res := b.res[:n]
	if err := b.ring.Send(b.fds, b.bufs, res); err != nil {
		for i := range res {
			res[i] = -int32(unix.EAGAIN) // the ring failed: each goes by write below
		}
	}
	sent := 0
	for i, r := range res {
		switch {
		case r >= 0:
			sent++
		case r == -int32(unix.EAGAIN) && b.ports[i].write(b.bufs[i]) == nil:
			sent++
		default:
			s.m.upstreamErrors.Inc()
		}
		b.ports[i].release()
		b.ports[i] = nil
	}
	b.fwd.Add(uint64(sent))
	b.ports, b.fds, b.bufs = b.ports[:0], b.fds[:0], b.bufs[:0]
}

// endBatch sends what read loop w queued in its batch: the forwards on the
// sessions' own sockets and those on the shared ones (ingress AfterBatch).
func (s *Server) endBatch(w int) {
	if b := s.batchOf(w); b != nil {
		b.flush(s)
	}
	if s.shared != nil {
		s.shared.flushWorker(w)
	}
}
