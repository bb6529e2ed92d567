package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/raicnet/raic/pkg/wire"
)

// buildCommand builds one of the suite's programs into a temporary folder.
func buildCommand(t *testing.T, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	out, err := exec.Command("go", "build", "-o", bin, "github.com/raicnet/raic/"+pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

func run(bin string, args ...string) (string, int) {
	out, err := exec.Command(bin, args...).CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	return string(out), code
}

// TestCommandsHelpVersionAndConfigCheck builds each program and checks what a
// user sees first: --help and -version work, -check accepts a good config and
// refuses a bad one naming the file, the line and the key.
func TestCommandsHelpVersionAndConfigCheck(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the programs; skipped with -short")
	}
	key := wire.Key{1}.String()
	cases := []struct {
		pkg, good, bad, badWant string
	}{
		{
			pkg: "router/cmd/raic-router",
			good: `client_id = "a"
key = "` + key + `"
proxy = "198.18.40.2:4500"
[[uplink]]
source = "198.18.10.2"
[[forward]]
listen = "127.0.0.1:27015"
server = "198.18.41.2:27015"
`,
			bad: `client_id = "a"
key = "` + key + `"
proxy = "198.18.40.2:4500"
[[uplink]]
source = "198.18.10.2"
[[forward]]
listen = "127.0.0.1:27015"
server = "not an address"
`,
			badWant: ":8: forward.0.server",
		},
		{
			pkg: "proxy/cmd/raic-proxy",
			good: `listen = "0.0.0.0:4500"
[[client]]
id = "a"
key = "` + key + `"
allow = ["198.18.41.0/24"]
`,
			bad: `listen = "0.0.0.0:4500"
[[client]]
id = "a"
key = "` + key + `"
allow = ["198.18.41.0/24"]
alow = ["x"]
`,
			badWant: `:6: client.0.alow: unknown key`,
		},
		{
			pkg: "intermediate/cmd/raic-intermediate",
			good: `listen = "0.0.0.0:4500"
[[client]]
id = "a"
key = "` + key + `"
allow = ["198.18.41.0/24"]
[next]
client_id = "mid"
key = "` + key + `"
proxy = "198.18.40.2:4500"
`,
			bad: `listen = "0.0.0.0:4500"
[[client]]
id = "a"
key = "` + key + `"
allow = ["198.18.41.0/24"]
[next]
client_id = "mid"
key = "not a key"
proxy = "198.18.40.2:4500"
`,
			badWant: ":8: next.key",
		},
		{
			pkg: "proxy/cmd/raic-rendezvous",
			good: `listen = "0.0.0.0:3478"
[[peer]]
id = "alice"
key = "` + key + `"
`,
			bad: `listen = "0.0.0.0:3478"
[[peer]]
id = "alice"
key = "not a key"
`,
			badWant: ":4: peer.0.key",
		},
		{
			pkg: "simple/cmd/raic-simple",
			good: `[[route]]
listen = "0.0.0.0:4501"
upstream = "198.18.40.2:4500"
`,
			bad: `[[route]]
listen = "0.0.0.0:4501"
upstream = "198.18.40.2"
`,
			badWant: ":3: route.0.upstream",
		},
	}
	for _, c := range cases {
		t.Run(filepath.Base(c.pkg), func(t *testing.T) {
			bin := buildCommand(t, c.pkg)
			if out, code := run(bin, "--help"); code != 0 || !strings.Contains(out, "Usage") {
				t.Errorf("--help: exit %d, output %q", code, out)
			}
			if out, code := run(bin, "-version"); code != 0 || !strings.Contains(out, filepath.Base(c.pkg)) {
				t.Errorf("-version: exit %d, output %q", code, out)
			}
			dir := t.TempDir()
			good, bad := filepath.Join(dir, "good.toml"), filepath.Join(dir, "bad.toml")
			os.WriteFile(good, []byte(c.good), 0o600)
			os.WriteFile(bad, []byte(c.bad), 0o600)
			if out, code := run(bin, "-config", good, "-check"); code != 0 || !strings.Contains(out, "ok") {
				t.Errorf("-check on a good config: exit %d, output %q", code, out)
			}
			out, code := run(bin, "-config", bad, "-check")
			if code == 0 || !strings.Contains(out, bad+c.badWant) {
				t.Errorf("-check on a bad config: exit %d, output %q; want it to name %q", code, out, bad+c.badWant)
			}
			if out, code := run(bin, "-config", filepath.Join(dir, "missing.toml")); code == 0 || !strings.Contains(out, "missing.toml") {
				t.Errorf("missing config: exit %d, output %q", code, out)
			}
		})
	}
	t.Run("genkey", func(t *testing.T) {
		bin := buildCommand(t, "router/cmd/raic-router")
		out, code := run(bin, "-genkey")
		if _, err := wire.ParseKey(strings.TrimSpace(out)); code != 0 || err != nil {
			t.Fatalf("-genkey printed %q (exit %d): %v", out, code, err)
		}
	})
}

// TestCommandsCheckExamples: every config in examples/ passes its program's
// -check, as `make check-examples` runs it (from the repository root, where
// the examples name each other's paths).
func TestCommandsCheckExamples(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the programs; skipped with -short")
	}
	examples := map[string][]string{
		"router/cmd/raic-router":             {"router-explicit.toml", "router-transparent.toml", "router-peer.toml", "router-peer-transparent.toml"},
		"proxy/cmd/raic-rendezvous":          {"rendezvous.toml"},
		"proxy/cmd/raic-proxy":               {"proxy.toml", "proxy-studio.toml"},
		"intermediate/cmd/raic-intermediate": {"intermediate.toml"},
		"simple/cmd/raic-simple":             {"simple.toml"},
	}
	files, err := filepath.Glob("../examples/*.toml")
	if err != nil {
		t.Fatal(err)
	}
	checked := map[string]bool{"apps.toml": true} // checked through router-transparent.toml
	for pkg, names := range examples {
		bin := buildCommand(t, pkg)
		for _, name := range names {
			checked[name] = true
			cmd := exec.Command(bin, "-check", "-config", filepath.Join("examples", name))
			cmd.Dir = ".."
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), ": ok (") {
				t.Errorf("%s -check -config examples/%s: %v\n%s", filepath.Base(pkg), name, err, out)
			}
		}
	}
	for _, f := range files {
		if !checked[filepath.Base(f)] {
			t.Errorf("%s is checked by no program: add it to this test and to EXAMPLES in the Makefile", f)
		}
	}
}

// TestCommandsCheckReportsEveryError: -check names every refused key of a file
// in one run, each as FILE:LINE: KEY, including the bounds that once let a
// config pass -check and then fail at start (a 1ns ticker, NaN rates, the same
// listen address twice).
func TestCommandsCheckReportsEveryError(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the programs; skipped with -short")
	}
	bin := buildCommand(t, "router/cmd/raic-router")
	text := `client_id = "a"
key = "` + wire.Key{1}.String() + `"
proxy = "198.18.40.2:4500"
ping_interval = "1ns"
delayed_copy = nan
expected_pps = inf
metrics = "localhost"
[[uplink]]
source = "198.18.10.2"
[[forward]]
listen = "127.0.0.1:27015"
server = "198.18.41.2:27015"
[[forward]]
listen = "127.0.0.1:27015"
server = "198.18.41.3:27015"
`
	path := filepath.Join(t.TempDir(), "r.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := run(bin, "-check", "-config", path)
	if code == 0 {
		t.Fatalf("-check accepted:\n%s", out)
	}
	for _, want := range []string{":4: ping_interval: ", ":5: delayed_copy: ", ":6: expected_pps: ", ":7: metrics: ", ":14: forward.1.listen: "} {
		if !strings.Contains(out, path+want) {
			t.Errorf("output does not name %q:\n%s", path+want, out)
		}
	}
}
