package main

import (
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/berth-io/berth/pkg/images/build"
)

// conformanceImages are the images the Kubernetes conformance suite runs
// (`e2e.test --list-images`, narrowed to what [Conformance] tests use; see
// ../shared/reference/conformance.md), under the exact upstream references
// the suite asks for, so nothing is pulled. `-set conformance` builds them
// (make conformance-images); all of them go into one bundle every test node
// imports. The tags are the suite's, the contents are built here: the
// labels say what each really holds.
var conformanceImages = []image{
	{"registry.k8s.io/e2e-test-images/agnhost:2.63.0", (*builder).agnhost, true},
	{"registry.k8s.io/e2e-test-images/agnhost:2.55", (*builder).agnhostPrev, true},
	{"registry.k8s.io/e2e-test-images/busybox:1.37.0-1", (*builder).busyboxUpstream, true},
	{"registry.k8s.io/pause:3.10.2", (*builder).pause, true},
	{"registry.k8s.io/e2e-test-images/nginx:1.15-4", (*builder).nginx, true},
	{"registry.k8s.io/e2e-test-images/glibc-dns-testing:2.0.0", (*builder).glibcDNSTesting, true},
	{"registry.k8s.io/e2e-test-images/kitten:1.8", (*builder).kitten, true},
	{"registry.k8s.io/e2e-test-images/nautilus:1.8", (*builder).nautilus, true},
	{"registry.k8s.io/e2e-test-images/nonroot:1.5", (*builder).nonroot, true},
	{"registry.k8s.io/e2e-test-images/nonewprivs:1.4", (*builder).nonewprivs, true},
	{"registry.k8s.io/e2e-test-images/sample-apiserver:1.29.2", (*builder).sampleAPIServer, true},
	{"registry.k8s.io/etcd:3.6.8-0", (*builder).etcd, true},
}

// debianSuite is the Debian release of the conformance images' root file
// systems (upstream's are Alpine 3.22 or Debian bookworm).
const debianSuite = "bookworm"

// debianPackages are what the tests run inside agnhost and its relatives:
// upstream's Alpine image adds bind-tools, curl, netcat-openbsd, iproute2,
// iperf, bash and util-linux to busybox; the Debian names, plus what
// Alpine's busybox provides and Debian's minbase lacks (wget, ping, ps).
// nginx-light serves the nginx image and dnsutils (dig) glibc-dns-testing:
// one root file system for all of them, so nodes store it once.
var debianPackages = []string{
	"bash", "bind9-dnsutils", "ca-certificates", "curl", "iperf", "iproute2", "iputils-ping",
	"netcat-openbsd", "nginx-light", "procps", "util-linux", "wget",
}

// debianRootfs is the layer of a Debian root file system made by mmdebstrap
// (a Debian package; make deps installs it) from deb.debian.org, its default,
// with debianPackages and agnhost's user and group. mmdebstrap
// is not reproducible, so its tarball is kept in binCache under a key of
// what went into it and made again only when that changes.
func (b *builder) debianRootfs() (v1.Layer, error) {
	if b.debian != nil {
		return b.debian, nil
	}
	debArch := debArches[b.arch]
	// agnhost's users: user-defined-in-image (uid 1000) in
	// group-defined-in-image (gid 50000), which the supplemental-groups
	// tests look for; and iperf where upstream's image has it.
	hooks := []string{
		`chroot "$1" groupadd -g 50000 group-defined-in-image`,
		`chroot "$1" useradd -u 1000 -G group-defined-in-image user-defined-in-image`,
		`ln -s /usr/bin/iperf "$1/usr/local/bin/iperf"`,
	}
	args := []string{"--variant=minbase", "--architectures=" + debArch,
		"--include=" + strings.Join(debianPackages, ","),
		// Documentation and translations are dead weight in a test image;
		// the copyright files stay.
		"--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
		"--dpkgopt=path-include=/usr/share/doc/*/copyright", "--dpkgopt=path-exclude=/usr/share/locale/*",
	}
	for _, h := range hooks {
		args = append(args, "--customize-hook="+h)
	}
	key := fmt.Sprintf("mmdebstrap %s %s\n", debianSuite, strings.Join(args, " "))
	file := filepath.Join(b.binCache, fmt.Sprintf("debian-%s-conformance-%s.tar", debianSuite, b.arch))
	err := b.cachedFile(file, key, 0o644, func() (string, error) {
		if _, err := exec.LookPath("mmdebstrap"); err != nil {
			return "", fmt.Errorf("the conformance images need mmdebstrap (apt-get install mmdebstrap): %w", err)
		}
		tmp := filepath.Join(b.work, "debian.tar")
		fmt.Fprintf(os.Stderr, "berth-images: mmdebstrap %s (%s) with %s\n", debianSuite, debArch, strings.Join(debianPackages, " "))
		return tmp, runCmd("", "mmdebstrap", append(args, debianSuite, tmp)...)
	})
	if err != nil {
		return nil, err
	}
	layer, err := build.CachedTarLayer(b.layers, file)
	if err != nil {
		return nil, err
	}
	b.debian = layer
	return layer, nil
}

// kubernetesModule is the k8s.io/kubernetes module the conformance programs
// were built from: its test/images directories hold their data files.
func (b *builder) kubernetesModule() (module, error) {
	if b.k8sVersion == "" {
		return module{}, fmt.Errorf("-k8s-version is needed for the conformance images")
	}
	return b.download("k8s.io/kubernetes", b.k8sVersion)
}

// prog is a program make conformance-tools built into -progs.
func (b *builder) prog(name string) (string, error) {
	bin := filepath.Join(b.progs, name)
	if err := checkStatic(bin); err != nil {
		return "", fmt.Errorf("%w (make conformance-tools builds it)", err)
	}
	return bin, nil
}

// agnhostLayers are agnhost's image: the Debian root file system and what
// upstream's Dockerfile adds to Alpine: /agnhost and its /agnhost-2 alias
// (the entrypoint tests run both), /coredns (the pod-DNS tests start it with
// a Corefile using hosts and log; berth's CoreDNS build has both), porter's
// localhost certificate, /uploads and /var/registry (fakeregistryserver's
// directory; upstream fills it from the internet, the suite's conformance
// tests do not use it).
func (b *builder) agnhostLayers() ([]v1.Layer, error) {
	base, err := b.debianRootfs()
	if err != nil {
		return nil, err
	}
	agnhost, err := b.prog("agnhost")
	if err != nil {
		return nil, err
	}
	coredns, _, err := b.goModule(coredns)
	if err != nil {
		return nil, err
	}
	k8s, err := b.kubernetesModule()
	if err != nil {
		return nil, err
	}
	porter := filepath.Join(k8s.Dir, "test/images/agnhost/porter")
	top, err := b.layer([]build.Entry{
		build.HostFile("/agnhost", 0o755, agnhost),
		build.Symlink("/agnhost-2", "agnhost"),
		build.HostFile("/coredns", 0o755, coredns),
		build.HostFile("/localhost.crt", 0o644, filepath.Join(porter, "localhost.crt")),
		build.HostFile("/localhost.key", 0o644, filepath.Join(porter, "localhost.key")),
		build.Dir("/uploads", 0o755),
		build.Dir("/var/registry", 0o755),
	})
	if err != nil {
		return nil, err
	}
	return []v1.Layer{base, top}, nil
}

func (b *builder) agnhostConfig(version string) build.Config {
	return build.Config{
		Entrypoint:   []string{"/agnhost"},
		Cmd:          []string{"pause"},
		ExposedPorts: []string{"80/tcp", "8080/tcp", "8081/tcp", "9376/tcp", "5000/tcp"},
		Architecture: b.arch,
		Labels: map[string]string{
			"org.opencontainers.image.version": version,
			"org.opencontainers.image.description": "agnhost from k8s.io/kubernetes@" + b.k8sVersion +
				" test/images/agnhost on Debian " + debianSuite,
		},
	}
}

func (b *builder) agnhost() (v1.Image, error) {
	layers, err := b.agnhostLayers()
	if err != nil {
		return nil, err
	}
	return build.Image(b.agnhostConfig("2.63.0"), layers...)
}

// agnhostPrev is the "previous" agnhost that rolling-update tests switch
// to: the same program, a different image (its label makes the digest
// differ, which is all the tests look at).
func (b *builder) agnhostPrev() (v1.Image, error) {
	layers, err := b.agnhostLayers()
	if err != nil {
		return nil, err
	}
	return build.Image(b.agnhostConfig("2.55"), layers...)
}

// webImage is kitten or nautilus: agnhost with a picture and data.json in /,
// running agnhost's test-webserver (the ImageVolume test mounts kitten and
// reads the files).
func (b *builder) webImage(name string) (v1.Image, error) {
	layers, err := b.agnhostLayers()
	if err != nil {
		return nil, err
	}
	k8s, err := b.kubernetesModule()
	if err != nil {
		return nil, err
	}
	html := filepath.Join(k8s.Dir, "test/images", name, "html")
	files, err := b.layer([]build.Entry{
		build.HostFile("/"+name+".jpg", 0o644, filepath.Join(html, name+".jpg")),
		build.HostFile("/data.json", 0o644, filepath.Join(html, "data.json")),
		// The ImageVolume test mounts kitten and looks for "Alpine Linux"
		// in its /etc/os-release, upstream's base. This one says what it
		// is, in words that include that name.
		build.File("/etc/os-release", 0o644, []byte(osRelease(name))),
	})
	if err != nil {
		return nil, err
	}
	cfg := b.agnhostConfig("1.8")
	cfg.Cmd = []string{"test-webserver"}
	cfg.Labels["org.opencontainers.image.description"] = name + " (agnhost test-webserver) from k8s.io/kubernetes@" + b.k8sVersion
	return build.Image(cfg, append(layers, files)...)
}

// osRelease is the os-release of kitten and nautilus: Debian's, with a
// PRETTY_NAME telling the ImageVolume test (and anyone else) that the image
// stands in for upstream's, which is built on Alpine Linux.
func osRelease(name string) string {
	return fmt.Sprintf(`PRETTY_NAME="berth's %s test image, Debian GNU/Linux 12 (bookworm) standing in for upstream's Alpine Linux"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
`, name)
}

func (b *builder) kitten() (v1.Image, error)   { return b.webImage("kitten") }
func (b *builder) nautilus() (v1.Image, error) { return b.webImage("nautilus") }

// debianImage is the Debian root file system alone, with cfg; what says
// what else makes it this image.
func (b *builder) debianImage(cfg build.Config, what string) (v1.Image, error) {
	base, err := b.debianRootfs()
	if err != nil {
		return nil, err
	}
	cfg.Architecture = b.arch
	cfg.Labels = map[string]string{"org.opencontainers.image.description": "Debian " + debianSuite + what}
	return build.Image(cfg, base)
}

// nginx serves Debian's default page on :80, as the tests need.
func (b *builder) nginx() (v1.Image, error) {
	return b.debianImage(build.Config{Cmd: []string{"nginx", "-g", "daemon off;"}, ExposedPorts: []string{"80/tcp"}}, " nginx-light")
}

// glibcDNSTesting is a glibc system with dig and getent.
func (b *builder) glibcDNSTesting() (v1.Image, error) {
	return b.debianImage(build.Config{}, " with bind9-dnsutils")
}

// nonroot runs as uid 1234 by default.
func (b *builder) nonroot() (v1.Image, error) {
	return b.debianImage(build.Config{User: "1234"}, ", USER 1234")
}

// BusyBox as upstream releases it, for the suite's busybox image (upstream
// builds it FROM docker-library's busybox:1.37.0, a static defconfig
// build). Debian's busybox-static differs where the suite looks: its sh
// drops environment variables whose names are not shell identifiers
// before a child sees them, upstream's ash passes them on (shell/ash.c says
// why), and the envFrom tests with prefixes such as "1-" or "$_-" run
// `sh -c env` and look for them. The release tarball comes from Debian's
// archive (the source package's orig tarball is upstream's, byte for
// byte), checked against upstream's published sha256.
const (
	busyboxVersion = "1.37.0"
	busyboxURL     = "http://deb.debian.org/debian/pool/main/b/busybox/busybox_1.37.0.orig.tar.bz2"
	busyboxSHA256  = "3311dff32e746499f4df0d5df04d7eb396382d7e108bb9250e7b519b837043a4"
)

// crossCompile is the GNU triplet prefix of the C cross compilers make deps
// installs for the release architectures (mk/release.mk).
var crossCompile = map[string]string{
	"amd64": "x86_64-linux-gnu-", "arm64": "aarch64-linux-gnu-", "arm": "arm-linux-gnueabihf-", "riscv64": "riscv64-linux-gnu-",
}

func (b *builder) busyboxUpstream() (v1.Image, error) {
	src, err := b.fetchChecked(busyboxURL, busyboxSHA256)
	if err != nil {
		return nil, err
	}
	if src, err = filepath.Abs(src); err != nil { // tar runs in the scratch directory
		return nil, err
	}
	// defconfig, static like docker-library's; without tc, whose CBQ code
	// needs kernel headers Linux 6.8 removed.
	cross := ""
	if b.arch != runtime.GOARCH {
		cross = crossCompile[b.arch]
	}
	key := fmt.Sprintf("busybox %s %s defconfig CONFIG_STATIC=y CONFIG_TC=n CROSS_COMPILE=%s\n", busyboxVersion, busyboxSHA256, cross)
	bin := filepath.Join(b.binCache, fmt.Sprintf("busybox-%s-%s", busyboxVersion, b.arch))
	dir := filepath.Join(b.work, "busybox-"+busyboxVersion)
	if err := runCmd(b.work, "tar", "-xjf", src); err != nil {
		return nil, err
	}
	err = b.cachedFile(bin, key, 0o755, func() (string, error) {
		fmt.Fprintf(os.Stderr, "berth-images: building busybox %s (defconfig, static)\n", busyboxVersion)
		if err := runCmd(dir, "make", "defconfig"); err != nil {
			return "", err
		}
		cfgFile := filepath.Join(dir, ".config")
		cfg, err := os.ReadFile(cfgFile)
		if err != nil {
			return "", err
		}
		c := strings.Replace(string(cfg), "# CONFIG_STATIC is not set", "CONFIG_STATIC=y", 1)
		c = strings.Replace(c, "CONFIG_TC=y", "# CONFIG_TC is not set", 1)
		if err := os.WriteFile(cfgFile, []byte(c), 0o644); err != nil {
			return "", err
		}
		args := []string{fmt.Sprintf("-j%d", runtime.NumCPU())}
		if cross != "" {
			args = append(args, "CROSS_COMPILE="+cross)
		}
		if err := runCmd(dir, "make", args...); err != nil {
			return "", fmt.Errorf("%w (busybox needs gcc and make; another architecture its cross gcc: make deps)", err)
		}
		return filepath.Join(dir, "busybox"), nil
	})
	if err != nil {
		return nil, err
	}
	return b.busyboxImage(bin, "busybox", filepath.Join(dir, "LICENSE"), map[string]string{
		"org.opencontainers.image.version":     busyboxVersion,
		"org.opencontainers.image.description": "BusyBox " + busyboxVersion + " (upstream release, defconfig, static)",
		"org.opencontainers.image.licenses":    "GPL-2.0-only",
	})
}

// fetchChecked returns the file at url, kept in the package cache, after
// checking its sha256 (a cached copy is checked too).
func (b *builder) fetchChecked(url, sum string) (string, error) {
	file := filepath.Join(b.cache, path.Base(url))
	if got, err := fileSum(file); err == nil && got == sum {
		return file, nil
	}
	if err := os.MkdirAll(b.cache, 0o755); err != nil {
		return "", err
	}
	fmt.Fprintf(os.Stderr, "berth-images: downloading %s\n", url)
	resp, err := http.Get(url)
	if err != nil {
		return "", fmt.Errorf("downloading %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("downloading %s: %s", url, resp.Status)
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("downloading %s: %w", url, err)
	}
	if got := fmt.Sprintf("%x", sha256.Sum256(data)); got != sum {
		return "", fmt.Errorf("%s: sha256 %s, want %s: not the file expected, nothing kept", url, got, sum)
	}
	if err := writeIfChanged(file, data); err != nil {
		return "", err
	}
	return file, nil
}

func fileSum(file string) (string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%x", sha256.Sum256(data)), nil
}

// nonewprivs: nnp, setuid root, prints its effective uid; the
// allowPrivilegeEscalation tests run it as uid 1000 and expect 0 only when
// escalation is allowed. On the busybox image, as upstream's is on Alpine.
func (b *builder) nonewprivs() (v1.Image, error) {
	bb, err := b.busyboxUpstream()
	if err != nil {
		return nil, err
	}
	nnp, err := b.prog("nnp")
	if err != nil {
		return nil, err
	}
	layer, err := b.layer([]build.Entry{{Path: "/usr/local/bin/nnp", Mode: 0o755 | fs.ModeSetuid, Source: nnp}})
	if err != nil {
		return nil, err
	}
	img, err := appendLayer(bb, layer)
	if err != nil {
		return nil, err
	}
	return build.Image(build.Config{
		Cmd:          []string{"nnp"},
		Architecture: b.arch,
		Labels:       map[string]string{"org.opencontainers.image.description": "nnp from k8s.io/kubernetes@" + b.k8sVersion + " on busybox"},
	}, img...)
}

// appendLayer returns img's layers with one more.
func appendLayer(img v1.Image, l v1.Layer) ([]v1.Layer, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	return append(slices.Clone(layers), l), nil
}

// sampleAPIServer is the aggregated API server of the Aggregator test,
// which passes only arguments. Built from k8s.io/sample-apiserver at
// berth's Kubernetes version (upstream's 1.29.2 image is v0.29.2).
func (b *builder) sampleAPIServer() (v1.Image, error) {
	bin, err := b.prog("sample-apiserver")
	if err != nil {
		return nil, err
	}
	layer, err := b.layer(append(baseEntries(), build.HostFile("/sample-apiserver", 0o755, bin)))
	if err != nil {
		return nil, err
	}
	return build.Image(build.Config{
		Entrypoint:   []string{"/sample-apiserver"},
		Architecture: b.arch,
		Labels: map[string]string{"org.opencontainers.image.description": "k8s.io/sample-apiserver " +
			strings.Replace(b.k8sVersion, "v1.", "v0.", 1)},
	}, layer)
}

// etcd is the Aggregator test's etcd, run as /usr/local/bin/etcd: the etcd
// berth links (go.etcd.io/etcd/server/v3 in berth's go.mod), built from
// berth's module graph; etcd's own go.mod points at sibling directories the
// module zip lacks, so it cannot be built alone.
func (b *builder) etcd() (v1.Image, error) {
	bin := filepath.Join(b.work, "etcd")
	if err := runCmdEnv([]string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=" + b.arch}, b.goBin,
		"build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", bin, "go.etcd.io/etcd/server/v3"); err != nil {
		return nil, err
	}
	version, err := output(b.goBin, "list", "-m", "-f", "{{.Version}}", "go.etcd.io/etcd/server/v3")
	if err != nil {
		return nil, err
	}
	layer, err := b.layer(append(baseEntries(), build.HostFile("/usr/local/bin/etcd", 0o755, bin)))
	if err != nil {
		return nil, err
	}
	return build.Image(build.Config{
		Cmd:          []string{"/usr/local/bin/etcd"},
		Architecture: b.arch,
		Labels:       map[string]string{"org.opencontainers.image.description": "etcd " + version + " (go.etcd.io/etcd/server/v3)"},
	}, layer)
}
