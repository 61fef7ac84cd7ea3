# make images: the container images berth and its tests need, built locally
# into docker-archive tarballs for `ctr images import` — no registry, no
# Docker. See cmd/berth-images. The busybox .deb is fetched once with
# `apt-get download` (root runs `apt-get update` first if needed) and cached
# in $(IMAGES_CACHE).
IMAGES_DIR ?= dist/images
IMAGES_CACHE ?= dist/cache/deb

.PHONY: images
images:
	CGO_ENABLED=0 $(GO) run ./cmd/berth-images -go "$(GO)" -out $(IMAGES_DIR) -cache $(IMAGES_CACHE)
