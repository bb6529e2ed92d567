package intermediate

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/wire"
)

// An intermediate has no token key: a hello with a connect token (and an
// epoch, both trailers) is counted as from an unknown client and dropped,
// and the intermediate keeps serving.
func TestTokenHelloIsRefused(t *testing.T) {
	server, served := echoServer(t)
	p := startProxy(t, "mid1", midKeys[0], server)
	m := startMid(t, "gamer", routerKey, server, "mid1", midKeys[0], 1, p.Addr())
	salt, _ := wire.NewSalt()
	key := wire.Key{5}
	send, _, err := wire.DeriveKeysEpoch(&key, &salt, 77, 9, wire.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	hl := &wire.Hello{Salt: salt, UnixMilli: time.Now().UnixMilli(), Target: server, Epoch: 9, Token: []byte("not a token this hop can open")}
	hl.SetClientID("player")
	hdr := wire.Header{Type: wire.TypeData, Scheme: 1, Session: 77, Packet: 1}
	dg, err := wire.Seal(send, make([]byte, wire.MaxDatagram), &hdr, hl, []byte("tick"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), m.Addr().Port())))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 5; i++ {
		c.Write(dg)
	}
	waitFor(t, 2*time.Second, "token hellos counted", func() bool {
		return counter(m, `intermediate_dropped_total{reason="unknown_client"}`) >= 5
	})
	if s := served.Load(); s != 0 {
		t.Errorf("server received %d packets of a token session", s)
	}
	if c := counter(m, `intermediate_relayed_total{dir="out"}`); c != 0 {
		t.Errorf("relayed %v packets of a token session", c)
	}
}
