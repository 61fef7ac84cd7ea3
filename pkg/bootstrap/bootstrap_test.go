package bootstrap

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for p, c := range files {
		path := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func required() map[string]string {
	m := map[string]string{}
	for _, f := range Files {
		if f.Required {
			m[f.Path] = "content of " + f.Path
		}
	}
	return m
}

func TestReadWriteRoundTrip(t *testing.T) {
	src := t.TempDir()
	files := required()
	files["tls/etcd/peer-ca.crt"] = "etcd peer"
	writeFiles(t, src, files)
	if _, err := Read(t.TempDir(), Files); err == nil || !strings.Contains(err.Error(), "not initialised") {
		t.Errorf("empty dir: %v", err)
	}
	d, err := Read(src, Files)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Files) != len(files) {
		t.Errorf("read %d files, want %d", len(d.Files), len(files))
	}
	b, err := d.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	d2, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	written, err := d2.Write(dst, Files)
	if err != nil {
		t.Fatal(err)
	}
	if len(written) != len(files) {
		t.Errorf("wrote %v", written)
	}
	for p, c := range files {
		got, err := os.ReadFile(filepath.Join(dst, p))
		if err != nil || string(got) != c {
			t.Errorf("%s: %q %v", p, got, err)
		}
	}
	fi, err := os.Stat(filepath.Join(dst, "tls/server-ca.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode: %v %v", fi.Mode(), err)
	}
	// Same content: nothing to write.
	if written, err := d2.Write(dst, Files); err != nil || len(written) != 0 {
		t.Errorf("second write: %v %v", written, err)
	}
}

func TestWriteConflictWritesNothing(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	writeFiles(t, src, required())
	d, err := Read(src, Files)
	if err != nil {
		t.Fatal(err)
	}
	d.Files["cred/encryption-config.json"] = []byte("cluster's")
	// dst has its own CA key and an old encryption config.
	writeFiles(t, dst, map[string]string{"tls/client-ca.key": "another cluster", "cred/encryption-config.json": "old"})
	_, err = d.Write(dst, Files)
	var ce *ConflictError
	if !errors.As(err, &ce) || len(ce.Paths) != 1 || ce.Paths[0] != "tls/client-ca.key" {
		t.Fatalf("want a conflict on client-ca.key, got %v", err)
	}
	if _, err := os.Stat(filepath.Join(dst, "tls/server-ca.crt")); !os.IsNotExist(err) {
		t.Error("a conflicting write must write nothing")
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "cred/encryption-config.json")); string(b) != "old" {
		t.Error("a conflicting write must not replace mutable files either")
	}
	os.Remove(filepath.Join(dst, "tls/client-ca.key"))
	if _, err := d.Write(dst, Files); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "cred/encryption-config.json")); string(b) != "cluster's" {
		t.Error("a mutable file follows the cluster")
	}
}

func TestUnknownPathRefused(t *testing.T) {
	d := &Data{Files: map[string][]byte{"../../etc/passwd": []byte("x")}}
	if _, err := d.Write(t.TempDir(), Files); err == nil || !strings.Contains(err.Error(), "does not know") {
		t.Errorf("unknown path: %v", err)
	}
}

func TestSealOpen(t *testing.T) {
	sealed, err := Seal([]byte("secret CA key"), "pw1")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(sealed), "secret CA key") {
		t.Fatal("plaintext in sealed data")
	}
	plain, err := Open(sealed, "pw1")
	if err != nil || string(plain) != "secret CA key" {
		t.Fatalf("open: %q %v", plain, err)
	}
	if _, err := Open(sealed, "pw2"); !errors.Is(err, ErrWrongToken) {
		t.Errorf("wrong password: %v", err)
	}
	// Tampering with the header (fewer rounds) is detected.
	tampered := strings.Replace(string(sealed), ":200000:", ":100000:", 1)
	if _, err := Open([]byte(tampered), "pw1"); err == nil {
		t.Error("tampered header accepted")
	}
	a, _ := keyName("pw1")
	b, _ := keyName("pw2")
	if a == b || !strings.HasPrefix(a, KeyPrefix) {
		t.Errorf("key names %s %s", a, b)
	}
	if _, err := Seal([]byte("x"), ""); err == nil {
		t.Error("empty password accepted")
	}
}
