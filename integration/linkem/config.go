// Package linkem emulates an impaired network link for the project's tests and
// benchmarks: fixed delay, jitter (with or without reordering), random and bursty
// (Gilbert–Elliott) loss, duplication, a rate limit with a bounded tail-drop queue
// (which reproduces bufferbloat) and scheduled outages.
//
// The kernel this suite targets has no netem, so the emulation lives here. It is
// split in two: Link is a pure, clock-free decision core (a packet goes in with its
// arrival time and size, a drop cause or departure times come out), unit-tested with
// a fake clock; drivers move real packets according to those decisions. The TUN
// driver (AttachTUN) impairs routed traffic inside a network namespace while keeping
// IP addresses intact; the UDP relay (NewUDPRelay) impairs a UDP path on loopback
// and needs no root.
package linkem

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Duration is a time.Duration that reads and writes as text ("15ms") in TOML,
// JSON and the compact string form, so configuration files stay readable.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(strings.TrimSpace(string(b)))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// UnmarshalJSON accepts a string ("15ms") or a number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		return d.UnmarshalText([]byte(s))
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return err
	}
	*d = Duration(n)
	return nil
}

// Bitrate is a rate in bits per second. As text it takes tc's units: bit, kbit,
// mbit, gbit (powers of 1000); a bare number is bits per second.
type Bitrate uint64

// MarshalText implements encoding.TextMarshaler.
func (r Bitrate) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

func (r Bitrate) String() string {
	switch {
	case r == 0:
		return "0"
	case r%1e9 == 0:
		return strconv.FormatUint(uint64(r/1e9), 10) + "gbit"
	case r%1e6 == 0:
		return strconv.FormatUint(uint64(r/1e6), 10) + "mbit"
	case r%1e3 == 0:
		return strconv.FormatUint(uint64(r/1e3), 10) + "kbit"
	}
	return strconv.FormatUint(uint64(r), 10) + "bit"
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (r *Bitrate) UnmarshalText(b []byte) error {
	s := strings.ToLower(strings.TrimSpace(string(b)))
	mult := 1.0
	for _, u := range []struct {
		suf string
		m   float64
	}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1}} {
		if strings.HasSuffix(s, u.suf) {
			s, mult = strings.TrimSuffix(s, u.suf), u.m
			break
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 || v*mult > 1e13 {
		return fmt.Errorf("linkem: bad rate %q", string(b))
	}
	*r = Bitrate(v * mult)
	return nil
}

// UnmarshalJSON accepts a string ("5mbit") or a number of bits per second.
func (r *Bitrate) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		return r.UnmarshalText([]byte(s))
	}
	var n uint64
	if err := json.Unmarshal(b, &n); err != nil {
		return err
	}
	*r = Bitrate(n)
	return nil
}

// Outage is a window, relative to the link's start, during which every packet is
// dropped. Start is inclusive, End exclusive.
type Outage struct {
	Start Duration `toml:"start" json:"start"`
	End   Duration `toml:"end" json:"end"`
}

// LossStep is a window with a loss probability of its own.
type LossStep struct {
	Start Duration `toml:"start" json:"start"`
	End   Duration `toml:"end" json:"end"`
	Loss  float64  `toml:"loss" json:"loss"`
}

// GE holds raw Gilbert–Elliott parameters, with netem's names: P is the
// probability of moving from the good to the bad state per packet, R from bad to
// good; LossBad (netem's 1-h) and LossGood (netem's 1-k) are the loss
// probabilities inside each state. With LossBad=1 and LossGood=0 (simple Gilbert)
// the mean loss is P/(P+R) and the mean burst length 1/R.
type GE struct {
	P        float64 `toml:"p" json:"p"`
	R        float64 `toml:"r" json:"r"`
	LossBad  float64 `toml:"loss_bad" json:"loss_bad"`
	LossGood float64 `toml:"loss_good" json:"loss_good"`
}

// GEFromMean returns simple-Gilbert parameters with the given average loss
// (0..1) and mean burst length in packets (>= 1).
func GEFromMean(avgLoss, meanBurst float64) (GE, error) {
	if !(avgLoss > 0 && avgLoss < 1) || !(meanBurst >= 1) {
		return GE{}, fmt.Errorf("linkem: gilbert-elliott needs 0 < loss < 1 and burst >= 1, got %v/%v", avgLoss, meanBurst)
	}
	r := 1 / meanBurst
	p := r * avgLoss / (1 - avgLoss)
	if p > 1 {
		return GE{}, fmt.Errorf("linkem: loss %v with burst %v is not reachable", avgLoss, meanBurst)
	}
	return GE{P: p, R: r, LossBad: 1}, nil
}

// Config describes one direction of an emulated link. The zero value is a perfect
// link. Impairments apply in this order: outage, loss, rate limit and queue, delay
// and jitter, duplication.
type Config struct {
	// Delay is the fixed one-way delay added to every packet.
	Delay Duration `toml:"delay" json:"delay"`
	// Jitter adds a uniform random delay in [-Jitter, +Jitter] (the total never goes
	// below zero). Unless Reorder is set a packet never leaves before the one ahead
	// of it: its departure is max(previous departure, arrival+delay+jitter).
	Jitter  Duration `toml:"jitter" json:"jitter"`
	Reorder bool     `toml:"reorder" json:"reorder"`
	// Loss is the Bernoulli loss probability, 0..1. It is ignored when GE is set.
	Loss float64 `toml:"loss" json:"loss"`
	// GE selects bursty Gilbert–Elliott loss.
	GE *GE `toml:"ge" json:"ge,omitempty"`
	// Dup is the probability that a delivered packet is delivered twice.
	Dup float64 `toml:"dup" json:"dup"`
	// Rate limits the link (0: unlimited). Packets wait in a FIFO queue while the
	// link serialises the ones ahead; a packet that would find more than QueueBytes
	// bytes or QueueTime of backlog ahead of it is tail-dropped. With a rate and no
	// queue bound, QueueTime defaults to DefaultQueueTime so memory stays bounded.
	Rate       Bitrate  `toml:"rate" json:"rate"`
	QueueBytes int      `toml:"queue_bytes" json:"queue_bytes"`
	QueueTime  Duration `toml:"queue_time" json:"queue_time"`
	// Outages lists windows relative to the link's start when nothing gets through.
	Outages []Outage `toml:"outages" json:"outages,omitempty"`
	// LossSteps change the Bernoulli loss within windows relative to the
	// link's start (a loss step: clean, then lossy, then clean again); outside
	// them Loss applies. Ignored when GE is set.
	LossSteps []LossStep `toml:"loss_steps" json:"loss_steps,omitempty"`
	// Seed makes the random choices reproducible; 0 picks a random seed, which the
	// link reports (Link.Seed) so a failing run can be replayed.
	Seed uint64 `toml:"seed" json:"seed"`
}

// DefaultQueueTime bounds the queue of a rate-limited link configured without one.
const DefaultQueueTime = Duration(time.Second)

func prob(name string, v float64) error {
	if !(v >= 0 && v <= 1) {
		return fmt.Errorf("linkem: %s %v not in [0,1]", name, v)
	}
	return nil
}

// Validate reports the first inconsistency in c.
func (c *Config) Validate() error {
	if c.Delay < 0 || c.Jitter < 0 || c.QueueTime < 0 || c.QueueBytes < 0 {
		return errors.New("linkem: negative delay, jitter or queue")
	}
	if c.Delay > Duration(time.Hour) || c.Jitter > Duration(time.Hour) || c.QueueTime > Duration(time.Hour) {
		return errors.New("linkem: delay, jitter or queue above one hour")
	}
	if err := prob("loss", c.Loss); err != nil {
		return err
	}
	if err := prob("dup", c.Dup); err != nil {
		return err
	}
	if g := c.GE; g != nil {
		for _, p := range []struct {
			n string
			v float64
		}{{"ge p", g.P}, {"ge r", g.R}, {"ge loss_bad", g.LossBad}, {"ge loss_good", g.LossGood}} {
			if err := prob(p.n, p.v); err != nil {
				return err
			}
		}
	}
	for _, o := range c.Outages {
		if o.Start < 0 || o.End < o.Start {
			return fmt.Errorf("linkem: bad outage %v-%v", o.Start.D(), o.End.D())
		}
	}
	for _, s := range c.LossSteps {
		if s.Start < 0 || s.End < s.Start {
			return fmt.Errorf("linkem: bad loss step %v-%v", s.Start.D(), s.End.D())
		}
		if err := prob("loss step", s.Loss); err != nil {
			return err
		}
	}
	return nil
}

func pct(v float64) string { return strconv.FormatFloat(v*100, 'g', -1, 64) + "%" }

// String returns the compact form that ParseConfig reads.
func (c Config) String() string {
	var p []string
	if c.Delay != 0 {
		p = append(p, "delay="+c.Delay.D().String())
	}
	if c.Jitter != 0 {
		p = append(p, "jitter="+c.Jitter.D().String())
	}
	if c.Reorder {
		p = append(p, "reorder")
	}
	if c.GE != nil {
		g := c.GE
		p = append(p, "gemodel="+pct(g.P)+"/"+pct(g.R)+"/"+pct(g.LossBad)+"/"+pct(g.LossGood))
	} else if c.Loss != 0 {
		p = append(p, "loss="+pct(c.Loss))
	}
	if c.Dup != 0 {
		p = append(p, "dup="+pct(c.Dup))
	}
	if c.Rate != 0 {
		p = append(p, "rate="+c.Rate.String())
	}
	if c.QueueTime != 0 {
		p = append(p, "queue="+c.QueueTime.D().String())
	}
	if c.QueueBytes != 0 {
		p = append(p, "queue="+strconv.Itoa(c.QueueBytes)+"b")
	}
	for _, o := range c.Outages {
		p = append(p, "outage="+o.Start.D().String()+"-"+o.End.D().String())
	}
	if c.Seed != 0 {
		p = append(p, "seed="+strconv.FormatUint(c.Seed, 10))
	}
	return strings.Join(p, ",")
}

// parseProb reads "2%" or "0.02".
func parseProb(s string) (float64, error) {
	s = strings.TrimSpace(s)
	div := 1.0
	if strings.HasSuffix(s, "%") {
		s, div = strings.TrimSuffix(s, "%"), 100
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, err
	}
	v /= div
	if !(v >= 0 && v <= 1) {
		return 0, fmt.Errorf("probability %v not in [0,1]", v)
	}
	return v, nil
}

// parseBytes reads "30000b", "64kb"/"64k" (1000) or "64kib" (1024).
func parseBytes(s string) (int, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	mult := 1.0
	for _, u := range []struct {
		suf string
		m   float64
	}{{"kib", 1024}, {"mib", 1 << 20}, {"kb", 1e3}, {"mb", 1e6}, {"k", 1e3}, {"m", 1e6}, {"b", 1}} {
		if strings.HasSuffix(s, u.suf) {
			s, mult = strings.TrimSuffix(s, u.suf), u.m
			break
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 || v*mult > 1<<40 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return int(v * mult), nil
}

// ParseConfig reads the compact form, comma-separated key=value items:
//
//	delay=15ms jitter=3ms reorder loss=2% ge=3%/4 (average loss / mean burst)
//	gemodel=p/r/lossbad/lossgood dup=1% rate=5mbit queue=200ms|64kb
//	outage=8s-10s (repeatable) seed=1
//
// An empty string is a perfect link.
func ParseConfig(s string) (Config, error) {
	var c Config
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		k, v, _ := strings.Cut(item, "=")
		k = strings.ToLower(strings.TrimSpace(k))
		v = strings.TrimSpace(v)
		var err error
		switch k {
		case "delay":
			err = c.Delay.UnmarshalText([]byte(v))
		case "jitter":
			err = c.Jitter.UnmarshalText([]byte(v))
		case "reorder":
			c.Reorder = v == "" || v == "1" || v == "true"
		case "loss":
			c.Loss, err = parseProb(v)
		case "dup":
			c.Dup, err = parseProb(v)
		case "ge":
			a, b, ok := strings.Cut(v, "/")
			var avg, burst float64
			if !ok {
				err = errors.New("want ge=avgloss/meanburst")
				break
			}
			if avg, err = parseProb(a); err != nil {
				break
			}
			if burst, err = strconv.ParseFloat(strings.TrimSpace(b), 64); err != nil {
				break
			}
			var g GE
			if g, err = GEFromMean(avg, burst); err == nil {
				c.GE = &g
			}
		case "gemodel":
			f := strings.Split(v, "/")
			if len(f) < 2 || len(f) > 4 {
				err = errors.New("want gemodel=p/r[/lossbad[/lossgood]]")
				break
			}
			g := GE{LossBad: 1}
			dst := []*float64{&g.P, &g.R, &g.LossBad, &g.LossGood}
			for i, x := range f {
				if *dst[i], err = parseProb(x); err != nil {
					break
				}
			}
			c.GE = &g
		case "rate":
			err = c.Rate.UnmarshalText([]byte(v))
		case "queue":
			var d time.Duration
			if d, err = time.ParseDuration(v); err == nil {
				c.QueueTime = Duration(d)
			} else {
				c.QueueBytes, err = parseBytes(v)
			}
		case "outage":
			a, b, ok := strings.Cut(v, "-")
			var o Outage
			if !ok {
				err = errors.New("want outage=start-end")
				break
			}
			if err = o.Start.UnmarshalText([]byte(a)); err == nil {
				err = o.End.UnmarshalText([]byte(b))
			}
			c.Outages = append(c.Outages, o)
		case "seed":
			c.Seed, err = strconv.ParseUint(v, 10, 64)
		default:
			err = errors.New("unknown key")
		}
		if err != nil {
			return Config{}, fmt.Errorf("linkem: %q: %v", item, err)
		}
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}
