// Package clients holds the routers a proxy or an intermediate proxy serves: the
// [[client]] config tables (ID, pre-shared key, allowlist, rate limit), their
// checks, and the run-time client with its per-client token bucket.
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
	var errs config.Errors
	bad := func(key, format string, args ...any) {
		var e *config.Error
		if errors.As(meta.Errorf(key, format, args...), &e) {
			errs = append(errs, e)
		}
	}
	if len(cs) == 0 {
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
		t[cc.ID] = &Client{ID: cc.ID, Key: key, Allow: al, rate: cc.RatePPS,
			burst: float64(cc.Burst), tokens: float64(cc.Burst), last: now,
			maxSessions: int64(cc.MaxSessions), srate: srate, stokens: srate, slast: now}
	}
	return t, nil
}

// Take reports whether the client may have one more datagram forwarded now.
func (c *Client) Take(now int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
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
	ForbiddenTarget         // the target is outside the client's allowlist
	// OldEpoch: the hello was made for an earlier run of this program (a
	// replay of a capture from before its restart), or is a game session's
	// hello from a router that has not heard of the restart yet.
	OldEpoch
	SessionLimit // the client holds its max_sessions already (OpenSession)
	SessionRate  // the client opens sessions faster than session_rate
)

// String names the refusal as the programs' counters and logs do.
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
func Admit(table map[string]*Client, hdr *wire.Header, hello *wire.Hello, dg []byte, off int, scratch []byte, maxAge time.Duration, now time.Time, run *Run) (Admission, Refusal) {
	c := table[string(hello.ClientID())]
	if c == nil {
		return Admission{}, UnknownClient
	}
	send, recv, err := wire.DeriveKeysEpoch(&c.Key, &hello.Salt, hdr.Session, hello.Epoch, wire.RoleServer)
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
