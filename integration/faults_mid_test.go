package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/intermediate"
	"github.com/raicnet/raic/pkg/wire"
)

// midKey is the key the intermediate of the fault suite holds at the proxy.
var midKey = wire.Key{0x4d, 0x49, 0x44}

// faultMid is an intermediate that can be stopped and started again on one
// address, as a kill and restart would: a new run keeps nothing of the old one.
type faultMid struct {
	t      *testing.T
	text   string
	s      *intermediate.Server
	cancel func()
	done   chan struct{}
}

func startFaultMid(t *testing.T, allow netip.AddrPort, next ...netip.AddrPort) *faultMid {
	text := fmt.Sprintf(`
listen = "127.0.0.1:0"
[[client]]
id = "gamer"
key = "%s"
allow = ["%s"]
rate_pps = 100000
[next]
client_id = "mid"
key = "%s"
`, testKey, allow, midKey)
	for i, n := range next {
		text += fmt.Sprintf("[[next.uplink]]\nname = \"u%d\"\nsource = \"127.0.0.1\"\nproxy = \"%s\"\n", i, n)
	}
	fm := &faultMid{t: t, text: text}
	fm.start()
	t.Cleanup(fm.stop)
	return fm
}

func (fm *faultMid) start() {
	cfg, err := intermediate.ParseConfig("intermediate.toml", fm.text)
	if err != nil {
		fm.t.Fatal(err)
	}
	if fm.s, err = intermediate.New(cfg, testLogger()); err != nil {
		fm.t.Fatal(err)
	}
	fm.text = strings.Replace(fm.text, "127.0.0.1:0", fm.s.Addr().String(), 1)
	ctx, cancel := context.WithCancel(context.Background())
	fm.cancel, fm.done = cancel, make(chan struct{})
	go func() { fm.s.Run(ctx); close(fm.done) }()
}

func (fm *faultMid) stop() {
	if fm.cancel != nil {
		fm.cancel()
		<-fm.done
		fm.cancel = nil
	}
}

func (fm *faultMid) metric(name string) float64 { return fm.s.Metrics().Snapshot()[name] }

// firstAfter waits for the server's first game packet after back and returns
// when it came.
func firstAfter(t *testing.T, srv *seqServer, back int64, what string) int64 {
	t.Helper()
	first := int64(0)
	waitFor(t, 10*time.Second, what, func() bool {
		seen, _ := srv.snapshot()
		first = 0
		for _, at := range seen {
			if at > back && (first == 0 || at < first) {
				first = at
			}
		}
		return first != 0
	})
	return first
}

// appendRows adds rows to the table in the file at path (make faults).
func appendRows(t *testing.T, path string, rows []faultRow) {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Logf("table not extended: %v", err)
		return
	}
	defer f.Close()
	for _, r := range rows {
		fmt.Fprintf(f, "| %s | %s | %s |\n", r.name, r.measured, r.bound)
	}
}
