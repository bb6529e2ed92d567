package token

import (
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/raicnet/raic/pkg/wire"
)

// FuzzOpen seals arbitrary claims bytes under the key, as a buggy or hostile
// backend might, and opens them: Open must never panic or read out of bounds,
// whatever the claims say.
func FuzzOpen(f *testing.F) {
	key := wire.Key{5}
	now := time.Unix(1_800_000_000, 0)
	tok, _, _ := Mint(&key, Claims{ClientID: "p", Servers: []string{"198.18.41.0/24:1-2", "[2001:db8::1]:3"},
		NotBefore: now.Add(-time.Second), Expires: now.Add(time.Minute)})
	aead, _ := chacha20poly1305.NewX(key[:])
	pt, _ := aead.Open(nil, tok[1:headerLen], tok[headerLen:], tok[:1])
	f.Add(pt)
	f.Add([]byte{})
	o, _ := NewOpener(&key)
	f.Fuzz(func(t *testing.T, claims []byte) {
		b := make([]byte, headerLen, headerLen+len(claims)+16)
		b[0] = Version
		b = aead.Seal(b, b[1:headerLen], claims, b[:1])
		var out Opened
		o.Open(b, make([]byte, len(b)), now, &out)
	})
}
