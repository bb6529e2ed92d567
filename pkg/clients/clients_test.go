package clients

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/wire"
)

type file struct {
	Clients []Config `toml:"client"`
}

func check(t *testing.T, text string) ([]Config, error) {
	t.Helper()
	var f file
	meta, err := config.Decode("p.toml", text, &f)
	if err != nil {
		t.Fatal(err)
	}
	return f.Clients, Check(meta, f.Clients, "the proxy")
}

func TestCheck(t *testing.T) {
	key := wire.Key{1}.String()
	good := "[[client]]\nid = \"a\"\nkey = \"" + key + "\"\nallow = [\"198.18.41.0/24\"]\n"
	cs, err := check(t, good)
	if err != nil {
		t.Fatal(err)
	}
	if cs[0].RatePPS != DefaultRatePPS || cs[0].Burst != DefaultRatePPS/10+64 {
		t.Fatalf("defaults not filled: %+v", cs[0])
	}
	bad := map[string]string{
		"":                                      "p.toml: client: no [[client]] configured: the proxy would serve nobody",
		good + good:                             "p.toml:6: client.1.id: client \"a\" is configured twice",
		strings.Replace(good, key, "x", 1):      "p.toml:3: client.0.key:",
		strings.Replace(good, "41.0/24", "", 1): "p.toml:4: client.0.allow:",
		good + "rate_pps = -1\n":                "p.toml:5: client.0.rate_pps: -1 is not above 0",
		good + "rate_pps = nan\n":               "p.toml:5: client.0.rate_pps: NaN is not above 0",
		good + "rate_pps = inf\n":               "p.toml:5: client.0.rate_pps: +Inf is not above 0",
		good + "burst = 0\n":                    "p.toml:5: client.0.burst: 0 is not within 1",
	}
	for text, want := range bad {
		if _, err := check(t, text); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("config %q: error %v, want it to start with %q", text, err, want)
		}
	}
}

// TestCheckReportsEveryClient: the errors of every client come back at once.
func TestCheckReportsEveryClient(t *testing.T) {
	key := wire.Key{1}.String()
	text := "[[client]]\nid = \"a\"\nkey = \"x\"\nallow = []\n[[client]]\nid = \"a\"\nkey = \"" + key + "\"\nallow = [\"198.18.41.0/24\"]\nrate_pps = -5\n"
	_, err := check(t, text)
	want := "p.toml:3: client.0.key: "
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("error %v, want it to start with %q", err, want)
	}
	for _, w := range []string{"p.toml:4: client.0.allow:", "p.toml:6: client.1.id:", "p.toml:9: client.1.rate_pps:"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}

func TestTakeLimitsRate(t *testing.T) {
	tb, err := Table([]Config{{ID: "a", Key: wire.Key{1}.String(), Allow: []string{"198.18.0.0/15"}, RatePPS: 100, Burst: 5}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	c := tb["a"]
	n := 0
	for i := 0; i < 20; i++ {
		if c.Take(0) {
			n++
		}
	}
	if n != 5 {
		t.Fatalf("%d taken at once, want the burst of 5", n)
	}
	// 100 per second: 50 ms refills 5.
	now := int64(50 * time.Millisecond)
	n = 0
	for i := 0; i < 20; i++ {
		if c.Take(now) {
			n++
		}
	}
	if n != 5 {
		t.Fatalf("%d taken after 50 ms at 100/s, want 5", n)
	}
}

// The lock-free bucket Take uses answers as the locked token bucket does, on
// a long irregular stream of datagrams, and lets exactly its share through
// when many goroutines take at once.
func TestTakeMatchesTokenBucket(t *testing.T) {
	const rate, burst = 1000, 8
	free := newClient("a", wire.Key{1}, nil, rate, burst, 0, 1, 0)
	locked := newClient("b", wire.Key{1}, nil, rate, burst, 0, 1, 0)
	locked.interval = 0 // the locked bucket
	now := int64(1e9)
	x := uint64(12345)
	for i := 0; i < 200000; i++ {
		x = x*6364136223846793005 + 1442695040888963407
		now += int64(x>>33) % 2_000_003 // 0 to 2 ms: above and below the rate
		if a, b := free.Take(now), locked.Take(now); a != b {
			t.Fatalf("datagram %d at %d ns: lock-free bucket says %v, locked one %v", i, now, a, b)
		}
	}
	c := newClient("c", wire.Key{1}, nil, rate, burst, 0, 1, 0)
	var wg sync.WaitGroup
	var got atomic.Int64
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				if c.Take(5e6) { // a full bucket: burst
					got.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if got.Load() != burst {
		t.Fatalf("%d taken by 8 goroutines at once, want %d", got.Load(), burst)
	}
}
