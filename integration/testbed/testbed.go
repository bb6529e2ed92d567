// Package testbed runs game sessions through the standard namespace topology
// (integration/netns): directly over one uplink, as a game would without the
// suite, or through an in-process router and proxy with a chosen RAIC scheme.
// The demo command and the namespace tests share it, so what the tests assert
// is what the demo shows.
//
// Router, gamegen client and server run in-process: they open their sockets
// inside the right namespace (netns.Host.Do) and then serve from ordinary
// goroutines. The proxy runs as a child process in its namespace (see
// ProxyChild for why). Several sessions may run at once on one topology; each
// has its own game server and router (with its own uplink sockets) and its own
// session at the shared proxy, so they share only the emulated links and the
// proxy, as gamers share real ISPs and a studio's proxy.
package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/raicnet/raic/integration/gamegen"
	"github.com/raicnet/raic/integration/netns"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/router"
)

// key is the pre-shared key of the testbed's one client, "gamer". Runs are
// confined to the namespaces of one test, so a fixed key hides nothing.
var key = wire.Key{0x52, 0x41, 0x49, 0x43, 0x2d, 0x74, 0x62}

// Path is one way a game session reaches the server.
type Path struct {
	// Name labels the path in tables.
	Name string
	// Direct sends from a socket in the router namespace bound to the address
	// of uplink Uplinks[0]: the game over one ISP, without the suite.
	Direct bool
	// Uplinks lists, for the suite, the uplink under each router uplink socket.
	// An index may repeat: the proxy answers every source address a session
	// uses, so two sockets on one uplink carry two copies each way.
	Uplinks []int
	// Scheme is the router's RAIC scheme ("copy", "xor:2", "rs:2+2", "time:2").
	Scheme string
	// RouterExtra is more top-level router TOML (e.g. "delayed_copy = 0.5").
	RouterExtra string
	// Tap puts a recording relay at both ends, for loss inside time windows
	// (Result.LostIn). Meant for low rates: it adds a hop each way.
	Tap bool
}

// Traffic is the game traffic of one session.
type Traffic struct {
	Rate       float64       // client ticks per second
	Size       int           // client tick bytes
	ServerRate float64       // the server's own tick stream, per second
	ServerSize int           // server tick bytes
	Warmup     time.Duration // ticks neither side counts
	Duration   time.Duration // measured ticks
	Deadline   time.Duration // one-way delay above which a tick is late (default 50 ms)
	Echo       bool          // ask for echoes, for RTT
	// StartAt, a CLOCK_MONOTONIC instant, holds the client back until then, so
	// sessions started in parallel line up with scheduled link outages. Zero
	// starts at once.
	StartAt int64
}

// Result is what one session measured.
type Result struct {
	Path   Path
	Report *gamegen.Report
	// Start is when the client started (warm-up included), on CLOCK_MONOTONIC.
	Start int64
	// RouterMetrics is the router's metric snapshot at the end of the run
	// (nil on direct paths).
	RouterMetrics map[string]float64

	clientTap, serverTap *Tap
}

// LostIn counts, per direction, the measured ticks sent inside w and those of
// them lost. It needs Path.Tap.
func (r *Result) LostIn(w Window) (up, down WindowLoss, ok bool) {
	if r.clientTap == nil || r.serverTap == nil {
		return up, down, false
	}
	sentUp, arrivedDown := r.clientTap.snapshot()
	arrivedUp, sentDown := r.serverTap.snapshot()
	return lostIn(sentUp, arrivedUp, w), lostIn(sentDown, arrivedDown, w), true
}

// Logger logs to stderr at debug level when RAIC_TESTBED_LOG is set, and
// nowhere otherwise: router and proxy are chatty about sessions.
func Logger() *slog.Logger {
	if os.Getenv("RAIC_TESTBED_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// cleanup runs registered steps in reverse order.
type cleanup []func()

func (c *cleanup) add(f func()) { *c = append(*c, f) }
func (c cleanup) run() {
	for i := len(c) - 1; i >= 0; i-- {
		c[i]()
	}
}

// listen binds a UDP socket inside host's namespace.
func listen(h *netns.Host, addr netip.AddrPort) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := h.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		if err == nil {
			// Room for bursts: at 2,000 pps a scheduler hiccup of 100 ms
			// queues a few hundred ticks.
			c.SetReadBuffer(1 << 20)
			c.SetWriteBuffer(1 << 20)
		}
		return err
	})
	return c, err
}

var loopback = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 0)

// Bed is a game topology with the suite's proxy running in it.
type Bed struct {
	G *netns.Game

	mu    sync.Mutex
	proxy *proxyProcess
}

// New wraps g; the proxy starts with the first session that needs it. Close
// the Bed before g.
func New(g *netns.Game) *Bed { return &Bed{G: g} }

// Close ends the proxy.
func (b *Bed) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.proxy != nil {
		b.proxy.close()
		b.proxy = nil
	}
}

// Proxy starts the proxy once and returns its address. Every session of the
// Bed shares it, as the routers of many gamers share a studio's proxy; each
// has a session of its own there.
func (b *Bed) Proxy() (netip.AddrPort, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.proxy == nil {
		pp, err := startProxyProcess(b.G)
		if err != nil {
			return netip.AddrPort{}, err
		}
		b.proxy = pp
	}
	return b.proxy.addr, nil
}

// Run plays one game session over p and returns what it measured. It blocks
// for Warmup+Duration plus the report exchange; run several in goroutines to
// share a topology.
func (b *Bed) Run(ctx context.Context, p Path, tr Traffic) (*Result, error) {
	g := b.G
	if len(p.Uplinks) == 0 {
		return nil, errors.New("testbed: path without uplinks")
	}
	for _, u := range p.Uplinks {
		if u < 0 || u >= len(g.ISPs) {
			return nil, fmt.Errorf("testbed: path %s uses uplink %d of %d", p.Name, u, len(g.ISPs))
		}
	}
	var cl cleanup
	defer cl.run()
	ctx, cancel := context.WithCancel(ctx)
	cl.add(cancel)
	res := &Result{Path: p}

	// Game server, behind a tap when asked.
	srvListen := netip.AddrPortFrom(netns.ServerAddr, 0)
	if p.Tap {
		srvListen = loopback
	}
	var gs *gamegen.Server
	if err := g.Server.Do(func() error {
		var err error
		gs, err = gamegen.NewServer(gamegen.ServerConfig{Listen: srvListen, Rate: tr.ServerRate, Size: tr.ServerSize})
		return err
	}); err != nil {
		return nil, fmt.Errorf("game server: %w", err)
	}
	srvDone := make(chan struct{})
	go func() { gs.Serve(ctx); close(srvDone) }()
	cl.add(func() { cancel(); <-srvDone })
	target := gs.Addr()
	if p.Tap {
		down, err := listen(g.Server, netip.AddrPortFrom(netns.ServerAddr, 0))
		if err != nil {
			return nil, err
		}
		up, err := listen(g.Server, loopback)
		if err != nil {
			down.Close()
			return nil, err
		}
		res.serverTap = NewTap(down, up, target)
		cl.add(res.serverTap.Close)
		target = res.serverTap.Addr()
	}

	// The client side: where the game client lives and what it sends to.
	var clientHost *netns.Host
	var clientSrc netip.AddrPort // the game's own address towards its first hop
	var dest netip.AddrPort      // the first hop: the server, or the router's forward
	if p.Direct {
		clientHost = g.Router
		clientSrc = netip.AddrPortFrom(g.UplinkAddr(p.Uplinks[0]), 0)
		dest = target
	} else {
		prx, err := b.Proxy()
		if err != nil {
			return nil, err
		}
		fwd, rt, err := startRouter(ctx, g, &cl, p, tr, prx, target)
		if err != nil {
			return nil, err
		}
		defer func() { res.RouterMetrics = rt.Metrics().Snapshot() }()
		clientHost = g.LAN
		clientSrc = netip.AddrPortFrom(netns.LANAddr, 0)
		dest = fwd
	}
	var conn *net.UDPConn
	var err error
	if p.Tap {
		down, err := listen(clientHost, loopback)
		if err != nil {
			return nil, err
		}
		up, err := listen(clientHost, clientSrc)
		if err != nil {
			down.Close()
			return nil, err
		}
		res.clientTap = NewTap(down, up, dest)
		cl.add(res.clientTap.Close)
		dest = res.clientTap.Addr()
		conn, err = listen(clientHost, loopback)
		if err != nil {
			return nil, err
		}
	} else if conn, err = listen(clientHost, clientSrc); err != nil {
		return nil, err
	}
	defer conn.Close()

	if tr.StartAt != 0 {
		if wait := time.Duration(tr.StartAt - mono.Now()); wait > 0 {
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	res.Start = mono.Now()
	rep, err := gamegen.RunClientConn(ctx, conn, gamegen.ClientConfig{
		Server: dest, Rate: tr.Rate, Size: tr.Size, Duration: tr.Duration,
		Warmup: tr.Warmup, Deadline: tr.Deadline, Echo: tr.Echo,
	})
	res.Report = rep
	if err != nil {
		return res, err
	}
	return res, nil
}

// startRouter runs a router in the router namespace with one uplink socket per
// entry of p.Uplinks and one forward on the LAN side, and returns the forward's
// address.
func startRouter(ctx context.Context, g *netns.Game, cl *cleanup, p Path, tr Traffic, prx, server netip.AddrPort) (netip.AddrPort, *router.Router, error) {
	scheme := p.Scheme
	if scheme == "" {
		scheme = "copy"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "client_id = \"gamer\"\nkey = \"%s\"\nproxy = \"%s\"\nscheme = \"%s\"\n%s\n", key, prx, scheme, p.RouterExtra)
	// The expected rate seeds the packet-interval estimate (delayed copies,
	// RAICT) until the router has measured it.
	fmt.Fprintf(&b, "[[forward]]\nlisten = \"%s\"\nserver = \"%s\"\nexpected_pps = %g\n",
		netip.AddrPortFrom(netns.LANGateway, 0), server, tr.Rate)
	for i, u := range p.Uplinks {
		fmt.Fprintf(&b, "[[uplink]]\nname = \"isp%d-%d\"\nsource = \"%s\"\n", u, i, g.UplinkAddr(u))
	}
	cfg, err := router.ParseConfig("testbed-router.toml", b.String())
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	var r *router.Router
	if err := g.Router.Do(func() error {
		var err error
		r, err = router.New(cfg, Logger())
		return err
	}); err != nil {
		return netip.AddrPort{}, nil, fmt.Errorf("router: %w", err)
	}
	return r.ForwardAddr(0), r, serve(ctx, cl, r.Run)
}

// serve runs run(ctx) in a goroutine until the session's cleanup stops it.
func serve(ctx context.Context, cl *cleanup, run func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); run(ctx) }()
	cl.add(func() { cancel(); wg.Wait() })
	return nil
}

// UDPRcvbufErrors returns, per host of g, how many datagrams the kernel
// dropped because a UDP socket's receive buffer was full (RcvbufErrors in the
// namespace's /proc/net/snmp). Loss there is the testbed's own (a program
// that did not read fast enough, usually a busy machine), not the links'.
func UDPRcvbufErrors(g *netns.Game) map[string]uint64 {
	out := map[string]uint64{}
	hosts := map[string]*netns.Host{"lan": g.LAN, "router": g.Router, "proxy": g.Proxy, "server": g.Server}
	for name, h := range hosts {
		b, err := h.Command("cat", "/proc/net/snmp").Output()
		if err != nil {
			continue
		}
		var head []string
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || f[0] != "Udp:" {
				continue
			}
			if head == nil {
				head = f
				continue
			}
			for i := 1; i < len(f) && i < len(head); i++ {
				if head[i] == "RcvbufErrors" {
					var n uint64
					fmt.Sscan(f[i], &n)
					out[name] = n
				}
			}
			break
		}
	}
	return out
}
