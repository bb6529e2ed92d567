package testkit

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// The echo server answers with the same bytes and counts; Run's stop cancels
// the func and waits for it, and may be called twice.
func TestEchoServerAndRun(t *testing.T) {
	addr, n := EchoServer(t)
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("ping"))
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	b := make([]byte, 16)
	if k, err := c.Read(b); err != nil || string(b[:k]) != "ping" {
		t.Fatalf("echo: %q, %v", b[:k], err)
	}
	WaitFor(t, time.Second, "the count", func() bool { return n.Load() == 1 })

	ended := make(chan struct{})
	stop := Run(t, func(ctx context.Context) error { <-ctx.Done(); close(ended); return nil })
	stop()
	select {
	case <-ended:
	default:
		t.Fatal("stop returned before the func ended")
	}
	stop()
}

// SealedAsProxy's datagrams open on the router's side of the session.
func TestSealedAsProxyOpensAtTheRouter(t *testing.T) {
	key := wire.Key{9}
	salt := [16]byte{1, 2, 3}
	const sid = 77
	dgs := SealedAsProxy(t, key, salt, sid, []byte("hello game"), 3)
	_, recv, err := wire.DeriveKeys(&key, &salt, sid, wire.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	r := tunnel.NewReceiver(recv, raic.DecoderConfig{})
	var got collect
	var h wire.Header
	for _, dg := range dgs {
		off, err := wire.Parse(dg, &h, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Receive(dg, &h, off, 0, &got); err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != 3 || got[0] != "hello game" {
		t.Fatalf("delivered %q, want the packet three times", got)
	}
}

type collect []string

func (c *collect) Deliver(_ uint64, pkt []byte, _ int64) { *c = append(*c, string(pkt)) }
