package quality

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/wire"
)

const ms = int64(time.Millisecond)

// take runs n packets through a tracker: deliver(pid, shard) says whether the
// datagram of shard i of packet pid arrives on path p, and at what delay.
func run(t *testing.T, n int, shards int, onPath func(i int) int, arrives func(pid uint64, i int) (bool, int64)) [MaxPaths]Report[int] {
	t.Helper()
	var tr Tracker[int]
	now := int64(1)
	for pid := uint64(1); pid <= uint64(n); pid++ {
		now += 10 * ms
		for i := 0; i < shards; i++ {
			d := wire.Desc{Index: uint8(i), Count: uint8(shards), K: 1, Frag: 0x80}
			if shards > 1 {
				d.K = 2
			}
			if ok, delay := arrives(pid, i); ok {
				tr.Note(onPath(i), pid, d, now+delay)
			}
		}
	}
	// Push everything out of the window with packets that arrive everywhere.
	for pid := uint64(n + 1); pid <= uint64(n+Window); pid++ {
		now += 10 * ms
		for i := 0; i < shards; i++ {
			tr.Note(onPath(i), pid, wire.Desc{Index: uint8(i), Count: uint8(shards), K: 2, Frag: 0x80}, now)
		}
	}
	var out [MaxPaths]Report[int]
	if got := tr.Take(now, time.Second, &out); got != 2 {
		t.Fatalf("%d reports, want 2", got)
	}
	return out
}

func TestCopiesLossOnOnePath(t *testing.T) {
	// Copies on paths 0 and 1 (path = shard index here, one shard each and
	// both with Index 0: two copies); path 1 loses every tenth and is 5 ms slower.
	var tr Tracker[int]
	now := int64(1)
	d := wire.Desc{Index: 0, Count: 1, K: 1, Frag: 0x80}
	for pid := uint64(1); pid <= 1000+Window; pid++ {
		now += 10 * ms
		tr.Note(0, pid, d, now)
		if pid%10 != 0 || pid > 1000 {
			tr.Note(1, pid, d, now+5*ms)
		}
		if pid%97 == 0 {
			tr.Note(1, pid-60, d, now) // late: 600 ms after its first copy
		}
	}
	var out [MaxPaths]Report[int]
	if n := tr.Take(now, time.Second, &out); n != 2 {
		t.Fatalf("%d reports", n)
	}
	a, b := out[0].Q, out[1].Q
	if out[0].Key != 0 {
		a, b = b, a
	}
	if a.Lost != 0 || a.Late != 0 || a.LagMeanUs != 0 {
		t.Fatalf("clean path: %+v", a)
	}
	if b.Lost < 90 || b.Lost > 100 || b.Late < 10 || b.LagMeanUs < 4900 || b.LagMeanUs > 6000 { // the late copies lag 600 ms
		t.Fatalf("lossy path: %+v (want ~100 lost of 1000, ~11 late, lag ~5 ms)", b)
	}
	// Nothing carried over: the next interval starts from zero.
	if n := tr.Take(now, time.Second, &out); n != 0 {
		t.Fatalf("%d reports after a reset", n)
	}
}

func TestCodedShardsSpread(t *testing.T) {
	// rs:2+2, shards 0,2 on path 0 and 1,3 on path 1; path 1 loses shard 3 of
	// every fifth packet.
	out := run(t, 1000, 4, func(i int) int { return i % 2 },
		func(pid uint64, i int) (bool, int64) { return !(i == 3 && pid%5 == 0), 0 })
	for _, r := range out[:2] {
		want := uint32(0)
		if r.Key == 1 {
			want = 200
		}
		if r.Q.Lost != want {
			t.Fatalf("path %d: %+v, want %d lost", r.Key, r.Q, want)
		}
	}
}

func TestNoteAllocatesNothing(t *testing.T) {
	var tr Tracker[int]
	pid := uint64(0)
	d := wire.Desc{Count: 1, K: 1, Frag: 0x80}
	var out [MaxPaths]Report[int]
	allocs := testing.AllocsPerRun(1000, func() {
		pid++
		tr.Note(int(pid%2), pid, d, int64(pid)*ms)
		if tr.Due(int64(pid)*ms, time.Second) {
			tr.Take(int64(pid)*ms, time.Second, &out)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per datagram", allocs)
	}
}

// A change of scheme (copies to rs:2+3 and back) must not count the other
// scheme's shards as lost on a clean path.
func TestSchemeChangeIsNotLoss(t *testing.T) {
	var tr Tracker[int]
	now := int64(1)
	var out [MaxPaths]Report[int]
	for pid := uint64(1); pid <= 3000; pid++ {
		now += 5 * ms
		coded := pid > 1000 && pid <= 2000
		if !coded {
			d := wire.Desc{Count: 1, K: 1, Frag: 0x80}
			tr.Note(0, pid, d, now)
			tr.Note(1, pid, d, now)
		} else {
			for i := 0; i < 5; i++ {
				tr.Note(i%2, pid, wire.Desc{Index: uint8(i), Count: 5, K: 2, Frag: 0x80}, now)
			}
		}
		if pid%200 == 0 {
			for _, r := range out[:tr.Take(now, time.Second, &out)] {
				if r.Q.Lost != 0 {
					t.Fatalf("packet %d: path %d reports %+v", pid, r.Key, r.Q)
				}
			}
		}
	}
}

// trace is a random run of datagrams: what the tracker and refTracker are fed.
// Paths 0..5 (so some take another's place), packets mostly in order with
// reordering, gaps and stragglers, descriptors of copies, X-fragments and
// codes, and now and then another scheme. The first simple datagrams keep to
// one path of unfragmented copies, each packet once.
func trace(rng *rand.Rand, n, simple int, note func(k int, pid uint64, d wire.Desc, now int64), take func(now int64)) {
	now := int64(1)
	next := uint64(1)
	scheme := 0
	for op := 0; op < n; op++ {
		now += rng.Int64N(20 * ms)
		if rng.IntN(50) == 0 {
			take(now)
		}
		if op < simple {
			pid := next
			next++
			if rng.IntN(10) == 0 {
				next += uint64(rng.IntN(80)) // a gap
			}
			note(0, pid, wire.Desc{Count: 1, K: 1, Frag: 0x80}, now)
			continue
		}
		if op == simple && simple > 0 {
			scheme = 1
		} else if rng.IntN(300) == 0 {
			scheme = rng.IntN(3)
		}
		pid := next
		switch r := rng.IntN(20); {
		case r < 12:
			next++
		case r < 16: // behind: another path's copy or a reordered one
			pid = next - min(next-1, uint64(rng.IntN(10)))
		case r < 18: // a straggler, maybe out of the window
			pid = next - min(next-1, uint64(rng.IntN(3*Window)))
		default: // a jump
			next += uint64(rng.IntN(2 * Window))
			pid = next
		}
		var d wire.Desc
		switch scheme {
		case 0: // copies, now and then X-fragmented
			d = wire.Desc{Count: 1, K: 1, Frag: 0x80}
			if rng.IntN(4) == 0 {
				d.Frag = uint8(rng.IntN(3))
				if rng.IntN(2) == 0 {
					d.Frag |= 0x80
				}
			}
		case 1: // rs:2+1
			d = wire.Desc{Index: uint8(rng.IntN(3)), Count: 3, K: 2, Frag: 0x80}
		case 2: // rs:4+2, fragmented now and then
			d = wire.Desc{Index: uint8(rng.IntN(6)), Count: 6, K: 4, Frag: 0x80}
			if rng.IntN(3) == 0 {
				d.Frag = uint8(rng.IntN(4))
			}
		}
		note(rng.IntN(6), pid, d, now)
	}
	take(now + int64(time.Second))
}

// TestTracesMatchReference holds the tracker, whose arrays are made on first
// use, to the figures of the one that always had them (refTracker): all of
// them when its ring is there from the start, and what was received and lost
// when it is made on the way (the lag of the packets already in the window
// then is counted from that moment). A session of one path of copies never
// makes the ring nor its path's more, and its figures are all the same.
func TestTracesMatchReference(t *testing.T) {
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, 7))
		// A third one path of copies, a third that until a change of
		// scheme (rs:2+1) half-way, a third all sorts.
		simple := seed%3 == 0
		simpleOps := []int{3000, 1500, 0}[seed%3]
		var tr, eager Tracker[int]
		var ref refTracker[int]
		eager.rings = &rings{metas: new([Window]meta)}
		var out, outE, outR [MaxPaths]Report[int]
		takes := 0
		trace(rng, 3000, simpleOps, func(k int, pid uint64, d wire.Desc, now int64) {
			tr.Note(k, pid, d, now)
			eager.Note(k, pid, d, now)
			ref.Note(k, pid, d, now)
		}, func(now int64) {
			takes++
			n := tr.Take(now, time.Second, &out)
			nE := eager.Take(now, time.Second, &outE)
			nR := ref.Take(now, time.Second, &outR)
			if n != nR || nE != nR {
				t.Fatalf("seed %d, take %d: %d and %d reports, reference %d", seed, takes, n, nE, nR)
			}
			for i := range outR[:nR] {
				if outE[i] != outR[i] {
					t.Fatalf("seed %d, take %d: %+v, reference %+v", seed, takes, outE[i], outR[i])
				}
				a, b := out[i], outR[i]
				if !simple {
					a.Q.Late, a.Q.LagMeanUs, a.Q.LagMaxUs = 0, 0, 0
					b.Q.Late, b.Q.LagMeanUs, b.Q.LagMaxUs = 0, 0, 0
				}
				if a != b {
					t.Fatalf("seed %d, take %d (ring made on use): %+v, reference %+v", seed, takes, a, b)
				}
			}
		})
		if simple && (tr.rings != nil || tr.paths[0].more != nil) {
			t.Fatalf("seed %d: one path of copies made the rings (%v) or its path's more (%v)", seed, tr.rings != nil, tr.paths[0].more != nil)
		}
		if !simple && (tr.metas() == nil || takes < 10) {
			t.Fatalf("seed %d: %d takes, rings %v: the trace tests too little", seed, takes, tr.metas() != nil)
		}
	}
}

// TestTwoPathsOfCopiesMakeFirstsOnly: a session of copies over two uplinks
// (each packet on both, the second path behind and losing some) makes the
// arrival-time ring, for the lag, but not the ring of coded packets' bits and
// shapes, and counts what the reference does.
func TestTwoPathsOfCopiesMakeFirstsOnly(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 9))
	var tr Tracker[int]
	var ref refTracker[int]
	var out, outR [MaxPaths]Report[int]
	d := wire.Desc{Count: 1, K: 1, Frag: 0x80}
	now := int64(1)
	lagged := false
	for pid := uint64(1); pid <= 2000; pid++ {
		now += 16 * ms
		tr.Note(0, pid, d, now)
		ref.Note(0, pid, d, now)
		if rng.IntN(20) != 0 { // path 1 loses 5%
			later := now + rng.Int64N(5*ms)
			tr.Note(1, pid, d, later)
			ref.Note(1, pid, d, later)
		}
		if pid%100 == 0 {
			n, nR := tr.Take(now, time.Second, &out), ref.Take(now, time.Second, &outR)
			if n != nR {
				t.Fatalf("packet %d: %d reports, reference %d", pid, n, nR)
			}
			for i := range outR[:nR] {
				a, b := out[i].Q, outR[i].Q
				if a.Received != b.Received || a.Lost != b.Lost {
					t.Fatalf("packet %d, path %d: received %d lost %d, reference %d and %d", pid, out[i].Key, a.Received, a.Lost, b.Received, b.Lost)
				}
				if pid > 200 && a != b {
					t.Fatalf("packet %d, path %d: %+v, reference %+v", pid, out[i].Key, a, b)
				}
				lagged = lagged || a.LagMaxUs > 0
			}
		}
	}
	if tr.rings == nil || tr.metas() != nil {
		t.Fatalf("two paths of copies: firsts made %v, metas made %v; want firsts only", tr.rings != nil, tr.metas() != nil)
	}
	if !lagged {
		t.Fatal("no lag reported for the path behind")
	}
}

// TestLagInTicks: a path 5 ms behind reports a lag of 5 ms to the tick
// (64 µs), and one 70 ms behind counts late, over the window's life and a
// wrap of the ticks (4.19 s).
func TestLagInTicks(t *testing.T) {
	var tr Tracker[int]
	var out [MaxPaths]Report[int]
	d := wire.Desc{Count: 1, K: 1, Frag: 0x80}
	now := int64(1e9)
	for pid := uint64(1); pid <= 600; pid++ { // 12 s at 50 packets/s
		now += 20 * ms
		tr.Note(0, pid, d, now)
		tr.Note(1, pid, d, now+5*ms+137*int64(time.Microsecond))
		if pid%10 == 0 {
			tr.Note(2, pid, d, now+70*ms)
		}
	}
	n := tr.Take(now+time.Second.Nanoseconds(), time.Second, &out)
	if n != 3 {
		t.Fatalf("%d reports, want 3", n)
	}
	for _, r := range out[:n] {
		switch r.Key {
		case 1:
			if want := uint32(5137); r.Q.LagMeanUs+64 < want || r.Q.LagMeanUs > want+64 || r.Q.Late != 0 {
				t.Errorf("path 1: lag %d µs, late %d; want %d µs ±64, none late", r.Q.LagMeanUs, r.Q.Late, want)
			}
		case 2:
			if r.Q.Late != 60 || r.Q.LagMaxUs+64 < 70000 || r.Q.LagMaxUs > 70064 {
				t.Errorf("path 2: late %d, lag max %d µs; want 60 late, 70 ms ±64 µs", r.Q.Late, r.Q.LagMaxUs)
			}
		}
	}
}
