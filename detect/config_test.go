package detect

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/raicnet/raic/pkg/config"
)

func mustShipped(t testing.TB) *Config {
	t.Helper()
	c, err := ShippedConfig()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestShippedConfigIsComplete(t *testing.T) {
	c := mustShipped(t)
	if len(c.Apps) < 20 {
		t.Fatalf("%d apps shipped, want at least 20", len(c.Apps))
	}
	for _, a := range c.Apps {
		if a.Source == "" || a.Title == "" || a.PPS <= 0 || a.PacketSize <= 0 {
			t.Errorf("app %q: title, source, pps and packet_size must all be set", a.Name)
		}
	}
	want := map[uint32]string{32590: "valve", 6507: "riot", 57976: "blizzard"}
	for _, o := range c.Operators {
		for _, a := range o.ASNs {
			if want[a] == o.Name {
				delete(want, a)
			}
		}
	}
	if len(want) != 0 {
		t.Fatalf("operators missing: %v", want)
	}
}

func TestParseConfigErrorsNameFileLineField(t *testing.T) {
	good := "[[app]]\nname = \"a\"\ntype = \"shooter\"\nproto = \"udp\"\nserver_ports = [\"1000\"]\n\n"
	cases := []struct {
		name, src string
		line      int
		field     string
	}{
		{"bad range", good + "[[app]]\nname = \"b\"\ntype = \"voip\"\nproto = \"udp\"\nserver_ports = [\"2000-1000\"]\n", 11, "app.1.server_ports"},
		{"port zero", good + "[[app]]\nname = \"b\"\ntype = \"voip\"\nproto = \"udp\"\nserver_ports = [\"0\"]\n", 11, "app.1.server_ports"},
		{"port too big", good + "[[app]]\nname = \"b\"\ntype = \"voip\"\nproto = \"udp\"\nserver_ports = [\"70000\"]\n", 11, "app.1.server_ports"},
		{"bad client", good + "[[app]]\nname = \"b\"\ntype = \"voip\"\nproto = \"udp\"\nserver_ports = [\"5\"]\nclient_ports = [\"x\"]\n", 12, "app.1.client_ports"},
		{"bad proto", good + "[[app]]\nname = \"b\"\ntype = \"voip\"\nproto = \"sctp\"\nserver_ports = [\"5\"]\n", 10, "app.1.proto"},
		{"no ports", good + "[[app]]\nname = \"b\"\ntype = \"voip\"\nproto = \"udp\"\n", 7, "app.1.server_ports"},
		{"duplicate", good + "[[app]]\nname = \"a\"\n", 8, "app.1.name"},
		{"bad name", "[[app]]\nname = \"Has Space\"\n", 2, "app.0.name"},
		{"nan pps", good + "[[app]]\nname = \"b\"\ntype = \"voip\"\nproto = \"udp\"\nserver_ports = [\"5\"]\npps = nan\n", 12, "app.1.pps"},
		{"negative pps", good + "[[app]]\nname = \"b\"\ntype = \"voip\"\nproto = \"udp\"\nserver_ports = [\"5\"]\npps = -1\n", 12, "app.1.pps"},
		{"unknown field", good + "[[app]]\nname = \"b\"\ncolour = \"red\"\n", 9, "app.1.colour"},
		{"wrong type", "[[app]]\nname = \"a\"\npps = \"fast\"\n", 3, "app.0.pps"},
		{"syntax", "[[app]]\nname = \n", 2, ""},
		{"bad proxy", good + "[[app]]\nname = \"b\"\ntype = \"voip\"\nproto = \"udp\"\nserver_ports = [\"5\"]\nproxies = [\"\"]\n", 12, "app.1.proxies"},
		{"operator empty", "[[operator]]\nname = \"x\"\ntype = \"moba\"\n", 1, "operator.0.asns"},
		{"operator as0", "[[operator]]\nname = \"x\"\ntype = \"moba\"\nasns = [0]\n", 4, "operator.0.asns"},
		{"rdns both", "[[rdns]]\nname = \"x\"\ntype = \"moba\"\nglob = \"*.a\"\nregex = \"a\"\n", 4, "rdns.0.glob"},
		{"rdns regex", "[[rdns]]\nname = \"x\"\ntype = \"moba\"\nregex = \"(\"\n", 4, "rdns.0.regex"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig("user.toml", []byte(tc.src))
			var es config.Errors
			if !errors.As(err, &es) {
				t.Fatalf("err = %v, want config.Errors", err)
			}
			for _, e := range es {
				if e.File == "user.toml" && e.Line == tc.line && strings.Contains(e.Key, tc.field) {
					return
				}
			}
			t.Fatalf("got %q, want an error at line %d about key %q", err, tc.line, tc.field)
		})
	}
}

// TestParseConfigReportsEveryError: one run names every refused entry of a
// table file, each at its line.
func TestParseConfigReportsEveryError(t *testing.T) {
	src := "[[app]]\nname = \"a\"\ntype = \"shooter\"\nproto = \"sctp\"\nserver_ports = [\"0\"]\n" +
		"[[operator]]\nname = \"x\"\ntype = \"moba\"\nprefixes = [\"198.18.0.1/15\"]\ncolour = 1\n"
	_, err := ParseConfig("user.toml", []byte(src))
	var es config.Errors
	if !errors.As(err, &es) {
		t.Fatalf("err = %v, want config.Errors", err)
	}
	want := []string{
		"user.toml:4: app.0.proto:",
		"user.toml:5: app.0.server_ports:",
		"user.toml:9: operator.0.prefixes:",
		"user.toml:10: operator.0.colour: unknown key",
	}
	if len(es) != len(want) {
		t.Fatalf("%d errors, want %d:\n%v", len(es), len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(es[i].Error(), w) {
			t.Errorf("error %d = %q, want it to start %q", i, es[i], w)
		}
	}
}

func TestUserConfigOverridesAndDisables(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "user.toml")
	user := `
[[app]]
name = "cs2"
title = "CS2, local server on a custom port"
type = "shooter"
proto = "udp"
server_ports = ["27999"]
pps = 128
packet_size = 200
proxies = ["fra1"]

[[app]]
name = "lol"
disabled = true

[[app]]
name = "my-game"
type = "racing"
proto = "udp"
server_ports = ["41000-41010"]
client_ports = ["41500"]
`
	if err := os.WriteFile(path, []byte(user), 0o600); err != nil {
		t.Fatal(err)
	}
	u, err := LoadConfigFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tab := NewAppTable(Merge(mustShipped(t), u))
	if a, ok := tab.Lookup(ProtoUDP, 27999, 1); !ok || a.Name != "cs2" || a.Proxies[0] != "fra1" {
		t.Fatalf("override not applied: %+v %v", a, ok)
	}
	if a, ok := tab.Lookup(ProtoUDP, 27020, 1); ok && a.Name == "cs2" {
		t.Fatalf("the replaced cs2 ranges still match")
	}
	if a, ok := tab.Lookup(ProtoUDP, 5100, 1); ok {
		t.Fatalf("disabled lol still matches as %q", a.Name)
	}
	if _, ok := tab.Lookup(ProtoUDP, 41005, 1); ok {
		t.Fatalf("client-port constrained entry matched a wrong client port")
	}
	if a, ok := tab.Lookup(ProtoUDP, 41005, 41500); !ok || a.Name != "my-game" {
		t.Fatalf("new entry not found: %+v", a)
	}
}

func TestGlobToRegexp(t *testing.T) {
	c, err := ParseConfig("x", []byte("[[rdns]]\nname = \"valve\"\ntype = \"shooter\"\nglob = \"*.valve.ne?\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	re := c.RDNS[0].re
	for name, want := range map[string]bool{
		"sdr-fra1.valve.net.": true, "A.VALVE.NET": true, "valve.net": false,
		"x.valve.net.evil.example": false, "x.valvexnet": false,
	} {
		if re.MatchString(name) != want {
			t.Errorf("%q: match %v, want %v", name, !want, want)
		}
	}
}
