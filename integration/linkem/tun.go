package linkem

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/raicnet/raic/pkg/mono"
	"github.com/raicnet/raic/pkg/netcfg"
)

// rulePriority places the emulator's policy rules ahead of the main table (32766)
// and after the local table (0), so traffic addressed to the namespace itself is
// still delivered locally and unimpaired.
const rulePriority = 100

// TUNLink emulates both directions of a link inside a network namespace that
// routes between two interfaces, A and B, without touching IP addresses.
//
// Packets arriving on A are policy-routed (ip rule iif A lookup T) into a TUN
// device; the driver reads them, holds each until the Link lets it depart, and
// writes it back into the same TUN. The kernel then sees it arrive on the TUN,
// where the rule no longer matches, and forwards it out of B by the main table.
// B to A works the same way with a second TUN. Because each packet is forwarded
// twice its TTL drops by two in the namespace.
type TUNLink struct {
	ns   string
	dirs [2]*tunDir
}

type tunDir struct {
	name  string // TUN device name
	iif   string
	table int
	f     *os.File
	link  *Link
	sched *scheduler
	done  chan struct{}
}

// AttachTUN starts emulating aToB on traffic entering namespace ns through
// interface ifA and bToA on traffic entering through ifB. It enables IP forwarding
// and turns reverse-path filtering off in the namespace, since re-injected packets
// arrive on a TUN device their source address is not routed through.
// The namespace is a name under /run/netns (as ip netns add creates).
func AttachTUN(ns, ifA, ifB string, aToB, bToA Config) (*TUNLink, error) {
	if err := aToB.Validate(); err != nil {
		return nil, err
	}
	if err := bToA.Validate(); err != nil {
		return nil, err
	}
	t := &TUNLink{ns: ns}
	start := mono.Now()
	var err error
	for i, d := range []struct {
		iif string
		cfg Config
	}{{ifA, aToB}, {ifB, bToA}} {
		td := &tunDir{iif: d.iif, name: tunName(d.iif), done: make(chan struct{})}
		if td.link, err = New(d.cfg, start); err != nil {
			t.Close()
			return nil, err
		}
		t.dirs[i] = td // before setup, so Close undoes a partial setup
		if err = inNS(ns, td.setup); err != nil {
			t.Close()
			return nil, fmt.Errorf("linkem: tun for %s in %s: %w", d.iif, ns, err)
		}
		f := td.f
		if td.sched, err = newScheduler(td.link, 0, func(it *item) { _, _ = f.Write(it.buf) }); err != nil {
			t.Close()
			return nil, err
		}
		go td.read()
	}
	return t, nil
}

// AToB and BToA return the links of the two directions, for counters and seeds.
func (t *TUNLink) AToB() *Link { return t.dirs[0].link }
func (t *TUNLink) BToA() *Link { return t.dirs[1].link }

// Close stops emulation and removes the TUN devices and rules; traffic then
// flows directly between A and B. It is safe to call on a partly built TUNLink
// and after the namespace is gone.
func (t *TUNLink) Close() error {
	var errs []error
	for _, d := range t.dirs {
		if d == nil {
			continue
		}
		if d.f != nil {
			d.f.Close() // a non-persistent TUN disappears with its last descriptor
			if d.sched != nil {
				<-d.done
			}
		}
		if d.sched != nil {
			d.sched.close()
		}
		if d.table != 0 {
			err := inNS(t.ns, func() error {
				r := netlink.NewRule()
				r.Family = netlink.FAMILY_V4
				r.IifName, r.Table, r.Priority = d.iif, d.table, rulePriority
				return netlink.RuleDel(r)
			})
			if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func tunName(iif string) string {
	n := "lk-" + iif
	if len(n) > unix.IFNAMSIZ-1 {
		n = n[:unix.IFNAMSIZ-1]
	}
	return n
}

// setup runs inside the namespace: it creates the TUN device, the routing table
// that sends everything into it, and the rule that selects that table.
func (d *tunDir) setup() error {
	for _, k := range []string{"net/ipv4/ip_forward", "net/ipv4/conf/all/rp_filter", "net/ipv4/conf/default/rp_filter", "net/ipv4/conf/" + d.iif + "/rp_filter"} {
		v := "0"
		if strings.HasSuffix(k, "ip_forward") {
			v = "1"
		}
		if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0); err != nil {
			return err
		}
	}
	if _, err := netlink.LinkByName(d.iif); err != nil {
		return fmt.Errorf("interface %s: %w", d.iif, err)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	ifr, err := unix.NewIfreq(d.name)
	if err != nil {
		unix.Close(fd)
		return err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return fmt.Errorf("TUNSETIFF %s: %w", d.name, err)
	}
	// The non-blocking descriptor lets os.File use the runtime poller, so Close
	// wakes a pending Read.
	d.f = os.NewFile(uintptr(fd), d.name)
	l, err := netlink.LinkByName(d.name)
	if err != nil {
		return err
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+d.name+"/rp_filter", []byte("0"), 0); err != nil {
		return err
	}
	// A longer queue than the default 500 keeps the kernel from dropping bursts
	// before the reader drains them; drops belong to the emulated queue.
	_ = netlink.LinkSetTxQLen(l, 10000)
	if err := netlink.LinkSetUp(l); err != nil {
		return err
	}
	// The table number only has to be unique in the namespace; the device index is.
	d.table = 60000 + l.Attrs().Index
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Table: d.table, Scope: netlink.SCOPE_LINK, Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}); err != nil {
		return fmt.Errorf("default route dev %s table %d: %w", d.name, d.table, err)
	}
	r := netlink.NewRule()
	r.Family = netlink.FAMILY_V4
	r.IifName, r.Table, r.Priority = d.iif, d.table, rulePriority
	if err := netlink.RuleAdd(r); err != nil {
		d.table = 0
		return fmt.Errorf("rule iif %s: %w", d.iif, err)
	}
	return nil
}

func (d *tunDir) read() {
	defer close(d.done)
	buf := make([]byte, maxPacket)
	for {
		n, err := d.f.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			continue
		}
		if n == 0 {
			continue
		}
		now := mono.Now()
		deps, k, cause := d.link.Decide(now, n)
		if cause != Delivered {
			continue
		}
		for i := 0; i < k; i++ {
			it := d.sched.get(buf[:n])
			if it == nil {
				d.link.CountOverflow()
				continue
			}
			it.at = deps[i]
			if !d.sched.push(it) {
				d.link.CountOverflow()
			}
		}
	}
}

// inNS runs fn on an OS thread that has joined namespace ns.
func inNS(ns string, fn func() error) error { return netcfg.InNamespaceNamed(ns, fn) }
