package detect

import (
	_ "embed"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/raicnet/raic/pkg/config"
)

// shippedConfig is the application and operator table built into the binary.
//
//go:embed apps.toml
var shippedConfig []byte

// App is one application table entry. User files use the same schema; an
// entry whose Name matches a shipped one replaces it.
type App struct {
	Name  string `toml:"name"`  // short id, used in Rule ("port:<name>")
	Title string `toml:"title"` // human readable
	Type  string `toml:"type"`  // app type: shooter, moba, voip, ...
	Proto string `toml:"proto"` // "udp", "tcp" or "both"
	// ServerPorts are the remote (destination) ports, "N" or "N-M".
	ServerPorts []string `toml:"server_ports"`
	// ClientPorts, when set, narrow the entry to these local (source) ports.
	ClientPorts []string `toml:"client_ports"`
	PPS         float64  `toml:"pps"`         // expected packets per second
	PacketSize  int      `toml:"packet_size"` // typical packet size, bytes
	Proxies     []string `toml:"proxies"`     // preferred proxies, by name
	Source      string   `toml:"source"`      // public source of the ports (note only)
	Disabled    bool     `toml:"disabled"`    // lets a user file switch a shipped entry off

	server, client []portRange
}

// Operator marks an AS as a game (or voice) operator: traffic to its address
// space is LC. Owners match the ASN table's owner names exactly (ignoring case)
// and are resolved to ASNs when the ASN table is attached. Prefixes name
// address blocks directly, for fleets that live inside a larger AS (a game
// hosted on a public cloud) where listing the whole AS would be far too wide.
type Operator struct {
	Name     string   `toml:"name"`
	Type     string   `toml:"type"`
	ASNs     []uint32 `toml:"asns"`
	Owners   []string `toml:"owners"`
	Prefixes []string `toml:"prefixes"`
	Proxies  []string `toml:"proxies"`
	Note     string   `toml:"note"`
}

// RDNSPattern maps PTR names to an app type. Exactly one of Glob ("*" matches
// any run of characters, "?" one) or Regex is set.
type RDNSPattern struct {
	Name  string `toml:"name"`
	Glob  string `toml:"glob"`
	Regex string `toml:"regex"`
	Type  string `toml:"type"`
	App   string `toml:"app"`

	re *regexp.Regexp
}

// Config is a parsed table file: shipped or user.
type Config struct {
	Apps      []App         `toml:"app"`
	Operators []Operator    `toml:"operator"`
	RDNS      []RDNSPattern `toml:"rdns"`
}

// ShippedConfig returns the built-in table. It is validated by the tests, so a
// failure here is a build defect; the error is still returned, not panicked.
func ShippedConfig() (*Config, error) {
	return ParseConfig("apps.toml (embedded)", shippedConfig)
}

// LoadConfigFile reads and validates a user table file.
func LoadConfigFile(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseConfig(path, data)
}

// LoadConfigFileProxies is LoadConfigFile that also refuses, each with its
// file, line and key, a preferred proxy (of an app or an operator) that is not
// one of proxies: the names of the router's [[proxy]] tables.
func LoadConfigFileProxies(path string, proxies []string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c Config
	err = config.CheckText(path, string(data), &c, func(meta *config.Meta) {
		c.check(meta)
		c.checkProxyNames(meta, proxies)
	})
	if err != nil {
		return nil, err
	}
	return &c, nil
}

// checkProxyNames reports the preferred proxies that name none of proxies.
func (c *Config) checkProxyNames(meta *config.Meta, proxies []string) {
	check := func(table string, i int, names []string) {
		for _, p := range names {
			if !slices.Contains(proxies, p) {
				meta.Report(fmt.Sprintf("%s.%d.proxies", table, i), "%q names no [[proxy]] of the router (configured: %s)",
					p, strings.Join(proxies, ", "))
			}
		}
	}
	for i, a := range c.Apps {
		check("app", i, a.Proxies)
	}
	for i, o := range c.Operators {
		check("operator", i, o.Proxies)
	}
}

// Merge returns base with user's entries applied: an entry with the name of a
// base entry replaces it in place, a new name is appended. A replaced app with
// Disabled set drops out of the lookup.
func Merge(base, user *Config) *Config {
	out := &Config{
		Apps:      append([]App(nil), base.Apps...),
		Operators: append([]Operator(nil), base.Operators...),
		RDNS:      append([]RDNSPattern(nil), base.RDNS...),
	}
	if user == nil {
		return out
	}
	for _, a := range user.Apps {
		if i := indexBy(out.Apps, func(x App) bool { return x.Name == a.Name }); i >= 0 {
			out.Apps[i] = a
		} else {
			out.Apps = append(out.Apps, a)
		}
	}
	for _, o := range user.Operators {
		if i := indexBy(out.Operators, func(x Operator) bool { return x.Name == o.Name }); i >= 0 {
			out.Operators[i] = o
		} else {
			out.Operators = append(out.Operators, o)
		}
	}
	for _, r := range user.RDNS {
		if i := indexBy(out.RDNS, func(x RDNSPattern) bool { return x.Name == r.Name }); i >= 0 {
			out.RDNS[i] = r
		} else {
			out.RDNS = append(out.RDNS, r)
		}
	}
	return out
}

func indexBy[T any](s []T, f func(T) bool) int {
	for i := range s {
		if f(s[i]) {
			return i
		}
	}
	return -1
}

// ParseConfig decodes and validates a table file (file names it in errors).
// Unknown keys are refused so that a misspelt field does not silently leave an
// entry half configured. Every error of the file is returned at once, each a
// *config.Error naming the file, line and key ("app.1.server_ports").
func ParseConfig(file string, data []byte) (*Config, error) {
	var c Config
	if err := config.CheckText(file, string(data), &c, c.check); err != nil {
		return nil, err
	}
	return &c, nil
}

// check validates the entries of a decoded table file, recording every error.
func (c *Config) check(meta *config.Meta) {
	bad := func(table string, i int, field, format string, a ...any) {
		meta.Report(fmt.Sprintf("%s.%d.%s", table, i, field), format, a...)
	}
	var err error
	seen := map[string]bool{}
	for i := range c.Apps {
		a := &c.Apps[i]
		if !validName(a.Name) {
			bad("app", i, "name", "%q: want 1-40 of a-z 0-9 . _ -", a.Name)
		}
		if seen["app:"+a.Name] {
			bad("app", i, "name", "%q defined twice", a.Name)
		}
		seen["app:"+a.Name] = true
		if a.Disabled {
			// A switch-off entry needs nothing but its name.
			continue
		}
		if !validName(a.Type) {
			bad("app", i, "type", "%q: want an app type such as shooter or voip", a.Type)
		}
		switch a.Proto {
		case "udp", "tcp", "both":
		default:
			bad("app", i, "proto", "%q: want udp, tcp or both", a.Proto)
		}
		if len(a.ServerPorts) == 0 {
			bad("app", i, "server_ports", "missing")
		}
		if a.server, err = parseRanges(a.ServerPorts); err != nil {
			bad("app", i, "server_ports", "%v", err)
		}
		if a.client, err = parseRanges(a.ClientPorts); err != nil {
			bad("app", i, "client_ports", "%v", err)
		}
		meta.Float(fmt.Sprintf("app.%d.pps", i), a.PPS, 0, 100000)
		if a.PacketSize < 0 || a.PacketSize > 65535 {
			bad("app", i, "packet_size", "%d out of range 0..65535", a.PacketSize)
		}
		for _, p := range a.Proxies {
			if !validName(p) {
				bad("app", i, "proxies", "%q: want a proxy name of a-z 0-9 . _ -", p)
			}
		}
	}
	for i := range c.Operators {
		o := &c.Operators[i]
		if !validName(o.Name) {
			bad("operator", i, "name", "%q: want 1-40 of a-z 0-9 . _ -", o.Name)
		}
		if seen["op:"+o.Name] {
			bad("operator", i, "name", "%q defined twice", o.Name)
		}
		seen["op:"+o.Name] = true
		if !validName(o.Type) {
			bad("operator", i, "type", "%q: want an app type", o.Type)
		}
		if len(o.ASNs) == 0 && len(o.Owners) == 0 && len(o.Prefixes) == 0 {
			bad("operator", i, "asns", "none of asns, owners, prefixes given")
		}
		for _, p := range o.Prefixes {
			if pp, err := netip.ParsePrefix(p); err != nil || pp != pp.Masked() {
				bad("operator", i, "prefixes", "%q: want a network such as 192.0.2.0/24", p)
			}
		}
		for _, p := range o.Proxies {
			if !validName(p) {
				bad("operator", i, "proxies", "%q: want a proxy name of a-z 0-9 . _ -", p)
			}
		}
		for _, n := range o.ASNs {
			if n == 0 {
				bad("operator", i, "asns", "AS0 is not an operator")
			}
		}
	}
	for i := range c.RDNS {
		r := &c.RDNS[i]
		if !validName(r.Name) {
			bad("rdns", i, "name", "%q: want 1-40 of a-z 0-9 . _ -", r.Name)
		}
		if !validName(r.Type) {
			bad("rdns", i, "type", "%q: want an app type", r.Type)
		}
		switch {
		case (r.Glob == "") == (r.Regex == ""):
			bad("rdns", i, "glob", "set exactly one of glob and regex")
		case r.Glob != "":
			r.re = regexp.MustCompile(globToRegexp(r.Glob)) // QuoteMeta output always compiles
		default:
			if r.re, err = regexp.Compile(r.Regex); err != nil {
				bad("rdns", i, "regex", "%v", err)
			}
		}
	}
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > 40 {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// globToRegexp anchors the glob and matches names case-insensitively, as DNS
// names are.
func globToRegexp(g string) string {
	var b strings.Builder
	b.WriteString(`(?i)^`)
	for i, part := range strings.Split(g, "*") {
		if i > 0 {
			b.WriteString(`.*`)
		}
		qs := strings.Split(part, "?")
		for j, q := range qs {
			if j > 0 {
				b.WriteString(`.`)
			}
			b.WriteString(regexp.QuoteMeta(q))
		}
	}
	// A trailing dot is how PTR answers end; accept names with or without it.
	b.WriteString(`\.?$`)
	return b.String()
}

type portRange struct{ lo, hi uint16 }

func (r portRange) width() int { return int(r.hi) - int(r.lo) + 1 }

func parseRanges(ss []string) ([]portRange, error) {
	out := make([]portRange, 0, len(ss))
	for _, s := range ss {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(s), "-")
		if !isRange {
			hi = lo
		}
		a, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
		b, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
		if err1 != nil || err2 != nil || a == 0 || a > b {
			return nil, fmt.Errorf("%q: want a port 1-65535 or a range N-M with N<=M", s)
		}
		out = append(out, portRange{uint16(a), uint16(b)})
	}
	return out, nil
}
