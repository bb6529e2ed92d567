// Package gamegen is a traffic generator that behaves like a game, for the
// suite's end-to-end tests and benchmarks.
//
// A client sends ticks at a fixed rate and size to a server. The server
// measures them, sends each client its own tick stream at its own rate and
// size (a game server does not merely echo), and on request echoes every
// client tick with the client's timestamp, so the client measures RTT. At the
// end the client asks the server for its counters of the client → server
// direction (a report request, retried a bounded number of times), so one
// Report holds both directions:
//
//   - sent, received, lost (count and %), duplicates, reordered;
//   - late: received, but with a one-way delay above a deadline (counted
//     apart from loss, because a game drops such a packet itself);
//   - one-way delay p50/p99/p99.9/max, RFC 3550 interarrival jitter and the
//     standard deviation of the delay;
//   - in echo mode, RTT p50/p99/p99.9/max.
//
// One-way delays are send and receive stamps of CLOCK_MONOTONIC
// (pkg/mono), which every network namespace of a host shares, so on one host
// they are exact; across hosts only RTT, counts and jitter mean anything.
//
// Memory is bounded whatever the run length: percentiles come from a
// log-linear histogram with at most 0.8 % relative error, and duplicates and
// reordering are told apart within a window of 65,536 sequence numbers
// (6.5 s at 10,000 pps; older arrivals are counted as TooOld).
//
// Ticks are paced at start + i/rate, never relative to the previous send, so
// timer lateness delays packets without making the rate drift; see
// ClientConfig.Spin for per-packet precision at high rates. The send and
// receive loops do not allocate, and malformed datagrams are counted, never
// trusted.
package gamegen
