package simple

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/logging"
	"github.com/raicnet/raic/pkg/mono"
)

// BenchmarkFromSource is the up path of one datagram with its mapping in place:
// checks, table lookup, token bucket and the send syscall.
func BenchmarkFromSource(b *testing.B) {
	r := newBareRelay(b, testConfig(b, discard(b), "rate_pps = 1e12\nburst = 1000000000"))
	rt := r.routes[0]
	src := discard(b)
	dg := datagram(strings.Repeat("p", 100))
	r.fromSource(rt, dg, src, mono.Now())
	b.ReportAllocs()
	b.SetBytes(int64(len(dg)))
	for b.Loop() {
		r.fromSource(rt, dg, src, mono.Now())
	}
}

// BenchmarkFromUpstream is the down path of one datagram: check, send syscall,
// touch the mapping.
func BenchmarkFromUpstream(b *testing.B) {
	r := newBareRelay(b, testConfig(b, discard(b), ""))
	src := discard(b)
	dg := datagram(strings.Repeat("p", 100))
	r.fromSource(r.routes[0], dg, src, mono.Now())
	m, _ := r.mappings.Peek(mapKey{0, src})
	b.ReportAllocs()
	b.SetBytes(int64(len(dg)))
	for b.Loop() {
		m.fromUpstream(dg, mono.Now())
	}
}

// BenchmarkEcho measures relayed datagrams per second end to end on loopback:
// a client keeps a window of datagrams in flight to an echoing fake proxy,
// either directly or through the relay, so the two rows compare the relay with
// the direct path. One op is one round trip; pps counts datagrams in both directions.
func BenchmarkEcho(b *testing.B) {
	for _, via := range []string{"direct", "relay"} {
		b.Run(via, func(b *testing.B) {
			echo := startEcho(b)
			to := echo
			if via == "relay" {
				log, _ := logging.New(os.Stderr, "raic-simple", "error")
				r, err := New(testConfig(b, echo, "rate_pps = 1e12\nburst = 1000000000"), log)
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- r.Run(ctx) }()
				b.Cleanup(func() { cancel(); <-done })
				to = r.Addr(0)
			}
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			c.SetReadBuffer(1 << 20)
			dg := datagram(strings.Repeat("p", 100))
			buf := make([]byte, 2048)
			const window = 32
			var lost int
			b.ResetTimer()
			start := time.Now()
			inflight := 0
			for got := 0; got < b.N; {
				for inflight < window && got+inflight < b.N {
					if _, err := c.WriteToUDPAddrPort(dg, to); err != nil {
						b.Fatal(err)
					}
					inflight++
				}
				c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
					if errors.Is(err, os.ErrDeadlineExceeded) {
						lost += inflight // whatever is still out is lost
						inflight = 0
						continue
					}
					b.Fatal(err)
				}
				inflight--
				got++
			}
			el := time.Since(start)
			b.ReportMetric(2*float64(b.N)/el.Seconds(), "pps")
			b.ReportMetric(100*float64(lost)/float64(b.N+lost), "loss_%")
		})
	}
}

// startEcho runs a fake proxy that sends every datagram back where it came from.
func startEcho(b *testing.B) netip.AddrPort {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	c.SetReadBuffer(1 << 20)
	b.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}
