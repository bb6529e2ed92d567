package replay

import (
	"math"
	"testing"
)

// TestWireGuardVectors replays the test vectors of wireguard-go (ported there
// from the Linux kernel), shifted up by one because our IDs start at 1. The
// vectors that exercise WireGuard's message limit have no counterpart here and
// are replaced by TestNearMaxUint64.
func TestWireGuardVectors(t *testing.T) {
	var w Window
	const lim = Size + 1
	step := 0
	T := func(n uint64, want bool) {
		t.Helper()
		step++
		pid := n + 1
		if got := w.Mark(pid); got != want {
			t.Fatalf("step %d: Mark(%d) = %v, want %v", step, pid, got, want)
		}
	}

	T(0, true)              /*  1 */
	T(1, true)              /*  2 */
	T(1, false)             /*  3 */
	T(9, true)              /*  4 */
	T(8, true)              /*  5 */
	T(7, true)              /*  6 */
	T(7, false)             /*  7 */
	T(lim, true)            /*  8 */
	T(lim-1, true)          /*  9 */
	T(lim-1, false)         /* 10 */
	T(lim-2, true)          /* 11 */
	T(2, true)              /* 12 */
	T(2, false)             /* 13 */
	T(lim+16, true)         /* 14 */
	T(3, false)             /* 15 */
	T(lim+16, false)        /* 16 */
	T(lim*4, true)          /* 17 */
	T(lim*4-(lim-1), true)  /* 18 */
	T(10, false)            /* 19 */
	T(lim*4-lim, false)     /* 20 */
	T(lim*4-(lim+1), false) /* 21 */
	T(lim*4-(lim-2), true)  /* 22 */
	T(lim*4+1-lim, false)   /* 23 */
	T(0, false)             /* 24 */

	bulk := []struct {
		name string
		run  func()
	}{
		{"1", func() {
			for i := uint64(1); i <= Size; i++ {
				T(i, true)
			}
			T(0, true)
			T(0, false)
		}},
		{"2", func() {
			for i := uint64(2); i <= Size+1; i++ {
				T(i, true)
			}
			T(1, true)
			T(0, false)
		}},
		{"3", func() {
			for i := uint64(Size + 1); i > 0; i-- {
				T(i, true)
			}
		}},
		{"4", func() {
			for i := uint64(Size + 2); i > 1; i-- {
				T(i, true)
			}
			T(0, false)
		}},
		{"5", func() {
			for i := uint64(Size); i > 0; i-- {
				T(i, true)
			}
			T(Size+1, true)
			T(0, false)
		}},
		{"6", func() {
			for i := uint64(Size); i > 0; i-- {
				T(i, true)
			}
			T(0, true)
			T(Size+1, true)
		}},
	}
	for _, b := range bulk {
		w.Reset()
		step = 0
		b.run()
		if t.Failed() {
			t.Fatalf("bulk test %s failed", b.name)
		}
	}
}

func TestZeroIDAlwaysRejected(t *testing.T) {
	var w Window
	if !w.Seen(0) || w.Mark(0) {
		t.Fatal("ID 0 accepted by an empty window")
	}
	w.Mark(5)
	if !w.Seen(0) || w.Mark(0) {
		t.Fatal("ID 0 accepted after ID 5")
	}
}

func TestInOrder(t *testing.T) {
	var w Window
	for pid := uint64(1); pid <= 3*Size; pid++ {
		if w.Seen(pid) {
			t.Fatalf("Seen(%d) before Mark", pid)
		}
		if !w.Mark(pid) {
			t.Fatalf("Mark(%d) = false for a new ID", pid)
		}
		if !w.Seen(pid) {
			t.Fatalf("Seen(%d) = false after Mark", pid)
		}
	}
}

func TestSeenDoesNotMark(t *testing.T) {
	var w Window
	w.Mark(100)
	for i := 0; i < 3; i++ {
		if w.Seen(50) {
			t.Fatal("Seen(50) = true; never marked")
		}
	}
	if w.Seen(200) {
		t.Fatal("Seen(200) = true ahead of the window")
	}
	if !w.Mark(50) || !w.Mark(200) {
		t.Fatal("Seen changed the window")
	}
}

func TestReorderedWithinWindowAndDuplicates(t *testing.T) {
	var w Window
	const top = Size + 1 // every ID below top is inside the window; 2003 is coprime to top-1
	if !w.Mark(top) {
		t.Fatal("first Mark failed")
	}
	// Fill everything below top in a scrambled order (a stride coprime to top-1).
	for i := uint64(0); i < top-1; i++ {
		pid := 1 + (i*2003)%(top-1)
		if !w.Mark(pid) {
			t.Fatalf("reordered Mark(%d) = false", pid)
		}
	}
	for pid := uint64(1); pid <= top; pid++ {
		if !w.Seen(pid) || w.Mark(pid) {
			t.Fatalf("duplicate %d accepted", pid)
		}
	}
}

func TestTooOld(t *testing.T) {
	var w Window
	const top = 100000
	w.Mark(top)
	// The oldest ID still tracked is exactly Size below the newest.
	if w.Seen(top - Size) {
		t.Fatalf("Seen(top-Size) = true; it is inside the window")
	}
	if !w.Mark(top - Size) {
		t.Fatalf("Mark(top-Size) rejected")
	}
	if !w.Seen(top-Size-1) || w.Mark(top-Size-1) {
		t.Fatalf("ID Size+1 below the newest accepted")
	}
	if !w.Seen(1) || w.Mark(1) {
		t.Fatal("ancient ID accepted")
	}
}

func TestFarJumpClearsRing(t *testing.T) {
	var w Window
	for pid := uint64(1); pid <= Size; pid++ {
		w.Mark(pid)
	}
	// Jump so far that the whole ring is reused; every ID of the new window
	// below the new top must read as unseen, whatever stale bits the ring held.
	top := uint64(10 * Size)
	if !w.Mark(top) {
		t.Fatal("jump Mark failed")
	}
	for pid := top - Size; pid < top; pid++ {
		if w.Seen(pid) {
			t.Fatalf("Seen(%d) = true after a jump: stale block not cleared", pid)
		}
	}
	// A jump of less than the ring must clear exactly the blocks passed over.
	top2 := top + Size/2
	if !w.Mark(top2) {
		t.Fatal("half jump Mark failed")
	}
	if !w.Seen(top) {
		t.Fatal("half jump forgot an ID still inside the window")
	}
	for pid := top + 1; pid < top2; pid++ {
		if w.Seen(pid) {
			t.Fatalf("Seen(%d) = true; never marked", pid)
		}
	}
}

func TestRingWrapsManyTimes(t *testing.T) {
	var w Window
	// Advance in steps that are not multiples of the block size, so the ring
	// index wraps at every offset; keep a sparse pattern and check it.
	for pid := uint64(1); pid < 50*Size; pid += 7 {
		if !w.Mark(pid) {
			t.Fatalf("Mark(%d) = false", pid)
		}
		if pid > 7 && (!w.Seen(pid-7) || w.Seen(pid-6) || w.Seen(pid-1)) {
			t.Fatalf("pattern broken near %d", pid)
		}
	}
}

func TestResetForgets(t *testing.T) {
	var w Window
	for pid := uint64(1); pid < 3*Size; pid += 3 {
		w.Mark(pid)
	}
	w.Reset()
	for pid := uint64(1); pid < 2*Size; pid++ {
		if w.Seen(pid) {
			t.Fatalf("Seen(%d) after Reset", pid)
		}
		if !w.Mark(pid) {
			t.Fatalf("Mark(%d) after Reset = false", pid)
		}
	}
}

func TestNearMaxUint64(t *testing.T) {
	var w Window
	const topID = math.MaxUint64
	if !w.Mark(topID - 1) {
		t.Fatal("Mark(MaxUint64-1)")
	}
	if !w.Mark(topID) || w.Mark(topID) || w.Mark(topID-1) {
		t.Fatal("window misbehaves at the top of the ID space")
	}
	if !w.Mark(topID - Size) {
		t.Fatal("Mark(MaxUint64-Size) rejected")
	}
	if w.Mark(topID - Size - 1) {
		t.Fatal("too-old ID accepted near the top")
	}
}

func TestAllocs(t *testing.T) {
	var w Window
	pid := uint64(0)
	allocs := testing.AllocsPerRun(1000, func() {
		pid++
		if !w.Seen(pid) {
			w.Mark(pid)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per packet, want 0", allocs)
	}
}

func BenchmarkMarkInOrder(b *testing.B) {
	var w Window
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		w.Mark(uint64(i) + 1)
	}
}

func BenchmarkSeenAndMarkReordered(b *testing.B) {
	var w Window
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		// Two copies of each ID, the second one out of order by a few packets.
		pid := uint64(i/2) + 1
		if i&1 == 1 && pid > 3 {
			pid -= 3
		}
		if !w.Seen(pid) {
			w.Mark(pid)
		}
	}
}
