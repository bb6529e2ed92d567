package replypath

import (
	"net/netip"
	"testing"
	"time"
)

var (
	pathA = netip.MustParseAddrPort("198.18.0.1:40000")
	pathB = netip.MustParseAddrPort("198.18.1.1:40001")
	pathC = netip.MustParseAddrPort("198.18.2.1:40002")
)

const ms = int64(time.Millisecond)

// t0 is the time the tests start at: monotonic clocks never read 0.
const t0 = 100 * int64(time.Second)

// copiesOf returns where one single-datagram reply goes at now.
func copiesOf(s *Set, now int64, window time.Duration) (to []netip.AddrPort, extra int) {
	var l Live
	s.Live(now, window, &l)
	var out [MaxCopies]netip.AddrPort
	n, extra := l.Copies(&out)
	return out[:n], extra
}

func count(to []netip.AddrPort, a netip.AddrPort) int {
	n := 0
	for _, t := range to {
		if t == a {
			n++
		}
	}
	return n
}

// TestDuplicateRefreshKeepsSlowPathAlive: a path whose copies always arrive
// second is heard from only as duplicates. Refreshing on them keeps it live and
// fresh, so it gets every reply and no copy is moved off it.
func TestDuplicateRefreshKeepsSlowPathAlive(t *testing.T) {
	var s Set
	start := int64(1000) * ms
	s.Learn(pathA, start)
	s.Learn(pathB, start) // once, say from a keepalive
	for now := start; now <= start+10*int64(time.Second); now += 10 * ms {
		s.Learn(pathA, now)             // the first copy of each packet
		s.Refresh(pathB, 100, now+3*ms) // the second: a duplicate
	}
	now := start + 10*int64(time.Second) + 5*ms
	to, extra := copiesOf(&s, now, DefaultWindow)
	if count(to, pathA) != 1 || count(to, pathB) != 1 || extra != 0 || len(to) != 2 {
		t.Errorf("reply goes to %v (%d extra), want one copy on each path", to, extra)
	}

	// Without the duplicates the same path would have expired.
	var stale Set
	stale.Learn(pathA, start)
	stale.Learn(pathB, start)
	for at := start; at <= start+10*int64(time.Second); at += 10 * ms {
		stale.Learn(pathA, at)
	}
	if to, _ := copiesOf(&stale, now, DefaultWindow); count(to, pathB) != 0 {
		t.Errorf("a path silent for 10 s still gets replies: %v", to)
	}
}

// TestRefreshNeverAddsAPath: a duplicate proves nothing about where it came
// from, so it cannot make the set send anywhere new.
func TestRefreshNeverAddsAPath(t *testing.T) {
	var s Set
	s.Learn(pathA, t0)
	s.Refresh(pathB, 100, t0)
	if to, _ := copiesOf(&s, t0, DefaultWindow); len(to) != 1 || to[0] != pathA {
		t.Errorf("reply goes to %v, want only %v", to, pathA)
	}
	// Nor can it move a path's time back.
	s.Refresh(pathA, 100, t0-50*ms)
	var l Live
	s.Live(t0+int64(DefaultWindow), DefaultWindow, &l)
	if l.Len() != 1 {
		t.Errorf("an older duplicate moved the path's time back: %d live paths", l.Len())
	}
}

// TestLaggingPathCopiesRepeatedOnFreshPaths: a path not heard from for more
// than LagBehind while the others are fresh still gets its copy, and one more
// goes on a fresh path; coded shards avoid it.
func TestLaggingPathCopiesRepeatedOnFreshPaths(t *testing.T) {
	var s Set
	s.Learn(pathA, t0)
	s.Learn(pathB, t0)
	s.Learn(pathC, t0)
	now := t0 + int64(LagBehind) + 100*ms
	s.Learn(pathA, now)
	s.Learn(pathB, now)
	// C was last heard at t0: lagging, but within the reply window.
	var l Live
	s.Live(now, DefaultWindow, &l)
	if l.Len() != 3 {
		t.Fatalf("%d live paths, want 3", l.Len())
	}
	for i := 0; i < l.Len(); i++ {
		if want := l.Addr(i) == pathC; l.Lagging(i) != want {
			t.Errorf("path %v lagging = %v, want %v", l.Addr(i), l.Lagging(i), want)
		}
	}
	var out [MaxCopies]netip.AddrPort
	n, extra := l.Copies(&out)
	to := out[:n]
	if extra != 1 || n != 4 || count(to, pathC) != 1 || count(to, pathA)+count(to, pathB) != 3 {
		t.Errorf("reply goes to %v (%d extra), want one copy each and one more on A or B", to, extra)
	}
	// The first copies go one per path, in order; the extras come after.
	for i := 0; i < 3; i++ {
		if to[i] != l.Addr(i) {
			t.Errorf("copy %d goes to %v, want %v", i, to[i], l.Addr(i))
		}
	}

	// Shards go only to fresh paths.
	var placement [64]int
	for i, p := range l.Place(6, placement[:0]) {
		if l.Lagging(p) {
			t.Errorf("shard %d placed on lagging path %v", i, l.Addr(p))
		}
	}

	// Once C is heard again it is fresh and nothing moves.
	s.Refresh(pathC, 100, now)
	if to, extra := copiesOf(&s, now, DefaultWindow); extra != 0 || len(to) != 3 {
		t.Errorf("after C is heard again: %v (%d extra), want one copy each", to, extra)
	}
}

// TestLoneLaggingPathStillGetsReplies: the freshest path never lags, so a set
// of one path (or of paths all heard at once) moves nothing.
func TestLoneLaggingPathStillGetsReplies(t *testing.T) {
	var s Set
	s.Learn(pathA, t0)
	if to, extra := copiesOf(&s, t0+2*int64(time.Second), DefaultWindow); len(to) != 1 || extra != 0 {
		t.Errorf("reply goes to %v (%d extra), want one copy on the only path", to, extra)
	}
}

// TestKeepalivePathCountAddsCopies: the router says it has three paths, only
// one was ever heard from; each reply gets two more copies on it. A count the
// set cannot hold is capped.
func TestKeepalivePathCountAddsCopies(t *testing.T) {
	var s Set
	s.Learn(pathA, t0)
	if to, extra := copiesOf(&s, t0, DefaultWindow); len(to) != 1 || extra != 0 {
		t.Fatalf("before any keepalive: %v (%d extra), want one copy", to, extra)
	}
	s.NoteKeepalive(nil) // says nothing
	s.NoteKeepalive([]byte{3})
	if s.RouterPaths() != 3 {
		t.Fatalf("router paths %d, want 3", s.RouterPaths())
	}
	if to, extra := copiesOf(&s, t0, DefaultWindow); len(to) != 3 || extra != 2 || count(to, pathA) != 3 {
		t.Errorf("reply goes to %v (%d extra), want three copies on A", to, extra)
	}
	// Once a second path is heard, one copy is made up for, not two.
	s.Learn(pathB, t0)
	if to, extra := copiesOf(&s, t0, DefaultWindow); len(to) != 3 || extra != 1 || count(to, pathB) < 1 {
		t.Errorf("reply goes to %v (%d extra), want A, B and one more", to, extra)
	}
	s.NoteKeepalive([]byte{255})
	if s.RouterPaths() != MaxPaths {
		t.Errorf("router paths %d, want capped at %d", s.RouterPaths(), MaxPaths)
	}
	if to, _ := copiesOf(&s, t0, DefaultWindow); len(to) != MaxPaths {
		t.Errorf("%d copies, want %d", len(to), MaxPaths)
	}
}

// TestCopiesBounded: the worst case (a full set, all but one lagging, the
// router claiming the most paths) fits in MaxCopies.
func TestCopiesBounded(t *testing.T) {
	var s Set
	for i := 0; i < MaxPaths; i++ {
		s.Learn(netip.AddrPortFrom(pathA.Addr(), uint16(1000+i)), t0)
	}
	now := t0 + int64(LagBehind) + ms
	s.Learn(netip.AddrPortFrom(pathA.Addr(), 1000), now)
	s.NoteKeepalive([]byte{MaxPaths})
	to, extra := copiesOf(&s, now, DefaultWindow)
	if extra != MaxPaths-1 || len(to) != 2*MaxPaths-1 {
		t.Errorf("%d copies, %d extra; want %d, %d", len(to), extra, 2*MaxPaths-1, MaxPaths-1)
	}
}

// TestWindowExpiry: a path is used while heard from within the window, and not
// after; the set then has nowhere to send.
func TestWindowExpiry(t *testing.T) {
	var s Set
	s.Learn(pathA, t0)
	s.Learn(pathB, t0+2*int64(time.Second))
	var l Live
	s.Live(t0+int64(DefaultWindow), DefaultWindow, &l)
	if l.Len() != 2 {
		t.Errorf("at the window's edge: %d live paths, want 2", l.Len())
	}
	s.Live(t0+int64(DefaultWindow)+1, DefaultWindow, &l)
	if l.Len() != 1 || l.Addr(0) != pathB {
		t.Errorf("past A's window: %d live paths, want only B", l.Len())
	}
	s.Live(t0+int64(DefaultWindow)+5*int64(time.Second), DefaultWindow, &l)
	if l.Len() != 0 {
		t.Errorf("past every window: %d live paths, want none", l.Len())
	}
	// A configured window is honoured.
	s.Live(t0+4*int64(time.Second), 5*time.Second, &l)
	if l.Len() != 2 {
		t.Errorf("5 s window at 4 s: %d live paths, want 2", l.Len())
	}
}

// TestKeepaliveCopiesPerPath: the router says it sends two copies on each path;
// each single-datagram reply goes twice on every live path, one round over the
// paths after the other. A body of one byte (an older router) means one copy,
// and a value out of range is clamped to 1..MaxCopiesPerPath.
func TestKeepaliveCopiesPerPath(t *testing.T) {
	var s Set
	s.Learn(pathA, t0)
	s.Learn(pathB, t0)
	if s.CopiesPerPath() != 1 {
		t.Fatalf("before any keepalive: %d copies per path, want 1", s.CopiesPerPath())
	}
	s.NoteKeepalive([]byte{2, 2})
	if s.RouterPaths() != 2 || s.CopiesPerPath() != 2 {
		t.Fatalf("router paths %d, copies %d; want 2 and 2", s.RouterPaths(), s.CopiesPerPath())
	}
	var l Live
	s.Live(t0, DefaultWindow, &l)
	var out [MaxCopies]netip.AddrPort
	n, extra := l.Copies(&out)
	to := out[:n]
	if n != 4 || extra != 0 || count(to, pathA) != 2 || count(to, pathB) != 2 {
		t.Errorf("reply goes to %v (%d extra), want two copies on each path", to, extra)
	}
	// Every path has its first copy before any has its second.
	for i := 0; i < n; i++ {
		if want := l.Addr(i % l.Len()); to[i] != want {
			t.Errorf("copy %d goes to %v, want %v", i, to[i], want)
		}
	}

	// A one-byte body (an older router) means one copy.
	s.NoteKeepalive([]byte{2})
	if to, extra := copiesOf(&s, t0, DefaultWindow); len(to) != 2 || extra != 0 || count(to, pathA) != 1 || count(to, pathB) != 1 {
		t.Errorf("after a one-byte keepalive: %v (%d extra), want one copy on each path", to, extra)
	}
	// An empty body says nothing and changes nothing.
	s.NoteKeepalive([]byte{2, 3})
	s.NoteKeepalive(nil)
	if s.CopiesPerPath() != 3 {
		t.Errorf("an empty keepalive changed the copies to %d, want 3 kept", s.CopiesPerPath())
	}

	// Out of range: clamped.
	for _, c := range []struct{ body, want int }{{0, 1}, {1, 1}, {4, 4}, {5, MaxCopiesPerPath}, {255, MaxCopiesPerPath}} {
		s.NoteKeepalive([]byte{2, byte(c.body)})
		if s.CopiesPerPath() != c.want {
			t.Errorf("copies %d: %d per path, want %d", c.body, s.CopiesPerPath(), c.want)
		}
		if to, _ := copiesOf(&s, t0, DefaultWindow); len(to) != 2*c.want {
			t.Errorf("copies %d: %d copies of a reply, want %d", c.body, len(to), 2*c.want)
		}
	}
}

// TestCopiesPerPathWithExtras: the copies of a path lagging behind or never
// heard from are made up for as the router does for an uplink that looks down:
// all of them, on fresh paths.
func TestCopiesPerPathWithExtras(t *testing.T) {
	var s Set
	s.Learn(pathA, t0)
	s.Learn(pathB, t0)
	now := t0 + int64(LagBehind) + 100*ms
	s.Learn(pathA, now)           // B lags
	s.NoteKeepalive([]byte{3, 2}) // and a third path never heard from
	to, extra := copiesOf(&s, now, DefaultWindow)
	// Two each on A and B, and two each for B and the missing path, on A.
	if len(to) != 8 || extra != 4 || count(to, pathA) != 6 || count(to, pathB) != 2 {
		t.Errorf("reply goes to %v (%d extra), want six copies on A and two on B", to, extra)
	}
}

// TestCopiesBound: the most copies a reply can get fit in MaxCopies, whatever
// the paths: every live path but one lagging, the rest of the router's paths
// never heard from, and the most copies per path.
func TestCopiesBound(t *testing.T) {
	for live := 1; live <= MaxPaths; live++ {
		var s Set
		now := t0 + int64(LagBehind) + 100*ms
		for i := 0; i < live; i++ {
			at := t0 // lagging
			if i == 0 {
				at = now
			}
			s.Learn(netip.AddrPortFrom(pathA.Addr(), uint16(1000+i)), at)
		}
		s.NoteKeepalive([]byte{255, 255})
		to, extra := copiesOf(&s, now, DefaultWindow)
		want := MaxCopiesPerPath * (live + (live - 1) + (MaxPaths - live))
		if len(to) != want || len(to) > MaxCopies || extra != want-MaxCopiesPerPath*live {
			t.Errorf("%d live paths: %d copies (%d extra), want %d (at most %d)", live, len(to), extra, want, MaxCopies)
		}
	}
}

// TestFullSetReplacesOldest: the table is bounded; a new address takes the place
// of the one heard from least recently.
func TestFullSetReplacesOldest(t *testing.T) {
	var s Set
	for i := 0; i < MaxPaths; i++ {
		s.Learn(netip.AddrPortFrom(pathA.Addr(), uint16(1000+i)), t0+int64(i)*ms)
	}
	s.Learn(pathB, t0+100*ms)
	var l Live
	s.Live(t0+100*ms, DefaultWindow, &l)
	if l.Len() != MaxPaths {
		t.Fatalf("%d live paths, want %d", l.Len(), MaxPaths)
	}
	for i := 0; i < l.Len(); i++ {
		if l.Addr(i) == netip.AddrPortFrom(pathA.Addr(), 1000) {
			t.Errorf("the oldest path is still there")
		}
	}
}

// TestLearnerLearnsBeforeDelivering: the sink sees the path already learned.
func TestLearnerLearnsBeforeDelivering(t *testing.T) {
	var s Set
	var seen int
	next := sinkFunc(func(pid uint64, pkt []byte, now int64) {
		var l Live
		s.Live(now, DefaultWindow, &l)
		seen = l.Len()
	})
	ln := &Learner{Paths: &s, Next: next, From: pathA, Now: t0, Size: 100}
	ln.Deliver(1, nil, t0)
	if seen != 1 {
		t.Errorf("the next sink saw %d paths, want the one just learned", seen)
	}
}

type sinkFunc func(pid uint64, pkt []byte, now int64)

func (f sinkFunc) Deliver(pid uint64, pkt []byte, now int64) { f(pid, pkt, now) }

type nopSink struct{}

func (nopSink) Deliver(uint64, []byte, int64) {}

// TestPerPacketCallsDoNotAllocate: learning, refreshing, keepalives, taking the
// live paths and choosing copies or shard places run per packet.
func TestPerPacketCallsDoNotAllocate(t *testing.T) {
	var s Set
	s.Learn(pathA, t0)
	s.Learn(pathC, t0)
	now := t0
	var out [MaxCopies]netip.AddrPort
	var placement [64]int
	ln := &Learner{Paths: &s, Next: nopSink{}}
	var sink interface {
		Deliver(uint64, []byte, int64)
	} = ln
	allocs := testing.AllocsPerRun(1000, func() {
		now += ms
		s.Learn(pathA, now)
		s.Refresh(pathB, 100, now)
		s.NoteKeepalive([]byte{3, 2})
		*ln = Learner{Paths: &s, Next: nopSink{}, From: pathB, Now: now}
		sink.Deliver(1, nil, now)
		var l Live
		s.Live(now, DefaultWindow, &l)
		l.Copies(&out)
		l.Place(5, placement[:0])
	})
	if allocs != 0 {
		t.Errorf("%v allocations per packet", allocs)
	}
}

func BenchmarkReply(b *testing.B) {
	var s Set
	s.Learn(pathA, t0)
	s.Learn(pathB, t0)
	s.NoteKeepalive([]byte{3})
	var out [MaxCopies]netip.AddrPort
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		now := t0 + int64(i)*ms
		s.Learn(pathA, now)
		s.Refresh(pathB, 100, now)
		var l Live
		s.Live(now, DefaultWindow, &l)
		l.Copies(&out)
	}
}

// TestUnvalidatedPathGetsThreeTimes: an address learned from datagrams may
// receive at most AmplificationLimit times their bytes (challenges included)
// until it answers the challenge with its token; then it is unlimited.
func TestUnvalidatedPathGetsThreeTimes(t *testing.T) {
	var s Set
	c, due := s.Heard(pathA, 1000, t0)
	if !due || c.To != pathA {
		t.Fatalf("no challenge for a new path: %+v %v", c, due)
	}
	if _, due := s.Heard(pathA, 400, t0+ms); due {
		t.Errorf("a second challenge within ChallengeEvery")
	}
	budget := AmplificationLimit*1400 - ChallengeCost
	sent := 0
	for s.Spend(pathA, 100) {
		sent += 100
		if sent > 10*1400 {
			break
		}
	}
	if sent > budget || sent < budget-100 {
		t.Fatalf("sent %d bytes to an unvalidated path after 1400 received, want about %d", sent, budget)
	}
	var l Live
	s.Live(t0+2*ms, DefaultWindow, &l)
	if l.Len() == 1 && (!l.Limited() || !l.Limits(pathA)) {
		t.Errorf("an unvalidated path is not marked limited")
	}
	wrong := c.Token
	wrong[0]++
	if s.Validate(pathA, wrong[:]) || s.Validate(pathB, c.Token[:]) {
		t.Fatalf("validated with a wrong token or from another address")
	}
	if !s.Validate(pathA, c.Token[:]) || !s.Validated(pathA) {
		t.Fatalf("not validated by its token")
	}
	for i := 0; i < 1000; i++ {
		if !s.Spend(pathA, 1400) {
			t.Fatalf("a validated path is limited")
		}
	}
	s.Live(t0+2*ms, DefaultWindow, &l)
	if l.Len() != 1 || l.Limited() {
		t.Errorf("validated path: %d live, limited %v", l.Len(), l.Limited())
	}
	if s.Spend(pathB, 1) {
		t.Errorf("an address the set does not hold may be sent to")
	}
}

// TestUnvalidatedPathsDoNotPushOutValidated: addresses from released datagrams
// take the place of other unvalidated ones, not of the router's validated paths.
func TestUnvalidatedPathsDoNotPushOutValidated(t *testing.T) {
	var s Set
	s.Learn(pathA, t0)
	for i := 0; i < 3*MaxPaths; i++ {
		s.Heard(netip.AddrPortFrom(pathB.Addr(), uint16(2000+i)), 100, t0+int64(i+1)*ms)
	}
	if !s.Validated(pathA) {
		t.Fatalf("the validated path was pushed out")
	}
}

// TestLocalPerPath: each path keeps the proxy address it reached, so replies
// to two paths that reached two addresses of a multi-homed proxy leave from
// each one's own (a single per-session address sent one path's replies from
// the other's address, which its relay dropped).
func TestLocalPerPath(t *testing.T) {
	var s Set
	a := netip.MustParseAddrPort("198.18.0.2:5000")
	b := netip.MustParseAddrPort("198.18.1.2:5000")
	la, lb := netip.MustParseAddr("198.18.40.2"), netip.MustParseAddr("198.18.41.2")
	s.Heard(a, 100, 1)
	s.Heard(b, 100, 1)
	s.SetLocal(a, la)
	s.SetLocal(b, lb)
	s.SetLocal(netip.MustParseAddrPort("198.18.2.2:5000"), la) // not a path: ignored
	if got := s.LocalOf(a); got != la {
		t.Errorf("path a: local %v, want %v", got, la)
	}
	if got := s.LocalOf(b); got != lb {
		t.Errorf("path b: local %v, want %v", got, lb)
	}
	if got := s.LocalOf(netip.MustParseAddrPort("198.18.2.2:5000")); got.IsValid() {
		t.Errorf("unknown path: local %v, want none", got)
	}
}
