package metrics

import (
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Histogram counts durations into fixed buckets and exposes them in seconds
// (the base unit), as Prometheus histograms: cumulative _bucket series with
// an le label, _sum and _count. Observing takes no lock and allocates nothing.
type Histogram struct {
	bounds []time.Duration // upper bounds, ascending; +Inf is implicit
	counts []atomic.Uint64 // one per bound, plus one for +Inf (not cumulative)
	sumNs  atomic.Uint64   // sum of observations, ns
}

// LatencyBuckets suit round trips over real links: 0.5 ms to 1 s.
var LatencyBuckets = []time.Duration{
	500 * time.Microsecond, time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond,
	10 * time.Millisecond, 20 * time.Millisecond, 30 * time.Millisecond, 50 * time.Millisecond,
	75 * time.Millisecond, 100 * time.Millisecond, 150 * time.Millisecond, 200 * time.Millisecond,
	300 * time.Millisecond, 500 * time.Millisecond, time.Second,
}

// ObserveDuration records one duration (negative ones count as 0).
func (h *Histogram) ObserveDuration(d time.Duration) {
	d = max(d, 0)
	i := 0
	for i < len(h.bounds) && d > h.bounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNs.Add(uint64(d))
}

// Count returns the number of observations.
func (h *Histogram) Count() uint64 {
	var n uint64
	for i := range h.counts {
		n += h.counts[i].Load()
	}
	return n
}

// Histogram returns the histogram registered under name (see Counter for the
// naming rules), with LatencyBuckets. The family name should end in _seconds.
func (r *Registry) Histogram(name, help string) *Histogram {
	s := r.register(name, help, kindHistogram)
	if s == nil {
		return newHistogram(LatencyBuckets)
	}
	return s.hist
}

func newHistogram(bounds []time.Duration) *Histogram {
	return &Histogram{bounds: bounds, counts: make([]atomic.Uint64, len(bounds)+1)}
}

// writeText writes the _bucket, _sum and _count lines of series name
// (family fam, optional inline labels).
func (h *Histogram) writeText(b *strings.Builder, fam, name string) {
	labels := strings.TrimSuffix(strings.TrimPrefix(name[len(fam):], "{"), "}")
	if labels != "" {
		labels += ","
	}
	var cum uint64
	for i := range h.counts {
		cum += h.counts[i].Load()
		le := "+Inf"
		if i < len(h.bounds) {
			le = strconv.FormatFloat(h.bounds[i].Seconds(), 'g', -1, 64)
		}
		b.WriteString(fam + "_bucket{" + labels + `le="` + le + `"} ` + strconv.FormatUint(cum, 10) + "\n")
	}
	suffix := ""
	if labels != "" {
		suffix = "{" + strings.TrimSuffix(labels, ",") + "}"
	}
	b.WriteString(fam + "_sum" + suffix + " " + strconv.FormatFloat(float64(h.sumNs.Load())/1e9, 'g', -1, 64) + "\n")
	b.WriteString(fam + "_count" + suffix + " " + strconv.FormatUint(cum, 10) + "\n")
}
