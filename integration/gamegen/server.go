package gamegen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/raicnet/raic/pkg/mono"
)

// ServerConfig configures the game-server side of the generator.
type ServerConfig struct {
	// Listen is the UDP address to bind; port 0 picks a free one.
	Listen netip.AddrPort
	// Rate is the server's own tick stream to each client, in packets per
	// second; 0 sends no stream (echo only).
	Rate float64
	// Size is the length of each server tick in bytes (at least MinSize;
	// 0 means MinSize).
	Size int
	// Echo makes the server echo every client tick at once. A client can
	// also ask for echoes per packet (ClientConfig.Echo).
	Echo bool
	// IdleTimeout stops a client's stream when nothing arrived from it for
	// this long (default 5 s); its state is forgotten after twice that.
	IdleTimeout time.Duration
	// Spin is the pacer's busy-wait window before each due tick (see
	// ClientConfig.Spin); 0 sleeps only.
	Spin time.Duration
	// MaxClients bounds the per-client state (default 1024); datagrams from
	// further clients are counted in Overflow and dropped.
	MaxClients int
}

// Server answers generator clients: it receives and measures their ticks,
// sends each its own tick stream, echoes on request, and answers report
// requests with its counters.
type Server struct {
	cfg  ServerConfig
	conn *net.UDPConn
	addr netip.AddrPort

	quit      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once

	// Owned by the Serve goroutine.
	peers map[netip.AddrPort]*peer
	reply []byte

	malformed atomic.Uint64 // from addresses without a session
	overflow  atomic.Uint64
	sessions  atomic.Uint64
}

// peer is one client session, keyed by source address and run ID.
type peer struct {
	addr netip.AddrPort
	run  uint32
	recv receiver // owned by the Serve goroutine

	lastRecv atomic.Int64 // mono ns of the last datagram, read by the stream
	warmup   atomic.Bool  // the last client tick was a warm-up tick
	sent     atomic.Uint64
	nextSeq  uint64 // stream sequence number to resume from; stream-owned while running

	stop      chan struct{} // closed by Serve on a report request
	done      chan struct{} // closed by the stream goroutine when it exits
	streaming bool          // a stream goroutine was started and may still run
	stopped   bool          // stream ended for good by a report request
	finalSent uint64
	echoed    uint64
}

// NewServer validates cfg and binds its socket.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Size == 0 {
		cfg.Size = MinSize
	}
	if cfg.Size < MinSize || cfg.Size > MaxSize {
		return nil, fmt.Errorf("gamegen: server size %d out of range [%d, %d]", cfg.Size, MinSize, MaxSize)
	}
	if cfg.Rate < 0 || cfg.Rate > 1e6 {
		return nil, fmt.Errorf("gamegen: server rate %v out of range [0, 1e6]", cfg.Rate)
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 5 * time.Second
	}
	if cfg.MaxClients <= 0 {
		cfg.MaxClients = 1024
	}
	if !cfg.Listen.Addr().IsValid() { // ":port": every address, IPv4 and IPv6
		cfg.Listen = netip.AddrPortFrom(netip.IPv6Unspecified(), cfg.Listen.Port())
	}
	cfg.Listen = netip.AddrPortFrom(cfg.Listen.Addr().Unmap(), cfg.Listen.Port())
	conn, err := net.ListenUDP(udpNetwork(cfg.Listen.Addr()), net.UDPAddrFromAddrPort(cfg.Listen))
	if err != nil {
		return nil, fmt.Errorf("gamegen: listen: %w", err)
	}
	setBuffers(conn)
	return &Server{
		cfg:   cfg,
		conn:  conn,
		addr:  conn.LocalAddr().(*net.UDPAddr).AddrPort(),
		quit:  make(chan struct{}),
		peers: make(map[netip.AddrPort]*peer),
		reply: make([]byte, HeaderLen+replyBodyLen),
	}, nil
}

// socketBuffer is the socket buffer size the generator asks for: a measuring
// tool must not lose packets to its own scheduling hiccups (4 MiB is 400 ms
// of 1,000-byte ticks at 10,000 pps). The kernel caps it at rmem_max and
// wmem_max; a smaller buffer is not an error.
const socketBuffer = 4 << 20

func setBuffers(c *net.UDPConn) {
	c.SetReadBuffer(socketBuffer)
	c.SetWriteBuffer(socketBuffer)
}

// udpNetwork keeps an IPv4 address on an IPv4 socket, so source addresses
// come back in the same form (not IPv4-mapped IPv6).
func udpNetwork(a netip.Addr) string {
	if a.Is4() || a.Is4In6() {
		return "udp4"
	}
	return "udp"
}

// transient reports whether a socket error is the echo of an ICMP error for
// an earlier datagram (a peer gone, a route missing): on UDP that concerns
// one peer, not the socket, so reading goes on.
func transient(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EMSGSIZE)
}

// Addr returns the bound address.
func (s *Server) Addr() netip.AddrPort { return s.addr }

// Malformed counts datagrams that were not well-formed generator client
// datagrams and came from addresses without a session (those from a
// session's address are reported to that client), and report requests for
// sessions the server does not know.
func (s *Server) Malformed() uint64 { return s.malformed.Load() }

// Overflow counts datagrams dropped because MaxClients sessions existed.
func (s *Server) Overflow() uint64 { return s.overflow.Load() }

// Sessions counts client sessions started since the server was created.
func (s *Server) Sessions() uint64 { return s.sessions.Load() }

// Close releases the socket. Serve closes it too when it returns.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() { err = s.conn.Close() })
	return err
}

const sweepEvery = time.Second

// Serve runs until ctx is done or the socket fails, then stops every stream
// and closes the socket. It returns nil after cancellation. Call it once.
func (s *Server) Serve(ctx context.Context) error {
	defer s.Close()
	defer func() {
		close(s.quit)
		s.wg.Wait()
	}()
	unblock := context.AfterFunc(ctx, func() { s.conn.SetReadDeadline(time.Unix(1, 0)) })
	defer unblock()

	buf := make([]byte, maxReadLen)
	nextSweep := mono.Now() + int64(sweepEvery)
	s.conn.SetReadDeadline(time.Now().Add(sweepEvery))
	for {
		n, addr, err := s.conn.ReadFromUDPAddrPort(buf)
		now := mono.Now()
		if ctx.Err() != nil {
			return nil
		}
		if now >= nextSweep {
			s.sweep(now)
			nextSweep = now + int64(sweepEvery)
			s.conn.SetReadDeadline(time.Now().Add(sweepEvery))
			if ctx.Err() != nil { // cancelled between the read and the reset
				return nil
			}
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			if transient(err) {
				continue
			}
			return fmt.Errorf("gamegen: read: %w", err)
		}
		s.handle(buf[:n], addr, now)
	}
}

// handle processes one datagram; it runs on the Serve goroutine.
func (s *Server) handle(b []byte, addr netip.AddrPort, now int64) {
	h, ok := parseHeader(b)
	p := s.peers[addr]
	if !ok || (h.kind != KindClientTick && h.kind != KindReportReq) {
		if p != nil {
			p.recv.malformed++
		} else {
			s.malformed.Add(1)
		}
		return
	}
	if p == nil || p.run != h.run {
		if h.kind != KindClientTick {
			// A report request for a session we do not have (say, forgotten
			// after a long idle): stay silent, the client reports no server data.
			s.malformed.Add(1)
			return
		}
		if p == nil && len(s.peers) >= s.cfg.MaxClients {
			s.overflow.Add(1)
			return
		}
		if p != nil && p.streaming && !p.stopped {
			close(p.stop) // a restarted client: end the old session's stream
		}
		p = &peer{addr: addr, run: h.run}
		s.peers[addr] = p
		s.sessions.Add(1)
	}
	p.lastRecv.Store(now)

	if h.kind == KindReportReq {
		s.report(p)
		return
	}

	warm := h.flags&flagWarmup != 0
	p.warmup.Store(warm)
	if warm {
		p.recv.warmup++
	} else {
		p.recv.deadline = int64(h.dl) * int64(deadlineUnit)
		p.recv.add(h.seq, h.ts, now)
	}
	if s.cfg.Echo || h.flags&flagEcho != 0 {
		b[5] = KindEcho // everything else, the client's timestamp included, stays
		if _, err := s.conn.WriteToUDPAddrPort(b, addr); err == nil && !warm {
			p.echoed++
		}
	}
	if s.cfg.Rate > 0 && !p.stopped && !p.running() {
		p.stop = make(chan struct{})
		p.done = make(chan struct{})
		p.streaming = true
		s.wg.Add(1)
		go s.stream(p)
	}
}

// running reports whether the peer's stream goroutine is still alive.
func (p *peer) running() bool {
	if !p.streaming {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// report ends the peer's stream (once) and sends its counters.
func (s *Server) report(p *peer) {
	if !p.stopped {
		if p.streaming {
			close(p.stop)
			<-p.done // the stream's sent count is final only after it exits
		}
		p.stopped = true
		p.finalSent = p.sent.Load()
	}
	r := serverReply{
		up:       p.recv.stats(),
		downSent: p.finalSent,
		rate:     s.cfg.Rate,
		size:     uint64(s.cfg.Size),
		echoed:   p.echoed,
	}
	putHeader(s.reply, header{kind: KindReportReply, run: p.run}, len(s.reply))
	r.marshal(s.reply[HeaderLen:])
	s.conn.WriteToUDPAddrPort(s.reply, p.addr)
}

// sweep forgets sessions idle for twice the idle timeout whose stream ended.
func (s *Server) sweep(now int64) {
	for a, p := range s.peers {
		if now-p.lastRecv.Load() > 2*int64(s.cfg.IdleTimeout) && !p.running() {
			delete(s.peers, a)
		}
	}
}

// stream sends the server's own ticks to one client until the client goes
// idle, a report request stops it, or the server shuts down.
func (s *Server) stream(p *peer) {
	defer s.wg.Done()
	defer close(p.done)
	buf := make([]byte, s.cfg.Size)
	putHeader(buf, header{kind: KindServerTick, run: p.run}, len(buf))
	pc := newPacer(mono.Now(), s.cfg.Rate, s.cfg.Spin)
	defer pc.close()
	idle := int64(s.cfg.IdleTimeout)
	seq := p.nextSeq
	defer func() { p.nextSeq = seq }()
	for i := uint64(0); ; i++ {
		if !pc.waitUntil(pc.due(i), p.stop, s.quit) {
			return
		}
		now := mono.Now()
		if now-p.lastRecv.Load() > idle {
			return
		}
		warm := p.warmup.Load()
		buf[6] = 0
		if warm {
			buf[6] = flagWarmup
		}
		setSeqTs(buf, seq, now)
		seq++
		if _, err := s.conn.WriteToUDPAddrPort(buf, p.addr); err == nil && !warm {
			p.sent.Add(1)
		}
	}
}
