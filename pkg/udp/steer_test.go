package udp

import (
	"encoding/binary"
	"testing"
	"time"
)

// TestSteerByPayload binds a group of three SO_REUSEPORT sockets, steers it
// by the word at offset 8, and sends from many source ports (which the
// kernel's 4-tuple hash would spread anyhow): each datagram must reach the
// socket its word picks, and one too short for the word socket 0.
func TestSteerByPayload(t *testing.T) {
	const n = 3
	var group []*Conn
	opt := Options{Local: lo4, ReusePort: true}
	for i := 0; i < n; i++ {
		c := listen(t, "udp4", opt)
		opt.Local = c.LocalAddr()
		group = append(group, c)
	}
	if err := group[0].SteerByPayload(8, n); err != nil {
		t.Fatal(err)
	}
	const sources, per = 16, 6
	for s := 0; s < sources; s++ {
		src := listen(t, "udp4", Options{Local: lo4})
		for j := 0; j < per; j++ {
			b := make([]byte, 24)
			word := uint32(s*per + j)
			binary.BigEndian.PutUint32(b[8:], word)
			if err := src.WriteTo(b, group[0].LocalAddr()); err != nil {
				t.Fatal(err)
			}
		}
	}
	short := listen(t, "udp4", Options{Local: lo4})
	if err := short.WriteTo([]byte("tiny"), group[0].LocalAddr()); err != nil {
		t.Fatal(err)
	}
	total := 0
	for i, c := range group {
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		buf := make([]byte, 64)
		for {
			nb, from, err := c.ReadFrom(buf)
			if err != nil {
				break
			}
			total++
			if nb < 12 {
				if i != 0 || from != short.LocalAddr() {
					t.Errorf("a %d-byte datagram from %v reached socket %d, want socket 0", nb, from, i)
				}
				continue
			}
			if w := binary.BigEndian.Uint32(buf[8:]); int(w%n) != i {
				t.Errorf("word %d reached socket %d, want %d", w, i, w%n)
			}
		}
	}
	if want := sources*per + 1; total != want {
		t.Fatalf("the group read %d datagrams, want %d", total, want)
	}
	if err := group[0].SteerByPayload(8, 0); err == nil {
		t.Error("steering over 0 sockets accepted")
	}
}
