package main

import (
	"context"
	"testing"
	"time"
)

// TestLoadShort is the load test, bounded for CI: 1,000 routers (one session
// each, over four PSK clients, from eight sockets) against one raic-proxy
// process, at 5 packets/s each for three seconds. Every router must be
// admitted with no refusal, and the server must get all but a few percent of
// what was sent (a loose bound: the machine is shared). `make loadtest` runs
// the full one (10,000 routers, rising rates) and prints its table.
func TestLoadShort(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs raic-proxy under load; not in -short")
	}
	opt, err := parseFlags([]string{"-load", "-routers", "1000", "-clients", "4", "-load-sources", "8", "-steps", "5", "-step", "3s", "-nice", "0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	argv, err := proxyArgv(ctx, opt, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	res, err := loadTest(ctx, opt, argv)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range loadTable(res, opt) {
		t.Log(r)
	}
	t.Log(loadSummary(res))
	if res.admitted != 1000 {
		t.Errorf("%d of 1000 routers admitted", res.admitted)
	}
	if len(res.refused) > 0 {
		t.Errorf("hellos refused: %s", dropList(res.refused))
	}
	if len(res.steps) != 1 {
		t.Fatalf("%d steps measured, want 1", len(res.steps))
	}
	st := res.steps[0]
	if st.sent < 10000 {
		t.Fatalf("only %d packets sent in the step", st.sent)
	}
	if l := st.loss(); l > 0.05 {
		t.Errorf("loss %.2f%% at %d packets/s offered (bound 5%%)", 100*l, int(st.offered))
	}
	if len(st.drops) > 0 {
		t.Errorf("the proxy dropped datagrams of admitted sessions: %s", dropList(st.drops))
	}
}
