package clients_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/clients"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// Admit lets in a fresh, authentic hello for an allowed target and names why
// it turns away every other.
func TestAdmit(t *testing.T) {
	key := wire.Key{1, 2, 3}
	table, err := clients.Table([]clients.Config{{ID: "gamer", Key: key.String(), Allow: []string{"198.18.41.0/24"}}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	allowed := netip.MustParseAddrPort("198.18.41.2:27015")
	// hello seals a first datagram as a router would; mutate changes it first.
	// The sender stamps the hello with the wall clock; cases move "now"
	// instead.
	hello := func(id string, k wire.Key, target netip.AddrPort) []byte {
		salt, _ := wire.NewSalt()
		h := &wire.Hello{Salt: salt, Target: target}
		h.SetClientID(id)
		send, _, err := wire.DeriveKeys(&k, &salt, 42, wire.RoleClient)
		if err != nil {
			t.Fatal(err)
		}
		snd, err := tunnel.NewSender(send, 42, raic.Params{Scheme: raic.SchemeCopy, K: 1}, h)
		if err != nil {
			t.Fatal(err)
		}
		_, dgs, err := snd.Seal([]byte("tick"), 0)
		if err != nil || len(dgs) != 1 {
			t.Fatalf("seal: %v", err)
		}
		return append([]byte(nil), dgs[0]...)
	}
	now := time.Now()
	cases := []struct {
		name string
		dg   []byte
		at   time.Duration // our clock against the hello's
		want clients.Refusal
	}{
		{"admitted", hello("gamer", key, allowed), 0, clients.Admitted},
		{"no target", hello("gamer", key, netip.AddrPort{}), 0, clients.Admitted},
		{"unknown client", hello("stranger", key, allowed), 0, clients.UnknownClient},
		{"wrong key", hello("gamer", wire.Key{9}, allowed), 0, clients.AuthFailed},
		{"stale", hello("gamer", key, allowed), time.Minute, clients.StaleHello},
		{"from the future", hello("gamer", key, allowed), -time.Minute, clients.StaleHello},
		{"forbidden target", hello("gamer", key, netip.MustParseAddrPort("198.18.99.1:1")), 0, clients.ForbiddenTarget},
	}
	for _, tc := range cases {
		var hdr wire.Header
		var hl wire.Hello
		off, err := wire.Parse(tc.dg, &hdr, &hl)
		if err != nil {
			t.Fatalf("%s: parse: %v", tc.name, err)
		}
		orig := append([]byte(nil), tc.dg...)
		a, why := clients.Admit(&clients.Roster{Clients: table}, &hdr, &hl, tc.dg, off, make([]byte, len(tc.dg)), 30*time.Second, now.Add(tc.at), nil)
		if why != tc.want {
			t.Errorf("%s: refusal %v, want %v", tc.name, why, tc.want)
		}
		if why == clients.Admitted && (a.Client == nil || a.Client.ID != "gamer" || a.Send == nil || a.Recv == nil) {
			t.Errorf("%s: admission %+v incomplete", tc.name, a)
		}
		if string(orig) != string(tc.dg) {
			t.Errorf("%s: the datagram itself was changed; only a copy may be opened", tc.name)
		}
	}
	// A datagram with a flipped bit fails authentication.
	dg := hello("gamer", key, allowed)
	var hdr wire.Header
	var hl wire.Hello
	off, _ := wire.Parse(dg, &hdr, &hl)
	dg[len(dg)-1] ^= 1
	if _, why := clients.Admit(&clients.Roster{Clients: table}, &hdr, &hl, dg, off, make([]byte, len(dg)), 30*time.Second, now, nil); why != clients.AuthFailed {
		t.Errorf("flipped bit: refusal %v, want AuthFailed", why)
	}
}

// Across a restart: a hello sealed for an earlier run (its epoch, or made
// before the run started) never re-opens a game session; a hello for the
// current epoch, or a fresh router's hello made after the start, does.
func TestAdmitEpoch(t *testing.T) {
	key := wire.Key{7}
	table, err := clients.Table([]clients.Config{{ID: "gamer", Key: key.String(), Allow: []string{"198.18.41.0/24"}}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	allowed := netip.MustParseAddrPort("198.18.41.2:27015")
	now := time.Now()
	run := &clients.Run{Epoch: 0xbeef, StartMilli: now.UnixMilli()}
	seal := func(epoch uint64, target netip.AddrPort, made time.Time) []byte {
		salt, _ := wire.NewSalt()
		h := &wire.Hello{Salt: salt, Target: target, Epoch: epoch, UnixMilli: made.UnixMilli()}
		h.SetClientID("gamer")
		send, _, err := wire.DeriveKeysEpoch(&key, &salt, 42, epoch, wire.RoleClient)
		if err != nil {
			t.Fatal(err)
		}
		hdr := wire.Header{Type: wire.TypeData, Session: 42, Packet: 1}
		dg, err := wire.Seal(send, make([]byte, wire.MaxDatagram), &hdr, h, []byte("tick"))
		if err != nil {
			t.Fatal(err)
		}
		return append([]byte(nil), dg...)
	}
	before, after := now.Add(-5*time.Second), now.Add(time.Second)
	cases := []struct {
		name string
		dg   []byte
		want clients.Refusal
	}{
		{"current epoch", seal(0xbeef, allowed, after), clients.Admitted},
		{"current epoch, clock behind", seal(0xbeef, allowed, before), clients.Admitted},
		{"old epoch, game session", seal(0xdead, allowed, after), clients.OldEpoch},
		{"old epoch, made before the start", seal(0xdead, allowed, before), clients.OldEpoch},
		{"no epoch, made before the start (replay)", seal(0, allowed, before), clients.OldEpoch},
		{"no epoch, fresh router", seal(0, allowed, after), clients.Admitted},
		{"old epoch, control session after the start", seal(0xdead, netip.AddrPort{}, after), clients.Admitted},
		{"old epoch, control session before the start", seal(0xdead, netip.AddrPort{}, before), clients.OldEpoch},
	}
	for _, tc := range cases {
		var hdr wire.Header
		var hl wire.Hello
		off, err := wire.Parse(tc.dg, &hdr, &hl)
		if err != nil {
			t.Fatalf("%s: parse: %v", tc.name, err)
		}
		a, why := clients.Admit(&clients.Roster{Clients: table}, &hdr, &hl, tc.dg, off, make([]byte, len(tc.dg)), 30*time.Second, now, run)
		if why != tc.want {
			t.Errorf("%s: refusal %v, want %v", tc.name, why, tc.want)
		}
		if why == clients.Admitted {
			// The session's keys are those of the hello's epoch.
			cp := append([]byte(nil), tc.dg...)
			if _, err := wire.Open(a.Recv, cp, off); err != nil {
				t.Errorf("%s: admitted keys do not open the datagram", tc.name)
			}
		}
	}
	// Keys of different epochs differ: a datagram sealed for one does not open
	// with the other's.
	dg := seal(0xdead, allowed, after)
	var hdr wire.Header
	var hl wire.Hello
	off, _ := wire.Parse(dg, &hdr, &hl)
	_, recv, _ := wire.DeriveKeysEpoch(&key, &hl.Salt, 42, 0xbeef, wire.RoleServer)
	if _, err := wire.Open(recv, dg, off); err == nil {
		t.Fatal("a datagram of epoch 0xdead opened with the keys of epoch 0xbeef")
	}
}

// OpenSession holds a client to its session limit and creation rate, and
// FairShare splits the table between clients that set no limit.
func TestOpenSessionLimits(t *testing.T) {
	table, err := clients.Table([]clients.Config{
		{ID: "a", Key: wire.Key{1}.String(), Allow: []string{"198.18.41.0/24"}, SessionRate: 1000},
		{ID: "b", Key: wire.Key{2}.String(), Allow: []string{"198.18.41.0/24"}, SessionRate: 10},
	}, 0)
	if err != nil {
		t.Fatal(err)
	}
	clients.FairShare(table, 100)
	a, b := table["a"], table["b"]
	if a.MaxSessions() != 50 || b.MaxSessions() != 50 {
		t.Fatalf("fair share: %d and %d, want 50 each", a.MaxSessions(), b.MaxSessions())
	}
	var now int64 = 1
	got := map[clients.Refusal]int{}
	for i := 0; i < 80; i++ {
		got[a.OpenSession(now)]++
	}
	if got[clients.Admitted] != 50 || got[clients.SessionLimit] != 30 || a.Sessions() != 50 {
		t.Fatalf("client a: %v, holds %d; want 50 admitted, 30 over the limit", got, a.Sessions())
	}
	a.CloseSession()
	if why := a.OpenSession(now); why != clients.Admitted {
		t.Fatalf("after one closed: %v, want admitted", why)
	}
	// b opens 10 at once (its burst), then one per 100 ms.
	got = map[clients.Refusal]int{}
	for i := 0; i < 20; i++ {
		got[b.OpenSession(now)]++
	}
	if got[clients.Admitted] != 10 || got[clients.SessionRate] != 10 {
		t.Fatalf("client b: %v, want 10 admitted and 10 over the rate", got)
	}
	if why := b.OpenSession(now + int64(100*time.Millisecond)); why != clients.Admitted {
		t.Fatalf("client b 100 ms later: %v, want admitted", why)
	}
	if b.Sessions() != 11 {
		t.Fatalf("client b holds %d, want 11 (refusals hold nothing)", b.Sessions())
	}
}
