package detect

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

func writeFile(t testing.TB, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLoadASNFilesSkipsBadRows: malformed and overlapping rows are skipped,
// counted and named with file:line; the good rows of both files load.
func TestLoadASNFilesSkipsBadRows(t *testing.T) {
	dir := t.TempDir()
	a := writeFile(t, dir, "a.csv", `range_start,range_end,asn,org
198.18.50.0,198.18.50.255,64500,Example Games
198.18.51.0,not-an-address,64501,Broken
198.18.52.0,198.18.52.255,AS64502,"Other, Inc"
2001:db8::,2001:db8::ffff,64500,Example Games
too,few
`)
	b := writeFile(t, dir, "b.csv", `198.18.50.128,198.18.50.200,64503,Overlapping
198.18.53.0,198.18.53.9,64500,Example Games
198.18.54.0,198.18.54.255,x,Bad AS
`)
	tab, rep, err := LoadASNFiles([]string{a, b})
	if err != nil {
		t.Fatal(err)
	}
	if rep.V4 != 3 || rep.V6 != 1 || rep.Skipped != 4 {
		t.Fatalf("report %+v, want 3 IPv4 and 1 IPv6 ranges, 4 rows skipped", rep)
	}
	var where []string
	for _, e := range rep.Errors {
		where = append(where, fmt.Sprintf("%s:%d", filepath.Base(e.File), e.Line))
	}
	slices.Sort(where)
	if want := []string{"a.csv:3", "a.csv:6", "b.csv:1", "b.csv:3"}; !slices.Equal(where, want) {
		t.Errorf("errors at %v, want %v", where, want)
	}
	for addr, asn := range map[string]uint32{"198.18.50.7": 64500, "198.18.52.1": 64502, "198.18.53.9": 64500,
		"198.18.53.10": 0, "198.18.51.1": 0, "2001:db8::12": 64500} {
		if got := tab.Lookup(netip.MustParseAddr(addr)); got != asn {
			t.Errorf("Lookup(%s) = %d, want %d", addr, got, asn)
		}
	}
	if got := tab.Owner(64502); got != "Other, Inc" {
		t.Errorf("owner of AS64502 = %q", got)
	}
}

// TestLoadASNFilesFailsWhenNothingLoads: a file of the wrong format is an
// error (naming a bad line), as is a missing file.
func TestLoadASNFilesFailsWhenNothingLoads(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "wrong.csv", "1.2.3.4;5.6.7.8;1;x\n1.2.3.4,zzz,1,x\n")
	if _, _, err := LoadASNFiles([]string{p}); err == nil || !strings.Contains(err.Error(), "wrong.csv:1") {
		t.Errorf("err = %v, want no range loaded naming wrong.csv:1", err)
	}
	if _, _, err := LoadASNFiles([]string{filepath.Join(dir, "missing.csv")}); err == nil {
		t.Error("a missing file loaded")
	}
}

// TestPrefixesOfCoversRangesExactly: the CIDR blocks of an operator's ranges
// cover every address of them and none outside.
func TestPrefixesOfCoversRangesExactly(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "r.csv", `198.18.60.3,198.18.61.130,64510,Odd Range
198.18.62.0,198.18.62.255,64511,Other
198.18.63.0,198.18.63.255,64510,Odd Range
`)
	tab, _, err := LoadASNFiles([]string{p})
	if err != nil {
		t.Fatal(err)
	}
	pfx := tab.PrefixesOf([]uint32{64510})
	covered := func(a netip.Addr) bool {
		for _, p := range pfx {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	for a := netip.MustParseAddr("198.18.59.250"); a.Less(netip.MustParseAddr("198.18.64.5")); a = a.Next() {
		if want := tab.Lookup(a) == 64510; covered(a) != want {
			t.Fatalf("%s: covered %v, in AS64510 %v (prefixes %v)", a, covered(a), want, pfx)
		}
	}
	t.Logf("%d prefixes: %v", len(pfx), pfx)
	if len(pfx) != 11 {
		t.Errorf("%d prefixes, want the 10 of 198.18.60.3-198.18.61.130 and one /24", len(pfx))
	}
}

// BenchmarkASNImport500k writes a CSV of 500,000 ranges in the public layout
// (400,000 IPv4, 100,000 IPv6, 60,000 ASNs), loads it and reports the load
// time per file, the heap the table keeps (MB), and a lookup's cost.
//
//	go test -run '^$' -bench ASNImport500k -benchtime 3x ./detect
func BenchmarkASNImport500k(b *testing.B) {
	dir := b.TempDir()
	p := filepath.Join(dir, "asn.csv")
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, "range_start,range_end,asn,org")
	for i := range 400000 {
		s := 0x01000000 + uint32(i)*512
		fmt.Fprintf(w, "%d.%d.%d.%d,%d.%d.%d.%d,%d,Org %d\n", s>>24, byte(s>>16), byte(s>>8), byte(s),
			s>>24, byte(s>>16), byte((s+255)>>8), byte(s+255), 1+i%60000, i%60000)
	}
	for i := range 100000 {
		fmt.Fprintf(w, "2001:db8:%x:%x::,2001:db8:%x:%x::ffff,%d,Org %d\n", i>>16, i&0xffff, i>>16, i&0xffff, 1+i%60000, i%60000)
	}
	w.Flush()
	f.Close()
	var tab *ASNTable
	var rep *ASNLoadReport
	var before, after runtime.MemStats
	for b.Loop() {
		tab = nil
		runtime.GC()
		runtime.ReadMemStats(&before)
		if tab, rep, err = LoadASNFiles([]string{p}); err != nil || rep.Skipped != 0 {
			b.Fatal(err, rep)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
	}
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/1e6, "heap-MB")
	v4, v6 := tab.Len()
	addrs := make([]netip.Addr, 4096)
	x := uint32(7)
	for i := range addrs {
		x = x*1664525 + 1013904223
		v := 0x01000000 + x%(400000*512)
		addrs[i] = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	const n = 1 << 20
	var hits int
	start := time.Now()
	for i := range n {
		if tab.Lookup(addrs[i&4095]) != 0 {
			hits++
		}
	}
	ns := float64(time.Since(start).Nanoseconds()) / n
	b.ReportMetric(ns, "lookup-ns")
	b.Logf("%d IPv4 + %d IPv6 ranges: heap %.1f MB, lookup %.0f ns (%d of %d random addresses in a range)",
		v4, v6, float64(after.HeapAlloc-before.HeapAlloc)/1e6, ns, hits, n)
	runtime.KeepAlive(tab)
}
