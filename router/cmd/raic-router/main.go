// Command raic-router is the router: it carries latency-critical game packets
// over every uplink at once to a proxy near the game server.
package main

import (
	"fmt"
	"log/slog"

	"github.com/raicnet/raic/pkg/cli"
	"github.com/raicnet/raic/router"
)

func main() {
	cli.Program[router.Config]{
		Name: "raic-router",
		About: `Carries the packets of game sessions over every uplink at once to a proxy near
the game server, and writes the first copy of each reply back to the game.`,
		Config:   "router.toml",
		GenKey:   true,
		Load:     router.LoadConfig,
		LogLevel: func(c *router.Config) string { return c.LogLevel },
		Summary: func(c *router.Config) string {
			return fmt.Sprintf("%d uplinks, %d forwards, transparent mode %v, %d peers", len(c.Uplinks), len(c.Forwards), c.Transparent.Enabled, len(c.Peers))
		},
		New: func(c *router.Config, log *slog.Logger) (cli.Runner, error) { return router.New(c, log) },
	}.Main()
}
