// Package nodehosts keeps the NodeHosts key of CoreDNS's ConfigMap
// (kube-system/coredns) equal to the cluster's nodes, one line
// "<InternalIP> <node-name>" per address, as k3s's CoreDNS NodeHosts
// controller does, so pods resolve node names. CoreDNS's hosts plugin reads
// the key as the file /etc/coredns/NodeHosts and reloads it every 15 s.
//
// The packaged manifest does not hold the key: the auto-deploy controller
// (field manager berth-deploy, forced) would otherwise reset it at every
// re-apply. This controller writes only that key, with a merge patch under
// its own field manager, and never creates the ConfigMap: when CoreDNS is
// disabled it waits, and fills the key of a ConfigMap a user applies.
package nodehosts

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/component"
)

const (
	// Namespace and ConfigMap name CoreDNS's configuration.
	Namespace = metav1.NamespaceSystem
	ConfigMap = "coredns"
	// Key is the ConfigMap key CoreDNS mounts as /etc/coredns/NodeHosts.
	Key = "NodeHosts"
	// FieldManager owns Key, and nothing else, in the ConfigMap.
	FieldManager = "berth-nodehosts"
)

// Controller is the server component.
type Controller struct {
	// Client is the server's admin clientset.
	Client func() (kubernetes.Interface, error)

	runner *component.Runner
}

func (c *Controller) Name() string                  { return "nodehosts" }
func (c *Controller) Prepare(context.Context) error { return nil }

func (c *Controller) Start(ctx context.Context) error {
	cs, err := c.Client()
	if err != nil {
		return fmt.Errorf("nodehosts: client: %w", err)
	}
	c.runner = component.NewRunner(c.Name(), func(ctx context.Context) error {
		return run(ctx, cs)
	})
	return c.runner.Start(ctx)
}

// Ready returns at once: node entries follow the nodes, nothing waits for them.
func (c *Controller) Ready(context.Context) error { return nil }

// Failed reports the loop ending on its own (it only ends when stopped).
func (c *Controller) Failed() <-chan error {
	if c.runner == nil {
		return nil // not started: nothing can fail
	}
	return c.runner.Failed()
}

func (c *Controller) Stop(ctx context.Context) error {
	if c.runner == nil {
		return nil
	}
	return c.runner.Stop(ctx)
}

// syncer holds one run's caches and what it has already said.
type syncer struct {
	cs    kubernetes.Interface
	nodes listersv1.NodeLister
	cms   listersv1.ConfigMapLister
	// waiting is set once the missing ConfigMap has been logged, so a
	// cluster without CoreDNS gets one line, not one per node event.
	waiting bool
	// overwritten counts, per other field manager, how often this
	// controller replaced a NodeHosts that manager had set.
	overwritten map[string]int
}

func run(ctx context.Context, cs kubernetes.Interface) error {
	// Nodes are cached stripped to their names and addresses: their status
	// (image lists, conditions) is most of their size and is not needed.
	nf := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithTransform(stripNode))
	// Only the one ConfigMap is watched.
	cf := informers.NewSharedInformerFactoryWithOptions(cs, 0,
		informers.WithNamespace(Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + ConfigMap }))
	nodeInf := nf.Core().V1().Nodes()
	cmInf := cf.Core().V1().ConfigMaps()
	s := &syncer{cs: cs, nodes: nodeInf.Lister(), cms: cmInf.Lister(), overwritten: map[string]int{}}

	// One key: every event asks for the whole text to be recomputed, and
	// failures are retried with back-off.
	q := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Second, time.Minute),
		workqueue.TypedRateLimitingQueueConfig[string]{})
	const key = "sync"
	enqueue := func(any) { q.Add(key) }
	if _, err := nodeInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		DeleteFunc: enqueue,
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*corev1.Node)
			n, ok2 := newObj.(*corev1.Node)
			if !ok1 || !ok2 || !slices.Equal(o.Status.Addresses, n.Status.Addresses) {
				q.Add(key)
			}
		},
	}); err != nil {
		return fmt.Errorf("nodehosts: node handler: %w", err)
	}
	if _, err := cmInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, _ any) { q.Add(key) },
		DeleteFunc: enqueue,
	}); err != nil {
		return fmt.Errorf("nodehosts: configmap handler: %w", err)
	}

	stop := ctx.Done()
	nf.Start(stop)
	cf.Start(stop)
	defer nf.Shutdown()
	defer cf.Shutdown()
	go func() {
		<-stop
		q.ShutDown()
	}()
	if !cache.WaitForCacheSync(stop, nodeInf.Informer().HasSynced, cmInf.Informer().HasSynced) {
		return nil // stopped before the caches filled
	}
	q.Add(key)
	for {
		k, shutdown := q.Get()
		if shutdown {
			return nil
		}
		if err := s.sync(ctx); err != nil {
			if ctx.Err() != nil {
				q.Done(k)
				return nil // a write cut short by the stop is not an error
			}
			klog.Errorf("nodehosts: %v (retrying)", err)
			q.AddRateLimited(k)
		} else {
			q.Forget(k)
		}
		q.Done(k)
	}
}

// sync writes the nodes' text into the ConfigMap when it differs.
func (s *syncer) sync(ctx context.Context) error {
	cm, err := s.cms.ConfigMaps(Namespace).Get(ConfigMap)
	if apierrors.IsNotFound(err) {
		if !s.waiting {
			klog.Infof("nodehosts: waiting for ConfigMap %s/%s (the coredns add-on applies it; absent while it is disabled)", Namespace, ConfigMap)
			s.waiting = true
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s/%s from the cache: %w", Namespace, ConfigMap, err)
	}
	s.waiting = false
	nodes, err := s.nodes.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("list nodes from the cache: %w", err)
	}
	text := Render(nodes)
	if cur, ok := cm.Data[Key]; ok && cur == text {
		return nil
	}
	s.noteOtherOwners(cm)
	patch, err := json.Marshal(map[string]any{"data": map[string]string{Key: text}})
	if err != nil {
		return fmt.Errorf("encode patch: %w", err)
	}
	// A merge patch never creates the ConfigMap (an apply would), so a
	// ConfigMap deleted since the cache saw it stays deleted.
	_, err = s.cs.CoreV1().ConfigMaps(Namespace).Patch(ctx, ConfigMap, types.MergePatchType, patch,
		metav1.PatchOptions{FieldManager: FieldManager})
	if apierrors.IsNotFound(err) {
		return nil // its delete event is on its way; a new one brings us back
	}
	if err != nil {
		return fmt.Errorf("write %s of %s/%s: %w", Key, Namespace, ConfigMap, err)
	}
	klog.Infof("nodehosts: %s/%s %s now lists %d addresses of %d nodes", Namespace, ConfigMap, Key, strings.Count(text, "\n"), len(nodes))
	return nil
}

// noteOtherOwners warns, once per manager, when another field manager keeps
// setting NodeHosts (a manifest of the user's that still holds the key is
// re-applied every 5 minutes): the two would take turns. The first
// overwrite is silent, because a manifest written by an older berth did own
// the key once.
func (s *syncer) noteOtherOwners(cm *corev1.ConfigMap) {
	for _, mf := range cm.ManagedFields {
		if mf.Manager == FieldManager || !ownsKey(mf.FieldsV1) {
			continue
		}
		s.overwritten[mf.Manager]++
		if s.overwritten[mf.Manager] == 2 {
			klog.Warningf("nodehosts: %q keeps setting %s in %s/%s, and berth keeps resetting it to the nodes' addresses; "+
				"remove %s from that manifest (custom host entries belong in the coredns-custom ConfigMap)",
				mf.Manager, Key, Namespace, ConfigMap, Key)
		}
	}
}

// ownsKey reports whether a managedFields entry holds data.NodeHosts.
func ownsKey(f *metav1.FieldsV1) bool {
	if f == nil {
		return false
	}
	var top map[string]json.RawMessage
	if json.Unmarshal(f.Raw, &top) != nil {
		return false
	}
	var data map[string]json.RawMessage
	if json.Unmarshal(top["f:data"], &data) != nil {
		return false
	}
	_, ok := data["f:"+Key]
	return ok
}

// Render returns the NodeHosts text for nodes: "<ip> <name>\n" for every
// InternalIP, sorted by node name, then address (IPv4 first), so the text
// only changes when the nodes do. Unparsable addresses are skipped.
func Render(nodes []*corev1.Node) string {
	type entry struct {
		name string
		addr netip.Addr
	}
	var entries []entry
	for _, n := range nodes {
		for _, a := range n.Status.Addresses {
			if a.Type != corev1.NodeInternalIP {
				continue
			}
			addr, err := netip.ParseAddr(a.Address)
			if err != nil {
				klog.V(2).Infof("nodehosts: node %s: InternalIP %q: %v", n.Name, a.Address, err)
				continue
			}
			entries = append(entries, entry{n.Name, addr.Unmap()})
		}
	}
	slices.SortFunc(entries, func(a, b entry) int {
		return cmp.Or(strings.Compare(a.name, b.name), a.addr.Compare(b.addr))
	})
	entries = slices.Compact(entries)
	var b strings.Builder
	for _, e := range entries {
		b.WriteString(e.addr.String())
		b.WriteByte(' ')
		b.WriteString(e.name)
		b.WriteByte('\n')
	}
	return b.String()
}

// stripNode keeps what Render and the update filter read.
func stripNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil // not a Node: nothing to strip
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion},
		Status:     corev1.NodeStatus{Addresses: n.Status.Addresses},
	}, nil
}
