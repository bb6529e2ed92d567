package wire

import "testing"

func TestQualityRoundTrip(t *testing.T) {
	q := Quality{IntervalMs: 1000, Received: 58, Lost: 6, Late: 1, LagMeanUs: 1500, LagMaxUs: 9000, Packets: 60}
	var b [QualityLen]byte
	var got Quality
	if err := ParseQuality(q.Put(b[:]), &got); err != nil || got != q {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	if r := got.LossRate(); r < 0.093 || r > 0.094 {
		t.Fatalf("loss rate %v, want 6/64", r)
	}
	for _, bad := range [][]byte{nil, b[:QualityLen-1], append([]byte{2}, b[1:]...), make([]byte, QualityMaxLen+1)} {
		if ParseQuality(bad, &got) == nil {
			t.Fatalf("accepted %x", bad)
		}
	}
	flags := b
	flags[1] = 1
	if ParseQuality(flags[:], &got) == nil {
		t.Fatal("accepted unknown flags")
	}
}

// FuzzParseQuality: any body either parses or is refused, never a panic, and
// what parses writes back to the same first QualityLen bytes.
func FuzzParseQuality(f *testing.F) {
	q := Quality{IntervalMs: 1000, Received: 58, Lost: 6, Late: 1, LagMeanUs: 1500, LagMaxUs: 9000, Packets: 60}
	var b [QualityLen]byte
	f.Add(append([]byte(nil), q.Put(b[:])...))
	f.Add([]byte{1, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		var got Quality
		if ParseQuality(in, &got) != nil {
			return
		}
		var out [QualityLen]byte
		if string(got.Put(out[:])) != string(in[:QualityLen]) {
			t.Fatalf("%x parsed to %+v, writes %x", in, got, out)
		}
	})
}
