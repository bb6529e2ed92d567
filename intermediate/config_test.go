package intermediate

import (
	"errors"
	"strings"
	"testing"

	"github.com/raicnet/raic/pkg/config"
)

// configTail is a valid [[client]] and [next], eight lines, put after the
// top-level keys of each case.
func configTail() string {
	key := routerKey.String()
	return "[[client]]\nid = \"gamer\"\nkey = \"" + key + "\"\nallow = [\"198.18.41.2\"]\n" +
		"[next]\nclient_id = \"mid\"\nkey = \"" + key + "\"\nproxy = \"198.18.40.2:4500\"\n"
}

// TestConfigBounds: every duration and rate is bounded, NaN and infinities
// never pass, and each refusal names file, line and key.
func TestConfigBounds(t *testing.T) {
	for _, tc := range []struct{ extra, want string }{
		{`session_idle = "1ns"`, "i.toml:1: session_idle: 1ns is not within 1s to 24h"},
		{`reply_window = "2h"`, "i.toml:1: reply_window: 2h is not within 100ms to 1m"},
		{`hello_max_age = "0s"`, "i.toml:1: hello_max_age: 0s is not within 1s to 1h"},
		{`max_sessions = 0`, "i.toml:1: max_sessions: 0 is not within 1"},
		{`listen = "localhost:4500"`, "i.toml:1: listen: not an address:port"},
		{`metrics = "nohost"`, "i.toml:1: metrics: not a host:port"},
	} {
		_, err := ParseConfig("i.toml", tc.extra+"\n"+configTail())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.extra, err, tc.want)
		}
	}
	for _, tc := range []struct{ extra, want string }{
		{`ping_interval = "1ns"`, "i.toml:9: next.ping_interval: 1ns is not within 10ms to 10s"},
		{`ping_interval = "10us"`, "i.toml:9: next.ping_interval: 10µs is not within 10ms to 10s"},
		{`copies_per_uplink = 0`, "i.toml:9: next.copies_per_uplink: 0 is not within 1 to 4"},
		{"[[next.uplink]]\nproxy = \"198.18.40.2\"", "i.toml:10: next.uplink.0.proxy: not an address:port"},
		{"[[next.uplink]]\nsource = \"127.0.0.1:4500\"", "i.toml:10: next.uplink.0.source: 127.0.0.1:4500 is already the listen address of listen"},
	} {
		_, err := ParseConfig("i.toml", configTail()+tc.extra+"\n")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.extra, err, tc.want)
		}
	}
	_, err := ParseConfig("i.toml", strings.Replace(configTail(), "allow = [", "rate_pps = nan\nallow = [", 1))
	if err == nil || !strings.Contains(err.Error(), "i.toml:4: client.0.rate_pps: NaN is not above 0") {
		t.Errorf("rate_pps = nan: error %v", err)
	}
}

// TestConfigReportsEveryError: one load names every refused key of the file.
func TestConfigReportsEveryError(t *testing.T) {
	text := "listen = \"x\"\nsession_idle = \"soon\"\n" + strings.Replace(configTail(), "client_id = \"mid\"", "client_id = \"\"\nping_interval = \"1ns\"", 1) +
		"[[next.uplink]]\nsource = \"x\"\nproxy = \"y\"\n"
	_, err := ParseConfig("i.toml", text)
	var es config.Errors
	if !errors.As(err, &es) {
		t.Fatalf("error %v, want config.Errors", err)
	}
	want := []string{
		"i.toml:1: listen: ",
		"i.toml:2: session_idle: ",
		"i.toml:8: next.client_id: ",
		"i.toml:9: next.ping_interval: ",
		"i.toml:13: next.uplink.0.source: ",
		"i.toml:14: next.uplink.0.proxy: ",
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

// TestFleetConfig: with a token key no [[client]] is needed; without one it
// still is; the fleet keys are checked as the proxy checks them.
func TestFleetConfig(t *testing.T) {
	next := "[next]\nclient_id = \"mid\"\nkey = \"" + routerKey.String() + "\"\nproxy = \"198.18.40.2:4500\"\n"
	c, err := ParseConfig("i.toml", "token_key = \""+routerKey.String()+"\"\nhealth_listen = \"127.0.0.1:9113\"\ndrain_timeout = \"5s\"\n"+next)
	if err != nil {
		t.Fatal(err)
	}
	if c.Config.Key() == nil || c.HealthListen != "127.0.0.1:9113" || c.DrainTimeout.Seconds() != 5 {
		t.Fatalf("fleet keys not read: %+v", c.Config)
	}
	if _, err := ParseConfig("i.toml", next); err == nil || !strings.Contains(err.Error(), "no [[client]] configured") {
		t.Errorf("no clients and no token key: error %v", err)
	}
	for _, tc := range []struct{ extra, want string }{
		{`token_key = "short"`, "i.toml:1: token_key: "},
		{`token_key_file = "/nonexistent/token.key"`, "i.toml:1: token_key_file: "},
		{`health_listen = "nowhere"`, "i.toml:1: health_listen: "},
		{`drain_timeout = "2h"`, "i.toml:1: drain_timeout: 2h is not within"},
		{`max_tokens = 0`, "i.toml:1: max_tokens: 0 is not within"},
	} {
		_, err := ParseConfig("i.toml", tc.extra+"\n"+configTail())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.extra, err, tc.want)
		}
	}
}
