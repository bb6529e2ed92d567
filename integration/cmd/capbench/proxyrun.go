package main

import (
	"context"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"

	"github.com/raicnet/raic/pkg/cli"
	"github.com/raicnet/raic/pkg/logging"
	"github.com/raicnet/raic/proxy"
)

// runProfiledProxy is what raic-proxy does, with a CPU profile written to
// profile around Run. capbench -profile runs this binary in this mode as the
// proxy process, so the proxy itself needs no profiling flag.
func runProfiledProxy(cfgPath, profile string) error {
	cfg, err := proxy.LoadConfig(cfgPath)
	if err != nil {
		return err
	}
	log, err := logging.New(os.Stderr, "raic-proxy", cfg.LogLevel)
	if err != nil {
		return err
	}
	p, err := proxy.New(cfg, log)
	if err != nil {
		return err
	}
	f, err := os.Create(profile)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		return err
	}
	defer pprof.StopCPUProfile()
	// SIGUSR1 writes a heap profile to profile+".heap" while the sessions are live.
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		for range usr1 {
			cli.LogMemory(log) // as raic-proxy does on SIGUSR1
			runtime.GC()
			if h, err := os.Create(profile + ".heap"); err == nil {
				pprof.WriteHeapProfile(h)
				h.Close()
			}
		}
	}()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return p.Run(ctx)
}
