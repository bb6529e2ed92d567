package netns

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/raicnet/raic/integration/linkem"
)

// The peer topology (NewPeers): two routers in peer mode, A (side 0) and B
// (side 1), each with its own uplinks, each uplink behind its own NAT and an
// ISP, and a rendezvous host on the core. s is the side, i the uplink.
//
//	LAN s        eth0  198.18.(170+s).2/24 ── router s lan0 198.18.(170+s).1/24
//	router s     up<i> 198.18.(100+10s+i).2/24 ── NAT s.i lan 198.18.(100+10s+i).1/24
//	NAT s.i      wan   198.18.(120+10s+i).2/24 ── ISP s.i nat 198.18.(120+10s+i).1/24
//	ISP s.i      core  198.18.(140+10s+i).2/24 ── core s<s>i<i> 198.18.(140+10s+i).1/24
//	core         rv    198.18.160.1/24 ── rendezvous eth0 198.18.160.2/24
//
// Routing as in the game topology: the router's table 100+i holds a default
// route via NAT s.i, chosen by "from" its address and "oif up<i>"; the main
// table's default goes via uplink 0. The core knows only the NATs' outside
// networks, so nothing reaches a router except through its NAT. In ISP s.i a
// linkem.TUNLink (when configured) impairs Up (NAT → core) and Down.
type Peers struct {
	Net        *Net
	LAN        [2]*Host
	Router     [2]*Host
	NATs       [2][]*Host
	ISPs       [2][]*Host
	Core       *Host
	Rendezvous *Host
	Emu        [2][]*linkem.TUNLink // nil entries without a LinkPair
}

// PeersOptions configures NewPeers.
type PeersOptions struct {
	Uplinks [2]int        // per side, 1 to MaxUplinks; 0 means 2
	NAT     [2]NAT        // each side's NATs
	Links   [2][]LinkPair // per side and uplink; Up is towards the core
}

// PeerUplinkAddr is side s's router address on uplink i.
func PeerUplinkAddr(s, i int) netip.Addr { return addr(198, 18, byte(100+10*s+i), 2) }

// PeerNATAddr is the outside address of side s's NAT on uplink i.
func PeerNATAddr(s, i int) netip.Addr { return addr(198, 18, byte(120+10*s+i), 2) }

// PeerLANAddr is the LAN host of side s.
func PeerLANAddr(s int) netip.Addr { return addr(198, 18, byte(170+s), 2) }

// PeerLANGateway is side s's router on its LAN.
func PeerLANGateway(s int) netip.Addr { return addr(198, 18, byte(170+s), 1) }

// RendezvousAddr is the rendezvous host.
var RendezvousAddr = addr(198, 18, 160, 2)

// NewPeersForTest builds the peer topology, skipping the test when not root
// or when nft is missing, and tears it down with the test.
func NewPeersForTest(t testing.TB, o PeersOptions) *Peers {
	t.Helper()
	if !HaveNft() {
		t.Skip("the nft command is missing (apt-get install nftables): the peer topology needs it for its NATs")
	}
	n := NewForTest(t)
	p, err := BuildPeers(n, o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// BuildPeers builds the peer topology in n.
func BuildPeers(n *Net, o PeersOptions) (*Peers, error) {
	p := &Peers{Net: n}
	var err error
	mk := func(name string) *Host {
		if err != nil {
			return nil
		}
		var h *Host
		h, err = n.AddHost(name)
		return h
	}
	p.Core, p.Rendezvous = mk("core"), mk("rv")
	for s := 0; s < 2; s++ {
		if o.Uplinks[s] == 0 {
			o.Uplinks[s] = 2
		}
		if o.Uplinks[s] < 1 || o.Uplinks[s] > MaxUplinks {
			return nil, fmt.Errorf("netns: side %d has %d uplinks, want 1 to %d", s, o.Uplinks[s], MaxUplinks)
		}
		if len(o.Links[s]) > o.Uplinks[s] {
			return nil, fmt.Errorf("netns: side %d has more link configurations than uplinks", s)
		}
		side := string(rune('a' + s))
		p.LAN[s], p.Router[s] = mk("lan"+side), mk("peer"+side)
		for i := 0; i < o.Uplinks[s]; i++ {
			p.NATs[s] = append(p.NATs[s], mk(fmt.Sprintf("nat%s%d", side, i)))
			p.ISPs[s] = append(p.ISPs[s], mk(fmt.Sprintf("isp%s%d", side, i)))
		}
	}
	if err != nil {
		return nil, err
	}
	type step func() error
	var links, routes []step
	links = append(links, func() error {
		return n.Link(p.Core, "rv", pfx(160, 1), p.Rendezvous, "eth0", pfx(160, 2))
	})
	routes = append(routes, func() error { return p.Rendezvous.AddRoute(netip.Prefix{}, addr(198, 18, 160, 1), "", 0) })
	for s := 0; s < 2; s++ {
		r, l := p.Router[s], p.LAN[s]
		sb := byte(s)
		links = append(links, func() error { return n.Link(l, "eth0", pfx(170+sb, 2), r, "lan0", pfx(170+sb, 1)) })
		routes = append(routes, func() error { return l.AddRoute(netip.Prefix{}, PeerLANGateway(s), "", 0) })
		for i := 0; i < o.Uplinks[s]; i++ {
			nat, isp := p.NATs[s][i], p.ISPs[s][i]
			c := byte(10*s + i)
			up := UplinkIface(i)
			table := RouterTableBase + i
			links = append(links,
				func() error { return n.Link(r, up, pfx(100+c, 2), nat, "lan", pfx(100+c, 1)) },
				func() error { return n.Link(nat, "wan", pfx(120+c, 2), isp, "nat", pfx(120+c, 1)) },
				func() error {
					return n.Link(isp, "core", pfx(140+c, 2), p.Core, fmt.Sprintf("s%di%d", s, i), pfx(140+c, 1))
				},
			)
			routes = append(routes,
				func() error { return r.AddRoute(netip.Prefix{}, addr(198, 18, 100+c, 1), up, table) },
				func() error {
					return r.AddRule("from", PeerUplinkAddr(s, i).String(), "lookup", fmt.Sprint(table), "priority", fmt.Sprint(1000+i))
				},
				func() error { return r.AddRule("oif", up, "lookup", fmt.Sprint(table), "priority", fmt.Sprint(1010+i)) },
				func() error { return nat.AddRoute(netip.Prefix{}, addr(198, 18, 120+c, 1), "", 0) },
				func() error { return isp.AddRoute(netip.Prefix{}, addr(198, 18, 140+c, 1), "", 0) },
				func() error { return p.Core.AddRoute(lan(120+c), addr(198, 18, 140+c, 2), "", 0) },
				func() error { return nat.NAT("wan", o.NAT[s], PeerUplinkAddr(s, i)) },
			)
		}
		routes = append(routes, func() error { return r.AddRoute(netip.Prefix{}, addr(198, 18, 100+sb*10, 1), UplinkIface(0), 0) })
	}
	steps := append(links, routes...)
	fwd := []*Host{p.Core, p.Router[0], p.Router[1]}
	for s := 0; s < 2; s++ {
		fwd = append(append(fwd, p.NATs[s]...), p.ISPs[s]...)
	}
	for _, h := range fwd {
		steps = append(steps, h.EnableForwarding)
	}
	for _, st := range steps {
		if err := st(); err != nil {
			return nil, err
		}
	}
	for s := 0; s < 2; s++ {
		p.Emu[s] = make([]*linkem.TUNLink, o.Uplinks[s])
		for i, lp := range o.Links[s] {
			e, err := linkem.AttachTUN(p.ISPs[s][i].NS, "nat", "core", lp.Up, lp.Down)
			if err != nil {
				return nil, err
			}
			p.Emu[s][i] = e
			n.OnClose(func() { e.Close() })
		}
	}
	return p, nil
}
