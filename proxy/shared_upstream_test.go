package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/testkit"
	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/ingress"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/proxyproto"
	"github.com/raicnet/raic/pkg/udp"
	"github.com/raicnet/raic/pkg/wire"
)

// upstream = "shared" is refused, with its file, line and key, unless the
// server's header is SPP; an unknown value too.
func TestSharedUpstreamConfig(t *testing.T) {
	text := proxyClient() + `[[server]]
match = "127.0.0.1:27015"
client_addr_header = "proxy-v2"
upstream = "shared"
[[server]]
match = "127.0.0.1:27016"
upstream = "pooled"
[[server]]
match = "127.0.0.1:27017"
client_addr_header = "spp"
upstream = "shared"
[[server]]
match = "127.0.0.1:27018"
upstream = "per-session"
`
	_, err := ParseConfig("p.toml", "listen = \"127.0.0.1:0\"\n"+text)
	var es config.Errors
	if !errors.As(err, &es) {
		t.Fatalf("error %v, want config.Errors", err)
	}
	want := []string{"server.0.upstream: \"shared\" needs client_addr_header = \"spp\"", "server.1.upstream: \"pooled\": must be"}
	if len(es) != len(want) {
		t.Fatalf("%d errors, want %d:\n%v", len(es), len(want), err)
	}
	lines := strings.Count("listen\n"+proxyClient(), "\n")
	for i, w := range want {
		line := lines + 4 + 3*i
		if prefix := fmt.Sprintf("p.toml:%d: %s", line, w); !strings.HasPrefix(es[i].Error(), prefix) {
			t.Errorf("error %d = %q, want it to start %q", i, es[i], prefix)
		}
	}
	cfg, err := ParseConfig("p.toml", "listen = \"127.0.0.1:0\"\n"+proxyClient()+`[[server]]
match = "127.0.0.1:27017"
client_addr_header = "spp"
upstream = "shared"
`)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.sharedFor(netip.MustParseAddrPort("127.0.0.1:27017")) || cfg.sharedFor(netip.MustParseAddrPort("127.0.0.1:27018")) {
		t.Fatal("sharedFor does not follow the [[server]] tables")
	}
}

// sppEcho is an SPP game server: it answers each datagram with the header it
// came with and "echo:" and the payload, and reports each header it saw.
type sppEcho struct {
	*udpPeer
	seen chan sppSeen
}

type sppSeen struct {
	client, proxy, peer netip.AddrPort
	payload             string
}

func newSPPEcho(t *testing.T) *sppEcho {
	e := &sppEcho{udpPeer: newPeer(t), seen: make(chan sppSeen, 1024)}
	go func() {
		for b := range e.got {
			peer := <-e.from
			client, proxy, payload, err := proxyproto.SPP.Parse(b)
			if err != nil {
				continue
			}
			e.seen <- sppSeen{client, proxy, peer, string(payload)}
			out := append(append(append([]byte(nil), b[:proxyproto.SPPLen]...), "echo:"...), payload...)
			e.conn.WriteToUDPAddrPort(out, peer)
		}
	}()
	return e
}

func (e *sppEcho) next(t *testing.T) sppSeen {
	t.Helper()
	select {
	case s := <-e.seen:
		return s
	case <-time.After(2 * time.Second):
		t.Fatal("the SPP server got nothing")
		return sppSeen{}
	}
}

// sharedProxy runs a proxy whose [[server]] for target is an SPP one on the
// shared upstream.
func sharedProxy(t testing.TB, target netip.AddrPort, top string) *Server {
	return startConfigProxy(t, fmt.Sprintf(`listen = "127.0.0.1:0"
%s
[[client]]
id = "gamer"
key = "%s"
allow = ["%s"]
[[server]]
match = "%s"
client_addr_header = "spp"
upstream = "shared"
`, top, goodKey, target, target))
}

// replies reads the data datagrams that reach peer until want of them came,
// opened with the keys of whichever router's session they name.
func replies(t *testing.T, peer *udpPeer, want int, routers ...*fakeRouter) map[uint64][]string {
	t.Helper()
	got := map[uint64][]string{}
	for n := 0; n < want; {
		dg := peer.expect(t, "a reply")
		var h wire.Header
		off, err := wire.Parse(dg, &h, nil)
		if err != nil {
			t.Fatal(err)
		}
		if h.Type != wire.TypeData {
			continue
		}
		var r *fakeRouter
		for _, c := range routers {
			if c.send.Session() == h.Session {
				r = c
			}
		}
		if r == nil {
			t.Fatalf("a reply for session %x, which no router has", h.Session)
		}
		pt, err := wire.Open(mustRecvKey(t, r), dg, off)
		if err != nil {
			t.Fatalf("reply of session %x does not open: %v", h.Session, err)
		}
		got[h.Session] = append(got[h.Session], string(pt))
		n++
	}
	return got
}

// Three sessions, two of them from one router socket (one router, two game
// flows), all leave on the one shared socket: the server sees each router's
// own address in the header, a proxy port of each session's own, and every
// reply, its header stripped, reaches the session it answers.
func TestSharedUpstreamEndToEnd(t *testing.T) {
	server := newSPPEcho(t)
	p := sharedProxy(t, server.addr(), "workers = 1")
	a, b, c := newFakeRouter(t, goodKey, server.addr()), newFakeRouter(t, goodKey, server.addr()), newFakeRouter(t, goodKey, server.addr())
	// b's session comes from a's socket.
	a.sendTo(t, a.seal(t, []byte("a1")), p.Addr())
	a.sendTo(t, b.seal(t, []byte("b1")), p.Addr())
	c.sendTo(t, c.seal(t, []byte("c1")), p.Addr())
	seen := map[string]sppSeen{}
	for i := 0; i < 3; i++ {
		s := server.next(t)
		seen[s.payload] = s
	}
	if seen["a1"].client != a.sock.addr() || seen["b1"].client != a.sock.addr() || seen["c1"].client != c.sock.addr() {
		t.Fatalf("the server saw the players as %v, %v, %v; want %v, %v, %v", seen["a1"].client, seen["b1"].client, seen["c1"].client,
			a.sock.addr(), a.sock.addr(), c.sock.addr())
	}
	if seen["a1"].proxy.Port() == seen["b1"].proxy.Port() {
		t.Fatalf("two sessions of one router socket share the proxy port %d", seen["a1"].proxy.Port())
	}
	if seen["a1"].peer != seen["b1"].peer || seen["a1"].peer != seen["c1"].peer {
		t.Fatalf("sessions sent from %v, %v, %v: want one shared socket", seen["a1"].peer, seen["b1"].peer, seen["c1"].peer)
	}
	got := replies(t, a.sock, 2, a, b, c)
	if fmt.Sprint(got[a.send.Session()]) != "[echo:a1]" || fmt.Sprint(got[b.send.Session()]) != "[echo:b1]" {
		t.Fatalf("replies on a's socket: %v", got)
	}
	if got := replies(t, c.sock, 1, a, b, c); fmt.Sprint(got[c.send.Session()]) != "[echo:c1]" {
		t.Fatalf("replies on c's socket: %v", got)
	}
	if n := counter(p, "proxy_shared_upstream_sessions"); n != 3 {
		t.Fatalf("%v sessions on the shared upstream, want 3", n)
	}
	// Counted after the send returns, which may be after the replies came.
	waitUntil(t, func() bool { return counter(p, "proxy_forwarded_total") == 3 })
}

// The demux drops, and counts, a reply with a bad header, one for a slot no
// session holds, one whose client or source is not its session's, and one
// for a session the table evicted (its slot freed with it).
func TestSharedUpstreamDemux(t *testing.T) {
	server := newSPPEcho(t)
	p := sharedProxy(t, server.addr(), "max_sessions = 2\nworkers = 1")
	a, b := newFakeRouter(t, goodKey, server.addr()), newFakeRouter(t, goodKey, server.addr())
	// Each reply is back before the next step, so none is late to a session
	// evicted below.
	a.sendTo(t, a.seal(t, []byte("a")), p.Addr())
	server.next(t)
	replies(t, a.sock, 1, a)
	b.sendTo(t, b.seal(t, []byte("b")), p.Addr())
	server.next(t)
	replies(t, b.sock, 1, b)
	psA, ok := p.sessions.Peek(a.send.Session())
	if !ok || psA.shared == nil {
		t.Fatal("a's session is not on the shared upstream")
	}
	psB, _ := p.sessions.Peek(b.send.Session())
	su, ss := p.shared, psA.shared
	hdr := func(client netip.AddrPort, slot uint16) []byte {
		b := make([]byte, proxyproto.SPPLen, 64)
		proxyproto.PutSPP(b, client, netip.AddrPortFrom(server.addr().Addr(), slot))
		return append(b, "late"...)
	}
	now := mono.Now()
	unknown := func() float64 { return counter(p, `proxy_dropped_total{reason="shared_reply_unknown"}`) }
	su.demux(ss, []byte("no header at all, and long enough to be one, surely"), server.addr(), now)
	su.demux(ss, []byte{0x56, 0xEC, 1}, server.addr(), now)
	if n := counter(p, `proxy_dropped_total{reason="shared_reply_bad_header"}`); n != 2 {
		t.Fatalf("bad headers counted %v, want 2", n)
	}
	su.demux(ss, hdr(a.sock.addr(), 999), server.addr(), now)                               // no session there
	su.demux(ss, hdr(b.sock.addr(), psA.slot), server.addr(), now)                          // another's client
	su.demux(ss, hdr(a.sock.addr(), psA.slot), netip.MustParseAddrPort("127.0.0.1:9"), now) // not its server
	if n := unknown(); n != 3 {
		t.Fatalf("unknown replies counted %v, want 3", n)
	}
	// A third session evicts one (the oldest of its shard, or of the
	// table): its slot is freed and a late reply to it is dropped.
	c := newFakeRouter(t, goodKey, server.addr())
	c.sendTo(t, c.seal(t, []byte("c")), p.Addr())
	server.next(t)
	replies(t, c.sock, 1, c)
	waitUntil(t, func() bool { return counter(p, "proxy_sessions_evicted_total") == 1 })
	gone, goneFrom := psA, a.sock.addr()
	if _, ok := p.sessions.Peek(a.send.Session()); ok {
		gone, goneFrom = psB, b.sock.addr()
	}
	if gone.shared.slots[gone.slot].Load() == gone {
		t.Fatal("the evicted session still holds its slot")
	}
	if n := counter(p, "proxy_shared_upstream_sessions"); n != 2 {
		t.Fatalf("%v sessions on the shared upstream after the eviction, want 2", n)
	}
	su.demux(gone.shared, hdr(goneFrom, gone.slot), server.addr(), mono.Now())
	if n := unknown(); n != 4 {
		t.Fatalf("a reply to the evicted session: unknown counted %v, want 4 (gone a: %v, slots %d %d)", n, gone == psA, psA.slot, psB.slot)
	}
}

// The shared forward path (receive, authenticate, queue in the read loop's
// batch, one sendmmsg at its end) and the shared reply path (demux by the
// header, strip, code, send to the router) allocate nothing per packet.
func TestSharedUpstreamDoesNotAllocate(t *testing.T) {
	server := testkit.NewCountingSink(t)
	cfg, err := ParseConfig("proxy.toml", fmt.Sprintf(`
listen = "127.0.0.1:0"
workers = 1
[[client]]
id = "gamer"
key = "%s"
allow = ["%s"]
rate_pps = 100000000
burst = 100000000
[[server]]
match = "%s"
client_addr_header = "spp"
upstream = "shared"
`, goodKey, server.Addr(), server.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rd := ingress.NewWorkerReader(0)
	fr := newFakeRouter(t, goodKey, server.Addr())
	routerSide := testkit.NewCountingSink(t) // acks and replies land here
	from := routerSide.Addr()
	payload := make([]byte, 100)
	s.in.Handle(rd, fr.seal(t, payload), from, mono.Now())
	s.shared.flushWorker(0)
	server.WaitFor(t, 1)
	fr.send.Heard(mono.Now())
	ps, ok := s.sessions.Peek(fr.send.Session())
	if !ok || ps.shared == nil {
		t.Fatal("session not on the shared upstream")
	}
	const runs, warmup = 1024, 2048
	dgs := make([][]byte, warmup+runs+1)
	for i := range dgs {
		dgs[i] = fr.seal(t, payload)
	}
	i := 0
	step := func() {
		s.in.Handle(rd, dgs[i], from, mono.Now())
		i++
		if i%16 == 0 {
			s.shared.flushWorker(0) // a batch of 16
		}
	}
	for i < warmup {
		step()
	}
	forwarded := counter(s, "proxy_forwarded_total")
	if allocs := testing.AllocsPerRun(runs, step); allocs != 0 {
		t.Errorf("shared forward: %v allocations per datagram", allocs)
	}
	s.shared.flushWorker(0)
	if got := counter(s, "proxy_forwarded_total") - forwarded; got != runs+1 {
		t.Fatalf("forwarded %v datagrams, want %d", got, runs+1)
	}
	server.WaitFor(t, int64(warmup+runs+2))

	// The reply path: the server's answer with the header it got.
	ps.Paths.Learn(from, mono.Now())
	reply := make([]byte, proxyproto.SPPLen, proxyproto.SPPLen+len(payload))
	proxyproto.PutSPP(reply, from, netip.AddrPortFrom(server.Addr().Addr(), ps.slot))
	reply = append(reply, payload...)
	replies := counter(s, "proxy_replies_total")
	if allocs := testing.AllocsPerRun(runs, func() { s.shared.demux(ps.shared, reply, server.Addr(), mono.Now()) }); allocs != 0 {
		t.Errorf("shared reply: %v allocations per packet", allocs)
	}
	if got := counter(s, "proxy_replies_total") - replies; got != runs+1 {
		t.Fatalf("sent %v replies, want %d (unknown %v, bad header %v)", got, runs+1,
			counter(s, `proxy_dropped_total{reason="shared_reply_unknown"}`), counter(s, `proxy_dropped_total{reason="shared_reply_bad_header"}`))
	}
}

// A per-session SPP server that answers with the header it got (as SPP
// origins do) has it stripped before the reply goes back; a bare answer
// passes as it is.
func TestPerSessionStripsSPPReplyHeader(t *testing.T) {
	server := newSPPEcho(t)
	p := startConfigProxy(t, fmt.Sprintf(`listen = "127.0.0.1:0"
[[client]]
id = "gamer"
key = "%s"
allow = ["%s"]
[[server]]
match = "%s"
client_addr_header = "spp"
`, goodKey, server.addr(), server.addr()))
	r := newFakeRouter(t, goodKey, server.addr())
	r.sendTo(t, r.seal(t, []byte("x")), p.Addr())
	seen := server.next(t)
	if got := replies(t, r.sock, 1, r); fmt.Sprint(got[r.send.Session()]) != "[echo:x]" {
		t.Fatalf("reply %v, want the header stripped", got)
	}
	server.conn.WriteToUDPAddrPort([]byte("bare"), seen.peer)
	if got := replies(t, r.sock, 1, r); fmt.Sprint(got[r.send.Session()]) != "[bare]" {
		t.Fatalf("bare reply came back as %v", got)
	}
}

// TestSharedUpstreamSegmentsSameSizedForwards sends bursts of same-sized
// datagrams (one sendmmsg each, so the proxy reads them in batches): with
// udp_segmentation on (the default) the shared upstream sends the queued
// forwards to the server as segmented runs, counted, and the server still
// gets each datagram whole, with its header, in order; with it off none is
// segmented.
func TestSharedUpstreamSegmentsSameSizedForwards(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("udp_segmentation=%v", on), func(t *testing.T) {
			server := newSPPEcho(t)
			p := sharedProxy(t, server.addr(), fmt.Sprintf("workers = 1\nudp_segmentation = %v", on))
			if on && !p.shared.socks[0].conn.Segmentation() {
				t.Skip("kernel has no UDP_SEGMENT (UDP GSO, Linux 4.18)")
			}
			r := newFakeRouter(t, goodKey, server.addr())
			src, err := udp.Listen("udp4", udp.Options{Local: netip.MustParseAddrPort("127.0.0.1:0")})
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			const bursts, per = 20, 32
			msgs := make([]udp.Message, per)
			for b := 0; b < bursts; b++ {
				for i := range msgs {
					dg := r.seal(t, []byte(fmt.Sprintf("burst %02d datagram %02d", b, i)))
					msgs[i] = udp.Message{Buf: dg, N: len(dg), Addr: p.Addr()}
				}
				if n, err := src.WriteBatch(msgs); n != per || err != nil {
					t.Fatalf("burst %d: WriteBatch = %d, %v", b, n, err)
				}
				for i := 0; i < per; i++ {
					s := server.next(t)
					if want := fmt.Sprintf("burst %02d datagram %02d", b, i); s.payload != want || s.client != src.LocalAddr() {
						t.Fatalf("the server got %q from player %v, want %q from %v", s.payload, s.client, want, src.LocalAddr())
					}
				}
				// Under the client's default rate (5,000/s, bursts of 564):
				// 32 every 10 ms.
				time.Sleep(10 * time.Millisecond)
			}
			waitUntil(t, func() bool { return counter(p, "proxy_forwarded_total") == bursts*per })
			seg := counter(p, "proxy_shared_upstream_segmented_total")
			if on && seg == 0 {
				t.Fatalf("none of %d forwards in bursts of %d left segmented", bursts*per, per)
			}
			if !on && seg != 0 {
				t.Fatalf("%v forwards segmented with udp_segmentation = false", seg)
			}
			t.Logf("%v of %d forwards segmented", seg, bursts*per)
		})
	}
}

// TestSegmentRefusalsLoggedOnceCounted: each shared socket whose path refuses a
// segmented send is counted, and only the first is logged, naming the path.
func TestSegmentRefusalsLoggedOnceCounted(t *testing.T) {
	var logged bytes.Buffer
	s := &Server{log: slog.New(slog.NewTextHandler(&logged, nil)), reg: metrics.NewRegistry()}
	su := &sharedUpstream{srv: s,
		segRefused: s.reg.Counter("proxy_shared_upstream_segmentation_refused_total", "test")}
	dst := netip.MustParseAddrPort("198.18.9.2:7777")
	for i := 0; i < 3; i++ {
		su.segmentsRefused(dst, errors.New("sendmmsg: message too long"))
	}
	if got := su.segRefused.Load(); got != 3 {
		t.Errorf("refusals counted = %d, want 3", got)
	}
	if n := strings.Count(logged.String(), "refused a segmented send"); n != 1 {
		t.Errorf("refusal logged %d times, want once:\n%s", n, logged.String())
	}
	if !strings.Contains(logged.String(), "server=198.18.9.2:7777") || !strings.Contains(logged.String(), "message too long") {
		t.Errorf("the log line does not name the path and the error:\n%s", logged.String())
	}
}
