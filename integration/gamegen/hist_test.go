package gamegen

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// TestHistogramBucketError checks the layout promise: every value maps to a
// bucket whose reported midpoint is within 1/128 of it, and buckets are
// ordered like the values.
func TestHistogramBucketError(t *testing.T) {
	prev := -1
	check := func(v int64) {
		i := histIndex(v)
		if i < 0 || i >= histBuckets {
			t.Fatalf("value %d: index %d out of [0, %d)", v, i, histBuckets)
		}
		if i < prev {
			t.Fatalf("value %d: index %d below the previous value's %d", v, i, prev)
		}
		prev = i
		mid := histMid(i)
		if err := math.Abs(float64(mid-v)) / float64(max(v, 1)); err > 1.0/128 {
			t.Fatalf("value %d: midpoint %d, relative error %.4f", v, mid, err)
		}
	}
	for v := int64(0); v < 1<<16; v++ {
		check(v)
	}
	for v := int64(1 << 16); v <= histMaxValue; v += v/997 + 1 {
		check(v)
	}
	check(histMaxValue)
}

// TestQuantilesKnownData compares the histogram's quantiles with the exact
// order statistics of a shuffled known data set.
func TestQuantilesKnownData(t *testing.T) {
	var h histogram
	// 1 µs … 100 ms in 1 µs steps, shuffled: order must not matter.
	vals := make([]int64, 100_000)
	for i := range vals {
		vals[i] = int64(i+1) * int64(time.Microsecond)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	rng.Shuffle(len(vals), func(i, j int) { vals[i], vals[j] = vals[j], vals[i] })
	for _, v := range vals {
		h.add(v)
	}
	sorted := slices.Clone(vals)
	slices.Sort(sorted)
	for _, q := range []float64{0, 0.001, 0.5, 0.9, 0.99, 0.999, 1} {
		rank := max(int(math.Ceil(q*float64(len(sorted)))), 1)
		want := sorted[rank-1]
		got := h.quantile(q)
		if err := math.Abs(float64(got-want)) / float64(want); err > 0.01 {
			t.Errorf("q=%v: got %d want %d (error %.4f)", q, got, want, err)
		}
	}
	if h.quantile(1) != 100*int64(time.Millisecond) || h.quantile(0) != int64(time.Microsecond) {
		t.Errorf("extremes not exact: min %d max %d", h.quantile(0), h.quantile(1))
	}

	// A skewed set: 990 fast packets and 10 slow ones; p99 is the last fast
	// one, p99.9 a slow one.
	var s histogram
	for range 990 {
		s.add(200_000)
	}
	for range 10 {
		s.add(30_000_000)
	}
	if got := s.quantile(0.99); math.Abs(float64(got-200_000)) > 2_000 {
		t.Errorf("skewed p99 = %d, want ~200000", got)
	}
	if got := s.quantile(0.999); got != 30_000_000 {
		t.Errorf("skewed p99.9 = %d, want 30000000", got)
	}

	var empty histogram
	if empty.quantile(0.5) != 0 {
		t.Error("empty histogram quantile not 0")
	}
	var neg histogram
	neg.add(-5)
	neg.add(math.MaxInt64)
	if neg.min != 0 || neg.max != histMaxValue {
		t.Errorf("clamping: min %d max %d", neg.min, neg.max)
	}
}
