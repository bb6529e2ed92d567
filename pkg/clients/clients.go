// Package clients holds the routers a proxy or an intermediate proxy serves: the
// [[client]] config tables (ID, pre-shared key, allowlist, rate limit), their
// checks, the run-time client with its per-client token bucket, and Admit, the
// one admission of a hello, by pre-shared key or by connect token.
package clients

import (
	"crypto/cipher"
	"fmt"
	"sync"
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
}

// DefaultRatePPS is a client's rate limit when its table sets none.
const DefaultRatePPS = 5000

// Check fills in defaults and checks every client; errors name the file, line
// and key (client.N.field). who names the program in the error for an empty
// list ("the proxy").
func Check(meta *config.Meta, cs []Config, who string) error {
	return CheckTokens(meta, cs, who, false)
}

// CheckTokens is Check for a program that may also admit connect tokens:
// with tokens on, an empty client list is fine.
func CheckTokens(meta *config.Meta, cs []Config, who string, tokens bool) error {
	if len(cs) == 0 && !tokens {
		return meta.Errorf("client", "no [[client]] configured: %s would serve nobody", who)
	}
	seen := map[string]bool{}
	for i := range cs {
		cl := &cs[i]
		key := func(k string) string { return fmt.Sprintf("client.%d.%s", i, k) }
		if cl.ID == "" || len(cl.ID) > wire.MaxClientID {
			return meta.Errorf(key("id"), "must be 1 to %d bytes", wire.MaxClientID)
		}
		if seen[cl.ID] {
			return meta.Errorf(key("id"), "client %q is configured twice", cl.ID)
		}
		seen[cl.ID] = true
		if _, err := wire.ParseKey(cl.Key); err != nil {
			return meta.Errorf(key("key"), "%v", err)
		}
		if len(cl.Allow) == 0 {
			return meta.Errorf(key("allow"), "client %q may reach no server: list its servers in allow", cl.ID)
		}
		if _, err := allow.Parse(cl.Allow); err != nil {
			return meta.Errorf(key("allow"), "%v", err)
		}
		if cl.RatePPS == 0 {
			cl.RatePPS = DefaultRatePPS
		}
		if cl.RatePPS < 0 {
			return meta.Errorf(key("rate_pps"), "must be positive")
		}
		if cl.Burst == 0 {
			cl.Burst = int(cl.RatePPS/10) + 64
		}
		if cl.Burst < 1 {
			return meta.Errorf(key("burst"), "must be at least 1")
		}
	}
	return nil
}

// Client is a checked client at run time.
type Client struct {
	ID    string
	Key   wire.Key
	Allow allow.List

	mu     sync.Mutex // guards the token bucket; per client, not global
	tokens float64
	last   int64
	rate   float64
	burst  float64
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
		t[cc.ID] = newClient(cc.ID, key, al, cc.RatePPS, cc.Burst, now)
	}
	return t, nil
}

func newClient(id string, key wire.Key, al allow.List, rate float64, burst int, now int64) *Client {
	return &Client{ID: id, Key: key, Allow: al, rate: rate,
		burst: float64(burst), tokens: float64(burst), last: now}
}

// Roster is what Admit checks a hello against: the configured clients by ID
// and, when the program has a token key, the connect-token opener and the
// table of tokens already used. A program swaps its whole Roster on reload;
// sessions keep the *Client they were admitted with.
type Roster struct {
	Clients map[string]*Client
	Tokens  *token.Opener // nil: connect tokens are refused
	Seen    *token.Seen   // shared across reloads, so a reload forgets no token
	// TokenRatePPS and TokenBurst are the rate limit of each session admitted
	// by a token (0: DefaultRatePPS and its default burst).
	TokenRatePPS float64
	TokenBurst   int
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

// Refusal says why Admit turned a hello away; each maps to a counter of the
// program that asked.
type Refusal int

const (
	Admitted        Refusal = iota
	UnknownClient           // no [[client]] with the hello's ID
	AuthFailed              // the datagram does not open with that client's key
	StaleHello              // the hello's time is further from ours than maxAge
	ForbiddenTarget         // the target is outside the client's allowlist (or the token's servers)
	// Connect tokens (see package token).
	TokenMalformed // not a token of a version we read, or this program has no token key
	TokenForged    // does not open with the token key
	TokenExpired   // past its expiry
	TokenNotYet    // before its not-before
	TokenReplayed  // has already opened as many other sessions as it may
)

// Reason is the refusal's name in metrics (proxy_dropped_total{reason=...}).
func (r Refusal) Reason() string {
	switch r {
	case UnknownClient:
		return "unknown_client"
	case AuthFailed:
		return "auth"
	case StaleHello:
		return "stale_hello"
	case ForbiddenTarget:
		return "forbidden_target"
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
	return "admitted"
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
// A hello with a connect token is admitted by the token instead: it must open
// with the roster's token key and be within its validity window, the datagram
// must open with the client key inside it, the target must be one of its
// servers, and the token must not have opened its limit of other sessions
// already (checked last, so a forged datagram cannot use up a real token).
// Every refusal is silent; the caller counts it by Reason.
func Admit(r *Roster, hdr *wire.Header, hello *wire.Hello, dg []byte, off int, scratch []byte, maxAge time.Duration, now time.Time) (Admission, Refusal) {
	if len(hello.Token) > 0 {
		return admitToken(r, hdr, hello, dg, off, scratch, maxAge, now)
	}
	c := r.Clients[string(hello.ClientID())]
	if c == nil {
		return Admission{}, UnknownClient
	}
	send, recv, err := wire.DeriveKeys(&c.Key, &hello.Salt, hdr.Session, wire.RoleServer)
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
	if hello.Target.IsValid() && !c.Allow.Allows(hello.Target) {
		return a, ForbiddenTarget
	}
	return a, Admitted
}

func admitToken(r *Roster, hdr *wire.Header, hello *wire.Hello, dg []byte, off int, scratch []byte, maxAge time.Duration, now time.Time) (Admission, Refusal) {
	if r.Tokens == nil {
		return Admission{}, TokenMalformed
	}
	var tb [token.MaxLen]byte
	var t token.Opened
	switch err := r.Tokens.Open(hello.Token, tb[:], now, &t); err {
	case nil:
	case token.ErrForged:
		return Admission{}, TokenForged
	case token.ErrExpired:
		return Admission{}, TokenExpired
	case token.ErrNotYet:
		return Admission{}, TokenNotYet
	default:
		return Admission{}, TokenMalformed
	}
	send, recv, err := wire.DeriveKeys(&t.ClientKey, &hello.Salt, hdr.Session, wire.RoleServer)
	if err != nil {
		return Admission{}, AuthFailed
	}
	cp := scratch[:len(dg)]
	copy(cp, dg)
	if _, err := wire.Open(recv, cp, off); err != nil {
		return Admission{}, AuthFailed
	}
	rate, burst := r.TokenRatePPS, r.TokenBurst
	if rate <= 0 {
		rate = DefaultRatePPS
	}
	if burst <= 0 {
		burst = int(rate/10) + 64
	}
	c := newClient(string(t.ClientID), t.ClientKey, t.Allow, rate, burst, 0)
	c.last = -1 // the bucket starts full at its first Take
	a := Admission{Client: c, Send: send, Recv: recv}
	age := time.Duration(now.UnixMilli()-hello.UnixMilli) * time.Millisecond
	if age > maxAge || -age > maxAge {
		return a, StaleHello
	}
	if hello.Target.IsValid() && !c.Allow.Allows(hello.Target) {
		return a, ForbiddenTarget
	}
	if !r.Seen.Use(t.ID, t.Expires, t.Sessions, hdr.Session, now.Unix()) {
		return a, TokenReplayed
	}
	return a, Admitted
}
