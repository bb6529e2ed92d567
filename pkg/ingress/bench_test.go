package ingress

import (
	"runtime"
	"sync"
	"testing"

	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/tunnel"
)

// benchBed is an Ingress with the proxy's settings (keepalive only when
// authenticated) and room for sessions open sessions.
func benchBed(b *testing.B, sessions, workers int) *bed {
	maxEntries = 2 * sessions
	b.Cleanup(func() { maxEntries = 0 })
	return newBedWith(b, func(c *Config) {
		c.AuthenticatedKeepAlive, c.MaxSessions, c.Workers = true, 2*sessions, workers
		c.Clients[0].SessionRate = 1e6
	})
}

// openBenchSessions opens n sessions through r, each counting what it is
// delivered into count, and returns their routers' senders (acked: they
// send no hello from here on).
func openBenchSessions(b *testing.B, bed *bed, r *Reader, n int, count *int) []*tunnel.Sender {
	snds := make([]*tunnel.Sender, n)
	pkt := make([]byte, 100)
	now := mono.Now()
	for i := range snds {
		snds[i] = routerSender(b, bed.key, "gamer")
		bed.in.Handle(r, sealData(b, snds[i], pkt), bed.from(), now) // the hello opens it
		ts, ok := bed.prog.table.Peek(snds[i].Session())
		if !ok {
			b.Fatalf("session %d not opened", i)
		}
		ts.count = count
		snds[i].Heard(now)
	}
	return snds
}

// sealRoundRobin seals a 100-byte packet into each of dgs, from the senders
// in turn (as capbench sends them): each is fresh for its session's replay
// window.
func sealRoundRobin(b *testing.B, snds []*tunnel.Sender, dgs [][]byte) {
	pkt := make([]byte, 100)
	now := mono.Now()
	for k := range dgs {
		snd := snds[k%len(snds)]
		snd.Heard(now)
		_, out, err := snd.Seal(pkt, now)
		if err != nil || len(out) != 1 {
			b.Fatalf("seal: %v, %d datagrams", err, len(out))
		}
		dgs[k] = append(dgs[k][:0], out[0]...)
	}
}

// BenchmarkHandleDeliver is the userspace cost of one forwarded packet, no
// socket in the way: a sealed 100-byte RAIC-1 data datagram of one of 1,000
// open sessions (round-robin, as capbench sends them) through Handle, with
// the proxy's settings, to a session whose sink counts. Parse, session
// lookup, replay window, AEAD open, reply path and quality bookkeeping,
// delivery: what raic-proxy does per packet besides its system calls
// (recvmmsg's share and the forward's send).
//
//	go test -run '^$' -bench HandleDeliver -benchmem ./pkg/ingress
func BenchmarkHandleDeliver(b *testing.B) {
	const sessions, chunk = 1000, 1 << 14
	bed := benchBed(b, sessions, 1)
	var delivered int
	snds := openBenchSessions(b, bed, bed.r, sessions, &delivered)
	dgs := make([][]byte, chunk)
	sealRoundRobin(b, snds, dgs)
	delivered = 0
	b.ReportAllocs()
	b.ResetTimer()
	k := 0
	for i := 0; i < b.N; i++ {
		if k == chunk {
			// Sealed in chunks, the timer stopped.
			b.StopTimer()
			sealRoundRobin(b, snds, dgs)
			k = 0
			b.StartTimer()
		}
		bed.in.Handle(bed.r, dgs[k], bed.from(), mono.Now())
		k++
	}
	b.StopTimer()
	if delivered != b.N {
		b.Fatalf("delivered %d of %d", delivered, b.N)
	}
}

// BenchmarkHandleDeliverParallel is BenchmarkHandleDeliver on GOMAXPROCS
// read loops at once, each with its own Reader and 1,000 sessions of its own
// (a worker's, as SO_REUSEPORT spreads routers), all in the one session
// table: what the workers share (the table's shards, counters, the client's
// limits) shows as ns/op not halving from -cpu 1 to -cpu 2 (ns/op: wall
// time per packet, all loops together).
//
//	go test -run '^$' -bench HandleDeliverParallel -cpu 1,2 ./pkg/ingress
func BenchmarkHandleDeliverParallel(b *testing.B) {
	const perWorker = 1000
	workers := runtime.GOMAXPROCS(0)
	bed := benchBed(b, perWorker*workers, workers)
	type loop struct {
		r         *Reader
		snds      []*tunnel.Sender
		dgs       [][]byte
		delivered int
	}
	loops := make([]*loop, workers)
	for w := range loops {
		l := &loop{r: NewWorkerReader(w)}
		l.snds = openBenchSessions(b, bed, l.r, perWorker, &l.delivered)
		loops[w] = l
	}
	// Every datagram is sealed before the clock starts: a loop's share of
	// b.N each, so no loop stops to seal while the others run.
	share := (b.N + workers - 1) / workers
	for _, l := range loops {
		l.dgs = make([][]byte, share)
		sealRoundRobin(b, l.snds, l.dgs)
		l.delivered = 0
	}
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for _, l := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			from := bed.from()
			for _, dg := range l.dgs {
				bed.in.Handle(l.r, dg, from, mono.Now())
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	for _, l := range loops {
		if l.delivered != len(l.dgs) {
			b.Fatalf("a loop delivered %d of %d", l.delivered, len(l.dgs))
		}
	}
}
