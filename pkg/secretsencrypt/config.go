// Package secretsencrypt is secrets encryption at rest, as k3s does it: the
// kube-apiserver's EncryptionConfiguration in
// <data-dir>/server/cred/encryption-config.json (aescbc or secretbox keys,
// identity last so plaintext written before stays readable), reloaded by the
// apiserver without a restart, and the key-rotation stages of
// `berth secrets-encrypt` (prepare, rotate, reencrypt, rotate-keys) driven by
// the running server.
package secretsencrypt

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	apiserverv1 "k8s.io/apiserver/pkg/apis/apiserver/v1"
	"k8s.io/apiserver/pkg/server/options/encryptionconfig"
	"sigs.k8s.io/yaml"
)

// Provider is a key type berth manages.
type Provider string

const (
	AESCBC    Provider = "aescbc"
	SecretBox Provider = "secretbox"
)

// Providers lists the key types --secrets-encryption-provider accepts.
var Providers = []Provider{AESCBC, SecretBox}

// ParseProvider checks a --secrets-encryption-provider value.
func ParseProvider(s string) (Provider, error) {
	for _, p := range Providers {
		if string(p) == s {
			return p, nil
		}
	}
	return "", fmt.Errorf("unknown secrets encryption provider %q: want aescbc (default) or secretbox", s)
}

// KeyType is the cipher name status prints, as k3s does.
func (p Provider) KeyType() string {
	if p == SecretBox {
		return "XSalsa20-POLY1305"
	}
	return "AES-CBC"
}

// keyPrefix is the start of a key's name (k3s's names, so status reads alike).
func (p Provider) keyPrefix() string { return string(p) + "key" }

// KeySize is the key length: 32 bytes for AES-256-CBC and for secretbox.
const KeySize = 32

// Key is one encryption key.
type Key struct {
	Provider Provider
	Name     string
	// Secret is the base64 key, as in the file. Never logged.
	Secret string
}

// Config is berth's view of an EncryptionConfiguration: the keys in the
// order the apiserver tries them, and whether encryption is on. On means
// the first key encrypts new writes and identity comes last (plaintext
// written before stays readable); off means identity comes first, so
// writes are plaintext while the keys still decrypt what they wrote.
type Config struct {
	Enabled bool
	Keys    []Key
}

// Active is the key that encrypts new writes, if encryption is on.
func (c *Config) Active() (Key, bool) {
	if !c.Enabled || len(c.Keys) == 0 {
		return Key{}, false
	}
	return c.Keys[0], true
}

// NewKey makes a key of provider p with 32 random bytes. The first key of a
// cluster is named like k3s's (aescbckey); later ones carry their creation
// time so a rotation's keys are told apart.
func NewKey(p Provider, first bool, now time.Time) (Key, error) {
	b := make([]byte, KeySize)
	if _, err := rand.Read(b); err != nil {
		return Key{}, fmt.Errorf("generate encryption key: %w", err)
	}
	name := p.keyPrefix()
	if !first {
		name += "-" + now.UTC().Format("2006-01-02T15-04-05Z")
	}
	return Key{Provider: p, Name: name, Secret: base64.StdEncoding.EncodeToString(b)}, nil
}

// Generate is the configuration of a newly enabled server: one new key of
// provider p, encryption on.
func Generate(p Provider) (*Config, error) {
	k, err := NewKey(p, true, time.Now())
	if err != nil {
		return nil, err
	}
	return &Config{Enabled: true, Keys: []Key{k}}, nil
}

// Marshal renders c as apiserver.config.k8s.io/v1 EncryptionConfiguration
// JSON for the secrets resource. Consecutive keys of one provider share a
// provider entry, so the apiserver tries them in c's order.
func (c *Config) Marshal() ([]byte, error) {
	if len(c.Keys) == 0 {
		return nil, errors.New("encryption config without keys")
	}
	var providers []apiserverv1.ProviderConfiguration
	identity := apiserverv1.ProviderConfiguration{Identity: &apiserverv1.IdentityConfiguration{}}
	if !c.Enabled {
		providers = append(providers, identity)
	}
	for i, k := range c.Keys {
		key := apiserverv1.Key{Name: k.Name, Secret: k.Secret}
		if i > 0 && c.Keys[i-1].Provider == k.Provider {
			last := &providers[len(providers)-1]
			if last.AESCBC != nil {
				last.AESCBC.Keys = append(last.AESCBC.Keys, key)
			} else {
				last.Secretbox.Keys = append(last.Secretbox.Keys, key)
			}
			continue
		}
		switch k.Provider {
		case AESCBC:
			providers = append(providers, apiserverv1.ProviderConfiguration{AESCBC: &apiserverv1.AESConfiguration{Keys: []apiserverv1.Key{key}}})
		case SecretBox:
			providers = append(providers, apiserverv1.ProviderConfiguration{Secretbox: &apiserverv1.SecretboxConfiguration{Keys: []apiserverv1.Key{key}}})
		default:
			return nil, fmt.Errorf("key %s: unknown provider %q", k.Name, k.Provider)
		}
	}
	if c.Enabled {
		providers = append(providers, identity)
	}
	out := apiserverv1.EncryptionConfiguration{
		Resources: []apiserverv1.ResourceConfiguration{{Resources: []string{"secrets"}, Providers: providers}},
	}
	out.Kind = "EncryptionConfiguration"
	out.APIVersion = apiserverv1.SchemeGroupVersion.String()
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Parse reads an EncryptionConfiguration (JSON or YAML) of the shape berth
// writes: one resource entry for secrets, aescbc and secretbox keys and one
// identity provider, first or last. Anything else (KMS, aesgcm, other
// resources) is refused rather than half-understood: berth would rewrite
// the file and drop what it does not know.
func Parse(data []byte) (*Config, error) {
	var in apiserverv1.EncryptionConfiguration
	if err := yaml.UnmarshalStrict(data, &in); err != nil {
		return nil, fmt.Errorf("not a valid EncryptionConfiguration: %w", err)
	}
	if in.Kind != "EncryptionConfiguration" || in.APIVersion != apiserverv1.SchemeGroupVersion.String() {
		return nil, fmt.Errorf("kind %q apiVersion %q: want EncryptionConfiguration, %s", in.Kind, in.APIVersion, apiserverv1.SchemeGroupVersion)
	}
	if len(in.Resources) != 1 || len(in.Resources[0].Resources) != 1 || in.Resources[0].Resources[0] != "secrets" {
		return nil, errors.New("want exactly one resources entry, for secrets only (berth manages secrets encryption only)")
	}
	providers := in.Resources[0].Providers
	c := &Config{}
	identityAt := -1
	names := map[string]bool{}
	for i, p := range providers {
		set := 0
		for _, v := range []bool{p.AESCBC != nil, p.Secretbox != nil, p.Identity != nil, p.AESGCM != nil, p.KMS != nil} {
			if v {
				set++
			}
		}
		if set != 1 {
			return nil, fmt.Errorf("providers[%d]: want exactly one of aescbc, secretbox, identity", i)
		}
		var keys []apiserverv1.Key
		var prov Provider
		switch {
		case p.Identity != nil:
			if identityAt >= 0 {
				return nil, errors.New("more than one identity provider")
			}
			identityAt = i
			continue
		case p.AESCBC != nil:
			keys, prov = p.AESCBC.Keys, AESCBC
		case p.Secretbox != nil:
			keys, prov = p.Secretbox.Keys, SecretBox
		default:
			return nil, fmt.Errorf("providers[%d]: aesgcm and kms are not managed by berth (aescbc, secretbox and identity are)", i)
		}
		if len(keys) == 0 {
			return nil, fmt.Errorf("providers[%d] (%s) has no keys", i, prov)
		}
		for j, k := range keys {
			raw, err := base64.StdEncoding.DecodeString(k.Secret)
			if err != nil || len(raw) != KeySize {
				// Never quote the secret.
				return nil, fmt.Errorf("providers[%d].%s.keys[%d] (%q): the secret must be %d bytes, base64-encoded", i, prov, j, k.Name, KeySize)
			}
			if k.Name == "" || names[k.Name] {
				return nil, fmt.Errorf("providers[%d].%s.keys[%d]: key names must be set and unique (%q)", i, prov, j, k.Name)
			}
			names[k.Name] = true
			c.Keys = append(c.Keys, Key{Provider: prov, Name: k.Name, Secret: k.Secret})
		}
	}
	switch {
	case len(c.Keys) == 0:
		return nil, errors.New("no aescbc or secretbox key")
	case identityAt == len(providers)-1:
		c.Enabled = true
	case identityAt == 0:
		c.Enabled = false
	default:
		return nil, errors.New("want one identity provider, last (encryption on) or first (off)")
	}
	return c, nil
}

// Hash identifies a configuration's content: the apiserver reports the
// same value for the file it has loaded (sha256:<hex> of the bytes).
func Hash(data []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(data)) }

// CheckWithAPIServer builds the apiserver's own transformers from the file
// at path, so a file the apiserver would refuse is reported before it
// starts (or before berth asks it to reload).
func CheckWithAPIServer(path string) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // aescbc and secretbox start nothing; KMS would
	if _, err := encryptionconfig.LoadEncryptionConfig(ctx, path, true, "berth-check"); err != nil {
		return err
	}
	return nil
}
