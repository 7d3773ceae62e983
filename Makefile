# walkeeper — build and test. `make test` is the command CI runs (.ci/run).
GO ?= go
BIN := bin/walkeeper
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: build test vet bench clean demo demo-replica demo-writes demo-reads demo-stop

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/walkeeper

# All tests, integration included: real PostgreSQL (15 for the full suite,
# 15 to 18 for the compatibility suite), a real S3 server and HAProxy.
test:
	gofmt -l . | (! grep .) || (echo "gofmt needed on the files above"; exit 1)
	$(GO) vet ./...
	$(GO) test -race -count=1 -parallel 4 -timeout 30m ./...

# Benchmarks measure speed and memory; tests never time anything.
bench:
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./...

# The read-scaling demo (deploy/demo/demo.sh): primary, stream, backup, two
# replicas seeded from the repository, health agents, HAProxy. State in
# $(DEMO_DIR) (default /tmp/walkeeper-demo).
demo:
	deploy/demo/demo.sh up

demo-replica:
	deploy/demo/demo.sh add-replica

demo-writes:
	deploy/demo/demo.sh writes

demo-reads:
	deploy/demo/demo.sh reads

demo-stop:
	deploy/demo/demo.sh down

clean:
	rm -rf bin
