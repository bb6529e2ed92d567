package proxy

// What a studio running a fleet of proxies needs beside the packet path:
// connect tokens (players admitted with no per-player config), a header that
// tells the game server each player's real address, health endpoints for load
// balancers and orchestrators, a graceful drain on SIGTERM, and a reload of the
// client and token tables on SIGHUP that keeps every session.

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/raicnet/raic/pkg/allow"
	"github.com/raicnet/raic/pkg/clients"
	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/fleet"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/proxyproto"
	"github.com/raicnet/raic/pkg/token"
	"github.com/raicnet/raic/pkg/wire"
)

// StudioConfig are the proxy's keys for running it as a studio's fleet.
type StudioConfig struct {
	// Config: token_key, token_key_file, token_rate_pps, token_burst,
	// max_tokens, health_listen, drain_timeout (package fleet, the same in
	// the intermediate).
	fleet.Config
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
const DefaultDrainTimeout = fleet.DefaultDrainTimeout

// checkStudio validates the studio keys, decoded over DefaultConfig,
// recording every error on meta; it reads the token key file.
func (c *StudioConfig) checkStudio(meta *config.Meta) {
	c.Config.Check(meta)
	c.tokenKey = c.Config.Key()
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
	return cfg.StudioConfig.Roster(cfg.Clients, seen)
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
	fleet.Wait(s.log, s.studio.Load().DrainTimeout.Duration, s.sessions.Len, func() { s.sessions.Sweep(mono.Now()) })
}

// Draining reports whether a drain has begun.
func (s *Server) Draining() bool { return s.in.Draining() }

// listenHTTP binds the metrics and health endpoints (New calls it, so the
// proxy is reachable when New returns; Run serves them): one server when they
// share an address, two otherwise (package fleet).
func (s *Server) listenHTTP() error {
	h, err := fleet.Listen(s.cfg.Metrics, s.reg.Handler(), s.cfg.HealthListen, fleet.State{
		Stopping: s.closing.Load,
		Draining: s.in.Draining,
		Sessions: s.sessions.Len,
	})
	if err != nil {
		return err
	}
	s.httpSrvs, s.httpLns, s.httpAddrs = h.Servers, h.Listeners, h.Addrs
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
