package router

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// TestPeerSchemeConfig: [[peer]] scheme takes the top-level scheme's syntax
// (copies by default); "auto" and malformed schemes are refused with their
// line and key.
func TestPeerSchemeConfig(t *testing.T) {
	key := wire.Key{7}
	for _, tc := range []struct {
		line string
		want raic.Params
	}{
		{"", raic.Params{}},
		{`scheme = "copy"`, raic.Params{Scheme: raic.SchemeCopy, K: 1, M: 1}},
		{`scheme = "xor:2"`, raic.Params{Scheme: raic.SchemeXOR, K: 2, M: 1}},
		{`scheme = "rs:2+2"`, raic.Params{Scheme: raic.SchemeRS, K: 2, M: 2}},
	} {
		c, err := ParseConfig("r.toml", peerOnlyConfig("alice", "bob", 4611, 4612, key, tc.line+"\n"))
		if err != nil {
			t.Errorf("%q: %v", tc.line, err)
			continue
		}
		if c.Peers[0].scheme != tc.want {
			t.Errorf("%q: scheme %+v, want %+v", tc.line, c.Peers[0].scheme, tc.want)
		}
	}
	for _, tc := range []struct{ line, want string }{
		{`scheme = "auto"`, `r.toml:16: peer.0.scheme: "auto" needs a proxy's quality reports`},
		{`scheme = "rs:2"`, `r.toml:16: peer.0.scheme: raic: rs wants k+m`},
		{`scheme = "xor:99"`, `r.toml:16: peer.0.scheme: raic: xor needs K in 1..32`},
	} {
		_, err := ParseConfig("r.toml", peerOnlyConfig("alice", "bob", 4611, 4612, key, tc.line+"\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.line, err, tc.want)
		}
	}
}

// TestPeerOnlyRoutersCodedScheme: alice sends rs 2+2, bob xor 2+1, over the
// 2×2 loopback paths; a UDP flow through alice's vport reaches bob's echo
// service and comes back whole, each packet once, and /status names the
// schemes and the bytes they cost.
func TestPeerOnlyRoutersCodedScheme(t *testing.T) {
	needLoopback2(t)
	const pa, pb = 4641, 4642
	routers := startEchoPeerPair(t, pa, pb, "scheme = \"rs:2+2\"\n", "scheme = \"xor:2\"\n")
	var vport netip.AddrPort
	deadline := time.Now().Add(5 * time.Second)
	for {
		var ok bool
		vport, ok = routers[0].PeerVPortAddr("bob", "echo")
		if st := routers[0].Status(); ok && len(st.Peers) == 1 && len(st.Peers[0].Paths) == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 5 s: no vport or not 4 paths: %+v", routers[0].Status().Peers)
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
	payload := strings.Repeat("v", 160)
	for i := 0; i < n; i++ {
		fmt.Fprintf(c, "packet %d %s", i, payload)
		c.SetReadDeadline(time.Now().Add(time.Second))
		m, err := c.Read(buf)
		if err != nil {
			t.Fatalf("packet %d: no echo: %v", i, err)
		}
		if want := fmt.Sprintf("packet %d %s", i, payload); string(buf[:m]) != want {
			t.Fatalf("echo %q, want %q", buf[:m], want)
		}
		got[string(buf[:m])] = true
	}
	if len(got) != n {
		t.Fatalf("%d distinct echoes, want %d", len(got), n)
	}
	sa, sb := routers[0].Status().Peers[0], routers[1].Status().Peers[0]
	if sa.Scheme != "RAIC-6 2+2" || sb.Scheme != "RAIC-5 2+1" {
		t.Errorf("schemes in /status: alice %q, bob %q", sa.Scheme, sb.Scheme)
	}
	if sa.Delivered < n || sb.Delivered < n || sa.Delivered > sb.Sent || sb.Delivered > sa.Sent {
		t.Errorf("alice sent %d, delivered %d; bob sent %d, delivered %d", sa.Sent, sa.Delivered, sb.Sent, sb.Delivered)
	}
	if sa.WireBytes == 0 || sa.PayloadBytes == 0 {
		t.Errorf("alice's bytes not counted: %+v", sa)
	}
	// The ticker exports them every 500 ms.
	deadline = time.Now().Add(2 * time.Second)
	for routers[0].Metrics().Snapshot()[`router_peer_payload_bytes_sent{peer="bob"}`] == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no router_peer_payload_bytes_sent: %v", routers[0].Metrics().Snapshot())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if m := routers[0].Metrics().Snapshot(); m[`router_peer_wire_bytes_sent{peer="bob"}`] == 0 {
		t.Errorf("no router_peer_wire_bytes_sent: %v", m)
	}
	t.Logf("bytes on the wire per payload byte: rs 2+2 %.2f, xor 2+1 %.2f",
		float64(sa.WireBytes)/float64(sa.PayloadBytes), float64(sb.WireBytes)/float64(sb.PayloadBytes))
}
