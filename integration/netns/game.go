package netns

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/raicnet/raic/integration/linkem"
)

// The standard game topology (NewGame) and its address plan. Every link is its
// own /24 in 198.18.0.0/15; the lower-numbered side (.1) is the one nearer the
// core or the gateway, except that the router is .1 towards the LAN.
//
//	LAN host  eth0 198.18.1.2/24  ── router lan0 198.18.1.1/24
//	router    up<i> 198.18.(10+i).2/24 ── ISP i  rtr 198.18.(10+i).1/24
//	ISP i     wan 198.18.(20+i).2/24 ── core isp<i> 198.18.(20+i).1/24
//	  with relays:
//	ISP i     wan 198.18.(20+i).2/24 ── relay i isp 198.18.(20+i).1/24
//	relay i   core 198.18.(30+i).2/24 ── core isp<i> 198.18.(30+i).1/24
//	core      proxy 198.18.40.1/24 ── proxy host eth0 198.18.40.2/24
//	core      srv   198.18.41.1/24 ── game server eth0 198.18.41.2/24
//	core      inet  198.18.42.1/24 ── internet host eth0 198.18.42.2/24
//	  with an internet link (GameOptions.InternetLink):
//	core      inet  198.18.43.1/24 ── far core 198.18.43.2/24
//	far       inet  198.18.42.1/24 ── internet host eth0 198.18.42.2/24
//
// Routing. The router's main table has a default route via uplink 0; for each
// uplink i, table 100+i holds a default route via ISP i, selected by the rules
// "from 198.18.(10+i).2" and "oif up<i>", so a socket bound to an uplink's address
// (or to its device) leaves through that uplink. The core reaches each router
// uplink network through its ISP (and relay), and the LAN network through ISP 0:
// there is no NAT (the kernel here has no iptables or nftables), so LAN traffic
// is routed with its own addresses, out over uplink 0 and back the same way.
// Proxy, game server and internet hosts have a default route via the core.
//
// Link emulation. In ISP i a linkem.TUNLink impairs traffic entering from the
// router (Up: router to core) and from the core (Down: core to router). With an
// internet link, one more in host "far" impairs the internet host's traffic
// alone (Up: towards the internet host, Down: from it), which gives bulk
// transfers the round-trip time of a distant server without touching the game.
const (
	RouterTableBase = 100
	MaxUplinks      = 3
)

// LinkPair configures both directions of one ISP link.
type LinkPair struct {
	Up   linkem.Config // router → core
	Down linkem.Config // core → router
}

// GameOptions configures NewGame.
type GameOptions struct {
	Uplinks int  // 1 to MaxUplinks; 0 means 2
	Relays  bool // put a relay host between each ISP and the core
	// Links, indexed by uplink, starts a link emulator in each ISP; missing
	// entries (or a nil slice) leave that ISP a plain router.
	Links []LinkPair
	// InternetLink, if set, puts host "far" with a link emulator between the
	// core and the internet host (Up: core → internet host).
	InternetLink *LinkPair
}

// Game is the standard topology. Host fields are never nil except Relays when
// not requested and Emu entries without a LinkPair.
type Game struct {
	Net      *Net
	LAN      *Host   // game client
	Router   *Host   // LAN gateway with the uplinks
	ISPs     []*Host // one per uplink
	Relays   []*Host // one per uplink, if requested
	Core     *Host
	Proxy    *Host
	Server   *Host // game server
	Internet *Host // bulk traffic peer
	Far      *Host // between core and internet host, with an InternetLink only
	Emu      []*linkem.TUNLink
	FarEmu   *linkem.TUNLink // the internet link's emulator, if any
}

func addr(a, b, c, d byte) netip.Addr { return netip.AddrFrom4([4]byte{a, b, c, d}) }

func pfx(c, d byte) netip.Prefix { return netip.PrefixFrom(addr(198, 18, c, d), 24) }

func lan(c byte) netip.Prefix { return netip.PrefixFrom(addr(198, 18, c, 0), 24) }

// Addresses of the standard topology.
var (
	LANAddr      = addr(198, 18, 1, 2)
	LANGateway   = addr(198, 18, 1, 1)
	ProxyAddr    = addr(198, 18, 40, 2)
	ServerAddr   = addr(198, 18, 41, 2)
	InternetAddr = addr(198, 18, 42, 2)
	LANNet       = lan(1)
)

// UplinkAddr returns the router's address on uplink i.
func UplinkAddr(i int) netip.Addr { return addr(198, 18, byte(10+i), 2) }

// UplinkGateway returns ISP i's address facing the router.
func UplinkGateway(i int) netip.Addr { return addr(198, 18, byte(10+i), 1) }

// UplinkIface returns the router's interface name for uplink i.
func UplinkIface(i int) string { return fmt.Sprintf("up%d", i) }

// UplinkAddr returns the router's address on uplink i.
func (g *Game) UplinkAddr(i int) netip.Addr { return UplinkAddr(i) }

// UplinkIface returns the router's interface name for uplink i.
func (g *Game) UplinkIface(i int) string { return UplinkIface(i) }

// NewGameForTest builds the topology on a Net removed when t ends; it skips t
// without root.
func NewGameForTest(t testing.TB, o GameOptions) *Game {
	t.Helper()
	n := NewForTest(t)
	g, err := BuildGame(n, o)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// NewGame builds the topology on a new Net; Close removes it.
func NewGame(o GameOptions) (*Game, error) {
	n, err := New()
	if err != nil {
		return nil, err
	}
	g, err := BuildGame(n, o)
	if err != nil {
		n.Close()
		return nil, err
	}
	return g, nil
}

// Close tears the topology down.
func (g *Game) Close() error { return g.Net.Close() }

// BuildGame builds the topology on n. On error, what was built stays in n for
// n.Close to remove.
func BuildGame(n *Net, o GameOptions) (*Game, error) {
	if o.Uplinks == 0 {
		o.Uplinks = 2
	}
	if o.Uplinks < 1 || o.Uplinks > MaxUplinks {
		return nil, fmt.Errorf("netns: %d uplinks, want 1 to %d", o.Uplinks, MaxUplinks)
	}
	if len(o.Links) > o.Uplinks {
		return nil, errors.New("netns: more link configurations than uplinks")
	}
	g := &Game{Net: n}
	var err error
	mk := func(name string) *Host {
		if err != nil {
			return nil
		}
		var h *Host
		h, err = n.AddHost(name)
		return h
	}
	g.LAN, g.Router, g.Core = mk("lan"), mk("router"), mk("core")
	g.Proxy, g.Server, g.Internet = mk("proxy"), mk("server"), mk("internet")
	if o.InternetLink != nil {
		g.Far = mk("far")
	}
	for i := 0; i < o.Uplinks; i++ {
		g.ISPs = append(g.ISPs, mk(fmt.Sprintf("isp%d", i)))
		if o.Relays {
			g.Relays = append(g.Relays, mk(fmt.Sprintf("relay%d", i)))
		}
	}
	if err != nil {
		return nil, err
	}
	type step func() error
	steps := []step{
		func() error { return n.Link(g.LAN, "eth0", pfx(1, 2), g.Router, "lan0", pfx(1, 1)) },
		func() error { return n.Link(g.Core, "proxy", pfx(40, 1), g.Proxy, "eth0", pfx(40, 2)) },
		func() error { return n.Link(g.Core, "srv", pfx(41, 1), g.Server, "eth0", pfx(41, 2)) },
	}
	routes := []step{
		func() error { return g.LAN.AddRoute(netip.Prefix{}, LANGateway, "", 0) },
		func() error { return g.Proxy.AddRoute(netip.Prefix{}, addr(198, 18, 40, 1), "", 0) },
		func() error { return g.Server.AddRoute(netip.Prefix{}, addr(198, 18, 41, 1), "", 0) },
		func() error { return g.Internet.AddRoute(netip.Prefix{}, addr(198, 18, 42, 1), "", 0) },
	}
	if g.Far == nil {
		steps = append(steps, func() error { return n.Link(g.Core, "inet", pfx(42, 1), g.Internet, "eth0", pfx(42, 2)) })
	} else {
		steps = append(steps,
			func() error { return n.Link(g.Core, "inet", pfx(43, 1), g.Far, "core", pfx(43, 2)) },
			func() error { return n.Link(g.Far, "inet", pfx(42, 1), g.Internet, "eth0", pfx(42, 2)) },
		)
		routes = append(routes,
			func() error { return g.Core.AddRoute(lan(42), addr(198, 18, 43, 2), "", 0) },
			func() error { return g.Far.AddRoute(netip.Prefix{}, addr(198, 18, 43, 1), "", 0) },
		)
	}
	for i := 0; i < o.Uplinks; i++ {
		isp := g.ISPs[i]
		b := byte(i)
		table := RouterTableBase + i
		up := UplinkIface(i)
		// coreHop is the core's neighbour on the way to ISP i.
		coreHop := addr(198, 18, 20+b, 2)
		steps = append(steps, func() error { return n.Link(g.Router, up, pfx(10+b, 2), isp, "rtr", pfx(10+b, 1)) })
		routes = append(routes,
			func() error { return g.Router.AddRoute(netip.Prefix{}, UplinkGateway(i), up, table) },
			func() error {
				return g.Router.AddRule("from", UplinkAddr(i).String(), "lookup", fmt.Sprint(table), "priority", fmt.Sprint(1000+i))
			},
			func() error {
				return g.Router.AddRule("oif", up, "lookup", fmt.Sprint(table), "priority", fmt.Sprint(1010+i))
			},
			func() error { return isp.AddRoute(LANNet, UplinkAddr(i), "", 0) },
			func() error { return isp.AddRoute(netip.Prefix{}, addr(198, 18, 20+b, 1), "", 0) },
		)
		if o.Relays {
			r := g.Relays[i]
			coreHop = addr(198, 18, 30+b, 2)
			steps = append(steps,
				func() error { return n.Link(isp, "wan", pfx(20+b, 2), r, "isp", pfx(20+b, 1)) },
				func() error { return n.Link(r, "core", pfx(30+b, 2), g.Core, fmt.Sprintf("isp%d", i), pfx(30+b, 1)) },
			)
			routes = append(routes,
				func() error { return r.AddRoute(netip.Prefix{}, addr(198, 18, 30+b, 1), "", 0) },
				func() error { return r.AddRoute(lan(10+b), addr(198, 18, 20+b, 2), "", 0) },
				func() error { return r.AddRoute(LANNet, addr(198, 18, 20+b, 2), "", 0) },
			)
		} else {
			steps = append(steps, func() error {
				return n.Link(isp, "wan", pfx(20+b, 2), g.Core, fmt.Sprintf("isp%d", i), pfx(20+b, 1))
			})
		}
		routes = append(routes, func() error { return g.Core.AddRoute(lan(10+b), coreHop, "", 0) })
		if i == 0 {
			routes = append(routes, func() error { return g.Core.AddRoute(LANNet, coreHop, "", 0) })
		}
	}
	routes = append(routes, func() error { return g.Router.AddRoute(netip.Prefix{}, UplinkGateway(0), UplinkIface(0), 0) })
	// Routes need their gateways' links to exist, so they come after all links.
	steps = append(steps, routes...)
	fwd := append(append([]*Host{g.Router, g.Core}, g.ISPs...), g.Relays...)
	if g.Far != nil {
		fwd = append(fwd, g.Far)
	}
	for _, h := range fwd {
		steps = append(steps, h.EnableForwarding)
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return nil, err
		}
	}
	g.Emu = make([]*linkem.TUNLink, o.Uplinks)
	for i, lp := range o.Links {
		e, err := linkem.AttachTUN(g.ISPs[i].NS, "rtr", "wan", lp.Up, lp.Down)
		if err != nil {
			return nil, err
		}
		g.Emu[i] = e
		n.OnClose(func() { e.Close() })
	}
	if il := o.InternetLink; il != nil {
		e, err := linkem.AttachTUN(g.Far.NS, "core", "inet", il.Up, il.Down)
		if err != nil {
			return nil, err
		}
		g.FarEmu = e
		n.OnClose(func() { e.Close() })
	}
	return g, nil
}
