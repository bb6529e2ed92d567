package simple

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/raicnet/raic/pkg/config"
)

// Config is the simple proxy's TOML configuration.
type Config struct {
	// Common is log_level and metrics.
	config.Common
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
	DefaultLogLevel    = config.DefaultLogLevel
	DefaultMaxMappings = 10000
	DefaultMappingIdle = 60 * time.Second
	DefaultRatePPS     = 5000
)

// DefaultBurst is the burst used when none is configured: a tenth of a second
// of traffic at the rate, plus room for a RAIC group sent at once over every
// uplink. It matches the proxy's per-client default.
func DefaultBurst(ratePPS float64) int { return int(ratePPS/10) + 64 }

// Bounds of the relay's settings.
const (
	maxMappingsCap = 1 << 22 // each mapping holds a socket
	// MaxRatePPS bounds rate_pps; a rate this high turns the limit off in effect.
	MaxRatePPS = 1e12
	maxBurst   = 1 << 30
)

// DefaultConfig is the configuration before a file is read: every key a file
// leaves out keeps the value it has here. Burst's default follows rate_pps and
// is filled in by the check.
func DefaultConfig() Config {
	return Config{
		Common:      config.DefaultCommon(),
		MaxMappings: DefaultMaxMappings,
		MappingIdle: config.Duration{Duration: DefaultMappingIdle},
		RatePPS:     DefaultRatePPS,
	}
}

// LoadConfig reads, defaults and checks a simple relay config file; every error of the
// file is returned at once, each naming the file, line and key. ParseConfig
// does the same for a config held in a string (name is used in errors).
var LoadConfig, ParseConfig = config.Loaders(DefaultConfig, (*Config).check)

// check validates c, decoded over DefaultConfig, recording every error on meta.
func (c *Config) check(meta *config.Meta) {
	c.Common.Check(meta)
	meta.Int("max_mappings", c.MaxMappings, 1, maxMappingsCap)
	meta.Duration("mapping_idle", c.MappingIdle.Duration, 100*time.Millisecond, 24*time.Hour)
	if !meta.Rate("rate_pps", c.RatePPS, MaxRatePPS) {
		c.RatePPS = DefaultRatePPS
	}
	if !meta.IsDefined("burst") {
		c.Burst = DefaultBurst(c.RatePPS)
	} else {
		meta.Int("burst", c.Burst, 1, maxBurst)
	}
	if len(c.Routes) == 0 {
		meta.Report("route", "no [[route]] configured: the relay would relay nothing")
	}
	for i := range c.Routes {
		rc := &c.Routes[i]
		key := func(k string) string { return fmt.Sprintf("route.%d.%s", i, k) }
		var l netip.AddrPort
		listenOK := false
		switch {
		case rc.Listen == "":
			meta.Report(key("listen"), "missing: the address routers send to")
		default:
			var ok bool
			if l, ok = meta.AddrPort(key("listen"), rc.Listen); !ok {
				break
			}
			if l.Addr().Zone() != "" {
				meta.Report(key("listen"), "zoned addresses are not supported")
				break
			}
			l = netip.AddrPortFrom(l.Addr().Unmap(), l.Port())
			listenOK = meta.Listen(key("listen"), l)
		}
		if rc.Upstream == "" {
			meta.Report(key("upstream"), "missing: the proxy this route relays to")
			continue
		}
		u, ok := meta.AddrPort(key("upstream"), rc.Upstream)
		if !ok {
			continue
		}
		ua := u.Addr().Unmap()
		switch {
		case ua.IsUnspecified(), ua.IsMulticast(), u.Port() == 0:
			meta.Report(key("upstream"), "%s cannot be a proxy's address", u)
		case u.Addr().Zone() != "":
			meta.Report(key("upstream"), "zoned addresses are not supported")
		case listenOK && u.Port() == l.Port() && (ua == l.Addr() || (l.Addr().IsUnspecified() && ua.IsLoopback())):
			// A route whose upstream is its own listener would relay its own
			// output forever.
			meta.Report(key("upstream"), "%s is this route's own listener: it would relay to itself", u)
		}
	}
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
