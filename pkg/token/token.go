// Package token handles the berth server token, in the k3s format
// K10<sha256 of the server CA certificate PEM>::<user>:<password>, and
// kubeadm-style bootstrap tokens, K10<hash>::<id>.<secret>. The CA hash lets
// a joining node pin the cluster CA before it trusts the server.
//
// The agent imports this package: it must not import server packages.
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

	bootstraputil "k8s.io/cluster-bootstrap/token/util"
	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/atomicfile"
)

const prefix = "K10"

// PreviousFile (in <data-dir>/server, beside "token") holds the server token
// from before the last rotation until the server has re-sealed the
// cluster's bootstrap data with the new one.
const PreviousFile = "token.previous"

// Token is a parsed token. A bare password parses to a Token with an empty
// CAHash and User. For a bootstrap token (Bootstrap set), User is the token
// id and Password its secret.
type Token struct {
	CAHash, User, Password string
	Bootstrap              bool
}

// BootstrapToken returns "<id>.<secret>" for a bootstrap token (the bearer
// token the apiserver accepts), "" otherwise.
func (t Token) BootstrapToken() string {
	if !t.Bootstrap {
		return ""
	}
	return bootstraputil.TokenFromIDAndSecret(t.User, t.Password)
}

// FormatBootstrap returns K10<CAHash(caPEM)>::<id>.<secret> for a bootstrap
// token "<id>.<secret>".
func FormatBootstrap(caPEM []byte, bootstrapToken string) (string, error) {
	t, ok := parseBootstrap(bootstrapToken)
	if !ok {
		return "", errBootstrapFormat
	}
	t.CAHash = CAHash(caPEM)
	return t.String(), nil
}

// errBootstrapFormat never quotes the input: it may hold a secret.
var errBootstrapFormat = errors.New(`bootstrap token is not of the form "<id>.<secret>" (id [a-z0-9]{6}, secret [a-z0-9]{16})`)

// parseBootstrap reads "<id>.<secret>".
func parseBootstrap(s string) (Token, bool) {
	if !bootstraputil.IsValidBootstrapToken(s) {
		return Token{}, false
	}
	id, secret, _ := strings.Cut(s, ".")
	return Token{User: id, Password: secret, Bootstrap: true}, true
}

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

// String returns the K10 form, or without a CA hash the bare password or
// bootstrap token (the only forms Parse reads back without one).
func (t Token) String() string {
	creds := t.User + ":" + t.Password
	if t.Bootstrap {
		creds = t.BootstrapToken()
	}
	switch {
	case t.CAHash != "":
		return prefix + t.CAHash + "::" + creds
	case t.Bootstrap:
		return creds
	}
	return t.Password
}

// Parse reads a token in the full K10 form (user:password or a bootstrap
// token after the "::"), a bare bootstrap token "<id>.<secret>", or a bare
// password. Surrounding whitespace (a trailing newline from a file) is
// ignored. A string starting with K10 is always read as the full form, as
// k3s does, so a malformed full token is reported instead of being used as a
// password.
func Parse(s string) (Token, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Token{}, errors.New("parse token: empty token")
	}
	if !strings.HasPrefix(s, prefix) {
		if t, ok := parseBootstrap(s); ok {
			return t, nil
		}
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
	// A bootstrap token has no ':', so it cannot be mistaken for
	// user:password.
	if t, ok := parseBootstrap(creds); ok {
		t.CAHash = strings.ToLower(hash)
		return t, nil
	}
	user, password, ok := strings.Cut(creds, ":")
	if !ok || user == "" || password == "" {
		return Token{}, errors.New(`parse token: K10 token lacks "user:password" or "<id>.<secret>" after "::"`)
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

	password, err := givenPassword(secret, "--token", hash, caPath)
	if err != nil {
		return Token{}, fmt.Errorf("server token: %w", err)
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
	if err := writeServerToken(path, tok); err != nil {
		return Token{}, fmt.Errorf("server token: %w", err)
	}
	klog.Infof("Wrote server token to %s", path)
	return tok, nil
}

// RotateServerToken replaces the server token stored at path with one for
// newSecret (a bare password or a K10 token for this CA), or for a random
// password if newSecret is empty, and returns it. The token must exist:
// rotating is for an initialised server, and creating one here would hide
// a wrong data dir. A running server keeps the old token until restarted.
func RotateServerToken(path string, caPEM []byte, caPath string, newSecret string) (Token, error) {
	if len(caPEM) == 0 {
		return Token{}, fmt.Errorf("rotate server token: CA certificate %s is empty", caPath)
	}
	hash := CAHash(caPEM)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Token{}, fmt.Errorf("rotate server token: there is no server token at %s: is this the data dir of a berth server that has started once?", path)
	}
	if err != nil {
		return Token{}, fmt.Errorf("rotate server token: %w", err)
	}
	old, err := Parse(string(data))
	if err != nil {
		return Token{}, fmt.Errorf("rotate server token %s: %w", path, err)
	}
	if old.CAHash != hash {
		return Token{}, fmt.Errorf("rotate server token %s: the token's CA hash %q does not match the cluster CA at %s (hash %s); refusing to touch it",
			path, old.CAHash, caPath, hash)
	}
	password, err := givenPassword(newSecret, "--new-token", hash, caPath)
	if err != nil {
		return Token{}, fmt.Errorf("rotate server token: %w", err)
	}
	if password == "" {
		if password, err = Random(16); err != nil {
			return Token{}, fmt.Errorf("rotate server token: %w", err)
		}
	}
	if subtle.ConstantTimeCompare([]byte(password), []byte(old.Password)) == 1 {
		return Token{}, errors.New("rotate server token: the new token is the same as the current one")
	}
	user := old.User
	if user == "" {
		user = "server"
	}
	tok := Token{CAHash: hash, User: user, Password: password}
	if err := writeServerToken(path, tok); err != nil {
		return Token{}, fmt.Errorf("rotate server token: %w", err)
	}
	klog.V(1).Infof("Rotated the server token in %s", path)
	return tok, nil
}

// givenPassword returns the password a user-supplied server token (flag
// names it in errors) contributes: "" when secret is empty. A K10 token
// must be for the CA with this hash.
func givenPassword(secret, flag, hash, caPath string) (string, error) {
	secret = strings.TrimSpace(secret)
	if secret == "" {
		return "", nil
	}
	given, err := Parse(secret)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	if given.CAHash != "" && given.CAHash != hash {
		return "", fmt.Errorf("the given token belongs to a different cluster CA: its CA hash %s does not match the cluster CA at %s (hash %s)",
			given.CAHash, caPath, hash)
	}
	if given.Bootstrap {
		// The server token is a shared secret: a bootstrap-shaped one is
		// used whole, as it was before bootstrap tokens were parsed.
		return given.BootstrapToken(), nil
	}
	return given.Password, nil
}

// writeServerToken writes tok owner-only: it is a cluster join credential.
func writeServerToken(path string, tok Token) error {
	return atomicfile.Write(path, []byte(tok.String()+"\n"), 0o600)
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
