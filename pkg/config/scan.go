package config

import (
	"strconv"
	"strings"
)

// scanner walks TOML text that the TOML library has already accepted, noting
// the line of every key. It understands just enough of the grammar to stay in
// step: table and array-of-tables headers, dotted and quoted keys, the four
// kinds of strings (multi-line ones span lines), arrays and inline tables
// (which may span lines in TOML 1.1), and comments. It never fails: on text it
// does not understand it skips ahead, and it only ever loses line numbers,
// never panics.
type scanner struct {
	m    *Meta
	s    string
	i    int
	line int
	// arrays counts the elements of each array of tables, keyed by the
	// indexed path of the array ("a.0.b").
	arrays map[string]int
}

// pathSeg is one segment of an indexed key path: a name, or an array index
// that the TOML library leaves out of its own key names.
type pathSeg struct {
	name  string
	index bool
}

func (m *Meta) scan(text string) {
	sc := &scanner{m: m, s: text, line: 1, arrays: map[string]int{}}
	var table []pathSeg
	for sc.i < len(sc.s) {
		sc.skipSpaceAndComments(true)
		if sc.i >= len(sc.s) {
			break
		}
		start := sc.i
		if sc.s[sc.i] == '[' {
			table = sc.header()
		} else {
			key := sc.key()
			sc.skipSpace()
			if len(key) > 0 && sc.peek() == '=' {
				sc.i++
				sc.skipSpace()
				sc.keyValue(append(clonePath(table), key...))
			}
		}
		sc.skipRestOfLine()
		if sc.i == start { // no progress: skip a byte rather than loop
			sc.advance()
		}
	}
}

func clonePath(p []pathSeg) []pathSeg { return append([]pathSeg(nil), p...) }

func (sc *scanner) peek() byte {
	if sc.i < len(sc.s) {
		return sc.s[sc.i]
	}
	return 0
}

func (sc *scanner) advance() {
	if sc.i < len(sc.s) {
		if sc.s[sc.i] == '\n' {
			sc.line++
		}
		sc.i++
	}
}

func (sc *scanner) skipSpace() {
	for sc.i < len(sc.s) && (sc.s[sc.i] == ' ' || sc.s[sc.i] == '\t') {
		sc.i++
	}
}

// skipSpaceAndComments skips blanks and comments, and newlines if newlines.
func (sc *scanner) skipSpaceAndComments(newlines bool) {
	for sc.i < len(sc.s) {
		switch c := sc.s[sc.i]; {
		case c == ' ' || c == '\t' || c == '\r':
			sc.i++
		case c == '\n' && newlines:
			sc.advance()
		case c == '#':
			for sc.i < len(sc.s) && sc.s[sc.i] != '\n' {
				sc.i++
			}
		default:
			return
		}
	}
}

func (sc *scanner) skipRestOfLine() {
	for sc.i < len(sc.s) && sc.s[sc.i] != '\n' {
		sc.i++
	}
}

// header reads "[a.b]" or "[[a.b]]" and returns the indexed path of the table
// it opens.
func (sc *scanner) header() []pathSeg {
	line := sc.line
	sc.i++ // '['
	isArray := sc.peek() == '['
	if isArray {
		sc.i++
	}
	sc.skipSpace()
	key := sc.key()
	if len(key) == 0 {
		return nil
	}
	var path []pathSeg
	for n, seg := range key {
		path = append(path, seg)
		last := n == len(key)-1
		at := joinPath(path)
		if last && isArray {
			idx := sc.arrays[at]
			sc.arrays[at] = idx + 1
			path = append(path, pathSeg{name: strconv.Itoa(idx), index: true})
		} else if count, ok := sc.arrays[at]; ok && count > 0 {
			// A table inside the latest element of an array of tables.
			path = append(path, pathSeg{name: strconv.Itoa(count - 1), index: true})
		}
	}
	sc.record(path, line, "", "")
	return path
}

// key reads a possibly dotted key: bare, "basic" or 'literal' segments
// separated by dots.
func (sc *scanner) key() []pathSeg {
	var segs []pathSeg
	for {
		sc.skipSpace()
		seg, ok := sc.keySegment()
		if !ok {
			return segs
		}
		segs = append(segs, pathSeg{name: seg})
		sc.skipSpace()
		if sc.peek() != '.' {
			return segs
		}
		sc.i++
	}
}

func (sc *scanner) keySegment() (string, bool) {
	switch c := sc.peek(); {
	case c == '"':
		raw := sc.basicString()
		if s, err := strconv.Unquote(raw); err == nil {
			return s, true
		}
		return strings.Trim(raw, `"`), true
	case c == '\'':
		return strings.Trim(sc.literalString(), "'"), true
	case isBare(c):
		start := sc.i
		for sc.i < len(sc.s) && isBare(sc.s[sc.i]) {
			sc.i++
		}
		return sc.s[start:sc.i], true
	}
	return "", false
}

func isBare(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// keyValue reads the value of the key at path and records the key (and, for
// inline tables and arrays, every key inside).
func (sc *scanner) keyValue(path []pathSeg) {
	line := sc.line
	kind, str := sc.value(path)
	sc.record(path, line, kind, str)
}

// value reads one value and returns the TOML library's name for its Go type
// and, for strings, the string.
func (sc *scanner) value(path []pathSeg) (kind, str string) {
	switch c := sc.peek(); c {
	case '"':
		raw := sc.basicString()
		if strings.HasPrefix(raw, `"""`) {
			return "string", ""
		}
		s, _ := strconv.Unquote(raw)
		return "string", s
	case '\'':
		raw := sc.literalString()
		if strings.HasPrefix(raw, "'''") {
			return "string", ""
		}
		return "string", strings.Trim(raw, "'")
	case '[':
		sc.array(path)
		return "[]interface {}", ""
	case '{':
		sc.inlineTable(path)
		return "map[string]interface {}", ""
	}
	start := sc.i
	for sc.i < len(sc.s) {
		c := sc.s[sc.i]
		if c == ',' || c == ']' || c == '}' || c == '#' || c == '\n' || c == '\r' {
			break
		}
		sc.i++
	}
	return scalarKind(strings.TrimSpace(sc.s[start:sc.i])), ""
}

// scalarKind guesses the type of a bare value well enough to tell which of
// several occurrences a type error is about.
func scalarKind(v string) string {
	switch {
	case v == "true" || v == "false":
		return "bool"
	case len(v) >= 5 && v[2] == ':' || len(v) >= 8 && v[4] == '-' && v[0] >= '0' && v[0] <= '9':
		return "time.Time"
	case strings.HasPrefix(v, "0x") || strings.HasPrefix(v, "0o") || strings.HasPrefix(v, "0b"):
		return "int64"
	case strings.ContainsAny(v, ".eE") || strings.HasSuffix(v, "inf") || strings.HasSuffix(v, "nan"):
		return "float64"
	}
	return "int64"
}

func (sc *scanner) array(path []pathSeg) {
	sc.i++ // '['
	for idx := 0; sc.i < len(sc.s); idx++ {
		sc.skipSpaceAndComments(true)
		switch sc.peek() {
		case ']':
			sc.i++
			return
		case ',':
			sc.i++
			idx--
			continue
		}
		start := sc.i
		elem := append(clonePath(path), pathSeg{name: strconv.Itoa(idx), index: true})
		line := sc.line
		kind, str := sc.value(elem)
		if kind == "map[string]interface {}" {
			sc.record(elem, line, kind, str)
		}
		if sc.i == start {
			sc.advance()
		}
	}
}

func (sc *scanner) inlineTable(path []pathSeg) {
	sc.i++ // '{'
	for sc.i < len(sc.s) {
		sc.skipSpaceAndComments(true)
		switch sc.peek() {
		case '}':
			sc.i++
			return
		case ',':
			sc.i++
			continue
		}
		start := sc.i
		key := sc.key()
		sc.skipSpace()
		if len(key) > 0 && sc.peek() == '=' {
			sc.i++
			sc.skipSpaceAndComments(true)
			sc.keyValue(append(clonePath(path), key...))
		}
		if sc.i == start {
			sc.advance()
		}
	}
}

// basicString reads a "..." or """...""" string and returns it with its quotes.
func (sc *scanner) basicString() string {
	return sc.quoted('"', true)
}

// literalString reads a single-line or multi-line literal string and returns
// it with its quotes.
func (sc *scanner) literalString() string {
	return sc.quoted('\'', false)
}

func (sc *scanner) quoted(q byte, escapes bool) string {
	start := sc.i
	multi := strings.HasPrefix(sc.s[sc.i:], strings.Repeat(string(q), 3))
	if multi {
		sc.i += 3
	} else {
		sc.i++
	}
	for sc.i < len(sc.s) {
		c := sc.s[sc.i]
		switch {
		case escapes && c == '\\':
			sc.advance()
			sc.advance()
		case c == '\n' && !multi:
			return sc.s[start:sc.i] // unterminated; stop at the line end
		case c == q && !multi:
			sc.i++
			return sc.s[start:sc.i]
		case c == q && strings.HasPrefix(sc.s[sc.i:], strings.Repeat(string(q), 3)):
			sc.i += 3
			// Up to two more quotes belong to the content: """a"""""
			for n := 0; n < 2 && sc.peek() == q; n++ {
				sc.i++
			}
			return sc.s[start:sc.i]
		default:
			sc.advance()
		}
	}
	return sc.s[start:]
}

func segNames(p []pathSeg) []string {
	out := make([]string, len(p))
	for i, s := range p {
		out[i] = s.name
	}
	return out
}

func joinPath(p []pathSeg) string {
	var b strings.Builder
	for i, s := range p {
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(s.name)
	}
	return b.String()
}

// plainPath is p without its array indexes, in the form plainKey gives the
// TOML library's keys.
func plainPath(p []pathSeg) string {
	var b strings.Builder
	first := true
	for _, s := range p {
		if s.index {
			continue
		}
		if !first {
			b.WriteByte(0)
		}
		first = false
		b.WriteString(s.name)
	}
	return b.String()
}

// record notes key path at line, and every table above it that is not noted
// yet (tables created implicitly by dotted keys or headers).
func (sc *scanner) record(path []pathSeg, line int, kind, str string) {
	for n := 1; n <= len(path); n++ {
		p := path[:n]
		key := joinPath(p)
		if _, ok := sc.m.lines[key]; ok {
			continue // a table seen before: keep the line that created it
		}
		sc.m.lines[key] = line
		if p[n-1].index {
			continue // "uplink.1" is not a key the TOML library names
		}
		o := &occurrence{key: key, line: line, path: segNames(p)}
		if n == len(path) {
			o.kind, o.str = kind, str
		}
		plain := plainPath(p)
		sc.m.byPlain[plain] = append(sc.m.byPlain[plain], o)
	}
}
