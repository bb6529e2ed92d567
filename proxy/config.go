package proxy

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/raicnet/raic/pkg/allow"
	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/logging"
	"github.com/raicnet/raic/pkg/wire"
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
	// Clients are the routers allowed to use this proxy.
	Clients []ClientConfig `toml:"client"`
}

// ClientConfig is one [[client]] table.
type ClientConfig struct {
	// ID is what the router sends in its hello (1 to 32 bytes).
	ID string `toml:"id"`
	// Key is the client's pre-shared key, base64 or hex.
	Key string `toml:"key"`
	// Allow lists the servers this client may reach: "198.18.9.2", "198.18.9.0/24",
	// "198.18.9.2:27015", "198.18.9.0/24:27000-27050", "[2001:db8::/32]:3074".
	Allow []string `toml:"allow"`
	// RatePPS limits the datagrams per second this client may have forwarded (all
	// its sessions together); Burst is how many may come at once.
	RatePPS float64 `toml:"rate_pps"`
	Burst   int     `toml:"burst"`
}

// Defaults.
const (
	DefaultListen      = "0.0.0.0:4500"
	DefaultMaxSessions = 10000
	DefaultSessionIdle = 60 * time.Second
	DefaultReplyWindow = 2500 * time.Millisecond // routers refresh every path once a second
	DefaultHelloMaxAge = 30 * time.Second
	DefaultRatePPS     = 5000
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
	if len(c.Clients) == 0 {
		return meta.Errorf("client", "no [[client]] configured: the proxy would serve nobody")
	}
	seen := map[string]bool{}
	for i := range c.Clients {
		cl := &c.Clients[i]
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
