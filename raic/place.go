package raic

// UplinkState is what placement needs to know of an uplink.
type UplinkState struct {
	Up     bool
	Weight float64 // health, e.g. Health(loss)
}

// Health turns a measured loss rate into a placement weight: a clean uplink
// weighs 1, one losing 10% weighs a third.
func Health(loss float64) float64 { return 1 / (1 + 20*max(loss, 0)) }

const maxUplinks = 64

// Place decides which uplink carries each of n shards: out[i] is the uplink
// index of shard i. Every live uplink gets a shard before any gets a second (the
// point of several uplinks is that their losses are independent); the rest go by
// weight. The order interleaves uplinks (smooth weighted round robin), so
// consecutive shards, and the shards of each fragment, land on different uplinks.
// Down uplinks get nothing unless all are down; then all are used alike. The
// result is deterministic and Place does not allocate when out has room.
// Uplinks beyond the 64th are ignored.
func Place(nShards int, uplinks []UplinkState, out []int) []int {
	out = out[:0]
	nu := min(len(uplinks), maxUplinks)
	if nShards <= 0 || nu == 0 {
		return out
	}
	var w [maxUplinks]float64
	var cnt [maxUplinks]int
	live := 0
	for i := range nu {
		if uplinks[i].Up {
			live++
		}
	}
	for i := range nu {
		if live == 0 || uplinks[i].Up {
			w[i] = uplinks[i].Weight
			if !(w[i] > 1e-6) { // also catches NaN
				w[i] = 1e-6
			}
		}
	}
	if live == 0 {
		live = nu
	}
	// Counts: proportional to weight (largest remainder), then every live
	// uplink gets at least one, taken from the uplink with the most.
	var tot float64
	for i := range nu {
		tot += w[i]
	}
	if nShards < live {
		for range nShards {
			best := -1
			for i := range nu {
				if w[i] > 0 && cnt[i] == 0 && (best < 0 || w[i] > w[best]) {
					best = i
				}
			}
			cnt[best] = 1
		}
	} else {
		var frac [maxUplinks]float64
		assigned := 0
		for i := range nu {
			if w[i] > 0 {
				q := float64(nShards) * w[i] / tot
				cnt[i] = int(q)
				frac[i] = q - float64(cnt[i])
				assigned += cnt[i]
			}
		}
		for ; assigned < nShards; assigned++ {
			best := -1
			for i := range nu {
				if w[i] > 0 && (best < 0 || frac[i] > frac[best]) {
					best = i
				}
			}
			cnt[best]++
			frac[best] = -1
		}
		for i := range nu {
			if w[i] > 0 && cnt[i] == 0 {
				j := 0
				for x := range nu {
					if cnt[x] > cnt[j] {
						j = x
					}
				}
				cnt[j]--
				cnt[i] = 1
			}
		}
	}
	var cur [maxUplinks]float64
	// Order: smooth weighted round robin over the counts hands each uplink
	// exactly cnt[i] shards, spread out.
	var cw [maxUplinks]float64
	for i := range nu {
		cw[i] = float64(cnt[i])
	}
	for range nShards {
		out = append(out, swrrPick(cur[:nu], cw[:nu], float64(nShards)))
	}
	return out
}

func swrrPick(cur, w []float64, tot float64) int {
	best := -1
	for i := range cur {
		if w[i] <= 0 {
			continue
		}
		cur[i] += w[i]
		if best < 0 || cur[i] > cur[best] {
			best = i
		}
	}
	cur[best] -= tot
	return best
}
