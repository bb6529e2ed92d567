// Command raic-intermediate is an intermediate proxy: a proxy towards routers
// and a router towards the next proxy, deduplicating and re-encoding both ways.
package main

import (
	"fmt"
	"log/slog"

	"github.com/raicnet/raic/intermediate"
	"github.com/raicnet/raic/pkg/cli"
)

func main() {
	cli.Program[intermediate.Config]{
		Name: "raic-intermediate",
		About: `Authenticates routers' datagrams and keeps the first complete copy of each
packet, like a proxy; then, like a router, sends it on to the next proxy in a
session of its own, over every configured uplink, under the same packet ID.
Replies come back the same way.`,
		Config:   "intermediate.toml",
		GenKey:   true,
		Load:     intermediate.LoadConfig,
		LogLevel: func(c *intermediate.Config) string { return c.LogLevel },
		Summary: func(c *intermediate.Config) string {
			return fmt.Sprintf("%d clients, listen %s, %d uplinks to the next hop", len(c.Clients), c.Listen, len(c.Next.Uplinks))
		},
		New: func(c *intermediate.Config, log *slog.Logger) (cli.Runner, error) { return intermediate.New(c, log) },
	}.Main()
}
