package proxy

import (
	"errors"
	"net"
	"os"
	"syscall"

	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/tunnel"
	"golang.org/x/sys/unix"
)

// upstreamPoller reads what game servers send on the sessions' upstream
// sockets and hands it to their replies, for many sessions at once: one epoll
// set of sockets per worker, waited on through Go's netpoller (an epoll
// descriptor is itself pollable), one read buffer for all. A goroutine and a
// buffer per session would cost ~10 KB of memory per session, which at
// 100,000 sessions is a gigabyte.
type upstreamPoller struct {
	srv    *Server
	epfd   int
	file   *os.File // epfd, for the netpoller
	rc     syscall.RawConn
	events [64]unix.EpollEvent
	n      int
	buf    []byte
	// seal holds the datagrams of the replies sealed on this poller: one set
	// for all its sessions, not a set per session (proxySession.reply).
	seal tunnel.SealBuffers

	// Stored once, so the RawConn call builds no closure per call.
	waitFn func(fd uintptr) bool
	got    int   // the last read from a session's port
	rerr   error // and its error
}

func newUpstreamPoller(s *Server) (*upstreamPoller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	p := &upstreamPoller{srv: s, epfd: fd, file: os.NewFile(uintptr(fd), "upstream-epoll"), buf: make([]byte, maxServerPacket+1)}
	if p.rc, err = p.file.SyscallConn(); err != nil {
		p.file.Close()
		return nil, err
	}
	p.waitFn = p.wait
	return p, nil
}

// add watches ps's upstream socket; its events carry the session ID.
func (p *upstreamPoller) add(ps *proxySession) error {
	sp := ps.port.Load()
	if sp == nil {
		return nil
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(uint32(ps.id)), Pad: int32(uint32(ps.id >> 32))}
	return sp.epollCtl(p.epfd, unix.EPOLL_CTL_ADD, &ev)
}

// remove stops watching a session's socket sp; called before it is closed
// or handed to another session (keepport.go).
func (p *upstreamPoller) remove(sp *serverPort) {
	sp.epollCtl(p.epfd, unix.EPOLL_CTL_DEL, nil)
}

func (p *upstreamPoller) close() { p.file.Close() }

// wait is the netpoller callback: the ready sockets, or false to wait.
func (p *upstreamPoller) wait(fd uintptr) bool {
	for {
		n, err := unix.EpollWait(int(fd), p.events[:], 0)
		if err == unix.EINTR {
			continue
		}
		p.n = n
		return n > 0 || err != nil
	}
}

// perWake bounds the datagrams read from one socket per wake-up, so one busy
// server cannot starve the others.
const perWake = 8

// run serves until close.
func (p *upstreamPoller) run() {
	s := p.srv
	for {
		if err := p.rc.Read(p.waitFn); err != nil {
			if errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) || s.closing.Load() {
				return
			}
			continue
		}
		now := mono.Now() // once per wake-up
		for i := 0; i < p.n; i++ {
			ev := &p.events[i]
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			ps, ok := s.sessions.Peek(id)
			if !ok {
				continue
			}
			sp := ps.port.Load()
			if sp == nil {
				continue
			}
			for k := 0; k < perWake; k++ {
				// It never waits (level-triggered epoll says again when
				// more is queued).
				if p.got, p.rerr = sp.read(p.buf); p.rerr == errPortClosed {
					break // closed under us: the session ended
				}
				if p.rerr == unix.EAGAIN {
					break
				}
				if p.rerr != nil {
					// ICMP port unreachable from the server surfaces here; keep going.
					s.m.upstreamErrors.Inc()
					continue
				}
				if p.got > maxServerPacket {
					s.m.oversize.Inc()
					if ok, sup := s.refusedLog.Allow(); ok {
						s.log.Warn("server packet dropped: larger than the proxy carries back", "client", ps.Client.ID,
							"target", ps.target.String(), "limit_bytes", maxServerPacket, "lines_suppressed", sup)
					}
					continue
				}
				ps.reply(ps.stripReply(p.buf[:p.got]), now)
			}
		}
	}
}
