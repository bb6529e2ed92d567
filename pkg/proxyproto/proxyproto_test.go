package proxyproto

import (
	"bytes"
	"net/netip"
	"testing"
)

// Every header written reads back with the same addresses and leaves the
// payload untouched, for both kinds and both families.
func TestRoundTrip(t *testing.T) {
	cases := []struct{ src, dst string }{
		{"198.18.0.2:40000", "198.18.41.2:27015"},
		{"[2001:db8::1]:5000", "[2001:db8::2]:27015"},
		{"198.18.0.2:40000", "[2001:db8::2]:27015"}, // mixed: written as IPv6
	}
	payload := []byte("game packet")
	for _, k := range []Kind{ProxyV2, SPP} {
		for _, c := range cases {
			src, dst := netip.MustParseAddrPort(c.src), netip.MustParseAddrPort(c.dst)
			b := make([]byte, MaxLen+len(payload))
			n := k.Put(b, src, dst)
			b = append(b[:n], payload...)
			gs, gd, p, err := k.Parse(b)
			if err != nil {
				t.Fatalf("%v %v: %v", k, c, err)
			}
			if gs.Addr().Unmap() != src.Addr().Unmap() || gs.Port() != src.Port() ||
				gd.Addr().Unmap() != dst.Addr().Unmap() || gd.Port() != dst.Port() {
				t.Errorf("%v: got %v -> %v, want %v -> %v", k, gs, gd, src, dst)
			}
			if !bytes.Equal(p, payload) {
				t.Errorf("%v: payload %q", k, p)
			}
		}
	}
}

// The bytes on the wire are the ones the specs give (checked against the
// header layouts byte by byte, so another implementation reads ours).
func TestWireBytes(t *testing.T) {
	src, dst := netip.MustParseAddrPort("198.18.0.2:1234"), netip.MustParseAddrPort("198.18.41.2:27015")
	var b [MaxLen]byte
	n := PutV2(b[:], src, dst)
	want := []byte{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
		0x21, 0x12, 0, 12, 198, 18, 0, 2, 198, 18, 41, 2, 0x04, 0xD2, 0x69, 0x87}
	if !bytes.Equal(b[:n], want) {
		t.Errorf("v2 = % x\nwant % x", b[:n], want)
	}
	n = PutSPP(b[:], src, dst)
	if n != 38 || b[0] != 0x56 || b[1] != 0xEC || b[12] != 0xff || b[13] != 0xff || b[14] != 198 || b[35] != 0xD2 {
		t.Errorf("spp = % x", b[:n])
	}
}

// Truncated or foreign input is refused, never a panic.
func TestRefusals(t *testing.T) {
	var b [MaxLen]byte
	n := PutV2(b[:], netip.MustParseAddrPort("198.18.0.2:1"), netip.MustParseAddrPort("198.18.0.3:2"))
	for i := 0; i < n; i++ {
		if _, _, _, err := ParseV2(b[:i]); err == nil {
			t.Fatalf("v2 cut at %d accepted", i)
		}
	}
	if _, _, _, err := ParseSPP(make([]byte, 38)); err != ErrHeader {
		t.Errorf("spp without magic: %v", err)
	}
	if _, _, _, err := ParseV2([]byte("GET / HTTP/1.1\r\n\r\n")); err != ErrHeader {
		t.Errorf("not a header: %v", err)
	}
}

func TestPutDoesNotAllocate(t *testing.T) {
	src, dst := netip.MustParseAddrPort("198.18.0.2:1"), netip.MustParseAddrPort("[2001:db8::2]:2")
	var b [MaxLen]byte
	if a := testing.AllocsPerRun(100, func() { ProxyV2.Put(b[:], src, dst); SPP.Put(b[:], src, dst) }); a != 0 {
		t.Errorf("%v allocations per Put", a)
	}
}

func FuzzParse(f *testing.F) {
	var b [MaxLen]byte
	n := PutV2(b[:], netip.MustParseAddrPort("198.18.0.2:1"), netip.MustParseAddrPort("198.18.0.3:2"))
	f.Add(append([]byte(nil), b[:n]...))
	n = PutSPP(b[:], netip.MustParseAddrPort("198.18.0.2:1"), netip.MustParseAddrPort("198.18.0.3:2"))
	f.Add(append([]byte(nil), b[:n]...))
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, k := range []Kind{ProxyV2, SPP} {
			src, dst, p, err := k.Parse(in)
			if err != nil {
				continue
			}
			if len(p) > len(in) {
				t.Fatal("payload longer than input")
			}
			// What parsed with addresses writes back to the same addresses.
			if src.IsValid() && dst.IsValid() {
				var out [MaxLen]byte
				m := k.Put(out[:], src, dst)
				s2, d2, _, err := k.Parse(out[:m])
				if err != nil || s2.Port() != src.Port() || d2.Port() != dst.Port() {
					t.Fatalf("re-encode: %v", err)
				}
			}
		}
	})
}
