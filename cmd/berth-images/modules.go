package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/berth-io/berth/pkg/images/build"
)

// program is a main package built from its upstream Go module at an exact
// version.
type program struct {
	name    string // of the binary
	module  string // module path
	version string // exact module version
	pkg     string // import path of the main package
	source  string // the project's repository, for the image label
	// xflags are the -X settings upstream's release build passes, so the
	// program reports its version.
	xflags func(m module) []string
	// tags are build tags. grpcnotrace (gRPC's own) drops
	// golang.org/x/net/trace, whose html/template use of reflection keeps
	// the linker from dropping unused methods in the whole program; it
	// only removes gRPC's /debug/requests pages, which none of these serve.
	tags []string
	// mainModule, if set, writes into dir a module whose main package is
	// built instead of pkg (CoreDNS with fewer plugins).
	mainModule func(b *builder, m module, dir string) error
	// check, if set, vets the built binary before it is cached.
	check func(bin string) error
}

var (
	coredns = program{
		name: "coredns", module: "github.com/coredns/coredns", version: "v1.15.0",
		pkg: "github.com/coredns/coredns", source: "https://github.com/coredns/coredns",
		// The release sets only coremain.GitCommit; the proxy does not say
		// which commit a version is, and the version itself is a constant.
		xflags: func(module) []string { return nil },
		// As upstream's Makefile.
		tags:       []string{"grpcnotrace"},
		mainModule: (*builder).corednsModule,
		check:      checkCorednsPlugins,
	}
	localPathProvisioner = program{
		name: "local-path-provisioner", module: "github.com/rancher/local-path-provisioner", version: "v0.0.30",
		pkg: "github.com/rancher/local-path-provisioner", source: "https://github.com/rancher/local-path-provisioner",
		xflags: func(m module) []string { return []string{"main.VERSION=" + m.Version} },
	}
	metricsServer = program{
		name: "metrics-server", module: "sigs.k8s.io/metrics-server", version: "v0.9.0",
		pkg: "sigs.k8s.io/metrics-server/cmd/metrics-server", source: "https://github.com/kubernetes-sigs/metrics-server",
		// The module's publication time stands in for the build date, so
		// the binary depends on its source only.
		xflags: func(m module) []string {
			const v = "k8s.io/client-go/pkg/version."
			return []string{v + "gitVersion=" + m.Version, v + "buildDate=" + m.Time}
		},
		// As Kubernetes builds its own components: 71 → 51 MB, nothing
		// else links text/template here.
		tags: []string{"grpcnotrace"},
	}
)

// module is what `go mod download -json` reports of a module version.
type module struct {
	Path, Version string
	Time          string // when the proxy first saw the version, RFC 3339
	Dir           string // its unpacked, read-only source in the module cache
	Sum, GoModSum string // go.sum hashes of its zip and its go.mod
	Error         string
}

// baseEntries are what the add-on images have besides their program, as in
// the distroless static base their upstream images use: user and group
// entries for root, nobody and nonroot (so numeric users have names) and a
// world-writable /tmp. No CA certificates: they only talk to in-cluster
// endpoints with cluster CAs.
func baseEntries() []build.Entry {
	return []build.Entry{
		build.File("/etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/sbin/nologin\n"+
			"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"+
			"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")),
		build.File("/etc/group", 0o644, []byte("root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n")),
		build.Dir("/tmp", 0o777|fs.ModeSticky),
	}
}

func (b *builder) coredns() (v1.Image, error) {
	return b.moduleImage(coredns, "/coredns", func(bin *build.Entry, cfg *build.Config) {
		// As upstream's image: non-root, with the file capability to bind
		// port 53 (the pod must still allow NET_BIND_SERVICE).
		bin.Xattrs = build.FileCapabilities(build.CapNetBindService)
		cfg.Entrypoint = []string{"/coredns"}
		cfg.User = "65532:65532"
		cfg.WorkingDir = "/"
		cfg.ExposedPorts = []string{"53/tcp", "53/udp"}
		// Built with fewer plugins than upstream's image: say which.
		cfg.Labels["io.berth.image.coredns-plugins"] = strings.Join(corednsPlugins, ",")
	})
}

func (b *builder) localPathProvisioner() (v1.Image, error) {
	return b.moduleImage(localPathProvisioner, "/usr/bin/local-path-provisioner", func(_ *build.Entry, cfg *build.Config) {
		// Upstream's image runs it by name from PATH, as root.
		cfg.Entrypoint = []string{"local-path-provisioner"}
	})
}

func (b *builder) metricsServer() (v1.Image, error) {
	return b.moduleImage(metricsServer, "/metrics-server", func(_ *build.Entry, cfg *build.Config) {
		cfg.Entrypoint = []string{"/metrics-server"}
		cfg.User = "65534:65534" // upstream's; manifests may pick another uid
	})
}

// moduleImage builds p and makes an image holding it at binPath (0755, so
// any uid can run it), its licence and baseEntries; tweak sets what differs.
func (b *builder) moduleImage(p program, binPath string, tweak func(*build.Entry, *build.Config)) (v1.Image, error) {
	bin, m, err := b.goModule(p)
	if err != nil {
		return nil, err
	}
	goVersion, err := b.goVer()
	if err != nil {
		return nil, err
	}
	binEntry := build.HostFile(binPath, 0o755, bin)
	cfg := build.Config{Labels: map[string]string{
		"org.opencontainers.image.title":       p.name,
		"org.opencontainers.image.version":     m.Version,
		"org.opencontainers.image.source":      p.source,
		"org.opencontainers.image.licenses":    "Apache-2.0",
		"org.opencontainers.image.description": fmt.Sprintf("%s built from Go module %s@%s with %s", p.name, m.Path, m.Version, goVersion),
		"io.berth.image.go-module":             m.Path + "@" + m.Version,
		"io.berth.image.go-package":            p.pkg,
	}}
	tweak(&binEntry, &cfg)
	cfg.Architecture = b.arch
	entries := append(baseEntries(), binEntry,
		// Apache-2.0 asks that the licence travel with the binary.
		build.HostFile("/usr/share/doc/"+p.name+"/LICENSE", 0o644, filepath.Join(m.Dir, "LICENSE")))
	layer, err := b.layer(entries)
	if err != nil {
		return nil, err
	}
	return build.Image(cfg, layer)
}

// goModule builds p's main package with its module's own go.mod and go.sum,
// outside berth's module graph, and returns the binary and the module.
//
// As for crictl (mk/helpers.mk), the build runs in the module's read-only
// directory in the module cache: exactly upstream's requirements, replace
// directives and checksums apply (-mod=readonly: nothing may change them;
// it also ignores the vendor/modules.txt stub some module zips keep).
// Dependencies come from the Go module proxy on first use. `go install
// pkg@version` would do the same but first asks the proxy for the module's
// version list, which a restricted proxy may refuse. A program with a
// mainModule (CoreDNS) is built from a generated main package in a scratch
// module that carries upstream's go.mod and go.sum, to the same effect.
//
// Linking a large program takes seconds even when go's build cache holds
// every package, so the binary is kept in binCache under a key of
// everything that goes into it and rebuilt only when the key changes.
func (b *builder) goModule(p program) (string, module, error) {
	m, err := b.download(p.module, p.version)
	if err != nil {
		return "", m, err
	}
	goVersion, err := b.goVer()
	if err != nil {
		return "", m, err
	}
	var x []string
	for _, f := range p.xflags(m) {
		x = append(x, "-X", f)
	}
	// -s -w and an empty build ID as for berth's own images: the binary
	// depends on the source and toolchain only.
	ldflags := strings.Join(append([]string{"-s", "-w", "-buildid="}, x...), " ")
	args := []string{"build", "-trimpath", "-buildvcs=false", "-ldflags=" + ldflags}
	if len(p.tags) > 0 {
		args = append(args, "-tags="+strings.Join(p.tags, ","))
	}
	env := []string{"GOWORK=off", "GOFLAGS=-mod=readonly", "CGO_ENABLED=0", "GOOS=linux", "GOARCH=" + b.arch}

	dir, pkg := m.Dir, p.pkg
	key := fmt.Sprintf("%s@%s\n%s\n%s\n%s %s\n", m.Path, m.Version, p.pkg, goVersion,
		strings.Join(env, " "), strings.Join(args, " "))
	if p.mainModule != nil {
		dir, pkg = filepath.Join(b.work, p.name+"-main"), "."
		if err := p.mainModule(b, m, dir); err != nil {
			return "", m, fmt.Errorf("%s: %w", p.name, err)
		}
		// The generated module is part of what the binary is made of.
		sum, err := dirDigest(dir)
		if err != nil {
			return "", m, err
		}
		key += "main module " + sum + "\n"
	}
	bin := filepath.Join(b.binCache, fmt.Sprintf("%s-%s-%s", p.name, p.version, b.arch))
	err = b.cachedFile(bin, key, 0o755, func() (string, error) {
		tmp := filepath.Join(b.work, p.name)
		fmt.Fprintf(os.Stderr, "berth-images: building %s from %s@%s\n", p.name, m.Path, m.Version)
		cmd := exec.Command(b.goBin, append(args, "-o", tmp, pkg)...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("building %s from %s@%s: %w", p.pkg, m.Path, m.Version, err)
		}
		if err := checkStatic(tmp); err != nil {
			return "", err
		}
		if p.check != nil {
			if err := p.check(tmp); err != nil {
				return "", err
			}
		}
		return tmp, nil
	})
	return bin, m, err
}

// cachedFile makes file in binCache with make (which returns where it put
// the result) unless file's key file says it was made from exactly key.
// The key goes last: a file without its key is made again, never trusted.
func (b *builder) cachedFile(file, key string, mode os.FileMode, make func() (string, error)) error {
	if old, err := os.ReadFile(file + ".key"); err == nil && string(old) == key {
		if _, err := os.Stat(file); err == nil {
			return nil
		}
	}
	if err := os.MkdirAll(b.binCache, 0o755); err != nil {
		return fmt.Errorf("creating binary cache: %w", err)
	}
	made, err := make()
	if err != nil {
		return err
	}
	os.Remove(file + ".key")
	if err := moveFile(made, file); err != nil {
		return fmt.Errorf("caching %s: %w", file, err)
	}
	if err := os.Chmod(file, mode); err != nil {
		return fmt.Errorf("caching %s: %w", file, err)
	}
	if err := writeIfChanged(file+".key", []byte(key)); err != nil {
		return fmt.Errorf("caching %s: %w", file, err)
	}
	return nil
}

// download fetches a module version into the module cache (a no-op when it
// is there) and reports where it is.
func (b *builder) download(path, version string) (module, error) {
	var m module
	cmd := exec.Command(b.goBin, "mod", "download", "-json", path+"@"+version)
	// Outside any module, so berth's go.mod is neither read nor changed.
	cmd.Dir = b.work
	cmd.Env = append(os.Environ(), "GOWORK=off")
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, os.Stderr
	runErr := cmd.Run()
	// On failure go still prints the JSON, with the reason in Error.
	if err := json.Unmarshal(stdout.Bytes(), &m); err != nil && runErr == nil {
		return m, fmt.Errorf("go mod download %s@%s: reading its output: %w", path, version, err)
	}
	switch {
	case m.Error != "":
		return m, fmt.Errorf("go mod download %s@%s: %s", path, version, m.Error)
	case runErr != nil:
		return m, fmt.Errorf("go mod download %s@%s: %w", path, version, runErr)
	case m.Dir == "" || m.Version != version:
		return m, fmt.Errorf("go mod download %s@%s: got version %q in %q", path, version, m.Version, m.Dir)
	}
	return m, nil
}

// goVer returns the go command's version, e.g. go1.26.8; a new toolchain
// rebuilds the cached binaries.
func (b *builder) goVer() (string, error) {
	if b.goVersion == "" {
		v, err := output(b.goBin, "env", "GOVERSION")
		if err != nil {
			return "", err
		}
		b.goVersion = v
	}
	return b.goVersion, nil
}

// dirDigest is the sha256 of the regular files directly in dir, names and
// contents, in name order.
func dirDigest(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", e.Name(), len(data))
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
