// Command raic-token makes the keys and connect tokens of a studio's proxy
// fleet: -genkey prints a new token key (the proxies' token_key, and the
// backend's), and mint seals a token for one player. A backend may import
// package github.com/raicnet/raic/pkg/token instead.
//
//	raic-token -genkey > token.key
//	raic-token mint -key-file token.key -client player-1 \
//	    -server 198.18.41.2:27015 -ttl 5m
//
// mint prints the router's config lines: the token and the client key that
// goes with it (the backend hands both to the player; only the token travels
// on the wire).
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/raicnet/raic/pkg/token"
	"github.com/raicnet/raic/pkg/version"
	"github.com/raicnet/raic/pkg/wire"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

type servers []string

func (s *servers) String() string     { return strings.Join(*s, ",") }
func (s *servers) Set(v string) error { *s = append(*s, v); return nil }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "mint" {
		return mint(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("raic-token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: raic-token -genkey\n       raic-token mint -key-file FILE -client ID -server ADDR [-server ...] [-ttl 5m] [-sessions N]\n\n")
		fmt.Fprintf(stderr, "Makes token keys and connect tokens for proxies with token_key.\n\n")
		fs.PrintDefaults()
	}
	genkey := fs.Bool("genkey", false, "print a new random token key and exit")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	switch {
	case *showVersion:
		fmt.Fprintln(stdout, "raic-token", version.Version)
		return 0
	case *genkey:
		k, err := wire.GenerateKey()
		if err != nil {
			fmt.Fprintln(stderr, "raic-token:", err)
			return 1
		}
		fmt.Fprintln(stdout, k)
		return 0
	}
	fs.Usage()
	return 2
}

func mint(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("raic-token mint", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keyFile := fs.String("key-file", "", "file holding the token key (raic-token -genkey)")
	client := fs.String("client", "", "the player's client ID (1 to 32 bytes)")
	var srv servers
	fs.Var(&srv, "server", "a server the player may reach, in allowlist syntax (repeat for more)")
	ttl := fs.Duration("ttl", 5*time.Minute, "how long the token admits new sessions")
	sessions := fs.Int("sessions", token.DefaultSessions, "how many sessions the token may open at one proxy: a router uses one per game flow plus one for its keepalives")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if *keyFile == "" || *client == "" || len(srv) == 0 {
		fmt.Fprintln(stderr, "raic-token mint: -key-file, -client and -server are required")
		return 2
	}
	b, err := os.ReadFile(*keyFile)
	if err != nil {
		fmt.Fprintln(stderr, "raic-token:", err)
		return 1
	}
	key, err := wire.ParseKey(string(b))
	if err != nil {
		fmt.Fprintf(stderr, "raic-token: %s: %v\n", *keyFile, err)
		return 1
	}
	now := time.Now()
	// A little slack before now, for proxies whose clocks run behind.
	tok, c, err := token.Mint(&key, token.Claims{ClientID: *client, Servers: srv,
		NotBefore: now.Add(-30 * time.Second), Expires: now.Add(*ttl), Sessions: *sessions})
	if err != nil {
		fmt.Fprintln(stderr, "raic-token:", err)
		return 1
	}
	fmt.Fprintf(stdout, "# router config lines; the token expires %s\n", c.Expires.UTC().Format(time.RFC3339))
	fmt.Fprintf(stdout, "token = %q\nkey = %q\n", token.Encode(tok), c.ClientKey.String())
	return 0
}
