package config

import (
	"github.com/raicnet/raic/pkg/logging"
)

// Common holds the keys every program has. Each program's Config embeds it,
// so the keys read, default and check alike everywhere.
type Common struct {
	// Metrics, when set, serves Prometheus text at http://Metrics/metrics (and
	// the router's status pages there).
	Metrics string `toml:"metrics"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `toml:"log_level"`
}

// DefaultLogLevel is every program's log level when the file names none.
const DefaultLogLevel = "info"

// DefaultCommon is Common before a file is read.
func DefaultCommon() Common { return Common{LogLevel: DefaultLogLevel} }

// Check records what is wrong with the common keys on m.
func (c *Common) Check(m *Meta) {
	if c.Metrics != "" {
		// Checked here rather than when the listener opens, so that -check catches it.
		m.HostPort("metrics", c.Metrics)
	}
	if _, err := logging.ParseLevel(c.LogLevel); err != nil {
		m.Report("log_level", "%v", err)
	}
}

// Loaders returns a program's LoadConfig and ParseConfig: each starts from
// def() (decoding fills only the keys the file has), then check validates.
// Every error of the file is returned at once, each naming file, line and key;
// parse reads a config held in a string (name is used in errors).
func Loaders[T any](def func() T, check func(*T, *Meta)) (load func(path string) (*T, error), parse func(name, text string) (*T, error)) {
	load = func(path string) (*T, error) {
		c := def()
		if err := Check(path, &c, func(m *Meta) { check(&c, m) }); err != nil {
			return nil, err
		}
		return &c, nil
	}
	parse = func(name, text string) (*T, error) {
		c := def()
		if err := CheckText(name, text, &c, func(m *Meta) { check(&c, m) }); err != nil {
			return nil, err
		}
		return &c, nil
	}
	return load, parse
}
