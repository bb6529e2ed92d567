package proxy

import (
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/metrics"
)

// A proxy is overloaded when it can no longer move a packet on at once: the
// datagrams of one read wait for the ones before them to be handled, so the time
// a read batch takes to handle is the internal queueing delay its last datagram
// saw (and a full batch means more wait in the socket). When that delay,
// smoothed, passes overload_latency, or the process uses more than overload_cpu
// of the CPUs it may run on, the proxy says so in its pongs and probe replies,
// and routers that have another proxy move there.

// Defaults of the overload thresholds.
const (
	DefaultOverloadLatency = 2 * time.Millisecond
	DefaultOverloadCPU     = 0.9
)

const (
	// cpuSampleEvery is how often the process CPU use is sampled (on demand,
	// when a pong or probe reply asks): shorter samples are too noisy to act on.
	cpuSampleEvery = time.Second
	// idleAfter: with no read batch for this long the proxy is idle, whatever
	// the last batches cost.
	idleAfter = time.Second
	// leaveShare: the flag clears only when both measures are below this share
	// of their thresholds, so it does not flap around a threshold.
	leaveShare = 0.8
)

// loadMeter measures how loaded the proxy is.
type loadMeter struct {
	latency int64   // threshold, ns
	cpu     float64 // threshold, share of the usable CPUs

	ewma      atomic.Int64 // smoothed batch handling time, ns; written by the read loop only
	lastBatch atomic.Int64 // mono ns of the last batch
	over      atomic.Bool

	mu       sync.Mutex // guards the CPU sample
	lastCPU  time.Duration
	lastWall int64
	cpuShare float64

	latencyGauge, cpuGauge, overGauge *metrics.Gauge
}

func newLoadMeter(cfg *Config, reg *metrics.Registry) *loadMeter {
	return &loadMeter{
		latency:      int64(cfg.OverloadLatency.Duration),
		cpu:          cfg.OverloadCPU,
		latencyGauge: reg.Gauge("proxy_queue_latency_microseconds", "Smoothed time to handle one read batch (the internal queueing delay)."),
		cpuGauge:     reg.Gauge("proxy_cpu_permille", "Process CPU use, per mille of the usable CPUs, at the last sample."),
		overGauge:    reg.Gauge("proxy_overloaded", "1 while the proxy reports itself overloaded."),
	}
}

// observeBatch records that a read batch read at start (mono ns) was handled by
// end. Each worker's read loop calls it: two racing updates lose one sample
// of the average at worst.
func (l *loadMeter) observeBatch(start, end int64) {
	d := end - start
	if d < 0 {
		d = 0
	}
	old := l.ewma.Load()
	v := old + (d-old)/8
	l.ewma.Store(v)
	l.lastBatch.Store(end)
	l.latencyGauge.Set(v / 1e3)
}

// overloaded reports whether the proxy should tell its clients it is
// overloaded, with hysteresis. now is mono ns.
func (l *loadMeter) overloaded(now int64) bool {
	lat := l.ewma.Load()
	if now-l.lastBatch.Load() > int64(idleAfter) {
		lat = 0
	}
	cpu := l.sampleCPU(now)
	var over bool
	if l.over.Load() {
		over = float64(lat) > leaveShare*float64(l.latency) || cpu > leaveShare*l.cpu
	} else {
		over = lat > l.latency || cpu > l.cpu
	}
	if over != l.over.Load() {
		l.over.Store(over)
		if over {
			l.overGauge.Set(1)
		} else {
			l.overGauge.Set(0)
		}
	}
	return over
}

// sampleCPU returns the process's CPU use as a share of the CPUs it may use,
// over the last sample period (at least cpuSampleEvery).
func (l *loadMeter) sampleCPU(now int64) float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lastWall != 0 && now-l.lastWall < int64(cpuSampleEvery) {
		return l.cpuShare
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return l.cpuShare
	}
	used := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	if l.lastWall != 0 {
		wall := float64(now - l.lastWall)
		l.cpuShare = float64(used-l.lastCPU) / wall / float64(runtime.GOMAXPROCS(0))
		l.cpuGauge.Set(int64(l.cpuShare * 1000))
	}
	l.lastCPU, l.lastWall = used, now
	return l.cpuShare
}

// checkLoad checks the overload thresholds of the config.
func (c *Config) checkLoad(meta *config.Meta) {
	meta.Duration("overload_latency", c.OverloadLatency.Duration, time.Nanosecond, time.Second)
	meta.Ratio("overload_cpu", c.OverloadCPU, false)
}
