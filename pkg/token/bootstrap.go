package token

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"
	bootstrapsecrets "k8s.io/cluster-bootstrap/util/secrets"
	"k8s.io/klog/v2"
)

// DefaultBootstrapGroup is the extra group bootstrap tokens authenticate
// in unless told otherwise (k3s: system:bootstrappers:k3s:default-node-token).
const DefaultBootstrapGroup = "system:bootstrappers:berth:default-node-token"

// Errors ValidateBootstrap wraps, so a caller can tell them apart with
// errors.Is (for example to answer 401 rather than 500).
var (
	ErrBootstrapNotFound    = errors.New("bootstrap token not found")
	ErrBootstrapExpired     = errors.New("bootstrap token expired")
	ErrBootstrapWrongSecret = errors.New("bootstrap token secret does not match")
	ErrBootstrapNotForAuth  = errors.New("bootstrap token not usable for authentication")
	ErrBootstrapInvalid     = errors.New("bootstrap token invalid")
)

// bootstrapError carries a specific message and one of the sentinels above.
type bootstrapError struct {
	msg  string
	kind error
}

func (e *bootstrapError) Error() string { return e.msg }
func (e *bootstrapError) Unwrap() error { return e.kind }

func bootstrapErrorf(kind error, format string, args ...any) error {
	return &bootstrapError{msg: fmt.Sprintf(format, args...), kind: kind}
}

// BootstrapInfo describes a bootstrap token without its secret.
type BootstrapInfo struct {
	ID          string
	Description string
	Expires     time.Time // zero: never
	Usages      []string  // "authentication", "signing"
	Groups      []string  // extra groups, besides system:bootstrappers
	// Problem says why the apiserver would refuse the token regardless of
	// its age (an unreadable expiration, a token-id that is not the
	// name's); empty when there is none.
	Problem string
}

// GenerateBootstrap returns a random bootstrap token "<id>.<secret>".
func GenerateBootstrap() (string, error) {
	tok, err := bootstraputil.GenerateBootstrapToken()
	if err != nil {
		return "", fmt.Errorf("generate bootstrap token: %w", err)
	}
	return tok, nil
}

// CreateBootstrap stores the bootstrap token tok ("<id>.<secret>") as the
// Secret kube-system/bootstrap-token-<id>, which the apiserver's
// bootstrap-token authenticator reads. ttl 0 means it never expires. Empty
// usages means authentication and signing; empty groups means
// DefaultBootstrapGroup when the token authenticates.
func CreateBootstrap(ctx context.Context, cs kubernetes.Interface, tok string, ttl time.Duration, description string, usages []string, groups []string) error {
	secret, err := bootstrapSecret(tok, ttl, time.Now(), description, usages, groups)
	if err != nil {
		return err
	}
	id := string(secret.Data[bootstrapapi.BootstrapTokenIDKey])
	_, err = cs.CoreV1().Secrets(metav1.NamespaceSystem).Create(ctx, secret, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("bootstrap token %s already exists (Secret %s/%s): delete it first or choose another token", id, metav1.NamespaceSystem, secret.Name)
	}
	if err != nil {
		return fmt.Errorf("create bootstrap token %s: %w", id, err)
	}
	klog.V(1).Infof("Created bootstrap token %s", id)
	return nil
}

// bootstrapSecret builds the Secret for tok, expiring ttl after now.
func bootstrapSecret(tok string, ttl time.Duration, now time.Time, description string, usages, groups []string) (*corev1.Secret, error) {
	t, ok := parseBootstrap(tok)
	if !ok {
		return nil, fmt.Errorf("create bootstrap token: %w", errBootstrapFormat)
	}
	if ttl < 0 {
		return nil, fmt.Errorf("create bootstrap token %s: negative TTL %s (0 means it never expires)", t.User, ttl)
	}
	if len(usages) == 0 {
		usages = bootstrapapi.KnownTokenUsages
	}
	if err := bootstraputil.ValidateUsages(usages); err != nil {
		return nil, fmt.Errorf("create bootstrap token %s: %w", t.User, err)
	}
	authenticates := slices.Contains(usages, "authentication")
	if len(groups) == 0 && authenticates {
		groups = []string{DefaultBootstrapGroup}
	}
	if len(groups) > 0 && !authenticates {
		// Groups only matter to the authenticator; kubeadm refuses the
		// same combination.
		return nil, fmt.Errorf("create bootstrap token %s: extra groups need the usage \"authentication\"", t.User)
	}
	for _, g := range groups {
		if err := bootstraputil.ValidateBootstrapGroupName(g); err != nil {
			return nil, fmt.Errorf("create bootstrap token %s: %w", t.User, err)
		}
	}

	data := map[string][]byte{
		bootstrapapi.BootstrapTokenIDKey:     []byte(t.User),
		bootstrapapi.BootstrapTokenSecretKey: []byte(t.Password),
	}
	if ttl > 0 {
		data[bootstrapapi.BootstrapTokenExpirationKey] = []byte(now.Add(ttl).UTC().Format(time.RFC3339))
	}
	if description != "" {
		data[bootstrapapi.BootstrapTokenDescriptionKey] = []byte(description)
	}
	for _, u := range usages {
		data[bootstrapapi.BootstrapTokenUsagePrefix+u] = []byte("true")
	}
	if len(groups) > 0 {
		data[bootstrapapi.BootstrapTokenExtraGroupsKey] = []byte(strings.Join(groups, ","))
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:      bootstraputil.BootstrapTokenSecretName(t.User),
			Namespace: metav1.NamespaceSystem,
		},
		Type: bootstrapapi.SecretTypeBootstrapToken,
		Data: data,
	}, nil
}

// ListBootstrap returns the bootstrap tokens in kube-system, sorted by id,
// expired ones included until the token cleaner removes them.
func ListBootstrap(ctx context.Context, cs kubernetes.Interface) ([]BootstrapInfo, error) {
	list, err := cs.CoreV1().Secrets(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("type", string(bootstrapapi.SecretTypeBootstrapToken)).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("list bootstrap tokens: %w", err)
	}
	var infos []BootstrapInfo
	for i := range list.Items {
		if list.Items[i].Type != bootstrapapi.SecretTypeBootstrapToken {
			continue // the field selector is advisory for some clients (fakes)
		}
		info, ok := bootstrapInfo(&list.Items[i])
		if !ok {
			klog.Warningf("Ignoring Secret %s/%s: of type %s but not named bootstrap-token-<id>",
				metav1.NamespaceSystem, list.Items[i].Name, bootstrapapi.SecretTypeBootstrapToken)
			continue
		}
		infos = append(infos, info)
	}
	slices.SortFunc(infos, func(a, b BootstrapInfo) int { return strings.Compare(a.ID, b.ID) })
	return infos, nil
}

// bootstrapInfo reads a bootstrap token Secret; false if its name is not
// bootstrap-token-<id>.
func bootstrapInfo(s *corev1.Secret) (BootstrapInfo, bool) {
	id, ok := bootstrapsecrets.ParseName(s.Name)
	if !ok {
		return BootstrapInfo{}, false
	}
	info := BootstrapInfo{ID: id, Description: bootstrapsecrets.GetData(s, bootstrapapi.BootstrapTokenDescriptionKey)}
	var problems []string
	if got := bootstrapsecrets.GetData(s, bootstrapapi.BootstrapTokenIDKey); got != id {
		problems = append(problems, fmt.Sprintf("its token-id %q is not the id in its name", got))
	}
	if exp := bootstrapsecrets.GetData(s, bootstrapapi.BootstrapTokenExpirationKey); exp != "" {
		t, err := time.Parse(time.RFC3339, exp)
		if err != nil {
			// The authenticator treats this as expired.
			problems = append(problems, fmt.Sprintf("unreadable expiration %q", exp))
		}
		info.Expires = t
	}
	for _, u := range bootstrapapi.KnownTokenUsages {
		if bootstrapsecrets.GetData(s, bootstrapapi.BootstrapTokenUsagePrefix+u) == "true" {
			info.Usages = append(info.Usages, u)
		}
	}
	if g := bootstrapsecrets.GetData(s, bootstrapapi.BootstrapTokenExtraGroupsKey); g != "" {
		info.Groups = strings.Split(g, ",")
	}
	info.Problem = strings.Join(problems, "; ")
	return info, true
}

// BootstrapID returns the token id in idOrToken: an id, a bootstrap token
// "<id>.<secret>", or a K10 token holding one.
func BootstrapID(idOrToken string) (string, error) {
	s := strings.TrimSpace(idOrToken)
	if bootstraputil.IsValidBootstrapTokenID(s) {
		return s, nil
	}
	if t, err := Parse(s); err == nil && t.Bootstrap {
		return t.User, nil
	}
	// Not quoted: it may be a mistyped secret.
	return "", errors.New("not a bootstrap token id ([a-z0-9]{6}) nor a bootstrap token (<id>.<secret>, bare or K10)")
}

// DeleteBootstrap deletes a bootstrap token given its id or the token.
func DeleteBootstrap(ctx context.Context, cs kubernetes.Interface, idOrToken string) error {
	id, err := BootstrapID(idOrToken)
	if err != nil {
		return fmt.Errorf("delete bootstrap token: %w", err)
	}
	err = cs.CoreV1().Secrets(metav1.NamespaceSystem).Delete(ctx, bootstraputil.BootstrapTokenSecretName(id), metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return bootstrapErrorf(ErrBootstrapNotFound, "bootstrap token %s does not exist (deleted or never created)", id)
	}
	if err != nil {
		return fmt.Errorf("delete bootstrap token %s: %w", id, err)
	}
	klog.V(1).Infof("Deleted bootstrap token %s", id)
	return nil
}

// ValidateBootstrap checks that the bootstrap token id.secret exists, is not
// expired at now and may authenticate: the same rules as the apiserver's
// bootstrap-token authenticator, with errors that say which one failed
// (wrapping the Err* sentinels). The secret is compared in constant time
// and never appears in an error or log.
func ValidateBootstrap(ctx context.Context, cs kubernetes.Interface, id, secret string, now time.Time) error {
	if !bootstraputil.IsValidBootstrapToken(bootstraputil.TokenFromIDAndSecret(id, secret)) {
		if bootstraputil.IsValidBootstrapTokenID(id) {
			return bootstrapErrorf(ErrBootstrapInvalid, "bootstrap token %s: the secret is not 16 characters of [a-z0-9]", id)
		}
		// Not quoted: a caller may have put the whole token there.
		return bootstrapErrorf(ErrBootstrapInvalid, "bootstrap token: the token id is not 6 characters of [a-z0-9]")
	}
	s, err := cs.CoreV1().Secrets(metav1.NamespaceSystem).Get(ctx, bootstraputil.BootstrapTokenSecretName(id), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return bootstrapErrorf(ErrBootstrapNotFound, "bootstrap token %s does not exist (deleted or never created)", id)
	}
	if err != nil {
		return fmt.Errorf("look up bootstrap token %s: %w", id, err)
	}
	return checkBootstrap(s, id, secret, now)
}

// checkBootstrap applies ValidateBootstrap's rules to the token's Secret.
// The secret is checked before anything else about the token is revealed.
func checkBootstrap(s *corev1.Secret, id, secret string, now time.Time) error {
	if s.Type != bootstrapapi.SecretTypeBootstrapToken {
		return bootstrapErrorf(ErrBootstrapInvalid, "bootstrap token %s: Secret %s/%s has type %q, not %q",
			id, s.Namespace, s.Name, s.Type, bootstrapapi.SecretTypeBootstrapToken)
	}
	if s.DeletionTimestamp != nil {
		return bootstrapErrorf(ErrBootstrapNotFound, "bootstrap token %s is being deleted", id)
	}
	stored := bootstrapsecrets.GetData(s, bootstrapapi.BootstrapTokenSecretKey)
	if subtle.ConstantTimeCompare([]byte(secret), []byte(stored)) != 1 {
		return bootstrapErrorf(ErrBootstrapWrongSecret, "bootstrap token %s: wrong secret", id)
	}
	if got := bootstrapsecrets.GetData(s, bootstrapapi.BootstrapTokenIDKey); got != id {
		return bootstrapErrorf(ErrBootstrapInvalid, "bootstrap token %s: Secret %s/%s holds token-id %q", id, s.Namespace, s.Name, got)
	}
	if exp := bootstrapsecrets.GetData(s, bootstrapapi.BootstrapTokenExpirationKey); exp != "" {
		t, err := time.Parse(time.RFC3339, exp)
		if err != nil {
			// The apiserver treats an unreadable expiration as expired.
			return bootstrapErrorf(ErrBootstrapExpired, "bootstrap token %s has an unreadable expiration %q, so counts as expired", id, exp)
		}
		if !now.Before(t) {
			return bootstrapErrorf(ErrBootstrapExpired, "bootstrap token %s expired at %s", id, t.Format(time.RFC3339))
		}
	}
	if bootstrapsecrets.GetData(s, bootstrapapi.BootstrapTokenUsageAuthentication) != "true" {
		return bootstrapErrorf(ErrBootstrapNotForAuth, "bootstrap token %s is not usable for authentication (%s is not \"true\"); create one with --usages authentication",
			id, bootstrapapi.BootstrapTokenUsageAuthentication)
	}
	return nil
}
