package sdnotify

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

func TestTakeAndSend(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	s := Take()
	if _, set := os.LookupEnv("NOTIFY_SOCKET"); set || string(s) != path {
		t.Fatalf("Take: %q, NOTIFY_SOCKET still set: %v", s, set)
	}
	if err := s.Send("READY=1"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, _, err := conn.ReadFromUnix(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("got %q, %v", buf[:n], err)
	}
	if err := Socket("").Send("READY=1"); err != nil {
		t.Errorf("no socket: %v", err)
	}
	if err := Socket(filepath.Join(t.TempDir(), "gone")).Send("READY=1"); err == nil {
		t.Error("a missing socket is an error")
	}
}
