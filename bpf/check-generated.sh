#!/bin/sh
# Fails when the committed raic_bpfel.o / raic_bpfel.go are not what
# generate.sh produces from the current sources.
#
# Usage: bpf/check-generated.sh
set -eu

here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

if ! "$here/generate.sh" "$tmp" >"$tmp/log" 2>&1; then
	cat "$tmp/log" >&2
	echo "check-generated.sh: regeneration failed" >&2
	exit 1
fi

stale=0
for f in raic_bpfel.o raic_bpfel.go; do
	if [ ! -f "$here/$f" ]; then
		echo "check-generated.sh: bpf/$f is missing" >&2
		stale=1
	elif ! cmp -s "$tmp/$f" "$here/$f"; then
		echo "check-generated.sh: bpf/$f is stale" >&2
		stale=1
	fi
done
if [ "$stale" -ne 0 ]; then
	grep -i warning "$tmp/log" >&2 || true
	echo "check-generated.sh: run bpf/generate.sh and commit the result" >&2
	exit 1
fi
echo "check-generated.sh: generated files are up to date"
