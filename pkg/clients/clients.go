// Package clients holds the routers a proxy or an intermediate proxy serves: the
// [[client]] config tables (ID, pre-shared key, allowlist, rate limit), their
// checks, and the run-time client with its per-client token bucket.
package clients

import (
	"crypto/cipher"
	"errors"
	"fmt"
	"math"
	"sync"
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
}

// DefaultRatePPS is a client's rate limit when its table sets none.
const DefaultRatePPS = 5000

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
	}
	if len(errs) == 0 {
		return nil
	}
	return errs
}

// maxBurst bounds burst (the token bucket holds this many datagrams).
const maxBurst = 1 << 30

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

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
		t[cc.ID] = &Client{ID: cc.ID, Key: key, Allow: al, rate: cc.RatePPS,
			burst: float64(cc.Burst), tokens: float64(cc.Burst), last: now}
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

// Refusal says why Admit turned a hello away; each maps to a counter of the
// program that asked.
type Refusal int

const (
	Admitted        Refusal = iota
	UnknownClient           // no [[client]] with the hello's ID
	AuthFailed              // the datagram does not open with that client's key
	StaleHello              // the hello's time is further from ours than maxAge
	ForbiddenTarget         // the target is outside the client's allowlist
)

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
func Admit(table map[string]*Client, hdr *wire.Header, hello *wire.Hello, dg []byte, off int, scratch []byte, maxAge time.Duration, now time.Time) (Admission, Refusal) {
	c := table[string(hello.ClientID())]
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
