package intermediate

import (
	"net/http"
	"testing"
	"time"
)

func status(url string) int {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// A reload takes the new [[client]] tables and keeps every session (a PSK
// one and a token one, at the next hop too); a client taken out opens
// nothing more. A drain fails /readyz at once, keeps serving the open
// sessions and ends after drain_timeout; /healthz answers all along.
func TestReloadAndDrain(t *testing.T) {
	server, _ := echoServer(t)
	p := startProxy(t, "mid1", midKeys[0], server)
	extra := "health_listen = \"127.0.0.1:0\"\ndrain_timeout = \"700ms\""
	m := startTokenMid(t, server, p.Addr(), extra)
	health := "http://" + m.HTTPAddrs()[0]
	if got := status(health + "/readyz"); got != 200 {
		t.Fatalf("/readyz = %d, want 200", got)
	}
	tok, ck := mint(t, studioKey, server.String(), -time.Second, time.Minute, 2)
	tr := startTokenRouter(t, tok, ck, server, m.Addr())
	pr := startRouter(t, server, m.Addr())
	tGame, pGame := udpListen(t), udpListen(t)
	if echoThrough(t, tGame, tr.ForwardAddr(0), "token") != "token" || echoThrough(t, pGame, pr.ForwardAddr(0), "psk") != "psk" {
		t.Fatal("no session before the reload")
	}

	cfg, err := ParseConfig("intermediate.toml", midTokenConfig(server, p.Addr(), extra, false))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if counter(m, "intermediate_reloads_total") != 1 {
		t.Fatal("reload not counted")
	}
	if echoThrough(t, tGame, tr.ForwardAddr(0), "token again") != "token again" || echoThrough(t, pGame, pr.ForwardAddr(0), "psk again") != "psk again" {
		t.Fatal("a session did not survive the reload")
	}
	pr2 := startRouter(t, server, m.Addr())
	if got := echoThrough(t, udpListen(t), pr2.ForwardAddr(0), "removed"); got != "" {
		t.Fatalf("a removed client opened a session: %q", got)
	}
	if counter(m, `intermediate_dropped_total{reason="unknown_client"}`) < 1 {
		t.Fatal("the removed client's hellos were not counted")
	}

	start := time.Now()
	done := make(chan struct{})
	go func() { m.Drain(); close(done) }()
	waitFor(t, time.Second, "/readyz to fail", func() bool { return status(health+"/readyz") == 503 })
	if got := status(health + "/healthz"); got != 200 {
		t.Fatalf("/healthz while draining = %d", got)
	}
	if echoThrough(t, tGame, tr.ForwardAddr(0), "draining") != "draining" {
		t.Fatal("the token session was not served while draining")
	}
	// A token session not yet open is refused, counted as draining.
	tr2 := startTokenRouter(t, tok, ck, server, m.Addr())
	if got := echoThrough(t, udpListen(t), tr2.ForwardAddr(0), "late"); got != "" {
		t.Fatalf("a new session opened while draining: %q", got)
	}
	if counter(m, `intermediate_dropped_total{reason="draining"}`) < 1 {
		t.Fatal("hellos while draining not counted")
	}
	select {
	case <-done:
		if el := time.Since(start); el < 600*time.Millisecond {
			t.Fatalf("drain ended after %v, before drain_timeout, with live sessions", el)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("drain did not end after drain_timeout")
	}
}
