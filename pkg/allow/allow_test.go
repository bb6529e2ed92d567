package allow

import (
	"net/netip"
	"testing"
)

func TestParseAndAllows(t *testing.T) {
	l, err := Parse([]string{"198.18.9.2", "198.18.10.0/24:27000-27050", "198.18.11.5:3074", "[2001:db8::/32]:9"})
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]bool{
		"198.18.9.2:1":           true,
		"198.18.9.2:65535":       true,
		"198.18.9.3:1":           false,
		"198.18.10.200:27015":    true,
		"198.18.10.200:27051":    false,
		"198.18.11.5:3074":       true,
		"198.18.11.5:3075":       false,
		"[2001:db8::1]:9":        true,
		"[2001:db8::1]:10":       false,
		"[::ffff:198.18.9.2]:80": true, // IPv4-mapped IPv6 is the IPv4 address
	}
	for ap, want := range cases {
		if got := l.Allows(netip.MustParseAddrPort(ap)); got != want {
			t.Errorf("Allows(%s) = %v, want %v", ap, got, want)
		}
	}
	for _, bad := range []string{"", "nonsense", "198.18.0.0/33", "198.18.9.2:0", "198.18.9.2:9-1", "[2001:db8::1", "198.18.9.2:70000"} {
		if _, err := Parse([]string{bad}); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}
