package token

import (
	"context"
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

const (
	testID     = "abcdef"
	testSecret = "0123456789abcdef"
)

func TestGenerateBootstrap(t *testing.T) {
	re := regexp.MustCompile(`^[a-z0-9]{6}\.[a-z0-9]{16}$`)
	seen := map[string]bool{}
	for range 20 {
		tok, err := GenerateBootstrap()
		if err != nil {
			t.Fatal(err)
		}
		if !re.MatchString(tok) || seen[tok] {
			t.Fatalf("GenerateBootstrap = %q (format or repeat)", tok)
		}
		seen[tok] = true
		if p, err := Parse(tok); err != nil || !p.Bootstrap {
			t.Errorf("generated %q parses as %+v, %v", tok, p, err)
		}
	}
}

func TestBootstrapSecret(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600))
	s, err := bootstrapSecret(bootstrapTok, 2*time.Hour, now, "for the shop", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != "bootstrap-token-abcdef" || s.Namespace != "kube-system" || s.Type != "bootstrap.kubernetes.io/token" {
		t.Errorf("secret %s/%s type %s", s.Namespace, s.Name, s.Type)
	}
	want := map[string]string{
		"token-id":                       testID,
		"token-secret":                   testSecret,
		"expiration":                     "2030-01-02T04:04:05Z",
		"description":                    "for the shop",
		"usage-bootstrap-authentication": "true",
		"usage-bootstrap-signing":        "true",
		"auth-extra-groups":              "system:bootstrappers:berth:default-node-token",
	}
	if len(s.Data) != len(want) {
		t.Errorf("data has %d keys, want %d", len(s.Data), len(want))
	}
	for k, v := range want {
		if string(s.Data[k]) != v {
			t.Errorf("data[%s] = %q, want %q", k, s.Data[k], v)
		}
	}

	// TTL 0 never expires; signing only gets no groups.
	s, err = bootstrapSecret(bootstrapTok, 0, now, "", []string{"signing"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"expiration", "description", "auth-extra-groups", "usage-bootstrap-authentication"} {
		if _, ok := s.Data[k]; ok {
			t.Errorf("data has %s", k)
		}
	}

	for _, tc := range []struct {
		tok            string
		ttl            time.Duration
		usages, groups []string
		want           string
	}{
		{"abcdef.0123456789ABCDEF", time.Hour, nil, nil, "not of the form"},
		{bootstrapTok, -time.Second, nil, nil, "negative TTL"},
		{bootstrapTok, time.Hour, []string{"signing", "bogus"}, nil, "bogus"},
		{bootstrapTok, time.Hour, nil, []string{"system:masters"}, "system:masters"},
		{bootstrapTok, time.Hour, []string{"signing"}, []string{DefaultBootstrapGroup}, `usage "authentication"`},
	} {
		_, err := bootstrapSecret(tc.tok, tc.ttl, now, "", tc.usages, tc.groups)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q ttl %s usages %v groups %v: error %v, want one mentioning %q", tc.tok, tc.ttl, tc.usages, tc.groups, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "0123456789") {
			t.Errorf("error %q contains the secret", err)
		}
	}
}

func TestCreateListDeleteBootstrap(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	if err := CreateBootstrap(ctx, cs, bootstrapTok, time.Hour, "first", nil, nil); err != nil {
		t.Fatal(err)
	}
	err := CreateBootstrap(ctx, cs, bootstrapTok, time.Hour, "again", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "bootstrap token abcdef already exists") {
		t.Errorf("second create: %v", err)
	}
	if err := CreateBootstrap(ctx, cs, "zzzzzz.0123456789abcdef", 0, "", []string{"authentication"}, []string{"system:bootstrappers:edge"}); err != nil {
		t.Fatal(err)
	}
	// Not bootstrap tokens: a Secret of another type, and one of the type
	// with a name the authenticator would never look up.
	other := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bootstrap-token-qqqqqq", Namespace: "kube-system"}, Type: corev1.SecretTypeOpaque}
	odd := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "odd", Namespace: "kube-system"}, Type: "bootstrap.kubernetes.io/token"}
	for _, s := range []*corev1.Secret{other, odd} {
		if _, err := cs.CoreV1().Secrets("kube-system").Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	infos, err := ListBootstrap(ctx, cs)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 2 || infos[0].ID != testID || infos[1].ID != "zzzzzz" {
		t.Fatalf("list = %+v", infos)
	}
	a, z := infos[0], infos[1]
	if a.Description != "first" || a.Expires.IsZero() || !slices.Equal(a.Usages, []string{"signing", "authentication"}) ||
		!slices.Equal(a.Groups, []string{DefaultBootstrapGroup}) || a.Problem != "" {
		t.Errorf("first token listed as %+v", a)
	}
	if !z.Expires.IsZero() || !slices.Equal(z.Usages, []string{"authentication"}) || !slices.Equal(z.Groups, []string{"system:bootstrappers:edge"}) {
		t.Errorf("second token listed as %+v", z)
	}

	// Deletion by id, by token and by K10 token.
	if err := DeleteBootstrap(ctx, cs, testID); err != nil {
		t.Fatal(err)
	}
	err = DeleteBootstrap(ctx, cs, bootstrapTok)
	if !errors.Is(err, ErrBootstrapNotFound) || !strings.Contains(err.Error(), "bootstrap token abcdef does not exist") || strings.Contains(err.Error(), testSecret) {
		t.Errorf("delete of a deleted token: %v", err)
	}
	if err := DeleteBootstrap(ctx, cs, "K10"+hashA+"::zzzzzz.0123456789abcdef"); err != nil {
		t.Errorf("delete by K10 token: %v", err)
	}
	if infos, _ := ListBootstrap(ctx, cs); len(infos) != 0 {
		t.Errorf("after delete: %+v", infos)
	}
	if err := DeleteBootstrap(ctx, cs, "abcdef.0123456789abcdeX"); err == nil || strings.Contains(err.Error(), "0123456789") {
		t.Errorf("malformed argument: error %v (must not quote it)", err)
	}
}

func TestValidateBootstrap(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	cs := fake.NewClientset()
	mk := func(tok string, ttl time.Duration, usages []string) {
		t.Helper()
		if err := CreateBootstrap(ctx, cs, tok, ttl, "", usages, nil); err != nil {
			t.Fatal(err)
		}
	}
	mk(bootstrapTok, time.Hour, nil)
	mk("forevr.0123456789abcdef", 0, nil)
	mk("signin.0123456789abcdef", time.Hour, []string{"signing"})
	// Broken by hand: unreadable expiration, and a token-id unlike the name.
	broken, _ := bootstrapSecret("brokn1.0123456789abcdef", 0, now, "", nil, nil)
	broken.Data["expiration"] = []byte("tomorrow")
	liar, _ := bootstrapSecret("liarid.0123456789abcdef", 0, now, "", nil, nil)
	liar.Data["token-id"] = []byte("other1")
	for _, s := range []*corev1.Secret{broken, liar} {
		if _, err := cs.CoreV1().Secrets("kube-system").Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	if err := ValidateBootstrap(ctx, cs, testID, testSecret, now); err != nil {
		t.Errorf("valid token: %v", err)
	}
	if err := ValidateBootstrap(ctx, cs, "forevr", testSecret, now.Add(100*365*24*time.Hour)); err != nil {
		t.Errorf("token without expiration: %v", err)
	}
	for _, tc := range []struct {
		id, secret string
		at         time.Time
		kind       error
		want       string
	}{
		{"nosuch", testSecret, now, ErrBootstrapNotFound, "bootstrap token nosuch does not exist (deleted or never created)"},
		{testID, testSecret, now.Add(time.Hour + time.Second), ErrBootstrapExpired, "bootstrap token abcdef expired at "},
		{testID, "fedcba9876543210", now, ErrBootstrapWrongSecret, "bootstrap token abcdef: wrong secret"},
		// An expired token with the wrong secret says only "wrong secret".
		{testID, "fedcba9876543210", now.Add(2 * time.Hour), ErrBootstrapWrongSecret, "wrong secret"},
		{"signin", testSecret, now, ErrBootstrapNotForAuth, "bootstrap token signin is not usable for authentication"},
		{"brokn1", testSecret, now, ErrBootstrapExpired, "unreadable expiration"},
		{"liarid", testSecret, now, ErrBootstrapInvalid, `holds token-id "other1"`},
		{testID, "short", now, ErrBootstrapInvalid, "the secret is not"},
		{"ABCDEF", testSecret, now, ErrBootstrapInvalid, "token id is not"},
	} {
		err := ValidateBootstrap(ctx, cs, tc.id, tc.secret, tc.at)
		if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s at %s: error %v, want %v mentioning %q", tc.id, tc.at, err, tc.kind, tc.want)
		}
		if err != nil && (strings.Contains(err.Error(), tc.secret) || strings.Contains(err.Error(), testSecret)) {
			t.Errorf("error %q contains a secret", err)
		}
	}
	// The expiry instant itself is expired, as for the apiserver.
	s, _ := cs.CoreV1().Secrets("kube-system").Get(ctx, "bootstrap-token-abcdef", metav1.GetOptions{})
	exp, _ := time.Parse(time.RFC3339, string(s.Data["expiration"]))
	if err := ValidateBootstrap(ctx, cs, testID, testSecret, exp); !errors.Is(err, ErrBootstrapExpired) {
		t.Errorf("at the expiration instant: %v", err)
	}
	if err := ValidateBootstrap(ctx, cs, testID, testSecret, exp.Add(-time.Second)); err != nil {
		t.Errorf("a second before expiry: %v", err)
	}
}

func TestBootstrapID(t *testing.T) {
	for in, want := range map[string]string{
		testID:                              testID,
		bootstrapTok:                        testID,
		"K10" + hashA + "::" + bootstrapTok: testID,
		" abcdef\n":                         testID,
	} {
		if got, err := BootstrapID(in); err != nil || got != want {
			t.Errorf("BootstrapID(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "abcde", "ABCDEF", "K10" + hashA + "::server:pw", "abcdef.short"} {
		if _, err := BootstrapID(in); err == nil {
			t.Errorf("BootstrapID(%q) succeeded", in)
		}
	}
}
