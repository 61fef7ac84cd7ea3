package etcd

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func writeSnap(t *testing.T, dir, name, content string, withSum bool) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if withSum {
		// sha256 of content, computed the way Save records it.
		sum := sha256Hex([]byte(content))
		if err := os.WriteFile(p+ChecksumSuffix, []byte(sum+"  "+name+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func TestListPruneDelete(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{
		"etcd-snapshot-n1-1700000003", "etcd-snapshot-n1-1700000001.zip", "etcd-snapshot-n1-1700000002",
		"etcd-snapshot-n2-1700000000", // another node's
		"etcd-snapshot-keep-n1-1600000000", "on-demand-n1-1700000009",
	} {
		writeSnap(t, dir, n, n, true)
	}
	writeSnap(t, dir, ".etcd-snapshot-n1-1700000004.part", "partial", false)

	list, err := List(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range list {
		names = append(names, s.Name)
		if s.SHA256 == "" || s.Size != int64(len(s.Name)) {
			t.Errorf("%s: size %d sha %q", s.Name, s.Size, s.SHA256)
		}
	}
	want := []string{"etcd-snapshot-keep-n1-1600000000", "etcd-snapshot-n2-1700000000", "etcd-snapshot-n1-1700000001.zip",
		"etcd-snapshot-n1-1700000002", "etcd-snapshot-n1-1700000003", "on-demand-n1-1700000009"}
	if !slices.Equal(names, want) {
		t.Fatalf("List = %v, want oldest first %v (no .part, no .sha256)", names, want)
	}

	deleted, err := Prune(dir, ScheduledName, "n1", 2)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(deleted, []string{"etcd-snapshot-n1-1700000001.zip"}) {
		t.Errorf("Prune deleted %v; want only the oldest of n1's scheduled snapshots (not keep-, not n2's)", deleted)
	}
	if _, err := os.Stat(filepath.Join(dir, "etcd-snapshot-n1-1700000001.zip"+ChecksumSuffix)); !os.IsNotExist(err) {
		t.Errorf("checksum file of a pruned snapshot left behind")
	}

	if err := Delete(dir, "on-demand-n1-1700000009", "nope"); err == nil || !strings.Contains(err.Error(), "no snapshot nope") {
		t.Errorf("Delete with a missing name: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "on-demand-n1-1700000009")); err != nil {
		t.Errorf("Delete removed a snapshot although another name was bad: %v", err)
	}
	for _, bad := range []string{"../x", ".hidden", "a/b"} {
		if err := Delete(dir, bad); err == nil {
			t.Errorf("Delete(%q) accepted", bad)
		}
	}
	if _, err := Prune(dir, ScheduledName, "n1", 0); err == nil {
		t.Errorf("Prune with retention 0 accepted")
	}
}

func TestVerifyChecksum(t *testing.T) {
	dir := t.TempDir()
	good := writeSnap(t, dir, "a-n-1700000000", "data", true)
	if err := VerifyChecksum(good); err != nil {
		t.Errorf("good snapshot: %v", err)
	}
	if err := os.WriteFile(good, []byte("datA"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := VerifyChecksum(good); err == nil || !strings.Contains(err.Error(), "damaged or altered") {
		t.Errorf("altered snapshot: %v", err)
	}
	none := writeSnap(t, dir, "b-n-1700000000", "data", false)
	if err := VerifyChecksum(none); err == nil || !strings.Contains(err.Error(), ErrNoChecksum.Error()) {
		t.Errorf("no checksum file: %v", err)
	}
}

func TestParseSchedule(t *testing.T) {
	if _, err := ParseSchedule("0 */12 * * *"); err != nil {
		t.Errorf("default schedule: %v", err)
	}
	if _, err := ParseSchedule("every day"); err == nil {
		t.Errorf("bad schedule accepted")
	}
}

func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}
