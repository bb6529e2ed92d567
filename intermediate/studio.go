package intermediate

// What a studio running intermediates in its fleet needs beside the packet
// path, shared with the proxy through package fleet: connect tokens (players
// admitted with no [[client]] of their own; their sessions are relayed to
// the next hop under this intermediate's client ID, as every session is),
// health endpoints, a graceful drain on SIGTERM, and a reload of the client
// and token tables on SIGHUP that keeps every session.

import (
	"time"

	"github.com/raicnet/raic/pkg/fleet"
	"github.com/raicnet/raic/pkg/mono"
)

// Reload takes the [[client]] tables, the token key and drain_timeout of a
// new, checked config (cli calls it on SIGHUP). Sessions already open keep
// going with what they were admitted with, and so do their sessions at the
// next hop; new hellos meet the new tables, so a removed client can open
// nothing more. The tokens already used stay remembered. Other keys (listen,
// [next], health_listen) need a restart.
func (s *Server) Reload(cfg *Config) error {
	r, err := cfg.Config.Roster(cfg.Clients, s.in.Roster().Seen)
	if err != nil {
		return err
	}
	s.in.SetRoster(r) // gives the clients their fair share
	s.drainTimeout.Store(int64(cfg.DrainTimeout.Duration))
	s.m.reloads.Inc()
	s.log.Info("reloaded", "clients", len(r.Clients), "tokens", r.Tokens != nil, "sessions", s.relays.Len())
	return nil
}

// Drain stops admitting sessions and waits until the open ones have ended
// (idle, or closed by their routers) or drain_timeout has passed; cli calls
// it on SIGTERM before it stops the intermediate (which then closes what is
// left at the next hop). /readyz fails from its start.
func (s *Server) Drain() {
	if s.in.Drain() {
		return
	}
	fleet.Wait(s.log, time.Duration(s.drainTimeout.Load()), s.relays.Len, func() { s.relays.Sweep(mono.Now()) })
}

// Draining reports whether a drain has begun.
func (s *Server) Draining() bool { return s.in.Draining() }

// listenHTTP binds the metrics and health endpoints (New calls it, so the
// intermediate is reachable when New returns; Run serves them).
func (s *Server) listenHTTP() (err error) {
	s.http, err = fleet.Listen(s.cfg.Metrics, s.reg.Handler(), s.cfg.HealthListen, fleet.State{
		Stopping: s.closing.Load,
		Draining: s.in.Draining,
		Sessions: s.relays.Len,
	})
	return err
}

// HTTPAddrs are the addresses the metrics and health endpoints listen on (in
// that order).
func (s *Server) HTTPAddrs() []string { return s.http.Addrs }
