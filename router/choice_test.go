package router

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/testkit"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/proxychoice"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

func TestProxyConfig(t *testing.T) {
	key := wire.Key{1}
	head := fmt.Sprintf("client_id = \"gamer\"\nkey = \"%s\"\n", key)
	uplinks := "[[uplink]]\nname = \"isp0\"\nsource = \"127.0.0.1\"\n[[uplink]]\nname = \"isp1\"\nsource = \"127.0.0.1\"\n"
	fwd := "[[forward]]\nlisten = \"127.0.0.1:0\"\nserver = \"198.18.41.2:27015\"\n"

	// The single form keeps working, with per-uplink overrides.
	c, err := ParseConfig("r.toml", head+"proxy = \"198.18.40.2:4500\"\n"+
		"[[uplink]]\nname = \"isp0\"\n[[uplink]]\nname = \"isp1\"\nproxy = \"198.18.31.2:5000\"\n"+fwd)
	if err != nil {
		t.Fatal(err)
	}
	if l := c.Proxy.List; len(l) != 1 || l[0].Paths[0].String() != "198.18.40.2:4500" || l[0].Paths[1].String() != "198.18.31.2:5000" ||
		c.Uplinks[0].Proxy != "198.18.40.2:4500" {
		t.Fatalf("single form: %+v, uplinks %+v", l, c.Uplinks)
	}

	c, err = ParseConfig("r.toml", head+uplinks+`
[[proxy]]
name = "fra"
address = "198.18.40.2:4500"
via = { isp1 = "198.18.31.2:5000" }
[[proxy]]
address = "198.18.44.2:4500"
[choice]
margin = "5ms"
`+fwd)
	if err != nil {
		t.Fatal(err)
	}
	l := c.Proxy.List
	if len(l) != 2 || l[0].Name != "fra" || l[1].Name != "proxy1" ||
		l[0].Paths[0].String() != "198.18.40.2:4500" || l[0].Paths[1].String() != "198.18.31.2:5000" ||
		l[1].Paths[1].String() != "198.18.44.2:4500" {
		t.Fatalf("tables: %+v", l)
	}
	if c.Choice.Margin.Duration != 5*time.Millisecond || c.Choice.After.Duration != DefaultSwitchAfter {
		t.Fatalf("choice: %+v", c.Choice)
	}

	for _, bad := range []struct{ text, want string }{
		{"[[proxy]]\nname = \"a\"\naddress = \"198.18.40.2:4500\"\nport = 5\n", `r.toml:6: proxy.0.port: unknown key`},
		{"[[proxy]]\naddress = \"198.18.40.2:4500\"\nvia = { isp7 = \"198.18.31.2:5000\" }\n", `r.toml:5: proxy.0.via.isp7: no [[uplink]] is named "isp7"`},
		{"[[proxy]]\naddress = \"198.18.40.2:4500\"\nvia = { isp1 = \"nowhere\" }\n", `r.toml:5: proxy.0.via.isp1: not an address:port`},
		{"[[proxy]]\nname = \"a\"\naddress = \"198.18.40.2:4500\"\n[[proxy]]\nname = \"a\"\naddress = \"198.18.40.3:4500\"\n", `r.toml:7: proxy.1.name: proxy "a" is configured twice`},
		{"[[proxy]]\nname = \"a\"\nvia = { isp1 = \"198.18.31.2:5000\" }\n", `proxy.0.address: no address for uplink "isp0"`},
		{"[[proxy]]\naddress = \"198.18.40.2\"\n", `r.toml:4: proxy.0.address: not an address:port`},
		{"proxy = 5\n", `r.toml:3: proxy: must be an address`},
		{"[[proxy]]\naddress = \"198.18.40.2:4500\"\n[choice]\nloss = 2.0\n", `r.toml:6: choice.loss: 2 is not above 0 and at most 1`},
	} {
		_, err := ParseConfig("r.toml", head+bad.text+uplinks+fwd)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("config\n%s\ngave %v, want an error containing %q", bad.text, err, bad.want)
		}
	}
	// An uplink's own proxy key does not mix with [[proxy]] tables.
	_, err = ParseConfig("r.toml", head+"[[proxy]]\naddress = \"198.18.40.2:4500\"\n[[uplink]]\nsource = \"127.0.0.1\"\nproxy = \"198.18.40.2:4500\"\n"+fwd)
	if err == nil || !strings.Contains(err.Error(), "r.toml:7: uplink.0.proxy: with [[proxy]] tables") {
		t.Errorf("uplink proxy with tables: %v", err)
	}
}

// fakeProxy answers keepalives and probes as a proxy would, with a server RTT,
// allow and overload flags the test sets; it counts data per session.
type fakeProxy struct {
	t    *testing.T
	key  wire.Key
	conn *net.UDPConn

	mu         sync.Mutex
	serverRTT  time.Duration
	allowed    bool
	overloaded bool
	sessions   map[uint64]*fakeSession
	data       map[uint64]int // data datagrams per session with a target
	closed     map[uint64]bool
	keepalives map[uint64][][]byte // keepalive bodies per session, in arrival order
}

type fakeSession struct {
	recv   *tunnel.Receiver
	send   *tunnel.Sender
	target netip.AddrPort
}

func (*fakeSession) Deliver(uint64, []byte, int64) {}

func newFakeProxy(t *testing.T, key wire.Key, serverRTT time.Duration) *fakeProxy {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p := &fakeProxy{t: t, key: key, conn: c, serverRTT: serverRTT, allowed: true,
		sessions: map[uint64]*fakeSession{}, data: map[uint64]int{}, closed: map[uint64]bool{},
		keepalives: map[uint64][][]byte{}}
	go p.serve()
	t.Cleanup(func() { c.Close() })
	return p
}

func (p *fakeProxy) addr() netip.AddrPort { return p.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (p *fakeProxy) set(fn func(p *fakeProxy)) {
	p.mu.Lock()
	fn(p)
	p.mu.Unlock()
}

// dataSessions returns the sessions that carried data and were not closed.
func (p *fakeProxy) liveDataSessions() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for id := range p.data {
		if !p.closed[id] {
			n++
		}
	}
	return n
}

func (p *fakeProxy) serve() {
	buf := make([]byte, 2048)
	out := make([]byte, wire.MaxDatagram)
	var h wire.Header
	var hello wire.Hello
	for {
		n, from, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		dg := buf[:n]
		off, err := wire.Parse(dg, &h, &hello)
		if err != nil {
			continue
		}
		p.mu.Lock()
		s := p.sessions[h.Session]
		if s == nil && h.Flags&wire.FlagHello != 0 {
			send, recv, err := wire.DeriveKeys(&p.key, &hello.Salt, h.Session, wire.RoleServer)
			if err == nil {
				snd, _ := tunnel.NewSender(send, h.Session, raic.Params{Scheme: raic.SchemeCopy, K: 1}, nil)
				s = &fakeSession{recv: tunnel.NewReceiver(recv, raic.DecoderConfig{}), send: snd, target: hello.Target}
				p.sessions[h.Session] = s
			}
		}
		if s == nil {
			p.mu.Unlock()
			continue
		}
		body, err := s.recv.Receive(dg, &h, off, mono.Now(), s)
		if err != nil {
			p.mu.Unlock()
			continue
		}
		now := mono.Now()
		var reply []byte
		switch h.Type {
		case wire.TypeData:
			p.data[h.Session]++
		case wire.TypeClose:
			p.closed[h.Session] = true
		case wire.TypeKeepalive:
			p.keepalives[h.Session] = append(p.keepalives[h.Session], append([]byte(nil), body...))
		case wire.TypePing:
			var ping wire.Ping
			if wire.ParsePing(body, &ping) == nil {
				pong := wire.Pong{Ping: ping, Overloaded: p.overloaded, PeerTime: now}
				var pb [wire.PongLen]byte
				reply, _ = s.send.SealControl(out, wire.TypePong, pong.Put(pb[:]), now)
			}
		case wire.TypeProbe:
			var pr wire.Probe
			if wire.ParseProbe(body, &pr) == nil {
				rep := wire.ProbeReply{Probe: pr, ServerRTT: p.serverRTT, Allowed: p.allowed, Overloaded: p.overloaded}
				var rb [wire.ProbeReplyLen]byte
				reply, _ = s.send.SealControl(out, wire.TypeProbeReply, rep.Put(rb[:]), now)
			}
		}
		p.mu.Unlock()
		if reply != nil {
			p.conn.WriteToUDPAddrPort(reply, from)
		}
	}
}

// logSink keeps the router's log lines for the test to look at.
type logSink struct {
	mu    sync.Mutex
	lines []string
}

func (l *logSink) Write(b []byte) (int, error) {
	l.mu.Lock()
	l.lines = append(l.lines, string(b))
	l.mu.Unlock()
	return len(b), nil
}

func (l *logSink) find(sub string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.lines {
		if strings.Contains(s, sub) {
			return s
		}
	}
	return ""
}

func (l *logSink) all(sub string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, s := range l.lines {
		if strings.Contains(s, sub) {
			out = append(out, s)
		}
	}
	return out
}

// waitUntil polls cond until it holds or d passes.
var waitUntil = testkit.WaitFor

// TestChoiceByServerRTT runs a router against two fake proxies that answer
// probes: the one with the lower server RTT wins although both are equally
// near the router, and each reason to move (latency, overload, refusal) moves
// the session as a new session on the other proxy, with the old one closed.
func TestChoiceByServerRTT(t *testing.T) {
	key := wire.Key{9}
	a := newFakeProxy(t, key, 10*time.Millisecond)
	b := newFakeProxy(t, key, 40*time.Millisecond)
	server := netip.MustParseAddrPort("198.18.41.2:27015")
	logs := &logSink{}
	cfg, err := ParseConfig("router.toml", fmt.Sprintf(`
client_id = "gamer"
key = "%s"
ping_interval = "20ms"
down_after = "100ms"
[choice]
margin = "10ms"
after = "200ms"
hold = "100ms"
probe_interval = "50ms"
[[uplink]]
source = "127.0.0.1"
[[uplink]]
source = "127.0.0.1"
[[proxy]]
name = "b"
address = "%s"
[[proxy]]
name = "a"
address = "%s"
[[forward]]
listen = "127.0.0.1:0"
server = "%s"
`, key, b.addr(), a.addr(), server))
	if err != nil {
		t.Fatal(err)
	}
	r := runRouterLogging(t, cfg, logs)

	waitUntil(t, 3*time.Second, "server RTTs from both proxies", func() bool {
		k := r.ch.Rank(server, mono.Now())
		return k.UseServer && k.Best >= 0 && r.proxies[k.Best].name == "a"
	})

	game, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer game.Close()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				game.WriteToUDPAddrPort([]byte("tick"), r.ForwardAddr(0))
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	on := func(want *fakeProxy, other *fakeProxy, what string) {
		t.Helper()
		waitUntil(t, 3*time.Second, what, func() bool {
			return want.liveDataSessions() == 1 && other.liveDataSessions() == 0
		})
	}
	switches := func(why string) float64 {
		return r.Metrics().Snapshot()[`router_proxy_switches_total{reason="`+why+`"}`]
	}
	on(a, b, "the session on a (server RTT 10 ms against 40 ms)")

	// a gets slower to the server than b by more than the margin: after
	// choice.after the session moves, as a new session.
	a.set(func(p *fakeProxy) { p.serverRTT = 80 * time.Millisecond })
	on(b, a, "the session to move to b for latency")
	if switches(proxychoice.ReasonLatency) != 1 {
		t.Errorf("latency switches = %v, want 1", switches(proxychoice.ReasonLatency))
	}
	if l := logs.find("session moved to another proxy"); !strings.Contains(l, "reason=latency") || !strings.Contains(l, "from=a to=b") {
		t.Errorf("switch log line: %q", l)
	}

	// b says it is overloaded: back to a, though a is slower.
	b.set(func(p *fakeProxy) { p.overloaded = true })
	on(a, b, "the session to leave the overloaded b")
	if switches(proxychoice.ReasonOverload) != 1 {
		t.Errorf("overload switches = %v, want 1", switches(proxychoice.ReasonOverload))
	}

	// a refuses the server: the session must leave at once, even for the
	// overloaded b.
	a.set(func(p *fakeProxy) { p.allowed = false })
	on(b, a, "the session to leave a, which refused the server")
	if switches(proxychoice.ReasonRefused) != 1 {
		t.Errorf("refused switches = %v, want 1", switches(proxychoice.ReasonRefused))
	}
	for _, l := range logs.all("session moved") {
		t.Log(strings.TrimSpace(l))
	}
	if n := r.ProxyStats()[0].Sessions; n != 1 {
		t.Errorf("b carries %d sessions by the router's count, want 1", n)
	}
}

// TestMovedSessionDoesNotAllocate: after a flow moved to another proxy, its
// packets go there, and the send and receive paths still do not allocate.
func TestMovedSessionDoesNotAllocate(t *testing.T) {
	key := wire.Key{5}
	p0, p1, game := sink(t), sink(t), sink(t)
	r := newQuietRouter(t, fmt.Sprintf(`
client_id = "gamer"
key = "%s"
[[uplink]]
source = "127.0.0.1"
[[uplink]]
source = "127.0.0.1"
[[proxy]]
address = "%s"
[[proxy]]
address = "%s"
[[forward]]
listen = "127.0.0.1:0"
server = "198.18.41.2:27015"
`, key, p0, p1))
	f := r.forwards[0]
	pkt := make([]byte, 100)
	r.fromGame(f, pkt, game, mono.Now())
	head, ok := f.flows.Peek(game)
	if !ok || head.px != r.proxies[0] {
		t.Fatalf("session on %v, want the first proxy", head.px.name)
	}
	r.switchSession(head, r.proxies[1], proxychoice.ReasonLatency, mono.Now())
	cur := head.cur.Load()
	if cur == head || cur.px != r.proxies[1] || cur.side != nil || cur.head != head {
		t.Fatalf("after the move: cur %p on %s, head %p", cur, cur.px.name, head)
	}
	if _, ok := r.byID.Peek(cur.id); !ok {
		t.Fatal("the new session is not findable by the receive path")
	}
	const runs, warmup = 1000, 2048
	for i := 0; i < warmup; i++ {
		r.fromGame(f, pkt, game, mono.Now())
	}
	if allocs := testing.AllocsPerRun(runs, func() { r.fromGame(f, pkt, game, mono.Now()) }); allocs != 0 {
		t.Errorf("send path after a move: %v allocations per packet", allocs)
	}

	hello, _ := cur.send.Hello()
	dgs := testkit.SealedAsProxy(t, key, hello.Salt, cur.id, pkt, warmup+runs+1)
	var h wire.Header
	for i := 0; i < warmup; i++ {
		r.fromProxy(r.uplinks[1], dgs[i], &h, mono.Now())
	}
	i := warmup
	delivered := r.m.toGame.Load()
	if allocs := testing.AllocsPerRun(runs, func() {
		r.fromProxy(r.uplinks[1], dgs[i], &h, mono.Now())
		i++
	}); allocs != 0 {
		t.Errorf("receive path after a move: %v allocations per datagram", allocs)
	}
	if got := r.m.toGame.Load() - delivered; got != runs+1 {
		t.Fatalf("delivered %d packets to the game through the new session, want %d", got, runs+1)
	}
	// The flow's end closes the current session and forgets both.
	f.flows.Delete(game)
	if _, ok := r.byID.Peek(cur.id); ok {
		t.Error("the current session outlived its flow")
	}
	if _, ok := r.byID.Peek(head.id); ok {
		t.Error("the head outlived its flow")
	}
}

// TestStandbyProxyPingsSlowly: with three proxies, the one that is neither
// best nor reserve for any server gets keepalives at the standby pace, while
// the best and the reserve keep the full rate.
func TestStandbyProxyPingsSlowly(t *testing.T) {
	key := wire.Key{11}
	var addrs []netip.AddrPort
	for _, ms := range []int{10, 20, 60} {
		addrs = append(addrs, newFakeProxy(t, key, time.Duration(ms)*time.Millisecond).addr())
	}
	cfg, err := ParseConfig("router.toml", fmt.Sprintf(`
client_id = "gamer"
key = "%s"
ping_interval = "20ms"
down_after = "100ms"
[choice]
probe_interval = "50ms"
[[uplink]]
source = "127.0.0.1"
[[proxy]]
name = "a"
address = "%s"
[[proxy]]
name = "b"
address = "%s"
[[proxy]]
name = "c"
address = "%s"
[[forward]]
listen = "127.0.0.1:0"
server = "198.18.41.2:27015"
`, key, addrs[0], addrs[1], addrs[2]))
	if err != nil {
		t.Fatal(err)
	}
	r := runRouter(t, cfg)

	server := netip.MustParseAddrPort("198.18.41.2:27015")
	waitUntil(t, 3*time.Second, "server RTTs from the proxies", func() bool {
		k := r.ch.Rank(server, mono.Now())
		return k.UseServer && k.Best >= 0 && r.proxies[k.Best].name == "a" && k.Reserve >= 0 && r.proxies[k.Reserve].name == "b"
	})
	before := make([]uint64, 3)
	for j, s := range r.ProxyStats() {
		before[j] = s.Paths[0].PingsSent
	}
	time.Sleep(1500 * time.Millisecond)
	var sent [3]uint64
	for j, s := range r.ProxyStats() {
		sent[j] = s.Paths[0].PingsSent - before[j]
	}
	t.Logf("keepalives in 1.5 s: a %d, b %d, c %d", sent[0], sent[1], sent[2])
	if sent[0] < 30 || sent[1] < 30 {
		t.Errorf("best and reserve got %d and %d keepalives in 1.5 s at 20 ms, want the full rate", sent[0], sent[1])
	}
	if sent[2] > 3 {
		t.Errorf("the standby proxy got %d keepalives in 1.5 s, want at most 3 (one a second)", sent[2])
	}
}

// TestKeepaliveSaysPathsAndCopies: the keepalives of a game session say how
// many paths the router has and how many copies of each datagram it sends on
// each (copies_per_uplink), so the proxy's replies get as many.
func TestKeepaliveSaysPathsAndCopies(t *testing.T) {
	key := wire.Key{5}
	px := newFakeProxy(t, key, 10*time.Millisecond)
	server := netip.MustParseAddrPort("198.18.41.2:27015")
	cfg, err := ParseConfig("router.toml", fmt.Sprintf(`
client_id = "gamer"
key = "%s"
copies_per_uplink = 3
[[uplink]]
source = "127.0.0.1"
[[uplink]]
source = "127.0.0.1"
[[proxy]]
name = "a"
address = "%s"
[[forward]]
listen = "127.0.0.1:0"
server = "%s"
`, key, px.addr(), server))
	if err != nil {
		t.Fatal(err)
	}
	r := runRouter(t, cfg)

	game, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer game.Close()
	var bodies [][]byte
	waitUntil(t, 3*time.Second, "keepalives of the game session on both paths", func() bool {
		game.WriteToUDPAddrPort([]byte("tick"), r.ForwardAddr(0))
		px.mu.Lock()
		defer px.mu.Unlock()
		for id := range px.data {
			bodies = px.keepalives[id]
		}
		return len(bodies) >= 2
	})
	for _, b := range bodies {
		if len(b) != 2 || b[0] != 2 || b[1] != 3 {
			t.Errorf("keepalive body %v, want [2 3] (two paths, three copies each)", b)
		}
	}
}

// runRouter starts a router on cfg that runs until the test ends.
func runRouter(t *testing.T, cfg *Config) *Router {
	t.Helper()
	return runRouterLogging(t, cfg, io.Discard)
}

// runRouterLogging is runRouter with the router's log written to logs.
func runRouterLogging(t *testing.T, cfg *Config, logs io.Writer) *Router {
	t.Helper()
	r, err := New(cfg, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, r.Run)
	return r
}
