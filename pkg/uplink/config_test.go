package uplink

import (
	"strings"
	"testing"

	"github.com/raicnet/raic/pkg/config"
)

type socketsConfig struct {
	Uplinks []struct {
		Name   string `toml:"name"`
		Source string `toml:"source"`
	} `toml:"uplink"`
}

// Names are filled in and must differ; sources parse and must not be taken
// twice; each error names its uplink's key.
func TestCheckSocket(t *testing.T) {
	text := "[[uplink]]\nsource = \"127.0.0.1:4000\"\n[[uplink]]\nname = \"uplink0\"\nsource = \"127.0.0.1:4000\"\n[[uplink]]\nsource = \"nowhere\"\n[[uplink]]\nsource = \"198.18.0.2\"\n"
	_, parse := config.Loaders(func() socketsConfig { return socketsConfig{} }, func(c *socketsConfig, m *config.Meta) {
		seen := map[string]bool{}
		for i := range c.Uplinks {
			CheckSocket(m, "uplink", i, &c.Uplinks[i].Name, c.Uplinks[i].Source, seen)
		}
	})
	c, err := parse("r.toml", text)
	if err == nil {
		t.Fatalf("passed: %+v", c)
	}
	for _, want := range []string{`r.toml:4: uplink.1.name: uplink "uplink0" is configured twice`, "r.toml:5: uplink.1.source:", "r.toml:7: uplink.2.source: not an address"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("errors lack %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "uplink.3") {
		t.Errorf("a source without a port was refused:\n%v", err)
	}
	if ap, err := ParseSource("198.18.0.2"); err != nil || ap.Port() != 0 || ap.Addr().String() != "198.18.0.2" {
		t.Errorf("ParseSource(ADDR) = %v, %v", ap, err)
	}
}
