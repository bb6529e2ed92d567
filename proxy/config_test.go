package proxy

import (
	"errors"
	"strings"
	"testing"

	"github.com/raicnet/raic/pkg/config"
)

// proxyClient is a valid [[client]] table, four lines long.
func proxyClient() string {
	return "[[client]]\nid = \"gamer\"\nkey = \"" + goodKey.String() + "\"\nallow = [\"198.18.41.2\"]\n"
}

// TestConfigBounds: every duration, rate and share is bounded, NaN and
// infinities never pass, and each refusal names file, line and key.
func TestConfigBounds(t *testing.T) {
	for _, tc := range []struct{ extra, want string }{
		{`overload_cpu = nan`, "p.toml:1: overload_cpu: NaN is not a finite number"},
		{`overload_cpu = inf`, "p.toml:1: overload_cpu: +Inf is not a finite number"},
		{`overload_cpu = 0.0`, "p.toml:1: overload_cpu: 0 is not above 0 and at most 1"},
		{`overload_cpu = 1.5`, "p.toml:1: overload_cpu: 1.5 is not above 0 and at most 1"},
		{`overload_latency = "-1ms"`, "p.toml:1: overload_latency: -1ms is not within 1ns to 1s"},
		{`overload_latency = "1m"`, "p.toml:1: overload_latency: 1m is not within"},
		{`session_idle = "0s"`, "p.toml:1: session_idle: 0s is not within 1s to 24h"},
		{`keep_server_port = "11m"`, "p.toml:1: keep_server_port: 11m is not within 0s to 10m"},
		{`keep_server_port = "-1s"`, "p.toml:1: keep_server_port: -1s is not within 0s to 10m"},
		{`reply_window = "1ns"`, "p.toml:1: reply_window: 1ns is not within 100ms to 1m"},
		{`hello_max_age = "100h"`, "p.toml:1: hello_max_age: 100h is not within 1s to 1h"},
		{`probe_ttl = "10ms"`, "p.toml:1: probe_ttl: 10ms is not within 1s to 1h"},
		{`probe_max_targets = 0`, "p.toml:1: probe_max_targets: 0 is not within 1"},
		{`max_sessions = -1`, "p.toml:1: max_sessions: -1 is not within 1"},
		{`listen = "0.0.0.0"`, "p.toml:1: listen: not an address:port"},
		{`metrics = "[::1]"`, "p.toml:1: metrics: not a host:port"},
		{`metrics = "127.0.0.1:99999"`, `p.toml:1: metrics: bad port "99999"`},
		{`log_level = "loud"`, "p.toml:1: log_level:"},
		{`memory_limit_mb = -1`, "p.toml:1: memory_limit_mb: -1 is not within 0 to 1048576"},
		{`receive_buffer_kb = 8`, "p.toml:1: receive_buffer_kb: 8 is not within 64 to 1048576"},
		{`tcp_flows_per_client = 0`, "p.toml:1: tcp_flows_per_client: 0 is not within 1 to 65536"},
		{`tcp_flows_per_client = 70000`, "p.toml:1: tcp_flows_per_client: 70000 is not within 1 to 65536"},
		{`tcp_pending_per_address = 0`, "p.toml:1: tcp_pending_per_address: 0 is not within 1 to 65536"},
	} {
		_, err := ParseConfig("p.toml", tc.extra+"\n"+proxyClient())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.extra, err, tc.want)
		}
	}
	for _, tc := range []struct{ extra, want string }{
		{"rate_pps = nan", "p.toml:5: client.0.rate_pps: NaN"},
		{"rate_pps = -inf", "p.toml:5: client.0.rate_pps: -Inf"},
		{"burst = 0", "p.toml:5: client.0.burst: 0 is not within 1"},
	} {
		_, err := ParseConfig("p.toml", proxyClient()+tc.extra+"\n")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.extra, err, tc.want)
		}
	}
}

// TestConfigReportsEveryError: one load names every refused key of the file.
func TestConfigReportsEveryError(t *testing.T) {
	text := "listen = \"nowhere\"\noverload_cpu = nan\nprobe_ttl = 5\nmetrics = \"x\"\n" + proxyClient() +
		"colour = 1\n[[client]]\nid = \"gamer\"\nkey = \"x\"\n"
	_, err := ParseConfig("p.toml", text)
	var es config.Errors
	if !errors.As(err, &es) {
		t.Fatalf("error %v, want config.Errors", err)
	}
	want := []string{
		"p.toml:1: listen: ",
		"p.toml:2: overload_cpu: ",
		"p.toml:3: probe_ttl: ",
		"p.toml:4: metrics: ",
		"p.toml:9: client.0.colour: unknown key",
		"p.toml:10: client.1.allow: ", // the table's header: allow is missing
		"p.toml:11: client.1.id: client \"gamer\" is configured twice",
		"p.toml:12: client.1.key: ",
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
