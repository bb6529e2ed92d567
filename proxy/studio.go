package proxy

// What a studio running a fleet of proxies needs beside the packet path:
// connect tokens (players admitted with no per-player config), a header that
// tells the game server each player's real address, health endpoints for load
// balancers and orchestrators, a graceful drain on SIGTERM, and a reload of the
// client and token tables on SIGHUP that keeps every session.

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/raicnet/raic/pkg/allow"
	"github.com/raicnet/raic/pkg/clients"
	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/proxyproto"
	"github.com/raicnet/raic/pkg/token"
	"github.com/raicnet/raic/pkg/wire"
)

// StudioConfig are the proxy's keys for running it as a studio's fleet.
type StudioConfig struct {
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
	// draining) over HTTP; when it equals Metrics, one server serves all three.
	HealthListen string `toml:"health_listen"`
	// DrainTimeout: on SIGTERM the proxy stops admitting sessions and serves
	// those it has until they end or this long has passed.
	DrainTimeout config.Duration `toml:"drain_timeout"`
	// Servers give per-server options, for whichever client reaches them.
	Servers []ServerConfig `toml:"server"`

	tokenKey *wire.Key
	servers  []serverRule
}

// ServerConfig is one [[server]] table.
type ServerConfig struct {
	// Match is the servers it applies to, in allowlist syntax
	// ("198.18.41.0/24:27000-27050").
	Match string `toml:"match"`
	// ClientAddrHeader puts a header with the player's address in front of
	// each datagram forwarded to these servers: "proxy-v2" (PROXY protocol v2,
	// DGRAM) or "spp" (Cloudflare's Simple Proxy Protocol). Off by default.
	ClientAddrHeader string `toml:"client_addr_header"`
	// Upstream is how sessions to these servers are sent: "per-session"
	// (the default: a socket of each session's own, like a NAT) or "shared"
	// (a few sockets for all, each datagram told apart by its SPP header;
	// needs client_addr_header = "spp"; shared_upstream.go).
	Upstream string `toml:"upstream"`
}

type serverRule struct {
	match  allow.List
	header proxyproto.Kind
	shared bool // upstream = "shared"
}

// DefaultDrainTimeout is how long a drain waits for sessions to end.
const DefaultDrainTimeout = 30 * time.Second

// Bounds of the studio keys.
const (
	maxTokensCap    = 1 << 24 // token table entries (about 200 bytes each)
	maxTokenBurst   = 1 << 30 // as a [[client]]'s burst
	maxDrainTimeout = time.Hour
)

// checkStudio validates the studio keys, decoded over DefaultConfig,
// recording every error on meta; it reads the token key file.
func (c *StudioConfig) checkStudio(meta *config.Meta) {
	c.tokenKey = nil
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
			c.tokenKey = &k
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
	c.servers = nil
	for i, sc := range c.Servers {
		key := func(k string) string { return fmt.Sprintf("server.%d.%s", i, k) }
		m, err := allow.Parse([]string{sc.Match})
		if err != nil || strings.TrimSpace(sc.Match) == "" {
			meta.Report(key("match"), "not an allowlist entry: %v", err)
			continue
		}
		h, err := proxyproto.ParseKind(sc.ClientAddrHeader)
		if err != nil {
			meta.Report(key("client_addr_header"), "%v", err)
			continue
		}
		shared, err := parseUpstream(sc.Upstream, h)
		if err != nil {
			meta.Report(key("upstream"), "%v", err)
			continue
		}
		c.servers = append(c.servers, serverRule{match: m, header: h, shared: shared})
	}
}

// headerFor is the client-address header for target: the first [[server]]
// that matches it decides.
func (c *StudioConfig) headerFor(target netip.AddrPort) proxyproto.Kind {
	for _, r := range c.servers {
		if r.match.Allows(target) {
			return r.header
		}
	}
	return proxyproto.None
}

// newRoster builds the admission tables of cfg, keeping seen (the tokens
// already used) across reloads.
func newRoster(cfg *Config, seen *token.Seen) (*clients.Roster, error) {
	if seen == nil && cfg.tokenKey != nil {
		seen = token.NewSeen(cfg.MaxTokens)
	}
	r, err := clients.NewRoster(cfg.Clients, cfg.tokenKey, seen, mono.Now())
	if err != nil {
		return nil, err
	}
	r.TokenRatePPS, r.TokenBurst = cfg.TokenRatePPS, cfg.TokenBurst
	return r, nil
}

// Reload takes the [[client]] tables, the token key and the [[server]] options
// of a new, checked config (cli calls it on SIGHUP). Sessions already open
// keep going with what they were admitted with; new hellos meet the new
// tables, so a removed client can open nothing more. Other keys need a
// restart.
func (s *Server) Reload(cfg *Config) error {
	old := s.in.Roster()
	r, err := newRoster(cfg, old.Seen)
	if err != nil {
		return err
	}
	s.studio.Store(&cfg.StudioConfig)
	if s.shared == nil && cfg.anyShared() {
		s.log.Warn("upstream = \"shared\" takes effect at the next start: until then new sessions get sockets of their own")
	}
	s.in.SetRoster(r) // gives the clients their fair share
	s.m.reloads.Inc()
	s.log.Info("reloaded", "clients", len(r.Clients), "tokens", r.Tokens != nil, "sessions", s.sessions.Len())
	return nil
}

// Drain stops admitting sessions and waits until the open ones have ended
// (idle, or closed by their routers) or the drain timeout has passed; cli
// calls it on SIGTERM before it stops the proxy. /readyz fails from its start,
// so a load balancer sends no new players here.
func (s *Server) Drain() {
	if s.in.Drain() {
		return
	}
	limit := s.studio.Load().DrainTimeout.Duration
	s.log.Info("draining: admitting no new sessions", "sessions", s.sessions.Len(), "drain_timeout", limit)
	deadline := time.Now().Add(limit)
	for s.sessions.Len() > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		s.sessions.Sweep(mono.Now())
	}
	s.log.Info("drained", "sessions_left", s.sessions.Len())
}

// Draining reports whether a drain has begun.
func (s *Server) Draining() bool { return s.in.Draining() }

// healthMux adds /healthz and /readyz to mux. /healthz answers while the
// process serves; /readyz only while it also admits sessions.
func (s *Server) healthMux(mux *http.ServeMux) {
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if s.closing.Load() {
			http.Error(w, "stopping", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		switch {
		case s.closing.Load():
			http.Error(w, "stopping", http.StatusServiceUnavailable)
		case s.in.Draining():
			http.Error(w, "draining", http.StatusServiceUnavailable)
		default:
			fmt.Fprintf(w, "ready: %d sessions\n", s.sessions.Len())
		}
	})
}

// listenHTTP binds the metrics and health endpoints (New calls it, so the
// proxy is reachable when New returns; Run serves them): one server when they
// share an address, two otherwise.
func (s *Server) listenHTTP() error {
	type srv struct {
		addr string
		mux  *http.ServeMux
	}
	var servers []srv
	if s.cfg.Metrics != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", s.reg.Handler())
		if s.cfg.HealthListen == s.cfg.Metrics {
			s.healthMux(mux)
		}
		servers = append(servers, srv{s.cfg.Metrics, mux})
	}
	if s.cfg.HealthListen != "" && s.cfg.HealthListen != s.cfg.Metrics {
		mux := http.NewServeMux()
		s.healthMux(mux)
		servers = append(servers, srv{s.cfg.HealthListen, mux})
	}
	for _, sv := range servers {
		ln, err := net.Listen("tcp", sv.addr)
		if err != nil {
			for _, l := range s.httpLns {
				l.Close()
			}
			return fmt.Errorf("http listener %s: %w", sv.addr, err)
		}
		s.httpSrvs = append(s.httpSrvs, &http.Server{Handler: sv.mux, ReadHeaderTimeout: 5 * time.Second})
		s.httpLns = append(s.httpLns, ln)
		s.httpAddrs = append(s.httpAddrs, ln.Addr().String())
	}
	return nil
}

// HTTPAddrs are the addresses the metrics and health endpoints listen on (in
// that order).
func (s *Server) HTTPAddrs() []string { return s.httpAddrs }

// clientAddrHeader writes the header that tells the server the player's
// address (the router address the session began from) into b, and returns
// its length; 0 when the session's server wants none.
func (ps *proxySession) clientAddrHeader(b []byte) int {
	return ps.header.Put(b, ps.origin, ps.target)
}
