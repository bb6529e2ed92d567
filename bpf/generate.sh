#!/bin/sh
# Regenerates raic_bpfel.o and raic_bpfel.go from raic.c.
#
# Usage: bpf/generate.sh [output-dir]
#
# The output is byte-for-byte reproducible for a given compiler: bpf2go maps
# the source directory to a relative path in the debug info and omits the
# compiler ident, the headers are vendored under include/, and DWARF is
# stripped (BTF stays, the loader needs it). A different clang release may
# still emit different code, so the release the committed files were built
# with is pinned below and a mismatch is reported.
set -eu

PINNED_CLANG_MAJOR=14

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
case $out in /*) ;; *) out=$(pwd)/$out ;; esac

cc=${BPF2GO_CC:-clang}
strip=${BPF2GO_STRIP:-llvm-strip}
for tool in "$cc" "$strip"; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		echo "generate.sh: $tool not found (apt-get install -y clang llvm)" >&2
		exit 1
	fi
done
major=$("$cc" --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -n 1)
if [ "$major" != "$PINNED_CLANG_MAJOR" ]; then
	echo "generate.sh: warning: clang $major, committed objects were built with clang $PINNED_CLANG_MAJOR; output may differ" >&2
fi

# bpf2go is run from this directory so that the paths it records are relative.
cd "$here"
unset BPF2GO_CFLAGS
GOPACKAGE=bpf GOFILE=gen.go go tool bpf2go \
	-go-package bpf \
	-target bpfel \
	-tags linux \
	-cc "$cc" \
	-strip "$strip" \
	-output-dir "$out" \
	-output-stem raic \
	-cflags "-O2 -g -Wall -Werror -mcpu=v3" \
	raic raic.c
