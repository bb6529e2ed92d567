package router

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/logging"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// Config is the router's TOML configuration.
type Config struct {
	// ClientID and Key identify this router to its proxy.
	ClientID string `toml:"client_id"`
	Key      string `toml:"key"`
	// Proxy is either one address (proxy = "198.18.40.2:4500"; an uplink may
	// override it, for example to go through a relay) or a list of [[proxy]]
	// tables, each proxy reached directly or through relays per uplink. Per
	// session the router picks the proxy nearest the game server and keeps the
	// next one as a reserve (see choice.go).
	Proxy ProxyList `toml:"proxy"`
	// Choice tunes how a proxy is chosen and when a session moves to another.
	Choice ChoiceConfig `toml:"choice"`
	// Scheme is the default RAIC scheme: "copy" (RAIC-1), "xor:2" (RAIC-5 2+1),
	// "rs:2+2" (RAIC-6), "time:2" (RAICT). A forward may choose its own.
	Scheme string `toml:"scheme"`
	// CopiesPerUplink sends each RAIC-1 datagram this many times on each uplink.
	// The keepalives tell the proxy (or intermediate), which sends its single-datagram
	// replies as many times on each path.
	CopiesPerUplink int `toml:"copies_per_uplink"`
	// DelayedCopy, between 0 and 1, sends one more copy on each uplink this share
	// of the packet interval later, so a short burst of loss on a link does not
	// take every copy of a packet. 0 turns it off.
	DelayedCopy float64 `toml:"delayed_copy"`
	// ExpectedPPS is the packet rate assumed for a session until it is measured.
	ExpectedPPS float64 `toml:"expected_pps"`
	// MaxSessions bounds the session table (least recently used evicted, counted).
	MaxSessions int `toml:"max_sessions"`
	// SessionIdle ends a session after this long without packets either way.
	SessionIdle config.Duration `toml:"session_idle"`
	// PingInterval and DownAfter drive uplink health: an uplink is down when no
	// keepalive answer came within DownAfter, and up again on the next answer.
	PingInterval config.Duration `toml:"ping_interval"`
	DownAfter    config.Duration `toml:"down_after"`
	// Metrics, when set, serves Prometheus text at http://Metrics/metrics.
	Metrics  string `toml:"metrics"`
	LogLevel string `toml:"log_level"`

	Uplinks  []UplinkConfig  `toml:"uplink"`
	Forwards []ForwardConfig `toml:"forward"`

	// Transparent mode: the router is the LAN's gateway and finds game sessions
	// itself (see transparent.go).
	Transparent TransparentConfig `toml:"transparent"`
	// Suppress holds back bulk traffic while a game runs (see suppression.go).
	Suppress SuppressConfig `toml:"suppress"`
	// TCP carries TCP flows and the UDP fallback over the aggregated
	// connection to the proxy (see tcp.go).
	TCP TCPConfig `toml:"tcp"`
}

// UplinkConfig is one [[uplink]]: a socket bound to an interface or a source
// address, so its datagrams leave through that ISP.
type UplinkConfig struct {
	Name   string `toml:"name"`
	Device string `toml:"device"` // SO_BINDTODEVICE; needs root or CAP_NET_RAW
	Source string `toml:"source"` // source address (and optionally port)
	// Proxy is the proxy or relay reached over this uplink when the top-level
	// proxy is a single address. With [[proxy]] tables it must be empty (use the
	// tables' via); after checking it holds the first proxy's address on this
	// uplink.
	Proxy string `toml:"proxy"`
}

// ForwardConfig is one [[forward]] of explicit mode: game clients send to Listen
// as if it were the server; the router carries their packets to Server through
// the proxy and answers from Listen.
type ForwardConfig struct {
	Listen      string  `toml:"listen"`
	Server      string  `toml:"server"`
	Scheme      string  `toml:"scheme"`
	ExpectedPPS float64 `toml:"expected_pps"`
}

// Defaults.
const (
	DefaultExpectedPPS  = 60
	DefaultMaxSessions  = 4096
	DefaultSessionIdle  = 60 * time.Second
	DefaultPingInterval = 100 * time.Millisecond
	DefaultDownAfter    = 300 * time.Millisecond
)

// LoadConfig reads, defaults and checks a router config file; errors name the
// file, line and key.
func LoadConfig(path string) (*Config, error) {
	var c Config
	meta, err := config.Load(path, &c)
	if err != nil {
		return nil, err
	}
	return &c, c.check(meta)
}

// ParseConfig is LoadConfig for a config held in a string.
func ParseConfig(name, text string) (*Config, error) {
	var c Config
	meta, err := config.Decode(name, text, &c)
	if err != nil {
		return nil, err
	}
	return &c, c.check(meta)
}

func (c *Config) check(meta *config.Meta) error {
	if c.ClientID == "" || len(c.ClientID) > wire.MaxClientID {
		return meta.Errorf("client_id", "must be 1 to %d bytes", wire.MaxClientID)
	}
	if _, err := wire.ParseKey(c.Key); err != nil {
		return meta.Errorf("key", "%v", err)
	}
	if c.Scheme == "" {
		c.Scheme = "copy"
	}
	if _, err := raic.ParseParams(c.Scheme); err != nil {
		return meta.Errorf("scheme", "%v", err)
	}
	if c.CopiesPerUplink == 0 {
		c.CopiesPerUplink = 1
	}
	if c.CopiesPerUplink < 1 || c.CopiesPerUplink > 4 {
		return meta.Errorf("copies_per_uplink", "must be 1 to 4")
	}
	if c.DelayedCopy < 0 || c.DelayedCopy > 1 {
		return meta.Errorf("delayed_copy", "must be between 0 (off) and 1 (a whole packet interval)")
	}
	if c.ExpectedPPS == 0 {
		c.ExpectedPPS = DefaultExpectedPPS
	}
	if c.ExpectedPPS < 0 {
		return meta.Errorf("expected_pps", "must be positive")
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = DefaultMaxSessions
	}
	if c.MaxSessions < 1 {
		return meta.Errorf("max_sessions", "must be at least 1")
	}
	for _, d := range []struct {
		v   *config.Duration
		def time.Duration
		key string
	}{{&c.SessionIdle, DefaultSessionIdle, "session_idle"}, {&c.PingInterval, DefaultPingInterval, "ping_interval"}, {&c.DownAfter, DefaultDownAfter, "down_after"}} {
		if d.v.Duration == 0 {
			d.v.Duration = d.def
		}
		if d.v.Duration < 0 {
			return meta.Errorf(d.key, "must be positive")
		}
	}
	if c.DownAfter.Duration < c.PingInterval.Duration {
		return meta.Errorf("down_after", "must be at least ping_interval (%v)", c.PingInterval.Duration)
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if _, err := logging.ParseLevel(c.LogLevel); err != nil {
		return meta.Errorf("log_level", "%v", err)
	}
	if len(c.Uplinks) == 0 {
		return meta.Errorf("uplink", "no [[uplink]] configured")
	}
	if len(c.Uplinks) > 16 {
		return meta.Errorf("uplink", "at most 16 uplinks")
	}
	names := map[string]bool{}
	for i := range c.Uplinks {
		u := &c.Uplinks[i]
		key := func(k string) string { return fmt.Sprintf("uplink.%d.%s", i, k) }
		if u.Name == "" {
			u.Name = fmt.Sprintf("uplink%d", i)
		}
		if names[u.Name] {
			return meta.Errorf(key("name"), "uplink %q is configured twice", u.Name)
		}
		names[u.Name] = true
		if u.Source != "" {
			if _, err := parseHostPort(u.Source); err != nil {
				return meta.Errorf(key("source"), "%v", err)
			}
		}
	}
	if err := c.Proxy.check(c, meta); err != nil {
		return err
	}
	if err := c.Choice.check(c, meta); err != nil {
		return err
	}
	if err := c.Transparent.check(c, meta); err != nil {
		return err
	}
	if err := c.Suppress.check(c, meta); err != nil {
		return err
	}
	if err := c.TCP.check(meta); err != nil {
		return err
	}
	if len(c.Forwards) == 0 && !c.Transparent.Enabled && len(c.TCP.Forwards) == 0 && !c.TCP.Split.enabled() {
		return meta.Errorf("forward", "no [[forward]] configured and transparent mode is off: nothing to carry")
	}
	for i := range c.Forwards {
		f := &c.Forwards[i]
		key := func(k string) string { return fmt.Sprintf("forward.%d.%s", i, k) }
		if _, err := netip.ParseAddrPort(f.Listen); err != nil {
			return meta.Errorf(key("listen"), "not an address:port: %v", err)
		}
		if _, err := netip.ParseAddrPort(f.Server); err != nil {
			return meta.Errorf(key("server"), "not an address:port: %v", err)
		}
		if f.Scheme == "" {
			f.Scheme = c.Scheme
		}
		if _, err := raic.ParseParams(f.Scheme); err != nil {
			return meta.Errorf(key("scheme"), "%v", err)
		}
		if f.ExpectedPPS == 0 {
			f.ExpectedPPS = c.ExpectedPPS
		}
		if f.ExpectedPPS < 0 {
			return meta.Errorf(key("expected_pps"), "must be positive")
		}
	}
	return nil
}

// parseHostPort reads "ADDR" or "ADDR:PORT".
func parseHostPort(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("not an address or address:port: %q", s)
	}
	return netip.AddrPortFrom(a, 0), nil
}
