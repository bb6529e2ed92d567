package gamegen

import (
	"math"
	"time"
)

// DirectionStats describes one direction of a run, as seen by its receiver
// (Sent comes from the sender).
type DirectionStats struct {
	Sent     uint64 `json:"sent"`
	Received uint64 `json:"received"` // distinct sequence numbers, late ones included
	// Lost is Sent−Received. It is signed so that a miscount (say, a server
	// restarted mid-run) shows up as a negative number instead of a wrap.
	Lost       int64         `json:"lost"`
	LossPct    float64       `json:"loss_pct"`
	Duplicates uint64        `json:"duplicates"`
	Reordered  uint64        `json:"reordered"` // arrived after a higher sequence number
	Late       uint64        `json:"late"`      // received, but later than Deadline after sending
	Deadline   time.Duration `json:"deadline_ns"`
	Malformed  uint64        `json:"malformed"` // not a generator datagram, or from a stranger
	TooOld     uint64        `json:"too_old"`   // below the dedup window: neither counted nor deduplicated
	Warmup     uint64        `json:"warmup"`    // received during warm-up, not counted
	Latency    LatencyStats  `json:"latency"`   // one-way delay of first copies
}

// finish fills Lost and LossPct from Sent and Received.
func (d *DirectionStats) finish() {
	d.Lost = int64(d.Sent) - int64(d.Received)
	if d.Sent > 0 {
		d.LossPct = 100 * float64(d.Lost) / float64(d.Sent)
	} else {
		d.LossPct = 0
	}
}

// seenWindow is how many sequence numbers below the highest one the receiver
// still remembers, for duplicate and reorder detection: 6.5 s at 10,000 pps.
const seenWindow = 1 << 16

// receiver accumulates the statistics of one direction. It is owned by one
// goroutine and does not allocate.
type receiver struct {
	deadline int64 // ns; 0 disables late counting

	seen   [seenWindow / 64]uint64 // ring bitmap indexed by seq mod seenWindow
	maxSeq uint64
	any    bool

	received, dups, reordered, late, tooOld, warmup, malformed uint64

	hist histogram

	// RFC 3550 §6.4.1 jitter, in ns, over first copies in arrival order.
	jitter      float64
	lastTransit int64
	// Welford running mean and sum of squared deviations of the delay.
	mean, m2 float64
}

func (r *receiver) bit(seq uint64) (word *uint64, mask uint64) {
	i := seq % seenWindow
	return &r.seen[i/64], 1 << (i % 64)
}

// add records a data datagram with sequence number seq sent at sendTs and
// received at recvTs (both CLOCK_MONOTONIC ns).
func (r *receiver) add(seq uint64, sendTs, recvTs int64) {
	switch {
	case !r.any:
		r.any = true
		r.maxSeq = seq
	case seq > r.maxSeq:
		// Forget the numbers that leave the window as it slides forward.
		if seq-r.maxSeq >= seenWindow {
			clear(r.seen[:])
		} else {
			for s := r.maxSeq + 1; s < seq; s++ {
				w, m := r.bit(s)
				*w &^= m
			}
		}
		r.maxSeq = seq
	case r.maxSeq-seq >= seenWindow:
		r.tooOld++
		return
	default:
		w, m := r.bit(seq)
		if *w&m != 0 {
			r.dups++
			return
		}
		r.reordered++
	}
	w, m := r.bit(seq)
	*w |= m

	r.received++
	d := recvTs - sendTs
	if r.deadline > 0 && d > r.deadline {
		r.late++
	}
	r.hist.add(d)
	if r.received > 1 {
		dd := float64(d - r.lastTransit)
		r.jitter += (math.Abs(dd) - r.jitter) / 16
	}
	r.lastTransit = d
	delta := float64(d) - r.mean
	r.mean += delta / float64(r.received)
	r.m2 += delta * (float64(d) - r.mean)
}

// latency summarises the recorded delays.
func (r *receiver) latency() LatencyStats {
	h := &r.hist
	if h.total == 0 {
		return LatencyStats{}
	}
	var sd float64
	if r.received > 1 {
		sd = math.Sqrt(r.m2 / float64(r.received-1))
	}
	return LatencyStats{
		Count:  h.total,
		Min:    time.Duration(h.min),
		Mean:   time.Duration(math.Round(r.mean)),
		P50:    time.Duration(h.quantile(0.50)),
		P99:    time.Duration(h.quantile(0.99)),
		P999:   time.Duration(h.quantile(0.999)),
		Max:    time.Duration(h.max),
		Jitter: time.Duration(math.Round(r.jitter)),
		StdDev: time.Duration(math.Round(sd)),
	}
}

// stats returns the receive-side view; the caller fills Sent and finishes.
func (r *receiver) stats() DirectionStats {
	return DirectionStats{
		Received:   r.received,
		Duplicates: r.dups,
		Reordered:  r.reordered,
		Late:       r.late,
		Deadline:   time.Duration(r.deadline),
		Malformed:  r.malformed,
		TooOld:     r.tooOld,
		Warmup:     r.warmup,
		Latency:    r.latency(),
	}
}
