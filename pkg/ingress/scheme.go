package ingress

import (
	"sync/atomic"

	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// Scheme carries the RAIC scheme of one direction's incoming data to the
// encoder of the opposite direction, so replies are coded the way the router
// codes its packets. It is packed into one word (scheme, k, m, depth): Note runs
// on the read path, Apply on whichever goroutine seals, one at a time.
type Scheme struct {
	seen    atomic.Uint32
	applied uint32 // touched only by the goroutine that seals
}

// Note remembers the scheme of an authenticated data datagram. The header is
// authenticated data, so only call it after the datagram opened.
func (st *Scheme) Note(h *wire.Header) {
	var p raic.Params
	switch raic.Scheme(h.Scheme) {
	case raic.SchemeCopy:
		p = raic.Params{Scheme: raic.SchemeCopy, K: 1}
	case raic.SchemeXOR:
		p = raic.Params{Scheme: raic.SchemeXOR, K: int(h.Desc.K), M: 1}
	case raic.SchemeRS:
		p = raic.Params{Scheme: raic.SchemeRS, K: int(h.Desc.K), M: int(h.Desc.Count) - int(h.Desc.K)}
	case raic.SchemeTime:
		if h.Desc.Count < 2 {
			return // a fragmented RAICT packet says nothing about the depth
		}
		p = raic.Params{Scheme: raic.SchemeTime, K: 1, Depth: int(h.Desc.Count) - 1}
	default:
		return
	}
	if p.K < 1 || p.M < 0 || p.K > 255 || p.M > 255 || p.Depth > 255 {
		return
	}
	// Written only on a change: this runs per data datagram, and a store on
	// every one would bounce the cache line between the reader and the sealer.
	if v := uint32(p.Scheme) | uint32(p.K)<<8 | uint32(p.M)<<16 | uint32(p.Depth)<<24; st.seen.Load() != v {
		st.seen.Store(v)
	}
}

// Apply switches snd to the noted scheme when it changed.
func (st *Scheme) Apply(snd *tunnel.Sender) {
	v := st.seen.Load()
	if v == 0 || v == st.applied {
		return
	}
	// Applied or not (a scheme that cannot be built keeps the old encoder), this
	// value is not tried again.
	st.applied = v
	p := raic.Params{Scheme: raic.Scheme(v & 0xff), K: int(v >> 8 & 0xff), M: int(v >> 16 & 0xff), Depth: int(v >> 24)}
	if p.Validate() == nil {
		snd.SetParams(p)
	}
}
