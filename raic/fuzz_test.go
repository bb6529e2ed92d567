package raic

import (
	"bytes"
	"testing"
)

// FuzzDecoder feeds hostile shards: any scheme byte, packet ID, descriptor and
// data. The decoder must not panic, must never release a packet ID twice, and
// must keep its buffer accounting whole.
func FuzzDecoder(f *testing.F) {
	enc, _ := NewEncoder(Params{Scheme: SchemeRS, K: 2, M: 2, FragAbove: 40})
	sh, _ := enc.Encode(1, bytes.Repeat([]byte{7}, 100))
	var seed []byte
	for _, s := range sh {
		seed = append(seed, byte(s.Scheme), 0, s.Desc.Index, s.Desc.Count, s.Desc.K, s.Desc.Frag, byte(len(s.Data)))
		seed = append(seed, s.Data...)
	}
	f.Add(seed)
	f.Add([]byte{7, 1, 1, 3, 1, 0x80, 4, 0, 9, 1, 2, 7, 0, 0, 3, 1, 1, 0x80, 3, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		dec := NewDecoder(DecoderConfig{MaxGroups: 16, MaxBuffers: 64})
		seen := map[uint64]bool{}
		pid := uint64(1)
		now := int64(0)
		for len(in) >= 7 {
			s := Shard{Scheme: Scheme(in[0]), Desc: Desc{in[2], in[3], in[4], in[5]}}
			if in[1] == 0xff {
				dec.Expire(now)
			}
			pid += uint64(in[1] % 8)
			if in[1]&0x80 != 0 {
				pid -= uint64(in[1] % 32) // go back: late shards
				if pid == 0 || pid > 1<<60 {
					pid = 1
				}
			}
			s.PID = pid
			n := min(int(in[6]), len(in)-7)
			s.Data = in[7 : 7+n]
			in = in[7+n:]
			now += 1e6
			for _, r := range dec.Add(s, now) {
				if seen[r.PID] {
					t.Fatalf("pid %d released twice", r.PID)
				}
				seen[r.PID] = true
				if len(r.Data) > MaxPacket+maxFrags*MaxK {
					t.Fatalf("released %d bytes", len(r.Data))
				}
			}
		}
		dec.Expire(now + 1e12)
		if dec.InFlight() != 0 {
			t.Fatal("groups in flight after expiry")
		}
		if dec.nbufs > 64 {
			t.Fatalf("buffer budget exceeded: %d", dec.nbufs)
		}
	})
}

// FuzzRoundTrip encodes a packet with fuzzed parameters, loses a fuzzed subset
// of shards, and checks that whatever is released is the exact packet.
func FuzzRoundTrip(f *testing.F) {
	f.Add(uint8(0), uint16(200), uint64(0), uint16(0))
	f.Add(uint8(3), uint16(1400), uint64(0b1010), uint16(300))
	f.Fuzz(func(t *testing.T, which uint8, size uint16, lose uint64, fragAbove uint16) {
		specs := []Params{
			{Scheme: SchemeCopy, K: 1, M: 1}, {Scheme: SchemeXOR, K: 2, M: 1}, {Scheme: SchemeXOR, K: 5, M: 1},
			{Scheme: SchemeRS, K: 2, M: 2}, {Scheme: SchemeRS, K: 3, M: 3}, {Scheme: SchemeTime, Depth: 2},
		}
		p := specs[int(which)%len(specs)]
		if fragAbove >= minShard {
			p.FragAbove = int(fragAbove)
		}
		enc, err := NewEncoder(p)
		if err != nil {
			t.Fatal(err)
		}
		dec := NewDecoder(DecoderConfig{})
		prev := pattern(9, int(size)/2)
		sh0, _ := enc.Encode(1, prev)
		for _, s := range sh0 {
			dec.Add(s, 0)
		}
		pkt := pattern(uint64(size), int(size)%4000)
		sh, err := enc.Encode(2, pkt)
		if err != nil {
			return // too many fragments for a small forced size
		}
		got := 0
		for i, s := range sh {
			if i < 64 && lose&(1<<i) != 0 {
				continue
			}
			for _, r := range dec.Add(s, 0) {
				if r.PID != 2 || !bytes.Equal(r.Data, pkt) {
					t.Fatalf("bad release pid %d len %d", r.PID, len(r.Data))
				}
				got++
			}
		}
		if got > 1 {
			t.Fatal("released twice")
		}
		if lose == 0 && got != 1 {
			t.Fatal("lossless packet not released")
		}
	})
}
