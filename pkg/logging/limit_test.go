package logging

import (
	"testing"
	"time"
)

func TestLimiterBoundsLines(t *testing.T) {
	l := NewLimiter(10, 5)
	allowed := 0
	for i := 0; i < 10000; i++ {
		if ok, _ := l.Allow(); ok {
			allowed++
		}
	}
	// 10,000 calls in well under a second: the burst and at most a few more.
	if allowed < 5 || allowed > 10 {
		t.Fatalf("allowed %d of 10000 lines, want the burst of 5 (and at most a few refilled)", allowed)
	}
	time.Sleep(150 * time.Millisecond) // refills at least one line
	ok, n := l.Allow()
	if !ok {
		t.Fatal("no line allowed after the bucket refilled")
	}
	if n < uint64(10000-allowed) {
		t.Fatalf("suppressed %d, want at least %d", n, 10000-allowed)
	}
	if _, n = l.Allow(); n != 0 {
		t.Fatalf("suppressed count not reset: %d", n)
	}
}
