package raic

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Scheme identifies a RAIC coding scheme; it travels in every shard's header.
type Scheme uint8

// The schemes. The numbers follow the RAIC names; 0 is invalid so that a zeroed
// header never decodes as a valid scheme.
const (
	SchemeCopy Scheme = 1 // RAIC-1: plain copies
	SchemeXOR  Scheme = 5 // RAIC-5: k data + 1 XOR parity
	SchemeRS   Scheme = 6 // RAIC-6 and general k+m Reed-Solomon
	SchemeTime Scheme = 7 // RAICT: each packet also XORed with the previous d
)

func (s Scheme) String() string {
	switch s {
	case SchemeCopy:
		return "RAIC-1"
	case SchemeXOR:
		return "RAIC-5"
	case SchemeRS:
		return "RAIC-6"
	case SchemeTime:
		return "RAICT"
	}
	return "scheme(" + strconv.Itoa(int(s)) + ")"
}

// Desc is the 4-byte shard descriptor carried in the header. Its meaning per
// scheme is documented in the package comment.
type Desc struct{ Index, Count, K, Frag uint8 }

// Frag byte layout: the low seven bits are the fragment index, the top bit marks
// the last fragment, so the receiver learns the fragment count from any shard of
// the last fragment without a separate field.
const (
	fragLast    = 0x80
	fragIdxMask = 0x7f
	maxFrags    = 128
)

// Limits. They bound the decoder's fixed-size work areas (the GF(2^8) matrix
// inversion runs on arrays, not on allocated slices) and keep every count within
// the uint8 fields of Desc.
const (
	DefaultMaxShard = 1200
	MaxShardLimit   = 1500 // a shard never exceeds an Ethernet MTU
	minShard        = 16
	MaxK            = 32 // data shards per fragment (XOR, RS)
	MaxM            = 32 // parity shards per fragment (RS)
	MaxTotal        = 64 // K+M for RS
	MaxCopies       = 16
	MaxDepth        = 16 // RAICT depth
	MaxPacket       = 65535
)

// Params selects a scheme and its shape.
type Params struct {
	Scheme    Scheme
	K, M      int // data and parity shards (XOR: M=1; RS: any; Copy: K=1, M=copies-1)
	Depth     int // RAICT depth d
	MaxShard  int // max shard data bytes (default 1200)
	FragAbove int // force X-fragmentation of packets larger than this (0 = only when > MaxShard)
}

func (p Params) maxShard() int {
	if p.MaxShard == 0 {
		return DefaultMaxShard
	}
	return p.MaxShard
}

// Validate reports whether the parameters describe a scheme the codecs support.
func (p Params) Validate() error {
	if p.MaxShard != 0 && (p.MaxShard < minShard || p.MaxShard > MaxShardLimit) {
		return fmt.Errorf("raic: MaxShard %d outside %d..%d", p.MaxShard, minShard, MaxShardLimit)
	}
	if p.FragAbove < 0 || (p.FragAbove > 0 && p.FragAbove < minShard) {
		return fmt.Errorf("raic: FragAbove %d must be 0 or at least %d", p.FragAbove, minShard)
	}
	switch p.Scheme {
	case SchemeCopy:
		if p.K != 1 || p.M < 0 || p.M+1 > MaxCopies {
			return fmt.Errorf("raic: copy needs K=1 and 1..%d copies (K=%d M=%d)", MaxCopies, p.K, p.M)
		}
	case SchemeXOR:
		if p.K < 1 || p.K > MaxK || p.M != 1 {
			return fmt.Errorf("raic: xor needs K in 1..%d and M=1 (K=%d M=%d)", MaxK, p.K, p.M)
		}
	case SchemeRS:
		if p.K < 1 || p.K > MaxK || p.M < 1 || p.M > MaxM || p.K+p.M > MaxTotal {
			return fmt.Errorf("raic: rs needs K in 1..%d, M in 1..%d, K+M <= %d (K=%d M=%d)", MaxK, MaxM, MaxTotal, p.K, p.M)
		}
	case SchemeTime:
		if p.Depth < 1 || p.Depth > MaxDepth {
			return fmt.Errorf("raic: time needs depth 1..%d (got %d)", MaxDepth, p.Depth)
		}
	default:
		return fmt.Errorf("raic: invalid scheme %d", p.Scheme)
	}
	return nil
}

// String gives the human name, e.g. "RAIC-5 2+1", "RAIC-1 x3", "RAICT d=2",
// followed by the forced fragment size and shard budget when they are not default.
func (p Params) String() string {
	var s string
	switch p.Scheme {
	case SchemeCopy:
		s = fmt.Sprintf("RAIC-1 x%d", p.M+1)
	case SchemeXOR, SchemeRS:
		s = fmt.Sprintf("%s %d+%d", p.Scheme, p.K, p.M)
	case SchemeTime:
		s = fmt.Sprintf("RAICT d=%d", p.Depth)
	default:
		s = p.Scheme.String()
	}
	if p.FragAbove > 0 {
		s += fmt.Sprintf(" frag=%d", p.FragAbove)
	}
	if p.MaxShard != 0 && p.MaxShard != DefaultMaxShard {
		s += fmt.Sprintf(" shard=%d", p.MaxShard)
	}
	return s
}

// ParseParams reads the configuration form: "copy" (two copies), "copy:3",
// "xor:2", "rs:2+2", "time:2", each optionally followed by ",frag=600" (force
// fragmentation above 600 bytes) and ",shard=1000" (shard budget).
func ParseParams(s string) (Params, error) {
	parts := strings.Split(strings.TrimSpace(s), ",")
	var p Params
	name, arg, hasArg := strings.Cut(strings.ToLower(strings.TrimSpace(parts[0])), ":")
	num := func(v string) (int, error) {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return 0, fmt.Errorf("raic: bad number %q in %q", v, s)
		}
		return n, nil
	}
	var err error
	switch name {
	case "copy", "raic1", "raic-1":
		p.Scheme, p.K, p.M = SchemeCopy, 1, 1
		if hasArg {
			var n int
			if n, err = num(arg); err != nil {
				return Params{}, err
			}
			p.M = n - 1
		}
	case "xor", "raic5", "raic-5":
		p.Scheme, p.K, p.M = SchemeXOR, 2, 1
		if hasArg {
			if p.K, err = num(arg); err != nil {
				return Params{}, err
			}
		}
	case "rs", "raic6", "raic-6":
		p.Scheme, p.K, p.M = SchemeRS, 2, 2
		if hasArg {
			ks, ms, ok := strings.Cut(arg, "+")
			if !ok {
				return Params{}, fmt.Errorf("raic: rs wants k+m, got %q", arg)
			}
			if p.K, err = num(ks); err != nil {
				return Params{}, err
			}
			if p.M, err = num(ms); err != nil {
				return Params{}, err
			}
		}
	case "time", "raict":
		p.Scheme, p.Depth = SchemeTime, 1
		if hasArg {
			if p.Depth, err = num(arg); err != nil {
				return Params{}, err
			}
		}
	default:
		return Params{}, fmt.Errorf("raic: unknown scheme %q", parts[0])
	}
	for _, opt := range parts[1:] {
		k, v, ok := strings.Cut(strings.TrimSpace(opt), "=")
		if !ok {
			return Params{}, fmt.Errorf("raic: bad option %q", opt)
		}
		n, err := num(v)
		if err != nil {
			return Params{}, err
		}
		switch strings.ToLower(k) {
		case "frag":
			p.FragAbove = n
		case "shard":
			p.MaxShard = n
		default:
			return Params{}, fmt.Errorf("raic: unknown option %q", k)
		}
	}
	if err := p.Validate(); err != nil {
		return Params{}, err
	}
	return p, nil
}

// Errors returned by Encode.
var (
	ErrTooLarge = errors.New("raic: packet too large")
	ErrPID      = errors.New("raic: packet ID 0 is reserved")
)
