package config

import (
	"errors"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestEveryTypeErrorAtOnce: the TOML library stops at the first value of the
// wrong type; Decode goes on and reports each, at its line, and the keys it
// could decode are decoded.
func TestEveryTypeErrorAtOnce(t *testing.T) {
	text := "name = 1\ndebug = \"yes\"\n[server]\nport = \"x\"\nlisten = \"a\"\n[[uplink]]\nweight = 1\n[[uplink]]\nweight = 1.5\ntimeout = \"soon\"\n[[uplink]]\nweight = 'w'\naddress = \"b\"\n"
	c := testConfig{Name: "default"}
	m, err := Decode("c.toml", text, &c)
	if m == nil {
		t.Fatal("nil Meta")
	}
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("error %v, want Errors", err)
	}
	want := []string{
		"c.toml:1: name: incompatible types",
		"c.toml:2: debug: incompatible types",
		"c.toml:4: server.port: incompatible types",
		"c.toml:9: uplink.1.weight: incompatible types",
		"c.toml:10: uplink.1.timeout: time: invalid duration",
		"c.toml:12: uplink.2.weight: incompatible types",
	}
	if len(es) != len(want) {
		t.Fatalf("%d errors, want %d:\n%v", len(es), len(want), err)
	}
	for i := range want {
		if !strings.HasPrefix(es[i].Error(), want[i]) {
			t.Errorf("error %d = %q, want it to start %q", i, es[i], want[i])
		}
	}
	if c.Name != "default" || c.Server.Listen != "a" || len(c.Uplinks) != 3 || c.Uplinks[0].Weight != 1 || c.Uplinks[2].Address != "b" {
		t.Errorf("the rest was not decoded (or a default was lost): %+v", c)
	}
}

// TestCheckRunsValidationAfterDecodeErrors: unknown keys, type errors and
// validation errors of one file come back together, and a key refused by the
// decoder is not refused again by validation.
func TestCheckRunsValidationAfterDecodeErrors(t *testing.T) {
	text := "name = 1\ncolour = 2\n[server]\nport = 70000\n"
	var c testConfig
	err := CheckText("c.toml", text, &c, func(m *Meta) {
		if c.Name == "" {
			m.Report("name", "must be set")
		}
		m.Int("server.port", c.Server.Port, 1, 65535)
		m.Report("server.listen", "missing")
	})
	want := "c.toml:1: name: incompatible types: TOML value has type int64; destination has type string\n" +
		"c.toml:2: colour: unknown key\n" +
		"c.toml:3: server.listen: missing\n" +
		"c.toml:4: server.port: 70000 is not within 1 to 65535"
	if err == nil || err.Error() != want {
		t.Fatalf("error:\n%v\nwant:\n%s", err, want)
	}
	var e *Error
	if !errors.As(err, &e) || e.File != "c.toml" || e.Line != 1 || e.Key != "name" {
		t.Fatalf("errors.As found %+v", e)
	}
	if err := CheckText("c.toml", "name = \n", &c, func(*Meta) { t.Fatal("check ran on a syntax error") }); err == nil ||
		!strings.HasPrefix(err.Error(), "c.toml:1: ") {
		t.Fatalf("syntax error %v", err)
	}
}

func TestCheckHelpers(t *testing.T) {
	m, err := Decode("h.toml", "a = 1\n[t]\nb = 2\n", &map[string]any{})
	if err != nil {
		t.Fatal(err)
	}
	nan, inf := math.NaN(), math.Inf(1)
	ok := []bool{
		m.Duration("a", 10*time.Millisecond, 10*time.Millisecond, time.Second),
		m.DurationOrOff("a", 0, time.Second, time.Hour),
		m.Int("a", 4, 1, 4),
		m.Float("a", 0, 0, 1),
		m.Ratio("a", 1, false),
		m.Ratio("a", 0, true),
		m.Rate("a", 60, 1000),
		m.HostPort("a", ":9101"),
		m.HostPort("a", "localhost:9101"),
		m.HostPort("a", "[::1]:9101"),
	}
	for i, v := range ok {
		if !v {
			t.Errorf("check %d refused a good value: %v", i, m.Err())
		}
	}
	if m.Err() != nil {
		t.Fatalf("errors recorded: %v", m.Err())
	}
	for _, tc := range []struct {
		refused bool
		key     string
		want    string
	}{
		{!m.Duration("k1", time.Nanosecond, 10*time.Millisecond, 10*time.Second), "k1", "1ns is not within 10ms to 10s"},
		{!m.Duration("k2", 25*time.Hour, time.Second, 24*time.Hour), "k2", "25h is not within 1s to 24h"},
		{!m.DurationOrOff("k3", time.Millisecond, time.Second, time.Hour), "k3", "1ms is not within 1s to 1h (or 0 for off)"},
		{!m.Float("k4", nan, 0, 1), "k4", "NaN is not a finite number"},
		{!m.Float("k5", inf, 0, inf), "k5", "+Inf is not a finite number"},
		{!m.Ratio("k6", 0, false), "k6", "0 is not above 0 and at most 1"},
		{!m.Ratio("k7", nan, true), "k7", "NaN is not a finite number"},
		{!m.Rate("k8", inf, 1e6), "k8", "+Inf is not a finite number"},
		{!m.Rate("k9", 0, 1e6), "k9", "0 is not above 0 and at most 1e+06"},
		{!m.HostPort("k10", "9101"), "k10", "not a host:port"},
		{!m.HostPort("k11", "a b:1"), "k11", `bad host "a b"`},
		{!m.Int("t.b", 0, 1, 4), "t.b", "0 is not within 1 to 4"},
	} {
		if !tc.refused {
			t.Errorf("%s accepted", tc.key)
		}
	}
	_, okp := m.Prefix("p1", "198.18.0.1/15")
	if okp {
		t.Error("prefix with host bits accepted")
	}
	if _, ok := m.AddrPort("p2", "198.18.0.1"); ok {
		t.Error("address without port accepted")
	}
	err = m.Err()
	for _, w := range []string{"h.toml: k1: 1ns is not within 10ms to 10s", "h.toml: k2: 25h is not within 1s to 24h",
		"h.toml: k5: +Inf", "h.toml:3: t.b: 0 is not within 1 to 4", "h.toml: p1: ", "h.toml: p2: not an address:port"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("errors do not contain %q:\n%v", w, err)
		}
	}
}

// TestListenRefusesTakenAddresses: a UDP address may be listened on once; the
// unspecified address takes its port on every address of its family (:: on
// both families), port 0 never collides.
func TestListenRefusesTakenAddresses(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		dup  bool
	}{
		{"127.0.0.1:1", "127.0.0.1:1", true},
		{"127.0.0.1:1", "127.0.0.1:2", false},
		{"127.0.0.1:1", "127.0.0.2:1", false},
		{"0.0.0.0:1", "127.0.0.1:1", true},
		{"127.0.0.1:1", "0.0.0.0:1", true},
		{"[::]:1", "127.0.0.1:1", true},
		{"[::1]:1", "127.0.0.1:1", false},
		{"[::ffff:127.0.0.1]:1", "127.0.0.1:1", true},
		{"0.0.0.0:0", "0.0.0.0:0", false},
	} {
		m, _ := Decode("l.toml", "[[x]]\na = 1\n[[x]]\na = 2\n", &map[string]any{})
		m.Listen("x.0.a", netip.MustParseAddrPort(tc.a))
		got := !m.Listen("x.1.a", netip.MustParseAddrPort(tc.b))
		if got != tc.dup {
			t.Errorf("%s then %s: refused %v, want %v", tc.a, tc.b, got, tc.dup)
		}
		if tc.dup {
			want := "l.toml:4: x.1.a: "
			if err := m.Err(); err == nil || !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), "x.0.a (line 2)") {
				t.Errorf("error %v, want it at %q naming x.0.a (line 2)", err, want)
			}
		}
	}
}

// TestErrorfUsesTheNearestWrittenTable: a key left out of a table points at
// the table's header.
func TestErrorfUsesTheNearestWrittenTable(t *testing.T) {
	m, err := Decode("e.toml", "a = 1\n\n[[up]]\nx = 1\n[[up]]\ny = 2\n", &map[string]any{})
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{
		"up.1.name": "e.toml:5: up.1.name: m",
		"up.0.x":    "e.toml:4: up.0.x: m",
		"b":         "e.toml: b: m",
		"up.7.z":    "e.toml:3: up.7.z: m",
	} {
		if got := m.Errorf(key, "m").Error(); got != want {
			t.Errorf("Errorf(%q) = %q, want %q", key, got, want)
		}
	}
}
