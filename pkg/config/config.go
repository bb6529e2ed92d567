// Package config loads the TOML configuration files of the four programs, with
// strict checking and error messages that point at a line.
//
// Decoding is done by github.com/BurntSushi/toml. That library does not expose
// where each key was written (and does not index arrays of tables in its key
// names), so this package also makes a light pass over the text, after the
// library has accepted its syntax, to note the line of every key. The result,
// Meta, lets validation code say "proxy.toml:12: uplink.1.address: ..."
// instead of leaving the user to search.
//
// Every key that the destination struct does not know is an error: a typo in a
// config file must not silently fall back to a default.
//
// The programs load their files the same way: the defaults are filled into
// the config struct before decoding (so a written value is never confused with
// a missing one), Check decodes and runs the program's validation, and every
// error of the file comes back at once, each an *Error {File, Line, Key,
// Message} that reads "FILE:LINE: KEY: message". The helpers in check.go
// bound durations, rates and shares (NaN and infinities never pass) and
// check addresses, including listen addresses taken twice.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Load decodes the TOML file at path into v, a pointer to a struct with
// `toml:"..."` tags that already holds the defaults: keys the file leaves out
// keep them, so a default is never mistaken for a written value.
//
// A file that cannot be read, or is not TOML, returns a nil Meta and the error
// ("FILE:LINE: message" for a syntax error). Otherwise the Meta is returned
// together with the errors found while decoding: every key v does not know
// ("FILE:LINE: KEY: unknown key") and every value of the wrong type
// ("FILE:LINE: KEY: message"), all of them at once. Validation goes on with
// the Meta (its Report and checking helpers), and Meta.Err returns the
// decoding and validation errors together; Check does all of this.
func Load(path string, v any) (*Meta, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Decode(path, string(text), v)
}

// Decode is Load for text already in memory; name stands for the file name in
// messages.
func Decode(name, text string, v any) (*Meta, error) {
	if name == "" {
		name = "config"
	}
	// First pass: syntax only. Decoding into a generic map cannot fail on
	// types, so any error here is a syntax error with an exact position.
	var generic map[string]any
	if _, err := toml.Decode(text, &generic); err != nil {
		return nil, syntaxError(name, err)
	}
	m := &Meta{name: name, lines: map[string]int{}, byPlain: map[string][]*occurrence{}, refused: map[string]bool{}}
	m.scan(text)

	// The library stops at the first value of the wrong type. To report
	// them all, the refused value is taken out of the document and the rest
	// decoded again, until it decodes (the refused keys keep their defaults).
	src := text
	for attempt := 0; ; attempt++ {
		md, err := toml.Decode(src, v)
		if err == nil {
			m.unknownKeys(md, v)
			break
		}
		o := m.decodeError(err)
		if o == nil || attempt >= maxDecodeErrors || !deletePath(generic, o.path) {
			break
		}
		var b bytes.Buffer
		if toml.NewEncoder(&b).Encode(generic) != nil {
			break
		}
		src = b.String()
	}
	return m, m.Err()
}

// maxDecodeErrors bounds the type errors reported per file (each costs a
// decode of the whole file).
const maxDecodeErrors = 50

// Check decodes the file at path over v (holding the defaults), runs check
// on the result, and returns every error of the file at once (an Errors), or
// nil. check records what it refuses on the Meta (Report, Add, the checking
// helpers); it runs even when decoding found errors, with the refused keys at
// their defaults.
func Check(path string, v any, check func(*Meta)) error {
	text, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return CheckText(path, string(text), v, check)
}

// CheckText is Check for text already in memory.
func CheckText(name, text string, v any, check func(*Meta)) error {
	m, err := Decode(name, text, v)
	if m == nil {
		return err
	}
	check(m)
	return m.Err()
}

// unknownKeys records every key of the file that v does not know: a typo in
// a config file must not silently fall back to a default.
func (m *Meta) unknownKeys(md toml.MetaData, v any) {
	reported := map[string]bool{}
	for _, k := range md.Undecoded() {
		// Report an unknown table once, not once per key inside it, and a key
		// in an array of tables once (the library lists it per element).
		if reported[plainKey(k)] || parentReported(k, reported) {
			continue
		}
		// Values decoded into an interface (any, map[string]any) keep every
		// key, but the library does not mark the keys inside as decoded.
		if reachesInterface(reflect.TypeOf(v), k) {
			continue
		}
		reported[plainKey(k)] = true
		occ := m.byPlain[plainKey(k)]
		if len(occ) == 0 { // not found by the scan: still report it
			m.add(&Error{File: m.name, Key: strings.Join(k, "."), Message: "unknown key"})
			continue
		}
		for _, o := range occ {
			m.add(&Error{File: m.name, Line: o.line, Key: o.key, Message: "unknown key"})
		}
	}
}

// deletePath removes the value at path (names, and array indexes as decimal
// strings) from a generic document; it reports whether it was there.
func deletePath(doc map[string]any, path []string) bool {
	var cur any = doc
	for i, seg := range path {
		last := i == len(path)-1
		switch c := cur.(type) {
		case map[string]any:
			if last {
				_, ok := c[seg]
				delete(c, seg)
				return ok
			}
			cur = c[seg]
		case []map[string]any:
			n, err := strconv.Atoi(seg)
			if err != nil || n < 0 || n >= len(c) || last {
				return false
			}
			cur = c[n]
		case []any:
			n, err := strconv.Atoi(seg)
			if err != nil || n < 0 || n >= len(c) || last {
				return false
			}
			cur = c[n]
		default:
			return false
		}
	}
	return false
}

// plainKey is the lookup form of a key as the TOML library names it: segments
// joined by NUL, which cannot occur in a key, so quoted keys containing dots
// stay distinct.
func plainKey(k toml.Key) string { return strings.Join(k, "\x00") }

func parentReported(k toml.Key, reported map[string]bool) bool {
	for i := 1; i < len(k); i++ {
		if reported[plainKey(k[:i])] {
			return true
		}
	}
	return false
}

// reachesInterface reports whether following key from type t (a struct, map,
// slice or pointer to them) arrives at an interface, which accepts anything.
func reachesInterface(t reflect.Type, key toml.Key) bool {
	for depth := 0; t != nil && depth < 64; depth++ {
		switch t.Kind() {
		case reflect.Interface:
			return true
		case reflect.Pointer, reflect.Slice, reflect.Array:
			t = t.Elem()
			continue
		case reflect.Map:
			if len(key) == 0 {
				return false
			}
			t, key = t.Elem(), key[1:]
			continue
		case reflect.Struct:
			if len(key) == 0 {
				return false
			}
			f, ok := fieldFor(t, key[0])
			if !ok {
				return false
			}
			t, key = f.Type, key[1:]
			continue
		}
		return false
	}
	return false
}

// fieldFor finds the struct field the TOML library would decode name into: by
// tag, else by field name ignoring case; embedded structs are searched too.
func fieldFor(t reflect.Type, name string) (reflect.StructField, bool) {
	for _, f := range reflect.VisibleFields(t) {
		if !f.IsExported() || f.Anonymous && f.Tag.Get("toml") == "" {
			continue
		}
		tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if tag == "-" {
			continue
		}
		if tag == name || tag == "" && strings.EqualFold(f.Name, name) {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func syntaxError(name string, err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) && pe.Position.Line > 0 {
		return Errors{{File: name, Line: pe.Position.Line, Message: pe.Message}}
	}
	return Errors{{File: name, Message: strings.TrimPrefix(err.Error(), "toml: ")}}
}

// typeErrorRE matches the library's decode errors, which are plain strings:
// `toml: line 3 (last key "server.port"): incompatible types: ...`.
var typeErrorRE = regexp.MustCompile(`^toml: (?:line (\d+) )?\(last key "(.*)"\): (.*)$`)

// decodeError records an error from decoding into the destination (a value
// of the wrong type, a duration that does not parse) as "FILE:LINE: KEY:
// message", and returns the occurrence it was about (nil if unknown). The
// library names the key without array indexes; when the key occurs in
// several elements of an array of tables, the first not yet refused whose
// value matches the complaint is chosen.
func (m *Meta) decodeError(err error) *occurrence {
	var key, msg string
	var pe toml.ParseError
	if errors.As(err, &pe) {
		key, msg = pe.LastKey, pe.Message
	} else if sub := typeErrorRE.FindStringSubmatch(err.Error()); sub != nil {
		// The library gives type errors as text only.
		key, msg = sub[2], sub[3]
	} else {
		m.add(&Error{File: m.name, Message: strings.TrimPrefix(err.Error(), "toml: ")})
		return nil
	}
	var best *occurrence
	for _, o := range m.byPlain[strings.ReplaceAll(key, ".", "\x00")] {
		if m.refused[o.key] {
			continue
		}
		if best == nil {
			best = o
		}
		if o.kind != "" && strings.Contains(msg, "has type "+o.kind+";") ||
			o.str != "" && strings.Contains(msg, fmt.Sprintf("%q", o.str)) {
			best = o
			break
		}
	}
	if best == nil {
		m.add(&Error{File: m.name, Key: key, Message: msg})
		return nil
	}
	m.add(&Error{File: m.name, Line: best.line, Key: best.key, Message: msg})
	return best
}

// Meta remembers where each key was written, so validation can point at it.
//
// Keys are dotted, with the elements of arrays (arrays of tables as well as
// inline arrays) numbered from 0 as in the decoded Go slice: the address of the
// second [[uplink]] is "uplink.1.address". Quoted key segments are used as
// written between the quotes. Tables count as keys too: "uplink.1" is the line
// of the second [[uplink]] header, and a table created by a dotted key is on
// the line of the first key that created it.
type Meta struct {
	name    string
	lines   map[string]int           // dotted key -> line (first definition)
	byPlain map[string][]*occurrence // key without array indexes -> each indexed occurrence

	errs    Errors          // what decoding and validation refused
	refused map[string]bool // keys with an error in errs
	listens []listen        // see Listen
}

type occurrence struct {
	key  string   // dotted, with indexes
	path []string // the same, one segment per element
	line int
	kind string // the TOML library's name of the value's Go type; "" for tables
	str  string // the value, if a string
}

// Name returns the file name used in messages.
func (m *Meta) Name() string { return m.name }

// Line returns the line where key was defined, 0 if it was not.
func (m *Meta) Line(key string) int {
	if m == nil {
		return 0
	}
	return m.lines[key]
}

// IsDefined reports whether key was written in the file.
func (m *Meta) IsDefined(key string) bool { return m.Line(key) > 0 }

// Keys returns every defined key, tables included, sorted.
func (m *Meta) Keys() []string {
	if m == nil {
		return nil
	}
	keys := make([]string, 0, len(m.lines))
	for k := range m.lines {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Errorf returns an error about key for the user: "FILE:LINE: KEY: message".
// A key that was not written (a missing required key, say) gets the line of
// the nearest table around it that was, or no line at all. The error is an
// *Error; it is not recorded (Report records one).
func (m *Meta) Errorf(key, format string, args ...any) error {
	return m.errorf(key, format, args...)
}

func (m *Meta) errorf(key, format string, args ...any) *Error {
	e := &Error{File: "config", Key: key, Message: fmt.Sprintf(format, args...)}
	if m == nil {
		return e
	}
	e.File = m.name
	for k := key; k != ""; {
		if e.Line = m.Line(k); e.Line > 0 {
			break
		}
		i := strings.LastIndexByte(k, '.')
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return e
}

// Duration is a time.Duration written in TOML as a string: "150ms", "2s",
// "1m30s".
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := time.ParseDuration(string(text))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration in the form UnmarshalText reads.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }
