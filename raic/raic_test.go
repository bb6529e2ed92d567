package raic

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/reedsolomon"
)

var testSpecs = []string{
	"copy", "copy:3", "xor:1", "xor:2", "xor:3", "rs:2+2", "rs:3+2", "rs:4+3", "time:1", "time:2",
	"copy,frag=300", "xor:2,frag=500", "rs:2+1,shard=200", "time:2,shard=300", "copy,shard=100",
}

func mustParams(t testing.TB, s string) Params {
	t.Helper()
	p, err := ParseParams(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func pattern(pid uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(pid, uint64(n)))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// Every scheme round-trips every size 1..1400 with all shards delivered, and
// the packet is released exactly once, with the exact bytes.
func TestRoundTripAllSizes(t *testing.T) {
	for _, spec := range testSpecs {
		t.Run(spec, func(t *testing.T) {
			p := mustParams(t, spec)
			enc, _ := NewEncoder(p)
			dec := NewDecoder(DecoderConfig{})
			for n := 0; n <= 1400; n++ {
				pid := uint64(n + 1)
				pkt := pattern(pid, n)
				sh, err := enc.Encode(pid, pkt)
				if err != nil {
					t.Fatal(n, err)
				}
				got := 0
				descs := map[Desc]bool{}
				for _, s := range sh {
					// The AEAD nonce is (pid, Desc): distinct shards need distinct Descs.
					if descs[s.Desc] {
						t.Fatalf("size %d: Desc %+v used twice", n, s.Desc)
					}
					descs[s.Desc] = true
					if len(s.Data) > p.maxShard() {
						t.Fatalf("size %d: shard of %d bytes > MaxShard %d", n, len(s.Data), p.maxShard())
					}
					for _, r := range dec.Add(s, 0) {
						if r.PID != pid || !bytes.Equal(r.Data, pkt) {
							t.Fatalf("size %d: released pid %d len %d", n, r.PID, len(r.Data))
						}
						got++
					}
				}
				if got != 1 {
					t.Fatalf("size %d: released %d times", n, got)
				}
			}
			if st := dec.Stats(); st.Malformed != 0 || st.Lost != 0 || st.Released != 1401 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// Exhaustively over shard subsets (and two delivery orders): a block-coded
// packet is released exactly when every fragment has K shards, at that very
// shard, and a subset short of that is given up as lost by Expire.
func TestExhaustiveSubsets(t *testing.T) {
	specs := []string{"copy", "xor:1", "xor:2", "xor:3", "xor:5", "rs:2+2", "rs:3+3", "rs:4+2", "rs:2+1", "copy,frag=100", "xor:2,frag=100", "rs:1+2,frag=100"}
	for _, spec := range specs {
		p := mustParams(t, spec)
		enc, _ := NewEncoder(p)
		size := 150
		if p.FragAbove == 0 {
			size = 230
		}
		pkt := pattern(7, size)
		sh, err := enc.Encode(1, pkt)
		if err != nil {
			t.Fatal(err)
		}
		n := len(sh)
		if n > 6 {
			t.Fatalf("%s: %d shards, keep n <= 6", spec, n)
		}
		k := int(sh[0].Desc.K)
		for mask := 0; mask < 1<<n; mask++ {
			for _, rev := range []bool{false, true} {
				dec := NewDecoder(DecoderConfig{MaxAge: time.Second})
				perFrag := map[uint8]int{}
				released := false
				for i := range n {
					si := i
					if rev {
						si = n - 1 - i
					}
					if mask&(1<<si) == 0 {
						continue
					}
					s := sh[si]
					perFrag[s.Desc.Frag]++
					complete := true
					for f := 0; f < n/int(s.Desc.Count); f++ {
						fb := uint8(f)
						if f == n/int(s.Desc.Count)-1 {
							fb |= fragLast
						}
						if perFrag[fb] < k {
							complete = false
						}
					}
					rel := dec.Add(s, 0)
					if complete && !released {
						if len(rel) != 1 || !bytes.Equal(rel[0].Data, pkt) {
							t.Fatalf("%s mask %b: not released at the completing shard", spec, mask)
						}
						released = true
					} else if len(rel) != 0 {
						t.Fatalf("%s mask %b: released early or twice", spec, mask)
					}
				}
				dec.Expire(int64(2 * time.Second))
				st := dec.Stats()
				if released != (st.Lost == 0 && st.Released == 1) || (!released && mask != 0 && st.Lost != 1) {
					t.Fatalf("%s mask %b: released=%v stats %+v", spec, mask, released, st)
				}
			}
		}
	}
}

// RAICT, exhaustively over loss patterns of every shard of a short stream: the
// decoder rebuilds exactly the packets a reference closure says are
// recoverable, whatever was lost.
func TestExhaustiveTime(t *testing.T) {
	for _, tc := range []struct{ depth, pkts int }{{1, 6}, {2, 5}, {3, 4}} {
		p := Params{Scheme: SchemeTime, Depth: tc.depth}
		enc, _ := NewEncoder(p)
		var all []Shard
		var pkts [][]byte
		for i := range tc.pkts {
			pid := uint64(i + 1)
			pkt := pattern(pid, 20+37*i%90)
			pkts = append(pkts, pkt)
			sh, _ := enc.Encode(pid, pkt)
			for _, s := range sh {
				s.Data = append([]byte(nil), s.Data...)
				all = append(all, s)
			}
		}
		n := len(all)
		for mask := 0; mask < 1<<n; mask++ {
			// Reference: fixpoint over "data arrived" and "x = P^(P-j) arrived
			// and one side known".
			known := make([]bool, tc.pkts+1)
			known[0] = true // pid 0: absent, known
			for changed := true; changed; {
				changed = false
				for i, s := range all {
					if mask&(1<<i) == 0 {
						continue
					}
					pp, j := int(s.PID), int(s.Desc.Index)
					q := max(pp-j, 0)
					switch {
					case j == 0 && !known[pp]:
						known[pp], changed = true, true
					case j > 0 && known[q] && !known[pp]:
						known[pp], changed = true, true
					case j > 0 && known[pp] && !known[q]:
						known[q], changed = true, true
					}
				}
			}
			dec := NewDecoder(DecoderConfig{})
			got := make([]bool, tc.pkts+1)
			for i, s := range all {
				if mask&(1<<i) == 0 {
					continue
				}
				for _, r := range dec.Add(s, 0) {
					if got[r.PID] {
						t.Fatalf("d=%d mask %b: pid %d twice", tc.depth, mask, r.PID)
					}
					got[r.PID] = true
					if !bytes.Equal(r.Data, pkts[r.PID-1]) {
						t.Fatalf("d=%d mask %b: pid %d wrong bytes", tc.depth, mask, r.PID)
					}
				}
			}
			for i := 1; i <= tc.pkts; i++ {
				if got[i] != known[i] {
					t.Fatalf("d=%d mask %b: pid %d released=%v recoverable=%v", tc.depth, mask, i, got[i], known[i])
				}
			}
		}
	}
}

// The decoder's Reed-Solomon solving agrees with the library's own.
func TestRSMatchesLibrary(t *testing.T) {
	for _, km := range [][3]int{{2, 2, 40}, {2, 2, 500}, {3, 2, 60}, {3, 2, 900}, {4, 4, 500}, {10, 4, 300}, {10, 4, 1400}} {
		k, m, size := km[0], km[1], km[2]
		lib, err := reedsolomon.New(k, m, reedsolomon.WithCustomMatrix(cauchyMatrix(k, m)))
		if err != nil {
			t.Fatal(err)
		}
		// Small shards take this package's parity path, large ones the
		// library's: both must be the library's code.
		enc, _ := NewEncoder(Params{Scheme: SchemeRS, K: k, M: m})
		pkt := pattern(3, size)
		sh, _ := enc.Encode(1, pkt)
		shards := make([][]byte, k+m)
		for i, s := range sh {
			shards[i] = append([]byte(nil), s.Data...)
		}
		want := make([][]byte, k+m)
		copy(want, shards)
		// Lose the first m shards; the library and the decoder must agree.
		for i := range m {
			shards[i] = nil
		}
		if err := lib.Reconstruct(shards); err != nil {
			t.Fatal(err)
		}
		for i := range shards {
			if !bytes.Equal(shards[i], want[i]) {
				t.Fatalf("%d+%d: library disagrees on shard %d", k, m, i)
			}
		}
		dec := NewDecoder(DecoderConfig{})
		var out []byte
		for _, s := range sh[m:] {
			for _, r := range dec.Add(s, 0) {
				out = r.Data
			}
		}
		if !bytes.Equal(out, pkt) || dec.Stats().Recovered != 1 {
			t.Fatalf("%d+%d: decoder failed, stats %+v", k, m, dec.Stats())
		}
	}
}

func TestDuplicatesAndReplay(t *testing.T) {
	enc, _ := NewEncoder(mustParams(t, "copy"))
	dec := NewDecoder(DecoderConfig{MaxGroups: 16})
	sh, _ := enc.Encode(5, []byte("hello"))
	s := sh[0]
	s.Data = append([]byte(nil), s.Data...)
	if len(dec.Add(s, 0)) != 1 {
		t.Fatal("first copy not released")
	}
	for range 3 {
		if len(dec.Add(s, 0)) != 0 {
			t.Fatal("second copy released")
		}
	}
	// Copies are remembered over a replay window (replay.Size: 4,096 packets), far more than
	// the ring of groups: a replay within it is a duplicate, beyond it late.
	for pid := uint64(6); pid < 40; pid++ {
		sh, _ := enc.Encode(pid, []byte("x"))
		dec.Add(sh[0], 0)
	}
	if len(dec.Add(s, 0)) != 0 {
		t.Fatal("replayed old copy released")
	}
	for pid := uint64(40); pid < 9000; pid++ {
		sh, _ := enc.Encode(pid, []byte("x"))
		dec.Add(sh[0], 0)
	}
	if len(dec.Add(s, 0)) != 0 {
		t.Fatal("replayed very old copy released")
	}
	st := dec.Stats()
	if st.Duplicates != 4 || st.Late != 1 || st.Released != 8995 {
		t.Fatalf("stats %+v", st)
	}
	if dec.groups != nil {
		t.Fatal("a copy-only decoder allocated its ring of groups")
	}
}

func TestEvictionAndExpiry(t *testing.T) {
	enc, _ := NewEncoder(mustParams(t, "xor:2"))
	dec := NewDecoder(DecoderConfig{MaxGroups: 8, MaxAge: time.Second})
	// Give only one shard of each packet: all stay incomplete.
	for pid := uint64(1); pid <= 20; pid++ {
		sh, _ := enc.Encode(pid, pattern(pid, 100))
		dec.Add(sh[0], int64(pid))
	}
	st := dec.Stats()
	if st.Evicted != 12 || dec.InFlight() != 8 {
		t.Fatalf("evicted %d in flight %d", st.Evicted, dec.InFlight())
	}
	dec.Expire(int64(time.Second)) // not yet old enough
	if dec.Stats().Expired != 0 {
		t.Fatal("expired too early")
	}
	dec.Expire(int64(2 * time.Second))
	st = dec.Stats()
	if st.Expired != 8 || st.Lost != 20 || dec.InFlight() != 0 {
		t.Fatalf("stats %+v", st)
	}
	// Buffers went back to the pool.
	if len(dec.free) != dec.nbufs {
		t.Fatalf("leaked buffers: %d free of %d", len(dec.free), dec.nbufs)
	}
}

func TestMalformed(t *testing.T) {
	good := func() Shard {
		return Shard{Scheme: SchemeXOR, PID: 1, Desc: Desc{0, 3, 2, fragLast}, Data: make([]byte, 10)}
	}
	cases := map[string]func(*Shard){
		"scheme0":      func(s *Shard) { s.Scheme = 0 },
		"scheme9":      func(s *Shard) { s.Scheme = 9 },
		"pid0":         func(s *Shard) { s.PID = 0 },
		"index>=count": func(s *Shard) { s.Desc.Index = 3 },
		"xor count":    func(s *Shard) { s.Desc.Count = 4 },
		"k0":           func(s *Shard) { s.Desc.K = 0; s.Desc.Count = 1 },
		"empty":        func(s *Shard) { s.Data = nil },
		"huge":         func(s *Shard) { s.Data = make([]byte, 2000) },
		"copy idx":     func(s *Shard) { s.Scheme = SchemeCopy; s.Desc = Desc{1, 2, 1, fragLast} },
		"rs k>32":      func(s *Shard) { s.Scheme = SchemeRS; s.Desc = Desc{0, 40, 33, fragLast} },
		"time frag":    func(s *Shard) { s.Scheme = SchemeTime; s.Desc = Desc{1, 3, 1, 3} },
		"time short":   func(s *Shard) { s.Scheme = SchemeTime; s.Desc = Desc{1, 3, 1, fragLast}; s.Data = s.Data[:1] },
	}
	for name, mut := range cases {
		dec := NewDecoder(DecoderConfig{})
		s := good()
		mut(&s)
		if r := dec.Add(s, 0); len(r) != 0 || dec.Stats().Malformed != 1 {
			t.Errorf("%s: not counted malformed: %+v", name, dec.Stats())
		}
	}
	// Stateful inconsistencies: different shard sizes, K, or scheme for one pid.
	dec := NewDecoder(DecoderConfig{})
	dec.Add(good(), 0)
	s := good()
	s.Desc.Index, s.Data = 1, make([]byte, 11)
	dec.Add(s, 0)
	s = good()
	s.Scheme, s.Desc = SchemeCopy, Desc{0, 1, 1, fragLast}
	dec.Add(s, 0)
	if dec.Stats().Malformed != 2 {
		t.Fatalf("stats %+v", dec.Stats())
	}
	// A bad padding byte gives the group up instead of releasing garbage.
	dec = NewDecoder(DecoderConfig{})
	bad := good()
	bad.Data = bytes.Repeat([]byte{0xff}, 10)
	dec.Add(bad, 0)
	bad.Desc.Index = 1
	if r := dec.Add(bad, 0); len(r) != 0 || dec.Stats().Malformed != 1 || dec.Stats().Lost != 1 {
		t.Fatalf("bad padding: %v %+v", r, dec.Stats())
	}
}

func TestParseString(t *testing.T) {
	want := map[string]string{
		"copy": "RAIC-1 x2", "copy:3": "RAIC-1 x3", "xor:2": "RAIC-5 2+1", "rs:2+2": "RAIC-6 2+2",
		"time:2": "RAICT d=2", "copy,frag=600": "RAIC-1 x2 frag=600", "rs:4+3,shard=1000": "RAIC-6 4+3 shard=1000",
	}
	for in, w := range want {
		p, err := ParseParams(in)
		if err != nil || p.String() != w {
			t.Errorf("%q: %v %q", in, err, p.String())
		}
	}
	for _, bad := range []string{"", "foo", "xor:0", "rs:2", "rs:30+40", "time:0", "copy,frag=1", "copy,shard=5000", "copy,zip=1", "xor:x"} {
		if _, err := ParseParams(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestEncodeLimits(t *testing.T) {
	enc, _ := NewEncoder(mustParams(t, "copy,frag=16"))
	if _, err := enc.Encode(0, []byte{1}); err != ErrPID {
		t.Fatal("pid 0 accepted")
	}
	if _, err := enc.Encode(1, make([]byte, 16*128+1)); err != ErrTooLarge {
		t.Fatal("129 fragments accepted")
	}
	sh, err := enc.Encode(1, make([]byte, 16*128))
	if err != nil || len(sh) != 128 || FragCount(enc.Params(), 16*128) != 128 {
		t.Fatal("128 fragments refused", err)
	}
	big, _ := NewEncoder(mustParams(t, "rs:2+2"))
	pkt := pattern(1, MaxPacket)
	sh, err = big.Encode(1, pkt)
	if err != nil {
		t.Fatal(err)
	}
	dec := NewDecoder(DecoderConfig{})
	var got []byte
	for _, s := range sh[:len(sh)] {
		if s.Desc.Index == 0 { // lose every first data shard: parity rebuilds
			continue
		}
		for _, r := range dec.Add(s, 0) {
			got = r.Data
		}
	}
	if !bytes.Equal(got, pkt) {
		t.Fatal("64 KiB packet not rebuilt")
	}
}

func TestPlace(t *testing.T) {
	up := func(w ...float64) []UplinkState {
		var s []UplinkState
		for _, x := range w {
			s = append(s, UplinkState{Up: x >= 0, Weight: math.Abs(x)})
		}
		return s
	}
	count := func(out []int, n int) []int {
		c := make([]int, n)
		for _, u := range out {
			c[u]++
		}
		return c
	}
	if got := Place(4, up(1, 1), nil); fmt.Sprint(got) != "[0 1 0 1]" {
		t.Errorf("even: %v", got)
	}
	if got := count(Place(6, up(1, 0.25), nil), 2); got[0] != 5 || got[1] != 1 {
		t.Errorf("weighted: %v", got)
	}
	if got := count(Place(3, up(1, -1, 1), nil), 3); got[1] != 0 || got[0]+got[2] != 3 {
		t.Errorf("dead uplink used: %v", got)
	}
	if got := count(Place(4, up(-1, -1), nil), 2); got[0] != 2 || got[1] != 2 {
		t.Errorf("all down: %v", got)
	}
	if got := Place(1, up(0.2, 1), nil); got[0] != 1 {
		t.Errorf("single shard not on healthiest: %v", got)
	}
	// Every live uplink gets a shard before any gets two, even when weak.
	if got := count(Place(3, up(1, 0.01, 1), nil), 3); got[1] != 1 {
		t.Errorf("weak uplink skipped: %v", got)
	}
	out := make([]int, 0, 8)
	ups := up(1, 0.5, 1)
	if a := testing.AllocsPerRun(100, func() { out = Place(8, ups, out) }); a != 0 {
		t.Errorf("Place allocates %v", a)
	}
}

func TestTheory(t *testing.T) {
	near := func(a, b float64) bool { return math.Abs(a-b) <= 1e-12+1e-9*math.Abs(b) }
	if r := ResidualLoss(mustParams(t, "copy"), []float64{0.1, 0.2}); !near(r, 0.02) {
		t.Errorf("copy x2: %v", r)
	}
	p := 0.05
	if r := ResidualLoss(mustParams(t, "xor:2"), []float64{p, p, p}); !near(r, 3*p*p-2*p*p*p) {
		t.Errorf("xor 2+1: %v", r)
	}
	if r := ResidualLoss(mustParams(t, "copy:1"), []float64{0.3}); !near(r, 0.3) {
		t.Errorf("single: %v", r)
	}
	for spec, o := range map[string]float64{"copy": 2, "copy:3": 3, "xor:2": 1.5, "rs:4+2": 1.5, "time:2": 3} {
		if got := Overhead(mustParams(t, spec)); got != o {
			t.Errorf("overhead %s = %v", spec, got)
		}
	}
}

// Measured residual loss through the real encoder, placement and decoder,
// printed beside the theory; they must agree within sampling error.
func TestTheoryVsMeasured(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 20000
	for _, spec := range []string{"copy", "copy:3", "xor:2", "rs:2+2", "rs:3+2", "time:1", "time:2"} {
		loss := []float64{0.05, 0.1, 0.02}
		if spec == "time:1" {
			loss = []float64{0.15, 0.2} // enough losses to see chained rebuilds
		}
		p := mustParams(t, spec)
		enc, _ := NewEncoder(p)
		dec := NewDecoder(DecoderConfig{})
		var st [3]UplinkState // at most three uplinks here
		ups := uplinkStates(loss, st[:0])
		nsh, _ := shardsPerFragment(p)
		pl := Place(nsh, ups, nil)
		for pid := uint64(1); pid <= n; pid++ {
			sh, _ := enc.Encode(pid, pattern(pid%64, 100))
			if p.Scheme == SchemeCopy {
				for _, u := range pl {
					if rng.Float64() >= loss[u] {
						dec.Add(sh[0], 0)
					}
				}
				continue
			}
			for i, s := range sh {
				if rng.Float64() >= loss[pl[i]] {
					dec.Add(s, 0)
				}
			}
		}
		measured := 1 - float64(dec.Stats().Released)/n
		theory := ResidualLoss(p, loss)
		t.Logf("%-12v overhead %.2f  theory %.5f  measured %.5f", p, Overhead(p), theory, measured)
		sigma := math.Sqrt(theory*(1-theory)/n) + 1e-4
		if math.Abs(measured-theory) > 4*sigma {
			t.Errorf("%v: measured %v vs theory %v", p, measured, theory)
		}
	}
}

func TestChoose(t *testing.T) {
	ms := time.Millisecond
	// Alike uplinks: parity is cheaper than copies.
	p, why := Choose([]UplinkQuality{{0.01, 20 * ms, true}, {0.01, 21 * ms, true}, {0.01, 20 * ms, true}}, 1e-3)
	if p.Scheme == SchemeCopy || Overhead(p) >= 2 || !strings.Contains(why, "residual") {
		t.Errorf("alike: %v %s", p, why)
	}
	// One uplink much worse: copies.
	p, why = Choose([]UplinkQuality{{0.01, 20 * ms, true}, {0.3, 20 * ms, true}}, 4e-3)
	if p.Scheme != SchemeCopy || p.M != 1 {
		t.Errorf("one bad: %v %s", p, why)
	}
	// Clean links: the cheapest scheme that survives one uplink's outage.
	p, _ = Choose([]UplinkQuality{{0, 20 * ms, true}, {0, 30 * ms, true}}, 1e-3)
	if p.Scheme != SchemeCopy || p.M != 1 {
		t.Errorf("clean pair: %v", p)
	}
	p, _ = Choose([]UplinkQuality{{0, 20 * ms, true}, {0, 21 * ms, true}, {0, 20 * ms, true}}, 1e-3)
	if Overhead(p) != 1.5 || p.K != 2 {
		t.Errorf("clean triple: %v", p)
	}
	// A code that must wait for a slow uplink's shard loses to copies.
	p, why = Choose([]UplinkQuality{{0.01, 20 * ms, true}, {0.01, 80 * ms, true}, {0.01, 80 * ms, true}}, 1e-3)
	if p.Scheme != SchemeCopy || p.M != 1 {
		t.Errorf("slow third uplink: %v %s", p, why)
	}
	// One live uplink: single copy, nothing to spread over.
	p, _ = Choose([]UplinkQuality{{0.001, 20 * ms, true}, {0.5, 20 * ms, false}}, 1e-2)
	if Overhead(p) != 1 {
		t.Errorf("single live: %v", p)
	}
	// Unreachable target: the lowest residual, and the reason says so.
	p, why = Choose([]UplinkQuality{{0.5, 20 * ms, true}, {0.5, 20 * ms, true}}, 1e-9)
	if !strings.Contains(why, "no scheme meets") {
		t.Errorf("unreachable: %v %s", p, why)
	}
	// Every pick meets the target when one is reported met.
	for _, l := range []float64{0.001, 0.01, 0.05} {
		q := []UplinkQuality{{l, 20 * ms, true}, {l, 25 * ms, true}}
		p, why := Choose(q, 1e-3)
		if !strings.Contains(why, "no scheme") && ResidualLoss(p, []float64{l, l}) > 1e-3 {
			t.Errorf("loss %v: %v misses target", l, p)
		}
	}
	pol := Policy{PerApp: map[string]string{"voip": "copy:3", "fps": "auto"}, Target: 1e-3}
	if p, _, err := pol.For("voip", nil); err != nil || p.M != 2 {
		t.Errorf("policy voip: %v %v", p, err)
	}
	if _, why, _ := pol.For("fps", []UplinkQuality{{0.01, ms, true}}); !strings.HasPrefix(why, "auto:") {
		t.Errorf("policy auto: %s", why)
	}
}

// Steady state allocates nothing: encode plus decode, with and without loss.
func TestZeroAllocs(t *testing.T) {
	for _, spec := range []string{"copy", "xor:2", "rs:2+2", "rs:4+2", "time:2", "copy,frag=100", "xor:3,frag=300"} {
		for _, drop := range []bool{false, true} {
			p := mustParams(t, spec)
			enc, _ := NewEncoder(p)
			dec := NewDecoder(DecoderConfig{})
			pkt := pattern(1, 1000)
			pid := uint64(0)
			released := 0
			step := func() {
				pid++
				sh, err := enc.Encode(pid, pkt)
				if err != nil {
					t.Fatal(err)
				}
				for i, s := range sh {
					if drop && i == 0 && pid%2 == 0 {
						continue
					}
					released += len(dec.Add(s, 0))
				}
			}
			for range 3000 {
				step()
			}
			if a := testing.AllocsPerRun(500, step); a != 0 {
				t.Errorf("%s drop=%v: %v allocs per packet", spec, drop, a)
			}
			if released != int(pid) && !(p.Scheme == SchemeCopy && drop) {
				t.Errorf("%s drop=%v: released %d of %d", spec, drop, released, pid)
			}
		}
	}
}

// RAICT: a burst of d consecutive packets lost entirely (every shard) is
// rebuilt as the following packets arrive, each at the first shard that allows.
func TestTimeBurst(t *testing.T) {
	for d := 1; d <= 4; d++ {
		enc, _ := NewEncoder(Params{Scheme: SchemeTime, Depth: d})
		dec := NewDecoder(DecoderConfig{})
		released := map[uint64]bool{}
		for pid := uint64(1); pid <= 40; pid++ {
			pkt := pattern(pid, int(pid*13%300))
			sh, _ := enc.Encode(pid, pkt)
			if pid >= 10 && pid < 10+uint64(d) {
				continue // the burst
			}
			for _, s := range sh {
				for _, r := range dec.Add(s, 0) {
					if !bytes.Equal(r.Data, pattern(r.PID, int(r.PID*13%300))) {
						t.Fatalf("d=%d: pid %d wrong", d, r.PID)
					}
					released[r.PID] = true
				}
			}
		}
		if len(released) != 40 || dec.Stats().Recovered != uint64(d) {
			t.Fatalf("d=%d: released %d, stats %+v", d, len(released), dec.Stats())
		}
	}
	// A burst longer than d is not rebuilt, and is counted lost on expiry.
	enc, _ := NewEncoder(Params{Scheme: SchemeTime, Depth: 1})
	dec := NewDecoder(DecoderConfig{MaxAge: time.Second})
	for pid := uint64(1); pid <= 10; pid++ {
		sh, _ := enc.Encode(pid, pattern(pid, 50))
		for i, s := range sh {
			if (pid == 4 || pid == 5) && i == 0 {
				continue // data of 4 and 5 lost; their XOR shards arrive
			}
			dec.Add(s, 0)
		}
	}
	if dec.Stats().Released != 10 {
		t.Fatalf("data loss of 2 with XOR shards present: %+v", dec.Stats())
	}
}

func TestBufferBudget(t *testing.T) {
	enc, _ := NewEncoder(mustParams(t, "rs:4+2"))
	dec := NewDecoder(DecoderConfig{MaxGroups: 64, MaxBuffers: 10})
	for pid := uint64(1); pid <= 20; pid++ {
		sh, _ := enc.Encode(pid, pattern(pid, 400))
		dec.Add(sh[0], 0) // one shard each: groups stay incomplete
	}
	st := dec.Stats()
	if st.NoBuffer != 10 || dec.nbufs != 10 {
		t.Fatalf("budget: %+v bufs %d", st, dec.nbufs)
	}
	dec.Expire(int64(3 * time.Second))
	sh, _ := enc.Encode(21, pattern(21, 400))
	for _, s := range sh {
		dec.Add(s, int64(3*time.Second))
	}
	if dec.Stats().Released != 1 {
		t.Fatal("buffers not reusable after expiry")
	}
}

// The first RS parity row is the XOR of the data: RS k+1 sends the same
// parity as RAIC-5.
func TestRSFirstParityIsXOR(t *testing.T) {
	for k := 1; k <= MaxK; k++ {
		for c := range k {
			if cauchy(k, 0, c) != 1 {
				t.Fatalf("k=%d: first parity row coefficient %d is %d", k, c, cauchy(k, 0, c))
			}
		}
	}
	rs, _ := NewEncoder(Params{Scheme: SchemeRS, K: 3, M: 1})
	x, _ := NewEncoder(Params{Scheme: SchemeXOR, K: 3, M: 1})
	pkt := pattern(4, 700)
	a, _ := rs.Encode(1, pkt)
	b, _ := x.Encode(1, pkt)
	if !bytes.Equal(a[3].Data, b[3].Data) {
		t.Fatal("RS 3+1 parity differs from XOR parity")
	}
}

// Every choice of k rows of [I; C] is invertible for the shapes the exhaustive
// test cannot reach (k+m up to 12).
func TestRSAnyKRowsInvertible(t *testing.T) {
	for k := 1; k <= 8; k++ {
		for m := 1; k+m <= 12; m++ {
			n := k + m
			for mask := 0; mask < 1<<n; mask++ {
				if bitsSet(mask) != k {
					continue
				}
				var a, inv [MaxK][MaxK]byte
				r := 0
				for i := range n {
					if mask&(1<<i) == 0 {
						continue
					}
					for c := range k {
						if i < k {
							if c == i {
								a[r][c] = 1
							}
						} else {
							a[r][c] = cauchy(k, i-k, c)
						}
					}
					r++
				}
				if !invert(&a, &inv, k) {
					t.Fatalf("%d+%d rows %b singular", k, m, mask)
				}
			}
		}
	}
}

func bitsSet(x int) int {
	n := 0
	for ; x != 0; x &= x - 1 {
		n++
	}
	return n
}

// The ring of packets in flight grows with what is in flight: an in-order
// coded stream keeps the first ring, and 200 packets decoding at once (each
// missing a shard until the end) all complete, as in a ring of MaxGroups.
func TestDecoderRingGrowsOnUse(t *testing.T) {
	p := Params{Scheme: SchemeRS, K: 2, M: 1}
	enc, err := NewEncoder(p)
	if err != nil {
		t.Fatal(err)
	}
	pkt := make([]byte, 100)
	dec := NewDecoder(DecoderConfig{})
	for pid := uint64(1); pid <= 5000; pid++ {
		shards, err := enc.Encode(pid, pkt)
		if err != nil {
			t.Fatal(err)
		}
		for _, sh := range shards[:2] {
			dec.Add(sh, 1)
		}
	}
	if st := dec.Stats(); st.Released != 5000 || st.Grown != 0 {
		t.Fatalf("in order: %+v, want 5000 released and the first ring", st)
	}

	dec = NewDecoder(DecoderConfig{})
	var held []Shard
	for pid := uint64(1); pid <= 200; pid++ {
		shards, _ := enc.Encode(pid, pkt)
		dec.Add(shards[0], 1)
		held = append(held, Shard{Scheme: shards[1].Scheme, PID: pid, Desc: shards[1].Desc, Data: append([]byte(nil), shards[1].Data...)})
	}
	for _, sh := range held {
		dec.Add(sh, 1)
	}
	if st := dec.Stats(); st.Released != 200 || st.Evicted != 0 || st.Grown != 2 {
		t.Fatalf("200 in flight: %+v, want 200 released, none evicted, the ring grown twice (64 to 256)", st)
	}
}
