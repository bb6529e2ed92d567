package peer

import (
	"net/netip"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/uplink"
)

var (
	rA  = netip.MustParseAddrPort("198.18.70.2:4000")
	rA2 = netip.MustParseAddrPort("198.18.70.2:4001") // remote uplink 0 after NAT rebinding
	rB  = netip.MustParseAddrPort("198.18.71.2:4000")
)

const ms = int64(time.Millisecond)

func newPaths(t *testing.T, uplinks int) *Paths {
	t.Helper()
	p, err := New(Config{Uplinks: uplinks, Health: uplink.HealthConfig{PingInterval: 100 * time.Millisecond, DownAfter: 300 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNewRefusesBadUplinks(t *testing.T) {
	for _, n := range []int{0, -1, MaxUplinks + 1} {
		if _, err := New(Config{Uplinks: n}); err == nil {
			t.Errorf("New(Uplinks: %d) succeeded", n)
		}
	}
}

func TestLearnsNxMPaths(t *testing.T) {
	p := newPaths(t, 2)
	if got := p.Targets(0, nil); len(got) != 0 {
		t.Fatalf("empty table gives targets %v", got)
	}
	if !p.Heard(0, rA, 0, 1*ms) {
		t.Fatal("first datagram from rA not learned")
	}
	if p.Heard(1, rA, 0, 2*ms) {
		t.Fatal("rA learned twice")
	}
	// An IPv4-mapped form of a known address is the same remote.
	if p.Heard(1, netip.AddrPortFrom(netip.AddrFrom16(rA.Addr().As16()), rA.Port()), 0, 2*ms) {
		t.Fatal("IPv4-mapped rA learned as a new address")
	}
	p.Heard(0, rB, 1, 3*ms)
	got := p.Targets(4*ms, nil)
	want := map[Path]bool{{0, rA}: true, {1, rA}: true, {0, rB}: true, {1, rB}: true}
	if len(got) != 4 {
		t.Fatalf("targets %v, want the 4 paths of 2 local uplinks × 2 remote addresses", got)
	}
	for _, g := range got {
		if !want[g] {
			t.Errorf("unexpected target %v", g)
		}
	}
	if c := p.Counters(); c.Learned != 2 {
		t.Errorf("learned %d, want 2", c.Learned)
	}
}

func TestRebindingReplacesQuietAddress(t *testing.T) {
	p := newPaths(t, 1)
	p.Heard(0, rA, 0, 0)
	p.Heard(0, rB, 1, 0)
	// Remote uplink 0 comes back from a new port 2 s later: its old address
	// was quiet for more than RebindQuiet, so it is replaced at once.
	now := 2 * int64(time.Second)
	p.Heard(0, rB, 1, now-ms) // rB stays alive
	if !p.Heard(0, rA2, 0, now) {
		t.Fatal("rebound address not learned")
	}
	got := p.Targets(now, nil)
	if len(got) != 2 || !hasRemote(got, rA2) || !hasRemote(got, rB) || hasRemote(got, rA) {
		t.Fatalf("targets after rebinding %v, want rA2 and rB only", got)
	}
	if c := p.Counters(); c.Rebinds != 1 {
		t.Errorf("rebinds %d, want 1", c.Rebinds)
	}
}

func TestSymmetricNATKeepsAddressesStillHeard(t *testing.T) {
	// One remote uplink behind a symmetric NAT shows one address per local
	// uplink; both are alive, so neither replaces the other.
	p := newPaths(t, 2)
	for i := int64(0); i < 10; i++ {
		now := i * 100 * ms
		p.Heard(0, rA, 0, now)
		p.Heard(1, rA2, 0, now+ms)
	}
	got := p.Targets(time.Second.Nanoseconds(), nil)
	if !hasRemote(got, rA) || !hasRemote(got, rA2) {
		t.Fatalf("targets %v, want both addresses of the symmetric NAT", got)
	}
	if c := p.Counters(); c.Rebinds != 0 {
		t.Errorf("rebinds %d, want 0", c.Rebinds)
	}
}

func TestExpireKeepsStatic(t *testing.T) {
	p := newPaths(t, 1)
	if err := p.Add(rA, Static, -1, 0); err != nil {
		t.Fatal(err)
	}
	p.Heard(0, rB, -1, 0)
	if err := p.Add(rA2, Introduced, -1, 0); err != nil {
		t.Fatal(err)
	}
	p.Expire(int64(DefaultAddrIdle) + ms)
	got := p.Targets(int64(DefaultAddrIdle)+ms, nil)
	if len(got) != 1 || got[0].Remote != rA {
		t.Fatalf("after expiry targets %v, want the static address only", got)
	}
	if c := p.Counters(); c.Expired != 2 {
		t.Errorf("expired %d, want 2", c.Expired)
	}
	// A learned address that is also configured becomes static.
	p.Heard(0, rB, -1, 0)
	p.Add(rB, Static, -1, 0)
	p.Expire(10 * int64(DefaultAddrIdle))
	if p.Len() != 2 {
		t.Fatalf("%d paths after expiry, want 2 static", p.Len())
	}
}

func TestTableBoundEvictsOldestLearned(t *testing.T) {
	p, err := New(Config{Uplinks: 1, MaxRemote: 3})
	if err != nil {
		t.Fatal(err)
	}
	p.Add(rA, Static, -1, 0)
	for i := 0; i < 10; i++ {
		p.Heard(0, netip.AddrPortFrom(rB.Addr(), uint16(5000+i)), -1, int64(i)*ms)
	}
	if p.Len() != 3 {
		t.Fatalf("%d paths, want the bound of 3", p.Len())
	}
	got := p.Targets(20*ms, nil)
	if !hasRemote(got, rA) || !hasRemote(got, netip.AddrPortFrom(rB.Addr(), 5009)) || !hasRemote(got, netip.AddrPortFrom(rB.Addr(), 5008)) {
		t.Fatalf("targets %v: want the static one and the two newest", got)
	}
	if c := p.Counters(); c.Evicted != 8 {
		t.Errorf("evicted %d, want 8", c.Evicted)
	}
	// A table full of static addresses refuses more.
	q, _ := New(Config{Uplinks: 1, MaxRemote: 1})
	q.Add(rA, Static, -1, 0)
	if err := q.Add(rB, Static, -1, 0); err != ErrFull {
		t.Fatalf("Add to a full static table: %v, want ErrFull", err)
	}
	if q.Heard(0, rB, -1, 0) {
		t.Fatal("learned into a table full of static addresses")
	}
}

func TestDeadPathLeavesTargets(t *testing.T) {
	p := newPaths(t, 2)
	p.Heard(0, rA, 0, 0)
	p.Heard(0, rB, 1, 0)
	// Ping every path every 100 ms for 1 s; only paths to rA answer.
	for now := int64(0); now <= 1000*ms; now += 10 * ms {
		var sent []struct {
			pa  Path
			seq uint32
		}
		p.PingsDue(now, func(pa Path, seq uint32) {
			sent = append(sent, struct {
				pa  Path
				seq uint32
			}{pa, seq})
		})
		for _, s := range sent {
			if s.pa.Remote == rA {
				p.OnPong(s.pa.Local, rA, s.seq, now, 0, now+5*ms)
			}
		}
		p.Heard(0, rA, 0, now)
		p.Heard(0, rB, 1, now) // data still arrives from rB: reception is not the question
	}
	got := p.Targets(1000*ms+5*ms, nil)
	if len(got) != 2 || hasRemote(got, rB) {
		t.Fatalf("targets %v, want the two paths to rA only", got)
	}
	st := p.Stats(1005 * ms)
	if len(st) != 4 {
		t.Fatalf("%d path stats, want 4", len(st))
	}
	for _, s := range st {
		if s.Health.Up != (s.Remote == rA) {
			t.Errorf("path %v up=%v", s.Path, s.Health.Up)
		}
		if s.Remote == rA && s.Health.SRTT != 5*time.Millisecond {
			t.Errorf("path %v SRTT %v, want 5ms", s.Path, s.Health.SRTT)
		}
	}
}

func TestAllDownFallsBackToEveryPath(t *testing.T) {
	p := newPaths(t, 1)
	p.Heard(0, rA, 0, 0)
	p.PingsDue(0, func(Path, uint32) {})
	got := p.Targets(time.Second.Nanoseconds(), nil)
	if len(got) != 1 {
		t.Fatalf("targets %v, want the one path although it is down", got)
	}
	if c := p.Counters(); c.Fallback != 1 {
		t.Errorf("fallback %d, want 1", c.Fallback)
	}
}

func TestTargetsAllocatesNothing(t *testing.T) {
	p := newPaths(t, 2)
	p.Heard(0, rA, 0, 0)
	p.Heard(0, rB, 1, 0)
	dst := make([]Path, 0, 8)
	allocs := testing.AllocsPerRun(1000, func() { dst = p.Targets(ms, dst[:0]) })
	if allocs != 0 {
		t.Fatalf("Targets allocates %.1f per call", allocs)
	}
}

func hasRemote(ps []Path, a netip.AddrPort) bool {
	for _, p := range ps {
		if p.Remote == a {
			return true
		}
	}
	return false
}
