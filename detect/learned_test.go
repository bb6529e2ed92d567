package detect

import (
	"bytes"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var wall0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func TestLearnedPersistenceRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "learned.txt")
	l := NewLearned(16, 24*time.Hour)
	now := int64(1e12)
	d1 := netip.MustParseAddrPort("203.0.113.5:4000")
	d2 := netip.MustParseAddrPort("[2001:db8::7]:5000")
	teacher := netip.MustParseAddrPort("198.18.0.10:50000")
	l.Learn(ProtoUDP, d1, teacher, "game", 64, now-int64(time.Hour))
	l.Learn(ProtoUDP, d2, teacher, "voip", 50, now)
	if err := l.Save(path, now, wall0); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*.tmp*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	// A restart: a new monotonic epoch, and 2 hours of wall time later.
	r := NewLearned(16, 24*time.Hour)
	now2 := int64(5e9)
	n, err := r.Load(path, now2, wall0.Add(2*time.Hour))
	if err != nil || n != 2 {
		t.Fatalf("Load = %d, %v", n, err)
	}
	got := r.Entries(now2)
	if len(got) != 2 || got[0].Dst != d2 || got[1].Dst != d1 {
		t.Fatalf("entries %+v: want both, most recent (d2) first", got)
	}
	if got[0].AppType != "voip" || got[0].PPS != 50 || got[1].AppType != "game" {
		t.Fatalf("entry fields lost: %+v", got)
	}
	if age := time.Duration(now2 - got[1].LastSeen); age != 3*time.Hour {
		t.Fatalf("d1 age after restart %v, want 3h", age)
	}
	// Entries past their TTL are dropped on load.
	r2 := NewLearned(16, 24*time.Hour)
	if n, _ := r2.Load(path, now2, wall0.Add(23*time.Hour+30*time.Minute)); n != 1 {
		t.Fatalf("loaded %d 23.5 h later, want 1 (d1, 24.5 h old, expired)", n)
	}
	if _, exp := r2.Stats(); exp != 1 {
		t.Fatalf("expired count %d", exp)
	}
}

func TestLearnedCorruptFileIgnored(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "learned.txt")
	good := learnedMagic + "\n17 203.0.113.5:4000 game 64.0 1793534400\nend 1\n"
	for name, body := range map[string]string{
		"garbage":   "\x00\x01binary",
		"truncated": strings.TrimSuffix(good, "end 1\n"),
		"bad addr":  learnedMagic + "\n17 203.0.113.500:4000 game 64.0 1793534400\nend 1\n",
		"bad count": learnedMagic + "\n17 203.0.113.5:4000 game 64.0 1793534400\nend 2\n",
		"bad type":  learnedMagic + "\n17 203.0.113.5:4000 Game! 64.0 1793534400\nend 1\n",
	} {
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		var logbuf bytes.Buffer
		l := NewLearned(16, 24*time.Hour)
		n := l.Restore(path, 1e12, wall0, slog.New(slog.NewTextHandler(&logbuf, nil)))
		if n != 0 || len(l.Entries(1e12)) != 0 {
			t.Errorf("%s: %d entries restored from a corrupt file", name, n)
		}
		if !strings.Contains(logbuf.String(), "learned destinations ignored") || !strings.Contains(logbuf.String(), path) {
			t.Errorf("%s: not logged with the file name: %q", name, logbuf.String())
		}
	}
	if err := os.WriteFile(path, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	if n := NewLearned(16, 365*24*time.Hour).Restore(path, 1e12, wall0, nil); n != 1 {
		t.Fatalf("good file: %d entries", n)
	}
	if n := NewLearned(16, time.Hour).Restore(filepath.Join(dir, "missing"), 1e12, wall0, nil); n != 0 {
		t.Fatal("missing file restored entries")
	}
}

func TestLearnedBoundedAndExpires(t *testing.T) {
	l := NewLearned(8, time.Minute)
	src := netip.MustParseAddrPort("198.18.0.1:1")
	for i := 0; i < 20; i++ {
		l.Learn(ProtoUDP, netip.AddrPortFrom(netip.MustParseAddr("198.51.100.1"), uint16(1000+i)), src, "game", 30, int64(i))
	}
	if ev, _ := l.Stats(); ev != 12 || len(l.Entries(20)) != 8 {
		t.Fatalf("evicted %d entries %d, want 12 and 8", ev, len(l.Entries(20)))
	}
	dst := netip.AddrPortFrom(netip.MustParseAddr("198.51.100.1"), 1019)
	if !l.Contains(ProtoUDP, dst, int64(time.Minute)) || l.Contains(ProtoUDP, dst, int64(2*time.Minute)) {
		t.Fatal("expiry by TTL wrong")
	}
	if _, _, ok, _ := l.lookup(ProtoUDP, dst, src, int64(2*time.Minute)); ok {
		t.Fatal("expired entry matched")
	}
	if _, exp := l.Stats(); exp != 1 {
		t.Fatalf("expired %d, want 1", exp)
	}
}
