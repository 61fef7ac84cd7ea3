package control

import (
	"context"
	"fmt"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ControllerUser is the identity of the controllers a berth node runs
// (flannel): a client certificate from the client CA with this CN. Flannel
// lists and watches every Node (their annotations are its leases), which the
// Node authorizer does not allow a kubelet's identity.
const ControllerUser = "system:berth-controller"

// RBAC creates or updates berth's own RBAC objects once the apiserver serves.
type RBAC struct {
	Kubeconfig string
}

func (r *RBAC) Name() string                  { return "rbac" }
func (r *RBAC) Prepare(context.Context) error { return nil }
func (r *RBAC) Ready(context.Context) error   { return nil }
func (r *RBAC) Stop(context.Context) error    { return nil }

func (r *RBAC) Start(ctx context.Context) error {
	cs, err := Clientset(r.Kubeconfig)
	if err != nil {
		return err
	}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: ControllerUser},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
			// Agents learn every server from the kubernetes Service's
			// endpoints (pkg/agent ServerWatcher).
			{APIGroups: []string{""}, Resources: []string{"endpoints"}, ResourceNames: []string{"kubernetes"}, Verbs: []string{"get"}},
		},
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: ControllerUser},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: ControllerUser},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: ControllerUser}},
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := apply(ctx, func() error {
		_, err := cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{})
		return err
	}, func() error {
		_, err := cs.RbacV1().ClusterRoles().Update(ctx, role, metav1.UpdateOptions{})
		return err
	}); err != nil && !apierrors.IsConflict(err) {
		return fmt.Errorf("cluster role %s: %w", ControllerUser, err)
	}
	if err := apply(ctx, func() error {
		_, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{})
		return err
	}, func() error {
		_, err := cs.RbacV1().ClusterRoleBindings().Update(ctx, binding, metav1.UpdateOptions{})
		return err
	}); err != nil && !apierrors.IsConflict(err) {
		return fmt.Errorf("cluster role binding %s: %w", ControllerUser, err)
	}
	return nil
}
