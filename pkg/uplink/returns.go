package uplink

import (
	"errors"

	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
)

// Returns is the first part of the way back: it parses and opens what far ends
// send back on a Set's uplinks (replies, answers) and counts what it drops,
// by reason, under one metric family of the program's (PREFIX_dropped_total
// {reason="malformed|unknown_session|duplicate|auth"}). The router and the
// intermediate receive their proxies' and next hops' datagrams through it.
type Returns struct {
	malformed, unknownSession, duplicate, authFailed *metrics.Counter
}

// NewReturns registers the drop counters as family{reason="..."} with help.
func NewReturns(r *metrics.Registry, family, help string) *Returns {
	drop := func(reason string) *metrics.Counter { return r.Counter(family+`{reason="`+reason+`"}`, help) }
	return &Returns{malformed: drop("malformed"), unknownSession: drop("unknown_session"), duplicate: drop("duplicate"), authFailed: drop("auth")}
}

// Parse parses the header of a returned datagram into h and returns where its
// body starts. A malformed datagram, or one with a hello (only the side that
// opens a session sends those), is counted and refused.
func (c *Returns) Parse(dg []byte, h *wire.Header) (off int, ok bool) {
	off, err := wire.Parse(dg, h, nil)
	if err != nil || h.Flags&wire.FlagHello != 0 {
		c.malformed.Inc()
		return 0, false
	}
	return off, true
}

// Unknown counts a datagram of no session the program knows.
func (c *Returns) Unknown() { c.unknownSession.Inc() }

// Malformed counts a datagram whose body made no sense.
func (c *Returns) Malformed() { c.malformed.Inc() }

// Open has the session's receiver authenticate, deduplicate and decode dg
// (decoded packets go to sink) and returns the opened body. A duplicate or a
// datagram that does not open is counted and refused.
func (c *Returns) Open(recv *tunnel.Receiver, dg []byte, h *wire.Header, off int, now int64, sink tunnel.Sink) (body []byte, ok bool) {
	body, err := recv.Receive(dg, h, off, now, sink)
	switch {
	case errors.Is(err, tunnel.ErrDuplicate):
		c.duplicate.Inc()
		return nil, false
	case err != nil:
		c.authFailed.Inc()
		return nil, false
	}
	return body, true
}
