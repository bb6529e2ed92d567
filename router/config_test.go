package router

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/wire"
)

// cfgHead is a valid router config up to its [[forward]] tables (line 6 is
// the first [[uplink]]), so cases can add top-level keys before it.
func cfgHead(extra string) string {
	return extra + "client_id = \"a\"\nkey = \"" + wire.Key{1}.String() + "\"\nproxy = \"198.18.40.2:4500\"\n\n\n[[uplink]]\nsource = \"198.18.10.2\"\n"
}

const cfgForward = "[[forward]]\nlisten = \"127.0.0.1:27015\"\nserver = \"198.18.41.2:27015\"\n"

// TestConfigBounds: every duration, rate and share is bounded, NaN and
// infinities never pass, and each refusal names file, line and key.
func TestConfigBounds(t *testing.T) {
	for _, tc := range []struct{ extra, want string }{
		{`ping_interval = "1ns"`, `r.toml:1: ping_interval: 1ns is not within 10ms to 10s`},
		{`ping_interval = "10us"`, `r.toml:1: ping_interval: 10µs is not within 10ms`},
		{`ping_interval = "0s"`, `r.toml:1: ping_interval: 0s is not within`},
		{`ping_interval = "1h"`, `r.toml:1: ping_interval: 1h is not within`},
		{`down_after = "2h"`, `r.toml:1: down_after: 2h is not within`},
		{`down_after = "50ms"`, `r.toml:1: down_after: must be at least ping_interval`},
		{`session_idle = "1ms"`, `r.toml:1: session_idle:`},
		{`delayed_copy = nan`, `r.toml:1: delayed_copy: NaN is not a finite number`},
		{`delayed_copy = inf`, `r.toml:1: delayed_copy: +Inf is not a finite number`},
		{`delayed_copy = 1.5`, `r.toml:1: delayed_copy: 1.5 is not within 0 to 1`},
		{`expected_pps = nan`, `r.toml:1: expected_pps: NaN is not a finite number`},
		{`expected_pps = inf`, `r.toml:1: expected_pps: +Inf is not a finite number`},
		{`expected_pps = 0`, `r.toml:1: expected_pps: 0 is not above 0`},
		{`expected_pps = 1e6`, `r.toml:1: expected_pps: 1e+06 is not above 0 and at most 10000`},
		{`copies_per_uplink = 9`, `r.toml:1: copies_per_uplink: 9 is not within 1 to 4`},
		{`max_sessions = 0`, `r.toml:1: max_sessions: 0 is not within 1`},
		{`metrics = "9101"`, `r.toml:1: metrics: not a host:port`},
		{`metrics = "127.0.0.1:http"`, `r.toml:1: metrics: bad port "http"`},
		{"[choice]\nloss = nan", `r.toml:12: choice.loss: NaN is not a finite number`},
		{"[choice]\nprobe_interval = \"1ns\"", `r.toml:12: choice.probe_interval: 1ns is not within`},
		{"[choice]\nloss = 0.0", `r.toml:12: choice.loss: 0 is not above 0 and at most 1`},
		{"[choice]\nmargin = \"0s\"", `r.toml:12: choice.margin: 0s is not within 1ms to 10s`},
		{"[choice]\nhold = \"1000h\"", `r.toml:12: choice.hold: 1000h is not within`},
		{"[transparent]\nenabled = true\nlan = \"lan0\"\npoll_interval = \"1ns\"", `r.toml:14: transparent.poll_interval:`},
	} {
		// Top-level keys go first (line 1); tables after the 10 lines of
		// head and forward (line 11 on).
		text := cfgHead(tc.extra+"\n") + cfgForward
		if strings.HasPrefix(tc.extra, "[") {
			text = cfgHead("") + cfgForward + tc.extra + "\n"
		}
		_, err := ParseConfig("r.toml", text)
		if err == nil {
			t.Errorf("%q accepted", tc.extra)
		} else if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %q, want %q", tc.extra, err, tc.want)
		}
	}
}

// TestConfigListenTakenByAnUplink: an uplink bound to an address with a port
// takes it, so a forward cannot listen there.
func TestConfigListenTakenByAnUplink(t *testing.T) {
	text := strings.Replace(cfgHead(""), "source = \"198.18.10.2\"", "source = \"127.0.0.1:27015\"", 1) + cfgForward
	_, err := ParseConfig("r.toml", text)
	want := "r.toml:9: forward.0.listen: 127.0.0.1:27015 is already the listen address of uplink.0.source (line 7)"
	if err == nil || err.Error() != want {
		t.Fatalf("error %v, want %q", err, want)
	}
}

// TestConfigPingIntervalNanosecond is the config that once passed -check and
// then panicked in NewTicker.
func TestConfigPingIntervalNanosecond(t *testing.T) {
	_, err := ParseConfig("r.toml", cfgHead("ping_interval = \"1ns\"\ndown_after = \"1s\"\n")+cfgForward)
	var es config.Errors
	if !errors.As(err, &es) || len(es) != 1 || es[0].Line != 1 || es[0].Key != "ping_interval" {
		t.Fatalf("error %v, want one error at r.toml:1 about ping_interval", err)
	}
	c, err := ParseConfig("r.toml", cfgHead("ping_interval = \"10ms\"\ndown_after = \"30ms\"\n")+cfgForward)
	if err != nil || c.PingInterval.Duration != 10*time.Millisecond {
		t.Fatalf("the lowest ping_interval refused: %v", err)
	}
}

// TestConfigReportsEveryError: one load names every refused key of the file,
// each at its line, in line order.
func TestConfigReportsEveryError(t *testing.T) {
	text := `client_id = ""
key = "short"
ping_interval = "1ns"
expected_pps = -1
colour = "red"
max_sessions = "many"
[[uplink]]
source = "nowhere"
[[forward]]
listen = "127.0.0.1:27015"
server = "198.18.41.2"
[[forward]]
listen = "0.0.0.0:27015"
server = "198.18.41.3:27015"
expected_pps = nan
`
	_, err := ParseConfig("r.toml", text)
	var es config.Errors
	if !errors.As(err, &es) {
		t.Fatalf("error %v, want config.Errors", err)
	}
	want := []string{
		"r.toml:1: client_id: ",
		"r.toml:2: key: ",
		"r.toml:3: ping_interval: ",
		"r.toml:4: expected_pps: ",
		"r.toml:5: colour: unknown key",
		"r.toml:6: max_sessions: incompatible types",
		"r.toml:7: uplink.0.proxy: no proxy for this uplink",
		"r.toml:8: uplink.0.source: ",
		"r.toml:11: forward.0.server: not an address:port",
		"r.toml:13: forward.1.listen: 0.0.0.0:27015 is already the listen address of forward.0.listen (line 10)",
		"r.toml:15: forward.1.expected_pps: NaN",
	}
	var got []string
	for _, e := range es {
		got = append(got, e.Error())
	}
	if len(got) != len(want) {
		t.Fatalf("%d errors, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("error %d = %q, want it to start %q", i, got[i], want[i])
		}
	}
}

// TestConfigDefaultsFilledBeforeDecoding: keys left out take the defaults; a
// forward without its own scheme or rate takes the top-level ones.
func TestConfigDefaultsFilledBeforeDecoding(t *testing.T) {
	c, err := ParseConfig("r.toml", cfgHead("scheme = \"xor:2\"\nexpected_pps = 30\n")+cfgForward+
		"[[forward]]\nlisten = \"127.0.0.1:27016\"\nserver = \"198.18.41.2:27016\"\nscheme = \"copy\"\nexpected_pps = 128\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.PingInterval.Duration != DefaultPingInterval || c.DownAfter.Duration != DefaultDownAfter ||
		c.MaxSessions != DefaultMaxSessions || c.CopiesPerUplink != 1 || c.LogLevel != "info" {
		t.Errorf("defaults: %+v", c)
	}
	if f := c.Forwards[0]; f.Scheme != "xor:2" || f.ExpectedPPS != 30 {
		t.Errorf("forward 0 did not inherit: %+v", f)
	}
	if f := c.Forwards[1]; f.Scheme != "copy" || f.ExpectedPPS != 128 {
		t.Errorf("forward 1 lost its own values: %+v", f)
	}
}

// TestConfigReportsEveryErrorOfItsTables: [transparent] and [suppress] report
// all their errors together too, each at its line.
func TestConfigReportsEveryErrorOfItsTables(t *testing.T) {
	text := cfgHead("") + `[transparent]
enabled = true
mtu = 100
table = 254
poll_interval = "1ns"
[suppress]
enabled = true
interval = "1ns"
lan_device = "lan0"
[[suppress.uplink]]
name = "isp9"
up_bps = 1
down_bps = 1
[[suppress.uplink]]
name = "uplink0"
up_bps = 2_000_000_000_000
down_bps = 1
[suppress.levels]
shape_share = nan
`
	_, err := ParseConfig("r.toml", text)
	want := []string{
		"r.toml:8: transparent.lan: transparent mode needs the LAN interface",
		"r.toml:10: transparent.mtu: ",
		"r.toml:11: transparent.table: ",
		"r.toml:12: transparent.poll_interval: ",
		"r.toml:15: suppress.interval: ",
		"r.toml:18: suppress.uplink.0.name: \"isp9\" is not the name of an [[uplink]]",
		"r.toml:21: suppress.uplink.1.device: uploads are enforced on the uplink's egress device",
		"r.toml:23: suppress.uplink.1.up_bps: 2000000000000 is not within 1 to",
		"r.toml:26: suppress.levels.shape_share: NaN",
	}
	var es config.Errors
	if !errors.As(err, &es) {
		t.Fatalf("error %v, want config.Errors", err)
	}
	if len(es) != len(want) {
		t.Fatalf("%d errors, want %d:\n%v", len(es), len(want), err)
	}
	for i := range want {
		if !strings.HasPrefix(es[i].Error(), want[i]) {
			t.Errorf("error %d = %q, want it to start %q", i, es[i], want[i])
		}
	}
}

// TestConfigAppProxiesNameProxies: a preferred proxy in the user's app table
// (apps_file, a file of its own) must be one of the [[proxy]] tables; a name
// that is not is refused at its own file, line and key.
func TestConfigAppProxiesNameProxies(t *testing.T) {
	apps := filepath.Join(t.TempDir(), "apps.toml")
	if err := os.WriteFile(apps, []byte(`[[app]]
name = "g"
type = "shooter"
proto = "udp"
server_ports = ["41000"]
proxies = ["fra", "nyc"]

[[operator]]
name = "o"
type = "shooter"
prefixes = ["198.18.41.0/24"]
proxies = ["ams"]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	text := "client_id = \"a\"\nkey = \"" + wire.Key{1}.String() + "\"\n" + `[[uplink]]
name = "isp0"
source = "198.18.10.2"
[[proxy]]
name = "fra"
address = "198.18.40.2:4500"
[[proxy]]
name = "ams"
address = "198.18.50.2:4500"
[transparent]
enabled = true
lan = "lan0"
apps_file = "` + apps + `"
`
	_, err := ParseConfig("r.toml", text)
	var es config.Errors
	if !errors.As(err, &es) || len(es) != 1 {
		t.Fatalf("error %v, want one config error", err)
	}
	want := apps + `:6: app.0.proxies: "nyc" names no [[proxy]] of the router`
	if !strings.HasPrefix(es[0].Error(), want) {
		t.Fatalf("error %q, want it to start %q", es[0], want)
	}
	// Named right, the file passes.
	fixed := strings.Replace(text, `name = "ams"`, `name = "nyc"`, 1)
	if err := os.WriteFile(apps, []byte(`[[app]]
name = "g"
type = "shooter"
proto = "udp"
server_ports = ["41000"]
proxies = ["nyc", "fra"]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseConfig("r.toml", fixed); err != nil {
		t.Fatalf("valid proxies refused: %v", err)
	}
}

// TestConfigRDNSKeys: the rDNS keys are checked and defaulted.
func TestConfigRDNSKeys(t *testing.T) {
	tp := "[transparent]\nenabled = true\nlan = \"lan0\"\nrdns = true\n"
	c, err := ParseConfig("r.toml", cfgHead("")+tp)
	if err != nil {
		t.Fatal(err)
	}
	if c.Transparent.RDNSTimeout.Duration != DefaultRDNSTimeout || c.Transparent.RDNSCache != DefaultRDNSCache {
		t.Fatalf("defaults: %v, %d", c.Transparent.RDNSTimeout, c.Transparent.RDNSCache)
	}
	_, err = ParseConfig("r.toml", cfgHead("")+tp+"rdns_server = \"dns.example\"\nrdns_timeout = \"1ns\"\nrdns_cache = 1\n")
	var es config.Errors
	if !errors.As(err, &es) || len(es) != 3 {
		t.Fatalf("error %v, want 3", err)
	}
	for i, key := range []string{"r.toml:12: transparent.rdns_server", "r.toml:13: transparent.rdns_timeout", "r.toml:14: transparent.rdns_cache"} {
		if !strings.HasPrefix(es[i].Error(), key) {
			t.Errorf("error %d = %q, want %q", i, es[i], key)
		}
	}
}
