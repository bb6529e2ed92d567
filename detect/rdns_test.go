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

// TestClassifierRDNSInFlightThenLearned: the first flow to an address whose
// PTR name matches is not held for DNS: it is not LC while the lookup runs,
// then LC but not proxied (in flight), and its destination is learned, so
// the next session to it is proxied from its first packet; a flow to another
// port of that address matches the cached name at once.
func TestClassifierRDNSInFlightThenLearned(t *testing.T) {
	res := &fakeResolver{names: map[string][]string{"198.18.41.7": {"sdr-fra1.valve.example."}}}
	r := NewRDNS(rdnsConfig(t).RDNS, res, 64, 16)
	c, err := NewClassifier(Options{Config: rdnsConfig(t), RDNS: r})
	if err != nil {
		t.Fatal(err)
	}
	dst := netip.MustParseAddrPort("198.18.41.7:45000")
	f := FiveTuple{Proto: ProtoUDP, Src: netip.MustParseAddrPort("198.18.1.2:50000"), Dst: dst}
	now := r.now()
	for i := 0; i < 3; i++ {
		if d := c.Classify(f, 0, 1200, now+int64(i)); d.LC {
			t.Fatalf("LC before the lookup answered: %+v", d)
		}
	}
	if len(r.queue) != 1 {
		t.Fatalf("%d lookups queued, want 1", len(r.queue))
	}
	r.resolve(context.Background(), <-r.queue)
	d := c.Classify(f, 0, 1200, now+10)
	if !d.LC || d.Proxy || d.Rule != "rdns:valve-sdr" || d.App != "cs2" {
		t.Fatalf("after the answer: %+v, want LC, in flight (not proxied), rdns:valve-sdr", d)
	}
	if d2 := c.Classify(f, 0, 1200, now+11); d2.Rule != d.Rule || d2.Proxy || !d2.LC {
		t.Fatalf("verdict not kept: %+v", d2)
	}
	if !c.Learned().Contains(ProtoUDP, dst, now+12) {
		t.Fatal("destination not learned")
	}
	next := FiveTuple{Proto: ProtoUDP, Src: netip.MustParseAddrPort("198.18.1.2:50001"), Dst: dst}
	if d := c.Classify(next, 0, 100, now+13); !d.LC || !d.Proxy || d.Rule != "learned" {
		t.Fatalf("next session: %+v, want learned and proxied", d)
	}
	other := FiveTuple{Proto: ProtoUDP, Src: f.Src, Dst: netip.MustParseAddrPort("198.18.41.7:45001")}
	if d := c.Classify(other, 0, 100, now+14); !d.LC || !d.Proxy || d.Rule != "rdns:valve-sdr" {
		t.Fatalf("new port of a known name: %+v, want rdns and proxied", d)
	}
	// A name that matches nothing: the flow stops waiting and stays not LC.
	g := FiveTuple{Proto: ProtoUDP, Src: f.Src, Dst: netip.MustParseAddrPort("198.18.41.8:45000")}
	c.Classify(g, 0, 100, now+15)
	r.resolve(context.Background(), <-r.queue)
	if d := c.Classify(g, 0, 100, now+16); d.LC {
		t.Fatalf("unmatched name LC: %+v", d)
	}
	if n := r.Counters(); n.Lookups != 2 || n.Matched != 1 || n.Failed != 1 {
		t.Fatalf("counters %+v, want 2 lookups, 1 matched, 1 failed", n)
	}
}

// blockingResolver never answers before its context ends.
type blockingResolver struct{}

func (blockingResolver) LookupAddr(ctx context.Context, _ string) ([]string, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestRDNSTimeoutAndBoundedCache: a lookup that takes too long fails at the
// timeout and is cached as a miss; the cache holds at most its capacity,
// evicting the least recently used address and counting it.
func TestRDNSTimeoutAndBoundedCache(t *testing.T) {
	r := NewRDNS(rdnsConfig(t).RDNS, blockingResolver{}, 4, 16)
	r.SetTimeout(20 * time.Millisecond)
	a := netip.MustParseAddr("198.18.41.9")
	r.check(a, 0)
	start := time.Now()
	r.resolve(context.Background(), <-r.queue)
	if el := time.Since(start); el > time.Second {
		t.Fatalf("lookup took %v with a 20 ms timeout", el)
	}
	if _, st := r.lookup(a, r.now()); st != rdnsMiss || len(r.queue) != 0 {
		t.Fatalf("timed-out lookup: state %d, %d queued; want a cached miss", st, len(r.queue))
	}
	for i := 0; i < 10; i++ {
		r.check(netip.AddrFrom4([4]byte{198, 18, 42, byte(i)}), 0)
	}
	n := r.Counters()
	if n.Failed != 1 || n.Evicted != 7 || r.cache.len() != 4 {
		t.Fatalf("counters %+v, cache %d: want 1 failed, 7 evicted, 4 cached", n, r.cache.len())
	}
}
