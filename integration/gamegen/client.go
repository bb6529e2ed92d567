package gamegen

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/mono"
)

// ClientConfig configures one client run.
type ClientConfig struct {
	// Server is where ticks go (a relay or proxy in front of it is fine:
	// replies are accepted only from this address).
	Server netip.AddrPort
	// Local is the address RunClient binds; the zero value picks any.
	Local netip.AddrPort
	// Rate is the tick rate in packets per second (> 0).
	Rate float64
	// Size is the tick length in bytes (at least MinSize; 0 means MinSize).
	Size int
	// Duration is how long ticks are measured, after Warmup.
	Duration time.Duration
	// Deadline is the one-way delay above which a packet counts as late
	// (default 50 ms). Late packets are received, not lost. The ticks carry
	// it to the server in units of 100 µs, so it is rounded to that and
	// limited to 6.5535 s.
	Deadline time.Duration
	// Echo asks the server to echo every tick, for RTT.
	Echo bool
	// Warmup ticks are sent first and flagged; neither side counts them.
	Warmup time.Duration
	// Drain is how long the client waits for packets still in flight, once
	// after its last tick and once after the server's report (default
	// twice Deadline, at least 200 ms). Packets slower than this are lost.
	Drain time.Duration
	// Spin is the busy-wait window before each due tick: Go timers wake up
	// to a millisecond late, so at high rates a pure sleep sends ticks in
	// small bursts (the long-run rate stays exact). 0 sleeps only.
	Spin time.Duration
	// ReportTries bounds the report requests (default 5), each waiting
	// ReportWait (default 250 ms) for the answer.
	ReportTries int
	ReportWait  time.Duration
}

// ErrNoServerReport is returned, with a Report holding everything measured
// at the client, when the server never answered the report request.
var ErrNoServerReport = errors.New("gamegen: no report from the server")

func (c *ClientConfig) normalize() error {
	if !c.Server.IsValid() || c.Server.Port() == 0 {
		return fmt.Errorf("gamegen: invalid server address %v", c.Server)
	}
	// An IPv4 server is kept as IPv4: resolvers hand out IPv4-mapped IPv6.
	c.Server = netip.AddrPortFrom(c.Server.Addr().Unmap(), c.Server.Port())
	if !(c.Rate > 0) || c.Rate > 1e6 {
		return fmt.Errorf("gamegen: rate %v out of range (0, 1e6]", c.Rate)
	}
	if c.Size == 0 {
		c.Size = MinSize
	}
	if c.Size < MinSize || c.Size > MaxSize {
		return fmt.Errorf("gamegen: size %d out of range [%d, %d]", c.Size, MinSize, MaxSize)
	}
	if c.Duration <= 0 {
		return fmt.Errorf("gamegen: duration %v must be positive", c.Duration)
	}
	if c.Warmup < 0 || c.Spin < 0 || c.Drain < 0 || c.Deadline < 0 {
		return errors.New("gamegen: negative warmup, spin, drain or deadline")
	}
	if c.Deadline == 0 {
		c.Deadline = 50 * time.Millisecond
	}
	c.Deadline = min(max(c.Deadline.Round(deadlineUnit), deadlineUnit), maxDeadline)
	if c.Drain == 0 {
		c.Drain = max(2*c.Deadline, 200*time.Millisecond)
	}
	if c.ReportTries <= 0 {
		c.ReportTries = 5
	}
	if c.ReportWait <= 0 {
		c.ReportWait = 250 * time.Millisecond
	}
	return nil
}

// RunClient binds a socket on cfg.Local and runs the client on it.
func RunClient(ctx context.Context, cfg ClientConfig) (*Report, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	local := cfg.Local
	if !local.Addr().IsValid() { // any address, of the server's family
		local = netip.AddrPortFrom(netip.IPv4Unspecified(), local.Port())
		if cfg.Server.Addr().Is6() {
			local = netip.AddrPortFrom(netip.IPv6Unspecified(), local.Port())
		}
	}
	conn, err := net.ListenUDP(udpNetwork(local.Addr()), net.UDPAddrFromAddrPort(local))
	if err != nil {
		return nil, fmt.Errorf("gamegen: listen: %w", err)
	}
	defer conn.Close()
	setBuffers(conn)
	return RunClientConn(ctx, conn, cfg)
}

// client is the state of one run.
type client struct {
	cfg    ClientConfig
	conn   *net.UDPConn
	server netip.AddrPort
	run    uint32

	stopping atomic.Bool
	// Owned by the receive goroutine until it exits.
	down, rtt receiver
	reply     serverReply
	gotReply  bool
	readErr   error
	replyCh   chan struct{} // signalled once, when the first reply arrives
}

// RunClientConn runs the client on conn, which may be unconnected or
// connected to cfg.Server. It sends ticks for cfg.Warmup+cfg.Duration (less if
// ctx ends), waits cfg.Drain, asks the server for its counters, waits
// cfg.Drain again and returns the report. After ctx ends the report exchange
// still runs, bounded by ReportTries×ReportWait+2×Drain, so an interrupted run
// still reports. The conn's read deadline is cleared before returning.
func RunClientConn(ctx context.Context, conn *net.UDPConn, cfg ClientConfig) (*Report, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	c := &client{
		cfg:     cfg,
		conn:    conn,
		server:  cfg.Server,
		run:     rand.Uint32(),
		replyCh: make(chan struct{}, 1),
	}
	c.down.deadline = int64(cfg.Deadline)
	connected := conn.RemoteAddr() != nil

	var wg sync.WaitGroup
	wg.Go(c.receive)

	var lag receiver // pacing error: actual minus scheduled send time
	buf := make([]byte, cfg.Size)
	hf := header{kind: KindClientTick, run: c.run, dl: uint16(cfg.Deadline / deadlineUnit)}
	if cfg.Echo {
		hf.flags = flagEcho
	}
	putHeader(buf, hf, len(buf))
	nWarm := ticks(cfg.Rate, cfg.Warmup)
	nTotal := nWarm + ticks(cfg.Rate, cfg.Duration)
	var sent, sendErrs uint64
	var first, last int64
	pc := newPacer(mono.Now(), cfg.Rate, cfg.Spin)
	for i := uint64(0); i < nTotal; i++ {
		due := pc.due(i)
		if !pc.waitUntil(due, ctx.Done(), nil) {
			break
		}
		now := mono.Now()
		warm := i < nWarm
		buf[6] = hf.flags
		if warm {
			buf[6] |= flagWarmup
		}
		setSeqTs(buf, i, now)
		var err error
		if connected {
			_, err = conn.Write(buf)
		} else {
			_, err = conn.WriteToUDPAddrPort(buf, c.server)
		}
		if err != nil {
			sendErrs++
			continue
		}
		if warm {
			continue
		}
		if sent == 0 {
			first = now
		}
		last = now
		sent++
		lag.add(i, due, now)
	}
	pc.close()

	time.Sleep(cfg.Drain)
	gotReply := c.requestReport(connected, sent)
	time.Sleep(cfg.Drain)

	c.stopping.Store(true)
	conn.SetReadDeadline(time.Unix(1, 0))
	wg.Wait()
	conn.SetReadDeadline(time.Time{})

	r := &Report{
		Server:       cfg.Server.String(),
		Rate:         cfg.Rate,
		Size:         cfg.Size,
		Duration:     cfg.Duration,
		Warmup:       cfg.Warmup,
		SendErrors:   sendErrs,
		SendLag:      lag.latency(),
		ServerReport: gotReply,
		Echo:         cfg.Echo,
	}
	if sent > 1 && last > first {
		r.AchievedRate = float64(sent-1) * 1e9 / float64(last-first)
	}
	r.Up = DirectionStats{Sent: sent, Deadline: cfg.Deadline}
	r.Down = c.down.stats()
	if gotReply {
		r.Up = c.reply.up
		r.Up.Sent = sent
		r.Up.finish()
		r.Down.Sent = c.reply.downSent
		r.Down.finish()
		r.ServerRate = c.reply.rate
		r.ServerSize = int(c.reply.size)
		r.ServerEchoed = c.reply.echoed
	}
	if cfg.Echo {
		r.RTT = c.rtt.latency()
		r.EchoReceived = c.rtt.received
		r.EchoDuplicates = c.rtt.dups
		r.EchoLost = int64(sent) - int64(c.rtt.received)
	}
	if c.readErr != nil {
		return r, fmt.Errorf("gamegen: read: %w", c.readErr)
	}
	if !gotReply {
		return r, ErrNoServerReport
	}
	if err := ctx.Err(); err != nil {
		return r, err
	}
	return r, nil
}

// ticks is the number of ticks scheduled in d at rate: those at i/rate < d.
func ticks(rate float64, d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	return uint64(math.Ceil(rate*d.Seconds() - 1e-9))
}

// requestReport asks the server for its counters until it answers or the
// tries run out. The request carries the number of ticks sent, for the
// server's logs and for a human reading a capture.
func (c *client) requestReport(connected bool, sent uint64) bool {
	req := make([]byte, HeaderLen)
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for range c.cfg.ReportTries {
		putHeader(req, header{kind: KindReportReq, run: c.run, seq: sent, ts: mono.Now()}, len(req))
		if connected {
			c.conn.Write(req)
		} else {
			c.conn.WriteToUDPAddrPort(req, c.server)
		}
		t.Reset(c.cfg.ReportWait)
		select {
		case <-c.replyCh:
			return true
		case <-t.C:
		}
	}
	return false
}

// receive reads datagrams until the run stops.
func (c *client) receive() {
	buf := make([]byte, maxReadLen)
	for {
		n, addr, err := c.conn.ReadFromUDPAddrPort(buf)
		now := mono.Now()
		if err != nil {
			if c.stopping.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			if errors.Is(err, os.ErrDeadlineExceeded) || transient(err) {
				continue
			}
			c.readErr = err // the socket is unusable: what arrived so far is the result
			return
		}
		if addr.Port() != c.server.Port() || addr.Addr().Unmap() != c.server.Addr() {
			c.down.malformed++
			continue
		}
		h, ok := parseHeader(buf[:n])
		if !ok || h.run != c.run {
			c.down.malformed++
			continue
		}
		warm := h.flags&flagWarmup != 0
		switch h.kind {
		case KindServerTick:
			if warm {
				c.down.warmup++
			} else {
				c.down.add(h.seq, h.ts, now)
			}
		case KindEcho:
			if warm {
				c.rtt.warmup++
			} else {
				c.rtt.add(h.seq, h.ts, now)
			}
		case KindReportReply:
			if !c.gotReply {
				c.reply.unmarshal(buf[HeaderLen:n])
				c.gotReply = true
				c.replyCh <- struct{}{}
			}
		default:
			c.down.malformed++
		}
	}
}
