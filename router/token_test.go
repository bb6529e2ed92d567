package router

import (
	"strings"
	"testing"
	"time"

	"github.com/raicnet/raic/pkg/token"
	"github.com/raicnet/raic/pkg/wire"
)

// A router with a connect token needs no client_id; its hellos carry the
// token. A token that is not one is refused naming the key.
func TestTokenConfig(t *testing.T) {
	tk := wire.Key{2}
	tok, c, err := token.Mint(&tk, token.Claims{ClientID: "p", Servers: []string{"198.18.41.2:27015"},
		NotBefore: time.Now(), Expires: time.Now().Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	base := `proxy = "198.18.40.2:4500"
[[uplink]]
source = "198.18.10.2"
[[forward]]
listen = "127.0.0.1:27015"
server = "198.18.41.2:27015"
`
	cfg, err := ParseConfig("router.toml", "token = \""+token.Encode(tok)+"\"\nkey = \""+c.ClientKey.String()+"\"\n"+base)
	if err != nil {
		t.Fatal(err)
	}
	if string(cfg.token) != string(tok) || cfg.ClientID == "" {
		t.Fatalf("token %d bytes, client id %q", len(cfg.token), cfg.ClientID)
	}
	_, err = ParseConfig("router.toml", "token = \"!!\"\nkey = \""+c.ClientKey.String()+"\"\n"+base)
	if err == nil || !strings.Contains(err.Error(), ":1: token") {
		t.Fatalf("bad token: %v", err)
	}
	_, err = ParseConfig("router.toml", "token = \"x\"\ntoken_file = \"y\"\nkey = \""+c.ClientKey.String()+"\"\n"+base)
	if err == nil || !strings.Contains(err.Error(), "token_file") {
		t.Fatalf("token and token_file: %v", err)
	}
}
