# berth in a container, like rancher/k3s: FROM scratch, berth and its helper
# binaries in /bin, and the node tools (iptables, ipset, conntrack, mount,
# modprobe, CA bundle, busybox) from Debian 12 packages. Built with no
# registry and no Docker: `make image` assembles the context
# (scripts/release/image-rootfs.sh → build/image/<arch>/rootfs) and builds
# this file with buildah; any builder works on that context.
#
#   docker run -d --name berth-server --privileged --tmpfs /run --tmpfs /var/run \
#     -v berth-server:/var/lib/berth -p 6443:6443 berth.local/berth:<version> server
#   docker run -d --privileged --tmpfs /run --tmpfs /var/run -v berth-agent:/var/lib/berth \
#     -e BERTH_URL=https://SERVER:6443 -e BERTH_TOKEN=K10… berth.local/berth:<version> agent
#
# Privileged: berth runs containerd, runc, the kubelet, kube-proxy and
# flannel, which need the host's cgroups, netfilter and network devices.
# State lives under the volumes; the host's /lib/modules may be mounted
# read-only for modprobe.
FROM scratch
COPY rootfs/ /
ENV PATH=/bin:/usr/sbin:/usr/bin:/sbin
VOLUME /var/lib/berth /var/lib/kubelet /var/lib/cni /var/log
EXPOSE 6443
ENTRYPOINT ["/bin/berth"]
CMD ["agent"]
