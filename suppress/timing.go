package suppress

import (
	"math"
	"time"
)

// TimingConfig tunes a Timing estimator. Zero fields take the defaults given in
// DefaultTimingConfig.
type TimingConfig struct {
	// MinPeriod and MaxPeriod bound the packet periods the estimator will lock
	// to. Inter-arrival gaps shorter than MinPeriod are treated as bursts, not
	// as a rate.
	MinPeriod time.Duration `toml:"min_period"`
	MaxPeriod time.Duration `toml:"max_period"`

	// Acquire is the number of inter-arrival intervals collected before the
	// first lock attempt (at most 15).
	Acquire int `toml:"acquire"`

	// Alpha and Beta are the steady-state loop gains for phase and period. The
	// loop starts with the least-squares gains of a growing window and narrows
	// to these, so lock is fast and the locked estimate is smooth.
	Alpha float64 `toml:"alpha"`
	Beta  float64 `toml:"beta"`

	// UnlockFraction is the smoothed share of anomalous packets (off the grid
	// by more than a quarter period, or a second packet in one tick) above
	// which the loop declares the lock lost and re-acquires. This is how a rate
	// change is noticed.
	UnlockFraction float64 `toml:"unlock_fraction"`

	// MaxGap is the silence after which the grid is no longer trusted: Next
	// reports !ok and the next packet starts a new acquisition.
	MaxGap time.Duration `toml:"max_gap"`

	// Tolerance is the accuracy a lock must reach before Next gives
	// predictions: the estimated 99th percentile of |prediction error| (see
	// Uncertainty) must be within it. A cutoff window placed on a worse guess
	// would hold bulk back at the wrong time. The lock is kept until the
	// estimate exceeds twice the tolerance, so it does not blink.
	Tolerance time.Duration `toml:"tolerance"`
}

// DefaultTimingConfig returns the defaults: periods 1 ms–1 s, first fit after 8
// intervals, gains 0.02 and α²/(2−α) (critically damped), unlock at 35%
// anomalous packets, 1 s maximum gap, 1 ms tolerance.
func DefaultTimingConfig() TimingConfig {
	const a = 0.02
	return TimingConfig{
		MinPeriod:      time.Millisecond,
		MaxPeriod:      time.Second,
		Acquire:        8,
		Alpha:          a,
		Beta:           a * a / (2 - a),
		UnlockFraction: 0.35,
		MaxGap:         time.Second,
		Tolerance:      time.Millisecond,
	}
}

func (c *TimingConfig) fill() {
	d := DefaultTimingConfig()
	if c.MinPeriod <= 0 {
		c.MinPeriod = d.MinPeriod
	}
	if c.MaxPeriod <= 0 {
		c.MaxPeriod = d.MaxPeriod
	}
	if c.Acquire <= 0 {
		c.Acquire = d.Acquire
	}
	if c.Acquire > acqCap-1 {
		c.Acquire = acqCap - 1
	}
	if c.Acquire < 3 {
		c.Acquire = 3
	}
	if c.Alpha <= 0 || c.Alpha >= 1 {
		c.Alpha = d.Alpha
	}
	if c.Beta <= 0 || c.Beta >= 1 {
		c.Beta = c.Alpha * c.Alpha / (2 - c.Alpha)
	}
	if c.UnlockFraction <= 0 || c.UnlockFraction >= 1 {
		c.UnlockFraction = d.UnlockFraction
	}
	if c.MaxGap <= 0 {
		c.MaxGap = d.MaxGap
	}
	if c.Tolerance <= 0 {
		c.Tolerance = d.Tolerance
	}
}

// acqCap is the size of the acquisition buffer (timestamps).
const acqCap = 16

// subWindow is the number of accepted packets over which the loop checks that it
// is not locked to a multiple of the true rate (see Timing.track).
const subWindow = 32

// Timing learns the packet period and phase of one LC session and predicts when
// the next packet is due. It is a second-order phase-locked loop on a grid of
// ticks: each packet is assigned to the nearest tick, the residual corrects the
// phase and the period, and missing packets are simply ticks without a packet.
//
// Timing is not safe for concurrent use; it belongs to the goroutine that owns the
// session. Observe and Next do not allocate.
type Timing struct {
	cfg TimingConfig

	// Acquisition: the most recent timestamps, oldest first.
	acq  [acqCap]int64
	acqN int

	locked    bool    // tracking a grid
	confirmed bool    // the grid survived probation
	accurate  bool    // Uncertainty is within Tolerance (with hysteresis)
	probe     int     // packets tracked during probation
	probeBad  int     // anomalous packets during probation
	anchor    int64   // estimated time of the tick of the last accepted packet
	tick      int64   // the tick the last observed packet belongs to (anchor or later)
	period    float64 // ns
	n         int     // samples behind the estimate, for the gain schedule
	last      int64   // timestamp of the last observed packet
	seen      bool
	bad       float64 // smoothed share of anomalous packets
	dev       float64 // smoothed |residual|, ns

	minStep  float64 // smallest tick step in the current subharmonic window
	subCount int
}

// NewTiming returns an unlocked estimator.
func NewTiming(cfg TimingConfig) *Timing {
	cfg.fill()
	return &Timing{cfg: cfg}
}

// Locked reports whether the estimator has a period and phase it trusts: the
// grid survived probation and its predictions are expected to be within
// TimingConfig.Tolerance.
func (t *Timing) Locked() bool { return t.locked && t.confirmed && t.accurate }

// Uncertainty estimates the 99th percentile of |Next − true due time| from the
// spread of the residuals and the number of packets behind the estimate (the
// prediction variance of a least-squares line, (4n+2)/(n(n−1)) σ², with n
// capped at the loop's steady-state memory). A consumer can widen the cutoff
// window by it. It is 0 while no grid is tracked.
func (t *Timing) Uncertainty() time.Duration {
	if !t.locked {
		return 0
	}
	return time.Duration(t.uncertainty())
}

func (t *Timing) uncertainty() float64 {
	n := min(float64(t.n), 4/t.cfg.Alpha)
	if n < 2 {
		return math.Inf(1)
	}
	// dev is a mean absolute residual: σ ≈ 1.25·dev for Gaussian noise; 2.58σ
	// is the two-sided 99th percentile.
	sigma := 1.2533 * t.dev
	return 2.576 * sigma * math.Sqrt((4*n+2)/(n*(n-1)))
}

// Period returns the estimated packet period, or 0 while unlocked.
func (t *Timing) Period() time.Duration {
	if !t.Locked() {
		return 0
	}
	return time.Duration(math.Round(t.period))
}

// Grid returns the time of the last tick that carried a packet and the period,
// so a consumer that cannot call Next per packet (an eBPF program) can
// extrapolate the following ticks itself: tick k = anchor + k·period.
func (t *Timing) Grid() (anchor int64, period time.Duration, ok bool) {
	if !t.Locked() {
		return 0, 0, false
	}
	return t.anchor, time.Duration(math.Round(t.period)), true
}

// Reset forgets everything learned, as for a new session.
func (t *Timing) Reset() {
	cfg := t.cfg
	*t = Timing{cfg: cfg}
}

// Observe records that a packet of the session was seen at ts (monotonic ns).
// Timestamps must not go backwards; an earlier one is ignored. Packets sharing a
// timestamp (stamped once per receive batch) count as a burst: only the first
// moves the loop.
func (t *Timing) Observe(ts int64) {
	if t.seen && ts < t.last {
		return
	}
	if t.seen && ts-t.last > int64(t.cfg.MaxGap) {
		// After a long silence the sender may have restarted with another phase
		// or rate; learning afresh is cheaper than being wrong.
		t.unlock()
	}
	t.seen = true
	t.last = ts
	if !t.locked {
		t.acquire(ts)
		return
	}
	t.track(ts)
}

// Next returns the time the next packet is due: the first tick after the last
// packet's tick that is not more than half a period in the past. A packet less
// than half a period late is still the one expected (its cutoff window may still
// be open); later than that it is taken as lost and the following tick is due.
// ok is false until locked and after MaxGap without packets.
func (t *Timing) Next(now int64) (tNext int64, ok bool) {
	if !t.Locked() || now-t.last > int64(t.cfg.MaxGap) {
		return 0, false
	}
	p := t.period
	k := 1.0
	if x := math.Ceil(float64(now-t.tick)/p - 0.5); x > k {
		k = x
	}
	return t.tick + int64(math.Round(k*p)), true
}

func (t *Timing) unlock() {
	t.locked = false
	t.acqN = 0
	t.n = 0
}

func (t *Timing) acquire(ts int64) {
	if t.acqN == acqCap {
		copy(t.acq[:], t.acq[1:])
		t.acqN--
	}
	t.acq[t.acqN] = ts
	t.acqN++
	if t.acqN < t.cfg.Acquire+1 {
		return
	}
	t.tryLock()
}

// tryLock fits a grid to the acquisition buffer: the median interval (ignoring
// burst gaps) gives a rough period, which numbers the packets' ticks, and a
// least-squares line through (tick, time) gives period and phase.
func (t *Timing) tryLock() {
	minP, maxP := int64(t.cfg.MinPeriod), int64(t.cfg.MaxPeriod)
	var iv [acqCap]int64
	m := 0
	for i := 1; i < t.acqN; i++ {
		if d := t.acq[i] - t.acq[i-1]; d >= minP {
			iv[m] = d
			m++
		}
	}
	if m < t.cfg.Acquire/2+1 {
		return
	}
	// Insertion sort: at most 15 values, and no allocation.
	for i := 1; i < m; i++ {
		for j := i; j > 0 && iv[j] < iv[j-1]; j-- {
			iv[j], iv[j-1] = iv[j-1], iv[j]
		}
	}
	med := float64(iv[m/2])
	if m%2 == 0 {
		med = float64(iv[m/2-1]+iv[m/2]) / 2
	}
	if med < float64(minP) || med > float64(maxP) {
		return
	}

	// Number the packets' ticks, fit a line, and check that the stream is
	// regular. Two numberings are tried: consecutive ticks (the usual case, and
	// immune to one early packet followed by a late one looking like a missing
	// tick), then interval rounding (packets already missing), each refined by
	// renumbering against its own fit.
	var ks [acqCap]float64
	base := t.acq[0]
	for hyp := 0; hyp < 2; hyp++ {
		k := 0.0
		for i := 0; i < t.acqN; i++ {
			if i > 0 {
				d := float64(t.acq[i] - t.acq[i-1])
				switch {
				case d < float64(minP):
					// burst: same tick
				case hyp == 0:
					k++
				default:
					k += math.Max(1, math.Round(d/med))
				}
			}
			ks[i] = k
		}
		for iter := 0; iter < 3; iter++ {
			a, p, ok := fitGrid(t.acq[:t.acqN], ks[:t.acqN], base, minP, maxP)
			if !ok {
				break
			}
			if t.acceptGrid(a, p, ks[:t.acqN], base) {
				return
			}
			// Renumber against the fit; stop when nothing changes.
			changed := false
			for i := 0; i < t.acqN; i++ {
				nk := math.Round((float64(t.acq[i]-base) - a) / p)
				if nk != ks[i] {
					ks[i] = nk
					changed = true
				}
			}
			if !changed {
				break
			}
		}
	}
}

// fitGrid fits time = base + a + p·k by least squares.
func fitGrid(ts []int64, ks []float64, base, minP, maxP int64) (a, p float64, ok bool) {
	var sk, st, skk, skt float64
	for i, k := range ks {
		x := float64(ts[i] - base)
		sk += k
		st += x
		skk += k * k
		skt += k * x
	}
	nf := float64(len(ks))
	den := nf*skk - sk*sk
	if den <= 0 {
		return 0, 0, false
	}
	p = (nf*skt - sk*st) / den
	a = (st - p*sk) / nf
	return a, p, p >= float64(minP) && p <= float64(maxP)
}

// acceptGrid checks that the acquisition buffer is a regular stream on the grid
// (a, p) and, if so, locks to it: most packets sit within a quarter period of
// their tick, most intervals are near a whole number of periods, ticks increase,
// and at most half the ticks are empty.
func (t *Timing) acceptGrid(a, p float64, ks []float64, base int64) bool {
	n := len(ks)
	for i := 1; i < n; i++ {
		if ks[i] < ks[i-1] {
			return false
		}
	}
	if ks[n-1]-ks[0] > 2*float64(n-1) {
		return false
	}
	good := 0
	var dev float64
	for i, k := range ks {
		r := math.Abs(float64(t.acq[i]-base) - (a + p*k))
		dev += r
		if r <= p/4 {
			good++
		}
	}
	if 4*good < 3*n {
		return false
	}
	good = 0
	for i := 1; i < n; i++ {
		f := float64(t.acq[i]-t.acq[i-1]) / p
		if math.Abs(f-math.Round(f)) <= 0.25 {
			good++
		}
	}
	if 10*good < 7*(n-1) {
		return false
	}
	t.locked = true
	t.confirmed = false
	t.accurate = false
	t.probe, t.probeBad = 0, 0
	t.period = p
	t.anchor = base + int64(math.Round(a+p*ks[n-1]))
	t.tick = t.anchor
	t.n = n
	t.bad = 0
	t.dev = dev / float64(n)
	t.minStep = math.Inf(1)
	t.subCount = 0
	return true
}

func (t *Timing) track(ts int64) {
	p := t.period
	dt := float64(ts - t.anchor)
	k := math.Round(dt / p)
	e := dt - k*p
	// Anomalous: a second packet in the tick of the last one (a burst, a
	// duplicate, or a faster sender), or a packet far off the grid (an outlier,
	// or another rate). Anomalies are counted: many of them mean the lock is
	// lost.
	bad := k < 1 || math.Abs(e) > p/4
	if t.note(bad) || k < 1 {
		return
	}
	// Far-off packets still correct the loop, but clipped: skipping them would
	// bias a loop whose phase is off (right after lock) against the very
	// packets that show it, while clipping bounds what one late packet can do.
	gate := math.Max(3*t.dev, p/32)
	ec := math.Max(-gate, math.Min(gate, e))

	alpha, beta := t.gains()
	t.anchor += int64(math.Round(k*p + alpha*ec))
	t.tick = t.anchor
	t.period += beta * ec / k
	t.dev += (math.Abs(e) - t.dev) / 16
	t.n++
	u := t.uncertainty()
	if u <= float64(t.cfg.Tolerance) {
		t.accurate = true
	} else if u > 2*float64(t.cfg.Tolerance) {
		t.accurate = false
	}

	// A stream that lost exactly every other packet, or halved its rate,
	// still fits the old grid with every second tick empty. If no packet in a
	// whole window landed on consecutive ticks, the true period is the
	// smallest step seen.
	if k < t.minStep {
		t.minStep = k
	}
	t.subCount++
	if t.subCount == subWindow {
		if t.minStep >= 2 {
			t.period *= t.minStep
			t.n = t.cfg.Acquire + 1 // trust the new period less for a while
		}
		t.minStep = math.Inf(1)
		t.subCount = 0
	}
}

// Probation: a fresh lock is confirmed after probeLen tracked packets with at
// most probeMaxBad anomalies. An acquisition window can look regular by chance
// (random arrivals); probation keeps such a lock from ever giving predictions.
const (
	probeLen    = 8
	probeMaxBad = 2
)

// note updates the anomalous-packet share and the probation, and reports
// whether the lock was lost (in which case the packet has started a new
// acquisition).
func (t *Timing) note(bad bool) bool {
	x := 0.0
	if bad {
		x = 1
	}
	t.bad += (x - t.bad) / 16
	lost := t.bad > t.cfg.UnlockFraction
	if !t.confirmed {
		t.probe++
		if bad {
			t.probeBad++
		}
		if t.probeBad > probeMaxBad {
			lost = true
		} else if t.probe >= probeLen {
			t.confirmed = true
		}
	}
	if lost {
		t.unlock()
		t.acquire(t.last)
		return true
	}
	return false
}

// gains follows the least-squares gains of an α-β filter over a growing window
// (α = 2(2n−1)/(n(n+1)), β = 6/(n(n+1))) until they fall to the steady-state
// values: fast convergence right after lock, smooth tracking later.
func (t *Timing) gains() (alpha, beta float64) {
	n := float64(t.n + 1)
	alpha = 2 * (2*n - 1) / (n * (n + 1))
	beta = 6 / (n * (n + 1))
	return math.Max(alpha, t.cfg.Alpha), math.Max(beta, t.cfg.Beta)
}
