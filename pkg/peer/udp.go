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
	conns []*net.UDPConn
	// Drop, when set, is asked before each send; true drops the datagram
	// (tests use it to cut paths).
	Drop func(uplink int, to netip.AddrPort) bool
	wg   sync.WaitGroup
}

// ListenSockets opens one socket per address (port 0 picks one).
func ListenSockets(addrs []netip.AddrPort) (*Sockets, error) {
	s := &Sockets{}
	for _, a := range addrs {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(a))
		if err != nil {
			s.Close()
			return nil, err
		}
		s.conns = append(s.conns, c)
	}
	return s, nil
}

// Addr returns the local address of uplink i.
func (s *Sockets) Addr(i int) netip.AddrPort {
	return s.conns[i].LocalAddr().(*net.UDPAddr).AddrPort()
}

// SendTo implements Sender.
func (s *Sockets) SendTo(i int, b []byte, to netip.AddrPort) error {
	if i < 0 || i >= len(s.conns) {
		return net.ErrClosed
	}
	if s.Drop != nil && s.Drop(i, to) {
		return nil
	}
	_, err := s.conns[i].WriteToUDPAddrPort(b, to)
	return err
}

// Serve starts a read loop per socket that passes each datagram to l.
func (s *Sockets) Serve(l *Link) {
	for i, c := range s.conns {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			buf := make([]byte, 2048)
			for {
				n, from, err := c.ReadFromUDPAddrPort(buf)
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
