package proxy

import (
	"time"

	"github.com/raicnet/raic/pkg/clients"
	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/replypath"
)

// Config is the proxy's TOML configuration.
type Config struct {
	// Serving is listen, metrics, log_level and max_sessions.
	config.Serving
	// SessionIdle ends a session after this long without traffic either way.
	SessionIdle config.Duration `toml:"session_idle"`
	// ReplyWindow: replies go to every address the session's datagrams came from
	// within this window (one per uplink of the router).
	ReplyWindow config.Duration `toml:"reply_window"`
	// HelloMaxAge refuses hellos whose timestamp is further than this from the
	// proxy's clock, so a captured hello cannot reopen a session later.
	HelloMaxAge config.Duration `toml:"hello_max_age"`
	// OverloadLatency and OverloadCPU: above either (the smoothed time to handle
	// a read batch, the share of the CPUs used) the proxy reports itself
	// overloaded (see overload.go).
	OverloadLatency config.Duration `toml:"overload_latency"`
	OverloadCPU     float64         `toml:"overload_cpu"`
	// ProbeTTL is how long a measured RTT to a server is used before it is
	// measured again; ProbeMaxTargets bounds the servers remembered (see probe.go).
	ProbeTTL        config.Duration `toml:"probe_ttl"`
	ProbeMaxTargets int             `toml:"probe_max_targets"`
	// TCPListen, when set, serves routers' aggregated connections on this
	// address:port: QUIC on UDP for their TCP flows, TLS on TCP for the
	// datagrams of routers whose network blocks UDP (see tcp.go).
	TCPListen string `toml:"tcp_listen"`
	// Workers is how many sockets share the listen address (SO_REUSEPORT),
	// each with its own read loop: 1 (the default) is one, 0 one per CPU
	// (GOMAXPROCS). Sessions are shared by all (see package ingress).
	Workers int `toml:"workers"`
	// Clients are the routers allowed to use this proxy.
	Clients []ClientConfig `toml:"client"`
	// Studio operation: connect tokens, client-address headers, health, drain
	// (see studio.go).
	StudioConfig
}

// ClientConfig is one [[client]] table (see package clients).
type ClientConfig = clients.Config

// Defaults.
const (
	DefaultListen      = config.DefaultServingListen
	DefaultMaxSessions = config.DefaultServingMaxSessions
	DefaultSessionIdle = 60 * time.Second
	DefaultReplyWindow = replypath.DefaultWindow // routers refresh every path once a second
	DefaultHelloMaxAge = 30 * time.Second
	DefaultRatePPS     = clients.DefaultRatePPS
)

// DefaultConfig is the configuration before a file is read: every key a file
// leaves out keeps the value it has here.
func DefaultConfig() Config {
	return Config{
		Serving:         config.DefaultServing(),
		SessionIdle:     config.Duration{Duration: DefaultSessionIdle},
		ReplyWindow:     config.Duration{Duration: DefaultReplyWindow},
		HelloMaxAge:     config.Duration{Duration: DefaultHelloMaxAge},
		OverloadLatency: config.Duration{Duration: DefaultOverloadLatency},
		OverloadCPU:     DefaultOverloadCPU,
		ProbeTTL:        config.Duration{Duration: DefaultProbeTTL},
		ProbeMaxTargets: DefaultProbeMaxTargets,
		StudioConfig: StudioConfig{
			TokenRatePPS: clients.DefaultRatePPS,
			MaxTokens:    clients.DefaultSeenTokens,
			DrainTimeout: config.Duration{Duration: DefaultDrainTimeout},
		},
		Workers: 1,
	}
}

// LoadConfig reads, defaults and checks a proxy config file. Every error of
// the file is returned at once, each naming the file, line and key.
func LoadConfig(path string) (*Config, error) {
	return config.LoadAs(path, DefaultConfig(), (*Config).check)
}

// ParseConfig is LoadConfig for a config held in a string (name is used in errors).
func ParseConfig(name, text string) (*Config, error) {
	return config.ParseAs(name, text, DefaultConfig(), (*Config).check)
}

// check validates c, decoded over DefaultConfig, recording every error on meta.
func (c *Config) check(meta *config.Meta) {
	c.Serving.Check(meta)
	if c.TCPListen != "" {
		// TCP, so it may share the UDP listen port.
		meta.AddrPort("tcp_listen", c.TCPListen)
	}
	meta.Int("workers", c.Workers, 0, maxWorkers)
	meta.Duration("session_idle", c.SessionIdle.Duration, time.Second, 24*time.Hour)
	meta.Duration("reply_window", c.ReplyWindow.Duration, 100*time.Millisecond, time.Minute)
	meta.Duration("hello_max_age", c.HelloMaxAge.Duration, time.Second, time.Hour)
	c.checkLoad(meta)
	c.checkProbe(meta)
	c.checkStudio(meta)
	meta.Add(clients.CheckTokens(meta, c.Clients, "the proxy", c.tokenKey != nil))
}

// maxWorkers bounds workers: far more read loops than cores only adds sockets.
const maxWorkers = 256
