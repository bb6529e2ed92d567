// Command linkem runs the project's link emulator by hand.
//
//	linkem relay -listen 127.0.0.1:5000 -upstream 127.0.0.1:6000 -up "delay=20ms,loss=1%" -down "delay=20ms"
//
// relays UDP on loopback through an impaired link (no root needed), and
//
//	linkem topo -uplinks 2 -link "delay=20ms|delay=20ms" -link "delay=35ms,loss=2%|delay=35ms"
//
// builds the standard game topology in network namespaces (root), with one
// -link "up|down" per uplink, prints it as JSON and keeps it until SIGINT or
// SIGTERM, when it removes everything. Both print link counters every -stats
// interval.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/raicnet/raic/integration/linkem"
	"github.com/raicnet/raic/integration/netns"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, " ") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: linkem relay|topo [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "relay":
		err = relay(os.Args[2:])
	case "topo":
		err = topo(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "linkem:", err)
		os.Exit(1)
	}
}

// wait blocks until SIGINT or SIGTERM, printing stats every interval.
func wait(interval time.Duration, stats func()) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	var tick <-chan time.Time
	if interval > 0 {
		t := time.NewTicker(interval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-sig:
			stats()
			return
		case <-tick:
			stats()
		}
	}
}

func printStats(name string, l *linkem.Link) {
	s := l.Stats()
	fmt.Printf("%s in=%d out=%d drop(outage=%d loss=%d queue=%d overflow=%d) dup=%d queue-wait(mean=%v max=%v) late(mean=%v max=%v)\n",
		name, s.In, s.Out, s.DropOutage, s.DropLoss, s.DropQueue, s.DropOverflow, s.Duplicated,
		s.MeanQueueDelay(), time.Duration(s.QueueDelayMax), s.MeanLate(), time.Duration(s.LateMax))
}

func relay(args []string) error {
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address clients send to")
	upstream := fs.String("upstream", "", "address to relay to")
	up := fs.String("up", "", "client→upstream link, compact form")
	down := fs.String("down", "", "upstream→client link, compact form")
	every := fs.Duration("stats", 5*time.Second, "stats interval (0: only at exit)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	la, err := netip.ParseAddrPort(*listen)
	if err != nil {
		return err
	}
	ua, err := netip.ParseAddrPort(*upstream)
	if err != nil {
		return fmt.Errorf("-upstream: %w", err)
	}
	cu, err := linkem.ParseConfig(*up)
	if err != nil {
		return err
	}
	cd, err := linkem.ParseConfig(*down)
	if err != nil {
		return err
	}
	r, err := linkem.NewUDPRelay(la, ua, cu, cd)
	if err != nil {
		return err
	}
	defer r.Close()
	fmt.Printf("relaying %v -> %v (up seed %d, down seed %d)\n", r.Addr(), ua, r.Up().Seed(), r.Down().Seed())
	wait(*every, func() { printStats("up", r.Up()); printStats("down", r.Down()) })
	return nil
}

type hostJSON struct {
	NS     string            `json:"ns"`
	Ifaces map[string]string `json:"ifaces"`
}

func topo(args []string) error {
	fs := flag.NewFlagSet("topo", flag.ContinueOnError)
	uplinks := fs.Int("uplinks", 2, "number of uplinks (1-3)")
	relays := fs.Bool("relays", false, "put a relay host between each ISP and the core")
	var links multi
	fs.Var(&links, "link", `per uplink, in order: "up|down" in compact form (repeat)`)
	every := fs.Duration("stats", 5*time.Second, "stats interval (0: only at exit)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o := netns.GameOptions{Uplinks: *uplinks, Relays: *relays}
	for _, l := range links {
		u, d, _ := strings.Cut(l, "|")
		var lp netns.LinkPair
		var err error
		if lp.Up, err = linkem.ParseConfig(u); err != nil {
			return err
		}
		if lp.Down, err = linkem.ParseConfig(d); err != nil {
			return err
		}
		o.Links = append(o.Links, lp)
	}
	g, err := netns.NewGame(o)
	if err != nil {
		return err
	}
	defer g.Close()
	hosts := map[string]hostJSON{}
	for _, h := range append(append([]*netns.Host{g.LAN, g.Router, g.Core, g.Proxy, g.Server, g.Internet}, g.ISPs...), g.Relays...) {
		hj := hostJSON{NS: h.NS, Ifaces: map[string]string{}}
		for _, i := range h.Ifaces {
			hj.Ifaces[i.Name] = i.Addr.String()
		}
		hosts[h.Name] = hj
	}
	b, err := json.MarshalIndent(hosts, "", "  ")
	if err != nil {
		return errors.Join(err, g.Close())
	}
	fmt.Println(string(b))
	wait(*every, func() {
		for i, e := range g.Emu {
			if e != nil {
				printStats(fmt.Sprintf("uplink%d up", i), e.AToB())
				printStats(fmt.Sprintf("uplink%d down", i), e.BToA())
			}
		}
	})
	return nil
}
