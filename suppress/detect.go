package suppress

import (
	"math"
	"time"
)

// trigger is a Schmitt trigger: it turns on at or above Raise and off at or
// below Lower. Between the two it keeps its state, which is what stops a signal
// hovering around one threshold from toggling the level.
type trigger struct{ on bool }

func (t *trigger) update(v float64, th Threshold) bool {
	switch {
	case th.Raise <= 0:
		t.on = false
	case t.on && v <= th.Lower:
		t.on = false
	case !t.on && v >= th.Raise:
		t.on = true
	}
	return t.on
}

// levelDetector turns one measured value into the level it asks for, with a
// trigger for Shape and one for Cut. Without a new value it keeps asking for
// what it asked last.
type levelDetector struct {
	shape, cut trigger
	value      float64
	valid      bool
}

func (d *levelDetector) update(v float64, th *Thresholds) {
	d.value, d.valid = v, true
	d.shape.update(v, th.Shape)
	d.cut.update(v, th.Cut)
}

// level is the level the detector asks for (Off: nothing beyond presence).
func (d *levelDetector) level() Level {
	switch {
	case d.cut.on:
		return Cut
	case d.shape.on:
		return Shape
	}
	return Off
}

// minBuckets is the resolution of the windowed minimum: the window slides in
// steps of window/minBuckets.
const minBuckets = 16

// windowMin keeps the minimum of a value over a sliding time window in fixed
// memory: the window is split into buckets, each holding the minimum of its
// span, and the oldest bucket is recycled as time moves on.
type windowMin struct {
	width   int64 // ns per bucket
	buckets [minBuckets]struct {
		idx int64 // bucket number (time / width); 0 = empty
		min float64
	}
}

func newWindowMin(window time.Duration) windowMin {
	return windowMin{width: max(int64(window)/minBuckets, 1)}
}

func (w *windowMin) add(now int64, v float64) {
	idx := now/w.width + 1
	b := &w.buckets[idx%minBuckets]
	if b.idx != idx {
		b.idx, b.min = idx, v
		return
	}
	b.min = math.Min(b.min, v)
}

// min returns the minimum over the buckets of the last window.
func (w *windowMin) min(now int64) (float64, bool) {
	idx := now/w.width + 1
	m, ok := math.Inf(1), false
	for i := range w.buckets {
		b := &w.buckets[i]
		if b.idx != 0 && b.idx > idx-minBuckets && b.idx <= idx {
			m, ok = math.Min(m, b.min), true
		}
	}
	return m, ok
}

// slopeCap bounds the points the trend detector keeps.
const slopeCap = 128

// slopeWindow estimates the trend of a value (per second) as the least-squares
// slope over the points of the last window. A queue filling shows as a rising
// one-way delay before it shows as loss; the slope ignores the unknown constant
// offset between the two ends' clocks.
type slopeWindow struct {
	window int64
	t      [slopeCap]int64
	v      [slopeCap]float64
	head   int // next write
	n      int
}

func (s *slopeWindow) add(now int64, v float64) {
	s.t[s.head], s.v[s.head] = now, v
	s.head = (s.head + 1) % slopeCap
	s.n = min(s.n+1, slopeCap)
}

// slope returns the slope in units per second over the points within the window,
// if there are at least 4 spanning at least a quarter of it.
func (s *slopeWindow) slope(now int64) (float64, bool) {
	var st, sv, stt, stv float64
	n := 0
	first, last := int64(math.MaxInt64), int64(math.MinInt64)
	// Values relative to the newest: a raw one-way delay carries the clock
	// offset, which can be days, and the sums below must not lose the
	// milliseconds under it.
	ref := s.v[(s.head-1+slopeCap)%slopeCap]
	for i := 0; i < s.n; i++ {
		j := (s.head - 1 - i + slopeCap) % slopeCap
		if now-s.t[j] > s.window {
			break // older points only from here on
		}
		x := float64(s.t[j]-now) / 1e9
		v := s.v[j] - ref
		st += x
		sv += v
		stt += x * x
		stv += x * v
		first, last = min(first, s.t[j]), max(last, s.t[j])
		n++
	}
	if n < 4 || last-first < s.window/4 {
		return 0, false
	}
	nf := float64(n)
	den := nf*stt - st*st
	if den <= 0 {
		return 0, false
	}
	return (nf*stv - st*sv) / den, true
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }
