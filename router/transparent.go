package router

import (
	"context"

	"github.com/raicnet/raic/pkg/config"
)

// TransparentConfig is the [transparent] table: transparent mode, where the router
// is the LAN's gateway and finds latency-critical sessions on its own.
type TransparentConfig struct {
	Enabled bool `toml:"enabled"`
}

func (t *TransparentConfig) check(c *Config, meta *config.Meta) error { return nil }

func (r *Router) setupTransparent() error                    { return nil }
func (r *Router) startTransparent(ctx context.Context) error { return nil }
func (r *Router) closeTransparent()                          {}
