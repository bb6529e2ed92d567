// Command raic-rendezvous introduces routers in peer mode to each other so
// that they can punch through their NATs, and relays between a pair only when
// both failed to punch (see package rendezvous).
package main

import (
	"fmt"
	"log/slog"

	"github.com/raicnet/raic/pkg/cli"
	"github.com/raicnet/raic/pkg/rendezvous"
)

func main() {
	cli.Program[rendezvous.Config]{
		Name: "raic-rendezvous",
		About: `Introduces authenticated peer routers to each other (every observed address
of every uplink) so that they can punch through their NATs; relays between
a pair only when both report that punching failed.`,
		Config:   "rendezvous.toml",
		GenKey:   true,
		Load:     rendezvous.LoadConfig,
		LogLevel: func(c *rendezvous.Config) string { return c.LogLevel },
		Summary: func(c *rendezvous.Config) string {
			return fmt.Sprintf("%d peers, listen %s, relay %v", len(c.Peers), c.Listen, c.RelayEnabled())
		},
		New: func(c *rendezvous.Config, log *slog.Logger) (cli.Runner, error) { return rendezvous.NewServer(c, log) },
	}.Main()
}
