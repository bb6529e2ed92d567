package wire

import (
	"net/netip"
	"testing"
)

// FuzzParseOpen feeds arbitrary bytes to Parse and Open: they must never panic,
// and nothing but a datagram sealed with the key may open.
func FuzzParseOpen(f *testing.F) {
	cs, _, _, sr := testKeys(f)
	h := Header{Type: TypeData, Scheme: 1, Session: 42, Packet: 1}
	hello := &Hello{Target: netip.MustParseAddrPort("198.18.9.2:27015")}
	hello.SetClientID("alice")
	a, _ := Seal(cs, make([]byte, MaxDatagram), &h, hello, []byte("seed payload"))
	f.Add(append([]byte(nil), a...))
	b, _ := Seal(cs, make([]byte, MaxDatagram), &h, nil, nil)
	f.Add(append([]byte(nil), b...))
	// A hello with a connect token (FlagToken).
	tokHello := *hello
	tokHello.Token = []byte("a connect token rides here")
	c, _ := Seal(cs, make([]byte, MaxDatagram), &h, &tokHello, []byte("seed payload"))
	c = append([]byte(nil), c...)
	f.Add(c)
	// A hello that names a restart epoch (FlagEpoch).
	he := *hello
	he.Epoch = 0x0123456789abcdef
	d, _ := Seal(cs, make([]byte, MaxDatagram), &h, &he, []byte("epoch"))
	d = append([]byte(nil), d...)
	f.Add(d)
	// Both trailers, epoch then token (FlagEpoch|FlagToken).
	both := tokHello
	both.Epoch = 0xfedcba9876543210
	e, _ := Seal(cs, make([]byte, MaxDatagram), &h, &both, []byte("epoch and token"))
	e = append([]byte(nil), e...)
	f.Add(e)
	// Every trailer, epoch, flow then token (FlagEpoch|FlagFlow|FlagToken),
	// and a flow alone.
	all := both
	all.Flow = [FlowLen]byte{0xfe, 1, 2, 3}
	g, _ := Seal(cs, make([]byte, MaxDatagram), &h, &all, []byte("all trailers"))
	g = append([]byte(nil), g...)
	f.Add(g)
	fl := *hello
	fl.Flow = [FlowLen]byte{15: 1}
	k, _ := Seal(cs, make([]byte, MaxDatagram), &h, &fl, []byte("flow"))
	k = append([]byte(nil), k...)
	f.Add(k)
	f.Add([]byte{1, 1, 1})
	f.Fuzz(func(t *testing.T, in []byte) {
		sealed := false
		for _, s := range [][]byte{a, b, c, d, e, g, k} {
			sealed = sealed || string(in) == string(s)
		}
		var gh Header
		var gl Hello
		off, err := Parse(in, &gh, &gl)
		if err != nil {
			return
		}
		if off < HeaderLen || off > len(in)-TagLen {
			t.Fatalf("body offset %d out of range for %d bytes", off, len(in))
		}
		if _, err := Open(sr, in, off); err == nil && !sealed {
			t.Fatalf("forged datagram opened: %x", in)
		}
	})
}
