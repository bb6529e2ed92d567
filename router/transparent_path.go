package router

import (
	"net/netip"
	"time"

	"github.com/raicnet/raic/bpf"
	"github.com/raicnet/raic/detect"
	"github.com/raicnet/raic/pkg/gateway"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/nat"
	"github.com/raicnet/raic/pkg/session"
)

// inFlightAge: a flow whose first packet the eBPF classifier saw this long
// before its first packet reached the TUN device was already on the kernel's
// path (DSCP set mid-flow, a router restart, a rule added while it ran). Its
// first captured packet normally arrives within microseconds.
const inFlightAge = int64(500 * time.Millisecond)

// endedMemory is how long a flow whose session ended is remembered as ours:
// the classifier's idle time for a flow, after which any flow counts as new.
const endedMemory = 120 * time.Second

// fromLAN handles one packet the policy rules steered into the TUN device: the
// packet of a proxied flow is coded and sent on the uplinks; any other packet
// goes back to the kernel, which forwards it as if the TUN had not been there.
func (t *transparent) fromLAN(pkt []byte, now int64) {
	t.m.in.Inc()
	if t.r.lan != nil && t.r.lan.fromLAN(pkt, t.cls, now) {
		return // to a peer's LAN (peer_lan.go)
	}
	var p nat.Packet
	switch err := nat.Parse(pkt, &p); err {
	case nil:
	case nat.ErrNotUDP, nat.ErrFragment:
		t.reinject(pkt)
		return
	default:
		t.m.bad.Inc()
		return
	}
	k := flowKey{p.Src, p.Dst}
	if rs, ok := t.flows.Get(k, now); ok {
		t.r.sendPacket(rs, p.Payload, now, t.delayed)
		return
	}
	if _, ok := t.pass.Get(k, now); ok {
		t.reinject(pkt)
		return
	}
	t.newFlow(k, &p, pkt, now)
}

// newFlow decides for the first captured packet of a flow: proxy it (LC from
// its first packet) or keep it on the kernel's path.
func (t *transparent) newFlow(k flowKey, p *nat.Packet, pkt []byte, now int64) {
	dec := t.cls.Classify(detectTuple(p), p.DSCP, p.Len, now)
	inFlight := t.seenBefore(k, now)
	if !dec.LC || !dec.Proxy || inFlight || len(t.r.proxies) == 0 { // no proxy: a peer-only router
		if inFlight || dec.LC {
			t.m.inFlight.Inc()
		} else {
			// The eBPF port table also matches source ports; the userspace
			// table, which knows client-port constraints, has the last word.
			t.m.notLC.Inc()
		}
		t.passFlow(k, false)
		if t.gw != nil && t.gw.Masquerading() {
			// This packet's way into the TUN gave the connection a NAT
			// binding for the TUN (none): forgotten, the handed-back packet
			// starts the connection again and is masqueraded on its uplink.
			if err := t.gw.ForgetConnection(gateway.Flow{Client: k.client, Server: k.server}); err != nil {
				t.m.ruleErrors.Inc()
				if ok, n := t.r.flowLines.Allow(); ok {
					t.r.log.Warn("transparent: forget connection", "err", err, "lines_suppressed", n)
				}
			}
		}
		t.r.log.Debug("transparent: flow kept on its path", "client", k.client.String(), "server", k.server.String(),
			"rule", dec.Rule, "in_flight", inFlight)
		t.reinject(pkt)
		return
	}
	pps := dec.ExpectedPPS
	if pps <= 0 {
		pps = t.r.cfg.ExpectedPPS
	}
	interval := time.Duration(float64(time.Second) / pps)
	rs, created, err := t.flows.GetOrCreate(k, now, func() (*routerSession, error) {
		rs, err := t.r.newSessionPrefer(t, k.client, k.server, t.params, interval, t.r.preferOf(dec.Proxies))
		if err == nil {
			rs.app, rs.rule = dec.App, dec.Rule
		}
		return rs, err
	})
	if err != nil {
		if ok, n := t.r.flowLines.Allow(); ok {
			t.r.log.Error("cannot create session", "err", err, "lines_suppressed", n)
		}
		return
	}
	if created {
		t.r.registerSession(rs, now)
		t.m.proxied.Inc()
		if ok, n := t.r.flowLines.Allow(); ok {
			t.r.log.Info("transparent: flow proxied", "session", rs.id, "client", k.client.String(), "server", k.server.String(),
				"rule", dec.Rule, "app", dec.App, "app_type", dec.AppType, "proxy", rs.px.name, "proxy_reason", *rs.chosen.Load(),
				"lines_suppressed", n)
		}
	}
	t.r.sendPacket(rs, p.Payload, now, t.delayed)
}

// seenBefore reports whether the eBPF classifier saw the flow well before now.
func (t *transparent) seenBefore(k flowKey, now int64) bool {
	if t.dp == nil {
		return false
	}
	if _, ours := t.ended.Peek(k); ours {
		return false
	}
	fs, err := t.dp.Flow(bpf.FlowKey{Proto: bpf.ProtoUDP, Src: k.client, Dst: k.server})
	return err == nil && fs.Packets > 1 && now-fs.FirstSeen > inFlightAge
}

// reinject hands a packet back to the kernel: written to the TUN device it
// arrives without the classifier's mark and from the TUN, so no rule of ours
// matches it again and the main table forwards it.
func (t *transparent) reinject(pkt []byte) {
	if _, err := t.tun.Write(pkt); err != nil {
		t.m.replyErrors.Inc()
		return
	}
	t.m.reinjected.Inc()
}

// passFlow keeps flow k on the kernel's path: it is remembered, so its packets
// that still reach the TUN are handed back at once, and a single-flow rule
// keeps the rest out of the TUN. promote also makes the eBPF programs treat it
// as LC (priority, and bulk suppression while it runs).
func (t *transparent) passFlow(k flowKey, promote bool) {
	e := passEntry{ruled: t.addFlowRule(k)}
	if promote && t.dp != nil {
		// The rule is in place before the mark appears, so no packet of the
		// flow is steered into the TUN by the promotion.
		if err := t.dp.Promote(bpf.FlowKey{Proto: bpf.ProtoUDP, Src: k.client, Dst: k.server}, 0); err == nil {
			e.promoted = true
		} else {
			if ok, n := t.r.flowLines.Allow(); ok {
				t.r.log.Warn("transparent: promote flow", "err", err, "lines_suppressed", n)
			}
		}
	}
	t.pass.GetOrCreate(k, mono.Now(), func() (passEntry, error) { return e, nil })
	t.m.passed.Inc()
}

// passRemoved undoes passFlow when the flow went idle or was evicted.
func (t *transparent) passRemoved(k flowKey, e passEntry, _ session.Reason) {
	if e.promoted && t.dp != nil {
		t.dp.Demote(bpf.FlowKey{Proto: bpf.ProtoUDP, Src: k.client, Dst: k.server})
	}
	if e.ruled {
		t.delFlowRule(k)
	}
}

// addFlowRule keeps flow k out of the TUN with a rule of its own, if it can.
func (t *transparent) addFlowRule(k flowKey) bool {
	return t.gw != nil && t.gw.AddFlowRule(gateway.Flow{Client: k.client, Server: k.server})
}

func (t *transparent) delFlowRule(k flowKey) {
	if t.gw != nil {
		t.gw.DelFlowRule(gateway.Flow{Client: k.client, Server: k.server})
	}
}

// pollState is what the poller knows of one flow the classifier did not mark.
type pollState struct {
	packets, bytes uint64
	lastFed        int64 // time of the last packet fed to the timing test
	gen            uint32
	done           bool // found LC and handled
}

// Bounds of the poller.
const (
	maxPolled   = 16384 // flows tracked for timing
	maxFeed     = 64    // packets fed per flow and poll
	ethOverhead = 14    // the classifier counts skb->len, with the Ethernet header
)

// poll reads the classifier's per-flow statistics and runs the timing test on
// the flows it did not mark. Per-packet timing is not available here, so each
// poll feeds the packets counted since the last one, evenly spaced, with their
// average size: a steady game flow looks the same, and a bulk flow is still
// too big or too fast. A flow found LC this way is already in flight: it keeps
// its path (a single-flow rule), is promoted (priority and suppression), and
// the classifier learns its destination, which gets a rule so the next flow to
// it is proxied from its first packet.
func (t *transparent) poll(now int64) {
	if t.dp == nil {
		return
	}
	t.pollGen++
	gen := t.pollGen
	var found []flowKey
	var decs []detect.Decision
	t.dp.Flows(func(k bpf.FlowKey, fs bpf.FlowStats) bool {
		if k.Proto != bpf.ProtoUDP {
			return true
		}
		fk := flowKey{netip.AddrPortFrom(k.Src.Addr().Unmap(), k.Src.Port()), netip.AddrPortFrom(k.Dst.Addr().Unmap(), k.Dst.Port())}
		if _, ok := t.pass.Peek(fk); ok {
			if fs.LastSeen > now-int64(2*t.cfg.PollInterval.Duration) {
				t.pass.Get(fk, now) // still running on the kernel's path
			}
			return true
		}
		if fs.Flags&bpf.FlowLC != 0 {
			return true // marked: the TUN path handles it
		}
		if _, ok := t.flows.Peek(fk); ok {
			return true // proxied (captured by a destination rule)
		}
		if t.r.lan != nil && t.r.lan.peerFor(fk.server.Addr()) != nil {
			return true // to a peer's LAN: the peer session carries it (peer_lan.go)
		}
		st := t.polls[k]
		if st == nil {
			if len(t.polls) >= maxPolled {
				t.m.pollSkipped.Inc()
				return true
			}
			st = &pollState{lastFed: fs.FirstSeen - 1}
			t.polls[k] = st
		}
		st.gen = gen
		if fs.Packets < st.packets {
			// The LRU map dropped the flow and counts it afresh.
			*st = pollState{lastFed: fs.FirstSeen - 1, gen: gen}
		}
		if st.done || fs.Packets <= st.packets {
			return true
		}
		n := fs.Packets - st.packets
		bytes := fs.Bytes - st.bytes
		st.packets, st.bytes = fs.Packets, fs.Bytes
		feed := min(n, maxFeed)
		// Fewer fed packets than counted carry all the bytes, so the rate
		// test still sees the flow's real rate.
		size := int(bytes / feed)
		if size > ethOverhead {
			size -= ethOverhead
		}
		span := fs.LastSeen - st.lastFed
		if span <= 0 {
			return true
		}
		ft := detect.FiveTuple{Proto: detect.ProtoUDP, Src: fk.client, Dst: fk.server}
		var dec detect.Decision
		for i := uint64(1); i <= feed; i++ {
			at := st.lastFed + span*int64(i)/int64(feed)
			dec = t.pollCls.Classify(ft, 0, size, at)
		}
		st.lastFed = fs.LastSeen
		if dec.LC {
			st.done = true
			found = append(found, fk)
			decs = append(decs, dec)
		}
		return true
	})
	for k, st := range t.polls {
		if st.gen != gen {
			delete(t.polls, k)
		}
	}
	for i, fk := range found {
		t.passFlow(fk, true)
		t.m.adhoc.Inc()
		if ok, n := t.r.flowLines.Allow(); ok {
			t.r.log.Info("transparent: LC flow found in flight, kept on its path with priority",
				"client", fk.client.String(), "server", fk.server.String(), "rule", decs[i].Rule, "app_type", decs[i].AppType, "lines_suppressed", n)
		}
	}
	if len(found) > 0 {
		t.syncDestRules(now)
	}
}

func detectTuple(p *nat.Packet) detect.FiveTuple {
	return detect.FiveTuple{Proto: detect.ProtoUDP, Src: p.Src, Dst: p.Dst}
}
