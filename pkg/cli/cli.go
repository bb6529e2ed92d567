// Package cli is the command-line frame the suite's programs share, so that
// each one answers the same flags the same way: -config FILE, -check (validate
// the config and exit), -version, -genkey (programs that hold keys), --help;
// then it builds the program from its config, logs in the common format, and
// runs it until SIGINT or SIGTERM. SIGUSR1 logs the process's memory (LogMemory).
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/raicnet/raic/pkg/config"
	"github.com/raicnet/raic/pkg/logging"
	"github.com/raicnet/raic/pkg/version"
	"github.com/raicnet/raic/pkg/wire"
)

// Runner is a built program: it serves until ctx ends.
type Runner interface {
	Run(ctx context.Context) error
}

// Drainer is a Runner that can stop taking new work and finish what it has;
// on SIGTERM Main calls Drain (which returns when done or timed out) before
// it ends the program. A second SIGTERM, or SIGINT, ends it at once.
type Drainer interface {
	Drain()
}

// Reloader is a Runner that can take a new config while it runs; on SIGHUP
// Main loads the config file again and, when it checks, hands it over. A
// config that does not check is logged and the old one stays.
type Reloader[C any] interface {
	Reload(c *C) error
}

// Program describes one command for Main.
type Program[C any] struct {
	Name   string // the command's name, e.g. "raic-proxy"
	About  string // what it does, for --help
	Config string // default config path
	GenKey bool   // offer -genkey (programs that hold pre-shared keys)
	// Load reads and checks a config; its errors name file, line and key.
	Load func(path string) (*C, error)
	// Summary is what -check prints after "PATH: ok".
	Summary func(c *C) string
	// LogLevel is the config's log level.
	LogLevel func(c *C) string
	// New builds the program from its config.
	New func(c *C, log *slog.Logger) (Runner, error)
}

// Main runs the program with the process's arguments and exits.
func (p Program[C]) Main() {
	os.Exit(p.run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is Main without the exit, returning the exit code.
func (p Program[C]) run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(p.Name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: %s -config FILE [-check]\n", p.Name)
		if p.GenKey {
			fmt.Fprintf(fs.Output(), "       %s -genkey\n", p.Name)
		}
		fmt.Fprintf(fs.Output(), "\n%s\n\n", p.About)
		fs.PrintDefaults()
	}
	cfgPath := fs.String("config", p.Config, "config file (TOML)")
	check := fs.Bool("check", false, "check the config file and exit")
	showVersion := fs.Bool("version", false, "print the version and exit")
	var genkey *bool
	if p.GenKey {
		genkey = fs.Bool("genkey", false, "print a new random pre-shared key and exit")
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q (see --help)\n", p.Name, fs.Arg(0))
		return 2
	}
	switch {
	case *showVersion:
		fmt.Fprintln(stdout, p.Name, version.Version)
		return 0
	case genkey != nil && *genkey:
		k, err := wire.GenerateKey()
		if err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", p.Name, err)
			return 1
		}
		fmt.Fprintln(stdout, k)
		return 0
	}
	cfg, err := p.Load(*cfgPath)
	if err != nil {
		// Every error of the file, one per line, each naming file, line and key.
		var es config.Errors
		if errors.As(err, &es) {
			for _, e := range es {
				fmt.Fprintf(stderr, "%s: %v\n", p.Name, e)
			}
		} else {
			fmt.Fprintf(stderr, "%s: %v\n", p.Name, err)
		}
		return 1
	}
	if *check {
		fmt.Fprintf(stdout, "%s: ok (%s)\n", *cfgPath, p.Summary(cfg))
		return 0
	}
	log, err := logging.New(stderr, p.Name, p.LogLevel(cfg))
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", p.Name, err)
		return 1
	}
	prog, err := p.New(cfg, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGUSR1)
	defer signal.Stop(sigs)
	go p.signals(sigs, prog, *cfgPath, log, stop)
	if err := prog.Run(ctx); err != nil {
		log.Error("stopped", "err", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

// LogMemory runs a garbage collection and logs the memory the process holds
// then: heap_alloc_bytes is the live heap, heap_inuse_bytes the spans it
// occupies, sys_bytes all the runtime took from the system. The benchmarks
// read it for the heap a session costs.
func LogMemory(log *slog.Logger) {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	log.Info("memory", "heap_alloc_bytes", m.HeapAlloc, "heap_inuse_bytes", m.HeapInuse, "heap_objects", m.HeapObjects,
		"stack_inuse_bytes", m.StackInuse, "sys_bytes", m.Sys, "goroutines", runtime.NumGoroutine())
}

// signals turns SIGUSR1 into a memory report (LogMemory), SIGHUP into a reload, the first SIGTERM into a drain (for a
// Drainer) and the end, and SIGINT or a second SIGTERM into the end at once.
func (p Program[C]) signals(sigs <-chan os.Signal, prog Runner, path string, log *slog.Logger, stop func()) {
	draining := false
	for sig := range sigs {
		switch sig {
		case syscall.SIGUSR1:
			LogMemory(log)
		case syscall.SIGHUP:
			rl, ok := prog.(Reloader[C])
			if !ok {
				log.Warn("SIGHUP ignored: this program reloads nothing")
				continue
			}
			cfg, err := p.Load(path)
			if err == nil {
				err = rl.Reload(cfg)
			}
			if err != nil {
				log.Error("reload refused; the running config stays", "err", err)
				continue
			}
		case syscall.SIGTERM:
			d, ok := prog.(Drainer)
			if !ok || draining {
				stop()
				continue
			}
			draining = true
			go func() {
				d.Drain()
				stop()
			}()
		default:
			stop()
		}
	}
}
