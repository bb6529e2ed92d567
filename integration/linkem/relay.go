package linkem

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/mono"
)

// Relay limits.
const (
	// MaxRelayClients bounds the client mapping; a new client beyond it is dropped
	// (counted in Link.Stats as overflow) until an idle mapping expires.
	MaxRelayClients = 4096
	// RelayIdleTimeout removes a client mapping, and closes its upstream socket,
	// after this long without a packet in either direction.
	RelayIdleTimeout = 2 * time.Minute
)

// Direction is the way a datagram crosses a relay.
type Direction uint8

const (
	// Upstream is from a client towards the upstream address.
	Upstream Direction = iota
	// Downstream is a reply from the upstream back to its client.
	Downstream
)

func (d Direction) String() string {
	if d == Upstream {
		return "upstream"
	}
	return "downstream"
}

// Hook decides about one datagram before the link's own impairments apply:
// drop discards it, otherwise delay is added to the time the link delivers it
// (so a hook can reorder). pkt is only valid during the call and must not be
// changed. A test uses a hook to drop or hold back exactly the datagrams it
// means to (the third hello, every ack of one session...), which random loss
// cannot. It runs on the relay's readers: keep it short.
type Hook func(dir Direction, pkt []byte) (drop bool, delay time.Duration)

// UDPRelay forwards datagrams from clients to one upstream address through an
// emulated link, and replies back through another. Like a NAT it gives each client
// address its own upstream socket, so the upstream sees one peer per client. It
// needs no privileges and stands in for an impaired uplink in loopback tests.
type UDPRelay struct {
	ln       *net.UDPConn
	upstream netip.AddrPort
	up, down *Link
	upMu     sync.Mutex // Decide is single-caller: one reader, but keep it explicit
	downMu   sync.Mutex // many per-client readers share the down link
	upS      *scheduler
	downS    *scheduler
	hook     atomic.Pointer[Hook]
	hooked   atomic.Uint64 // datagrams the hook dropped

	mu      sync.Mutex
	clients map[netip.AddrPort]*relayClient
	closed  bool
	stop    chan struct{}
	wg      sync.WaitGroup
}

type relayClient struct {
	addr netip.AddrPort
	conn *net.UDPConn
	last int64 // mono ns of the last packet either way, guarded by UDPRelay.mu
}

// NewUDPRelay listens on listen and relays to upstream, applying up to packets
// towards upstream and down to replies. Outage windows count from the call.
// relaySocketBuffer is the receive buffer asked for on the relay's sockets
// (the kernel caps it at net.core.rmem_max).
const relaySocketBuffer = 4 << 20

func NewUDPRelay(listen, upstream netip.AddrPort, up, down Config) (*UDPRelay, error) {
	if !upstream.IsValid() || upstream.Port() == 0 {
		return nil, errors.New("linkem: relay needs an upstream address and port")
	}
	now := mono.Now()
	lu, err := New(up, now)
	if err != nil {
		return nil, err
	}
	ld, err := New(down, now)
	if err != nil {
		return nil, err
	}
	ln, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(listen))
	if err != nil {
		return nil, err
	}
	// The emulator must not add loss of its own: a short stall of the host
	// with the default buffer (~200 KB, a few hundred small datagrams) would.
	_ = ln.SetReadBuffer(relaySocketBuffer)
	r := &UDPRelay{ln: ln, upstream: upstream, up: lu, down: ld, clients: make(map[netip.AddrPort]*relayClient), stop: make(chan struct{})}
	send := func(it *item) {
		if it.dst.IsValid() {
			_, _ = it.conn.WriteToUDPAddrPort(it.buf, it.dst)
		} else {
			_, _ = it.conn.Write(it.buf)
		}
	}
	if r.upS, err = newScheduler(lu, 0, send); err != nil {
		ln.Close()
		return nil, err
	}
	if r.downS, err = newScheduler(ld, 0, send); err != nil {
		r.upS.close()
		ln.Close()
		return nil, err
	}
	r.wg.Add(2)
	go r.readClients()
	go r.expire()
	return r, nil
}

// Addr returns the address clients send to.
func (r *UDPRelay) Addr() netip.AddrPort {
	return r.ln.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Up and Down return the links, for their counters and seeds.
func (r *UDPRelay) Up() *Link   { return r.up }
func (r *UDPRelay) Down() *Link { return r.down }

// SetHook makes h decide about every datagram from now on, both ways; nil
// removes it.
func (r *UDPRelay) SetHook(h Hook) {
	if h == nil {
		r.hook.Store(nil)
		return
	}
	r.hook.Store(&h)
}

// HookDropped returns how many datagrams the hook has dropped.
func (r *UDPRelay) HookDropped() uint64 { return r.hooked.Load() }

// consult runs the hook, if any, on pkt.
func (r *UDPRelay) consult(dir Direction, pkt []byte) (drop bool, delay int64) {
	h := r.hook.Load()
	if h == nil {
		return false, 0
	}
	drop, d := (*h)(dir, pkt)
	if drop {
		r.hooked.Add(1)
		return true, 0
	}
	return false, max(int64(d), 0)
}

// Clients returns the number of client mappings.
func (r *UDPRelay) Clients() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.clients)
}

// Close stops the relay, closes all its sockets and discards packets in flight.
func (r *UDPRelay) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	close(r.stop)
	// The schedulers stop first so no delivery writes to a closed socket.
	r.mu.Unlock()
	r.upS.close()
	r.downS.close()
	err := r.ln.Close()
	r.mu.Lock()
	for _, c := range r.clients {
		c.conn.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
	return err
}

func (r *UDPRelay) client(addr netip.AddrPort, now int64) *relayClient {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	if c := r.clients[addr]; c != nil {
		c.last = now
		return c
	}
	if len(r.clients) >= MaxRelayClients {
		return nil
	}
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(r.upstream))
	if err != nil {
		return nil
	}
	_ = conn.SetReadBuffer(relaySocketBuffer)
	c := &relayClient{addr: addr, conn: conn, last: now}
	r.clients[addr] = c
	r.wg.Add(1)
	go r.readUpstream(c)
	return c
}

func (r *UDPRelay) readClients() {
	defer r.wg.Done()
	buf := make([]byte, maxPacket)
	for {
		n, from, err := r.ln.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		now := mono.Now()
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		c := r.client(from, now)
		drop, extra := r.consult(Upstream, buf[:n])
		if drop {
			continue
		}
		r.upMu.Lock()
		deps, k, cause := r.up.Decide(now, n)
		r.upMu.Unlock()
		if cause != Delivered {
			continue
		}
		for i := 0; i < k; i++ {
			it := r.upS.get(buf[:n])
			if c == nil || it == nil {
				r.up.CountOverflow()
				if it != nil {
					r.upS.put(it)
				}
				continue
			}
			it.at, it.conn = deps[i]+extra, c.conn
			if !r.upS.push(it) {
				r.up.CountOverflow()
			}
		}
	}
}

func (r *UDPRelay) readUpstream(c *relayClient) {
	defer r.wg.Done()
	buf := make([]byte, maxPacket)
	for {
		n, err := c.conn.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. ECONNREFUSED from an earlier ICMP error
		}
		now := mono.Now()
		r.mu.Lock()
		c.last = now
		r.mu.Unlock()
		drop, extra := r.consult(Downstream, buf[:n])
		if drop {
			continue
		}
		r.downMu.Lock()
		deps, k, cause := r.down.Decide(now, n)
		r.downMu.Unlock()
		if cause != Delivered {
			continue
		}
		for i := 0; i < k; i++ {
			it := r.downS.get(buf[:n])
			if it == nil {
				r.down.CountOverflow()
				continue
			}
			it.at, it.conn, it.dst = deps[i]+extra, r.ln, c.addr
			if !r.downS.push(it) {
				r.down.CountOverflow()
			}
		}
	}
}

func (r *UDPRelay) expire() {
	defer r.wg.Done()
	t := time.NewTicker(RelayIdleTimeout / 4)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		now := mono.Now()
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return
		}
		for a, c := range r.clients {
			if now-c.last > int64(RelayIdleTimeout) {
				c.conn.Close() // its reader sees ErrClosed and ends
				delete(r.clients, a)
			}
		}
		r.mu.Unlock()
	}
}
