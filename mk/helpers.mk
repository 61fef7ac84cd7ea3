# Helper binaries berth ships inside its release binary (issue 3): runc,
# containerd, containerd-shim-runc-v2, crictl and five CNI plugins. Each is a
# separate small program built from its upstream Go module — never copied
# source — and packed into pkg/data/assets/payload.tar.zst, which pkg/data
# embeds and unpacks into <data-dir>/data/<sha256>/bin at start.
#
#   make helpers        binaries in build/helpers/bin, then the payload
#   make helpers-clean  remove both
#
# Everything except crictl resolves through berth's own go.mod (its `tool`
# block keeps those modules and packages in it), so the versions are the
# ones the rest of berth links. crictl is built by exact version with its own go.mod:
# upstream keeps it in package main and its module is not in berth's graph.

HELPERS_DIR := build/helpers
HELPERS_BIN := $(HELPERS_DIR)/bin
PAYLOAD := pkg/data/assets/payload.tar.zst
PAYLOAD_SUM := pkg/data/assets/payload.sha256
CRICTL_VERSION ?= v1.36.0

# Versions come from go.mod (read with awk: this file is parsed by every make
# run, so no `go` call at parse time).
CONTAINERD_MOD := github.com/containerd/containerd/v2
CONTAINERD_VERSION := $(shell awk '$$1=="$(CONTAINERD_MOD)"{print $$2}' go.mod)
CNI_MOD := github.com/containernetworking/plugins
CNI_VERSION := $(shell awk '$$1=="$(CNI_MOD)"{print $$2}' go.mod)
CNI_PLUGINS := main/bridge main/loopback ipam/host-local meta/portmap meta/bandwidth

# containerd without what an edge node does not use: btrfs, devmapper and zfs
# snapshotters, OpenTelemetry tracing, Intel RDT, and systemd notification
# (berth, not its child, is the service systemd watches). CRI, overlayfs,
# native and the runc runtime v2 stay.
CONTAINERD_TAGS := no_btrfs no_devmapper no_zfs no_tracing no_rdt no_systemd urfave_cli_no_docs
CONTAINERD_LDFLAGS := -s -w -X $(CONTAINERD_MOD)/version.Version=$(CONTAINERD_VERSION)

# runc needs cgo (its nsenter is C) and, with the seccomp tag, libseccomp
# (libseccomp-dev): without it runc cannot apply the seccomp profiles the
# kubelet asks for (RuntimeDefault). Linked statically like upstream's
# release so the node needs no libseccomp at run time; static-pie where the
# C library supports it (amd64, arm64), as upstream's Makefile does.
RUNC_TAGS := seccomp urfave_cli_no_docs netgo osusergo
RUNC_PIE = $(filter amd64 arm64,$(shell $(GO) env GOARCH))
RUNC_BUILD = $(if $(RUNC_PIE),-buildmode=pie)
RUNC_LDFLAGS = -s -w $(if $(RUNC_PIE),-linkmode external -extldflags -static-pie,-extldflags -static)

HELPER_GOBUILD := CGO_ENABLED=0 $(GO) build -trimpath
HELPER_FILES := $(addprefix $(HELPERS_BIN)/,runc containerd containerd-shim-runc-v2 crictl \
	$(notdir $(CNI_PLUGINS)))

.PHONY: helpers helpers-bin helpers-clean

helpers: $(PAYLOAD)

helpers-bin: $(HELPER_FILES)

# go build decides whether a binary is stale (FORCE costs a cache check) but
# rewrites its output every time; installing only changed files keeps their
# mtimes, so the payload below is recompressed only when a binary changed.
helper_install = if cmp -s $(1).new $(1); then rm -f $(1).new; else mv -f $(1).new $(1); fi

$(HELPERS_BIN)/runc: FORCE
	@mkdir -p $(HELPERS_BIN)
	@pkg-config --exists libseccomp || { echo "runc needs libseccomp-dev (make deps)" >&2; exit 1; }
	CGO_ENABLED=1 $(GO) build -trimpath $(RUNC_BUILD) -tags "$(RUNC_TAGS)" \
	  -ldflags "$(RUNC_LDFLAGS)" -o $@.new github.com/opencontainers/runc
	@$(call helper_install,$@)

$(HELPERS_BIN)/containerd: FORCE
	@mkdir -p $(HELPERS_BIN)
	$(HELPER_GOBUILD) -tags "$(CONTAINERD_TAGS)" -ldflags "$(CONTAINERD_LDFLAGS)" \
	  -o $@.new $(CONTAINERD_MOD)/cmd/containerd
	@$(call helper_install,$@)

$(HELPERS_BIN)/containerd-shim-runc-v2: FORCE
	@mkdir -p $(HELPERS_BIN)
	$(HELPER_GOBUILD) -tags "urfave_cli_no_docs" -ldflags "$(CONTAINERD_LDFLAGS)" \
	  -o $@.new $(CONTAINERD_MOD)/cmd/containerd-shim-runc-v2
	@$(call helper_install,$@)

define cni_rule
$(HELPERS_BIN)/$(notdir $(1)): FORCE
	@mkdir -p $(HELPERS_BIN)
	$(HELPER_GOBUILD) -ldflags "-s -w -X $(CNI_MOD)/pkg/utils/buildversion.BuildVersion=$(CNI_VERSION)" \
	  -o $$@.new $(CNI_MOD)/plugins/$(1)
	@$$(call helper_install,$$@)
endef
$(foreach p,$(CNI_PLUGINS),$(eval $(call cni_rule,$(p))))

# crictl builds with its own go.mod, outside berth's graph: upstream keeps it
# in package main and its module is not one berth links. `go install
# pkg@version` cannot be used: it asks the proxy for the module's version
# list (deprecation check), which this proxy refuses for cri-tools; building
# in the read-only module cache directory uses exactly the same go.mod and
# go.sum (-mod=readonly: nothing may be written there). Rebuilt only when
# CRICTL_VERSION changes.
$(HELPERS_BIN)/crictl: $(HELPERS_DIR)/crictl-$(CRICTL_VERSION)
	@mkdir -p $(HELPERS_BIN)
	cp -p $< $@

$(HELPERS_DIR)/crictl-$(CRICTL_VERSION):
	@mkdir -p $(HELPERS_DIR)
	dir=$$(cd / && $(GO) mod download -json sigs.k8s.io/cri-tools@$(CRICTL_VERSION) | \
	  awk -F'"' '$$2=="Dir"{print $$4}') && test -n "$$dir" && cd "$$dir" && \
	  GOWORK=off GOFLAGS=-mod=readonly CGO_ENABLED=0 $(GO) build -trimpath \
	  -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$(CRICTL_VERSION)" \
	  -o $(CURDIR)/$@ ./cmd/crictl

# Reproducible tar (sorted, mtime 0, uid/gid 0) with a sha256sums entry,
# zstd with a 32 MiB window; payload.sha256 names the unpacked directory.
$(PAYLOAD): $(HELPER_FILES) $(wildcard hack/mkpayload/*.go pkg/data/payload/*.go)
	$(GO) run ./hack/mkpayload -o $@ -sum $(PAYLOAD_SUM) $(HELPERS_BIN)

helpers-clean:
	rm -rf $(HELPERS_DIR) $(PAYLOAD) $(PAYLOAD_SUM)
