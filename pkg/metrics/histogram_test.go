package metrics

import (
	"strings"
	"testing"
	"time"
)

// TestHistogramText: cumulative buckets in seconds, _sum and _count, labels
// kept, in the text format; observing allocates nothing.
func TestHistogramText(t *testing.T) {
	r := NewRegistry()
	h := r.Histogram(`rtt_seconds{uplink="a"}`, "Round trips.")
	for _, d := range []time.Duration{300 * time.Microsecond, 4 * time.Millisecond, 4 * time.Millisecond, 2 * time.Second} {
		h.ObserveDuration(d)
	}
	var b strings.Builder
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"# TYPE rtt_seconds histogram\n",
		`rtt_seconds_bucket{uplink="a",le="0.0005"} 1` + "\n",
		`rtt_seconds_bucket{uplink="a",le="0.002"} 1` + "\n",
		`rtt_seconds_bucket{uplink="a",le="0.005"} 3` + "\n",
		`rtt_seconds_bucket{uplink="a",le="1"} 3` + "\n",
		`rtt_seconds_bucket{uplink="a",le="+Inf"} 4` + "\n",
		`rtt_seconds_sum{uplink="a"} 2.0083` + "\n",
		`rtt_seconds_count{uplink="a"} 4` + "\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	if r.Snapshot()[`rtt_seconds{uplink="a"}`] != 4 {
		t.Errorf("snapshot %v", r.Snapshot())
	}
	if r.Counter(`rtt_seconds{uplink="a"}`, ""); r.Err() == nil {
		t.Error("a histogram name reused as a counter was accepted")
	}
	if a := testing.AllocsPerRun(100, func() { h.ObserveDuration(time.Millisecond) }); a != 0 {
		t.Errorf("ObserveDuration: %v allocs", a)
	}
}
