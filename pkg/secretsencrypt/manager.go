package secretsencrypt

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/server/options/encryptionconfig/controller"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/pager"
	"k8s.io/client-go/util/retry"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/klog/v2"
)

// HashConfigMap is kube-system's ConfigMap where every server publishes
// "<stage>-<config hash>" under its name, so status can tell whether all
// servers hold the same keys. (k3s annotates each server's Node; berth
// servers run without a Node under --disable-agent, and a ConfigMap stays
// readable when servers' keys differ, which is when it matters.)
const HashConfigMap = "berth-encryption"

// Manager is the server side of `berth secrets-encrypt`: it changes the
// configuration file, waits until the in-process apiserver has loaded it,
// rewrites Secrets and keeps the rotation stage. It is a component after
// the apiserver, so its work stops before the apiserver does.
type Manager struct {
	Files    Files
	Provider Provider
	// NodeName names this server in HashConfigMap.
	NodeName string
	Client   func() (kubernetes.Interface, error)
	// ReloadInterval is how often the apiserver re-reads the file.
	ReloadInterval time.Duration
	// ReloadTimeout bounds the wait for it to load a new file.
	ReloadTimeout time.Duration
	// AfterWrite, if set, runs after each change of the configuration and
	// state files, e.g. to store them where other servers fetch them
	// (bootstrap data). A failure is logged: the change stands locally.
	AfterWrite func(ctx context.Context) error

	mu sync.Mutex
	// running is the command whose work is under way ("" when idle).
	running  string
	progress atomic.Int64
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

func (m *Manager) Name() string { return "secrets-encryption" }

// Prepare sets how often the apiserver polls its encryption config. Its
// upstream default is a minute, which would make every step of a rotation
// wait up to a minute; reading and hashing a 1 KiB file every few seconds
// costs nothing. Upstream exposes the knob for exactly this; it must be set
// before the apiserver starts its reload controller.
func (m *Manager) Prepare(context.Context) error {
	if m.ReloadInterval > 0 {
		controller.EncryptionConfigFileChangePollDuration = m.ReloadInterval
	}
	if m.ReloadTimeout == 0 {
		m.ReloadTimeout = 2 * time.Minute
	}
	return nil
}

// Start publishes this server's hash and resumes a reencryption that a
// stop interrupted.
func (m *Manager) Start(ctx context.Context) error {
	m.ctx, m.cancel = context.WithCancel(ctx)
	st, err := m.Files.ReadState()
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if st.Pending != nil && st.LastError == "" && st.Pending.Server == m.NodeName {
		klog.Infof("Secrets encryption: resuming the reencryption of %s that was interrupted", st.Pending.Command)
		m.startWork(st.Pending.Command, st.Pending)
		return nil
	}
	m.wg.Go(func() {
		if _, data, err := m.Files.ReadConfig(); err == nil {
			m.publishRetrying(m.ctx, st.Stage, Hash(data))
		}
	})
	return nil
}

func (m *Manager) Ready(context.Context) error { return nil }

// Stop interrupts running work; an interrupted reencryption resumes at the
// next start (its keys are only removed once every Secret is rewritten).
func (m *Manager) Stop(ctx context.Context) error {
	if m.cancel == nil {
		return nil
	}
	m.cancel()
	done := make(chan struct{})
	go func() { m.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RequestError is a refused request with its HTTP status.
type RequestError struct {
	Code int
	Msg  string
}

func (e *RequestError) Error() string { return e.Msg }

func badRequest(format string, a ...any) error {
	return &RequestError{http.StatusBadRequest, fmt.Sprintf(format, a...)}
}

// errNotConfigured answers commands on a server without encryption.
func (m *Manager) errNotConfigured() error {
	return badRequest("secrets encryption is not configured on this server (no %s): start berth server with --secrets-encryption (the apiserver takes an encryption config only at start)", m.Files.ConfigPath())
}

// Apply checks a command against the configuration and stage, changes the
// file and starts the work that follows in the background (Status shows
// it). Refusals change nothing.
func (m *Manager) Apply(req Request) (*Response, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.running != "" {
		return nil, &RequestError{http.StatusConflict, fmt.Sprintf("%s is still running (%d Secrets rewritten so far); wait for it to finish (berth secrets-encrypt status)", m.running, m.progress.Load())}
	}
	if m.ctx == nil {
		return nil, &RequestError{http.StatusServiceUnavailable, "the server is still starting; retry in a moment"}
	}
	cfg, data, err := m.Files.ReadConfig()
	if errors.Is(err, fs.ErrNotExist) {
		return nil, m.errNotConfigured()
	}
	if err != nil {
		return nil, &RequestError{http.StatusInternalServerError, err.Error() + "; nothing was changed. Restore the file from a backup or another server"}
	}
	st, err := m.Files.ReadState()
	if err != nil {
		return nil, &RequestError{http.StatusInternalServerError, err.Error()}
	}
	if st.Pending != nil && !req.Force && req.Command != CmdReencrypt {
		return nil, badRequest("the reencryption of %s has not finished (%s); run `berth secrets-encrypt reencrypt` to retry it, or pass --force", st.Pending.Command, orNone(st.LastError))
	}
	// Every server must hold the same keys before one of them moves on:
	// a Secret written with a key another server lacks is unreadable there.
	if !req.Force {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		why := m.hashDisagreement(ctx, st.Stage, Hash(data))
		cancel()
		if why != "" {
			return nil, &RequestError{http.StatusConflict, why + ": every server must have the same encryption config and stage first (restart or resync the others; --force if a listed server is gone for good)"}
		}
	}
	stageIs := func(want ...string) error {
		if req.Force || slices.Contains(want, st.Stage) {
			return nil
		}
		return badRequest("%s is not allowed at stage %s (allowed at: %s); pass --force to do it anyway", req.Command, st.Stage, strings.Join(want, ", "))
	}

	prev := st.Stage
	if st.Pending != nil {
		prev = st.Pending.Final
	}
	var pending *Pending
	var msg string
	switch req.Command {
	case CmdEnable, CmdDisable:
		on := req.Command == CmdEnable
		if cfg.Enabled == on {
			return &Response{Message: "Secrets encryption is already " + map[bool]string{true: "enabled", false: "disabled"}[on]}, nil
		}
		cfg.Enabled = on
		// Rewrite every Secret so none stays in the old form, keep the keys
		// (they still decrypt whatever a concurrent writer raced in).
		pending = &Pending{Command: req.Command, Final: prev}
		msg = map[bool]string{true: "Secrets encryption enabled; rewriting every Secret encrypted", false: "Secrets encryption disabled; rewriting every Secret as plaintext"}[on]
	case CmdPrepare:
		if err := stageIs(StageStart, StageReencryptFinished); err != nil {
			return nil, err
		}
		k, err := NewKey(m.Provider, false, time.Now())
		if err != nil {
			return nil, err
		}
		cfg.Keys = append(cfg.Keys, k)
		st.Stage = StagePrepare
		msg = fmt.Sprintf("Added the %s key %s (inactive; `rotate` makes it active)", k.Provider, k.Name)
	case CmdRotate:
		if err := stageIs(StagePrepare); err != nil {
			return nil, err
		}
		if len(cfg.Keys) < 2 {
			return nil, badRequest("rotate needs a second key: run `berth secrets-encrypt prepare` first")
		}
		// The key prepare added (last) becomes the first, the active one.
		last := cfg.Keys[len(cfg.Keys)-1]
		cfg.Keys = append([]Key{last}, cfg.Keys[:len(cfg.Keys)-1]...)
		st.Stage = StageRotate
		msg = fmt.Sprintf("Key %s is now the active key; run `berth secrets-encrypt reencrypt` to rewrite every Secret with it", last.Name)
	case CmdReencrypt:
		if st.Pending != nil && !req.Force {
			pending = st.Pending // retry what failed or was interrupted
			break
		}
		if err := stageIs(StageStart, StageRotate, StageReencryptFinished); err != nil {
			return nil, err
		}
		drop := !req.Skip && cfg.Enabled && len(cfg.Keys) > 1
		final := StageReencryptFinished
		if req.Skip {
			final = prev
		}
		pending = &Pending{Command: CmdReencrypt, DropInactive: drop, Final: final}
		msg = "Reencryption started"
	case CmdRotateKeys:
		if err := stageIs(StageStart, StageReencryptFinished); err != nil {
			return nil, err
		}
		if !cfg.Enabled {
			return nil, badRequest("secrets encryption is disabled on this server; run `berth secrets-encrypt enable` first")
		}
		k, err := NewKey(m.Provider, false, time.Now())
		if err != nil {
			return nil, err
		}
		// The new key is active at once; the old ones stay, to decrypt,
		// until every Secret is rewritten.
		cfg.Keys = append([]Key{k}, cfg.Keys...)
		pending = &Pending{Command: CmdRotateKeys, DropInactive: true, Final: StageReencryptFinished}
		msg = fmt.Sprintf("Added the %s key %s as the active key; rewriting every Secret, then removing the old keys", k.Provider, k.Name)
	default:
		return nil, badRequest("unknown command %q: want %s", req.Command, strings.Join([]string{CmdEnable, CmdDisable, CmdPrepare, CmdRotate, CmdReencrypt, CmdRotateKeys}, ", "))
	}

	if req.Command != CmdReencrypt {
		hash, err := m.Files.WriteConfig(cfg)
		if err != nil {
			return nil, err
		}
		st.ConfigHash = hash
	}
	if pending != nil {
		st.Stage = StageReencryptRequest
		pending.Server = m.NodeName
	}
	st.Pending, st.LastError = pending, ""
	if err := m.Files.WriteState(st); err != nil {
		return nil, err
	}
	m.afterWrite(m.ctx)
	klog.Infof("Secrets encryption: %s (%s)", msg, req.Command)
	m.startWork(req.Command, pending)
	return &Response{Message: msg, Started: true}, nil
}

// startWork runs a command's remaining work in the background. m.mu held.
func (m *Manager) startWork(cmd string, p *Pending) {
	m.running = cmd
	m.progress.Store(0)
	m.wg.Go(func() {
		err := m.work(m.ctx, p)
		m.mu.Lock()
		defer m.mu.Unlock()
		m.running = ""
		if err == nil {
			return
		}
		if m.ctx.Err() != nil {
			klog.Infof("Secrets encryption: %s interrupted by the stop; it resumes at the next start", cmd)
			return
		}
		klog.Errorf("Secrets encryption: %s failed: %v", cmd, err)
		if st, rerr := m.Files.ReadState(); rerr == nil {
			st.LastError = err.Error()
			if werr := m.Files.WriteState(st); werr != nil {
				klog.Errorf("Secrets encryption: %v", werr)
			}
		}
	})
}

// work waits for the apiserver to load the file, then rewrites every
// Secret and drops the inactive keys if p says so.
func (m *Manager) work(ctx context.Context, p *Pending) error {
	_, data, err := m.Files.ReadConfig()
	if err != nil {
		return err
	}
	if err := m.waitLoaded(ctx, Hash(data)); err != nil {
		return err
	}
	st, err := m.Files.ReadState()
	if err != nil {
		return err
	}
	if p == nil {
		m.publishRetrying(ctx, st.Stage, Hash(data))
		return nil
	}
	st.Stage = StageReencryptActive
	if err := m.Files.WriteState(st); err != nil {
		return err
	}
	m.publishRetrying(ctx, st.Stage, Hash(data))
	// A write that was encrypted with the previous configuration just
	// before the apiserver switched may still be committing: let it land
	// before the list below takes its snapshot, so the pass sees it.
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(settleDelay):
	}
	n, err := m.rewriteSecrets(ctx)
	if err != nil {
		return err
	}
	klog.Infof("Secrets encryption: rewrote %d Secrets", n)
	if p.DropInactive {
		cfg, _, err := m.Files.ReadConfig()
		if err != nil {
			return err
		}
		if cfg.Enabled && len(cfg.Keys) > 1 {
			dropped := cfg.Keys[1:]
			cfg.Keys = cfg.Keys[:1]
			hash, err := m.Files.WriteConfig(cfg)
			if err != nil {
				return err
			}
			names := make([]string, len(dropped))
			for i, k := range dropped {
				names[i] = k.Name
			}
			klog.Infof("Secrets encryption: removed the keys no Secret uses any more: %s", strings.Join(names, ", "))
			if err := m.waitLoaded(ctx, hash); err != nil {
				return err
			}
		}
	}
	_, data, err = m.Files.ReadConfig()
	if err != nil {
		return err
	}
	st.Stage, st.Pending, st.LastError, st.ConfigHash = p.Final, nil, "", Hash(data)
	if err := m.Files.WriteState(st); err != nil {
		return err
	}
	m.afterWrite(ctx)
	m.publishRetrying(ctx, st.Stage, st.ConfigHash)
	klog.Infof("Secrets encryption: %s finished, stage %s", p.Command, st.Stage)
	return nil
}

func (m *Manager) afterWrite(ctx context.Context) {
	if m.AfterWrite == nil {
		return
	}
	if err := m.AfterWrite(ctx); err != nil {
		klog.Warningf("Secrets encryption: the changed config is not shared with the other servers: %v", err)
	}
}

// settleDelay is how long writes in flight at a reload get to commit.
const settleDelay = time.Second

// rewriteSecrets updates every Secret unchanged. The apiserver writes an
// object again when the key it was read with is not the first one (its
// "stale" check), so each is re-stored with the active key; the others
// cost one round trip. A conflict means someone else just wrote it, with
// the same, loaded configuration: done too.
func (m *Manager) rewriteSecrets(ctx context.Context) (int, error) {
	cs, err := m.Client()
	if err != nil {
		return 0, err
	}
	p := pager.New(pager.SimplePageFunc(func(opts metav1.ListOptions) (runtime.Object, error) {
		return cs.CoreV1().Secrets(metav1.NamespaceAll).List(ctx, opts)
	}))
	p.PageSize = 100
	n := 0
	err = p.EachListItem(ctx, metav1.ListOptions{}, func(obj runtime.Object) error {
		s, ok := obj.(*corev1.Secret)
		if !ok {
			return fmt.Errorf("listing Secrets returned a %T", obj)
		}
		_, err := cs.CoreV1().Secrets(s.Namespace).Update(ctx, s, metav1.UpdateOptions{})
		if err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			return fmt.Errorf("rewrite Secret %s/%s: %w", s.Namespace, s.Name, err)
		}
		n++
		m.progress.Store(int64(n))
		return nil
	})
	return n, err
}

// Metrics of the apiserver's encryption-config reload controller, read
// from the in-process registry (the apiserver runs in this process).
const (
	loadedMetric  = "apiserver_encryption_config_controller_last_config_info"
	reloadsMetric = "apiserver_encryption_config_controller_automatic_reloads_total"
)

// LoadedHash is the hash of the encryption config the apiserver uses.
func LoadedHash() string {
	mfs, err := legacyregistry.DefaultGatherer.Gather()
	if err != nil {
		return ""
	}
	for _, mf := range mfs {
		if mf.GetName() != loadedMetric {
			continue
		}
		for _, metric := range mf.GetMetric() {
			for _, l := range metric.GetLabel() {
				if l.GetName() == "hash" {
					return l.GetValue()
				}
			}
		}
	}
	return ""
}

// reloadFailures counts the apiserver's failed reloads.
func reloadFailures() float64 {
	mfs, err := legacyregistry.DefaultGatherer.Gather()
	if err != nil {
		return 0
	}
	for _, mf := range mfs {
		if mf.GetName() != reloadsMetric {
			continue
		}
		sum := 0.0
		for _, metric := range mf.GetMetric() {
			for _, l := range metric.GetLabel() {
				if l.GetName() == "status" && l.GetValue() == "failure" {
					sum += metric.GetCounter().GetValue()
				}
			}
		}
		return sum
	}
	return 0
}

// waitLoaded waits until the apiserver encrypts and decrypts with the file
// whose hash is want: only then may Secrets be rewritten, or a key that
// wrote them be removed.
func (m *Manager) waitLoaded(ctx context.Context, want string) error {
	failures := reloadFailures()
	t0 := time.Now()
	deadline := t0.Add(m.ReloadTimeout)
	for checks := 1; ; checks++ {
		if LoadedHash() == want {
			klog.V(1).Infof("Secrets encryption: the apiserver loaded %s after %s (%d checks)", want, time.Since(t0).Round(time.Millisecond), checks)
			return nil
		}
		if time.Now().After(deadline) {
			why := "is --encryption-provider-config-automatic-reload off in --kube-apiserver-arg?"
			if reloadFailures() > failures {
				why = "it failed to reload it: see the log for \"error processing encryption config file\""
			}
			return fmt.Errorf("the apiserver has not loaded %s within %s (%s); nothing was removed", m.Files.ConfigPath(), m.ReloadTimeout, why)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// publishRetrying records this server's stage and hash in HashConfigMap,
// retrying while the apiserver is busy; status works without it.
func (m *Manager) publishRetrying(ctx context.Context, stage, hash string) {
	for attempt := 0; ; attempt++ {
		err := m.publish(ctx, stage, hash)
		if err == nil || ctx.Err() != nil {
			return
		}
		if attempt == 5 {
			klog.Warningf("Secrets encryption: cannot publish this server's config hash: %v", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

func hashValue(stage, hash string) string { return stage + "-" + strings.TrimPrefix(hash, "sha256:") }

func (m *Manager) publish(ctx context.Context, stage, hash string) error {
	cs, err := m.Client()
	if err != nil {
		return err
	}
	cms := cs.CoreV1().ConfigMaps(metav1.NamespaceSystem)
	val := hashValue(stage, hash)
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cm, err := cms.Get(ctx, HashConfigMap, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = cms.Create(ctx, &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Name: HashConfigMap, Namespace: metav1.NamespaceSystem},
				Data:       map[string]string{m.NodeName: val},
			}, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(corev1.Resource("configmaps"), HashConfigMap, err)
			}
			return err
		}
		if err != nil {
			return err
		}
		if cm.Data[m.NodeName] == val {
			return nil
		}
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data[m.NodeName] = val
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
		return err
	})
}

// Status reports the configuration, stage, keys and hash agreement.
func (m *Manager) Status(ctx context.Context) (*Status, error) {
	out := &Status{}
	cfg, data, err := m.Files.ReadConfig()
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	st, err := m.Files.ReadState()
	if err != nil {
		return nil, err
	}
	out.Configured, out.Enabled, out.Stage = true, cfg.Enabled, st.Stage
	out.ConfigHash, out.LoadedHash = Hash(data), LoadedHash()
	out.LastError = st.LastError
	for i, k := range cfg.Keys {
		out.Keys = append(out.Keys, KeyStatus{Active: cfg.Enabled && i == 0, Provider: string(k.Provider), Type: k.Provider.KeyType(), Name: k.Name})
	}
	m.mu.Lock()
	if m.running != "" {
		out.Running, out.Command = true, m.running
		out.Progress = &Progress{Done: int(m.progress.Load())}
	}
	m.mu.Unlock()

	out.HashError = m.hashDisagreement(ctx, st.Stage, out.ConfigHash)
	if out.HashError == "" && out.LoadedHash != out.ConfigHash {
		out.HashError = fmt.Sprintf("the apiserver has not loaded %s yet (it re-reads it every %s)", m.Files.ConfigPath(), controller.EncryptionConfigFileChangePollDuration)
	}
	out.HashMatch = out.HashError == ""
	return out, nil
}

// hashDisagreement compares every server's published "<stage>-<hash>"
// (this one's as it is now) and says which differ; "" when all match.
func (m *Manager) hashDisagreement(ctx context.Context, stage, configHash string) string {
	hashes := map[string]string{}
	if m.Client != nil {
		cs, err := m.Client()
		if err != nil {
			return fmt.Sprintf("cannot read the other servers' hashes: %v", err)
		}
		cm, err := cs.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, HashConfigMap, metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Sprintf("cannot read the other servers' hashes: %v", err)
		}
		if err == nil {
			maps.Copy(hashes, cm.Data)
		}
	}
	hashes[m.NodeName] = hashValue(stage, configHash)
	names := slices.Sorted(maps.Keys(hashes))
	for _, n := range names[1:] {
		if hashes[n] != hashes[names[0]] {
			return fmt.Sprintf("hash does not match between %s and %s", names[0], n)
		}
	}
	return ""
}

func orNone(s string) string {
	if s == "" {
		return "interrupted"
	}
	return s
}
