package gamegen

import (
	"math"
	"testing"
	"time"
)

func TestReceiverCounts(t *testing.T) {
	r := receiver{deadline: int64(10 * time.Millisecond)}
	ms := int64(time.Millisecond)
	// seq: 0 1 3 2 2 5 1 9 ; 4, 6, 7, 8 never come.
	arrivals := []struct {
		seq   uint64
		delay int64
	}{{0, 1 * ms}, {1, 1 * ms}, {3, 1 * ms}, {2, 20 * ms}, {2, 20 * ms}, {5, 1 * ms}, {1, 1 * ms}, {9, 3 * ms}}
	for i, a := range arrivals {
		send := int64(i) * 100 * ms
		r.add(a.seq, send, send+a.delay)
	}
	s := r.stats()
	s.Sent = 10
	s.finish()
	want := DirectionStats{Sent: 10, Received: 6, Lost: 4, LossPct: 40, Duplicates: 2, Reordered: 1, Late: 1, Deadline: 10 * time.Millisecond}
	got := s
	got.Latency = LatencyStats{}
	if got != want {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	l := s.Latency
	if l.Count != 6 || l.Min != time.Millisecond || l.Max != 20*time.Millisecond {
		t.Fatalf("latency %+v", l)
	}
	// Delays of first copies in arrival order: 1 1 1 20 1 3 ms.
	delays := []float64{1, 1, 1, 20, 1, 3}
	var j, mean float64
	for i, d := range delays {
		if i > 0 {
			j += (math.Abs(d-delays[i-1]) - j) / 16
		}
		mean += d / 6
	}
	var ss float64
	for _, d := range delays {
		ss += (d - mean) * (d - mean)
	}
	sd := math.Sqrt(ss / 5)
	if math.Abs(float64(l.Jitter)/1e6-j) > 1e-3 || math.Abs(float64(l.StdDev)/1e6-sd) > 1e-3 || math.Abs(float64(l.Mean)/1e6-mean) > 1e-3 {
		t.Fatalf("jitter %v stddev %v mean %v; want %.4f %.4f %.4f ms", l.Jitter, l.StdDev, l.Mean, j, sd, mean)
	}
}

func TestReceiverWindow(t *testing.T) {
	var r receiver
	r.add(0, 0, 1)
	r.add(seenWindow+10, 0, 1) // slides the window past 0
	r.add(0, 0, 1)             // too old to tell: neither received nor duplicate
	r.add(11, 0, 1)            // just inside the window: reordered, not a duplicate
	r.add(11, 0, 1)
	if r.received != 3 || r.tooOld != 1 || r.reordered != 1 || r.dups != 1 {
		t.Fatalf("received %d tooOld %d reordered %d dups %d", r.received, r.tooOld, r.reordered, r.dups)
	}
	// A jump of more than the whole window must forget every old bit.
	r.add(5*seenWindow, 0, 1)
	r.add(5*seenWindow-1, 0, 1)
	if r.dups != 1 || r.received != 5 {
		t.Fatalf("after jump: received %d dups %d", r.received, r.dups)
	}
	// Constant delay: no jitter, no deviation.
	var c receiver
	for i := range uint64(100) {
		c.add(i, int64(i)*1000, int64(i)*1000+500)
	}
	if l := c.latency(); l.Jitter != 0 || l.StdDev != 0 || l.P50 != 500 || l.Mean != 500 {
		t.Fatalf("constant delay stats %+v", l)
	}
}

// TestHotPathDoesNotAllocate covers the per-packet helpers used by the send
// and receive loops.
func TestHotPathDoesNotAllocate(t *testing.T) {
	r := new(receiver)
	buf := make([]byte, 100)
	putHeader(buf, header{kind: KindClientTick, run: 7}, len(buf))
	var seq uint64
	n := testing.AllocsPerRun(1000, func() {
		seq++
		setSeqTs(buf, seq, int64(seq)*1000)
		h, ok := parseHeader(buf)
		if !ok {
			panic("parse")
		}
		r.add(h.seq, h.ts, h.ts+300)
	})
	if n != 0 {
		t.Fatalf("%v allocations per packet", n)
	}
}
