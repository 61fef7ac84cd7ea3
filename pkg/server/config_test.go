package server

import (
	"strings"
	"testing"
)

func valid() *Config {
	return &Config{
		DataDir: "/tmp/x", ClusterCIDR: "10.42.0.0/16", ServiceCIDR: "10.43.0.0/16",
		ClusterDNS: "10.43.0.10", ClusterDomain: "cluster.local", ServiceNodePortRange: "30000-32767",
		HTTPSListenPort: 6443, APIServerPort: 6444, BindAddress: "0.0.0.0", AdvertiseAddress: "192.0.2.10",
		WriteKubeconfigMode: "0600",
		EtcdClientPort:      2379, EtcdPeerPort: 2380, EtcdSnapshotScheduleCron: "0 */12 * * *", EtcdSnapshotRetention: 5,
	}
}

func TestValidate(t *testing.T) {
	if err := valid().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, tc := range []struct {
		change func(*Config)
		want   string
	}{
		{func(c *Config) { c.ClusterCIDR = "10.42.0.0" }, "--cluster-cidr"},
		{func(c *Config) { c.ServiceCIDR = "nope" }, "--service-cidr"},
		{func(c *Config) { c.ServiceCIDR = "10.42.5.0/24" }, "overlap"},
		{func(c *Config) { c.ClusterDNS = "10.99.0.10" }, "--cluster-dns 10.99.0.10 is outside --service-cidr"},
		{func(c *Config) { c.ServiceNodePortRange = "9-x" }, "--service-node-port-range"},
		{func(c *Config) { c.HTTPSListenPort = 70000 }, "--https-listen-port"},
		{func(c *Config) { c.APIServerPort = 6443 }, "both 6443"},
		{func(c *Config) { c.BindAddress = "localhost" }, "--bind-address"},
		{func(c *Config) { c.AdvertiseAddress = "127.0.0.1" }, "loopback"},
		{func(c *Config) { c.Token, c.TokenFile = "a", "b" }, "mutually exclusive"},
		{func(c *Config) { c.WriteKubeconfigMode = "rw-r--r--" }, "--write-kubeconfig-mode"},
		{func(c *Config) { c.ClusterInit, c.DatastoreEndpoint = true, "postgres://x" }, "mutually exclusive"},
		{func(c *Config) { c.ClusterResetRestorePath = "/x" }, "needs --cluster-reset"},
		{func(c *Config) { c.EtcdPeerPort = 2379 }, "both 2379"},
		{func(c *Config) { c.EtcdSnapshotScheduleCron = "every day" }, "--etcd-snapshot-schedule-cron"},
		{func(c *Config) { c.EtcdSnapshotRetention = 0 }, "--etcd-snapshot-retention"},
		{func(c *Config) { c.Server = "http://srv:6443"; c.Token = "t" }, "--server \"http://srv:6443\" is not an https"},
		{func(c *Config) { c.Server = "https://srv:6443" }, "--server needs --token"},
		{func(c *Config) { c.DatastoreEndpoint = "mongodb://u:secret@db/x" }, `scheme "mongodb"`},
		{func(c *Config) { c.DatastoreEndpoint = "u:secret@db" }, "is not a URL"},
		{func(c *Config) { c.DatastoreCAFile = "/etc/hostname" }, "--datastore-cafile needs --datastore-endpoint"},
		{func(c *Config) { c.DatastoreEndpoint = "https://e:2379"; c.DatastoreCertFile = "/nonexistent" }, "--datastore-certfile"},
		{func(c *Config) { c.DatastoreEndpoint = "https://e:2379"; c.DatastoreKeyFile = "/etc/hostname" }, "go together"},
	} {
		c := valid()
		tc.change(c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want error containing %q, got %v", tc.want, err)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("an error shows the datastore password: %v", err)
		}
	}
}

func TestValidateDerived(t *testing.T) {
	c := valid()
	c.WriteKubeconfigMode = "644"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.kubeconfigMode != 0o644 {
		t.Errorf("mode %o", c.kubeconfigMode)
	}
	ip, _ := c.firstServiceIP()
	if ip.String() != "10.43.0.1" {
		t.Errorf("first service IP %s", ip)
	}
	if c.supervisorAddress() != "0.0.0.0:6443" || c.apiserverAddress() != "127.0.0.1:6444" {
		t.Errorf("addresses %s %s", c.supervisorAddress(), c.apiserverAddress())
	}
}
