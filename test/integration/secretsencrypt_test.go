package integration

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/berth-io/berth/pkg/secretsencrypt"
)

// secretsEncrypt runs `berth secrets-encrypt` against s.
func (s *server) secretsEncrypt(args ...string) (int, string) {
	s.t.Helper()
	args = append([]string{"secrets-encrypt"}, args...)
	args = append(args, "--data-dir", s.dataDir, "--server", "https://127.0.0.1:"+strconv.Itoa(s.httpsPort))
	return runBerth(s.t, 2*time.Minute, args...)
}

func (s *server) mustSecretsEncrypt(args ...string) string {
	s.t.Helper()
	code, out := s.secretsEncrypt(args...)
	if code != 0 {
		s.t.Fatalf("secrets-encrypt %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

func (s *server) encryptionStatus() secretsencrypt.Status {
	s.t.Helper()
	var st secretsencrypt.Status
	out := s.mustSecretsEncrypt("status", "-o", "json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		s.t.Fatalf("status -o json: %v\n%s", err, out)
	}
	return st
}

// rawDatastore is every byte of the SQLite database and its WAL: what a
// thief of the disk gets.
func rawDatastore(t *testing.T, s *server) []byte {
	t.Helper()
	var all []byte
	for _, f := range []string{"state.db", "state.db-wal"} {
		b, err := os.ReadFile(filepath.Join(s.dataDir, "server", "db", f))
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	return all
}

// storedSecret is the newest value kine holds for a Secret, read with
// SQLite directly (kine keeps older revisions until compaction).
func storedSecret(t *testing.T, s *server, ns, name string) []byte {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(s.dataDir, "server", "db", "state.db")+"?mode=ro&_busy_timeout=10000")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v []byte
	key := "/registry/secrets/" + ns + "/" + name
	if err := db.QueryRow(`SELECT value FROM kine WHERE name = ? ORDER BY id DESC LIMIT 1`, key).Scan(&v); err != nil {
		t.Fatalf("kine row of %s: %v", key, err)
	}
	return v
}

// storedSecretPrefixes counts the storage prefix (k8s:enc:<provider>:v1:<key>:
// or plaintext) of the newest value of every Secret in kine.
func storedSecretPrefixes(t *testing.T, s *server) map[string]int {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(s.dataDir, "server", "db", "state.db")+"?mode=ro&_busy_timeout=10000")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT k.value FROM kine k JOIN (SELECT MAX(id) id FROM kine WHERE name LIKE '/registry/secrets/%' GROUP BY name) m ON k.id = m.id WHERE k.deleted = 0`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var v []byte
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		out[encPrefix(v)]++
	}
	return out
}

var encPrefixRE = regexp.MustCompile(`^k8s:enc:[a-z]+:v1:[A-Za-z0-9_.-]+:`)

func encPrefix(v []byte) string {
	if p := encPrefixRE.Find(v); p != nil {
		return string(p)
	}
	return "plaintext"
}

func createSecret(t *testing.T, cs kubernetes.Interface, name, value string) {
	t.Helper()
	_, err := cs.CoreV1().Secrets("default").Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Data:       map[string][]byte{"v": []byte(value)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create Secret %s: %v", name, err)
	}
}

func readSecret(t *testing.T, cs kubernetes.Interface, name, want string) {
	t.Helper()
	sec, err := cs.CoreV1().Secrets("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil || string(sec.Data["v"]) != want {
		t.Fatalf("Secret %s: %v %q, want %q", name, err, sec.Data["v"], want)
	}
}

func activeKeyName(st secretsencrypt.Status) string {
	for _, k := range st.Keys {
		if k.Active {
			return k.Name
		}
	}
	return ""
}

// TestSecretsEncryption enables encryption on a server that has Secrets
// already and rotates its keys while a client keeps using Secrets, checking
// the raw datastore at each step.
func TestSecretsEncryption(t *testing.T) {
	s := newServer(t)
	s.start()
	cs := s.waitReady(60 * time.Second)

	// Before: no encryption; commands that need it say how to get it.
	createSecret(t, cs, "before", "plain-before-3f9a1c")
	if out := s.mustSecretsEncrypt("status"); !strings.Contains(out, "Encryption Status: Disabled, no configuration file found") {
		t.Fatalf("status without encryption:\n%s", out)
	}
	for _, cmd := range []string{"rotate-keys", "reencrypt", "prepare", "disable"} {
		code, out := s.secretsEncrypt(cmd)
		if code == 0 || !strings.Contains(out, "secrets encryption is not configured on this server") || !strings.Contains(out, "--secrets-encryption") {
			t.Fatalf("%s without encryption: exit %d\n%s", cmd, code, out)
		}
	}
	if _, err := os.Stat(filepath.Join(s.dataDir, "server", "cred", "encryption-config.json")); !os.IsNotExist(err) {
		t.Fatalf("a refused command left an encryption config: %v", err)
	}
	s.stop(30 * time.Second)

	// Enable: new Secrets never reach the disk in plaintext; old ones stay readable.
	s.extra = []string{"--secrets-encryption"}
	s.start()
	cs = s.waitReady(60 * time.Second)
	cfgPath := filepath.Join(s.dataDir, "server", "cred", "encryption-config.json")
	if fi, err := os.Stat(cfgPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("encryption config: %v %v", fi, err)
	}
	readSecret(t, cs, "before", "plain-before-3f9a1c")
	if p := encPrefix(storedSecret(t, s, "default", "before")); p != "plaintext" {
		t.Fatalf("the Secret written before enabling is stored as %s", p)
	}
	createSecret(t, cs, "after", "secret-after-7d2e4b")
	readSecret(t, cs, "after", "secret-after-7d2e4b")
	raw := rawDatastore(t, s)
	if bytes.Contains(raw, []byte("secret-after-7d2e4b")) {
		t.Fatal("a Secret written with encryption on is in the datastore in plaintext")
	}
	if !bytes.Contains(raw, []byte("k8s:enc:aescbc:v1:aescbckey:")) {
		t.Fatal("no aescbc-encrypted value in the datastore")
	}
	if p := encPrefix(storedSecret(t, s, "default", "after")); p != "k8s:enc:aescbc:v1:aescbckey:" {
		t.Fatalf("Secret after stored as %s", p)
	}
	out := s.mustSecretsEncrypt("status")
	for _, want := range []string{"Encryption Status: Enabled", "Current Rotation Stage: start", "Server Encryption Hashes: All hashes match", "Active  Key Type  Name", " *      AES-CBC   aescbckey"} {
		if !strings.Contains(out, want) {
			t.Fatalf("status lacks %q:\n%s", want, out)
		}
	}

	t.Run("reencrypt", func(t *testing.T) {
		out := s.mustSecretsEncrypt("reencrypt")
		if !strings.Contains(out, "Done: stage reencrypt_finished, active key aescbckey") {
			t.Fatalf("reencrypt:\n%s", out)
		}
		if p := encPrefix(storedSecret(t, s, "default", "before")); p != "k8s:enc:aescbc:v1:aescbckey:" {
			t.Fatalf("after reencrypt the old Secret is stored as %s", p)
		}
		readSecret(t, cs, "before", "plain-before-3f9a1c")
		if n := storedSecretPrefixes(t, s)["plaintext"]; n != 0 {
			t.Fatalf("%d Secrets still plaintext after reencrypt", n)
		}
	})

	t.Run("rotate-keys under load", func(t *testing.T) {
		// A client keeps writing and reading Secrets through the rotation
		// (its own, without client-go's 5 requests/s limit).
		cfg, err := clientcmd.BuildConfigFromFlags("", s.kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		cfg.QPS, cfg.Burst = 200, 200
		cs := kubernetes.NewForConfigOrDie(cfg)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		var ops atomic.Int64
		var mu sync.Mutex
		var errs []string
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				name := fmt.Sprintf("load-%d", i)
				val := fmt.Sprintf("load-value-%d", i)
				_, err := cs.CoreV1().Secrets("default").Create(ctx, &corev1.Secret{
					ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string][]byte{"v": []byte(val)},
				}, metav1.CreateOptions{})
				if err == nil {
					var sec *corev1.Secret
					if sec, err = cs.CoreV1().Secrets("default").Get(ctx, name, metav1.GetOptions{}); err == nil && string(sec.Data["v"]) != val {
						err = fmt.Errorf("read %q", sec.Data["v"])
					}
				}
				if err == nil {
					var sec *corev1.Secret
					if sec, err = cs.CoreV1().Secrets("default").Get(ctx, "before", metav1.GetOptions{}); err == nil && string(sec.Data["v"]) != "plain-before-3f9a1c" {
						err = fmt.Errorf("read before %q", sec.Data["v"])
					}
				}
				if err != nil && ctx.Err() == nil {
					mu.Lock()
					errs = append(errs, fmt.Sprintf("%s: %v", name, err))
					mu.Unlock()
				}
				ops.Add(1)
				// Paced, so the client does not starve the server of the
				// machine's two cores.
				time.Sleep(20 * time.Millisecond)
			}
		})
		out := s.mustSecretsEncrypt("rotate-keys")
		// Go on a little after the old key is gone.
		before := ops.Load()
		for ops.Load() < before+20 {
			time.Sleep(20 * time.Millisecond)
		}
		cancel()
		wg.Wait()
		if len(errs) > 0 {
			t.Fatalf("%d of %d client operations failed during rotate-keys, first: %s", len(errs), ops.Load(), errs[0])
		}
		if !strings.Contains(out, "Done: stage reencrypt_finished") {
			t.Fatalf("rotate-keys:\n%s", out)
		}
		st := s.encryptionStatus()
		key := activeKeyName(st)
		if len(st.Keys) != 1 || !strings.HasPrefix(key, "aescbckey-") || st.Stage != secretsencrypt.StageReencryptFinished || !st.HashMatch {
			t.Fatalf("status after rotate-keys: %+v", st)
		}
		prefixes := storedSecretPrefixes(t, s)
		want := "k8s:enc:aescbc:v1:" + key + ":"
		if len(prefixes) != 1 || prefixes[want] < 3 {
			t.Fatalf("stored Secrets by prefix %v, want all %s", prefixes, want)
		}
		t.Logf("%d client operations during rotate-keys, none failed; %d Secrets under %s", ops.Load(), prefixes[want], key)
	})

	t.Run("prepare rotate reencrypt", func(t *testing.T) {
		old := activeKeyName(s.encryptionStatus())
		s.mustSecretsEncrypt("prepare")
		st := s.encryptionStatus()
		if st.Stage != "prepare" || len(st.Keys) != 2 || activeKeyName(st) != old {
			t.Fatalf("after prepare: %+v", st)
		}
		// Out of order: refused, nothing changes.
		if code, out := s.secretsEncrypt("rotate-keys"); code == 0 || !strings.Contains(out, "not allowed at stage prepare") || !strings.Contains(out, "--force") {
			t.Fatalf("rotate-keys at stage prepare: exit %d\n%s", code, out)
		}
		s.mustSecretsEncrypt("rotate")
		st = s.encryptionStatus()
		newKey := activeKeyName(st)
		if st.Stage != "rotate" || len(st.Keys) != 2 || newKey == old || st.Keys[1].Name != old {
			t.Fatalf("after rotate: %+v", st)
		}
		createSecret(t, cs, "in-rotate", "in-rotate-value")
		if p := encPrefix(storedSecret(t, s, "default", "in-rotate")); p != "k8s:enc:aescbc:v1:"+newKey+":" {
			t.Fatalf("written at stage rotate with %s", p)
		}
		s.mustSecretsEncrypt("reencrypt")
		st = s.encryptionStatus()
		if st.Stage != secretsencrypt.StageReencryptFinished || len(st.Keys) != 1 || activeKeyName(st) != newKey {
			t.Fatalf("after reencrypt: %+v", st)
		}
		if p := storedSecretPrefixes(t, s); len(p) != 1 || p["k8s:enc:aescbc:v1:"+newKey+":"] == 0 {
			t.Fatalf("stored Secrets by prefix %v", p)
		}
		readSecret(t, cs, "before", "plain-before-3f9a1c")
	})

	t.Run("disable enable", func(t *testing.T) {
		s.mustSecretsEncrypt("disable")
		if st := s.encryptionStatus(); st.Enabled || activeKeyName(st) != "" || len(st.Keys) != 1 {
			t.Fatalf("after disable: %+v", st)
		}
		if p := storedSecretPrefixes(t, s); len(p) != 1 || p["plaintext"] == 0 {
			t.Fatalf("after disable, stored Secrets by prefix %v", p)
		}
		if code, out := s.secretsEncrypt("rotate-keys", "--force"); code == 0 || !strings.Contains(out, "disabled") {
			t.Fatalf("rotate-keys while disabled: exit %d\n%s", code, out)
		}
		s.mustSecretsEncrypt("enable")
		st := s.encryptionStatus()
		if !st.Enabled || activeKeyName(st) == "" {
			t.Fatalf("after enable: %+v", st)
		}
		if p := storedSecretPrefixes(t, s); len(p) != 1 || p["plaintext"] != 0 {
			t.Fatalf("after enable, stored Secrets by prefix %v", p)
		}
		readSecret(t, cs, "before", "plain-before-3f9a1c")
	})

	t.Run("wrong token", func(t *testing.T) {
		code, out := runBerth(t, time.Minute, "secrets-encrypt", "status", "--data-dir", s.dataDir,
			"--server", "https://127.0.0.1:"+strconv.Itoa(s.httpsPort), "--token", "not-the-token")
		if code == 0 || !strings.Contains(out, "unauthorized") {
			t.Fatalf("wrong token: exit %d\n%s", code, out)
		}
		// The admin kubeconfig's client certificate (system:masters) is
		// admitted; no credentials are not.
		cfg, err := clientcmd.BuildConfigFromFlags("", s.kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		hc, err := rest.HTTPClientFor(cfg)
		if err != nil {
			t.Fatal(err)
		}
		url := fmt.Sprintf("https://127.0.0.1:%d%s", s.httpsPort, secretsencrypt.StatusPath)
		resp, err := hc.Get(url)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("status with the admin certificate: %v %v", resp, err)
		}
		resp.Body.Close()
		if code, body := get(t, insecureClient(nil), url, nil); code != 401 {
			t.Fatalf("status without credentials: %d %s", code, body)
		}
	})

	// A stop during rotate-keys leaves the old keys in place and the work
	// pending; a corrupt config stops the next start with the file named,
	// and is kept; with it restored, the server finishes the rotation.
	t.Run("interrupted rotate-keys, corrupt config", func(t *testing.T) {
		oldKey := activeKeyName(s.encryptionStatus())
		out := s.mustSecretsEncrypt("rotate-keys", "--wait=false")
		if !strings.Contains(out, "The server goes on in the background") {
			t.Fatalf("rotate-keys --wait=false:\n%s", out)
		}
		// The server waits for the reload and then a second before it
		// rewrites anything: the stop lands before the keys change again.
		s.stop(30 * time.Second)
		var st secretsencrypt.State
		b, err := os.ReadFile(filepath.Join(s.dataDir, "server", "cred", "encryption-state.json"))
		if err != nil || json.Unmarshal(b, &st) != nil || st.Pending == nil || st.Pending.Command != "rotate-keys" || st.LastError != "" {
			t.Fatalf("state after a stop during rotate-keys: %s %v", b, err)
		}
		good, err := os.ReadFile(cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		bad := good[:len(good)/2]
		if err := os.WriteFile(cfgPath, bad, 0o600); err != nil {
			t.Fatal(err)
		}
		code, out := runBerth(t, time.Minute, s.args()...)
		if code == 0 || !strings.Contains(out, cfgPath) || !strings.Contains(out, "never regenerates") {
			t.Fatalf("start with a corrupt encryption config: exit %d\n%s", code, tail(out, 20))
		}
		if got, _ := os.ReadFile(cfgPath); !bytes.Equal(got, bad) {
			t.Fatal("the corrupt file was changed")
		}
		if err := os.WriteFile(cfgPath, good, 0o600); err != nil {
			t.Fatal(err)
		}
		if c, err := secretsencrypt.Parse(good); err != nil || len(c.Keys) != 2 || c.Keys[1].Name != oldKey {
			t.Fatalf("the interrupted rotation's config: %+v %v", c, err)
		}
		s.start()
		cs := s.waitReady(60 * time.Second)
		readSecret(t, cs, "before", "plain-before-3f9a1c")
		readSecret(t, cs, "in-rotate", "in-rotate-value")
		// The server resumes the rotation by itself.
		deadline := time.Now().Add(time.Minute)
		for {
			st := s.encryptionStatus()
			if !st.Running && st.Stage == secretsencrypt.StageReencryptFinished {
				if len(st.Keys) != 1 || activeKeyName(st) == oldKey || st.LastError != "" {
					t.Fatalf("after the resumed rotation: %+v", st)
				}
				if p := storedSecretPrefixes(t, s); len(p) != 1 || p["k8s:enc:aescbc:v1:"+activeKeyName(st)+":"] == 0 {
					t.Fatalf("stored Secrets by prefix %v", p)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the interrupted rotate-keys did not resume: %+v", st)
			}
			time.Sleep(200 * time.Millisecond)
		}
		readSecret(t, cs, "before", "plain-before-3f9a1c")
	})
}

// TestSecretsEncryptionSecretbox: the secretbox provider encrypts and
// rotates; an unknown provider is refused before anything starts.
func TestSecretsEncryptionSecretbox(t *testing.T) {
	bad := newServer(t, "--secrets-encryption", "--secrets-encryption-provider", "aesgcm")
	if err := os.WriteFile(bad.configPath(), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out := runBerth(t, time.Minute, bad.args()...)
	if code == 0 || !strings.Contains(out, "--secrets-encryption-provider") || !strings.Contains(out, `"aesgcm"`) {
		t.Fatalf("unknown provider: exit %d\n%s", code, tail(out, 10))
	}
	if _, err := os.Stat(filepath.Join(bad.dataDir, "server", "cred", "encryption-config.json")); !os.IsNotExist(err) {
		t.Fatal("an encryption config was written for a refused provider")
	}

	s := newServer(t, "--secrets-encryption", "--secrets-encryption-provider", "secretbox")
	s.start()
	cs := s.waitReady(60 * time.Second)
	createSecret(t, cs, "sb", "secretbox-value-51c0")
	readSecret(t, cs, "sb", "secretbox-value-51c0")
	raw := rawDatastore(t, s)
	if bytes.Contains(raw, []byte("secretbox-value-51c0")) || !bytes.Contains(raw, []byte("k8s:enc:secretbox:v1:secretboxkey:")) {
		t.Fatal("secretbox: plaintext in the datastore, or no secretbox value")
	}
	if out := s.mustSecretsEncrypt("status"); !strings.Contains(out, " *      XSalsa20-POLY1305  secretboxkey") {
		t.Fatalf("status:\n%s", out)
	}
	s.mustSecretsEncrypt("rotate-keys")
	st := s.encryptionStatus()
	key := activeKeyName(st)
	if len(st.Keys) != 1 || !strings.HasPrefix(key, "secretboxkey-") || st.Keys[0].Provider != "secretbox" {
		t.Fatalf("after rotate-keys: %+v", st)
	}
	if p := encPrefix(storedSecret(t, s, "default", "sb")); p != "k8s:enc:secretbox:v1:"+key+":" {
		t.Fatalf("stored as %s", p)
	}
	readSecret(t, cs, "sb", "secretbox-value-51c0")
}
