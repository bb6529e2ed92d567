package integration

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/proxy"
	"github.com/raicnet/raic/router"
)

// testKey is the pre-shared key of the test client.
var testKey = wire.Key{0x52, 0x41, 0x49, 0x43}

// testLogger logs to stderr when RAIC_TEST_LOG is set, and nowhere otherwise.
func testLogger() *slog.Logger {
	if os.Getenv("RAIC_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startProxy runs a proxy on loopback that lets client "gamer" reach allow.
func startProxy(t testing.TB, allow string) *proxy.Server {
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
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return p
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
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
