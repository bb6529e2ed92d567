package ingress

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/raicnet/raic/pkg/clients"
	"github.com/raicnet/raic/pkg/logging"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/session"
	"github.com/raicnet/raic/pkg/wire"
)

// Evictions and idle ends are counted apart, evictions are logged within the
// limiter's budget, and every end gives the client its session back.
func TestEndsCountLogAndCloseTheClientsSession(t *testing.T) {
	cl, err := clients.Table([]clients.Config{{ID: "gamer", Key: wire.Key{1}.String(), Allow: []string{"198.18.0.1:1"}}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	c := cl["gamer"]
	reg := metrics.NewRegistry()
	evicted := reg.Counter("x_sessions_evicted_total", "")
	idle := reg.Counter("x_sessions_expired_total", "")
	var logs bytes.Buffer
	e := NewEnds(evicted, idle, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})), logging.NewLimiter(0, 2), 10)
	p := &Peer{Client: c}
	for i := 0; i < 5; i++ {
		if r := c.OpenSession(0); r != 0 {
			t.Fatalf("open session %d refused: %v", i, r)
		}
	}
	for i := uint64(0); i < 4; i++ {
		e.Ended(i, p, session.ReasonEvicted)
	}
	e.Ended(9, p, session.ReasonIdle)
	snap := reg.Snapshot()
	if snap["x_sessions_evicted_total"] != 4 || snap["x_sessions_expired_total"] != 1 {
		t.Errorf("counted %v evicted and %v idle, want 4 and 1", snap["x_sessions_evicted_total"], snap["x_sessions_expired_total"])
	}
	if n := strings.Count(logs.String(), "session evicted: table full"); n != 2 {
		t.Errorf("%d eviction lines logged, want the limiter's burst of 2:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "session idle, ended") || !strings.Contains(logs.String(), "client=gamer") {
		t.Errorf("log lacks the idle end or the client:\n%s", logs.String())
	}
	if got := c.Sessions(); got != 0 {
		t.Errorf("the client holds %d sessions after all five ended, want 0", got)
	}
}
