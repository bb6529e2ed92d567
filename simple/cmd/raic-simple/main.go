// Command raic-simple is a simple proxy: a keyless relay between routers and a
// latency-oriented proxy.
package main

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/raicnet/raic/pkg/cli"
	"github.com/raicnet/raic/simple"
)

func main() {
	cli.Program[simple.Config]{
		Name: "raic-simple",
		About: `Relays routers' datagrams to a latency-oriented proxy and the proxy's answers
back, with an upstream socket per router uplink (like a NAT). Holds no keys:
only datagrams in the suite's wire format are relayed, each source is rate
limited, and mappings expire when idle.`,
		Config:   "simple.toml",
		Load:     simple.LoadConfig,
		LogLevel: func(c *simple.Config) string { return c.LogLevel },
		Summary: func(c *simple.Config) string {
			routes := make([]string, len(c.Routes))
			for i, r := range c.Routes {
				routes[i] = r.Listen + " -> " + r.Upstream
			}
			return fmt.Sprintf("%d routes: %s", len(c.Routes), strings.Join(routes, ", "))
		},
		New: func(c *simple.Config, log *slog.Logger) (cli.Runner, error) { return simple.New(c, log) },
	}.Main()
}
