package tcpsplit

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"

	"github.com/quic-go/quic-go"
)

// A flow's bytes travel on one QUIC stream, or, for a latency-critical flow,
// on one stream per uplink at once: every frame is written to each of them and
// the far side keeps the first copy of each frame (frames are numbered by
// their order, identical on every stream). A segment lost on one uplink then
// costs nothing while the other uplink's copy arrives: the stream stalls only
// when every uplink loses the same data.

// queueFrames bounds the frames waiting for one stream of a duplicated flow;
// a stream that falls that far behind (its uplink is dead or far slower) is
// dropped from the flow, unless it is the last one.
const queueFrames = 256

// Stream error codes.
const (
	codeCancel quic.StreamErrorCode = 1
	codeBehind quic.StreamErrorCode = 2
)

// sendGroup writes each frame to every stream of a flow.
type sendGroup struct {
	mu      sync.Mutex
	outs    []*sendOut
	sent    uint64 // frames written so far
	closed  bool   // the flow's sender finished (FIN sent or queued)
	streams int    // outs still live
}

type sendOut struct {
	s    *quic.Stream
	q    chan []byte // nil for a flow with one stream: written directly
	dead bool
}

// add attaches s and returns the index of the first frame it will carry.
func (g *sendGroup) add(s *quic.Stream, dup bool) uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	o := &sendOut{s: s}
	if dup {
		o.q = make(chan []byte, queueFrames)
		go o.run()
	}
	if g.closed {
		o.finish()
	} else {
		g.outs = append(g.outs, o)
		g.streams++
	}
	return g.sent
}

func (o *sendOut) run() {
	for f := range o.q {
		if _, err := o.s.Write(f); err != nil {
			o.s.CancelWrite(codeCancel)
			for range o.q {
			}
			return
		}
	}
	o.s.Close()
}

func (o *sendOut) finish() {
	if o.q != nil {
		close(o.q)
	} else {
		o.s.Close()
	}
}

// write sends frame f on every live stream. It fails when no stream is left.
func (g *sendGroup) write(f []byte) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.sent++
	for _, o := range g.outs {
		if o.dead {
			continue
		}
		if o.q == nil {
			if _, err := o.s.Write(f); err != nil {
				o.dead = true
				g.streams--
			}
			continue
		}
		c := append([]byte(nil), f...)
		select {
		case o.q <- c:
		default:
			if g.streams > 1 {
				o.dead = true
				g.streams--
				o.s.CancelWrite(codeBehind)
				close(o.q)
				continue
			}
			o.q <- c // the last stream: wait for it (flow control)
		}
	}
	if g.streams == 0 {
		return errors.New("tcpsplit: every stream of the flow failed")
	}
	return nil
}

// finish sends FIN on every stream once its queued frames are out.
func (g *sendGroup) finish() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return
	}
	g.closed = true
	for _, o := range g.outs {
		if !o.dead {
			o.finish()
		}
	}
}

// abort resets every stream.
func (g *sendGroup) abort() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	for _, o := range g.outs {
		if !o.dead {
			o.dead = true
			o.s.CancelWrite(codeCancel)
			if o.q != nil {
				close(o.q)
			}
		}
	}
	g.streams = 0
}

// recvGroup delivers the frames of a flow's streams, first copy first, to a
// TCP socket.
type recvGroup struct {
	dst     net.Conn
	mu      sync.Mutex
	cond    sync.Cond // on mu: next moved, or a reader left
	next    uint64    // the next frame index to deliver
	readers int       // streams still being read
	waiting int       // readers holding a frame beyond next (a stream that joined late)
	preset  bool      // readers was set to the streams' count up front
	eof     bool      // one stream ended cleanly: everything was delivered
	failed  bool
	done    chan struct{} // closed when the direction is over
	onDup   func(int)     // frames that arrived as later copies (counted)
}

func newRecvGroup(dst net.Conn) *recvGroup {
	g := &recvGroup{dst: dst, done: make(chan struct{})}
	g.cond.L = &g.mu
	return g
}

// newRecvGroupOf is a recvGroup for a known number of streams (the router
// opens them all at once). Counting them up front matters: a stream that
// joined the proxy's side late may be read first, and must wait for the
// others rather than conclude that nobody will fill the gap before it.
func newRecvGroupOf(dst net.Conn, streams int) *recvGroup {
	g := newRecvGroup(dst)
	g.readers, g.preset = streams, true
	return g
}

// read reads frames from s (whose first frame has index base) until it ends.
func (g *recvGroup) read(s io.Reader, cancel func(), base uint64) {
	g.mu.Lock()
	if g.eof || g.failed {
		g.mu.Unlock()
		cancel()
		return
	}
	if !g.preset {
		g.readers++
	}
	g.mu.Unlock()
	buf := make([]byte, 0, MaxChunk)
	var scratch []byte
	idx := base
	for {
		payload, sc, err := readFrame(s, buf, scratch)
		scratch = sc
		g.mu.Lock()
		if g.eof || g.failed {
			g.mu.Unlock()
			cancel()
			g.leave(false)
			return
		}
		if err != nil {
			g.mu.Unlock()
			clean := errors.Is(err, io.EOF) && idx >= g.next
			if !clean {
				cancel()
			}
			g.leave(clean)
			return
		}
		// A stream that joined late starts beyond next: its frames wait
		// until the earlier streams have delivered up to them. If every
		// other reader is gone or waiting too, the gap can never fill.
		for idx > g.next && !g.eof && !g.failed {
			if g.waiting+1 >= g.readers {
				g.failed = true
				close(g.done)
				g.cond.Broadcast()
				break
			}
			g.waiting++
			g.cond.Wait()
			g.waiting--
		}
		if g.eof || g.failed {
			g.mu.Unlock()
			cancel()
			g.leave(false)
			return
		}
		if idx == g.next {
			if _, werr := g.dst.Write(payload); werr != nil {
				g.failed = true
				g.mu.Unlock()
				cancel()
				g.leave(false)
				return
			}
			g.next++
			g.cond.Broadcast()
		} else if g.onDup != nil {
			g.onDup(1)
		}
		idx++
		g.mu.Unlock()
	}
}

// endedCleanly tells, once done is closed, whether the direction ended with
// every frame delivered (a FIN) rather than failed.
func (g *recvGroup) endedCleanly() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.eof
}

// leave is called by each reader when it stops; clean means its stream ended
// with FIN after every frame.
func (g *recvGroup) leave(clean bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	defer g.cond.Broadcast()
	g.readers--
	if clean && !g.eof && !g.failed {
		g.eof = true
		if tc, ok := g.dst.(interface{ CloseWrite() error }); ok {
			tc.CloseWrite()
		}
		close(g.done)
		return
	}
	if (g.readers == 0 || g.waiting >= g.readers) && !g.eof && !g.failed {
		g.failed = true
		close(g.done)
	}
}

// streamHeader opens every stream the router starts for a flow.
//
//	version (1) · flags (1) · flow ID (8) · address length (1: 4 or 16) · address · port (2)
//
// The proxy answers status (1) · base (8): the index of the first frame it
// sends on this stream.
const headerVersion = 1

const (
	flagCompress = 1 << iota // the proxy compresses its direction too
	flagDup                  // more streams of this flow follow, one per uplink
)

// Status answers.
const (
	statusOK        = 0
	statusForbidden = 1
	statusDialFail  = 2
	statusGone      = 3
)

func putHeader(b []byte, flags byte, id uint64, target net.TCPAddr) []byte {
	b = append(b, headerVersion, flags)
	b = binary.BigEndian.AppendUint64(b, id)
	ip := target.IP.To4()
	if ip == nil {
		ip = target.IP.To16()
	}
	b = append(b, byte(len(ip)))
	b = append(b, ip...)
	return binary.BigEndian.AppendUint16(b, uint16(target.Port))
}
