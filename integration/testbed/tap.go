package testbed

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
)

// Offsets and values of the gamegen wire header that a Tap reads. The tap only
// looks at datagrams; it never depends on gamegen internals beyond the
// documented header layout.
const (
	genMagic      = 0x474d474e // "GMGN"
	genHeaderLen  = 32
	genKindClient = 1 // client tick
	genKindServer = 2 // server tick
	genFlagWarmup = 1 << 1
)

// Tap is a transparent UDP relay between one gamegen client and whatever it
// talks to (a server, or a router forward). It records the sequence number and
// send stamp of every measured game tick passing each way, so that packets
// lost inside a time window (an outage) can be counted exactly: the tap on the
// sending side says what left, the tap on the receiving side what arrived.
//
// A relay hop costs a few tens of microseconds, the same on every path, so
// comparisons between paths stay fair.
type Tap struct {
	down *net.UDPConn // where the client side sends
	up   *net.UDPConn // towards the upstream target
	to   netip.AddrPort

	mu   sync.Mutex
	peer netip.AddrPort
	// Client ticks seen going up, server ticks seen coming back: seq → send stamp.
	clientTicks map[uint64]int64
	serverTicks map[uint64]int64

	wg sync.WaitGroup
}

// NewTap relays between down (the client-facing socket) and up (the socket
// that talks to target). Both sockets must already be bound, in whatever
// namespace they belong to; the tap owns and closes them.
func NewTap(down, up *net.UDPConn, target netip.AddrPort) *Tap {
	t := &Tap{down: down, up: up, to: target,
		clientTicks: make(map[uint64]int64), serverTicks: make(map[uint64]int64)}
	t.wg.Add(2)
	go t.pumpUp()
	go t.pumpDown()
	return t
}

// Addr is where the client side sends.
func (t *Tap) Addr() netip.AddrPort { return t.down.LocalAddr().(*net.UDPAddr).AddrPort() }

// Close stops the relay and waits for its goroutines.
func (t *Tap) Close() {
	t.down.Close()
	t.up.Close()
	t.wg.Wait()
}

// record notes a measured tick of the wanted kind.
func (t *Tap) record(b []byte, kind byte, into map[uint64]int64) {
	if len(b) < genHeaderLen || binary.BigEndian.Uint32(b) != genMagic || b[5] != kind || b[6]&genFlagWarmup != 0 {
		return
	}
	seq := binary.BigEndian.Uint64(b[16:])
	ts := int64(binary.BigEndian.Uint64(b[24:]))
	t.mu.Lock()
	if _, ok := into[seq]; !ok {
		into[seq] = ts
	}
	t.mu.Unlock()
}

func (t *Tap) pumpUp() {
	defer t.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := t.down.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		t.mu.Lock()
		t.peer = from
		t.mu.Unlock()
		// Forward first, record after: the measurement must not delay the packet.
		t.up.WriteToUDPAddrPort(buf[:n], t.to)
		t.record(buf[:n], genKindClient, t.clientTicks)
	}
}

func (t *Tap) pumpDown() {
	defer t.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, _, err := t.up.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		t.mu.Lock()
		peer := t.peer
		t.mu.Unlock()
		if peer.IsValid() {
			t.down.WriteToUDPAddrPort(buf[:n], peer)
		}
		t.record(buf[:n], genKindServer, t.serverTicks)
	}
}

// snapshot copies the recorded ticks.
func (t *Tap) snapshot() (client, server map[uint64]int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	client = make(map[uint64]int64, len(t.clientTicks))
	for k, v := range t.clientTicks {
		client[k] = v
	}
	server = make(map[uint64]int64, len(t.serverTicks))
	for k, v := range t.serverTicks {
		server[k] = v
	}
	return client, server
}

// Window is a span of CLOCK_MONOTONIC time, [From, To) in nanoseconds.
type Window struct{ From, To int64 }

// WindowLoss counts the ticks sent inside w and those of them that never
// arrived, for one direction.
type WindowLoss struct {
	Sent int `json:"sent"`
	Lost int `json:"lost"`
}

// lostIn compares what the sending tap saw leave with what the receiving tap
// saw arrive, for ticks whose send stamp falls in w.
func lostIn(sent, arrived map[uint64]int64, w Window) WindowLoss {
	var wl WindowLoss
	for seq, ts := range sent {
		if ts < w.From || ts >= w.To {
			continue
		}
		wl.Sent++
		if _, ok := arrived[seq]; !ok {
			wl.Lost++
		}
	}
	return wl
}
