# Build, test, benchmark and demo the suite. `make help` lists the targets.

GO      ?= go
BIN     ?= bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/raicnet/raic/pkg/version.Version=$(VERSION)
# Namespace tests and benchmarks need root; everything else runs as any user.
PROGRAMS := router/cmd/raic-router proxy/cmd/raic-proxy proxy/cmd/raic-rendezvous simple/cmd/raic-simple \
            intermediate/cmd/raic-intermediate proxy/cmd/raic-token \
            integration/cmd/gamegen integration/cmd/linkem integration/cmd/ppserver

# What a release ships: static binaries (no cgo) per architecture in dist/.
RELEASE_PROGRAMS := router/cmd/raic-router proxy/cmd/raic-proxy simple/cmd/raic-simple \
            intermediate/cmd/raic-intermediate proxy/cmd/raic-token proxy/cmd/raic-rendezvous
RELEASE_ARCHS    := amd64 arm64
DIST    ?= dist

.PHONY: help build test vet fmt-check check-generated check-examples generate bench loadtest demo faults fuzz fuzz-short clean release release-check

help:
	@echo "make demo             testbed demo: direct uplinks vs router+proxy (root)"
	@echo "make test             gofmt, go vet, eBPF staleness check, all tests"
	@echo "make build            programs into $(BIN)/"
	@echo "make release          static linux/amd64 and linux/arm64 binaries into $(DIST)/"
	@echo "make release-check    run the amd64 release binaries, check the arm64 ones with file(1)"
	@echo "make bench            benchmark tables (micro, loopback, proxy scale, testbed)"
	@echo "make loadtest         10,000 simulated routers against one proxy: docs/bench-load.md"
	@echo "make faults           fault and attack suite: prints its table to docs/faults.md"
	@echo "make fuzz             every Fuzz target for FUZZTIME each (default 2m)"
	@echo "make generate         rebuild the eBPF objects and Go bindings (clang)"
	@echo "make check-generated  fail when the committed eBPF output is stale"
	@echo "make check-examples   run each program's -check on its examples/ config"

build:
	@mkdir -p $(BIN)
	@for p in $(PROGRAMS); do \
		if [ -d $$p ]; then $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./$$p || exit 1; fi; \
	done
	@ls $(BIN)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# The eBPF objects are committed so that building needs no clang; this fails when
# they no longer match their sources. Without clang it is skipped, except in CI.
check-generated:
	@if command -v clang >/dev/null 2>&1; then sh bpf/check-generated.sh; \
	elif [ -n "$$CI" ]; then echo "check-generated: clang is missing"; exit 1; \
	else echo "check-generated: skipped (no clang; install clang and llvm to run it)"; fi

generate:
	sh bpf/generate.sh

# Every example config must pass its program's -check (run from the root, as
# the examples name each other by path from here).
EXAMPLES := raic-router:examples/router-explicit.toml raic-router:examples/router-transparent.toml \
            raic-proxy:examples/proxy.toml raic-proxy:examples/proxy-studio.toml \
            raic-intermediate:examples/intermediate.toml \
            raic-simple:examples/simple.toml raic-router:examples/router-peer.toml \
            raic-router:examples/router-peer-transparent.toml \
            raic-rendezvous:examples/rendezvous.toml
check-examples:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(GO) build -o "$$tmp/" ./router/cmd/raic-router ./proxy/cmd/raic-proxy \
		./intermediate/cmd/raic-intermediate ./simple/cmd/raic-simple ./proxy/cmd/raic-rendezvous && \
	for e in $(EXAMPLES); do \
		"$$tmp/$${e%%:*}" -check -config "$${e#*:}" || exit 1; \
	done

# Tests that need root (network namespaces, eBPF, TUN) skip with a message when
# not run as root; CI runs as root, so it runs them all.
test: fmt-check vet check-generated check-examples fuzz-short
	$(GO) test -count=1 -p 1 -timeout 30m ./...

# Every Fuzz target, as package:Target. make test runs each for a few seconds
# on top of its committed seeds (f.Add and testdata/fuzz); make fuzz for
# minutes. Each run prints its execs.
FUZZ_TARGETS = ./pkg/wire:FuzzParseOpen ./pkg/wire:FuzzParseQuality ./pkg/token:FuzzOpen ./pkg/proxyproto:FuzzParse ./raic/replay:FuzzWindow ./pkg/config:FuzzDecode \
	./pkg/nat:FuzzParse ./raic:FuzzDecoder ./raic:FuzzRoundTrip ./detect:FuzzImportASN \
	./suppress:FuzzParseConfig ./integration/linkem:FuzzParseConfig ./integration/gamegen:FuzzParseHeader \
	./pkg/rendezvous:FuzzServerHandle ./pkg/peer:FuzzCodedLinkReceive ./pkg/peer:FuzzParseLANFrame
FUZZTIME ?= 2m

fuzz-short:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=4s

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$pkg $$name for $(FUZZTIME)"; \
		run() { $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -parallel 1 $$pkg 2>&1; }; \
		out=$$(run) || { \
			case "$$out" in \
			*"Failing input"*|*testdata/fuzz*) echo "$$out"; exit 1 ;; \
			*"context deadline exceeded"*) echo "  (a worker missed the deadline on a busy machine: once more)"; \
				out=$$(run) || { echo "$$out"; exit 1; } ;; \
			*) echo "$$out"; exit 1 ;; \
			esac; }; \
		echo "$$out" | grep -E 'elapsed:.*execs' | tail -1; \
	done

bench:
	@mkdir -p docs
	$(GO) test -run '^$$' -bench . -benchtime 300ms -benchmem \
		./pkg/... ./raic/... ./detect/... ./suppress/... ./simple/... ./bpf/... | tee docs/bench-micro.txt
	# the proxy's per-packet path on 1 and 2 read loops at once: how it scales over cores
	$(GO) test -run '^$$' -bench HandleDeliverParallel -benchtime 300ms -cpu 1,2 ./pkg/ingress | tee -a docs/bench-micro.txt
	$(GO) run ./integration/cmd/rttbench
	$(GO) run ./integration/cmd/capbench -scale
	# 1 and 2 workers draining queues filled while the proxy was stopped: scaling over 2 cores
	$(GO) run ./integration/cmd/capbench -drain
	@if [ "$$(id -u)" = 0 ]; then \
		$(GO) run ./integration/cmd/demo -schemes && $(GO) run ./integration/cmd/suppressbench; \
	else echo "bench: testbed tables skipped (they need root for network namespaces)"; fi

# 10,000 routers (sessions) on loopback against one proxy, in rising rate
# steps; CI runs a bounded version (TestLoadShort).
loadtest:
	@mkdir -p docs
	$(GO) run ./integration/cmd/capbench -load

faults:
	@mkdir -p docs
	RAIC_FAULTS_LONG=1 RAIC_FAULTS_SOAK=5m RAIC_FAULTS_TABLE=$(CURDIR)/docs/faults.md \
		$(GO) test -count=1 -run '^TestFaults' -v -timeout 20m ./integration/

demo:
	@if [ "$$(id -u)" != 0 ]; then echo "make demo builds network namespaces: run it as root (sudo make demo)"; exit 1; fi
	$(GO) run ./integration/cmd/demo

release:
	@for arch in $(RELEASE_ARCHS); do \
		mkdir -p $(DIST)/linux-$$arch; \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags '-s -w $(LDFLAGS)' \
			-o $(DIST)/linux-$$arch/ $(addprefix ./,$(RELEASE_PROGRAMS)) || exit 1; \
	done
	@ls -l $(DIST)/*

release-check: release
	sh deploy/release-check.sh $(DIST) $(VERSION)

clean:
	rm -rf $(BIN) $(DIST)
