// Package ingress is the side of a proxy or an intermediate proxy that faces
// routers. It owns everything between the socket and a decoded packet: the
// batch read loop (recvmmsg, the clock read once per batch), parsing, the
// session lookup, admission of a new session's hello (clients.Admit, the one
// admission call, against a roster the program may swap on reload; none while
// draining), the session's receive (authenticate, anti-replay, decode),
// learning the router's addresses as reply paths, noting the router's RAIC
// scheme, and the control answers a far end owes a router: pong, ack, probe
// reply, close. Every datagram it drops is counted by reason.
//
// The program says what it does with the rest through Program: what a new
// session is (Open), what happens to a decoded packet (the session's Sink), and
// which control messages it handles itself instead (Pass: the intermediate
// passes a relayed session's controls on to the next hop).
package ingress

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/allow"
	"github.com/raicnet/raic/pkg/clients"
	"github.com/raicnet/raic/pkg/logging"
	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/quality"
	"github.com/raicnet/raic/pkg/replypath"
	"github.com/raicnet/raic/pkg/session"
	"github.com/raicnet/raic/pkg/token"
	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/udp"
	"github.com/raicnet/raic/pkg/wire"
)

// Batch is how many datagrams one read may return. A read never waits to fill
// it: recvmmsg returns what is queued.
const Batch = 32

// Peer is the router-facing half of one session; a program's session embeds it.
type Peer struct {
	Client *clients.Client
	Salt   [16]byte // the hello's salt: a hello with another one is another session
	Recv   *tunnel.Receiver
	Send   *tunnel.Sender // seals the answers towards the router
	Paths  replypath.Set  // the router addresses replies go to
	Scheme Scheme         // the RAIC scheme of the router's data
	Epoch  atomic.Uint64  // the restart epoch the session's keys are for (0: none)
	// Quality measures what each router path delivers of the session's data;
	// its figures go back on each path as quality reports (quality.go).
	Quality quality.Tracker[netip.AddrPort]
	// KeepsIDs: the session's datagrams to the router carry the packet IDs
	// of a hop further on (an intermediate relaying a proxy's replies), so
	// ingress seals nothing of its own for it (no quality reports: their
	// IDs would collide with relayed ones).
	KeepsIDs bool

	// lastAck is when the last ack went: ms of the clock, modulo 2^32 (in
	// 32 bits, next to KeepsIDs: a proxy holds a Peer per session).
	lastAck atomic.Uint32
}

// ackDue limits acks to one per 10 ms per session: a router sends hellos until
// its first answer, and one ack per burst of them is enough.
func (p *Peer) ackDue(now int64) bool {
	last, ms := p.lastAck.Load(), uint32(now/int64(time.Millisecond))
	if ms-last < 10 {
		return false
	}
	return p.lastAck.CompareAndSwap(last, ms)
}

// Session is a program's session: a pointer type whose RouterSide is its Peer
// and whose DataSink takes its decoded packets (a method, not a field of
// Peer: the session itself, or a view of it, costs no bytes to hold).
type Session interface {
	comparable
	RouterSide() *Peer
	DataSink() tunnel.Sink
}

// Program is what a proxy or an intermediate does with what ingress delivers.
type Program[S Session] interface {
	// NewSession makes the session an admitted hello asks for, with the keys
	// of a; ingress puts it in the session table. An error drops the datagram,
	// and is the program's to count and log.
	// from is the router address the hello came from.
	NewSession(a *clients.Admission, id uint64, hello *wire.Hello, from netip.AddrPort) (S, error)
	// Opened is told of a session just put in the table.
	Opened(s S, now int64)
	// Pass is offered each authenticated datagram of s after its packet was
	// delivered and its path learned (r.Hdr, its opened body). True means the
	// program dealt with it and ingress answers nothing.
	Pass(r *Reader, s S, body []byte, from netip.AddrPort, now int64) bool
	// Probe fills in the far end's part of a probe reply (server RTT; it may
	// refuse or mark overload); ingress has set Allowed from s's allowlist and
	// Overloaded from Overloaded.
	Probe(s S, rep *wire.ProbeReply, now int64)
	// Overloaded is what pongs and probe replies say about load.
	Overloaded(now int64) bool
}

// Config is what an Ingress needs besides its session table.
type Config struct {
	Listen     string           // the address routers send to (a checked listen key)
	RecvBuffer int              // its receive buffer; 0: 4 MiB
	Clients    []clients.Config // the [[client]] tables: who is admitted
	// Roster, if set, is admitted against instead of Clients: the
	// [[client]] tables and a connect-token key (package fleet builds it
	// for the proxy and the intermediate).
	Roster *clients.Roster
	// Tokens: the program may admit connect tokens (the proxy; the
	// intermediate when it has a token key). Their refusals are counted by
	// reason (token_malformed, token_forged, ...) and the table of tokens
	// used is published (PREFIX_tokens_seen, PREFIX_tokens_evicted_total,
	// see TokenTick). Without it (an intermediate with no token key) a
	// token hello is from a client it does not know: unknown_client.
	Tokens bool
	// MaxSessions is the session table's size, shared fairly among the
	// clients (clients.FairShare).
	MaxSessions int
	// AuthenticatedKeepAlive: only game traffic that authenticated (data,
	// pings, probes) keeps a session alive, not its keepalives or a datagram
	// that does not open.
	AuthenticatedKeepAlive bool
	// SendVia, if set, is offered every datagram to a router first; true
	// means it took it (the proxy's TLS/TCP fallback paths).
	SendVia func(dg []byte, to netip.AddrPort) bool
	// Prefix names the metrics: PREFIX_received_total, PREFIX_dropped_total
	// {reason=...}, PREFIX_pongs_total, PREFIX_send_errors_total.
	Prefix      string
	Registry    *metrics.Registry
	Log         *slog.Logger
	HelloMaxAge time.Duration
	// ReportInterval is how often each session's router gets a quality report
	// on each path (quality.go); 0: quality.DefaultInterval, below 0: none.
	ReportInterval time.Duration
	// OnBatch, if set, runs after each batch read with the batch's start time
	// (the proxy's load meter). With several workers it runs on each.
	OnBatch func(start int64)
	// AfterBatch, if set, runs on each read loop after the datagrams of a
	// batch were handled, before OnBatch: what a program queued for the
	// batch (ReaderSink) leaves then, in as few system calls as it can.
	AfterBatch func(r *Reader)
	// Workers is how many sockets (SO_REUSEPORT, one read loop each) share
	// the listen address; 0 or 1: one socket, as without the option.
	Workers int
	// SteerBySession, with several workers, has the kernel give each
	// datagram to the worker its session ID picks (see listen).
	SteerBySession bool
	// PinWorkers runs each worker's read loop on a thread of its own,
	// pinned to one CPU: worker i on the i-th CPU the process may use
	// (modulo their count; see pin.go).
	PinWorkers bool
}

// Ingress reads one socket of datagrams from routers.
type Ingress[S Session] struct {
	cfg       Config
	conn      *udp.Conn                      // conns[0]: the one replies from outside a read loop leave on
	conns     []*udp.Conn                    // one per worker, all bound to the listen address
	pktinfo   bool                           // bound to the unspecified address: replies follow the address reached
	perWorker []*metrics.Counter             // datagrams read by each worker: how the kernel spreads them
	roster    atomic.Pointer[clients.Roster] // swapped whole on reload (SetRoster)
	draining  atomic.Bool                    // no new sessions (Drain)
	sessions  *session.Table[uint64, S]
	prog      Program[S]
	m         counters
	run       clients.Run      // this start's restart epoch, sent in pongs
	refused   *logging.Limiter // bounds the log lines of per-datagram refusals
	closing   atomic.Bool
	pinTo     []int          // with PinWorkers: each worker's CPU
	pinned    []atomic.Int32 // the CPU each worker's loop is pinned to, -1 until then (or when it could not be)
}

type counters struct {
	received, malformed, unknownSession, unknownClient, authFailed *metrics.Counter
	duplicate, staleHello, forbiddenTarget, sessionConflict        *metrics.Counter
	pongs, sendErrors, sessionsCreated                             *metrics.Counter
	oldEpoch, sessionLimit, sessionRate                            *metrics.Counter
	draining                                                       *metrics.Counter
	// Connect tokens (Config.Tokens only): refusals by clients.Refusal, the
	// table of tokens used.
	tokenRefused  map[clients.Refusal]*metrics.Counter
	tokensSeen    *metrics.Gauge
	tokensEvicted *metrics.Counter

	// Path validation (replypath.Set.Heard): challenges sent, answers that
	// validated an address, replies held back from one not yet validated.
	challenges, validated, unvalidatedHeld *metrics.Counter

	// Quality reports sent, and the figures of those received (quality.go).
	reports                             *metrics.Counter
	replyReceived, replyLost, replyLate *metrics.Counter
}

func newCounters(r *metrics.Registry, prefix string, tokens bool) counters {
	drop := func(reason string) *metrics.Counter {
		return r.Counter(prefix+`_dropped_total{reason="`+reason+`"}`, "Datagrams dropped, by reason.")
	}
	m := counters{
		received:        r.Counter(prefix+"_received_total", "Datagrams received from routers."),
		malformed:       drop("malformed"),
		unknownSession:  drop("unknown_session"),
		unknownClient:   drop("unknown_client"),
		authFailed:      drop("auth"),
		duplicate:       drop("duplicate"),
		staleHello:      drop("stale_hello"),
		forbiddenTarget: drop("forbidden_target"),
		sessionConflict: drop("session_conflict"),
		oldEpoch:        drop("old_epoch"),
		sessionLimit:    drop("client_session_limit"),
		sessionRate:     drop("client_session_rate"),
		draining:        drop("draining"),
		pongs:           r.Counter(prefix+"_pongs_total", "Keepalive answers sent to routers."),
		sendErrors:      r.Counter(prefix+"_send_errors_total", "Errors sending datagrams."),
		sessionsCreated: r.Counter(prefix+"_sessions_created_total", "Sessions created."),
		challenges:      r.Counter(prefix+"_path_challenges_total", "Path challenges sent to router addresses not yet validated."),
		validated:       r.Counter(prefix+"_paths_validated_total", "Router addresses validated by a path response."),
		unvalidatedHeld: r.Counter(prefix+"_unvalidated_path_held_total", "Datagrams not sent to a router address not yet validated: it had had 3x the bytes it sent."),
		reports:         r.Counter(prefix+"_quality_reports_total", "Quality reports sent to routers (one per path and interval)."),
		replyReceived:   r.Counter(prefix+"_reply_datagrams_reported_received_total", "Reply datagrams the routers' quality reports say arrived."),
		replyLost:       r.Counter(prefix+"_reply_datagrams_reported_lost_total", "Reply datagrams the routers' quality reports say were lost."),
		replyLate:       r.Counter(prefix+"_reply_datagrams_reported_late_total", "Reply datagrams the routers' quality reports say came late."),
	}
	if tokens {
		m.tokenRefused = map[clients.Refusal]*metrics.Counter{}
		for _, why := range []clients.Refusal{clients.TokenMalformed, clients.TokenForged, clients.TokenExpired, clients.TokenNotYet, clients.TokenReplayed} {
			m.tokenRefused[why] = drop(why.String())
		}
		m.tokensSeen = r.Gauge(prefix+"_tokens_seen", "Connect tokens remembered until they expire (replay table).")
		m.tokensEvicted = r.Counter(prefix+"_tokens_evicted_total", "Unexpired tokens dropped from the full replay table.")
	}
	return m
}

// New binds the socket routers send to and returns its ingress: sessions are
// found in (and opened into) sessions, hellos admitted against cfg.Roster, or
// cfg.Clients when it is nil.
func New[S Session](cfg Config, sessions *session.Table[uint64, S], prog Program[S]) (*Ingress[S], error) {
	roster := cfg.Roster
	if roster == nil {
		cl, err := clients.Table(cfg.Clients, mono.Now())
		if err != nil {
			return nil, err
		}
		roster = &clients.Roster{Clients: cl}
	}
	run, err := clients.NewRun(time.Now())
	if err != nil {
		return nil, err
	}
	if cfg.RecvBuffer == 0 {
		cfg.RecvBuffer = 4 << 20
	}
	conns, err := listen(cfg)
	if err != nil {
		return nil, err
	}
	in := &Ingress[S]{cfg: cfg, conn: conns[0], conns: conns, pktinfo: conns[0].LocalAddr().Addr().IsUnspecified(),
		sessions: sessions, prog: prog, m: newCounters(cfg.Registry, cfg.Prefix, cfg.Tokens),
		run: run, refused: logging.NewLimiter(5, 20)}
	// Counted per datagram by every read loop: a shard each (Handle), so the
	// workers share no cache line for them; what is not a read loop's counts
	// in the counter itself.
	in.m.received = cfg.Registry.ShardedCounter(cfg.Prefix+"_received_total", "", len(conns))
	in.m.duplicate = cfg.Registry.ShardedCounter(cfg.Prefix+`_dropped_total{reason="duplicate"}`, "", len(conns))
	for i := range conns {
		in.perWorker = append(in.perWorker, cfg.Registry.Counter(fmt.Sprintf(`%s_worker_received_total{worker="%d"}`, cfg.Prefix, i),
			"Datagrams read by each worker socket."))
	}
	if cfg.PinWorkers {
		cpus, err := allowedCPUs()
		if err == nil && len(cpus) == 0 {
			err = errors.New("the process may run on no CPU")
		}
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, fmt.Errorf("pin workers: %w", err)
		}
		in.pinned = make([]atomic.Int32, len(conns))
		for i := range conns {
			in.pinTo = append(in.pinTo, cpus[i%len(cpus)])
			in.pinned[i].Store(-1)
		}
		if cfg.Log != nil {
			cfg.Log.Info("worker read loops pinned, each to a CPU", "cpus", in.pinTo)
		}
	}
	in.SetRoster(roster)
	return in, nil
}

// SetRoster makes new hellos meet r (a reload): its clients get their fair
// share of the session table. Sessions already open keep the client they were
// admitted with.
func (in *Ingress[S]) SetRoster(r *clients.Roster) {
	clients.FairShare(r.Clients, in.cfg.MaxSessions)
	in.roster.Store(r)
}

// Roster is what hellos are admitted against now.
func (in *Ingress[S]) Roster() *clients.Roster { return in.roster.Load() }

// Drain stops admitting new sessions: their hellos are dropped, counted as
// draining. Open sessions go on. It reports whether a drain had begun already.
func (in *Ingress[S]) Drain() bool { return in.draining.Swap(true) }

// Draining reports whether a drain has begun.
func (in *Ingress[S]) Draining() bool { return in.draining.Load() }

// TokenTick forgets the expired tokens of the table of tokens used and
// publishes its size and evictions (a program's janitor calls it once a
// second; nothing without Config.Tokens or a token key).
func (in *Ingress[S]) TokenTick(now time.Time) {
	seen := in.roster.Load().Seen
	if seen == nil || in.m.tokensSeen == nil {
		return
	}
	seen.Sweep(now.Unix())
	in.m.tokensSeen.Set(int64(seen.Len()))
	if ev := seen.Evicted(); ev > in.m.tokensEvicted.Load() {
		in.m.tokensEvicted.Add(ev - in.m.tokensEvicted.Load())
	}
}

// listen binds the worker sockets. With several, each is SO_REUSEPORT, and
// with SteerBySession the kernel gives each datagram to the worker its
// session ID picks (sessionWord, a classic BPF program that needs no
// privilege), so every path of a session, from each of the router's uplinks,
// lands on one worker and its state stays in that worker's cache. Without it
// (or where the kernel refuses the program) the kernel spreads datagrams by
// a hash of the 4-tuple, so one session's paths land on different workers.
// Either way they all share the one session table: it is sharded with a
// read-mostly lock per shard, a session's own state (window, paths, sender)
// has its own lock that two workers rarely want at once, and a hello (which
// opens a session on whichever worker reads it) and replies from the server
// side need no particular worker.
func listen(cfg Config) ([]*udp.Conn, error) {
	local, _ := netip.ParseAddrPort(cfg.Listen)
	n := max(cfg.Workers, 1)
	opt := udp.Options{Local: local, RecvBuffer: cfg.RecvBuffer, SendBuffer: 4 << 20, ReusePort: n > 1,
		PacketInfo: !local.Addr().IsValid() || local.Addr().IsUnspecified()}
	var conns []*udp.Conn
	for i := 0; i < n; i++ {
		c, err := udp.Listen("udp", opt)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, fmt.Errorf("listen %s: %w", cfg.Listen, err)
		}
		conns = append(conns, c)
		// 0: the size could not be read back, which says nothing of a cap.
		if got := c.ReceiveBuffer(); i == 0 && got > 0 && got < cfg.RecvBuffer && cfg.Log != nil {
			cfg.Log.Warn("the kernel gave the listening socket a smaller receive buffer than asked (net.core.rmem_max caps it without CAP_NET_ADMIN)",
				"asked_bytes", cfg.RecvBuffer, "got_bytes", got)
		}
		// Port 0 asks for any port: the other workers take the one the first got.
		opt.Local = netip.AddrPortFrom(local.Addr(), c.LocalAddr().Port())
	}
	if n > 1 && cfg.SteerBySession {
		// After every bind: the program's index is the order of binding.
		log := cfg.Log
		if log == nil {
			log = slog.New(slog.DiscardHandler)
		}
		if err := steer(conns[0], sessionWord, n); err != nil {
			log.Warn("workers not steered by session ID: the kernel spreads datagrams by address", "err", err)
		} else {
			log.Info("workers steered by session ID", "workers", n)
		}
	}
	return conns, nil
}

// steer attaches the steering program to the socket group; a test puts a
// kernel that refuses it in its place.
var steer = (*udp.Conn).SteerByPayload

// sessionWord is where the low 32 bits of a datagram's session ID sit in its
// UDP payload (the header's bytes 4..11, big-endian; see package wire). Router
// session IDs are random, so they spread evenly over the workers.
const sessionWord = 8

// Epoch is this start's restart epoch (see clients.Run).
func (in *Ingress[S]) Epoch() uint64 { return in.run.Epoch }

// NewSessions makes a session table for an ingress: at most max sessions,
// ended after idle, onRemove told of each end; IDs hashed with IDHash.
func NewSessions[S Session](max int, idle time.Duration, onRemove func(uint64, S, session.Reason)) (*session.Table[uint64, S], error) {
	hash, err := IDHash()
	if err != nil {
		return nil, err
	}
	return session.NewTable(session.Config[uint64, S]{MaxEntries: max, IdleTimeout: idle, Hash: hash, OnRemove: onRemove}), nil
}

// Clients is the number of clients admitted.
func (in *Ingress[S]) Clients() int { return len(in.roster.Load().Clients) }

// Addr is the address routers send to.
func (in *Ingress[S]) Addr() netip.AddrPort { return in.conn.LocalAddr() }

// Workers is the number of sockets (read loops) serving the listen address.
func (in *Ingress[S]) Workers() int { return len(in.conns) }

// ReceiveBuffer is the bytes of datagrams each listening socket holds before
// the kernel drops (udp.Conn.ReceiveBuffer of the first).
func (in *Ingress[S]) ReceiveBuffer() int { return in.conns[0].ReceiveBuffer() }

// Close closes the sockets; Run returns.
func (in *Ingress[S]) Close() {
	in.closing.Store(true)
	for _, c := range in.conns {
		c.Close()
	}
}

// Reader holds one read goroutine's buffers, so nothing is allocated per
// datagram. Programs use Ctrl for what they seal while handling a datagram.
type Reader struct {
	conn    *udp.Conn // the worker socket read; answers to its datagrams leave on it
	local   netip.Addr
	msgs    []udp.Message
	Ctrl    []byte                // control datagrams sealed on this goroutine
	scratch []byte                // a copy for authenticating hellos before a session exists
	token   [8]byte               // a path challenge's token while it is sealed (so it does not escape per challenge)
	report  [wire.QualityLen]byte // a quality report's body while it is sealed (quality.go)
	Hdr     wire.Header
	Hello   wire.Hello
	// sink delivers a session's decoded packets, but first learns the address
	// the completing datagram came from as a live path: the answer may come
	// back at once. Set per datagram, so passing it allocates nothing.
	sink replypath.Learner
	// worker is the read loop's worker index plus one; 0 outside a read loop.
	worker int
	via    viaSink
}

// Worker is the index of the worker socket whose read loop owns r, or -1
// when r is not a read loop's (a TCP fallback connection's, a test's): a
// program keeping per-worker batches must not queue on it then.
func (r *Reader) Worker() int { return r.worker - 1 }

// ReaderSink is a session's Sink that wants to know which Reader delivers
// each packet (to queue it in that read loop's batch, sent in AfterBatch).
// Handle gives it the Reader; other Sinks get Deliver.
type ReaderSink interface {
	DeliverVia(r *Reader, pid uint64, pkt []byte, now int64)
}

// viaSink passes a Reader on to a ReaderSink; one per Reader, so setting it
// per datagram allocates nothing.
type viaSink struct {
	r    *Reader
	next ReaderSink
}

func (v *viaSink) Deliver(pid uint64, pkt []byte, now int64) { v.next.DeliverVia(v.r, pid, pkt, now) }

// NewReader returns the buffers of one read goroutine.
func NewReader() *Reader {
	r := &Reader{msgs: make([]udp.Message, Batch), Ctrl: make([]byte, wire.MaxDatagram), scratch: make([]byte, wire.MaxDatagram)}
	for i := range r.msgs {
		// One byte more than the largest datagram, so an oversized one shows as
		// such instead of being silently truncated to a plausible length.
		r.msgs[i].Buf = make([]byte, wire.MaxDatagram+1)
	}
	return r
}

// NewWorkerReader returns the buffers of worker's read loop: what a program
// queues on it (ReaderSink) waits for its AfterBatch. Run makes its own; a
// test drives a read loop's path with one while Run is not running.
func NewWorkerReader(worker int) *Reader {
	r := NewReader()
	r.worker = worker + 1
	return r
}

// Run reads and handles datagrams until the sockets are closed: one read
// loop per worker socket, each on its own goroutine with its own buffers.
func (in *Ingress[S]) Run() {
	var wg sync.WaitGroup
	first := 1
	if in.pinTo != nil {
		first = 0 // every loop on a goroutine of its own, whose pinned thread ends with it
	}
	for i := first; i < len(in.conns); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in.readLoop(i)
		}()
	}
	if first == 1 {
		in.readLoop(0)
	}
	wg.Wait()
}

// PinnedCPUs is the CPU each worker's read loop is pinned to, -1 for one
// that is not (PinWorkers off, not yet running, or refused by the kernel).
func (in *Ingress[S]) PinnedCPUs() []int {
	out := make([]int, len(in.conns))
	for i := range out {
		out[i] = -1
		if in.pinned != nil {
			out[i] = int(in.pinned[i].Load())
		}
	}
	return out
}

func (in *Ingress[S]) readLoop(worker int) {
	c, read := in.conns[worker], in.perWorker[worker]
	if in.pinTo != nil {
		if err := pinThread(in.pinTo[worker]); err != nil && in.cfg.Log != nil {
			in.cfg.Log.Warn("worker not pinned: it runs on any CPU", "worker", worker, "cpu", in.pinTo[worker], "err", err)
		} else if err == nil {
			in.pinned[worker].Store(int32(in.pinTo[worker]))
		}
	}
	r := NewReader()
	r.conn = c
	r.worker = worker + 1
	for {
		n, err := c.ReadBatch(r.msgs)
		if err != nil {
			if in.closing.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			in.cfg.Log.Warn("read", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		now := mono.Now() // once per batch
		read.Add(uint64(n))
		for i := 0; i < n; i++ {
			m := &r.msgs[i]
			r.local = m.Local
			in.Handle(r, m.Buf[:m.N], m.Addr, now)
		}
		if in.cfg.AfterBatch != nil {
			in.cfg.AfterBatch(r)
		}
		if in.cfg.OnBatch != nil {
			in.cfg.OnBatch(now)
		}
	}
}

// Handle processes one datagram from a router.
func (in *Ingress[S]) Handle(r *Reader, dg []byte, from netip.AddrPort, now int64) {
	in.m.received.Shard(r.worker).Inc()
	off, err := wire.Parse(dg, &r.Hdr, &r.Hello)
	if err != nil {
		in.m.malformed.Inc()
		return
	}
	h := &r.Hdr
	if (h.Type == wire.TypePathChallenge || h.Type == wire.TypePathResponse) && (!h.IsPath() || h.Flags&wire.FlagHello != 0) {
		in.m.malformed.Inc()
		return
	}
	var s S
	var ok bool
	var ent session.Entry[uint64, S] // zero: nothing to touch later (a session just opened)
	if in.cfg.AuthenticatedKeepAlive {
		// Peek, not Get: only an authenticated datagram may keep a session
		// alive, touched below through its entry (no second lookup).
		if ent, ok = in.sessions.PeekEntry(h.Session); ok {
			s = ent.Value()
		}
	} else {
		s, ok = in.sessions.Get(h.Session, now)
	}
	if !ok {
		if h.Flags&wire.FlagHello == 0 {
			in.m.unknownSession.Inc()
			return
		}
		if s, ok = in.open(r, dg, off, from, now); !ok {
			return
		}
	} else if h.Flags&wire.FlagHello != 0 && r.Hello.Salt != s.RouterSide().Salt {
		// Another session claims this ID; it cannot be ours (different keys).
		in.m.sessionConflict.Inc()
		return
	} else if h.Flags&wire.FlagHello != 0 && r.Hello.Epoch == in.run.Epoch && s.RouterSide().Epoch.Load() != in.run.Epoch {
		// The router learned this run's epoch after it opened the session and
		// moved the session's keys to it (so a restart of ours cannot take a
		// replay of them): follow, once the hello proves it.
		if !in.upgradeEpoch(r, s.RouterSide(), dg, off) {
			return
		}
	}
	p := s.RouterSide()
	next := s.DataSink()
	if rs, ok := next.(ReaderSink); ok {
		r.via = viaSink{r: r, next: rs}
		next = &r.via
	}
	r.sink = replypath.Learner{Paths: &p.Paths, Next: next, From: from, Now: now, Size: len(dg)}
	body, err := p.Recv.Receive(dg, h, off, now, &r.sink)
	switch {
	case errors.Is(err, tunnel.ErrDuplicate):
		in.m.duplicate.Shard(r.worker).Inc()
		in.noteQuality(r, p, from, now)
		// A router's copies on its slower uplinks arrive as duplicates: they keep
		// a path already known fresh, never add one.
		p.Paths.Refresh(from, len(dg), now)
		return
	case err != nil:
		in.m.authFailed.Inc()
		return
	}
	if h.IsPath() {
		// Outside the replay window (wire.TypePathChallenge): a response
		// validates only the address its challenge went to, with its token,
		// and adds or refreshes no path.
		if h.Type == wire.TypePathResponse && p.Paths.Validate(from, body) {
			in.m.validated.Inc()
		}
		return
	}
	// Authenticated: this address is a live path of the session (this is also how
	// a NAT rebinding on the router's side is learned). Until the router proves
	// it owns the address, by answering the challenge sent there, it gets at
	// most 3x what came from it.
	if c, due := p.Paths.Heard(from, r.sink.Size, now); due {
		r.sink.Challenge, r.sink.Due = c, true
	}
	if in.pktinfo && r.local.IsValid() {
		p.Paths.SetLocal(from, r.local)
	}
	if r.sink.Due {
		in.challenge(r, p, r.sink.Challenge)
	}
	in.noteQuality(r, p, from, now)
	if in.cfg.AuthenticatedKeepAlive && (h.Type == wire.TypeData || h.Type == wire.TypePing || h.Type == wire.TypeProbe) {
		// Game traffic (and a control session's keepalive pings) keeps the
		// session alive; keepalives of an idle game session do not, so it
		// ends after session_idle as the router's does.
		ent.Touch(now)
	}
	switch h.Type {
	case wire.TypeData:
		p.Scheme.Note(h)
	case wire.TypeKeepalive:
		// It says how many paths the router has, and how many copies it sends on
		// each: replies get as many on each path, and make up for the paths
		// never heard from.
		p.Paths.NoteKeepalive(body)
	case wire.TypeQuality:
		// The router's figures of the replies on this path: this hop's.
		in.onQuality(body)
		return
	}
	if in.prog.Pass(r, s, body, from, now) {
		return
	}
	switch h.Type {
	case wire.TypePing:
		var ping wire.Ping
		if wire.ParsePing(body, &ping) != nil {
			in.m.malformed.Inc()
			return
		}
		pong := wire.Pong{Ping: ping, PeerTime: now, Overloaded: in.prog.Overloaded(now), Epoch: in.run.Epoch}
		var pb [wire.PongEpochLen]byte
		if in.Answer(r, p, wire.TypePong, pong.Put(pb[:]), from, now) {
			in.m.pongs.Inc()
		}
	case wire.TypeProbe:
		var probe wire.Probe
		if wire.ParseProbe(body, &probe) != nil {
			in.m.malformed.Inc()
			return
		}
		rep := wire.ProbeReply{Probe: probe, Overloaded: in.prog.Overloaded(now)}
		rep.Allowed = probe.Target.IsValid() && p.Client.Allow.Allows(probe.Target)
		in.prog.Probe(s, &rep, now)
		var rb [wire.ProbeReplyLen]byte
		in.Answer(r, p, wire.TypeProbeReply, rep.Put(rb[:]), from, now)
	case wire.TypeClose:
		in.sessions.Delete(h.Session)
		return
	}
	if h.Flags&wire.FlagHello != 0 && p.ackDue(now) {
		var ab [8]byte
		binary.BigEndian.PutUint64(ab[:], h.Packet)
		in.Answer(r, p, wire.TypeAck, ab[:], from, now)
	}
}

// open admits the first datagram of an unknown session (it carries a hello),
// has the program make the session and puts it in the table. ok is false, the reason counted, when
// the datagram must be dropped.
func (in *Ingress[S]) open(r *Reader, dg []byte, off int, from netip.AddrPort, now int64) (s S, ok bool) {
	hello := &r.Hello
	if in.draining.Load() {
		in.m.draining.Inc()
		return s, false
	}
	a, why := clients.Admit(in.roster.Load(), &r.Hdr, hello, dg, off, r.scratch, in.cfg.HelloMaxAge, time.Now(), &in.run)
	if why == clients.Admitted {
		why = a.Client.OpenSession(now)
	}
	switch why {
	case clients.Admitted:
	case clients.UnknownClient:
		in.m.unknownClient.Inc()
		return s, false
	case clients.AuthFailed:
		in.m.authFailed.Inc()
		return s, false
	case clients.StaleHello:
		in.m.staleHello.Inc()
		in.refuse("hello refused: its time is too far from ours (replayed, or a clock is wrong)",
			"client", a.Client.ID, "hello_unix_ms", hello.UnixMilli, "hello_max_age", in.cfg.HelloMaxAge)
		return s, false
	case clients.OldEpoch:
		in.m.oldEpoch.Inc()
		in.refuse("hello refused: made for an earlier run of this program (a replay, or a router that has not heard of the restart yet)",
			"client", a.Client.ID, "session", r.Hdr.Session)
		return s, false
	case clients.ForbiddenTarget:
		in.m.forbiddenTarget.Inc()
		in.refuse("target refused: not in the client's allowlist", "client", a.Client.ID, "target", hello.Target.String())
		return s, false
	case clients.SessionLimit, clients.SessionRate:
		if why == clients.SessionLimit {
			in.m.sessionLimit.Inc()
		} else {
			in.m.sessionRate.Inc()
		}
		in.refuse("session refused: client over its limit", "client", a.Client.ID, "limit", why.String(),
			"sessions", a.Client.Sessions(), "max_sessions", a.Client.MaxSessions())
		return s, false
	default: // connect tokens: expired, forged, replayed...
		in.tokenRefused(why)
		return s, false
	}
	id := r.Hdr.Session
	s, created, err := in.sessions.GetOrCreate(id, now, func() (S, error) { return in.prog.NewSession(&a, id, hello, from) })
	if !created {
		a.Client.CloseSession() // reserved above, not used
	}
	if err != nil {
		return s, false
	}
	if created {
		p := s.RouterSide()
		p.Epoch.Store(hello.Epoch)
		if !hello.Target.IsValid() {
			// A control session may be re-opened with the keys it had before a
			// restart (clients.Admit): nothing sealed before this datagram is
			// taken, so a replayed capture gets no answer.
			p.Recv.SetFloor(r.Hdr.Packet)
		}
		in.m.sessionsCreated.Inc()
		in.prog.Opened(s, now)
	}
	return s, true
}

// tokenRefused counts a connect token's refusal by its reason.
func (in *Ingress[S]) tokenRefused(why clients.Refusal) {
	if c := in.m.tokenRefused[why]; c != nil {
		c.Inc()
	} else if !in.cfg.Tokens {
		// A program with no token key at all: to it the sender is a
		// client it does not know.
		in.m.unknownClient.Inc()
	}
}

// OpenToken opens a connect token a router presents outside a hello (the
// proxy's TLS/TCP and QUIC connections) against the roster as it is now, and
// returns the client ID, client key and servers sealed in it. A refused
// token (forged, expired, not yet valid, malformed, or any token without a
// token key) is counted as a token hello's refusal is; the sessions the
// router then opens are admitted one by one by their hellos, with every
// check of Admit (servers, session limit, replays), and its TCP flows by the
// servers.
func (in *Ingress[S]) OpenToken(tok []byte, now time.Time) (clientID string, key wire.Key, servers allow.List, why clients.Refusal) {
	var tb [token.MaxLen]byte
	var t token.Opened
	if why = clients.OpenToken(in.roster.Load(), tok, tb[:], now, &t); why != clients.Admitted {
		in.tokenRefused(why)
		return "", key, nil, why
	}
	return string(t.ClientID), t.ClientKey, t.Allow, clients.Admitted
}

// challenge sends a path challenge of p's session (see replypath.Set.Heard).
func (in *Ingress[S]) challenge(r *Reader, p *Peer, c replypath.Challenge) {
	r.token = c.Token
	out, err := p.Send.SealPath(r.Ctrl, wire.TypePathChallenge, r.token[:])
	if err != nil {
		return
	}
	conn := r.conn
	if conn == nil {
		conn = in.conn
	}
	// From the address the router reached, like every other answer.
	if in.send(conn, out, c.To, in.localOf(p, c.To)) {
		in.m.challenges.Inc()
	}
}

// refuse logs a refusal, at a bounded rate.
func (in *Ingress[S]) refuse(msg string, args ...any) {
	if ok, n := in.refused.Allow(); ok {
		in.cfg.Log.Warn(msg, append(args, "lines_suppressed", n)...)
	}
}

// upgradeEpoch re-keys p for this run's epoch when the datagram, a hello
// naming it, authenticates with those keys; it reports whether it did.
func (in *Ingress[S]) upgradeEpoch(r *Reader, p *Peer, dg []byte, off int) bool {
	send, recv, err := wire.DeriveKeysEpoch(&p.Client.Key, &p.Salt, r.Hdr.Session, in.run.Epoch, wire.RoleServer)
	if err != nil {
		return false
	}
	cp := r.scratch[:len(dg)]
	copy(cp, dg)
	if _, err := wire.Open(recv, cp, off); err != nil {
		in.m.authFailed.Inc()
		return false
	}
	p.Recv.Upgrade(recv)
	p.Send.Rekey(send, 0, 0)
	p.Epoch.Store(in.run.Epoch)
	return true
}

// Answer seals a control message of p's session (in r.Ctrl) and sends it to
// the router address to; false when nothing was sent.
func (in *Ingress[S]) Answer(r *Reader, p *Peer, t wire.Type, body []byte, to netip.AddrPort, now int64) bool {
	out, err := p.Send.SealControl(r.Ctrl, t, body, now)
	if err != nil {
		return false
	}
	c := r.conn
	if c == nil {
		c = in.conn
	}
	return in.send(c, out, to, in.localOf(p, to))
}

// SendTo sends one datagram to a router, counting a failure.
func (in *Ingress[S]) SendTo(dg []byte, to netip.AddrPort) bool {
	return in.send(in.conn, dg, to, netip.Addr{})
}

func (in *Ingress[S]) send(c *udp.Conn, dg []byte, to netip.AddrPort, from netip.Addr) bool {
	if in.cfg.SendVia != nil && in.cfg.SendVia(dg, to) {
		return true
	}
	if err := c.WriteToFrom(dg, to, from); err != nil {
		in.m.sendErrors.Inc()
		return false
	}
	return true
}

// localOf is the source address datagrams of p to the router address to leave
// from: the one that path reached, when the socket is bound to the unspecified
// address (a router, or a NAT on its way, takes answers only from the address
// it wrote to; each path may reach another address of ours).
func (in *Ingress[S]) localOf(p *Peer, to netip.AddrPort) netip.Addr {
	if !in.pktinfo {
		return netip.Addr{}
	}
	return p.Paths.LocalOf(to)
}

// maxReplyBatch is the most datagrams of one reply sent in one sendmmsg: two
// copies on each of eight paths; a reply with more takes several calls. It
// sits on the stack of each session's reply goroutine, so it stays small.
const maxReplyBatch = 16

// replyBatch collects the datagrams of one reply and sends them with as few
// sendmmsg calls as it can. It lives on the caller's stack.
type replyBatch struct {
	msgs [maxReplyBatch]udp.Message
	n    int
}

func (in *Ingress[S]) queue(b *replyBatch, dg []byte, to netip.AddrPort, from netip.Addr) {
	if in.cfg.SendVia != nil && in.cfg.SendVia(dg, to) {
		return // a TLS/TCP path took it
	}
	if b.n == len(b.msgs) {
		in.flush(b)
	}
	b.msgs[b.n] = udp.Message{Buf: dg, N: len(dg), Addr: to, Local: from}
	b.n++
}

func (in *Ingress[S]) flush(b *replyBatch) {
	msgs := b.msgs[:b.n]
	for len(msgs) > 0 {
		n, err := in.conn.WriteBatch(msgs)
		if err == nil {
			break
		}
		// msgs[n] failed: count it and go on with the rest.
		in.m.sendErrors.Inc()
		msgs = msgs[min(n+1, len(msgs)):]
	}
	clear(b.msgs[:b.n]) // no reference to the datagrams stays behind
	b.n = 0
}

// ErrNoPath is Reply's error for a session with no router address heard from
// within the reply window.
var ErrNoPath = errors.New("ingress: no live path to the router")

// Reply sends one packet back to the router of p over its live paths (heard
// from within window): seal codes and seals it, and is called only once a path
// is known, so a packet with nowhere to go takes no packet ID. A single
// datagram (RAIC-1) goes to every path, as many times as the router's
// keepalives say it sends on each, and for each path lagging behind or never
// heard from as many more on fresh paths (replypath.Live.Copies); so does each
// X-fragment of a copy scheme (seal says whether the datagrams are copies).
// Shards are spread over the paths once each. It returns the datagrams sent and the extra
// copies moved to fresh paths; the error is ErrNoPath or seal's.
func (in *Ingress[S]) Reply(p *Peer, window time.Duration, now int64, seal func() (dgs [][]byte, copies bool, err error)) (sent, moved int, err error) {
	var live replypath.Live
	p.Paths.Live(now, window, &live)
	if live.Len() == 0 {
		return 0, 0, ErrNoPath
	}
	dgs, copies, err := seal()
	if err != nil {
		return 0, 0, err
	}
	// Every datagram of the reply (copies to each path, shards, fragments)
	// leaves in one sendmmsg: they are ready together, so batching them holds
	// none back.
	var b replyBatch
	if copies {
		// The X-fragments of a copy scheme are copies too: each goes to every
		// path.
		var to [replypath.MaxCopies]netip.AddrPort
		n, extra := live.Copies(&to)
		for _, dg := range dgs {
			for _, a := range to[:n] {
				in.queueReply(p, &live, &b, dg, a)
			}
		}
		in.flush(&b)
		return n * len(dgs), extra * len(dgs), nil
	}
	var placement [64]int
	out := live.Place(len(dgs), placement[:0])
	for i, dg := range dgs {
		in.queueReply(p, &live, &b, dg, live.Addr(out[i]))
	}
	in.flush(&b)
	return len(dgs), 0, nil
}

// queueReply queues one reply datagram to a live path of p, unless the path is
// not validated yet and has had its 3x (replypath.Set.Spend).
func (in *Ingress[S]) queueReply(p *Peer, live *replypath.Live, b *replyBatch, dg []byte, to netip.AddrPort) {
	if live.Limited() && live.Limits(to) && !p.Paths.Spend(to, len(dg)) {
		in.m.unvalidatedHeld.Inc()
		return
	}
	in.queue(b, dg, to, in.localOf(p, to))
}

// IDHash returns a hash of session IDs for the session tables, seeded at
// random: routers choose the IDs, and must not be able to choose ones that
// crowd one bucket.
func IDHash() (func(id uint64) uint64, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	seed := binary.LittleEndian.Uint64(b[:])
	return func(id uint64) uint64 { return (id ^ seed) * 0x9e3779b97f4a7c15 }, nil
}

// Client returns the [[client]] with the given ID (a connect token's client
// has no table entry), as the roster has it now.
func (in *Ingress[S]) Client(id string) (*clients.Client, bool) {
	c, ok := in.roster.Load().Clients[id]
	return c, ok
}
