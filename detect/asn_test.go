package detect

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"unsafe"
)

const iptoasnTSV = "" +
	"198.18.0.0\t198.18.255.255\t32590\tUS\tVALVE-CORPORATION\n" +
	"198.19.0.0\t198.19.0.255\t0\tNone\tNot routed\n" +
	"198.51.100.0\t198.51.100.255\t6507\tUS\tRIOT-GAMES, Inc\n" +
	"203.0.113.0\t203.0.113.127\t6507\tUS\tRIOT-GAMES, Inc\n" +
	"2001:db8::\t2001:db8:0:ffff:ffff:ffff:ffff:ffff\t57976\tUS\tBLIZZARD\n"

func TestImportIPtoASNTabs(t *testing.T) {
	tab, err := ImportASN("ip2asn-combined.tsv", strings.NewReader(iptoasnTSV))
	if err != nil {
		t.Fatal(err)
	}
	v4, v6 := tab.Len()
	if v4 != 3 || v6 != 1 {
		t.Fatalf("ranges v4=%d v6=%d, want 3 (AS0 skipped) and 1", v4, v6)
	}
	for addr, want := range map[string]uint32{
		"198.18.0.0": 32590, "198.18.255.255": 32590, "198.18.7.9": 32590,
		"198.19.0.5": 0, "198.17.255.255": 0, "198.51.100.77": 6507,
		"203.0.113.127": 6507, "203.0.113.128": 0, "192.0.2.1": 0,
		"::ffff:198.18.1.1": 32590, "2001:db8::1": 57976,
		"2001:db8:0:ffff:ffff:ffff:ffff:ffff": 57976, "2001:db8:1::": 0, "::1": 0,
	} {
		if got := tab.Lookup(netip.MustParseAddr(addr)); got != want {
			t.Errorf("%s: AS%d, want AS%d", addr, got, want)
		}
	}
	if o := tab.Owner(6507); o != "RIOT-GAMES, Inc" {
		t.Fatalf("owner %q: a comma inside a tab separated field must be kept", o)
	}
	if got := tab.ASNsOwnedBy("valve-corporation"); len(got) != 1 || got[0] != 32590 {
		t.Fatalf("ASNsOwnedBy = %v", got)
	}
}

func TestImportCommaLayouts(t *testing.T) {
	five := "range_start,range_end,AS_number,country_code,AS_description\n" +
		"# comment\n\n" +
		"192.0.2.0,192.0.2.255,AS64500,ZZ,\"Example, Games\"\n" +
		"198.51.100.0,198.51.100.255,64501,ZZ,Example Voice, Ltd\n"
	tab, err := ImportASN("five.csv", strings.NewReader(five))
	if err != nil {
		t.Fatal(err)
	}
	if tab.Lookup(netip.MustParseAddr("192.0.2.9")) != 64500 || tab.Owner(64500) != "Example, Games" {
		t.Fatalf("quoted owner: AS%d %q", tab.Lookup(netip.MustParseAddr("192.0.2.9")), tab.Owner(64500))
	}
	if tab.Owner(64501) != "Example Voice, Ltd" {
		t.Fatalf("owner with comma in last field: %q", tab.Owner(64501))
	}
	simple := "192.0.2.0,192.0.2.255,64500,Example Games\n198.51.100.0,198.51.100.255,64501,Example Voice, Ltd\n"
	tab, err = ImportASN("simple.csv", strings.NewReader(simple))
	if err != nil {
		t.Fatal(err)
	}
	if tab.Owner(64500) != "Example Games" || tab.Owner(64501) != "Example Voice, Ltd" {
		t.Fatalf("simple layout owners: %q %q", tab.Owner(64500), tab.Owner(64501))
	}
	// Unsorted input is sorted.
	tab, err = ImportASN("unsorted.csv", strings.NewReader("198.51.100.0,198.51.100.255,2,b\n192.0.2.0,192.0.2.255,1,a\n"))
	if err != nil || tab.Lookup(netip.MustParseAddr("192.0.2.1")) != 1 || tab.Lookup(netip.MustParseAddr("198.51.100.1")) != 2 {
		t.Fatalf("unsorted input: %v", err)
	}
}

func TestImportDeduplicatesOwners(t *testing.T) {
	var b strings.Builder
	for i := 0; i < 100; i++ {
		fmt.Fprintf(&b, "198.18.%d.0,198.18.%d.255,%d,ZZ,SHARED-OWNER\n", i, i, 64500+i)
	}
	tab, err := ImportASN("dup.csv", strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	p := unsafe.StringData(tab.Owner(64500))
	for i := 1; i < 100; i++ {
		if unsafe.StringData(tab.Owner(uint32(64500+i))) != p {
			t.Fatalf("owner of AS%d is a separate copy", 64500+i)
		}
	}
}

func TestImportErrorsNameLine(t *testing.T) {
	ok := "192.0.2.0,192.0.2.255,64500,ZZ,A\n"
	cases := []struct {
		name, src string
		line      int
		field     string
	}{
		{"bad start", ok + "192.0.2.x,192.0.2.255,1,ZZ,B\n", 2, "range_start"},
		{"bad end", ok + "198.51.100.0,nope,1,ZZ,B\n", 2, "range_end"},
		{"mixed family", ok + "198.51.100.0,2001:db8::,1,ZZ,B\n", 2, "range_end"},
		{"reversed", ok + "198.51.100.9,198.51.100.0,1,ZZ,B\n", 2, "range_end"},
		{"bad asn", ok + "198.51.100.0,198.51.100.9,ASX,ZZ,B\n", 2, "AS_number"},
		{"asn too big", ok + "198.51.100.0,198.51.100.9,4294967296,ZZ,B\n", 2, "AS_number"},
		{"few fields", ok + "198.51.100.0,198.51.100.9\n", 2, "row"},
		{"overlap", ok + "\n192.0.2.128,192.0.3.0,2,ZZ,B\n", 3, "range_start"},
		{"layout change", ok + "198.51.100.0,198.51.100.9,2,B\n", 2, "row"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ImportASN("asn.csv", strings.NewReader(tc.src))
			var ie *ImportError
			if !errors.As(err, &ie) || ie.File != "asn.csv" || ie.Line != tc.line || ie.Field != tc.field {
				t.Fatalf("err = %v, want asn.csv line %d field %s", err, tc.line, tc.field)
			}
		})
	}
}

// FuzzImportASN checks that no input panics, and that whatever is accepted
// answers lookups for its own range starts.
func FuzzImportASN(f *testing.F) {
	f.Add(iptoasnTSV)
	f.Add("192.0.2.0,192.0.2.255,64500,Example\n")
	f.Add("range_start,range_end,AS_number,country_code,AS_description\n::,::ff,AS1,ZZ,\"x\"\"y\"\n")
	f.Add("1.2.3.4,1.2.3.4,1,ZZ,a\n1.2.3.4,1.2.3.5,2,ZZ,b\n")
	f.Fuzz(func(t *testing.T, s string) {
		tab, err := ImportASN("fuzz", strings.NewReader(s))
		if err != nil {
			var ie *ImportError
			if !errors.As(err, &ie) || ie.Line < 1 {
				t.Fatalf("error without a line: %v", err)
			}
			return
		}
		for i, st := range tab.v4start {
			a := netip.AddrFrom4([4]byte{byte(st >> 24), byte(st >> 16), byte(st >> 8), byte(st)})
			if got := tab.Lookup(a); got != tab.v4asn[i] {
				t.Fatalf("lookup of range start %s = %d, want %d", a, got, tab.v4asn[i])
			}
		}
	})
}

// synthASN builds n adjacent-with-gaps IPv4 ranges of 256 addresses each.
func synthASN(n int) *ASNTable {
	t := &ASNTable{owners: map[uint32]string{}}
	base := uint32(0x01000000)
	for i := 0; i < n; i++ {
		s := base + uint32(i)*512 // a gap of 256 after each range
		t.v4start = append(t.v4start, s)
		t.v4end = append(t.v4end, s+255)
		t.v4asn = append(t.v4asn, uint32(64512+i%1000))
	}
	t.buildBlocks()
	return t
}

func TestSyntheticTableLookup(t *testing.T) {
	tab := synthASN(500000)
	for _, i := range []int{0, 1, 250000, 499999} {
		s := tab.v4start[i]
		in := netip.AddrFrom4([4]byte{byte(s >> 24), byte(s >> 16), byte(s >> 8), byte(s) + 7})
		gap := netip.AddrFrom4([4]byte{byte(s >> 24), byte((s + 300) >> 16), byte((s + 300) >> 8), byte(s + 300)})
		if tab.Lookup(in) != tab.v4asn[i] || tab.Lookup(gap) != 0 {
			t.Fatalf("range %d: in=%d gap=%d", i, tab.Lookup(in), tab.Lookup(gap))
		}
	}
	if n := testing.AllocsPerRun(100, func() { tab.Lookup(netip.MustParseAddr("1.2.3.4")) }); n != 0 {
		t.Fatalf("%v allocs", n)
	}
}

func BenchmarkASNLookup500k(b *testing.B) {
	tab := synthASN(500000)
	// Random addresses over the table's span defeat the cache as real
	// traffic to many servers would.
	addrs := make([]netip.Addr, 4096)
	x := uint32(12345)
	for i := range addrs {
		x = x*1664525 + 1013904223
		v := 0x01000000 + x%(500000*512)
		addrs[i] = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		tab.Lookup(addrs[i&4095])
	}
}

func BenchmarkASNLookup500kIPv6(b *testing.B) {
	tab := &ASNTable{}
	for i := 0; i < 500000; i++ {
		s := u128{0x20010db800000000 | uint64(i)<<16, 0}
		tab.v6start = append(tab.v6start, s)
		tab.v6end = append(tab.v6end, u128{s.hi | 0x7fff, ^uint64(0)})
		tab.v6asn = append(tab.v6asn, uint32(i))
	}
	addrs := make([]netip.Addr, 4096)
	for i := range addrs {
		var a [16]byte
		hi := 0x20010db800000000 | uint64((i*7919)%500000)<<16 | 5
		for j := 0; j < 8; j++ {
			a[j] = byte(hi >> (56 - 8*j))
		}
		addrs[i] = netip.AddrFrom16(a)
	}
	for i := 0; b.Loop(); i++ {
		tab.Lookup(addrs[i&4095])
	}
}

// TestBlockIndexAgreesWithFullSearch compares the /16 block shortcut with a
// plain search over all ranges on a random table with ranges spanning blocks.
func TestBlockIndexAgreesWithFullSearch(t *testing.T) {
	tab := &ASNTable{}
	x := uint32(99)
	next := func() uint32 { x = x*1664525 + 1013904223; return x }
	s := uint32(0)
	for i := 0; i < 20000; i++ {
		s += next()%400000 + 1
		e := s + next()%300000
		if e < s {
			break
		}
		tab.v4start, tab.v4end, tab.v4asn = append(tab.v4start, s), append(tab.v4end, e), append(tab.v4asn, uint32(i+1))
		s = e
	}
	plain := *tab
	tab.buildBlocks()
	for i := 0; i < 200000; i++ {
		v := next()
		a := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
		if got, want := tab.Lookup(a), plain.Lookup(a); got != want {
			t.Fatalf("%s: AS%d with blocks, AS%d without", a, got, want)
		}
	}
}
