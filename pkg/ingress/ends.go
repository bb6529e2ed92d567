package ingress

import (
	"log/slog"

	"github.com/raicnet/raic/pkg/logging"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/session"
)

// Ends counts and logs how sessions leave a program's table, the same way for
// the proxy and the intermediate: an eviction (the table was full) is counted
// and logged as a warning, at most as often as the limiter allows; an idle end
// is counted and logged at debug. Either way the client's session count goes
// down.
type Ends struct {
	evicted, idle *metrics.Counter
	log           *slog.Logger
	limit         *logging.Limiter
	maxSessions   int
}

// NewEnds counts evictions in evicted and idle ends in idle (the program's
// PREFIX_sessions_evicted_total and PREFIX_sessions_expired_total); limit
// bounds the warnings (a program may share it with its other per-datagram
// refusals).
func NewEnds(evicted, idle *metrics.Counter, log *slog.Logger, limit *logging.Limiter, maxSessions int) *Ends {
	return &Ends{evicted: evicted, idle: idle, log: log, limit: limit, maxSessions: maxSessions}
}

// Ended records that session id, of router side p, left the table for why.
func (e *Ends) Ended(id uint64, p *Peer, why session.Reason) {
	switch why {
	case session.ReasonEvicted:
		e.evicted.Inc()
		if ok, n := e.limit.Allow(); ok {
			e.log.Warn("session evicted: table full", "session", id, "client", p.Client.ID, "max_sessions", e.maxSessions, "lines_suppressed", n)
		}
	case session.ReasonIdle:
		e.idle.Inc()
		e.log.Debug("session idle, ended", "session", id, "client", p.Client.ID)
	}
	p.Client.CloseSession()
}
