# berth build, test and benchmark entry points. See README.md.
SHELL := /bin/bash
GO ?= go
BIN := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo v0.0.0-dev)
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null)
K8S_VERSION := $(shell awk '$$1=="k8s.io/kubernetes"{print $$2}' go.mod)
K8S_MAJOR := $(word 1,$(subst ., ,$(patsubst v%,%,$(K8S_VERSION))))
K8S_MINOR := $(word 2,$(subst ., ,$(patsubst v%,%,$(K8S_VERSION))))

# providerless drops the in-tree cloud providers; the rest trims optional
# code paths an edge distribution does not use.
TAGS := providerless netcgo osusergo sqlite_omit_load_extension urfave_cli_no_docs
VPKG := github.com/berth-io/berth/pkg/version
LDFLAGS := -s -w \
	-X $(VPKG).Version=$(VERSION) -X $(VPKG).GitCommit=$(COMMIT) \
	$(foreach p,k8s.io/component-base/version k8s.io/client-go/pkg/version,\
	  -X $(p).gitVersion=$(K8S_VERSION) -X $(p).gitMajor=$(K8S_MAJOR) -X $(p).gitMinor=$(K8S_MINOR) \
	  -X $(p).gitTreeState=clean -X $(p).buildDate=1970-01-01T00:00:00Z)
# The host's architecture names the air-gap bundle the tests use.
ARCH ?= $(shell $(GO) env GOARCH)
GOBUILD := CGO_ENABLED=1 $(GO) build -trimpath -tags "$(TAGS)" -ldflags "$(LDFLAGS)"

# Unit tests beside the code (some, as root, start bin/berth or use network
# namespaces: pkg/flannel).
UNIT_PKGS := ./pkg/... ./images/... ./cmd/berth-images/...
# Integration tests start the real server binary.
INTEGRATION_PKGS := ./test/integration/...
# End-to-end tests run a real single-node cluster with locally built images;
# test/e2e/multinode runs several nodes in their own namespaces.
E2E_PKGS := ./test/e2e/...

.PHONY: all build test unit integration e2e bench deps run clean vet

all: build

build: $(BIN)/berth $(BIN)/berth-agent

# The helper binaries (runc, containerd, shim, CNI plugins, crictl) are
# embedded as pkg/data/assets/payload.tar.zst; see mk/helpers.mk.
$(BIN)/berth: helpers FORCE
	@mkdir -p $(BIN)
	$(GOBUILD) -o $@ ./cmd/berth

# The agent-only binary: no control plane linked (see pkg/agent's import test).
$(BIN)/berth-agent: helpers FORCE
	@mkdir -p $(BIN)
	$(GOBUILD) -o $@ ./cmd/berth-agent

FORCE:

# Host packages berth's tests and nodes need (Debian/Ubuntu).
deps:
	@if command -v apt-get >/dev/null; then \
	  arch=$$(dpkg --print-architecture); need=""; for p in gcc libc6-dev pkg-config libseccomp-dev iptables iproute2 procps conntrack ipset kmod shellcheck systemd curl postgresql mariadb-server mmdebstrap; do \
	    dpkg-query -W -f='$${Status} $${Architecture}\n' $$p 2>/dev/null | grep -Eq "install ok installed ($$arch|all)$$" || need="$$need $$p"; done; \
	  if [ -n "$$need" ]; then \
	    apt-get update -qq || echo "make deps: apt-get update failed for some index; trying with what it has" >&2; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need; fi; \
	else echo "make deps: no apt-get; install gcc, iptables, iproute2, conntrack, ipset, kmod yourself" >&2; fi

vet:
	$(GO) vet -tags "$(TAGS)" ./...

unit: build airgap
	BERTH_BIN=$(CURDIR)/$(BIN)/berth BERTH_AIRGAP_REQUIRED=1 $(GO) test -count=1 -tags "$(TAGS)" $(UNIT_PKGS)

# BERTH_BIN points the integration tests at the binary built once here.
integration: build
	BERTH_BIN=$(CURDIR)/$(BIN)/berth BERTH_DB_REQUIRED=1 $(GO) test -count=1 -timeout 30m -tags "$(TAGS)" -v $(INTEGRATION_PKGS)

# BERTH_IMAGES: the image tarballs `make images` built, imported by the
# tests through the air-gap directory; BERTH_AIRGAP: the add-ons' bundle. -p 1: one package at a time (the
# single-node suite's cleanup fails on any berth process left on the host,
# the multi-node one's included). BERTH_RELEASE_DIR: this architecture's
# release (mk/release.mk), which test/e2e/install installs as users do.
e2e: build airgap release-$(ARCH)
	BERTH_BIN=$(CURDIR)/$(BIN)/berth BERTH_IMAGES=$(CURDIR)/dist/images BERTH_DB_REQUIRED=1 \
	  BERTH_AIRGAP=$(CURDIR)/$(AIRGAP_DIR)/berth-airgap-images-$(ARCH).tar.zst \
	  BERTH_RELEASE_DIR=$(CURDIR)/$(RELEASE_OUT) \
	  $(GO) test -count=1 -p 1 -timeout 30m -tags "$(TAGS)" -v $(E2E_PKGS)

test: unit integration e2e

bench: build airgap
	BERTH_BIN=$(CURDIR)/$(BIN)/berth BERTH_IMAGES=$(CURDIR)/dist/images bash scripts/bench/server.sh; \
	  status=$$?; bash scripts/bench/cleanup-node.sh; exit $$status

# Build and start a single-node cluster in the foreground (as root). The
# air-gap bundle of the images berth's manifests use (pause, CoreDNS, …) goes
# where berth imports it, as an air-gapped user would deliver it; the test
# images stay out.
DATA_DIR ?= /var/lib/berth
run: build airgap
	mkdir -p $(DATA_DIR)/agent/images
	cp -p $(AIRGAP_DIR)/berth-airgap-images-*.tar.zst $(DATA_DIR)/agent/images/
	$(BIN)/berth server --data-dir $(DATA_DIR)

clean: helpers-clean
	rm -rf $(BIN) dist

# Feature makefiles (helper binaries, images, …) live in mk/.
-include mk/*.mk
