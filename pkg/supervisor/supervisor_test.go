package supervisor

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/http"
	"reflect"
	"testing"
)

func TestSetIdentityStripsForgedHeaders(t *testing.T) {
	r, _ := http.NewRequest(http.MethodGet, "https://x/api", nil)
	r.Header.Set("X-Remote-User", "system:admin")
	r.Header.Add("X-Remote-Group", "system:masters")
	r.Header.Set("X-Remote-Extra-Scopes", "all")
	r.Header.Set("Authorization", "Bearer abc")
	setIdentity(r, &tls.ConnectionState{}) // no verified client certificate
	for _, h := range []string{"X-Remote-User", "X-Remote-Group", "X-Remote-Extra-Scopes"} {
		if r.Header.Get(h) != "" {
			t.Errorf("%s passed through from the client", h)
		}
	}
	if r.Header.Get("Authorization") != "Bearer abc" {
		t.Error("bearer token must pass through for the apiserver to check")
	}
}

func TestSetIdentityFromVerifiedCert(t *testing.T) {
	r, _ := http.NewRequest(http.MethodGet, "https://x/api", nil)
	r.Header.Set("X-Remote-User", "forged")
	leaf := &x509.Certificate{Subject: pkix.Name{CommonName: "system:node:n1", Organization: []string{"system:nodes", "extra"}}}
	setIdentity(r, &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf}}})
	if got := r.Header.Get("X-Remote-User"); got != "system:node:n1" {
		t.Errorf("user %q", got)
	}
	if got := r.Header.Values("X-Remote-Group"); !reflect.DeepEqual(got, []string{"system:nodes", "extra"}) {
		t.Errorf("groups %v", got)
	}
}

func TestUnverifiedPeerCertGivesNoIdentity(t *testing.T) {
	r, _ := http.NewRequest(http.MethodGet, "https://x/api", nil)
	leaf := &x509.Certificate{Subject: pkix.Name{CommonName: "system:admin"}}
	setIdentity(r, &tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}})
	if r.Header.Get("X-Remote-User") != "" {
		t.Error("an unverified certificate must not give an identity")
	}
}
