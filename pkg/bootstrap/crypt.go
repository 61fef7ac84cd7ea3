package bootstrap

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Sealed form: "berth-bootstrap:v1:<iterations>:<hex salt>:<hex nonce+ciphertext>".
// AES-256-GCM with a key from PBKDF2-SHA256 over the server token's
// password (k3s: PBKDF2-SHA1, 4096 rounds; berth uses SHA-256 and more
// rounds because the sealed data sits in a database others may read and a
// user-chosen token can be weak).
const (
	sealPrefix = "berth-bootstrap:v1:"
	iterations = 200_000
	saltLen    = 16
	keyLen     = 32
)

// ErrWrongToken: the sealed data does not open with this token.
var ErrWrongToken = errors.New("bootstrap data cannot be decrypted with this token")

func deriveKey(password string, salt []byte, iter int) ([]byte, error) {
	if password == "" {
		return nil, errors.New("bootstrap data: empty token password")
	}
	return pbkdf2.Key(sha256.New, password, salt, iter, keyLen)
}

// Seal encrypts plain with a key derived from password.
func Seal(plain []byte, password string) ([]byte, error) {
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	key, err := deriveKey(password, salt, iterations)
	if err != nil {
		return nil, err
	}
	gcm, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	// The header is authenticated too, so the parameters cannot be swapped.
	header := sealPrefix + strconv.Itoa(iterations) + ":" + hex.EncodeToString(salt) + ":"
	ct := gcm.Seal(nonce, nonce, plain, []byte(header))
	return []byte(header + hex.EncodeToString(ct)), nil
}

// Open decrypts what Seal made; a wrong password is ErrWrongToken.
func Open(sealed []byte, password string) ([]byte, error) {
	s := string(sealed)
	rest, ok := strings.CutPrefix(s, sealPrefix)
	if !ok {
		return nil, errors.New("bootstrap data: not in berth's sealed format")
	}
	parts := strings.Split(rest, ":")
	if len(parts) != 3 {
		return nil, errors.New("bootstrap data: malformed sealed data")
	}
	iter, err := strconv.Atoi(parts[0])
	if err != nil || iter < 1000 || iter > 10_000_000 {
		return nil, fmt.Errorf("bootstrap data: bad iteration count %q", parts[0])
	}
	salt, err1 := hex.DecodeString(parts[1])
	ct, err2 := hex.DecodeString(parts[2])
	if err1 != nil || err2 != nil {
		return nil, errors.New("bootstrap data: malformed sealed data")
	}
	key, err := deriveKey(password, salt, iter)
	if err != nil {
		return nil, err
	}
	gcm, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	if len(ct) < gcm.NonceSize() {
		return nil, errors.New("bootstrap data: sealed data too short")
	}
	header := s[:len(s)-len(parts[2])]
	plain, err := gcm.Open(nil, ct[:gcm.NonceSize()], ct[gcm.NonceSize():], []byte(header))
	if err != nil {
		return nil, ErrWrongToken
	}
	return plain, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// keyName is the datastore key for a token's bootstrap data. It is derived
// with the same slow KDF (fixed salt), so the key name is no faster an
// oracle for guessing the token than the sealed data itself.
func keyName(password string) (string, error) {
	k, err := deriveKey(password, []byte("berth-bootstrap-key-name"), iterations)
	if err != nil {
		return "", err
	}
	return KeyPrefix + hex.EncodeToString(k[:8]), nil
}
