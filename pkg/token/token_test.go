package token

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/wire"
)

func TestMintOpen(t *testing.T) {
	key := wire.Key{3}
	now := time.Unix(1_800_000_000, 0)
	tok, c, err := Mint(&key, Claims{ClientID: "player-1", Servers: []string{"198.18.41.2:27015", "[2001:db8::/48]:3074-3080"},
		NotBefore: now, Expires: now.Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if len(tok) > MaxLen || c.ClientKey == (wire.Key{}) || c.Sessions != DefaultSessions {
		t.Fatalf("len %d, claims %+v", len(tok), c)
	}
	o, _ := NewOpener(&key)
	var got Opened
	scratch := make([]byte, MaxLen)
	if err := o.Open(tok, scratch, now.Add(time.Second), &got); err != nil {
		t.Fatal(err)
	}
	if string(got.ClientID) != "player-1" || got.ClientKey != c.ClientKey || got.ID != c.ID || got.Sessions != DefaultSessions {
		t.Errorf("opened %+v", got)
	}
	for ap, want := range map[string]bool{"198.18.41.2:27015": true, "198.18.41.2:27016": false,
		"[2001:db8::5]:3075": true, "[2001:db8:1::5]:3075": false} {
		if got.Allow.Allows(netip.MustParseAddrPort(ap)) != want {
			t.Errorf("%s allowed = %v", ap, !want)
		}
	}
	// Every refusal, by its own error.
	if err := o.Open(tok, scratch, now.Add(time.Minute), &got); err != ErrExpired {
		t.Errorf("at expiry: %v", err)
	}
	if err := o.Open(tok, scratch, now.Add(-time.Second), &got); err != ErrNotYet {
		t.Errorf("before not-before: %v", err)
	}
	other, _ := NewOpener(&wire.Key{4})
	if err := other.Open(tok, scratch, now, &got); err != ErrForged {
		t.Errorf("another key: %v", err)
	}
	for i := range tok {
		b := append([]byte(nil), tok...)
		b[i] ^= 0x01
		if err := o.Open(b, scratch, now, &got); err == nil {
			t.Fatalf("bit flipped at %d accepted", i)
		}
	}
	for i := 0; i < len(tok); i++ {
		if err := o.Open(tok[:i], scratch, now, &got); err == nil {
			t.Fatalf("cut at %d accepted", i)
		}
	}
}

func TestMintRefuses(t *testing.T) {
	key := wire.Key{3}
	now := time.Now()
	ok := Claims{ClientID: "p", Servers: []string{"198.18.41.2:27015"}, NotBefore: now, Expires: now.Add(time.Minute)}
	bad := map[string]func(c *Claims){
		"no client":  func(c *Claims) { c.ClientID = "" },
		"no server":  func(c *Claims) { c.Servers = nil },
		"bad server": func(c *Claims) { c.Servers = []string{"nowhere"} },
		"expired":    func(c *Claims) { c.Expires = c.NotBefore },
		"too many":   func(c *Claims) { c.Sessions = MaxSessions + 1 },
		"too long": func(c *Claims) {
			c.ClientID = strings.Repeat("x", 32)
			c.Servers = []string{"[2001:db8::1]:1", "[2001:db8::2]:1"}
		},
	}
	for name, f := range bad {
		c := ok
		f(&c)
		if _, _, err := Mint(&key, c); err == nil {
			t.Errorf("%s: minted", name)
		}
	}
}

// The replay table admits a token's sessions up to its limit, forgets tokens
// when they expire, and when full drops the one expiring first (counted). The
// owner given with a token's first session is what every later Use returns.
func TestSeen(t *testing.T) {
	s := NewSeen(2)
	a, b, c := ID{1}, ID{2}, ID{3}
	use := func(id ID, exp int64, limit int, session uint64, owner any) bool {
		_, ok := s.Use(id, exp, limit, session, 0, owner)
		return ok
	}
	if !use(a, 100, 2, 7, "first") || !use(a, 100, 2, 7, "again") {
		t.Fatal("first session refused")
	}
	if o, ok := s.Use(a, 100, 2, 8, 0, "second"); !ok || o != "first" {
		t.Fatalf("second session of a two-session token: %v, owner %v (want the first's)", ok, o)
	}
	if o, ok := s.Use(a, 100, 2, 9, 0, "third"); ok || o != "first" {
		t.Fatalf("third session of a two-session token admitted %v, owner %v", ok, o)
	}
	use(b, 50, 1, 1, nil)
	use(c, 200, 1, 1, nil) // full: b (expiring first) goes
	if s.Len() != 2 || s.Evicted() != 1 {
		t.Fatalf("len %d evicted %d", s.Len(), s.Evicted())
	}
	if use(a, 100, 2, 10, nil) {
		t.Fatal("a was evicted instead of b")
	}
	s.Sweep(150)
	if s.Len() != 1 {
		t.Fatalf("after sweep: %d", s.Len())
	}
}

func TestText(t *testing.T) {
	key := wire.Key{3}
	tok, _, err := Mint(&key, Claims{ClientID: "p", Servers: []string{"198.18.41.2"}, NotBefore: time.Now(), Expires: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(Encode(tok))
	if err != nil || string(back) != string(tok) {
		t.Fatalf("decode: %v", err)
	}
	if _, err := Decode("!!"); err == nil {
		t.Error("garbage decoded")
	}
}
