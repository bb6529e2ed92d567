package token

import (
	"sync"
)

// Seen is the proxy's table of the tokens it has admitted, kept until each
// expires: a token opens at most its session limit of distinct sessions, so a
// token copied off the wire, or handed out twice, opens nothing more. Hellos
// of a session already counted (the same session on another uplink, or again
// after the proxy forgot it) pass. The table is bounded: when full, the entry
// that expires first is dropped and counted.
type Seen struct {
	mu      sync.Mutex
	max     int
	entries map[ID]*seenEntry
	evicted uint64
}

type seenEntry struct {
	expires  int64 // Unix seconds
	owner    any   // what the token's first session brought (its run-time client)
	n        int
	sessions [MaxSessions]uint64
}

// NewSeen makes a table of at most max tokens.
func NewSeen(max int) *Seen {
	if max < 1 {
		max = 1
	}
	return &Seen{max: max, entries: make(map[ID]*seenEntry)}
}

// Use records that token id (valid until expires, of at most limit sessions)
// opens session at now (Unix seconds). It reports false when the token has
// already opened limit other sessions: a replay. owner is kept with a token
// seen for the first time, and Use returns the owner kept for the token, so
// all of a token's sessions share what its first one brought (the proxy's
// run-time client, with its rate and session limits).
func (t *Seen) Use(id ID, expires int64, limit int, session uint64, now int64, owner any) (any, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entries[id]
	if e == nil {
		if len(t.entries) >= t.max {
			t.sweep(now)
		}
		if len(t.entries) >= t.max {
			t.evictFirst()
		}
		e = &seenEntry{expires: expires, owner: owner}
		t.entries[id] = e
	}
	for _, s := range e.sessions[:e.n] {
		if s == session {
			return e.owner, true
		}
	}
	if e.n >= limit || e.n >= MaxSessions {
		return e.owner, false
	}
	e.sessions[e.n] = session
	e.n++
	return e.owner, true
}

// sweep drops the expired entries.
func (t *Seen) sweep(now int64) {
	for id, e := range t.entries {
		if e.expires <= now {
			delete(t.entries, id)
		}
	}
}

// evictFirst drops the entry that expires first (its token was about to be
// refused as expired anyway) and counts it.
func (t *Seen) evictFirst() {
	var first ID
	var at int64 = -1
	for id, e := range t.entries {
		if at < 0 || e.expires < at {
			first, at = id, e.expires
		}
	}
	delete(t.entries, first)
	t.evicted++
}

// Sweep drops the expired entries (a janitor calls it now and then).
func (t *Seen) Sweep(now int64) {
	t.mu.Lock()
	t.sweep(now)
	t.mu.Unlock()
}

// Len is the number of tokens held.
func (t *Seen) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.entries)
}

// Evicted is how many unexpired tokens were dropped because the table was full.
func (t *Seen) Evicted() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.evicted
}
