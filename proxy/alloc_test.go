package proxy

import (
	"net/netip"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/testkit"
	"github.com/raicnet/raic/pkg/ingress"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/replypath"
)

// TestPacketPathDoesNotAllocate drives the proxy's per-datagram functions
// directly: receive + authenticate + dedup + forward to the server, and a server
// reply coded and sent back over every path. In steady state neither allocates.
func TestPacketPathDoesNotAllocate(t *testing.T) {
	server := testkit.NewCountingSink(t)
	cfg, err := ParseConfig("proxy.toml", `
listen = "127.0.0.1:0"
[[client]]
id = "gamer"
key = "`+goodKey.String()+`"
allow = ["`+server.Addr().String()+`"]
rate_pps = 100000000
burst = 100000000
`)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rd := ingress.NewReader()
	fr := newFakeRouter(t, goodKey, server.Addr())
	routerSide := testkit.NewCountingSink(t) // acks and replies land here
	from := routerSide.Addr()
	payload := make([]byte, 100)

	// The first datagram opens the session (that allocates, once).
	s.in.Handle(rd, fr.seal(t, payload), from, mono.Now())
	server.WaitFor(t, 1)
	fr.send.Heard(mono.Now()) // acked: no more hellos
	ps, ok := s.sessions.Peek(fr.send.Session())
	if !ok {
		t.Fatal("session not created")
	}

	// Warm up (the session's tables grow on first use), then measure.
	const runs, warmup = 1000, 2048
	dgs := make([][]byte, warmup+runs+1)
	for i := range dgs {
		dgs[i] = fr.seal(t, payload)
	}
	for i := 0; i < warmup; i++ {
		s.in.Handle(rd, dgs[i], from, mono.Now())
	}
	server.WaitFor(t, 1+warmup)
	i := warmup
	forwarded := counter(s, "proxy_forwarded_total")
	allocs := testing.AllocsPerRun(runs, func() {
		s.in.Handle(rd, dgs[i], from, mono.Now())
		i++
	})
	if allocs != 0 {
		t.Errorf("receive and forward: %v allocations per datagram", allocs)
	}
	if got := counter(s, "proxy_forwarded_total") - forwarded; got != runs+1 {
		t.Fatalf("forwarded %v datagrams, want %d", got, runs+1)
	}

	// The router sends two copies per path: so do the replies, still without
	// allocating.
	ps.Paths.NoteKeepalive([]byte{1, 2})
	replies := counter(s, "proxy_replies_total")
	allocs = testing.AllocsPerRun(runs, func() { ps.reply(payload, mono.Now()) })
	if allocs != 0 {
		t.Errorf("reply: %v allocations per packet", allocs)
	}
	if got := counter(s, "proxy_replies_total") - replies; got != runs+1 {
		t.Fatalf("sent %v replies, want %d", got, runs+1)
	}
	routerSide.WaitFor(t, 2*(runs+1))

	// Datagrams from ever new router addresses: each takes the place of a
	// path not yet validated and is sent a path challenge, still without
	// allocating once the session's path tables are full.
	addrs := make([]netip.AddrPort, 0, 2*replypath.MaxPaths+runs)
	for i := 0; i < cap(addrs); i++ {
		addrs = append(addrs, netip.AddrPortFrom(from.Addr(), uint16(20000+i)))
	}
	more := make([][]byte, len(addrs))
	for i := range more {
		more[i] = fr.seal(t, payload)
	}
	for i := 0; i < 2*replypath.MaxPaths; i++ {
		s.in.Handle(rd, more[i], addrs[i], mono.Now())
	}
	j := 2 * replypath.MaxPaths
	challenges := counter(s, "proxy_path_challenges_total")
	allocs = testing.AllocsPerRun(runs-1, func() {
		s.in.Handle(rd, more[j], addrs[j], mono.Now())
		j++
	})
	if allocs != 0 {
		t.Errorf("datagram from a new address, challenged: %v allocations per datagram", allocs)
	}
	if got := counter(s, "proxy_path_challenges_total") - challenges; got < runs-1 {
		t.Errorf("%v path challenges sent, want %d", got, runs-1)
	}
}

// A read loop's forwards to sessions' own sockets (serverPort.write)
// allocate nothing either.
func TestReadLoopForwardDoesNotAllocate(t *testing.T) {
	server := testkit.NewCountingSink(t)
	cfg, err := ParseConfig("proxy.toml", `
listen = "127.0.0.1:0"
workers = 1
[[client]]
id = "gamer"
key = "`+goodKey.String()+`"
allow = ["`+server.Addr().String()+`"]
rate_pps = 100000000
burst = 100000000
`)
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
	from := testkit.NewCountingSink(t).Addr()
	payload := make([]byte, 100)
	s.in.Handle(rd, fr.seal(t, payload), from, mono.Now())
	s.endBatch(0) // the read loop's batch goes at its end
	server.WaitFor(t, 1)
	fr.send.Heard(mono.Now())
	const runs, warmup = 1000, 2048
	dgs := make([][]byte, warmup+runs+1)
	for i := range dgs {
		dgs[i] = fr.seal(t, payload)
	}
	// A read batch of 16 datagrams, then its end: the queued forwards leave
	// (in one io_uring send where the kernel has it).
	i := 0
	step := func() {
		s.in.Handle(rd, dgs[i], from, mono.Now())
		i++
		if i%16 == 0 {
			s.endBatch(0)
		}
	}
	for i < warmup {
		step()
	}
	s.endBatch(0)
	server.WaitFor(t, 1+warmup)
	if allocs := testing.AllocsPerRun(runs, step); allocs != 0 {
		t.Errorf("read loop's forward: %v allocations per datagram", allocs)
	}
	s.endBatch(0)
	server.WaitFor(t, int64(1+warmup+runs+1))
}

// TestServerRepliesDoNotAllocate runs the whole reply side of a running
// proxy: the server writes to the session's upstream socket, the poller
// (upstream.go) reads it, codes it and sends it to the router. The process's
// allocations over many replies, counted while nothing else runs, stay near
// zero (the janitor's once-a-second sweep may add a few).
func TestServerRepliesDoNotAllocate(t *testing.T) {
	server := testkit.NewCountingSink(t)
	s := startTestProxy(t, server.Addr().String(), "rate_pps = 100000000\nburst = 100000000")
	fr := newFakeRouter(t, goodKey, server.Addr())
	routerSide := testkit.NewCountingSink(t)
	if _, err := routerSide.Conn.WriteToUDPAddrPort(fr.seal(t, []byte("open")), s.Addr()); err != nil {
		t.Fatal(err)
	}
	server.WaitFor(t, 1)
	ps, ok := s.sessions.Peek(fr.send.Session())
	if !ok {
		t.Fatal("session not created")
	}
	// This router answers no path challenges: take its address as validated,
	// so replies are not held to 3x what came from it.
	ps.Paths.Learn(routerSide.Addr(), mono.Now())
	upstream := ps.port.Load().localAddr()
	before := routerSide.N.Load()
	pkt := make([]byte, 100)
	send := func(n int) {
		for i := 0; i < n; i++ {
			server.Conn.WriteToUDPAddrPort(pkt, upstream)
			if i%50 == 49 {
				routerSide.WaitFor(t, before+int64(i)) // keep the socket buffers from overflowing
			}
		}
	}
	send(200) // warm up
	routerSide.WaitFor(t, before+200)
	before = routerSide.N.Load()
	const runs = 2000
	allocs := testing.AllocsPerRun(1, func() {
		send(runs)
		routerSide.WaitFor(t, before+runs)
	})
	if per := allocs / runs; per > 0.01 {
		t.Errorf("%.3f allocations per server reply (%v over %d)", per, allocs, runs)
	}
}

// TestQualityReportsDoNotAllocate: a datagram that finds the session's
// quality report due sends it (to the validated path) without allocating.
func TestQualityReportsDoNotAllocate(t *testing.T) {
	server := testkit.NewCountingSink(t)
	cfg, err := ParseConfig("proxy.toml", `
listen = "127.0.0.1:0"
report_interval = "100ms"
[[client]]
id = "gamer"
key = "`+goodKey.String()+`"
allow = ["`+server.Addr().String()+`"]
rate_pps = 100000000
burst = 100000000
`)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rd := ingress.NewReader()
	fr := newFakeRouter(t, goodKey, server.Addr())
	routerSide := testkit.NewCountingSink(t)
	from := routerSide.Addr()
	payload := make([]byte, 100)
	s.in.Handle(rd, fr.seal(t, payload), from, mono.Now())
	server.WaitFor(t, 1)
	fr.send.Heard(mono.Now())
	ps, ok := s.sessions.Peek(fr.send.Session())
	if !ok {
		t.Fatal("session not created")
	}
	ps.Paths.Learn(from, mono.Now()) // validated: reports go to it
	const runs = 5
	dgs := make([][]byte, runs+2)
	for i := range dgs {
		dgs[i] = fr.seal(t, payload)
	}
	time.Sleep(110 * time.Millisecond)
	s.in.Handle(rd, dgs[0], from, mono.Now()) // the first report
	i := 1
	reports := counter(s, "proxy_quality_reports_total")
	allocs := testing.AllocsPerRun(runs, func() {
		time.Sleep(110 * time.Millisecond)
		s.in.Handle(rd, dgs[i], from, mono.Now())
		i++
	})
	if allocs != 0 {
		t.Errorf("a datagram sending the quality report: %v allocations", allocs)
	}
	if got := counter(s, "proxy_quality_reports_total") - reports; got < runs {
		t.Errorf("%v reports sent, want ≥ %d", got, runs)
	}
}
