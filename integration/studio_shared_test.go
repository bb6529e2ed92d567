package integration

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/wire"
)

// TestStudioProxyFleetSharedUpstream runs the shipped programs with the
// shared upstream: raic-proxy sends every session to an SPP game server
// (ppserver) from one socket (upstream = "shared"), two raic-routers reach
// it, one of them with two game flows from its one uplink socket. The server
// must see each router's own uplink address as the player's, every session
// from the one proxy socket, and every reply must reach the game that sent
// the packet it answers.
func TestStudioProxyFleetSharedUpstream(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the programs; skipped with -short")
	}
	proxyBin := buildCommand(t, "proxy/cmd/raic-proxy")
	routerBin := buildCommand(t, "router/cmd/raic-router")
	ppBin := buildCommand(t, "integration/cmd/ppserver")
	dir := t.TempDir()

	server := startPPServer(t, ppBin, "spp")

	proxyPort := freeUDPPort(t)
	metrics := freeTCPAddr(t)
	key := wire.Key{6}.String()
	proxyFile := filepath.Join(dir, "proxy.toml")
	os.WriteFile(proxyFile, []byte(fmt.Sprintf(`listen = "127.0.0.1:%d"
metrics = "%s"
workers = 1
[[client]]
id = "gamer"
key = "%s"
allow = ["%s"]
[[server]]
match = "%s"
client_addr_header = "spp"
upstream = "shared"
`, proxyPort, metrics, key, server, server)), 0o600)
	startCommand(t, proxyBin, "-config", proxyFile)
	waitFor(t, 5*time.Second, "the proxy's metrics", func() bool { return httpStatus("http://"+metrics+"/metrics") == 200 })

	startRouter := func(name string) (up, fwd netip.AddrPort) {
		up = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(freeUDPPort(t)))
		fwd = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(freeUDPPort(t)))
		f := filepath.Join(dir, name+".toml")
		os.WriteFile(f, []byte(fmt.Sprintf(`client_id = "gamer"
key = "%s"
proxy = "127.0.0.1:%d"
[[uplink]]
name = "isp"
source = "%s"
[[forward]]
listen = "%s"
server = "%s"
`, key, proxyPort, up, fwd, server)), 0o600)
		startCommand(t, routerBin, "-config", f)
		return up, fwd
	}
	upA, fwdA := startRouter("router-a")
	upB, fwdB := startRouter("router-b")

	type game struct {
		name string
		conn *net.UDPConn
		up   netip.AddrPort // the router uplink the server must name
	}
	var games []game
	for _, g := range []struct {
		name string
		fwd  netip.AddrPort
		up   netip.AddrPort
	}{{"a1", fwdA, upA}, {"a2", fwdA, upA}, {"b1", fwdB, upB}} {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(g.fwd))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		games = append(games, game{g.name, c, g.up})
	}
	// echo sends msg from g until an answer comes back, and returns it.
	echo := func(g game, msg string) string {
		buf := make([]byte, 2048)
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
			g.conn.Write([]byte(msg))
			g.conn.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
			n, err := g.conn.Read(buf)
			if err == nil {
				return string(buf[:n])
			}
		}
		return ""
	}
	peers := map[string]bool{}
	for round := 0; round < 3; round++ {
		for _, g := range games {
			msg := fmt.Sprintf("%s-%d", g.name, round)
			got := echo(g, msg)
			if got == "" {
				t.Fatalf("%s: no answer", msg)
			}
			// A late answer of the round before may come first; it is this
			// game's all the same.
			if !strings.HasPrefix(got, fmt.Sprintf("client=%v ", g.up)) || !strings.Contains(got, " "+g.name+"-") {
				t.Fatalf("%s: answered %q, want the server to have seen %v and the answer to be this game's", msg, got, g.up)
			}
			f := strings.Fields(got)
			peers[f[1]] = true
		}
	}
	if len(peers) != 1 {
		t.Fatalf("the server saw the sessions from %v: want one shared socket", peers)
	}
	m := httpBody(t, "http://"+metrics+"/metrics")
	if !strings.Contains(m, "proxy_shared_upstream_sessions 3") {
		t.Fatalf("want 3 sessions on the shared upstream:\n%s", m)
	}
	for _, bad := range []string{`reason="shared_reply_unknown"} 0`, `reason="shared_reply_bad_header"} 0`} {
		if !strings.Contains(m, bad) {
			t.Fatalf("replies dropped (want %s):\n%s", bad, m)
		}
	}
}
