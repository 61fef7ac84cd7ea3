// Package deploy is berth's auto-deploy controller: every .yaml, .yml and
// .json file under <data-dir>/server/manifests (subdirectories included) is
// applied with server-side apply; a changed file is re-applied, objects a
// file no longer holds are pruned, and a removed file's objects are
// deleted. A file X with a sibling X.skip is left alone. Each file's state
// (checksum, objects, last error) is kept in a ConfigMap in kube-system
// labelled berth.io/manifest, so `kubectl get cm -l berth.io/manifest -o
// yaml` shows why a manifest failed.
package deploy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/component"
)

const (
	// FieldManager owns the fields berth applies.
	FieldManager = "berth-deploy"
	// StateLabel marks the state ConfigMaps; its value is the state's name.
	StateLabel     = "berth.io/manifest"
	stateNamespace = metav1.NamespaceSystem
	// resync re-applies unchanged files now and then, so an object deleted
	// by hand comes back (as k3s does).
	resync = 5 * time.Minute
)

// Controller is the component.
type Controller struct {
	Dir        string
	Kubeconfig string

	cs      kubernetes.Interface
	dyn     dynamic.Interface
	mapper  *restmapper.DeferredDiscoveryRESTMapper
	runner  *component.Runner
	mu      sync.Mutex
	applied map[string]time.Time // file → last full apply
}

func (c *Controller) Name() string { return "deploy" }

func (c *Controller) Prepare(context.Context) error {
	return os.MkdirAll(c.Dir, 0o700)
}

func (c *Controller) Start(ctx context.Context) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	c.cs, c.dyn = cs, dyn
	c.mapper = restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))
	c.applied = map[string]time.Time{}
	c.runner = component.NewRunner(c.Name(), c.run)
	return c.runner.Start(ctx)
}

// Ready returns at once: add-ons come up while the cluster is in use.
func (c *Controller) Ready(context.Context) error { return nil }

func (c *Controller) Stop(ctx context.Context) error {
	if c.runner == nil {
		return nil
	}
	return c.runner.Stop(ctx)
}

// run syncs at start, on every change in the directory tree (debounced),
// and every 15 s (a missed event, a CRD that appeared).
func (c *Controller) run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		klog.Warningf("deploy: watch %s: %v (polling only)", c.Dir, err)
	}
	if w != nil {
		defer w.Close()
	}
	watched := map[string]bool{}
	addWatches := func() {
		if w == nil {
			return
		}
		_ = filepath.WalkDir(c.Dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() && !watched[p] {
				if w.Add(p) == nil {
					watched[p] = true
				}
			}
			return nil
		})
	}
	var events <-chan fsnotify.Event
	if w != nil {
		events = w.Events
	}
	tick := time.NewTicker(15 * time.Second)
	defer tick.Stop()
	for {
		addWatches()
		c.Sync(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-events:
			// Let an editor finish writing, and take the burst at once.
			time.Sleep(300 * time.Millisecond)
			for len(events) > 0 {
				<-events
			}
		}
	}
}

// state is what berth remembers of one manifest file.
type state struct {
	Source   string   `json:"source"`
	Checksum string   `json:"checksum"`
	Objects  []objRef `json:"objects"`
	Error    string   `json:"error,omitempty"`
}

type objRef struct {
	Group     string `json:"group"`
	Version   string `json:"version"`
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
}

func (o objRef) String() string {
	s := o.Kind + "/" + o.Name
	if o.Namespace != "" {
		s = o.Namespace + "/" + s
	}
	return s
}

// Sync applies changed files and prunes what was removed. Errors are
// recorded per file; one bad file never stops the others.
func (c *Controller) Sync(ctx context.Context) {
	files, err := c.files()
	if err != nil {
		klog.Errorf("deploy: %v", err)
		return
	}
	states, err := c.loadStates(ctx)
	if err != nil {
		klog.V(2).Infof("deploy: read states: %v", err)
		return // the apiserver is not answering: try later
	}
	seen := map[string]bool{}
	for _, f := range files {
		name := stateName(c.Dir, f)
		seen[name] = true
		if _, err := os.Stat(f + ".skip"); err == nil {
			continue // not managed: neither applied nor pruned
		}
		c.syncFile(ctx, f, name, states[name])
	}
	for name, st := range states {
		if seen[name] {
			continue
		}
		klog.Infof("deploy: %s was removed; deleting its %d objects", st.Source, len(st.Objects))
		if err := c.deleteObjects(ctx, st.Objects); err != nil {
			klog.Errorf("deploy: prune %s: %v", st.Source, err)
			continue
		}
		if err := c.cs.CoreV1().ConfigMaps(stateNamespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			klog.Errorf("deploy: forget %s: %v", st.Source, err)
		}
	}
}

// files lists the manifests: .yaml, .yml, .json, hidden files and
// directories excluded.
func (c *Controller) files() ([]string, error) {
	var out []string
	err := filepath.WalkDir(c.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), ".") && p != c.Dir {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		switch strings.ToLower(filepath.Ext(p)) {
		case ".yaml", ".yml", ".json":
		default:
			return nil
		}
		out = append(out, p)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read manifests dir: %w", err)
	}
	sort.Strings(out)
	return out, nil
}

// stateName is the ConfigMap name for a file: readable, and unique through
// a short hash of the relative path.
func stateName(dir, file string) string {
	rel, _ := filepath.Rel(dir, file)
	sum := sha256.Sum256([]byte(rel))
	base := strings.ToLower(strings.TrimSuffix(filepath.Base(rel), filepath.Ext(rel)))
	clean := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, base)
	if len(clean) > 40 {
		clean = clean[:40]
	}
	return "manifest-" + strings.Trim(clean, "-") + "-" + hex.EncodeToString(sum[:4])
}

func (c *Controller) syncFile(ctx context.Context, file, name string, old *state) {
	data, err := os.ReadFile(file)
	if err != nil {
		klog.Errorf("deploy: %v", err)
		return
	}
	sum := sha256.Sum256(data)
	checksum := hex.EncodeToString(sum[:])
	c.mu.Lock()
	last := c.applied[file]
	c.mu.Unlock()
	if old != nil && old.Checksum == checksum && old.Error == "" && time.Since(last) < resync {
		return
	}
	rel, _ := filepath.Rel(c.Dir, file)
	st := &state{Source: rel, Checksum: checksum}
	if old != nil {
		st.Objects = old.Objects // kept if this apply fails: nothing is pruned on error
	}
	objs, err := decode(data)
	if err == nil {
		var refs []objRef
		refs, err = c.applyAll(ctx, objs)
		if err == nil {
			if old != nil {
				stale := without(old.Objects, refs)
				if err = c.deleteObjects(ctx, stale); err == nil && len(stale) > 0 {
					klog.Infof("deploy: %s: pruned %d objects it no longer holds", rel, len(stale))
				}
			}
			st.Objects = refs
		} else {
			// Keep what was applied before and what applied now.
			st.Objects = union(st.Objects, refs)
		}
	}
	if err != nil {
		st.Error = err.Error()
		// Failed files are retried at every sync; say it again only when
		// the reason changed.
		if old == nil || old.Error != st.Error {
			klog.Errorf("deploy: %s: %v", rel, err)
		} else {
			klog.V(2).Infof("deploy: %s still fails: %v", rel, err)
		}
	} else {
		klog.Infof("deploy: applied %s (%d objects)", rel, len(st.Objects))
		c.mu.Lock()
		c.applied[file] = time.Now()
		c.mu.Unlock()
	}
	if err := c.saveState(ctx, name, st); err != nil {
		klog.Errorf("deploy: record state of %s: %v", rel, err)
	}
}

// decode reads a YAML stream (or JSON) into objects; List kinds are
// flattened.
func decode(data []byte) ([]*unstructured.Unstructured, error) {
	var out []*unstructured.Unstructured
	r := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for i := 1; ; i++ {
		var raw map[string]any
		if err := r.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if len(raw) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: raw}
		if u.IsList() {
			list, err := u.ToList()
			if err != nil {
				return nil, fmt.Errorf("document %d: %w", i, err)
			}
			for j := range list.Items {
				out = append(out, &list.Items[j])
			}
			continue
		}
		if u.GetKind() == "" || u.GetAPIVersion() == "" || u.GetName() == "" {
			return nil, fmt.Errorf("document %d: apiVersion, kind and metadata.name are required", i)
		}
		out = append(out, u)
	}
}

// applyAll applies objects in order (namespaces and CRDs first); it
// returns the refs it applied and the errors joined.
func (c *Controller) applyAll(ctx context.Context, objs []*unstructured.Unstructured) ([]objRef, error) {
	sort.SliceStable(objs, func(i, j int) bool { return rank(objs[i]) < rank(objs[j]) })
	var refs []objRef
	var errs []error
	for _, u := range objs {
		ref, err := c.apply(ctx, u)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", u.GetKind(), u.GetName(), err))
			continue
		}
		refs = append(refs, ref)
	}
	return refs, errors.Join(errs...)
}

func rank(u *unstructured.Unstructured) int {
	switch u.GetKind() {
	case "Namespace":
		return 0
	case "CustomResourceDefinition":
		return 1
	}
	return 2
}

func (c *Controller) mapping(gvk schema.GroupVersionKind) (*meta.RESTMapping, error) {
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		c.mapper.Reset() // a CRD may just have been created
		m, err = c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		return nil, fmt.Errorf("unknown kind %s: %w", gvk, err)
	}
	return m, nil
}

func (c *Controller) apply(ctx context.Context, u *unstructured.Unstructured) (objRef, error) {
	gvk := u.GroupVersionKind()
	m, err := c.mapping(gvk)
	if err != nil {
		return objRef{}, err
	}
	ref := objRef{Group: gvk.Group, Version: gvk.Version, Kind: gvk.Kind, Name: u.GetName()}
	var ri dynamic.ResourceInterface = c.dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		if u.GetNamespace() == "" {
			u.SetNamespace(metav1.NamespaceDefault)
		}
		ref.Namespace = u.GetNamespace()
		ri = c.dyn.Resource(m.Resource).Namespace(ref.Namespace)
	}
	_, err = ri.Apply(ctx, u.GetName(), u, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
	return ref, err
}

func (c *Controller) deleteObjects(ctx context.Context, refs []objRef) error {
	var errs []error
	policy := metav1.DeletePropagationBackground
	for _, r := range refs {
		m, err := c.mapping(schema.GroupVersionKind{Group: r.Group, Version: r.Version, Kind: r.Kind})
		if err != nil {
			continue // the kind is gone (its CRD was removed): so is the object
		}
		var ri dynamic.ResourceInterface = c.dyn.Resource(m.Resource)
		if r.Namespace != "" {
			ri = c.dyn.Resource(m.Resource).Namespace(r.Namespace)
		}
		if err := ri.Delete(ctx, r.Name, metav1.DeleteOptions{PropagationPolicy: &policy}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete %s: %w", r, err))
		}
	}
	return errors.Join(errs...)
}

func without(old, keep []objRef) []objRef {
	var out []objRef
	for _, o := range old {
		if !slices.Contains(keep, o) {
			out = append(out, o)
		}
	}
	return out
}

func union(a, b []objRef) []objRef {
	out := slices.Clone(a)
	for _, o := range b {
		if !slices.Contains(out, o) {
			out = append(out, o)
		}
	}
	return out
}

func (c *Controller) loadStates(ctx context.Context) (map[string]*state, error) {
	list, err := c.cs.CoreV1().ConfigMaps(stateNamespace).List(ctx, metav1.ListOptions{LabelSelector: StateLabel})
	if err != nil {
		return nil, err
	}
	out := map[string]*state{}
	for _, cm := range list.Items {
		st := &state{}
		if err := json.Unmarshal([]byte(cm.Data["objects"]), &st.Objects); err != nil {
			klog.Warningf("deploy: state %s: %v", cm.Name, err)
		}
		st.Source, st.Checksum, st.Error = cm.Data["source"], cm.Data["checksum"], cm.Data["error"]
		out[cm.Name] = st
	}
	return out, nil
}

func (c *Controller) saveState(ctx context.Context, name string, st *state) error {
	objs, _ := json.Marshal(st.Objects)
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: stateNamespace, Labels: map[string]string{StateLabel: "true"}},
		Data: map[string]string{
			"source":   st.Source,
			"checksum": st.Checksum,
			"objects":  string(objs),
			"error":    st.Error,
		},
	}
	cms := c.cs.CoreV1().ConfigMaps(stateNamespace)
	_, err := cms.Update(ctx, cm, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, cm, metav1.CreateOptions{})
	}
	return err
}
