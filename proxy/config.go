package proxy

import (
	"time"

	"github.com/raicnet/raic/pkg/clients"

	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/logging"
	"github.com/raicnet/raic/pkg/quality"
	"github.com/raicnet/raic/pkg/replypath"
)

// Config is the proxy's TOML configuration.
type Config struct {
	// Listen is the UDP address routers send to.
	Listen string `toml:"listen"`
	// Metrics, when set, serves Prometheus text at http://Metrics/metrics.
	Metrics string `toml:"metrics"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `toml:"log_level"`
	// MaxSessions bounds the session table; the least recently used session is
	// evicted (and counted) when a new one would exceed it.
	MaxSessions int `toml:"max_sessions"`
	// SessionIdle ends a session after this long without traffic either way.
	SessionIdle config.Duration `toml:"session_idle"`
	// KeepServerPort keeps the server-side socket of an ended session this
	// long for a new session of the same client and flow (a restarted
	// router's), so the game server sees the same source port; 0: off.
	KeepServerPort config.Duration `toml:"keep_server_port"`
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
	// ReportInterval is how often each session's router gets a quality report
	// (received, lost, late, lag) on each of its paths; "0s" turns them off.
	ReportInterval config.Duration `toml:"report_interval"`
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
	DefaultListen         = "0.0.0.0:4500"
	DefaultMaxSessions    = 10000
	DefaultSessionIdle    = 60 * time.Second
	DefaultKeepServerPort = 30 * time.Second
	DefaultReplyWindow    = replypath.DefaultWindow // routers refresh every path once a second
	DefaultHelloMaxAge    = 30 * time.Second
	DefaultRatePPS        = clients.DefaultRatePPS
)

// DefaultConfig is the configuration before a file is read: every key a file
// leaves out keeps the value it has here.
func DefaultConfig() Config {
	return Config{
		Listen:          DefaultListen,
		LogLevel:        "info",
		MaxSessions:     DefaultMaxSessions,
		SessionIdle:     config.Duration{Duration: DefaultSessionIdle},
		KeepServerPort:  config.Duration{Duration: DefaultKeepServerPort},
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
		// quality reports to the routers (pkg/quality)
		ReportInterval: config.Duration{Duration: quality.DefaultInterval},
	}
}

// LoadConfig reads, defaults and checks a proxy config file. Every error of
// the file is returned at once, each naming the file, line and key.
func LoadConfig(path string) (*Config, error) {
	c := DefaultConfig()
	if err := config.Check(path, &c, c.check); err != nil {
		return nil, err
	}
	return &c, nil
}

// ParseConfig is LoadConfig for a config held in a string (name is used in errors).
func ParseConfig(name, text string) (*Config, error) {
	c := DefaultConfig()
	if err := config.CheckText(name, text, &c, c.check); err != nil {
		return nil, err
	}
	return &c, nil
}

// check validates c, decoded over DefaultConfig, recording every error on meta.
func (c *Config) check(meta *config.Meta) {
	if ap, ok := meta.AddrPort("listen", c.Listen); ok {
		meta.Listen("listen", ap)
	}
	if c.Metrics != "" {
		meta.HostPort("metrics", c.Metrics)
	}
	if c.TCPListen != "" {
		// TCP, so it may share the UDP listen port.
		meta.AddrPort("tcp_listen", c.TCPListen)
	}
	if _, err := logging.ParseLevel(c.LogLevel); err != nil {
		meta.Report("log_level", "%v", err)
	}
	meta.Int("max_sessions", c.MaxSessions, 1, maxSessionsCap)
	meta.Int("workers", c.Workers, 0, maxWorkers)
	meta.Duration("session_idle", c.SessionIdle.Duration, time.Second, 24*time.Hour)
	meta.Duration("keep_server_port", c.KeepServerPort.Duration, 0, 10*time.Minute)
	meta.Duration("reply_window", c.ReplyWindow.Duration, 100*time.Millisecond, time.Minute)
	meta.Duration("hello_max_age", c.HelloMaxAge.Duration, time.Second, time.Hour)
	if c.ReportInterval.Duration != 0 {
		meta.Duration("report_interval", c.ReportInterval.Duration, quality.MinInterval, quality.MaxInterval)
	}
	c.checkLoad(meta)
	c.checkProbe(meta)
	c.checkStudio(meta)
	meta.Add(clients.CheckTokens(meta, c.Clients, "the proxy", c.tokenKey != nil))
}

// maxWorkers bounds workers: far more read loops than cores only adds sockets.
const maxWorkers = 256

// maxSessionsCap bounds max_sessions: each session holds a socket.
const maxSessionsCap = 1 << 22
