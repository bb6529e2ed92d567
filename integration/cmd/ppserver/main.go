// Command ppserver is an example game server behind a proxy with
// client_addr_header: it strips the PROXY protocol v2 or Simple Proxy Protocol
// header from each datagram, so it knows the player's real address, and
// echoes the payload back, prefixed with what it learned:
//
//	client=ADDR:PORT peer=ADDR:PORT <payload>
//
// (client is the player's address from the header, peer the proxy socket the
// datagram came from). With SPP the reply starts with the header the datagram
// came with, byte for byte, as SPP origins answer: the proxy finds the
// session by it (a proxy with upstream = "shared" sends every player from one
// socket) and strips it. A datagram without a valid header is counted and
// dropped, as a server must: otherwise anyone could claim any address. A
// server of one's own does the same with package
// github.com/raicnet/raic/pkg/proxyproto: Kind.Parse on each datagram.
//
//	ppserver -listen 127.0.0.1:27015 -header proxy-v2
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/netip"
	"os"

	"github.com/raicnet/raic/pkg/proxyproto"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:27015", "UDP address to serve on")
	header := flag.String("header", "proxy-v2", `the header in front of each datagram: "proxy-v2" or "spp"`)
	flag.Parse()
	kind, err := proxyproto.ParseKind(*header)
	if err != nil || kind == proxyproto.None {
		fmt.Fprintln(os.Stderr, "ppserver: -header must be proxy-v2 or spp")
		os.Exit(2)
	}
	la, err := netip.ParseAddrPort(*listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ppserver:", err)
		os.Exit(2)
	}
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(la))
	if err != nil {
		fmt.Fprintln(os.Stderr, "ppserver:", err)
		os.Exit(1)
	}
	// The address actually bound (a port of 0 picks one) goes to stdout, so a
	// test can find the server.
	fmt.Println(conn.LocalAddr())
	buf := make([]byte, 65536)
	out := make([]byte, 0, 65536+128)
	dropped := 0
	for {
		n, peer, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			log.Fatal(err)
		}
		client, _, payload, err := kind.Parse(buf[:n])
		if err != nil || !client.IsValid() {
			dropped++
			log.Printf("dropped a datagram from %v without a valid %v header (%d so far)", peer, kind, dropped)
			continue
		}
		out = out[:0]
		if kind == proxyproto.SPP {
			out = append(out, buf[:proxyproto.SPPLen]...)
		}
		out = fmt.Appendf(out, "client=%v peer=%v ", client, peer)
		out = append(out, payload...)
		conn.WriteToUDPAddrPort(out, peer)
	}
}
