package main

import (
	"testing"

	"github.com/raicnet/raic/pkg/udp"
)

// TestSessionOfKeepsSessionsOnTheirSource: every pre-sealed datagram of a
// batch belongs to a session of the batch's source, so a session is heard
// from one source only, and every session gets datagrams in turn.
func TestSessionOfKeepsSessionsOnTheirSource(t *testing.T) {
	for _, c := range []struct{ sessions, sources int }{{1000, 1}, {1000, 8}, {100000, 8}, {1001, 3}, {5, 8}} {
		g := &generator{sess: make([]*genSession, c.sessions), conns: make([]*udp.Conn, c.sources)}
		seen := make([]int, c.sessions)
		n := 4 * c.sessions
		if n < 64*c.sources*2 {
			n = 64 * c.sources * 2
		}
		for k := 0; k < n; k++ {
			s := g.sessionOf(k)
			if s < 0 || s >= c.sessions {
				t.Fatalf("%+v: datagram %d to session %d", c, k, s)
			}
			if src := (k / udp.MaxBatch) % c.sources; s%c.sources != src && c.sessions >= c.sources {
				t.Fatalf("%+v: datagram %d (source %d) to session %d of source %d", c, k, src, s, s%c.sources)
			}
			seen[s]++
		}
		if c.sessions < c.sources {
			continue // some sources have no session of their own
		}
		for s, got := range seen {
			if got == 0 {
				t.Fatalf("%+v: session %d got no datagram in %d", c, s, n)
			}
		}
	}
}

// TestSimSessionIDsSpreadOverWorkers: the proxy steers a session to worker
// (low 32 bits of its ID) mod workers, so the simulated sessions must fall
// on every worker about evenly, as random router IDs do (IDs forced odd once
// put them all on one worker of two).
func TestSimSessionIDsSpreadOverWorkers(t *testing.T) {
	for _, base := range []uint64{0, 1, 12345678901234567} {
		for _, workers := range []int{2, 3, 4} {
			per := make([]int, workers)
			for i := 0; i < 1000; i++ {
				id := simSessionID(base, i)
				if id == 0 {
					t.Fatalf("base %d: session %d has ID 0", base, i)
				}
				per[uint32(id)%uint32(workers)]++
			}
			for w, n := range per {
				if want := 1000 / workers; n < want*9/10 || n > want*11/10 {
					t.Errorf("base %d, %d workers: worker %d gets %d of 1,000 sessions, want about %d", base, workers, w, n, want)
				}
			}
		}
	}
}
