// Command raic-proxy is the latency-oriented proxy that runs near game servers:
// it authenticates routers' datagrams, keeps the first copy, and forwards it to
// the server like a NAT; replies go back over every path the router used.
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
	"github.com/raicnet/raic/proxy"
)

func main() {
	fs := flag.NewFlagSet("raic-proxy", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: raic-proxy -config FILE [-check]
       raic-proxy -genkey

Authenticates routers' datagrams, keeps the first complete copy of each packet,
forwards it to the game server from a socket per session, and sends the
server's replies back over every path the router used.

`)
		fs.PrintDefaults()
	}
	cfgPath := fs.String("config", "proxy.toml", "config file (TOML)")
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
		fmt.Println("raic-proxy", version.Version)
		return
	case *genkey:
		k, err := wire.GenerateKey()
		if err != nil {
			fmt.Fprintln(os.Stderr, "raic-proxy:", err)
			os.Exit(1)
		}
		fmt.Println(k)
		return
	}
	cfg, err := proxy.LoadConfig(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "raic-proxy:", err)
		os.Exit(1)
	}
	if *check {
		fmt.Printf("%s: ok (%d clients, listen %s)\n", *cfgPath, len(cfg.Clients), cfg.Listen)
		return
	}
	log, _ := logging.New(os.Stderr, "raic-proxy", cfg.LogLevel)
	p, err := proxy.New(cfg, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := p.Run(ctx); err != nil {
		log.Error("stopped", "err", err)
		os.Exit(1)
	}
	log.Info("stopped")
}
