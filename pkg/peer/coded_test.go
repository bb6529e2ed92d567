package peer

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/rendezvous"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// memNet carries datagrams between two links in memory, in order, with a
// drop rule: deterministic, no sockets, no timers.
type memNet struct {
	addrs [2][]netip.AddrPort // each side's uplink addresses
	links [2]*Link
	queue []memDgram
	// drop decides, per datagram, whether it is lost: side s sent it on
	// its uplink local to remote.
	drop func(s, local int, remote netip.AddrPort) bool
	// onPath counts the data datagrams each (sending side, local, remote)
	// path delivered.
	sentOn  map[memPath]int
	dropped [2]int // datagrams each side sent that were dropped
}

type memPath struct {
	side, local int
	remote      netip.AddrPort
}

type memDgram struct {
	side, local int
	to          netip.AddrPort
	b           []byte
}

type memSender struct {
	n    *memNet
	side int
}

func (m memSender) SendTo(i int, b []byte, to netip.AddrPort) error {
	m.n.queue = append(m.n.queue, memDgram{m.side, i, to, append([]byte(nil), b...)})
	return nil
}

// pump delivers every queued datagram (and what they cause) at now.
func (n *memNet) pump(now int64) {
	for len(n.queue) > 0 {
		d := n.queue[0]
		n.queue = n.queue[1:]
		if n.drop != nil && n.drop(d.side, d.local, d.to) {
			n.dropped[d.side]++
			continue
		}
		other := 1 - d.side
		for j, a := range n.addrs[other] {
			if a == d.to {
				n.links[other].Receive(j, n.addrs[d.side][d.local], d.b, now)
			}
		}
	}
}

func addrs(side, n int) []netip.AddrPort {
	var out []netip.AddrPort
	for i := range n {
		out = append(out, netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(10 + side), byte(1 + i)}), 4600))
	}
	return out
}

// newMemPair makes alice (side 0) and bob (side 1), each knowing the
// other's addresses, with 2 uplinks each: 2×2 = 4 paths, and the given
// schemes. got[s][seq] counts side s's deliveries of packet seq.
func newMemPair(t *testing.T, schemes [2]raic.Params, got *[2]map[uint32]int) *memNet {
	t.Helper()
	key := mustKey(t)
	n := &memNet{addrs: [2][]netip.AddrPort{addrs(0, 2), addrs(1, 2)}, sentOn: map[memPath]int{}}
	ids := [2]string{"alice", "bob"}
	for s := 0; s < 2; s++ {
		got[s] = map[uint32]int{}
		cfg := LinkConfig{LocalID: ids[s], PeerID: ids[1-s], Key: key, Paths: Config{Uplinks: 2}, Scheme: schemes[s],
			Deliver: func(b []byte) {
				got[s][uint32(b[0])<<24|uint32(b[1])<<16|uint32(b[2])<<8|uint32(b[3])]++
			},
			Observe: func(local int, from netip.AddrPort, ty wire.Type, _ []byte, _ int64) {
				if ty == wire.TypeData {
					n.sentOn[memPath{1 - s, indexOf(n.addrs[1-s], from), n.addrs[s][local]}]++
				}
			},
		}
		cfg.Static = n.addrs[1-s]
		l, err := NewLink(cfg, memSender{n, s}, 0)
		if err != nil {
			t.Fatal(err)
		}
		n.links[s] = l
	}
	return n
}

func indexOf(as []netip.AddrPort, a netip.AddrPort) int {
	for i, x := range as {
		if x == a {
			return i
		}
	}
	return -1
}

func voice(buf []byte, seq uint32) []byte {
	buf[0], buf[1], buf[2], buf[3] = byte(seq>>24), byte(seq>>16), byte(seq>>8), byte(seq)
	for i := 4; i < len(buf); i++ {
		buf[i] = byte(seq) ^ byte(i)
	}
	return buf
}

// TestCodedLinkRebuildsWithAnyOnePathDead: xor 2+1, rs 2+2 and RAICT d=2
// over the 2×2 paths. With each one of the 4 paths dead in turn (from the
// start: the health has not noticed, so shards still go to it) every packet
// arrives, once, both ways; the dead path delivered nothing and the others
// every shard sent on them; packets that lost a shard were rebuilt. (With
// no keepalive answered yet, the paths are taken in table order; xor's 3
// shards leave the fourth path idle.)
func TestCodedLinkRebuildsWithAnyOnePathDead(t *testing.T) {
	for _, name := range []string{"xor:2", "rs:2+2", "time:2"} {
		p, err := raic.ParseParams(name)
		if err != nil {
			t.Fatal(err)
		}
		// A dead path that carried a parity shard needs no rebuilding; one
		// that carried a data shard does.
		rebuilt := uint64(0)
		for dead := 0; dead < 4; dead++ {
			t.Run(fmt.Sprintf("%s/dead=%d", name, dead), func(t *testing.T) {
				var got [2]map[uint32]int
				n := newMemPair(t, [2]raic.Params{p, p}, &got)
				buf := make([]byte, 172)
				if l := n.links[1].Paths().Len(); l != 4 {
					t.Fatalf("bob has %d paths, want 4", l)
				}
				deadPath := [2]memPath{}
				for s := 0; s < 2; s++ {
					deadPath[s] = memPath{s, dead / 2, n.addrs[1-s][dead%2]}
				}
				n.drop = func(s, local int, remote netip.AddrPort) bool {
					return deadPath[s] == memPath{s, local, remote}
				}
				clear(n.sentOn)
				const packets = 400
				for s := 0; s < 2; s++ {
					for seq := uint32(1); seq <= packets; seq++ {
						n.links[s].Send(voice(buf, seq), int64(seq)*20e6)
						n.pump(int64(seq) * 20e6)
					}
				}
				for s := 0; s < 2; s++ {
					r := 1 - s
					for seq := uint32(1); seq <= packets; seq++ {
						if got[r][seq] != 1 {
							t.Fatalf("side %d got packet %d %d times, want once", r, seq, got[r][seq])
						}
					}
					c := n.links[r].Counters()
					if c.Delivered != uint64(len(got[r])) {
						t.Errorf("side %d: Delivered %d, but %d packets reached Deliver", r, c.Delivered, len(got[r]))
					}
					if c.Lost != 0 {
						t.Errorf("side %d: lost %d packets with %d shards dropped", r, c.Lost, n.dropped[s])
					}
					rebuilt += c.Rebuilt
					total := 0
					for path, k := range n.sentOn {
						if path.side != s {
							continue
						}
						if path == deadPath[s] && k != 0 {
							t.Errorf("the dead path %v delivered %d shards", path, k)
						}
						total += k
					}
					sc := n.links[s].Counters()
					if total != int(sc.Copies)-n.dropped[s] {
						t.Errorf("side %d: %d shards arrived of %d sent, %d dropped", s, total, sc.Copies, n.dropped[s])
					}
					if n.dropped[s] > 0 && n.dropped[s] < packets {
						t.Errorf("side %d: the dead path got %d shards of %d packets: want one a packet, or none", s, n.dropped[s], packets)
					}
					if sc.Bytes == 0 || sc.PayloadBytes == 0 {
						t.Errorf("side %d: no bytes counted: %+v", s, sc)
					}
				}
			})
		}
		if rebuilt == 0 {
			t.Errorf("%s: no packet rebuilt whichever path was dead", name)
		}
	}
}

// TestCodedLinkReceiverFollowsTheSender: alice sends rs 2+2, bob copies;
// each rebuilds or keeps what the other sends, per datagram, with no setting.
// Copies cost one datagram per path (4), rs 2+2 four half-size shards: the
// bytes on the wire per payload byte show it.
func TestCodedLinkReceiverFollowsTheSender(t *testing.T) {
	rs, _ := raic.ParseParams("rs:2+2")
	var got [2]map[uint32]int
	n := newMemPair(t, [2]raic.Params{rs, {}}, &got)
	buf := make([]byte, 172)
	n.links[0].Send(voice(buf, 0), 1)
	n.pump(1)
	for seq := uint32(1); seq <= 100; seq++ {
		for s := 0; s < 2; s++ {
			n.links[s].Send(voice(buf, seq), int64(seq)*20e6)
			n.pump(int64(seq) * 20e6)
		}
	}
	for s := 0; s < 2; s++ {
		if len(got[s]) < 100 {
			t.Fatalf("side %d got %d packets of 100", s, len(got[s]))
		}
		for seq, k := range got[s] {
			if k != 1 {
				t.Fatalf("side %d got packet %d %d times", s, seq, k)
			}
		}
	}
	ca, cb := n.links[0].Counters(), n.links[1].Counters()
	ra, rb := float64(ca.Bytes)/float64(ca.PayloadBytes), float64(cb.Bytes)/float64(cb.PayloadBytes)
	t.Logf("bytes on the wire per payload byte (172-byte packets, 4 paths): rs 2+2 %.2f, copies %.2f", ra, rb)
	if ra >= rb*0.7 {
		t.Errorf("rs 2+2 costs %.2f bytes per payload byte, copies %.2f: want well under", ra, rb)
	}
	if n.links[0].SchemeName() != "RAIC-6 2+2" || n.links[1].SchemeName() != "copies" {
		t.Errorf("scheme names %q, %q", n.links[0].SchemeName(), n.links[1].SchemeName())
	}
}

// TestCodedLinkRefusesReplays: every datagram of a coded session sent
// again, in any order, delivers nothing more.
func TestCodedLinkRefusesReplays(t *testing.T) {
	xor, _ := raic.ParseParams("xor:2")
	var got [2]map[uint32]int
	n := newMemPair(t, [2]raic.Params{xor, xor}, &got)
	var seen []memDgram
	buf := make([]byte, 172)
	for seq := uint32(0); seq < 50; seq++ {
		n.links[0].Send(voice(buf, seq), int64(seq+1)*20e6)
		seen = append(seen, n.queue...)
		n.pump(int64(seq+1) * 20e6)
	}
	for round := 0; round < 2; round++ {
		for i := len(seen) - 1; i >= 0; i-- {
			d := seen[i]
			n.queue = append(n.queue, memDgram{d.side, d.local, d.to, append([]byte(nil), d.b...)})
		}
		n.pump(2e9)
	}
	if len(got[1]) != 50 {
		t.Fatalf("bob got %d packets of 50", len(got[1]))
	}
	for seq, k := range got[1] {
		if k != 1 {
			t.Fatalf("packet %d delivered %d times after replays", seq, k)
		}
	}
}

// TestCodedLinkNewSchemeCheck: a scheme the codecs refuse is refused.
func TestCodedLinkNewSchemeCheck(t *testing.T) {
	_, err := NewLink(LinkConfig{LocalID: "a", PeerID: "b", Key: mustKey(t), Paths: Config{Uplinks: 1},
		Scheme: raic.Params{Scheme: raic.SchemeRS, K: 2, M: 0}, Deliver: func([]byte) {}}, memSender{&memNet{}, 0}, 0)
	if err == nil {
		t.Fatal("rs 2+0 accepted")
	}
}

// nopSender sends nothing and keeps the last datagrams (no allocation).
type nopSender struct {
	bufs [8][]byte
	n    int
}

func (s *nopSender) SendTo(_ int, b []byte, _ netip.AddrPort) error {
	if s.n < len(s.bufs) {
		s.bufs[s.n] = append(s.bufs[s.n][:0], b...)
		s.n++
	}
	return nil
}

// TestCodedLinkSendReceiveAllocs: coding, sealing and placing a packet, and
// opening and rebuilding it from its shards (one lost), allocate nothing
// once the buffers are warm.
func TestCodedLinkSendReceiveAllocs(t *testing.T) {
	for _, name := range []string{"copy", "xor:2", "rs:2+2"} {
		p, _ := raic.ParseParams(name)
		key := mustKey(t)
		out := &nopSender{}
		for i := range out.bufs {
			out.bufs[i] = make([]byte, 0, wire.MaxDatagram)
		}
		peerAddrs := addrs(1, 2)
		a, err := NewLink(LinkConfig{LocalID: "alice", PeerID: "bob", Key: key, Paths: Config{Uplinks: 2},
			Static: peerAddrs, Scheme: p, Deliver: func([]byte) {}}, out, 0)
		if err != nil {
			t.Fatal(err)
		}
		delivered := 0
		b, err := NewLink(LinkConfig{LocalID: "bob", PeerID: "alice", Key: key, Paths: Config{Uplinks: 2},
			Deliver: func([]byte) { delivered++ }}, &nopSender{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		from := addrs(0, 2)
		buf := make([]byte, 172)
		seq := uint32(0)
		now := int64(1)
		round := func() {
			seq++
			now += 20e6
			out.n = 0
			a.Send(voice(buf, seq), now)
			for i := 1; i < out.n; i++ { // the first is lost
				b.Receive(i%2, from[i%2], out.bufs[i], now)
			}
			if name == "copy" && out.n > 0 {
				b.Receive(0, from[0], out.bufs[0], now)
			}
		}
		for range 300 {
			round()
		}
		before := delivered
		allocs := testing.AllocsPerRun(200, round)
		if allocs != 0 {
			t.Errorf("%s: %.1f allocations per packet sent and received", name, allocs)
		}
		if delivered-before < 200 {
			t.Errorf("%s: %d packets delivered of %d", name, delivered-before, 201)
		}
	}
}

// TestCodedLinkThroughTheRelay: with every direct datagram dropped, the
// rendezvous relays an rs 2+2 session: each shard goes through it once,
// from the local uplinks in turn, and every packet is rebuilt once.
func TestCodedLinkThroughTheRelay(t *testing.T) {
	rs, _ := raic.ParseParams("rs:2+2")
	pairKey, ka, kb := mustKey(t), mustKey(t), mustKey(t)
	srv := startRendezvous(t, map[string]wire.Key{"alice": ka, "bob": kb})
	rvAddr := srv.Addr()
	direct := func(_ int, to netip.AddrPort) bool { return to != rvAddr }
	mk := func(id, peer string, k wire.Key) *testPeer {
		c, err := rendezvous.NewClient(id, k, peer)
		if err != nil {
			t.Fatal(err)
		}
		return startPeer(t, LinkConfig{LocalID: id, PeerID: peer, Key: pairKey, Rendezvous: c, Scheme: rs,
			RendezvousAddr: rvAddr, RegisterInterval: 100 * time.Millisecond, PunchTimeout: 500 * time.Millisecond}, 2, direct)
	}
	a, b := mk("alice", "bob", ka), mk("bob", "alice", kb)
	waitFor(t, "the relay", 6*time.Second, func() bool {
		return a.link.RelayActive(mono.Now()) && b.link.RelayActive(mono.Now())
	})
	ra0 := a.link.Counters().RelaySent
	a.sendSeq(t, 0, 100, time.Millisecond)
	b.sendSeq(t, 0, 100, time.Millisecond)
	waitFor(t, "100 packets each way", 3*time.Second, func() bool { return a.count() == 100 && b.count() == 100 })
	for s := uint32(0); s < 100; s++ {
		if a.received(s) != 1 || b.received(s) != 1 {
			t.Fatalf("packet %d delivered %d and %d times", s, a.received(s), b.received(s))
		}
	}
	if n := a.link.Counters().RelaySent - ra0; n != 400 {
		t.Errorf("alice relayed %d datagrams for 100 packets, want 400 (4 shards each, once)", n)
	}
}

// FuzzCodedLinkReceive: datagrams sealed with the pair's key (a broken or
// hostile peer) with any scheme, descriptor and body never crash the
// receiver: they are counted and dropped, or delivered.
func FuzzCodedLinkReceive(f *testing.F) {
	f.Add(uint8(6), uint8(0), uint8(4), uint8(2), uint8(0x80), uint64(1), []byte("0123456789abcdef"))
	f.Add(uint8(5), uint8(2), uint8(3), uint8(2), uint8(0x80), uint64(2), []byte("xy"))
	f.Add(uint8(7), uint8(1), uint8(3), uint8(1), uint8(0x80), uint64(3), []byte{0, 5, 1, 2, 3, 4, 5})
	f.Add(uint8(1), uint8(0), uint8(1), uint8(1), uint8(0), uint64(4), []byte("frag"))
	key := wire.Key{9}
	var hello wire.Hello
	hello.SetClientID("alice")
	hello.Salt[0] = 1
	const sid = 77
	seal, _, err := wire.DeriveKeys(&key, &hello.Salt, sid, wire.RoleClient)
	if err != nil {
		f.Fatal(err)
	}
	b, err := NewLink(LinkConfig{LocalID: "bob", PeerID: "alice", Key: key, Paths: Config{Uplinks: 2},
		Deliver: func([]byte) {}}, &nopSender{}, 0)
	if err != nil {
		f.Fatal(err)
	}
	from := addrs(0, 1)[0]
	buf := make([]byte, wire.MaxDatagram)
	f.Fuzz(func(t *testing.T, scheme, index, count, k, frag uint8, pid uint64, body []byte) {
		if len(body) > 1400 {
			body = body[:1400]
		}
		h := wire.Header{Type: wire.TypeData, Scheme: scheme, Session: sid, Packet: pid,
			Desc: wire.Desc{Index: index, Count: count, K: k, Frag: frag}}
		dg, err := wire.Seal(seal, buf, &h, &hello, body)
		if err != nil {
			return
		}
		b.Receive(int(pid%2), from, dg, int64(pid))
		if pid%64 == 0 {
			b.Tick(int64(pid))
		}
	})
}

// TestCodedLinkTakesTheFastestPaths: with the keepalives' SRTT of the 4
// paths at 40, 10, 30 and 20 ms, xor 2+1 puts its 3 shards on the 10, 20
// and 30 ms paths, the same for every packet, and leaves the 40 ms path
// idle; rs 2+2 puts one shard on each.
func TestCodedLinkTakesTheFastestPaths(t *testing.T) {
	for _, tc := range []struct {
		scheme string
		want   map[int]int // path index (by RTT rank) -> shards of 100 packets
	}{
		{"xor:2", map[int]int{0: 100, 1: 100, 2: 100}},
		{"rs:2+2", map[int]int{0: 100, 1: 100, 2: 100, 3: 100}},
	} {
		p, _ := raic.ParseParams(tc.scheme)
		remotes := addrs(1, 2)
		var sent []Path
		out := senderFunc(func(i int, _ []byte, to netip.AddrPort) error {
			sent = append(sent, Path{Local: i, Remote: to})
			return nil
		})
		l, err := NewLink(LinkConfig{LocalID: "alice", PeerID: "bob", Key: mustKey(t), Paths: Config{Uplinks: 2},
			Static: remotes, Scheme: p, Deliver: func([]byte) {}}, out, 0)
		if err != nil {
			t.Fatal(err)
		}
		rtt := map[Path]int64{
			{0, remotes[0]}: 40e6, {1, remotes[0]}: 10e6, {0, remotes[1]}: 30e6, {1, remotes[1]}: 20e6,
		}
		rank := map[Path]int{{1, remotes[0]}: 0, {1, remotes[1]}: 1, {0, remotes[1]}: 2, {0, remotes[0]}: 3}
		now := int64(1e9)
		type ping struct {
			pa  Path
			seq uint32
		}
		var pings []ping
		l.Paths().PingsDue(now, func(pa Path, seq uint32) { pings = append(pings, ping{pa, seq}) })
		for _, pg := range pings {
			l.Paths().OnPong(pg.pa.Local, pg.pa.Remote, pg.seq, now, 0, now+rtt[pg.pa])
		}
		now += 100e6
		sent = sent[:0]
		buf := make([]byte, 172)
		for seq := uint32(0); seq < 100; seq++ {
			l.Send(voice(buf, seq), now)
		}
		got := map[int]int{}
		for _, pa := range sent {
			got[rank[pa]]++
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%s: shards per path (fastest first) %v, want %v", tc.scheme, got, tc.want)
		}
	}
}
