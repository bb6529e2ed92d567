// Package replay is the per-session, per-direction duplicate and anti-replay
// window.
//
// Every copy and shard of a packet carries the sender's packet ID. The receiver
// keeps the first authenticated copy of each ID and drops the rest; the same
// record stops an attacker from replaying captured datagrams. The window is the
// RFC 6479 ring of bit blocks used by WireGuard: moving it forward clears whole
// blocks instead of shifting a bitmap, so every operation is O(1) except a jump
// ahead, which clears at most the whole ring once.
//
// Packet IDs start at 1. ID 0 is never valid: a zeroed header must not pass.
//
// A Window is not safe for concurrent use; callers hold the session's lock.
package replay

const (
	blockBitLog = 6                  // a block is a uint64: 1<<6 bits
	blockBits   = 1 << blockBitLog   // bits per block
	ringBlocks  = 4096/blockBits + 1 // blocks in the ring: 4,096 packets of history plus the current block
	bitMask     = blockBits - 1
)

// Size is how many packets of history the window keeps: IDs up to Size below the
// highest ID marked so far can still be told apart as new or duplicate. One block
// of the ring is always the partly filled current block, so the usable history is
// one block short of the ring.
const Size = (ringBlocks - 1) * blockBits

// Window records which packet IDs were received. The zero value is an empty
// window ready to use. It holds no pointers, so it can live inside a session
// struct without adding work for the garbage collector.
type Window struct {
	last uint64 // highest ID marked so far; 0 before the first
	ring [ringBlocks]uint64
}

// Reset empties the window, as for a new session. Only the block that ID 0..63
// maps to needs clearing: every other block is cleared by Mark when the window
// first moves onto it, before any of its bits can be read.
func (w *Window) Reset() {
	w.last = 0
	w.ring[0] = 0
}

// Seen reports whether pid was already marked, or lies so far left of the window
// that it cannot be told (and is treated as a replay). It does not change the
// window, so it can drop duplicates cheaply before spending time on
// authentication. A false answer is not a promise: Mark decides.
func (w *Window) Seen(pid uint64) bool {
	if pid == 0 {
		return true
	}
	if pid > w.last {
		return false
	}
	if w.last-pid > Size {
		return true
	}
	return w.ring[(pid>>blockBitLog)%ringBlocks]&(1<<(pid&bitMask)) != 0
}

// Mark records pid as received. Call it only after the datagram authenticated:
// an unauthenticated datagram must not move the window, or a forged far-ahead ID
// would make every genuine packet look too old. It returns true if pid is new
// (not marked before and not too old), false otherwise.
func (w *Window) Mark(pid uint64) bool {
	if pid == 0 {
		return false
	}
	blockIndex := pid >> blockBitLog
	if pid > w.last {
		current := w.last >> blockBitLog
		diff := blockIndex - current
		if diff > ringBlocks {
			diff = ringBlocks // a jump past the whole ring clears each block once
		}
		for i := current + 1; i <= current+diff; i++ {
			w.ring[i%ringBlocks] = 0
		}
		w.last = pid
	} else if w.last-pid > Size {
		return false
	}
	blockIndex %= ringBlocks
	bit := uint64(1) << (pid & bitMask)
	old := w.ring[blockIndex]
	w.ring[blockIndex] = old | bit
	return old&bit == 0
}
