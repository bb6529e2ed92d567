// Command raic-router is the router: it carries latency-critical game packets
// over every uplink to a proxy near the game server.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/raicnet/raic/pkg/logging"
	"github.com/raicnet/raic/pkg/version"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/router"
)

func main() {
	fs := flag.NewFlagSet("raic-router", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: raic-router -config FILE [-check]
       raic-router -genkey

Carries the packets of game sessions over every uplink at once to a proxy near
the game server, and writes the first copy of each reply back to the game.

`)
		fs.PrintDefaults()
	}
	cfgPath := fs.String("config", "router.toml", "config file (TOML)")
	check := fs.Bool("check", false, "check the config file and exit")
	genkey := fs.Bool("genkey", false, "print a new random pre-shared key and exit")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	switch {
	case *showVersion:
		fmt.Println("raic-router", version.Version)
		return
	case *genkey:
		k, err := wire.GenerateKey()
		if err != nil {
			fmt.Fprintln(os.Stderr, "raic-router:", err)
			os.Exit(1)
		}
		fmt.Println(k)
		return
	}
	cfg, err := router.LoadConfig(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "raic-router:", err)
		os.Exit(1)
	}
	if *check {
		fmt.Printf("%s: ok (%d uplinks, %d forwards)\n", *cfgPath, len(cfg.Uplinks), len(cfg.Forwards))
		return
	}
	log, _ := logging.New(os.Stderr, "raic-router", cfg.LogLevel)
	r, err := router.New(cfg, log)
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
