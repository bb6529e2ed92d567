//go:build tools

// Package deps pins the modules the suite is built on while their first users are being written.
package deps

import (
	_ "github.com/BurntSushi/toml"
	_ "github.com/cilium/ebpf"
	_ "github.com/google/gopacket"
	_ "github.com/klauspost/reedsolomon"
	_ "github.com/songgao/water"
	_ "github.com/vishvananda/netlink"
	_ "golang.org/x/crypto/chacha20poly1305"
	_ "golang.org/x/crypto/hkdf"
	_ "golang.org/x/net/ipv4"
	_ "golang.org/x/sys/unix"
)
