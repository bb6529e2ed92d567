package uplink

import (
	"fmt"
	"net/netip"

	"github.com/raicnet/raic/pkg/config"
)

// ParseSource reads an uplink's source address: "ADDR" (any port) or
// "ADDR:PORT".
func ParseSource(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("not an address or address:port: %q", s)
	}
	return netip.AddrPortFrom(a, 0), nil
}

// CheckSocket checks what every configured uplink socket has, for uplink i of
// the table prefix ("uplink" in the router, "next.uplink" in the
// intermediate): an empty name becomes "uplinkI"; a name given twice (seen
// holds the earlier ones) is an error; a source must be ADDR or ADDR:PORT,
// and one with a port is bound as given, so it must not be another socket's
// address.
func CheckSocket(meta *config.Meta, prefix string, i int, name *string, source string, seen map[string]bool) {
	key := func(k string) string { return fmt.Sprintf("%s.%d.%s", prefix, i, k) }
	if *name == "" {
		*name = fmt.Sprintf("uplink%d", i)
	}
	if seen[*name] {
		meta.Report(key("name"), "uplink %q is configured twice", *name)
	}
	seen[*name] = true
	if source != "" {
		if ap, err := ParseSource(source); err != nil {
			meta.Report(key("source"), "%v", err)
		} else {
			meta.Listen(key("source"), ap)
		}
	}
}
