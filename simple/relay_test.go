package simple

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/testkit"
	"github.com/raicnet/raic/pkg/logging"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/wire"
)

// fakeProxy is a UDP socket standing in for the latency-oriented proxy. It
// records every datagram with the address it came from.
type fakeProxy struct {
	conn *net.UDPConn
	got  chan received
}

type received struct {
	data []byte
	from netip.AddrPort
}

// newFakeProxy starts a fake proxy. If echo is set, it answers each datagram
// with echo(datagram) (nil: no answer).
func newFakeProxy(t testing.TB, echo func([]byte) []byte) *fakeProxy {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p := &fakeProxy{conn: c, got: make(chan received, 1024)}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			d := append([]byte(nil), buf[:n]...)
			select {
			case p.got <- received{d, from}:
			default:
			}
			if echo != nil {
				if out := echo(d); out != nil {
					c.WriteToUDPAddrPort(out, from)
				}
			}
		}
	}()
	return p
}

func (p *fakeProxy) addr() netip.AddrPort { return p.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// next returns the next datagram the fake proxy received, failing after a while.
func (p *fakeProxy) next(t *testing.T) received {
	t.Helper()
	select {
	case r := <-p.got:
		return r
	case <-time.After(2 * time.Second):
		t.Fatal("fake proxy received nothing")
		return received{}
	}
}

// none checks that the fake proxy receives nothing for a little while.
func (p *fakeProxy) none(t *testing.T) {
	t.Helper()
	select {
	case r := <-p.got:
		t.Fatalf("fake proxy received %q from %v, want nothing", r.data, r.from)
	case <-time.After(100 * time.Millisecond):
	}
}

// datagram builds something that looks like the wire format: a header with the
// version byte, then payload, then room for a tag.
func datagram(payload string) []byte {
	b := make([]byte, wire.HeaderLen, wire.HeaderLen+len(payload)+wire.TagLen)
	wire.PutHeader(b, &wire.Header{Type: wire.TypeData, Session: 7, Packet: 1})
	b = append(b, payload...)
	return append(b, make([]byte, wire.TagLen)...)
}

func payloadOf(dg []byte) string {
	if len(dg) < MinDatagram {
		return ""
	}
	return string(dg[wire.HeaderLen : len(dg)-wire.TagLen])
}

// testConfig returns a one-route config listening on a free loopback port and
// relaying to upstream.
func testConfig(t testing.TB, upstream netip.AddrPort, extra string) *Config {
	t.Helper()
	c, err := ParseConfig("test.toml", extra+fmt.Sprintf("\n[[route]]\nlisten = \"127.0.0.1:0\"\nupstream = %q\n", upstream.String()))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// startRelay builds a relay and runs it until the test ends.
func startRelay(t *testing.T, cfg *Config, logs *testkit.LogBuffer) *Relay {
	t.Helper()
	if logs == nil {
		logs = &testkit.LogBuffer{}
	}
	log, err := logging.New(logs, "raic-simple", "debug")
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	r.reportEvery = 50 * time.Millisecond // see the periodic warnings within a test
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return r
}

// client is a router uplink: a loopback socket sending to the relay.
func newClient(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func send(t *testing.T, c *net.UDPConn, to netip.AddrPort, dg []byte) {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort(dg, to); err != nil {
		t.Fatal(err)
	}
}

// recv reads one datagram from c, or returns nil after d.
func recv(c *net.UDPConn, d time.Duration) ([]byte, netip.AddrPort) {
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 2048)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nil, netip.AddrPort{}
	}
	return buf[:n], from
}

// containsLine reports whether one line of logs contains every part.
func containsLine(logs string, parts ...string) bool {
	for _, l := range strings.Split(logs, "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(l, p)
		}
		if ok {
			return true
		}
	}
	return false
}

func counter(r *Relay, name string) float64 { return r.Metrics().Snapshot()[name] }

// waitFor polls cond until it holds, failing the test after two seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Two routers' uplinks must look like two distinct peers to the proxy, and each
// must get its own replies back, from the address it sent to.
func TestTwoSourcesDistinctUpstreamAndReplies(t *testing.T) {
	px := newFakeProxy(t, func(d []byte) []byte { return datagram("re:" + payloadOf(d)) })
	r := startRelay(t, testConfig(t, px.addr(), ""), nil)
	a, b := newClient(t), newClient(t)

	send(t, a, r.Addr(0), datagram("A1"))
	ga := px.next(t)
	send(t, b, r.Addr(0), datagram("B1"))
	gb := px.next(t)
	if payloadOf(ga.data) != "A1" || payloadOf(gb.data) != "B1" {
		t.Fatalf("proxy got %q and %q", ga.data, gb.data)
	}
	if ga.from == gb.from {
		t.Fatalf("both sources reached the proxy from %v: mappings are not distinct", ga.from)
	}
	for _, from := range []netip.AddrPort{ga.from, gb.from} {
		if from == r.Addr(0) || int(from.Port()) == a.LocalAddr().(*net.UDPAddr).Port || int(from.Port()) == b.LocalAddr().(*net.UDPAddr).Port {
			t.Fatalf("proxy saw %v, not an upstream socket of the relay", from)
		}
	}

	// Replies come back to the right source, from the listener's address.
	for _, c := range []struct {
		conn *net.UDPConn
		want string
	}{{a, "re:A1"}, {b, "re:B1"}} {
		got, from := recv(c.conn, 2*time.Second)
		if payloadOf(got) != c.want {
			t.Fatalf("client got %q, want %q", got, c.want)
		}
		if from != r.Addr(0) {
			t.Fatalf("reply came from %v, want the listener %v", from, r.Addr(0))
		}
	}
	if extra, _ := recv(a, 50*time.Millisecond); extra != nil {
		t.Fatalf("client A got a stray datagram %q", extra)
	}

	// A second datagram of A uses A's existing mapping.
	send(t, a, r.Addr(0), datagram("A2"))
	if g := px.next(t); g.from != ga.from || payloadOf(g.data) != "A2" {
		t.Fatalf("A's second datagram came from %v (%q), want %v", g.from, g.data, ga.from)
	}
	if got, _ := recv(a, 2*time.Second); payloadOf(got) != "re:A2" {
		t.Fatalf("A got %q, want re:A2", got)
	}
	if n := r.Mappings(); n != 2 {
		t.Fatalf("%d mappings, want 2", n)
	}
	waitFor(t, "counters", func() bool {
		return counter(r, `simple_relayed_total{route="0",dir="up"}`) == 3 &&
			counter(r, `simple_relayed_total{route="0",dir="down"}`) == 3 &&
			counter(r, "simple_mappings_created_total") == 2
	})
}

// Only datagrams that look like the wire format pass, in either direction.
func TestMalformedDropped(t *testing.T) {
	px := newFakeProxy(t, func(d []byte) []byte {
		if payloadOf(d) == "garbage-please" {
			return []byte("HTTP/1.1 200 OK\r\n\r\nnot a datagram of ours")
		}
		return nil
	})
	r := startRelay(t, testConfig(t, px.addr(), ""), nil)
	c := newClient(t)

	wrongVersion := datagram("x")
	wrongVersion[0] = wire.Version + 1
	bad := [][]byte{
		{},                           // empty
		{wire.Version},               // version only
		datagram("")[:MinDatagram-1], // one byte short of a header and tag
		wrongVersion,                 // unknown version
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),             // not ours at all
		append(datagram(""), make([]byte, wire.MaxDatagram)...), // too long
	}
	for _, dg := range bad {
		send(t, c, r.Addr(0), dg)
	}
	waitFor(t, "malformed count", func() bool { return counter(r, `simple_dropped_total{reason="malformed"}`) == float64(len(bad)) })
	px.none(t)
	if n := r.Mappings(); n != 0 {
		t.Fatalf("malformed datagrams created %d mappings", n)
	}

	// The shortest and the longest acceptable datagrams pass.
	short := datagram("")
	long := datagram(strings.Repeat("l", wire.MaxDatagram-MinDatagram))
	send(t, c, r.Addr(0), short)
	send(t, c, r.Addr(0), long)
	if g := px.next(t); len(g.data) != MinDatagram {
		t.Fatalf("got %d bytes, want %d", len(g.data), MinDatagram)
	}
	if g := px.next(t); len(g.data) != wire.MaxDatagram {
		t.Fatalf("got %d bytes, want %d", len(g.data), wire.MaxDatagram)
	}

	// What the proxy answers is checked too.
	send(t, c, r.Addr(0), datagram("garbage-please"))
	px.next(t)
	waitFor(t, "malformed reply count", func() bool { return counter(r, `simple_dropped_total{reason="malformed_reply"}`) == 1 })
	if got, _ := recv(c, 100*time.Millisecond); got != nil {
		t.Fatalf("client got the malformed reply %q", got)
	}
}

// Beyond the burst, a source's datagrams are dropped and counted, and the drop
// is reported in the log.
func TestRateLimitDropsBeyondBurst(t *testing.T) {
	px := newFakeProxy(t, nil)
	logs := &testkit.LogBuffer{}
	r := startRelay(t, testConfig(t, px.addr(), "rate_pps = 1\nburst = 5\n"), logs)

	a, b := newClient(t), newClient(t)
	const sent = 20
	for i := range sent {
		send(t, a, r.Addr(0), datagram(fmt.Sprint("a", i)))
	}
	waitFor(t, "all handled", func() bool {
		return counter(r, `simple_relayed_total{route="0",dir="up"}`)+counter(r, `simple_dropped_total{reason="rate_limited"}`) == sent
	})
	if up, lim := counter(r, `simple_relayed_total{route="0",dir="up"}`), counter(r, `simple_dropped_total{reason="rate_limited"}`); up != 5 || lim != sent-5 {
		t.Fatalf("relayed %v, rate limited %v; want 5 and %d", up, lim, sent-5)
	}
	for i := range 5 {
		if g := px.next(t); payloadOf(g.data) != fmt.Sprint("a", i) {
			t.Fatalf("proxy got %q, want a%d (the first of the burst)", g.data, i)
		}
	}
	px.none(t)

	// The bucket is per source: another router is not affected.
	send(t, b, r.Addr(0), datagram("b0"))
	if g := px.next(t); payloadOf(g.data) != "b0" {
		t.Fatalf("proxy got %q, want b0", g.data)
	}
	waitFor(t, "rate-limit warning", func() bool {
		return containsLine(logs.String(), `level=WARN msg="source rate limited"`,
			"source="+a.LocalAddr().String(), fmt.Sprintf("dropped=%d", sent-5))
	})
}

// The bucket refills at the configured rate (driven with a synthetic clock).
func TestRateLimitRefill(t *testing.T) {
	px := newFakeProxy(t, nil)
	r := newBareRelay(t, testConfig(t, px.addr(), "rate_pps = 10\nburst = 2\n"))
	rt := r.routes[0]
	src := netip.MustParseAddrPort("127.0.0.1:40000")
	dg := datagram("x")
	now := mono.Now()
	relayed := func() float64 { return counter(r, `simple_relayed_total{route="0",dir="up"}`) }
	for range 4 {
		r.fromSource(rt, dg, src, now)
	}
	if relayed() != 2 {
		t.Fatalf("relayed %v at once, want the burst of 2", relayed())
	}
	r.fromSource(rt, dg, src, now+int64(50*time.Millisecond)) // half a token
	if relayed() != 2 {
		t.Fatalf("relayed %v after 50ms, want still 2", relayed())
	}
	r.fromSource(rt, dg, src, now+int64(100*time.Millisecond)) // one token
	if relayed() != 3 {
		t.Fatalf("relayed %v after 100ms, want 3", relayed())
	}
	// A long pause refills no more than the burst.
	for range 5 {
		r.fromSource(rt, dg, src, now+int64(time.Hour))
	}
	if relayed() != 5 {
		t.Fatalf("relayed %v after an hour, want 5", relayed())
	}
	if lim := counter(r, `simple_dropped_total{reason="rate_limited"}`); lim != 2+1+3 {
		t.Fatalf("rate limited %v, want 6", lim)
	}
}

func TestIdleMappingsExpire(t *testing.T) {
	px := newFakeProxy(t, func(d []byte) []byte { return d })
	logs := &testkit.LogBuffer{}
	r := startRelay(t, testConfig(t, px.addr(), `mapping_idle = "150ms"`), logs)
	c := newClient(t)
	send(t, c, r.Addr(0), datagram("1"))
	first := px.next(t).from
	if got, _ := recv(c, 2*time.Second); payloadOf(got) != "1" {
		t.Fatalf("no reply: %q", got)
	}
	if r.Mappings() != 1 {
		t.Fatalf("%d mappings, want 1", r.Mappings())
	}
	// Traffic keeps it alive past the idle time.
	for i := range 4 {
		time.Sleep(60 * time.Millisecond)
		send(t, c, r.Addr(0), datagram(fmt.Sprint("k", i)))
		if g := px.next(t); g.from != first {
			t.Fatalf("an active mapping changed its upstream address: %v then %v", first, g.from)
		}
		if got, _ := recv(c, 2*time.Second); payloadOf(got) != fmt.Sprint("k", i) {
			t.Fatalf("reply %q, want k%d", got, i)
		}
	}
	waitFor(t, "expiry", func() bool { return r.Mappings() == 0 && counter(r, "simple_mappings_expired_total") == 1 })
	// The counter moves before the log line is written: wait for the line too.
	expiryLogged := func() bool {
		return containsLine(logs.String(), `msg="mapping expired"`, "source="+c.LocalAddr().String(), "up=5 down=5")
	}
	deadline := time.Now().Add(2 * time.Second)
	for !expiryLogged() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !expiryLogged() {
		t.Fatalf("no expiry log line in:\n%s", logs)
	}
	if g := counter(r, "simple_mappings"); g != 0 {
		t.Fatalf("gauge says %v mappings", g)
	}
	// The source comes back: a new mapping.
	send(t, c, r.Addr(0), datagram("2"))
	px.next(t)
	waitFor(t, "new mapping", func() bool { return counter(r, "simple_mappings_created_total") == 2 })
	if got, _ := recv(c, 2*time.Second); payloadOf(got) != "2" {
		t.Fatalf("no reply on the new mapping: %q", got)
	}
}

func TestMaxMappingsEviction(t *testing.T) {
	px := newFakeProxy(t, func(d []byte) []byte { return d })
	logs := &testkit.LogBuffer{}
	r := startRelay(t, testConfig(t, px.addr(), "max_mappings = 2"), logs)
	c1, c2, c3 := newClient(t), newClient(t), newClient(t)
	var ups []netip.AddrPort
	for i, c := range []*net.UDPConn{c1, c2, c3} {
		send(t, c, r.Addr(0), datagram(fmt.Sprint(i)))
		ups = append(ups, px.next(t).from)
		if got, _ := recv(c, 2*time.Second); payloadOf(got) != fmt.Sprint(i) {
			t.Fatalf("client %d: reply %q", i, got)
		}
		time.Sleep(2 * time.Millisecond) // distinct last-use times
	}
	if n := r.Mappings(); n != 2 {
		t.Fatalf("%d mappings, want 2", n)
	}
	if ev := counter(r, "simple_mappings_evicted_total"); ev != 1 {
		t.Fatalf("evicted %v, want 1", ev)
	}
	// The least recently used (c1) went, and its upstream socket is closed: what
	// the proxy sends to it reaches nobody.
	if _, ok := r.mappings.Peek(mapKey{0, c1.LocalAddr().(*net.UDPAddr).AddrPort()}); ok {
		t.Fatal("the least recently used mapping survived")
	}
	px.conn.WriteToUDPAddrPort(datagram("late"), ups[0])
	if got, _ := recv(c1, 100*time.Millisecond); got != nil {
		t.Fatalf("evicted mapping still relays: %q", got)
	}
	// The others still work.
	send(t, c3, r.Addr(0), datagram("again"))
	if g := px.next(t); g.from != ups[2] {
		t.Fatalf("c3's mapping moved from %v to %v", ups[2], g.from)
	}
	if got, _ := recv(c3, 2*time.Second); payloadOf(got) != "again" {
		t.Fatalf("c3 reply %q", got)
	}
	waitFor(t, "eviction warning", func() bool {
		return containsLine(logs.String(), "level=WARN", "mapping table full", "evicted=1", "max_mappings=2")
	})
	if !containsLine(logs.String(), "level=DEBUG", `msg="mapping evicted: table full"`, "source="+c1.LocalAddr().String()) {
		t.Fatalf("no eviction log line for c1 in:\n%s", logs)
	}
}

// Nothing a source sends may crash the relay: random datagrams, many of them
// with the right version byte, are counted and dropped or relayed.
func TestRandomDatagramsNeverPanic(t *testing.T) {
	px := newFakeProxy(t, nil)
	r := newBareRelay(t, testConfig(t, px.addr(), "rate_pps = 1e9\nburst = 1000000"))
	rt := r.routes[0]
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, wire.MaxDatagram+1)
	srcs := []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.1:40001"),
		netip.MustParseAddrPort("127.0.0.1:0"),
		px.addr(),
		{},
	}
	var relayable int
	for i := range 5000 {
		dg := buf[:rng.IntN(len(buf)+1)]
		for j := range dg {
			dg[j] = byte(rng.Uint32())
		}
		if len(dg) > 0 && i%2 == 0 {
			dg[0] = wire.Version
		}
		src := srcs[i%len(srcs)]
		if looksLikeWire(dg) && src.Port() != 0 && src != px.addr() {
			relayable++
		}
		r.fromSource(rt, dg, src, mono.Now())
		if m, ok := r.mappings.Peek(mapKey{0, srcs[0]}); ok {
			m.fromUpstream(dg, mono.Now())
		}
	}
	if up := counter(r, `simple_relayed_total{route="0",dir="up"}`); up != float64(relayable) {
		t.Fatalf("relayed %v, want %d", up, relayable)
	}
	total := counter(r, `simple_relayed_total{route="0",dir="up"}`) + counter(r, `simple_dropped_total{reason="malformed"}`) +
		counter(r, `simple_dropped_total{reason="bad_source"}`)
	if total != 5000 {
		t.Fatalf("relayed+dropped = %v, want every datagram accounted for (5000)", total)
	}
}

// newBareRelay builds a relay without running it, for driving the per-datagram
// handlers directly.
func newBareRelay(t testing.TB, cfg *Config) *Relay {
	t.Helper()
	log, _ := logging.New(&testkit.LogBuffer{}, "raic-simple", "error")
	r, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// discard is a loopback socket that nobody reads: datagrams sent to it are
// queued and then dropped by the kernel, which costs the sender nothing.
func discard(t testing.TB) netip.AddrPort {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// The per-datagram paths allocate nothing once a mapping exists: relaying up,
// relaying down, and every kind of drop.
func TestZeroAllocsPerDatagram(t *testing.T) {
	up := discard(t)
	r := newBareRelay(t, testConfig(t, up, "rate_pps = 1e9\nburst = 1000000"))
	rt := r.routes[0]
	src := discard(t)
	dg := datagram(strings.Repeat("p", 100))
	r.fromSource(rt, dg, src, mono.Now()) // creates the mapping
	m, ok := r.mappings.Peek(mapKey{0, src})
	if !ok {
		t.Fatal("no mapping")
	}
	bad := []byte("not ours")

	limited := netip.MustParseAddrPort("127.0.0.1:1")
	r.fromSource(rt, dg, limited, mono.Now())
	lm, _ := r.mappings.Peek(mapKey{0, limited})
	lm.mu.Lock()
	lm.tokens, lm.last = 0, 1<<62 // no refill: every datagram is over the limit
	lm.mu.Unlock()

	cases := []struct {
		name string
		fn   func()
	}{
		{"up", func() { r.fromSource(rt, dg, src, mono.Now()) }},
		{"down", func() { m.fromUpstream(dg, mono.Now()) }},
		{"malformed", func() { r.fromSource(rt, bad, src, mono.Now()) }},
		{"malformed reply", func() { m.fromUpstream(bad, mono.Now()) }},
		{"rate limited", func() { r.fromSource(rt, dg, limited, mono.Now()) }},
	}
	for _, c := range cases {
		if a := testing.AllocsPerRun(1000, c.fn); a != 0 {
			t.Errorf("%s: %v allocations per datagram, want 0", c.name, a)
		}
	}
	if counter(r, `simple_dropped_total{reason="rate_limited"}`) < 1000 {
		t.Error("the rate-limited case did not hit the limit")
	}
}

// A relay closes cleanly without having run, and Run after Close fails.
func TestCloseWithoutRun(t *testing.T) {
	r := newBareRelay(t, testConfig(t, discard(t), ""))
	src := discard(t)
	r.fromSource(r.routes[0], datagram("x"), src, mono.Now())
	if r.Mappings() != 1 {
		t.Fatal("no mapping")
	}
	m, _ := r.mappings.Peek(mapKey{0, src})
	r.Close()
	r.Close()
	if !m.closed.Load() || r.Mappings() != 0 {
		t.Fatal("Close left a mapping open")
	}
	if err := r.Run(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Run after Close: %v", err)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	// Find a free port for the metrics listener.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	maddr := l.Addr().String()
	l.Close()
	px := newFakeProxy(t, nil)
	r := startRelay(t, testConfig(t, px.addr(), fmt.Sprintf("metrics = %q", maddr)), nil)
	c := newClient(t)
	send(t, c, r.Addr(0), datagram("m"))
	px.next(t)
	if err := r.Metrics().Err(); err != nil {
		t.Fatalf("metric registration refused: %v", err)
	}
	var body string
	waitFor(t, "metrics endpoint", func() bool {
		resp, err := http.Get("http://" + maddr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return strings.Contains(body, "simple_mappings_created_total 1")
	})
	for _, want := range []string{"simple_relayed_total{", `reason="malformed"`, "simple_mappings 1", "# TYPE simple_dropped_total counter"} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}
	// Health beside the metrics, for a load balancer in front of relays.
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get("http://" + maddr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s = %d, want 200", path, resp.StatusCode)
		}
	}
}

// A datagram that finds its mapping closed under it (expired or evicted between
// lookup and send) gets a new mapping instead of being lost.
func TestSendOnClosedMappingRetries(t *testing.T) {
	px := newFakeProxy(t, nil)
	r := newBareRelay(t, testConfig(t, px.addr(), ""))
	rt := r.routes[0]
	src := netip.MustParseAddrPort("127.0.0.1:40002")
	r.fromSource(rt, datagram("1"), src, mono.Now())
	first := px.next(t).from
	k := mapKey{0, src}
	old, _ := r.mappings.Peek(k)
	r.mappings.Delete(k) // as a sweep would: the socket closes
	_, err := old.up.Write(datagram("2"))
	if !r.retry(rt, k, old, datagram("2"), mono.Now(), err) {
		t.Fatalf("retry failed (first error %v)", err)
	}
	if g := px.next(t); payloadOf(g.data) != "2" || g.from == first {
		t.Fatalf("proxy got %q from %v, want 2 from a new mapping (old %v)", g.data, g.from, first)
	}
	if n := counter(r, `simple_dropped_total{reason="upstream_send_error"}`); n != 0 {
		t.Fatalf("%v send errors counted", n)
	}
}
