package token

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var (
	caPEM      = []byte("-----BEGIN CERTIFICATE-----\nY2x1c3RlciBB\n-----END CERTIFICATE-----\n")
	otherCAPEM = []byte("-----BEGIN CERTIFICATE-----\nY2x1c3RlciBC\n-----END CERTIFICATE-----\n")
)

const hashA = "0000000000000000000000000000000000000000000000000000000000000000"

func TestCAHash(t *testing.T) {
	// sha256 of the empty string, a well-known vector.
	if got := CAHash(nil); got != "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" {
		t.Errorf("CAHash(nil) = %s", got)
	}
	if CAHash(caPEM) == CAHash(otherCAPEM) {
		t.Error("different CAs hash alike")
	}
}

func TestRoundTrip(t *testing.T) {
	s := Format(caPEM, "server", "s3cr3t:with:colons")
	if !strings.HasPrefix(s, "K10"+CAHash(caPEM)+"::server:") {
		t.Fatalf("Format = %q", s)
	}
	tok, err := Parse(s + "\n")
	if err != nil {
		t.Fatal(err)
	}
	want := Token{CAHash: CAHash(caPEM), User: "server", Password: "s3cr3t:with:colons"}
	if tok != want {
		t.Errorf("Parse = %+v, want %+v", tok, want)
	}
	if tok.String() != s {
		t.Errorf("String = %q, want %q", tok.String(), s)
	}

	bare, err := Parse("  just-a-password\n")
	if err != nil {
		t.Fatal(err)
	}
	if bare != (Token{Password: "just-a-password"}) || bare.String() != "just-a-password" {
		t.Errorf("bare password parsed as %+v / %q", bare, bare.String())
	}

	upper, err := Parse("K10" + strings.ToUpper(CAHash(caPEM)) + "::node:pw")
	if err != nil || upper.CAHash != CAHash(caPEM) {
		t.Errorf("upper-case hash: %+v, %v", upper, err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "empty"},
		{" \n", "empty"},
		{"K10" + hashA + "server:pw", `"::"`},
		{"K10abc::server:pw", "hex digits"},
		{"K10" + hashA + "0::server:pw", "hex digits"},
		{"K10" + strings.Repeat("g", 64) + "::server:pw", "not hex"},
		{"K10" + hashA + "::", "user:password"},
		{"K10" + hashA + "::server", "user:password"},
		{"K10" + hashA + "::server:", "user:password"},
		{"K10" + hashA + ":::pw", "user:password"},
	} {
		_, err := Parse(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) error = %v, want one mentioning %s", tc.in, err, tc.want)
		}
	}
}

func TestRandom(t *testing.T) {
	a, err := Random(16)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Random(16)
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(a) || a == b {
		t.Errorf("Random(16) = %q, %q", a, b)
	}
	if _, err := Random(0); err == nil {
		t.Error("Random(0) succeeded")
	}
}

func checkMode(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %#o, want 0600", path, fi.Mode().Perm())
	}
}

func TestEnsureServerTokenGenerated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "server", "token")
	tok, err := EnsureServerToken(path, caPEM, "/ca.crt", "")
	if err != nil {
		t.Fatal(err)
	}
	if tok.CAHash != CAHash(caPEM) || tok.User != "server" || !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(tok.Password) {
		t.Errorf("generated token %+v", tok)
	}
	checkMode(t, path)
	data, _ := os.ReadFile(path)
	if strings.TrimSpace(string(data)) != tok.String() {
		t.Errorf("file holds %q, want %q", data, tok.String())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the token", len(entries))
	}

	// Reused on the next start, with or without the matching --token.
	for _, secret := range []string{"", tok.Password, tok.String(), "  " + tok.Password + "\n"} {
		again, err := EnsureServerToken(path, caPEM, "/ca.crt", secret)
		if err != nil || again != tok {
			t.Errorf("secret %q: got %+v, %v; want %+v", secret, again, err, tok)
		}
	}
}

func TestEnsureServerTokenFromSecret(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	tok, err := EnsureServerToken(path, caPEM, "/ca.crt", "my-secret")
	if err != nil {
		t.Fatal(err)
	}
	if tok != (Token{CAHash: CAHash(caPEM), User: "server", Password: "my-secret"}) {
		t.Errorf("token %+v", tok)
	}
	checkMode(t, path)

	// A full K10 token for this CA contributes its password.
	path2 := filepath.Join(dir, "token2")
	tok2, err := EnsureServerToken(path2, caPEM, "/ca.crt", Format(caPEM, "node", "k10-pw"))
	if err != nil || tok2.Password != "k10-pw" || tok2.User != "server" {
		t.Errorf("K10 secret: %+v, %v", tok2, err)
	}

	// A different --token on restart is refused and the file is kept.
	before, _ := os.ReadFile(path)
	_, err = EnsureServerToken(path, caPEM, "/ca.crt", "other-secret")
	if err == nil || !strings.Contains(err.Error(), "does not match the stored one") {
		t.Errorf("mismatched secret: error %v", err)
	}
	after, _ := os.ReadFile(path)
	if string(before) != string(after) {
		t.Error("token file changed")
	}
}

func TestEnsureServerTokenCAMismatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	if _, err := EnsureServerToken(path, caPEM, "/ca.crt", ""); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	_, err := EnsureServerToken(path, otherCAPEM, "/data/server/tls/server-ca.crt", "")
	if err == nil || !strings.Contains(err.Error(), "does not match the cluster CA at /data/server/tls/server-ca.crt") {
		t.Errorf("CA mismatch: error %v", err)
	}
	after, _ := os.ReadFile(path)
	if string(before) != string(after) {
		t.Error("token file was overwritten")
	}
}

func TestEnsureServerTokenForeignK10(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	foreign := Format(otherCAPEM, "server", "pw")
	_, err := EnsureServerToken(path, caPEM, "/ca.crt", foreign)
	if err == nil || !strings.Contains(err.Error(), "belongs to a different cluster CA") {
		t.Errorf("foreign K10 token: error %v", err)
	}
	if _, statErr := os.Stat(path); statErr == nil {
		t.Error("token file was written")
	}
	if _, err := EnsureServerToken(path, caPEM, "/ca.crt", "K10nothex::server:pw"); err == nil {
		t.Error("malformed K10 --token accepted")
	}
}

func TestEnsureServerTokenBadFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	if err := os.WriteFile(path, []byte("K10garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureServerToken(path, caPEM, "/ca.crt", ""); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("malformed token file: error %v, want one naming %s", err, path)
	}

	// Loose permissions on a valid file are tightened.
	if err := os.WriteFile(path, []byte(Format(caPEM, "server", "pw")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureServerToken(path, caPEM, "/ca.crt", ""); err != nil {
		t.Fatal(err)
	}
	checkMode(t, path)

	// An unwritable location is reported with the path.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	bad := filepath.Join(file, "server", "token")
	if _, err := EnsureServerToken(bad, caPEM, "/ca.crt", ""); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("unwritable path: error %v, want one naming %s", err, bad)
	}
}

const bootstrapTok = "abcdef.0123456789abcdef"

func TestBootstrapRoundTrip(t *testing.T) {
	full, err := FormatBootstrap(caPEM, bootstrapTok)
	if err != nil {
		t.Fatal(err)
	}
	if full != "K10"+CAHash(caPEM)+"::"+bootstrapTok {
		t.Fatalf("FormatBootstrap = %q", full)
	}
	tok, err := Parse(full + "\n")
	if err != nil {
		t.Fatal(err)
	}
	want := Token{CAHash: CAHash(caPEM), User: "abcdef", Password: "0123456789abcdef", Bootstrap: true}
	if tok != want {
		t.Errorf("Parse = %+v, want %+v", tok, want)
	}
	if tok.String() != full || tok.BootstrapToken() != bootstrapTok {
		t.Errorf("String = %q, BootstrapToken = %q", tok.String(), tok.BootstrapToken())
	}

	// Bare: no CA hash to pin, still a bootstrap token.
	bare, err := Parse(" " + bootstrapTok + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if bare != (Token{User: "abcdef", Password: "0123456789abcdef", Bootstrap: true}) || bare.String() != bootstrapTok {
		t.Errorf("bare bootstrap token parsed as %+v / %q", bare, bare.String())
	}

	// user:password tokens are not bootstrap tokens, even when the parts
	// have bootstrap shapes.
	for _, s := range []string{
		Format(caPEM, "abcdef", "0123456789abcdef"),
		Format(caPEM, "server", bootstrapTok),
		"ABCDEF.0123456789ABCDEF", // upper case is not a bootstrap token
		"abcdef.0123456789abcde",  // secret one short
		"abcdef-0123456789abcdef",
	} {
		tok, err := Parse(s)
		if err != nil || tok.Bootstrap || tok.BootstrapToken() != "" || tok.String() != s {
			t.Errorf("Parse(%q) = %+v, %v; want a non-bootstrap token printing back the same", s, tok, err)
		}
	}
}

func TestFormatBootstrapRejectsWithoutEcho(t *testing.T) {
	for _, s := range []string{"", "abcdef.0123456789abcdeX", "abcdef:0123456789abcdef", "abcdefg.0123456789abcdef"} {
		_, err := FormatBootstrap(caPEM, s)
		if err == nil {
			t.Errorf("FormatBootstrap(%q) succeeded", s)
			continue
		}
		if s != "" && strings.Contains(err.Error(), s) {
			t.Errorf("error %q quotes the secret", err)
		}
	}
}

func TestParseK10BootstrapErrors(t *testing.T) {
	// A malformed bootstrap part is read as user:password and fails as such.
	_, err := Parse("K10" + hashA + "::abcdef.0123")
	if err == nil || !strings.Contains(err.Error(), "<id>.<secret>") {
		t.Errorf("malformed K10 bootstrap token: error %v", err)
	}
}

// A bootstrap-shaped --token is a shared secret like any other: the server
// keeps all of it as its password.
func TestEnsureServerTokenBootstrapShapedSecret(t *testing.T) {
	dir := t.TempDir()
	for i, secret := range []string{bootstrapTok, "K10" + CAHash(caPEM) + "::" + bootstrapTok} {
		path := filepath.Join(dir, "token"+string(rune('a'+i)))
		tok, err := EnsureServerToken(path, caPEM, "/ca.crt", secret)
		if err != nil {
			t.Fatal(err)
		}
		if tok.Bootstrap || tok.User != "server" || tok.Password != bootstrapTok {
			t.Errorf("secret %q: token %+v, want server:%s", secret, tok, bootstrapTok)
		}
		again, err := EnsureServerToken(path, caPEM, "/ca.crt", secret)
		if err != nil || again != tok {
			t.Errorf("secret %q on restart: %+v, %v", secret, again, err)
		}
	}
}

func TestRotateServerToken(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	link := filepath.Join(dir, "node-token")
	if err := os.Symlink("token", link); err != nil {
		t.Fatal(err)
	}
	old, err := EnsureServerToken(path, caPEM, "/ca.crt", "old-secret")
	if err != nil {
		t.Fatal(err)
	}

	rotated, err := RotateServerToken(path, caPEM, "/ca.crt", "")
	if err != nil {
		t.Fatal(err)
	}
	if rotated.Password == old.Password || rotated.User != "server" || rotated.CAHash != old.CAHash ||
		!regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(rotated.Password) {
		t.Errorf("rotated %+v from %+v", rotated, old)
	}
	checkMode(t, path)
	for _, p := range []string{path, link} {
		data, _ := os.ReadFile(p)
		if strings.TrimSpace(string(data)) != rotated.String() {
			t.Errorf("%s holds %q, want %q", p, data, rotated.String())
		}
	}
	// The rotated token is what the server now accepts as --token.
	if again, err := EnsureServerToken(path, caPEM, "/ca.crt", rotated.String()); err != nil || again != rotated {
		t.Errorf("server start after rotation: %+v, %v", again, err)
	}

	given, err := RotateServerToken(path, caPEM, "/ca.crt", "chosen-secret")
	if err != nil || given.Password != "chosen-secret" {
		t.Errorf("--new-token: %+v, %v", given, err)
	}
}

func TestRotateServerTokenRefuses(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	_, err := RotateServerToken(path, caPEM, "/ca.crt", "")
	if err == nil || !strings.Contains(err.Error(), "no server token at "+path) {
		t.Errorf("missing token: error %v", err)
	}
	if _, statErr := os.Stat(path); statErr == nil {
		t.Error("rotation created a token file")
	}

	if _, err := EnsureServerToken(path, caPEM, "/ca.crt", "same"); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	for _, tc := range []struct {
		ca          []byte
		secret, msg string
	}{
		{caPEM, "same", "same as the current one"},
		{caPEM, Format(otherCAPEM, "server", "x"), "different cluster CA"},
		{caPEM, "K10nothex::server:x", "--new-token"},
		{otherCAPEM, "", "does not match the cluster CA"},
	} {
		_, err := RotateServerToken(path, tc.ca, "/ca.crt", tc.secret)
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("secret %q: error %v, want one mentioning %q", tc.secret, err, tc.msg)
		}
	}
	after, _ := os.ReadFile(path)
	if string(before) != string(after) {
		t.Error("a refused rotation changed the token file")
	}
}
