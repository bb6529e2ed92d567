// Package uplink is the sending side towards a far end over several uplinks.
// A Set (set.go) holds one Path per uplink (its socket, the far end's address
// on it, its health), sends the keepalive pings and takes their answers, and
// places each packet's copies or shards over the paths, moving them off the
// paths that look dead, a sendmmsg batch per socket. The router and the
// intermediate proxy both send through it.
//
// Health keeps the state of one path as seen by keepalive pings: whether it is
// up, its round-trip time (windowed minimum, smoothed value and variation), its
// ping loss and, when the peer stamps its pongs, the one-way delay of each
// direction. Health only keeps state; its caller (a Set) sends the pings and
// feeds the results.
// Three goroutines typically touch a Health: a timer that asks PingDue and records
// OnPingSent, a reader that records OnPong, and the send path that asks Up for every
// packet. The writers (a few calls per second) serialise on a mutex and publish what
// the readers need in atomics, so Up, PingDue and Stats never take a lock and never
// allocate.
//
// All times are int64 nanoseconds of one monotonic clock (pkg/mono in production, a
// fake clock in tests).
package uplink

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// HealthConfig tunes a Health. Zero fields take the defaults.
type HealthConfig struct {
	PingInterval time.Duration // default 100ms
	DownAfter    time.Duration // default 300ms: down when no pong arrived within this long while pings were outstanding
	MinRTTWindow time.Duration // default 10s: how long a minimum RTT sample is remembered
	// OWDWindow (default 30s) is how long a minimum one-way delay is
	// remembered. The queueing delay of a direction is measured against it,
	// so it must outlast a queue that stays full for a while (bufferbloat
	// before suppression acts), or the queue becomes the new minimum and
	// stops showing; and it must be short against the drift between the two
	// ends' clocks (NTP-disciplined monotonic clocks drift well under 10 ppm,
	// 0.3 ms in 30 s).
	OWDWindow time.Duration
	LossGain  float64 // default 1/16: EWMA gain of the loss estimate per ping
}

// Stats is a snapshot of a Health.
type Stats struct {
	Up            bool
	MinRTT        time.Duration // windowed minimum over MinRTTWindow
	SRTT          time.Duration // RFC 6298 smoothed RTT
	RTTVar        time.Duration // RFC 6298 RTT variation
	PingsSent     uint64
	PongsReceived uint64
	Loss          float64 // EWMA of unanswered pings, 0..1
	LastPong      int64   // arrival time of the last pong that counted for liveness; 0 = none
	DownEvents    uint64  // number of outages seen

	// One-way delays, from pongs that carry the peer's clock. The two clocks
	// are not synchronised, so the raw values hold an unknown constant offset
	// (+offset up, -offset down) and may be negative; only their changes mean
	// anything. UpQueue and DownQueue are the latest raw value over its own
	// minimum within OWDWindow: the queueing delay of that direction, with
	// the offset cancelled.
	OWDSamples uint64        // pongs that gave a one-way sample
	UpOWD      time.Duration // latest raw peerTime - sentAt
	DownOWD    time.Duration // latest raw now - peerTime
	UpQueue    time.Duration
	DownQueue  time.Duration
	// UpJitter and DownJitter are the RFC 3550 interarrival jitter of each
	// direction: the mean change of its one-way delay from one pong to the
	// next, smoothed with gain 1/16.
	UpJitter   time.Duration
	DownJitter time.Duration
}

// ringSize bounds the per-ping bookkeeping. A ping is judged (answered or lost)
// within DownAfter, so the ring only needs to cover DownAfter/PingInterval pings;
// 64 leaves room for short intervals. A ping pushed out unjudged counts as lost.
const ringSize = 64

type pingSlot struct {
	seq      uint32
	sentAt   int64
	used     bool
	answered bool
	judged   bool // counted in the loss estimate
}

// Health is the state of one uplink. Create it with NewHealth.
type Health struct {
	interval  int64
	downAfter int64
	minWin    int64
	owdWin    int64
	lossGain  float64

	// Published state, read without locks.
	lastPingAt   atomic.Int64
	pendingSince atomic.Int64 // send time of the oldest ping newer than the newest answered one, or none
	lastPong     atomic.Int64 // arrival time of the last pong that counted for liveness
	minRTT       atomic.Int64
	srtt         atomic.Int64
	rttvar       atomic.Int64
	pingsSent    atomic.Uint64
	pongs        atomic.Uint64
	lossBits     atomic.Uint64 // math.Float64bits of the loss EWMA
	downRef      atomic.Int64  // reference time of the last outage counted; identifies it
	downEvents   atomic.Uint64
	owdSamples   atomic.Uint64
	owdUp        owdEst
	owdDown      owdEst

	// Writer state, guarded by mu.
	mu        sync.Mutex
	ring      [ringSize]pingSlot
	lastSeq   uint32
	haveSent  bool
	newestAns uint32
	haveAns   bool
	haveRTT   bool
	minFilter minmax
	srttNs    int64
	rttvarNs  int64
	loss      float64
}

// NewHealth returns the state of a fresh uplink, optimistically up.
func NewHealth(cfg HealthConfig) *Health {
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = 100 * time.Millisecond
	}
	if cfg.DownAfter <= 0 {
		cfg.DownAfter = 300 * time.Millisecond
	}
	if cfg.MinRTTWindow <= 0 {
		cfg.MinRTTWindow = 10 * time.Second
	}
	if cfg.OWDWindow <= 0 {
		cfg.OWDWindow = 30 * time.Second
	}
	if cfg.LossGain <= 0 || cfg.LossGain > 1 {
		cfg.LossGain = 1.0 / 16
	}
	h := &Health{
		interval:  int64(cfg.PingInterval),
		downAfter: int64(cfg.DownAfter),
		minWin:    int64(cfg.MinRTTWindow),
		owdWin:    int64(cfg.OWDWindow),
		lossGain:  cfg.LossGain,
	}
	h.pendingSince.Store(none)
	h.lastPong.Store(none)
	h.downRef.Store(none)
	return h
}

// none marks an unset time. Zero cannot serve: it is a valid time on a fake clock.
const none = math.MinInt64

// PingDue reports whether a keepalive should be sent now: none was sent yet, or
// the last one is at least PingInterval old.
func (h *Health) PingDue(now int64) bool {
	return h.pingsSent.Load() == 0 || now-h.lastPingAt.Load() >= h.interval
}

// PingSoon makes the next keepalive due at once (PingDue), for a far end that
// went silent and may be back: its first answer should come as soon as it is.
func (h *Health) PingSoon() { h.lastPingAt.Store(0) }

// OnPingSent records that keepalive seq left at now. Sequence numbers must increase
// by one per ping (wrapping is fine); the ring that remembers send times is indexed
// by them.
func (h *Health) OnPingSent(seq uint32, now int64) {
	h.mu.Lock()
	h.noteOutage(now)
	h.judgeLost(now)
	s := &h.ring[seq%ringSize]
	if s.used && !s.judged {
		// Overwritten before DownAfter passed: the interval is very short
		// compared with DownAfter. Count it as lost rather than forget it.
		h.addLoss(1)
	}
	*s = pingSlot{seq: seq, sentAt: now, used: true}
	h.lastSeq, h.haveSent = seq, true
	if h.pendingSince.Load() == none {
		// First ping since the newest answered one: the down timer starts here.
		h.pendingSince.Store(now)
	}
	h.lastPingAt.Store(now)
	h.pingsSent.Add(1)
	h.mu.Unlock()
}

// OnPong records the answer to keepalive seq, which was sent at sentAt, reached the
// peer at peerTime (the peer's clock; 0 when the peer gave none) and arrived at
// now. RTT = now - sentAt feeds the windowed minimum and the RFC 6298 smoothed
// RTT and variation; peerTime splits it into the two one-way delays. A pong newer
// than every answered one marks the uplink up at once. A pong older than the
// newest answered one is still a delay sample, but it brings a down uplink back
// only if it was sent after the outage began: such a pong is a packet that sat in
// a queue through the outage and says nothing about the link now.
func (h *Health) OnPong(seq uint32, sentAt, peerTime, now int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pongs.Add(1)
	h.noteOutage(now) // before this pong possibly ends it
	h.judgeLost(now)

	if !h.haveSent || int32(seq-h.lastSeq) > 0 {
		// An answer to a ping never sent: a confused or replaying peer. It says
		// nothing about this uplink and must not move the newest-answered mark.
		return
	}
	s := &h.ring[seq%ringSize]
	inRing := s.used && s.seq == seq
	if inRing && s.answered {
		return // duplicate pong: its RTT was already counted
	}
	if inRing {
		s.answered = true
		if !s.judged {
			s.judged = true
			h.addLoss(0)
		}
	}
	if rtt := now - sentAt; rtt >= 0 {
		h.sampleRTT(rtt, now)
		if peerTime != 0 {
			// Each difference mixes one direction's delay with the clock
			// offset; against its own windowed minimum the offset cancels,
			// so a queue in one direction shows in that direction only.
			h.owdUp.sample(peerTime-sentAt, h.owdWin, now)
			h.owdDown.sample(now-peerTime, h.owdWin, now)
			h.owdSamples.Add(1)
		}
	}

	newer := !h.haveAns || int32(seq-h.newestAns) > 0
	if newer {
		h.newestAns, h.haveAns = seq, true
		h.lastPong.Store(now)
		h.pendingSince.Store(h.oldestAfter(seq))
		return
	}
	// An older pong: only a down uplink may care about it.
	if ref, down := h.downState(now); down && sentAt >= ref+h.downAfter {
		h.lastPong.Store(now)
	}
}

// oldestAfter returns the send time of the oldest remembered ping newer than seq,
// or none when every ping sent is answered or older.
func (h *Health) oldestAfter(seq uint32) int64 {
	if !h.haveSent {
		return none
	}
	for k, i := seq+1, 0; int32(h.lastSeq-k) >= 0 && i < ringSize; k, i = k+1, i+1 {
		if s := &h.ring[k%ringSize]; s.used && s.seq == k {
			return s.sentAt
		}
	}
	return none
}

// judgeLost counts pings unanswered for DownAfter as lost. Called with mu held.
func (h *Health) judgeLost(now int64) {
	for i := range h.ring {
		s := &h.ring[i]
		if s.used && !s.judged && now-s.sentAt > h.downAfter {
			s.judged = true
			h.addLoss(1)
		}
	}
}

func (h *Health) addLoss(x float64) {
	h.loss += h.lossGain * (x - h.loss)
	h.lossBits.Store(math.Float64bits(h.loss))
}

// sampleRTT updates the estimators with one sample. Called with mu held.
func (h *Health) sampleRTT(rtt, now int64) {
	h.minRTT.Store(h.minFilter.update(h.minWin, now, rtt))
	if !h.haveRTT {
		// RFC 6298 (2.2): first measurement.
		h.haveRTT = true
		h.srttNs, h.rttvarNs = rtt, rtt/2
	} else {
		// RFC 6298 (2.3) with alpha = 1/8, beta = 1/4; RTTVAR first, from the old SRTT.
		d := h.srttNs - rtt
		if d < 0 {
			d = -d
		}
		h.rttvarNs += (d - h.rttvarNs) / 4
		h.srttNs += (rtt - h.srttNs) / 8
	}
	h.srtt.Store(h.srttNs)
	h.rttvar.Store(h.rttvarNs)
}

// downState reports whether the uplink is down at now and, if so, the reference
// time its DownAfter counts from: the later of the last pong and the oldest
// unanswered ping. Taking the later one keeps an uplink that was idle (no pings)
// from being declared down the moment a ping is sent again.
func (h *Health) downState(now int64) (ref int64, down bool) {
	// pendingSince is loaded before lastPong; OnPong stores them in the opposite
	// order, so a reader that sees a new pendingSince also sees the new lastPong.
	ps := h.pendingSince.Load()
	if ps == none {
		return 0, false
	}
	ref = max(ps, h.lastPong.Load())
	return ref, now-ref > h.downAfter
}

// Up reports whether the uplink is usable at now. It starts up and stays up until
// a ping has gone DownAfter without any pong arriving; the next pong brings it back.
// It is lock-free and allocation-free, for the per-packet send path.
func (h *Health) Up(now int64) bool {
	ref, down := h.downState(now)
	if down {
		h.countDown(ref)
	}
	return !down
}

// noteOutage counts an outage in progress at now, so that DownEvents is right even
// when nobody asked Up during it.
func (h *Health) noteOutage(now int64) {
	if ref, down := h.downState(now); down {
		h.countDown(ref)
	}
}

// countDown counts an outage once, whoever notices it first. An outage is named
// by its reference time, which stays fixed for as long as it lasts.
func (h *Health) countDown(ref int64) {
	if old := h.downRef.Load(); old != ref && h.downRef.CompareAndSwap(old, ref) {
		h.downEvents.Add(1)
	}
}

// Stats returns a snapshot. The fields are read one by one without a lock, so a
// snapshot taken during an update may mix old and new values.
func (h *Health) Stats(now int64) Stats {
	lastPong := h.lastPong.Load()
	if lastPong == none {
		lastPong = 0
	}
	return Stats{
		Up:            h.Up(now),
		MinRTT:        time.Duration(h.minRTT.Load()),
		SRTT:          time.Duration(h.srtt.Load()),
		RTTVar:        time.Duration(h.rttvar.Load()),
		PingsSent:     h.pingsSent.Load(),
		PongsReceived: h.pongs.Load(),
		Loss:          math.Float64frombits(h.lossBits.Load()),
		LastPong:      lastPong,
		DownEvents:    h.downEvents.Load(),
		OWDSamples:    h.owdSamples.Load(),
		UpOWD:         time.Duration(h.owdUp.raw.Load()),
		DownOWD:       time.Duration(h.owdDown.raw.Load()),
		UpQueue:       time.Duration(h.owdUp.queue.Load()),
		DownQueue:     time.Duration(h.owdDown.queue.Load()),
		UpJitter:      time.Duration(h.owdUp.jitter.Load()),
		DownJitter:    time.Duration(h.owdDown.jitter.Load()),
	}
}

// owdEst follows the one-way delay of one direction. The writer fields are
// guarded by Health.mu; the atomics publish them to Stats.
type owdEst struct {
	filter minmax // windowed minimum of the raw delay (offset included)
	last   int64  // previous raw sample, for the jitter
	have   bool
	jitNs  int64

	raw, queue, jitter atomic.Int64
}

// sample records one raw one-way delay d (clock offset included) at now.
// Called with Health.mu held.
func (o *owdEst) sample(d, win, now int64) {
	base := o.filter.update(win, now, d)
	if o.have {
		// RFC 3550 (6.4.1): J += (|D| - J)/16, D the change of the delay.
		// The offset cancels in D as it does against the minimum.
		diff := d - o.last
		if diff < 0 {
			diff = -diff
		}
		o.jitNs += (diff - o.jitNs) / 16
	}
	o.last, o.have = d, true
	o.raw.Store(d)
	o.queue.Store(d - base) // >= 0: the minimum includes d
	o.jitter.Store(o.jitNs)
}

// minmax is Kathleen Nichols' windowed minimum filter as used by BBR (Linux
// lib/minmax.c): it keeps the best, second best and third best samples of three
// sub-windows so that the minimum over the last win nanoseconds is known in O(1)
// space. A windowed minimum (instead of an all-time one) lets the estimate follow
// a route change that raises the base RTT.
type minmax struct {
	s    [3]mmSample
	init bool
}

type mmSample struct{ t, v int64 }

func (m *minmax) reset(t, v int64) int64 {
	m.s[0] = mmSample{t, v}
	m.s[1], m.s[2] = m.s[0], m.s[0]
	m.init = true
	return v
}

func (m *minmax) update(win, t, v int64) int64 {
	val := mmSample{t, v}
	if !m.init || v <= m.s[0].v || t-m.s[2].t > win {
		return m.reset(t, v) // new minimum, or nothing left in the window
	}
	if v <= m.s[1].v {
		m.s[1], m.s[2] = val, val
	} else if v <= m.s[2].v {
		m.s[2] = val
	}
	dt := t - m.s[0].t
	switch {
	case dt > win:
		// The best sample expired: promote the others, and again if the second
		// expired too.
		m.s[0], m.s[1], m.s[2] = m.s[1], m.s[2], val
		if t-m.s[0].t > win {
			m.s[0], m.s[1], m.s[2] = m.s[1], m.s[2], val
		}
	case m.s[1].t == m.s[0].t && dt > win/4:
		// A quarter of the window passed with one sample: start a second sub-window.
		m.s[1], m.s[2] = val, val
	case m.s[2].t == m.s[1].t && dt > win/2:
		m.s[2] = val
	}
	return m.s[0].v
}
