#!/bin/bash
# One berth node per network namespace for the agent benchmark, as
# ../shared/reference/multinode.md describes: a veth to the bbbr0 bridge
# (10.97.0.0/24), a private mount namespace with per-node /run/berth,
# /run/containerd, /var/lib/kubelet, /var/log/pods, /var/log/containers,
# /var/lib/cni and /etc/berth, and a kubelet cgroup root /bb-NAME.
# Usage (BENCH_NETNS_DIR set):
#   netns-node.sh bridge | bridge-down
#   netns-node.sh up NAME IDX          # netns bb-NAME, address 10.97.0.IDX
#   netns-node.sh start NAME CMD...    # runs CMD in the node; pid in DIR/NAME/pid
#   netns-node.sh stop NAME            # SIGTERM berth, wait
#   netns-node.sh down NAME            # kill everything in its mount ns, delete netns and cgroups
set -e
cmd=$1; name=$2
ns=bb-$name; base=${BENCH_NETNS_DIR:?}/$name
case $cmd in
bridge-down)
  iptables -D FORWARD -i bbbr0 -j ACCEPT 2>/dev/null || true
  iptables -D FORWARD -o bbbr0 -j ACCEPT 2>/dev/null || true
  ip link del bbbr0 2>/dev/null || true
  ;;
stop)
  pid=$(cat $base/pid 2>/dev/null || true)
  [ -n "$pid" ] || exit 0
  kill $pid 2>/dev/null || true
  for _ in $(seq 100); do kill -0 $pid 2>/dev/null || exit 0; sleep 0.1; done
  kill -9 $pid 2>/dev/null || true
  ;;
bridge)
  ip link show bbbr0 >/dev/null 2>&1 || { ip link add bbbr0 type bridge; ip addr add 10.97.0.1/24 dev bbbr0; ip link set bbbr0 up; }
  iptables -C FORWARD -i bbbr0 -j ACCEPT 2>/dev/null || iptables -I FORWARD -i bbbr0 -j ACCEPT
  iptables -C FORWARD -o bbbr0 -j ACCEPT 2>/dev/null || iptables -I FORWARD -o bbbr0 -j ACCEPT
  ;;
up)
  idx=$3
  ip netns add $ns
  ip link add bb-$name type veth peer name eth0 netns $ns
  ip link set bb-$name master bbbr0 up
  ip -n $ns addr add 10.97.0.$idx/24 dev eth0
  ip -n $ns link set eth0 up; ip -n $ns link set lo up
  ip -n $ns route add default via 10.97.0.1
  for c in /sys/fs/cgroup/*/; do
    [ -d "$c" ] || continue
    mkdir -p $c/bb-$name
    [ -f $c/cpuset.cpus ] && cat $c/cpuset.cpus > $c/bb-$name/cpuset.cpus && cat $c/cpuset.mems > $c/bb-$name/cpuset.mems
  done
  mkdir -p $base/{run-berth,run-containerd,var-lib-kubelet,var-log-pods,var-log-containers,var-lib-cni,etc-berth,run-netns,data}
  ;;
start)
  shift 2
  nsenter --net=/run/netns/$ns -- unshare -m --propagation private -- /bin/sh -c "
    mount --make-rshared /
    mkdir -p /run/berth /var/lib/kubelet /var/log/pods /var/log/containers
    mount --bind $base/run-berth /run/berth
    mkdir -p /run/containerd; mount --bind $base/run-containerd /run/containerd
    mount --bind $base/var-lib-kubelet /var/lib/kubelet
    mount --bind $base/var-log-pods /var/log/pods
    mount --bind $base/var-log-containers /var/log/containers
    mkdir -p /var/lib/cni; mount --bind $base/var-lib-cni /var/lib/cni
    mkdir -p /etc/berth; mount --bind $base/etc-berth /etc/berth
    mount --bind $base/run-netns /run/netns
    exec \"\$0\" \"\$@\"" "$@" > $base/log 2>&1 &
  echo $! > $base/pid
  # Wait for the exec into berth, so the pid's mount ns is the node's.
  for _ in $(seq 50); do [ "$(readlink /proc/$!/ns/mnt)" != "$(readlink /proc/self/ns/mnt)" ] && break; sleep 0.05; done
  ;;
down)
  pid=$(cat $base/pid 2>/dev/null || true)
  mnt=""
  [ -n "$pid" ] && mnt=$(readlink /proc/$pid/ns/mnt 2>/dev/null || true)
  [ -n "$pid" ] && kill $pid 2>/dev/null || true
  sleep 2
  # Pods and shims outlive berth by design: kill everything in the node's
  # own mount namespace (never an empty or the host's id).
  self=$(readlink /proc/self/ns/mnt)
  if [ -n "$mnt" ] && [ "$mnt" != "$self" ]; then
    for p in /proc/[0-9]*; do [ "$(readlink $p/ns/mnt 2>/dev/null)" = "$mnt" ] && kill -9 ${p#/proc/} 2>/dev/null; done
  fi
  for p in $(ip netns pids $ns 2>/dev/null); do kill -9 $p; done
  # Pod processes have their own mount and network namespaces: find them by
  # the node's kubelet cgroup root.
  for f in /sys/fs/cgroup/*/bb-$name; do
    [ -d "$f" ] && find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null
  done
  sleep 1
  ip netns del $ns 2>/dev/null || true
  ip link del bb-$name 2>/dev/null || true
  for c in /sys/fs/cgroup/*/bb-$name; do [ -d $c ] && find $c -depth -type d -exec rmdir {} \; 2>/dev/null; done
  true
  ;;
esac
