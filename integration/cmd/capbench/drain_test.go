package main

import (
	"math"
	"strings"
	"testing"
	"time"
)

// TestSteadyRate: the rate between 10% and 90% of the queue, with the
// crossings interpolated, leaves out a slow start and a tail; a drain that
// stops short is an error.
func TestSteadyRate(t *testing.T) {
	ms := time.Millisecond
	// 1,000 queued: nothing for 100 ms (a slow start), then 2 per ms to the
	// end, sampled every 50 ms.
	var samples []drainSample
	for at := time.Duration(0); at <= 700*ms; at += 50 * ms {
		fwd := math.Min(1000, math.Max(0, float64((at-100*ms)/ms)*2))
		samples = append(samples, drainSample{at, fwd})
	}
	got, err := steadyRate(samples, 1000)
	if err != nil || math.Abs(got-2000) > 1 {
		t.Fatalf("steadyRate = %.1f, %v; want 2000/s (2 a millisecond)", got, err)
	}
	if _, err := steadyRate(samples[:6], 1000); err == nil { // 300 of 1,000 by 250 ms
		t.Fatal("a drain that stopped at 30% gave a rate")
	}
}

// TestDrainTableRatios: each 2-worker row is compared with the 1-worker row
// of the same pinning, and called near-linear at 1.8× or more only.
func TestDrainTableRatios(t *testing.T) {
	rows := []drainRow{{1, false}, {2, false}, {1, true}, {2, true}}
	res := [][]drainResult{
		{{queued: 200, steady: 100, perCPU: 100}, {queued: 200, steady: 110, perCPU: 100}, {queued: 200, steady: 90, perCPU: 100}},
		{{queued: 400, steady: 170, perCPU: 95}},
		{{queued: 200, steady: 200, perCPU: 120}},
		{{queued: 400, steady: 380, perCPU: 118}},
	}
	tab := drainTable(rows, res)
	if len(tab) != 5 {
		t.Fatalf("%d rows, want a header and 4", len(tab))
	}
	if tab[2][5] != "1.70×" || !strings.HasSuffix(tab[2][8], "MISSED") {
		t.Errorf("unpinned 2 workers: %q, %q; want 1.70× (170 over the median 100) and MISSED", tab[2][5], tab[2][8])
	}
	if tab[4][5] != "1.90×" || !strings.HasSuffix(tab[4][8], "met") || tab[4][6] != "0.98×" {
		t.Errorf("pinned 2 workers: %q, %q, %q; want 1.90×, met and 0.98× per CPU-second", tab[4][5], tab[4][8], tab[4][6])
	}
	if tab[1][8] != "" {
		t.Errorf("a 1-worker row has a verdict: %q", tab[1][8])
	}
}
