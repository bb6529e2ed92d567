// Package detect decides whether a flow is latency-critical (LC) and records
// which rule said so.
//
// A flow is LC when one of these rules matches. They are tried in this order
// and the first match wins, so the Decision names the most informative rule:
//
//  1. port    the application table (shipped apps.toml plus user entries):
//     protocol, server port and, where the entry lists them, client ports.
//     It names the application, its type, expected rate and proxies.
//  2. asn     the destination lies in a configured game operator's prefixes
//     (rule "prefix:<operator>", most specific prefix first) or its origin
//     AS belongs to such an operator ("asn:AS<n>").
//  3. learned the destination was earlier found LC by ad-hoc timing.
//  4. rdns    the destination's PTR name matched a pattern (option, off by
//     default; answers come from an asynchronous cache, so a first flow to a
//     new address never waits for DNS: it is LC only once the answer is in,
//     then in flight, like ad-hoc timing, and its destination is learned).
//  5. dscp    the packet carries EF, CS3, CS4 or CS5.
//  6. adhoc   the flow's timing looks like a game or a call: small packets,
//     short steady gaps, low rate, sustained for a while.
//
// Rules 1–5 are evaluated on the first packet of a flow and the result is kept
// with the flow; a flow that was LC from its first packet may be proxied
// (Decision.Proxy). A flow that becomes LC later (DSCP on a later packet, or
// ad-hoc timing) is already in flight: moving it to a proxy would change its
// source address as seen by the server and break it, so it is LC with
// Proxy=false, and if timing found it, its destination is learned so that the
// next session to it is proxied from its first packet.
//
// DSCP DF (0) and CS1 (8) never make a flow LC. CS1 (scavenger) additionally
// stops ad-hoc timing from flagging the flow: the sender has said the traffic is
// bulk. DF is the default marking of most games, so it vetoes nothing.
//
// The per-packet path (Classifier.Classify) allocates nothing: every table is a
// sorted array or a fixed-capacity hash table with least-recently-used
// eviction, and every eviction is counted. A Classifier belongs to one
// goroutine (the capture loop, or one per shard when flows are spread over
// cores by hash); the learned and rDNS stores it shares are touched once per
// new flow, and the rDNS cache also per packet of a flow whose lookup is
// pending (until the lookup's timeout at most).
package detect
