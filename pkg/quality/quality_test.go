package quality

import (
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
