package integration

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/raicnet/raic"

// layers is the order the code reads in, lowest first. A package may import
// packages of its own layer or of a lower one, never of a higher one, so each
// layer can be read, tested and changed knowing only what is below it. The
// codec is the bottom: raic/ imports no other folder of the module, so pkg/ is
// only ever above it.
// docs/architecture.md says what each package owns; a new package goes into
// the lowest layer whose packages it needs (and then into this table).
var layers = []struct {
	name string
	pkgs []string // import paths relative to the module; "dir/..." is the folder and all below it
}{
	{"codec: RAIC encoders and decoders and their window", []string{"raic/..."}},
	{"base: wire format, clocks, sockets, tables, config and logging", []string{
		"pkg/allow", "pkg/cli", "pkg/config", "pkg/dashboard", "pkg/logging", "pkg/metrics",
		"pkg/mono", "pkg/nat", "pkg/netcfg", "pkg/nftnat", "pkg/proxyproto", "pkg/session",
		"pkg/token", "pkg/udp", "pkg/version", "pkg/wire", "pkg/quality",
	}},
	{"tunnel: one session's sealing, window and codec", []string{"pkg/tunnel"}},
	{"session parts: reply paths, clients, TCP framing", []string{"pkg/replypath", "pkg/clients", "pkg/tcpmux"}},
	{"engines: ingress, uplink set, TCP split, detection, rendezvous, fleet operation", []string{"pkg/ingress", "pkg/uplink", "pkg/tcpsplit", "detect", "pkg/rendezvous", "pkg/fleet"}},
	{"policy and peers: suppression, proxy choice, peer paths", []string{"suppress", "pkg/proxychoice", "pkg/peer"}},
	{"kernel: eBPF enforcement, gateway setup", []string{"bpf", "pkg/gateway"}},
	{"programs", []string{"router", "proxy", "intermediate", "simple"}},
	{"commands", []string{"router/cmd/...", "proxy/cmd/...", "intermediate/cmd/...", "simple/cmd/..."}},
	{"test beds, tools and benchmarks", []string{"integration/..."}},
}

// testOnly are packages of test doubles: imported from _test.go files only, so
// they are never linked into a shipped program.
var testOnly = []string{"integration/testkit"}

// layerOf returns the layer index of pkg (relative to the module), the most
// specific entry winning, or -1.
func layerOf(pkg string) int {
	best, bestLen := -1, -1
	for i, l := range layers {
		for _, p := range l.pkgs {
			match := p == pkg
			if dir, ok := strings.CutSuffix(p, "/..."); ok {
				match = pkg == dir || strings.HasPrefix(pkg, dir+"/")
			}
			if match && len(p) > bestLen {
				best, bestLen = i, len(p)
			}
		}
	}
	return best
}

// moduleImports walks the module and returns, per package directory, the
// module packages its files import, split into non-test and test files.
func moduleImports(t *testing.T, root string) (code, tests map[string]map[string]bool) {
	code, tests = map[string]map[string]bool{}, map[string]map[string]bool{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "examples" || name == "docs") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		rel = filepath.ToSlash(rel)
		into := code
		if strings.HasSuffix(path, "_test.go") {
			into = tests
		}
		if into[rel] == nil {
			into[rel] = map[string]bool{}
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if rest, ok := strings.CutPrefix(p, module+"/"); ok {
				into[rel][rest] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return code, tests
}

// TestLayersReadOneWay fails when a package imports one of a higher layer, when
// a package is in no layer, or when a test-double package is imported from
// code that is not a test.
func TestLayersReadOneWay(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatal(err)
	}
	code, tests := moduleImports(t, root)
	if len(code) < 20 {
		t.Fatalf("found only %d packages under %s", len(code), root)
	}
	var pkgs []string
	for p := range code {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	for _, p := range pkgs {
		lp := layerOf(p)
		if lp < 0 {
			t.Errorf("%s is in no layer: add it to the layers table in integration/layers_test.go (and docs/architecture.md)", p)
			continue
		}
		for imp := range code[p] {
			li := layerOf(imp)
			switch {
			case li < 0:
				// reported as a package of its own
			case li > lp:
				t.Errorf("%s (layer %q) imports %s of a higher layer (%q)", p, layers[lp].name, imp, layers[li].name)
			}
			for _, to := range testOnly {
				if imp == to {
					t.Errorf("%s imports the test doubles %s from non-test code", p, to)
				}
			}
		}
	}
	// The rule must be able to fail: the graph has imports across layers.
	if !code["pkg/tunnel"]["raic"] || !code["raic"]["raic/replay"] {
		t.Errorf("pkg/tunnel should import raic and raic raic/replay; the walk found %v and %v", code["pkg/tunnel"], code["raic"])
	}
	if layerOf("pkg/tunnel") <= layerOf("raic") || layerOf("pkg/wire") <= layerOf("raic") {
		t.Error("the table puts pkg/ at or below raic/")
	}
	// Test files may use anything above them (test doubles, the programs), but
	// must not make an import cycle, which the go tool already refuses.
	_ = tests
}
