package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"github.com/berth-io/berth/pkg/atomicfile"
)

// LoadOrCreateKey returns the private key at path, creating it (0600) when
// the file does not exist. A joining node keeps its keys across restarts;
// only certificate requests go to the server.
func LoadOrCreateKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		key, err := parseKeyPEM(data)
		if err != nil {
			return nil, fmt.Errorf("key %s: %w", path, err)
		}
		return key, tightenKeyMode(path)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read key: %w", err)
	}
	key, keyPEM, err := newKey()
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(path, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("write key: %w", err)
	}
	return key, nil
}

// CSR returns a PEM certificate request signed by key. The subject is
// left empty: the server decides every name in the certificate.
func CSR(key crypto.Signer) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("create certificate request: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// ParseCSR reads a PEM certificate request and checks its self-signature,
// which proves the requester holds the private key.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("no CERTIFICATE REQUEST PEM block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request signature: %w", err)
	}
	return csr, nil
}

// ParseCertPEM returns the first certificate in data.
func ParseCertPEM(data []byte) (*x509.Certificate, error) { return parseCertPEM(data) }
