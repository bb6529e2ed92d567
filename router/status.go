package router

import (
	"encoding/json"
	"net/http"
	"sort"
	"strconv"

	"github.com/raicnet/raic/pkg/dashboard"
	"github.com/raicnet/raic/pkg/mono"
)

// Status is what GET /status returns: what the router is doing now. The live
// page (package dashboard, at /) polls it.
type Status struct {
	Uplinks     []UplinkStatus      `json:"uplinks"`
	Sessions    []SessionStatus     `json:"sessions"`
	Suppression []SuppressionStatus `json:"suppression"` // empty when suppression is off
	Peers       []PeerStatus        `json:"peers,omitempty"`
}

// UplinkStatus is one uplink's health on its path to the first proxy.
type UplinkStatus struct {
	Name        string  `json:"name"`
	Up          bool    `json:"up"`
	RTTMs       float64 `json:"rtt_ms"` // smoothed keepalive RTT
	MinRTTMs    float64 `json:"min_rtt_ms"`
	RTTVarMs    float64 `json:"rttvar_ms"`
	Loss        float64 `json:"loss"` // share of keepalives unanswered (EWMA), 0..1
	Sent        uint64  `json:"datagrams_sent"`
	Received    uint64  `json:"datagrams_received"`
	DSCP        int     `json:"dscp,omitempty"` // the mark of data datagrams, when configured
	DownEvents  uint64  `json:"down_events"`
	PongsSeen   uint64  `json:"pongs"`
	PingsSent   uint64  `json:"pings"`
	UpQueueMs   float64 `json:"up_queue_ms"`
	DownQueueMs float64 `json:"down_queue_ms"`
	// From the proxies' quality reports on this uplink (smoothed): its data
	// datagrams lost and late (0..1), and how far behind the fastest uplink
	// they arrive.
	ReportedLoss float64 `json:"reported_loss"`
	ReportedLate float64 `json:"reported_late"`
	ReportedLag  float64 `json:"reported_lag_ms"`
	Reports      uint64  `json:"quality_reports"`
}

// SessionStatus is one game flow.
type SessionStatus struct {
	ID     string `json:"id"`
	Client string `json:"client"`
	Server string `json:"server"`
	App    string `json:"app"`  // application or operator, "" when unknown
	Rule   string `json:"rule"` // the classifier rule that matched ("port:cs2", "asn:AS32590", "forward")
	Scheme string `json:"scheme"`
	Proxy  string `json:"proxy"`
	// ProxyReason says why the session is on that proxy: "best", "preferred"
	// (the app's preferred proxies, from the app table), "fallback" (every
	// preferred proxy was down), or the reason of its last move ("down",
	// "latency", ...).
	ProxyReason string   `json:"proxy_reason"`
	Preferred   []string `json:"preferred,omitempty"` // the app's preferred proxies
	ExpectedPPS float64  `json:"expected_pps"`        // from the app table or expected_pps

	// scheme = "auto": why the session has its scheme, and its last changes
	// ("12.0s: copy -> rs:2+2: uplink lte loss 9.8% (...)", seconds since it
	// started).
	SchemeWhy     string   `json:"scheme_reason,omitempty"`
	SchemeChanges []string `json:"scheme_changes,omitempty"`
}

// SuppressionStatus is the enforcement level of one uplink, per direction, and
// the reason of its last change.
type SuppressionStatus struct {
	Uplink  string `json:"uplink"`
	Up      string `json:"up"`
	Down    string `json:"down"`
	UpWhy   string `json:"up_reason"`
	DownWhy string `json:"down_reason"`
}

func ms(ns int64) float64 { return float64(ns) / 1e6 }

// Status reports the router's state. It is safe to call at any time (it reads
// atomics and the session table's own locks) and is not on the packet path.
func (r *Router) Status() Status {
	now := mono.Now()
	var st Status
	for _, u := range r.uplinks {
		h := u.health.Stats(now)
		st.Uplinks = append(st.Uplinks, UplinkStatus{
			Name: u.name, Up: h.Up, RTTMs: ms(int64(h.SRTT)), MinRTTMs: ms(int64(h.MinRTT)), RTTVarMs: ms(int64(h.RTTVar)),
			Loss: h.Loss, Sent: u.sent.Load(), Received: u.recv.Load(), DSCP: int(u.tos >> 2),
			DownEvents: h.DownEvents, PongsSeen: h.PongsReceived, PingsSent: h.PingsSent,
			UpQueueMs: ms(int64(h.UpQueue)), DownQueueMs: ms(int64(h.DownQueue)),
		})
		us := &st.Uplinks[len(st.Uplinks)-1]
		us.ReportedLoss, us.ReportedLate, us.ReportedLag, us.Reports = r.qualityStatus(u.idx)
	}
	r.byID.Range(func(_ uint64, rs *routerSession) bool {
		if rs.head != rs || rs.side == nil {
			return true // a control session, or one a flow moved to
		}
		cur := rs.cur.Load()
		if cur == nil {
			cur = rs
		}
		rule := rs.rule
		if rule == "" {
			rule = "forward"
		}
		ss := SessionStatus{
			ID: strconv.FormatUint(rs.id, 16), Client: rs.client.String(), Server: rs.target.String(),
			App: rs.app, Rule: rule, Proxy: cur.px.name,
		}
		if why := rs.chosen.Load(); why != nil {
			ss.ProxyReason = *why
		}
		for _, px := range r.proxies {
			if rs.prefer.Has(px.idx) {
				ss.Preferred = append(ss.Preferred, px.name)
			}
		}
		// An auto session's sender changes scheme under its own lock, so
		// its scheme is read through autoStatus; any other's never changes.
		if scheme, why, changes, ok := rs.autoStatus(); ok {
			ss.Scheme, ss.SchemeWhy, ss.SchemeChanges = scheme, why, changes
		} else {
			ss.Scheme = cur.send.Params().String()
		}
		if rs.expected > 0 {
			ss.ExpectedPPS = 1e9 / float64(rs.expected)
		}
		st.Sessions = append(st.Sessions, ss)
		return true
	})
	sort.Slice(st.Sessions, func(i, j int) bool { return st.Sessions[i].ID < st.Sessions[j].ID })
	st.Peers = r.peerStatus(now)
	if s := r.sup; s != nil && s.rt != nil {
		for _, l := range s.rt.Levels() {
			st.Suppression = append(st.Suppression, SuppressionStatus{Uplink: l.Uplink,
				Up: l.Up.String(), Down: l.Down.String(), UpWhy: l.UpReason, DownWhy: l.DownReason})
		}
	}
	return st
}

// statusRoutes adds /status (JSON) and the live page (/) to the metrics
// listener's mux.
func (r *Router) statusRoutes(mux *http.ServeMux) {
	mux.HandleFunc("/status", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(r.Status())
	})
	mux.Handle("/", dashboard.Handler())
}
