package integration

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/router"
)

const tpRDNSPort = 45200 // in no table, and sent too slowly for ad-hoc timing

// ptrResponder is a small DNS server answering PTR questions from a map
// (reverse name → PTR name) and NXDOMAIN to anything else.
type ptrResponder struct {
	conn    *net.UDPConn
	names   map[string]string
	queries atomic.Int64
}

func newPTRResponder(t *testing.T, names map[string]string) *ptrResponder {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p := &ptrResponder{conn: c, names: names}
	t.Cleanup(func() { c.Close() })
	go p.serve()
	return p
}

func (p *ptrResponder) addr() string { return p.conn.LocalAddr().String() }

func (p *ptrResponder) serve() {
	buf := make([]byte, 1500)
	for {
		n, from, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		var pr dnsmessage.Parser
		h, err := pr.Start(buf[:n])
		if err != nil {
			continue
		}
		q, err := pr.Question()
		if err != nil {
			continue
		}
		p.queries.Add(1)
		rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RCode: dnsmessage.RCodeNameError}
		target, ok := p.names[q.Name.String()]
		if ok && q.Type == dnsmessage.TypePTR {
			rh.RCode = dnsmessage.RCodeSuccess
		}
		b := dnsmessage.NewBuilder(nil, rh)
		b.EnableCompression()
		b.StartQuestions()
		b.Question(q)
		if rh.RCode == dnsmessage.RCodeSuccess {
			b.StartAnswers()
			b.PTRResource(dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypePTR, Class: dnsmessage.ClassINET, TTL: 60},
				dnsmessage.PTRResource{PTR: dnsmessage.MustNewName(target)})
		}
		msg, err := b.Finish()
		if err != nil {
			continue
		}
		p.conn.WriteToUDPAddrPort(msg, from)
	}
}

// reverseName is the in-addr.arpa name of an IPv4 address.
func reverseName(a netip.Addr) string {
	b := a.As4()
	return fmt.Sprintf("%d.%d.%d.%d.in-addr.arpa.", b[3], b[2], b[1], b[0])
}

// TestTransparentRDNSThenLearned: with [transparent] rdns = true and an
// [[rdns]] pattern in the user's app table, a flow to a port in no table, too
// slow for timing detection, is found by the server's PTR name: its first
// packets took the kernel's path and it keeps it (one source throughout),
// and the next session to that destination is proxied from its first packet.
// The resolver is a DNS responder in the test process on loopback: the
// router's goroutines run in the test's own namespace once set up, as a
// router process would in its one namespace.
func TestTransparentRDNSThenLearned(t *testing.T) {
	dns := newPTRResponder(t, map[string]string{reverseName(netns.ServerAddr): "fra-17.servers.game.example."})
	apps := filepath.Join(t.TempDir(), "apps.toml")
	if err := os.WriteFile(apps, []byte(`[[rdns]]
name = "test-game-servers"
glob = "*.servers.game.example"
type = "shooter"
app = "test-game"
`), 0o600); err != nil {
		t.Fatal(err)
	}
	keys := fmt.Sprintf("apps_file = %q\nrdns = true\nrdns_server = %q\nrdns_timeout = \"500ms\"\n", apps, dns.addr())
	b := startTransparentBedKeys(t, netns.GameOptions{Uplinks: 2}, nil, true, keys, "")
	server := netip.AddrPortFrom(netns.ServerAddr, tpRDNSPort)
	const n, pps = 25, 5 // 200 ms gaps: longer than ad-hoc timing's 150 ms
	srv := newEchoServer(t, b.g.Server, tpRDNSPort, n)
	cl := newGameClient(t, b.g, server, n)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	done := make(chan struct{})
	go func() { cl.send(ctx, server, n, pps); close(done) }()
	waitFor(t, 4*time.Second, "the rDNS match", func() bool { return b.metric("router_transparent_rdns_matched_total") >= 1 })
	t.Logf("rDNS found the flow after %v (%d DNS queries)", time.Since(start).Round(time.Millisecond), dns.queries.Load())
	waitFor(t, 2*time.Second, "the destination rule", func() bool {
		rules, _ := b.g.Router.Command("ip", "rule", "show").CombinedOutput()
		return strings.Contains(string(rules), fmt.Sprintf("to %s iif lan0 ipproto udp dport %d lookup %d", netns.ServerAddr, tpRDNSPort, router.DefaultTable))
	})
	if got := b.metric("router_transparent_rdns_lookups_total"); got != 1 {
		t.Errorf("%v lookups, want 1 (the answer is cached)", got)
	}
	if got := b.metric("router_transparent_flows_proxied_total"); got != 0 {
		t.Errorf("%v flows proxied while the first was in flight, want 0", got)
	}
	<-done
	time.Sleep(300 * time.Millisecond)
	srcs := srv.sources()
	path := netns.LANAddr
	if b.natOn() {
		path = netns.UplinkAddr(0)
	}
	if len(srcs) != 1 || srcs[path] == 0 {
		t.Errorf("the in-flight flow changed path: server saw %v, want all from %v", srcs, path)
	}
	if up, _, _ := srv.got.snapshot(); up < n-1 {
		t.Errorf("in-flight flow: %d/%d arrived", up, n)
	}

	// The next session to the destination is proxied from its first packet.
	srv.conn.Close()
	srvB := newEchoServer(t, b.g.Server, tpRDNSPort, 50)
	cl2 := newGameClient(t, b.g, server, 50)
	cl2.send(ctx, server, 50, 50)
	time.Sleep(300 * time.Millisecond)
	src0, ok := srvB.sourceOf(0)
	if !ok {
		t.Fatal("the first packet of the second flow did not arrive")
	}
	if src0.Addr() != netns.ProxyAddr {
		t.Errorf("second flow's first packet came from %v, want the proxy %v", src0, netns.ProxyAddr)
	}
	s, ok := sessionTo(b.r, server)
	if !ok || s.Rule != "learned" {
		t.Errorf("second session %+v, want one with rule learned", s)
	}
	if got, _, _ := cl2.got.snapshot(); got < 45 {
		t.Errorf("second flow: %d/50 replies", got)
	}
}
