package fleet

import (
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/clients"
	"github.com/raicnet/raic/pkg/logging"
	"github.com/raicnet/raic/pkg/wire"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// One server when metrics and health share an address, two otherwise;
// /readyz fails while draining, both fail while stopping.
func TestHealthEndpoints(t *testing.T) {
	var stopping, draining atomic.Bool
	st := State{Stopping: stopping.Load, Draining: draining.Load, Sessions: func() int { return 3 }}
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "m 1\n") })
	h, err := Listen("127.0.0.1:0", metrics, "127.0.0.2:0", st)
	if err != nil {
		t.Fatal(err)
	}
	h.Serve()
	defer h.Close()
	if len(h.Addrs) != 2 {
		t.Fatalf("%d listeners, want 2", len(h.Addrs))
	}
	m, hl := "http://"+h.Addrs[0], "http://"+h.Addrs[1]
	if code, body := get(t, m+"/metrics"); code != 200 || body != "m 1\n" {
		t.Fatalf("/metrics: %d %q", code, body)
	}
	if code, body := get(t, hl+"/readyz"); code != 200 || !strings.Contains(body, "3 sessions") {
		t.Fatalf("/readyz: %d %q", code, body)
	}
	draining.Store(true)
	if code, _ := get(t, hl+"/readyz"); code != 503 {
		t.Fatalf("/readyz while draining: %d", code)
	}
	if code, _ := get(t, hl+"/healthz"); code != 200 {
		t.Fatalf("/healthz while draining: %d", code)
	}
	stopping.Store(true)
	if code, _ := get(t, hl+"/healthz"); code != 503 {
		t.Fatalf("/healthz while stopping: %d", code)
	}

	stopping.Store(false)
	one, err := Listen("127.0.0.1:0", metrics, "127.0.0.1:0", st)
	if err != nil {
		t.Fatal(err)
	}
	one.Serve()
	defer one.Close()
	if len(one.Addrs) != 1 {
		t.Fatalf("a shared address: %d listeners", len(one.Addrs))
	}
	if code, _ := get(t, "http://"+one.Addrs[0]+"/healthz"); code != 200 {
		t.Fatalf("/healthz beside /metrics: %d", code)
	}
	var none *HTTP
	none.Serve()
	none.Close()
}

// A roster built again keeps the table of tokens used; without a key it has
// no opener.
func TestRosterKeepsSeen(t *testing.T) {
	c := Defaults()
	if r, err := c.Roster(nil, nil); err != nil || r.Tokens != nil || r.Seen != nil {
		t.Fatalf("no key: %+v, %v", r, err)
	}
	k := wire.Key{1}
	c.key = &k
	r1, err := c.Roster([]clients.Config{{ID: "a", Key: k.String(), Allow: []string{"198.18.41.2"}, RatePPS: 10, Burst: 1}}, nil)
	if err != nil || r1.Tokens == nil || r1.Seen == nil || r1.TokenRatePPS != c.TokenRatePPS {
		t.Fatalf("with a key: %+v, %v", r1, err)
	}
	r2, err := c.Roster(nil, r1.Seen)
	if err != nil || r2.Seen != r1.Seen {
		t.Fatalf("reload lost the table of tokens used")
	}
}

// Wait returns as soon as no session is left, or at the limit.
func TestWait(t *testing.T) {
	log, _ := logging.New(io.Discard, "t", "error")
	var n atomic.Int64
	n.Store(2)
	start := time.Now()
	Wait(log, 5*time.Second, func() int { return int(n.Load()) }, func() { n.Add(-1) })
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("waited %v with no session left", el)
	}
	start = time.Now()
	Wait(log, 200*time.Millisecond, func() int { return 1 }, func() {})
	if el := time.Since(start); el < 200*time.Millisecond || el > 2*time.Second {
		t.Fatalf("waited %v for a 200 ms limit", el)
	}
}
