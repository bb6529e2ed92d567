package tcpsplit

import (
	"bytes"
	"io"
	"testing"
	"time"
)

// frames returns the raw frames of chunks from index from on.
func frames(chunks []string, from int) []byte {
	f := framer{}
	var b []byte
	for _, c := range chunks[from:] {
		b = append(b, f.frame([]byte(c))...)
	}
	return b
}

// TestRecvGroupLateStreamWaitsForTheGap: a stream that joined at frame 2 and
// arrives complete first must not end the flow before the first stream has
// delivered frames 0 and 1; each frame is delivered once, in order.
func TestRecvGroupLateStreamWaitsForTheGap(t *testing.T) {
	chunks := []string{"zero ", "one ", "two ", "three"}
	lanA, lanB := tcpPair(t)
	g := newRecvGroupOf(lanB, 2)
	late := bytes.NewReader(frames(chunks, 2))
	go g.read(late, func() {}, 2)
	time.Sleep(50 * time.Millisecond) // the late stream is read first
	pr, pw := io.Pipe()
	go g.read(pr, func() {}, 0)
	go func() { pw.Write(frames(chunks, 0)); pw.Close() }()
	lanA.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(lanA)
	if err != nil {
		t.Fatal(err)
	}
	if want := "zero one two three"; string(got) != want {
		t.Fatalf("delivered %q, want %q", got, want)
	}
	<-g.done
	if !g.eof || g.failed {
		t.Errorf("eof %v, failed %v; want a clean end", g.eof, g.failed)
	}
}

// TestRecvGroupGapNobodyCanFill: a late stream alone cannot deliver; the
// flow fails rather than skip the frames before it.
func TestRecvGroupGapNobodyCanFill(t *testing.T) {
	chunks := []string{"zero ", "one ", "two "}
	lanA, lanB := tcpPair(t)
	g := newRecvGroupOf(lanB, 2)
	go g.read(io.MultiReader(bytes.NewReader(nil), eofReader{}), func() {}, 0) // the first stream fails at once
	go g.read(bytes.NewReader(frames(chunks, 1)), func() {}, 1)
	select {
	case <-g.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the flow neither ended nor failed")
	}
	if !g.failed {
		t.Errorf("failed = false, want true")
	}
	lanB.Close()
	got, _ := io.ReadAll(lanA)
	if len(got) != 0 {
		t.Errorf("delivered %q past a gap", got)
	}
}
