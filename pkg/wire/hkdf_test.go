package wire

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"testing"

	"golang.org/x/crypto/hkdf"
)

// TestHKDF64MatchesRFC5869 holds the session keys' derivation to the
// library's HKDF-SHA256 for random secrets and salts of the lengths used
// (24 and 32 bytes of salt) and both labels, and to RFC 5869's first test
// vector's first 42 bytes.
func TestHKDF64MatchesRFC5869(t *testing.T) {
	for i := 0; i < 200; i++ {
		secret, salt := make([]byte, 32), make([]byte, 24+8*(i%2))
		rand.Read(secret)
		rand.Read(salt)
		for _, label := range []string{"raic/1 session keys", "raic/1 session keys, epoch"} {
			var got, want [64]byte
			hkdf64(&got, secret, salt, label)
			io.ReadFull(hkdf.New(sha256.New, secret, salt, []byte(label)), want[:])
			if got != want {
				t.Fatalf("secret %x salt %x label %q: %x, want %x", secret, salt, label, got, want)
			}
		}
	}
	// RFC 5869 A.1: IKM 22×0x0b, salt 00..0c, info f0..f9.
	ikm := bytes.Repeat([]byte{0x0b}, 22)
	salt := []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	info := string([]byte{0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9})
	want := []byte{0x3c, 0xb2, 0x5f, 0x25, 0xfa, 0xac, 0xd5, 0x7a, 0x90, 0x43, 0x4f, 0x64, 0xd0, 0x36, 0x2f, 0x2a,
		0x2d, 0x2d, 0x0a, 0x90, 0xcf, 0x1a, 0x5a, 0x4c, 0x5d, 0xb0, 0x2d, 0x56, 0xec, 0xc4, 0xc5, 0xbf,
		0x34, 0x00, 0x72, 0x08, 0xd5, 0xb8, 0x87, 0x18, 0x58, 0x65}
	var got [64]byte
	hkdf64(&got, ikm, salt, info)
	if !bytes.Equal(got[:42], want) {
		t.Fatalf("RFC 5869 A.1: %x, want %x", got[:42], want)
	}
	if a := testing.AllocsPerRun(100, func() { hkdf64(&got, ikm, salt, info) }); a != 0 {
		t.Fatalf("hkdf64 allocates %.0f times", a)
	}
}
