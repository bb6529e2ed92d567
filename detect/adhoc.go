package detect

import "time"

// AdhocConfig sets the timing test. The zero value of a field means its
// default (see DefaultAdhocConfig).
type AdhocConfig struct {
	// MaxSize is the packet size at or below which a packet counts as small;
	// a flow qualifies when at most half of its packets are larger (that is,
	// its median size is at most MaxSize) over a window.
	MaxSize int
	// MaxGap is the longest gap between packets of a steady flow. A longer
	// gap restarts the window; games and calls send at least every 50 ms.
	MaxGap time.Duration
	// MaxRate is the highest rate, bits/s, over a window.
	MaxRate float64
	// MinPackets and Window: a window closes once it spans Window and holds
	// MinPackets; the verdict is taken then. At 30 pps a 1 s window decides
	// within about 1 s, at 128 pps after the same second.
	MinPackets int
	Window     time.Duration
	// Hold keeps an LC verdict over pauses (level loads, muted calls): only a
	// gap longer than Hold, or a window that fails, clears it.
	Hold time.Duration
}

// DefaultAdhocConfig returns the defaults.
func DefaultAdhocConfig() AdhocConfig {
	return AdhocConfig{
		MaxSize:    300,
		MaxGap:     150 * time.Millisecond,
		MaxRate:    200_000,
		MinPackets: 20,
		Window:     time.Second,
		Hold:       5 * time.Second,
	}
}

func (c AdhocConfig) withDefaults() AdhocConfig {
	d := DefaultAdhocConfig()
	if c.MaxSize > 0 {
		d.MaxSize = c.MaxSize
	}
	if c.MaxGap > 0 {
		d.MaxGap = c.MaxGap
	}
	if c.MaxRate > 0 {
		d.MaxRate = c.MaxRate
	}
	if c.MinPackets > 0 {
		d.MinPackets = c.MinPackets
	}
	if c.Window > 0 {
		d.Window = c.Window
	}
	if c.Hold > 0 {
		d.Hold = c.Hold
	}
	return d
}

// adhocState is the per-flow timing state: 40 bytes, no history. The median
// test needs no samples: median <= MaxSize exactly when no more than half of
// the packets are larger than MaxSize, so a counter suffices.
type adhocState struct {
	start, last int64 // window start, last packet (ns)
	bytes       int64 // bytes in the window after its first packet
	n, big      int32 // packets in the window, of which larger than MaxSize
	lc          bool
	pps         float32 // rate over the last closed window
}

// feed adds one packet and reports the verdict and whether it changed.
func (s *adhocState) feed(c *AdhocConfig, size int, now int64) (lc, changed bool) {
	if s.n > 0 {
		gap := now - s.last
		if s.lc && gap > int64(c.Hold) {
			s.lc, changed = false, true
		}
		if gap > int64(c.MaxGap) {
			s.n = 0
		}
	}
	s.last = now
	if s.n == 0 {
		s.start, s.bytes, s.big = now, 0, 0
	} else {
		s.bytes += int64(size)
	}
	s.n++
	if size > c.MaxSize {
		s.big++
	}
	span := now - s.start
	if span >= int64(c.Window) && int(s.n) >= c.MinPackets {
		sec := float64(span) / 1e9
		ok := 2*s.big <= s.n && float64(s.bytes)*8/sec <= c.MaxRate
		s.pps = float32(float64(s.n-1) / sec)
		if ok != s.lc {
			s.lc, changed = ok, true
		}
		// The next window starts at this packet, so windows abut.
		s.start, s.bytes, s.n, s.big = now, 0, 1, 0
		if size > c.MaxSize {
			s.big = 1
		}
	}
	return s.lc, changed
}

// Adhoc runs the timing test over a bounded table of flows. It is the
// standalone form of what Classifier does internally; not safe for concurrent
// use.
type Adhoc struct {
	cfg   AdhocConfig
	flows *lru[FiveTuple, adhocState]
}

// NewAdhoc returns a detector that tracks at most capacity flows, evicting the
// least recently seen.
func NewAdhoc(cfg AdhocConfig, capacity int, seed uint64) *Adhoc {
	return &Adhoc{cfg: cfg.withDefaults(), flows: newLRU[FiveTuple, adhocState](capacity, func(f FiveTuple) uint64 { return hashFlow(seed, f) })}
}

// Feed adds a packet of size bytes at now (monotonic ns) and returns the
// flow's verdict and whether this packet changed it.
func (a *Adhoc) Feed(flow FiveTuple, size int, now int64) (lc, changed bool) {
	s, _ := a.flows.put(flow)
	return s.feed(&a.cfg, size, now)
}

// Evicted returns how many flows were dropped to make room.
func (a *Adhoc) Evicted() uint64 { return a.flows.evicted }

// Len returns the number of tracked flows.
func (a *Adhoc) Len() int { return a.flows.len() }
