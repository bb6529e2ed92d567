// Package dashboard is the router's live page: one HTML file, embedded in the
// binary, with its script and styles inline and nothing fetched from
// elsewhere. The page polls the router's /status JSON twice a second and
// draws each uplink's latency and loss over the last minutes, the game
// sessions, the suppression level and the peer sessions (each peer's
// scheme, relay state and paths).
package dashboard

import (
	_ "embed"
	"net/http"
)

//go:embed index.html
var page []byte

// Page returns the page's HTML.
func Page() []byte { return page }

// Handler serves the page at / (and 404 for any other path it is mounted
// under).
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/" && req.URL.Path != "/index.html" {
			http.NotFound(w, req)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
		w.Write(page)
	})
}
