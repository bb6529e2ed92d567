package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/raic"
	"github.com/raicnet/raic/router"
)

// TestPeerRoutersVoIPCall: the VoIP call of TestPeerVoIPCall through the
// product, with RAIC-1 copies on every path (see peerRoutersVoIPCall).
func TestPeerRoutersVoIPCall(t *testing.T) { peerRoutersVoIPCall(t, "") }

// TestPeerRoutersVoIPCallCoded: the same call, the same losses and outages,
// with both routers sending RS 2+2 over their 2×2 paths: four half-size
// shards per packet, one per path, any two of which rebuild it. The call
// must fare as well as with copies, for about half the bytes on the wire.
func TestPeerRoutersVoIPCallCoded(t *testing.T) { peerRoutersVoIPCall(t, "rs:2+2") }

// schemeLine is the [[peer]] scheme key for scheme ("" leaves the default).
func schemeLine(scheme string) string {
	if scheme == "" {
		return ""
	}
	return fmt.Sprintf("scheme = %q\n", scheme)
}

// schemeShare is the part of the packets each of paths paths carries a
// datagram of: 1 for copies (each on every path), shards/paths for a coded
// scheme whose packets fit one fragment.
func schemeShare(t *testing.T, scheme string, paths int) float64 {
	t.Helper()
	if scheme == "" {
		return 1
	}
	p, err := raic.ParseParams(scheme)
	if err != nil {
		t.Fatal(err)
	}
	switch p.Scheme {
	case raic.SchemeCopy:
		return 1
	case raic.SchemeTime:
		return float64(1+p.Depth) / float64(paths)
	}
	return float64(p.K+p.M) / float64(paths)
}

// nsStatus reads a router's GET /status from inside host's namespace.
func nsStatus(t *testing.T, host *netns.Host, addr string) router.Status {
	t.Helper()
	body := nsGet(t, host, addr, "status")
	var st router.Status
	if _, js, ok := bytes.Cut(body, []byte("\r\n\r\n")); !ok || json.Unmarshal(js, &st) != nil {
		t.Fatalf("status at %s: not JSON:\n%s", addr, body)
	}
	return st
}

// peerWireCost reports what each router's data datagrams to the other
// weighed on the wire per payload byte, from /status, and the packets each
// rebuilt from shards; it checks the status names the scheme.
func peerWireCost(t *testing.T, rs [2]*peerRouterProcess, scheme string) string {
	t.Helper()
	var b strings.Builder
	for s, r := range rs {
		st := nsStatus(t, r.host, fmt.Sprintf("%s:%d", netns.PeerLANGateway(s), routerMetricsPort))
		if len(st.Peers) != 1 {
			t.Errorf("%s's status: %d peers, want 1", peerIDs[s], len(st.Peers))
			continue
		}
		ps := st.Peers[0]
		if want := "copies"; scheme == "" && ps.Scheme != want || scheme != "" && ps.Scheme == want {
			t.Errorf("%s's status names the scheme %q (configured %q)", peerIDs[s], ps.Scheme, scheme)
		}
		if ps.PayloadBytes == 0 {
			t.Errorf("%s's status counts no payload bytes: %+v", peerIDs[s], ps)
			continue
		}
		fmt.Fprintf(&b, "%c→%c wire cost (%s): %.2f bytes on the wire per payload byte (%d of %d), packets from %c rebuilt %d, lost %d\n",
			'A'+s, 'B'-s, ps.Scheme, float64(ps.WireBytes)/float64(ps.PayloadBytes), ps.WireBytes, ps.PayloadBytes,
			'B'-s, ps.Rebuilt, ps.Lost)
		// Copies over the 4 paths weigh 4 bytes per payload byte before
		// any header; a coded scheme must cost less than that, headers in.
		if cost := float64(ps.WireBytes) / float64(ps.PayloadBytes); scheme != "" && cost >= 4 {
			t.Errorf("%s's %s costs %.2f bytes on the wire per payload byte: not below copies' 4 payload bytes", peerIDs[s], ps.Scheme, cost)
		}
		if scheme != "" && ps.Rebuilt == 0 {
			t.Errorf("%s rebuilt no packet from shards: the coded scheme did not carry the outages", peerIDs[s])
		}
	}
	return b.String()
}
