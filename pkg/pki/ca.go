package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"time"
)

const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 365 * 24 * time.Hour
	// backdate absorbs clock skew between the machine issuing a certificate
	// and the machines verifying it.
	backdate = time.Hour
)

// CA is a certificate authority able to sign leaf certificates.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// CertPEM is the CA certificate file exactly as stored on disk; the join
	// token pins its sha256, so it must not be re-encoded.
	CertPEM []byte
}

// LeafSpec describes a leaf certificate to issue.
type LeafSpec struct {
	CommonName     string
	Organization   []string
	DNSNames       []string
	IPs            []net.IP
	Client, Server bool // ext key usages
}

// LoadCA reads a CA certificate and its private key and checks that they
// belong together. The certificate file may hold a bundle; its first
// certificate is the signer. Keys may be SEC 1 EC, PKCS #1 RSA or PKCS #8
// so that user-provided CAs work too.
func LoadCA(certPath, keyPath string) (*CA, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate %s: %w", certPath, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("certificate %s is not a CA certificate", certPath)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("read CA key: %w", err)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("parse CA key %s: %w", keyPath, err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, fmt.Errorf("CA key %s does not match CA certificate %s", keyPath, certPath)
	}
	return &CA{Cert: cert, Key: key, CertPEM: certPEM}, nil
}

// Sign issues a leaf certificate for pub, valid for one year from now (back
// dated by an hour for clock skew), and returns it parsed and PEM encoded.
func (ca *CA) Sign(spec LeafSpec, pub crypto.PublicKey, now time.Time) (*x509.Certificate, []byte, error) {
	if spec.CommonName == "" {
		return nil, nil, errors.New("sign certificate: empty common name")
	}
	if pub == nil {
		return nil, nil, fmt.Errorf("sign %s certificate: no public key", spec.CommonName)
	}
	if !spec.Client && !spec.Server {
		return nil, nil, fmt.Errorf("sign %s certificate: neither client nor server usage requested", spec.CommonName)
	}
	if now.After(ca.Cert.NotAfter) {
		return nil, nil, fmt.Errorf("sign %s certificate: CA %q expired at %s", spec.CommonName, ca.Cert.Subject.CommonName, ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, fmt.Errorf("sign %s certificate: %w", spec.CommonName, err)
	}
	usage := x509.KeyUsageDigitalSignature
	if _, ok := pub.(*rsa.PublicKey); ok {
		// Only RSA keys do key transport; ECDSA just signs.
		usage |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: spec.CommonName, Organization: spec.Organization},
		NotBefore:             now.Add(-backdate).UTC(),
		NotAfter:              now.Add(leafValidity).UTC(),
		KeyUsage:              usage,
		ExtKeyUsage:           extKeyUsages(spec),
		BasicConstraintsValid: true,
		DNSNames:              spec.DNSNames,
		IPAddresses:           spec.IPs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign %s certificate: %w", spec.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("sign %s certificate: %w", spec.CommonName, err)
	}
	return cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// newCA creates a self-signed CA named <prefix>@<unix time>, the k3s naming
// scheme, which makes a replaced CA easy to spot in `openssl x509` output.
func newCA(prefix string, now time.Time) (*CA, []byte, error) {
	key, keyPEM, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: fmt.Sprintf("%s@%d", prefix, now.Unix())},
		NotBefore:             now.Add(-backdate).UTC(),
		NotAfter:              now.Add(caValidity).UTC(),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return &CA{Cert: cert, Key: key, CertPEM: certPEM}, keyPEM, nil
}

// newKey generates an ECDSA P-256 key: generation takes microseconds (RSA
// takes tens of milliseconds), which keeps first start fast.
func newKey() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal key: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("generate serial number: %w", err)
		}
		// RFC 5280 forbids a zero serial; retrying keeps the distribution uniform.
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

func extKeyUsages(spec LeafSpec) []x509.ExtKeyUsage {
	var u []x509.ExtKeyUsage
	if spec.Server {
		u = append(u, x509.ExtKeyUsageServerAuth)
	}
	if spec.Client {
		u = append(u, x509.ExtKeyUsageClientAuth)
	}
	return u
}

// parseCertPEM returns the first certificate in data.
func parseCertPEM(data []byte) (*x509.Certificate, error) {
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("no CERTIFICATE PEM block found")
		}
		if block.Type == "CERTIFICATE" {
			return x509.ParseCertificate(block.Bytes)
		}
	}
}

// parseKeyPEM returns the first private key in data. Other blocks are
// skipped: `openssl ecparam -genkey` writes an EC PARAMETERS block first.
func parseKeyPEM(data []byte) (crypto.Signer, error) {
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("no private key PEM block found")
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", block.Type, err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("unsupported private key type %T", key)
		}
		return signer, nil
	}
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}

// signedBy reports whether cert was issued by ca's current certificate.
func signedBy(cert *x509.Certificate, ca *CA) error {
	if !bytes.Equal(cert.RawIssuer, ca.Cert.RawSubject) {
		return fmt.Errorf("issuer %q is not the CA %q", cert.Issuer.CommonName, ca.Cert.Subject.CommonName)
	}
	return cert.CheckSignatureFrom(ca.Cert)
}

// EnsureLeaf issues the leaf at p from ca unless a valid one is already
// there (same rules as Ensure: re-issued within 120 days of expiry, when its
// names changed, or when it no longer chains to ca).
func EnsureLeaf(ca *CA, spec LeafSpec, p Pair, now time.Time) error {
	return ensureLeaf(ca, spec, p, now)
}
