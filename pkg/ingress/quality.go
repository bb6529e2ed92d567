package ingress

import (
	"net/netip"

	"github.com/raicnet/raic/pkg/quality"
	"github.com/raicnet/raic/pkg/wire"
)

// noteQuality counts a data datagram of p's session towards the figures of the
// path it came from and, when a report interval has passed, sends each path its
// report (wire.TypeQuality), on that path. Duplicates count too: they are what
// the router's slower uplinks deliver. A duplicate is dropped before it is
// authenticated, so a forged one can skew the figures of a session whose ID
// and packet IDs the forger knows; it can do nothing else. Sessions whose
// answers keep a further hop's packet IDs (Peer.KeepsIDs: an intermediate's
// relayed sessions) get no reports from here.
func (in *Ingress[S]) noteQuality(r *Reader, p *Peer, from netip.AddrPort, now int64) {
	if r.Hdr.Type != wire.TypeData || in.cfg.ReportInterval < 0 || p.KeepsIDs {
		return
	}
	p.Quality.Note(from, r.Hdr.Packet, r.Hdr.Desc, now)
	every := in.cfg.ReportInterval
	if every == 0 {
		every = quality.DefaultInterval
	}
	if !p.Quality.Due(now, every) {
		return
	}
	var reps [quality.MaxPaths]quality.Report[netip.AddrPort]
	n := p.Quality.Take(now, every, &reps)
	b := r.report[:] // the reader's: a local array would escape, one per report
	for i := range reps[:n] {
		// Only to a path the router proved it owns (replypath's challenge):
		// figures can come from datagrams not yet authenticated (duplicates),
		// and a report must never go to an address that only claimed a path.
		if !p.Paths.Validated(reps[i].Key) {
			continue
		}
		if in.Answer(r, p, wire.TypeQuality, reps[i].Q.Put(b[:]), reps[i].Key, now) {
			in.m.reports.Inc()
		}
	}
}

// onQuality takes a router's quality report of the replies it received on one
// path (authenticated): the figures are added to the reply counters.
func (in *Ingress[S]) onQuality(body []byte) {
	var q wire.Quality
	if wire.ParseQuality(body, &q) != nil {
		in.m.malformed.Inc()
		return
	}
	in.m.replyReceived.Add(uint64(q.Received))
	in.m.replyLost.Add(uint64(q.Lost))
	in.m.replyLate.Add(uint64(q.Late))
}
