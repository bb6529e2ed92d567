package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
)

// runRelay is the plain relay of the baseline path: the least a separate Go
// process in the path can cost. It forwards what arrives on a loopback socket
// to target from a socket of its own, and what target answers to the last
// address that sent to it; no sealing, no copies, no sessions. rttbench runs two
// of them in a chain, as many process hops as router and proxy.
func runRelay(target string) error {
	to, err := netip.ParseAddrPort(target)
	if err != nil {
		return err
	}
	front, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	back, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		return err
	}
	for _, c := range []*net.UDPConn{front, back} {
		c.SetReadBuffer(4 << 20)
		c.SetWriteBuffer(4 << 20)
	}
	fmt.Fprintf(os.Stderr, "msg=\"relay serving\" listen=%s\n", front.LocalAddr())
	var client atomic.Pointer[netip.AddrPort]
	go func() {
		buf := make([]byte, 65536)
		for {
			n, err := back.Read(buf)
			if err != nil {
				if _, ok := err.(*net.OpError); ok && !isRefused(err) {
					return
				}
				continue
			}
			if c := client.Load(); c != nil {
				front.WriteToUDPAddrPort(buf[:n], *c)
			}
		}
	}()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := front.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if c := client.Load(); c == nil || *c != from {
				client.Store(&from)
			}
			back.Write(buf[:n])
		}
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	front.Close()
	back.Close()
	return nil
}

// isRefused reports an ICMP port unreachable surfacing on a connected socket.
func isRefused(err error) bool {
	var errno syscall.Errno
	if oe, ok := err.(*net.OpError); ok {
		if se, ok := oe.Err.(*os.SyscallError); ok {
			if e, ok := se.Err.(syscall.Errno); ok {
				errno = e
			}
		}
	}
	return errno == syscall.ECONNREFUSED
}
