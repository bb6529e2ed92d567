package router

import (
	"context"

	"github.com/raicnet/raic/pkg/config"
)

// SuppressConfig is the [suppress] table: holding back bulk traffic while a game
// runs.
type SuppressConfig struct {
	Enabled bool `toml:"enabled"`
}

func (s *SuppressConfig) check(c *Config, meta *config.Meta) error { return nil }

func (r *Router) setupSuppression() error                    { return nil }
func (r *Router) startSuppression(ctx context.Context) error { return nil }
func (r *Router) closeSuppression()                          {}

// observeGamePacket is called for every game packet of a session after it was
// sent on (up) or delivered back to the game (down); suppression learns the
// sessions' timing from it. It must not allocate or block.
func (r *Router) observeGamePacket(rs *routerSession, now int64, up bool) {}
