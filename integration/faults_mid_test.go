package integration

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/intermediate"
	"github.com/raicnet/raic/pkg/mono"
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

// TestFaultsIntermediate: restarts with an intermediate between router and
// proxy (router -> intermediate -> capturing relay -> proxy -> server): the
// proxy restarting behind it, a replay of what crossed the last hop before that
// restart, and the intermediate itself stopping and starting again.
func TestFaultsIntermediate(t *testing.T) {
	if testing.Short() {
		t.Skip("takes about 8 s; not in -short")
	}
	var rows []faultRow
	row := func(name, bound, format string, args ...any) {
		rows = append(rows, faultRow{name, fmt.Sprintf(format, args...), bound})
	}
	defer func() {
		var b strings.Builder
		fmt.Fprintf(&b, "\n| fault / attack | measured | must |\n| --- | --- | --- |\n")
		for _, r := range rows {
			fmt.Fprintf(&b, "| %s | %s | %s |\n", r.name, r.measured, r.bound)
		}
		t.Log(b.String())
	}()

	srv := newSeqServer(t)
	fp := startFaultProxy(t, "127.0.0.1:0", srv.addr().String(),
		fmt.Sprintf("[[client]]\nid = \"mid\"\nkey = \"%s\"\nallow = [\"%s\"]\nrate_pps = 100000\n", midKey, srv.addr()))
	tap := newTapRelay(t, fp.p.Addr())
	fm := startFaultMid(t, srv.addr(), tap.addr(), tap.addr())
	r := startRouter(t, srv.addr(), "", fm.s.Addr(), fm.s.Addr())
	game := startGame(t, r.ForwardAddr(0), 100)
	att := newAttacker(t)
	waitFor(t, 5*time.Second, "game traffic through router, intermediate and proxy", func() bool {
		seen, _ := srv.snapshot()
		return len(seen) > 100
	})

	// The proxy restarts behind the intermediate.
	kill := mono.Now()
	fp.stop()
	time.Sleep(time.Second)
	fp.start()
	back := mono.Now()
	first := firstAfter(t, srv, back, "game traffic after the proxy restart")
	seen, _ := srv.snapshot()
	sent, lost := game.lostBetween(seen, kill-int64(time.Second), first)
	gap := time.Duration(first - back)
	row("proxy stopped behind an intermediate, started again 1 s later (100 pps)", "flows within 200 ms of the proxy being back (test fails past 500 ms)",
		"flows %v after it is back; %d of %d lost (outage %v); intermediate saw %.0f restart", gap.Round(time.Millisecond), lost, sent,
		time.Duration(back-kill).Round(time.Millisecond), fm.metric("intermediate_next_restarts_total"))
	if gap > 500*time.Millisecond {
		t.Errorf("traffic flowed %v after the proxy was back behind the intermediate, want <= 200 ms (fails past 500 ms)", gap)
	}

	// Replay into the new run everything the intermediate sent the proxy
	// before it was back, once the sessions are re-opened.
	time.Sleep(500 * time.Millisecond)
	_, d0 := srv.snapshot()
	got0 := att.gotBytes.Load()
	pre := tap.capturedSince(0, back)
	for i, dg := range pre {
		att.send(dg, fp.p.Addr())
		if i%256 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	time.Sleep(300 * time.Millisecond)
	_, d1 := srv.snapshot()
	row(fmt.Sprintf("replay after a proxy restart, through an intermediate (%d datagrams tapped before it)", len(pre)), "0 delivered, 0 bytes back",
		"%d delivered, %d bytes back (%.0f hellos refused for an old epoch)", d1-d0, att.gotBytes.Load()-got0,
		fp.metric(`proxy_dropped_total{reason="old_epoch"}`))
	if d1 != d0 || att.gotBytes.Load() != got0 {
		t.Errorf("replay after a proxy restart through an intermediate: %d delivered, %d bytes back", d1-d0, att.gotBytes.Load()-got0)
	}

	// The intermediate stops and starts again on its address.
	kill = mono.Now()
	fm.stop()
	time.Sleep(time.Second)
	fm.start()
	back = mono.Now()
	first = firstAfter(t, srv, back, "game traffic after the intermediate restart")
	seen, _ = srv.snapshot()
	sent, lost = game.lostBetween(seen, kill-int64(time.Second), first)
	gap = time.Duration(first - back)
	row("intermediate stopped, started again 1 s later (100 pps)", "flows within 200 ms of it being back (test fails past 500 ms)",
		"flows %v after it is back; %d of %d lost (outage %v)", gap.Round(time.Millisecond), lost, sent, time.Duration(back-kill).Round(time.Millisecond))
	if gap > 500*time.Millisecond {
		t.Errorf("traffic flowed %v after the intermediate was back, want <= 200 ms (fails past 500 ms)", gap)
	}
}
