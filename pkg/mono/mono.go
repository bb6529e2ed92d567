// Package mono reads the CLOCK_MONOTONIC clock as nanoseconds.
//
// The hot path stamps packets with plain int64 nanoseconds instead of time.Time:
// they are cheap to copy, compare and store atomically, and they are the same clock
// that eBPF programs read with bpf_ktime_get_ns, so timestamps taken in Go and in the
// kernel can be compared directly (suppression time slots depend on that).
package mono

import (
	"time"
	_ "unsafe" // for go:linkname
)

//go:linkname nanotime runtime.nanotime
func nanotime() int64

// Now returns the current CLOCK_MONOTONIC time in nanoseconds. It does not allocate
// and costs a vDSO call.
func Now() int64 { return nanotime() }

// Since returns the time elapsed since t, a value earlier returned by Now.
func Since(t int64) time.Duration { return time.Duration(nanotime() - t) }
