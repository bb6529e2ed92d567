// Command raic-proxy is the latency-oriented proxy that runs near game servers:
// it authenticates routers' datagrams, keeps the first copy, and forwards it to
// the server like a NAT; replies go back over every path the router used.
package main

import (
	"fmt"
	"log/slog"

	"github.com/raicnet/raic/pkg/cli"
	"github.com/raicnet/raic/proxy"
)

func main() {
	cli.Program[proxy.Config]{
		Name: "raic-proxy",
		About: `Authenticates routers' datagrams, keeps the first complete copy of each packet,
forwards it to the game server from a socket per session, and sends the
server's replies back over every path the router used.`,
		Config:   "proxy.toml",
		GenKey:   true,
		Load:     proxy.LoadConfig,
		LogLevel: func(c *proxy.Config) string { return c.LogLevel },
		Summary: func(c *proxy.Config) string {
			return fmt.Sprintf("%d clients, listen %s", len(c.Clients), c.Listen)
		},
		New: func(c *proxy.Config, log *slog.Logger) (cli.Runner, error) { return proxy.New(c, log) },
	}.Main()
}
