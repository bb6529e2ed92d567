package tcpmux

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/raicnet/raic/pkg/wire"
)

// Window sizes. A stream's window bounds what one flow may have in flight,
// the connection's bounds all of them together; a stream that stops reading
// (a LAN client that does not keep up) fills only its own window.
const (
	StreamWindow     = 4 << 20
	ConnectionWindow = 32 << 20
	// KeepAlive keeps NAT bindings on the path open and the connection warm,
	// so a new flow starts without a handshake.
	KeepAlive = 5 * time.Second
	// IdleTimeout ends a connection whose peer went silent.
	IdleTimeout = 20 * time.Second
	// MaxStreams is how many flows one router may have open at once.
	MaxStreams = 1024
)

// QUICConfig is the QUIC configuration both sides use.
func QUICConfig() *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:           AuthTimeout,
		MaxIdleTimeout:                 IdleTimeout,
		KeepAlivePeriod:                KeepAlive,
		InitialStreamReceiveWindow:     512 << 10,
		MaxStreamReceiveWindow:         StreamWindow,
		InitialConnectionReceiveWindow: 1 << 20,
		MaxConnectionReceiveWindow:     ConnectionWindow,
		MaxIncomingStreams:             MaxStreams,
		MaxIncomingUniStreams:          -1,
	}
}

// Conn is an authenticated QUIC connection: stream 0 carried the key proofs,
// every later stream is one flow.
type Conn struct {
	*quic.Conn
	// ClientID is the authenticated router.
	ClientID string
	// Token is the connect token the router authenticated with, on the
	// proxy's side; nil for a pre-shared key (and on the router's side).
	Token []byte
	tr    *quic.Transport // owned by a dialled connection, nil on the proxy
}

// Close ends the connection (and, on the router, its socket).
func (c *Conn) Close() error {
	err := c.CloseWithError(0, "closed")
	if c.tr != nil {
		c.tr.Close()
	}
	return err
}

// Dial opens a QUIC connection to the proxy at addr from pc (a socket bound to
// one uplink; Close closes it) and authenticates it with the client key.
func Dial(ctx context.Context, pc net.PacketConn, addr *net.UDPAddr, clientID string, key wire.Key) (*Conn, error) {
	return dial(ctx, pc, addr, clientID, nil, key)
}

// DialToken is Dial for a router admitted by a connect token: it presents
// tok and proves key, the client key sealed in it, as DialFramesToken does.
func DialToken(ctx context.Context, pc net.PacketConn, addr *net.UDPAddr, tok []byte, key wire.Key) (*Conn, error) {
	return dial(ctx, pc, addr, "token", tok, key)
}

func dial(ctx context.Context, pc net.PacketConn, addr *net.UDPAddr, clientID string, tok []byte, key wire.Key) (*Conn, error) {
	tr := &quic.Transport{Conn: pc}
	qc, err := tr.Dial(ctx, addr, ClientTLS(), QUICConfig())
	if err != nil {
		tr.Close()
		return nil, err
	}
	c := &Conn{Conn: qc, ClientID: clientID, tr: tr}
	s, err := qc.OpenStreamSync(ctx)
	if err == nil {
		if dl, ok := ctx.Deadline(); ok {
			s.SetDeadline(dl)
		}
		err = clientAuth(s, qc.ConnectionState().TLS, clientID, tok, key) // tok, when set, in place of the ID
		s.SetDeadline(time.Time{})
		s.Close()
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Listener accepts authenticated QUIC connections.
type Listener struct {
	ln   *quic.Listener
	keys KeyLookup
	// Tokens, if set before the first Accept, admits routers by a connect
	// token too (see FrameListener.Tokens); nil refuses them.
	Tokens TokenLookup
	// MaxPending, if set before the first Accept, bounds the connections
	// authenticating at once (0: MaxPendingAuth); one more is refused.
	MaxPending int

	start  sync.Once
	authed chan *Conn
	done   chan struct{} // closed when the accept loop ends, err set
	err    error
}

// MaxPendingAuth is how many connections may be authenticating at once by
// default. Each has AuthTimeout to prove its key, in parallel, so a peer that
// never does holds up nobody else.
const MaxPendingAuth = 1024

// ErrBusy refuses a connection while MaxPending others are authenticating.
var ErrBusy = errors.New("tcpmux: too many connections authenticating")

// Listen serves QUIC on pc; keys finds the clients' keys.
func Listen(pc net.PacketConn, keys KeyLookup) (*Listener, error) {
	tc, err := ServerTLS()
	if err != nil {
		return nil, err
	}
	ln, err := quic.Listen(pc, tc, QUICConfig())
	if err != nil {
		return nil, err
	}
	return &Listener{ln: ln, keys: keys, authed: make(chan *Conn), done: make(chan struct{})}, nil
}

// Accept returns the next connection that authenticated. Connections
// authenticate in parallel, each within AuthTimeout, from the first call on:
// that call's ctx ends them all and its onRefused, if set, is told of every
// peer that failed (from any goroutine), which is closed without a word.
func (l *Listener) Accept(ctx context.Context, onRefused func(error)) (*Conn, error) {
	l.start.Do(func() { go l.run(ctx, onRefused) })
	select {
	case c := <-l.authed:
		return c, nil
	case <-l.done:
		return nil, l.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *Listener) run(ctx context.Context, onRefused func(error)) {
	defer close(l.done)
	n := l.MaxPending
	if n <= 0 {
		n = MaxPendingAuth
	}
	slots := make(chan struct{}, n)
	refuse := func(qc *quic.Conn, err error) {
		qc.CloseWithError(1, "")
		if onRefused != nil {
			onRefused(err)
		}
	}
	for {
		qc, err := l.ln.Accept(ctx)
		if err != nil {
			l.err = err
			return
		}
		select {
		case slots <- struct{}{}:
		default:
			refuse(qc, ErrBusy)
			continue
		}
		go func() {
			id, tok, err := l.authenticate(ctx, qc)
			<-slots
			if err != nil {
				refuse(qc, err)
				return
			}
			select {
			case l.authed <- &Conn{Conn: qc, ClientID: id, Token: tok}:
			case <-qc.Context().Done(): // closed (the listener too) before anyone took it
			case <-ctx.Done():
				qc.CloseWithError(0, "")
			}
		}()
	}
}

// authenticate runs the key proofs on the first stream of qc.
func (l *Listener) authenticate(ctx context.Context, qc *quic.Conn) (string, []byte, error) {
	actx, cancel := context.WithTimeout(ctx, AuthTimeout)
	defer cancel()
	s, err := qc.AcceptStream(actx)
	if err != nil {
		return "", nil, err
	}
	s.SetDeadline(time.Now().Add(AuthTimeout))
	defer s.Close()
	return serverAuth(s, qc.ConnectionState().TLS, l.keys, l.Tokens)
}

// Close stops accepting and closes every accepted connection.
func (l *Listener) Close() error { return l.ln.Close() }

// Addr is where the listener serves.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }
