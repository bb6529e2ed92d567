// Package version holds the suite's version, set at build time with
// -ldflags "-X github.com/raicnet/raic/pkg/version.Version=...".
package version

// Version of the programs.
var Version = "0.1.0-dev"
