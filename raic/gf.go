package raic

// GF(2^8) arithmetic with the polynomial 0x11d, the field klauspost/reedsolomon
// computes in, so its SIMD encoder and this package's decoder agree byte for byte.
// The decoder does its own solving because the library's Reconstruct allocates
// work slices on every call, and the per-packet path must not allocate.

var (
	gfExp [512]byte
	gfLog [256]byte
	gfMul [256][256]byte // full product table: one row is a byte-wise multiplier
)

func init() {
	x := 1
	for i := range 255 {
		gfExp[i] = byte(x)
		gfLog[x] = byte(i)
		x <<= 1
		if x&0x100 != 0 {
			x ^= 0x11d
		}
	}
	for i := 255; i < 512; i++ {
		gfExp[i] = gfExp[i-255]
	}
	for a := 1; a < 256; a++ {
		for b := 1; b < 256; b++ {
			gfMul[a][b] = gfExp[int(gfLog[a])+int(gfLog[b])]
		}
	}
}

func gfInv(a byte) byte {
	if a == 0 {
		return 0
	}
	return gfExp[255-int(gfLog[a])]
}

// cauchy returns the coefficient of data shard c in parity row r for k data
// shards. With x_r = k+r and y_c = c all distinct, every square submatrix of the
// Cauchy matrix is invertible, so [I; C] is MDS: any k rows rebuild the data.
// Each column is then divided by its first-row entry, which keeps the code MDS
// (it only rescales the data symbols) and makes the first parity row all ones:
// parity 0 is the plain XOR of the data, so RS k+1 equals RAIC-5 and the common
// repair (one data shard lost, parity 0 present) runs at XOR speed.
func cauchy(k, r, c int) byte {
	raw := gfInv(byte(k+r) ^ byte(c))
	return gfMul[raw][byte(k)^byte(c)] // raw / (1/(k^c))
}

// cauchyMatrix builds the parity rows handed to the library encoder.
func cauchyMatrix(k, m int) [][]byte {
	rows := make([][]byte, m)
	for r := range rows {
		rows[r] = make([]byte, k)
		for c := range k {
			rows[r][c] = cauchy(k, r, c)
		}
	}
	return rows
}

// mulAdd sets dst[i] ^= c*src[i].
func mulAdd(dst, src []byte, c byte) {
	switch c {
	case 0:
		return
	case 1:
		xorInto(dst, src)
		return
	}
	row := &gfMul[c]
	src = src[:len(dst)]
	i := 0
	for ; i+4 <= len(src); i += 4 {
		s := src[i : i+4 : i+4]
		d := dst[i : i+4 : i+4]
		d[0] ^= row[s[0]]
		d[1] ^= row[s[1]]
		d[2] ^= row[s[2]]
		d[3] ^= row[s[3]]
	}
	for ; i < len(src); i++ {
		dst[i] ^= row[src[i]]
	}
}

// xorInto sets dst[i] ^= src[i] for the common length, eight bytes at a time.
func xorInto(dst, src []byte) {
	n := min(len(dst), len(src))
	i := 0
	for ; i+8 <= n; i += 8 {
		d := dst[i : i+8 : i+8]
		s := src[i : i+8 : i+8]
		v := uint64(d[0]) | uint64(d[1])<<8 | uint64(d[2])<<16 | uint64(d[3])<<24 |
			uint64(d[4])<<32 | uint64(d[5])<<40 | uint64(d[6])<<48 | uint64(d[7])<<56
		w := uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
			uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
		v ^= w
		d[0], d[1], d[2], d[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
		d[4], d[5], d[6], d[7] = byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56)
	}
	for ; i < n; i++ {
		dst[i] ^= src[i]
	}
}

// invert inverts the k×k matrix a in place into inv using Gauss-Jordan
// elimination; it reports false when a is singular (it never is for rows of an
// MDS code, but hostile duplicates must not make it loop or panic).
func invert(a *[MaxK][MaxK]byte, inv *[MaxK][MaxK]byte, k int) bool {
	for i := range k {
		for j := range k {
			inv[i][j] = 0
		}
		inv[i][i] = 1
	}
	for col := range k {
		p := -1
		for r := col; r < k; r++ {
			if a[r][col] != 0 {
				p = r
				break
			}
		}
		if p < 0 {
			return false
		}
		if p != col {
			a[p], a[col] = a[col], a[p]
			inv[p], inv[col] = inv[col], inv[p]
		}
		if c := a[col][col]; c != 1 {
			ic := gfInv(c)
			row := &gfMul[ic]
			for j := range k {
				a[col][j] = row[a[col][j]]
				inv[col][j] = row[inv[col][j]]
			}
		}
		for r := range k {
			if r == col {
				continue
			}
			f := a[r][col]
			if f == 0 {
				continue
			}
			row := &gfMul[f]
			for j := range k {
				a[r][j] ^= row[a[col][j]]
				inv[r][j] ^= row[inv[col][j]]
			}
		}
	}
	return true
}
