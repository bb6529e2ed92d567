package ingress

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/clients"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/replypath"
	"github.com/raicnet/raic/pkg/session"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// testSession is the smallest program session: a Peer and a count of the
// packets it was given.
type testSession struct {
	Peer
	delivered [][]byte
	count     *int // set: Deliver only counts here (the benchmarks' sink)
}

func (ts *testSession) RouterSide() *Peer     { return &ts.Peer }
func (ts *testSession) DataSink() tunnel.Sink { return ts }
func (ts *testSession) Deliver(_ uint64, pkt []byte, _ int64) {
	if ts.count != nil {
		*ts.count++
		return
	}
	ts.delivered = append(ts.delivered, append([]byte(nil), pkt...))
}

// testProgram opens sessions into its table and passes controls when told to.
type testProgram struct {
	table  *session.Table[uint64, *testSession]
	opened int
	pass   bool
	passed []wire.Type
}

func (p *testProgram) NewSession(a *clients.Admission, id uint64, hello *wire.Hello, _ netip.AddrPort) (*testSession, error) {
	ts := &testSession{}
	ts.Client, ts.Salt = a.Client, hello.Salt
	ts.Recv = tunnel.NewReceiver(a.Recv, raic.DecoderConfig{})
	var err error
	ts.Send, err = tunnel.NewSender(a.Send, id, raic.Params{Scheme: raic.SchemeCopy, K: 1}, nil)
	return ts, err
}

func (p *testProgram) Opened(*testSession, int64) { p.opened++ }

func (p *testProgram) Pass(r *Reader, _ *testSession, _ []byte, _ netip.AddrPort, _ int64) bool {
	if p.pass {
		p.passed = append(p.passed, r.Hdr.Type)
	}
	return p.pass
}
func (p *testProgram) Probe(_ *testSession, rep *wire.ProbeReply, _ int64) {
	rep.ServerRTT = 7 * time.Millisecond
}
func (p *testProgram) Overloaded(int64) bool { return true }

type bed struct {
	in     *Ingress[*testSession]
	prog   *testProgram
	reg    *metrics.Registry
	key    wire.Key
	router *net.UDPConn // where answers land
	r      *Reader
}

func newBed(t *testing.T) *bed { return newBedWith(t, func(*Config) {}) }

// maxEntries is the session table's size of the next newBedWith (at least 16).
var maxEntries int

// newBedWith is newBed with the config changed by edit first.
func newBedWith(t testing.TB, edit func(*Config)) *bed {
	t.Helper()
	key, _ := wire.GenerateKey()
	router, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { router.Close() })
	prog := &testProgram{table: session.NewTable(session.Config[uint64, *testSession]{MaxEntries: max(16, maxEntries), IdleTimeout: time.Minute, Hash: func(id uint64) uint64 { return id }})}
	reg := metrics.NewRegistry()
	cfg := Config{
		Listen:  "127.0.0.1:0",
		Clients: []clients.Config{{ID: "gamer", Key: key.String(), Allow: []string{"198.18.41.2:27015"}, RatePPS: 1e6, Burst: 1e6}},
		Prefix:  "test", Registry: reg, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), HelloMaxAge: time.Minute,
	}
	edit(&cfg)
	in, err := New(cfg, prog.table, prog)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(in.Close)
	return &bed{in: in, prog: prog, reg: reg, key: key, router: router, r: NewReader()}
}

func (b *bed) from() netip.AddrPort { return b.router.LocalAddr().(*net.UDPAddr).AddrPort() }

func (b *bed) count(name string) float64 { return b.reg.Snapshot()[name] }

// answer reads the next answer the router got and parses its type.
func (b *bed) answer(t *testing.T) wire.Type {
	t.Helper()
	b.router.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 2048)
	n, err := b.router.Read(buf)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	var h wire.Header
	if _, err := wire.Parse(buf[:n], &h, nil); err != nil {
		t.Fatal(err)
	}
	if h.Type == wire.TypePathChallenge {
		return b.answer(t) // the check of a new address; the answer follows
	}
	return h.Type
}

// routerSender is a router's side of a new session of client id with key.
func routerSender(t testing.TB, key wire.Key, id string) *tunnel.Sender {
	return tokenSender(t, key, id, nil)
}

// tokenSender is routerSender for a router whose hellos carry tok (none: nil).
func tokenSender(t testing.TB, key wire.Key, id string, tok []byte) *tunnel.Sender {
	t.Helper()
	salt, _ := wire.NewSalt()
	sid := uint64(mono.Now()) | 1
	sk, _, _ := wire.DeriveKeys(&key, &salt, sid, wire.RoleClient)
	hello := &wire.Hello{Salt: salt, Target: netip.MustParseAddrPort("198.18.41.2:27015"), Token: tok}
	hello.SetClientID(id)
	snd, err := tunnel.NewSender(sk, sid, raic.Params{Scheme: raic.SchemeCopy, K: 1}, hello)
	if err != nil {
		t.Fatal(err)
	}
	return snd
}

func sealData(t testing.TB, snd *tunnel.Sender, pkt []byte) []byte {
	t.Helper()
	_, dgs, err := snd.Seal(pkt, mono.Now())
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), dgs[0]...)
}

// Garbage, unknown sessions and unknown clients are dropped and counted under
// the program's prefix; nothing is opened and nothing answered.
func TestDropsAreCounted(t *testing.T) {
	b := newBed(t)
	now := mono.Now()
	b.in.Handle(b.r, []byte("GET / HTTP/1.0\r\n\r\n"), b.from(), now)
	stranger := routerSender(t, b.key, "nobody")
	b.in.Handle(b.r, sealData(t, stranger, []byte("hi")), b.from(), now)
	snd := routerSender(t, b.key, "gamer")
	sealData(t, snd, []byte("lost")) // the hello-carrying first datagram never arrives ...
	snd.Heard(now)                   // ... and the router stops sending hellos
	b.in.Handle(b.r, sealData(t, snd, []byte("hi")), b.from(), now)
	for name, want := range map[string]float64{
		"test_received_total":                          3,
		`test_dropped_total{reason="malformed"}`:       1,
		`test_dropped_total{reason="unknown_client"}`:  1,
		`test_dropped_total{reason="unknown_session"}`: 1,
	} {
		if got := b.count(name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if b.prog.opened != 0 {
		t.Fatalf("%d sessions opened", b.prog.opened)
	}
}

// A hello opens the session, its packet reaches the sink, the router's address
// becomes a reply path, the hello is acked, and a replay is a duplicate.
func TestOpenDeliverAck(t *testing.T) {
	b := newBed(t)
	snd := routerSender(t, b.key, "gamer")
	dg := sealData(t, snd, []byte("first"))
	now := mono.Now()
	b.in.Handle(b.r, dg, b.from(), now)
	ts, ok := b.prog.table.Peek(snd.Session())
	if !ok || len(ts.delivered) != 1 || string(ts.delivered[0]) != "first" {
		t.Fatalf("session %v, delivered %q", ok, ts.delivered)
	}
	if b.prog.opened != 1 || b.count("test_sessions_created_total") != 1 {
		t.Fatalf("opened %d, sessions created %v, want 1", b.prog.opened, b.count("test_sessions_created_total"))
	}
	if typ := b.answer(t); typ != wire.TypeAck {
		t.Fatalf("answer %v, want an ack", typ)
	}
	if !hasPath(ts, b.from(), now) {
		t.Fatal("the router's address is not a reply path")
	}
	b.in.Handle(b.r, dg, b.from(), now)
	if got := b.count(`test_dropped_total{reason="duplicate"}`); got != 1 {
		t.Fatalf("duplicates %v, want 1", got)
	}
}

func hasPath(ts *testSession, a netip.AddrPort, now int64) bool {
	var l replypath.Live
	ts.Paths.Live(now, time.Second, &l)
	for i := 0; i < l.Len(); i++ {
		if l.Addr(i) == a {
			return true
		}
	}
	return false
}

// Pings get pongs that carry the program's overload, probes get replies the
// program filled in; a program that passes them answers itself.
func TestControlAnswers(t *testing.T) {
	b := newBed(t)
	snd := routerSender(t, b.key, "gamer")
	b.in.Handle(b.r, sealData(t, snd, []byte("open")), b.from(), mono.Now())
	b.answer(t) // the ack
	snd.Heard(mono.Now())
	buf := make([]byte, wire.MaxDatagram)

	var pb [wire.PingLen]byte
	ping := wire.Ping{Seq: 9, SentAt: 1}
	dg, _ := snd.SealControl(buf, wire.TypePing, ping.Put(pb[:]), mono.Now())
	b.in.Handle(b.r, dg, b.from(), mono.Now())
	if typ := b.answer(t); typ != wire.TypePong || b.count("test_pongs_total") != 1 {
		t.Fatalf("answer %v, pongs %v", typ, b.count("test_pongs_total"))
	}

	var qb [wire.ProbeLen]byte
	probe := wire.Probe{Seq: 1, Target: netip.MustParseAddrPort("198.18.41.2:27015")}
	dg, _ = snd.SealControl(buf, wire.TypeProbe, probe.Put(qb[:]), mono.Now())
	b.in.Handle(b.r, dg, b.from(), mono.Now())
	if typ := b.answer(t); typ != wire.TypeProbeReply {
		t.Fatalf("answer %v, want a probe reply", typ)
	}

	b.prog.pass = true
	dg, _ = snd.SealControl(buf, wire.TypePing, ping.Put(pb[:]), mono.Now())
	b.in.Handle(b.r, dg, b.from(), mono.Now())
	if len(b.prog.passed) != 1 || b.prog.passed[0] != wire.TypePing || b.count("test_pongs_total") != 1 {
		t.Fatalf("passed %v, pongs %v: a passed ping must not be answered here", b.prog.passed, b.count("test_pongs_total"))
	}

	b.prog.pass = false
	dg, _ = snd.SealControl(buf, wire.TypeClose, nil, mono.Now())
	b.in.Handle(b.r, dg, b.from(), mono.Now())
	if _, ok := b.prog.table.Peek(snd.Session()); ok {
		t.Fatal("close did not end the session")
	}
}

// A program with no token key at all (the intermediate) counts a token hello
// as from an unknown client; one that takes tokens (the proxy) counts it by
// the token's refusal, and publishes the token table.
func TestTokenHellos(t *testing.T) {
	b := newBed(t)
	tok := []byte("not a token anyone can open")
	b.in.Handle(b.r, sealData(t, tokenSender(t, b.key, "player", tok), []byte("hi")), b.from(), mono.Now())
	if got := b.count(`test_dropped_total{reason="unknown_client"}`); got != 1 {
		t.Errorf("without tokens: unknown_client = %v, want 1", got)
	}
	if _, ok := b.reg.Snapshot()["test_tokens_seen"]; ok {
		t.Error("a program without tokens publishes a token table")
	}

	b = newBedWith(t, func(c *Config) { c.Tokens = true })
	b.in.Handle(b.r, sealData(t, tokenSender(t, b.key, "player", tok), []byte("hi")), b.from(), mono.Now())
	if got := b.count(`test_dropped_total{reason="token_malformed"}`); got != 1 {
		t.Errorf("with tokens, no key: token_malformed = %v, want 1", got)
	}
	if got := b.count(`test_dropped_total{reason="unknown_client"}`); got != 0 {
		t.Errorf("with tokens: unknown_client = %v, want 0", got)
	}
	if _, ok := b.reg.Snapshot()["test_tokens_seen"]; !ok {
		t.Error("test_tokens_seen not published")
	}
	if b.prog.opened != 0 {
		t.Fatalf("%d sessions opened by token hellos", b.prog.opened)
	}
}

// A drain refuses new sessions (counted as draining) and keeps the open ones;
// a new roster admits by its own tables from the next hello on, and an open
// session keeps the client it was admitted with.
func TestDrainAndRoster(t *testing.T) {
	b := newBed(t)
	open := routerSender(t, b.key, "gamer")
	b.in.Handle(b.r, sealData(t, open, []byte("one")), b.from(), mono.Now())
	if b.prog.opened != 1 {
		t.Fatalf("opened %d, want 1", b.prog.opened)
	}

	b.in.SetRoster(&clients.Roster{Clients: map[string]*clients.Client{}})
	if b.in.Clients() != 0 {
		t.Fatalf("clients %d after the reload, want 0", b.in.Clients())
	}
	b.in.Handle(b.r, sealData(t, routerSender(t, b.key, "gamer"), []byte("new")), b.from(), mono.Now())
	if got := b.count(`test_dropped_total{reason="unknown_client"}`); got != 1 || b.prog.opened != 1 {
		t.Fatalf("a removed client: unknown_client = %v, opened %d", got, b.prog.opened)
	}
	b.in.Handle(b.r, sealData(t, open, []byte("two")), b.from(), mono.Now())

	if b.in.Drain() || !b.in.Draining() {
		t.Fatal("Drain: not draining, or draining already")
	}
	b.in.Handle(b.r, sealData(t, routerSender(t, b.key, "gamer"), []byte("late")), b.from(), mono.Now())
	if got := b.count(`test_dropped_total{reason="draining"}`); got != 1 || b.prog.opened != 1 {
		t.Fatalf("while draining: draining = %v, opened %d", got, b.prog.opened)
	}
	b.in.Handle(b.r, sealData(t, open, []byte("three")), b.from(), mono.Now())
	ts, _ := b.prog.table.Peek(open.Session())
	if len(ts.delivered) != 3 || string(ts.delivered[2]) != "three" {
		t.Fatalf("the open session got %q, want one, two, three", ts.delivered)
	}
}
