# make images: the container images berth and its tests need, built locally
# into docker-archive tarballs for `ctr images import` — no registry, no
# Docker. See cmd/berth-images. The busybox .deb is fetched once with
# `apt-get download` (root runs `apt-get update` first if needed) and cached
# in $(IMAGES_CACHE). The add-on programs (CoreDNS, local-path-provisioner,
# metrics-server) are built from their upstream Go modules, each with its own
# go.mod, and cached in $(IMAGES_BIN_CACHE): only the first run compiles.
# Compressed layers are cached in $(IMAGES_LAYER_CACHE), so a run with
# nothing changed takes seconds.
#
# make airgap: also writes $(AIRGAP_DIR)/berth-airgap-images-<arch>.tar.zst,
# one zstd docker-archive of every image berth's packaged manifests use (no
# test images), and $(AIRGAP_DIR)/berth-images.txt listing them. Dropped into
# <data-dir>/agent/images, it is all an air-gapped node needs.
IMAGES_DIR ?= dist/images
IMAGES_CACHE ?= dist/cache/deb
IMAGES_BIN_CACHE ?= dist/cache/bin
IMAGES_LAYER_CACHE ?= dist/cache/layers
AIRGAP_DIR ?= dist/artifacts

BERTH_IMAGES_CMD = CGO_ENABLED=0 $(GO) run ./cmd/berth-images -go "$(GO)" -out $(IMAGES_DIR) \
	-cache $(IMAGES_CACHE) -bincache $(IMAGES_BIN_CACHE) -layercache $(IMAGES_LAYER_CACHE)

.PHONY: images airgap
images:
	$(BERTH_IMAGES_CMD)

airgap:
	$(BERTH_IMAGES_CMD) -airgap $(AIRGAP_DIR)
