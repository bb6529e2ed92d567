package proxy

import (
	"strings"
	"testing"
)

// The per-client session keys are checked, and errors name file, line and key.
func TestClientSessionLimitConfig(t *testing.T) {
	base := `
listen = "127.0.0.1:0"
[[client]]
id = "gamer"
key = "UkFJQwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
allow = ["198.18.41.0/24"]
`
	if _, err := ParseConfig("proxy.toml", base+"max_sessions = 10\nsession_rate = 5\n"); err != nil {
		t.Fatalf("valid limits refused: %v", err)
	}
	for _, bad := range []string{"max_sessions = -1", "session_rate = -3", "session_rate = nan", "session_rate = inf"} {
		_, err := ParseConfig("proxy.toml", base+bad+"\n")
		key := "client.0." + strings.Fields(bad)[0]
		if err == nil || !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), "proxy.toml:") {
			t.Errorf("%s: error %v, want one naming proxy.toml:LINE and %s", bad, err, key)
		}
	}
}
