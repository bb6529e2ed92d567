package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/integration/gamegen"
)

func TestHelpAndBadUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		out  string // expected in stdout+stderr
	}{
		{[]string{"--help"}, 0, "gamegen server"},
		{[]string{"client", "--help"}, 0, "-duration"},
		{[]string{"server", "-h"}, 0, "-listen"},
		{nil, 2, "usage"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"client", "-rate", "fast"}, 2, `invalid value "fast"`},
		{[]string{"client", "-nosuch"}, 2, "flag provided but not defined: -nosuch"},
		{[]string{"client", "-rate", "60"}, 2, "-server is required"},
		{[]string{"client", "-server", "127.0.0.1:9", "-size", "8"}, 2, "size 8 out of range"},
		{[]string{"client", "-server", "127.0.0.1:9", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"server", "-listen", "127.0.0.1:0", "-size", "8"}, 2, "size 8 out of range"},
		{[]string{"server", "-listen", "nohost.invalid:x"}, 2, "-listen"},
	} {
		var out, errb bytes.Buffer
		code := run(context.Background(), tc.args, &out, &errb)
		all := out.String() + errb.String()
		if code != tc.code || !strings.Contains(all, tc.out) {
			t.Errorf("%q: code %d, output:\n%s\nwant code %d and %q", tc.args, code, all, tc.code, tc.out)
		}
	}
}

func TestServerAndClientCommands(t *testing.T) {
	// The server command on a fixed free port: find one with the library.
	probe, err := gamegen.NewServer(gamegen.ServerConfig{Listen: netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.Addr().String()
	probe.Close()

	ctx, cancel := context.WithCancel(context.Background())
	srvDone := make(chan int, 1)
	var srvErr bytes.Buffer
	go func() {
		srvDone <- run(ctx, []string{"server", "-listen", addr, "-rate", "100", "-size", "64"}, &bytes.Buffer{}, &srvErr)
	}()
	time.Sleep(50 * time.Millisecond)

	jsonPath := filepath.Join(t.TempDir(), "r.json")
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"client", "-server", addr, "-rate", "100", "-size", "100",
		"-duration", "300ms", "-echo", "-json", jsonPath}, &out, &errb)
	cancel()
	if c := <-srvDone; c != 0 {
		t.Errorf("server exit %d: %s", c, srvErr.String())
	}
	if code != 0 {
		t.Fatalf("client exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "p99.9 ms") || !strings.Contains(out.String(), "rtt") {
		t.Errorf("table:\n%s", out.String())
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var r gamegen.Report
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	if r.Up.Sent != 30 || r.Up.Received != 30 || r.EchoReceived != 30 || r.Down.Sent == 0 || r.Down.Lost != 0 || r.ServerSize != 64 {
		t.Errorf("report %+v", r)
	}
	if !strings.Contains(srvErr.String(), "listening on") || !strings.Contains(srvErr.String(), "1 sessions") {
		t.Errorf("server log: %s", srvErr.String())
	}
}
