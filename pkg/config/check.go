package config

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Validation helpers. Each checks one value of a decoded file (whose defaults
// were filled in before decoding, so the value is what the program will use),
// records an error about key when the value is refused, and reports whether it
// was accepted. Checking goes on after a refusal, so that every error of a
// file is reported at once.

// Duration accepts min <= d <= max.
func (m *Meta) Duration(key string, d, min, max time.Duration) bool {
	if d < min || d > max {
		m.Report(key, "%s is not within %s to %s", fmtDuration(d), fmtDuration(min), fmtDuration(max))
		return false
	}
	return true
}

// fmtDuration writes d as time.Duration does, without its zero tails: "24h",
// "1m", "1h30m".
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// DurationOrOff is Duration where 0 also stands for "off".
func (m *Meta) DurationOrOff(key string, d, min, max time.Duration) bool {
	if d == 0 {
		return true
	}
	if d < min || d > max {
		m.Report(key, "%s is not within %s to %s (or 0 for off)", fmtDuration(d), fmtDuration(min), fmtDuration(max))
		return false
	}
	return true
}

// Int accepts min <= v <= max.
func (m *Meta) Int(key string, v, min, max int) bool {
	if v < min || v > max {
		m.Report(key, "%d is not within %d to %d", v, min, max)
		return false
	}
	return true
}

// Float accepts a finite v with min <= v <= max; NaN and infinities never pass.
func (m *Meta) Float(key string, v, min, max float64) bool {
	if !finite(v) {
		m.Report(key, "%v is not a finite number", v)
		return false
	}
	if v < min || v > max {
		m.Report(key, "%v is not within %v to %v", v, min, max)
		return false
	}
	return true
}

// Ratio accepts a share: (0, 1], or [0, 1] when zero is allowed (0 for off).
func (m *Meta) Ratio(key string, v float64, zeroOK bool) bool {
	switch {
	case !finite(v):
		m.Report(key, "%v is not a finite number", v)
	case zeroOK && (v < 0 || v > 1):
		m.Report(key, "%v is not within 0 to 1", v)
	case !zeroOK && (v <= 0 || v > 1):
		m.Report(key, "%v is not above 0 and at most 1", v)
	default:
		return true
	}
	return false
}

// Rate accepts a rate (packets or bits per second): finite, above 0 and at
// most max.
func (m *Meta) Rate(key string, v, max float64) bool {
	switch {
	case !finite(v):
		m.Report(key, "%v is not a finite number", v)
	case v <= 0 || v > max:
		m.Report(key, "%v is not above 0 and at most %v", v, max)
	default:
		return true
	}
	return false
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// AddrPort accepts "ADDR:PORT" (an IP address, no names).
func (m *Meta) AddrPort(key, s string) (netip.AddrPort, bool) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		m.Report(key, "not an address:port: %v", err)
		return netip.AddrPort{}, false
	}
	return ap, true
}

// HostPort accepts "HOST:PORT" where HOST may be empty, an IP address or a
// name, as a TCP listener takes it (the metrics address).
func (m *Meta) HostPort(key, s string) bool {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		m.Report(key, "not a host:port: %v", err)
		return false
	}
	if strings.ContainsAny(host, " \t\n/") {
		m.Report(key, "bad host %q", host)
		return false
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		m.Report(key, "bad port %q", port)
		return false
	}
	return true
}

// Prefix accepts a network, "ADDR/BITS", with no bits set beyond the mask.
func (m *Meta) Prefix(key, s string) (netip.Prefix, bool) {
	p, err := netip.ParsePrefix(s)
	if err != nil || p != p.Masked() {
		m.Report(key, "%q is not a network such as 198.18.0.0/15", s)
		return netip.Prefix{}, false
	}
	return p, true
}

// Listen notes that the program binds a UDP socket to ap, named by key, and
// refuses an address that an earlier Listen of the file already takes. The
// unspecified address takes every address of its port (:: those of both
// families, as Go binds it dual-stack), so 0.0.0.0:27015 and
// 127.0.0.1:27015 cannot both be listened on. Port 0 (any free port) never
// collides.
func (m *Meta) Listen(key string, ap netip.AddrPort) bool {
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if ap.Port() != 0 {
		for _, l := range m.listens {
			if l.ap.Port() == ap.Port() && overlaps(l.ap.Addr(), ap.Addr()) {
				m.Report(key, "%s is already the listen address of %s%s", ap, l.key, m.atLine(l.key))
				return false
			}
		}
	}
	m.listens = append(m.listens, listen{key, ap})
	return true
}

type listen struct {
	key string
	ap  netip.AddrPort
}

func overlaps(a, b netip.Addr) bool {
	if a == b {
		return true
	}
	any6 := func(x netip.Addr) bool { return x.Is6() && x.IsUnspecified() }
	if any6(a) || any6(b) {
		return true
	}
	return a.Is4() && b.Is4() && (a.IsUnspecified() || b.IsUnspecified())
}

func (m *Meta) atLine(key string) string {
	if l := m.Line(key); l > 0 {
		return fmt.Sprintf(" (line %d)", l)
	}
	return ""
}
