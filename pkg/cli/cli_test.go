package cli

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/wire"
)

type conf struct{ level string }

type prog struct{ ran bool }

func (p *prog) Run(ctx context.Context) error { p.ran = true; return nil }

func testProgram(built *prog, newErr error) Program[conf] {
	return Program[conf]{
		Name: "raic-test", About: "Tests the frame.", Config: "t.toml", GenKey: true,
		Load: func(path string) (*conf, error) {
			if path == "bad.toml" {
				return nil, errors.New("bad.toml:3: key: nonsense")
			}
			if path == "worse.toml" {
				return nil, config.Errors{{File: path, Line: 1, Key: "a", Message: "bad"}, {File: path, Line: 4, Key: "b.0.c", Message: "worse"}}
			}
			return &conf{level: "error"}, nil
		},
		Summary:  func(*conf) string { return "3 things" },
		LogLevel: func(c *conf) string { return c.level },
		New: func(*conf, *slog.Logger) (Runner, error) {
			if newErr != nil {
				return nil, newErr
			}
			return built, nil
		},
	}
}

func TestFrame(t *testing.T) {
	cases := []struct {
		args     []string
		code     int
		out, err string
		ran      bool
	}{
		{args: []string{"--help"}, code: 0, err: "Usage: raic-test -config FILE [-check]"},
		{args: []string{"-version"}, code: 0, out: "raic-test "},
		{args: []string{"-check"}, code: 0, out: "t.toml: ok (3 things)"},
		{args: []string{"-config", "bad.toml", "-check"}, code: 1, err: "raic-test: bad.toml:3: key: nonsense"},
		{args: []string{"-config", "worse.toml", "-check"}, code: 1, err: "raic-test: worse.toml:1: a: bad\nraic-test: worse.toml:4: b.0.c: worse\n"},
		{args: []string{"-nonsense"}, code: 2, err: "flag provided but not defined"},
		{args: []string{"extra"}, code: 2, err: `unexpected argument "extra"`},
		{args: nil, code: 0, ran: true},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		built := &prog{}
		code := testProgram(built, nil).run(c.args, &out, &errb)
		if code != c.code || !strings.Contains(out.String(), c.out) || !strings.Contains(errb.String(), c.err) || built.ran != c.ran {
			t.Errorf("%v: exit %d, stdout %q, stderr %q, ran %v; want exit %d, %q, %q, ran %v",
				c.args, code, out.String(), errb.String(), built.ran, c.code, c.out, c.err, c.ran)
		}
	}
	var out, errb bytes.Buffer
	if code := testProgram(&prog{}, nil).run([]string{"-genkey"}, &out, &errb); code != 0 {
		t.Fatalf("-genkey exit %d", code)
	}
	if _, err := wire.ParseKey(strings.TrimSpace(out.String())); err != nil {
		t.Fatalf("-genkey printed %q: %v", out.String(), err)
	}
	if code := testProgram(&prog{}, errors.New("no socket")).run(nil, &out, &errb); code != 1 {
		t.Fatalf("a program that cannot start exits %d, want 1", code)
	}
}

// TestLogMemory: the memory report names the live heap, as the benchmarks
// read it.
func TestLogMemory(t *testing.T) {
	var b strings.Builder
	LogMemory(slog.New(slog.NewTextHandler(&b, nil)))
	line := b.String()
	for _, want := range []string{`msg=memory`, "heap_alloc_bytes=", "heap_inuse_bytes=", "sys_bytes="} {
		if !strings.Contains(line, want) {
			t.Errorf("memory report %q lacks %q", line, want)
		}
	}
}
