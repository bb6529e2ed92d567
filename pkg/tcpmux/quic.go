package tcpmux

import (
	"context"
	"net"
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
}

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
	return &Listener{ln: ln, keys: keys}, nil
}

// Accept returns the next connection that authenticated. A peer that fails
// is closed without a word and Accept waits for the next; onRefused, if set,
// is told.
func (l *Listener) Accept(ctx context.Context, onRefused func(error)) (*Conn, error) {
	for {
		qc, err := l.ln.Accept(ctx)
		if err != nil {
			return nil, err
		}
		id, tok, err := func() (string, []byte, error) {
			actx, cancel := context.WithTimeout(ctx, AuthTimeout)
			defer cancel()
			s, err := qc.AcceptStream(actx)
			if err != nil {
				return "", nil, err
			}
			s.SetDeadline(time.Now().Add(AuthTimeout))
			defer s.Close()
			return serverAuth(s, qc.ConnectionState().TLS, l.keys, l.Tokens)
		}()
		if err != nil {
			qc.CloseWithError(1, "")
			if onRefused != nil {
				onRefused(err)
			}
			continue
		}
		return &Conn{Conn: qc, ClientID: id, Token: tok}, nil
	}
}

// Close stops accepting and closes every accepted connection.
func (l *Listener) Close() error { return l.ln.Close() }

// Addr is where the listener serves.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }
