// Package pki creates and maintains the berth server's certificate
// authorities, keys and certificates in <data-dir>/server/tls, using the k3s
// file names so that k3s tooling and habits carry over.
package pki

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/atomicfile"
)

// renewBefore is how long before expiry a leaf is re-issued. It is generous
// so that a server restarted only every few months still renews in time.
const renewBefore = 120 * 24 * time.Hour

// caWarnBefore is how long before a CA expires Ensure starts warning: CAs are
// never rotated automatically, so an operator needs lead time.
const caWarnBefore = 365 * 24 * time.Hour

const (
	dirMode  = 0o700
	keyMode  = 0o600
	certMode = 0o644
)

// Config describes the PKI to maintain.
type Config struct {
	Dir           string           // e.g. /var/lib/berth/server/tls; created 0700 if missing
	ClusterDomain string           // e.g. "cluster.local"; empty means "cluster.local"
	ServiceIP     net.IP           // first IP of the service CIDR, e.g. 10.43.0.1; required
	IPs           []net.IP         // node / advertise IPs to add to serving SANs
	SANs          []string         // extra --tls-san entries: each is an IP or a DNS name
	Now           func() time.Time // nil means time.Now (tests pass a fake clock)
}

// Pair is a certificate and its private key, as absolute file paths.
type Pair struct{ Cert, Key string }

// Files lists the PKI files Ensure maintains.
type Files struct {
	ServerCA, ClientCA, RequestHeaderCA Pair
	ServiceAccountKey                   string // service.key (private key PEM)
	ServiceAccountPub                   string // service.pub, the public half of ServiceAccountKey
	Serving                             Pair   // apiserver + supervisor serving cert, signed by server CA
	Admin                               Pair   // CN system:admin, O system:masters (client CA)
	ControllerManager                   Pair   // CN system:kube-controller-manager (client CA)
	Scheduler                           Pair   // CN system:kube-scheduler (client CA)
	KubeletClient                       Pair   // apiserver→kubelet client: CN system:apiserver, O system:masters (client CA)
	AuthProxy                           Pair   // CN system:auth-proxy (request-header CA)
}

func pair(dir, name string) Pair {
	return Pair{Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key")}
}

// FilesIn returns the paths Ensure maintains in dir, for readers that must
// not run Ensure (berth token reads the server CA).
func FilesIn(dir string) *Files {
	return &Files{
		ServerCA:          pair(dir, "server-ca"),
		ClientCA:          pair(dir, "client-ca"),
		RequestHeaderCA:   pair(dir, "request-header-ca"),
		ServiceAccountKey: filepath.Join(dir, "service.key"),
		ServiceAccountPub: filepath.Join(dir, "service.pub"),
		Serving:           pair(dir, "serving-kube-apiserver"),
		Admin:             pair(dir, "client-admin"),
		ControllerManager: pair(dir, "client-controller"),
		Scheduler:         pair(dir, "client-scheduler"),
		KubeletClient:     pair(dir, "client-kube-apiserver"),
		AuthProxy:         pair(dir, "client-auth-proxy"),
	}
}

// Ensure creates whatever is missing from the PKI in cfg.Dir and re-issues
// leaf certificates that are unusable, about to expire, or no longer match
// cfg. It never replaces a CA or the service account key: doing so would
// invalidate every credential issued from them, so it errors out instead.
// With an unchanged cfg and no leaf near expiry it writes nothing.
//
// Ensure is not safe to run concurrently on the same directory.
func Ensure(cfg Config) (*Files, error) {
	if cfg.Dir == "" {
		return nil, errors.New("pki: Config.Dir is empty")
	}
	if cfg.ServiceIP == nil {
		return nil, errors.New("pki: Config.ServiceIP is required: in-cluster clients reach the apiserver through it")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("pki directory %s: %w", cfg.Dir, err)
	}
	now := time.Now()
	if cfg.Now != nil {
		now = cfg.Now()
	}
	if err := ensureDir(dir); err != nil {
		return nil, err
	}
	files := FilesIn(dir)

	// The CAs, the service account key and later the leaves are independent
	// of each other, so each group is handled concurrently: first start is
	// dominated by fsync latency, and concurrent fsyncs share journal commits.
	var serverCA, clientCA, requestHeaderCA *CA
	err = parallel(
		func() (err error) {
			serverCA, err = ensureCA("server", "berth-server-ca", files.ServerCA, now)
			return err
		},
		func() (err error) {
			clientCA, err = ensureCA("client", "berth-client-ca", files.ClientCA, now)
			return err
		},
		func() (err error) {
			requestHeaderCA, err = ensureCA("request-header", "berth-request-header-ca", files.RequestHeaderCA, now)
			return err
		},
		func() error { return ensureServiceAccountKey(files.ServiceAccountKey, files.ServiceAccountPub) },
	)
	if err != nil {
		return nil, err
	}

	leaves := []leaf{
		{"serving", serverCA, files.Serving, servingSpec(cfg)},
		{"admin", clientCA, files.Admin, LeafSpec{CommonName: "system:admin", Organization: []string{"system:masters"}, Client: true}},
		{"controller-manager", clientCA, files.ControllerManager, LeafSpec{CommonName: "system:kube-controller-manager", Client: true}},
		{"scheduler", clientCA, files.Scheduler, LeafSpec{CommonName: "system:kube-scheduler", Client: true}},
		{"kubelet client", clientCA, files.KubeletClient, LeafSpec{CommonName: "system:apiserver", Organization: []string{"system:masters"}, Client: true}},
		{"auth-proxy", requestHeaderCA, files.AuthProxy, LeafSpec{CommonName: "system:auth-proxy", Client: true}},
	}
	if err := ensureLeaves(leaves, now); err != nil {
		return nil, err
	}
	return files, nil
}

// leaf is a certificate to issue (or keep) from ca.
type leaf struct {
	name string
	ca   *CA
	pair Pair
	spec LeafSpec
}

// ensureLeaves issues (or keeps) the leaves concurrently.
func ensureLeaves(leaves []leaf, now time.Time) error {
	tasks := make([]func() error, len(leaves))
	for i, l := range leaves {
		tasks[i] = func() error {
			if err := ensureLeaf(l.ca, l.spec, l.pair, now); err != nil {
				return fmt.Errorf("issue %s certificate: %w", l.name, err)
			}
			return nil
		}
	}
	return parallel(tasks...)
}

// parallel runs fns concurrently and joins their errors in argument order,
// so that the message does not depend on scheduling.
func parallel(fns ...func() error) error {
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	for i, fn := range fns {
		wg.Go(func() { errs[i] = fn() })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func ensureDir(dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(dir, dirMode); err != nil {
			return fmt.Errorf("create PKI directory %s: %w", dir, err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("PKI directory %s: %w", dir, err)
	case !fi.IsDir():
		return fmt.Errorf("PKI directory %s exists but is not a directory", dir)
	}
	// The directory holds CA keys: close it to other users even if it was
	// created by hand or by an older version with looser permissions.
	if fi.Mode().Perm()&^dirMode != 0 {
		klog.Infof("Tightening permissions of %s from %#o to %#o", dir, fi.Mode().Perm(), dirMode)
		if err := os.Chmod(dir, dirMode); err != nil {
			return fmt.Errorf("chmod PKI directory %s: %w", dir, err)
		}
	}
	return nil
}

// tightenKeyMode makes an existing private key file owner-only.
func tightenKeyMode(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&^keyMode != 0 {
		klog.Infof("Tightening permissions of %s from %#o to %#o", path, fi.Mode().Perm(), keyMode)
		if err := os.Chmod(path, keyMode); err != nil {
			return fmt.Errorf("chmod %s: %w", path, err)
		}
	}
	return nil
}

func fileExists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, err
	}
}

// ensureCA loads the named CA, or creates it if neither of its files exists.
func ensureCA(name, cnPrefix string, p Pair, now time.Time) (*CA, error) {
	certOK, err := fileExists(p.Cert)
	if err != nil {
		return nil, fmt.Errorf("%s CA: %w", name, err)
	}
	keyOK, err := fileExists(p.Key)
	if err != nil {
		return nil, fmt.Errorf("%s CA: %w", name, err)
	}
	switch {
	case certOK && keyOK:
		ca, err := LoadCA(p.Cert, p.Key)
		if err != nil {
			return nil, fmt.Errorf("%s CA: %w", name, err)
		}
		if now.After(ca.Cert.NotAfter) {
			return nil, fmt.Errorf("%s CA certificate %s expired at %s; berth does not replace CAs automatically, rotate it by hand",
				name, p.Cert, ca.Cert.NotAfter.UTC().Format(time.RFC3339))
		}
		if now.Add(caWarnBefore).After(ca.Cert.NotAfter) {
			klog.Warningf("%s CA certificate %s expires at %s; rotate it before then", name, p.Cert, ca.Cert.NotAfter.UTC().Format(time.RFC3339))
		}
		if err := tightenKeyMode(p.Key); err != nil {
			return nil, fmt.Errorf("%s CA: %w", name, err)
		}
		return ca, nil
	case certOK:
		return nil, missingCAFileError(name, p.Key, p.Cert)
	case keyOK:
		return nil, missingCAFileError(name, p.Cert, p.Key)
	}
	klog.Infof("Creating %s CA %s", name, p.Cert)
	ca, keyPEM, err := newCA(cnPrefix, now)
	if err != nil {
		return nil, fmt.Errorf("create %s CA: %w", name, err)
	}
	// Key first: a crash between the two renames then leaves a key without a
	// certificate, which Ensure reports rather than papering over.
	if err := atomicfile.WriteAll(
		atomicfile.File{Path: p.Key, Data: keyPEM, Perm: keyMode},
		atomicfile.File{Path: p.Cert, Data: ca.CertPEM, Perm: certMode},
	); err != nil {
		return nil, fmt.Errorf("create %s CA: %w", name, err)
	}
	return ca, nil
}

func missingCAFileError(name, missing, present string) error {
	return fmt.Errorf("%s CA file %s is missing but %s exists; refusing to create a new CA, which would invalidate every certificate and token issued by the old one: restore %s from a backup (do not delete CA files), or remove both files to start a new cluster PKI",
		name, missing, present, missing)
}

// ensureServiceAccountKey creates service.key if missing and keeps
// service.pub in step with it. An existing but unreadable service.key is an
// error: replacing it would invalidate every service account token.
func ensureServiceAccountKey(keyPath, pubPath string) error {
	keyPEM, err := os.ReadFile(keyPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		klog.Infof("Creating service account key %s", keyPath)
		key, newPEM, err := newKey()
		if err != nil {
			return fmt.Errorf("create service account key: %w", err)
		}
		pubPEM, err := publicKeyPEM(key.Public())
		if err != nil {
			return fmt.Errorf("create service account key: %w", err)
		}
		if err := atomicfile.WriteAll(atomicfile.File{Path: keyPath, Data: newPEM, Perm: keyMode}, atomicfile.File{Path: pubPath, Data: pubPEM, Perm: certMode}); err != nil {
			return fmt.Errorf("create service account key: %w", err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("read service account key: %w", err)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return fmt.Errorf("service account key %s is unparsable (not replacing it, that would invalidate every service account token): %w", keyPath, err)
	}
	if err := tightenKeyMode(keyPath); err != nil {
		return fmt.Errorf("service account key: %w", err)
	}
	pubPEM, err := publicKeyPEM(key.Public())
	if err != nil {
		return fmt.Errorf("service account key %s: %w", keyPath, err)
	}
	have, err := os.ReadFile(pubPath)
	if err == nil && string(have) == string(pubPEM) {
		return nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read service account public key: %w", err)
	}
	klog.Infof("Writing service account public key %s from %s", pubPath, keyPath)
	if err := atomicfile.Write(pubPath, pubPEM, certMode); err != nil {
		return fmt.Errorf("service account public key: %w", err)
	}
	return nil
}

func publicKeyPEM(pub any) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("marshal public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// servingSpec lists every name clients use to reach the apiserver and the
// supervisor: the in-cluster service names and IP, loopback, the node's own
// addresses and the user's --tls-san entries.
func servingSpec(cfg Config) LeafSpec {
	domain := strings.Trim(cfg.ClusterDomain, ".")
	if domain == "" {
		domain = "cluster.local"
	}
	var dns []string
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, cfg.ServiceIP}
	ips = append(ips, cfg.IPs...)
	dns = append(dns, "kubernetes", "kubernetes.default", "kubernetes.default.svc",
		"kubernetes.default.svc."+domain, "localhost")
	for _, san := range cfg.SANs {
		san = strings.TrimSpace(san)
		if ip := parseIP(san); ip != nil {
			ips = append(ips, ip)
		} else if san != "" {
			// DNS names are case-insensitive; lower case keeps the set
			// comparison against the issued certificate stable.
			dns = append(dns, strings.ToLower(strings.TrimSuffix(san, ".")))
		}
	}
	return LeafSpec{
		CommonName: "kube-apiserver",
		DNSNames:   dedup(dns),
		IPs:        dedupIPs(ips),
		Server:     true,
	}
}

// parseIP accepts bare and bracketed ("[fd00::1]") IP literals.
func parseIP(s string) net.IP {
	if ip := net.ParseIP(s); ip != nil {
		return ip
	}
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		return net.ParseIP(s[1 : len(s)-1])
	}
	return nil
}

func dedup(in []string) []string {
	out := make([]string, 0, len(in))
	for _, s := range in {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

func dedupIPs(in []net.IP) []net.IP {
	out := make([]net.IP, 0, len(in))
	for _, ip := range in {
		if ip == nil || slices.ContainsFunc(out, ip.Equal) {
			continue
		}
		out = append(out, ip)
	}
	return out
}

// ensureLeaf re-issues the leaf at p, with a new key, unless the current one
// is valid for spec.
func ensureLeaf(ca *CA, spec LeafSpec, p Pair, now time.Time) error {
	reason, err := leafReissueReason(ca, spec, p, now)
	if err != nil {
		return err
	}
	if reason == "" {
		return tightenKeyMode(p.Key)
	}
	klog.Infof("Issuing certificate %s: %s", p.Cert, reason)
	key, keyPEM, err := newKey()
	if err != nil {
		return err
	}
	_, certPEM, err := ca.Sign(spec, key.Public(), now)
	if err != nil {
		return err
	}
	// Key first: if a crash separates the renames, the new key does not
	// match the old certificate and the next Ensure re-issues the pair.
	return atomicfile.WriteAll(atomicfile.File{Path: p.Key, Data: keyPEM, Perm: keyMode}, atomicfile.File{Path: p.Cert, Data: certPEM, Perm: certMode})
}

// leafReissueReason returns why the leaf at p must be re-issued, or "" if it
// can be kept. Only I/O errors other than a missing file are returned as
// errors: overwriting a file we could not read would hide the real problem.
func leafReissueReason(ca *CA, spec LeafSpec, p Pair, now time.Time) (string, error) {
	certPEM, err := os.ReadFile(p.Cert)
	if errors.Is(err, fs.ErrNotExist) {
		return "certificate missing", nil
	} else if err != nil {
		return "", fmt.Errorf("read certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(p.Key)
	if errors.Is(err, fs.ErrNotExist) {
		return "key " + p.Key + " missing", nil
	} else if err != nil {
		return "", fmt.Errorf("read key: %w", err)
	}
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return fmt.Sprintf("certificate unparsable: %v", err), nil
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return fmt.Sprintf("key %s unparsable: %v", p.Key, err), nil
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return "key " + p.Key + " does not match the certificate", nil
	}
	if err := signedBy(cert, ca); err != nil {
		return fmt.Sprintf("not signed by the current CA: %v", err), nil
	}
	if now.Add(renewBefore).After(cert.NotAfter) {
		return fmt.Sprintf("expires at %s, within %d days", cert.NotAfter.UTC().Format(time.RFC3339), int(renewBefore.Hours()/24)), nil
	}
	if now.Before(cert.NotBefore) {
		return fmt.Sprintf("not valid before %s", cert.NotBefore.UTC().Format(time.RFC3339)), nil
	}
	if cert.Subject.CommonName != spec.CommonName {
		return fmt.Sprintf("common name %q, want %q", cert.Subject.CommonName, spec.CommonName), nil
	}
	if !sameSet(cert.Subject.Organization, spec.Organization) {
		return fmt.Sprintf("organizations %q, want %q", cert.Subject.Organization, spec.Organization), nil
	}
	if !sameSet(cert.DNSNames, spec.DNSNames) {
		return fmt.Sprintf("DNS SANs %q, want %q", cert.DNSNames, spec.DNSNames), nil
	}
	if !sameSet(ipStrings(cert.IPAddresses), ipStrings(spec.IPs)) {
		return fmt.Sprintf("IP SANs %v, want %v", cert.IPAddresses, spec.IPs), nil
	}
	if !slices.Equal(sortedUsages(cert.ExtKeyUsage), sortedUsages(extKeyUsages(spec))) {
		return "extended key usages differ", nil
	}
	return "", nil
}

func sameSet(a, b []string) bool {
	set := func(s []string) []string {
		s = slices.Clone(s)
		slices.Sort(s)
		return slices.Compact(s)
	}
	return slices.Equal(set(a), set(b))
}

func ipStrings(ips []net.IP) []string {
	out := make([]string, len(ips))
	for i, ip := range ips {
		out[i] = ip.String() // canonical: 4- and 16-byte IPv4 print alike
	}
	return out
}

func sortedUsages(u []x509.ExtKeyUsage) []x509.ExtKeyUsage {
	u = slices.Clone(u)
	slices.Sort(u)
	return slices.Compact(u)
}
