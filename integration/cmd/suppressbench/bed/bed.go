// Package bed is the testbed of the suppression benchmark (command
// suppressbench) and of its short namespace test (integration/suppress_test.go):
// the standard game topology with one uplink, a bufferbloated bottleneck, bulk
// TCP in both directions and a 60 pps game session through router and proxy.
//
// The bottleneck is two tbf qdiscs on the router: 5 Mbit/s on its uplink's
// egress (uploads) and 20 Mbit/s on its LAN egress (downloads), each with a
// queue of about 250 ms, the deep buffer of a consumer line. suppress_egress
// runs on the same egresses ahead of the qdiscs, so bulk it holds back never
// reaches the queue the game's packets wait in. The internet host that sources
// and sinks the bulk transfers sits behind a link emulator that adds a
// configurable round-trip time (New's bulkRTT).
package bed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/raicnet/raic/integration/gamegen"
	"github.com/raicnet/raic/integration/linkem"
	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/integration/testbed"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/router"
)

// Link rates and queue depth of the bottleneck.
const (
	UpBitsPerSec   = 5_000_000
	DownBitsPerSec = 20_000_000
	QueueTime      = 250 * time.Millisecond
)

// Ports used in the testbed.
const (
	gamePort   = 9000
	uploadPort = 5001 // internet host sinks the uploads
	dlPort     = 5002 // LAN host sinks the downloads
)

// benchKey is the key of client "gamer" at the proxy that package testbed runs
// (its proxy child is configured there).
var benchKey = wire.Key{0x52, 0x41, 0x49, 0x43, 0x2d, 0x74, 0x62}

// Options configures one measurement.
type Options struct {
	// Suppress turns the router's suppression on.
	Suppress bool
	// Bulk runs saturating TCP in both directions; false measures the idle link.
	Bulk bool
	// ECN makes the bulk endpoints negotiate ECN.
	ECN bool
	// Flows is the number of TCP flows per direction (default 4).
	Flows int
	// Warmup lets TCP and the controller settle before measuring; Duration is
	// the measured time.
	Warmup, Duration time.Duration
	// GameRate and GameSize shape the game session (default 60 pps, 120 bytes).
	GameRate float64
	GameSize int
	// Log receives the router's log (level changes); nil discards it.
	Log *slog.Logger
	// SuppressTOML replaces the [suppress] tables written for Suppress.
	SuppressTOML string
}

// Result is one measurement.
type Result struct {
	Options
	RTT          gamegen.LatencyStats
	UpDelay      gamegen.LatencyStats // one-way, LAN host → game server (one clock: same host)
	EchoLost     int64
	GameSent     uint64
	UpBitsPerSec float64 // TCP goodput LAN → internet over the measured time
	DnBitsPerSec float64 // TCP goodput internet → LAN
	// UpLineUse and DnLineUse are the share of each line's rate that
	// crossed it (all traffic, headers included): how full suppression
	// keeps the line, as opposed to what the applications got.
	UpLineUse, DnLineUse float64
	Metrics              map[string]float64
}

// Bed is the built topology.
type Bed struct {
	G      *netns.Game
	server *gamegen.Server
	tb     *testbed.Bed
	proxy  netip.AddrPort
	cancel context.CancelFunc
	wg     sync.WaitGroup

	upSink, dnSink atomic.Uint64 // bytes received by the TCP sinks
	lns            []net.Listener
	mu             sync.Mutex
	conns          []net.Conn // accepted by the sinks, closed by Close
}

// DefaultBulkRTT is the round-trip time between the LAN host and the internet
// host that sources and sinks the bulk transfers: a server a few hundred
// kilometres away. The game's proxy stays next to the ISP.
const DefaultBulkRTT = 20 * time.Millisecond

// New builds the topology, the bottleneck, the proxy, the game server and the
// TCP sinks. bulkRTT is added to the internet host's round trip by a link
// emulator (half each way); 0 leaves it directly on the core, a fraction of a
// millisecond from the LAN host.
func New(bulkRTT time.Duration) (*Bed, error) {
	o := netns.GameOptions{Uplinks: 1}
	if bulkRTT > 0 {
		oneWay := linkem.Duration(bulkRTT / 2)
		o.InternetLink = &netns.LinkPair{Up: linkem.Config{Delay: oneWay}, Down: linkem.Config{Delay: oneWay}}
	}
	g, err := netns.NewGame(o)
	if err != nil {
		return nil, err
	}
	b := &Bed{G: g}
	if err := b.setup(); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// Defaults of the benchmark's [suppress.levels]: Shape caps all traffic at the
// configured line rate, which the testbed knows exactly, with a 2 ms bucket,
// and lets ECN-capable bulk run up a deficit of 1 ms (at least one packet)
// marked CE before it is dropped.
const (
	DefaultShapeShare  = 1.0
	DefaultBurstTime   = 2 * time.Millisecond
	DefaultDeficitTime = 1 * time.Millisecond
	DefaultECN         = true
)

// Levels are the [suppress.levels] settings a run varies.
type Levels struct {
	ShapeShare         float64
	BurstTime, Deficit time.Duration
	ECN                bool
}

// DefaultLevels are the benchmark's defaults.
var DefaultLevels = Levels{DefaultShapeShare, DefaultBurstTime, DefaultDeficitTime, DefaultECN}

// SuppressTOML is the [suppress] configuration of the benchmark's router;
// detection keeps its defaults.
func SuppressTOML(l Levels) string {
	return fmt.Sprintf(`
[suppress]
enabled = true
lan_device = "lan0"
[[suppress.uplink]]
name = "isp0"
device = "up0"
up_bps = %d
down_bps = %d
[suppress.levels]
shape_share = %g
burst_time = "%v"
ecn_deficit_time = "%v"
ecn = %v
`, UpBitsPerSec, DownBitsPerSec, l.ShapeShare, l.BurstTime, l.Deficit, l.ECN)
}

func (b *Bed) setup() error {
	g := b.G
	// Senders hand the stack 64 KB segments that veth passes on whole, so
	// the router would see GSO packets far larger than the line's frames;
	// one segment per skb is what a router behind real NICs sees.
	for _, h := range []*netns.Host{g.LAN, g.Internet} {
		if err := h.IP("link", "set", "dev", "eth0", "gso_max_size", "1500"); err != nil {
			return fmt.Errorf("gso off: %w", err)
		}
	}
	tbf := func(dev string, rate int) error {
		limit := rate / 8 * int(QueueTime/time.Millisecond) / 1000
		out, err := g.Router.Command("tc", "qdisc", "replace", "dev", dev, "root", "tbf",
			"rate", fmt.Sprintf("%dkbit", rate/1000), "burst", "4000", "limit", fmt.Sprint(limit)).CombinedOutput()
		if err != nil {
			return fmt.Errorf("tbf on %s: %v: %s", dev, err, out)
		}
		return nil
	}
	if err := tbf("up0", UpBitsPerSec); err != nil {
		return err
	}
	if err := tbf("lan0", DownBitsPerSec); err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	// The proxy runs as a child process in its namespace (testbed.ProxyChild
	// explains why); programs using this package call testbed.ProxyChild first.
	b.tb = testbed.New(g)
	var err error
	if b.proxy, err = b.tb.Proxy(); err != nil {
		return err
	}
	// Game server: echoes the client's ticks, so the client measures RTT and
	// the router sees a 60 pps stream each way.
	if err := g.Server.Do(func() error {
		b.server, err = gamegen.NewServer(gamegen.ServerConfig{Listen: netip.AddrPortFrom(netns.ServerAddr, gamePort), Echo: true})
		return err
	}); err != nil {
		return err
	}
	b.wg.Add(1)
	go func() { defer b.wg.Done(); b.server.Serve(ctx) }()
	// TCP sinks.
	for _, s := range []struct {
		h     *netns.Host
		addr  netip.Addr
		port  int
		count *atomic.Uint64
	}{{g.Internet, netns.InternetAddr, uploadPort, &b.upSink}, {g.LAN, netns.LANAddr, dlPort, &b.dnSink}} {
		var ln net.Listener
		if err := s.h.Do(func() (err error) {
			ln, err = net.Listen("tcp4", netip.AddrPortFrom(s.addr, uint16(s.port)).String())
			return err
		}); err != nil {
			return err
		}
		b.lns = append(b.lns, ln)
		count := s.count
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				b.mu.Lock()
				b.conns = append(b.conns, c)
				b.mu.Unlock()
				b.wg.Add(1)
				go func() {
					defer b.wg.Done()
					defer c.Close()
					buf := make([]byte, 64<<10)
					for {
						n, err := c.Read(buf)
						count.Add(uint64(n))
						if err != nil {
							return
						}
					}
				}()
			}
		}()
	}
	return nil
}

// Close tears everything down.
func (b *Bed) Close() {
	if b.cancel != nil {
		b.cancel()
	}
	for _, ln := range b.lns {
		ln.Close()
	}
	// A sink whose sender's FIN was lost would wait for it forever.
	b.mu.Lock()
	for _, c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	if b.tb != nil {
		b.tb.Close()
	}
	b.G.Close()
	b.wg.Wait()
}

// routerTOML is the router's configuration: explicit mode, one uplink bound to
// up0, one forward on the LAN address for the game server.
func (b *Bed) routerTOML(o Options) string {
	s := fmt.Sprintf(`
client_id = "gamer"
key = "%s"
proxy = "%s"
[[uplink]]
name = "isp0"
device = "up0"
source = "%s"
[[forward]]
listen = "%s"
server = "%s"
`, benchKey, b.proxy, netns.UplinkAddr(0),
		netip.AddrPortFrom(netns.LANGateway, gamePort), netip.AddrPortFrom(netns.ServerAddr, gamePort))
	if o.Suppress {
		if o.SuppressTOML != "" {
			s += o.SuppressTOML
		} else {
			s += SuppressTOML(DefaultLevels)
		}
	}
	return s
}

// Run measures one configuration: it starts a router, the game session and,
// with Bulk, the TCP flows; after Warmup it measures for Duration.
func (b *Bed) Run(ctx context.Context, o Options) (*Result, error) {
	if o.Flows == 0 {
		o.Flows = 4
	}
	if o.GameRate == 0 {
		o.GameRate = 60
	}
	if o.GameSize == 0 {
		o.GameSize = 120
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	g := b.G
	// With ECN the bulk endpoints ask for it (as current Linux, macOS and iOS
	// hosts can) and suppression marks CE where it would drop; without, they
	// only accept it (the Linux default), so nothing negotiates it.
	ecn := "2"
	if o.ECN {
		ecn = "1"
	}
	for _, h := range []*netns.Host{g.LAN, g.Internet} {
		if err := h.Sysctl("net.ipv4.tcp_ecn", ecn); err != nil {
			return nil, fmt.Errorf("tcp_ecn: %w", err)
		}
	}
	cfg, err := router.ParseConfig("router.toml", b.routerTOML(o))
	if err != nil {
		return nil, err
	}
	var r *router.Router
	if err := g.Router.Do(func() (err error) {
		r, err = router.New(cfg, log)
		return err
	}); err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	rctx, rcancel := context.WithCancel(ctx)
	rdone := make(chan struct{})
	go func() { r.Run(rctx); close(rdone) }()
	defer func() { rcancel(); <-rdone }()

	// The game starts first, as a match would, so the router sees LC traffic
	// before the bulk transfer fills the queues.
	var gc *net.UDPConn
	if err := g.LAN.Do(func() (err error) {
		gc, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netns.LANAddr, 0)))
		return err
	}); err != nil {
		return nil, err
	}
	defer gc.Close()
	type gameOut struct {
		rep *gamegen.Report
		err error
	}
	gameDone := make(chan gameOut, 1)
	lead := time.Second
	go func() {
		rep, err := gamegen.RunClientConn(ctx, gc, gamegen.ClientConfig{
			Server:   netip.AddrPortFrom(netns.LANGateway, gamePort),
			Rate:     o.GameRate,
			Size:     o.GameSize,
			Echo:     true,
			Warmup:   o.Warmup + lead,
			Duration: o.Duration,
			Deadline: time.Second,
			Drain:    500 * time.Millisecond,
		})
		gameDone <- gameOut{rep, err}
	}()

	bctx, bcancel := context.WithCancel(ctx)
	var bwg sync.WaitGroup
	defer func() { bcancel(); bwg.Wait() }()
	select {
	case <-time.After(lead):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if o.Bulk {
		for i := 0; i < o.Flows; i++ {
			for _, s := range []struct {
				h  *netns.Host
				to netip.AddrPort
			}{{g.LAN, netip.AddrPortFrom(netns.InternetAddr, uploadPort)}, {g.Internet, netip.AddrPortFrom(netns.LANAddr, dlPort)}} {
				if err := Saturate(bctx, s.h, s.to, &bwg); err != nil {
					return nil, err
				}
			}
		}
	}
	select {
	case <-time.After(o.Warmup):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	lineUp0, lineDn0 := b.lineBytes()
	up0, dn0, t0 := b.upSink.Load(), b.dnSink.Load(), time.Now()
	select {
	case <-time.After(o.Duration):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	up1, dn1, el := b.upSink.Load(), b.dnSink.Load(), time.Since(t0).Seconds()
	lineUp1, lineDn1 := b.lineBytes()
	metrics := r.Metrics().Snapshot()
	bcancel()
	out := <-gameDone
	if out.err != nil && !errors.Is(out.err, gamegen.ErrNoServerReport) {
		return nil, fmt.Errorf("game client: %w", out.err)
	}
	res := &Result{
		Options:      o,
		RTT:          out.rep.RTT,
		UpDelay:      out.rep.Up.Latency,
		EchoLost:     out.rep.EchoLost,
		GameSent:     out.rep.Up.Sent,
		UpBitsPerSec: float64(up1-up0) * 8 / el,
		DnBitsPerSec: float64(dn1-dn0) * 8 / el,
		UpLineUse:    float64(lineUp1-lineUp0) * 8 / el / UpBitsPerSec,
		DnLineUse:    float64(lineDn1-lineDn0) * 8 / el / DownBitsPerSec,
		Metrics:      metrics,
	}
	return res, nil
}

// lineBytes reads the bytes sent through the bottleneck devices so far: the
// router's uplink (uploads) and LAN device (downloads). Errors read as 0 and
// show up as an implausible line use.
func (b *Bed) lineBytes() (up, down uint64) {
	b.G.Router.Do(func() error {
		for _, d := range []struct {
			name string
			v    *uint64
		}{{"up0", &up}, {"lan0", &down}} {
			if l, err := netlink.LinkByName(d.name); err == nil && l.Attrs().Statistics != nil {
				*d.v = l.Attrs().Statistics.TxBytes
			}
		}
		return nil
	})
	return up, down
}

// Saturate opens a TCP connection from host h to to and writes to it as fast
// as it will take until ctx ends; wg counts the writer until it has stopped.
func Saturate(ctx context.Context, h *netns.Host, to netip.AddrPort, wg *sync.WaitGroup) error {
	var c net.Conn
	if err := h.Do(func() (err error) {
		c, err = net.DialTimeout("tcp4", to.String(), 5*time.Second)
		return err
	}); err != nil {
		return fmt.Errorf("bulk flow to %v: %w", to, err)
	}
	// Closing must discard what is still queued: a closed socket would
	// otherwise go on sending its buffer into the next measurement.
	c.(*net.TCPConn).SetLinger(0)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer c.Close()
		go func() { <-ctx.Done(); c.Close() }()
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	return nil
}
