package ingress

import (
	"testing"

	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/tunnel"
)

// BenchmarkHandleDeliver is the userspace cost of one forwarded packet, no
// socket in the way: a sealed 100-byte RAIC-1 data datagram of one of 1,000
// open sessions (round-robin, as capbench sends them) through Handle, with
// the proxy's settings (keepalive only when authenticated), to a session
// whose sink counts. Parse, session lookup, replay window, AEAD open, reply
// path and quality bookkeeping, delivery: what raic-proxy does per packet
// besides its two system calls (recvmmsg's share and the forward's write).
//
//	go test -run '^$' -bench HandleDeliver -benchmem ./pkg/ingress
func BenchmarkHandleDeliver(b *testing.B) {
	const sessions, chunk = 1000, 1 << 14
	maxEntries = 2 * sessions
	defer func() { maxEntries = 0 }()
	bed := newBedWith(b, func(c *Config) {
		c.AuthenticatedKeepAlive, c.MaxSessions = true, 2*sessions
		c.Clients[0].SessionRate = 1e6
	})
	from := bed.from()
	var delivered int
	snds := make([]*tunnel.Sender, sessions)
	pkt := make([]byte, 100)
	now := mono.Now()
	for i := range snds {
		snds[i] = routerSender(b, bed.key, "gamer")
		bed.in.Handle(bed.r, sealData(b, snds[i], pkt), from, now) // the hello opens it
		ts, ok := bed.prog.table.Peek(snds[i].Session())
		if !ok {
			b.Fatalf("session %d not opened", i)
		}
		ts.count = &delivered
		snds[i].Heard(now) // acked: no hello from here on
	}
	// Datagrams are sealed in chunks, the timer stopped: each is fresh for
	// its session's replay window.
	dgs := make([][]byte, chunk)
	seal := func() {
		now := mono.Now()
		for k := range dgs {
			snd := snds[k%sessions]
			snd.Heard(now)
			_, out, err := snd.Seal(pkt, now)
			if err != nil || len(out) != 1 {
				b.Fatalf("seal: %v, %d datagrams", err, len(out))
			}
			dgs[k] = append(dgs[k][:0], out[0]...)
		}
	}
	seal()
	delivered = 0
	b.ReportAllocs()
	b.ResetTimer()
	k := 0
	for i := 0; i < b.N; i++ {
		if k == chunk {
			b.StopTimer()
			seal()
			k = 0
			b.StartTimer()
		}
		bed.in.Handle(bed.r, dgs[k], from, mono.Now())
		k++
	}
	b.StopTimer()
	if delivered != b.N {
		b.Fatalf("delivered %d of %d", delivered, b.N)
	}
}
