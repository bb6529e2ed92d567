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
package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Load decodes the TOML file at path into v, a pointer to a struct with
// `toml:"..."` tags. Syntax errors are returned as "FILE:LINE: message". Every
// key that v does not know is reported, one error per key (joined), as
// "FILE:LINE: unknown key \"a.b\"". A value of the wrong type is reported as
// "FILE:LINE: KEY: message".
func Load(path string, v any) (*Meta, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Decode(path, string(text), v)
}

// Decode is Load for text already in memory; name stands for the file name in
// messages. The returned Meta is nil only if the text is not valid TOML.
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
	m := &Meta{name: name, lines: map[string]int{}, byPlain: map[string][]*occurrence{}}
	m.scan(text)

	md, err := toml.Decode(text, v)
	if err != nil {
		return m, m.decodeError(err)
	}
	var errs []keyError
	undecoded := md.Undecoded()
	reported := map[string]bool{}
	for _, k := range undecoded {
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
			errs = append(errs, keyError{0, fmt.Sprintf("%s: unknown key %q", name, strings.Join(k, "."))})
			continue
		}
		for _, o := range occ {
			errs = append(errs, keyError{o.line, fmt.Sprintf("%s:%d: unknown key %q", name, o.line, o.key)})
		}
	}
	if len(errs) == 0 {
		return m, nil
	}
	sort.SliceStable(errs, func(i, j int) bool { return errs[i].line < errs[j].line })
	all := make([]error, len(errs))
	for i, e := range errs {
		all[i] = errors.New(e.msg)
	}
	return m, errors.Join(all...)
}

type keyError struct {
	line int
	msg  string
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
		return fmt.Errorf("%s:%d: %s", name, pe.Position.Line, pe.Message)
	}
	return fmt.Errorf("%s: %s", name, strings.TrimPrefix(err.Error(), "toml: "))
}

// typeErrorRE matches the library's decode errors, which are plain strings:
// `toml: line 3 (last key "server.port"): incompatible types: ...`.
var typeErrorRE = regexp.MustCompile(`^toml: (?:line (\d+) )?\(last key "(.*)"\): (.*)$`)

// decodeError rewrites an error from decoding into the destination (a value of
// the wrong type, a duration that does not parse) as "FILE:LINE: KEY: message".
// The library names the key without array indexes and gives the line of its
// last occurrence; when the key occurs in several elements of an array of
// tables, the element whose value matches the complaint is chosen.
func (m *Meta) decodeError(err error) error {
	var key, msg string
	var pe toml.ParseError
	if errors.As(err, &pe) {
		key, msg = pe.LastKey, pe.Message
	} else if sub := typeErrorRE.FindStringSubmatch(err.Error()); sub != nil {
		key, msg = sub[2], sub[3]
	} else {
		return fmt.Errorf("%s: %s", m.name, strings.TrimPrefix(err.Error(), "toml: "))
	}
	occ := m.byPlain[strings.ReplaceAll(key, ".", "\x00")]
	if len(occ) == 0 {
		return fmt.Errorf("%s: %s: %s", m.name, key, msg)
	}
	best := occ[len(occ)-1]
	if len(occ) > 1 {
		for _, o := range occ {
			if o.kind != "" && strings.Contains(msg, "has type "+o.kind+";") ||
				o.str != "" && strings.Contains(msg, fmt.Sprintf("%q", o.str)) {
				best = o
				break
			}
		}
	}
	return fmt.Errorf("%s:%d: %s: %s", m.name, best.line, best.key, msg)
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
}

type occurrence struct {
	key  string // dotted, with indexes
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

// Errorf returns an error about key for the user: "FILE:LINE: KEY: message",
// or "FILE: KEY: message" when the key was not written (a missing required
// key, say).
func (m *Meta) Errorf(key, format string, args ...any) error {
	name := "config"
	if m != nil {
		name = m.name
	}
	msg := fmt.Sprintf(format, args...)
	if line := m.Line(key); line > 0 {
		return fmt.Errorf("%s:%d: %s: %s", name, line, key, msg)
	}
	return fmt.Errorf("%s: %s: %s", name, key, msg)
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
