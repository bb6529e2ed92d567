// Command raic-intermediate is the intermediate proxy: a proxy to the routers
// that send to it and a router to the proxy after it. It keeps the first copy of
// each packet and sends fresh copies on, so loss does not add up along the path.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/raicnet/raic/intermediate"
	"github.com/raicnet/raic/pkg/logging"
	"github.com/raicnet/raic/pkg/version"
	"github.com/raicnet/raic/pkg/wire"
)

func main() {
	fs := flag.NewFlagSet("raic-intermediate", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: raic-intermediate -config FILE [-check]
       raic-intermediate -genkey

Authenticates routers' datagrams and keeps the first complete copy of each
packet, like a proxy; then, like a router, sends it on to the next proxy in a
session of its own, over every configured uplink, under the same packet ID.
Replies come back the same way.

`)
		fs.PrintDefaults()
	}
	cfgPath := fs.String("config", "intermediate.toml", "config file (TOML)")
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
		fmt.Println("raic-intermediate", version.Version)
		return
	case *genkey:
		k, err := wire.GenerateKey()
		if err != nil {
			fmt.Fprintln(os.Stderr, "raic-intermediate:", err)
			os.Exit(1)
		}
		fmt.Println(k)
		return
	}
	cfg, err := intermediate.LoadConfig(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "raic-intermediate:", err)
		os.Exit(1)
	}
	if *check {
		fmt.Printf("%s: ok (%d clients, listen %s, %d uplinks to the next hop)\n",
			*cfgPath, len(cfg.Clients), cfg.Listen, len(cfg.Next.Uplinks))
		return
	}
	log, _ := logging.New(os.Stderr, "raic-intermediate", cfg.LogLevel)
	s, err := intermediate.New(cfg, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := s.Run(ctx); err != nil {
		log.Error("stopped", "err", err)
		os.Exit(1)
	}
	log.Info("stopped")
}
