// Package metrics holds lock-free counters and gauges and writes them in the
// Prometheus text exposition format.
//
// The per-packet path only ever touches a *Counter or *Gauge it looked up once
// at start-up: one atomic add, no map lookup, no lock, no allocation. Each value
// sits on its own cache line so that counters bumped by different cores do not
// slow each other down. The prometheus client library is not used: the suite
// needs a handful of counters, not its dependency tree.
package metrics

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// cacheLine is the padding unit. 128 rather than 64 bytes because Intel's
// adjacent-line prefetcher pulls cache lines in pairs.
const cacheLine = 128

// Counter is a monotonically increasing count. The zero value is ready to use.
//
// A counter that several goroutines bump per packet can be split in shards
// (Registry.ShardedCounter): each writer adds to its own, on its own cache
// line, and Load sums them, so the writers never share a line.
type Counter struct {
	v      atomic.Uint64
	shards []Counter // further shards of this counter (Shard); Load sums them
	_      [cacheLine - 32]byte
}

// Shard returns shard i of the counter: the counter itself for i ≤ 0 or a
// counter without shards, otherwise its own shard (i taken modulo the
// shards). What is added to a shard counts in the counter's Load; a shard's
// own Load is its part only.
func (c *Counter) Shard(i int) *Counter {
	if i <= 0 || len(c.shards) == 0 {
		return c
	}
	return &c.shards[(i-1)%len(c.shards)]
}

// Add adds n to the counter.
func (c *Counter) Add(n uint64) { c.v.Add(n) }

// Inc adds one to the counter.
func (c *Counter) Inc() { c.v.Add(1) }

// Load returns the current count, every shard's included.
func (c *Counter) Load() uint64 {
	n := c.v.Load()
	for i := range c.shards {
		n += c.shards[i].v.Load()
	}
	return n
}

// Gauge is a value that goes up and down. The zero value is ready to use.
type Gauge struct {
	v atomic.Int64
	_ [cacheLine - 8]byte
}

// Set sets the gauge to n.
func (g *Gauge) Set(n int64) { g.v.Store(n) }

// Add adds n (which may be negative) to the gauge.
func (g *Gauge) Add(n int64) { g.v.Add(n) }

// Load returns the current value.
func (g *Gauge) Load() int64 { return g.v.Load() }

type kind int

const (
	kindCounter kind = iota
	kindGauge
	kindHistogram
)

func (k kind) String() string {
	switch k {
	case kindGauge:
		return "gauge"
	case kindHistogram:
		return "histogram"
	}
	return "counter"
}

// series is one exposed line: a family name plus optional labels.
type series struct {
	name    string // full name as written, labels included
	counter *Counter
	gauge   *Gauge
	hist    *Histogram // histogram.go
}

func (s *series) kind() kind {
	switch {
	case s.counter != nil:
		return kindCounter
	case s.gauge != nil:
		return kindGauge
	}
	return kindHistogram
}

func (s *series) value() float64 {
	if s.hist != nil {
		return float64(s.hist.Count())
	}
	if s.counter != nil {
		return float64(s.counter.Load())
	}
	return float64(s.gauge.Load())
}

func (s *series) text() string {
	if s.counter != nil {
		return strconv.FormatUint(s.counter.Load(), 10)
	}
	return strconv.FormatInt(s.gauge.Load(), 10)
}

// family groups the series that share a metric name; Prometheus wants its
// HELP and TYPE lines once, before all of them.
type family struct {
	name   string
	help   string
	kind   kind
	series []*series // sorted by name
}

// Registry names counters and gauges and exposes them. Registration takes a
// lock and is meant for start-up; the values themselves are updated without it.
type Registry struct {
	mu       sync.Mutex
	families map[string]*family
	byName   map[string]*series
	errs     []error
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{families: map[string]*family{}, byName: map[string]*series{}}
}

// Counter returns the counter registered under name, registering it on first
// use. name is a metric name, optionally followed by labels written inline:
// `proxy_packets_dropped_total{reason="auth"}`. Series sharing a metric name
// form one family; help is taken from its first registration.
//
// A malformed name, or a name already used by a gauge, is recorded (see Err)
// and answered with a working counter that is not exposed, so a mistake in a
// metric name never takes the program down.
func (r *Registry) Counter(name, help string) *Counter {
	s := r.register(name, help, kindCounter)
	if s == nil {
		return new(Counter)
	}
	return s.counter
}

// ShardedCounter is Counter with n shards besides the counter itself
// (Counter.Shard 1 to n), for a count that n goroutines (a program's
// workers) bump per packet: each adds to its shard, and the exposed value is
// the sum. A counter registered before gets its shards now, if it had none.
func (r *Registry) ShardedCounter(name, help string, n int) *Counter {
	c := r.Counter(name, help)
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(c.shards) == 0 && n > 0 {
		c.shards = make([]Counter, n)
	}
	return c
}

// Gauge returns the gauge registered under name; see Counter for the rules.
func (r *Registry) Gauge(name, help string) *Gauge {
	s := r.register(name, help, kindGauge)
	if s == nil {
		return new(Gauge)
	}
	return s.gauge
}

func (r *Registry) register(name, help string, k kind) *series {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s, ok := r.byName[name]; ok {
		if k != s.kind() {
			r.errs = append(r.errs, fmt.Errorf("metrics: %q registered as both %s and %s", name, s.kind(), k))
			return nil
		}
		return s
	}
	fam, err := parseName(name)
	if err != nil {
		r.errs = append(r.errs, err)
		return nil
	}
	f, ok := r.families[fam]
	if !ok {
		f = &family{name: fam, help: help, kind: k}
		r.families[fam] = f
	} else if f.kind != k {
		r.errs = append(r.errs, fmt.Errorf("metrics: family %q is a %s; %q cannot be a %s", fam, f.kind, name, k))
		return nil
	}
	s := &series{name: name}
	switch k {
	case kindCounter:
		s.counter = new(Counter)
	case kindGauge:
		s.gauge = new(Gauge)
	default:
		s.hist = newHistogram(LatencyBuckets)
	}
	r.byName[name] = s
	i := sort.Search(len(f.series), func(i int) bool { return f.series[i].name >= name })
	f.series = append(f.series, nil)
	copy(f.series[i+1:], f.series[i:])
	f.series[i] = s
	return s
}

// Err reports the registrations that were refused, nil if none.
func (r *Registry) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return errors.Join(r.errs...)
}

// parseName checks name against the Prometheus grammar and returns its metric
// (family) name: [a-zA-Z_:][a-zA-Z0-9_:]* optionally followed by
// {label="value",...} with label names [a-zA-Z_][a-zA-Z0-9_]* and values using
// the \\ \" \n escapes.
func parseName(name string) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("metrics: invalid metric name %q: %s", name, why)
	}
	i := 0
	for i < len(name) && isNameChar(name[i], i == 0, true) {
		i++
	}
	if i == 0 {
		return bad("must start with a letter, '_' or ':'")
	}
	fam := name[:i]
	if i == len(name) {
		return fam, nil
	}
	if name[i] != '{' || name[len(name)-1] != '}' {
		return bad("unexpected character after the metric name")
	}
	labels := name[i+1 : len(name)-1]
	seen := map[string]bool{}
	for j := 0; j < len(labels); {
		start := j
		for j < len(labels) && isNameChar(labels[j], j == start, false) {
			j++
		}
		if j == start {
			return bad("label name expected")
		}
		label := labels[start:j]
		if seen[label] {
			return bad("label " + label + " repeated")
		}
		seen[label] = true
		if j+1 >= len(labels) || labels[j] != '=' || labels[j+1] != '"' {
			return bad(`label name must be followed by ="`)
		}
		j += 2
		closed := false
		for j < len(labels) {
			c := labels[j]
			if c == '\\' {
				if j+1 >= len(labels) || !strings.ContainsRune(`\"n`, rune(labels[j+1])) {
					return bad("bad escape in label value")
				}
				j += 2
				continue
			}
			if c == '\n' {
				return bad("raw newline in label value")
			}
			j++
			if c == '"' {
				closed = true
				break
			}
		}
		if !closed {
			return bad("unterminated label value")
		}
		if j < len(labels) {
			if labels[j] != ',' {
				return bad("',' expected between labels")
			}
			j++
		}
	}
	return fam, nil
}

func isNameChar(c byte, first, colonOK bool) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
		return true
	case c == ':':
		return colonOK
	case c >= '0' && c <= '9':
		return !first
	}
	return false
}

// helpEscaper applies the escapes the text format requires in HELP lines.
var helpEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`)

// WriteText writes every registered series in the Prometheus text exposition
// format (version 0.0.4): families sorted by name, each with one HELP and one
// TYPE line, then its series sorted by their full name. The order is stable so
// that outputs can be diffed.
func (r *Registry) WriteText(w io.Writer) error {
	var b strings.Builder
	r.mu.Lock()
	names := make([]string, 0, len(r.families))
	for n := range r.families {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		f := r.families[n]
		if f.help != "" {
			fmt.Fprintf(&b, "# HELP %s %s\n", f.name, helpEscaper.Replace(f.help))
		}
		fmt.Fprintf(&b, "# TYPE %s %s\n", f.name, f.kind)
		for _, s := range f.series {
			if f.kind == kindHistogram {
				if s.hist != nil {
					s.hist.writeText(&b, f.name, s.name)
				}
				continue
			}
			b.WriteString(s.name)
			b.WriteByte(' ')
			b.WriteString(s.text())
			b.WriteByte('\n')
		}
	}
	r.mu.Unlock()
	// Write outside the lock: a slow scraper must not block registration.
	_, err := io.WriteString(w, b.String())
	return err
}

// Snapshot returns the current value of every series, keyed by its full name
// (labels included). Meant for tests and for logging a summary at exit.
func (r *Registry) Snapshot() map[string]float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]float64, len(r.byName))
	for n, s := range r.byName {
		out[n] = s.value()
	}
	return out
}

// Handler serves WriteText over HTTP, for a Prometheus scraper or curl.
func (r *Registry) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		if req.Method == http.MethodHead {
			return
		}
		_ = r.WriteText(w) // the client went away; nothing useful to do
	})
}

// Serve listens on addr (a metrics key's host:port) and serves the registry at
// /metrics until the returned server is closed. The listener is bound before
// Serve returns, so a bad address is an error at start-up.
func (r *Registry) Serve(addr string) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", r.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return srv, nil
}
