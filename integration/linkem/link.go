package linkem

import (
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// Cause tells why a packet was dropped.
type Cause uint8

// Drop causes.
const (
	Delivered Cause = iota // not dropped
	DropOutage
	DropLoss
	DropQueue
	// DropOverflow is set by drivers when their own bounded buffers are full; the
	// core never returns it.
	DropOverflow
)

func (c Cause) String() string {
	switch c {
	case Delivered:
		return "delivered"
	case DropOutage:
		return "outage"
	case DropLoss:
		return "loss"
	case DropQueue:
		return "queue"
	case DropOverflow:
		return "overflow"
	}
	return "unknown"
}

// Stats are a link's counters. Snapshots are taken with Link.Stats and can be
// read while the link runs.
type Stats struct {
	In           uint64 // packets offered to the link
	Out          uint64 // departures the core decided, duplicates included (a driver's overflow drops are among them)
	DropOutage   uint64
	DropLoss     uint64
	DropQueue    uint64 // tail drops of the rate limiter's queue
	DropOverflow uint64 // drops by a driver whose buffers were full
	Duplicated   uint64
	BytesIn      uint64
	BytesOut     uint64
	// QueueDelaySum and QueueDelayMax cover the time accepted packets waited for
	// the rate limiter (not the fixed delay or jitter), in nanoseconds.
	QueueDelaySum uint64
	QueueDelayMax uint64
	// Released counts packets a driver handed on; LateSum and LateMax (ns) say how
	// far after their departure times it did, which is the driver's precision.
	Released    uint64
	LateSum     uint64
	LateMax     uint64
	LateOver1ms uint64 // releases more than a millisecond late
}

// MeanLate is the average lateness of the driver's releases.
func (s Stats) MeanLate() time.Duration {
	if s.Released == 0 {
		return 0
	}
	return time.Duration(s.LateSum / s.Released)
}

// Dropped is the sum of all drop counters.
func (s Stats) Dropped() uint64 {
	return s.DropOutage + s.DropLoss + s.DropQueue + s.DropOverflow
}

// MeanQueueDelay is the average wait in the rate limiter's queue.
func (s Stats) MeanQueueDelay() time.Duration {
	n := s.In - s.DropOutage - s.DropLoss - s.DropQueue
	if n == 0 {
		return 0
	}
	return time.Duration(s.QueueDelaySum / n)
}

type counters struct {
	in, out, dropOutage, dropLoss, dropQueue, dropOverflow, dup atomic.Uint64
	bytesIn, bytesOut, qSum, qMax                               atomic.Uint64
	released, lateSum, lateMax, late1ms                         atomic.Uint64
}

func storeMax(a *atomic.Uint64, v uint64) {
	for {
		m := a.Load()
		if v <= m || a.CompareAndSwap(m, v) {
			return
		}
	}
}

// Link is the decision core of one direction of an emulated link. It holds no
// clock: callers pass each packet's arrival time, so tests drive it with a fake
// clock and drivers with mono.Now. Decide must not be called concurrently; Stats
// may be called from any goroutine.
type Link struct {
	cfg   Config
	start int64
	seed  uint64
	rng   *rand.Rand

	geBad    bool
	busy     int64 // when the rate limiter finishes serialising its backlog
	lastDep  int64 // latest departure handed out, for order keeping
	rateNsPB float64
	qTime    int64
	qBytes   int64

	c counters
}

// New returns a link that applies cfg to packets, with outage windows counted
// from start (nanoseconds on the caller's clock).
func New(cfg Config, start int64) (*Link, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.GE != nil {
		g := *cfg.GE
		cfg.GE = &g
	}
	cfg.Outages = append([]Outage(nil), cfg.Outages...)
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64() | 1
	}
	l := &Link{cfg: cfg, start: start, seed: seed, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	if cfg.Rate > 0 {
		l.rateNsPB = 8e9 / float64(cfg.Rate)
		l.qTime = int64(cfg.QueueTime)
		l.qBytes = int64(cfg.QueueBytes)
		if l.qTime == 0 && l.qBytes == 0 {
			l.qTime = int64(DefaultQueueTime)
		}
	}
	return l, nil
}

// Config returns the configuration the link applies.
func (l *Link) Config() Config { return l.cfg }

// Seed returns the seed in use, which reproduces the link's random choices.
func (l *Link) Seed() uint64 { return l.seed }

// Start returns the instant outages are counted from.
func (l *Link) Start() int64 { return l.start }

// Decide handles one packet of size bytes arriving at now. It returns the drop
// cause, or Delivered and the departure times in deps (n is 1, or 2 when the
// packet is duplicated). Departure times are never earlier than now.
func (l *Link) Decide(now int64, size int) (deps [2]int64, n int, cause Cause) {
	if size < 0 {
		size = 0
	}
	l.c.in.Add(1)
	l.c.bytesIn.Add(uint64(size))
	if cause = l.lose(now); cause != Delivered {
		l.count(cause)
		return deps, 0, cause
	}
	t := now
	var wait int64
	if l.rateNsPB > 0 {
		if l.busy < now {
			l.busy = now
		}
		wait = l.busy - now
		if (l.qTime > 0 && wait > l.qTime) ||
			(l.qBytes > 0 && int64(float64(wait)/l.rateNsPB)+int64(size) > l.qBytes) {
			l.count(DropQueue)
			return deps, 0, DropQueue
		}
		l.busy += int64(float64(size) * l.rateNsPB)
		t = l.busy
		l.c.qSum.Add(uint64(wait))
		storeMax(&l.c.qMax, uint64(wait))
	}
	deps[0] = l.depart(t)
	n = 1
	if l.cfg.Dup > 0 && l.rng.Float64() < l.cfg.Dup {
		deps[1] = l.depart(t)
		n = 2
		l.c.dup.Add(1)
	}
	l.c.out.Add(uint64(n))
	l.c.bytesOut.Add(uint64(n * size))
	return deps, n, Delivered
}

// depart adds delay and jitter to t, which is when the packet leaves the rate
// limiter.
func (l *Link) depart(t int64) int64 {
	d := int64(l.cfg.Delay)
	if j := int64(l.cfg.Jitter); j > 0 {
		d += l.rng.Int64N(2*j+1) - j
		if d < 0 {
			d = 0
		}
	}
	dep := t + d
	if !l.cfg.Reorder {
		if dep < l.lastDep {
			dep = l.lastDep
		}
		l.lastDep = dep
	}
	return dep
}

func (l *Link) lose(now int64) Cause {
	rel := now - l.start
	for _, o := range l.cfg.Outages {
		if rel >= int64(o.Start) && rel < int64(o.End) {
			return DropOutage
		}
	}
	if g := l.cfg.GE; g != nil {
		// The state moves once per packet, then the packet meets the new state's
		// loss probability; this is netem's order as well.
		if l.geBad {
			if l.rng.Float64() < g.R {
				l.geBad = false
			}
		} else if l.rng.Float64() < g.P {
			l.geBad = true
		}
		p := g.LossGood
		if l.geBad {
			p = g.LossBad
		}
		if p > 0 && l.rng.Float64() < p {
			return DropLoss
		}
		return Delivered
	}
	loss := l.cfg.Loss
	for _, s := range l.cfg.LossSteps {
		if rel >= int64(s.Start) && rel < int64(s.End) {
			loss = s.Loss
		}
	}
	if loss > 0 && l.rng.Float64() < loss {
		return DropLoss
	}
	return Delivered
}

func (l *Link) count(c Cause) {
	switch c {
	case DropOutage:
		l.c.dropOutage.Add(1)
	case DropLoss:
		l.c.dropLoss.Add(1)
	case DropQueue:
		l.c.dropQueue.Add(1)
	case DropOverflow:
		l.c.dropOverflow.Add(1)
	}
}

// CountOverflow records a packet that a driver dropped after Decide had accepted
// it, because the driver's own bounded buffers were full.
func (l *Link) CountOverflow() {
	l.c.dropOverflow.Add(1)
}

// CountReleased records that a driver released a packet late ns after its
// departure time.
func (l *Link) CountReleased(late int64) {
	if late < 0 {
		late = 0
	}
	l.c.released.Add(1)
	l.c.lateSum.Add(uint64(late))
	storeMax(&l.c.lateMax, uint64(late))
	if late > int64(time.Millisecond) {
		l.c.late1ms.Add(1)
	}
}

// Stats returns a snapshot of the counters.
func (l *Link) Stats() Stats {
	return Stats{
		In: l.c.in.Load(), Out: l.c.out.Load(),
		DropOutage: l.c.dropOutage.Load(), DropLoss: l.c.dropLoss.Load(),
		DropQueue: l.c.dropQueue.Load(), DropOverflow: l.c.dropOverflow.Load(),
		Duplicated: l.c.dup.Load(), BytesIn: l.c.bytesIn.Load(), BytesOut: l.c.bytesOut.Load(),
		QueueDelaySum: l.c.qSum.Load(), QueueDelayMax: l.c.qMax.Load(),
		Released: l.c.released.Load(), LateSum: l.c.lateSum.Load(), LateMax: l.c.lateMax.Load(),
		LateOver1ms: l.c.late1ms.Load(),
	}
}
