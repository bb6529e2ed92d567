package gamegen

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// Report is the result of one client run. Durations encode in JSON as
// integer nanoseconds.
type Report struct {
	Server   string        `json:"server"`
	Rate     float64       `json:"rate_pps"`
	Size     int           `json:"size"`
	Duration time.Duration `json:"duration_ns"`
	Warmup   time.Duration `json:"warmup_ns"`

	// AchievedRate is (ticks−1) / (last send − first send) of the measured
	// ticks. SendLag is how late each tick left against its schedule.
	AchievedRate float64      `json:"achieved_rate_pps"`
	SendLag      LatencyStats `json:"send_lag"`
	SendErrors   uint64       `json:"send_errors"`

	// ServerReport tells whether the server answered the report request;
	// without it Up holds only Sent and Down has no Sent or loss.
	ServerReport bool    `json:"server_report"`
	ServerRate   float64 `json:"server_rate_pps"`
	ServerSize   int     `json:"server_size"`
	ServerEchoed uint64  `json:"server_echoed"`

	Up   DirectionStats `json:"up"`   // client → server, measured at the server
	Down DirectionStats `json:"down"` // server's own stream, measured at the client

	Echo           bool         `json:"echo"`
	EchoReceived   uint64       `json:"echo_received"`
	EchoDuplicates uint64       `json:"echo_duplicates"`
	EchoLost       int64        `json:"echo_lost"` // ticks sent without an echo back
	RTT            LatencyStats `json:"rtt"`
}

// ms formats a duration in milliseconds with microsecond resolution.
func ms(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d)/1e6) }

// WriteTable writes the report as an aligned human-readable table.
func (r *Report) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "server %s  rate %.6g pps  size %d B  duration %v  achieved %.2f pps  send lag p50/p99/max %s/%s/%s ms\n",
		r.Server, r.Rate, r.Size, r.Duration, r.AchievedRate, ms(r.SendLag.P50), ms(r.SendLag.P99), ms(r.SendLag.Max))
	if r.ServerReport {
		fmt.Fprintf(w, "server stream %.6g pps  size %d B\n", r.ServerRate, r.ServerSize)
	} else {
		fmt.Fprintln(w, "no report from the server: up-direction receive counts and down-direction loss unknown")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "dir\tsent\trecv\tlost\tloss%\tdup\treord\tlate\tmalformed\tp50 ms\tp99 ms\tp99.9 ms\tmax ms\tjitter ms\tstddev ms\t")
	// Without the server's report, up has no receive side and down no
	// send side: print "-" rather than a misleading zero loss.
	row := func(name string, d *DirectionStats, sendKnown, recvKnown bool) {
		sent := "-"
		if sendKnown {
			sent = fmt.Sprint(d.Sent)
		}
		if !recvKnown {
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t\n", name, sent)
			return
		}
		lost, loss := "-", "-"
		if sendKnown {
			lost, loss = fmt.Sprint(d.Lost), fmt.Sprintf("%.3f", d.LossPct)
		}
		l := &d.Latency
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
			name, sent, d.Received, lost, loss, d.Duplicates, d.Reordered, d.Late, d.Malformed,
			ms(l.P50), ms(l.P99), ms(l.P999), ms(l.Max), ms(l.Jitter), ms(l.StdDev))
	}
	row("up", &r.Up, true, r.ServerReport)
	row("down", &r.Down, r.ServerReport, true)
	if r.Echo {
		l := &r.RTT
		fmt.Fprintf(tw, "rtt\t%d\t%d\t%d\t%.3f\t%d\t-\t-\t-\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
			r.Up.Sent, r.EchoReceived, r.EchoLost, pct(r.EchoLost, r.Up.Sent), r.EchoDuplicates,
			ms(l.P50), ms(l.P99), ms(l.P999), ms(l.Max), ms(l.Jitter), ms(l.StdDev))
	}
	tw.Flush()
	fmt.Fprintf(w, "late = one-way delay above %v (received, not lost)\n", r.Down.Deadline)
}

func pct(n int64, of uint64) float64 {
	if of == 0 {
		return 0
	}
	return 100 * float64(n) / float64(of)
}
