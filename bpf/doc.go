// Package bpf holds the router's tc eBPF programs and their Go loader.
//
// Two programs share one set of maps:
//
//   - classify_ingress, on the LAN-side ingress, tracks UDP flows in an LRU map
//     and marks latency-critical (LC) packets (by port table, DSCP EF/CS3/CS4/CS5,
//     or userspace promotion) with a configurable skb->mark so policy routing can
//     steer them into the TUN device. It never drops.
//   - suppress_egress, on the WAN egress (uploads) and the LAN egress (downloads),
//     holds back bulk traffic while LC traffic is present: a token-bucket cap,
//     fractional drops of the biggest flows with a bound on consecutive drops per
//     flow, ECN CE instead of a drop for ECN-capable packets, DSCP rewrite to CS1,
//     and a cutoff window around the time the next LC packet is due. LC packets
//     always pass untouched.
//
// The C source is raic.c. The compiled object and its Go bindings (raic_bpfel.o,
// raic_bpfel.go) are committed so that building needs no C toolchain; generate.sh
// rebuilds them reproducibly and check-generated.sh fails when they are stale.
//
// Times exchanged with the kernel are CLOCK_MONOTONIC nanoseconds, the clock of
// bpf_ktime_get_ns and of package mono.
package bpf
