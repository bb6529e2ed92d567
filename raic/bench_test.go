package raic

import (
	"fmt"
	"testing"
)

var benchSpecs = []string{"copy", "xor:2", "xor:3", "rs:2+2", "rs:4+2", "time:2"}

// BenchmarkCodec measures encode plus decode of one packet per op in steady
// state. "all" delivers every shard (the decoder releases at the k-th and
// counts the rest as duplicates; RAIC-1 gets its two copies); "loss" drops the
// first data shard so parity or the XOR chain rebuilds it.
func BenchmarkCodec(b *testing.B) {
	for _, spec := range benchSpecs {
		for _, size := range []int{64, 200, 1200} {
			for _, mode := range []string{"all", "loss"} {
				if (spec == "copy" || (spec == "time:2" && size > 1198)) && mode == "loss" {
					// A copy cannot be rebuilt (its second copy is "all"), and
					// RAICT sends a packet too large for one shard unprotected.
					continue
				}
				b.Run(fmt.Sprintf("%s/%d/%s", spec, size, mode), func(b *testing.B) {
					p := mustParams(b, spec)
					enc, _ := NewEncoder(p)
					dec := NewDecoder(DecoderConfig{})
					pkt := pattern(1, size)
					b.SetBytes(int64(size))
					b.ReportAllocs()
					pid := uint64(0)
					for b.Loop() {
						pid++
						sh, _ := enc.Encode(pid, pkt)
						for i, s := range sh {
							if mode == "loss" && i == 0 {
								continue
							}
							dec.Add(s, 0)
							if p.Scheme == SchemeCopy {
								dec.Add(s, 0)
							}
						}
					}
					if st := dec.Stats(); st.Released != pid {
						b.Fatalf("released %d of %d", st.Released, pid)
					}
				})
			}
		}
	}
}

func BenchmarkPlace(b *testing.B) {
	ups := []UplinkState{{true, 1}, {true, 0.5}, {true, 0.8}}
	out := make([]int, 0, 8)
	b.ReportAllocs()
	for b.Loop() {
		out = Place(6, ups, out)
	}
}
