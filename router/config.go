package router

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/raicnet/raic/detect"
	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/token"
	"github.com/raicnet/raic/pkg/uplink"
	"github.com/raicnet/raic/pkg/wire"
)

// Config is the router's TOML configuration.
type Config struct {
	// ClientID and Key identify this router to its proxy.
	ClientID string `toml:"client_id"`
	Key      string `toml:"key"`
	// Token (or TokenFile, a file holding it) is a connect token from the
	// game's backend, used in place of a [[client]] entry at the proxy; Key is
	// then the client key the backend gave beside it, and ClientID may be left
	// out (the token names the client).
	Token     string `toml:"token"`
	TokenFile string `toml:"token_file"`
	token     []byte
	// Proxy is either one address (proxy = "198.18.40.2:4500"; an uplink may
	// override it, for example to go through a relay) or a list of [[proxy]]
	// tables, each proxy reached directly or through relays per uplink. Per
	// session the router picks the proxy nearest the game server and keeps the
	// next one as a reserve (see choice.go).
	Proxy ProxyList `toml:"proxy"`
	// Choice tunes how a proxy is chosen and when a session moves to another.
	Choice ChoiceConfig `toml:"choice"`
	// Scheme is the default RAIC scheme: "copy" (RAIC-1), "xor:2" (RAIC-5 2+1),
	// "rs:2+2" (RAIC-6), "time:2" (RAICT), or "auto": chosen per session at run
	// time from the proxy's quality reports (auto.go). A forward may choose its own.
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
	// Common is metrics (Prometheus text, /status and the live page) and
	// log_level.
	config.Common

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
	// Peers and VPorts: peer mode, another router reached over every pair of
	// uplinks (see peer.go).
	Peers  []PeerConfig  `toml:"peer"`
	VPorts []VPortConfig `toml:"vport"`
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
	// DSCP marks the session's data datagrams on this uplink ("EF", "CS4",
	// a number; default off), at most at each session's expected rate (see
	// dscp.go).
	DSCP string `toml:"dscp"`
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

// Bounds of the router's durations and rates: below them a ticker would
// spin (or panic at 0), above them a setting makes no sense for a game.
const (
	MinPingInterval = 10 * time.Millisecond
	MaxPingInterval = 10 * time.Second
	MaxDownAfter    = time.Minute
	MaxExpectedPPS  = 10000
	maxSessionsCap  = 1 << 20
)

// DefaultConfig is the configuration before a file is read: every key a file
// leaves out keeps the value it has here.
func DefaultConfig() Config {
	return Config{
		Scheme:          "copy",
		CopiesPerUplink: 1,
		ExpectedPPS:     DefaultExpectedPPS,
		MaxSessions:     DefaultMaxSessions,
		SessionIdle:     config.Duration{Duration: DefaultSessionIdle},
		PingInterval:    config.Duration{Duration: DefaultPingInterval},
		DownAfter:       config.Duration{Duration: DefaultDownAfter},
		Common:          config.DefaultCommon(),
		Suppress:        defaultSuppressConfig(),
	}
}

// LoadConfig reads, defaults and checks a router config file; every error of the
// file is returned at once, each naming the file, line and key. ParseConfig
// does the same for a config held in a string (name is used in errors).
var LoadConfig, ParseConfig = config.Loaders(DefaultConfig, (*Config).check)

// check validates c, decoded over DefaultConfig, recording every error on meta.
func (c *Config) check(meta *config.Meta) {
	c.checkToken(meta)
	if c.ClientID == "" || len(c.ClientID) > wire.MaxClientID {
		meta.Report("client_id", "must be 1 to %d bytes", wire.MaxClientID)
	}
	if _, err := wire.ParseKey(c.Key); err != nil && !(c.Key == "" && c.peerOnly()) {
		meta.Report("key", "%v", err)
	}
	if _, _, err := parseScheme(c.Scheme); err != nil {
		meta.Report("scheme", "%v", err)
	}
	meta.Int("copies_per_uplink", c.CopiesPerUplink, 1, 4)
	if !meta.Ratio("delayed_copy", c.DelayedCopy, true) {
		c.DelayedCopy = 0
	}
	meta.Rate("expected_pps", c.ExpectedPPS, MaxExpectedPPS)
	meta.Int("max_sessions", c.MaxSessions, 1, maxSessionsCap)
	meta.Duration("session_idle", c.SessionIdle.Duration, time.Second, 24*time.Hour)
	if meta.Duration("ping_interval", c.PingInterval.Duration, MinPingInterval, MaxPingInterval) &&
		c.DownAfter.Duration < c.PingInterval.Duration {
		meta.Report("down_after", "must be at least ping_interval (%v)", c.PingInterval.Duration)
	}
	meta.Duration("down_after", c.DownAfter.Duration, MinPingInterval, MaxDownAfter)
	c.Common.Check(meta)
	if len(c.Uplinks) == 0 {
		meta.Report("uplink", "no [[uplink]] configured")
		return // the proxy, choice and suppression checks need the uplinks
	}
	if len(c.Uplinks) > 16 {
		meta.Report("uplink", "at most 16 uplinks")
	}
	names := map[string]bool{}
	for i := range c.Uplinks {
		u := &c.Uplinks[i]
		key := func(k string) string { return fmt.Sprintf("uplink.%d.%s", i, k) }
		uplink.CheckSocket(meta, "uplink", i, &u.Name, u.Source, names)
		if _, err := parseDSCP(u.DSCP); err != nil {
			meta.Report(key("dscp"), "%v", err)
		}
	}
	if !c.peerOnly() { // a peer-only router has no proxy (peer.go)
		meta.Add(c.Proxy.check(c, meta))
	}
	meta.Add(c.Choice.check(c, meta))
	c.Transparent.check(c, meta)
	if c.Transparent.Enabled && c.Transparent.AppsFile != "" {
		// The user's application table is a file of its own; its errors
		// name it (and its lines), so that -check covers it too.
		// Its preferred proxies must be [[proxy]] names of this file.
		var names []string
		for _, pc := range c.Proxy.List {
			names = append(names, pc.Name)
		}
		load := detect.LoadConfigFile
		if len(names) > 0 {
			load = func(path string) (*detect.Config, error) { return detect.LoadConfigFileProxies(path, names) }
		}
		var es config.Errors
		if _, err := load(c.Transparent.AppsFile); errors.As(err, &es) {
			meta.Add(es)
		} else if err != nil {
			meta.Report("transparent.apps_file", "%v", err)
		}
	}
	c.Suppress.check(c, meta)
	meta.Add(c.TCP.check(meta))
	meta.Add(c.checkPeers(meta))
	if len(c.Forwards) == 0 && !c.Transparent.Enabled && len(c.TCP.Forwards) == 0 && !c.TCP.Split.enabled() && len(c.Peers) == 0 {
		meta.Report("forward", "no [[forward]] configured, transparent mode is off and no [[peer]]: nothing to carry")
	}
	for i := range c.Forwards {
		f := &c.Forwards[i]
		key := func(k string) string { return fmt.Sprintf("forward.%d.%s", i, k) }
		if ap, ok := meta.AddrPort(key("listen"), f.Listen); ok {
			meta.Listen(key("listen"), ap)
		}
		meta.AddrPort(key("server"), f.Server)
		if !meta.IsDefined(key("scheme")) {
			f.Scheme = c.Scheme
		} else if _, _, err := parseScheme(f.Scheme); err != nil {
			meta.Report(key("scheme"), "%v", err)
		}
		if !meta.IsDefined(key("expected_pps")) {
			f.ExpectedPPS = c.ExpectedPPS
		} else {
			meta.Rate(key("expected_pps"), f.ExpectedPPS, MaxExpectedPPS)
		}
	}
}

// checkToken reads the connect token, if any (see Config.Token), recording
// its errors on meta.
func (c *Config) checkToken(meta *config.Meta) {
	if c.Token != "" && c.TokenFile != "" {
		meta.Report("token_file", "set token or token_file, not both")
		return
	}
	text, key := c.Token, "token"
	if c.TokenFile != "" {
		b, err := os.ReadFile(c.TokenFile)
		if err != nil {
			meta.Report("token_file", "%v", err)
			return
		}
		text, key = string(b), "token_file"
	}
	if text == "" {
		return
	}
	tok, err := token.Decode(text)
	if err != nil {
		meta.Report(key, "%v", err)
		return
	}
	c.token = tok
	if c.ClientID == "" {
		c.ClientID = "token" // the proxy takes the client's name from the token
	}
}
