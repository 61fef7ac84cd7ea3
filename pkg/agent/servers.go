package agent

import (
	"context"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/loadbalancer"
)

// ServerWatcher keeps the load balancer's server list equal to the
// servers in the `kubernetes` Service's endpoints (every live server
// publishes itself there), plus the server the agent joined through, so
// the agent fails over to any server, including ones added after it
// joined. It polls (ServerPollInterval) with the node's controller
// identity, which may only get that one object.
type ServerWatcher struct {
	Kubeconfig string
	LB         *loadbalancer.LoadBalancer
	// Default is the --server address (host:port), kept last.
	Default string

	cancel context.CancelFunc
	done   chan struct{}
}

// ServerPollInterval is how often the endpoints are read.
const ServerPollInterval = 10 * time.Second

func (w *ServerWatcher) Name() string                  { return "server-watcher" }
func (w *ServerWatcher) Prepare(context.Context) error { return nil }
func (w *ServerWatcher) Ready(context.Context) error   { return nil }

func (w *ServerWatcher) Start(context.Context) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", w.Kubeconfig)
	if err != nil {
		return err
	}
	cfg.Timeout = 10 * time.Second
	// v1 Endpoints is deprecated (the apiserver says so on every read);
	// it is the one object this identity may read, on purpose.
	cfg.WarningHandler = rest.NoWarnings{}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel, w.done = cancel, make(chan struct{})
	go func() {
		defer close(w.done)
		for {
			w.sync(ctx, cs)
			select {
			case <-ctx.Done():
				return
			case <-time.After(ServerPollInterval):
			}
		}
	}()
	return nil
}

func (w *ServerWatcher) sync(ctx context.Context, cs kubernetes.Interface) {
	ep, err := cs.CoreV1().Endpoints(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		if ctx.Err() == nil && !apierrors.IsNotFound(err) {
			klog.V(2).Infof("server list: %v", err)
		}
		return
	}
	var servers []string
	for _, sub := range ep.Subsets {
		for _, p := range sub.Ports {
			for _, a := range sub.Addresses {
				servers = append(servers, net.JoinHostPort(a.IP, strconv.Itoa(int(p.Port))))
			}
		}
	}
	if len(servers) == 0 {
		return // keep what we know rather than nothing
	}
	slices.Sort(servers)
	want := append(slices.DeleteFunc(servers, func(s string) bool { return s == w.Default }), w.Default)
	if cur := w.LB.Servers(); !slices.Equal(cur, want) {
		klog.Infof("load balancer: servers %s", strings.Join(want, ", "))
		w.LB.SetServers(want)
	}
}

func (w *ServerWatcher) Stop(ctx context.Context) error {
	if w.cancel == nil {
		return nil
	}
	w.cancel()
	select {
	case <-w.done:
	case <-ctx.Done():
	}
	return nil
}
