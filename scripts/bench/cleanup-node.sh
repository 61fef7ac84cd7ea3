#!/usr/bin/env bash
# Removes what a benchmark node leaves on the host once berth has stopped:
# pods' shims started from the benchmark's data dirs, flannel and CNI links,
# kube-proxy/flannel iptables chains, the kubelet's mounts. Run as root.
set -uo pipefail
prefix=${1:-/tmp/berth-bench-}
# Agent-benchmark nodes (network namespaces bb-*, see netns-node.sh).
for ns in /run/netns/bb-*; do
  [ -e "$ns" ] || continue
  name=${ns#/run/netns/bb-}
  dir=$(ls -d "${prefix}"*/agent 2>/dev/null | head -1)
  BENCH_NETNS_DIR=${dir:-/nonexistent} "$(dirname "$0")/netns-node.sh" down "$name"
done
BENCH_NETNS_DIR=/nonexistent "$(dirname "$0")/netns-node.sh" bridge-down x
# Shims and containerd started from a benchmark data dir (matched by path).
for pid in $(pgrep -f "^${prefix}"); do kill -9 "$pid" 2>/dev/null; done
for link in cni0 flannel.1; do ip link del "$link" 2>/dev/null; done
for bin in iptables ip6tables; do
  command -v "$bin" >/dev/null || continue
  for t in nat filter mangle raw; do
    "$bin-save" -t "$t" 2>/dev/null | grep -E '^-A .* -j (KUBE-|FLANNEL-|CNI-)' | sed 's/^-A/-D/' |
      while read -r rule; do eval "$bin -t $t $rule" 2>/dev/null; done
    for c in $("$bin-save" -t "$t" 2>/dev/null | awk '/^:(KUBE-|FLANNEL-|CNI-)/{sub(":","",$1); print $1}'); do
      "$bin" -t "$t" -F "$c" 2>/dev/null
    done
    for c in $("$bin-save" -t "$t" 2>/dev/null | awk '/^:(KUBE-|FLANNEL-|CNI-)/{sub(":","",$1); print $1}'); do
      "$bin" -t "$t" -X "$c" 2>/dev/null
    done
  done
done
awk '{print $5}' /proc/self/mountinfo | grep -E "^(/run/berth|/var/lib/kubelet|${prefix})" | sort -r |
  while read -r mp; do umount "$mp" 2>/dev/null || umount -l "$mp"; done
exit 0
