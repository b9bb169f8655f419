# The function app: `make run` to try it, `make test` to check it.
GO     ?= go
PORT   ?= 7071
SOURCES = $(shell find . -name '*.go' -not -path './dist/*') go.mod go.sum

.PHONY: build run lint test fuzz lifecycle bench package clean

## build: the handler binary host.json names
build: handler

handler: $(SOURCES)
	$(GO) build -o handler .

## run: the handler standalone on the embedded task hub, on port $(PORT)
run: handler
	@echo
	@echo "  Fan-out/fan-in on the embedded task hub: http://localhost:$(PORT)/api"
	@echo "  Try:  curl -i -X POST http://localhost:$(PORT)/api/fan_out_fan_in -H 'Content-Type: application/json' -d '{\"workItems\": [\"Task1\", \"Task2\", \"Task3\"]}'"
	@echo "  then: curl -i <the statusQueryGetUri it returns>"
	@echo "  or watch every instance in a browser: http://localhost:$(PORT)/api/status"
	@echo
	FUNCTIONS_CUSTOMHANDLER_PORT=$(PORT) FANOUT_LOG_FORMAT=console DURABLE_TASK_SCHEDULER_CONNECTION_STRING= ./handler

## lint: go vet, formatting, and staticcheck at the version go.mod's tool directive pins
lint:
	$(GO) vet ./...
	@unformatted=$$(gofmt -l $$(find . -name '*.go' -not -path './dist/*')); \
		if [ -n "$$unformatted" ]; then echo "gofmt needed on: $$unformatted"; exit 1; fi
	$(GO) tool staticcheck ./...

## test: lint, every test (end-to-end included) with the race detector, the large
## fan-out, which the race detector slows too much, without it, then the fuzzers briefly
test: lint
	$(GO) test -race -count=1 -timeout 20m ./...
	$(GO) test -count=1 -run 'TestTwentyThousandItems' ./internal/fanout/
	$(MAKE) --no-print-directory fuzz

## fuzz: each fuzz target for FUZZTIME (20,000 inputs); go test takes one -fuzz target per run.
## A count, not a duration: Go 1.26's fuzzer can fail a run whose time is up while a worker is
## still busy ("context deadline exceeded", go.dev/issue/75804). FUZZTIME=10m fuzzes for longer
## Failing inputs are saved under the package's testdata/fuzz, to replay with go test
FUZZTIME ?= 20000x
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseScheduler$$' -fuzztime=$(FUZZTIME) ./internal/config/
	$(GO) test -run '^$$' -fuzz '^FuzzInvocationPayload$$' -fuzztime=$(FUZZTIME) ./internal/customhandler/
	$(GO) test -run '^$$' -fuzz '^FuzzReadStartRequest$$' -fuzztime=$(FUZZTIME) ./functions/
	$(GO) test -run '^$$' -fuzz '^FuzzStartRequest$$' -fuzztime=$(FUZZTIME) ./internal/fanout/

## lifecycle: the randomized lifecycle test at length: LIFECYCLE_ACTIONS actions on each backend,
## for each of LIFECYCLE_RUNS seeds (each run draws its own and prints it)
LIFECYCLE_ACTIONS ?= 300
LIFECYCLE_RUNS    ?= 5
lifecycle:
	$(GO) test ./internal/e2e/ -count=$(LIFECYCLE_RUNS) -timeout 2h -v -run '^TestRandomLifecycle$$' -lifecycle.actions=$(LIFECYCLE_ACTIONS)

## bench: builds the handler and measures it end to end (internal/bench); the results, with the
## machine, go to BENCHMARKS.md. Takes some minutes. BENCHFLAGS=-million adds 1,000,000 items;
## BENCHFLAGS=-partition-sizes=250,500,1000,2000 compares FANOUT_PARTITION_SIZE values
bench:
	$(GO) run ./internal/bench $(BENCHFLAGS)

## package: dist/app.zip, ready for `func azure functionapp publish` or zip deploy (Linux amd64)
package:
	rm -rf dist && mkdir -p dist/app
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -trimpath -ldflags='-s -w' -o dist/app/handler .
	cp -R host.json $(dir $(wildcard */function.json)) dist/app/
	$(GO) run ./internal/zipapp dist/app.zip dist/app
	@echo "dist/app.zip: host.json, $(dir $(wildcard */function.json)) handler (linux/amd64, static)"

clean:
	rm -rf handler dist .durabletask
