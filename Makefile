# labreg — see README.md. `make up` runs the main job, `make test` the tests.
GO      ?= go
BIN     ?= bin/labreg
DATA    ?= $(CURDIR)/.labreg-data

.PHONY: all build up webserver test fuzz bench vet fmt clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/labreg

# The lab's example images; images/labreg (labreg's own image, for running
# the registry as a swarm service) is left out: it compiles labreg again.
EXAMPLES ?= images/webserver images/myhttpd images/samsung

# The main job: start the registry (and UI), build the example images
# ($(EXAMPLES)) into it, deploy the lab's myhttpd service where this node is a
# swarm manager that trusts the registry (labreg doctor), and keep serving
# until Ctrl-C. LABREG_* variables
# (LABREG_LISTEN, LABREG_REGISTRY, ...) configure both commands.
up: build
	@$(BIN) serve --data $(DATA) & serve=$$!; \
	trap 'kill $$serve 2>/dev/null; wait $$serve' INT TERM; \
	$(BIN) build --wait 60s $(EXAMPLES) || { kill $$serve; wait $$serve; exit 1; }; \
	if $(BIN) doctor >/dev/null 2>&1; then \
	  $(BIN) deploy -f deploy/examples/myhttpd.yaml || { kill $$serve; wait $$serve; exit 1; }; \
	else \
	  echo "labreg: not deploying: this node is not a swarm manager that trusts the registry (see: $(BIN) doctor)" >&2; \
	fi; \
	echo "labreg: example images built; registry still serving (Ctrl-C stops it)" >&2; \
	wait $$serve

# The example base image's binary, for building images/webserver/1 with
# `docker build` (labreg build compiles it itself).
webserver:
	CGO_ENABLED=0 GOOS=linux $(GO) build -trimpath -buildvcs=false -ldflags='-s -w -buildid=' \
		-o images/webserver/1/webserver ./images/webserver

# After the tests, each Go fuzz target (registry/fuzz_test.go) runs for
# FUZZTIME on top of its seed corpus (registry/testdata/fuzz).
FUZZTIME ?= 10s
FUZZPKGS ?= ./registry

# The tests, after the linters (make vet); then the fuzz targets.
test: vet
	$(GO) test -count=1 -timeout 28m ./...
	$(MAKE) fuzz

fuzz:
	@for pkg in $(FUZZPKGS); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$t for $(FUZZTIME)"; \
	    $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

bench:
	$(GO) test -run '^$$' -bench . -benchtime 3x -timeout 30m ./...

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
