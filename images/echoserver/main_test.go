package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func get(t *testing.T, url string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Test", "yes")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return string(b)
}

func TestHandler(t *testing.T) {
	srv := httptest.NewServer(handler("pod-a"))
	defer srv.Close()

	if got := get(t, srv.URL+"/healthz"); got != "ok\n" {
		t.Errorf("/healthz = %q", got)
	}
	if got := get(t, srv.URL+"/hostname"); got != "pod-a\n" {
		t.Errorf("/hostname = %q", got)
	}
	got := get(t, srv.URL+"/some/path?x=1")
	for _, want := range []string{"hostname: pod-a\n", "client: 127.0.0.1:", "method: GET\n", "uri: /some/path?x=1\n", "header: X-Test: yes\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("/some/path answer lacks %q:\n%s", want, got)
		}
	}
}
