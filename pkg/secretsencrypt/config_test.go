package secretsencrypt

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/server/options/encryptionconfig"
	"k8s.io/apiserver/pkg/storage/value"
)

// transformSecret encrypts plaintext as the apiserver would with the file
// at path, and reads it back.
func transformSecret(t *testing.T, path string, plaintext []byte) []byte {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ec, err := encryptionconfig.LoadEncryptionConfig(ctx, path, true, "test")
	if err != nil {
		t.Fatalf("the apiserver refuses the config: %v", err)
	}
	tr := ec.Transformers[schema.GroupResource{Resource: "secrets"}]
	if tr == nil {
		t.Fatal("no transformer for secrets")
	}
	dctx := value.DefaultContext("/registry/secrets/default/x")
	stored, err := tr.TransformToStorage(ctx, plaintext, dctx)
	if err != nil {
		t.Fatal(err)
	}
	back, _, err := tr.TransformFromStorage(ctx, stored, dctx)
	if err != nil || !bytes.Equal(back, plaintext) {
		t.Fatalf("round trip: %q, %v", back, err)
	}
	return stored
}

func TestGenerate(t *testing.T) {
	for _, p := range Providers {
		t.Run(string(p), func(t *testing.T) {
			f := Files{Dir: t.TempDir()}
			path, err := f.Ensure(true, p)
			if err != nil {
				t.Fatal(err)
			}
			if path != f.ConfigPath() {
				t.Fatalf("path %s", path)
			}
			fi, err := os.Stat(path)
			if err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("mode %v %v", fi.Mode(), err)
			}
			data, _ := os.ReadFile(path)
			// The file is the upstream API type, identity last.
			var raw map[string]any
			if err := json.Unmarshal(data, &raw); err != nil {
				t.Fatal(err)
			}
			if raw["apiVersion"] != "apiserver.config.k8s.io/v1" || raw["kind"] != "EncryptionConfiguration" {
				t.Fatalf("header: %v %v", raw["apiVersion"], raw["kind"])
			}
			res := raw["resources"].([]any)[0].(map[string]any)
			provs := res["providers"].([]any)
			if len(provs) != 2 || provs[1].(map[string]any)["identity"] == nil || provs[0].(map[string]any)[string(p)] == nil {
				t.Fatalf("providers %v", provs)
			}
			c, err := Parse(data)
			if err != nil {
				t.Fatal(err)
			}
			k, ok := c.Active()
			if !ok || k.Provider != p || k.Name != string(p)+"key" {
				t.Fatalf("active %+v %v", k, ok)
			}
			if raw, err := base64.StdEncoding.DecodeString(k.Secret); err != nil || len(raw) != 32 || bytes.Equal(raw, make([]byte, 32)) {
				t.Fatalf("key: %d bytes, %v", len(raw), err)
			}
			stored := transformSecret(t, path, []byte("plaintext-value"))
			if want := "k8s:enc:" + string(p) + ":v1:" + k.Name + ":"; !bytes.HasPrefix(stored, []byte(want)) || bytes.Contains(stored, []byte("plaintext-value")) {
				t.Fatalf("stored %q, want prefix %s and no plaintext", stored[:min(len(stored), 40)], want)
			}
			st, err := f.ReadState()
			if err != nil || st.Stage != StageStart || st.ConfigHash != Hash(data) {
				t.Fatalf("state %+v %v", st, err)
			}
			// A second start keeps the keys.
			if _, err := f.Ensure(true, p); err != nil {
				t.Fatal(err)
			}
			if again, _ := os.ReadFile(path); !bytes.Equal(again, data) {
				t.Fatal("a restart rewrote the config")
			}
		})
	}
}

func TestEnsureWithoutFlag(t *testing.T) {
	f := Files{Dir: t.TempDir()}
	if path, err := f.Ensure(false, AESCBC); err != nil || path != "" {
		t.Fatalf("no flag, no file: %q %v", path, err)
	}
	if _, err := os.Stat(f.ConfigPath()); !os.IsNotExist(err) {
		t.Fatal("a config was written without --secrets-encryption")
	}
	if _, err := f.Ensure(true, AESCBC); err != nil {
		t.Fatal(err)
	}
	// Once there, it stays in use without the flag.
	if path, err := f.Ensure(false, AESCBC); err != nil || path != f.ConfigPath() {
		t.Fatalf("existing config without the flag: %q %v", path, err)
	}
}

func TestEnsureCorrupt(t *testing.T) {
	for name, content := range map[string]string{
		"truncated":   `{"kind":"EncryptionConfiguration","apiVersion":"apiserver.config.k8s.io/v1","resources":[{"resources":["secrets"],"prov`,
		"empty":       ``,
		"short key":   `{"kind":"EncryptionConfiguration","apiVersion":"apiserver.config.k8s.io/v1","resources":[{"resources":["secrets"],"providers":[{"aescbc":{"keys":[{"name":"k","secret":"c2hvcnQ="}]}},{"identity":{}}]}]}`,
		"no identity": `{"kind":"EncryptionConfiguration","apiVersion":"apiserver.config.k8s.io/v1","resources":[{"resources":["secrets"],"providers":[{"aescbc":{"keys":[{"name":"k","secret":"` + key32() + `"}]}}]}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			f := Files{Dir: t.TempDir()}
			if err := os.WriteFile(f.ConfigPath(), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := f.Ensure(true, AESCBC)
			if err == nil || !strings.Contains(err.Error(), f.ConfigPath()) || !strings.Contains(err.Error(), "never regenerates") {
				t.Fatalf("want an error naming the file and saying it is kept, got %v", err)
			}
			if strings.Contains(err.Error(), key32()) {
				t.Fatal("the error quotes the key")
			}
			if got, _ := os.ReadFile(f.ConfigPath()); string(got) != content {
				t.Fatal("the broken file was changed")
			}
		})
	}
}

func key32() string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)) }

func TestMarshalOrderAndParse(t *testing.T) {
	k := func(p Provider, n string) Key { return Key{Provider: p, Name: n, Secret: key32()} }
	c := &Config{Enabled: true, Keys: []Key{k(SecretBox, "sb-new"), k(AESCBC, "a1"), k(AESCBC, "a2")}}
	data, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	// Consecutive keys of one type share a provider entry, in order.
	s := string(data)
	if strings.Index(s, `"secretbox"`) > strings.Index(s, `"aescbc"`) || strings.Index(s, `"a1"`) > strings.Index(s, `"a2"`) ||
		strings.Count(s, `"aescbc"`) != 1 || strings.Index(s, `"identity"`) < strings.Index(s, `"a2"`) {
		t.Fatalf("order:\n%s", s)
	}
	back, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Enabled || len(back.Keys) != 3 || back.Keys[0].Name != "sb-new" || back.Keys[2].Name != "a2" {
		t.Fatalf("parsed %+v", back)
	}
	// Disabled: identity first, so writes are plaintext but keys still read.
	c.Enabled = false
	data, _ = c.Marshal()
	if strings.Index(string(data), `"identity"`) > strings.Index(string(data), `"secretbox"`) {
		t.Fatalf("disabled: identity not first:\n%s", data)
	}
	path := filepath.Join(t.TempDir(), ConfigFile)
	os.WriteFile(path, data, 0o600)
	if stored := transformSecret(t, path, []byte("x")); string(stored) != "x" {
		t.Fatalf("disabled config stored %q", stored)
	}
	if back, err := Parse(data); err != nil || back.Enabled {
		t.Fatalf("disabled parsed %+v %v", back, err)
	}
	// YAML is read too.
	y := "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: ykey\n        secret: " + key32() + "\n  - identity: {}\n"
	if c, err := Parse([]byte(y)); err != nil || !c.Enabled || c.Keys[0].Name != "ykey" {
		t.Fatalf("yaml: %+v %v", c, err)
	}
}

func TestParseRefuses(t *testing.T) {
	hdr := `{"kind":"EncryptionConfiguration","apiVersion":"apiserver.config.k8s.io/v1","resources":[{"resources":["secrets"],"providers":[`
	key := `{"name":"k","secret":"` + key32() + `"}`
	for name, body := range map[string]string{
		"kms":             hdr + `{"kms":{"name":"x","endpoint":"unix:///x"}},{"identity":{}}]}]}`,
		"aesgcm":          hdr + `{"aesgcm":{"keys":[` + key + `]}},{"identity":{}}]}]}`,
		"identity middle": hdr + `{"aescbc":{"keys":[` + key + `]}},{"identity":{}},{"secretbox":{"keys":[{"name":"k2","secret":"` + key32() + `"}]}}]}]}`,
		"duplicate name":  hdr + `{"aescbc":{"keys":[` + key + `,` + key + `]}},{"identity":{}}]}]}`,
		"bad base64":      hdr + `{"aescbc":{"keys":[{"name":"k","secret":"!!"}]}},{"identity":{}}]}]}`,
		"configmaps":      strings.Replace(hdr, `["secrets"]`, `["secrets","configmaps"]`, 1) + `{"aescbc":{"keys":[` + key + `]}},{"identity":{}}]}]}`,
		"unknown field":   hdr + `{"aescbc":{"keys":[` + key + `]},"extra":1},{"identity":{}}]}]}`,
		"wrong kind":      strings.Replace(hdr, "EncryptionConfiguration", "EncryptionConfig", 1) + `{"identity":{}}]}]}`,
	} {
		if _, err := Parse([]byte(body)); err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), key32()) {
			t.Errorf("%s: the error quotes the key: %v", name, err)
		}
	}
}

func TestNewKeyNames(t *testing.T) {
	now := time.Date(2026, 11, 22, 13, 4, 5, 0, time.UTC)
	a, _ := NewKey(AESCBC, false, now)
	b, _ := NewKey(AESCBC, false, now)
	if a.Name != "aescbckey-2026-11-22T13-04-05Z" || a.Secret == b.Secret {
		t.Fatalf("%s, secrets equal: %v", a.Name, a.Secret == b.Secret)
	}
	if _, err := ParseProvider("aesgcm"); err == nil || !strings.Contains(err.Error(), "aescbc") {
		t.Fatalf("unknown provider: %v", err)
	}
}
