package peer

import (
	"bytes"
	"net/netip"
	"testing"
)

func TestLANFrameRoundTrip(t *testing.T) {
	src, dst := netip.MustParseAddrPort("198.18.170.2:5062"), netip.MustParseAddrPort("198.18.171.2:5060")
	buf := make([]byte, 2048)
	in := LANFrame{TOS: 0xb8, Src: src, Dst: dst, Payload: []byte("INVITE sip:callee@198.18.171.2 SIP/2.0")}
	n, err := PutLANFrame(buf, &in)
	if err != nil {
		t.Fatal(err)
	}
	if IsVPortFrame(buf[:n]) {
		t.Fatal("a LAN frame taken for a vport frame")
	}
	var out LANFrame
	if err := ParseLANFrame(buf[:n], &out); err != nil {
		t.Fatal(err)
	}
	if out.TOS != in.TOS || out.Src != src || out.Dst != dst || !bytes.Equal(out.Payload, in.Payload) {
		t.Fatalf("got %+v, want %+v", out, in)
	}
	// The payload already in place is not copied over itself.
	copy(buf[LANFrameHeader:], "in place")
	in.Payload = buf[LANFrameHeader : LANFrameHeader+8]
	if n, err = PutLANFrame(buf, &in); err != nil || n != LANFrameHeader+8 || string(buf[LANFrameHeader:n]) != "in place" {
		t.Fatalf("in place: %d %v %q", n, err, buf[LANFrameHeader:n])
	}
}

func TestLANFrameRefusesBadInput(t *testing.T) {
	src, dst := netip.MustParseAddrPort("198.18.170.2:5062"), netip.MustParseAddrPort("198.18.171.2:5060")
	buf := make([]byte, 2048)
	for _, f := range []LANFrame{
		{Src: netip.MustParseAddrPort("[2001:db8::1]:5060"), Dst: dst},
		{Src: src, Dst: netip.AddrPortFrom(dst.Addr(), 0)},
		{Src: src, Dst: dst, Payload: make([]byte, MaxLANPayload+1)},
	} {
		if _, err := PutLANFrame(buf, &f); err == nil {
			t.Errorf("%v → %v (%d bytes): accepted", f.Src, f.Dst, len(f.Payload))
		}
	}
	if _, err := PutLANFrame(buf[:10], &LANFrame{Src: src, Dst: dst}); err != ErrLANBuffer {
		t.Errorf("short buffer: %v", err)
	}
	var f LANFrame
	good, _ := PutLANFrame(buf, &LANFrame{Src: src, Dst: dst, Payload: []byte("x")})
	for _, b := range [][]byte{nil, buf[:LANFrameHeader-1], append([]byte{frameReply}, buf[1:good]...),
		append(append([]byte(nil), buf[:6]...), 0, 0, 1, 2, 3, 4, 5, 6), make([]byte, LANFrameHeader+MaxLANPayload+1)} {
		if len(b) > LANFrameHeader+MaxLANPayload {
			b[0], b[7], b[13] = FrameLAN, 1, 1
		}
		if err := ParseLANFrame(b, &f); err == nil {
			t.Errorf("%x: accepted", b[:min(len(b), 16)])
		}
	}
}

func FuzzParseLANFrame(f *testing.F) {
	buf := make([]byte, 64)
	n, _ := PutLANFrame(buf, &LANFrame{Src: netip.MustParseAddrPort("198.18.170.2:1"), Dst: netip.MustParseAddrPort("198.18.171.2:2"), Payload: []byte("rtp")})
	f.Add(buf[:n])
	f.Fuzz(func(t *testing.T, b []byte) {
		var fr LANFrame
		if ParseLANFrame(b, &fr) != nil {
			return
		}
		out := make([]byte, len(b))
		m, err := PutLANFrame(out, &fr)
		if err != nil || m != len(b) {
			t.Fatalf("a parsed frame does not rebuild: %d %v", m, err)
		}
	})
}
