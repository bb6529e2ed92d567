package router

import (
	"context"
	"fmt"
	"hash/fnv"
	"net/netip"
	"sync"
	"time"

	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/peer"
	"github.com/raicnet/raic/pkg/rendezvous"
	"github.com/raicnet/raic/pkg/session"
	"github.com/raicnet/raic/pkg/udp"
	"github.com/raicnet/raic/pkg/uplink"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// Peer mode: this router and another carry UDP flows (a VoIP call) over
// every pair of their uplinks (see package peer). Each [[peer]] gets a socket
// on every uplink (bound like the uplink's own, on the peer's port), finds
// the other router at its configured addresses or through a rendezvous
// (raic-rendezvous, which also relays when punching fails), and carries:
//
//   - [[vport]] tables: a local UDP port whose flows go to a service the peer
//     offers;
//   - [[peer.service]] tables: the services this router offers the peer,
//     by name, each an address on its own side.
//
//	[[peer]]
//	id = "bob"                        # the other router's client_id
//	key = "…"                         # the pair's shared key (raic-router -genkey)
//	addresses = ["203.0.113.7:4600"]  # and/or:
//	rendezvous = "198.18.160.2:3478"
//	rendezvous_key = "…"              # this router's key at the rendezvous
//	port = 4600                       # local port on every uplink
//	[[peer.service]]
//	name = "sip"
//	target = "192.168.1.20:5060"
//
//	[[vport]]
//	peer = "bob"
//	listen = "127.0.0.1:5060"
//	service = "sip"                   # a service of bob's
//
// A router may be peer-only: [[peer]] tables and no proxy anywhere (no
// top-level proxy, no uplink proxy, no forwards or tcp); then key may be left
// out too, and the router runs only its peers (and, in transparent mode,
// captures only the flows to the peers' LANs).
//
// Peer links use sockets of their own on every uplink rather than the
// uplinks' uplink.Set: a Set is one fixed far-end address per uplink with one
// Health each, while a peer has N×M paths whose remote addresses are learned
// and rebind (package peer keeps their health), and the peer sockets also
// carry the rendezvous's messages. Packets go as copies or coded (scheme). In
// transparent mode, lan = [prefixes] names the peer's LAN, whose UDP flows
// go over the session with their original addresses (peer_lan.go).

// PeerConfig is one [[peer]].
type PeerConfig struct {
	ID            string              `toml:"id"`
	Key           string              `toml:"key"`
	Addresses     []string            `toml:"addresses"`
	Rendezvous    string              `toml:"rendezvous"`
	RendezvousKey string              `toml:"rendezvous_key"`
	Port          int                 `toml:"port"`
	Services      []PeerServiceConfig `toml:"service"`
	LAN           []string            `toml:"lan"` // the peer's LAN prefixes (peer_lan.go)
	// Scheme is how packets go to the peer, with the syntax of the
	// top-level scheme: "copy" (the default: one copy on every path),
	// "xor:2", "rs:2+2", "time:2" (coded over the paths; see package peer).
	Scheme string `toml:"scheme"`

	addrs []netip.AddrPort
	rv    netip.AddrPort
	lan   []netip.Prefix

	scheme raic.Params
}

// PeerServiceConfig is one [[peer.service]]: what the peer's vports may reach.
type PeerServiceConfig struct {
	Name   string `toml:"name"`
	Target string `toml:"target"`
}

// VPortConfig is one [[vport]].
type VPortConfig struct {
	Peer    string `toml:"peer"`
	Listen  string `toml:"listen"`
	Service string `toml:"service"`
}

// DefaultPeerPort is a peer's local port on every uplink.
const DefaultPeerPort = 4600

// serviceID is the 16-bit wire name of a service: both routers derive it from
// the name, so neither has to number the other's services.
func serviceID(name string) uint16 {
	h := fnv.New32a()
	h.Write([]byte(name))
	v := h.Sum32()
	return uint16(v>>16) ^ uint16(v)
}

// peerOnly reports whether c is a router that only carries peer sessions:
// peers, and nothing that needs a proxy.
func (c *Config) peerOnly() bool {
	if len(c.Peers) == 0 || c.Proxy.raw != nil || len(c.Forwards) > 0 ||
		len(c.TCP.Forwards) > 0 || c.TCP.Split.enabled() {
		return false
	}
	for _, u := range c.Uplinks {
		if u.Proxy != "" {
			return false
		}
	}
	return true
}

// newPeerOnly finishes New for a peer-only router: no proxy paths, no
// sessions; the peers open their own sockets in Run.
func (r *Router) newPeerOnly() (*Router, error) {
	r.byID = session.NewTable(session.Config[uint64, *routerSession]{
		MaxEntries: 1, Hash: func(id uint64) uint64 { return id },
	})
	if err := r.setupTransparent(); err != nil { // the peers' LANs only (peer_lan.go)
		return nil, err
	}
	return r, nil
}

// runPeerOnly is Run for a peer-only router.
func (r *Router) runPeerOnly(ctx context.Context) error {
	r.log.Info("peer-only router: no proxy", "peers", len(r.cfg.Peers), "uplinks", len(r.cfg.Uplinks))
	if err := r.startPeers(ctx); err != nil {
		r.Close()
		return err
	}
	if err := r.startTransparent(ctx); err != nil {
		r.Close()
		return err
	}
	<-ctx.Done()
	r.Close()
	return nil
}

// checkPeers reports every error of the [[peer]] and [[vport]] tables.
func (c *Config) checkPeers(meta *config.Meta) error {
	if c.Suppress.Enabled && c.peerOnly() {
		meta.Report("suppress.enabled", "suppression needs a proxy session; a peer-only router does not suppress yet")
	}
	ids := map[string]bool{}
	ports := map[int]bool{}
	for i := range c.Peers {
		p := &c.Peers[i]
		key := func(k string) string { return fmt.Sprintf("peer.%d.%s", i, k) }
		if p.ID == "" || len(p.ID) > wire.MaxClientID {
			meta.Report(key("id"), "must be 1 to %d bytes", wire.MaxClientID)
		}
		if ids[p.ID] {
			meta.Report(key("id"), "peer %q is configured twice", p.ID)
		}
		ids[p.ID] = true
		if _, err := wire.ParseKey(p.Key); err != nil {
			meta.Report(key("key"), "%v", err)
		}
		p.addrs = nil
		for _, a := range p.Addresses {
			ap, err := netip.ParseAddrPort(a)
			if err != nil {
				meta.Report(key("addresses"), "not an address:port: %q", a)
			}
			p.addrs = append(p.addrs, ap)
		}
		if p.Rendezvous != "" {
			ap, err := netip.ParseAddrPort(p.Rendezvous)
			if err != nil {
				meta.Report(key("rendezvous"), "not an address:port: %v", err)
			}
			p.rv = ap
			if _, err := wire.ParseKey(p.RendezvousKey); err != nil {
				meta.Report(key("rendezvous_key"), "%v", err)
			}
		} else if p.RendezvousKey != "" {
			meta.Report(key("rendezvous_key"), "set, but no rendezvous to use it with")
		}
		if p.Port == 0 {
			p.Port = DefaultPeerPort
		}
		if p.Port < 1 || p.Port > 65535 {
			meta.Report(key("port"), "must be 1 to 65535")
		}
		if ports[p.Port] {
			meta.Report(key("port"), "port %d is already another peer's", p.Port)
		}
		ports[p.Port] = true
		if sp, auto, err := parseScheme(p.Scheme); p.Scheme == "" {
			p.scheme = raic.Params{}
		} else if err != nil {
			meta.Report(key("scheme"), "%v", err)
		} else if auto {
			meta.Report(key("scheme"), "\"auto\" needs a proxy's quality reports; a peer takes a fixed scheme (copy, xor:K, rs:K+M, time:D)")
		} else {
			p.scheme = sp
		}
		names := map[uint16]string{}
		for j, s := range p.Services {
			skey := func(k string) string { return fmt.Sprintf("peer.%d.service.%d.%s", i, j, k) }
			if s.Name == "" {
				meta.Report(skey("name"), "a service needs a name")
			}
			if other, dup := names[serviceID(s.Name)]; dup {
				meta.Report(skey("name"), "service %q clashes with %q: rename one", s.Name, other)
			}
			names[serviceID(s.Name)] = s.Name
			if _, err := netip.ParseAddrPort(s.Target); err != nil {
				meta.Report(skey("target"), "not an address:port: %v", err)
			}
		}
	}
	c.checkPeerLANs(meta) // peer_lan.go
	seen := map[string]bool{}
	for i, v := range c.VPorts {
		key := func(k string) string { return fmt.Sprintf("vport.%d.%s", i, k) }
		if !ids[v.Peer] {
			meta.Report(key("peer"), "no [[peer]] with id %q", v.Peer)
		}
		if _, err := netip.ParseAddrPort(v.Listen); err != nil {
			meta.Report(key("listen"), "not an address:port: %v", err)
		}
		if v.Service == "" {
			meta.Report(key("service"), "name the peer's service this port leads to")
		} else if k := v.Peer + "\x00" + v.Service; seen[k] {
			meta.Report(key("service"), "service %q of %q already has a vport", v.Service, v.Peer)
		} else {
			seen[k] = true
		}
	}
	return nil
}

// peerRun is one [[peer]] at run time.
type peerRun struct {
	id    string
	link  *peer.Link
	socks *peer.Sockets
	mux   *peer.Mux
	stop  chan struct{} // closed by closePeers

	paths, pathsUp                           *metrics.Gauge
	sent, delivered, dups, relaySent, relayR *metrics.Gauge
	// The scheme's cost and work: wire and payload bytes sent, the peer's
	// coded packets rebuilt with parity and given up.
	wireBytes, payloadBytes, rebuilt, lost *metrics.Gauge

	// Every authenticated data copy counted per path (duplicates too), so
	// each path's loss shows beside the session's: 1 - copies / the peer's
	// packets sent. Counting a duplicate means opening it, which a call's
	// 50 packets a second per path can afford.
	reg        *metrics.Registry
	uplinks    []string
	pathMu     sync.Mutex
	pathCopies map[peer.Path]*metrics.Counter
	pathOther  *metrics.Counter
	// Each path's keepalive health, set by the ticker (its goroutine only).
	pathHealth map[peer.Path]*[3]*metrics.Gauge // up, SRTT µs, keepalive loss ‰
	// The vports' packets by service and direction: [0] peer → local
	// client, [1] peer → local service, [2] local client → peer, [3] local
	// service → peer.
	vportOut map[uint16]*[4]*metrics.Counter
	lan      *lanPeer // its LAN flows (peer_lan.go)
}

// maxPathCounters bounds the per-path counters; copies from further
// addresses (rebinding NATs) are counted together.
const maxPathCounters = 64

func (pr *peerRun) observe(local int, from netip.AddrPort, t wire.Type, _ []byte, _ int64) {
	if t != wire.TypeData {
		return
	}
	k := peer.Path{Local: local, Remote: from}
	pr.pathMu.Lock()
	c := pr.pathCopies[k]
	if c == nil {
		c = pr.pathOther
		if len(pr.pathCopies) < maxPathCounters && local < len(pr.uplinks) {
			c = pr.reg.Counter(fmt.Sprintf(`router_peer_path_copies_received_total{peer=%q,uplink=%q,remote=%q}`,
				pr.id, pr.uplinks[local], from.String()), "Data copies received from the peer per path (local uplink, remote address), duplicates included.")
			pr.pathCopies[k] = c
		}
	}
	pr.pathMu.Unlock()
	c.Inc()
}

// setPathHealth exports one path's keepalive health; paths beyond
// maxPathCounters go unexported (their copies are still counted).
func (pr *peerRun) setPathHealth(s peer.PathStats) {
	g := pr.pathHealth[s.Path]
	if g == nil {
		if len(pr.pathHealth) >= maxPathCounters || s.Path.Local >= len(pr.uplinks) {
			return
		}
		lbl := fmt.Sprintf(`{peer=%q,uplink=%q,remote=%q}`, pr.id, pr.uplinks[s.Path.Local], s.Path.Remote.String())
		g = &[3]*metrics.Gauge{
			pr.reg.Gauge("router_peer_path_up"+lbl, "1 when the path (local uplink, remote address) answers keepalives."),
			pr.reg.Gauge("router_peer_path_srtt_microseconds"+lbl, "Smoothed keepalive round trip per path."),
			pr.reg.Gauge("router_peer_path_keepalive_loss_permille"+lbl, "Unanswered keepalives per path (smoothed), per thousand."),
		}
		pr.pathHealth[s.Path] = g
	}
	up := int64(0)
	if s.Health.Up {
		up = 1
	}
	g[0].Set(up)
	g[1].Set(s.Health.SRTT.Microseconds())
	g[2].Set(int64(s.Health.Loss * 1000))
}

func (pr *peerRun) onVPortPacket(id uint16, toService bool, _ []byte) {
	if c := pr.vportOut[id]; c != nil {
		if toService {
			c[1].Inc()
		} else {
			c[0].Inc()
		}
	}
}

func (pr *peerRun) onVPortInput(id uint16, fromService bool, _ []byte) {
	if c := pr.vportOut[id]; c != nil {
		if fromService {
			c[3].Inc()
		} else {
			c[2].Inc()
		}
	}
}

// peerRuns returns the peers started so far: /status and the metrics may ask
// while startPeers is still appending (a peer waits for its sockets).
func (r *Router) peerRuns() []*peerRun {
	r.peersMu.Lock()
	defer r.peersMu.Unlock()
	return r.peers
}

// startPeers opens every peer's sockets and starts its link; Close stops them.
func (r *Router) startPeers(ctx context.Context) error {
	now := mono.Now()
	for _, pc := range r.cfg.Peers {
		pr, err := r.newPeerRun(pc, now)
		if err != nil {
			return fmt.Errorf("peer %s: %w", pc.ID, err)
		}
		r.peersMu.Lock()
		r.peers = append(r.peers, pr)
		r.peersMu.Unlock()
		r.log.Info("peer ready", "peer", pc.ID, "port", pc.Port, "addresses", len(pc.addrs), "rendezvous", pc.Rendezvous)
		pr.mux.Attach(pr.link)
		pr.socks.Serve(pr.link)
		r.wg.Add(1)
		go r.peerTicker(ctx, pr)
	}
	return nil
}

func (r *Router) newPeerRun(pc PeerConfig, now int64) (*peerRun, error) {
	key, _ := wire.ParseKey(pc.Key)
	var conns []peer.PacketConn
	fail := func(err error) (*peerRun, error) {
		for _, c := range conns {
			c.Close()
		}
		return nil, err
	}
	for _, uc := range r.cfg.Uplinks {
		opt := udp.Options{Device: uc.Device}
		if uc.Source != "" {
			opt.Local, _ = uplink.ParseSource(uc.Source)
		}
		opt.Local = netip.AddrPortFrom(opt.Local.Addr(), uint16(pc.Port))
		c, err := udp.Listen("udp4", opt)
		if err != nil {
			return fail(fmt.Errorf("uplink %s: %w", uc.Name, err))
		}
		conns = append(conns, c)
	}
	var mc peer.MuxConfig
	mc.Log = r.log
	for _, s := range pc.Services {
		t, _ := netip.ParseAddrPort(s.Target)
		mc.Services = append(mc.Services, peer.Service{ID: serviceID(s.Name), Target: t})
	}
	for _, v := range r.cfg.VPorts {
		if v.Peer == pc.ID {
			l, _ := netip.ParseAddrPort(v.Listen)
			mc.VPorts = append(mc.VPorts, peer.VPort{ID: serviceID(v.Service), Listen: l})
		}
	}
	pr := &peerRun{id: pc.ID, stop: make(chan struct{}), reg: r.reg,
		pathCopies: map[peer.Path]*metrics.Counter{}, pathHealth: map[peer.Path]*[3]*metrics.Gauge{}, vportOut: map[uint16]*[4]*metrics.Counter{}}
	for _, uc := range r.cfg.Uplinks {
		pr.uplinks = append(pr.uplinks, uc.Name)
	}
	pr.pathOther = r.reg.Counter(`router_peer_path_copies_received_total{peer="`+pc.ID+`",uplink="other",remote="other"}`,
		"Data copies received from the peer per path (local uplink, remote address), duplicates included.")
	vportCounters := func(name string) {
		id := serviceID(name)
		if pr.vportOut[id] != nil {
			return
		}
		c := func(dir string) *metrics.Counter {
			return r.reg.Counter(fmt.Sprintf(`router_peer_vport_packets_total{peer=%q,service=%q,dir=%q}`, pc.ID, name, dir),
				"Packets of the flows to and from the peer, by service and direction.")
		}
		pr.vportOut[id] = &[4]*metrics.Counter{c("peer_to_client"), c("peer_to_service"), c("client_to_peer"), c("service_to_peer")}
	}
	for _, s := range pc.Services {
		vportCounters(s.Name)
	}
	for _, v := range r.cfg.VPorts {
		if v.Peer == pc.ID {
			vportCounters(v.Service)
		}
	}
	mc.OnPacket, mc.OnInput = pr.onVPortPacket, pr.onVPortInput
	mux, err := peer.NewMux(mc)
	if err != nil {
		return fail(err)
	}
	lc := peer.LinkConfig{
		LocalID: r.cfg.ClientID, PeerID: pc.ID, Key: key,
		Paths: peer.Config{Uplinks: len(conns), Health: uplink.HealthConfig{
			PingInterval: r.cfg.PingInterval.Duration, DownAfter: r.cfg.DownAfter.Duration}},
		Static:  pc.addrs,
		Scheme:  pc.scheme,
		Deliver: pr.deliver, // vport and LAN frames (peer_lan.go)
		Observe: pr.observe,
		Log:     r.log.With("peer", pc.ID),
	}
	if pc.rv.IsValid() {
		rk, _ := wire.ParseKey(pc.RendezvousKey)
		cl, err := rendezvous.NewClient(r.cfg.ClientID, rk, pc.ID)
		if err != nil {
			mux.Close()
			return fail(err)
		}
		lc.Rendezvous, lc.RendezvousAddr = cl, pc.rv
	}
	socks := peer.NewSockets(conns)
	link, err := peer.NewLink(lc, socks, now)
	if err != nil {
		mux.Close()
		return fail(err)
	}
	lbl := `{peer="` + pc.ID + `"}`
	g := func(name, help string) *metrics.Gauge { return r.reg.Gauge(name+lbl, help) }
	pr.link, pr.socks, pr.mux = link, socks, mux
	r.attachLAN(pr)
	pr.paths = g("router_peer_paths", "Paths (local uplink, remote address) to the peer.")
	pr.pathsUp = g("router_peer_paths_up", "Paths to the peer that answer keepalives.")
	pr.sent = g("router_peer_packets_sent", "Packets sent to the peer.")
	pr.delivered = g("router_peer_packets_delivered", "Packets from the peer delivered (first copies).")
	pr.dups = g("router_peer_duplicates_dropped", "Copies from the peer dropped as duplicates.")
	pr.relaySent = g("router_peer_relay_sent", "Datagrams sent to the peer through the rendezvous relay.")
	pr.relayR = g("router_peer_relay_received", "Datagrams from the peer received through the relay.")
	pr.wireBytes = g("router_peer_wire_bytes_sent", "Bytes of the data datagrams sent to the peer on direct paths (copies or shards, headers included).")
	pr.payloadBytes = g("router_peer_payload_bytes_sent", "Payload bytes sent to the peer (each packet once).")
	pr.rebuilt = g("router_peer_packets_rebuilt", "Coded packets from the peer rebuilt with parity (a shard lost or later than parity).")
	pr.lost = g("router_peer_packets_lost", "Coded packets from the peer given up with too few shards.")
	return pr, nil
}

// peerTicker drives a peer's keepalives, registrations and metrics.
func (r *Router) peerTicker(ctx context.Context, pr *peerRun) {
	defer r.wg.Done()
	tk := time.NewTicker(10 * time.Millisecond)
	defer tk.Stop()
	n := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-pr.stop:
			return
		case <-tk.C:
		}
		now := mono.Now()
		pr.link.Tick(now)
		if n++; n%50 != 0 {
			continue
		}
		pr.mux.Expire(now)
		if pr.lan != nil {
			pr.lan.sweep(now)
		}
		st := pr.link.Paths().Stats(now)
		up := 0
		for _, s := range st {
			if s.Health.Up && s.Health.PongsReceived > 0 {
				up++
			}
		}
		c := pr.link.Counters()
		for _, s := range st {
			pr.setPathHealth(s)
		}
		pr.paths.Set(int64(len(st)))
		pr.pathsUp.Set(int64(up))
		pr.sent.Set(int64(c.Sent))
		pr.delivered.Set(int64(c.Delivered))
		pr.dups.Set(int64(c.Dups))
		pr.relaySent.Set(int64(c.RelaySent))
		pr.relayR.Set(int64(c.RelayRecv))
		pr.wireBytes.Set(int64(c.Bytes))
		pr.payloadBytes.Set(int64(c.PayloadBytes))
		pr.rebuilt.Set(int64(c.Rebuilt))
		pr.lost.Set(int64(c.Lost))
	}
}

// closePeers closes every peer's sockets (their read loops end).
func (r *Router) closePeers() {
	for _, pr := range r.peerRuns() {
		close(pr.stop)
		pr.socks.Close()
		pr.mux.Close()
	}
}

// PeerStats is one peer's state, for tests and reports.
type PeerStats struct {
	ID       string
	Paths    []peer.PathStats
	Counters peer.LinkCounters
}

// Peers returns the state of every peer.
func (r *Router) Peers() []PeerStats {
	now := mono.Now()
	var out []PeerStats
	for _, pr := range r.peerRuns() {
		out = append(out, PeerStats{ID: pr.id, Paths: pr.link.Paths().Stats(now), Counters: pr.link.Counters()})
	}
	return out
}

// PeerStatus is one peer in GET /status.
type PeerStatus struct {
	ID        string           `json:"id"`
	Relay     bool             `json:"relay"` // the rendezvous relays: punching failed
	Sent      uint64           `json:"packets_sent"`
	Delivered uint64           `json:"packets_delivered"`
	Dups      uint64           `json:"duplicates_dropped"`
	Paths     []PeerPathStatus `json:"paths"`

	// Scheme: "copies" (one on every path) or the coded scheme, e.g.
	// "RAIC-6 2+2". WireBytes is what the data datagrams to the peer
	// weighed on the direct paths, PayloadBytes what they carried; Rebuilt
	// and Lost count the peer's coded packets rebuilt with parity and given
	// up.
	Scheme       string `json:"scheme"`
	WireBytes    uint64 `json:"wire_bytes"`
	PayloadBytes uint64 `json:"payload_bytes"`
	Rebuilt      uint64 `json:"packets_rebuilt"`
	Lost         uint64 `json:"packets_lost"`
}

// PeerPathStatus is one path (local uplink, remote address) to a peer.
type PeerPathStatus struct {
	Uplink       string  `json:"uplink"`
	Remote       string  `json:"remote"`
	RemoteUplink int     `json:"remote_uplink"` // -1 until the peer says
	Kind         string  `json:"kind"`          // how the address was learned
	Up           bool    `json:"up"`
	RTTMs        float64 `json:"rtt_ms"`
	Loss         float64 `json:"loss"` // share of keepalives unanswered (EWMA), 0..1
	PingsSent    uint64  `json:"pings"`
	PongsSeen    uint64  `json:"pongs"`
}

func (r *Router) peerStatus(now int64) []PeerStatus {
	var out []PeerStatus
	for _, pr := range r.peerRuns() {
		c := pr.link.Counters()
		ps := PeerStatus{ID: pr.id, Relay: pr.link.RelayActive(now), Sent: c.Sent, Delivered: c.Delivered, Dups: c.Dups}
		ps.Scheme, ps.WireBytes, ps.PayloadBytes, ps.Rebuilt, ps.Lost = pr.link.SchemeName(), c.Bytes, c.PayloadBytes, c.Rebuilt, c.Lost
		for _, s := range pr.link.Paths().Stats(now) {
			name := ""
			if s.Path.Local < len(pr.uplinks) {
				name = pr.uplinks[s.Path.Local]
			}
			ps.Paths = append(ps.Paths, PeerPathStatus{
				Uplink: name, Remote: s.Path.Remote.String(), RemoteUplink: s.RemoteUplink, Kind: s.Kind.String(),
				Up: s.Health.Up, RTTMs: ms(int64(s.Health.SRTT)), Loss: s.Health.Loss,
				PingsSent: s.Health.PingsSent, PongsSeen: s.Health.PongsReceived,
			})
		}
		out = append(out, ps)
	}
	return out
}

// PeerVPortAddr returns the bound address of the vport to service of peer.
func (r *Router) PeerVPortAddr(peerID, service string) (netip.AddrPort, bool) {
	for _, pr := range r.peerRuns() {
		if pr.id == peerID {
			return pr.mux.ListenAddr(serviceID(service))
		}
	}
	return netip.AddrPort{}, false
}
