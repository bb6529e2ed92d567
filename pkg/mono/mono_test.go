package mono

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestNowIsClockMonotonic checks that Now reads the same clock as
// clock_gettime(CLOCK_MONOTONIC), which eBPF's bpf_ktime_get_ns also reads.
func TestNowIsClockMonotonic(t *testing.T) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	kernel := ts.Nano()
	ours := Now()
	if d := ours - kernel; d < 0 || d > int64(50*time.Millisecond) {
		t.Fatalf("Now()=%d differs from CLOCK_MONOTONIC=%d by %v", ours, kernel, time.Duration(d))
	}
}

func TestNowAdvancesAndDoesNotAllocate(t *testing.T) {
	a := Now()
	time.Sleep(2 * time.Millisecond)
	if d := Since(a); d < 2*time.Millisecond {
		t.Fatalf("Since after 2ms sleep = %v", d)
	}
	if n := testing.AllocsPerRun(100, func() { _ = Now() }); n != 0 {
		t.Fatalf("Now allocates %v times per call", n)
	}
}
