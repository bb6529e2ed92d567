package router

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"

	"github.com/raicnet/raic/pkg/wire"
)

// needLoopback2 skips the test where the machine has no 127.0.0.2 for the
// second uplink.
func needLoopback2(t *testing.T) {
	t.Helper()
	if c, err := net.ListenPacket("udp4", "127.0.0.2:0"); err != nil {
		t.Skipf("no 127.0.0.2 on this machine: %v", err)
	} else {
		c.Close()
	}
}

// startEchoPeerPair starts a UDP echo server on loopback and two peer-only
// routers on it: alice (port pa, headA before its tables) with the vport
// "echo" to bob, and bob (port pb, headB) with the service "echo" at the
// echo server. They run until the test ends; a Run error fails the test.
func startEchoPeerPair(t *testing.T, pa, pb int, headA, headB string) [2]*Router {
	t.Helper()
	echo, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })
	go func() {
		b := make([]byte, 2048)
		for {
			n, from, err := echo.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			echo.WriteToUDPAddrPort(b[:n], from)
		}
	}()
	key, _ := wire.GenerateKey()
	ca, err := ParseConfig("a.toml", peerOnlyConfig("alice", "bob", pa, pb, key,
		headA+"\n[[vport]]\npeer = \"bob\"\nlisten = \"127.0.0.1:0\"\nservice = \"echo\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	cb, err := ParseConfig("b.toml", peerOnlyConfig("bob", "alice", pb, pa, key,
		headB+fmt.Sprintf("\n[[peer.service]]\nname = \"echo\"\ntarget = %q\n", echo.LocalAddr().String())))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	var routers [2]*Router
	done := make(chan error, 2)
	started := 0
	t.Cleanup(func() {
		cancel()
		for range started {
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	})
	for i, c := range []*Config{ca, cb} {
		r, err := New(c, log)
		if err != nil {
			t.Fatal(err)
		}
		routers[i] = r
		started++
		go func() { done <- r.Run(ctx) }()
	}
	return routers
}
