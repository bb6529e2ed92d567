package netns

import (
	"bytes"
	"fmt"
	"net/netip"
	"os/exec"
)

// NAT is how a NAT host (Host.NAT) maps and filters, in the terms of RFC 4787.
type NAT int

const (
	// NATPortRestricted is a plain nft masquerade: the mapping keeps the
	// inside port when it can (so it is endpoint-independent in practice) and
	// only packets from an address and port the inside host sent to get in.
	// Hole punching works through it. This is what most home routers do.
	NATPortRestricted NAT = iota
	// NATFullCone maps the same way and lets anything in that reaches a
	// mapped port (endpoint-independent filtering).
	NATFullCone
	// NATSymmetric picks a new random port for every destination
	// (masquerade random), so the port the rendezvous saw is not the one the
	// peer's packets come from, and filters like NATPortRestricted. Two
	// peers behind it and a port-restricted NAT cannot punch.
	NATSymmetric
)

func (n NAT) String() string {
	switch n {
	case NATPortRestricted:
		return "port-restricted"
	case NATFullCone:
		return "full-cone"
	case NATSymmetric:
		return "symmetric"
	}
	return "unknown"
}

// HaveNft reports whether the nft command is installed.
func HaveNft() bool {
	_, err := exec.LookPath("nft")
	return err == nil
}

// NAT makes h a NAT from the inside towards interface wan, with nft. inside
// is the host behind it (the full-cone mode forwards unsolicited UDP there).
//
// Every mode drops packets that arrive on wan and match no connection before
// the kernel records them (a filter chain after conntrack, before NAT):
// otherwise an early punch packet from the peer would create a conntrack
// entry that makes the NAT pick another port for the inside host's own
// packet to that peer, and punching would fail for a reason no home router has.
func (h *Host) NAT(wan string, mode NAT, inside netip.Addr) error {
	var rules string
	switch mode {
	case NATPortRestricted:
		rules = fmt.Sprintf(`
  chain post { type nat hook postrouting priority srcnat; policy accept; oifname %q masquerade; }
  chain guard { type filter hook prerouting priority mangle; policy accept; iifname %q ct state new drop; }`, wan, wan)
	case NATSymmetric:
		rules = fmt.Sprintf(`
  chain post { type nat hook postrouting priority srcnat; policy accept; oifname %q masquerade random; }
  chain guard { type filter hook prerouting priority mangle; policy accept; iifname %q ct state new drop; }`, wan, wan)
	case NATFullCone:
		if !inside.Is4() {
			return fmt.Errorf("netns: a full-cone NAT needs the inside host's IPv4 address")
		}
		rules = fmt.Sprintf(`
  chain post { type nat hook postrouting priority srcnat; policy accept; oifname %q masquerade; }
  chain cone { type nat hook prerouting priority dstnat; policy accept; iifname %q udp dport 1024-65535 dnat to %s; }`, wan, wan, inside)
	default:
		return fmt.Errorf("netns: unknown NAT mode %d", mode)
	}
	cmd := h.Command("nft", "-f", "-")
	cmd.Stdin = bytes.NewBufferString("table ip raic_testnat {" + rules + "\n}\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("netns: nft in %s: %v: %s", h.Name, err, out)
	}
	return nil
}
