// Command gamegen generates game-like UDP traffic and measures it: loss,
// duplicates, reordering, late packets, one-way delay percentiles, jitter and
// (in echo mode) round-trip time, in both directions.
//
// Run a server on one side and a client on the other:
//
//	gamegen server -listen :9000 -rate 60 -size 100 [-echo]
//	gamegen client -server 198.18.0.2:9000 -rate 60 -size 100 -duration 20s [-echo] [-json FILE]
//
// One-way delays are exact only when both ends read the same CLOCK_MONOTONIC,
// that is on one host (network namespaces included).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/raicnet/raic/integration/gamegen"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage:
  gamegen server -listen ADDR [-rate PPS] [-size BYTES] [-echo] [-idle DUR] [-spin DUR]
  gamegen client -server ADDR [-rate PPS] [-size BYTES] [-duration DUR] [-echo] [-json FILE] ...

Run "gamegen server -h" or "gamegen client -h" for every flag.
`

// run is main without the process: it returns the exit status (0 success,
// 1 failure, 2 bad usage).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "server":
		return runServer(ctx, args[1:], stdout, stderr)
	case "client":
		return runClient(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "gamegen: unknown command %q\n%s", args[0], usage)
		return 2
	}
}

// parse parses flags; it returns -1 to go on, or the exit status.
func parse(fs *flag.FlagSet, args []string, stdout io.Writer) int {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return 0
		}
		return 2 // the flag package already printed the error and usage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "gamegen %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2
	}
	return -1
}

// resolve accepts "host:port", "ip:port" and ":port".
func resolve(s string) (netip.AddrPort, error) {
	a, err := net.ResolveUDPAddr("udp", s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return a.AddrPort(), nil
}

func runServer(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", ":9000", "UDP address to listen on")
	rate := fs.Float64("rate", 60, "server tick stream to each client, packets per second (0: none)")
	size := fs.Int("size", 100, fmt.Sprintf("server tick size in bytes (≥ %d)", gamegen.MinSize))
	echo := fs.Bool("echo", false, "echo every client tick (for RTT)")
	idle := fs.Duration("idle", 5*time.Second, "stop a client's stream after this long without a packet from it")
	spin := fs.Duration("spin", 0, "busy-wait window before each due tick, for precise spacing at high rates")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: gamegen server [flags]\n\nAnswers gamegen clients: measures their ticks, streams its own ticks back, echoes on request.\n\nflags:")
		fs.PrintDefaults()
	}
	if c := parse(fs, args, stdout); c >= 0 {
		return c
	}
	addr, err := resolve(*listen)
	if err != nil {
		fmt.Fprintf(stderr, "gamegen server: -listen %q: %v\n", *listen, err)
		return 2
	}
	s, err := gamegen.NewServer(gamegen.ServerConfig{
		Listen: addr, Rate: *rate, Size: *size, Echo: *echo, IdleTimeout: *idle, Spin: *spin,
	})
	if err != nil {
		fmt.Fprintf(stderr, "gamegen server: %v\n", err)
		return 2
	}
	fmt.Fprintf(stderr, "gamegen server: listening on %v (stream %v pps × %d B, echo %v)\n", s.Addr(), *rate, *size, *echo)
	if err := s.Serve(ctx); err != nil {
		fmt.Fprintf(stderr, "gamegen server: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "gamegen server: stopped; %d sessions, %d malformed datagrams from strangers, %d dropped over the client limit\n",
		s.Sessions(), s.Malformed(), s.Overflow())
	return 0
}

func runClient(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := fs.String("server", "", "server (or relay/proxy) UDP address, host:port (required)")
	local := fs.String("local", "", "local UDP address to bind (default: any)")
	rate := fs.Float64("rate", 60, "tick rate, packets per second")
	size := fs.Int("size", 100, fmt.Sprintf("tick size in bytes (≥ %d)", gamegen.MinSize))
	duration := fs.Duration("duration", 20*time.Second, "measured sending time, after the warm-up")
	warmup := fs.Duration("warmup", 0, "ticks sent first and left out of the statistics")
	deadline := fs.Duration("deadline", 50*time.Millisecond, "one-way delay above which a packet counts as late")
	drain := fs.Duration("drain", 0, "wait for in-flight packets at the end (default max(2×deadline, 200ms))")
	echo := fs.Bool("echo", false, "ask the server to echo every tick and report RTT")
	spin := fs.Duration("spin", 0, "busy-wait window before each due tick, for precise spacing at high rates")
	jsonOut := fs.String("json", "", `also write the report as JSON to this file ("-": stdout)`)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: gamegen client -server ADDR [flags]\n\nSends game-like ticks, receives the server's stream and prints per-direction statistics.\n\nflags:")
		fs.PrintDefaults()
	}
	if c := parse(fs, args, stdout); c >= 0 {
		return c
	}
	if *server == "" {
		fmt.Fprintln(stderr, "gamegen client: -server is required")
		return 2
	}
	cfg := gamegen.ClientConfig{
		Rate: *rate, Size: *size, Duration: *duration, Warmup: *warmup, Deadline: *deadline,
		Drain: *drain, Echo: *echo, Spin: *spin,
	}
	var err error
	if cfg.Server, err = resolve(*server); err != nil {
		fmt.Fprintf(stderr, "gamegen client: -server %q: %v\n", *server, err)
		return 2
	}
	if *local != "" {
		if cfg.Local, err = resolve(*local); err != nil {
			fmt.Fprintf(stderr, "gamegen client: -local %q: %v\n", *local, err)
			return 2
		}
	}
	r, err := gamegen.RunClient(ctx, cfg)
	if r == nil {
		fmt.Fprintf(stderr, "gamegen client: %v\n", err)
		return 2 // only configuration and socket errors come without a report
	}
	r.WriteTable(stdout)
	code := 0
	if err != nil {
		fmt.Fprintf(stderr, "gamegen client: %v\n", err)
		code = 1
	}
	if *jsonOut != "" {
		if werr := writeJSON(*jsonOut, r, stdout); werr != nil {
			fmt.Fprintf(stderr, "gamegen client: -json: %v\n", werr)
			code = 1
		}
	}
	return code
}

func writeJSON(path string, r *gamegen.Report, stdout io.Writer) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if path == "-" {
		_, err = stdout.Write(b)
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
