package containerd

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func testConfig(t *testing.T) *Config {
	dir := t.TempDir()
	return &Config{
		DataDir: dir, BinDir: "/opt/bin", StateDir: filepath.Join(dir, "run"),
		PauseImage: "berth.local/pause:3.10", CNIConfDir: filepath.Join(dir, "cni"), StreamPort: 10010,
	}
}

func TestRenderDefault(t *testing.T) {
	c := testConfig(t)
	c.RestrictOOMScoreAdj = true
	out, err := Render(c)
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	for _, want := range []string{
		"version = 3",
		`root = "` + filepath.Join(c.DataDir, "agent", "containerd") + `"`,
		`address = "` + filepath.Join(c.StateDir, "containerd.sock") + `"`,
		"restrict_oom_score_adj = true",
		`BinaryName = "/opt/bin/runc"`,
		`bin_dirs = ["/opt/bin"]`,
		`sandbox = "berth.local/pause:3.10"`,
		`snapshotter = "overlayfs"`,
		`stream_server_port = "10010"`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("config lacks %q:\n%s", want, s)
		}
	}
}

func TestRenderUserTemplate(t *testing.T) {
	c := testConfig(t)
	if err := os.MkdirAll(c.EtcDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	tmpl := `{{ template "base" . }}
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.custom]
  runtime_type = "io.containerd.runc.v2"
`
	if err := os.WriteFile(c.TemplatePath(), []byte(tmpl), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := Render(c)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "version = 3") || !strings.Contains(string(out), "runtimes.custom") {
		t.Errorf("user template not applied over the base:\n%s", out)
	}
	os.WriteFile(c.TemplatePath(), []byte("{{ .NoSuchField }}"), 0o600)
	if _, err := Render(c); err == nil || !strings.Contains(err.Error(), c.TemplatePath()) && !strings.Contains(err.Error(), "NoSuchField") {
		t.Errorf("a broken template must be an error naming it: %v", err)
	}
}

// The probe must agree with the kernel's view of this process's
// capabilities: CAP_SYS_RESOURCE (bit 24) in CapEff.
func TestCanLowerOOMScoreAdjMatchesCapabilities(t *testing.T) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip(err)
	}
	var capEff uint64
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			capEff, _ = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	before, _ := os.ReadFile("/proc/self/oom_score_adj")
	got, err := CanLowerOOMScoreAdj()
	if err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile("/proc/self/oom_score_adj")
	if string(before) != string(after) {
		t.Errorf("oom_score_adj changed from %q to %q", before, after)
	}
	if want := capEff&(1<<24) != 0; got != want && strings.TrimSpace(string(before)) != "-1000" {
		t.Errorf("CanLowerOOMScoreAdj = %v, CAP_SYS_RESOURCE in CapEff = %v", got, want)
	}
	t.Logf("CanLowerOOMScoreAdj = %v (CapEff %x)", got, capEff)
}
