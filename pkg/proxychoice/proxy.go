package proxychoice

import (
	"math"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/uplink"
)

// Proxy is one proxy as the choice sees it: the health of the router's path to
// it over each uplink, and what the proxy said of its own load. Its methods are
// safe from any goroutine.
type Proxy struct {
	// Paths holds the health of each path (uplink, proxy), by uplink.
	Paths []*uplink.Health

	overloaded atomic.Bool  // the last pong or probe reply said so
	upSince    atomic.Int64 // when it last came back after being down; 0 = never down
}

// SetOverloaded records the overload flag of the proxy's latest answer.
func (p *Proxy) SetOverloaded(v bool) {
	if v != p.overloaded.Load() {
		p.overloaded.Store(v)
	}
}

// Overloaded reports what the proxy's latest answer said of its load.
func (p *Proxy) Overloaded() bool { return p.overloaded.Load() }

// BackUp records that the proxy answers again after an outage: it ranks after
// the others until it has answered for Config.Rejoin.
func (p *Proxy) BackUp(now int64) { p.upSince.Store(now) }

// AnyUp reports whether some path to the proxy answers keepalives.
func (p *Proxy) AnyUp(now int64) bool {
	for _, h := range p.Paths {
		if h.Up(now) {
			return true
		}
	}
	return false
}

// OwnRTT is the router's RTT to the proxy: the lowest smoothed RTT of its live
// paths (every copy goes on every path, so the fastest one sets the latency).
// ok is false while no live path has an RTT sample yet.
func (p *Proxy) OwnRTT(now int64) (rtt time.Duration, ok bool) {
	rtt = time.Duration(math.MaxInt64)
	for _, h := range p.Paths {
		if !h.Up(now) {
			continue
		}
		st := h.Stats(now)
		if st.PongsReceived == 0 || st.SRTT <= 0 {
			continue
		}
		ok = true
		rtt = min(rtt, st.SRTT)
	}
	return rtt, ok
}

// Loss is the share of keepalives the proxy misses on every path at once: a
// copy of each packet takes each path, so a packet is lost only when all are.
func (p *Proxy) Loss(now int64) float64 {
	l := 1.0
	for _, h := range p.Paths {
		if !h.Up(now) {
			continue
		}
		l *= h.Stats(now).Loss
	}
	return l
}
