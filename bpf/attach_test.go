//go:build linux

package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// skipError makes inPrivateNetns skip the test instead of failing it: a
// kernel feature the test needs is missing.
type skipError struct{ error }

// inPrivateNetns runs fn on a goroutine whose thread has its own, unnamed
// network namespace. The thread is never unlocked, so the runtime discards it
// when fn returns, and the namespace with its devices goes away with the
// last reference: nothing is left behind even if the test dies half-way.
func inPrivateNetns(t *testing.T, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- skipError{fmt.Errorf("cannot create a network namespace: %w", err)}
			return
		}
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		var skip skipError
		if errors.As(err, &skip) {
			t.Skipf("skipping: %v", skip.error)
		}
		t.Fatal(err)
	}
}

// vethPair creates rvA <-> rvB in the current namespace, brings both up and
// gives rvB 198.18.0.2/24. Frames written to rvA arrive at rvB's ingress.
func vethPair() (a, b netlink.Link, err error) {
	la := netlink.NewLinkAttrs()
	la.Name = "rvA"
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "rvB"}); err != nil {
		return nil, nil, skipError{fmt.Errorf("cannot create a veth pair: %w", err)}
	}
	if a, err = netlink.LinkByName("rvA"); err != nil {
		return nil, nil, err
	}
	if b, err = netlink.LinkByName("rvB"); err != nil {
		return nil, nil, err
	}
	addr, _ := netlink.ParseAddr("198.18.0.2/24")
	if err := netlink.AddrAdd(b, addr); err != nil {
		return nil, nil, err
	}
	for _, l := range []netlink.Link{a, b} {
		if err := netlink.LinkSetUp(l); err != nil {
			return nil, nil, err
		}
	}
	// A veth carries frames only once both ends report carrier, which
	// happens asynchronously after the links are set up.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if a, err = netlink.LinkByName("rvA"); err != nil {
			return nil, nil, err
		}
		if b, err = netlink.LinkByName("rvB"); err != nil {
			return nil, nil, err
		}
		if a.Attrs().OperState == netlink.OperUp && b.Attrs().OperState == netlink.OperUp {
			return a, b, nil
		}
		if time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("veth pair not up: %v/%v", a.Attrs().OperState, b.Attrs().OperState)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sendFrame writes one Ethernet frame out of ifindex through a packet socket.
func sendFrame(ifindex int, frame []byte) error {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: ifindex})
}

// udpListener binds a UDP socket in the current namespace.
func udpListener(addr netip.AddrPort) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return -1, err
	}
	tv := unix.NsecToTimeval(int64(2 * time.Second))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// TestAttachNetns attaches the classifier to a veth in a private namespace,
// sends a real UDP packet to an LC port through it and reads the flow from
// the map; then detaches and checks that the program no longer sees packets.
func TestAttachNetns(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		name := "tcx"
		if legacy {
			name = "tc-clsact"
		}
		t.Run(name, func(t *testing.T) {
			d := loadForTest(t)
			if err := d.SetClassifierConfig(ClassifierConfig{LCMark: testMark}); err != nil {
				t.Fatal(err)
			}
			if err := d.SetPort(ProtoUDP, 3074, PortEntry{AppID: 9, LC: true}); err != nil {
				t.Fatal(err)
			}
			inPrivateNetns(t, func() error { return attachAndSend(d, legacy) })
		})
	}
}

func attachAndSend(d *Datapath, legacy bool) error {
	a, b, err := vethPair()
	if err != nil {
		return err
	}
	var att *Attachment
	if legacy {
		att, err = d.attach(b.Attrs().Index, d.objs.ClassifyIngress, true, true)
	} else {
		att, err = d.AttachClassifierByName("rvB")
	}
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	defer att.Detach() // idempotent
	if !legacy && att.Mode() == ModeLegacyTC {
		att.Detach()
		return skipError{errors.New("kernel has no tcx (Linux 6.6+); AttachClassifier fell back to tc clsact")}
	}
	want := ModeTCX
	if legacy {
		want = ModeLegacyTC
	}
	if att.Mode() != want {
		return fmt.Errorf("mode %v, want %v", att.Mode(), want)
	}

	src, dst := ap("198.18.0.1:40000"), ap("198.18.0.2:3074")
	fd, err := udpListener(dst)
	if err != nil {
		return err
	}
	defer unix.Close(fd)

	frame := buildPacket(src, dst, pktOpts{payload: 16})
	copy(frame[0:6], b.Attrs().HardwareAddr)
	copy(frame[6:12], a.Attrs().HardwareAddr)
	if err := sendFrame(a.Attrs().Index, frame); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	// The packet must still be delivered: classification never drops.
	buf := make([]byte, 64)
	n, _, err := recvfrom(fd, buf)
	if err != nil {
		return fmt.Errorf("receive through the classifier: %w", err)
	}
	if n != 16 {
		return fmt.Errorf("received %d bytes, want 16", n)
	}

	k := FlowKey{Proto: ProtoUDP, Src: src, Dst: dst}
	st, err := d.Flow(k)
	if err != nil {
		return fmt.Errorf("flow after attach: %w", err)
	}
	if st.Packets != 1 || st.Bytes != uint64(len(frame)) || st.AppID != 9 || st.Flags != FlowLCPort|FlowMarked {
		return fmt.Errorf("flow stats %+v, want one %d-byte LC packet of app 9", st, len(frame))
	}

	if err := att.Detach(); err != nil {
		return err
	}
	if err := att.Detach(); err != nil {
		return fmt.Errorf("second Detach: %w", err)
	}
	if err := sendFrame(a.Attrs().Index, frame); err != nil {
		return err
	}
	if _, _, err := recvfrom(fd, buf); err != nil {
		return fmt.Errorf("receive after detach: %w", err)
	}
	if st, err := d.Flow(k); err != nil || st.Packets != 1 {
		return fmt.Errorf("after detach: stats %+v, %v; want still 1 packet", st, err)
	}
	if legacy {
		filters, err := netlink.FilterList(b, netlink.HANDLE_MIN_INGRESS)
		if err != nil {
			return err
		}
		if len(filters) != 0 {
			return fmt.Errorf("%d filters left after detach", len(filters))
		}
	}
	return nil
}

// TestAttachSuppressorNetns attaches suppression to a veth egress and checks
// that enforcement follows the config: a UDP packet passes, then is dropped
// inside a cutoff window.
func TestAttachSuppressorNetns(t *testing.T) {
	d := loadForTest(t)
	inPrivateNetns(t, func() error {
		a, b, err := vethPair()
		if err != nil {
			return err
		}
		att, err := d.AttachSuppressor(a.Attrs().Index)
		if err != nil {
			return fmt.Errorf("attach: %w", err)
		}
		defer att.Detach()

		src, dst := ap("198.18.0.1:40000"), ap("198.18.0.2:5001")
		fd, err := udpListener(dst)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		frame := buildPacket(src, dst, pktOpts{payload: 8})
		copy(frame[0:6], b.Attrs().HardwareAddr)
		copy(frame[6:12], a.Attrs().HardwareAddr)
		binary.BigEndian.PutUint64(frame[len(frame)-8:], 1)

		if err := d.SetSuppressConfig(a.Attrs().Index, SuppressConfig{Enabled: true}); err != nil {
			return err
		}
		if err := sendFrame(a.Attrs().Index, frame); err != nil {
			return err
		}
		buf := make([]byte, 64)
		if _, _, err := recvfrom(fd, buf); err != nil {
			return fmt.Errorf("receive with suppression idle: %w", err)
		}

		var now unix.Timespec
		unix.ClockGettime(unix.CLOCK_MONOTONIC, &now)
		if err := d.SetCutoff(a.Attrs().Index, now.Nano()+int64(time.Minute), int64(2*time.Minute), 0); err != nil {
			return err
		}
		// A drop at tc egress reaches the packet socket as ENOBUFS.
		if err := sendFrame(a.Attrs().Index, frame); err != nil && !errors.Is(err, unix.ENOBUFS) {
			return err
		}
		tv := unix.NsecToTimeval(int64(200 * time.Millisecond))
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		if _, _, err := recvfrom(fd, buf); !errors.Is(err, unix.EAGAIN) {
			return fmt.Errorf("receive inside cutoff: %v, want timeout", err)
		}
		// The kernel's own IPv6 chatter on the new links is bulk too, so
		// the global counter may count more than our packet.
		c, err := d.SuppressCounters()
		if err != nil {
			return err
		}
		if c.DroppedCutoff < 1 {
			return fmt.Errorf("counters %+v, want a cutoff drop", c)
		}
		var flow *BulkFlow
		if err := d.BulkFlows(func(k FlowKey, f BulkFlow) bool {
			if k == (FlowKey{Proto: ProtoUDP, Src: src, Dst: dst}) {
				flow = &f
			}
			return true
		}); err != nil {
			return err
		}
		if flow == nil {
			return errors.New("test flow not tracked by suppress_egress")
		}
		if flow.Packets != 2 || flow.Drops != 1 {
			return fmt.Errorf("flow %+v, want 2 packets and 1 drop", *flow)
		}
		return nil
	})
}

// recvfrom is unix.Recvfrom that retries when a signal (the Go runtime
// preempts goroutines with SIGURG) interrupts the wait.
func recvfrom(fd int, buf []byte) (int, unix.Sockaddr, error) {
	for {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if !errors.Is(err, unix.EINTR) {
			return n, from, err
		}
	}
}

// A legacy tc filter attached inside a namespace is removed by a Detach
// called from a thread outside it (the router's Close may run anywhere).
func TestLegacyDetachFromAnotherThread(t *testing.T) {
	d := loadForTest(t)
	inPrivateNetns(t, func() error {
		_, b, err := vethPair()
		if err != nil {
			return err
		}
		att, err := d.attach(b.Attrs().Index, d.objs.ClassifyIngress, true, true)
		if err != nil {
			return fmt.Errorf("attach: %w", err)
		}
		// This goroutine holds the namespace's thread locked; another one
		// runs on a thread of the original namespace.
		done := make(chan error)
		go func() { done <- att.Detach() }()
		if err := <-done; err != nil {
			return fmt.Errorf("detach: %w", err)
		}
		filters, err := netlink.FilterList(b, netlink.HANDLE_MIN_INGRESS)
		if err != nil {
			return err
		}
		if len(filters) != 0 {
			return fmt.Errorf("%d filters left after a detach from another thread", len(filters))
		}
		return nil
	})
}
