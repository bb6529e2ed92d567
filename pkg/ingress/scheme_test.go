package ingress

import (
	"testing"

	"github.com/raicnet/raic/pkg/tunnel"
	"github.com/raicnet/raic/pkg/wire"
	"github.com/raicnet/raic/raic"
)

// The scheme of the router's data is mirrored onto the reply sender; headers
// that say nothing about a scheme, or an impossible one, change nothing.
func TestSchemeMirrorsData(t *testing.T) {
	key, _ := wire.GenerateKey()
	salt, _ := wire.NewSalt()
	aead, _, _ := wire.DeriveKeys(&key, &salt, 1, wire.RoleServer)
	snd, err := tunnel.NewSender(aead, 1, raic.Params{Scheme: raic.SchemeCopy, K: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var st Scheme
	st.Apply(snd) // nothing noted: stays
	if p := snd.Params(); p.Scheme != raic.SchemeCopy {
		t.Fatalf("params %v before any data", p)
	}
	h := wire.Header{Scheme: uint8(raic.SchemeRS), Desc: wire.Desc{K: 2, Count: 4}}
	st.Note(&h)
	st.Apply(snd)
	if p := snd.Params(); p.Scheme != raic.SchemeRS || p.K != 2 || p.M != 2 {
		t.Fatalf("params %v, want rs:2+2", p)
	}
	st.Note(&wire.Header{Scheme: uint8(raic.SchemeTime), Desc: wire.Desc{K: 1, Count: 1}}) // a fragment: no depth
	st.Note(&wire.Header{Scheme: 200})                                                     // unknown
	st.Apply(snd)
	if p := snd.Params(); p.Scheme != raic.SchemeRS {
		t.Fatalf("params %v, want rs:2+2 kept", p)
	}
}
