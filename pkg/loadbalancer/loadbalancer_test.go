package loadbalancer

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"slices"
	"testing"
)

// backend answers every connection with its name.
func backend(t *testing.T, name string) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, name)
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close() })
	return l
}

func ask(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, _ := io.ReadAll(c)
	return string(b)
}

func TestFailoverAndRememberedServers(t *testing.T) {
	a, b := backend(t, "a"), backend(t, "b")
	state := filepath.Join(t.TempDir(), "lb.json")
	// It sticks to the server it started with (the one that answered the join).
	lb := New("127.0.0.1:0", state, a.Addr().String())
	lb.SetServers([]string{a.Addr().String(), b.Addr().String()})
	ctx := context.Background()
	if err := lb.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	if err := lb.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer lb.Stop(ctx) //nolint:errcheck
	addr := lb.listener.Addr().String()
	if got := ask(t, addr); got != "a" {
		t.Fatalf("first server: got %q", got)
	}
	a.Close()
	if got := ask(t, addr); got != "b" {
		t.Fatalf("after the first server went away: got %q, want b", got)
	}

	// A restarted agent knows both servers without being told.
	saved, err := Load(state)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(saved, []string{a.Addr().String(), b.Addr().String()}) {
		t.Errorf("saved servers %v", saved)
	}
}
