package router

import (
	"strings"
	"testing"
)

// TestConfigSchemeAuto: scheme = "auto" passes the config check, at the top
// level and per forward, and starts with copies; an unknown scheme still fails
// with its line and key.
func TestConfigSchemeAuto(t *testing.T) {
	c, err := ParseConfig("r.toml", cfgHead(`scheme = "auto"`+"\n")+cfgForward)
	if err != nil {
		t.Fatalf("auto refused: %v", err)
	}
	p, auto, err := parseScheme(c.Forwards[0].Scheme)
	if err != nil || !auto || p.String() != "RAIC-1 x2" {
		t.Fatalf("forward scheme %q: %v auto=%v %v", c.Forwards[0].Scheme, p, auto, err)
	}
	if _, err := ParseConfig("r.toml", cfgHead("")+cfgForward+"scheme = \"AUTO\"\n"); err != nil {
		t.Fatalf("per-forward auto refused: %v", err)
	}
	_, err = ParseConfig("r.toml", cfgHead(`scheme = "automatic"`+"\n")+cfgForward)
	if err == nil || !strings.Contains(err.Error(), `r.toml:1: scheme: raic: unknown scheme "automatic"`) {
		t.Fatalf("bad scheme: %v", err)
	}
}
