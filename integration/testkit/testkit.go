// Package testkit holds the test doubles and helpers that the tests of the
// programs (router, proxy, intermediate) and of integration share: background
// runners, wait helpers, loopback sockets (a discarding sink, a counting echo
// server), loggers, and datagrams sealed as the proxy would seal them.
//
// It is imported from _test.go files only (integration/layers_test.go checks),
// so it is never linked into a shipped program. It imports no program, so the
// programs' own tests can use it without an import cycle.
package testkit

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// Logger logs at debug level to stderr when RAIC_TEST_LOG is set, and nowhere
// otherwise.
func Logger() *slog.Logger {
	if os.Getenv("RAIC_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return Quiet()
}

// Quiet is a logger that discards everything.
func Quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// Run starts fn(ctx) in the background (a program's Run, say) and returns a
// stop func that cancels it and waits for it to return. Stop runs by itself
// when the test ends; calling it earlier (to kill a proxy mid-test) is fine.
func Run(t testing.TB, fn func(context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { fn(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// WaitFor polls cond every 5 ms until it holds, and fails the test naming what
// it waited for once timeout has passed.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// UDPListen opens a socket on 127.0.0.1 with a 4 MB receive buffer, closed
// when the test ends.
func UDPListen(t testing.TB) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadBuffer(4 << 20)
	t.Cleanup(func() { c.Close() })
	return c
}

// AddrOf returns the local address of c.
func AddrOf(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

// Sink is a loopback socket that reads and discards (an 8 MB receive buffer),
// so that sends to it succeed: a stand-in proxy, server or game for tests
// that only drive one side.
func Sink(t testing.TB) netip.AddrPort {
	t.Helper()
	c := UDPListen(t)
	c.SetReadBuffer(8 << 20)
	go func() {
		b := make([]byte, 2048)
		for {
			if _, _, err := c.ReadFromUDPAddrPort(b); err != nil {
				return
			}
		}
	}()
	return AddrOf(c)
}

// EchoServer is a game server on loopback that answers every datagram with the
// same bytes and counts what it received.
func EchoServer(t testing.TB) (netip.AddrPort, *atomic.Int64) {
	t.Helper()
	c := UDPListen(t)
	var n atomic.Int64
	go func() {
		b := make([]byte, 2048)
		for {
			k, from, err := c.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			n.Add(1)
			c.WriteToUDPAddrPort(b[:k], from)
		}
	}()
	return AddrOf(c), &n
}

// SealedAsProxy returns n datagrams carrying pkt as the proxy would seal them
// for session sid of a client with key (RAIC-1 copies, the session's salt
// from its hello), for tests that feed a router's receive path directly.
func SealedAsProxy(t testing.TB, key wire.Key, salt [16]byte, sid uint64, pkt []byte, n int) [][]byte {
	t.Helper()
	psend, _, err := wire.DeriveKeys(&key, &salt, sid, wire.RoleServer)
	if err != nil {
		t.Fatal(err)
	}
	proxySide, err := tunnel.NewSender(psend, sid, raic.Params{Scheme: raic.SchemeCopy, K: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dgs := make([][]byte, n)
	for i := range dgs {
		_, d, err := proxySide.Seal(pkt, mono.Now())
		if err != nil {
			t.Fatal(err)
		}
		dgs[i] = append([]byte(nil), d[0]...)
	}
	return dgs
}

// CountingSink is a loopback socket (8 MB receive buffer) that counts the
// datagrams it receives without allocating, so that its reads do not show in
// an allocation test: a stand-in game server, router or next hop.
type CountingSink struct {
	Conn *net.UDPConn
	N    atomic.Int64 // datagrams received
}

// NewCountingSink opens a CountingSink, closed when the test ends.
func NewCountingSink(t testing.TB) *CountingSink {
	t.Helper()
	return NewCountingSinkSkipping(t, nil)
}

// NewCountingSinkSkipping is NewCountingSink that does not count the
// datagrams skip says to (nil: none).
func NewCountingSinkSkipping(t testing.TB, skip func(dg []byte) bool) *CountingSink {
	t.Helper()
	s := &CountingSink{Conn: UDPListen(t)}
	s.Conn.SetReadBuffer(8 << 20)
	go func() {
		b := make([]byte, 2048)
		for {
			n, _, err := s.Conn.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			if skip != nil && skip(b[:n]) {
				continue
			}
			s.N.Add(1)
		}
	}()
	return s
}

// Addr is the sink's address.
func (s *CountingSink) Addr() netip.AddrPort { return AddrOf(s.Conn) }

// WaitFor waits up to 5 s for the sink to have received n datagrams.
func (s *CountingSink) WaitFor(t testing.TB, n int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.N.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("received %d datagrams, want %d", s.N.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// LogBuffer collects log output (an io.Writer) that goroutines or a
// program's stderr write while the test reads it.
type LogBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

// String is everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

// Count is how many times s was written so far.
func (l *LogBuffer) Count(s string) int { return strings.Count(l.String(), s) }
