# heapipc — every target runs on a fresh clone with only Go installed
# (gcc, if present, adds the glibc interoperability test).

GO          ?= go
TAGS        ?=
# The four backend combinations: segments x semaphores.
TAGSETS     := none ipc_sysvsem ipc_sysvshm ipc_sysvshm,ipc_sysvsem
CROSS_OS    := darwin freebsd
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
BENCHSTAT   := golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da
BIN         := $(CURDIR)/.bin
PKGS         = $(shell $(GO) list ./...)

.PHONY: demo test fmt-check vet race test-matrix test-386 cross check-tags bench lint fuzz soak clean

## demo: the reference example on the default backends (TAGS=... for others)
demo:
	$(GO) run -tags '$(TAGS)' ./examples/twoproc

## test: everything CI runs — format, vet, race, the 4-combination matrix, 32-bit x86, cross-builds
test: fmt-check vet check-tags race test-matrix test-386 cross
	@echo "make test: all passed"

fmt-check:
	@bad=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi

vet:
	@for t in $(TAGSETS); do tags=$$( [ $$t = none ] || echo $$t ); \
		echo "go vet -tags '$$tags'"; $(GO) vet -tags "$$tags" ./... || exit 1; done

## race: the suite under the race detector on the default backends
race:
	$(GO) test -race -count=1 -timeout 10m ./...

## test-matrix: the whole suite under each of the four backend tag sets
test-matrix:
	@for t in $(TAGSETS); do tags=$$( [ $$t = none ] || echo $$t ); \
		echo "== go test -tags '$$tags'"; $(GO) test -count=1 -timeout 10m -tags "$$tags" ./... || exit 1; done

## test-386: the whole suite as 32-bit x86 programs, on the default backends and
## on SysV segments and semaphores (on an amd64 Linux host whose kernel runs them;
## otherwise it says why not)
test-386:
	@if [ "$$($(GO) env GOHOSTOS GOHOSTARCH | tr '\n' ' ')" != "linux amd64 " ]; then \
		echo "test-386: skipped: not an amd64 Linux host"; exit 0; fi; \
	mkdir -p $(BIN) && GOARCH=386 $(GO) test -c -o $(BIN)/probe386.test ./internal/mem || exit 1; \
	if ! $(BIN)/probe386.test -test.run '^$$' >/dev/null 2>&1; then \
		echo "test-386: skipped: this kernel does not run 32-bit x86 programs"; exit 0; fi; \
	for t in none ipc_sysvshm,ipc_sysvsem; do tags=$$( [ $$t = none ] || echo $$t ); \
		echo "== GOARCH=386 go test -tags '$$tags'"; \
		GOARCH=386 $(GO) test -count=1 -timeout 10m -tags "$$tags" ./... || exit 1; done

## cross: the module and its tests compile for darwin, freebsd and 32-bit arm Linux
cross:
	@for os in $(CROSS_OS); do echo "== GOOS=$$os"; \
		GOOS=$$os $(GO) build ./... || exit 1; \
		for p in $(PKGS); do GOOS=$$os $(GO) test -c -o /dev/null $$p || exit 1; done; done
	@echo "== GOARCH=arm"; GOARCH=arm $(GO) vet ./... || exit 1

## check-tags: the tags select different default-backend files
check-tags:
	@a=$$($(GO) list -f '{{.GoFiles}}' ./backend); \
	b=$$($(GO) list -tags ipc_sysvshm -f '{{.GoFiles}}' ./backend); \
	c=$$($(GO) list -tags ipc_sysvsem -f '{{.GoFiles}}' ./backend); \
	echo "$$a" | grep -q default_shm_posix.go && echo "$$b" | grep -q default_shm_sysv.go && \
	! echo "$$b" | grep -q default_shm_posix.go && echo "$$c" | grep -q default_sem_sysv.go && \
	! echo "$$c" | grep -q default_sem_posix.go || { echo "build tags do not select the default files"; exit 1; }
	@echo "check-tags: ipc_sysvshm/ipc_sysvsem select the sysv default files"

## bench: all Go benchmarks, 5 rounds, summarised by benchstat (bench.txt keeps the raw run)
bench: ipcbench
	@# tee would hide go test's exit status (sh has no pipefail): it is kept aside
	@mkdir -p $(BIN); { $(GO) test -run '^$$' -bench . -count 5 -timeout 60m ./...; echo $$? > $(BIN)/bench.rc; } | tee bench.txt; \
		exit $$(cat $(BIN)/bench.rc)
	$(GO) run $(BENCHSTAT) bench.txt

.PHONY: ipcbench ipcbench-quick

## ipcbench: heapipc beside the stdlib peers, full run: table, $(BIN)/ipcbench.json and .png
ipcbench:
	@mkdir -p $(BIN)
	$(GO) run ./cmd/ipcbench -format json > $(BIN)/ipcbench.json
	$(GO) run ./cmd/ipcbench -in $(BIN)/ipcbench.json -png $(BIN)/ipcbench.png

## ipcbench-quick: the same in under a minute
ipcbench-quick:
	$(GO) run ./cmd/ipcbench -quick

## fuzz: the whole-buffer damage fuzzer (FuzzScribble) for FUZZTIME; its seeds
## already run in make test
FUZZTIME ?= 10m
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzScribble -fuzztime $(FUZZTIME) .

## soak: the kill-anywhere tests with SOAKROUNDS children (2000 by default) killed
## at moments they do not choose, in each of the four backend combinations
SOAKROUNDS ?= 2000
soak:
	@for t in $(TAGSETS); do tags=$$( [ $$t = none ] || echo $$t ); \
		echo "== soak -tags '$$tags'"; HIPC_KILL_ROUNDS=$(SOAKROUNDS) $(GO) test -count=1 -timeout 60m -tags "$$tags" \
		-run 'KilledAnywhere' ./tests || exit 1; done

## lint: staticcheck on every tag set and the cross targets
lint:
	GOBIN=$(BIN) $(GO) install $(STATICCHECK)
	@for t in $(TAGSETS); do tags=$$( [ $$t = none ] || echo $$t ); \
		echo "staticcheck -tags '$$tags'"; $(BIN)/staticcheck -tags "$$tags" ./... || exit 1; done
	@for os in $(CROSS_OS); do echo "staticcheck GOOS=$$os"; GOOS=$$os $(BIN)/staticcheck ./... || exit 1; done
	@for arch in 386 arm; do echo "staticcheck GOARCH=$$arch"; GOARCH=$$arch $(BIN)/staticcheck ./... || exit 1; done

clean:
	$(GO) clean -testcache
	rm -rf $(BIN) bench.txt
