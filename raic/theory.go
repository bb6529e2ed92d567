package raic

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// uplinkStates turns per-uplink loss rates into the placement input used by
// the theory: an uplink losing everything counts as down.
func uplinkStates(loss []float64, st []UplinkState) []UplinkState {
	st = st[:0]
	for _, l := range loss {
		st = append(st, UplinkState{Up: l < 1, Weight: Health(l)})
	}
	return st
}

// shardsPerFragment is the number of distinct shards of one fragment that are
// sent, and how many of them are needed.
func shardsPerFragment(p Params) (n, k int) {
	switch p.Scheme {
	case SchemeCopy:
		return p.M + 1, 1
	case SchemeXOR, SchemeRS:
		return p.K + p.M, p.K
	case SchemeTime:
		return p.Depth + 1, 1
	}
	return 0, 0
}

// ResidualLoss is the theoretical probability that a packet (one fragment) is
// not rebuilt, when shards are placed by Place over uplinks with the given
// independent per-datagram loss rates. Copies and block codes are exact: the
// packet is lost when fewer than k of its n shards arrive. For RAICT (a steady
// stream of packets that fit one shard) it is an approximation: a packet is
// rebuilt from its own shard, from an XOR shard j with packet P-j, or from the
// later XOR shard (P+j)^P with packet P+j, and neighbours are taken as unknown
// with the same residual probability, independently. A packet of F fragments is
// lost with probability 1-(1-r)^F.
func ResidualLoss(p Params, perUplinkLoss []float64) float64 {
	if p.Validate() != nil || len(perUplinkLoss) == 0 {
		return 1
	}
	var stBuf [maxUplinks]UplinkState
	st := uplinkStates(perUplinkLoss, stBuf[:0])
	n, k := shardsPerFragment(p)
	var placeBuf [MaxTotal]int
	pl := Place(n, st, placeBuf[:0])
	lossOf := func(i int) float64 { return clamp01(perUplinkLoss[pl[i]]) }
	if p.Scheme == SchemeTime {
		// P is lost when its own shard is lost and, for every j, both the pair
		// (P^(P-j), P-j) and the pair ((P+j)^P, P+j) are incomplete. A
		// neighbour is itself unknown with the residual probability r, so r is
		// the fixed point of r = l0 * prod_j (1-(1-lj)(1-r))^2, reached by
		// iteration from r = l0 (the first step is the bound that ignores
		// rebuilt neighbours).
		l0 := lossOf(0)
		r := l0
		for range 50 {
			nr := l0
			for j := 1; j < n; j++ {
				miss := 1 - (1-lossOf(j))*(1-r)
				nr *= miss * miss
			}
			if math.Abs(nr-r) <= 1e-15 {
				r = nr
				break
			}
			r = nr
		}
		return r
	}
	// Distribution of the number of shards received (Poisson binomial).
	var dist [MaxTotal + 1]float64
	dist[0] = 1
	for i := range n {
		q := lossOf(i)
		for c := i + 1; c >= 1; c-- {
			dist[c] = dist[c]*q + dist[c-1]*(1-q)
		}
		dist[0] *= q
	}
	r := 0.0
	for c := 0; c < k; c++ {
		r += dist[c]
	}
	return r
}

func clamp01(x float64) float64 {
	if !(x > 0) {
		return 0
	}
	return min(x, 1)
}

// Overhead is bytes sent per payload byte, headers and padding ignored: copy x2
// is 2.0, XOR 2+1 is 1.5, RS k+m is (k+m)/k, RAICT depth d is 1+d.
func Overhead(p Params) float64 {
	n, k := shardsPerFragment(p)
	if k == 0 {
		return math.Inf(1)
	}
	return float64(n) / float64(k)
}

// UplinkQuality is what the chooser knows of an uplink.
type UplinkQuality struct {
	Loss float64
	RTT  time.Duration
	Up   bool
}

// candidates the chooser weighs, cheapest first within each family. RAICT is
// not among them: its gain is against bursts, which independent-loss figures do
// not show; configure it per app type where bursts are known.
var candidates = func() []Params {
	var c []Params
	for n := 1; n <= 4; n++ {
		c = append(c, Params{Scheme: SchemeCopy, K: 1, M: n - 1})
	}
	for k := 2; k <= 4; k++ {
		c = append(c, Params{Scheme: SchemeXOR, K: k, M: 1})
		for m := 2; m <= 3; m++ {
			c = append(c, Params{Scheme: SchemeRS, K: k, M: m})
		}
	}
	return c
}()

// latencyOf estimates when a packet completes without loss: the k-th earliest
// arrival among its shards' uplinks (a copy completes with the fastest copy, a
// k-of-n code waits for its k-th shard).
func latencyOf(p Params, live []UplinkQuality, pl []int) time.Duration {
	var rtt [MaxTotal]time.Duration
	for i, u := range pl {
		rtt[i] = live[u].RTT
	}
	r := rtt[:len(pl)]
	sort.Slice(r, func(a, b int) bool { return r[a] < r[b] })
	_, k := shardsPerFragment(p)
	return r[k-1]
}

// survivesOutage reports whether a packet placed as pl still completes when any
// one of the live uplinks carries nothing.
func survivesOutage(p Params, pl []int, live int) bool {
	if live < 2 {
		return true // nothing to survive with
	}
	n, k := shardsPerFragment(p)
	var per [maxUplinks]int
	for _, u := range pl {
		per[u]++
		if per[u] > n-k {
			return false
		}
	}
	return true
}

// Choose picks, for one session, the scheme with the least bandwidth whose
// theoretical residual loss over the live uplinks meets targetResidual, among
// those that complete a packet about as fast as the fastest choice (within 10%
// or 2 ms: a code that must wait for a slow uplink's shard is not taken to save
// bandwidth). If none meets the target it takes the lowest residual loss. The
// reason names the pick, its figures and the runner-up.
func Choose(q []UplinkQuality, targetResidual float64) (Params, string) {
	var live []UplinkQuality
	var loss []float64
	for _, u := range q {
		if u.Up && u.Loss < 1 {
			live = append(live, u)
			loss = append(loss, clamp01(u.Loss))
		}
	}
	if len(live) == 0 {
		p := Params{Scheme: SchemeCopy, K: 1, M: max(len(q), 1) - 1}
		return p, fmt.Sprintf("%v: no live uplink measured; copies on every uplink", p)
	}
	type cand struct {
		p        Params
		res, ovh float64
		lat      time.Duration
		survives bool // still complete when any one uplink dies
	}
	cs := make([]cand, 0, len(candidates))
	best := time.Duration(math.MaxInt64)
	st := uplinkStates(loss, nil)
	for _, p := range candidates {
		n, _ := shardsPerFragment(p)
		if p.Scheme == SchemeCopy && n > len(live) {
			continue // a second copy on the same uplink shares its fate in practice
		}
		pl := Place(n, st, nil)
		c := cand{p: p, res: ResidualLoss(p, loss), ovh: Overhead(p), lat: latencyOf(p, live, pl),
			survives: survivesOutage(p, pl, len(live))}
		best = min(best, c.lat)
		cs = append(cs, c)
	}
	slack := max(best/10, 2*time.Millisecond)
	// Cheaper first; at equal bandwidth fewer shards needed (a copy completes
	// from any one uplink), then lower residual loss.
	better := func(a, b cand) bool {
		if a.ovh != b.ovh {
			return a.ovh < b.ovh
		}
		_, ka := shardsPerFragment(a.p)
		_, kb := shardsPerFragment(b.p)
		if ka != kb {
			return ka < kb
		}
		return a.res < b.res
	}
	pick, alt := -1, -1
	outageNote := ""
	// First only schemes that survive the death of any one uplink: the
	// independent-loss figures do not see outages, which are what several
	// uplinks are for. Then, if none meets the target, any scheme.
	for pass := range 2 {
		for i, c := range cs {
			if c.res > targetResidual || c.lat > best+slack || (pass == 0 && !c.survives) {
				continue
			}
			if pick < 0 || better(c, cs[pick]) {
				alt, pick = pick, i
			} else if alt < 0 || better(c, cs[alt]) {
				alt = i
			}
		}
		if pick >= 0 {
			if pass == 1 {
				outageNote = " (no scheme meeting it survives an uplink outage)"
			}
			break
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "uplinks")
	for _, u := range live {
		fmt.Fprintf(&b, " [loss %.2g%% rtt %v]", 100*u.Loss, u.RTT)
	}
	if pick < 0 {
		for i, c := range cs {
			if pick < 0 || c.res < cs[pick].res || (c.res == cs[pick].res && c.ovh < cs[pick].ovh) {
				pick = i
			}
		}
		c := cs[pick]
		return c.p, fmt.Sprintf("%v: no scheme meets target %.2g; lowest residual %.2g at overhead %.2f; %s",
			c.p, targetResidual, c.res, c.ovh, b.String())
	}
	c := cs[pick]
	why := fmt.Sprintf("%v: residual %.2g <= target %.2g%s at overhead %.2f, latency %v; %s",
		c.p, c.res, targetResidual, outageNote, c.ovh, c.lat, b.String())
	if alt >= 0 {
		a := cs[alt]
		why += fmt.Sprintf("; next cheapest %v (overhead %.2f, residual %.2g)", a.p, a.ovh, a.res)
	}
	return c.p, why
}

// Policy is the per-session choice: a scheme configured per app type, or the
// adaptive chooser where the app type says "auto" (or has no entry and Default
// is unset).
type Policy struct {
	PerApp  map[string]string // app type -> ParseParams form, or "auto"
	Default string            // used for unknown app types; "" or "auto" = adaptive
	Target  float64           // residual-loss target for the adaptive choice; default 1e-3
}

// For returns the scheme for a session of app type app over uplinks q, and why.
func (pol *Policy) For(app string, q []UplinkQuality) (Params, string, error) {
	spec, ok := pol.PerApp[app]
	if !ok {
		spec = pol.Default
	}
	if spec == "" || strings.EqualFold(spec, "auto") {
		t := pol.Target
		if t <= 0 {
			t = 1e-3
		}
		p, why := Choose(q, t)
		return p, "auto: " + why, nil
	}
	p, err := ParseParams(spec)
	if err != nil {
		return Params{}, "", err
	}
	return p, fmt.Sprintf("configured for app type %q: %v", app, p), nil
}
