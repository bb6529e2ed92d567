package tcpmux

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/raicnet/raic/pkg/wire"
)

// MaxFrame is the largest datagram a FrameConn carries.
const MaxFrame = 1 << 14

// FrameConn carries datagrams over TLS on TCP, each prefixed by its length
// (two bytes, big-endian). It is the fallback for networks that block UDP:
// the datagrams are the suite's own sealed ones, so the TLS layer adds
// reachability (port 443, a TCP flow like any HTTPS one), not secrecy.
type FrameConn struct {
	c        *tls.Conn
	ClientID string
	// Token is the connect token the router authenticated with on the
	// proxy's side; nil for a pre-shared key (and on the router's side).
	Token []byte
	// SendTimeout, if set before the first Send, bounds each Send: a peer
	// that stops reading fails it (with a timeout, for good: the TLS
	// stream is broken then) instead of holding the sender.
	SendTimeout time.Duration
	wmu         sync.Mutex
	rbuf        [MaxFrame]byte
}

// DialFrames connects with d to addr over TLS and authenticates with the key.
func DialFrames(ctx context.Context, d *net.Dialer, addr string, clientID string, key wire.Key) (*FrameConn, error) {
	return dialFrames(ctx, d, addr, clientID, nil, key)
}

// DialFramesToken is DialFrames for a router admitted by a connect token:
// it presents tok and proves key, the client key sealed in it.
func DialFramesToken(ctx context.Context, d *net.Dialer, addr string, tok []byte, key wire.Key) (*FrameConn, error) {
	return dialFrames(ctx, d, addr, "", tok, key)
}

func dialFrames(ctx context.Context, d *net.Dialer, addr string, clientID string, tok []byte, key wire.Key) (*FrameConn, error) {
	td := &tls.Dialer{NetDialer: d, Config: ClientTLS()}
	nc, err := td.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := nc.(*tls.Conn)
	tc.SetDeadline(time.Now().Add(AuthTimeout))
	if err := clientAuth(tc, tc.ConnectionState(), clientID, tok, key); err != nil {
		tc.Close()
		return nil, err
	}
	tc.SetDeadline(time.Time{})
	noDelay(tc)
	if len(tok) > 0 {
		clientID = "token"
	}
	return &FrameConn{c: tc, ClientID: clientID}, nil
}

func noDelay(tc *tls.Conn) {
	if t, ok := tc.NetConn().(*net.TCPConn); ok {
		t.SetNoDelay(true)
	}
}

// Send writes one datagram, within SendTimeout if set. Safe for concurrent
// use.
func (f *FrameConn) Send(dg []byte) error {
	if len(dg) > MaxFrame {
		return fmt.Errorf("tcpmux: datagram of %d bytes exceeds %d", len(dg), MaxFrame)
	}
	var b [2 + MaxFrame]byte
	binary.BigEndian.PutUint16(b[:2], uint16(len(dg)))
	n := copy(b[2:], dg)
	f.wmu.Lock()
	defer f.wmu.Unlock()
	if f.SendTimeout > 0 {
		f.c.SetWriteDeadline(time.Now().Add(f.SendTimeout))
	}
	_, err := f.c.Write(b[:2+n])
	return err
}

// Receive returns the next datagram; the slice is valid until the next call.
// Only one goroutine may receive.
func (f *FrameConn) Receive() ([]byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(f.c, h[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(h[:]))
	if n > MaxFrame {
		return nil, errors.New("tcpmux: oversized frame")
	}
	if _, err := io.ReadFull(f.c, f.rbuf[:n]); err != nil {
		return nil, err
	}
	return f.rbuf[:n], nil
}

// Close closes the connection.
func (f *FrameConn) Close() error { return f.c.Close() }

// RemoteAddr is the peer's TCP address.
func (f *FrameConn) RemoteAddr() net.Addr { return f.c.RemoteAddr() }

// FrameListener accepts authenticated FrameConns.
type FrameListener struct {
	ln   net.Listener
	tc   *tls.Config
	keys KeyLookup
	// Tokens, if set before the first Accept, admits routers by a connect
	// token too; nil refuses them.
	Tokens TokenLookup
	// AuthTimeout, if set before the first Accept, bounds the TLS handshake
	// and the key proofs of a connection (0: the package's AuthTimeout); a
	// peer that has not proved its key by then is closed.
	AuthTimeout time.Duration
}

// ListenFrames serves the TLS fallback on ln.
func ListenFrames(ln net.Listener, keys KeyLookup) (*FrameListener, error) {
	tc, err := ServerTLS()
	if err != nil {
		return nil, err
	}
	return &FrameListener{ln: ln, tc: tc, keys: keys}, nil
}

// Accept returns the next raw connection; call Authenticate on it in its
// own goroutine, so a slow peer does not hold up the others.
func (l *FrameListener) Accept() (net.Conn, error) { return l.ln.Accept() }

// Authenticate runs the TLS handshake and the key proofs on nc, within
// AuthTimeout.
func (l *FrameListener) Authenticate(nc net.Conn) (*FrameConn, error) {
	tc := tls.Server(nc, l.tc)
	d := l.AuthTimeout
	if d <= 0 {
		d = AuthTimeout
	}
	tc.SetDeadline(time.Now().Add(d))
	if err := tc.Handshake(); err != nil {
		tc.Close()
		return nil, err
	}
	id, tok, err := serverAuth(tc, tc.ConnectionState(), l.keys, l.Tokens)
	if err != nil {
		tc.Close()
		return nil, err
	}
	tc.SetDeadline(time.Time{})
	noDelay(tc)
	return &FrameConn{c: tc, ClientID: id, Token: tok}, nil
}

// Close stops accepting.
func (l *FrameListener) Close() error { return l.ln.Close() }

// Addr is where the listener serves.
func (l *FrameListener) Addr() net.Addr { return l.ln.Addr() }
