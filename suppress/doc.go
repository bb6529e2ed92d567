// Package suppress is the decision side of suppression: it learns when the next
// latency-critical (LC) packet of a session is due, watches each uplink for signs
// that bulk traffic is hurting LC traffic, and turns what it sees into an
// enforcement Policy per uplink and direction.
//
// The package performs no I/O of its own. The Runtime (runtime.go) is
// suppression at run time: the router hands it each game packet's timestamp
// (Runtime.Observe) and its sessions, and it samples the uplinks into the
// Controller and translates the resulting Policy values into per-device
// configurations for an Enforcer (enforcer.go), the kernel side, which package
// bpf provides over the maps its eBPF programs read; tests use a fake one. All timestamps are CLOCK_MONOTONIC nanoseconds (pkg/mono), the clock
// the eBPF programs read with bpf_ktime_get_ns, so a cutoff window computed here can
// be compared directly with a packet's kernel timestamp.
//
// Under the Runtime there are three parts:
//
//   - Timing (timing.go): a phase-locked loop per LC session that predicts T_next.
//   - Controller (controller.go, detect.go): detectors for LC presence, link
//     utilisation, queueing delay per direction (RTT inflation when one-way
//     delays are unknown), one-way delay trend, jitter and loss, combined
//     into a Level with hysteresis; every level change is reported as an Event.
//   - Policy (policy.go): what enforcement does at a level, including the
//     reserve time T_reserve = C + packet_bits/link_rate and the cutoff window
//     [T_next − T_reserve, T_next + ε].
//
// Configuration (config.go) is TOML with defaults and a Validate method that names
// the offending key.
package suppress
