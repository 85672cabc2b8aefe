# flowaudit — see README.md. Kernel tests need root; CI=true makes them
# fail instead of skip when BPF is unavailable.

GO        ?= go
CLANG     ?= clang-14
# The pinned compiler: Debian 12's clang-14 package. The committed BPF
# objects are reproduced byte for byte only with this exact version.
CLANG_VERSION := 14.0.6
BIN       := bin/flowaudit
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
TEST_TIMEOUT ?= 30m

.PHONY: all build generate check-clang test test-short lint tidy-check clean demo bench man package

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/flowaudit

# Man pages, one per command: bin/man/flowaudit.1, flowaudit-audit.1,
# flowaudit-catalog-show.1, flowaudit-completion-bash.1 … Dated by the last
# commit (SOURCE_DATE_EPOCH), so that a commit always gives the same pages.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
man: build
	rm -rf bin/man
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(BIN) gen-man bin/man

check-clang:
	@command -v $(CLANG) >/dev/null || { echo "$(CLANG) not found: apt-get install clang-14 llvm-14 libbpf-dev"; exit 1; }
	@$(CLANG) --version | head -1 | grep -q "version $(CLANG_VERSION)" || \
	  { echo "need clang $(CLANG_VERSION) (Debian 12 clang-14) for reproducible objects, have: $$($(CLANG) --version | head -1)"; exit 1; }

# Regenerate the bpf2go output (bpf/flowaudit_bpfel.{go,o}); commit it.
generate: check-clang
	cd bpf && $(GO) generate ./...

# The Debian package (deploy/nfpm.yaml; nfpm pinned in go.mod's tool
# block): binary (static, stripped of DWARF), systemd unit, sysusers and
# logrotate files, docs and examples, into
# $(PKG_OUT)/flowaudit_$(DEB_VERSION)_$(DEB_ARCH).deb.
# DEB_VERSION comes from git describe (deploy/deb-version.sh).
PKG_OUT     ?= bin
DEB_ARCH    ?= $(shell $(GO) env GOARCH)
DEB_VERSION ?= $(shell ./deploy/deb-version.sh '$(VERSION)')

package:
	@mkdir -p $(PKG_OUT) bin/pkg
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS) -s -w" -o bin/pkg/flowaudit ./cmd/flowaudit
	rm -rf bin/pkg/man bin/pkg/completions && mkdir -p bin/pkg/completions
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) bin/pkg/flowaudit gen-man bin/pkg/man && gzip -9n bin/pkg/man/*.1
	for sh in bash zsh fish; do bin/pkg/flowaudit completion $$sh > bin/pkg/completions/$$sh || exit 1; done
	mv bin/pkg/completions/bash bin/pkg/completions/flowaudit.bash
	mv bin/pkg/completions/zsh bin/pkg/completions/_flowaudit
	mv bin/pkg/completions/fish bin/pkg/completions/flowaudit.fish
	FLOWAUDIT_DEB_VERSION='$(DEB_VERSION)' FLOWAUDIT_DEB_ARCH='$(DEB_ARCH)' \
	  $(GO) tool nfpm package --config deploy/nfpm.yaml --packager deb --target $(PKG_OUT)/
	@ls -l $(PKG_OUT)/flowaudit_$(DEB_VERSION)_$(DEB_ARCH).deb

# The lab demo (root): a simulated UTMStack v11 manager in network
# namespaces, recorded and audited. MATRIX=, ROLE=, CONDITIONS=, SITE=,
# DURATION=, OUT= pick another matrix or change the run (see demo/run.sh).
demo: build
	$(foreach v,MATRIX ROLE CONDITIONS SITE DURATION OUT,$(if $(filter command line,$(origin $(v))),$(v)='$($(v))')) ./demo/run.sh

# Benchmarks (root, 10-20 minutes on a 2-vCPU VM): prints one table and
# rewrites BENCHMARKS.md. The peer comparison needs tcpdump, softflowd and
# pmacct, the replay comparison tshark (apt-get install tcpdump softflowd
# pmacct tshark; a missing tool is reported as not measured); the 10 M-flow
# size needs ~10 GiB of available memory (skipped and extrapolated
# otherwise). BENCH_FLAGS= passes flags to cmd/flowbench (see
# bin/flowbench -h). Not part of `make test`.
bench: build
	$(GO) build -o bin/flowbench ./cmd/flowbench
	bin/flowbench -flowaudit $(BIN) $(BENCH_FLAGS)

# The whole suite, kernel tests included (root). This is what CI runs.
test: tidy-check
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

# Unit tests only, no kernel and no compiler needed.
test-short:
	$(GO) test -short -count=1 ./...

# go.mod and go.sum must be exactly what `go mod tidy` writes.
tidy-check:
	$(GO) mod tidy -diff

lint: tidy-check
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

clean:
	rm -rf bin
