package proxy

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/wire"
)

func durationOf(d time.Duration) config.Duration { return config.Duration{Duration: d} }

// TestOverloadLatency drives the load meter with batch handling times: quick
// batches are fine, slow ones raise the flag, and it clears only once the
// smoothed time is well below the threshold again (hysteresis), or when the
// proxy goes idle.
func TestOverloadLatency(t *testing.T) {
	l := newLoadMeter(&Config{OverloadLatency: durationOf(2 * time.Millisecond), OverloadCPU: 1}, metrics.NewRegistry())
	now := mono.Now()
	batch := func(d time.Duration, n int) {
		for i := 0; i < n; i++ {
			now += int64(time.Millisecond)
			l.observeBatch(now, now+int64(d))
		}
	}
	batch(100*time.Microsecond, 50)
	if l.overloaded(now) {
		t.Fatal("overloaded at 0.1 ms per batch")
	}
	batch(10*time.Millisecond, 20)
	if !l.overloaded(now) {
		t.Fatalf("not overloaded at 10 ms per batch (smoothed %v)", time.Duration(l.ewma.Load()))
	}
	// Just under the threshold but above the release share: still overloaded.
	batch(1900*time.Microsecond, 60)
	if !l.overloaded(now) {
		t.Fatalf("flag cleared at %v, above %v of the threshold", time.Duration(l.ewma.Load()), leaveShare)
	}
	batch(100*time.Microsecond, 60)
	if l.overloaded(now) {
		t.Fatalf("still overloaded at %v per batch", time.Duration(l.ewma.Load()))
	}
	batch(10*time.Millisecond, 20)
	if !l.overloaded(now) {
		t.Fatal("not overloaded again")
	}
	if l.overloaded(now + int64(2*idleAfter)) {
		t.Fatal("an idle proxy reports overload")
	}
}

// TestOverloadCPU burns CPU between two samples with a threshold the burn must
// pass.
func TestOverloadCPU(t *testing.T) {
	l := newLoadMeter(&Config{OverloadLatency: durationOf(time.Hour), OverloadCPU: 0.01}, metrics.NewRegistry())
	start := mono.Now()
	if l.overloaded(start) {
		t.Fatal("overloaded on the first sample, which only sets the baseline")
	}
	x := uint64(1)
	for mono.Since(start) < 200*time.Millisecond {
		x = x*6364136223846793005 + 1442695040888963407
	}
	_ = x
	// Pretend a whole sample period passed: 200 ms of CPU in 1 s of wall time is
	// at least 10% of up to 20 CPUs.
	if !l.overloaded(start + int64(cpuSampleEvery)) {
		t.Fatalf("not overloaded after burning CPU (share %.3f, threshold %.2f)", l.cpuShare, l.cpu)
	}
}

// TestPongCarriesOverload checks the flag reaches clients: a proxy whose
// latency threshold any batch exceeds answers keepalives with Overloaded set, a
// default one without.
func TestPongCarriesOverload(t *testing.T) {
	for _, tc := range []struct {
		extra string
		want  bool
	}{{"", false}, {`overload_latency = "1ns"`, true}} {
		server := newPeer(t)
		p := startTopProxy(t, server.addr().String(), tc.extra)
		r := newFakeRouter(t, goodKey, netip.AddrPort{})
		var got wire.Pong
		for seq := uint32(1); seq <= 3; seq++ { // the first batches teach the meter
			ping := wire.Ping{Seq: seq, SentAt: mono.Now()}
			var pb [wire.PingLen]byte
			if err := wire.ParsePong(r.control(t, p.Addr(), wire.TypePing, ping.Put(pb[:]), wire.TypePong), &got); err != nil {
				t.Fatal(err)
			}
			if got.Ping != ping {
				t.Fatalf("pong echoes %+v, want %+v", got.Ping, ping)
			}
		}
		if got.Overloaded != tc.want {
			t.Errorf("config %q: pong Overloaded = %v, want %v", tc.extra, got.Overloaded, tc.want)
		}
		// A probe reply carries the same flag.
		if rep := r.probe(t, p.Addr(), server.addr(), 9); rep.Overloaded != tc.want {
			t.Errorf("config %q: probe reply Overloaded = %v, want %v", tc.extra, rep.Overloaded, tc.want)
		}
	}
}

// startTopProxy is startTestProxy with extra at the top level of the config.
func startTopProxy(t testing.TB, allow, extra string) *Server {
	t.Helper()
	cfg, err := ParseConfig("proxy.toml", `listen = "127.0.0.1:0"
`+extra+`
[[client]]
id = "gamer"
key = "`+goodKey.String()+`"
allow = ["`+allow+`"]
`)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}
