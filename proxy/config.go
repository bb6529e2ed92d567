package proxy

import (
	"github.com/raicnet/raic/pkg/clients"
	"net/netip"
	"time"

	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/logging"
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
	// Clients are the routers allowed to use this proxy.
	Clients []ClientConfig `toml:"client"`
}

// ClientConfig is one [[client]] table (see package clients).
type ClientConfig = clients.Config

// Defaults.
const (
	DefaultListen      = "0.0.0.0:4500"
	DefaultMaxSessions = 10000
	DefaultSessionIdle = 60 * time.Second
	DefaultReplyWindow = replypath.DefaultWindow // routers refresh every path once a second
	DefaultHelloMaxAge = 30 * time.Second
	DefaultRatePPS     = clients.DefaultRatePPS
)

// LoadConfig reads, defaults and checks a proxy config file. Errors name the file,
// line and key.
func LoadConfig(path string) (*Config, error) {
	var c Config
	meta, err := config.Load(path, &c)
	if err != nil {
		return nil, err
	}
	if err := c.check(meta); err != nil {
		return nil, err
	}
	return &c, nil
}

// ParseConfig is LoadConfig for a config held in a string (name is used in errors).
func ParseConfig(name, text string) (*Config, error) {
	var c Config
	meta, err := config.Decode(name, text, &c)
	if err != nil {
		return nil, err
	}
	if err := c.check(meta); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) check(meta *config.Meta) error {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if _, err := netip.ParseAddrPort(c.Listen); err != nil {
		return meta.Errorf("listen", "not an address:port: %v", err)
	}
	if c.TCPListen != "" {
		if _, err := netip.ParseAddrPort(c.TCPListen); err != nil {
			return meta.Errorf("tcp_listen", "not an address:port: %v", err)
		}
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if _, err := logging.ParseLevel(c.LogLevel); err != nil {
		return meta.Errorf("log_level", "%v", err)
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = DefaultMaxSessions
	}
	if c.MaxSessions < 1 {
		return meta.Errorf("max_sessions", "must be at least 1")
	}
	setDur := func(d *config.Duration, def time.Duration, key string) error {
		if d.Duration == 0 {
			d.Duration = def
		}
		if d.Duration < 0 {
			return meta.Errorf(key, "must be positive")
		}
		return nil
	}
	if err := setDur(&c.SessionIdle, DefaultSessionIdle, "session_idle"); err != nil {
		return err
	}
	if err := setDur(&c.ReplyWindow, DefaultReplyWindow, "reply_window"); err != nil {
		return err
	}
	if err := setDur(&c.HelloMaxAge, DefaultHelloMaxAge, "hello_max_age"); err != nil {
		return err
	}
	if err := c.checkLoad(meta); err != nil {
		return err
	}
	if err := c.checkProbe(meta); err != nil {
		return err
	}
	if err := clients.Check(meta, c.Clients, "the proxy"); err != nil {
		return err
	}
	return nil
}
