package router

import (
	"context"
	"fmt"
	"io"
	"log/slog"
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
	if c, err := net.ListenPacket("udp4", "127.0.0.2:0"); err != nil {
		t.Skipf("no 127.0.0.2 on this machine: %v", err)
	} else {
		c.Close()
	}
	echo, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		b := make([]byte, 2048)
		for {
			n, from, err := echo.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			echo.WriteToUDPAddrPort(b[:n], from)
		}
	}()
	key, _ := wire.GenerateKey()
	const pa, pb = 4641, 4642
	ca, err := ParseConfig("a.toml", peerOnlyConfig("alice", "bob", pa, pb, key,
		"scheme = \"rs:2+2\"\n\n[[vport]]\npeer = \"bob\"\nlisten = \"127.0.0.1:0\"\nservice = \"echo\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	cb, err := ParseConfig("b.toml", peerOnlyConfig("bob", "alice", pb, pa, key,
		fmt.Sprintf("scheme = \"xor:2\"\n\n[[peer.service]]\nname = \"echo\"\ntarget = %q\n", echo.LocalAddr().String())))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var routers [2]*Router
	done := make(chan error, 2)
	for i, c := range []*Config{ca, cb} {
		r, err := New(c, log)
		if err != nil {
			t.Fatal(err)
		}
		routers[i] = r
		go func() { done <- r.Run(ctx) }()
	}
	defer func() {
		cancel()
		for range routers {
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	}()
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
