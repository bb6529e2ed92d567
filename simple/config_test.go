package simple

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/config"
)

func TestConfigDefaults(t *testing.T) {
	c, err := ParseConfig("s.toml", `
[[route]]
listen = "0.0.0.0:4501"
upstream = "198.18.5.2:4500"
`)
	if err != nil {
		t.Fatal(err)
	}
	if c.LogLevel != "info" || c.MaxMappings != DefaultMaxMappings || c.MappingIdle.Duration != DefaultMappingIdle ||
		c.RatePPS != DefaultRatePPS || c.Burst != DefaultBurst(DefaultRatePPS) {
		t.Errorf("defaults not applied: %+v", c)
	}
}

func TestConfigFull(t *testing.T) {
	path := filepath.Join(t.TempDir(), "simple.toml")
	text := `log_level = "debug"
metrics = "127.0.0.1:9103"
max_mappings = 500
mapping_idle = "30s"
rate_pps = 2000
burst = 300

[[route]]
listen = "0.0.0.0:4501"
upstream = "198.18.5.2:4500"

[[route]]
listen = "[::]:4502"
upstream = "[2001:db8::2]:4500"
`
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxMappings != 500 || c.MappingIdle.Duration != 30*time.Second || c.RatePPS != 2000 || c.Burst != 300 ||
		len(c.Routes) != 2 || c.Routes[1].Upstream != "[2001:db8::2]:4500" || c.Metrics != "127.0.0.1:9103" {
		t.Errorf("config read wrong: %+v", c)
	}
}

// Errors must point at the file, the line and the key, so that the user does not
// have to search.
func TestConfigErrors(t *testing.T) {
	const head = "max_mappings = 10\n\n[[route]]\nlisten = \"0.0.0.0:4501\"\nupstream = \"198.18.5.2:4500\"\n\n"
	cases := []struct {
		name, text, want string
	}{
		{"unknown top-level key", "max_mapings = 10\n[[route]]\nlisten = \"0.0.0.0:1\"\nupstream = \"198.18.5.2:4500\"\n",
			"s.toml:1: max_mapings: unknown key"},
		{"unknown route key", head + "[[route]]\nlisten = \"0.0.0.0:4502\"\nupstraem = \"198.18.5.2:4500\"\n",
			"s.toml:9: route.1.upstraem: unknown key"},
		{"bad upstream", head + "[[route]]\nlisten = \"0.0.0.0:4502\"\nupstream = \"198.18.5.2\"\n",
			"s.toml:9: route.1.upstream: not an address:port"},
		{"bad listen", head + "[[route]]\nlisten = \"localhost:4502\"\nupstream = \"198.18.5.2:4500\"\n",
			"s.toml:8: route.1.listen: not an address:port"},
		{"unspecified upstream", head + "[[route]]\nlisten = \"0.0.0.0:4502\"\nupstream = \"0.0.0.0:4500\"\n",
			"s.toml:9: route.1.upstream: 0.0.0.0:4500 cannot be a proxy's address"},
		{"missing upstream", head + "[[route]]\nlisten = \"0.0.0.0:4502\"\n",
			"s.toml:7: route.1.upstream: missing"},
		{"duplicate listen", head + "[[route]]\nlisten = \"0.0.0.0:4501\"\nupstream = \"198.18.5.3:4500\"\n",
			"s.toml:8: route.1.listen: 0.0.0.0:4501 is already the listen address of route.0.listen (line 4)"},
		{"loop", "[[route]]\nlisten = \"0.0.0.0:4501\"\nupstream = \"127.0.0.1:4501\"\n",
			"s.toml:3: route.0.upstream: 127.0.0.1:4501 is this route's own listener"},
		{"no routes", "max_mappings = 10\n", "s.toml: route: no [[route]] configured"},
		{"bad level", "log_level = \"loud\"\n" + head, `s.toml:1: log_level: unknown log level "loud"`},
		{"bad metrics", "metrics = \"9103\"\n" + head, "s.toml:1: metrics: not a host:port"},
		{"negative rate", "rate_pps = -1\n" + head, "s.toml:1: rate_pps: -1 is not above 0"},
		{"negative burst", "burst = -1\n" + head, "s.toml:1: burst: -1 is not within 1 to"},
		{"negative idle", "mapping_idle = \"-1s\"\n" + head, "s.toml:1: mapping_idle: -1s is not within 100ms to 24h"},
		{"bad idle", "mapping_idle = \"soon\"\n" + head, "s.toml:1:"},
		{"nan rate", "rate_pps = nan\n" + head, "s.toml:1: rate_pps: NaN is not a finite number"},
		{"inf rate", "rate_pps = inf\n" + head, "s.toml:1: rate_pps: +Inf is not a finite number"},
		{"tiny idle", "mapping_idle = \"1ns\"\n" + head, "s.toml:1: mapping_idle: 1ns is not within 100ms to 24h"},
		{"metrics port", "metrics = \"127.0.0.1:x\"\n" + head, `s.toml:1: metrics: bad port "x"`},
		{"listen taken by any address", head + "[[route]]\nlisten = \"127.0.0.1:4501\"\nupstream = \"198.18.5.3:4500\"\n",
			"s.toml:8: route.1.listen: 127.0.0.1:4501 is already the listen address of route.0.listen (line 4)"},
		{"negative max", "max_mappings = -3\n\n[[route]]\nlisten = \"0.0.0.0:1\"\nupstream = \"198.18.5.2:4500\"\n",
			"s.toml:1: max_mappings: -3 is not within 1 to"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig("s.toml", tc.text)
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.text)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q\ndoes not contain %q", err, tc.want)
			}
		})
	}
}

// TestConfigReportsEveryError: one load names every refused key of the file.
func TestConfigReportsEveryError(t *testing.T) {
	text := "rate_pps = nan\nburst = 0\nmapping_idle = \"1ns\"\n[[route]]\nlisten = \"0.0.0.0:4501\"\nupstream = \"0.0.0.0:1\"\n" +
		"[[route]]\nlisten = \"[::]:4501\"\nupstream = \"198.18.5.2:4500\"\nport = 3\n"
	_, err := ParseConfig("s.toml", text)
	var es config.Errors
	if !errors.As(err, &es) {
		t.Fatalf("error %v, want config.Errors", err)
	}
	want := []string{
		"s.toml:1: rate_pps: ",
		"s.toml:2: burst: ",
		"s.toml:3: mapping_idle: ",
		"s.toml:6: route.0.upstream: 0.0.0.0:1 cannot be a proxy's address",
		"s.toml:8: route.1.listen: [::]:4501 is already the listen address of route.0.listen",
		"s.toml:10: route.1.port: unknown key",
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

func TestLoadConfigMissingFile(t *testing.T) {
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "nope.toml")); err == nil {
		t.Fatal("missing file accepted")
	}
}
