package integration

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSystemdNotify: under a Type=notify unit systemd waits for READY=1;
// berth sends it once the server serves (its /readyz answers) — not the
// embedded apiserver, which would say so before the controllers run — and
// STOPPING=1 on SIGTERM. The test plays systemd's notify socket.
func TestSystemdNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()

	s := newServer(t)
	s.env = append(s.env, "NOTIFY_SOCKET="+sock)
	s.start()
	select {
	case m := <-msgs:
		t.Fatalf("notification %q before the server started serving", m)
	case <-time.After(200 * time.Millisecond):
	}
	s.waitReady(2 * time.Minute)
	select {
	case m := <-msgs:
		if !strings.Contains(m, "READY=1") {
			t.Fatalf("first notification %q, want READY=1", m)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no READY=1 within 30 s of /readyz")
	}
	if code, _ := s.stop(30 * time.Second); code != 0 {
		t.Errorf("exit code %d", code)
	}
	select {
	case m := <-msgs:
		if !strings.Contains(m, "STOPPING=1") {
			t.Errorf("notification on SIGTERM %q, want STOPPING=1", m)
		}
	case <-time.After(5 * time.Second):
		t.Error("no STOPPING=1 on SIGTERM")
	}
}
