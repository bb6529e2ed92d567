package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
)

// A router that can use several proxies asks each, with a Probe, how far it is
// from the game server; it adds its own RTT to the proxy and picks the smallest
// sum. The proxy answers at once from a table of RTTs it measures in the
// background with ICMP echo: a probe never waits for a measurement, and a target
// not yet measured is answered with 0 (unknown) while its measurement starts.
// Only targets in the asking client's allowlist are ever measured, so a client
// cannot make the proxy ping arbitrary hosts; for the others the answer is "not
// allowed".

// Defaults of the probe settings.
const (
	DefaultProbeTTL        = 30 * time.Second
	DefaultProbeMaxTargets = 1024
)

const (
	// probeEchoes is how many echo requests one measurement sends; the smallest
	// RTT is kept (queueing only ever adds).
	probeEchoes = 3
	// probeTimeout bounds the wait for one echo reply.
	probeTimeout = time.Second
	// probeWorkers is how many measurements run at once.
	probeWorkers = 4
)

// measureFunc returns the RTT to a host.
type measureFunc func(ctx context.Context, to netip.Addr) (time.Duration, error)

// prober keeps the measured RTTs to the targets clients asked about: a bounded
// table with a TTL per measurement.
type prober struct {
	ttl int64 // ns; a measurement older than this is renewed when asked about
	max int

	mu      sync.Mutex
	targets map[netip.Addr]*rttEntry
	measure measureFunc // replaceable in tests; read under mu

	queue  chan netip.Addr
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	log    *slog.Logger

	asked, measured, failed, evicted *metrics.Counter
}

type rttEntry struct {
	rtt        time.Duration
	measuredAt int64 // mono ns of the last successful measurement; 0 = never
	triedAt    int64 // mono ns the last measurement was started
	askedAt    int64 // mono ns of the last probe about this target (for eviction)
	pending    bool
}

func newProber(cfg *Config, log *slog.Logger, reg *metrics.Registry) *prober {
	ctx, cancel := context.WithCancel(context.Background())
	p := &prober{
		ttl: int64(cfg.ProbeTTL.Duration), max: cfg.ProbeMaxTargets,
		targets: map[netip.Addr]*rttEntry{}, measure: icmpRTT,
		queue: make(chan netip.Addr, 64), ctx: ctx, cancel: cancel, log: log,
		asked:    reg.Counter("proxy_probes_total", "Probes answered."),
		measured: reg.Counter("proxy_probe_measurements_total", "RTT measurements to servers that succeeded."),
		failed:   reg.Counter("proxy_probe_measurement_errors_total", "RTT measurements to servers that failed."),
		evicted:  reg.Counter("proxy_probe_targets_evicted_total", "Measured targets forgotten because the table was full."),
	}
	p.wg.Add(probeWorkers)
	for range probeWorkers {
		go p.worker()
	}
	return p
}

// close stops the measurements.
func (p *prober) close() {
	p.cancel()
	p.wg.Wait()
}

func (p *prober) setMeasure(f measureFunc) {
	p.mu.Lock()
	p.measure = f
	p.mu.Unlock()
}

// lookup returns the RTT to a, or 0 when it is unknown or too old to trust, and
// starts a measurement when none is fresh. It never blocks on a measurement.
func (p *prober) lookup(a netip.Addr, now int64) time.Duration {
	a = a.Unmap()
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.targets[a]
	if e == nil {
		if len(p.targets) >= p.max {
			p.evictOldest()
		}
		e = &rttEntry{}
		p.targets[a] = e
	}
	e.askedAt = now
	// A failed measurement is not retried within the TTL either, so an
	// unreachable target costs one measurement per TTL at most.
	if !e.pending && (e.triedAt == 0 || now-e.triedAt > p.ttl) {
		select {
		case p.queue <- a:
			e.pending, e.triedAt = true, now
		default: // every worker busy and the queue full: the next probe retries
		}
	}
	// A measurement twice the TTL old is older than any renewal should leave it:
	// the target stopped answering, and an old number would mislead.
	if e.measuredAt == 0 || now-e.measuredAt > 2*p.ttl {
		return 0
	}
	return e.rtt
}

// evictOldest forgets the target asked about least recently. The caller holds mu.
func (p *prober) evictOldest() {
	var victim netip.Addr
	var oldest int64
	for a, e := range p.targets {
		if e.pending {
			continue // its worker will look it up again
		}
		if !victim.IsValid() || e.askedAt < oldest {
			victim, oldest = a, e.askedAt
		}
	}
	if victim.IsValid() {
		delete(p.targets, victim)
		p.evicted.Inc()
	}
}

func (p *prober) worker() {
	defer p.wg.Done()
	for {
		var a netip.Addr
		select {
		case <-p.ctx.Done():
			return
		case a = <-p.queue:
		}
		p.mu.Lock()
		measure := p.measure
		p.mu.Unlock()
		rtt, err := measure(p.ctx, a)
		now := mono.Now()
		if err != nil {
			p.failed.Inc()
			p.log.Debug("server RTT measurement failed", "target", a.String(), "err", err)
		} else {
			p.measured.Inc()
		}
		p.mu.Lock()
		if e := p.targets[a]; e != nil {
			e.pending = false
			if err == nil {
				e.rtt, e.measuredAt = rtt, now
			}
		}
		p.mu.Unlock()
	}
}

// checkProbe checks the probe settings of the config.
func (c *Config) checkProbe(meta *config.Meta) {
	// At least 1s: each renewal pings the server.
	meta.Duration("probe_ttl", c.ProbeTTL.Duration, time.Second, time.Hour)
	meta.Int("probe_max_targets", c.ProbeMaxTargets, 1, 1<<20)
}

// icmpRTT measures the RTT to a with ICMP echo: through an unprivileged ping
// socket when the system allows one (net.ipv4.ping_group_range), else through a
// raw socket (root or CAP_NET_RAW).
func icmpRTT(ctx context.Context, a netip.Addr) (time.Duration, error) {
	a = a.Unmap()
	v4 := a.Is4()
	udpNet, rawNet, anyAddr, proto := "udp4", "ip4:icmp", "0.0.0.0", 1
	var echoType, replyType icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if !v4 {
		udpNet, rawNet, anyAddr, proto = "udp6", "ip6:ipv6-icmp", "::", 58
		echoType, replyType = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	raw := false
	c, err := icmp.ListenPacket(udpNet, anyAddr)
	if err != nil {
		if c, err = icmp.ListenPacket(rawNet, anyAddr); err != nil {
			return 0, err
		}
		raw = true
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	var dst net.Addr = &net.UDPAddr{IP: a.AsSlice()}
	if raw {
		dst = &net.IPAddr{IP: a.AsSlice()}
	}
	// On a ping socket the kernel sets the ID; on a raw socket it is ours, and
	// replies to every process arrive, so it must tell ours apart.
	id := int(os.Getpid()^int(echoSeq.Add(1))) & 0xffff
	buf := make([]byte, 1500)
	best := time.Duration(0)
	for i := 0; i < probeEchoes; i++ {
		seq := int(echoSeq.Add(1) & 0xffff)
		msg := icmp.Message{Type: echoType, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("raic-probe")}}
		b, err := msg.Marshal(nil)
		if err != nil {
			return 0, err
		}
		start := time.Now()
		if _, err := c.WriteTo(b, dst); err != nil {
			return 0, err
		}
		c.SetReadDeadline(start.Add(probeTimeout))
		for {
			n, peer, err := c.ReadFrom(buf)
			if err != nil {
				break // timed out: this echo is lost, try the next
			}
			rtt := time.Since(start)
			m, err := icmp.ParseMessage(proto, buf[:n])
			if err != nil || m.Type != replyType {
				continue
			}
			echo, ok := m.Body.(*icmp.Echo)
			if !ok || echo.Seq != seq || (raw && echo.ID != id) || !samePeer(peer, a) {
				continue
			}
			if best == 0 || rtt < best {
				best = rtt
			}
			break
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
	}
	if best == 0 {
		return 0, errNoEchoReply
	}
	return best, nil
}

var (
	echoSeq        atomic.Uint32
	errNoEchoReply = errors.New("no echo reply")
)

func samePeer(peer net.Addr, a netip.Addr) bool {
	var ip net.IP
	switch p := peer.(type) {
	case *net.UDPAddr:
		ip = p.IP
	case *net.IPAddr:
		ip = p.IP
	default:
		return false
	}
	got, ok := netip.AddrFromSlice(ip)
	return ok && got.Unmap() == a
}
