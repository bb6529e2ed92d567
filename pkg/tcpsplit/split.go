// Package tcpsplit carries TCP flows between a router and its proxy as split
// connections: the router terminates the LAN client's TCP connection, the flow's
// bytes cross on QUIC streams of the aggregated connection (package tcpmux),
// and the proxy opens its own TCP connection to the server. Each of the three
// legs runs its own congestion control: the long router–proxy leg runs on a
// connection that is already open and warm, so a new flow pays no handshake
// and no slow start there, and a loss on the LAN or near the server is
// repaired over the short leg where it happened.
//
// Per flow, the router's config chooses compression (zstd, skipped for chunks
// that do not shrink) and duplication (the flow's frames on every uplink's
// connection, the first copy kept; see group.go).
package tcpsplit

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/raicnet/raic/pkg/allow"
	"github.com/raicnet/raic/pkg/tcpmux"
)

// Rule says how a flow is carried.
type Rule struct {
	Compress  bool // zstd on both directions
	Duplicate bool // on every connection (uplink) at once
}

// Conns gives the router's live aggregated connections, best first.
type Conns interface {
	Live() []*tcpmux.Conn
}

// openTimeout bounds opening a flow's streams.
const openTimeout = 3 * time.Second

// Carry carries one accepted LAN connection to target through the proxy, and
// returns when the flow is over. It closes lan.
func Carry(lan net.Conn, target netip.AddrPort, rule Rule, conns Conns, stats *Stats, log *slog.Logger) {
	defer lan.Close()
	live := conns.Live()
	// Just after start or while a connection is being re-made: wait a little
	// rather than refuse at once.
	for wait := 0; len(live) == 0 && wait < 20; wait++ {
		time.Sleep(100 * time.Millisecond)
		live = conns.Live()
	}
	if len(live) == 0 {
		stats.Refused.Inc()
		log.Debug("tcp flow refused: no connection to the proxy", "target", target.String())
		return
	}
	if !rule.Duplicate {
		live = live[:1]
	}
	var idb [8]byte
	rand.Read(idb[:])
	id := binary.BigEndian.Uint64(idb[:])
	var flags byte
	if rule.Compress {
		flags |= flagCompress
	}
	if rule.Duplicate {
		flags |= flagDup
	}
	hdr := putHeader(nil, flags, id, *net.TCPAddrFromAddrPort(target))

	ctx, cancel := context.WithTimeout(context.Background(), openTimeout)
	var streams []*quic.Stream
	for _, c := range live {
		s, err := c.OpenStreamSync(ctx)
		if err != nil {
			continue
		}
		if _, err := s.Write(hdr); err != nil {
			s.CancelWrite(codeCancel)
			s.CancelRead(codeCancel)
			continue
		}
		streams = append(streams, s)
	}
	cancel()
	if len(streams) == 0 {
		stats.Refused.Inc()
		return
	}
	stats.Flows.Inc()
	stats.Active.Add(1)
	defer stats.Active.Add(-1)

	var out sendGroup
	for _, s := range streams {
		out.add(s, rule.Duplicate)
	}
	in := newRecvGroupOf(lan, len(streams))
	var refused sync.Once
	for _, s := range streams {
		go func() {
			var ans [9]byte
			if _, err := io.ReadFull(s, ans[:]); err != nil || ans[0] != statusOK {
				if err == nil {
					refused.Do(func() {
						stats.Refused.Inc()
						log.Info("tcp flow refused by the proxy", "target", target.String(), "status", ans[0])
					})
				}
				s.CancelRead(codeCancel)
				in.read(eofReader{}, func() {}, ^uint64(0)) // counts as a failed reader
				return
			}
			in.read(s, func() { s.CancelRead(codeCancel) }, binary.BigEndian.Uint64(ans[1:]))
		}()
	}
	pump(lan, &out, rule.Compress, stats, in)
}

// eofReader fails at once; it lets a refused stream count as a failed reader.
type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

// pump sends src's bytes on out as frames until src ends, then waits for the
// other direction (in). A failed other direction aborts both at once; the
// caller then closes src.
func pump(src net.Conn, out *sendGroup, compress bool, stats *Stats, in *recvGroup) {
	f := framer{compress: compress, stats: stats}
	buf := make([]byte, MaxChunk)
	readErr := make(chan error, 1)
	go func() {
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if werr := out.write(f.frame(buf[:n])); werr != nil {
					readErr <- werr
					return
				}
			}
			if err != nil {
				readErr <- err
				return
			}
		}
	}()
	select {
	case err := <-readErr:
		if errors.Is(err, io.EOF) {
			out.finish()
			<-in.done
		} else {
			out.abort()
		}
	case <-in.done:
		// The other direction ended first: with a clean end, keep sending
		// until src ends (a half-closed TCP connection); on failure (a
		// refused flow, streams reset) stop now, and the caller closes
		// src, rather than wait for a peer that waits for an answer.
		if !in.endedCleanly() {
			out.abort()
			return
		}
		err := <-readErr
		if errors.Is(err, io.EOF) {
			out.finish()
		} else {
			out.abort()
		}
	}
}

// Server is the proxy's side: it accepts flows on authenticated connections
// and opens their TCP connections to allowed servers only.
type Server struct {
	// Allowed returns the allowlist of the router on c, asked for each new
	// flow: a [[client]]'s by c.ClientID, or, when c.Token is set, the
	// servers of that connect token (if it is still valid).
	Allowed func(c *tcpmux.Conn) (allow.List, bool)
	Stats   *Stats
	Log     *slog.Logger
	// DialTimeout bounds connecting to a server (default 5 s).
	DialTimeout time.Duration
	// MaxFlowsPerClient bounds one client's live flows (default
	// DefaultMaxFlowsPerClient), so that one router cannot take the whole
	// flow table from the others.
	MaxFlowsPerClient int

	mu        sync.Mutex
	flows     map[flowKey]*proxyFlow
	perClient map[clientKey]int // live (not gone) flows of each client
}

// clientKey is whose flow it is.
type clientKey struct {
	client string
	token  bool // a token's client ID is the minter's, apart from [[client]] IDs
}

type flowKey struct {
	clientKey
	id uint64
}

// proxyFlow is one flow at the proxy; it outlives its TCP connection for a
// while (gone) so that a late duplicate stream is refused, not dialled again.
type proxyFlow struct {
	ready chan struct{} // closed when the dial finished
	conn  net.Conn      // nil if the dial failed
	out   sendGroup
	in    *recvGroup
	gone  bool
	dup   bool
}

// MaxFlows bounds the proxy's flow table; ended flows are forgotten first.
// DefaultMaxFlowsPerClient is a client's share of it unless
// Server.MaxFlowsPerClient says otherwise.
const (
	MaxFlows                 = 65536
	DefaultMaxFlowsPerClient = MaxFlows / 16
)

// Why the flow table refused a flow (Server.flow).
var (
	errTableFull  = errors.New("flow table full")
	errClientFull = errors.New("the client's share of the flow table is full")
)

// ServeConn serves every stream of c until c ends.
func (s *Server) ServeConn(ctx context.Context, c *tcpmux.Conn) {
	for {
		st, err := c.AcceptStream(ctx)
		if err != nil {
			return
		}
		go s.serveStream(c, st)
	}
}

func (s *Server) serveStream(c *tcpmux.Conn, st *quic.Stream) {
	client := c.ClientID
	st.SetReadDeadline(time.Now().Add(openTimeout))
	var h [12]byte
	if _, err := io.ReadFull(st, h[:11]); err != nil || h[0] != headerVersion || (h[10] != 4 && h[10] != 16) {
		st.CancelRead(codeCancel)
		st.CancelWrite(codeCancel)
		return
	}
	ab := make([]byte, int(h[10])+2)
	if _, err := io.ReadFull(st, ab); err != nil {
		st.CancelRead(codeCancel)
		st.CancelWrite(codeCancel)
		return
	}
	st.SetReadDeadline(time.Time{})
	flags, id := h[1], binary.BigEndian.Uint64(h[2:10])
	a, _ := netip.AddrFromSlice(ab[:len(ab)-2])
	target := netip.AddrPortFrom(a.Unmap(), binary.BigEndian.Uint16(ab[len(ab)-2:]))
	refuse := func(status byte) {
		st.Write([]byte{status, 0, 0, 0, 0, 0, 0, 0, 0})
		st.Close()
		st.CancelRead(codeCancel)
	}
	if list, ok := s.Allowed(c); !ok || !list.Allows(target) {
		s.Stats.Refused.Inc()
		s.Log.Warn("tcp target refused: not in the client's allowlist (or its token's servers, while valid)", "client", client, "token", c.Token != nil, "target", target.String())
		refuse(statusForbidden)
		return
	}
	key := flowKey{clientKey{client, c.Token != nil}, id}
	fl, created, err := s.flow(key, flags&flagDup != 0)
	if err != nil {
		s.Stats.Refused.Inc()
		s.Log.Warn("tcp flow refused: "+err.Error(), "client", client, "max", MaxFlows, "max_per_client", s.maxPerClient())
		refuse(statusGone)
		return
	}
	if created {
		d := net.Dialer{Timeout: s.DialTimeout}
		if d.Timeout == 0 {
			d.Timeout = 5 * time.Second
		}
		conn, err := d.Dial("tcp", target.String())
		if err != nil {
			s.Stats.Refused.Inc()
			s.Log.Info("tcp dial failed", "client", client, "target", target.String(), "err", err)
		} else {
			fl.conn = conn
			fl.in = newRecvGroup(conn)
		}
		close(fl.ready)
		if fl.conn == nil {
			s.end(key, fl)
			refuse(statusDialFail)
			return
		}
		s.Stats.Flows.Inc()
		s.Stats.Active.Add(1)
		go func() {
			pump(conn, &fl.out, flags&flagCompress != 0, s.Stats, fl.in)
			conn.Close()
			s.Stats.Active.Add(-1)
			s.end(key, fl)
		}()
	} else {
		<-fl.ready
	}
	s.mu.Lock()
	gone := fl.gone || fl.conn == nil
	s.mu.Unlock()
	if gone {
		refuse(statusGone)
		return
	}
	// Status and base go out with the first frame's bytes (one write).
	var ans [9]byte
	base := fl.out.add(st, fl.dup)
	ans[0] = statusOK
	binary.BigEndian.PutUint64(ans[1:], base)
	if _, err := st.Write(ans[:]); err != nil {
		return
	}
	fl.in.read(st, func() { st.CancelRead(codeCancel) }, 0)
}

func (s *Server) flow(k flowKey, dup bool) (*proxyFlow, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.flows == nil {
		s.flows = map[flowKey]*proxyFlow{}
		s.perClient = map[clientKey]int{}
	}
	if fl, ok := s.flows[k]; ok {
		return fl, false, nil
	}
	if s.perClient[k.clientKey] >= s.maxPerClient() {
		return nil, false, errClientFull
	}
	if len(s.flows) >= MaxFlows {
		for k2, fl := range s.flows {
			if fl.gone {
				delete(s.flows, k2)
			}
		}
		if len(s.flows) >= MaxFlows {
			return nil, false, errTableFull
		}
	}
	fl := &proxyFlow{ready: make(chan struct{}), dup: dup}
	s.flows[k] = fl
	s.perClient[k.clientKey]++
	return fl, true, nil
}

func (s *Server) maxPerClient() int {
	if s.MaxFlowsPerClient > 0 {
		return s.MaxFlowsPerClient
	}
	return DefaultMaxFlowsPerClient
}

// end marks a flow over and forgets it a little later (late duplicate streams
// of it are refused meanwhile).
func (s *Server) end(k flowKey, fl *proxyFlow) {
	s.mu.Lock()
	if !fl.gone {
		fl.gone = true
		if s.perClient[k.clientKey]--; s.perClient[k.clientKey] <= 0 {
			delete(s.perClient, k.clientKey) // no entry kept for a client with no flow
		}
	}
	s.mu.Unlock()
	time.AfterFunc(30*time.Second, func() {
		s.mu.Lock()
		if s.flows[k] == fl {
			delete(s.flows, k)
		}
		s.mu.Unlock()
	})
}
