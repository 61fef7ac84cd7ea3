package secretsencrypt

import (
	"bytes"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"
)

// Refused commands answer 4xx with what to do, and change no file.
func TestApplyRefusals(t *testing.T) {
	f := Files{Dir: t.TempDir()}
	m := &Manager{Files: f, Provider: AESCBC, NodeName: "test"}
	if _, err := m.Apply(Request{Command: CmdRotateKeys}); err == nil || !strings.Contains(err.Error(), "starting") {
		t.Fatalf("before Start: %v", err)
	}
	m.ctx = t.Context()

	var re *RequestError
	if _, err := m.Apply(Request{Command: CmdRotateKeys}); !errors.As(err, &re) || re.Code != http.StatusBadRequest || !strings.Contains(re.Msg, "--secrets-encryption") {
		t.Fatalf("without a config: %v", err)
	}
	if _, err := os.Stat(f.ConfigPath()); !os.IsNotExist(err) {
		t.Fatal("a refused command wrote a config")
	}

	if _, err := f.Ensure(true, AESCBC); err != nil {
		t.Fatal(err)
	}
	cfg0, _ := os.ReadFile(f.ConfigPath())
	st0, _ := os.ReadFile(f.StatePath())
	for _, tc := range []struct {
		req  Request
		want string
	}{
		{Request{Command: CmdRotate}, "not allowed at stage start"},
		{Request{Command: CmdRotate, Force: true}, "needs a second key"},
		{Request{Command: "rotate-everything"}, "unknown command"},
	} {
		_, err := m.Apply(tc.req)
		if !errors.As(err, &re) || re.Code != http.StatusBadRequest || !strings.Contains(re.Msg, tc.want) {
			t.Errorf("%+v: %v, want %q", tc.req, err, tc.want)
		}
	}
	if resp, err := m.Apply(Request{Command: CmdEnable}); err != nil || resp.Started || !strings.Contains(resp.Message, "already enabled") {
		t.Errorf("enable when enabled: %+v %v", resp, err)
	}
	cfg1, _ := os.ReadFile(f.ConfigPath())
	st1, _ := os.ReadFile(f.StatePath())
	if !bytes.Equal(cfg0, cfg1) || !bytes.Equal(st0, st1) {
		t.Fatal("a refused command changed the files")
	}

	// A corrupt file is reported, never overwritten.
	if err := os.WriteFile(f.ConfigPath(), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Apply(Request{Command: CmdRotateKeys}); !errors.As(err, &re) || !strings.Contains(re.Msg, f.ConfigPath()) || !strings.Contains(re.Msg, "nothing was changed") {
		t.Fatalf("corrupt config: %v", err)
	}
	if b, _ := os.ReadFile(f.ConfigPath()); string(b) != "{" {
		t.Fatal("the corrupt config was overwritten")
	}
}
