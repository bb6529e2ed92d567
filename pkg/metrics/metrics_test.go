package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"unsafe"
)

func TestExposition(t *testing.T) {
	r := NewRegistry()
	auth := r.Counter(`proxy_packets_dropped_total{reason="auth"}`, "Datagrams dropped, by reason.")
	replay := r.Counter(`proxy_packets_dropped_total{reason="replay"}`, "ignored: family help comes from the first series")
	sessions := r.Gauge("proxy_sessions", "Open sessions.\nOne per client flow.")
	rx := r.Counter("proxy_packets_received_total", `Datagrams read from uplinks (C:\ path).`)
	auth.Add(3)
	replay.Inc()
	replay.Inc()
	sessions.Set(10)
	sessions.Add(-3)
	rx.Add(1 << 40)

	var b strings.Builder
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	want := `# HELP proxy_packets_dropped_total Datagrams dropped, by reason.
# TYPE proxy_packets_dropped_total counter
proxy_packets_dropped_total{reason="auth"} 3
proxy_packets_dropped_total{reason="replay"} 2
# HELP proxy_packets_received_total Datagrams read from uplinks (C:\\ path).
# TYPE proxy_packets_received_total counter
proxy_packets_received_total 1099511627776
# HELP proxy_sessions Open sessions.\nOne per client flow.
# TYPE proxy_sessions gauge
proxy_sessions 7
`
	if got := b.String(); got != want {
		t.Fatalf("exposition:\n%s\nwant:\n%s", got, want)
	}
	if err := r.Err(); err != nil {
		t.Fatalf("Err = %v", err)
	}
}

func TestSameNameSameCounter(t *testing.T) {
	r := NewRegistry()
	a := r.Counter(`x_total{k="v"}`, "h")
	b := r.Counter(`x_total{k="v"}`, "h")
	if a != b {
		t.Fatal("registering a name twice gave two counters")
	}
	a.Inc()
	if b.Load() != 1 {
		t.Fatal("shared counter not shared")
	}
}

func TestBadRegistrationsAreReportedNotExposed(t *testing.T) {
	r := NewRegistry()
	r.Counter("ok_total", "h")
	bad := []string{"", "1abc", "a-b", `a{`, `a{x}`, `a{x="y}`, `a{x="y"`, `a{x="y",x="z"}`, `a{x="y" z="w"}`, `a{9x="y"}`, `a{x="\q"}`, "a b"}
	for _, n := range bad {
		c := r.Counter(n, "h")
		c.Inc() // still usable
	}
	r.Gauge("ok_total", "h").Set(1)        // same series, other type
	r.Gauge(`ok_total{a="b"}`, "h").Set(1) // same family, other type
	if _, err := parseName(`a{x="y\"z",b="\\"}`); err != nil {
		t.Fatalf("escaped label value refused: %v", err)
	}
	err := r.Err()
	if err == nil {
		t.Fatal("no error for bad names")
	}
	if n := strings.Count(err.Error(), "\n") + 1; n != len(bad)+2 {
		t.Fatalf("%d errors, want %d:\n%v", n, len(bad)+2, err)
	}
	var b strings.Builder
	r.WriteText(&b)
	if got := b.String(); got != "# HELP ok_total h\n# TYPE ok_total counter\nok_total 0\n" {
		t.Fatalf("bad names leaked into the exposition:\n%s", got)
	}
}

func TestSnapshot(t *testing.T) {
	r := NewRegistry()
	r.Counter(`c_total{a="1"}`, "").Add(5)
	r.Gauge("g", "").Set(-2)
	s := r.Snapshot()
	if len(s) != 2 || s[`c_total{a="1"}`] != 5 || s["g"] != -2 {
		t.Fatalf("Snapshot = %v", s)
	}
}

func TestHandler(t *testing.T) {
	r := NewRegistry()
	r.Counter("hits_total", "Hits.").Add(2)
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Fatalf("Content-Type = %q", ct)
	}
	if !strings.Contains(string(body), "\nhits_total 2\n") {
		t.Fatalf("body:\n%s", body)
	}
	resp, err = http.Post(srv.URL, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST status %d", resp.StatusCode)
	}
}

func TestConcurrentUpdatesAndScrapes(t *testing.T) {
	r := NewRegistry()
	const workers, per = 4, 10000
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := r.Counter(`work_total{kind="a"}`, "h")
			g := r.Gauge("inflight", "h")
			for i := 0; i < per; i++ {
				c.Inc()
				g.Add(1)
				g.Add(-1)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 50; i++ {
			r.WriteText(io.Discard)
			r.Snapshot()
			r.Counter("late_total", "registered while others count").Inc()
		}
	}()
	wg.Wait()
	s := r.Snapshot()
	if s[`work_total{kind="a"}`] != workers*per || s["inflight"] != 0 || s["late_total"] != 50 {
		t.Fatalf("lost updates: %v", s)
	}
}

func TestPadding(t *testing.T) {
	if unsafe.Sizeof(Counter{}) != cacheLine || unsafe.Sizeof(Gauge{}) != cacheLine {
		t.Fatalf("Counter is %d bytes, Gauge %d; want %d", unsafe.Sizeof(Counter{}), unsafe.Sizeof(Gauge{}), cacheLine)
	}
}

func TestZeroAllocs(t *testing.T) {
	r := NewRegistry()
	c := r.Counter("c_total", "")
	g := r.Gauge("g", "")
	if n := testing.AllocsPerRun(1000, func() { c.Inc(); c.Add(2); g.Add(1); g.Set(3) }); n != 0 {
		t.Fatalf("%v allocations per update, want 0", n)
	}
}

func BenchmarkCounterInc(b *testing.B) {
	var c Counter
	b.ReportAllocs()
	for b.Loop() {
		c.Inc()
	}
}

func BenchmarkCounterIncParallel(b *testing.B) {
	var c Counter
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Inc()
		}
	})
}

func TestShardedCounterSums(t *testing.T) {
	r := NewRegistry()
	c := r.ShardedCounter("x_total", "x", 2)
	c.Inc()
	c.Shard(1).Add(2)
	c.Shard(2).Add(3)
	c.Shard(3).Inc() // modulo the shards: shard 1
	c.Shard(0).Inc() // the counter itself
	if got := c.Load(); got != 8 {
		t.Fatalf("Load = %d, want 8", got)
	}
	if got := c.Shard(1).Load(); got != 3 {
		t.Fatalf("shard 1 = %d, want 3", got)
	}
	if got := r.Snapshot()["x_total"]; got != 8 {
		t.Fatalf("exposed %v, want 8", got)
	}
	var plain Counter
	if plain.Shard(1) != &plain {
		t.Fatal("a counter without shards is its own shard")
	}
	if unsafe.Sizeof(plain) != cacheLine {
		t.Fatalf("Counter is %d bytes, want one padded line of %d", unsafe.Sizeof(plain), cacheLine)
	}
}
