package rendezvous

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/wire"
)

func key(t *testing.T) wire.Key {
	k, err := wire.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestConfigErrorsNameFileLineKey(t *testing.T) {
	good := key(t).String()
	cases := []struct{ text, want string }{
		{"listen = \"nope\"\n[[peer]]\nid = \"a\"\nkey = \"" + good + "\"\n", "rv.toml:1: listen:"},
		{"[[peer]]\nid = \"a\"\nkey = \"short\"\n", "rv.toml:3: peer.0.key:"},
		{"[[peer]]\nid = \"a\"\nkey = \"" + good + "\"\n[[peer]]\nid = \"a\"\nkey = \"" + good + "\"\n", "rv.toml:5: peer.1.id: peer \"a\" is configured twice"},
		{"relay_rate_pps = -1\n[[peer]]\nid = \"a\"\nkey = \"" + good + "\"\n", "rv.toml:1: relay_rate_pps:"},
		{"listen = \"127.0.0.1:1\"\n", "rv.toml: peer: no [[peer]]"},
		{"[[peer]]\nid = \"a\"\nkey = \"" + good + "\"\nkye = 1\n", "rv.toml:4: peer.0.kye: unknown key"},
	}
	for _, c := range cases {
		_, err := ParseConfig("rv.toml", c.text)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("config %q: error %v, want it to contain %q", c.text, err, c.want)
		}
	}
	cfg, err := ParseConfig("rv.toml", "relay = false\n[[peer]]\nid = \"a\"\nkey = \""+good+"\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RelayEnabled() || cfg.Listen != DefaultListen || cfg.RelayRatePPS != DefaultRelayRatePPS {
		t.Fatalf("defaults: %+v", cfg)
	}
}

// rig drives a Server's handle directly, with a real socket to answer from
// and peer sockets that read its answers.
type rig struct {
	t   *testing.T
	srv *Server
}

func newRig(t *testing.T, extra string, keys map[string]wire.Key) *rig {
	text := "listen = \"127.0.0.1:0\"\n" + extra
	for id, k := range keys {
		text += fmt.Sprintf("[[peer]]\nid = %q\nkey = %q\n", id, k.String())
	}
	cfg, err := ParseConfig("rv.toml", text)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.conn.Close() })
	return &rig{t: t, srv: srv}
}

func (r *rig) metric(name string) float64 { return r.srv.Metrics().Snapshot()[name] }

type endpoint struct {
	conn *net.UDPConn
}

func newEndpoint(t *testing.T) *endpoint {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &endpoint{conn: c}
}

func (e *endpoint) addr() netip.AddrPort { return e.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// read returns the next datagram, or nil after a short wait.
func (e *endpoint) read() []byte {
	buf := make([]byte, MaxMessage+1)
	e.conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	n, _, err := e.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

func (r *rig) feed(msg []byte, from netip.AddrPort) {
	r.srv.handle(append([]byte(nil), msg...), from, mono.Now())
}

func TestIntroducesOnlyPeersThatAskedForEachOther(t *testing.T) {
	ka, kb, kc := key(t), key(t), key(t)
	r := newRig(t, "", map[string]wire.Key{"alice": ka, "bob": kb, "carol": kc})
	a0, a1, b0, c0 := newEndpoint(t), newEndpoint(t), newEndpoint(t), newEndpoint(t)
	ca, _ := NewClient("alice", ka, "bob")
	cb, _ := NewClient("bob", kb, "alice")
	cc, _ := NewClient("carol", kc, "alice")
	buf := make([]byte, 256)

	m, _ := ca.Register(buf, 0, 2)
	r.feed(m, a0.addr())
	m, _ = ca.Register(buf, 1, 2)
	r.feed(m, a1.addr())
	if got := a0.read(); got != nil {
		t.Fatal("alice was introduced before bob asked for her")
	}
	// Carol asks for alice, who did not ask for carol: nobody hears of anybody.
	m, _ = cc.Register(buf, 0, 1)
	r.feed(m, c0.addr())
	if c0.read() != nil || a0.read() != nil {
		t.Fatal("an introduction happened between peers that did not both ask")
	}
	m, _ = cb.Register(buf, 0, 1)
	r.feed(m, b0.addr())
	var ev Event
	got := b0.read()
	if got == nil {
		t.Fatal("bob got no introduction")
	}
	if err := cb.Handle(got, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Type != TypeIntroduce || ev.Peer != "alice" || ev.N != 2 || ev.RelayOn ||
		ev.Addrs[0] != (UplinkAddr{0, a0.addr()}) || ev.Addrs[1] != (UplinkAddr{1, a1.addr()}) {
		t.Fatalf("bob's introduction: %+v", ev)
	}
	// Alice is told about bob on both her uplinks.
	var old []byte
	for _, e := range []*endpoint{a0, a1} {
		got := e.read()
		old = append([]byte(nil), got...)
		if got == nil {
			t.Fatal("alice's uplink got no introduction")
		}
		if err := ca.Handle(got, &ev); err != nil || ev.Peer != "bob" || ev.N != 1 || ev.Addrs[0].Addr != b0.addr() {
			t.Fatalf("alice's introduction: %v %+v", err, ev)
		}
	}
	// Another peer's client cannot open alice's messages, nor replay them.
	if err := cb.Handle(append([]byte(nil), old...), &ev); err == nil {
		t.Fatal("bob opened a message for alice")
	}
	// An older introduction replayed after a newer one is refused.
	m, _ = ca.Register(buf, 0, 2)
	r.feed(m, a0.addr())
	newer := a0.read()
	if err := ca.Handle(newer, &ev); err != nil {
		t.Fatal(err)
	}
	if err := ca.Handle(old, &ev); err != ErrReplay {
		t.Fatalf("replayed introduction: %v, want ErrReplay", err)
	}
}

func TestDropsUnauthenticatedAndReplayedRegisters(t *testing.T) {
	ka, kb := key(t), key(t)
	r := newRig(t, "", map[string]wire.Key{"alice": ka, "bob": kb})
	a0, evil := newEndpoint(t), newEndpoint(t)
	ca, _ := NewClient("alice", ka, "bob")
	forger, _ := NewClient("alice", key(t), "bob")
	buf := make([]byte, 256)
	m, _ := forger.Register(buf, 0, 1)
	r.feed(m, evil.addr())
	r.feed([]byte{Magic, TypeRegister, 40}, evil.addr())
	r.feed([]byte("junk that is not a message at all"), evil.addr())
	m, _ = ca.Register(buf, 0, 1)
	good := append([]byte(nil), m...)
	r.feed(good, a0.addr())
	// The captured register replayed from another address must not move alice.
	r.feed(good, evil.addr())
	if got := r.srv.peers["alice"].addrs[0].addr; got != a0.addr() {
		t.Fatalf("alice's uplink 0 is at %v after a replay, want %v", got, a0.addr())
	}
	if r.metric("raic_rendezvous_unauthenticated_total") != 2 || r.metric("raic_rendezvous_malformed_total") != 2 {
		t.Fatalf("unauth %v malformed %v, want 2 and 2", r.metric("raic_rendezvous_unauthenticated_total"), r.metric("raic_rendezvous_malformed_total"))
	}
	if evil.read() != nil {
		t.Fatal("the server answered unauthenticated input")
	}
}

func TestRelaysOnlyWhenBothFailedToPunch(t *testing.T) {
	for _, relayCfg := range []string{"", "relay = false\n"} {
		ka, kb := key(t), key(t)
		r := newRig(t, relayCfg, map[string]wire.Key{"alice": ka, "bob": kb})
		a0, b0 := newEndpoint(t), newEndpoint(t)
		ca, _ := NewClient("alice", ka, "bob")
		cb, _ := NewClient("bob", kb, "alice")
		buf, scratch := make([]byte, MaxMessage), make([]byte, MaxMessage)
		reg := func(c *Client, e *endpoint) {
			m, _ := c.Register(buf, 0, 1)
			r.feed(m, e.addr())
			for e.read() != nil { // drain introductions
			}
			for a0.read() != nil {
			}
			for b0.read() != nil {
			}
		}
		reg(ca, a0)
		reg(cb, b0)
		relay := func() []byte {
			m, _ := ca.Relay(buf, scratch, []byte("voice"), AnyUplink)
			r.feed(m, a0.addr())
			return b0.read()
		}
		if relay() != nil {
			t.Fatal("relayed before either side failed to punch")
		}
		ca.SetPunchFailed(true)
		reg(ca, a0)
		if relay() != nil {
			t.Fatal("relayed when only one side failed to punch")
		}
		cb.SetPunchFailed(true)
		m, _ := cb.Register(buf, 0, 1)
		r.feed(m, b0.addr())
		var ev Event
		intro := b0.read()
		if err := cb.Handle(intro, &ev); err != nil {
			t.Fatal(err)
		}
		for a0.read() != nil {
		}
		enabled := relayCfg == ""
		if ev.RelayOn != enabled {
			t.Fatalf("relay %q: introduction says relay on = %v", relayCfg, ev.RelayOn)
		}
		got := relay()
		if !enabled {
			if got != nil || r.metric("raic_rendezvous_relayed_total") != 0 {
				t.Fatal("relayed with relay = false")
			}
			continue
		}
		if got == nil {
			t.Fatal("not relayed after both failed to punch")
		}
		if err := cb.Handle(got, &ev); err != nil || ev.Type != TypeRelayed || ev.Peer != "alice" || string(ev.Payload) != "voice" {
			t.Fatalf("relayed: %v %+v", err, ev)
		}
		if r.metric("raic_rendezvous_relayed_total") != 1 || r.metric("raic_rendezvous_relay_pairs") != 1 ||
			r.metric("raic_rendezvous_relay_refused_total") != 2 {
			t.Fatalf("metrics %v", r.srv.Metrics().Snapshot())
		}
	}
}

func TestRelayRateLimit(t *testing.T) {
	ka, kb := key(t), key(t)
	r := newRig(t, "relay_rate_pps = 10\n", map[string]wire.Key{"alice": ka, "bob": kb})
	a0, b0 := newEndpoint(t), newEndpoint(t)
	ca, _ := NewClient("alice", ka, "bob")
	cb, _ := NewClient("bob", kb, "alice")
	ca.SetPunchFailed(true)
	cb.SetPunchFailed(true)
	buf, scratch := make([]byte, MaxMessage), make([]byte, MaxMessage)
	m, _ := ca.Register(buf, 0, 1)
	r.feed(m, a0.addr())
	m, _ = cb.Register(buf, 0, 1)
	r.feed(m, b0.addr())
	for i := 0; i < 50; i++ {
		m, _ := ca.Relay(buf, scratch, []byte("voice"), AnyUplink)
		r.feed(m, a0.addr())
	}
	if got := r.metric("raic_rendezvous_relayed_total"); got < 10 || got > 11 {
		t.Fatalf("relayed %v of a burst of 50 at 10 pps, want 10", got)
	}
	if r.metric("raic_rendezvous_rate_limited_total") < 39 {
		t.Fatalf("rate limited %v, want about 40", r.metric("raic_rendezvous_rate_limited_total"))
	}
}

func FuzzServerHandle(f *testing.F) {
	k := wire.Key{1}
	c, _ := NewClient("alice", k, "bob")
	buf := make([]byte, 256)
	m, _ := c.Register(buf, 0, 1)
	f.Add(append([]byte(nil), m...))
	f.Add([]byte{Magic, TypeRelay, 5, 'a', 'l', 'i', 'c', 'e'})
	cfg, _ := ParseConfig("rv.toml", fmt.Sprintf("listen = \"127.0.0.1:0\"\n[[peer]]\nid = \"alice\"\nkey = %q\n", k.String()))
	srv, err := NewServer(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		f.Fatal(err)
	}
	var ev Event
	f.Fuzz(func(t *testing.T, b []byte) {
		srv.handle(append([]byte(nil), b...), netip.MustParseAddrPort("127.0.0.1:9"), 1)
		c.Handle(append([]byte(nil), b...), &ev)
	})
}
