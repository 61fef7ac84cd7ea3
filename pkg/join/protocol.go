// Package join is the agent side of joining a berth server, and the wire
// protocol both sides share. The agent pins the cluster CA from its token,
// fetches the cluster configuration, and has the server sign certificate
// requests for keys it generated itself: private keys never cross the
// network. The server side lives in pkg/server (it needs the CAs).
package join

// PathPrefix is the versioned prefix of berth's join endpoints on the
// supervisor port.
const PathPrefix = "/v1-berth"

// Endpoints under PathPrefix.
const (
	ConfigPath  = PathPrefix + "/config"
	CertsPath   = PathPrefix + "/certs/" // + a CertKind
	ConnectPath = PathPrefix + "/connect"
	// ServerBootstrapPath serves the cluster's shared CAs and keys
	// (pkg/bootstrap) to a joining server; only the server token opens it.
	ServerBootstrapPath = PathPrefix + "/server-bootstrap"
	// EtcdMembersPath lists the embedded etcd's members (JSON) for a
	// joining server; only the server token opens it.
	EtcdMembersPath = PathPrefix + "/etcd-members"
)

// Headers an agent sends with its certificate requests.
const (
	NodeNameHeader     = "Berth-Node-Name"
	NodePasswordHeader = "Berth-Node-Password"
	NodeIPHeader       = "Berth-Node-Ip" // comma-separated
)

// CertKind names a certificate the server signs for a node.
type CertKind string

const (
	// KubeletClient: CN system:node:<node>, O system:nodes, client CA.
	KubeletClient CertKind = "client-kubelet"
	// KubeletServing: CN <node>, SANs node name, node IPs, localhost; server CA.
	KubeletServing CertKind = "serving-kubelet"
	// KubeProxyClient: CN system:kube-proxy, client CA.
	KubeProxyClient CertKind = "client-kube-proxy"
	// ControllerClient: berth's node controller identity (flannel), client CA.
	ControllerClient CertKind = "client-berth-controller"
)

// CertKinds lists every kind a node requests, in request order.
var CertKinds = []CertKind{KubeletClient, KubeletServing, KubeProxyClient, ControllerClient}

// ClusterConfig is what an agent needs to know about the cluster.
type ClusterConfig struct {
	ClusterCIDR      string `json:"clusterCIDR"`
	ServiceCIDR      string `json:"serviceCIDR"`
	ClusterDNS       string `json:"clusterDNS"`
	ClusterDomain    string `json:"clusterDomain"`
	FlannelBackend   string `json:"flannelBackend"`
	DisableKubeProxy bool   `json:"disableKubeProxy"`
	// ServerCA signs the supervisor's and kubelets' serving certificates;
	// ClientCA verifies client certificates (kubelets check the apiserver
	// with it). Both PEM.
	ServerCA string `json:"serverCA"`
	ClientCA string `json:"clientCA"`
	// Servers are the supervisor addresses (host:port) agents may use.
	Servers []string `json:"servers"`
}
