package tcpsplit

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/allow"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/tcpmux"
	"github.com/raicnet/raic/pkg/wire"
)

var testKey = wire.Key{1, 2, 3}

type fixed []*tcpmux.Conn

func (f fixed) Live() []*tcpmux.Conn { return f }

// setup runs a proxy side on loopback and returns n router connections to it.
func setup(t *testing.T, n int, allowed string, key wire.Key) (fixed, *Stats, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	keys := func(id string) (wire.Key, bool) { return testKey, id == "gamer" }
	ln, err := tcpmux.Listen(pc, keys)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	list, _ := allow.Parse([]string{allowed})
	srv := &Server{Allowed: func(c *tcpmux.Conn) (allow.List, bool) { return list, c.ClientID == "gamer" },
		Stats: NewStats(metrics.NewRegistry(), "p"), Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	go func() {
		for {
			c, err := ln.Accept(ctx, nil)
			if err != nil {
				return
			}
			go srv.ServeConn(ctx, c)
		}
	}()
	var conns fixed
	for i := 0; i < n; i++ {
		cp, _ := net.ListenPacket("udp", "127.0.0.1:0")
		c, err := tcpmux.Dial(ctx, cp, pc.LocalAddr().(*net.UDPAddr), "gamer", key)
		if err != nil {
			return nil, nil, err
		}
		t.Cleanup(func() { c.Close() })
		conns = append(conns, c)
	}
	return conns, NewStats(metrics.NewRegistry(), "r"), nil
}

// echoServer answers each connection with what it read, then closes.
func echoServer(t *testing.T) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// roundTrip carries payload to the echo server and returns what came back.
func roundTrip(t *testing.T, conns fixed, stats *Stats, target netip.AddrPort, rule Rule, payload []byte) []byte {
	t.Helper()
	tcpA, tcpB := tcpPair(t)
	go Carry(tcpB, target, rule, conns, stats, slog.New(slog.NewTextHandler(io.Discard, nil)))
	go func() {
		tcpA.Write(payload)
		tcpA.(*net.TCPConn).CloseWrite()
	}()
	tcpA.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(tcpA)
	if err != nil {
		t.Fatalf("read back: %v (got %d bytes)", err, len(got))
	}
	return got
}

func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestCarryEchoesAndCompressesTextNotRandom(t *testing.T) {
	conns, stats, err := setup(t, 1, "127.0.0.1", testKey)
	if err != nil {
		t.Fatal(err)
	}
	target := echoServer(t)
	text := []byte(strings.Repeat("GET /index.html HTTP/1.1\r\nHost: game.example\r\nAccept: text/html\r\n\r\n", 4000))
	if got := roundTrip(t, conns, stats, target, Rule{Compress: true}, text); !bytes.Equal(got, text) {
		t.Fatalf("text came back as %d bytes, want %d identical", len(got), len(text))
	}
	textSaved := stats.SavedPermille.Load()
	t.Logf("text: %d raw bytes, %d on the wire, saved %.1f%%", stats.RawBytes.Load(), stats.WireBytes.Load(), float64(textSaved)/10)
	if textSaved < 500 {
		t.Errorf("text saved %d‰, want at least 500‰", textSaved)
	}

	random := make([]byte, 1<<20)
	rand.Read(random)
	stats2 := NewStats(metrics.NewRegistry(), "r2")
	if got := roundTrip(t, conns, stats2, target, Rule{Compress: true}, random); !bytes.Equal(got, random) {
		t.Fatalf("random bytes came back as %d bytes, want %d identical", len(got), len(random))
	}
	saved := stats2.SavedPermille.Load()
	t.Logf("random: %d raw bytes, %d on the wire, saved %.1f%%", stats2.RawBytes.Load(), stats2.WireBytes.Load(), float64(saved)/10)
	if saved > 0 || saved < -5 {
		t.Errorf("random bytes: saved %d‰, want between -5‰ (frame headers) and 0", saved)
	}
}

func TestDuplicatedFlowOverTwoConnections(t *testing.T) {
	conns, stats, err := setup(t, 2, "127.0.0.1", testKey)
	if err != nil {
		t.Fatal(err)
	}
	target := echoServer(t)
	payload := make([]byte, 300<<10)
	rand.Read(payload)
	if got := roundTrip(t, conns, stats, target, Rule{Duplicate: true}, payload); !bytes.Equal(got, payload) {
		t.Fatalf("came back as %d bytes, want %d identical", len(got), len(payload))
	}
	if stats.Flows.Load() != 1 {
		t.Errorf("flows = %d, want 1", stats.Flows.Load())
	}
}

func TestForbiddenTargetAndWrongKey(t *testing.T) {
	if _, _, err := setup(t, 1, "127.0.0.1", wire.Key{9}); !errors.Is(err, tcpmux.ErrAuth) {
		t.Fatalf("wrong key: err = %v, want ErrAuth", err)
	}
	conns, stats, err := setup(t, 1, "127.0.0.2", testKey)
	if err != nil {
		t.Fatal(err)
	}
	target := echoServer(t)
	if got := roundTrip(t, conns, stats, target, Rule{}, []byte("hello")); len(got) != 0 {
		t.Fatalf("a target outside the allowlist answered %q", got)
	}
	if stats.Refused.Load() != 1 {
		t.Errorf("refused = %d, want 1", stats.Refused.Load())
	}
}

// TestRefusedFlowClosesTheLANConnection: a LAN client that sent its
// request and waits for the answer, with its side still open, learns of a
// refusal at once: the router closes its connection rather than wait for it
// to close first. Run a few times, since the refusal may land before or
// after the request has gone out on the stream.
func TestRefusedFlowClosesTheLANConnection(t *testing.T) {
	conns, stats, err := setup(t, 1, "127.0.0.2", testKey)
	if err != nil {
		t.Fatal(err)
	}
	target := echoServer(t)
	for i := 0; i < 5; i++ {
		lan, router := tcpPair(t)
		done := make(chan struct{})
		go func() {
			Carry(router, target, Rule{}, conns, stats, slog.New(slog.NewTextHandler(io.Discard, nil)))
			close(done)
		}()
		lan.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
		lan.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, err := lan.Read(make([]byte, 64))
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("flow %d: a refused flow left the LAN connection open for 3 s", i)
		}
		if n != 0 || err == nil {
			t.Fatalf("flow %d: a refused flow answered %d bytes (%v)", i, n, err)
		}
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			t.Fatalf("flow %d: Carry still running after the refusal", i)
		}
		lan.Close()
	}
	if got := stats.Refused.Load(); got != 5 {
		t.Errorf("refused = %d, want 5", got)
	}
}

// TestStalledDownloadDoesNotBlockAnotherFlow: a download whose LAN client
// reads nothing fills its own stream's window, and another flow on the same
// connection (a game's stream) keeps its round trips.
func TestStalledDownloadDoesNotBlockAnotherFlow(t *testing.T) {
	conns, stats, err := setup(t, 1, "127.0.0.1", testKey)
	if err != nil {
		t.Fatal(err)
	}
	// A bulk server that writes without end.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	wrote := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		n, _ := io.Copy(c, rand.Reader)
		wrote <- n
	}()
	bulkA, bulkB := tcpPair(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	go Carry(bulkB, ln.Addr().(*net.TCPAddr).AddrPort(), Rule{}, conns, stats, log)
	bulkA.(*net.TCPConn).SetReadBuffer(4096) // and never read
	time.Sleep(500 * time.Millisecond)       // the bulk stream fills its window

	echo := echoServer(t)
	gameA, gameB := tcpPair(t)
	go Carry(gameB, echo, Rule{}, conns, stats, log)
	buf := make([]byte, 64)
	gameA.SetDeadline(time.Now().Add(10 * time.Second))
	for i := 0; i < 50; i++ {
		if _, err := gameA.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(gameA, buf); err != nil {
			t.Fatalf("game message %d: %v (held up behind the stalled download)", i, err)
		}
	}
	bulkA.Close()
}

// TestFlowTableSharePerClient: one client's live flows stop at its share of
// the table, other clients still get theirs, a token's client is apart from
// a [[client]] of the same ID, and an ended flow gives its place back.
func TestFlowTableSharePerClient(t *testing.T) {
	s := &Server{MaxFlowsPerClient: 3}
	a, b := clientKey{"gamer", false}, clientKey{"other", false}
	var mine []*proxyFlow
	for id := uint64(1); id <= 3; id++ {
		fl, created, err := s.flow(flowKey{a, id}, false)
		if err != nil || !created {
			t.Fatalf("flow %d of 3: %v, %v", id, created, err)
		}
		mine = append(mine, fl)
	}
	if fl, _, err := s.flow(flowKey{a, 1}, false); err != nil || fl != mine[0] {
		t.Fatalf("a stream of a flow it has (a duplicate): %v, %v", fl, err)
	}
	if _, _, err := s.flow(flowKey{a, 4}, false); !errors.Is(err, errClientFull) {
		t.Fatalf("a 4th flow of a client allowed 3: %v, want %v", err, errClientFull)
	}
	if _, created, err := s.flow(flowKey{b, 4}, false); err != nil || !created {
		t.Fatalf("another client's flow: %v, %v", created, err)
	}
	if _, created, err := s.flow(flowKey{clientKey{"gamer", true}, 4}, false); err != nil || !created {
		t.Fatalf("a token client named like the full [[client]]: %v, %v", created, err)
	}
	s.end(flowKey{a, 2}, mine[1])
	s.end(flowKey{a, 2}, mine[1]) // twice: still one place back
	if _, created, err := s.flow(flowKey{a, 5}, false); err != nil || !created {
		t.Fatalf("a flow after one ended: %v, %v", created, err)
	}
	if _, _, err := s.flow(flowKey{a, 6}, false); !errors.Is(err, errClientFull) {
		t.Fatalf("a 4th live flow again: %v, want %v (an ended flow gave back one place, not two)", err, errClientFull)
	}
	if d := (&Server{}).maxPerClient(); d != DefaultMaxFlowsPerClient {
		t.Fatalf("default share %d, want %d", d, DefaultMaxFlowsPerClient)
	}
}
