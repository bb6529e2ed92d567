// Command raic-simple is the simple proxy: a keyless relay placed where paths are
// good. Routers send their datagrams to it and it relays them to the configured
// latency-oriented proxy, one upstream socket per router uplink, and relays the
// proxy's answers back. It holds no keys and decrypts nothing.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/raicnet/raic/pkg/logging"
	"github.com/raicnet/raic/pkg/version"
	"github.com/raicnet/raic/simple"
)

func main() {
	fs := flag.NewFlagSet("raic-simple", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: raic-simple -config FILE [-check]

Relays routers' datagrams to a latency-oriented proxy and the proxy's answers
back, with an upstream socket per router uplink (like a NAT). Holds no keys:
only datagrams in the suite's wire format are relayed, each source is rate
limited, and mappings expire when idle.

`)
		fs.PrintDefaults()
	}
	cfgPath := fs.String("config", "simple.toml", "config file (TOML)")
	check := fs.Bool("check", false, "check the config file and exit")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "raic-simple: unexpected argument %q\n", fs.Arg(0))
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println("raic-simple", version.Version)
		return
	}
	cfg, err := simple.LoadConfig(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "raic-simple:", err)
		os.Exit(1)
	}
	if *check {
		routes := make([]string, len(cfg.Routes))
		for i, r := range cfg.Routes {
			routes[i] = r.Listen + " -> " + r.Upstream
		}
		fmt.Printf("%s: ok (%d routes: %s)\n", *cfgPath, len(cfg.Routes), strings.Join(routes, ", "))
		return
	}
	log, _ := logging.New(os.Stderr, "raic-simple", cfg.LogLevel)
	r, err := simple.New(cfg, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := r.Run(ctx); err != nil {
		log.Error("stopped", "err", err)
		os.Exit(1)
	}
	log.Info("stopped")
}
