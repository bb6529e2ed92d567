package detect

import (
	"bufio"
	"bytes"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Learned remembers destinations that ad-hoc timing found LC, so that the
// next session to one is LC (and proxied) from its first packet.
//
// It is bounded (least recently used entries are evicted, and counted) and
// entries expire TTL after they were last seen. The program calls Restore at
// start and Save periodically and at exit. The classifier consults it
// once per new flow, not per packet, so a plain mutex costs nothing that
// matters and lets Save run from another goroutine.
type Learned struct {
	mu      sync.Mutex
	t       *lru[learnedKey, learnedVal]
	ttl     int64
	expired uint64
}

type learnedKey struct {
	proto uint8
	dst   netip.AddrPort
}

type learnedVal struct {
	appType  string
	pps      float32
	lastSeen int64          // monotonic ns
	teacher  netip.AddrPort // source of the flow that taught it
}

// LearnedEntry is one remembered destination, as exported by Entries.
type LearnedEntry struct {
	Proto    uint8
	Dst      netip.AddrPort
	AppType  string
	PPS      float64
	LastSeen int64 // monotonic ns
}

// NewLearned returns a store of at most capacity destinations kept for ttl
// after they were last seen.
func NewLearned(capacity int, ttl time.Duration) *Learned {
	seed := rand.Uint64()
	return &Learned{
		t:   newLRU[learnedKey, learnedVal](capacity, func(k learnedKey) uint64 { return hashAddrPort(seed+uint64(k.proto), k.dst) }),
		ttl: int64(ttl),
	}
}

// guessAppType names what a flow found by timing probably is: calls send at
// a fixed packetisation time (20 or 30 ms, so 50 or 33 pps); anything else is
// taken for a game. It is a label for humans and metrics, not a rule.
func guessAppType(pps float64) string {
	for _, v := range []float64{50, 33.3} {
		if pps > v*0.9 && pps < v*1.1 {
			return "voip"
		}
	}
	return "game"
}

// Learn records dst as LC, learned from the flow whose source is teacher.
func (l *Learned) Learn(proto uint8, dst, teacher netip.AddrPort, appType string, pps float64, now int64) {
	l.mu.Lock()
	v, _ := l.t.put(learnedKey{proto, dst})
	*v = learnedVal{appType: appType, pps: float32(pps), lastSeen: now, teacher: teacher}
	l.mu.Unlock()
}

// lookup reports whether dst is learned and refreshes its last-seen time.
// inFlight is true when src is the flow that taught it: that flow is the same
// session and must keep its addresses.
func (l *Learned) lookup(proto uint8, dst, src netip.AddrPort, now int64) (appType string, pps float64, ok, inFlight bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := learnedKey{proto, dst}
	v, ok := l.t.get(k)
	if !ok {
		return "", 0, false, false
	}
	if now-v.lastSeen > l.ttl {
		l.t.del(k)
		l.expired++
		return "", 0, false, false
	}
	v.lastSeen = now
	return v.appType, float64(v.pps), true, v.teacher == src
}

// Contains reports whether dst is learned and not expired at now.
func (l *Learned) Contains(proto uint8, dst netip.AddrPort, now int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, ok := l.t.peek(learnedKey{proto, dst})
	return ok && now-v.lastSeen <= l.ttl
}

// Entries returns the live entries, most recently used first.
func (l *Learned) Entries(now int64) []LearnedEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []LearnedEntry
	l.t.each(func(k learnedKey, v *learnedVal) bool {
		if now-v.lastSeen <= l.ttl {
			out = append(out, LearnedEntry{k.proto, k.dst, v.appType, float64(v.pps), v.lastSeen})
		}
		return true
	})
	return out
}

// Stats returns how many entries were evicted for room and dropped as expired.
func (l *Learned) Stats() (evicted, expired uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.t.evicted, l.expired
}

// The file is text, one entry a line, so that a human can read and prune it:
//
//	raic-learned 1
//	<proto> <addr:port> <app type> <pps> <last seen, unix seconds>
//	end <count>
//
// The trailer catches a file cut short by a crash of something other than
// Save itself (Save writes a temporary file and renames it into place).
const learnedMagic = "raic-learned 1"

// Save writes the live entries to path atomically. now is the monotonic time
// matching wall; last-seen times are stored as wall clock, since the
// monotonic clock restarts with the machine.
func (l *Learned) Save(path string, now int64, wall time.Time) error {
	ents := l.Entries(now)
	var b bytes.Buffer
	b.WriteString(learnedMagic + "\n")
	for i := len(ents) - 1; i >= 0; i-- { // oldest first: Load then keeps recency
		e := ents[i]
		seen := wall.Add(-time.Duration(now - e.LastSeen)).Unix()
		fmt.Fprintf(&b, "%d %s %s %s %d\n", e.Proto, e.Dst, e.AppType,
			strconv.FormatFloat(e.PPS, 'f', 1, 64), seen)
	}
	fmt.Fprintf(&b, "end %d\n", len(ents))
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	if _, err = f.Write(b.Bytes()); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// Load reads a file written by Save, adding its unexpired entries. A file
// that is malformed in any line is refused whole (nothing is added): it was
// not written by Save and its other lines cannot be trusted either. A
// missing file is not an error.
func (l *Learned) Load(path string, now int64, wall time.Time) (int, error) {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var ents []LearnedEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	ln, done := 0, false
	bad := func(format string, a ...any) (int, error) {
		return 0, fmt.Errorf("%s:%d: %s", path, ln, fmt.Sprintf(format, a...))
	}
	for sc.Scan() {
		ln++
		line := sc.Text()
		if ln == 1 {
			if line != learnedMagic {
				return bad("not a learned-destinations file (header %q)", line)
			}
			continue
		}
		if done {
			return bad("data after the end line")
		}
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "end" {
			n, err := strconv.Atoi(f[1])
			if err != nil || n != ln-2 {
				return bad("end count %q does not match %d entries", f[1], ln-2)
			}
			done = true
			continue
		}
		if len(f) != 5 {
			return bad("%d fields, want proto addr:port type pps seen", len(f))
		}
		proto, err := strconv.ParseUint(f[0], 10, 8)
		if err != nil {
			return bad("proto %q", f[0])
		}
		dst, err := netip.ParseAddrPort(f[1])
		if err != nil {
			return bad("destination %q: %v", f[1], err)
		}
		if !validName(f[2]) {
			return bad("app type %q", f[2])
		}
		pps, err := strconv.ParseFloat(f[3], 64)
		if err != nil || pps < 0 || pps > 1e6 {
			return bad("pps %q", f[3])
		}
		seen, err := strconv.ParseInt(f[4], 10, 64)
		if err != nil {
			return bad("last seen %q", f[4])
		}
		age := wall.Sub(time.Unix(seen, 0))
		if age < 0 {
			age = 0 // clock stepped back: treat as seen now rather than in the future
		}
		ents = append(ents, LearnedEntry{uint8(proto), dst, f[2], pps, now - int64(age)})
	}
	if err := sc.Err(); err != nil {
		return bad("%v", err)
	}
	if !done {
		return bad("file ends without its end line (truncated)")
	}
	n := 0
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range ents {
		if now-e.LastSeen > l.ttl {
			l.expired++
			continue
		}
		v, _ := l.t.put(learnedKey{e.Proto, e.Dst})
		*v = learnedVal{appType: e.AppType, pps: float32(e.PPS), lastSeen: e.LastSeen}
		n++
	}
	return n, nil
}

// Restore is Load for program start: a corrupt or unreadable file is logged
// and ignored, since losing what was learned only costs a few unproxied
// sessions, while refusing to start would cost all of them.
func (l *Learned) Restore(path string, now int64, wall time.Time, log *slog.Logger) int {
	n, err := l.Load(path, now, wall)
	if err != nil && log != nil {
		log.Warn("learned destinations ignored", "file", path, "err", err)
	}
	return n
}
