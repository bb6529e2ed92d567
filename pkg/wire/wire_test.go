package wire

import (
	"bytes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func testKeys(t testing.TB) (clientSend, clientRecv, serverSend, serverRecv cipher.AEAD) {
	t.Helper()
	psk := Key{1, 2, 3}
	salt := [16]byte{9, 8, 7}
	cs, cr, err := DeriveKeys(&psk, &salt, 42, RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	ss, sr, err := DeriveKeys(&psk, &salt, 42, RoleServer)
	if err != nil {
		t.Fatal(err)
	}
	return cs, cr, ss, sr
}

func TestSealParseOpenRoundTrip(t *testing.T) {
	cs, _, _, sr := testKeys(t)
	targets := []netip.AddrPort{
		{},
		netip.MustParseAddrPort("198.18.9.2:27015"),
		netip.MustParseAddrPort("[2001:db8::5]:3074"),
	}
	for _, target := range targets {
		for _, withHello := range []bool{false, true} {
			h := Header{Type: TypeData, Scheme: 1, Session: 42, Packet: 7, Desc: Desc{1, 3, 2, 0}}
			var hello *Hello
			if withHello {
				hello = &Hello{Salt: [16]byte{9, 8, 7}, UnixMilli: 1_700_000_000_123, Target: target}
				if err := hello.SetClientID("alice"); err != nil {
					t.Fatal(err)
				}
			}
			body := []byte("game packet payload")
			buf := make([]byte, MaxDatagram)
			dg, err := Seal(cs, buf, &h, hello, body)
			if err != nil {
				t.Fatal(err)
			}
			var got Header
			var gotHello Hello
			off, err := Parse(dg, &got, &gotHello)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if got != h {
				t.Fatalf("header %+v, want %+v", got, h)
			}
			if withHello {
				if gotHello.Salt != hello.Salt || gotHello.UnixMilli != hello.UnixMilli ||
					string(gotHello.ClientID()) != "alice" || gotHello.Target != target {
					t.Fatalf("hello %+v, want %+v", gotHello, *hello)
				}
			} else if off != HeaderLen {
				t.Fatalf("body offset %d without hello", off)
			}
			pt, err := Open(sr, dg, off)
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			if !bytes.Equal(pt, body) {
				t.Fatalf("body %q, want %q", pt, body)
			}
		}
	}
}

// TestEveryFlippedBitIsRejected flips each bit of a sealed datagram in turn: every
// variant must fail to parse or fail to authenticate, never open.
func TestEveryFlippedBitIsRejected(t *testing.T) {
	cs, _, _, sr := testKeys(t)
	h := Header{Type: TypeData, Scheme: 1, Session: 42, Packet: 9}
	hello := &Hello{UnixMilli: 5, Target: netip.MustParseAddrPort("198.18.9.2:9")}
	hello.SetClientID("bob")
	dg, err := Seal(cs, make([]byte, MaxDatagram), &h, hello, []byte("0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	for bit := 0; bit < len(dg)*8; bit++ {
		b := append([]byte(nil), dg...)
		b[bit/8] ^= 1 << (bit % 8)
		var gh Header
		var ghl Hello
		off, err := Parse(b, &gh, &ghl)
		if err != nil {
			continue
		}
		if _, err := Open(sr, b, off); !errors.Is(err, ErrAuth) {
			t.Fatalf("bit %d flipped: open returned %v", bit, err)
		}
	}
}

func TestWrongKeyOrDirectionFails(t *testing.T) {
	cs, cr, _, sr := testKeys(t)
	other := Key{7}
	salt := [16]byte{9, 8, 7}
	_, otherRecv, _ := DeriveKeys(&other, &salt, 42, RoleServer)
	h := Header{Type: TypePing, Session: 42, Packet: 1}
	dg, _ := Seal(cs, make([]byte, MaxDatagram), &h, nil, []byte("x"))
	for name, aead := range map[string]cipher.AEAD{"wrong key": otherRecv, "own direction": cr} {
		b := append([]byte(nil), dg...)
		if _, err := Open(aead, b, HeaderLen); !errors.Is(err, ErrAuth) {
			t.Errorf("%s: got %v, want ErrAuth", name, err)
		}
	}
	b := append([]byte(nil), dg...)
	if _, err := Open(sr, b, HeaderLen); err != nil {
		t.Fatalf("right key: %v", err)
	}
}

// TestKeysDifferPerSaltAndSession checks that a new salt or session ID (what a
// restart produces) gives new keys: the same nonce then seals under another key.
func TestKeysDifferPerSaltAndSession(t *testing.T) {
	psk := Key{1}
	s1, s2 := [16]byte{1}, [16]byte{2}
	seal := func(salt *[16]byte, session uint64) []byte {
		send, _, err := DeriveKeys(&psk, salt, session, RoleClient)
		if err != nil {
			t.Fatal(err)
		}
		h := Header{Type: TypeData, Session: 5, Packet: 1}
		dg, _ := Seal(send, make([]byte, MaxDatagram), &h, nil, []byte("same plaintext"))
		return dg
	}
	a, b, c := seal(&s1, 5), seal(&s2, 5), seal(&s1, 6)
	if bytes.Equal(a, b) || bytes.Equal(a, c) {
		t.Fatal("same ciphertext under a different salt or session: keys are not per session")
	}
}

func TestParseRejects(t *testing.T) {
	cs, _, _, _ := testKeys(t)
	h := Header{Type: TypeData, Session: 42, Packet: 3}
	good, _ := Seal(cs, make([]byte, MaxDatagram), &h, nil, []byte("abc"))
	mut := func(f func(b []byte)) []byte { b := append([]byte(nil), good...); f(b); return b }
	cases := map[string]struct {
		b    []byte
		want error
	}{
		"empty":         {nil, ErrShort},
		"short":         {good[:HeaderLen+TagLen-1], ErrShort},
		"long":          {make([]byte, MaxDatagram+1), ErrLong},
		"version":       {mut(func(b []byte) { b[0] = 2 }), ErrVersion},
		"type zero":     {mut(func(b []byte) { b[1] = 0 }), ErrType},
		"type unknown":  {mut(func(b []byte) { b[1] = 200 }), ErrType},
		"flags":         {mut(func(b []byte) { b[2] = 0x80 }), ErrFlags},
		"session zero":  {mut(func(b []byte) { copy(b[4:12], make([]byte, 8)) }), ErrNoSession},
		"packet zero":   {mut(func(b []byte) { copy(b[12:20], make([]byte, 8)) }), ErrNoPacket},
		"hello missing": {mut(func(b []byte) { b[2] = byte(FlagHello) }), ErrHello},
	}
	for name, c := range cases {
		var hh Header
		var hl Hello
		if _, err := Parse(c.b, &hh, &hl); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", name, err, c.want)
		}
	}
}

func TestSealRefusesSmallBufferInsteadOfAllocating(t *testing.T) {
	cs, _, _, _ := testKeys(t)
	h := Header{Type: TypeData, Session: 1, Packet: 1}
	if _, err := Seal(cs, make([]byte, 30), &h, nil, make([]byte, 100)); !errors.Is(err, ErrLong) {
		t.Fatalf("got %v, want ErrLong", err)
	}
}

func TestKeyParsing(t *testing.T) {
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseKey(k.String())
	if err != nil || back != k {
		t.Fatalf("base64 round trip: %v", err)
	}
	hexForm := "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	hk, err := ParseKey(hexForm)
	if err != nil || hk[31] != 0x1f {
		t.Fatalf("hex: %v %v", hk, err)
	}
	for _, bad := range []string{"", "abc", hexForm[:62], "!!!!"} {
		if _, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) accepted", bad)
		}
	}
}

func TestPingPong(t *testing.T) {
	p := Pong{Ping: Ping{Seq: 77, Uplink: 2, SentAt: 123456789}, Overloaded: true, PeerTime: 99}
	var b [PongLen]byte
	var got Pong
	if err := ParsePong(p.Put(b[:]), &got); err != nil || got != p {
		t.Fatalf("pong round trip: %+v %v", got, err)
	}
	if err := ParsePong(b[:PongLen-1], &got); err == nil {
		t.Fatal("short pong accepted")
	}
	if err := ParsePing(b[:3], &got.Ping); err == nil {
		t.Fatal("short ping accepted")
	}
}

func TestSealOpenDoNotAllocate(t *testing.T) {
	cs, _, _, sr := testKeys(t)
	buf := make([]byte, MaxDatagram)
	body := make([]byte, 100)
	hello := &Hello{Target: netip.MustParseAddrPort("198.18.9.2:9")}
	hello.SetClientID("alice")
	var pid uint64
	allocs := testing.AllocsPerRun(1000, func() {
		pid++
		h := Header{Type: TypeData, Session: 42, Packet: pid}
		dg, err := Seal(cs, buf, &h, hello, body)
		if err != nil {
			t.Fatal(err)
		}
		var gh Header
		var gl Hello
		off, err := Parse(dg, &gh, &gl)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Open(sr, dg, off); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("seal+parse+open allocates %v times per datagram", allocs)
	}
}

func BenchmarkSealOpen(b *testing.B) {
	for _, size := range []int{64, 200, 1200} {
		b.Run(byteSize(size), func(b *testing.B) {
			cs, _, _, sr := testKeys(b)
			buf := make([]byte, MaxDatagram)
			body := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				h := Header{Type: TypeData, Session: 42, Packet: uint64(i + 1)}
				dg, _ := Seal(cs, buf, &h, nil, body)
				var gh Header
				off, _ := Parse(dg, &gh, nil)
				if _, err := Open(sr, dg, off); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func byteSize(n int) string {
	return string(rune('0'+n/1000%10)) + string(rune('0'+n/100%10)) + string(rune('0'+n/10%10)) + string(rune('0'+n%10)) + "B"
}

func TestProbeRoundTrip(t *testing.T) {
	for _, target := range []netip.AddrPort{{}, netip.MustParseAddrPort("198.18.41.2:27015"), netip.MustParseAddrPort("[2001:db8::1]:9")} {
		r := ProbeReply{Probe: Probe{Seq: 3, SentAt: 99, Target: target}, ServerRTT: 1234567, Allowed: true, Overloaded: true}
		var b [ProbeReplyLen]byte
		var got ProbeReply
		if err := ParseProbeReply(r.Put(b[:]), &got); err != nil || got != r {
			t.Fatalf("probe reply round trip: %+v %v", got, err)
		}
		var p Probe
		var pb [ProbeLen]byte
		if err := ParseProbe(r.Probe.Put(pb[:]), &p); err != nil || p != r.Probe {
			t.Fatalf("probe round trip: %+v %v", p, err)
		}
	}
	var b [ProbeLen]byte
	b[12] = 9 // unknown family
	var p Probe
	if ParseProbe(b[:], &p) == nil {
		t.Fatal("unknown address family accepted")
	}
}

// A hello may end with a connect token: it reads back, it is authenticated
// with the rest of the hello, a cut or oversized one is refused, and a token
// flag without a hello is malformed.
func TestHelloWithToken(t *testing.T) {
	cs, _, _, sr := testKeys(t)
	h := Header{Type: TypeData, Session: 42, Packet: 7}
	hello := &Hello{Target: netip.MustParseAddrPort("198.18.9.2:27015"), Token: bytes.Repeat([]byte{0xAB}, MaxToken)}
	hello.SetClientID(strings.Repeat("c", MaxClientID))
	body := make([]byte, fullShard) // a full shard still fits beside the longest token
	dg, err := Seal(cs, make([]byte, MaxDatagram), &h, hello, body)
	if err != nil {
		t.Fatal(err)
	}
	var gh Header
	var gl Hello
	off, err := Parse(dg, &gh, &gl)
	if err != nil || gh.Flags != FlagHello|FlagToken || !bytes.Equal(gl.Token, hello.Token) {
		t.Fatalf("parse: %v flags %v token %d bytes", err, gh.Flags, len(gl.Token))
	}
	if _, err := Open(sr, append([]byte(nil), dg...), off); err != nil {
		t.Fatalf("open: %v", err)
	}
	// The token is associated data: changing it fails authentication.
	bad := append([]byte(nil), dg...)
	bad[off-1] ^= 1
	if off2, err := Parse(bad, &gh, &gl); err == nil {
		if _, err := Open(sr, bad, off2); err == nil {
			t.Fatal("altered token opened")
		}
	}
	// Without FlagHello the token flag is refused.
	bad = append([]byte(nil), dg...)
	bad[2] = byte(FlagToken)
	if _, err := Parse(bad, &gh, &gl); err != ErrFlags {
		t.Fatalf("token flag alone: %v, want ErrFlags", err)
	}
	// A token longer than MaxToken is not sealed.
	hello.Token = make([]byte, MaxToken+1)
	if _, err := Seal(cs, make([]byte, MaxDatagram), &h, hello, nil); err == nil {
		t.Fatal("oversized token sealed")
	}
	// A hello without a token after one with: Parse clears it.
	hello.Token = nil
	dg, _ = Seal(cs, make([]byte, MaxDatagram), &h, hello, nil)
	gl.Token = []byte("stale")
	if _, err := Parse(dg, &gh, &gl); err != nil || gl.Token != nil {
		t.Fatalf("token left from an earlier parse: %v %q", err, gl.Token)
	}
}

// A hello with an epoch round-trips and sets FlagEpoch; a hello without one
// leaves it clear, as an older sender's does; FlagEpoch without a hello is
// malformed.
func TestHelloEpoch(t *testing.T) {
	cs, _, _, sr := testKeys(t)
	for _, epoch := range []uint64{0, 1, 0xfedcba9876543210} {
		hl := &Hello{Target: netip.MustParseAddrPort("198.18.9.2:27015"), Epoch: epoch}
		hl.SetClientID("alice")
		h := Header{Type: TypeData, Session: 5, Packet: 7}
		dg, err := Seal(cs, make([]byte, MaxDatagram), &h, hl, []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		var gh Header
		var gl Hello
		off, err := Parse(dg, &gh, &gl)
		if err != nil {
			t.Fatalf("epoch %x: %v", epoch, err)
		}
		if gl.Epoch != epoch || (gh.Flags&FlagEpoch != 0) != (epoch != 0) {
			t.Fatalf("epoch %x: parsed %x, flags %x", epoch, gl.Epoch, gh.Flags)
		}
		if _, err := Open(sr, dg, off); err != nil {
			t.Fatalf("epoch %x: %v", epoch, err)
		}
	}
	h := Header{Type: TypePing, Session: 5, Packet: 8}
	dg, _ := Seal(cs, make([]byte, MaxDatagram), &h, nil, []byte("x"))
	dg[2] |= byte(FlagEpoch)
	var gh Header
	if _, err := Parse(dg, &gh, nil); err != ErrFlags {
		t.Fatalf("FlagEpoch without a hello: %v, want ErrFlags", err)
	}
	// Pongs with and without an epoch both parse.
	for _, e := range []uint64{0, 99} {
		var b [PongEpochLen]byte
		p := Pong{Ping: Ping{Seq: 3}, PeerTime: 4, Epoch: e}
		var got Pong
		if err := ParsePong(p.Put(b[:]), &got); err != nil || got.Epoch != e || got.Ping.Seq != 3 {
			t.Fatalf("pong epoch %d: %v %+v", e, err, got)
		}
	}
}

// The hello trailers come in one order, epoch then token: a hello with both
// reads back both, both flags are set, and altering any byte of either
// trailer (or clearing either flag) fails to open.
func TestHelloEpochAndToken(t *testing.T) {
	cs, _, _, sr := testKeys(t)
	h := Header{Type: TypeData, Session: 42, Packet: 9}
	hl := &Hello{Target: netip.MustParseAddrPort("198.18.9.2:27015"), Epoch: 0x1122334455667788, Token: []byte("token bytes")}
	hl.SetClientID("alice")
	dg, err := Seal(cs, make([]byte, MaxDatagram), &h, hl, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	var gh Header
	var gl Hello
	off, err := Parse(dg, &gh, &gl)
	if err != nil || gh.Flags != FlagHello|FlagEpoch|FlagToken || gl.Epoch != hl.Epoch || string(gl.Token) != "token bytes" {
		t.Fatalf("parse: %v flags %v epoch %x token %q", err, gh.Flags, gl.Epoch, gl.Token)
	}
	// The epoch sits right before the token's length prefix.
	tokAt := off - len(hl.Token) - 2
	if got := binary.BigEndian.Uint64(dg[tokAt-EpochLen:]); got != hl.Epoch {
		t.Fatalf("epoch not before the token: %x", got)
	}
	if _, err := Open(sr, append([]byte(nil), dg...), off); err != nil {
		t.Fatalf("open: %v", err)
	}
	for i := tokAt - EpochLen; i < off; i++ {
		bad := append([]byte(nil), dg...)
		bad[i] ^= 0x40
		if o, err := Parse(bad, &gh, &gl); err == nil {
			if _, err := Open(sr, bad, o); err == nil {
				t.Fatalf("datagram with trailer byte %d altered opened", i)
			}
		}
	}
	for _, f := range []Flags{FlagEpoch, FlagToken} {
		bad := append([]byte(nil), dg...)
		bad[2] &^= byte(f)
		if o, err := Parse(bad, &gh, &gl); err == nil {
			if _, err := Open(sr, bad, o); err == nil {
				t.Fatalf("datagram with %v cleared opened", f)
			}
		}
	}
}

// The size budget: the longest hello (longest client ID, IPv6 target, an
// epoch and a MaxToken token) with a full default shard is exactly
// MaxDatagram, and seals.
func TestHelloBudget(t *testing.T) {
	cs, _, _, sr := testKeys(t)
	h := Header{Type: TypeData, Session: 42, Packet: 3}
	hl := &Hello{Target: netip.MustParseAddrPort("[2001:db8::1]:27015"), Epoch: 7, Flow: [FlowLen]byte{9}, Token: bytes.Repeat([]byte{1}, MaxToken)}
	hl.SetClientID(strings.Repeat("c", MaxClientID))
	dg, err := Seal(cs, make([]byte, MaxDatagram), &h, hl, make([]byte, fullShard))
	if err != nil {
		t.Fatal(err)
	}
	if len(dg) != MaxDatagram {
		t.Fatalf("longest hello with a full shard is %d bytes, want %d", len(dg), MaxDatagram)
	}
	var gh Header
	var gl Hello
	off, err := Parse(dg, &gh, &gl)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(sr, dg, off); err != nil {
		t.Fatal(err)
	}
	if _, err := Seal(cs, make([]byte, MaxDatagram), &h, hl, make([]byte, fullShard+1)); err == nil {
		t.Fatal("a byte past the budget sealed")
	}
}

// A flow token rides between the epoch and the connect token, comes back
// intact, and is authenticated; an all-zero one or one cut short is refused.
func TestHelloFlow(t *testing.T) {
	cs, _, _, sr := testKeys(t)
	var key Key
	key[0] = 5
	lan := netip.MustParseAddrPort("192.168.1.20:50000")
	srv := netip.MustParseAddrPort("198.18.9.2:27015")
	flow := FlowToken(&key, lan, srv)
	if flow != FlowToken(&key, lan, srv) {
		t.Fatal("flow token not stable")
	}
	var other Key
	other[0] = 6
	if flow == FlowToken(&other, lan, srv) || flow == FlowToken(&key, netip.MustParseAddrPort("192.168.1.20:50001"), srv) {
		t.Fatal("flow token does not depend on the key and the flow")
	}
	h := Header{Type: TypeData, Session: 42, Packet: 3}
	hl := &Hello{Target: srv, Epoch: 11, Flow: flow, Token: []byte("tok")}
	hl.SetClientID("alice")
	dg, err := Seal(cs, make([]byte, MaxDatagram), &h, hl, []byte("body"))
	if err != nil {
		t.Fatal(err)
	}
	var gh Header
	var gl Hello
	off, err := Parse(dg, &gh, &gl)
	if err != nil {
		t.Fatal(err)
	}
	if gh.Flags&FlagFlow == 0 || gl.Flow != flow || gl.Epoch != 11 || string(gl.Token) != "tok" {
		t.Fatalf("parsed flags %b flow %x epoch %d token %q", gh.Flags, gl.Flow, gl.Epoch, gl.Token)
	}
	if b, err := Open(sr, append([]byte(nil), dg...), off); err != nil || string(b) != "body" {
		t.Fatalf("open: %q %v", b, err)
	}
	// Flipping the flag off shifts the trailers: the datagram must not open.
	bad := append([]byte(nil), dg...)
	bad[2] &^= byte(FlagFlow)
	if off, err := Parse(bad, &gh, &gl); err == nil {
		if _, err := Open(sr, bad, off); err == nil {
			t.Fatal("datagram with the flow flag cleared opened")
		}
	}
	// An all-zero flow token is refused.
	zero := append([]byte(nil), dg...)
	fo := HeaderLen + 16 + 8 + 1 + 5 + 1 + 6 + EpochLen
	copy(zero[fo:fo+FlowLen], make([]byte, FlowLen))
	if _, err := Parse(zero, &gh, &gl); err != ErrHello {
		t.Fatalf("zero flow token: %v, want ErrHello", err)
	}
	// Without a flow, the flag stays clear and Flow parses as zero.
	hl.Flow = [FlowLen]byte{}
	dg, _ = Seal(cs, make([]byte, MaxDatagram), &h, hl, []byte("body"))
	gl.Flow = flow
	if _, err := Parse(dg, &gh, &gl); err != nil || gh.Flags&FlagFlow != 0 || gl.HasFlow() {
		t.Fatalf("no flow: err %v flags %b flow %x", err, gh.Flags, gl.Flow)
	}
}
