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
		a, why := clients.Admit(&clients.Roster{Clients: table}, &hdr, &hl, tc.dg, off, make([]byte, len(tc.dg)), 30*time.Second, now.Add(tc.at))
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
	if _, why := clients.Admit(&clients.Roster{Clients: table}, &hdr, &hl, dg, off, make([]byte, len(dg)), 30*time.Second, now); why != clients.AuthFailed {
		t.Errorf("flipped bit: refusal %v, want AuthFailed", why)
	}
}
