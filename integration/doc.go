// Package integration holds the suite's end-to-end tests and benchmarks: loopback
// tests that need no root (UDP relays stand in for impaired uplinks), namespace
// tests of the full topology, the link emulator (linkem), the topology builder
// (netns) and the game-traffic generator (gamegen).
package integration
