package ingress

import (
	"time"

	"github.com/raicnet/raic/pkg/clients"
	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/replypath"
)

// Settings are the config keys of the router-facing side, the same in the
// proxy and the intermediate: each embeds them in its Config, so they read,
// default and check alike in both.
type Settings struct {
	// Common is metrics and log_level.
	config.Common
	// Listen is the UDP address routers (or an intermediate before this one)
	// send to.
	Listen string `toml:"listen"`
	// MaxSessions bounds the session table; the least recently used session
	// is evicted (and counted, see Ends) when a new one would exceed it.
	MaxSessions int `toml:"max_sessions"`
	// SessionIdle ends a session after this long without traffic either way.
	SessionIdle config.Duration `toml:"session_idle"`
	// ReplyWindow: replies go to every address the session's datagrams came
	// from within this window (one per uplink of the router).
	ReplyWindow config.Duration `toml:"reply_window"`
	// HelloMaxAge refuses hellos whose timestamp is further than this from
	// this host's clock, so a captured hello cannot reopen a session later.
	HelloMaxAge config.Duration `toml:"hello_max_age"`
	// Clients are the routers allowed in (see package clients).
	Clients []clients.Config `toml:"client"`
}

// Defaults and bounds of Settings.
const (
	DefaultListen      = "0.0.0.0:4500"
	DefaultMaxSessions = 10000
	DefaultSessionIdle = 60 * time.Second
	DefaultReplyWindow = replypath.DefaultWindow // routers refresh every path once a second
	DefaultHelloMaxAge = 30 * time.Second
	// MaxSessionsCap bounds max_sessions: each session may hold a socket.
	MaxSessionsCap = 1 << 22
)

// DefaultSettings are Settings before a file is read.
func DefaultSettings() Settings {
	return Settings{
		Common:      config.DefaultCommon(),
		Listen:      DefaultListen,
		MaxSessions: DefaultMaxSessions,
		SessionIdle: config.Duration{Duration: DefaultSessionIdle},
		ReplyWindow: config.Duration{Duration: DefaultReplyWindow},
		HelloMaxAge: config.Duration{Duration: DefaultHelloMaxAge},
	}
}

// Check records what is wrong with the settings on meta; who names the
// program in the clients' errors ("the proxy"); with tokens (connect tokens
// admitted too) an empty [[client]] list is fine.
func (s *Settings) Check(meta *config.Meta, who string, tokens bool) {
	if ap, ok := meta.AddrPort("listen", s.Listen); ok {
		meta.Listen("listen", ap)
	}
	s.Common.Check(meta)
	meta.Int("max_sessions", s.MaxSessions, 1, MaxSessionsCap)
	meta.Duration("session_idle", s.SessionIdle.Duration, time.Second, 24*time.Hour)
	meta.Duration("reply_window", s.ReplyWindow.Duration, 100*time.Millisecond, time.Minute)
	meta.Duration("hello_max_age", s.HelloMaxAge.Duration, time.Second, time.Hour)
	meta.Add(clients.CheckTokens(meta, s.Clients, who, tokens))
}
