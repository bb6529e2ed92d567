// Package fleet is what the proxy and the intermediate need to run in a
// studio's fleet beside their packet path, shared so both read and behave
// alike: the connect-token keys (token_key, token_key_file, token_rate_pps,
// token_burst, max_tokens) and the admission roster built from them and the
// [[client]] tables, kept across reloads; health endpoints for load
// balancers and orchestrators (/healthz, /readyz, on their own address or
// beside /metrics: health_listen); and the wait of a graceful drain
// (drain_timeout). The signals themselves (SIGHUP reload, SIGTERM drain) are
// package cli's.
package fleet

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/raicnet/raic/pkg/clients"
	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/token"
	"github.com/raicnet/raic/pkg/wire"
)

// Config are the fleet keys of a program that admits connect tokens and is
// drained and health-checked by an orchestrator.
type Config struct {
	// TokenKey (or TokenKeyFile, a file holding it) is the key the studio's
	// backend seals connect tokens with (raic-token -genkey). With it, players
	// with a token are admitted without a [[client]] table.
	TokenKey     string `toml:"token_key"`
	TokenKeyFile string `toml:"token_key_file"`
	// TokenRatePPS and TokenBurst limit the datagrams of each token (all its
	// sessions together), as rate_pps and burst do a [[client]]'s; the
	// token's own session limit is its max_sessions.
	TokenRatePPS float64 `toml:"token_rate_pps"`
	TokenBurst   int     `toml:"token_burst"`
	// MaxTokens bounds the table of tokens seen (kept until each expires).
	MaxTokens int `toml:"max_tokens"`
	// HealthListen serves /healthz (alive) and /readyz (serving and not
	// draining) over HTTP; when it equals metrics, one server serves all three.
	HealthListen string `toml:"health_listen"`
	// DrainTimeout: on SIGTERM the program stops admitting sessions and serves
	// those it has until they end or this long has passed.
	DrainTimeout config.Duration `toml:"drain_timeout"`

	key *wire.Key
}

// DefaultDrainTimeout is how long a drain waits for sessions to end.
const DefaultDrainTimeout = 30 * time.Second

// Bounds of the keys.
const (
	maxTokensCap    = 1 << 24 // token table entries (about 200 bytes each)
	maxTokenBurst   = 1 << 30 // as a [[client]]'s burst
	maxDrainTimeout = time.Hour
)

// Defaults are the keys before a file is read.
func Defaults() Config {
	return Config{
		TokenRatePPS: clients.DefaultRatePPS,
		MaxTokens:    clients.DefaultSeenTokens,
		DrainTimeout: config.Duration{Duration: DefaultDrainTimeout},
	}
}

// Check validates the keys, decoded over Defaults, recording every error on
// meta; it reads the token key file.
func (c *Config) Check(meta *config.Meta) {
	c.key = nil
	keyText, keyName := c.TokenKey, "token_key"
	switch {
	case c.TokenKey != "" && c.TokenKeyFile != "":
		meta.Report("token_key_file", "set token_key or token_key_file, not both")
		keyText = ""
	case c.TokenKeyFile != "":
		b, err := os.ReadFile(c.TokenKeyFile)
		if err != nil {
			meta.Report("token_key_file", "%v", err)
		}
		keyText, keyName = string(b), "token_key_file"
	}
	if keyText != "" {
		if k, err := wire.ParseKey(keyText); err != nil {
			meta.Report(keyName, "%v", err)
		} else {
			c.key = &k
		}
	}
	meta.Rate("token_rate_pps", c.TokenRatePPS, clients.MaxRatePPS)
	if !meta.IsDefined("token_burst") {
		// As a [[client]]'s: a tenth of a second of its rate, and some.
		c.TokenBurst = int(min(c.TokenRatePPS, maxTokenBurst)/10) + 64
	} else {
		meta.Int("token_burst", c.TokenBurst, 1, maxTokenBurst)
	}
	meta.Int("max_tokens", c.MaxTokens, 1, maxTokensCap)
	if c.HealthListen != "" {
		meta.AddrPort("health_listen", c.HealthListen)
	}
	meta.Duration("drain_timeout", c.DrainTimeout.Duration, 0, maxDrainTimeout)
}

// Key is the checked token key; nil when tokens are off.
func (c *Config) Key() *wire.Key { return c.key }

// Roster builds the admission tables of cs and the token key, keeping seen
// (the tokens already used; nil at the first start) across reloads, so a
// reload forgets no token's sessions.
func (c *Config) Roster(cs []clients.Config, seen *token.Seen) (*clients.Roster, error) {
	if seen == nil && c.key != nil {
		seen = token.NewSeen(c.MaxTokens)
	}
	r, err := clients.NewRoster(cs, c.key, seen, mono.Now())
	if err != nil {
		return nil, err
	}
	r.TokenRatePPS, r.TokenBurst = c.TokenRatePPS, c.TokenBurst
	return r, nil
}

// State is what the health endpoints ask the program.
type State struct {
	Stopping func() bool // the program is closing: both endpoints fail
	Draining func() bool // a drain has begun: /readyz fails
	Sessions func() int  // shown by /readyz
}

// Handle adds /healthz and /readyz to mux. /healthz answers while the
// process serves; /readyz only while it also admits sessions.
func (st State) Handle(mux *http.ServeMux) {
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if st.Stopping() {
			http.Error(w, "stopping", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		switch {
		case st.Stopping():
			http.Error(w, "stopping", http.StatusServiceUnavailable)
		case st.Draining():
			http.Error(w, "draining", http.StatusServiceUnavailable)
		default:
			fmt.Fprintf(w, "ready: %d sessions\n", st.Sessions())
		}
	})
}

// HTTP is a program's bound metrics and health endpoints.
type HTTP struct {
	Servers   []*http.Server
	Listeners []net.Listener
	Addrs     []string // metrics first, then health, when each is on
}

// Listen binds the metrics endpoint (metrics, served by handler; "" for
// none) and the health endpoints (health, answering for st; "" for none):
// one server when they share an address, two otherwise. It binds at once,
// so the program is reachable when its New returns; Serve serves them.
func Listen(metrics string, handler http.Handler, health string, st State) (*HTTP, error) {
	type srv struct {
		addr string
		mux  *http.ServeMux
	}
	var servers []srv
	if metrics != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", handler)
		if health == metrics {
			st.Handle(mux)
		}
		servers = append(servers, srv{metrics, mux})
	}
	if health != "" && health != metrics {
		mux := http.NewServeMux()
		st.Handle(mux)
		servers = append(servers, srv{health, mux})
	}
	h := &HTTP{}
	for _, sv := range servers {
		ln, err := net.Listen("tcp", sv.addr)
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("http listener %s: %w", sv.addr, err)
		}
		h.Servers = append(h.Servers, &http.Server{Handler: sv.mux, ReadHeaderTimeout: 5 * time.Second})
		h.Listeners = append(h.Listeners, ln)
		h.Addrs = append(h.Addrs, ln.Addr().String())
	}
	return h, nil
}

// Serve serves every endpoint, each on its own goroutine.
func (h *HTTP) Serve() {
	if h == nil {
		return
	}
	for i, s := range h.Servers {
		go s.Serve(h.Listeners[i])
	}
}

// Close stops them.
func (h *HTTP) Close() {
	if h == nil {
		return
	}
	for i, s := range h.Servers {
		s.Close()
		h.Listeners[i].Close() // Close does not close a listener Serve never took
	}
}

// Wait is a drain's wait: it returns once sessions reports none left or
// limit has passed, calling sweep (ending idle sessions) every 50 ms, and
// logs the start and the end.
func Wait(log *slog.Logger, limit time.Duration, sessions func() int, sweep func()) {
	log.Info("draining: admitting no new sessions", "sessions", sessions(), "drain_timeout", limit)
	deadline := time.Now().Add(limit)
	for sessions() > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		sweep()
	}
	log.Info("drained", "sessions_left", sessions())
}
