package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

type uplink struct {
	Name    string   `toml:"name"`
	Address string   `toml:"address"`
	Weight  int      `toml:"weight"`
	Timeout Duration `toml:"timeout"`
}

type server struct {
	Listen string `toml:"listen"`
	Port   int    `toml:"port"`
}

type testConfig struct {
	Name    string         `toml:"name"`
	Debug   bool           `toml:"debug"`
	Server  server         `toml:"server"`
	Uplinks []uplink       `toml:"uplink"`
	Points  []server       `toml:"points"`
	Limits  map[string]int `toml:"limits"`
}

const good = `# router config
name = "home"   # trailing comment
debug = true
motd = """
[not a table]
still the string: name = "x"
"""

[server]
listen = "198.18.0.1"
port = 4000

[[uplink]]
name = 'wan-a'
address = "198.18.1.1:5000"
timeout = "150ms"

[[uplink]]
name = "wan-b"
  address = "198.18.2.1:5000"
weight = 2

[limits]
sessions = 100
"dotted.key" = 3

[[points]]
listen = "a"
`

func TestDecodeAndLines(t *testing.T) {
	var c testConfig
	m, err := Decode("router.toml", strings.Replace(good, "motd = \"\"\"\n[not a table]\nstill the string: name = \"x\"\n\"\"\"\n", "\n\n\n\n", 1), &c)
	if err != nil {
		t.Fatal(err)
	}
	want := testConfig{
		Name: "home", Debug: true,
		Server: server{Listen: "198.18.0.1", Port: 4000},
		Uplinks: []uplink{
			{Name: "wan-a", Address: "198.18.1.1:5000", Timeout: Duration{150 * time.Millisecond}},
			{Name: "wan-b", Address: "198.18.2.1:5000", Weight: 2},
		},
		Points: []server{{Listen: "a"}},
		Limits: map[string]int{"sessions": 100, "dotted.key": 3},
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("decoded %+v\nwant %+v", c, want)
	}
	lines := map[string]int{
		"name": 2, "debug": 3, "server": 9, "server.listen": 10, "server.port": 11,
		"uplink": 13, "uplink.0": 13, "uplink.0.name": 14, "uplink.0.address": 15, "uplink.0.timeout": 16,
		"uplink.1": 18, "uplink.1.name": 19, "uplink.1.address": 20, "uplink.1.weight": 21,
		"limits.sessions": 24, "limits.dotted.key": 25, "points.0.listen": 28,
		"uplink.2": 0, "uplink.1.timeout": 0, "nothing": 0,
	}
	for k, want := range lines {
		if got := m.Line(k); got != want {
			t.Errorf("Line(%q) = %d, want %d", k, got, want)
		}
		if m.IsDefined(k) != (want > 0) {
			t.Errorf("IsDefined(%q) wrong", k)
		}
	}
}

func TestUnknownKeys(t *testing.T) {
	var c testConfig
	_, err := Decode("router.toml", good, &c)
	if err == nil {
		t.Fatal("unknown top-level key motd accepted")
	}
	if got, want := err.Error(), `router.toml:4: motd: unknown key`; got != want {
		t.Fatalf("error %q, want %q", got, want)
	}

	text := `name = "x"
colour = "red"
[server]
port = 1
prot = 2
[[uplink]]
address = "a"
[[uplink]]
address = "b"
wieght = 3
[[uplink]]
address = "c"
wieght = 4
[extra]
a = 1
b.c = 2
[[points]]
listen = "p"
[[points]]
inline = { x = 1 }
`
	_, err = Decode("cfg.toml", text, &c)
	if err == nil {
		t.Fatal("no error")
	}
	want := []string{
		`cfg.toml:2: colour: unknown key`,
		`cfg.toml:5: server.prot: unknown key`,
		`cfg.toml:10: uplink.1.wieght: unknown key`,
		`cfg.toml:13: uplink.2.wieght: unknown key`,
		`cfg.toml:14: extra: unknown key`,
		`cfg.toml:20: points.1.inline: unknown key`,
	}
	if got := strings.Split(err.Error(), "\n"); !reflect.DeepEqual(got, want) {
		t.Fatalf("errors:\n%s\nwant:\n%s", err, strings.Join(want, "\n"))
	}
}

func TestUnknownKeysInInlineValues(t *testing.T) {
	var c testConfig
	text := "server = { port = 1, bogus = 2 }\npoints = [\n  { listen = \"a\" },\n  { listen = \"b\", nope = 1 },\n]\n"
	_, err := Decode("c.toml", text, &c)
	want := "c.toml:1: server.bogus: unknown key\nc.toml:4: points.1.nope: unknown key"
	if err == nil || err.Error() != want {
		t.Fatalf("error %v, want %q", err, want)
	}
}

func TestWrongType(t *testing.T) {
	cases := []struct{ text, want string }{
		{"name = 1\n", `c.toml:1: name: incompatible types: TOML value has type int64; destination has type string`},
		{"[server]\n\nport = \"x\"\n", `c.toml:3: server.port: incompatible types`},
		{"[[uplink]]\nweight = 1\n[[uplink]]\nweight = 1.5\n[[uplink]]\nweight = 3\n", `c.toml:4: uplink.1.weight: incompatible types: TOML value has type float64`},
		{"[[uplink]]\ntimeout = \"1s\"\n[[uplink]]\ntimeout = \"soon\"\n", `c.toml:4: uplink.1.timeout: time: invalid duration "soon"`},
		{"debug = \"yes\"\n", `c.toml:1: debug: incompatible types`},
	}
	for _, tc := range cases {
		var c testConfig
		_, err := Decode("c.toml", tc.text, &c)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("Decode(%q) error %v, want prefix %q", tc.text, err, tc.want)
		}
	}
}

func TestSyntaxError(t *testing.T) {
	cases := []struct{ text, want string }{
		{"name = \"x\"\n\nport = \n", "c.toml:3: "},
		{"[server\nport = 1\n", "c.toml:2: expected '.' or ']'"},
		{"name = 'a'\nname = 'b'\n", "c.toml:2: Key 'name' has already been defined."},
		{"a = \"\"\"\nunterminated\n", "c.toml:"},
	}
	for _, tc := range cases {
		var c testConfig
		m, err := Decode("c.toml", tc.text, &c)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) || m != nil {
			t.Errorf("Decode(%q) = %v, %v; want error starting %q", tc.text, m, err, tc.want)
		}
	}
}

func TestErrorf(t *testing.T) {
	var c testConfig
	m, err := Decode("p.toml", "name = \"x\"\n\n[[uplink]]\naddress = \"a\"\n[[uplink]]\naddress = \"\"\n", &c)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m.Errorf("uplink.1.address", "empty address (uplink %d)", 1).Error(), "p.toml:6: uplink.1.address: empty address (uplink 1)"; got != want {
		t.Fatalf("Errorf = %q, want %q", got, want)
	}
	if got, want := m.Errorf("server.port", "required").Error(), "p.toml: server.port: required"; got != want {
		t.Fatalf("Errorf = %q, want %q", got, want)
	}
	if m.Name() != "p.toml" {
		t.Fatalf("Name = %q", m.Name())
	}
	var nilMeta *Meta
	if nilMeta.Line("x") != 0 || nilMeta.Errorf("x", "y").Error() != "config: x: y" {
		t.Fatal("nil Meta misbehaves")
	}
}

func TestLinesThroughTrickyText(t *testing.T) {
	text := `a = """
b = 1
[c]
"""
'q.k' = '''
x'''
d = [ # comment ] still comment
  1,
  [2, 3], # ]
  "]",
]
e = "#not a comment" # comment
f = { g = { h = 1 } }
"quoted key" = 'lit # not comment'
[t.u]
v = 1979-05-27 07:32:00Z
w = "\"\\"
[[arr.x]]
y = 1
[[arr.x]]
[arr.x.z]
y = 2
`
	var v map[string]any
	m, err := Decode("t.toml", text, &v)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{
		"a": 1, "b": 0, "c": 0, "q.k": 5, "d": 7, "e": 12, "f": 13, "f.g": 13, "f.g.h": 13,
		"quoted key": 14, "t": 15, "t.u": 15, "t.u.v": 16, "t.u.w": 17,
		"arr.x.0": 18, "arr.x.0.y": 19, "arr.x.1": 20, "arr.x.1.z": 21, "arr.x.1.z.y": 22,
	}
	for k, w := range want {
		if got := m.Line(k); got != w {
			t.Errorf("Line(%q) = %d, want %d", k, got, w)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "proxy.toml")
	if err := os.WriteFile(p, []byte("name = \"p\"\n[server]\nport = 9\nbad = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var c testConfig
	_, err := Load(p, &c)
	if err == nil || err.Error() != p+`:4: server.bad: unknown key` {
		t.Fatalf("Load error %v", err)
	}
	if _, err := Load(filepath.Join(dir, "missing.toml"), &c); err == nil {
		t.Fatal("missing file accepted")
	}
}

func TestDurationRoundTrip(t *testing.T) {
	var d Duration
	if err := d.UnmarshalText([]byte("1m30s")); err != nil || d.Duration != 90*time.Second {
		t.Fatalf("UnmarshalText = %v, %v", d, err)
	}
	b, _ := d.MarshalText()
	var e Duration
	if err := e.UnmarshalText(b); err != nil || e != d {
		t.Fatalf("round trip %q -> %v, %v", b, e, err)
	}
	if err := e.UnmarshalText([]byte("5")); err == nil {
		t.Fatal("duration without unit accepted")
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(good)
	f.Add("a = \"\"\"\n\"\"\"\"\"\n[[x.y]]\n[x.y.z]\nq = [{a=1},{b=[1,{c=2}]}]\n")
	f.Add("[[uplink]]\nweight = 'x'\ntimeout = 5\n")
	f.Add("'a'.\"b\" . c = { d = 1, e = [ 1, 2, ], }\n")
	f.Fuzz(func(t *testing.T, text string) {
		var c testConfig
		m, err := Decode("f.toml", text, &c)
		if err == nil && m == nil {
			t.Fatal("nil Meta without error")
		}
		if err != nil && !strings.HasPrefix(err.Error(), "f.toml") {
			t.Fatalf("error without file name: %v", err)
		}
		for _, k := range m.Keys() {
			if m.Line(k) < 1 || m.Line(k) > strings.Count(text, "\n")+1 {
				t.Fatalf("Line(%q) = %d outside the text", k, m.Line(k))
			}
		}
		var generic map[string]any
		Decode("f.toml", text, &generic)
	})
}

// TestInterfaceDestinationsKeepKeys: keys decoded into any (or map[string]any)
// are known, even though the TOML library does not mark the keys inside them
// as decoded; untagged fields match by name ignoring case, as the library
// decodes them; embedded structs contribute their fields.
func TestInterfaceDestinationsKeepKeys(t *testing.T) {
	type Common struct {
		Level int `toml:"level"`
	}
	type withAny struct {
		Common
		Plugins map[string]any `toml:"plugins"`
		Raw     any            `toml:"raw"`
		Retries int
		Skip    int `toml:"-"`
	}
	text := "level = 1\nretries = 3\n[plugins.geo]\ndb = \"x\"\nopts = { a = 1 }\n[raw]\nx.y = 1\n[other]\nz = 1\nskip = 2\n"
	var c withAny
	_, err := Decode("a.toml", text, &c)
	want := "a.toml:8: other: unknown key"
	if err == nil || err.Error() != want {
		t.Fatalf("error %v, want %q", err, want)
	}
	if c.Level != 1 || c.Retries != 3 || c.Plugins["geo"] == nil || c.Raw == nil {
		t.Fatalf("decoded %+v", c)
	}
	_, err = Decode("a.toml", "skip = 1\n", &c)
	if err == nil || err.Error() != "a.toml:1: skip: unknown key" {
		t.Fatalf("field tagged \"-\" accepted a key: %v", err)
	}
}
