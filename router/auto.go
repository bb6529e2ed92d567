package router

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raicnet/raic/pkg/metrics"
	"github.com/raicnet/raic/pkg/quality"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// scheme = "auto": the router chooses each session's RAIC scheme at run time
// from what the proxy reports it received on each uplink (wire.TypeQuality,
// measured by package quality), with raic.Choose, and changes it when the
// uplinks change. The proxy decodes whatever scheme the datagrams' headers
// say and mirrors it for the replies, so a change needs no negotiation: the
// next packet simply goes out coded the new way.
//
// Hysteresis, so the scheme does not flap on noisy figures:
//   - the uplink figures are smoothed: a higher loss is taken at once, a
//     lower one through an EWMA over report seconds (autoAlpha);
//   - a scheme that no longer meets the target by a margin (its theoretical
//     residual loss over the measured uplinks above autoUpMargin times the
//     target) is left at the next evaluation: protection is urgent;
//   - otherwise the pick must differ from the current scheme (usually a
//     cheaper one, once the loss has gone) for autoConfirm evaluations in a
//     row, and the session must have kept its scheme for autoHold;
//   - each change is logged with its reason and counted.

// AutoScheme is the scheme key's value that asks for the adaptive choice.
const AutoScheme = "auto"

const (
	autoAlpha    = 0.5
	autoUpMargin = 1.5
	autoConfirm  = 3
	autoHold     = 5 * time.Second
	// autoTarget is the residual loss the choice aims at (raic.Policy's
	// default: one packet in a thousand).
	autoTarget = 1e-3
)

// parseScheme reads a scheme key: a raic.ParseParams form, or "auto", which
// starts with copies on every uplink until reports come in.
func parseScheme(s string) (p raic.Params, auto bool, err error) {
	if strings.EqualFold(strings.TrimSpace(s), AutoScheme) {
		p, err = raic.ParseParams("copy")
		return p, true, err
	}
	p, err = raic.ParseParams(s)
	return p, false, err
}

// uplinkQuality is what the reports say of one uplink, over every session and
// proxy that reported on it.
type uplinkQuality struct {
	mu sync.Mutex
	// this second's sums, folded into the smoothed figures by foldQuality
	received, lost, late uint64
	lagSum, lagN         uint64
	lagMax               uint32
	// smoothed
	loss, lateRate, lagMs float64
	reports               uint64
	measured              bool

	lossGauge, lagGauge *metrics.Gauge
	reportsSeen         *metrics.Counter
}

// autoState is the adaptive choice of one flow (on its head).
type autoState struct {
	want    atomic.Pointer[raic.Params] // what the sealing goroutine applies
	mu      sync.Mutex                  // guards the rest (control goroutine and status)
	cur     raic.Params
	why     string
	since   int64 // when cur was chosen
	pending raic.Params
	streak  int
	start   int64
	changes []string // the last autoHistory changes, oldest first
}

// autoHistory bounds the changes a flow remembers for /status.
const autoHistory = 8

func (r *Router) initQuality() {
	r.quality = make([]*uplinkQuality, len(r.uplinks))
	for i, u := range r.uplinks {
		lbl := `{uplink="` + u.name + `"}`
		r.quality[i] = &uplinkQuality{
			lossGauge:   r.reg.Gauge("router_uplink_reported_loss_permille"+lbl, "Loss of the uplink's data datagrams as the proxies report it (smoothed), per mille."),
			lagGauge:    r.reg.Gauge("router_uplink_reported_lag_microseconds"+lbl, "How far the uplink's datagrams arrive behind the fastest uplink's, as reported (smoothed)."),
			reportsSeen: r.reg.Counter("router_uplink_quality_reports_total"+lbl, "Quality reports received on the uplink."),
		}
	}
	r.qbufs = make([][]byte, len(r.uplinks))
	for i := range r.qbufs {
		r.qbufs[i] = make([]byte, wire.MaxDatagram)
	}
	r.replyReports = r.reg.Counter("router_quality_reports_sent_total", "Quality reports of the replies sent to proxies (one per path and interval).")
	r.schemeSwitches = r.reg.Counter("router_scheme_switches_total", "Scheme changes of auto sessions.")
}

// onQuality takes a quality report that arrived on uplink u.
func (r *Router) onQuality(u *uplinkConn, body []byte) {
	var q wire.Quality
	if wire.ParseQuality(body, &q) != nil {
		r.m.malformed.Inc()
		return
	}
	uq := r.quality[u.idx]
	uq.reportsSeen.Inc()
	uq.mu.Lock()
	uq.received += uint64(q.Received)
	uq.lost += uint64(q.Lost)
	uq.late += uint64(q.Late)
	if q.Received > 0 {
		uq.lagSum += uint64(q.LagMeanUs) * uint64(q.Received)
		uq.lagN += uint64(q.Received)
	}
	uq.lagMax = max(uq.lagMax, q.LagMaxUs)
	uq.reports++
	uq.mu.Unlock()
}

// foldQuality smooths the second's report sums into each uplink's figures.
func (r *Router) foldQuality() {
	for _, uq := range r.quality {
		uq.mu.Lock()
		if tot := uq.received + uq.lost; tot > 0 {
			loss := float64(uq.lost) / float64(tot)
			late := float64(uq.late) / float64(tot)
			lag := 0.0
			if uq.lagN > 0 {
				lag = float64(uq.lagSum) / float64(uq.lagN) / 1000
			}
			if !uq.measured {
				uq.loss, uq.lateRate, uq.lagMs, uq.measured = loss, late, lag, true
			} else if loss > uq.loss {
				// Fast up, slow down: a loss step is acted on at the next
				// evaluation, a recovery only once it has lasted.
				uq.loss = loss
				uq.lateRate += autoAlpha * (late - uq.lateRate)
				uq.lagMs += autoAlpha * (lag - uq.lagMs)
			} else {
				uq.loss += autoAlpha * (loss - uq.loss)
				uq.lateRate += autoAlpha * (late - uq.lateRate)
				uq.lagMs += autoAlpha * (lag - uq.lagMs)
			}
			uq.lossGauge.Set(int64(uq.loss*1000 + 0.5))
			uq.lagGauge.Set(int64(uq.lagMs * 1000))
		}
		uq.received, uq.lost, uq.late, uq.lagSum, uq.lagN, uq.lagMax = 0, 0, 0, 0, 0, 0
		uq.mu.Unlock()
	}
}

// adaptSchemes runs once a second on the control goroutine: it smooths the
// reports and re-chooses the scheme of each auto flow.
func (r *Router) adaptSchemes(now int64) {
	r.foldQuality()
	r.byID.Range(func(_ uint64, rs *routerSession) bool {
		if rs.head == rs && rs.auto != nil {
			r.adapt(rs, now)
		}
		return true
	})
}

// adapt re-chooses the scheme of one auto flow (its head).
func (r *Router) adapt(rs *routerSession, now int64) {
	cur := rs.cur.Load()
	if cur == nil {
		return
	}
	q := make([]raic.UplinkQuality, len(r.uplinks))
	loss := make([]float64, len(r.uplinks))
	measured := false
	for i, pt := range cur.px.paths {
		h := pt.health.Stats(now)
		uq := r.quality[i]
		uq.mu.Lock()
		q[i] = raic.UplinkQuality{Loss: uq.loss, RTT: h.SRTT, Up: h.Up}
		measured = measured || uq.measured
		uq.mu.Unlock()
		loss[i] = q[i].Loss
		if !h.Up {
			loss[i] = 1
		}
	}
	if !measured {
		return // no report yet: keep the start scheme
	}
	want, why := raic.Choose(q, autoTarget)
	a := rs.auto
	a.mu.Lock()
	defer a.mu.Unlock()
	if want == a.cur {
		a.streak = 0
		a.why = why
		return
	}
	curRes := raic.ResidualLoss(a.cur, loss)
	urgent := curRes > autoUpMargin*autoTarget
	// Any pick other than the current one counts towards a change, not only
	// the same pick again: near a boundary the pick may alternate between two
	// schemes that both differ from the current one. The latest pick is taken.
	a.pending = want
	a.streak++
	if !urgent && (a.streak < autoConfirm || now-a.since < int64(autoHold)) {
		return
	}
	reason := r.switchReason(a.cur, want, q, curRes, urgent)
	r.log.Info("scheme "+a.cur.String()+" -> "+want.String()+": "+reason,
		"session", rs.id, "why", why)
	r.schemeSwitches.Inc()
	old := a.cur
	a.cur, a.why, a.since, a.streak = want, reason+"; "+why, now, 0
	if len(a.changes) == autoHistory {
		a.changes = append(a.changes[:0], a.changes[1:]...)
	}
	a.changes = append(a.changes, fmt.Sprintf("%.1fs: %v -> %v: %s", float64(now-a.start)/1e9, old, want, reason))
	w := want
	a.want.Store(&w)
}

// switchReason says in a few words why a flow's scheme changes: the uplink
// whose loss moved most, and what the old scheme would lose now.
func (r *Router) switchReason(from, to raic.Params, q []raic.UplinkQuality, curRes float64, urgent bool) string {
	worst := 0
	for i := range q {
		if q[i].Loss > q[worst].Loss || (!q[i].Up && q[worst].Up) {
			worst = i
		}
	}
	var b strings.Builder
	if !q[worst].Up {
		fmt.Fprintf(&b, "uplink %s down", r.uplinks[worst].name)
	} else {
		fmt.Fprintf(&b, "uplink %s loss %.1f%%", r.uplinks[worst].name, 100*q[worst].Loss)
	}
	for i := range q {
		if i != worst {
			fmt.Fprintf(&b, ", %s %.1f%%", r.uplinks[i].name, 100*q[i].Loss)
		}
	}
	if urgent {
		fmt.Fprintf(&b, " (%v would lose %.2g%%, target %.2g%%)", from, 100*curRes, 100*autoTarget)
	} else if raic.Overhead(to) == raic.Overhead(from) {
		fmt.Fprintf(&b, " (%v meets target %.2g%% at the same overhead %.2f, needing fewer shards)", to, 100*autoTarget, raic.Overhead(to))
	} else {
		fmt.Fprintf(&b, " (%v meets target %.2g%% at overhead %.2f instead of %.2f)", to, 100*autoTarget,
			raic.Overhead(to), raic.Overhead(from))
	}
	return b.String()
}

// applyAuto switches the sender of t (the flow's current session) to the
// scheme the control goroutine chose. It runs on the goroutine that seals
// the flow's data, the only one allowed to change a sender's scheme.
func (rs *routerSession) applyAuto(t *routerSession) {
	if rs.auto == nil {
		return
	}
	if w := rs.auto.want.Load(); w != nil && t.send.Params() != *w {
		t.send.SetParams(*w)
	}
}

// autoStatus is a flow's current scheme and the reason for it, for /status.
func (rs *routerSession) autoStatus() (scheme, why string, changes []string, ok bool) {
	if rs.auto == nil {
		return "", "", nil, false
	}
	rs.auto.mu.Lock()
	defer rs.auto.mu.Unlock()
	return rs.auto.cur.String(), rs.auto.why, append([]string(nil), rs.auto.changes...), true
}

// newAuto is the adaptive state of a new flow that starts with params.
func newAuto(params raic.Params, now int64) *autoState {
	a := &autoState{cur: params, since: now, start: now, why: "auto: copies on every uplink until the proxy's quality reports come in"}
	return a
}

// qualityStatus is one uplink's report figures for /status.
func (r *Router) qualityStatus(i int) (loss, late, lagMs float64, reports uint64) {
	uq := r.quality[i]
	uq.mu.Lock()
	defer uq.mu.Unlock()
	return uq.loss, uq.lateRate, uq.lagMs, uq.reports
}

// autoFor reports whether sessions of a game side choose their scheme at run
// time.
func autoFor(side gameSide) bool {
	switch s := side.(type) {
	case *forward:
		return s.auto
	case *transparent:
		return s.auto
	}
	return false
}

// noteReply counts a data datagram from the proxy that arrived on uplink u
// towards the session's reply figures and, every quality.DefaultInterval,
// sends the proxy a quality report on each path (the reply direction's
// counterpart of the proxy's reports). It runs before the datagram is opened,
// duplicates included: they are what the slower uplinks deliver.
func (r *Router) noteReply(u *uplinkConn, rs *routerSession, h *wire.Header, now int64) {
	if h.Type != wire.TypeData {
		return
	}
	rs.replies.Note(u.idx, h.Packet, h.Desc, now)
	if !rs.replies.Due(now, quality.DefaultInterval) {
		return
	}
	var reps [quality.MaxPaths]quality.Report[int]
	n := rs.replies.Take(now, quality.DefaultInterval, &reps)
	var b [wire.QualityLen]byte
	for i := range reps[:n] {
		k := reps[i].Key
		if k < 0 || k >= len(rs.px.paths) {
			continue
		}
		dg, err := rs.send.SealControl(r.qbufs[u.idx], wire.TypeQuality, reps[i].Q.Put(b[:]), now)
		if err != nil {
			return
		}
		r.sendPath(rs.px.paths[k], dg)
		r.replyReports.Inc()
	}
}
