package gamegen

import (
	"math"
	"math/bits"
	"time"
)

// The latency histogram is log-linear: values below 128 ns have a bucket
// each, and every octave [2^e, 2^(e+1)) above is split into 64 equal buckets.
// A bucket is then at most 1/64 of its lower bound wide, and reporting its
// midpoint is within 1/128 (0.8 %) of any value in it. The table is fixed
// (2,304 counters, 18 KiB), so memory does not grow with the run length.
const (
	histSubBits  = 6
	histSub      = 1 << histSubBits // buckets per octave
	histExact    = 2 * histSub      // values below this are exact
	histMaxExp   = 40               // top octave [2^40, 2^41) ns, about 36 min
	histBuckets  = histExact + (histMaxExp-histSubBits)*histSub
	histMaxValue = int64(1)<<(histMaxExp+1) - 1
)

// histogram counts non-negative nanosecond values.
type histogram struct {
	counts [histBuckets]uint64
	total  uint64
	min    int64
	max    int64
}

func histIndex(v int64) int {
	if v < histExact {
		return int(v)
	}
	e := bits.Len64(uint64(v)) - 1 // ≥ 7
	shift := e - histSubBits
	sub := int(v>>shift) - histSub
	return histExact + (e-histSubBits-1)*histSub + sub
}

// histMid returns the value reported for bucket i: its midpoint.
func histMid(i int) int64 {
	if i < histExact {
		return int64(i)
	}
	k := i - histExact
	e := k/histSub + histSubBits + 1
	shift := e - histSubBits
	lo := int64(histSub+k%histSub) << shift
	return lo + int64(1)<<shift/2
}

// add records v; negative values count as 0 and huge ones as the top value.
func (h *histogram) add(v int64) {
	v = min(max(v, 0), histMaxValue)
	if h.total == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.counts[histIndex(v)]++
	h.total++
}

// quantile returns the value at quantile q in [0, 1]: the smallest recorded
// value that at least ceil(q·n) values do not exceed, to within 0.8 %.
func (h *histogram) quantile(q float64) int64 {
	if h.total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.total)))
	rank = min(max(rank, 1), h.total)
	switch rank { // the extremes are known exactly
	case 1:
		return h.min
	case h.total:
		return h.max
	}
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i]
		if seen >= rank {
			// Keep the midpoint inside the observed range.
			return min(max(histMid(i), h.min), h.max)
		}
	}
	return h.max
}

// LatencyStats summarises a set of delays. Durations encode in JSON as
// integer nanoseconds.
type LatencyStats struct {
	Count  uint64        `json:"count"`
	Min    time.Duration `json:"min_ns"`
	Mean   time.Duration `json:"mean_ns"`
	P50    time.Duration `json:"p50_ns"`
	P99    time.Duration `json:"p99_ns"`
	P999   time.Duration `json:"p999_ns"`
	Max    time.Duration `json:"max_ns"`
	Jitter time.Duration `json:"jitter_ns"` // RFC 3550 interarrival jitter
	StdDev time.Duration `json:"stddev_ns"` // standard deviation of the delay
}
