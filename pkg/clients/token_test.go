package clients_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/clients"
	"github.com/raicnet/raic/pkg/token"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// tokenHello seals the first datagram of session id as a router holding tok
// and clientKey would.
func tokenHello(t *testing.T, tok []byte, clientKey wire.Key, id uint64, target netip.AddrPort) []byte {
	t.Helper()
	salt, _ := wire.NewSalt()
	h := &wire.Hello{Salt: salt, Target: target, Token: tok}
	h.SetClientID("any")
	send, _, err := wire.DeriveKeys(&clientKey, &salt, id, wire.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	snd, err := tunnel.NewSender(send, id, raic.Params{Scheme: raic.SchemeCopy, K: 1}, h)
	if err != nil {
		t.Fatal(err)
	}
	_, dgs, err := snd.Seal([]byte("tick"), 0)
	if err != nil || len(dgs) != 1 {
		t.Fatalf("seal: %v", err)
	}
	return append([]byte(nil), dgs[0]...)
}

// A proxy with a token key admits a player by the token alone, and refuses
// (without any per-player config) every token that is expired, not yet
// valid, forged, bit-flipped, under another key, for another server, replayed
// for one session too many, or used without its client key.
func TestAdmitToken(t *testing.T) {
	shared := wire.Key{7, 7, 7}
	roster, err := clients.NewRoster(nil, &shared, token.NewSeen(16), 0)
	if err != nil {
		t.Fatal(err)
	}
	server := netip.MustParseAddrPort("198.18.41.2:27015")
	now := time.Now()
	mint := func(key wire.Key, nbf, exp time.Duration, sessions int) ([]byte, wire.Key) {
		tok, c, err := token.Mint(&key, token.Claims{ClientID: "player-1", Servers: []string{"198.18.41.0/24:27000-27050"},
			NotBefore: now.Add(nbf), Expires: now.Add(exp), Sessions: sessions})
		if err != nil {
			t.Fatal(err)
		}
		return tok, c.ClientKey
	}
	admit := func(dg []byte) (clients.Admission, clients.Refusal) {
		var hdr wire.Header
		var hl wire.Hello
		off, err := wire.Parse(dg, &hdr, &hl)
		if err != nil {
			t.Fatalf("parse: %v", err)
		}
		return clients.Admit(roster, &hdr, &hl, dg, off, make([]byte, len(dg)), 30*time.Second, now, nil)
	}

	good, ck := mint(shared, -time.Second, time.Minute, 2)
	a, why := admit(tokenHello(t, good, ck, 1, server))
	if why != clients.Admitted || a.Client.ID != "player-1" || !a.Client.Allow.Allows(server) {
		t.Fatalf("good token: %v %+v", why, a.Client)
	}
	// The same session again (another uplink's copy, or after the proxy
	// forgot it) passes; a second session fits the token's limit of two; a
	// third is a replay.
	if _, why := admit(tokenHello(t, good, ck, 1, server)); why != clients.Admitted {
		t.Errorf("same session again: %v", why)
	}
	if _, why := admit(tokenHello(t, good, ck, 2, server)); why != clients.Admitted {
		t.Errorf("second session: %v", why)
	}
	if _, why := admit(tokenHello(t, good, ck, 3, server)); why != clients.TokenReplayed {
		t.Errorf("third session: %v, want TokenReplayed", why)
	}

	expired, eck := mint(shared, -2*time.Minute, -time.Minute, 1)
	notYet, nck := mint(shared, time.Minute, 2*time.Minute, 1)
	otherKey, ock := mint(wire.Key{8}, -time.Second, time.Minute, 1)
	flipped, fck := mint(shared, -time.Second, time.Minute, 1)
	flipped[len(flipped)/2] ^= 0x10
	forged := append([]byte(nil), good...)
	forged[0] = token.Version
	forged[len(forged)-1] ^= 1
	unused, uck := mint(shared, -time.Second, time.Minute, 1)
	cases := []struct {
		name string
		dg   []byte
		want clients.Refusal
	}{
		{"expired", tokenHello(t, expired, eck, 10, server), clients.TokenExpired},
		{"not yet valid", tokenHello(t, notYet, nck, 11, server), clients.TokenNotYet},
		{"another token key", tokenHello(t, otherKey, ock, 12, server), clients.TokenForged},
		{"bit flipped", tokenHello(t, flipped, fck, 13, server), clients.TokenForged},
		{"forged tag", tokenHello(t, forged, ck, 14, server), clients.TokenForged},
		{"wrong server", tokenHello(t, unused, uck, 15, netip.MustParseAddrPort("198.18.42.2:27015")), clients.ForbiddenTarget},
		{"wrong port", tokenHello(t, unused, uck, 16, netip.MustParseAddrPort("198.18.41.2:28000")), clients.ForbiddenTarget},
		{"no client key", tokenHello(t, unused, wire.Key{1}, 17, server), clients.AuthFailed},
	}
	for _, tc := range cases {
		if _, why := admit(tc.dg); why != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, why, tc.want)
		}
	}
	// Refused hellos did not use the token up: its one session still opens.
	if _, why := admit(tokenHello(t, unused, uck, 18, server)); why != clients.Admitted {
		t.Errorf("token refused only for others' faults: %v", why)
	}

	// A program without a token key refuses tokens.
	psk, _ := clients.NewRoster(nil, nil, nil, 0)
	dg := tokenHello(t, good, ck, 1, server)
	var hdr wire.Header
	var hl wire.Hello
	off, _ := wire.Parse(dg, &hdr, &hl)
	if _, why := clients.Admit(psk, &hdr, &hl, dg, off, make([]byte, len(dg)), 30*time.Second, now, nil); why != clients.TokenMalformed {
		t.Errorf("no token key: %v", why)
	}
}

// tokenHelloEpoch seals a token hello as tokenHello does, for restart epoch
// epoch (both trailers: epoch, then token) and made at made.
func tokenHelloEpoch(t *testing.T, tok []byte, clientKey wire.Key, id, epoch uint64, target netip.AddrPort, made time.Time) []byte {
	t.Helper()
	salt, _ := wire.NewSalt()
	h := &wire.Hello{Salt: salt, UnixMilli: made.UnixMilli(), Target: target, Token: tok, Epoch: epoch}
	h.SetClientID("any")
	send, _, err := wire.DeriveKeysEpoch(&clientKey, &salt, id, epoch, wire.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	hdr := wire.Header{Type: wire.TypeData, Scheme: 1, Session: id, Packet: 1}
	dg, err := wire.Seal(send, make([]byte, wire.MaxDatagram), &hdr, h, []byte("tick"))
	if err != nil {
		t.Fatal(err)
	}
	return dg
}

// A token hello meets the restart-epoch checks as a pre-shared key's does
// (its keys derive from the epoch, an old epoch or a hello from before the
// run is refused), and all sessions of one token share one client whose
// session limit is the token's and whose session rate is the roster's.
func TestAdmitTokenEpochAndLimits(t *testing.T) {
	shared := wire.Key{9, 9}
	roster, err := clients.NewRoster(nil, &shared, token.NewSeen(16), 0)
	if err != nil {
		t.Fatal(err)
	}
	roster.TokenSessionRate = 1
	now := time.Now()
	run := &clients.Run{Epoch: 0xbeef, StartMilli: now.Add(-time.Second).UnixMilli()}
	server := netip.MustParseAddrPort("198.18.41.2:27015")
	tok, c, err := token.Mint(&shared, token.Claims{ClientID: "player-2", Servers: []string{"198.18.41.2:27015"},
		NotBefore: now.Add(-time.Minute), Expires: now.Add(time.Minute), Sessions: 3})
	if err != nil {
		t.Fatal(err)
	}
	admit := func(dg []byte) (clients.Admission, clients.Refusal) {
		var hdr wire.Header
		var hl wire.Hello
		off, err := wire.Parse(dg, &hdr, &hl)
		if err != nil {
			t.Fatalf("parse: %v", err)
		}
		return clients.Admit(roster, &hdr, &hl, dg, off, make([]byte, len(dg)), 30*time.Second, now, run)
	}
	before := now.Add(-2 * time.Second)
	for _, tc := range []struct {
		name  string
		epoch uint64
		made  time.Time
		want  clients.Refusal
	}{
		{"old epoch", 0xdead, now, clients.OldEpoch},
		{"no epoch, made before the run (replay)", 0, before, clients.OldEpoch},
		{"current epoch, made before the run", 0xbeef, before, clients.Admitted},
	} {
		if _, why := admit(tokenHelloEpoch(t, tok, c.ClientKey, 100, tc.epoch, server, tc.made)); why != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, why, tc.want)
		}
	}
	// The keys are the epoch's: a hello sealed for no epoch but flagged with
	// the current one does not open.
	dg := tokenHelloEpoch(t, tok, c.ClientKey, 101, 0, server, now)
	var hdr wire.Header
	var hl wire.Hello
	off, _ := wire.Parse(dg, &hdr, &hl)
	hl.Epoch = 0xbeef
	if _, why := clients.Admit(roster, &hdr, &hl, dg, off, make([]byte, len(dg)), 30*time.Second, now, run); why != clients.AuthFailed {
		t.Errorf("keys of another epoch: %v, want AuthFailed", why)
	}

	a1, why := admit(tokenHelloEpoch(t, tok, c.ClientKey, 100, 0xbeef, server, now))
	if why != clients.Admitted {
		t.Fatal(why)
	}
	a2, why := admit(tokenHelloEpoch(t, tok, c.ClientKey, 102, 0xbeef, server, now))
	if why != clients.Admitted {
		t.Fatal(why)
	}
	if a1.Client != a2.Client {
		t.Fatal("two sessions of one token got different clients")
	}
	if a1.Client.MaxSessions() != 3 {
		t.Fatalf("token client's session limit %d, want the token's 3", a1.Client.MaxSessions())
	}
	// Session rate 1/s: the first opens, the second at once is refused, and
	// a second later it opens.
	cl := a1.Client
	if why := cl.OpenSession(1); why != clients.Admitted {
		t.Fatalf("first session: %v", why)
	}
	if why := cl.OpenSession(2); why != clients.SessionRate {
		t.Fatalf("second session at once: %v, want SessionRate", why)
	}
	if why := cl.OpenSession(2 + int64(time.Second)); why != clients.Admitted {
		t.Fatalf("second session a second later: %v", why)
	}
	if why := cl.OpenSession(3 + 3*int64(time.Second)); why != clients.Admitted {
		t.Fatalf("third session: %v", why)
	}
	if why := cl.OpenSession(4 + 6*int64(time.Second)); why != clients.SessionLimit {
		t.Fatalf("fourth session of a three-session token: %v, want SessionLimit", why)
	}
}

// OpenToken gives the refusal Admit would for the token alone, and the
// client ID and key inside a good one; a roster without a token key opens
// nothing.
func TestOpenToken(t *testing.T) {
	shared := wire.Key{7, 7, 7}
	roster, err := clients.NewRoster(nil, &shared, token.NewSeen(16), 0)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	mint := func(key wire.Key, nbf, exp time.Duration) ([]byte, wire.Key) {
		tok, c, err := token.Mint(&key, token.Claims{ClientID: "player-1", Servers: []string{"198.18.41.2"},
			NotBefore: now.Add(nbf), Expires: now.Add(exp)})
		if err != nil {
			t.Fatal(err)
		}
		return tok, c.ClientKey
	}
	good, ck := mint(shared, -time.Second, time.Minute)
	var scratch [token.MaxLen]byte
	var o token.Opened
	if why := clients.OpenToken(roster, good, scratch[:], now, &o); why != clients.Admitted || string(o.ClientID) != "player-1" || o.ClientKey != ck {
		t.Fatalf("good token: %v, %q", why, o.ClientID)
	}
	expired, _ := mint(shared, -time.Hour, -time.Minute)
	notYet, _ := mint(shared, time.Hour, 2*time.Hour)
	forged, _ := mint(wire.Key{1}, -time.Second, time.Minute)
	for _, c := range []struct {
		name string
		tok  []byte
		want clients.Refusal
	}{
		{"expired", expired, clients.TokenExpired},
		{"not yet valid", notYet, clients.TokenNotYet},
		{"forged", forged, clients.TokenForged},
		{"garbage", []byte("x"), clients.TokenMalformed},
	} {
		if why := clients.OpenToken(roster, c.tok, scratch[:], now, &o); why != c.want {
			t.Errorf("%s: %v, want %v", c.name, why, c.want)
		}
	}
	if why := clients.OpenToken(&clients.Roster{}, good, scratch[:], now, &o); why != clients.TokenMalformed {
		t.Errorf("no token key: %v", why)
	}
}
