package router

import (
	"fmt"
	"strconv"
	"strings"
)

// DSCP marking of a session's data datagrams on an uplink ([[uplink]] dscp,
// off by default). A mark asks the ISP's queues to serve the datagram first,
// which is worth asking only for what is latency-critical and only at the
// rate the game really sends: a marked flood would be a reason for an ISP to
// bleach or police the marks of everyone. So each session marks at most its
// expected packet rate (the application table's pps, or expected_pps), with a
// burst of dscpBurst packets; beyond that its datagrams go unmarked.

// dscpNames are the code points an uplink may name; a number 1..63 works too.
var dscpNames = map[string]uint8{
	"CS1": 8, "CS2": 16, "CS3": 24, "CS4": 32, "CS5": 40, "CS6": 48, "CS7": 56,
	"AF11": 10, "AF12": 12, "AF13": 14, "AF21": 18, "AF22": 20, "AF23": 22,
	"AF31": 26, "AF32": 28, "AF33": 30, "AF41": 34, "AF42": 36, "AF43": 38,
	"EF": 46, "VA": 44,
}

// parseDSCP reads an uplink's dscp key: "" or "off" is 0 (no marking).
func parseDSCP(s string) (uint8, error) {
	s = strings.ToUpper(strings.TrimSpace(s))
	if s == "" || s == "OFF" {
		return 0, nil
	}
	if v, ok := dscpNames[s]; ok {
		return v, nil
	}
	if v, err := strconv.ParseUint(s, 0, 8); err == nil && v >= 1 && v <= 63 {
		return uint8(v), nil
	}
	return 0, fmt.Errorf("%q: want a DSCP name (EF, CS4, AF41, ...), 1 to 63, or off", s)
}

// dscpBurst is how many packets a session may mark ahead of its expected
// rate: a game's packets come in small clumps when its frame time jitters.
const dscpBurst = 3

// dscpBucket rate-limits one session's marks (GCRA: the theoretical arrival
// time of the next conforming packet). Only the goroutine reading the
// session's game side uses it.
type dscpBucket struct {
	interval int64 // ns between marks at the expected rate; 0 until first use
	tat      int64
}

// take reports whether the packet sent at now may be marked. interval is the
// session's expected packet interval, read on first use.
func (b *dscpBucket) take(now, interval int64) bool {
	if b.interval == 0 {
		if interval <= 0 {
			return false
		}
		b.interval, b.tat = interval, now
	}
	if b.tat-now > dscpBurst*b.interval {
		return false
	}
	b.tat = max(b.tat, now) + b.interval
	return true
}

// markPacket decides whether the data datagrams of the packet rs sends at now
// carry the uplinks' DSCP marks.
func (r *Router) markPacket(rs *routerSession, now int64) bool {
	if !r.anyDSCP {
		return false
	}
	if rs.dscp.take(now, rs.expected) {
		r.m.dscpMarked.Inc()
		return true
	}
	r.m.dscpOverRate.Inc()
	return false
}

// sendData sends one data datagram of a session on path p, marked with the
// uplink's DSCP when mark is set and the uplink has one.
func (r *Router) sendData(p *path, dg []byte, mark bool) {
	if !mark || p.u.tos == 0 {
		r.sendPath(p, dg)
		return
	}
	if err := p.u.conn.WriteToTOS(dg, p.addr, p.u.tos); err != nil {
		r.m.sendErrors.Inc()
		return
	}
	p.u.sent.Inc()
}
