package logging

import (
	"sync"
	"time"
)

// Limiter bounds how often one kind of log line is written: a per-datagram
// refusal (a replayed hello, a client over its session limit) must not let a
// flood of datagrams become a flood of log lines. It is a token bucket of
// lines; what it holds back is counted and reported with the next line it
// lets through. Call sites check Allow before building the line, so a
// suppressed line costs no allocation:
//
//	if ok, n := lim.Allow(); ok {
//		log.Warn("hello refused", "client", id, "suppressed", n)
//	}
type Limiter struct {
	mu         sync.Mutex
	tokens     float64
	last       time.Time
	rate       float64 // lines per second
	burst      float64
	suppressed uint64
}

// NewLimiter lets burst lines through at once and perSecond after that.
func NewLimiter(perSecond float64, burst int) *Limiter {
	if burst < 1 {
		burst = 1
	}
	return &Limiter{tokens: float64(burst), rate: perSecond, burst: float64(burst)}
}

// Allow reports whether a line may be written now and, when it may, how many
// lines were held back since the last one let through.
func (l *Limiter) Allow() (ok bool, suppressed uint64) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() {
		l.tokens += now.Sub(l.last).Seconds() * l.rate
		if l.tokens > l.burst {
			l.tokens = l.burst
		}
	}
	l.last = now
	if l.tokens < 1 {
		l.suppressed++
		return false, 0
	}
	l.tokens--
	n := l.suppressed
	l.suppressed = 0
	return true, n
}
