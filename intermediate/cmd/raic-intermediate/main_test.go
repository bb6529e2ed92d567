package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/raicnet/raic/pkg/wire"
)

// TestCommand builds the program and checks what a user sees first: --help and
// -version work, -check accepts a good config and refuses a bad one naming the
// file, the line and the key.
func TestCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the program; skipped with -short")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "raic-intermediate")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	run := func(args ...string) (string, int) {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	if out, code := run("--help"); code != 0 || !strings.Contains(out, "Usage: raic-intermediate") || !strings.Contains(out, "-config") {
		t.Errorf("--help: exit %d, output:\n%s", code, out)
	}
	if out, code := run("-version"); code != 0 || !strings.HasPrefix(out, "raic-intermediate ") {
		t.Errorf("-version: exit %d, output %q", code, out)
	}
	key := wire.Key{7}.String()
	good := `listen = "198.18.30.2:4500"
[[client]]
id = "gamer"
key = "` + key + `"
allow = ["198.18.41.2"]
[next]
client_id = "mid"
key = "` + key + `"
proxy = "198.18.40.2:4500"
`
	bad := strings.Replace(good, `proxy = "198.18.40.2:4500"`, `proxy = "198.18.40.2"`, 1)
	goodPath, badPath := filepath.Join(dir, "good.toml"), filepath.Join(dir, "bad.toml")
	os.WriteFile(goodPath, []byte(good), 0o600)
	os.WriteFile(badPath, []byte(bad), 0o600)
	if out, code := run("-config", goodPath, "-check"); code != 0 || !strings.Contains(out, "ok") {
		t.Errorf("-check good config: exit %d, output %q", code, out)
	}
	if out, code := run("-config", badPath, "-check"); code != 1 || !strings.Contains(out, "bad.toml:9: next.proxy") {
		t.Errorf("-check bad config: exit %d, output %q; want exit 1 naming bad.toml:9: next.proxy", code, out)
	}
}
