package gamegen

import (
	"testing"
	"time"
)

func TestHeaderRoundTrip(t *testing.T) {
	b := make([]byte, 64)
	in := header{kind: KindEcho, flags: flagEcho | flagWarmup, dl: 500, run: 0xdeadbeef, seq: 1<<40 + 3, ts: -5}
	putHeader(b, in, len(b))
	out, ok := parseHeader(b)
	if !ok || out != in {
		t.Fatalf("got %+v %v, want %+v", out, ok, in)
	}
}

func TestParseRejectsMalformed(t *testing.T) {
	good := make([]byte, 40)
	putHeader(good, header{kind: KindClientTick}, len(good))
	cases := map[string]func([]byte) []byte{
		"short":       func(b []byte) []byte { return b[:HeaderLen-1] },
		"truncated":   func(b []byte) []byte { return b[:HeaderLen] },
		"magic":       func(b []byte) []byte { b[0] ^= 1; return b },
		"version":     func(b []byte) []byte { b[4] = 2; return b },
		"kind zero":   func(b []byte) []byte { b[5] = 0; return b },
		"kind large":  func(b []byte) []byte { b[5] = 99; return b },
		"reply short": func(b []byte) []byte { b[5] = KindReportReply; return b },
		"empty":       func(b []byte) []byte { return nil },
	}
	for name, mut := range cases {
		b := mut(append([]byte(nil), good...))
		if _, ok := parseHeader(b); ok {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, ok := parseHeader(good); !ok {
		t.Fatal("good datagram rejected")
	}
}

func TestReplyRoundTrip(t *testing.T) {
	in := serverReply{
		up: DirectionStats{
			Received: 1, Duplicates: 2, Reordered: 3, Late: 4, Malformed: 5, TooOld: 6, Warmup: 7,
			Deadline: 8 * time.Millisecond,
			Latency:  LatencyStats{Count: 9, Min: 10, Mean: 11, P50: 12, P99: 13, P999: 14, Max: 15, Jitter: 16, StdDev: 17},
		},
		downSent: 18, rate: 60.5, size: 100, echoed: 19,
	}
	b := make([]byte, HeaderLen+replyBodyLen)
	putHeader(b, header{kind: KindReportReply, run: 1}, len(b))
	in.marshal(b[HeaderLen:])
	if _, ok := parseHeader(b); !ok {
		t.Fatal("reply rejected")
	}
	var out serverReply
	out.unmarshal(b[HeaderLen:])
	if out != in {
		t.Fatalf("got %+v\nwant %+v", out, in)
	}
}

// FuzzParseHeader checks that no input panics and that whatever is accepted
// re-encodes to the same header bytes.
func FuzzParseHeader(f *testing.F) {
	b := make([]byte, 48)
	putHeader(b, header{kind: KindServerTick, seq: 9, ts: 10}, len(b))
	f.Add(b)
	f.Add([]byte("GMGN"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, ok := parseHeader(b)
		if !ok {
			return
		}
		c := make([]byte, len(b))
		putHeader(c, h, len(c))
		if string(c[:7]) != string(b[:7]) || string(c[10:HeaderLen]) != string(b[10:HeaderLen]) {
			t.Fatalf("re-encoding differs: %x vs %x", c[:HeaderLen], b[:HeaderLen])
		}
		if h.kind == KindReportReply {
			var r serverReply
			r.unmarshal(b[HeaderLen:])
		}
	})
}
