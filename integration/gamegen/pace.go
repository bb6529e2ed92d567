package gamegen

import (
	"runtime"
	"time"

	"github.com/raicnet/raic/pkg/mono"
)

// pacer schedules tick i at start + i/rate. Computing every due time from the
// start, instead of adding an interval to the previous send, means a late
// wake-up delays only the packets already due (they leave at once, as a
// batch) and never shifts the rest of the schedule: the rate does not drift.
//
// Go timers cannot sleep much less than a millisecond on a busy host, so at
// high rates a plain sleep sends small bursts. With spin > 0 the pacer sleeps
// until spin before the due time and then yields in a loop until it arrives,
// trading CPU for per-packet timing.
type pacer struct {
	start    int64
	interval float64 // ns between ticks
	spin     int64
	timer    *time.Timer
}

func newPacer(start int64, rate float64, spin time.Duration) *pacer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &pacer{start: start, interval: 1e9 / rate, spin: int64(spin), timer: t}
}

// due returns the scheduled send time of tick i.
func (p *pacer) due(i uint64) int64 { return p.start + int64(float64(i)*p.interval) }

// waitUntil blocks until the monotonic time t. It returns false as soon as
// stop or quit is closed (two channels, so callers need no merging goroutine).
func (p *pacer) waitUntil(t int64, stop, quit <-chan struct{}) bool {
	// Checked even when t is already due: after a stall the backlog of due
	// ticks must not delay a stop.
	select {
	case <-stop:
		return false
	case <-quit:
		return false
	default:
	}
	for {
		d := t - mono.Now()
		if d <= 0 {
			return true
		}
		if d > p.spin {
			p.timer.Reset(time.Duration(d - p.spin))
			select {
			case <-p.timer.C:
			case <-stop:
				p.timer.Stop()
				return false
			case <-quit:
				p.timer.Stop()
				return false
			}
			continue
		}
		for mono.Now() < t {
			select {
			case <-stop:
				return false
			case <-quit:
				return false
			default:
			}
			runtime.Gosched()
		}
		return true
	}
}

func (p *pacer) close() { p.timer.Stop() }
