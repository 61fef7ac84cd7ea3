// Package token handles the berth server token, in the k3s format
// K10<sha256 of the server CA certificate PEM>::<user>:<password>. The CA
// hash lets a joining node pin the cluster CA before it trusts the server.
package token

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/atomicfile"
)

const prefix = "K10"

// Token is a parsed server token. A bare password parses to a Token with an
// empty CAHash and User.
type Token struct{ CAHash, User, Password string }

// CAHash returns the hex sha256 of the CA certificate PEM bytes, hashed as
// stored on disk (k3s hashes the file, not the DER).
func CAHash(caPEM []byte) string {
	sum := sha256.Sum256(caPEM)
	return hex.EncodeToString(sum[:])
}

// Format returns the full token K10<CAHash(caPEM)>::user:password.
func Format(caPEM []byte, user, password string) string {
	return Token{CAHash: CAHash(caPEM), User: user, Password: password}.String()
}

// String returns the K10 form, or just the password when there is no CA
// hash (the only form Parse reads back without one).
func (t Token) String() string {
	if t.CAHash == "" {
		return t.Password
	}
	return prefix + t.CAHash + "::" + t.User + ":" + t.Password
}

// Parse reads a token in the full K10 form, or a bare password. Surrounding
// whitespace (a trailing newline from a file) is ignored. A string starting
// with K10 is always read as the full form, as k3s does, so a malformed full
// token is reported instead of being used as a password.
func Parse(s string) (Token, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Token{}, errors.New("parse token: empty token")
	}
	if !strings.HasPrefix(s, prefix) {
		return Token{Password: s}, nil
	}
	hash, creds, ok := strings.Cut(s[len(prefix):], "::")
	if !ok {
		return Token{}, errors.New(`parse token: K10 token lacks the "::" between CA hash and user:password`)
	}
	if len(hash) != hex.EncodedLen(sha256.Size) {
		return Token{}, fmt.Errorf("parse token: CA hash has %d characters, want %d hex digits", len(hash), hex.EncodedLen(sha256.Size))
	}
	if _, err := hex.DecodeString(hash); err != nil {
		return Token{}, fmt.Errorf("parse token: CA hash is not hex: %w", err)
	}
	user, password, ok := strings.Cut(creds, ":")
	if !ok || user == "" || password == "" {
		return Token{}, errors.New(`parse token: K10 token lacks "user:password" after "::"`)
	}
	return Token{CAHash: strings.ToLower(hash), User: user, Password: password}, nil
}

// Random returns nbytes of crypto/rand randomness, hex encoded.
func Random(nbytes int) (string, error) {
	if nbytes <= 0 {
		return "", fmt.Errorf("random secret: invalid length %d", nbytes)
	}
	b := make([]byte, nbytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random secret: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// EnsureServerToken returns the server token stored at path
// (<data-dir>/server/token), creating it on first start from secret, or
// from a random password if secret is empty. caPEM is the server CA
// certificate read from caPath.
//
// secret is what the user passed as --token: a bare password or a full K10
// token. It never overrides an existing file; it must agree with it, so that
// a server restarted with the wrong --token fails loudly instead of
// splitting from its cluster. A stored token whose CA hash differs from
// caPEM is refused for the same reason: the CA was replaced underneath it.
func EnsureServerToken(path string, caPEM []byte, caPath string, secret string) (Token, error) {
	if len(caPEM) == 0 {
		return Token{}, fmt.Errorf("server token: CA certificate %s is empty", caPath)
	}
	hash := CAHash(caPEM)

	var password string
	if secret = strings.TrimSpace(secret); secret != "" {
		given, err := Parse(secret)
		if err != nil {
			return Token{}, fmt.Errorf("server token: --token: %w", err)
		}
		if given.CAHash != "" && given.CAHash != hash {
			return Token{}, fmt.Errorf("server token: the given token belongs to a different cluster CA: its CA hash %s does not match the cluster CA at %s (hash %s)",
				given.CAHash, caPath, hash)
		}
		password = given.Password
	}

	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		stored, err := Parse(string(data))
		if err != nil {
			return Token{}, fmt.Errorf("server token %s: %w", path, err)
		}
		if stored.CAHash != hash {
			return Token{}, fmt.Errorf("server token %s: the token's CA hash %q does not match the cluster CA at %s (hash %s); refusing to overwrite it",
				path, stored.CAHash, caPath, hash)
		}
		if password != "" && subtle.ConstantTimeCompare([]byte(password), []byte(stored.Password)) != 1 {
			return Token{}, fmt.Errorf("server token: the given token does not match the stored one in %s", path)
		}
		if err := tightenMode(path); err != nil {
			return Token{}, fmt.Errorf("server token: %w", err)
		}
		return stored, nil
	case !errors.Is(err, fs.ErrNotExist):
		return Token{}, fmt.Errorf("read server token: %w", err)
	}

	if password == "" {
		if password, err = Random(16); err != nil {
			return Token{}, fmt.Errorf("server token: %w", err)
		}
	}
	tok := Token{CAHash: hash, User: "server", Password: password}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return Token{}, fmt.Errorf("server token: create directory %s: %w", filepath.Dir(path), err)
	}
	if err := atomicfile.Write(path, []byte(tok.String()+"\n"), 0o600); err != nil {
		return Token{}, fmt.Errorf("server token: %w", err)
	}
	klog.Infof("Wrote server token to %s", path)
	return tok, nil
}

// tightenMode makes an existing token file owner-only: it is a cluster
// join credential.
func tightenMode(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&^0o600 != 0 {
		klog.Infof("Tightening permissions of %s from %#o to 0600", path, fi.Mode().Perm())
		if err := os.Chmod(path, 0o600); err != nil {
			return fmt.Errorf("chmod %s: %w", path, err)
		}
	}
	return nil
}
