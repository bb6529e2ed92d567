package detect

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// ASNTable maps addresses to origin AS numbers and AS owners.
//
// Ranges are kept as parallel sorted arrays (start, end, ASN) per family and
// searched by binary search: with 500,000 IPv4 ranges that is 19 steps over
// 2 MB of starts, well under a microsecond, and no pointer for the GC to scan.
// IPv6 starts are stored as two uint64 halves. Owner names are stored once per
// ASN, and identical names share one string.
type ASNTable struct {
	v4start, v4end, v4asn []uint32
	// v4blk[p] is the number of IPv4 ranges starting below p<<16: a lookup
	// for an address with top 16 bits p searches only v4start[v4blk[p]:
	// v4blk[p+1]], a handful of entries instead of all of them, which saves
	// most of the cache misses. 256 KiB, built once.
	v4blk          []uint32
	v6start, v6end []u128
	v6asn          []uint32
	owners         map[uint32]string
}

type u128 struct{ hi, lo uint64 }

func (a u128) less(b u128) bool { return a.hi < b.hi || a.hi == b.hi && a.lo < b.lo }

func u128Of(a netip.Addr) u128 {
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func u32Of(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

// Lookup returns the ASN whose range holds a, or 0 when none does.
func (t *ASNTable) Lookup(a netip.Addr) uint32 {
	if t == nil {
		return 0
	}
	a = a.Unmap()
	if a.Is4() {
		x := u32Of(a)
		s := t.v4start
		// First index with start > x, then step back one.
		lo, hi := 0, len(s)
		if t.v4blk != nil {
			p := x >> 16
			lo, hi = int(t.v4blk[p]), int(t.v4blk[p+1])
		}
		for lo < hi {
			m := int(uint(lo+hi) >> 1)
			if s[m] <= x {
				lo = m + 1
			} else {
				hi = m
			}
		}
		if lo == 0 || t.v4end[lo-1] < x {
			return 0
		}
		return t.v4asn[lo-1]
	}
	if !a.Is6() {
		return 0
	}
	x := u128Of(a)
	s := t.v6start
	lo, hi := 0, len(s)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if !x.less(s[m]) {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == 0 || t.v6end[lo-1].less(x) {
		return 0
	}
	return t.v6asn[lo-1]
}

// buildBlocks fills v4blk from v4start.
func (t *ASNTable) buildBlocks() {
	t.v4blk = make([]uint32, 1<<16+1)
	i := 0
	for p := range t.v4blk {
		for i < len(t.v4start) && uint64(t.v4start[i]) < uint64(p)<<16 {
			i++
		}
		t.v4blk[p] = uint32(i)
	}
}

// Owner returns the owner (AS description) of asn, "" if unknown.
func (t *ASNTable) Owner(asn uint32) string {
	if t == nil {
		return ""
	}
	return t.owners[asn]
}

// Len returns the number of IPv4 and IPv6 ranges.
func (t *ASNTable) Len() (v4, v6 int) { return len(t.v4start), len(t.v6start) }

// ASNsOwnedBy returns the ASNs whose owner equals name, ignoring case.
func (t *ASNTable) ASNsOwnedBy(name string) []uint32 {
	if t == nil {
		return nil
	}
	var out []uint32
	for asn, o := range t.owners {
		if strings.EqualFold(o, name) {
			out = append(out, asn)
		}
	}
	slices.Sort(out)
	return out
}

// ImportError names the input and line of a refused row.
type ImportError struct {
	File  string
	Line  int
	Field string // "range_start", "range_end", "AS_number", "row", ...
	Msg   string
}

func (e *ImportError) Error() string {
	return fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Field, e.Msg)
}

// ImportASN reads IP-to-ASN ranges, one per line, in either layout:
//
//	range_start,range_end,AS_number,country_code,AS_description   (iptoasn.com)
//	range_start,range_end,AS_number,AS_owner                       (simple)
//
// separated by tabs or commas (decided per line: a line with a tab is tab
// separated, so commas inside a tab separated owner are kept). The layout is
// decided by the first data row and then holds for the file: five or more
// fields whose fourth is a two-letter code, "None" or empty mean iptoasn.
// The last field is the owner and may itself contain commas. AS_number may be
// written "AS15169". Lines that are blank or start with '#', and a header
// line, are skipped; rows with AS 0 ("Not routed") are skipped too, as they
// own nothing. IPv4 and IPv6 may be mixed in one file. Overlapping ranges are
// refused: a lookup must have one answer.
func ImportASN(file string, r io.Reader) (*ASNTable, error) {
	type row struct {
		start, end u128
		asn        uint32
		line       int
	}
	var v4, v6 []row
	owners := map[uint32]string{}
	intern := map[string]string{}
	layout := 0 // 0 unknown, 4 simple, 5 iptoasn
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	ln := 0
	for sc.Scan() {
		ln++
		line := strings.TrimRight(sc.Text(), "\r")
		if ln == 1 {
			line = strings.TrimPrefix(line, "\ufeff")
		}
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		sep := ","
		if strings.Contains(line, "\t") {
			sep = "\t"
		}
		raw := splitQuoted(line, sep[0])
		f := make([]string, len(raw))
		for i := range raw {
			f[i] = unquote(strings.TrimSpace(raw[i]))
		}
		bad := func(field, format string, a ...any) error {
			return &ImportError{File: file, Line: ln, Field: field, Msg: fmt.Sprintf(format, a...)}
		}
		if len(f) < 4 {
			return nil, bad("row", "%d fields, want start,end,asn,owner or start,end,asn,country,description", len(f))
		}
		start, err := netip.ParseAddr(f[0])
		if err != nil {
			if layout == 0 && !strings.ContainsAny(f[0], ".:") {
				continue // a header such as "range_start,range_end,..."
			}
			return nil, bad("range_start", "%q is not an IP address", f[0])
		}
		if layout == 0 {
			layout = 4
			if len(f) >= 5 && (len(f[3]) == 2 || f[3] == "None" || f[3] == "") {
				layout = 5
			}
		}
		end, err := netip.ParseAddr(f[1])
		if err != nil {
			return nil, bad("range_end", "%q is not an IP address", f[1])
		}
		if start.Zone() != "" || end.Zone() != "" {
			return nil, bad("range_start", "zoned addresses are not ranges")
		}
		start, end = start.Unmap(), end.Unmap()
		if start.Is4() != end.Is4() {
			return nil, bad("range_end", "%s and %s are of different families", start, end)
		}
		if end.Less(start) {
			return nil, bad("range_end", "%s is before range_start %s", end, start)
		}
		asn, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimPrefix(f[2], "AS"), "as"), 10, 32)
		if err != nil {
			return nil, bad("AS_number", "%q is not an AS number", f[2])
		}
		var owner string
		if layout == 5 {
			if len(f) < 5 {
				return nil, bad("row", "%d fields, want 5 (start,end,asn,country,description) as the file's first row", len(f))
			}
			owner = unquote(strings.TrimSpace(strings.Join(raw[4:], sep)))
		} else {
			owner = unquote(strings.TrimSpace(strings.Join(raw[3:], sep)))
		}
		if asn == 0 {
			continue
		}
		if s, ok := intern[owner]; ok {
			owner = s
		} else {
			intern[owner] = owner
		}
		if _, ok := owners[uint32(asn)]; !ok || owner != "" {
			owners[uint32(asn)] = owner
		}
		rw := row{u128Of(start), u128Of(end), uint32(asn), ln}
		if start.Is4() {
			v4 = append(v4, rw)
		} else {
			v6 = append(v6, rw)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, &ImportError{File: file, Line: ln + 1, Field: "row", Msg: err.Error()}
	}
	byStart := func(a, b row) int {
		if c := cmp.Compare(a.start.hi, b.start.hi); c != 0 {
			return c
		}
		return cmp.Compare(a.start.lo, b.start.lo)
	}
	t := &ASNTable{owners: owners}
	for fam, rows := range [][]row{v4, v6} {
		// Files are normally sorted already; sorting a sorted slice is cheap.
		slices.SortStableFunc(rows, byStart)
		for i := 1; i < len(rows); i++ {
			if !rows[i-1].end.less(rows[i].start) {
				return nil, &ImportError{File: file, Line: rows[i].line, Field: "range_start",
					Msg: fmt.Sprintf("range overlaps the one on line %d", rows[i-1].line)}
			}
		}
		if fam == 0 {
			t.v4start = make([]uint32, len(rows))
			t.v4end = make([]uint32, len(rows))
			t.v4asn = make([]uint32, len(rows))
			for i, r := range rows {
				t.v4start[i], t.v4end[i], t.v4asn[i] = uint32(r.start.lo), uint32(r.end.lo), r.asn
			}
		} else {
			t.v6start = make([]u128, len(rows))
			t.v6end = make([]u128, len(rows))
			t.v6asn = make([]uint32, len(rows))
			for i, r := range rows {
				t.v6start[i], t.v6end[i], t.v6asn[i] = r.start, r.end, r.asn
			}
		}
	}
	t.buildBlocks()
	return t, nil
}

// splitQuoted splits at sep outside double quotes, keeping fields raw, so an
// owner such as "Example, Inc" stays one field.
func splitQuoted(s string, sep byte) []string {
	var out []string
	in, start := false, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"':
			in = !in
		case sep:
			if !in {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	return append(out, s[start:])
}

func unquote(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return strings.ReplaceAll(s[1:len(s)-1], `""`, `"`)
	}
	return s
}
