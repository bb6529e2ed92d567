package tcpsplit

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"
)

// Transparent split: an nft nat rule redirects chosen TCP connections coming
// in from the LAN to a local port, where the router accepts them and reads
// each one's original destination (SO_ORIGINAL_DST) to carry it there. The
// client never knows: its SYN is answered by the router.

// InstallRedirect replaces the nft table "ip <table>" with one that redirects
// TCP from iif to any of ports ("N" or "LO-HI", checked by the caller) and,
// if to is not empty, to one of those prefixes, to the local port. The table
// is the router's alone.
func InstallRedirect(table, iif string, ports []string, to []netip.Prefix, port uint16) error {
	if len(ports) == 0 {
		return errors.New("tcpsplit: no port to redirect")
	}
	ps := ports
	match := fmt.Sprintf("iifname %q", iif)
	if len(to) > 0 {
		var ds []string
		for _, p := range to {
			ds = append(ds, p.String())
		}
		match += " ip daddr { " + strings.Join(ds, ", ") + " }"
	}
	script := fmt.Sprintf("add table ip %[1]s\ndelete table ip %[1]s\ntable ip %[1]s {\n"+
		"\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n"+
		"\t\t%[2]s tcp dport { %[3]s } redirect to :%[4]d\n\t}\n}\n", table, match, strings.Join(ps, ", "), port)
	return nft(script)
}

// RemoveRedirect deletes the nft table "ip <table>" if it exists.
func RemoveRedirect(table string) error {
	return nft(fmt.Sprintf("add table ip %[1]s\ndelete table ip %[1]s\n", table))
}

func nft(script string) error {
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("tcpsplit: nft: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// OriginalDst returns where a redirected connection was going.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, errors.New("tcpsplit: not a TCP connection")
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var ap netip.AddrPort
	var serr error
	err = rc.Control(func(fd uintptr) {
		// struct sockaddr_in is 16 bytes: family, port (big-endian), address;
		// IPv6Mreq is the 20-byte buffer x/sys offers for such a getsockopt.
		m, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
		if err != nil {
			serr = err
			return
		}
		b := m.Multiaddr
		ap = netip.AddrPortFrom(netip.AddrFrom4([4]byte{b[4], b[5], b[6], b[7]}), uint16(b[2])<<8|uint16(b[3]))
	})
	if err == nil {
		err = serr
	}
	return ap, err
}
