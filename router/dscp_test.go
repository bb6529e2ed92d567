package router

import (
	"testing"
	"time"
)

func TestParseDSCP(t *testing.T) {
	for in, want := range map[string]uint8{"": 0, "off": 0, "EF": 46, "ef": 46, "CS4": 32, "AF41": 34, "46": 46, "0x2e": 46} {
		if got, err := parseDSCP(in); err != nil || got != want {
			t.Errorf("parseDSCP(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"XX", "64", "-1", "0"} {
		if _, err := parseDSCP(bad); err == nil {
			t.Errorf("parseDSCP(%q) accepted", bad)
		}
	}
}

// TestDSCPBucketNeverExceedsExpectedRate: a session sending at three times
// its expected 60 pps for 10 s marks no more than 60 pps plus the burst; one
// sending at its rate, with jitter, marks every packet.
func TestDSCPBucketNeverExceedsExpectedRate(t *testing.T) {
	const interval = int64(time.Second / 60)
	var b dscpBucket
	marked := 0
	for i := range 1800 {
		if b.take(int64(i)*interval/3, interval) {
			marked++
		}
	}
	if limit := 600 + dscpBurst + 1; marked > limit || marked < 590 {
		t.Errorf("at 3x the rate, %d of 1800 packets marked over 10 s; want about 600, at most %d", marked, limit)
	}
	var c dscpBucket
	for i := range 600 {
		jitter := int64((i%5)-2) * interval / 4
		if !c.take(int64(i)*interval+jitter, interval) {
			t.Fatalf("packet %d at the expected rate (with jitter) went unmarked", i)
		}
	}
}
