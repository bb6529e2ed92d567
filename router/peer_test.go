package router

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/wire"
)

// peerOnlyConfig is a router with no proxy: two uplinks on loopback
// addresses, one [[peer]] reached at its static addresses, and extra.
func peerOnlyConfig(self, other string, port, otherPort int, key wire.Key, extra string) string {
	return fmt.Sprintf(`client_id = %q
ping_interval = "50ms"
down_after = "200ms"

[[uplink]]
source = "127.0.0.1"

[[uplink]]
source = "127.0.0.2"

[[peer]]
id = %q
key = %q
port = %d
addresses = ["127.0.0.1:%d", "127.0.0.2:%d"]
%s`, self, other, key.String(), port, otherPort, otherPort, extra)
}

// TestPeerOnlyConfigCheck: a router with [[peer]] and [[vport]] and no proxy
// passes the check without a key; a peer-only router that asks for
// suppression, or one uplink proxy too many, is told what is missing.
func TestPeerOnlyConfigCheck(t *testing.T) {
	key := wire.Key{7}
	good := peerOnlyConfig("alice", "bob", 4611, 4612, key, "\n[[vport]]\npeer = \"bob\"\nlisten = \"127.0.0.1:5060\"\nservice = \"sip\"\n")
	c, err := ParseConfig("r.toml", good)
	if err != nil {
		t.Fatalf("peer-only config refused: %v", err)
	}
	if !c.peerOnly() {
		t.Fatal("a config with peers and no proxy is not peer-only")
	}
	for _, tc := range []struct{ text, want string }{
		{good + "\n[suppress]\nenabled = true\n", "suppress.enabled: suppression needs a proxy session"},
		{strings.Replace(good, "source = \"127.0.0.2\"", "source = \"127.0.0.2\"\nproxy = \"198.18.40.2:4500\"", 1),
			"uplink.0.proxy: no proxy for this uplink"},
		{good + "\n[[forward]]\nlisten = \"127.0.0.1:27015\"\nserver = \"198.18.41.2:27015\"\n", "uplink.0.proxy: no proxy for this uplink"},
	} {
		_, err := ParseConfig("r.toml", tc.text)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v, want %q", err, tc.want)
		}
	}
	// Every error at once, each with its line and key.
	bad := strings.Replace(strings.Replace(good, "port = 4611", "port = 99999", 1), "service = \"sip\"", "service = \"\"", 1)
	_, err = ParseConfig("r.toml", bad)
	for _, want := range []string{"r.toml:14: peer.0.port: must be 1 to 65535", "r.toml:20: vport.0.service: name the peer's service"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want it to hold %q", err, want)
		}
	}
	if _, err := ParseConfig("r.toml", strings.Replace(good, "client_id", "key = \"zz\"\nclient_id", 1)); err == nil ||
		!strings.Contains(err.Error(), "r.toml:1: key") {
		t.Errorf("a bad key in a peer-only config: error %v, want one naming r.toml:1: key", err)
	}
}

// TestPeerOnlyRoutersCarryAVPort: two peer-only routers on loopback (2
// uplinks each, 4 paths) carry a UDP flow from alice's vport to bob's echo
// service and back; each path's copies and the vport's packets are counted
// in the metrics.
func TestPeerOnlyRoutersCarryAVPort(t *testing.T) {
	needLoopback2(t)
	const pa, pb = 4631, 4632
	routers := startEchoPeerPair(t, pa, pb, "", "")
	var vport netip.AddrPort
	deadline := time.Now().Add(5 * time.Second)
	for {
		ps := routers[0].Peers()
		up := 0
		if len(ps) == 1 {
			for _, p := range ps[0].Paths {
				if p.Health.PongsReceived > 0 {
					up++
				}
			}
		}
		var ok bool
		vport, ok = routers[0].PeerVPortAddr("bob", "echo")
		if up == 4 && ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 5 s: %d of 4 paths answer, vport bound %v: %+v", up, ok, ps)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(vport))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 50
	got := map[string]bool{}
	buf := make([]byte, 2048)
	for i := 0; i < n; i++ {
		fmt.Fprintf(c, "packet %d", i)
		c.SetReadDeadline(time.Now().Add(time.Second))
		m, err := c.Read(buf)
		if err != nil {
			t.Fatalf("packet %d: no echo: %v", i, err)
		}
		got[string(buf[:m])] = true
	}
	if len(got) != n {
		t.Fatalf("%d distinct echoes, want %d", len(got), n)
	}
	waitMetric := func(r *Router, name string, want float64) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second)
		for r.Metrics().Snapshot()[name] < want {
			if time.Now().After(deadline) {
				t.Fatalf("%s = %v, want ≥ %v; metrics %v", name, r.Metrics().Snapshot()[name], want, r.Metrics().Snapshot())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, c := range []struct {
		r      *Router
		series string
	}{
		{routers[0], `router_peer_vport_packets_total{peer="bob",service="echo",dir="client_to_peer"}`},
		{routers[1], `router_peer_vport_packets_total{peer="alice",service="echo",dir="peer_to_service"}`},
		{routers[1], `router_peer_vport_packets_total{peer="alice",service="echo",dir="service_to_peer"}`},
		{routers[0], `router_peer_vport_packets_total{peer="bob",service="echo",dir="peer_to_client"}`},
	} {
		waitMetric(c.r, c.series, n)
		if v := c.r.Metrics().Snapshot()[c.series]; v != n {
			t.Errorf("%s = %v, want %d", c.series, v, n)
		}
	}
	// Every packet went over each of the 4 paths (loopback loses nothing):
	// bob counts n copies on each from alice's two addresses.
	for _, up := range []string{"uplink0", "uplink1"} {
		for _, from := range []string{"127.0.0.1", "127.0.0.2"} {
			waitMetric(routers[1], fmt.Sprintf(`router_peer_path_copies_received_total{peer="alice",uplink=%q,remote="%s:%d"}`, up, from, pa), n)
		}
	}
	// The ticker exports each path's health every 500 ms.
	waitMetric(routers[0], `router_peer_path_up{peer="bob",uplink="uplink1",remote="127.0.0.2:4632"}`, 1)
	if st := routers[0].Status(); len(st.Peers) != 1 || len(st.Peers[0].Paths) != 4 || st.Peers[0].Delivered != n || st.Peers[0].Relay {
		t.Errorf("alice's status: %+v, want bob with 4 paths, %d packets delivered, no relay", st.Peers, n)
	}
	if d := routers[1].Peers()[0].Counters.Delivered; d != n {
		t.Fatalf("bob delivered %d packets, want %d (one per packet, duplicates dropped)", d, n)
	}
}
