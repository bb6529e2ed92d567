package config

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Error is one refused key of a config file.
type Error struct {
	File    string
	Line    int    // 0 when the key was not written (a missing required key) or is unknown
	Key     string // dotted, with array indexes: "uplink.1.source"; "" for a syntax error
	Message string
}

// Error reads "FILE:LINE: KEY: message", leaving out the parts that are unknown.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Message)
	return b.String()
}

// Errors is every error found in one file, in the order of their lines. A
// user fixing a config sees them all at once, not one per run.
type Errors []*Error

// Error puts each error on its own line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.As find each *Error.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// Add records err, found while checking the file: an *Error or Errors are kept
// as they are, any other error becomes an Error without a key. nil is
// ignored, so sub-checks that return an error can be passed straight in. Only
// the first error of each key is kept: a key refused by the decoder is not
// refused again by validation that saw its default.
func (m *Meta) Add(err error) {
	if err == nil || m == nil {
		return
	}
	var es Errors
	var e *Error
	switch {
	case errors.As(err, &es):
		for _, e := range es {
			m.add(e)
		}
	case errors.As(err, &e):
		m.add(e)
	default:
		m.add(&Error{File: m.name, Message: err.Error()})
	}
}

func (m *Meta) add(e *Error) {
	if e.Key != "" {
		if m.refused[e.Key] {
			return
		}
		m.refused[e.Key] = true
	}
	m.errs = append(m.errs, e)
}

// Report records an error about key, "FILE:LINE: KEY: message".
func (m *Meta) Report(key, format string, args ...any) {
	m.add(m.errorf(key, format, args...))
}

// Refused reports whether an error about key was recorded.
func (m *Meta) Refused(key string) bool { return m != nil && m.refused[key] }

// Err returns every error recorded, or nil: this file's first, sorted by line
// (errors without a line first, in the order they were found), then those of
// files it names (an application table, say), by file and line.
func (m *Meta) Err() error {
	if m == nil || len(m.errs) == 0 {
		return nil
	}
	es := append(Errors(nil), m.errs...)
	sort.SliceStable(es, func(i, j int) bool {
		a, b := es[i], es[j]
		if (a.File == m.name) != (b.File == m.name) {
			return a.File == m.name
		}
		if a.File != b.File {
			return a.File < b.File
		}
		return a.Line < b.Line
	})
	return es
}
