// Package netns builds network testbeds out of Linux network namespaces joined by
// veth pairs: generic hosts, links, routes and forwarding, plus the project's
// standard game topology (NewGame).
//
// Every namespace a Net creates carries a random per-run prefix, so parallel runs
// never collide, and is deleted by Close, by the test cleanup that NewForTest
// registers (also when the test fails), and on SIGINT or SIGTERM. Building a Net
// needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN).
//
// Hosts use addresses in 198.18.0.0/15 only, the range reserved for benchmarking
// (RFC 2544), so nothing a test sends can reach a real network.
package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/raicnet/raic/pkg/netcfg"
)

// Testbed is the address block every host address must come from.
var Testbed = netip.MustParsePrefix("198.18.0.0/15")

// Net is a set of namespaces built for one run.
type Net struct {
	prefix string

	mu     sync.Mutex
	hosts  []*Host
	byName map[string]*Host
	closed bool
	done   chan struct{} // closed when teardown has finished
	after  []func()      // teardown steps that must run before the namespaces go
}

// Host is one network namespace.
type Host struct {
	Name   string  // logical name given to AddHost
	NS     string  // namespace name under /run/netns, for ip netns exec
	Ifaces []Iface // in creation order
	net    *Net
}

// Iface is one end of a veth pair.
type Iface struct {
	Name      string
	Addr      netip.Prefix // address and prefix length on this end
	Peer      *Host
	PeerIface string
}

// Iface returns the interface named name.
func (h *Host) Iface(name string) (Iface, bool) {
	for _, i := range h.Ifaces {
		if i.Name == name {
			return i, true
		}
	}
	return Iface{}, false
}

// Addr returns the address of interface name, or the zero Addr.
func (h *Host) Addr(name string) netip.Addr {
	i, _ := h.Iface(name)
	return i.Addr.Addr()
}

var (
	liveMu   sync.Mutex
	live     = map[*Net]struct{}{}
	sigOnce  sync.Once
	errRoot  = errors.New("netns: needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)")
	nameSafe = strings.NewReplacer("/", "-", " ", "-")
)

// watchSignals removes every live Net on SIGINT or SIGTERM, then re-raises the
// signal so the process ends as it would have without the handler.
func watchSignals() {
	sigOnce.Do(func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
		go func() {
			sig := <-ch
			liveMu.Lock()
			nets := make([]*Net, 0, len(live))
			for n := range live {
				nets = append(nets, n)
			}
			liveMu.Unlock()
			for _, n := range nets {
				n.Close()
			}
			signal.Reset(syscall.SIGINT, syscall.SIGTERM)
			_ = syscall.Kill(os.Getpid(), sig.(syscall.Signal))
		}()
	})
}

// New returns an empty Net. It fails without root.
func New() (*Net, error) {
	if os.Geteuid() != 0 {
		return nil, errRoot
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("netns: iproute2 needed: %w", err)
	}
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	n := &Net{prefix: "rt" + hex.EncodeToString(b[:]) + "-", byName: map[string]*Host{}, done: make(chan struct{})}
	watchSignals()
	liveMu.Lock()
	live[n] = struct{}{}
	liveMu.Unlock()
	return n, nil
}

// NewForTest returns a Net removed when t ends, pass or fail. Without root it
// skips t.
func NewForTest(t testing.TB) *Net {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: network namespace tests need root")
	}
	n, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("netns teardown: %v", err)
		}
	})
	return n
}

// Prefix returns the per-run prefix of the namespace names.
func (n *Net) Prefix() string { return n.prefix }

// Host returns the host with logical name name, or nil.
func (n *Net) Host(name string) *Host {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.byName[name]
}

// OnClose registers fn to run at Close before the namespaces are deleted (last
// registered, first run), e.g. to stop a link emulator.
func (n *Net) OnClose(fn func()) {
	n.mu.Lock()
	n.after = append(n.after, fn)
	n.mu.Unlock()
}

func run(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// AddHost creates a namespace with its loopback up.
func (n *Net) AddHost(name string) (*Host, error) {
	if name == "" || len(n.prefix)+len(name) > 200 {
		return nil, fmt.Errorf("netns: bad host name %q", name)
	}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil, errors.New("netns: closed")
	}
	if n.byName[name] != nil {
		n.mu.Unlock()
		return nil, fmt.Errorf("netns: host %q exists", name)
	}
	h := &Host{Name: name, NS: n.prefix + nameSafe.Replace(name), net: n}
	n.byName[name] = h
	n.hosts = append(n.hosts, h) // registered first so a failed build is still removed
	n.mu.Unlock()
	if err := run("netns", "add", h.NS); err != nil {
		return nil, err
	}
	if err := run("-n", h.NS, "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	// The testbed is IPv4 only. Without IPv6 the interfaces send no router
	// solicitations or MLD reports, so packet counters see test traffic alone.
	err := h.Do(func() error {
		for _, k := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+k+"/disable_ipv6", []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return h, nil
}

func checkAddr(p netip.Prefix) error {
	if !p.IsValid() || !p.Addr().Is4() || !Testbed.Contains(p.Addr()) {
		return fmt.Errorf("netns: address %v outside the testbed range %v", p, Testbed)
	}
	return nil
}

// Link joins a and b with a veth pair named ifA (in a) and ifB (in b), assigns
// the addresses (an invalid Prefix leaves that end unnumbered) and brings both
// ends up.
func (n *Net) Link(a *Host, ifA string, addrA netip.Prefix, b *Host, ifB string, addrB netip.Prefix) error {
	for _, p := range []netip.Prefix{addrA, addrB} {
		if p.IsValid() {
			if err := checkAddr(p); err != nil {
				return err
			}
		}
	}
	if len(ifA) >= 16 || len(ifB) >= 16 || ifA == "" || ifB == "" {
		return fmt.Errorf("netns: bad interface names %q %q", ifA, ifB)
	}
	if err := run("-n", a.NS, "link", "add", "name", ifA, "type", "veth", "peer", "name", ifB, "netns", b.NS); err != nil {
		return err
	}
	n.mu.Lock()
	a.Ifaces = append(a.Ifaces, Iface{Name: ifA, Addr: addrA, Peer: b, PeerIface: ifB})
	b.Ifaces = append(b.Ifaces, Iface{Name: ifB, Addr: addrB, Peer: a, PeerIface: ifA})
	n.mu.Unlock()
	for _, e := range []struct {
		h    *Host
		dev  string
		addr netip.Prefix
	}{{a, ifA, addrA}, {b, ifB, addrB}} {
		if e.addr.IsValid() {
			if err := run("-n", e.h.NS, "addr", "add", e.addr.String(), "dev", e.dev); err != nil {
				return err
			}
		}
		if err := run("-n", e.h.NS, "link", "set", "dev", e.dev, "up"); err != nil {
			return err
		}
	}
	return nil
}

// IP runs "ip -n <ns> args..." (e.g. "route", "add", ...), for what the helpers
// below do not cover.
func (h *Host) IP(args ...string) error {
	return run(append([]string{"-n", h.NS}, args...)...)
}

// AddRoute adds a route to dst via gw. A zero dst (or a /0) is the default
// route; a zero gw with a non-empty dev adds a device route. table 0 is the main
// table.
func (h *Host) AddRoute(dst netip.Prefix, gw netip.Addr, dev string, table int) error {
	d := "default"
	if dst.IsValid() && dst.Bits() != 0 {
		d = dst.Masked().String()
	}
	args := []string{"route", "add", d}
	if gw.IsValid() {
		args = append(args, "via", gw.String())
	}
	if dev != "" {
		args = append(args, "dev", dev)
	}
	if table != 0 {
		args = append(args, "table", fmt.Sprint(table))
	}
	return h.IP(args...)
}

// AddRule adds a policy rule, e.g. AddRule("from", "198.18.10.2", "lookup", "100").
func (h *Host) AddRule(args ...string) error {
	return h.IP(append([]string{"rule", "add"}, args...)...)
}

// Sysctl writes value to /proc/sys/<key> inside the namespace (key with slashes
// or dots, e.g. "net.ipv4.ip_forward").
func (h *Host) Sysctl(key, value string) error {
	if strings.Contains(key, "..") {
		return fmt.Errorf("netns: bad sysctl %q", key)
	}
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	return h.Do(func() error { return os.WriteFile(path, []byte(value), 0) })
}

// EnableForwarding turns on IPv4 forwarding and turns reverse-path filtering off:
// testbed routes are asymmetric on purpose (multi-uplink routers, emulator TUNs).
func (h *Host) EnableForwarding() error {
	return h.Do(func() error {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0); err != nil {
			return err
		}
		return setRPFilterOff(h)
	})
}

// setRPFilterOff runs inside the namespace.
func setRPFilterOff(h *Host) error {
	names := []string{"all", "default"}
	for _, i := range h.Ifaces {
		names = append(names, i.Name)
	}
	for _, n := range names {
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+n+"/rp_filter", []byte("0"), 0); err != nil {
			return err
		}
	}
	return nil
}

// Do runs fn on an OS thread that has joined the host's namespace. Sockets fn
// opens stay in that namespace after Do returns, so a test can open them here and
// use them anywhere. Goroutines fn starts run in the caller's namespace, not the
// host's. A panic in fn is returned as an error.
func (h *Host) Do(fn func() error) error {
	return Do(h.NS, fn)
}

// Do runs fn inside the named namespace (see Host.Do).
func Do(ns string, fn func() error) error { return netcfg.InNamespaceNamed(ns, fn) }

// Command returns a command that runs inside the host's namespace through
// "ip netns exec". Close kills whatever still runs in the namespace.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// CommandContext is Command with a context that kills the command.
func (h *Host) CommandContext(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Close kills the processes left in the namespaces, runs the OnClose steps and
// deletes every namespace. It can be called more than once and from several
// goroutines (a test cleanup racing the signal handler); every call returns only
// after the teardown has finished.
func (n *Net) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		<-n.done
		return nil
	}
	n.closed = true
	hosts, after := n.hosts, n.after
	n.mu.Unlock()
	for i := len(after) - 1; i >= 0; i-- {
		after[i]()
	}
	var errs []error
	for i := len(hosts) - 1; i >= 0; i-- {
		h := hosts[i]
		if _, err := os.Stat("/run/netns/" + h.NS); err != nil {
			continue
		}
		killAll(h.NS)
		if err := run("netns", "del", h.NS); err != nil {
			errs = append(errs, err)
		}
	}
	liveMu.Lock()
	delete(live, n)
	liveMu.Unlock()
	close(n.done)
	return errors.Join(errs...)
}

// killAll ends the processes started in namespace ns; they belong to this run.
func killAll(ns string) {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return
	}
	self := os.Getpid()
	for _, f := range strings.Fields(string(out)) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil && pid > 0 && pid != self {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
