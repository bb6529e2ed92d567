package replay

import (
	"encoding/binary"
	"testing"
)

// referenceWindow is the obvious model of the window: a set of every ID ever
// accepted and the highest one. It is slow and unbounded, which is why the real
// Window exists, but its answers are easy to trust.
type referenceWindow struct {
	last uint64
	seen map[uint64]bool
}

func (r *referenceWindow) tooOld(pid uint64) bool {
	return pid == 0 || (pid <= r.last && r.last-pid > Size)
}

func (r *referenceWindow) Seen(pid uint64) bool { return r.tooOld(pid) || r.seen[pid] }

func (r *referenceWindow) Mark(pid uint64) bool {
	if r.Seen(pid) {
		return false
	}
	r.seen[pid] = true
	if pid > r.last {
		r.last = pid
	}
	return true
}

// FuzzWindow drives Window and the reference model with the same operations and
// fails on the first different answer. Each 9-byte record is one operation: a
// control byte (low bit: Seen or Mark; next bits: how to form the ID) and 8
// bytes of ID or offset.
func FuzzWindow(f *testing.F) {
	rec := func(ctl byte, v uint64) []byte {
		b := make([]byte, 9)
		b[0] = ctl
		binary.LittleEndian.PutUint64(b[1:], v)
		return b
	}
	var seed []byte
	for _, r := range [][]byte{rec(1, 1), rec(1, 1), rec(0, 1), rec(3, 5), rec(5, Size), rec(5, Size+1), rec(3, 1<<20), rec(7, 9000), rec(1, 0)} {
		seed = append(seed, r...)
	}
	f.Add(seed)
	f.Fuzz(func(t *testing.T, ops []byte) {
		var w Window
		ref := referenceWindow{seen: map[uint64]bool{}}
		for len(ops) >= 9 {
			ctl, v := ops[0], binary.LittleEndian.Uint64(ops[1:9])
			ops = ops[9:]
			var pid uint64
			switch (ctl >> 1) & 3 {
			case 0: // absolute ID
				pid = v
			case 1: // a little ahead of the newest
				pid = ref.last + v%(3*Size)
			case 2: // behind the newest, around the window edge
				off := v % (Size + 200)
				if off > ref.last {
					off = ref.last
				}
				pid = ref.last - off
			case 3: // reset
				w.Reset()
				ref = referenceWindow{seen: map[uint64]bool{}}
				continue
			}
			if ctl&1 == 0 {
				if got, want := w.Seen(pid), ref.Seen(pid); got != want {
					t.Fatalf("Seen(%d) = %v, model says %v (newest %d)", pid, got, want, ref.last)
				}
			} else {
				if got, want := w.Mark(pid), ref.Mark(pid); got != want {
					t.Fatalf("Mark(%d) = %v, model says %v (newest %d)", pid, got, want, ref.last)
				}
			}
		}
	})
}
