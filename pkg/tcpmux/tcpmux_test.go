package tcpmux

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/raicnet/raic/pkg/wire"
)

var key = wire.Key{7, 7, 7}

func keys(id string) (wire.Key, bool) { return key, id == "gamer" }

func TestFramesAuthenticateBothWaysAndCarryDatagrams(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl, err := ListenFrames(ln, keys)
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	accepted := make(chan *FrameConn, 4)
	go func() {
		for {
			nc, err := fl.Accept()
			if err != nil {
				return
			}
			go func() {
				fc, err := fl.Authenticate(nc)
				if err != nil {
					accepted <- nil
					return
				}
				accepted <- fc
			}()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var d net.Dialer
	// Wrong key, unknown client: refused on both sides.
	for _, c := range []struct {
		id string
		k  wire.Key
	}{{"gamer", wire.Key{1}}, {"stranger", key}} {
		if _, err := DialFrames(ctx, &d, ln.Addr().String(), c.id, c.k); !errors.Is(err, ErrAuth) {
			t.Errorf("%s: err = %v, want ErrAuth", c.id, err)
		}
		if fc := <-accepted; fc != nil {
			t.Errorf("%s: the proxy accepted", c.id)
		}
	}
	fc, err := DialFrames(ctx, &d, ln.Addr().String(), "gamer", key)
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	srv := <-accepted
	if srv == nil || srv.ClientID != "gamer" {
		t.Fatalf("proxy side %+v", srv)
	}
	for _, msg := range []string{"one", "", "three"} {
		if err := fc.Send([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got, err := srv.Receive()
		if err != nil || string(got) != msg {
			t.Fatalf("received %q, %v; want %q", got, err, msg)
		}
	}
	if err := fc.Send(make([]byte, MaxFrame+1)); err == nil {
		t.Error("an oversized datagram was sent")
	}
}

func TestQUICRefusesWrongKey(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ql, err := Listen(pc, keys)
	if err != nil {
		t.Fatal(err)
	}
	defer ql.Close()
	refused := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go ql.Accept(ctx, func(err error) { refused <- err })
	cp, _ := net.ListenPacket("udp", "127.0.0.1:0")
	if _, err := Dial(ctx, cp, pc.LocalAddr().(*net.UDPAddr), "gamer", wire.Key{2}); err == nil {
		t.Fatal("dial with a wrong key succeeded")
	}
	select {
	case err := <-refused:
		if !errors.Is(err, ErrAuth) {
			t.Errorf("proxy refused with %v, want ErrAuth", err)
		}
	case <-ctx.Done():
		t.Fatal("the proxy never refused")
	}
}

// A router with a connect token authenticates the fallback by the token and
// the client key inside it: a token the lookup refuses, a wrong key, or a
// token at a listener without a lookup get no answer; the lookup's error is
// what Authenticate returns.
func TestFramesByToken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl, err := ListenFrames(ln, keys)
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	errExpired := errors.New("expired")
	tokKey := wire.Key{4, 4}
	fl.Tokens = func(tok []byte) (string, wire.Key, error) {
		switch string(tok) {
		case "good":
			return "player", tokKey, nil
		case "old":
			return "", wire.Key{}, errExpired
		}
		return "", wire.Key{}, ErrAuth
	}
	type result struct {
		fc  *FrameConn
		err error
	}
	accepted := make(chan result, 4)
	go func() {
		for {
			nc, err := fl.Accept()
			if err != nil {
				return
			}
			go func() {
				fc, err := fl.Authenticate(nc)
				accepted <- result{fc, err}
			}()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var d net.Dialer
	for _, c := range []struct {
		tok  string
		k    wire.Key
		want error
	}{{"old", tokKey, errExpired}, {"forged", tokKey, ErrAuth}, {"good", key, ErrAuth}} {
		if _, err := DialFramesToken(ctx, &d, ln.Addr().String(), []byte(c.tok), c.k); !errors.Is(err, ErrAuth) {
			t.Errorf("%s: router err = %v, want ErrAuth (no answer)", c.tok, err)
		}
		if r := <-accepted; r.fc != nil || !errors.Is(r.err, c.want) {
			t.Errorf("%s: proxy side %v, %v; want %v", c.tok, r.fc, r.err, c.want)
		}
	}
	fc, err := DialFramesToken(ctx, &d, ln.Addr().String(), []byte("good"), tokKey)
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	srv := <-accepted
	if srv.fc == nil || srv.fc.ClientID != "player" || string(srv.fc.Token) != "good" {
		t.Fatalf("proxy side %+v", srv)
	}
	if err := fc.Send([]byte("by token")); err != nil {
		t.Fatal(err)
	}
	if got, err := srv.fc.Receive(); err != nil || string(got) != "by token" {
		t.Fatalf("received %q, %v", got, err)
	}

	// Without a lookup the marker is an unknown client.
	fl.Tokens = nil
	if _, err := DialFramesToken(ctx, &d, ln.Addr().String(), []byte("good"), tokKey); !errors.Is(err, ErrAuth) {
		t.Errorf("no lookup: router err = %v", err)
	}
	if r := <-accepted; r.fc != nil || !errors.Is(r.err, ErrAuth) {
		t.Errorf("no lookup: proxy side %v, %v", r.fc, r.err)
	}
}

// A peer that does not prove its key within AuthTimeout is closed: one that
// sends nothing at all (the TLS handshake never starts) and one that
// completes the handshake but never sends its proof. A router that proves
// its key in time is admitted.
func TestFramesAuthTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl, err := ListenFrames(ln, keys)
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	fl.AuthTimeout = 300 * time.Millisecond
	type result struct {
		fc  *FrameConn
		err error
		d   time.Duration
	}
	accepted := make(chan result, 4)
	go func() {
		for {
			nc, err := fl.Accept()
			if err != nil {
				return
			}
			go func() {
				start := time.Now()
				fc, err := fl.Authenticate(nc)
				accepted <- result{fc, err, time.Since(start)}
			}()
		}
	}()
	silent, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	half, err := tls.Dial("tcp", ln.Addr().String(), ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	for _, name := range []string{"silent", "no proof"} {
		select {
		case r := <-accepted:
			var ne net.Error
			if r.fc != nil || !errors.As(r.err, &ne) || !ne.Timeout() {
				t.Errorf("%s: accepted %v, err %v; want a timeout", name, r.fc, r.err)
			}
			if r.d < 250*time.Millisecond || r.d > 2*time.Second {
				t.Errorf("%s: dropped after %v, want about 300ms", name, r.d)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("%s: still held after 3s", name)
		}
	}
	// Closed by the listener: the peer reads the end.
	silent.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := silent.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("silent peer: read %v, want the connection closed", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var d net.Dialer
	fc, err := DialFrames(ctx, &d, ln.Addr().String(), "gamer", key)
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	if r := <-accepted; r.fc == nil || r.fc.ClientID != "gamer" || r.fc.Token != nil {
		t.Fatalf("a prompt router: %+v", r)
	}
}

// The QUIC listener admits a connect token as the frame listener does: the
// lookup's refusal and a wrong client key are refused (onRefused is told),
// a good token gives a connection that keeps the token; without a lookup a
// token is refused.
func TestQUICByToken(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ql, err := Listen(pc, keys)
	if err != nil {
		t.Fatal(err)
	}
	defer ql.Close()
	errExpired := errors.New("expired")
	tokKey := wire.Key{4, 4}
	ql.Tokens = func(tok []byte) (string, wire.Key, error) {
		switch string(tok) {
		case "good":
			return "player", tokKey, nil
		case "old":
			return "", wire.Key{}, errExpired
		}
		return "", wire.Key{}, ErrAuth
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	refused := make(chan error, 8)
	accepted := make(chan *Conn, 1)
	go func() {
		for {
			c, err := ql.Accept(ctx, func(err error) { refused <- err })
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func(tok string, k wire.Key) (*Conn, error) {
		cp, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		c, err := DialToken(ctx, cp, pc.LocalAddr().(*net.UDPAddr), []byte(tok), k)
		if err != nil {
			cp.Close()
		}
		return c, err
	}
	for _, c := range []struct {
		tok  string
		k    wire.Key
		want error
	}{{"old", tokKey, errExpired}, {"forged", tokKey, ErrAuth}, {"good", key, ErrAuth}} {
		if _, err := dial(c.tok, c.k); err == nil {
			t.Errorf("%s: the router was admitted", c.tok)
		}
		select {
		case err := <-refused:
			if !errors.Is(err, c.want) {
				t.Errorf("%s: refused with %v, want %v", c.tok, err, c.want)
			}
		case <-ctx.Done():
			t.Fatalf("%s: never refused", c.tok)
		}
	}
	rc, err := dial("good", tokKey)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	srv := <-accepted
	if srv.ClientID != "player" || string(srv.Token) != "good" {
		t.Fatalf("proxy side: client %q, token %q", srv.ClientID, srv.Token)
	}
	// The connection carries streams as one by a key does.
	s, err := rc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("flow"))
	ss, err := srv.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(ss, b); err != nil || string(b) != "flow" {
		t.Fatalf("stream read %q, %v", b, err)
	}

	// A listener without a lookup takes the marker for an unknown client.
	pc2, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	plain, err := Listen(pc2, keys)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	go plain.Accept(ctx, func(err error) { refused <- err })
	cp, _ := net.ListenPacket("udp", "127.0.0.1:0")
	if _, err := DialToken(ctx, cp, pc2.LocalAddr().(*net.UDPAddr), []byte("good"), tokKey); err == nil {
		t.Error("no lookup: the router was admitted")
	}
	if err := <-refused; !errors.Is(err, ErrAuth) {
		t.Errorf("no lookup: refused with %v", err)
	}
}

// Connections authenticate in parallel: a peer that completes the QUIC
// handshake but never proves its key does not hold up a router that does,
// and is refused after AuthTimeout. Beyond MaxPending authenticating at
// once, a connection is refused at once (ErrBusy).
func TestQUICSilentPeerHoldsUpNobody(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ql, err := Listen(pc, keys)
	if err != nil {
		t.Fatal(err)
	}
	defer ql.Close()
	ql.MaxPending = 2
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	refused := make(chan error, 8)
	accepted := make(chan *Conn, 4)
	go func() {
		for {
			c, err := ql.Accept(ctx, func(err error) { refused <- err })
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	addr := pc.LocalAddr().(*net.UDPAddr)
	silent := func() *quic.Conn {
		qc, err := quic.DialAddr(ctx, addr.String(), ClientTLS(), QUICConfig())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { qc.CloseWithError(0, "") })
		return qc
	}
	start := time.Now()
	silent()
	dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
	defer dcancel()
	cp, _ := net.ListenPacket("udp", "127.0.0.1:0")
	rc, err := Dial(dctx, cp, addr, "gamer", key)
	if err != nil {
		t.Fatalf("a router behind a silent peer: %v", err)
	}
	defer rc.Close()
	if c := <-accepted; c.ClientID != "gamer" {
		t.Fatalf("accepted %q", c.ClientID)
	}
	if d := time.Since(start); d > AuthTimeout/2 {
		t.Errorf("the router waited %v behind the silent peer", d)
	}
	// Two silent peers fill MaxPending: a third connection is refused now.
	silent()
	silent()
	select {
	case err := <-refused:
		if !errors.Is(err, ErrBusy) {
			t.Errorf("refused with %v, want ErrBusy", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no refusal beyond MaxPending")
	}
	// The silent ones time out.
	for i := 0; i < 2; i++ {
		select {
		case err := <-refused:
			if errors.Is(err, ErrBusy) || time.Since(start) < AuthTimeout-time.Second {
				t.Errorf("silent peer %d: refused with %v after %v", i, err, time.Since(start))
			}
		case <-time.After(AuthTimeout + 3*time.Second):
			t.Fatalf("silent peer %d was never refused", i)
		}
	}
}

// With SendTimeout, a peer that stops reading fails the Send that would wait
// for it, after about SendTimeout, instead of holding the sender.
func TestFramesSendTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl, err := ListenFrames(ln, keys)
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	accepted := make(chan *FrameConn, 1)
	go func() {
		nc, err := fl.Accept()
		if err != nil {
			return
		}
		fc, _ := fl.Authenticate(nc)
		accepted <- fc
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var d net.Dialer
	router, err := DialFrames(ctx, &d, ln.Addr().String(), "gamer", key)
	if err != nil {
		t.Fatal(err)
	}
	defer router.Close() // and never reads
	srv := <-accepted
	if srv == nil {
		t.Fatal("not accepted")
	}
	defer srv.Close()
	srv.SendTimeout = 200 * time.Millisecond
	dg := make([]byte, MaxFrame)
	deadline := time.Now().Add(10 * time.Second)
	for sent := 0; ; sent++ {
		start := time.Now()
		err := srv.Send(dg)
		took := time.Since(start)
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("after %d datagrams: %v, want a timeout", sent, err)
			}
			if took > 2*time.Second {
				t.Errorf("the failing Send took %v, want about 200ms", took)
			}
			t.Logf("%d datagrams of %d bytes filled the buffers; the next failed after %v", sent, MaxFrame, took.Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d datagrams sent to a peer that reads nothing", sent)
		}
	}
}
