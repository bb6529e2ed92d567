// Package allow holds the allowlists of proxies and intermediate proxies: the
// servers a client may reach, written as "198.18.9.2", "198.18.9.0/24",
// "198.18.9.2:27015", "198.18.9.0/24:27000-27050" or "[2001:db8::/32]:3074".
package allow

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Rule is one entry of an allowlist: an address prefix and a port range.
type Rule struct {
	prefix           netip.Prefix
	portLo, portHigh uint16
}

// List is a client's allowlist.
type List []Rule

// Allows reports whether ap is in the list.
func (l List) Allows(ap netip.AddrPort) bool {
	a, p := ap.Addr().Unmap(), ap.Port()
	for _, r := range l {
		if r.prefix.Contains(a) && p >= r.portLo && p <= r.portHigh {
			return true
		}
	}
	return false
}

// Parse reads a list; an error names the entry at fault.
func Parse(entries []string) (List, error) {
	var l List
	for _, e := range entries {
		r, err := parseRule(strings.TrimSpace(e))
		if err != nil {
			return nil, fmt.Errorf("entry %q: %v", e, err)
		}
		l = append(l, r)
	}
	return l, nil
}

// parseAllowRule reads "ADDR", "PREFIX", "ADDR:PORT", "PREFIX:LO-HI" and the
// bracketed IPv6 forms "[ADDR]:PORT", "[PREFIX]:LO-HI".
func parseRule(s string) (Rule, error) {
	r := Rule{portLo: 1, portHigh: 65535}
	host, ports := s, ""
	switch {
	case strings.HasPrefix(s, "["):
		end := strings.Index(s, "]")
		if end < 0 {
			return r, fmt.Errorf("missing ]")
		}
		host = s[1:end]
		rest := s[end+1:]
		if rest != "" {
			if !strings.HasPrefix(rest, ":") {
				return r, fmt.Errorf("expected :PORT after ]")
			}
			ports = rest[1:]
		}
	case strings.Count(s, ":") == 1:
		i := strings.LastIndex(s, ":")
		host, ports = s[:i], s[i+1:]
	}
	var err error
	if strings.Contains(host, "/") {
		r.prefix, err = netip.ParsePrefix(host)
	} else {
		var a netip.Addr
		a, err = netip.ParseAddr(host)
		if err == nil {
			r.prefix = netip.PrefixFrom(a, a.BitLen())
		}
	}
	if err != nil {
		return r, err
	}
	r.prefix = r.prefix.Masked()
	if ports != "" {
		lo, hi, found := strings.Cut(ports, "-")
		if !found {
			hi = lo
		}
		l, err1 := strconv.ParseUint(lo, 10, 16)
		h, err2 := strconv.ParseUint(hi, 10, 16)
		if err1 != nil || err2 != nil || l == 0 || h < l {
			return r, fmt.Errorf("bad port or port range %q", ports)
		}
		r.portLo, r.portHigh = uint16(l), uint16(h)
	}
	return r, nil
}

// NewRule is the rule for the addresses in prefix and the ports lo to hi
// (connect tokens carry their servers in this binary form).
func NewRule(prefix netip.Prefix, lo, hi uint16) Rule {
	return Rule{prefix: prefix.Masked(), portLo: lo, portHigh: hi}
}
