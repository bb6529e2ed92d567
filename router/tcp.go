package router

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/raicnet/raic/detect"
	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/tcpmux"
	"github.com/raicnet/raic/pkg/tcpsplit"
	"github.com/raicnet/raic/pkg/uplink"
	"github.com/raicnet/raic/pkg/wire"
)

// TCPConfig is the [tcp] section: the aggregated connection to the proxy's
// tcp_listen, TCP flows carried over it as split connections, and the UDP
// fallback.
type TCPConfig struct {
	// Proxy is the proxy's tcp_listen address (QUIC on UDP and TLS on TCP,
	// the same port; 443 passes most firewalls).
	Proxy string `toml:"proxy"`
	// Fallback carries the game sessions' datagrams over TLS on TCP while no
	// uplink reaches the first proxy over UDP, and moves them back when one
	// does.
	Fallback bool `toml:"fallback"`
	// Forwards are local TCP ports, one per service (explicit mode, no root).
	Forwards []TCPForwardConfig `toml:"forward"`
	// Split terminates chosen TCP connections from the LAN (the router as the
	// LAN's gateway; needs root and nft).
	Split TCPSplitConfig `toml:"split"`
}

// TCPSplitConfig is [tcp.split]: which TCP connections from the LAN the router
// terminates and carries through the proxy.
type TCPSplitConfig struct {
	// LAN is the interface the LAN's traffic comes in on.
	LAN string `toml:"lan"`
	// Ports are the TCP destination ports to split, and Apps names entries of
	// the shipped app table (detect/apps.toml) whose TCP server ports are
	// split too; To, if set, limits the split to these destination prefixes
	// (the proxy's allowlist decides in the end: a refused flow is closed).
	Ports []int    `toml:"ports"`
	Apps  []string `toml:"apps"`
	To    []string `toml:"to"`
	// ListenPort is the local port redirected connections land on.
	ListenPort int  `toml:"listen_port"`
	Compress   bool `toml:"compress"`
	Duplicate  bool `toml:"duplicate"`

	to    []netip.Prefix
	ports []string // nft port set members: "N" or "LO-HI"
}

// DefaultSplitPort is where redirected connections land unless listen_port says.
const DefaultSplitPort = 7411

// splitTable is the router's nft table for the split.
const splitTable = "raic_tcpsplit"

func (sp *TCPSplitConfig) enabled() bool {
	return sp.LAN != "" || len(sp.Ports) > 0 || len(sp.Apps) > 0
}

func (sp *TCPSplitConfig) check(meta *config.Meta) error {
	if !sp.enabled() {
		return nil
	}
	if sp.LAN == "" {
		return meta.Errorf("tcp.split.lan", "name the LAN interface")
	}
	if len(sp.Ports) == 0 && len(sp.Apps) == 0 {
		return meta.Errorf("tcp.split.ports", "list the TCP ports (or apps) to split")
	}
	sp.ports = nil
	for _, p := range sp.Ports {
		if p < 1 || p > 65535 {
			return meta.Errorf("tcp.split.ports", "port %d out of range", p)
		}
		sp.ports = append(sp.ports, strconv.Itoa(p))
	}
	if len(sp.Apps) > 0 {
		table, err := detect.ShippedConfig()
		if err != nil {
			return meta.Errorf("tcp.split.apps", "the shipped app table: %v", err)
		}
		for _, name := range sp.Apps {
			i := slices.IndexFunc(table.Apps, func(a detect.App) bool { return a.Name == name })
			if i < 0 {
				return meta.Errorf("tcp.split.apps", "no app %q in the app table", name)
			}
			if a := table.Apps[i]; a.Proto != "tcp" && a.Proto != "both" {
				return meta.Errorf("tcp.split.apps", "app %q uses no TCP (proto %q)", name, a.Proto)
			}
			sp.ports = append(sp.ports, table.Apps[i].ServerPorts...)
		}
	}
	for _, s := range sp.To {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil || !a.Is4() {
				return meta.Errorf("tcp.split.to", "not an IPv4 prefix or address: %q", s)
			}
			p = netip.PrefixFrom(a, 32)
		}
		if !p.Addr().Is4() {
			return meta.Errorf("tcp.split.to", "only IPv4 is split: %q", s)
		}
		sp.to = append(sp.to, p.Masked())
	}
	if sp.ListenPort == 0 {
		sp.ListenPort = DefaultSplitPort
	}
	if sp.ListenPort < 1 || sp.ListenPort > 65535 {
		return meta.Errorf("tcp.split.listen_port", "out of range")
	}
	return nil
}

// TCPForwardConfig is one [[tcp.forward]]: clients connect to Listen as if it
// were Server.
type TCPForwardConfig struct {
	Listen string `toml:"listen"`
	Server string `toml:"server"`
	// Compress runs zstd on both directions (chunks that do not shrink go raw).
	Compress bool `toml:"compress"`
	// Duplicate sends the flow on every uplink's connection at once, so a loss
	// on one uplink does not stall it (for games that use TCP).
	Duplicate bool `toml:"duplicate"`
}

func (t *TCPConfig) enabled() bool { return t.Proxy != "" }

func (t *TCPConfig) check(meta *config.Meta) error {
	if t.Proxy == "" {
		switch {
		case len(t.Forwards) > 0:
			return meta.Errorf("tcp.forward", "needs tcp.proxy (the proxy's tcp_listen)")
		case t.Fallback:
			return meta.Errorf("tcp.fallback", "needs tcp.proxy (the proxy's tcp_listen)")
		case t.Split.enabled():
			return meta.Errorf("tcp.split", "needs tcp.proxy (the proxy's tcp_listen)")
		}
		return nil
	}
	if _, err := netip.ParseAddrPort(t.Proxy); err != nil {
		return meta.Errorf("tcp.proxy", "not an address:port: %v", err)
	}
	if err := t.Split.check(meta); err != nil {
		return err
	}
	for i, f := range t.Forwards {
		key := func(k string) string { return fmt.Sprintf("tcp.forward.%d.%s", i, k) }
		if _, err := netip.ParseAddrPort(f.Listen); err != nil {
			return meta.Errorf(key("listen"), "not an address:port: %v", err)
		}
		if _, err := netip.ParseAddrPort(f.Server); err != nil {
			return meta.Errorf(key("server"), "not an address:port: %v", err)
		}
	}
	return nil
}

// tcpSide is [tcp] at run time.
type tcpSide struct {
	r     *Router
	proxy netip.AddrPort
	key   wire.Key
	muxes []*uplinkMux
	lns   []net.Listener
	stats *tcpsplit.Stats

	splitLn   net.Listener // [tcp.split]'s, nil without
	closeOnce sync.Once

	// The fallback.
	active    atomic.Bool
	fc        atomic.Pointer[tcpmux.FrameConn]
	activeG   *metrics.Gauge
	switches  *metrics.Counter
	carried   *metrics.Counter
	fcConnect *metrics.Counter
}

// uplinkMux keeps one QUIC connection to the proxy open over one uplink.
type uplinkMux struct {
	u    UplinkConfig
	idx  int
	conn atomic.Pointer[tcpmux.Conn]
	up   *metrics.Gauge
}

// newTCP sets [tcp] up; nil when it is off. Listeners open here, so a port in
// use is an error at start.
func (r *Router) newTCP() (*tcpSide, error) {
	c := &r.cfg.TCP
	if !c.enabled() {
		return nil, nil
	}
	t := &tcpSide{r: r, proxy: netip.MustParseAddrPort(c.Proxy), key: r.key,
		stats:     tcpsplit.NewStats(r.reg, "raic_router_tcp"),
		activeG:   r.reg.Gauge("raic_router_udp_fallback_active", "1 while game sessions go over TLS/TCP because no uplink reaches the proxy over UDP"),
		switches:  r.reg.Counter("raic_router_udp_fallback_switches_total", "moves between UDP and the TLS/TCP fallback"),
		carried:   r.reg.Counter("raic_router_udp_fallback_datagrams_total", "datagrams sent over the TLS/TCP fallback"),
		fcConnect: r.reg.Counter("raic_router_udp_fallback_connects_total", "TLS/TCP fallback connections made"),
	}
	for i, u := range r.cfg.Uplinks {
		t.muxes = append(t.muxes, &uplinkMux{u: u, idx: i,
			up: r.reg.Gauge(fmt.Sprintf("raic_router_tcp_conn_up{uplink=%q}", u.Name), "1 while the aggregated connection over this uplink is open")})
	}
	for _, f := range c.Forwards {
		ln, err := net.Listen("tcp", f.Listen)
		if err != nil {
			for _, l := range t.lns {
				l.Close()
			}
			return nil, fmt.Errorf("tcp forward %s: %w", f.Listen, err)
		}
		t.lns = append(t.lns, ln)
	}
	return t, nil
}

// startTCP runs [tcp] until ctx ends.
func (r *Router) startTCP(ctx context.Context) error {
	t, err := r.newTCP()
	if t == nil || err != nil {
		return err
	}
	r.tcp = t
	// The redirect goes in before the connections open, so that once the
	// router reports a connection up, chosen flows are split.
	if err := t.startSplit(); err != nil {
		r.closeTCP()
		return err
	}
	for _, m := range t.muxes {
		go t.keepConn(ctx, m)
	}
	for i, ln := range t.lns {
		f := r.cfg.TCP.Forwards[i]
		rule := tcpsplit.Rule{Compress: f.Compress, Duplicate: f.Duplicate}
		server := netip.MustParseAddrPort(f.Server)
		r.log.Info("tcp forwarding", "listen", ln.Addr().String(), "server", f.Server, "compress", f.Compress, "duplicate", f.Duplicate)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go tcpsplit.Carry(c, server, rule, t, t.stats, r.log)
			}
		}()
	}
	if r.cfg.TCP.Fallback {
		go t.watchUDP(ctx)
	}
	return nil
}

// startSplit redirects the chosen LAN connections to a local listener and
// carries each to its original destination.
func (t *tcpSide) startSplit() error {
	sp := &t.r.cfg.TCP.Split
	if !sp.enabled() {
		return nil
	}
	ln, err := net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", sp.ListenPort))
	if err != nil {
		return fmt.Errorf("tcp split listener: %w", err)
	}
	if err := tcpsplit.InstallRedirect(splitTable, sp.LAN, sp.ports, sp.to, uint16(sp.ListenPort)); err != nil {
		ln.Close()
		return err
	}
	t.r.log.Info("tcp split", "lan", sp.LAN, "ports", sp.ports, "to", sp.To, "compress", sp.Compress, "duplicate", sp.Duplicate)
	rule := tcpsplit.Rule{Compress: sp.Compress, Duplicate: sp.Duplicate}
	t.splitLn = ln
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			dst, err := tcpsplit.OriginalDst(c)
			if err != nil || dst.Port() == uint16(sp.ListenPort) {
				c.Close() // not redirected: someone connected to the port itself
				continue
			}
			go tcpsplit.Carry(c, dst, rule, t, t.stats, t.r.log)
		}
	}()
	return nil
}

// closeTCP stops [tcp] (from Router.Close): listeners, connections, and the
// split's redirect, removed before the router exits so the LAN's connections
// are routed again.
func (r *Router) closeTCP() {
	t := r.tcp
	if t == nil {
		return
	}
	t.closeOnce.Do(func() {
		for _, ln := range t.lns {
			ln.Close()
		}
		if t.splitLn != nil {
			t.splitLn.Close()
			if err := tcpsplit.RemoveRedirect(splitTable); err != nil {
				r.log.Warn("tcp split: removing the redirect", "err", err)
			}
		}
		for _, m := range t.muxes {
			if c := m.conn.Load(); c != nil {
				c.Close()
			}
		}
		if fc := t.fc.Load(); fc != nil {
			fc.Close()
		}
	})
}

// Live returns the open aggregated connections, by uplink order.
func (t *tcpSide) Live() []*tcpmux.Conn {
	var out []*tcpmux.Conn
	for _, m := range t.muxes {
		if c := m.conn.Load(); c != nil && c.Context().Err() == nil {
			out = append(out, c)
		}
	}
	return out
}

// bindControl binds a socket to an uplink's device, if it names one.
func bindControl(dev string) func(network, address string, c syscall.RawConn) error {
	if dev == "" {
		return nil
	}
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptString(int(fd), syscall.SOL_SOCKET, syscall.SO_BINDTODEVICE, dev)
		})
		if err != nil {
			return err
		}
		return serr
	}
}

func uplinkSource(u UplinkConfig) string {
	if u.Source == "" {
		return ":0"
	}
	ap, err := uplink.ParseSource(u.Source)
	if err != nil {
		return ":0"
	}
	return netip.AddrPortFrom(ap.Addr(), 0).String()
}

// keepConn dials the proxy over one uplink and redials whenever the
// connection ends, so a flow always finds one open.
func (t *tcpSide) keepConn(ctx context.Context, m *uplinkMux) {
	for ctx.Err() == nil {
		lc := net.ListenConfig{Control: bindControl(m.u.Device)}
		pc, err := lc.ListenPacket(ctx, "udp", uplinkSource(m.u))
		if err == nil {
			dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			var c *tcpmux.Conn
			if tok := t.r.cfg.token; tok != nil {
				// Admitted by the connect token, as the hellos are: the
				// proxy allows the flows the token's servers allow.
				c, err = tcpmux.DialToken(dctx, pc, net.UDPAddrFromAddrPort(t.proxy), tok, t.key)
			} else {
				c, err = tcpmux.Dial(dctx, pc, net.UDPAddrFromAddrPort(t.proxy), t.r.cfg.ClientID, t.key)
			}
			cancel()
			if err == nil {
				t.r.log.Info("tcp connection open", "uplink", m.u.Name, "proxy", t.proxy.String())
				m.conn.Store(c)
				m.up.Set(1)
				select {
				case <-c.Context().Done():
				case <-ctx.Done():
				}
				m.up.Set(0)
				m.conn.Store(nil)
				c.Close()
				if ctx.Err() != nil {
					return
				}
				t.r.log.Info("tcp connection lost", "uplink", m.u.Name)
				continue
			}
			pc.Close()
		}
		t.r.log.Debug("tcp connection failed", "uplink", m.u.Name, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// watchUDP moves the game sessions to the TLS/TCP fallback while no path to
// the first proxy answers keepalives, and back when one does. Keepalives keep
// going over UDP meanwhile: they are how the router sees UDP work again.
func (t *tcpSide) watchUDP(ctx context.Context) {
	start := mono.Now()
	grace := int64(3 * t.r.cfg.DownAfter.Duration)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var mu sync.Mutex // serialises dialling
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := mono.Now()
		down := now-start > grace && !t.r.proxies[0].AnyUp(now)
		switch {
		case down && !t.active.Load():
			t.active.Store(true)
			t.activeG.Set(1)
			t.switches.Inc()
			t.r.log.Warn("udp fallback: no uplink reaches the proxy over UDP; game sessions go over TLS/TCP", "proxy", t.proxy.String())
		case !down && t.active.Load():
			t.active.Store(false)
			t.activeG.Set(0)
			t.switches.Inc()
			t.r.log.Info("udp fallback over: UDP reaches the proxy again; game sessions back on UDP")
		}
		// The fallback connection is kept open (warm) all along, so moving
		// to it costs only the time to notice that UDP is gone.
		if t.fc.Load() == nil && mu.TryLock() {
			go func() {
				defer mu.Unlock()
				t.dialFrames(ctx)
			}()
		}
	}
}

// dialFrames opens the fallback connection, trying each uplink in turn;
// after a failure on every one it waits a second.
func (t *tcpSide) dialFrames(ctx context.Context) {
	for _, m := range t.muxes {
		var d net.Dialer
		d.Control = bindControl(m.u.Device)
		if src := uplinkSource(m.u); src != ":0" {
			a := netip.MustParseAddrPort(src)
			d.LocalAddr = net.TCPAddrFromAddrPort(a)
		}
		dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		var fc *tcpmux.FrameConn
		var err error
		if tok := t.r.cfg.token; tok != nil {
			// Admitted by the connect token, as the hellos are.
			fc, err = tcpmux.DialFramesToken(dctx, &d, t.proxy.String(), tok, t.key)
		} else {
			fc, err = tcpmux.DialFrames(dctx, &d, t.proxy.String(), t.r.cfg.ClientID, t.key)
		}
		cancel()
		if err != nil {
			t.r.log.Debug("udp fallback: connection failed", "uplink", m.u.Name, "err", err)
			continue
		}
		t.fcConnect.Inc()
		t.r.log.Info("udp fallback: TLS/TCP connection open", "uplink", m.u.Name, "proxy", t.proxy.String())
		t.fc.Store(fc)
		go t.readFrames(fc)
		return
	}
	select {
	case <-ctx.Done():
	case <-time.After(time.Second):
	}
}

// readFrames feeds the proxy's datagrams from the fallback into the router's
// receive path, as if they had come over the first uplink.
func (t *tcpSide) readFrames(fc *tcpmux.FrameConn) {
	var h wire.Header
	for {
		dg, err := fc.Receive()
		if err != nil {
			t.fc.CompareAndSwap(fc, nil)
			fc.Close()
			return
		}
		t.r.fromProxy(t.r.uplinks[0], dg, &h, mono.Now())
	}
}

// carry sends a session's datagrams over the fallback while it is active; it
// reports false (send over UDP) otherwise.
func (t *tcpSide) carry(px *proxyConn, dgs [][]byte) bool {
	if t == nil || !t.active.Load() || px != t.r.proxies[0] {
		return false
	}
	fc := t.fc.Load()
	if fc == nil {
		return false
	}
	for _, dg := range dgs {
		if fc.Send(dg) != nil {
			return false
		}
	}
	t.carried.Add(uint64(len(dgs)))
	return true
}
