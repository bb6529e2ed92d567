package suppress

import (
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strings"
	"sync"
	"time"
)

// Sample is one measurement of one uplink in one direction, taken periodically
// (every 100 ms or so) by the router.
type Sample struct {
	Uplink string
	Dir    Direction
	Now    int64 // monotonic ns
	// LCPresent holds the app types whose LC packets crossed this uplink
	// since the previous sample.
	LCPresent map[string]bool
	// BytesPerSec is the rate of all traffic in this direction, measured over
	// the sample interval.
	BytesPerSec uint64
	// RTT is the latest round-trip time over this uplink to the proxy; 0 when
	// there has been no measurement since the previous sample. It crosses the
	// queues of both directions, so it is only the fallback for QueueDelay:
	// it is ignored in a sample with HasOWD.
	RTT time.Duration
	// HasOWD says QueueDelay is a fresh measurement of this direction alone.
	HasOWD bool
	// QueueDelay is this direction's one-way delay over its windowed minimum:
	// the time packets now spend in queues on the way. Judged against
	// Detect.OWDInflation, it takes the place of RTT inflation, so an upload
	// queue raises the Up level only.
	QueueDelay time.Duration
	// HasQuality says OWD, Jitter and Loss carry a fresh quality report (the
	// proxy's for Up, the router's own for Down).
	HasQuality bool
	// OWD is this direction's one-way delay; only its trend is used, so a
	// constant clock offset between the two ends does not matter.
	OWD    time.Duration
	Jitter time.Duration
	Loss   float64 // fraction of packets lost, 0–1
}

// Event is a level change on one uplink and direction.
type Event struct {
	At       int64 // monotonic ns
	Uplink   string
	Dir      Direction
	From, To Level
	// Reason names the detector values that made the change, e.g. "rtt
	// +38.0ms over baseline 12.0ms (cut threshold 40ms)".
	Reason string
}

func (e Event) String() string {
	return fmt.Sprintf("%s/%s %s -> %s: %s", e.Uplink, e.Dir, e.From, e.To, e.Reason)
}

// eventLog is how many recent events the controller keeps for Events.
const eventLog = 64

// Controller runs the detectors of every uplink and direction and decides the
// enforcement level and Policy of each. It is safe for concurrent use: samples
// usually come from one goroutine, while policies and events are read by others.
type Controller struct {
	mu     sync.Mutex
	cfg    Config
	links  map[linkKey]*linkState
	events [eventLog]Event
	evNext int
	evN    int
}

type linkKey struct {
	uplink string
	dir    Direction
}

// detector indices, in the order reasons list them.
const (
	detUtil = iota
	detRTT
	detQueue
	detOWD
	detJitter
	detLoss
	numDet
)

type linkState struct {
	up  *UplinkConfig
	dir Direction

	level Level
	since int64 // when level was entered

	lastLC map[string]int64 // app type → time of its last LC packet
	apps   appSet

	det      [numDet]levelDetector
	baseline windowMin // RTT baseline, ms
	baseMs   float64
	rttMs    float64
	owd      slopeWindow
	// utilRef is what utilisation was last judged against (bits/s) and
	// capped whether that was the bulk cap in force rather than the line
	// rate; the reasons show it.
	utilRef uint64
	capped  bool

	raiseHist  uint8 // bit i: the detectors asked for more i samples ago
	lowering   bool
	lowerSince int64
	dropSteps  int

	policy Policy
}

// NewController validates cfg and returns a controller with every uplink and
// direction at Off.
func NewController(cfg Config) (*Controller, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Controller{cfg: cfg, links: make(map[linkKey]*linkState)}
	for i := range c.cfg.Uplinks {
		u := &c.cfg.Uplinks[i]
		for _, d := range []Direction{Up, Down} {
			c.links[linkKey{u.Name, d}] = &linkState{
				up:       u,
				dir:      d,
				lastLC:   make(map[string]int64),
				baseline: newWindowMin(cfg.Detect.RTTBaselineWindow),
				owd:      slopeWindow{window: int64(cfg.Detect.OWDWindow)},
			}
		}
	}
	return c, nil
}

// Update feeds one sample and returns the uplink and direction's Policy and, if
// the level changed, the Event. A direction whose enforcement is off gets the Off
// policy while its level (and events) still follow the detectors.
func (c *Controller) Update(s Sample) (Policy, *Event, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.links[linkKey{s.Uplink, s.Dir}]
	if !ok {
		return Policy{}, nil, fmt.Errorf("suppress: unknown uplink %q", s.Uplink)
	}
	ev := st.update(&c.cfg, s)
	if ev != nil {
		c.events[c.evNext] = *ev
		c.evNext = (c.evNext + 1) % eventLog
		c.evN = min(c.evN+1, eventLog)
	}
	return st.policy, ev, nil
}

// Policy returns the current policy of an uplink and direction.
func (c *Controller) Policy(uplink string, d Direction) (Policy, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.links[linkKey{uplink, d}]
	if !ok {
		return Policy{}, false
	}
	return st.policy, true
}

// Level returns the current level of an uplink and direction (Off if unknown).
func (c *Controller) Level(uplink string, d Direction) Level {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st, ok := c.links[linkKey{uplink, d}]; ok {
		return st.level
	}
	return Off
}

// Events appends the recent events (at most 64), oldest first, to dst.
func (c *Controller) Events(dst []Event) []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	start := (c.evNext - c.evN + eventLog) % eventLog
	for i := 0; i < c.evN; i++ {
		dst = append(dst, c.events[(start+i)%eventLog])
	}
	return dst
}

func (st *linkState) update(cfg *Config, s Sample) *Event {
	now := s.Now
	dc := &cfg.Detect

	// LC presence per app type, with each app's linger.
	for app, present := range s.LCPresent {
		if present {
			st.lastLC[app] = now
		}
	}
	st.apps = appSet{}
	for app, last := range st.lastLC {
		lim, ok := cfg.Apps[app]
		if !ok {
			lim = cfg.Apps["default"]
		}
		if now-last > int64(lim.Linger) {
			delete(st.lastLC, app)
			continue
		}
		st.apps.add(lim)
	}

	rate := st.up.Rate(st.dir)
	st.utilRef, st.capped = utilReference(rate, st.dir, &st.policy, &st.apps)
	if st.utilRef > 0 {
		st.det[detUtil].update(float64(s.BytesPerSec)*8/float64(st.utilRef), &dc.Utilisation)
	}
	switch {
	case s.HasOWD:
		// This direction's own queue. Of the two delay detectors only the
		// one fed last asks for a level: a stale RTT verdict would hold the
		// level for a queue in the other direction.
		st.det[detQueue].update(ms(s.QueueDelay), &dc.OWDInflation)
		st.det[detRTT] = levelDetector{}
	case s.RTT > 0:
		st.rttMs = ms(s.RTT)
		st.baseline.add(now, st.rttMs)
		st.baseMs, _ = st.baseline.min(now)
		st.det[detRTT].update(st.rttMs-st.baseMs, &dc.RTTInflation)
		st.det[detQueue] = levelDetector{}
	}
	if s.HasQuality {
		st.owd.add(now, ms(s.OWD))
		if slope, ok := st.owd.slope(now); ok {
			st.det[detOWD].update(slope, &dc.OWDTrend)
		}
		st.det[detJitter].update(ms(s.Jitter), &dc.Jitter)
		st.det[detLoss].update(s.Loss, &dc.Loss)
	}

	detLevel := Off
	for i := range st.det {
		detLevel = max(detLevel, st.det[i].level())
	}
	target := Off
	if st.apps.present {
		target = min(max(Watch, detLevel), st.apps.maxLevel)
	}

	ev := st.transition(cfg, now, target, detLevel)

	// At Cut, the drop fraction grows while the Cut condition persists and
	// shrinks again while the level is only being held.
	if st.level == Cut && detLevel == Cut {
		st.dropSteps = min(st.dropSteps+1, 100)
	} else if st.dropSteps > 0 {
		st.dropSteps--
	}
	if st.level != Cut {
		st.dropSteps = 0
	}
	st.policy = Policy{}
	if st.up.Enforces(st.dir) {
		st.policy = buildPolicy(&cfg.Levels, st.level, rate, st.dir, &st.apps, max(st.dropSteps-1, 0))
	}
	return ev
}

// utilReference returns what utilisation is judged against, in bits/s: the line
// rate, or, while the policy in force (the one the sample was measured under)
// caps bulk, the capacity the policy leaves to traffic: the bulk cap plus the
// apps' reserve that the cap was computed without (bounded as buildPolicy bounds
// it). The headroom above that is kept empty on purpose; counting it would make
// a link full up to its cap look idle (utilisation at shape_share, below the
// lower threshold), so the level would drop, the queue refill and the level
// return, over and over. LC packets of games are not in the reference, so a
// link full up to its cap reads a little over 100%; once bulk stops, the rate
// falls and the level lowers as it would without a cap.
func utilReference(rate uint64, d Direction, p *Policy, apps *appSet) (ref uint64, capped bool) {
	if p.BulkRateBytesPerSec == 0 || rate == 0 {
		return rate, false
	}
	return min(p.BulkRateBytesPerSec*8+min(apps.reserve(d), rate/2), rate), true
}

// transition applies the hysteresis: raising needs the detectors to ask for more
// in RaiseSamples of the last RaiseWindow samples (LC presence alone raises Off
// to Watch at once); lowering goes one step at a time, each after the detectors
// asked for less for HoldDown without a break and the level lasted MinHold; the
// end of LC traffic (after its linger) goes to Off at once.
func (st *linkState) transition(cfg *Config, now int64, target, detLevel Level) *Event {
	lc := &cfg.Levels
	from := st.level
	up := target > st.level
	st.raiseHist <<= 1
	if up {
		st.raiseHist |= 1
	}
	switch {
	case up:
		st.lowering = false
		mask := uint(1)<<lc.RaiseWindow - 1
		next := st.level
		if st.level == Off {
			next = Watch
		}
		if bits.OnesCount(uint(st.raiseHist)&mask) >= lc.RaiseSamples {
			next = target
		}
		if next == st.level {
			return nil
		}
		st.set(now, next)
		if next == target {
			// Samples that asked for this level must not count towards the
			// next one; a partial raise (LC presence alone) keeps them.
			st.raiseHist = 0
		}
		return &Event{At: now, Uplink: st.up.Name, Dir: st.dir, From: from, To: next, Reason: st.raiseReason(cfg, next)}
	case target < st.level && target == Off:
		st.set(now, Off)
		st.raiseHist = 0
		return &Event{At: now, Uplink: st.up.Name, Dir: st.dir, From: from, To: Off, Reason: "no LC traffic (linger expired)"}
	case target < st.level:
		if !st.lowering {
			st.lowering, st.lowerSince = true, now
		}
		if now-st.lowerSince < int64(lc.HoldDown) || now-st.since < int64(lc.MinHold) {
			return nil
		}
		held := time.Duration(now - st.lowerSince)
		next := st.level - 1
		st.set(now, next)
		st.raiseHist = 0
		st.lowering, st.lowerSince = true, now // the next step needs its own hold
		return &Event{At: now, Uplink: st.up.Name, Dir: st.dir, From: from, To: next, Reason: st.lowerReason(cfg, from, held)}
	default:
		st.lowering = false
		return nil
	}
}

func (st *linkState) set(now int64, l Level) {
	st.level, st.since = l, now
}

// detText describes detector i's value against its threshold for level l;
// lower selects the lower threshold.
func (st *linkState) detText(cfg *Config, i int, l Level, lower bool) string {
	d := &st.det[i]
	if !d.valid {
		return ""
	}
	var ths *Thresholds
	switch i {
	case detUtil:
		ths = &cfg.Detect.Utilisation
	case detRTT:
		ths = &cfg.Detect.RTTInflation
	case detQueue:
		ths = &cfg.Detect.OWDInflation
	case detOWD:
		ths = &cfg.Detect.OWDTrend
	case detJitter:
		ths = &cfg.Detect.Jitter
	case detLoss:
		ths = &cfg.Detect.Loss
	}
	th := ths.Shape
	if l == Cut {
		th = ths.Cut
	}
	if th.Raise <= 0 {
		return ""
	}
	// Round for display so a tiny negative does not print as "-0.0".
	v, thv, which := math.Round(d.value*1e4)/1e4+0, th.Raise, "threshold"
	if lower {
		thv, which = th.Lower, "lower threshold"
	}
	name := l.String() + " " + which
	switch i {
	case detUtil:
		of := bitRate(st.utilRef)
		if st.capped {
			of = "the " + of + " bulk cap"
			if st.apps.reserve(st.dir) > 0 {
				of += " and reserve"
			}
		}
		return fmt.Sprintf("%s utilisation %.0f%% of %s (%s %.0f%%)", st.dir, 100*v, of, name, 100*thv)
	case detRTT:
		return fmt.Sprintf("rtt %+.1fms over baseline %.1fms (%s %gms)", v, st.baseMs, name, thv)
	case detQueue:
		return fmt.Sprintf("%s queueing delay %.1fms over the minimum (%s %gms)", st.dir, v, name, thv)
	case detOWD:
		return fmt.Sprintf("%s owd trend %+.1fms/s (%s %gms/s)", st.dir, v, name, thv)
	case detJitter:
		return fmt.Sprintf("%s jitter %.1fms (%s %gms)", st.dir, v, name, thv)
	default:
		return fmt.Sprintf("loss %.2f%% (%s %g%%)", 100*v, name, 100*thv)
	}
}

func (st *linkState) raiseReason(cfg *Config, to Level) string {
	var parts []string
	if to == Watch {
		parts = append(parts, "LC traffic present ("+st.appNames()+")")
	}
	for i := range st.det {
		if to > Watch && st.det[i].level() >= to {
			if s := st.detText(cfg, i, to, false); s != "" {
				parts = append(parts, s)
			}
		}
	}
	if to < Cut && st.apps.maxLevel == to && to > Watch {
		parts = append(parts, fmt.Sprintf("capped at %s by app limits", to))
	}
	return strings.Join(parts, "; ")
}

func (st *linkState) lowerReason(cfg *Config, from Level, held time.Duration) string {
	parts := []string{fmt.Sprintf("nothing asked for %s for %v", from, held.Round(time.Millisecond))}
	for i := range st.det {
		if s := st.detText(cfg, i, from, true); s != "" {
			parts = append(parts, s)
		}
	}
	return strings.Join(parts, "; ")
}

func (st *linkState) appNames() string {
	names := make([]string, 0, len(st.lastLC))
	for a := range st.lastLC {
		names = append(names, a)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// bitRate prints a rate with 4 significant digits: a bulk cap, unlike a
// configured rate, is seldom round.
func bitRate(b uint64) string {
	switch {
	case b >= 1e9:
		return fmt.Sprintf("%.4gGbit/s", float64(b)/1e9)
	case b >= 1e6:
		return fmt.Sprintf("%.4gMbit/s", float64(b)/1e6)
	case b >= 1e3:
		return fmt.Sprintf("%.4gkbit/s", float64(b)/1e3)
	}
	return fmt.Sprintf("%dbit/s", b)
}
