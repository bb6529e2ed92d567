package config

import (
	"strings"
	"testing"
)

type servingConfig struct {
	Serving
	Extra int `toml:"extra"`
}

func (c *servingConfig) check(m *Meta) {
	c.Serving.Check(m)
	m.Int("extra", c.Extra, 0, 9)
}

// The embedded keys decode at the top level over their defaults, are checked
// with their lines, and sit beside the program's own keys and unknown-key
// reports.
func TestServingEmbeddedKeys(t *testing.T) {
	def := servingConfig{Serving: DefaultServing()}
	c, err := ParseAs("p.toml", "max_sessions = 7\nextra = 3\n", def, (*servingConfig).check)
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxSessions != 7 || c.Extra != 3 || c.Listen != DefaultServingListen || c.LogLevel != DefaultLogLevel {
		t.Errorf("decoded %+v", c)
	}
	_, err = ParseAs("p.toml", "listen = \"nowhere\"\nlog_level = \"loud\"\nmetrics = \"x\"\nmax_sessions = 0\nextra = 10\nlisen = 1\n", def, (*servingConfig).check)
	if err == nil {
		t.Fatal("a bad file passed")
	}
	for _, want := range []string{"p.toml:1: listen:", "p.toml:2: log_level:", "p.toml:3: metrics:", "p.toml:4: max_sessions:", "p.toml:5: extra:", "p.toml:6: lisen:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("errors lack %q:\n%v", want, err)
		}
	}
}
