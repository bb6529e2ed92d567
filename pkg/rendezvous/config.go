package rendezvous

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/logging"
	"github.com/raicnet/raic/pkg/wire"
)

// Config is the rendezvous server's TOML configuration.
type Config struct {
	// Listen is the UDP address peers register with.
	Listen string `toml:"listen"`
	// Metrics, when set, serves Prometheus text at http://Metrics/metrics.
	Metrics  string `toml:"metrics"`
	LogLevel string `toml:"log_level"`
	// Relay allows the fallback relay for pairs that both failed to punch.
	// Default true; false makes the server an introducer only.
	Relay *bool `toml:"relay"`
	// RelayRatePPS limits the datagrams per second each peer may have relayed;
	// RegisterRatePPS limits its registers.
	RelayRatePPS    float64 `toml:"relay_rate_pps"`
	RegisterRatePPS float64 `toml:"register_rate_pps"`
	// AddrTTL forgets a registered address not refreshed for this long.
	AddrTTL config.Duration `toml:"addr_ttl"`
	// Peers are the routers the server introduces.
	Peers []PeerConfig `toml:"peer"`
}

// PeerConfig is one [[peer]] table.
type PeerConfig struct {
	ID  string `toml:"id"`
	Key string `toml:"key"` // the peer's rendezvous key, base64 or hex
}

// Defaults.
const (
	DefaultListen          = "0.0.0.0:3478"
	DefaultRelayRatePPS    = 400 // a call over 4 paths at 50 pps each way, twice over
	DefaultRegisterRatePPS = 20
	DefaultAddrTTL         = 30 * time.Second
)

// RelayEnabled reports whether the relay fallback is on.
func (c *Config) RelayEnabled() bool { return c.Relay == nil || *c.Relay }

// LoadConfig reads, defaults and checks a config file; errors name the file,
// line and key.
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
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if _, err := netip.ParseAddrPort(c.Listen); err != nil {
		return meta.Errorf("listen", "not an address:port: %v", err)
	}
	if c.Metrics != "" {
		if _, err := netip.ParseAddrPort(c.Metrics); err != nil {
			return meta.Errorf("metrics", "not an address:port: %v", err)
		}
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if _, err := logging.ParseLevel(c.LogLevel); err != nil {
		return meta.Errorf("log_level", "%v", err)
	}
	if c.RelayRatePPS == 0 {
		c.RelayRatePPS = DefaultRelayRatePPS
	}
	if c.RelayRatePPS < 0 {
		return meta.Errorf("relay_rate_pps", "must be positive")
	}
	if c.RegisterRatePPS == 0 {
		c.RegisterRatePPS = DefaultRegisterRatePPS
	}
	if c.RegisterRatePPS < 0 {
		return meta.Errorf("register_rate_pps", "must be positive")
	}
	if c.AddrTTL.Duration == 0 {
		c.AddrTTL.Duration = DefaultAddrTTL
	}
	if c.AddrTTL.Duration < 0 {
		return meta.Errorf("addr_ttl", "must be positive")
	}
	if len(c.Peers) == 0 {
		return meta.Errorf("peer", "no [[peer]] configured: the server would introduce nobody")
	}
	seen := map[string]bool{}
	for i, p := range c.Peers {
		key := func(k string) string { return fmt.Sprintf("peer.%d.%s", i, k) }
		if len(p.ID) == 0 || len(p.ID) > MaxID {
			return meta.Errorf(key("id"), "must be 1 to %d bytes", MaxID)
		}
		if seen[p.ID] {
			return meta.Errorf(key("id"), "peer %q is configured twice", p.ID)
		}
		seen[p.ID] = true
		if _, err := wire.ParseKey(p.Key); err != nil {
			return meta.Errorf(key("key"), "%v", err)
		}
	}
	return nil
}
