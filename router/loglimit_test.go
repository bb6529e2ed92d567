package router

import (
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/testkit"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/wire"
)

// TestFlowLogLinesAreBounded: a flood of new flows into a full session table
// (every one a "session started" and an eviction) writes a bounded number of
// lines, and the lines say how many were held back.
func TestFlowLogLinesAreBounded(t *testing.T) {
	key := wire.Key{7}
	proxyAddr, server := sink(t), sink(t)
	cfg, err := ParseConfig("router.toml", fmt.Sprintf(`
client_id = "gamer"
key = "%s"
proxy = "%s"
max_sessions = 16
[[uplink]]
source = "127.0.0.1"
[[forward]]
listen = "127.0.0.1:0"
server = "%s"
`, key, proxyAddr, server))
	if err != nil {
		t.Fatal(err)
	}
	var logs testkit.LogBuffer
	r, err := New(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer r.closeSockets()
	f := r.forwards[0]
	pkt := make([]byte, 100)
	start := time.Now()
	const flows = 3000
	for i := 0; i < flows; i++ {
		game := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(10000+i))
		r.fromGame(f, pkt, game, mono.Now())
	}
	// One more flow after a pause: its line reports the ones held back.
	time.Sleep(150 * time.Millisecond)
	r.fromGame(f, pkt, netip.MustParseAddrPort("127.0.0.1:9999"), mono.Now())
	elapsed := time.Since(start).Seconds()
	if got := r.m.sessionsEvicted.Load(); got < flows-15 {
		t.Fatalf("%d sessions evicted, want at least %d", got, flows-16)
	}
	lines := logs.Count("session started") + logs.Count("session evicted")
	limit := 50 + int(10*elapsed) + 1
	if lines > limit {
		t.Errorf("%d flow log lines for %d new flows in %.2fs, want at most %d", lines, flows, elapsed, limit)
	}
	if lines == 0 {
		t.Errorf("no flow log line at all")
	}
	if held := regexp.MustCompile(`lines_suppressed=[1-9]`).MatchString(logs.String()); !held {
		t.Errorf("no line reports the ones held back")
	}
}
