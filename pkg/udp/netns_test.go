package udp

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testNetns creates a named network namespace unique to this run and removes it
// when the test ends.
func testNetns(t *testing.T, role string) string {
	t.Helper()
	var r [4]byte
	rand.Read(r[:])
	name := fmt.Sprintf("raic-udp-%s-%d-%s", role, os.Getpid(), hex.EncodeToString(r[:]))
	ipCmd(t, "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return name
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// listenIn opens a socket inside namespace ns. A socket belongs to the namespace
// of the thread that created it, so the goroutine is pinned to its thread, moved
// into ns for the socket() and bind() calls, and moved back before it is released.
func listenIn(t *testing.T, ns, network string, opt Options) *Conn {
	t.Helper()
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("setns %s: %v", ns, err)
	}
	c, lerr := Listen(network, opt)
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: the runtime then discards it when the goroutine
		// ends instead of reusing a thread stuck in the test namespace.
		t.Fatalf("setns back: %v", err)
	}
	runtime.UnlockOSThread()
	if lerr != nil {
		t.Fatalf("Listen in %s (%+v): %v", ns, opt, lerr)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestBindToDevice builds two namespaces joined by two veth pairs, like a router
// with two uplinks:
//
//	router: ra0 198.18.1.1/24 ─── rb0 198.18.1.2/24 :peer
//	router: ra1 198.18.2.1/24 ─── rb1 198.18.2.2/24 :peer
//
// A router socket bound to ra0 must receive only what arrives on ra0, and must send
// out of ra0 even to an address that the routing table puts behind ra1.
func TestBindToDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN for namespaces and veth, CAP_NET_RAW for SO_BINDTODEVICE)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs the ip command (iproute2) to build the namespaces")
	}
	router := testNetns(t, "r")
	peer := testNetns(t, "p")
	for i := 0; i < 2; i++ {
		a, b := fmt.Sprintf("ra%d", i), fmt.Sprintf("rb%d", i)
		ipCmd(t, "-n", router, "link", "add", a, "type", "veth", "peer", "name", b, "netns", peer)
		ipCmd(t, "-n", router, "addr", "add", fmt.Sprintf("198.18.%d.1/24", i+1), "dev", a)
		ipCmd(t, "-n", peer, "addr", "add", fmt.Sprintf("198.18.%d.2/24", i+1), "dev", b)
		ipCmd(t, "-n", router, "link", "set", a, "up")
		ipCmd(t, "-n", peer, "link", "set", b, "up")
	}
	ipCmd(t, "-n", router, "link", "set", "lo", "up")
	ipCmd(t, "-n", peer, "link", "set", "lo", "up")

	bound := listenIn(t, router, "udp4", Options{Device: "ra0"})
	unbound := listenIn(t, router, "udp4", Options{})
	port := bound.LocalAddr().Port()
	p1 := listenIn(t, peer, "udp4", Options{Local: netip.MustParseAddrPort("198.18.1.2:0")})
	p2 := listenIn(t, peer, "udp4", Options{Local: netip.MustParseAddrPort("198.18.2.2:0")})

	recvOne := func(c *Conn, wait time.Duration) (string, netip.AddrPort, error) {
		buf := make([]byte, 100)
		c.SetReadDeadline(time.Now().Add(wait))
		defer c.SetReadDeadline(time.Time{})
		n, from, err := c.ReadFrom(buf)
		return string(buf[:n]), from, err
	}

	// Receive side. The first packets may wait for ARP; allow a second.
	if err := p2.WriteTo([]byte("via-ra1"), netip.MustParseAddrPort(fmt.Sprintf("198.18.2.1:%d", port))); err != nil {
		t.Fatal(err)
	}
	if err := p1.WriteTo([]byte("via-ra0"), netip.MustParseAddrPort(fmt.Sprintf("198.18.1.1:%d", port))); err != nil {
		t.Fatal(err)
	}
	got, from, err := recvOne(bound, time.Second)
	if err != nil || got != "via-ra0" || from != p1.LocalAddr() {
		t.Fatalf("bound socket got %q from %v (%v); want via-ra0 from %v", got, from, err, p1.LocalAddr())
	}
	if got, from, err := recvOne(bound, 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("bound socket received %q from %v (err %v) that arrived on ra1", got, from, err)
	}

	// Send side. The route to 198.18.2.2 is via ra1; the unbound socket follows it
	// and so leaves with source 198.18.2.1, the bound socket must leave by ra0 with
	// source 198.18.1.1 (Linux treats the destination as on-link for the bound
	// device, and the peer answers ARP for any of its addresses).
	tx0 := txPackets(t, router, "ra0")
	if err := unbound.WriteTo([]byte("control"), p2.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	got, from, err = recvOne(p2, time.Second)
	if err != nil || got != "control" || from.Addr() != netip.MustParseAddr("198.18.2.1") {
		t.Fatalf("unbound socket: peer got %q from %v (%v); want control from 198.18.2.1", got, from, err)
	}
	if err := bound.WriteTo([]byte("bound"), p2.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	got, from, err = recvOne(p2, time.Second)
	if err != nil || got != "bound" || from != netip.AddrPortFrom(netip.MustParseAddr("198.18.1.1"), port) {
		t.Fatalf("bound socket: peer got %q from %v (%v); want bound from 198.18.1.1:%d", got, from, err, port)
	}
	if tx := txPackets(t, router, "ra0"); tx <= tx0 {
		t.Fatalf("ra0 tx_packets %d -> %d: bound send did not leave by ra0", tx0, tx)
	}
}

// txPackets reads a device's transmit counter inside a namespace.
func txPackets(t *testing.T, ns, dev string) uint64 {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "-s", "-o", "link", "show", "dev", dev).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -s link: %v: %s", err, out)
	}
	// One-line format: "... TX: bytes packets errors ...\    <bytes> <packets> ..."
	s := string(out)
	i := strings.LastIndex(s, "TX:")
	if i < 0 {
		t.Fatalf("no TX counters in %q", s)
	}
	f := strings.Fields(strings.ReplaceAll(s[i:], `\`, " "))
	// f: TX: bytes packets errors dropped carrier collsns [...] <bytes> <packets> ...
	var nums []uint64
	for _, w := range f {
		var v uint64
		if _, err := fmt.Sscan(w, &v); err == nil {
			nums = append(nums, v)
		}
	}
	if len(nums) < 2 {
		t.Fatalf("cannot parse TX counters in %q", s)
	}
	return nums[1]
}
