# Release artifacts (issue 6): per architecture, the berth and berth-agent
# release binaries, the air-gap image bundle and a checksum file, plus a copy
# of install.sh, in $(RELEASE_OUT):
#
#   berth, berth-arm64, berth-armhf                 server + agent + tools
#   berth-agent, berth-agent-arm64, berth-agent-armhf   agent only
#   berth-airgap-images-{amd64,arm64,arm}.tar.zst
#   sha256sum-{amd64,arm64,arm}.txt                 (names as install.sh and k3s use them)
#
# A release binary is the small static launcher (cmd/berth-launcher) with
# berth and its helper binaries appended as one zstd payload, which it
# unpacks once per version into <data-dir>/data/<sha256>/ and then execs
# (pkg/launcher, hack/mkrelease). Everything is cross-compiled with Debian's
# cross toolchains (cgo: SQLite in berth, libseccomp in runc); `make deps`
# installs them.
#
#   make release                    every RELEASE_ARCHES
#   make release-arm64              one architecture
#   make release-smoke              the release binaries of RELEASE_SMOKE_ARCHES under qemu-user
#   make release-riscv64            an attempt; see docs/architecture.md "Release"
#
# Build trees live in $(RELEASE_BUILD)/<arch>/; a cold build compiles all of
# Kubernetes once per architecture (~6-10 min on 2 cores, ~3 GB to link).
RELEASE_ARCHES ?= amd64 arm64 arm
RELEASE_SMOKE_ARCHES ?= $(RELEASE_ARCHES)
RELEASE_BUILD ?= build/release
RELEASE_OUT ?= dist/artifacts
# external_helpers: berth carries no embedded helper payload (they travel
# beside it). kustomize_disable_go_plugin_support: kubectl's kustomize is the
# only importer of Go's "plugin" package, which makes the linker export every
# symbol dynamically (-rdynamic): 39 MB of .dynsym/.dynstr in berth, 23 MB in
# berth-agent, for a kustomize feature (Go plugins) kubectl never enables.
#
# Release binaries are static, as k3s's are: they run whatever C library
# the host has (a binary linked to Debian 12's glibc 2.36 would not start on
# older distributions), and under qemu-user, where this VM's dynamically
# linked glibc programs hang in pthread_create (see docs/architecture.md).
# Like k3s, the tags keep netcgo: the static glibc's own files and dns
# lookups (built into glibc since 2.34) answer; only NSS modules beyond those
# (a host's nsswitch.conf naming resolve or mdns) would be dlopen'ed from the
# host. (netgo would change the net package and so recompile all of
# Kubernetes per architecture.)
RELEASE_TAGS ?= $(TAGS) external_helpers kustomize_disable_go_plugin_support
RELEASE_LDFLAGS ?= $(LDFLAGS) -linkmode external
# armhf links with gold: Debian 12's BFD ld (binutils 2.40) drops the Thumb
# bit from the IRELATIVE (ifunc) addresses of a static ARM program whose
# .text needs long-branch stubs (over 32 MiB, as berth's 74 MiB does), so
# glibc's start-up jumps into its Thumb ifunc resolvers in ARM mode and the
# program dies before main (SIGSEGV at any size above the branch range; a
# small cgo program links fine).
release_extld = -static$(if $(filter arm,$(1)), -fuse-ld=gold)
# zstd options for the payload. The window (--long=N: 2^N bytes) is what the
# launcher's decoder must hold in memory once, at first start; it may not
# exceed payload.WindowSize, 32 MiB (hack/mkrelease checks).
RELEASE_ZSTD ?= -19 --long=25

# Per GOARCH: GNU triplet (cross gcc, multiarch lib dir, qemu's
# QEMU_LD_PREFIX), Debian architecture, artifact suffix, qemu-user binary.
release_triplet_amd64 := x86_64-linux-gnu
release_triplet_arm64 := aarch64-linux-gnu
release_triplet_arm := arm-linux-gnueabihf
release_triplet_riscv64 := riscv64-linux-gnu
release_deb_amd64 := amd64
release_deb_arm64 := arm64
release_deb_arm := armhf
release_deb_riscv64 := riscv64
release_suffix_amd64 :=
release_suffix_arm64 := -arm64
release_suffix_arm := -armhf
release_suffix_riscv64 := -riscv64
release_qemu_amd64 := qemu-x86_64-static
release_qemu_arm64 := qemu-aarch64-static
release_qemu_arm := qemu-arm-static
release_qemu_riscv64 := qemu-riscv64-static

# The environment of every build for GOARCH $(1): the cross C compiler, and
# pkg-config looking at that architecture's libraries only (runc's
# libseccomp). GOARM=7: armhf is ARMv7 with hardware floating point.
release_env = GOOS=linux GOARCH=$(1) $(if $(filter arm,$(1)),GOARM=7) CC=$(release_triplet_$(1))-gcc \
	PKG_CONFIG_LIBDIR=/usr/lib/$(release_triplet_$(1))/pkgconfig:/usr/share/pkgconfig

# Debian 12 has no riscv64 packages (riscv64 became a release architecture
# in Debian 13), so no libseccomp for it: its runc is built here, static and
# without seccomp (RuntimeDefault profiles cannot be applied), and the other
# helpers by mk/helpers.mk.
release_nohelper_runc = $(filter riscv64,$(1))
# Nor busybox-static for riscv64: no air-gap bundle (images come from a
# registry or a bundle built elsewhere).
release_noairgap = $(filter riscv64,$(1))
release_helper_args_riscv64 = HELPER_FILES="$(addprefix $(RELEASE_BUILD)/riscv64/helpers/bin/,$(filter-out runc,$(RELEASE_HELPER_NAMES)))"

RELEASE_HELPER_NAMES = $(notdir $(HELPER_FILES))

.PHONY: release release-deps release-install-sh release-smoke release-clean

release: $(foreach a,$(RELEASE_ARCHES),release-$(a)) release-install-sh
	@echo; echo "== $(RELEASE_OUT)"; ls -l $(RELEASE_OUT)

release-install-sh:
	@mkdir -p $(RELEASE_OUT)
	@if [ -f install.sh ]; then cp -p install.sh $(RELEASE_OUT)/install.sh; echo "$(RELEASE_OUT)/install.sh"; \
	else echo "no install.sh in the repository yet: not copied"; fi

define release_arch
.PHONY: release-$(1) release-bin-$(1) release-inner-$(1) release-helpers-$(1) release-airgap-$(1) release-smoke-$(1)

release-$(1): release-bin-$(1) $(if $(call release_noairgap,$(1)),,release-airgap-$(1))
	cd $(RELEASE_OUT) && sha256sum berth$(release_suffix_$(1)) berth-agent$(release_suffix_$(1)) \
	  $(if $(call release_noairgap,$(1)),,berth-airgap-images-$(1).tar.zst) > .sha256sum-$(1).txt && mv -f .sha256sum-$(1).txt sha256sum-$(1).txt
	@cat $(RELEASE_OUT)/sha256sum-$(1).txt

# The helper binaries (mk/helpers.mk) for $(1), in their own directory.
release-helpers-$(1):
	$(call release_env,$(1)) $(MAKE) --no-print-directory helpers-bin \
	  HELPERS_DIR=$(RELEASE_BUILD)/$(1)/helpers $(release_helper_args_$(1))
	$(if $(call release_nohelper_runc,$(1)),$(call release_env,$(1)) CGO_ENABLED=1 $(GO) build -trimpath \
	  -tags "urfave_cli_no_docs netgo osusergo" -ldflags "-s -w -linkmode external -extldflags -static" \
	  -o $(RELEASE_BUILD)/$(1)/helpers/bin/runc github.com/opencontainers/runc)

# berth, berth-agent (without embedded helpers: they travel beside them)
# and the launcher. go build relinks only when something changed (it
# compares build IDs).
release-inner-$(1): release-helpers-$(1)
	@mkdir -p $(RELEASE_BUILD)/$(1)
	$(call release_env,$(1)) CGO_ENABLED=1 $(GO) build -trimpath -tags "$(RELEASE_TAGS)" \
	  -ldflags "$(RELEASE_LDFLAGS) -extldflags '$$(call release_extld,$(1))'" -o $(RELEASE_BUILD)/$(1)/berth ./cmd/berth
	$(call release_env,$(1)) CGO_ENABLED=1 $(GO) build -trimpath -tags "$(RELEASE_TAGS)" \
	  -ldflags "$(RELEASE_LDFLAGS) -extldflags '$$(call release_extld,$(1))'" -o $(RELEASE_BUILD)/$(1)/berth-agent ./cmd/berth-agent
	$(call release_env,$(1)) CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" \
	  -o $(RELEASE_BUILD)/$(1)/berth-launcher ./cmd/berth-launcher

# The release binaries; mkrelease repacks only when an input's sha256 changed.
release-bin-$(1): release-inner-$(1)
	$(GO) run ./hack/mkrelease -launcher $(RELEASE_BUILD)/$(1)/berth-launcher -exec berth \
	  -zstd "$(RELEASE_ZSTD)" -work $(RELEASE_BUILD)/$(1) -o $(RELEASE_OUT)/berth$(release_suffix_$(1)) \
	  $(RELEASE_BUILD)/$(1)/berth $(addprefix $(RELEASE_BUILD)/$(1)/helpers/bin/,$(RELEASE_HELPER_NAMES))
	$(GO) run ./hack/mkrelease -launcher $(RELEASE_BUILD)/$(1)/berth-launcher -exec berth-agent \
	  -zstd "$(RELEASE_ZSTD)" -work $(RELEASE_BUILD)/$(1) -o $(RELEASE_OUT)/berth-agent$(release_suffix_$(1)) \
	  $(RELEASE_BUILD)/$(1)/berth-agent $(addprefix $(RELEASE_BUILD)/$(1)/helpers/bin/,$(RELEASE_HELPER_NAMES))

# The air-gap bundle for $(1) (mk/images.mk; the add-ons cross-compile,
# busybox is Debian's busybox-static:$(release_deb_$(1))).
release-airgap-$(1):
	$(BERTH_IMAGES_CMD) -arch $(1) -airgap $(RELEASE_OUT)

release-smoke-$(1):
	RELEASE_OUT=$(RELEASE_OUT) bash scripts/release/smoke.sh $(1) berth$(release_suffix_$(1)) \
	  $(release_triplet_$(1)) $(release_qemu_$(1))
	RELEASE_OUT=$(RELEASE_OUT) bash scripts/release/smoke.sh $(1) berth-agent$(release_suffix_$(1)) \
	  $(release_triplet_$(1)) $(release_qemu_$(1))
endef
$(foreach a,amd64 arm64 arm riscv64,$(eval $(call release_arch,$(a))))

release-smoke: $(foreach a,$(RELEASE_SMOKE_ARCHES),release-smoke-$(a))

# Host packages for release builds and their smoke test (Debian/Ubuntu, as
# root; `make deps` runs this too): the cross toolchains and libseccomp of
# arm64 and armhf (dpkg multiarch), zstd, qemu-user with binfmt_misc (mounted
# and enabled if the init system did not: no systemd in some VMs and CI
# containers).
RELEASE_DEB_PACKAGES := zstd gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross \
	libc6-dev-armhf-cross libseccomp-dev:arm64 libseccomp-dev:armhf qemu-user-static binfmt-support

release-deps:
	@if command -v apt-get >/dev/null; then \
	  for a in arm64 armhf; do dpkg --print-foreign-architectures | grep -qx $$a || { dpkg --add-architecture $$a && added=1; }; done; \
	  need=""; for p in $(RELEASE_DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || need="$$need $$p"; done; \
	  if [ -n "$$need$$added" ]; then apt-get update -qq || echo "apt-get update reported errors; trying the install anyway" >&2; fi; \
	  if [ -n "$$need" ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need; fi; \
	else echo "make release-deps: no apt-get; install zstd, the aarch64 and arm-linux-gnueabihf cross gcc with libseccomp, and qemu-user-static yourself" >&2; fi
	@if [ -d /proc/sys/fs/binfmt_misc ] && [ ! -e /proc/sys/fs/binfmt_misc/status ]; then \
	  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || echo "cannot mount binfmt_misc: qemu-user smoke tests will fail" >&2; fi
	@if [ -e /proc/sys/fs/binfmt_misc/status ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && command -v update-binfmts >/dev/null; then \
	  update-binfmts --enable; fi

deps: release-deps

# make image: the container image (Dockerfile) for IMAGE_ARCH, built by
# buildah from Debian (no registry, no daemon; vfs storage of its own under
# $(IMAGE_BUILD)), saved as a docker-archive for `docker load` or
# `ctr images import`.
IMAGE_ARCH ?= $(RELEASE_HOST)
IMAGE_NAME ?= berth.local/berth
IMAGE_TAG ?= $(VERSION)
IMAGE_BUILD ?= build/image
IMAGE_OUT ?= dist/image
RELEASE_HOST = $(patsubst x86_64,amd64,$(patsubst aarch64,arm64,$(patsubst armv7l,arm,$(shell uname -m))))
BUILDAH = buildah --root $(CURDIR)/$(IMAGE_BUILD)/storage --runroot $(CURDIR)/$(IMAGE_BUILD)/run --storage-driver vfs

.PHONY: image image-deps
image: release-inner-$(IMAGE_ARCH) image-deps
	bash scripts/release/image-rootfs.sh $(IMAGE_ARCH) $(release_deb_$(IMAGE_ARCH)) $(release_triplet_$(IMAGE_ARCH)) \
	  $(RELEASE_BUILD)/$(IMAGE_ARCH) $(IMAGE_BUILD)/$(IMAGE_ARCH)/rootfs $(IMAGES_CACHE)
	$(BUILDAH) bud --platform linux/$(IMAGE_ARCH)$(if $(filter arm,$(IMAGE_ARCH)),/v7) --layers=false \
	  -f $(CURDIR)/Dockerfile -t $(IMAGE_NAME):$(IMAGE_TAG)-$(IMAGE_ARCH) $(IMAGE_BUILD)/$(IMAGE_ARCH)
	@mkdir -p $(IMAGE_OUT)
	rm -f $(IMAGE_OUT)/berth-image-$(IMAGE_ARCH).tar
	$(BUILDAH) push $(IMAGE_NAME):$(IMAGE_TAG)-$(IMAGE_ARCH) \
	  docker-archive:$(IMAGE_OUT)/berth-image-$(IMAGE_ARCH).tar:$(IMAGE_NAME):$(IMAGE_TAG)-$(IMAGE_ARCH)
	$(BUILDAH) images
	@ls -l $(IMAGE_OUT)/berth-image-$(IMAGE_ARCH).tar

# buildah without recommends: no crun, netavark or fuse-overlayfs (a FROM
# scratch build with only COPY runs nothing).
image-deps:
	@command -v buildah >/dev/null || { apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah; }

release-clean:
	rm -rf $(RELEASE_BUILD)
	-[ ! -d $(IMAGE_BUILD) ] || $(BUILDAH) rm --all
	rm -rf $(IMAGE_BUILD)
