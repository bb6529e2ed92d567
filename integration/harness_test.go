package integration

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/raicnet/raic/integration/testkit"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/proxy"
	"github.com/raicnet/raic/router"
)

// testKey is the pre-shared key of the test client.
var testKey = wire.Key{0x52, 0x41, 0x49, 0x43}

// testLogger logs to stderr when RAIC_TEST_LOG is set, and nowhere otherwise.
var testLogger = testkit.Logger

// waitFor polls cond until it holds or the timeout passes.
var waitFor = testkit.WaitFor

// startProxy runs a proxy on loopback that lets client "gamer" reach allow.
func startProxy(t testing.TB, allow string) *proxy.Server {
	t.Helper()
	p, _ := runLoopbackProxy(t, allow)
	return p
}

// runLoopbackProxy is startProxy with a func that stops the proxy mid-test.
func runLoopbackProxy(t testing.TB, allow string) (*proxy.Server, func()) {
	t.Helper()
	cfg, err := proxy.ParseConfig("proxy.toml", fmt.Sprintf(`
listen = "127.0.0.1:0"
[[client]]
id = "gamer"
key = "%s"
allow = ["%s"]
rate_pps = 100000
`, testKey, allow))
	if err != nil {
		t.Fatal(err)
	}
	p, err := proxy.New(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	return p, testkit.Run(t, p.Run)
}

// startRouter runs a router in explicit mode with one uplink per entry of
// uplinkProxies (each bound to 127.0.0.1, sending to that address) and one
// forward to server.
func startRouter(t testing.TB, server netip.AddrPort, extra string, uplinkProxies ...netip.AddrPort) *router.Router {
	t.Helper()
	text := fmt.Sprintf(`
client_id = "gamer"
key = "%s"
%s
[[forward]]
listen = "127.0.0.1:0"
server = "%s"
`, testKey, extra, server)
	for i, up := range uplinkProxies {
		text += fmt.Sprintf("[[uplink]]\nname = \"isp%d\"\nsource = \"127.0.0.1\"\nproxy = \"%s\"\n", i, up)
	}
	cfg, err := router.ParseConfig("router.toml", text)
	if err != nil {
		t.Fatal(err)
	}
	r, err := router.New(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, r.Run)
	return r
}
