package control

import (
	"context"
	"encoding/json"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// NodeRoleLabeler labels the server's own node as control plane once it has
// registered. The kubelet may not set node-role.kubernetes.io labels on
// itself (NodeRestriction), so the server does it.
type NodeRoleLabeler struct {
	Kubeconfig string
	NodeName   string

	cancel context.CancelFunc
}

func (n *NodeRoleLabeler) Name() string                  { return "node-role-labeler" }
func (n *NodeRoleLabeler) Prepare(context.Context) error { return nil }
func (n *NodeRoleLabeler) Ready(context.Context) error   { return nil }

func (n *NodeRoleLabeler) Start(context.Context) error {
	cs, err := Clientset(n.Kubeconfig)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]string{
		"node-role.kubernetes.io/control-plane": "true",
		"node-role.kubernetes.io/master":        "true",
	}}})
	go func() {
		for {
			_, err := cs.CoreV1().Nodes().Patch(ctx, n.NodeName, types.MergePatchType, patch, metav1.PatchOptions{})
			if err == nil {
				klog.V(1).Infof("labelled node %s as control plane", n.NodeName)
				return
			}
			if !apierrors.IsNotFound(err) {
				klog.V(2).Infof("label node %s: %v", n.NodeName, err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}()
	return nil
}

func (n *NodeRoleLabeler) Stop(context.Context) error {
	if n.cancel != nil {
		n.cancel()
	}
	return nil
}
