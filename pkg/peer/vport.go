package peer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/mono"
)

// Virtual ports (explicit mode). A VPort is a local UDP port whose traffic
// goes to a service on the peer's side: the peer's Service with the same ID.
// Each client address on a VPort is a flow; the peer sends the flow to its
// service from a socket of the flow's own (like a NAT), and the service's
// replies come back the same way and leave the VPort towards the client.
//
// Frames inside a Link packet:
//
//	0     kind (frameToService, frameReply)
//	1..2  vport ID
//	3..6  flow ID (chosen by the VPort side)
//	7..   the UDP payload
const (
	frameToService = 1
	frameReply     = 2
	frameHeader    = 7
)

// VPort is one local virtual port.
type VPort struct {
	ID     uint16
	Listen netip.AddrPort
}

// Service is where the peer's VPort with the same ID leads.
type Service struct {
	ID     uint16
	Target netip.AddrPort
}

// MuxConfig configures a Mux.
type MuxConfig struct {
	VPorts   []VPort
	Services []Service
	// MaxFlows bounds the flows on each side (default 1024); the least
	// recently used one is evicted and counted. FlowIdle (default 60 s)
	// closes a silent flow.
	MaxFlows int
	FlowIdle time.Duration
	// Listen and Dial open sockets; tests set them to open sockets in a
	// network namespace. Defaults: net.ListenUDP and net.DialUDP.
	Listen func(netip.AddrPort) (*net.UDPConn, error)
	Dial   func(netip.AddrPort) (*net.UDPConn, error)
	// OnPacket, when set, sees every payload the Mux writes out (towards a
	// service, or back to a client), for measurements.
	OnPacket func(vport uint16, toService bool, payload []byte)
	// OnInput, when set, sees every payload the Mux reads to send to the
	// peer (from a local client of a vport, or from a local service).
	OnInput func(vport uint16, fromService bool, payload []byte)
	Log     *slog.Logger
}

// Mux carries the flows of virtual ports over a Link.
type Mux struct {
	cfg  MuxConfig
	link atomic.Pointer[Link]

	listeners map[uint16]*vlistener
	services  map[uint16]netip.AddrPort

	mu      sync.Mutex
	out     map[flowKey]*outFlow // service side
	evicted atomic.Uint64
	dropped atomic.Uint64
	wg      sync.WaitGroup
	closed  atomic.Bool
}

type flowKey struct {
	vport uint16
	flow  uint32
}

type vlistener struct {
	id   uint16
	conn *net.UDPConn
	mu   sync.Mutex
	next uint32
	byIP map[netip.AddrPort]*inFlow
	byID map[uint32]*inFlow
}

type inFlow struct {
	id     uint32
	client netip.AddrPort
	last   atomic.Int64
}

type outFlow struct {
	conn *net.UDPConn
	last atomic.Int64
}

// NewMux opens the VPorts' sockets. Attach a Link before traffic flows.
func NewMux(cfg MuxConfig) (*Mux, error) {
	if cfg.MaxFlows <= 0 {
		cfg.MaxFlows = 1024
	}
	if cfg.FlowIdle <= 0 {
		cfg.FlowIdle = 60 * time.Second
	}
	if cfg.Listen == nil {
		cfg.Listen = func(a netip.AddrPort) (*net.UDPConn, error) { return net.ListenUDP("udp", net.UDPAddrFromAddrPort(a)) }
	}
	if cfg.Dial == nil {
		cfg.Dial = func(a netip.AddrPort) (*net.UDPConn, error) {
			return net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(a))
		}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	m := &Mux{cfg: cfg, listeners: map[uint16]*vlistener{}, services: map[uint16]netip.AddrPort{}, out: map[flowKey]*outFlow{}}
	for _, s := range cfg.Services {
		if _, dup := m.services[s.ID]; dup {
			return nil, fmt.Errorf("peer: service %d configured twice", s.ID)
		}
		m.services[s.ID] = s.Target
	}
	for _, v := range cfg.VPorts {
		if _, dup := m.listeners[v.ID]; dup {
			m.Close()
			return nil, fmt.Errorf("peer: vport %d configured twice", v.ID)
		}
		c, err := cfg.Listen(v.Listen)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("peer: vport %d: %v", v.ID, err)
		}
		m.listeners[v.ID] = &vlistener{id: v.ID, conn: c, byIP: map[netip.AddrPort]*inFlow{}, byID: map[uint32]*inFlow{}}
	}
	return m, nil
}

// ListenAddr returns the bound address of vport id, if there is one.
func (m *Mux) ListenAddr(id uint16) (netip.AddrPort, bool) {
	vl := m.listeners[id]
	if vl == nil {
		return netip.AddrPort{}, false
	}
	return vl.conn.LocalAddr().(*net.UDPAddr).AddrPort(), true
}

// Attach sets the link and starts the VPorts' read loops.
func (m *Mux) Attach(l *Link) {
	m.link.Store(l)
	for _, vl := range m.listeners {
		m.wg.Add(1)
		go m.readVPort(vl)
	}
}

// Deliver is the Link's Deliver function.
func (m *Mux) Deliver(b []byte) {
	if len(b) < frameHeader {
		m.dropped.Add(1)
		return
	}
	id, flow := binary.BigEndian.Uint16(b[1:]), binary.BigEndian.Uint32(b[3:])
	payload := b[frameHeader:]
	switch b[0] {
	case frameToService:
		m.toService(id, flow, payload)
	case frameReply:
		vl := m.listeners[id]
		if vl == nil {
			m.dropped.Add(1)
			return
		}
		vl.mu.Lock()
		f := vl.byID[flow]
		vl.mu.Unlock()
		if f == nil {
			m.dropped.Add(1)
			return
		}
		f.last.Store(mono.Now())
		if m.cfg.OnPacket != nil {
			m.cfg.OnPacket(id, false, payload)
		}
		vl.conn.WriteToUDPAddrPort(payload, f.client)
	default:
		m.dropped.Add(1)
	}
}

func (m *Mux) readVPort(vl *vlistener) {
	defer m.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := vl.conn.ReadFromUDPAddrPort(buf[frameHeader:])
		if err != nil {
			return
		}
		now := mono.Now()
		f := vl.flow(from, m.cfg.MaxFlows, &m.evicted)
		f.last.Store(now)
		buf[0] = frameToService
		binary.BigEndian.PutUint16(buf[1:], vl.id)
		binary.BigEndian.PutUint32(buf[3:], f.id)
		if m.cfg.OnInput != nil {
			m.cfg.OnInput(vl.id, false, buf[frameHeader:frameHeader+n])
		}
		if l := m.link.Load(); l != nil {
			l.Send(buf[:frameHeader+n], now)
		}
	}
}

// flow returns the flow of client, creating it (evicting the oldest).
func (vl *vlistener) flow(client netip.AddrPort, max int, evicted *atomic.Uint64) *inFlow {
	vl.mu.Lock()
	defer vl.mu.Unlock()
	if f := vl.byIP[client]; f != nil {
		return f
	}
	if len(vl.byIP) >= max {
		var old *inFlow
		for _, f := range vl.byIP {
			if old == nil || f.last.Load() < old.last.Load() {
				old = f
			}
		}
		delete(vl.byIP, old.client)
		delete(vl.byID, old.id)
		evicted.Add(1)
	}
	vl.next++
	f := &inFlow{id: vl.next, client: client}
	vl.byIP[client], vl.byID[f.id] = f, f
	return f
}

func (m *Mux) toService(id uint16, flow uint32, payload []byte) {
	target, ok := m.services[id]
	if !ok {
		m.dropped.Add(1)
		return
	}
	k := flowKey{id, flow}
	m.mu.Lock()
	f := m.out[k]
	if f == nil && !m.closed.Load() {
		var err error
		f, err = m.openOut(k, target)
		if err != nil {
			m.mu.Unlock()
			m.dropped.Add(1)
			m.cfg.Log.Warn("vport: cannot reach service", "vport", id, "target", target, "err", err)
			return
		}
	}
	m.mu.Unlock()
	if f == nil {
		return
	}
	f.last.Store(mono.Now())
	if m.cfg.OnPacket != nil {
		m.cfg.OnPacket(id, true, payload)
	}
	f.conn.Write(payload)
}

// openOut opens the socket of a new service-side flow and its read loop; m.mu is held.
func (m *Mux) openOut(k flowKey, target netip.AddrPort) (*outFlow, error) {
	if len(m.out) >= m.cfg.MaxFlows {
		var oldK flowKey
		var old *outFlow
		for key, f := range m.out {
			if old == nil || f.last.Load() < old.last.Load() {
				oldK, old = key, f
			}
		}
		delete(m.out, oldK)
		old.conn.Close()
		m.evicted.Add(1)
	}
	c, err := m.cfg.Dial(target)
	if err != nil {
		return nil, err
	}
	f := &outFlow{conn: c}
	m.out[k] = f
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		buf := make([]byte, 2048)
		for {
			n, err := c.Read(buf[frameHeader:])
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // ICMP port unreachable and the like
			}
			now := mono.Now()
			f.last.Store(now)
			buf[0] = frameReply
			binary.BigEndian.PutUint16(buf[1:], k.vport)
			binary.BigEndian.PutUint32(buf[3:], k.flow)
			if m.cfg.OnInput != nil {
				m.cfg.OnInput(k.vport, true, buf[frameHeader:frameHeader+n])
			}
			if l := m.link.Load(); l != nil {
				l.Send(buf[:frameHeader+n], now)
			}
		}
	}()
	return f, nil
}

// Expire closes flows silent for FlowIdle.
func (m *Mux) Expire(now int64) {
	idle := int64(m.cfg.FlowIdle)
	m.mu.Lock()
	for k, f := range m.out {
		if now-f.last.Load() > idle {
			delete(m.out, k)
			f.conn.Close()
		}
	}
	m.mu.Unlock()
	for _, vl := range m.listeners {
		vl.mu.Lock()
		for c, f := range vl.byIP {
			if now-f.last.Load() > idle {
				delete(vl.byIP, c)
				delete(vl.byID, f.id)
			}
		}
		vl.mu.Unlock()
	}
}

// Close closes every socket and waits for the read loops.
func (m *Mux) Close() error {
	m.closed.Store(true)
	for _, vl := range m.listeners {
		vl.conn.Close()
	}
	m.mu.Lock()
	for k, f := range m.out {
		f.conn.Close()
		delete(m.out, k)
	}
	m.mu.Unlock()
	m.wg.Wait()
	return nil
}
