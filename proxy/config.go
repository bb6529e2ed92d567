package proxy

import (
	"github.com/raicnet/raic/pkg/clients"
	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/fleet"
	"time"

	"github.com/raicnet/raic/pkg/ingress"
	"github.com/raicnet/raic/pkg/quality"
	"github.com/raicnet/raic/pkg/tcpsplit"
)

// Config is the proxy's TOML configuration.
type Config struct {
	// Settings are the router-facing side's keys: listen, metrics, log_level,
	// max_sessions, session_idle, reply_window, hello_max_age and the
	// [[client]] tables (the routers allowed to use this proxy).
	ingress.Settings
	// KeepServerPort keeps the server-side socket of an ended session this
	// long for a new session of the same client and flow (a restarted
	// router's), so the game server sees the same source port; 0: off.
	KeepServerPort config.Duration `toml:"keep_server_port"`
	// OverloadLatency and OverloadCPU: above either (the smoothed time to handle
	// a read batch, the share of the CPUs used) the proxy reports itself
	// overloaded (see overload.go).
	OverloadLatency config.Duration `toml:"overload_latency"`
	OverloadCPU     float64         `toml:"overload_cpu"`
	// ProbeTTL is how long a measured RTT to a server is used before it is
	// measured again; ProbeMaxTargets bounds the servers remembered (see probe.go).
	ProbeTTL        config.Duration `toml:"probe_ttl"`
	ProbeMaxTargets int             `toml:"probe_max_targets"`
	// TCPListen, when set, serves routers' aggregated connections on this
	// address:port: QUIC on UDP for their TCP flows, TLS on TCP for the
	// datagrams of routers whose network blocks UDP (see tcp.go). Each kind
	// of connection is bounded by max_sessions in all and PerClientConns per
	// client; each has tcpmux.AuthTimeout to authenticate.
	TCPListen string `toml:"tcp_listen"`
	// TCPFlowsPerClient bounds one client's live split-TCP flows on
	// tcp_listen (default tcpsplit.DefaultMaxFlowsPerClient, 4,096 of the
	// proxy's tcpsplit.MaxFlows), so one router cannot take the flow table
	// from the others. A studio whose players share one PSK client (one
	// [[client]] for a whole launcher) raises it; a token's players each
	// count as the token's client ID.
	TCPFlowsPerClient int `toml:"tcp_flows_per_client"`
	// TCPPendingPerAddress bounds the connections one address may have
	// authenticating on tcp_listen at once (default
	// DefaultTCPPendingPerAddress); more are closed at accept and counted.
	// Raise it for many routers behind one carrier-grade NAT address.
	TCPPendingPerAddress int `toml:"tcp_pending_per_address"`
	// Workers is how many sockets share the listen address (SO_REUSEPORT),
	// each with its own read loop: 1 (the default) is one, 0 one per CPU
	// (GOMAXPROCS). Sessions are shared by all (see package ingress).
	Workers int `toml:"workers"`
	// SteerSessions (true, the default), with several workers, has the
	// kernel give each datagram to the worker its session ID picks, so all
	// of a session's paths are read by one worker; false leaves the kernel's
	// hash of the sender's address.
	SteerSessions bool `toml:"steer_sessions"`
	// PinWorkers (false, the default) runs each worker's read loop on a
	// thread of its own pinned to one CPU, worker i on the i-th CPU the
	// process may use. For a host whose CPUs are the proxy's (a studio's
	// proxy machine, a container with a cpuset): two pinned workers
	// drained 1.88–2.09× one worker's rate on two CPUs, unpinned
	// 1.69–1.76× (capbench -drain). Leave
	// it off where other busy programs share those CPUs, since a pinned
	// loop cannot move away from them.
	PinWorkers bool `toml:"pin_workers"`
	// ReportInterval is how often each session's router gets a quality report
	// (received, lost, late, lag) on each of its paths; "0s" turns them off.
	ReportInterval config.Duration `toml:"report_interval"`
	// MemoryLimitMB, when not 0, is the Go runtime's soft memory limit in MiB
	// (runtime/debug.SetMemoryLimit): near it the collector runs sooner, so
	// the heap's headroom over what the sessions hold shrinks. 0 (the
	// default) leaves the runtime's own setting (GOMEMLIMIT, else none).
	MemoryLimitMB int `toml:"memory_limit_mb"`
	// IOURing (true, the default) sends a read batch's forwards on the
	// sessions' own sockets in one io_uring submission where the kernel
	// allows it (see forward_batch.go); false keeps a write per packet, for
	// hosts whose policy bars io_uring.
	IOURing bool `toml:"io_uring"`
	// UDPSegmentation (true, the default) sends the shared upstream's
	// queued forwards that go to one server with one size as one segmented
	// send (UDP GSO, see udp.Conn.EnableSegmentation); false sends each as
	// its own datagram in the sendmmsg batch.
	UDPSegmentation bool `toml:"udp_segmentation"`
	// ReceiveBufferKB is each listening socket's receive buffer in KiB
	// (default 1,024: about 10 ms of datagrams at the proxy's capacity, so an
	// overload drops at the socket instead of queueing seconds of stale game
	// traffic). More rides out longer bursts, at the price of that queue.
	// Above net.core.rmem_max it needs CAP_NET_ADMIN; without it the kernel
	// caps it, and the proxy logs what it got.
	ReceiveBufferKB int `toml:"receive_buffer_kb"`
	// Studio operation: connect tokens, client-address headers, health, drain
	// (see studio.go).
	StudioConfig
}

// ClientConfig is one [[client]] table (see package clients).
type ClientConfig = clients.Config

// DefaultRatePPS is a client's rate_pps when its table names none; the
// defaults of the router-facing keys are ingress's (ingress.DefaultListen...).
const DefaultRatePPS = clients.DefaultRatePPS

// DefaultKeepServerPort is keep_server_port's default.
const DefaultKeepServerPort = 30 * time.Second

// DefaultConfig is the configuration before a file is read: every key a file
// leaves out keeps the value it has here.
func DefaultConfig() Config {
	return Config{
		Settings:        ingress.DefaultSettings(),
		KeepServerPort:  config.Duration{Duration: DefaultKeepServerPort},
		OverloadLatency: config.Duration{Duration: DefaultOverloadLatency},
		OverloadCPU:     DefaultOverloadCPU,
		ProbeTTL:        config.Duration{Duration: DefaultProbeTTL},
		ProbeMaxTargets: DefaultProbeMaxTargets,
		StudioConfig:    StudioConfig{Config: fleet.Defaults()},
		Workers:         1,
		SteerSessions:   true,
		IOURing:         true,
		UDPSegmentation: true,
		ReceiveBufferKB: DefaultReceiveBufferKB,
		// tcp_listen's per-client and per-address shares (tcp.go)
		TCPFlowsPerClient:    tcpsplit.DefaultMaxFlowsPerClient,
		TCPPendingPerAddress: DefaultTCPPendingPerAddress,
		// quality reports to the routers (pkg/quality)
		ReportInterval: config.Duration{Duration: quality.DefaultInterval},
	}
}

// LoadConfig reads, defaults and checks a proxy config file; every error of the
// file is returned at once, each naming the file, line and key. ParseConfig
// does the same for a config held in a string (name is used in errors).
var LoadConfig, ParseConfig = config.Loaders(DefaultConfig, (*Config).check)

// check validates c, decoded over DefaultConfig, recording every error on meta.
func (c *Config) check(meta *config.Meta) {
	c.checkStudio(meta) // first: with connect tokens on, no [[client]] is needed
	c.Settings.Check(meta, "the proxy", c.tokenKey != nil)
	if c.TCPListen != "" {
		// TCP, so it may share the UDP listen port.
		meta.AddrPort("tcp_listen", c.TCPListen)
	}
	meta.Int("tcp_flows_per_client", c.TCPFlowsPerClient, 1, tcpsplit.MaxFlows)
	meta.Int("tcp_pending_per_address", c.TCPPendingPerAddress, 1, 1<<16)
	meta.Int("workers", c.Workers, 0, maxWorkers)
	meta.Int("memory_limit_mb", c.MemoryLimitMB, 0, 1<<20)
	meta.Int("receive_buffer_kb", c.ReceiveBufferKB, 64, 1<<20)
	meta.Duration("keep_server_port", c.KeepServerPort.Duration, 0, 10*time.Minute)
	if c.ReportInterval.Duration != 0 {
		meta.Duration("report_interval", c.ReportInterval.Duration, quality.MinInterval, quality.MaxInterval)
	}
	c.checkLoad(meta)
	c.checkProbe(meta)
}

// maxWorkers bounds workers: far more read loops than cores only adds sockets.
const maxWorkers = 256
