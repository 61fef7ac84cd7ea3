// Command berth-images builds the container images berth and its tests need
// into docker-archive tarballs, with no registry and no container engine —
// as an air-gapped user would build them:
//
//	berth.local/pause:3.10                      images/pause, static Go
//	berth.local/busybox:1.36                    /bin/busybox from Debian's busybox-static
//	berth.local/echoserver:1.0                  images/echoserver, static Go (tests only)
//	berth.local/coredns:1.15.0                  github.com/coredns/coredns v1.15.0
//	berth.local/local-path-provisioner:v0.0.30  github.com/rancher/local-path-provisioner v0.0.30
//	berth.local/metrics-server:v0.9.0           sigs.k8s.io/metrics-server v0.9.0
//
// Output: <out>/<name>-<tag>-<arch>.tar per image (for `ctr images import`)
// and <out>/images.txt listing the references. With -airgap DIR it also
// writes DIR/berth-airgap-images-<arch>.tar.zst, one bundle of every image
// berth's packaged manifests use (not the test images), and
// DIR/berth-images.txt listing them. Run it from the repository root (`make
// images`, `make airgap`).
//
// The add-on programs are built from their upstream modules at exact
// versions, each with its own go.mod and go.sum (see goModule), never from
// copied source; their binaries are cached in -bincache, and every image's
// gzip layer in -layercache, so a run with nothing new takes seconds. The
// only network use is the Go module proxy for those modules and `apt-get
// download busybox-static`, once, into -cache; delete the cached .deb to
// refresh it.
//
// With -set conformance it builds instead the images of the Kubernetes
// conformance suite under their upstream names (conformance.go; make
// conformance-images), bundled as -airgap DIR/berth-conformance-images-<arch>.tar.zst.
//
// Build-time tool only: berth never links it.
package main

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/berth-io/berth/pkg/images/build"
)

type image struct {
	ref   string // registry/name:tag
	build func(*builder) (v1.Image, error)
	// airgap: berth's packaged manifests use it, so it goes into the
	// air-gap bundle; test images stay out.
	airgap bool
}

// images in the order they are built and listed in images.txt.
var images = []image{
	{"berth.local/pause:3.10", (*builder).pause, true},
	{"berth.local/busybox:1.36", (*builder).busybox, true},
	{"berth.local/echoserver:1.0", (*builder).echoserver, false},
	{"berth.local/coredns:1.15.0", (*builder).coredns, true},
	{"berth.local/local-path-provisioner:v0.0.30", (*builder).localPathProvisioner, true},
	{"berth.local/metrics-server:v0.9.0", (*builder).metricsServer, true},
}

// bundleWindow is the air-gap bundle's zstd window: a decoder holds one
// window, so unpacking needs about this much memory (plus ~1 MiB of
// buffers). The layers are gzip, so a larger window finds nothing more to
// match; berth's importer accepts up to 64 MiB.
const bundleWindow = 8 << 20

type builder struct {
	goBin    string // the go command
	cache    string // where downloaded .debs are kept
	binCache string // where binaries built from Go modules are kept
	layers   string // where compressed layers are kept (build.CachedLayer)
	work     string // scratch directory, removed at exit
	arch     string // GOARCH of the images (-arch; the host's by default)

	goVersion string // of goBin, read once

	// The conformance set (-set conformance; conformance.go).
	progs      string   // directory of the programs make conformance-tools built
	k8sVersion string   // k8s.io/kubernetes version they were built from
	debian     v1.Layer // the Debian root file system, made once per run
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("berth-images: ")
	out := flag.String("out", "dist/images", "directory for the image tarballs")
	cache := flag.String("cache", "dist/cache/deb", "directory for downloaded Debian packages")
	binCache := flag.String("bincache", "dist/cache/bin", "directory for binaries built from upstream Go modules")
	layers := flag.String("layercache", "dist/cache/layers", "directory for compressed image layers")
	airgap := flag.String("airgap", "", "also write the air-gap bundle and its image list into this directory")
	goBin := flag.String("go", "go", "the go command used to build the Go programs")
	arch := flag.String("arch", runtime.GOARCH, "GOARCH of the images: amd64, arm64, arm (armhf) or riscv64")
	set := flag.String("set", "berth", "which images: berth (berth's and its tests'), or conformance (the Kubernetes conformance suite's)")
	progs := flag.String("progs", "build/conformance/bin", "-set conformance: directory of the programs `make conformance-tools` built")
	k8sVersion := flag.String("k8s-version", "", "-set conformance: the k8s.io/kubernetes version those programs come from")
	flag.Parse()
	b := &builder{goBin: *goBin, cache: *cache, binCache: *binCache, layers: *layers, arch: *arch,
		progs: *progs, k8sVersion: *k8sVersion}
	if err := run(b, *set, *out, *airgap); err != nil {
		log.Fatal(err)
	}
}

func run(b *builder, set, out, airgap string) error {
	if runtime.GOOS != "linux" {
		return errors.New("images are built on Linux only (busybox comes from a Debian package)")
	}
	if _, ok := debArches[b.arch]; !ok {
		return fmt.Errorf("unknown -arch %q: want one of amd64, arm64, arm, riscv64", b.arch)
	}
	list, bundleName := images, "berth-airgap-images"
	switch set {
	case "berth":
	case "conformance":
		list, bundleName = conformanceImages, "berth-conformance-images"
	default:
		return fmt.Errorf("unknown -set %q: want berth or conformance", set)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("creating output directory: %w", err)
	}
	work, err := os.MkdirTemp("", "berth-images-")
	if err != nil {
		return fmt.Errorf("creating scratch directory: %w", err)
	}
	defer os.RemoveAll(work)
	// The Go programs are cross-compiled (CGO off) and busybox comes from
	// Debian's package for that architecture (another architecture's busybox
	// runs here through qemu-user to list its applets).
	b.work = work

	var refs, bundleList strings.Builder
	bundle := map[string]v1.Image{}
	for _, im := range list {
		img, err := im.build(b)
		if err != nil {
			return fmt.Errorf("%s: %w", im.ref, err)
		}
		repo, tag, _ := strings.Cut(im.ref, ":")
		file := filepath.Join(out, fmt.Sprintf("%s-%s-%s.tar", filepath.Base(repo), tag, b.arch))
		changed, err := build.WriteTarball(file, im.ref, img)
		if err != nil {
			return err
		}
		if err := report(im.ref, file, img, changed); err != nil {
			return err
		}
		fmt.Fprintln(&refs, im.ref)
		if im.airgap {
			bundle[im.ref] = img
			fmt.Fprintln(&bundleList, im.ref)
		}
	}
	if err := writeIfChanged(filepath.Join(out, "images.txt"), []byte(refs.String())); err != nil {
		return err
	}
	if airgap == "" {
		return nil
	}
	return writeBundle(airgap, bundleName, b.arch, bundle, bundleList.String())
}

// writeBundle writes the air-gap bundle <name>-<arch>.tar.zst and the list
// of its images, <name>.txt (berth-images.txt for berth's own).
func writeBundle(dir, name, arch string, images map[string]v1.Image, list string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating air-gap directory: %w", err)
	}
	file := filepath.Join(dir, name+"-"+arch+".tar.zst")
	changed, err := build.WriteBundle(file, images, bundleWindow)
	if err != nil {
		return err
	}
	fi, err := os.Stat(file)
	if err != nil {
		return err
	}
	state := "written"
	if !changed {
		state = "unchanged"
	}
	fmt.Printf("%-43s %-51s %6.2f MiB  %d images, zstd window %d MiB  %s\n", "air-gap bundle", file,
		float64(fi.Size())/(1<<20), len(images), bundleWindow>>20, state)
	listName := name + ".txt"
	if name == "berth-airgap-images" {
		listName = "berth-images.txt" // its name since issue 6
	}
	return writeIfChanged(filepath.Join(dir, listName), []byte(list))
}

func report(ref, file string, img v1.Image, changed bool) error {
	fi, err := os.Stat(file)
	if err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return fmt.Errorf("%s: digest: %w", ref, err)
	}
	state := "written"
	if !changed {
		state = "unchanged"
	}
	fmt.Printf("%-43s %-51s %6.2f MiB  %s  %s\n", ref, file, float64(fi.Size())/(1<<20), d.Hex[:12], state)
	return nil
}

func (b *builder) pause() (v1.Image, error) {
	// Unprivileged like the upstream pause image: it needs no rights at all.
	return b.goImage("pause", build.Config{Entrypoint: []string{"/pause"}, User: "65535:65535"})
}

func (b *builder) echoserver() (v1.Image, error) {
	return b.goImage("echoserver", build.Config{
		Entrypoint:   []string{"/echoserver"},
		ExposedPorts: []string{"8080/tcp"},
		// Numeric and non-root, so pods with runAsNonRoot accept it.
		User: "65532:65532",
	})
}

// goImage builds images/<prog> into a static binary and makes an image
// holding just /<prog>.
func (b *builder) goImage(prog string, cfg build.Config) (v1.Image, error) {
	bin := filepath.Join(b.work, prog)
	// -trimpath, no VCS stamp and an empty build ID make the binary, and so
	// the image digest, depend on the source only.
	cmd := exec.Command(b.goBin, "build", "-trimpath", "-buildvcs=false",
		"-ldflags=-s -w -buildid=", "-o", bin, "./images/"+prog)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+b.arch)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("building images/%s: %w", prog, err)
	}
	if err := checkStatic(bin); err != nil {
		return nil, err
	}
	layer, err := b.layer([]build.Entry{build.HostFile("/"+prog, 0o755, bin)})
	if err != nil {
		return nil, err
	}
	cfg.Architecture = b.arch
	return build.Image(cfg, layer)
}

func (b *builder) layer(entries []build.Entry) (v1.Layer, error) {
	return build.CachedLayer(b.layers, entries)
}

// checkStatic refuses a dynamically linked binary: the images have no libc.
func checkStatic(bin string) error {
	f, err := elf.Open(bin)
	if err != nil {
		return fmt.Errorf("reading %s: %w", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked", bin)
		}
	}
	return nil
}

func (b *builder) busybox() (v1.Image, error) {
	deb, err := b.debPackage("busybox-static")
	if err != nil {
		return nil, err
	}
	root := filepath.Join(b.work, "busybox-static")
	if err := runCmd("", "dpkg-deb", "-x", deb, root); err != nil {
		return nil, err
	}
	version, err := output("dpkg-deb", "-f", deb, "Version")
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(root, "bin/busybox")
	if _, err := os.Stat(bin); err != nil { // a merged-/usr package
		bin = filepath.Join(root, "usr/bin/busybox")
	}
	return b.busyboxImage(bin, "busybox-static", filepath.Join(root, "usr/share/doc/busybox-static/copyright"), map[string]string{
		// The tag is the name tests use; this is what is inside.
		"org.opencontainers.image.version":     version,
		"org.opencontainers.image.description": "BusyBox from Debian busybox-static " + version,
		"org.opencontainers.image.licenses":    "GPL-2.0-only",
	})
}

// busyboxImage is a static busybox at /bin/busybox with a link per applet,
// its licence text (/usr/share/doc/<doc>/copyright) and the few files a
// shell image needs.
func (b *builder) busyboxImage(bin, doc, copyright string, labels map[string]string) (v1.Image, error) {
	if err := checkStatic(bin); err != nil {
		return nil, err
	}
	applets, err := output(bin, "--list")
	if err != nil {
		if b.arch != runtime.GOARCH {
			err = fmt.Errorf("%w (running the %s busybox here needs qemu-user-static: make deps)", err, b.arch)
		}
		return nil, fmt.Errorf("listing busybox applets: %w", err)
	}

	entries := []build.Entry{
		build.HostFile("/bin/busybox", 0o755, bin),
		// #!/usr/bin/env scripts are common; everything else is in /bin.
		build.Symlink("/usr/bin/env", "../../bin/busybox"),
		// The GPL notice travels with the binary.
		build.HostFile("/usr/share/doc/"+doc+"/copyright", 0o644, copyright),
		build.File("/etc/passwd", 0o644, []byte(
			"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")),
		build.File("/etc/group", 0o644, []byte("root:x:0:\nnobody:x:65534:\n")),
		build.Dir("/tmp", 0o777|fs.ModeSticky),
		build.Dir("/root", 0o700),
	}
	n := 0
	sc := bufio.NewScanner(strings.NewReader(applets))
	for sc.Scan() {
		a := strings.TrimSpace(sc.Text())
		if a == "" || a == "busybox" {
			continue
		}
		if strings.Contains(a, "/") {
			return nil, fmt.Errorf("odd busybox applet name %q", a)
		}
		entries = append(entries, build.Symlink("/bin/"+a, "busybox"))
		n++
	}
	if n < 50 { // sh, ls, wget, … at the least
		return nil, fmt.Errorf("busybox --list gave only %d applets", n)
	}
	layer, err := b.layer(entries)
	if err != nil {
		return nil, err
	}
	return build.Image(build.Config{Cmd: []string{"sh"}, Architecture: b.arch, Labels: labels}, layer)
}

// debArches maps GOARCH to Debian's architecture names.
var debArches = map[string]string{"amd64": "amd64", "arm64": "arm64", "arm": "armhf", "riscv64": "riscv64"}

// debPackage returns the cached .deb of pkg for the images' Debian
// architecture, downloading it with apt-get first if it is not cached.
// Another architecture's package needs `dpkg --add-architecture` and an
// `apt-get update` first (make deps does both for arm64 and armhf).
func (b *builder) debPackage(pkg string) (string, error) {
	debArch := debArches[b.arch]
	pattern := filepath.Join(b.cache, pkg+"_*_"+debArch+".deb")
	if deb, err := onlyMatch(pattern); err != nil || deb != "" {
		return deb, err
	}

	// Download into a scratch directory so an interrupted download never
	// looks like a cached package.
	dl := filepath.Join(b.work, "apt")
	if err := os.MkdirAll(dl, 0o755); err != nil {
		return "", err
	}
	args := []string{"download", pkg + ":" + debArch}
	if os.Geteuid() == 0 {
		// apt drops to the _apt user, which cannot write here; as root
		// there is nothing to gain and a warning to lose.
		args = append([]string{"-o", "APT::Sandbox::User=root"}, args...)
	}
	fmt.Fprintf(os.Stderr, "berth-images: apt-get %s\n", strings.Join(args, " "))
	if err := runCmd(dl, "apt-get", args...); err != nil {
		if os.Geteuid() != 0 {
			return "", fmt.Errorf("%w (if apt's package lists are missing, run `apt-get update` as root)", err)
		}
		// No package lists yet (fresh machine or container): fetch them once.
		if err := runCmd("", "apt-get", "update", "-qq"); err != nil {
			return "", err
		}
		if err := runCmd(dl, "apt-get", args...); err != nil {
			return "", fmt.Errorf("%w (another architecture's packages need `dpkg --add-architecture %s` and `apt-get update` first)", err, debArch)
		}
	}
	got, err := onlyMatch(filepath.Join(dl, pkg+"_*_"+debArch+".deb"))
	if err != nil || got == "" {
		return "", fmt.Errorf("apt-get download %s left no %s package (%v)", pkg, debArch, err)
	}
	if err := os.MkdirAll(b.cache, 0o755); err != nil {
		return "", fmt.Errorf("creating package cache: %w", err)
	}
	deb := filepath.Join(b.cache, filepath.Base(got))
	if err := moveFile(got, deb); err != nil {
		return "", err
	}
	return deb, nil
}

// onlyMatch returns the one file matching pattern, "" for none, and an
// error for several (which cached version to use would be a guess).
func onlyMatch(pattern string) (string, error) {
	m, err := filepath.Glob(pattern)
	switch {
	case err != nil:
		return "", err
	case len(m) > 1:
		return "", fmt.Errorf("several packages match %s: %q; remove the stale ones", pattern, m)
	case len(m) == 1:
		return m[0], nil
	}
	return "", nil
}

// moveFile renames, or copies when src and dst are on different file
// systems (the scratch directory is usually on /tmp).
func moveFile(src, dst string) error {
	if err := os.Rename(src, dst); err == nil {
		return nil
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return writeIfChanged(dst, data)
}

// writeIfChanged replaces file atomically unless it already holds data.
func writeIfChanged(file string, data []byte) error {
	if old, err := os.ReadFile(file); err == nil && bytes.Equal(old, data) {
		return nil
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", file, err)
	}
	if err := os.Rename(tmp, file); err != nil {
		return fmt.Errorf("writing %s: %w", file, err)
	}
	return nil
}

func runCmd(dir, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	return runIt(cmd)
}

// runCmdEnv runs a command in the current directory with env added.
func runCmdEnv(env []string, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	return runIt(cmd)
}

func runIt(cmd *exec.Cmd) error {
	name, args := cmd.Args[0], cmd.Args[1:]
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}

func output(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}
