// Package clients holds the routers a proxy or an intermediate proxy serves: the
// [[client]] config tables (ID, pre-shared key, allowlist, rate limit), their
// checks, the run-time client with its per-client token bucket, and Admit, the
// one admission of a hello, by pre-shared key or by connect token.
package clients

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/allow"
	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/token"
	"github.com/raicnet/raic/pkg/wire"
)

// Config is one [[client]] table.
type Config struct {
	// ID is what the router sends in its hello (1 to 32 bytes).
	ID string `toml:"id"`
	// Key is the client's pre-shared key, base64 or hex.
	Key string `toml:"key"`
	// Allow lists the servers this client may reach (see package allow).
	Allow []string `toml:"allow"`
	// RatePPS limits the datagrams per second this client may have forwarded
	// (all its sessions together); Burst is how many may come at once.
	RatePPS float64 `toml:"rate_pps"`
	Burst   int     `toml:"burst"`
	// MaxSessions bounds the sessions this client may hold at once; a hello
	// over it is refused (counted and logged), so one client can never evict
	// another's sessions from the shared table. 0: a fair share of the
	// program's max_sessions (see FairShare).
	MaxSessions int `toml:"max_sessions"`
	// SessionRate bounds how many sessions per second the client may open
	// (a burst of as many at once).
	SessionRate float64 `toml:"session_rate"`
}

// DefaultRatePPS is a client's rate limit when its table sets none.
const DefaultRatePPS = 5000

// DefaultSessionRate is a client's session creation limit when its table sets
// none: far above what a gamer's router opens, far below a flood.
const DefaultSessionRate = 100

// MinFairShare is the smallest per-client session limit FairShare gives.
const MinFairShare = 16

// MaxRatePPS bounds rate_pps; a rate this high turns the limit off in effect.
const MaxRatePPS = 1e12

// Check fills in defaults and checks every client. It returns every error
// found (a config.Errors, for the caller's Meta.Add), each naming the file,
// line and key (client.N.field). who names the program in the error for an
// empty list ("the proxy").
func Check(meta *config.Meta, cs []Config, who string) error {
	return CheckTokens(meta, cs, who, false)
}

// CheckTokens is Check for a program that may also admit connect tokens:
// with tokens on, an empty client list is fine.
func CheckTokens(meta *config.Meta, cs []Config, who string, tokens bool) error {
	var errs config.Errors
	bad := func(key, format string, args ...any) {
		var e *config.Error
		if errors.As(meta.Errorf(key, format, args...), &e) {
			errs = append(errs, e)
		}
	}
	if len(cs) == 0 && !tokens {
		bad("client", "no [[client]] configured: %s would serve nobody", who)
	}
	seen := map[string]bool{}
	for i := range cs {
		cl := &cs[i]
		key := func(k string) string { return fmt.Sprintf("client.%d.%s", i, k) }
		if cl.ID == "" || len(cl.ID) > wire.MaxClientID {
			bad(key("id"), "must be 1 to %d bytes", wire.MaxClientID)
		} else if seen[cl.ID] {
			bad(key("id"), "client %q is configured twice", cl.ID)
		}
		seen[cl.ID] = true
		if _, err := wire.ParseKey(cl.Key); err != nil {
			bad(key("key"), "%v", err)
		}
		if len(cl.Allow) == 0 {
			bad(key("allow"), "client %q may reach no server: list its servers in allow", cl.ID)
		} else if _, err := allow.Parse(cl.Allow); err != nil {
			bad(key("allow"), "%v", err)
		}
		if !meta.IsDefined(key("rate_pps")) {
			cl.RatePPS = DefaultRatePPS
		} else if !finite(cl.RatePPS) || cl.RatePPS <= 0 || cl.RatePPS > MaxRatePPS {
			bad(key("rate_pps"), "%v is not above 0 and at most %v", cl.RatePPS, float64(MaxRatePPS))
			cl.RatePPS = DefaultRatePPS
		}
		if !meta.IsDefined(key("burst")) {
			cl.Burst = int(cl.RatePPS/10) + 64
		} else if cl.Burst < 1 || cl.Burst > maxBurst {
			bad(key("burst"), "%d is not within 1 to %d", cl.Burst, maxBurst)
		}
		if cl.MaxSessions < 0 {
			bad(key("max_sessions"), "must be positive (0: a fair share of max_sessions)")
		}
		if cl.SessionRate == 0 {
			cl.SessionRate = DefaultSessionRate
		}
		if !(cl.SessionRate > 0 && cl.SessionRate <= 1e6) {
			bad(key("session_rate"), "must be between 0 and 1000000 sessions per second")
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return errs
}

// maxBurst bounds burst (the token bucket holds this many datagrams).
const maxBurst = 1 << 30

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// FairShare sets the session limit of every client whose config left it 0 to
// an equal share of the program's table (total), at least MinFairShare: when
// every client keeps to its share the table never has to evict anyone.
func FairShare(t map[string]*Client, total int) {
	share := int64(MinFairShare)
	if len(t) > 0 && total/len(t) > MinFairShare {
		share = int64(total / len(t))
	}
	for _, c := range t {
		if c.maxSessions <= 0 {
			c.maxSessions = share
		}
	}
}

// Client is a checked client at run time.
type Client struct {
	ID    string
	Key   wire.Key
	Allow allow.List

	mu     sync.Mutex // guards the token buckets; per client, not global
	tokens float64
	last   int64
	rate   float64
	burst  float64
	// The datagram bucket, taken once per forwarded packet by every worker,
	// without the lock: as a theoretical arrival time (GCRA), the time at
	// which the bucket would be full again, in ns as float64 bits. Tokens
	// at now are burst - (tat-now)/interval; a datagram may go when that is
	// at least one, i.e. tat-now ≤ tau = (burst-1)·interval, and takes one
	// by moving tat on by interval. 0 is a full bucket. A rate of 0 (no
	// refill) keeps the locked bucket above.
	tat      atomic.Uint64
	interval float64 // ns per token
	tau      float64

	// Session admission (OpenSession): a count against maxSessions and a
	// token bucket of session creations, guarded by mu.
	sessions    atomic.Int64
	maxSessions int64
	stokens     float64
	slast       int64
	srate       float64
}

// Table builds the run-time clients of checked configs, by ID; now starts
// their token buckets full.
func Table(cs []Config, now int64) (map[string]*Client, error) {
	t := make(map[string]*Client, len(cs))
	for _, cc := range cs {
		key, err := wire.ParseKey(cc.Key)
		if err != nil {
			return nil, fmt.Errorf("client %q: %v", cc.ID, err)
		}
		al, err := allow.Parse(cc.Allow)
		if err != nil {
			return nil, fmt.Errorf("client %q: %v", cc.ID, err)
		}
		srate := cc.SessionRate
		if srate <= 0 {
			srate = DefaultSessionRate
		}
		t[cc.ID] = newClient(cc.ID, key, al, cc.RatePPS, cc.Burst, int64(cc.MaxSessions), srate, now)
	}
	return t, nil
}

// newClient makes a run-time client with full buckets; now < 0 starts them
// at the first Take or OpenSession (the caller has no monotonic time).
func newClient(id string, key wire.Key, al allow.List, rate float64, burst int, maxSessions int64, srate float64, now int64) *Client {
	c := &Client{ID: id, Key: key, Allow: al, rate: rate,
		burst: float64(burst), tokens: float64(burst), last: now,
		maxSessions: maxSessions, srate: srate, stokens: srate, slast: now}
	if rate > 0 {
		c.interval = 1e9 / rate
		c.tau = (float64(burst) - 1) * c.interval
	}
	return c
}

// Roster is what Admit checks a hello against: the configured clients by ID
// and, when the program has a token key, the connect-token opener and the
// table of tokens already used. A program swaps its whole Roster on reload;
// sessions keep the *Client they were admitted with.
type Roster struct {
	Clients map[string]*Client
	Tokens  *token.Opener // nil: connect tokens are refused
	Seen    *token.Seen   // shared across reloads, so a reload forgets no token
	// TokenRatePPS and TokenBurst are the rate limit of each token's
	// sessions together (0: DefaultRatePPS and its default burst), and
	// TokenSessionRate how many sessions per second one token may open (0:
	// DefaultSessionRate); its session limit is the token's own.
	TokenRatePPS     float64
	TokenBurst       int
	TokenSessionRate float64
}

// DefaultSeenTokens bounds the table of used tokens.
const DefaultSeenTokens = 1 << 16

// NewRoster builds the roster of checked configs and an optional token key.
func NewRoster(cs []Config, tokenKey *token.Key, seen *token.Seen, now int64) (*Roster, error) {
	t, err := Table(cs, now)
	if err != nil {
		return nil, err
	}
	r := &Roster{Clients: t}
	if tokenKey != nil {
		if r.Tokens, err = token.NewOpener(tokenKey); err != nil {
			return nil, err
		}
		if seen == nil {
			seen = token.NewSeen(DefaultSeenTokens)
		}
		r.Seen = seen
	}
	return r, nil
}

// Take reports whether the client may have one more datagram forwarded now.
func (c *Client) Take(now int64) bool {
	if c.interval > 0 {
		n := float64(now)
		for {
			old := c.tat.Load()
			t := max(math.Float64frombits(old), n)
			if t-n > c.tau {
				return false
			}
			if c.tat.CompareAndSwap(old, math.Float64bits(t+c.interval)) {
				return true
			}
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last < 0 {
		c.last = now
	}
	c.tokens += float64(now-c.last) * 1e-9 * c.rate
	c.last = now
	if c.tokens > c.burst {
		c.tokens = c.burst
	}
	if c.tokens < 1 {
		return false
	}
	c.tokens--
	return true
}

// OpenSession reserves one session for the client: it refuses (SessionLimit)
// when the client holds its limit already and (SessionRate) when it opens
// sessions faster than its rate. Every Admitted call must be matched by one
// CloseSession when the session ends or is not created after all.
func (c *Client) OpenSession(now int64) Refusal {
	if n := c.sessions.Add(1); c.maxSessions > 0 && n > c.maxSessions {
		c.sessions.Add(-1)
		return SessionLimit
	}
	c.mu.Lock()
	if c.slast < 0 {
		c.slast = now
	}
	c.stokens += float64(now-c.slast) * 1e-9 * c.srate
	c.slast = now
	if c.stokens > c.srate {
		c.stokens = c.srate
	}
	ok := c.stokens >= 1
	if ok {
		c.stokens--
	}
	c.mu.Unlock()
	if !ok {
		c.sessions.Add(-1)
		return SessionRate
	}
	return Admitted
}

// CloseSession gives back a session reserved by OpenSession.
func (c *Client) CloseSession() { c.sessions.Add(-1) }

// Sessions returns how many sessions the client holds.
func (c *Client) Sessions() int64 { return c.sessions.Load() }

// MaxSessions returns the client's session limit (0: none).
func (c *Client) MaxSessions() int64 { return c.maxSessions }

// Refusal says why Admit turned a hello away; each maps to a counter of the
// program that asked.
type Refusal int

const (
	Admitted        Refusal = iota
	UnknownClient           // no [[client]] with the hello's ID
	AuthFailed              // the datagram does not open with that client's key
	StaleHello              // the hello's time is further from ours than maxAge
	ForbiddenTarget         // the target is outside the client's allowlist (or the token's servers)
	// OldEpoch: the hello was made for an earlier run of this program (a
	// replay of a capture from before its restart), or is a game session's
	// hello from a router that has not heard of the restart yet.
	OldEpoch
	SessionLimit // the client holds its max_sessions already (OpenSession)
	SessionRate  // the client opens sessions faster than session_rate
	// Connect tokens (see package token).
	TokenMalformed // not a token of a version we read, or this program has no token key
	TokenForged    // does not open with the token key
	TokenExpired   // past its expiry
	TokenNotYet    // before its not-before
	TokenReplayed  // has already opened as many other sessions as it may
)

// String names the refusal as the programs' counters and logs do
// (proxy_dropped_total{reason=...}).
func (r Refusal) String() string {
	switch r {
	case Admitted:
		return "admitted"
	case UnknownClient:
		return "unknown_client"
	case AuthFailed:
		return "auth"
	case StaleHello:
		return "stale_hello"
	case ForbiddenTarget:
		return "forbidden_target"
	case OldEpoch:
		return "old_epoch"
	case SessionLimit:
		return "client_session_limit"
	case SessionRate:
		return "client_session_rate"
	case TokenMalformed:
		return "token_malformed"
	case TokenForged:
		return "token_forged"
	case TokenExpired:
		return "token_expired"
	case TokenNotYet:
		return "token_not_yet_valid"
	case TokenReplayed:
		return "token_replayed"
	}
	return "unknown"
}

// Run identifies one run of a proxy or intermediate: its random restart
// epoch (put in its pongs; see package wire) and its start time.
type Run struct {
	Epoch      uint64
	StartMilli int64 // wall clock, Unix ms
}

// NewRun picks a fresh random epoch for a program starting now.
func NewRun(now time.Time) (Run, error) {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return Run{}, err
		}
		if e := binary.LittleEndian.Uint64(b[:]); e != 0 {
			return Run{Epoch: e, StartMilli: now.UnixMilli()}, nil
		}
	}
}

// Admission is what Admit learned about an admitted hello.
type Admission struct {
	Client     *Client
	Send, Recv cipher.AEAD // the session's keys, server role
}

// Admit authenticates the first datagram of an unknown session, dg (its
// header at dg[:off] parsed into hdr and hello), for a proxy or an
// intermediate: the client must exist, the datagram must open with its key,
// the hello's time must be within maxAge of now, and its target (if any) in
// the client's allowlist. It opens a copy in scratch (at least len(dg)
// bytes): the real datagram is opened again by the session's receiver, which
// also moves the anti-replay window.
//
// run is this program's run (nil: epochs are not checked). A hello for
// another epoch than run's was sealed with keys of that epoch, so if it is
// admitted at all the session keeps those keys. It is admitted only when it
// was made after this run started, and then only for a control-only session
// (which never reaches a server) or by a sender that knows no epoch yet (a
// router that started after this run: nothing of its could have been captured
// before it). Everything captured before a restart is thereby refused: its
// hellos are older than the run, and its data was sealed for an old epoch.
//
// A hello with a connect token is admitted by the token instead: it must open
// with the roster's token key and be within its validity window, the datagram
// must open with the client key inside it (keys derived with the hello's
// epoch, as for a pre-shared key), the same age and epoch checks apply, the
// target must be one of its servers, and the token must not have opened its
// limit of other sessions already (checked last, so a forged datagram cannot
// use up a real token). All sessions of one token share one Client, whose
// session limit is the token's own and whose session rate is the roster's
// TokenSessionRate, so the caller's OpenSession applies to them as to a
// [[client]]. Every refusal is silent; the caller counts it by String.
func Admit(r *Roster, hdr *wire.Header, hello *wire.Hello, dg []byte, off int, scratch []byte, maxAge time.Duration, now time.Time, run *Run) (Admission, Refusal) {
	if len(hello.Token) > 0 {
		return admitToken(r, hdr, hello, dg, off, scratch, maxAge, now, run)
	}
	c := r.Clients[string(hello.ClientID())]
	if c == nil {
		return Admission{}, UnknownClient
	}
	return checkHello(c, &c.Key, hdr, hello, dg, off, scratch, maxAge, now, run)
}

// checkHello is what both paths of Admit share once they know the client and the
// key its sessions derive from: the datagram opens with keys of the hello's
// epoch, the hello is fresh and for this run, and its target is allowed.
func checkHello(c *Client, key *wire.Key, hdr *wire.Header, hello *wire.Hello, dg []byte, off int, scratch []byte, maxAge time.Duration, now time.Time, run *Run) (Admission, Refusal) {
	send, recv, err := wire.DeriveKeysEpoch(key, &hello.Salt, hdr.Session, hello.Epoch, wire.RoleServer)
	if err != nil {
		return Admission{}, AuthFailed
	}
	cp := scratch[:len(dg)]
	copy(cp, dg)
	if _, err := wire.Open(recv, cp, off); err != nil {
		return Admission{}, AuthFailed
	}
	a := Admission{Client: c, Send: send, Recv: recv}
	age := time.Duration(now.UnixMilli()-hello.UnixMilli) * time.Millisecond
	if age > maxAge || -age > maxAge {
		return a, StaleHello
	}
	if run != nil && run.Epoch != 0 && hello.Epoch != run.Epoch {
		if hello.UnixMilli < run.StartMilli || hello.Target.IsValid() && hello.Epoch != 0 {
			return a, OldEpoch
		}
	}
	if hello.Target.IsValid() && !c.Allow.Allows(hello.Target) {
		return a, ForbiddenTarget
	}
	return a, Admitted
}

// OpenToken opens a connect token with the roster's token key and checks
// its validity window at now, into t (its client ID points into scratch, at
// least token.MaxLen bytes): Admitted, or TokenMalformed (also when the
// roster has no token key), TokenForged, TokenExpired or TokenNotYet. Admit
// calls it for a token hello; a program calls it for a router that presents
// its token elsewhere (the proxy's TLS fallback).
func OpenToken(r *Roster, tok, scratch []byte, now time.Time, t *token.Opened) Refusal {
	if r.Tokens == nil {
		return TokenMalformed
	}
	switch err := r.Tokens.Open(tok, scratch, now, t); err {
	case nil:
		return Admitted
	case token.ErrForged:
		return TokenForged
	case token.ErrExpired:
		return TokenExpired
	case token.ErrNotYet:
		return TokenNotYet
	}
	return TokenMalformed
}

func admitToken(r *Roster, hdr *wire.Header, hello *wire.Hello, dg []byte, off int, scratch []byte, maxAge time.Duration, now time.Time, run *Run) (Admission, Refusal) {
	var tb [token.MaxLen]byte
	var t token.Opened
	if why := OpenToken(r, hello.Token, tb[:], now, &t); why != Admitted {
		return Admission{}, why
	}
	rate, burst := r.TokenRatePPS, r.TokenBurst
	if rate <= 0 {
		rate = DefaultRatePPS
	}
	if burst <= 0 {
		burst = int(rate/10) + 64
	}
	srate := r.TokenSessionRate
	if srate <= 0 {
		srate = DefaultSessionRate
	}
	// The token's own session limit is its client's max_sessions; the
	// buckets start at the first Take or OpenSession (now < 0).
	c := newClient(string(t.ClientID), t.ClientKey, t.Allow, rate, burst, int64(t.Sessions), srate, -1)
	a, why := checkHello(c, &t.ClientKey, hdr, hello, dg, off, scratch, maxAge, now, run)
	if why != Admitted {
		return a, why
	}
	owner, ok := r.Seen.Use(t.ID, t.Expires, t.Sessions, hdr.Session, now.Unix(), c)
	if !ok {
		return a, TokenReplayed
	}
	// Every session of the token shares the client of its first one, so
	// the rate, session limit and session rate are the token's, not a
	// session's.
	if oc, _ := owner.(*Client); oc != nil {
		a.Client = oc
	}
	return a, Admitted
}
