#!/bin/sh
# Checks the binaries of `make release`: every amd64 one runs on this host and
# prints the version it was built with, every one is statically linked, and
# the arm64 ones are ARM aarch64 executables.
set -eu
dist=${1:-dist}
version=${2:-}
fail=0
for f in "$dist"/linux-amd64/*; do
	out=$("$f" -version) || { echo "FAIL $f -version"; fail=1; continue; }
	case "$out" in
	*"$version"*) echo "ok   $f: $out" ;;
	*) echo "FAIL $f: printed \"$out\", want version $version"; fail=1 ;;
	esac
done
for f in "$dist"/linux-amd64/* "$dist"/linux-arm64/*; do
	desc=$(file -b "$f")
	case "$f" in
	*/linux-arm64/*) want="ARM aarch64" ;;
	*) want="x86-64" ;;
	esac
	case "$desc" in
	*"$want"*"statically linked"*) echo "ok   $f: $want, static" ;;
	*) echo "FAIL $f: $desc"; fail=1 ;;
	esac
done
[ "$(ls "$dist"/linux-amd64 | wc -l)" -eq "$(ls "$dist"/linux-arm64 | wc -l)" ] || { echo "FAIL: the architectures differ in programs"; fail=1; }
exit $fail
