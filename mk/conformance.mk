# make conformance (issue 8): the Kubernetes conformance suite of berth's
# Kubernetes version against a fresh two-node berth cluster, with no
# registry and no internet. Not part of `make test`: it takes hours here.
#
#   make conformance-tools    e2e.test, ginkgo, kubectl and the test images'
#                             programs (agnhost, nnp, sample-apiserver), built
#                             from k8s.io/kubernetes by test/conformance/go.mod
#   make conformance-images   every image the suite uses, under its upstream
#                             name, as one air-gap bundle (cmd/berth-images -set conformance)
#   make conformance          both, then scripts/conformance/run.sh: server +
#                             agent in network namespaces, the parallel pass,
#                             the serial pass, JUnit and dist/conformance/summary.txt
#
# CONFORMANCE_NODES: ginkgo processes of the parallel pass.
# CONFORMANCE_FOCUS / CONFORMANCE_SKIP: narrow a run while debugging (the
# summary then counts only what ran).
CONFORMANCE_MOD := test/conformance
CONFORMANCE_BIN := build/conformance/bin
CONFORMANCE_OUT ?= dist/conformance
CONFORMANCE_NODES ?= 4
# Built in the wrapper module's directory; -mod=readonly: its go.mod and
# go.sum say exactly what is used.
CONFORMANCE_GO := cd $(CONFORMANCE_MOD) && GOWORK=off GOFLAGS=-mod=readonly
# Kubernetes' version stamp, as berth's own (they report v0.0.0-master otherwise).
K8S_STAMP := $(foreach p,k8s.io/component-base/version k8s.io/client-go/pkg/version,\
	  -X $(p).gitVersion=$(K8S_VERSION) -X $(p).gitMajor=$(K8S_MAJOR) -X $(p).gitMinor=$(K8S_MINOR) \
	  -X $(p).gitTreeState=clean -X $(p).buildDate=1970-01-01T00:00:00Z)
# The image programs are static (the images have whatever libc Debian's
# base has, or none).
CONFORMANCE_STATIC := agnhost:k8s.io/kubernetes/test/images/agnhost \
	nnp:k8s.io/kubernetes/test/images/nonewprivs \
	sample-apiserver:k8s.io/sample-apiserver
CONFORMANCE_TOOLS := $(addprefix $(CONFORMANCE_BIN)/,e2e.test ginkgo kubectl \
	$(foreach t,$(CONFORMANCE_STATIC),$(word 1,$(subst :, ,$(t)))))

.PHONY: conformance conformance-tools conformance-images

conformance-tools: $(CONFORMANCE_TOOLS)

$(CONFORMANCE_BIN)/e2e.test: FORCE
	@mkdir -p $(CONFORMANCE_BIN)
	$(CONFORMANCE_GO) $(GO) test -c -trimpath -ldflags "-s -w $(K8S_STAMP)" \
	  -o $(CURDIR)/$@ k8s.io/kubernetes/test/e2e

$(CONFORMANCE_BIN)/ginkgo: FORCE
	@mkdir -p $(CONFORMANCE_BIN)
	$(CONFORMANCE_GO) $(GO) build -trimpath -ldflags "-s -w" -o $(CURDIR)/$@ github.com/onsi/ginkgo/v2/ginkgo

$(CONFORMANCE_BIN)/kubectl: FORCE
	@mkdir -p $(CONFORMANCE_BIN)
	$(CONFORMANCE_GO) CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w $(K8S_STAMP)" \
	  -o $(CURDIR)/$@ k8s.io/kubernetes/cmd/kubectl

define conformance_static_rule
$(CONFORMANCE_BIN)/$(word 1,$(subst :, ,$(1))): FORCE
	@mkdir -p $(CONFORMANCE_BIN)
	$(CONFORMANCE_GO) CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w $(K8S_STAMP)" \
	  -o $(CURDIR)/$$@ $(word 2,$(subst :, ,$(1)))
endef
$(foreach t,$(CONFORMANCE_STATIC),$(eval $(call conformance_static_rule,$(t))))

# Images go to $(CONFORMANCE_OUT)/images, the bundle every node imports to
# $(CONFORMANCE_OUT)/berth-conformance-images-$(ARCH).tar.zst.
conformance-images: conformance-tools
	CGO_ENABLED=0 $(GO) run ./cmd/berth-images -go "$(GO)" -set conformance -k8s-version $(K8S_VERSION) \
	  -progs $(CONFORMANCE_BIN) -out $(CONFORMANCE_OUT)/images -airgap $(CONFORMANCE_OUT) \
	  -cache $(IMAGES_CACHE) -bincache $(IMAGES_BIN_CACHE) -layercache $(IMAGES_LAYER_CACHE)

conformance: build airgap conformance-images
	BERTH_BIN=$(CURDIR)/$(BIN)/berth BERTH_AIRGAP=$(CURDIR)/$(AIRGAP_DIR)/berth-airgap-images-$(ARCH).tar.zst \
	  CONFORMANCE_BUNDLE=$(CURDIR)/$(CONFORMANCE_OUT)/berth-conformance-images-$(ARCH).tar.zst \
	  CONFORMANCE_TOOLS=$(CURDIR)/$(CONFORMANCE_BIN) CONFORMANCE_OUT=$(CURDIR)/$(CONFORMANCE_OUT) \
	  CONFORMANCE_NODES=$(CONFORMANCE_NODES) bash scripts/conformance/run.sh
