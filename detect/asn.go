package detect

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"os"
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
	var b asnBuilder
	strict := func(e *ImportError) error { return e }
	if err := b.read(file, r, strict); err != nil {
		return nil, err
	}
	return b.build(strict)
}

// asnRow is one imported range, with where it came from.
type asnRow struct {
	start, end u128
	asn        uint32
	file       string
	line       int
}

// asnBuilder collects the ranges of one or more files.
type asnBuilder struct {
	v4, v6 []asnRow
	owners map[uint32]string
	intern map[string]string
}

// read adds the rows of one file. Each refused row goes to bad, which stops
// the import by returning an error or skips the row by returning nil.
func (b *asnBuilder) read(file string, r io.Reader, bad func(*ImportError) error) error {
	if b.owners == nil {
		b.owners, b.intern = map[uint32]string{}, map[string]string{}
	}
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
		refuse := func(field, format string, a ...any) error {
			return bad(&ImportError{File: file, Line: ln, Field: field, Msg: fmt.Sprintf(format, a...)})
		}
		if len(f) < 4 {
			if err := refuse("row", "%d fields, want start,end,asn,owner or start,end,asn,country,description", len(f)); err != nil {
				return err
			}
			continue
		}
		start, err := netip.ParseAddr(f[0])
		if err != nil {
			if layout == 0 && !strings.ContainsAny(f[0], ".:") {
				continue // a header such as "range_start,range_end,..."
			}
			if err := refuse("range_start", "%q is not an IP address", f[0]); err != nil {
				return err
			}
			continue
		}
		if layout == 0 {
			layout = 4
			if len(f) >= 5 && (len(f[3]) == 2 || f[3] == "None" || f[3] == "") {
				layout = 5
			}
		}
		end, err := netip.ParseAddr(f[1])
		var msg, field string
		switch {
		case err != nil:
			field, msg = "range_end", fmt.Sprintf("%q is not an IP address", f[1])
		case start.Zone() != "" || end.Zone() != "":
			field, msg = "range_start", "zoned addresses are not ranges"
		case start.Unmap().Is4() != end.Unmap().Is4():
			field, msg = "range_end", fmt.Sprintf("%s and %s are of different families", start, end)
		case end.Unmap().Less(start.Unmap()):
			field, msg = "range_end", fmt.Sprintf("%s is before range_start %s", end, start)
		}
		if msg != "" {
			if err := refuse(field, "%s", msg); err != nil {
				return err
			}
			continue
		}
		start, end = start.Unmap(), end.Unmap()
		asn, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimPrefix(f[2], "AS"), "as"), 10, 32)
		if err != nil {
			if err := refuse("AS_number", "%q is not an AS number", f[2]); err != nil {
				return err
			}
			continue
		}
		var owner string
		if layout == 5 {
			if len(f) < 5 {
				if err := refuse("row", "%d fields, want 5 (start,end,asn,country,description) as the file's first row", len(f)); err != nil {
					return err
				}
				continue
			}
			owner = unquote(strings.TrimSpace(strings.Join(raw[4:], sep)))
		} else {
			owner = unquote(strings.TrimSpace(strings.Join(raw[3:], sep)))
		}
		if asn == 0 {
			continue
		}
		if s, ok := b.intern[owner]; ok {
			owner = s
		} else {
			b.intern[owner] = owner
		}
		if _, ok := b.owners[uint32(asn)]; !ok || owner != "" {
			b.owners[uint32(asn)] = owner
		}
		rw := asnRow{u128Of(start), u128Of(end), uint32(asn), file, ln}
		if start.Is4() {
			b.v4 = append(b.v4, rw)
		} else {
			b.v6 = append(b.v6, rw)
		}
	}
	if err := sc.Err(); err != nil {
		// A line too long to scan ends the file: what came before it stays.
		return bad(&ImportError{File: file, Line: ln + 1, Field: "row", Msg: err.Error()})
	}
	return nil
}

// build sorts the ranges and makes the table. A range overlapping the one
// before it goes to bad: a lookup must have one answer.
func (b *asnBuilder) build(bad func(*ImportError) error) (*ASNTable, error) {
	byStart := func(a, b asnRow) int {
		if c := cmp.Compare(a.start.hi, b.start.hi); c != 0 {
			return c
		}
		return cmp.Compare(a.start.lo, b.start.lo)
	}
	owners := b.owners
	if owners == nil {
		owners = map[uint32]string{}
	}
	t := &ASNTable{owners: owners}
	for fam, rows := range [][]asnRow{b.v4, b.v6} {
		// Files are normally sorted already; sorting a sorted slice is cheap.
		slices.SortStableFunc(rows, byStart)
		kept := rows[:0]
		for _, r := range rows {
			if n := len(kept); n > 0 && !kept[n-1].end.less(r.start) {
				prev := kept[n-1]
				where := fmt.Sprintf("line %d", prev.line)
				if prev.file != r.file {
					where = fmt.Sprintf("%s:%d", prev.file, prev.line)
				}
				if err := bad(&ImportError{File: r.file, Line: r.line, Field: "range_start",
					Msg: "range overlaps the one on " + where}); err != nil {
					return nil, err
				}
				continue
			}
			kept = append(kept, r)
		}
		rows = kept
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

// ASNLoadReport says what LoadASNFiles read and what it refused.
type ASNLoadReport struct {
	V4, V6  int            // ranges loaded
	Skipped int            // rows refused (malformed or overlapping)
	Errors  []*ImportError // the first MaxASNErrors of them, with file:line
}

// MaxASNErrors bounds the refused rows a report keeps: a file of the wrong
// format would otherwise keep one error per line.
const MaxASNErrors = 20

// LoadASNFiles reads ASN range files (layouts as ImportASN) into one table.
// Unlike ImportASN it is lenient, as a router fed a public file must be: a
// malformed row, or a range overlapping an earlier one, is skipped, counted
// and reported with its file and line. It fails only when a file cannot be
// opened or when no range at all loads.
func LoadASNFiles(paths []string) (*ASNTable, *ASNLoadReport, error) {
	rep := &ASNLoadReport{}
	lenient := func(e *ImportError) error {
		rep.Skipped++
		if len(rep.Errors) < MaxASNErrors {
			rep.Errors = append(rep.Errors, e)
		}
		return nil
	}
	var b asnBuilder
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, rep, err
		}
		err = b.read(p, f, lenient)
		f.Close()
		if err != nil {
			return nil, rep, err
		}
	}
	t, err := b.build(lenient)
	if err != nil {
		return nil, rep, err
	}
	rep.V4, rep.V6 = t.Len()
	if rep.V4+rep.V6 == 0 {
		msg := "no range loaded"
		if len(rep.Errors) > 0 {
			msg += fmt.Sprintf(" (%d rows refused; first: %v)", rep.Skipped, rep.Errors[0])
		}
		return nil, rep, fmt.Errorf("asn files %s: %s", strings.Join(paths, ", "), msg)
	}
	return t, rep, nil
}

// PrefixesOf returns the IPv4 networks that exactly cover the ranges of the
// given ASNs, each range split into the fewest CIDR blocks, in address order.
// It scans the whole table (once at startup, not per packet).
func (t *ASNTable) PrefixesOf(asns []uint32) []netip.Prefix {
	if t == nil || len(asns) == 0 {
		return nil
	}
	want := make(map[uint32]bool, len(asns))
	for _, a := range asns {
		want[a] = true
	}
	var out []netip.Prefix
	for i, a := range t.v4asn {
		if want[a] {
			out = appendCIDRs(out, t.v4start[i], t.v4end[i])
		}
	}
	return out
}

// appendCIDRs appends the fewest IPv4 prefixes covering lo..hi.
func appendCIDRs(out []netip.Prefix, lo, hi uint32) []netip.Prefix {
	for x := uint64(lo); x <= uint64(hi); {
		// The largest block aligned at x that does not pass hi.
		bits := 32
		for bits > 0 {
			size := uint64(1) << (32 - (bits - 1))
			if x%size != 0 || x+size-1 > uint64(hi) {
				break
			}
			bits--
		}
		v := uint32(x)
		out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), bits))
		x += uint64(1) << (32 - bits)
	}
	return out
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
