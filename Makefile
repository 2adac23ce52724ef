# fieldsync — see README.md.
GO      ?= go
BIN     ?= bin
PKGS    := ./...
# Cross-compiled targets the agent must build for (SPEC: sites run Linux
# amd64/arm64 boxes and Windows laptops). Static: no cgo.
CROSS   := linux/amd64 linux/arm64 windows/amd64

.PHONY: all build test vet unit cross fuzz bench bench-link bench-link-short bench-netem demo clean

all: build

## build: the agent and hub binaries into ./bin
build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ ./cmd/agent ./cmd/hub

## test: vet, race-enabled unit and end-to-end tests, short fuzzing, cross builds
test: vet unit cross

vet:
	$(GO) vet $(PKGS)

unit:
	$(GO) test -race -timeout 12m $(PKGS)

cross:
	@for t in $(CROSS); do \
		os=$${t%/*}; arch=$${t#*/}; \
		echo "build agent+hub for $$os/$$arch"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -o /dev/null ./cmd/agent || exit 1; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -o /dev/null ./cmd/hub || exit 1; \
	done

## fuzz: run every fuzz target for FUZZTIME each (default 20s)
FUZZTIME ?= 20s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list 'Fuzz.*' $$pkg | grep ^Fuzz); do \
			echo "fuzz $$pkg $$f"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

## bench: benchmarks with baselines in the same run (see docs/benchmarks.md)
bench:
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./internal/wal/ ./internal/ledger/ ./hub/ ./agent/ 2>&1 | tee bench.out

## bench-link: sync over emulated satellite links vs an HTTPS baseline; writes
## docs/benchmarks.md ("Link (issue 4)"). The HTTPS baseline needs root (network
## namespaces, TUN devices) and is skipped with a message otherwise. About 15
## minutes; bench-link-short moves a tenth of the payload in about 3.
bench-link:
	$(GO) test -run '^$$' -bench 'Link|Handshake' -benchtime 1x -timeout 60m ./internal/linkbench/ \
		-args -linkbench.doc=$(CURDIR)/docs/benchmarks.md 2>&1 | tee bench-link.out

## bench-netem: the real agent and hub binaries over real kernel UDP (and an
## HTTPS upload over kernel TCP) between two network namespaces, each SPEC
## profile through tc netem (a TUN link where the kernel has no netem).
## Needs root; about 15 minutes.
bench-netem:
	$(GO) test -run '^$$' -bench Netem -benchtime 1x -timeout 60m ./internal/linkbench/ 2>&1 | tee bench-netem.out

bench-link-short:
	$(GO) test -run '^$$' -bench 'Link|Handshake' -benchtime 1x -short -timeout 20m ./internal/linkbench/ 2>&1 | tee bench-link.out

## demo: a hub and three site agents on loopback, a real sync, the hub's status
demo:
	bash scripts/demo.sh

clean:
	rm -rf $(BIN) bench.out bench-link.out bench-netem.out
