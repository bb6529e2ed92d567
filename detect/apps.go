package detect

import (
	"slices"
	"strings"
)

// AppTable looks applications up by protocol and ports.
//
// Shipped ranges overlap (Valorant's 7000-8000 lies inside Rocket League's
// 7000-9000; STUN's 3478 inside Teams' 3478-3481), so the answer is fixed by
// specificity, the same for every run and every map order:
//
//  1. the entry whose server range containing the port is narrowest wins;
//  2. on equal width, an entry that also constrains client ports (and matches
//     them) beats one that does not, and narrower client ranges beat wider;
//  3. on a full tie, the lower Name (byte order) wins.
//
// Ports are cut at every range boundary into elementary segments; each segment
// keeps its candidates already sorted by that order, so a lookup is one binary
// search plus a short scan for the client-port test.
type AppTable struct {
	apps []App
	decs []Decision // prebuilt per app: Classify copies it, never builds strings
	idx  [2]portIndex
}

type portIndex struct {
	starts []uint16 // segment i covers starts[i] .. starts[i+1]-1 (last: ..65535)
	off    []int32  // candidates of segment i: cand[off[i]:off[i+1]]
	cand   []int32  // app indexes, best first
}

// NewAppTable indexes the enabled apps of c.
func NewAppTable(c *Config) *AppTable {
	t := &AppTable{}
	for _, a := range c.Apps {
		if a.Disabled {
			continue
		}
		if a.server == nil {
			// Built by hand rather than by ParseConfig: parse now; entries
			// with bad ranges are left out rather than half indexed.
			var err error
			if a.server, err = parseRanges(a.ServerPorts); err != nil || len(a.server) == 0 {
				continue
			}
			if a.client, err = parseRanges(a.ClientPorts); err != nil {
				continue
			}
		}
		t.apps = append(t.apps, a)
		t.decs = append(t.decs, Decision{
			LC: true, AppType: a.Type, App: a.Name, Rule: "port:" + a.Name,
			Proxy: true, ExpectedPPS: a.PPS, Proxies: a.Proxies,
		})
	}
	for p := range t.idx {
		t.idx[p] = t.build(p)
	}
	return t
}

// protoSlot maps a protocol number to its index, -1 for others.
func protoSlot(proto uint8) int {
	switch proto {
	case ProtoUDP:
		return 0
	case ProtoTCP:
		return 1
	}
	return -1
}

func (t *AppTable) build(slot int) portIndex {
	want := "udp"
	if slot == 1 {
		want = "tcp"
	}
	var members []int
	bounds := []int{1}
	for i, a := range t.apps {
		if a.Proto != want && a.Proto != "both" {
			continue
		}
		members = append(members, i)
		for _, r := range a.server {
			bounds = append(bounds, int(r.lo), int(r.hi)+1)
		}
	}
	slices.Sort(bounds)
	bounds = slices.Compact(bounds)
	var ix portIndex
	ix.off = append(ix.off, 0)
	type cand struct {
		app          int
		width, cw    int
		clientRanged bool
	}
	for _, b := range bounds {
		if b > 65535 {
			break
		}
		var cs []cand
		for _, i := range members {
			a := &t.apps[i]
			w := 0
			for _, r := range a.server {
				if int(r.lo) <= b && b <= int(r.hi) && (w == 0 || r.width() < w) {
					w = r.width()
				}
			}
			if w == 0 {
				continue
			}
			cw := 0
			for _, r := range a.client {
				cw += r.width()
			}
			cs = append(cs, cand{i, w, cw, len(a.client) > 0})
		}
		slices.SortFunc(cs, func(x, y cand) int {
			if x.width != y.width {
				return x.width - y.width
			}
			if x.clientRanged != y.clientRanged {
				if x.clientRanged {
					return -1
				}
				return 1
			}
			if x.clientRanged && x.cw != y.cw {
				return x.cw - y.cw
			}
			return strings.Compare(t.apps[x.app].Name, t.apps[y.app].Name)
		})
		ix.starts = append(ix.starts, uint16(b))
		for _, c := range cs {
			ix.cand = append(ix.cand, int32(c.app))
		}
		ix.off = append(ix.off, int32(len(ix.cand)))
	}
	return ix
}

// lookup returns the index of the best app for the ports, or -1.
func (t *AppTable) lookup(proto uint8, dst, src uint16) int {
	slot := protoSlot(proto)
	if slot < 0 || dst == 0 {
		return -1
	}
	ix := &t.idx[slot]
	// Last segment whose start <= dst; starts[0] is 1, so one exists.
	lo, hi := 0, len(ix.starts)
	for hi-lo > 1 {
		m := int(uint(lo+hi) >> 1)
		if ix.starts[m] <= dst {
			lo = m
		} else {
			hi = m
		}
	}
	for _, c := range ix.cand[ix.off[lo]:ix.off[lo+1]] {
		cl := t.apps[c].client
		if len(cl) == 0 {
			return int(c)
		}
		for _, r := range cl {
			if r.lo <= src && src <= r.hi {
				return int(c)
			}
		}
	}
	return -1
}

// Lookup returns the application for a packet to dst port from src port.
// The result points into the table; do not modify it.
func (t *AppTable) Lookup(proto uint8, dst, src uint16) (*App, bool) {
	i := t.lookup(proto, dst, src)
	if i < 0 {
		return nil, false
	}
	return &t.apps[i], true
}

// Len returns the number of indexed applications.
func (t *AppTable) Len() int { return len(t.apps) }
