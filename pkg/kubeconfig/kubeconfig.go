// Package kubeconfig writes the kubeconfig files berth's components and
// users authenticate with.
package kubeconfig

import (
	"fmt"
	"os"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/berth-io/berth/pkg/atomicfile"
)

// Spec describes one kubeconfig with a client certificate.
type Spec struct {
	Server            string // https://127.0.0.1:6443
	CAFile            string
	CertFile, KeyFile string
	// Embed puts the certificate data in the file (for users, who may copy
	// it elsewhere) instead of referencing the files (for components).
	Embed bool
}

// Write writes spec to path atomically with mode perm.
func Write(path string, spec Spec, perm os.FileMode) error {
	cluster := &clientcmdapi.Cluster{Server: spec.Server}
	user := &clientcmdapi.AuthInfo{}
	if spec.Embed {
		var err error
		if cluster.CertificateAuthorityData, err = os.ReadFile(spec.CAFile); err != nil {
			return err
		}
		if user.ClientCertificateData, err = os.ReadFile(spec.CertFile); err != nil {
			return err
		}
		if user.ClientKeyData, err = os.ReadFile(spec.KeyFile); err != nil {
			return err
		}
	} else {
		cluster.CertificateAuthority = spec.CAFile
		user.ClientCertificate = spec.CertFile
		user.ClientKey = spec.KeyFile
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["default"] = cluster
	cfg.AuthInfos["default"] = user
	cfg.Contexts["default"] = &clientcmdapi.Context{Cluster: "default", AuthInfo: "default"}
	cfg.CurrentContext = "default"
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return fmt.Errorf("encode kubeconfig: %w", err)
	}
	if err := atomicfile.Write(path, data, perm); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}
