# labreg — see README.md. `make up` runs the main job, `make test` the tests.
GO      ?= go
BIN     ?= bin/labreg
DATA    ?= $(CURDIR)/.labreg-data

.PHONY: all build up webserver test fuzz bench bench-small vet fmt clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./cmd/labreg

# The main job: start the registry (and UI), build the lab's example images
# (images/webserver, images/myhttpd, images/samsung; not images/labreg,
# labreg's own image: it recompiles labreg from this checkout, which `make
# up` has just done, and the lab does not run it) into it, deploy the lab's
# myhttpd service where this node is a swarm manager that trusts the
# registry (labreg doctor), and keep serving until Ctrl-C. The terminal
# shows where the registry and UI are, one line per image and what was
# deployed; the server's log goes to $(DATA)/serve.log. On a one-node swarm
# whose engine does not trust the advertised address (no
# insecure-registries entry yet), myhttpd is deployed through
# 127.0.0.1:PORT, which every engine trusts: fine while this node is the
# only one, not once workers join (they cannot pull from this node's
# loopback). LABREG_* variables (LABREG_LISTEN, LABREG_REGISTRY, ...)
# configure every command.
UP_IMAGES ?= images/webserver images/myhttpd images/samsung

up: build
	@mkdir -p $(DATA); \
	$(BIN) serve --data $(DATA) 2>$(DATA)/serve.log & serve=$$!; \
	trap 'kill $$serve 2>/dev/null; wait $$serve' INT TERM; \
	stop() { kill $$serve 2>/dev/null; wait $$serve; echo "labreg: server log: $(DATA)/serve.log" >&2; exit 1; }; \
	$(BIN) build --wait 60s --progress quiet $(UP_IMAGES) || stop; \
	adv=$$($(BIN) config 2>/dev/null | sed -n 's/^  advertise: "\([^"]*\)".*/\1/p'); \
	port=$${adv##*:}; \
	if $(BIN) doctor >/dev/null 2>&1; then \
	  $(BIN) deploy -f deploy/examples/myhttpd.yaml --progress quiet || stop; \
	elif $(BIN) doctor --local --advertise 127.0.0.1:$$port 2>/dev/null | grep -q 'manager of a 1-node swarm'; then \
	  echo "labreg: this engine does not trust $$adv (see: $(BIN) doctor); on this one-node swarm myhttpd pulls through 127.0.0.1:$$port instead." >&2; \
	  echo "labreg: when workers join they cannot pull from 127.0.0.1: trust $$adv on every node, then redeploy (labreg deploy -f deploy/examples/myhttpd.yaml)." >&2; \
	  LABREG_ADVERTISE=127.0.0.1:$$port $(BIN) deploy -f deploy/examples/myhttpd.yaml --progress quiet || stop; \
	else \
	  echo "labreg: not deploying: this node is not a swarm manager that trusts the registry (see: $(BIN) doctor)" >&2; \
	fi; \
	echo "labreg: example images built; registry still serving (Ctrl-C stops it); server log: $(DATA)/serve.log" >&2; \
	wait $$serve

# The example base image's binary, for building images/webserver/1 with
# `docker build` (labreg build compiles it itself).
webserver:
	CGO_ENABLED=0 GOOS=linux $(GO) build -trimpath -buildvcs=false -ldflags='-s -w -buildid=' \
		-o images/webserver/1/webserver ./images/webserver

# After the tests, each Go fuzz target (registry/fuzz_test.go) runs for
# FUZZTIME on top of its seed corpus (registry/testdata/fuzz). A count, not
# a duration: with a duration, go1.26's fuzz coordinator can report its own
# deadline as a failure ("context deadline exceeded", no failing input;
# golang/go#75804, fixed in go1.27) when the machine is busy at the end.
FUZZTIME ?= 20000x
FUZZPKGS ?= ./registry

# The tests, after the linters (make vet); then every benchmark once at a
# small size (bench-small); then the fuzz targets.
test: vet
	$(GO) test -count=1 -timeout 28m ./...
	$(MAKE) bench-small
	$(MAKE) fuzz

# Every benchmark once (-benchtime 1x), small (LABREG_BENCH_SMALL=1: a few
# MiB where they move 256, 30 nodes where 1,000, 300 repositories where
# 10,000), so that a benchmark that no longer works fails the build
# instead of waiting for the next `make bench` to find it broken.
bench-small:
	LABREG_BENCH_SMALL=1 $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 10m ./...

fuzz:
	@for pkg in $(FUZZPKGS); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$t for $(FUZZTIME)"; \
	    $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

# Every benchmark at full size, 3 rounds each.
bench:
	LABREG_BENCH_SMALL= $(GO) test -run '^$$' -bench . -benchtime 3x -timeout 30m ./...

# go vet, gofmt and staticcheck at a pinned version, installed once into
# bin/ (a few minutes to compile; later runs reuse it and the Go cache).
# .ci/run keeps its copy outside the checkout (STATICCHECK=...).
STATICCHECK_VERSION ?= v0.8.2
STATICCHECK         ?= bin/staticcheck-$(STATICCHECK_VERSION)

vet: $(STATICCHECK)
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(STATICCHECK) ./...

$(STATICCHECK):
	@mkdir -p $(dir $@)
	tmp=$$(mktemp -d) && GOBIN=$$tmp $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) && \
		mv $$tmp/staticcheck $@ && rmdir $$tmp

clean:
	rm -rf bin
