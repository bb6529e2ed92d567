package detect

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// fakeResolver answers from a map and counts questions; it never touches
// the network.
type fakeResolver struct {
	mu    sync.Mutex
	names map[string][]string
	asked int
}

func (f *fakeResolver) LookupAddr(_ context.Context, addr string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked++
	if n, ok := f.names[addr]; ok {
		return n, nil
	}
	return nil, errors.New("no such host")
}

func rdnsConfig(t testing.TB) *Config {
	c, err := ParseConfig("rdns.toml", []byte(`
[[rdns]]
name = "valve-sdr"
glob = "*.valve.example"
type = "shooter"
app = "cs2"

[[rdns]]
name = "voice"
regex = '^voice-[0-9]+\.chat\.example\.?$'
type = "voip"
`))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRDNSAsyncCache(t *testing.T) {
	res := &fakeResolver{names: map[string][]string{
		"203.0.113.9":  {"sdr-fra1.valve.example."},
		"203.0.113.10": {"voice-12.chat.example."},
		"203.0.113.11": {"host.other.example."},
	}}
	r := NewRDNS(rdnsConfig(t).RDNS, res, 64, 16)
	a := netip.MustParseAddr("203.0.113.9")
	if _, ok := r.check(a, 0); ok {
		t.Fatal("first check hit: must never wait for DNS")
	}
	if _, ok := r.check(a, 0); ok || len(r.queue) != 1 {
		t.Fatalf("pending address queued again (%d queued)", len(r.queue))
	}
	r.check(netip.MustParseAddr("203.0.113.10"), 0)
	r.check(netip.MustParseAddr("203.0.113.11"), 0)
	r.check(netip.MustParseAddr("203.0.113.12"), 0) // resolver error
	for len(r.queue) > 0 {
		r.resolve(context.Background(), <-r.queue)
	}
	now := r.now()
	if d, ok := r.check(a, now); !ok || d.Rule != "rdns:valve-sdr" || d.App != "cs2" || d.AppType != "shooter" {
		t.Fatalf("after resolve: %+v %v", d, ok)
	}
	if d, ok := r.check(netip.MustParseAddr("203.0.113.10"), now); !ok || d.Rule != "rdns:voice" {
		t.Fatalf("regex pattern: %+v %v", d, ok)
	}
	for _, s := range []string{"203.0.113.11", "203.0.113.12"} {
		if _, ok := r.check(netip.MustParseAddr(s), now); ok {
			t.Fatalf("%s matched", s)
		}
	}
	if len(r.queue) != 0 || res.asked != 4 {
		t.Fatalf("negative answers not cached: %d queued, %d asked", len(r.queue), res.asked)
	}
	// Negative entries expire and are asked again.
	if r.check(netip.MustParseAddr("203.0.113.11"), now+int64(11*time.Minute)); len(r.queue) != 1 {
		t.Fatal("expired negative entry not re-queued")
	}
}

func TestRDNSQueueFullDropsAndCounts(t *testing.T) {
	r := NewRDNS(rdnsConfig(t).RDNS, &fakeResolver{}, 64, 2)
	for i := 0; i < 5; i++ {
		r.check(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 0)
	}
	if d, _ := r.Stats(); d != 3 {
		t.Fatalf("dropped %d, want 3", d)
	}
}

func TestRDNSRunServesQueue(t *testing.T) {
	res := &fakeResolver{names: map[string][]string{"192.0.2.1": {"a.valve.example"}}}
	r := NewRDNS(rdnsConfig(t).RDNS, res, 8, 8)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	a := netip.MustParseAddr("192.0.2.1")
	r.check(a, 0)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, ok := r.check(a, r.now()); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run did not resolve the queued address")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
}
