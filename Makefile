# labreg — see README.md. `make up` runs the main job, `make test` the tests.
GO      ?= go
BIN     ?= bin/labreg
DATA    ?= $(CURDIR)/.labreg-data

.PHONY: all build up test bench vet fmt clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/labreg

# The main job: start the registry (and UI), build the example images into it.
up: build
	$(BIN) serve --data $(DATA)

test:
	$(GO) test -count=1 -timeout 28m ./...

bench:
	$(GO) test -run '^$$' -bench . -benchtime 3x -timeout 30m ./...

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }

clean:
	rm -rf bin
