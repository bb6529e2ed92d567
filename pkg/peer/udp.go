package peer

import (
	"net"
	"net/netip"
	"sync"

	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/wire"
)

// Sockets is a plain Sender: one UDP socket per local uplink, each with a
// read loop that hands what arrives to a Link. It stands in for the router's
// uplink set (which adds batching and device binding) where a program or a
// test needs nothing more.
type Sockets struct {
	conns []PacketConn
	// Drop, when set, is asked before each send; true drops the datagram
	// (tests use it to cut paths).
	Drop func(uplink int, to netip.AddrPort) bool
	wg   sync.WaitGroup
}

// PacketConn is the socket of one uplink; *udp.Conn (pkg/udp) is one.
type PacketConn interface {
	ReadFrom(b []byte) (int, netip.AddrPort, error)
	WriteTo(b []byte, to netip.AddrPort) error
	LocalAddr() netip.AddrPort
	Close() error
}

// NewSockets takes over one open socket per uplink.
func NewSockets(conns []PacketConn) *Sockets { return &Sockets{conns: conns} }

// ListenSockets opens one socket per address (port 0 picks one).
func ListenSockets(addrs []netip.AddrPort) (*Sockets, error) {
	s := &Sockets{}
	for _, a := range addrs {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(a))
		if err != nil {
			s.Close()
			return nil, err
		}
		s.conns = append(s.conns, stdConn{c})
	}
	return s, nil
}

// stdConn adapts a *net.UDPConn.
type stdConn struct{ c *net.UDPConn }

func (s stdConn) ReadFrom(b []byte) (int, netip.AddrPort, error) { return s.c.ReadFromUDPAddrPort(b) }
func (s stdConn) WriteTo(b []byte, to netip.AddrPort) error {
	_, err := s.c.WriteToUDPAddrPort(b, to)
	return err
}
func (s stdConn) LocalAddr() netip.AddrPort { return s.c.LocalAddr().(*net.UDPAddr).AddrPort() }
func (s stdConn) Close() error              { return s.c.Close() }

// Addr returns the local address of uplink i.
func (s *Sockets) Addr(i int) netip.AddrPort { return s.conns[i].LocalAddr() }

// SendTo implements Sender.
func (s *Sockets) SendTo(i int, b []byte, to netip.AddrPort) error {
	if i < 0 || i >= len(s.conns) {
		return net.ErrClosed
	}
	if s.Drop != nil && s.Drop(i, to) {
		return nil
	}
	return s.conns[i].WriteTo(b, to)
}

// Serve starts a read loop per socket that passes each datagram to l.
func (s *Sockets) Serve(l *Link) {
	for i, c := range s.conns {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			buf := make([]byte, 2048)
			for {
				n, from, err := c.ReadFrom(buf)
				if err != nil {
					return
				}
				if n > wire.MaxDatagram+256 {
					continue
				}
				l.Receive(i, from, buf[:n], mono.Now())
			}
		}()
	}
}

// Close closes the sockets and waits for the read loops.
func (s *Sockets) Close() error {
	for _, c := range s.conns {
		c.Close()
	}
	s.wg.Wait()
	return nil
}
