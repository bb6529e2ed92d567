package testbed

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestPoissonBounds checks the bounds against known quantiles: for a mean of
// 100 the 0.05 % and 99.95 % quantiles are 69 and 134, and a mean far below
// one allows at most one loss.
func TestPoissonBounds(t *testing.T) {
	for _, c := range []struct {
		lambda float64
		lo, hi int64
	}{{0, 0, 0}, {0.01, 0, 1}, {100, 69, 134}} {
		lo, hi := poissonBounds(c.lambda, 0.0005)
		if lo != c.lo || hi != c.hi {
			t.Errorf("poissonBounds(%g) = %d..%d, want %d..%d", c.lambda, lo, hi, c.lo, c.hi)
		}
	}
}

// TestMeasure checks the "within" rule: 20 % of theory, or inside the bound.
func TestMeasure(t *testing.T) {
	if m := measure(10000, 100, 0.01); !m.OK {
		t.Errorf("100 of 10,000 at 1%% theory: %+v, want within", m)
	}
	if m := measure(10000, 300, 0.01); m.OK {
		t.Errorf("300 of 10,000 at 1%% theory: %+v, want outside", m)
	}
	if m := measure(10000, 1, 1e-6); !m.OK {
		t.Errorf("1 of 10,000 at 1e-6 theory: %+v, want within the Poisson bound", m)
	}
}

// TestTapCountsWindowLoss relays generator-shaped datagrams through two taps
// on loopback, drops some between them, and checks the loss counted inside a
// window of send stamps, as Result.LostIn does.
func TestTapCountsWindowLoss(t *testing.T) {
	lo := netip.MustParseAddrPort("127.0.0.1:0")
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(lo))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// server ← serverTap ← (drops odd seqs) ← clientTap ← client
	server := listen()
	defer server.Close()
	serverTap := NewTap(listen(), listen(), server.LocalAddr().(*net.UDPAddr).AddrPort())
	defer serverTap.Close()
	dropper := listen()
	defer dropper.Close()
	clientTap := NewTap(listen(), listen(), dropper.LocalAddr().(*net.UDPAddr).AddrPort())
	defer clientTap.Close()
	client := listen()
	defer client.Close()

	// The dropper stands in for a lossy link: it forwards even sequence
	// numbers only.
	toServerTap := listen()
	defer toServerTap.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := dropper.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if binary.BigEndian.Uint64(buf[16:])%2 == 0 {
				toServerTap.WriteToUDPAddrPort(buf[:n], serverTap.Addr())
			}
		}
	}()
	tick := func(kind byte, seq uint64, ts int64, flags byte) []byte {
		b := make([]byte, genHeaderLen)
		binary.BigEndian.PutUint32(b, genMagic)
		b[4], b[5], b[6] = 1, kind, flags
		binary.BigEndian.PutUint64(b[16:], seq)
		binary.BigEndian.PutUint64(b[24:], uint64(ts))
		return b
	}
	// Ticks 0..9 with send stamps 0..9 s; a warm-up tick and a non-tick are
	// ignored.
	client.WriteToUDPAddrPort(tick(genKindClient, 100, 5, genFlagWarmup), clientTap.Addr())
	client.WriteToUDPAddrPort([]byte("not a generator datagram, long enough to parse"), clientTap.Addr())
	for i := uint64(0); i < 10; i++ {
		client.WriteToUDPAddrPort(tick(genKindClient, i, int64(i)*int64(time.Second), 0), clientTap.Addr())
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		sent, _ := clientTap.snapshot()
		arrived, _ := serverTap.snapshot()
		if len(sent) == 10 && len(arrived) == 5 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	sent, _ := clientTap.snapshot()
	arrived, _ := serverTap.snapshot()
	// Window [2 s, 6 s) holds seqs 2..5, of which 3 and 5 were dropped.
	got := lostIn(sent, arrived, Window{2 * int64(time.Second), 6 * int64(time.Second)})
	if got != (WindowLoss{Sent: 4, Lost: 2}) {
		t.Errorf("window loss %+v, want 4 sent, 2 lost (sent %d, arrived %d in all)", got, len(sent), len(arrived))
	}
}
