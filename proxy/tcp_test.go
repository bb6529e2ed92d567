package proxy

import (
	"net/netip"
	"strings"
	"testing"
)

func TestTCPListenConfig(t *testing.T) {
	base := "[[client]]\nid = \"gamer\"\nkey = \"0102030405060708090a0b0c0d0e0f100102030405060708090a0b0c0d0e0f10\"\nallow = [\"198.18.41.0/24\"]\n"
	c, err := ParseConfig("proxy.toml", "tcp_listen = \"198.18.40.2:443\"\n"+base)
	if err != nil || c.TCPListen != "198.18.40.2:443" {
		t.Fatalf("config %+v, err %v", c, err)
	}
	if _, err := ParseConfig("proxy.toml", "tcp_listen = \"443\"\n"+base); err == nil || !strings.Contains(err.Error(), "proxy.toml:1: tcp_listen") {
		t.Fatalf("error %v, want proxy.toml:1: tcp_listen", err)
	}
}

func TestFallbackAddressesAreSynthetic(t *testing.T) {
	if isFallback(netip.MustParseAddrPort("198.18.10.2:4500")) || isFallback(netip.MustParseAddrPort("[2001:db8::1]:443")) {
		t.Error("a real address taken for a fallback connection")
	}
	var b [16]byte
	copy(b[:], fallbackPrefix[:])
	b[15] = 7
	if !isFallback(netip.AddrPortFrom(netip.AddrFrom16(b), 443)) {
		t.Error("a fallback address not recognised")
	}
	var s *tcpSide
	if s.send(nil, netip.MustParseAddrPort("198.18.10.2:4500")) {
		t.Error("no tcp side, yet a datagram was taken")
	}
}
