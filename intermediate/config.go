package intermediate

import (
	"fmt"
	"time"

	"github.com/raicnet/raic/pkg/clients"
	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/fleet"
	"github.com/raicnet/raic/pkg/ingress"
	"github.com/raicnet/raic/pkg/uplink"
	"github.com/raicnet/raic/pkg/wire"
)

// Config is the intermediate proxy's TOML configuration. The first half (listen,
// [[client]]) reads like a proxy's config, the [next] table like a router's
// uplinks: the intermediate is a proxy to the routers that use it and a router to
// the proxy after it. For example:
//
//	listen = "198.18.30.2:4600"
//	[[client]]
//	id = "gamer"
//	key = "…base64…"
//	allow = ["198.18.41.0/24:27000-27050"]
//	[next]
//	client_id = "mid-eu1"
//	key = "…base64…"
//	proxy = "198.18.40.2:4500"
//	[[next.uplink]]          # optional: one socket per path to the next hop
//	source = "198.18.31.2"
//	[[next.uplink]]
//	source = "198.18.32.2"
type Config struct {
	// Settings are the router-facing side's keys, as in the proxy: listen,
	// metrics, log_level, max_sessions (the relayed sessions), session_idle,
	// reply_window, hello_max_age and the [[client]] tables (the routers
	// allowed to use this intermediate).
	ingress.Settings
	// Config are the keys of running in a studio's fleet, as in the proxy
	// (package fleet): token_key or token_key_file (the studio's connect-token
	// key: routers with a token are admitted here as the proxy admits them,
	// and relayed under this intermediate's own client ID), token_rate_pps,
	// token_burst, max_tokens, health_listen (/healthz, /readyz) and
	// drain_timeout (SIGTERM).
	fleet.Config
	// Next is the hop after this one: a proxy or another intermediate.
	Next NextConfig `toml:"next"`
}

// ClientConfig is one [[client]] table (see package clients).
type ClientConfig = clients.Config

// NextConfig is the [next] table: who this intermediate is to the next hop, and
// how it reaches it.
type NextConfig struct {
	// ClientID and Key identify this intermediate to the next hop; the sessions it
	// opens there are sealed with keys derived from Key, never with a router's.
	ClientID string `toml:"client_id"`
	Key      string `toml:"key"`
	// Proxy is the next hop's address; an uplink may override it.
	Proxy string `toml:"proxy"`
	// CopiesPerUplink sends each RAIC-1 datagram this many times on each uplink.
	// The keepalives tell the next hop, which sends its single-datagram
	// replies as many times on each path.
	CopiesPerUplink int `toml:"copies_per_uplink"`
	// PingInterval is how often each uplink's keepalive goes out; it measures the
	// RTT to the next hop and keeps NAT mappings on the way open.
	PingInterval config.Duration `toml:"ping_interval"`
	// Uplinks are the sockets towards the next hop. None means one socket on any
	// local address towards Proxy.
	Uplinks []UplinkConfig `toml:"uplink"`
}

// UplinkConfig is one [[next.uplink]]: a socket bound to an interface or a source
// address, so its datagrams take that path.
type UplinkConfig struct {
	Name   string `toml:"name"`
	Device string `toml:"device"` // SO_BINDTODEVICE; needs root or CAP_NET_RAW
	Source string `toml:"source"` // source address (and optionally port)
	Proxy  string `toml:"proxy"`  // next hop reached over this uplink
}

// Defaults; those of the router-facing keys are ingress's
// (ingress.DefaultListen...).
const (
	DefaultRatePPS      = clients.DefaultRatePPS
	DefaultPingInterval = 250 * time.Millisecond
	maxUplinks          = 16
)

// Bounds of the intermediate's settings.
const (
	minPingInterval = 10 * time.Millisecond
	maxPingInterval = 10 * time.Second
)

// DefaultConfig is the configuration before a file is read: every key a file
// leaves out keeps the value it has here.
func DefaultConfig() Config {
	return Config{
		Settings: ingress.DefaultSettings(),
		Config:   fleet.Defaults(),
		Next: NextConfig{
			CopiesPerUplink: 1,
			PingInterval:    config.Duration{Duration: DefaultPingInterval},
		},
	}
}

// LoadConfig reads, defaults and checks a intermediate config file; every error of the
// file is returned at once, each naming the file, line and key. ParseConfig
// does the same for a config held in a string (name is used in errors).
var LoadConfig, ParseConfig = config.Loaders(DefaultConfig, (*Config).check)

// check validates c, decoded over DefaultConfig, recording every error on meta.
func (c *Config) check(meta *config.Meta) {
	c.Config.Check(meta) // first: with connect tokens on, no [[client]] is needed
	c.Settings.Check(meta, "the intermediate", c.Config.Key() != nil)
	meta.Duration("next.ping_interval", c.Next.PingInterval.Duration, minPingInterval, maxPingInterval)
	c.Next.check(meta)
}

func (n *NextConfig) check(meta *config.Meta) {
	if n.ClientID == "" || len(n.ClientID) > wire.MaxClientID {
		meta.Report("next.client_id", "must be 1 to %d bytes", wire.MaxClientID)
	}
	if _, err := wire.ParseKey(n.Key); err != nil {
		meta.Report("next.key", "%v", err)
	}
	if n.Proxy != "" {
		meta.AddrPort("next.proxy", n.Proxy)
	}
	meta.Int("next.copies_per_uplink", n.CopiesPerUplink, 1, 4)
	if len(n.Uplinks) == 0 {
		if n.Proxy == "" {
			meta.Report("next.proxy", "no next hop: set next.proxy or add [[next.uplink]] tables")
		}
		n.Uplinks = []UplinkConfig{{Name: "next", Proxy: n.Proxy}}
		return
	}
	if len(n.Uplinks) > maxUplinks {
		meta.Report("next.uplink", "at most %d uplinks", maxUplinks)
	}
	names := map[string]bool{}
	for i := range n.Uplinks {
		u := &n.Uplinks[i]
		key := func(k string) string { return fmt.Sprintf("next.uplink.%d.%s", i, k) }
		uplink.CheckSocket(meta, "next.uplink", i, &u.Name, u.Source, names)
		if u.Proxy == "" {
			if n.Proxy == "" {
				meta.Report(key("proxy"), "no next hop for this uplink: set proxy here or in [next]")
			}
			u.Proxy = n.Proxy
		} else {
			meta.AddrPort(key("proxy"), u.Proxy)
		}
	}
}
