package simple

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/logging"
)

// Config is the simple proxy's TOML configuration.
type Config struct {
	// LogLevel is debug, info, warn or error.
	LogLevel string `toml:"log_level"`
	// Metrics, when set, serves Prometheus text at http://Metrics/metrics.
	Metrics string `toml:"metrics"`
	// MaxMappings bounds the mapping table (one mapping, with its own upstream
	// socket, per source address and route). When it is full the least recently
	// used mapping is evicted, counted and its socket closed.
	MaxMappings int `toml:"max_mappings"`
	// MappingIdle ends a mapping after this long without a datagram either way.
	MappingIdle config.Duration `toml:"mapping_idle"`
	// RatePPS limits the datagrams per second relayed from one source address
	// (per mapping); Burst is how many may arrive at once.
	RatePPS float64 `toml:"rate_pps"`
	Burst   int     `toml:"burst"`
	// Routes are the listeners and the one upstream each relays to.
	Routes []RouteConfig `toml:"route"`
}

// RouteConfig is one [[route]] table.
type RouteConfig struct {
	// Listen is the UDP address routers send to.
	Listen string `toml:"listen"`
	// Upstream is the latency-oriented proxy this listener relays to. It is the
	// only address the route ever sends to on the routers' behalf.
	Upstream string `toml:"upstream"`
}

// Defaults.
const (
	DefaultLogLevel    = "info"
	DefaultMaxMappings = 10000
	DefaultMappingIdle = 60 * time.Second
	DefaultRatePPS     = 5000
)

// DefaultBurst is the burst used when none is configured: a tenth of a second
// of traffic at the rate, plus room for a RAIC group sent at once over every
// uplink. It matches the proxy's per-client default.
func DefaultBurst(ratePPS float64) int { return int(ratePPS/10) + 64 }

// LoadConfig reads, defaults and checks a config file. Errors name the file, line
// and key.
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
	if c.LogLevel == "" {
		c.LogLevel = DefaultLogLevel
	}
	if _, err := logging.ParseLevel(c.LogLevel); err != nil {
		return meta.Errorf("log_level", "%v", err)
	}
	if c.Metrics != "" {
		// Checked here rather than when the listener opens, so that -check catches it.
		if _, port, err := net.SplitHostPort(c.Metrics); err != nil {
			return meta.Errorf("metrics", "not a host:port: %v", err)
		} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return meta.Errorf("metrics", "bad port %q", port)
		}
	}
	if c.MaxMappings == 0 {
		c.MaxMappings = DefaultMaxMappings
	}
	if c.MaxMappings < 1 {
		return meta.Errorf("max_mappings", "must be at least 1")
	}
	if c.MappingIdle.Duration == 0 {
		c.MappingIdle.Duration = DefaultMappingIdle
	}
	if c.MappingIdle.Duration < 0 {
		return meta.Errorf("mapping_idle", "must be positive")
	}
	if c.RatePPS == 0 {
		c.RatePPS = DefaultRatePPS
	}
	if c.RatePPS < 0 {
		return meta.Errorf("rate_pps", "must be positive")
	}
	if c.Burst == 0 {
		c.Burst = DefaultBurst(c.RatePPS)
	}
	if c.Burst < 1 {
		return meta.Errorf("burst", "must be at least 1")
	}
	if len(c.Routes) == 0 {
		return meta.Errorf("route", "no [[route]] configured: the relay would relay nothing")
	}
	listens := map[netip.AddrPort]int{}
	for i := range c.Routes {
		rc := &c.Routes[i]
		key := func(k string) string { return fmt.Sprintf("route.%d.%s", i, k) }
		if rc.Listen == "" {
			return meta.Errorf(key("listen"), "missing: the address routers send to")
		}
		l, err := netip.ParseAddrPort(rc.Listen)
		if err != nil {
			return meta.Errorf(key("listen"), "not an address:port: %v", err)
		}
		if l.Addr().Zone() != "" {
			return meta.Errorf(key("listen"), "zoned addresses are not supported")
		}
		l = netip.AddrPortFrom(l.Addr().Unmap(), l.Port())
		if j, dup := listens[l]; dup {
			return meta.Errorf(key("listen"), "%s is already the listen address of route %d", l, j)
		}
		listens[l] = i
		if rc.Upstream == "" {
			return meta.Errorf(key("upstream"), "missing: the proxy this route relays to")
		}
		u, err := netip.ParseAddrPort(rc.Upstream)
		if err != nil {
			return meta.Errorf(key("upstream"), "not an address:port: %v", err)
		}
		ua := u.Addr().Unmap()
		switch {
		case ua.IsUnspecified(), ua.IsMulticast(), u.Port() == 0:
			return meta.Errorf(key("upstream"), "%s cannot be a proxy's address", u)
		case u.Addr().Zone() != "":
			return meta.Errorf(key("upstream"), "zoned addresses are not supported")
		}
		// A route whose upstream is its own listener would relay its own output
		// forever.
		if u.Port() == l.Port() && (ua == l.Addr() || (l.Addr().IsUnspecified() && ua.IsLoopback())) {
			return meta.Errorf(key("upstream"), "%s is this route's own listener: it would relay to itself", u)
		}
	}
	return nil
}

// addrs returns the parsed listen and upstream addresses of a checked route.
func (rc *RouteConfig) addrs() (listen, upstream netip.AddrPort, err error) {
	if listen, err = netip.ParseAddrPort(rc.Listen); err != nil {
		return
	}
	if upstream, err = netip.ParseAddrPort(rc.Upstream); err != nil {
		return
	}
	listen = netip.AddrPortFrom(listen.Addr().Unmap(), listen.Port())
	upstream = netip.AddrPortFrom(upstream.Addr().Unmap(), upstream.Port())
	return listen, upstream, nil
}
