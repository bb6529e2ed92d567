package intermediate

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/raicnet/raic/integration/testkit"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/proxy"
	"github.com/raicnet/raic/router"
)

var (
	routerKey = wire.Key{0x11, 0x22}
	midKeys   = []wire.Key{{0x33, 0x44}, {0x55, 0x66}, {0x77, 0x88}}
)

// The shared helpers, under the names these tests use.
var (
	quietLog   = testkit.Quiet
	run        = testkit.Run // starts fn(ctx) in the background, stops it when the test ends
	udpListen  = testkit.UDPListen
	addrOf     = testkit.AddrOf
	echoServer = testkit.EchoServer // answers every datagram with the same bytes and counts them
	waitFor    = testkit.WaitFor
)

// startProxy runs a proxy on loopback that serves client id with key and lets it
// reach allow.
func startProxy(t testing.TB, id string, key wire.Key, allow netip.AddrPort) *proxy.Server {
	t.Helper()
	cfg, err := proxy.ParseConfig("proxy.toml", fmt.Sprintf(`
listen = "127.0.0.1:0"
[[client]]
id = %q
key = "%s"
allow = ["%s"]
rate_pps = 100000
`, id, key, allow))
	if err != nil {
		t.Fatal(err)
	}
	p, err := proxy.New(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	run(t, p.Run)
	return p
}

// startMid runs an intermediate on loopback that serves client id with key and
// forwards, as nextID with nextKey, to next (over uplinks sockets).
func startMid(t testing.TB, id string, key wire.Key, allow netip.AddrPort, nextID string, nextKey wire.Key, uplinks int, next ...netip.AddrPort) *Server {
	t.Helper()
	text := fmt.Sprintf(`
listen = "127.0.0.1:0"
[[client]]
id = %q
key = "%s"
allow = ["%s"]
rate_pps = 100000
[next]
client_id = %q
key = "%s"
ping_interval = "50ms"
`, id, key, allow, nextID, nextKey)
	for i := 0; i < uplinks; i++ {
		text += fmt.Sprintf("[[next.uplink]]\nname = \"u%d\"\nsource = \"127.0.0.1\"\nproxy = \"%s\"\n", i, next[i%len(next)])
	}
	cfg, err := ParseConfig("intermediate.toml", text)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	run(t, s.Run)
	return s
}

// startRouter runs a router with one uplink per address in uplinks and one
// forward to server.
func startRouter(t testing.TB, server netip.AddrPort, uplinks ...netip.AddrPort) *router.Router {
	t.Helper()
	text := fmt.Sprintf(`
client_id = "gamer"
key = "%s"
ping_interval = "50ms"
down_after = "500ms"
[[forward]]
listen = "127.0.0.1:0"
server = "%s"
`, routerKey, server)
	for i, up := range uplinks {
		text += fmt.Sprintf("[[uplink]]\nname = \"isp%d\"\nsource = \"127.0.0.1\"\nproxy = \"%s\"\n", i, up)
	}
	cfg, err := router.ParseConfig("router.toml", text)
	if err != nil {
		t.Fatal(err)
	}
	r, err := router.New(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	run(t, r.Run)
	return r
}

// gamePacket is what the test game sends: a sequence number and filler.
func gamePacket(b []byte, seq uint32) []byte {
	binary.BigEndian.PutUint32(b, seq)
	for i := 4; i < len(b); i++ {
		b[i] = byte(seq) ^ byte(i)
	}
	return b
}

// tap sits on a hop between two parties: it relays datagrams both ways (one
// upstream socket per source address, like a NAT) and lets the test look at every
// datagram going up, so it can check what is on the wire of that hop.
type tap struct {
	ln       *net.UDPConn
	upstream netip.AddrPort
	watch    func(dg []byte)
	// cut, when set, makes the hop dead: nothing passes either way.
	cut atomic.Bool

	mu    sync.Mutex
	socks map[netip.AddrPort]*net.UDPConn
}

func newTap(t testing.TB, upstream netip.AddrPort, watch func(dg []byte)) *tap {
	tp := &tap{ln: udpListen(t), upstream: upstream, watch: watch, socks: map[netip.AddrPort]*net.UDPConn{}}
	go func() {
		b := make([]byte, 2048)
		for {
			k, from, err := tp.ln.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			if tp.cut.Load() {
				continue
			}
			tp.watch(b[:k])
			tp.sock(t, from).WriteToUDPAddrPort(b[:k], upstream)
		}
	}()
	t.Cleanup(func() {
		tp.mu.Lock()
		defer tp.mu.Unlock()
		for _, c := range tp.socks {
			c.Close()
		}
	})
	return tp
}

func (tp *tap) addr() netip.AddrPort { return addrOf(tp.ln) }

func (tp *tap) sock(t testing.TB, from netip.AddrPort) *net.UDPConn {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if c := tp.socks[from]; c != nil {
		return c
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Error(err)
		return nil
	}
	c.SetReadBuffer(4 << 20)
	tp.socks[from] = c
	go func() {
		b := make([]byte, 2048)
		for {
			k, err := c.Read(b)
			if err != nil {
				return
			}
			if tp.cut.Load() {
				continue
			}
			tp.ln.WriteToUDPAddrPort(b[:k], from)
		}
	}()
	return c
}

// wireWatcher opens the data datagrams of one hop with the client key used on
// it, learning each session's salt from its hello, and checks packet IDs: every
// copy of a game packet carries one ID, IDs grow with the game's sequence
// numbers, and (with ref set) each packet carries the ID it had on the first hop.
type wireWatcher struct {
	key wire.Key

	mu       sync.Mutex
	sessions map[uint64][16]byte // session ID → salt, data sessions only
	epochs   map[uint64]uint64   // session ID → the epoch of its latest hello
	checked  int
	wrong    int
	firstBad string
	ids      map[uint32]uint64 // game sequence number → packet ID seen here
	ref      *wireWatcher      // an earlier hop, whose IDs must be kept here
}

func newWireWatcher(key wire.Key) *wireWatcher {
	return &wireWatcher{key: key, sessions: map[uint64][16]byte{}, epochs: map[uint64]uint64{}, ids: map[uint32]uint64{}}
}

func (w *wireWatcher) watch(dg []byte) {
	var h wire.Header
	var hl wire.Hello
	cp := append([]byte(nil), dg...)
	off, err := wire.Parse(cp, &h, &hl)
	if err != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	salt, ok := w.sessions[h.Session]
	if !ok {
		if h.Flags&wire.FlagHello == 0 || !hl.Target.IsValid() {
			return
		}
		salt = hl.Salt
		w.sessions[h.Session] = salt
	}
	if h.Flags&wire.FlagHello != 0 {
		w.epochs[h.Session] = hl.Epoch // the router re-keys when it learns one
	}
	if h.Type != wire.TypeData {
		return
	}
	_, c2s, err := wire.DeriveKeysEpoch(&w.key, &salt, h.Session, w.epochs[h.Session], wire.RoleServer)
	if err != nil {
		return
	}
	body, err := wire.Open(c2s, cp, off)
	if err != nil || len(body) < 4 {
		w.wrong++
		if w.firstBad == "" {
			w.firstBad = fmt.Sprintf("session %x packet %d: cannot open with this hop's key: %v", h.Session, h.Packet, err)
		}
		return
	}
	seq := binary.BigEndian.Uint32(body)
	w.checked++
	if bad := checkPacketID(w.ids, w.ref.idOf, seq, h.Packet); bad != "" {
		w.wrong++
		if w.firstBad == "" {
			w.firstBad = fmt.Sprintf("session %x: %s", h.Session, bad)
		}
	}
}

// idOf returns the packet ID game packet seq had on this hop.
func (w *wireWatcher) idOf(seq uint32) (uint64, bool) {
	if w == nil {
		return 0, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	id, ok := w.ids[seq]
	return id, ok
}

// checkPacketID records that game packet seq travels as pid and returns what is
// wrong with that: copies with different IDs, an ID out of order with the other
// packets, or an ID other than the one an earlier hop saw (ref).
func checkPacketID(ids map[uint32]uint64, ref func(uint32) (uint64, bool), seq uint32, pid uint64) string {
	if prev, ok := ids[seq]; ok {
		if prev != pid {
			return fmt.Sprintf("copies of game packet %d travel as packet IDs %d and %d", seq, prev, pid)
		}
		return ""
	}
	if pid < uint64(seq)+1 {
		return fmt.Sprintf("game packet %d travels as packet ID %d, below the first the router could give it (%d)", seq, pid, seq+1)
	}
	for s, p := range ids {
		if (s < seq) != (p < pid) {
			return fmt.Sprintf("game packets %d and %d travel as packet IDs %d and %d: out of order", s, seq, p, pid)
		}
	}
	ids[seq] = pid
	if want, ok := ref(seq); ok && want != pid {
		return fmt.Sprintf("game packet %d travels as packet ID %d here but had %d on the first hop", seq, pid, want)
	}
	return ""
}

func (w *wireWatcher) result() (sessions []uint64, checked, wrong int, firstBad string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for id := range w.sessions {
		sessions = append(sessions, id)
	}
	return sessions, w.checked, w.wrong, w.firstBad
}

func counter(s *Server, name string) float64 { return s.Metrics().Snapshot()[name] }
