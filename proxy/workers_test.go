package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/wire"
)

// startProxyConfig runs a proxy from a whole config text.
func startProxyConfig(t testing.TB, text string) *Server {
	t.Helper()
	cfg, err := ParseConfig("proxy.toml", text)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

// TestWorkersShareSessionsStickySource runs a proxy bound to 0.0.0.0 with two
// workers (SO_REUSEPORT sockets), not steered by session. A router session
// reaches it at 127.0.0.2 (one of the host's loopback addresses, not the one
// the kernel would pick to answer from) over eight paths; the kernel spreads
// the paths over both workers by their 4-tuple, and every datagram still
// finds the one session:
// the server sees a single upstream socket and every packet. The acks and the
// server's reply come back on every path from 127.0.0.2, the address the
// router wrote to.
func TestWorkersShareSessionsStickySource(t *testing.T) {
	server := newPeer(t)
	p := startProxyConfig(t, fmt.Sprintf(`
listen = "0.0.0.0:0"
workers = 2
steer_sessions = false
[[client]]
id = "gamer"
key = "%s"
allow = ["%s"]
`, goodKey, server.addr()))
	if p.in.Workers() != 2 {
		t.Fatalf("%d workers, want 2", p.in.Workers())
	}
	reached := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), p.Addr().Port())
	r := newFakeRouter(t, goodKey, server.addr())
	paths := []*udpPeer{r.sock}
	for len(paths) < 8 {
		paths = append(paths, newPeer(t))
	}
	var upstream netip.AddrPort
	for round := 0; round < 3; round++ {
		for i, path := range paths {
			dg := r.seal(t, []byte(fmt.Sprintf("packet %d/%d", round, i)))
			if _, err := path.conn.WriteToUDPAddrPort(dg, reached); err != nil {
				t.Fatal(err)
			}
			_, from := server.expectFrom(t, fmt.Sprintf("packet %d from path %d", round, i))
			if upstream.IsValid() && from != upstream {
				t.Fatalf("the server sees the session from %v and %v: one upstream socket per session expected", upstream, from)
			}
			upstream = from
		}
	}
	r.send.Heard(mono.Now()) // no more hellos; acks stop
	snap := p.Metrics().Snapshot()
	w0, w1 := snap[`proxy_worker_received_total{worker="0"}`], snap[`proxy_worker_received_total{worker="1"}`]
	if w0 == 0 || w1 == 0 || w0+w1 != 24 {
		t.Fatalf("workers read %v and %v datagrams, want 24 spread over both", w0, w1)
	}
	// Counted once the send is done, which may be just after the server has
	// the datagram.
	waitUntil(t, func() bool { return counter(p, "proxy_forwarded_total") >= 24 })
	if got := counter(p, "proxy_forwarded_total"); got != 24 {
		t.Fatalf("forwarded %v, want 24", got)
	}
	if _, err := server.conn.WriteToUDPAddrPort([]byte("reply"), upstream); err != nil {
		t.Fatal(err)
	}
	recv := mustRecvKey(t, r)
	for i, path := range paths {
		for {
			dg, from := path.expectFrom(t, fmt.Sprintf("reply on path %d", i))
			if from != reached {
				t.Fatalf("path %d: a datagram came from %v, want %v (the address the router wrote to)", i, from, reached)
			}
			var h wire.Header
			off, err := wire.Parse(dg, &h, nil)
			if err != nil {
				t.Fatal(err)
			}
			if h.Type != wire.TypeData {
				continue // an ack
			}
			if pt, err := wire.Open(recv, dg, off); err != nil || string(pt) != "reply" {
				t.Fatalf("path %d: reply %q, %v", i, pt, err)
			}
			break
		}
	}
}

// TestWorkersSteerSessionsByID: with steer_sessions (the default) each
// datagram goes to the worker its session ID picks, so the eight paths of a
// session with an even ID are all read by worker 0 and those of one with an
// odd ID by worker 1, and both reach the server.
func TestWorkersSteerSessionsByID(t *testing.T) {
	server := newPeer(t)
	p := startProxyConfig(t, fmt.Sprintf(`
listen = "127.0.0.1:0"
workers = 2
[[client]]
id = "gamer"
key = "%s"
allow = ["%s"]
`, goodKey, server.addr()))
	base := uint64(mono.Now()) &^ 0xffff
	for _, id := range []uint64{base | 0x1234, base | 0x4321} { // even, odd
		r := newFakeRouterID(t, goodKey, server.addr(), id)
		paths := []*udpPeer{r.sock}
		for len(paths) < 8 {
			paths = append(paths, newPeer(t))
		}
		for round := 0; round < 3; round++ {
			for i, path := range paths {
				want := fmt.Sprintf("session %x packet %d/%d", id, round, i)
				if _, err := path.conn.WriteToUDPAddrPort(r.seal(t, []byte(want)), p.Addr()); err != nil {
					t.Fatal(err)
				}
				if got := server.expect(t, want); string(got) != want {
					t.Fatalf("the server got %q, want %q", got, want)
				}
			}
		}
		r.send.Heard(mono.Now())
	}
	snap := p.Metrics().Snapshot()
	w0, w1 := snap[`proxy_worker_received_total{worker="0"}`], snap[`proxy_worker_received_total{worker="1"}`]
	if w0 != 24 || w1 != 24 {
		t.Fatalf("workers read %v and %v datagrams, want 24 each (the even session's on worker 0, the odd one's on 1)", w0, w1)
	}
}

// workers = 0 is one per CPU; a negative count is refused with its line.
func TestWorkersConfig(t *testing.T) {
	client := fmt.Sprintf("[[client]]\nid = \"gamer\"\nkey = \"%s\"\nallow = [\"198.18.41.2:27015\"]\n", goodKey)
	cfg, err := ParseConfig("proxy.toml", "workers = 0\n"+client)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.workers(); got < 1 {
		t.Fatalf("workers = 0 gives %d sockets", got)
	}
	if c := DefaultConfig(); c.workers() != 1 {
		t.Fatalf("default workers %d, want 1", c.workers())
	}
	if _, err := ParseConfig("proxy.toml", "\nworkers = -1\n"+client); err == nil || !strings.Contains(err.Error(), "proxy.toml:2: workers") {
		t.Fatalf("workers = -1: %v", err)
	}
}
