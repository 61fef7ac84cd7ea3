#!/usr/bin/env bash
# The Kubernetes conformance suite against a fresh two-node berth cluster
# (make conformance; issue 8). As root, with no registry and no internet:
#
#  1. a berth server and a berth agent, each in its own network namespace on
#     a bridge (scripts/bench/netns-node.sh, ../shared/reference/multinode.md),
#     both untainted; every node imports berth's air-gap bundle and the
#     conformance images' bundle from <data-dir>/agent/images, as an
#     air-gapped user delivers images;
#  2. a registry in memory on the bridge (hack/testregistry) serving kitten,
#     with registries.yaml making it both nodes' mirror for registry.k8s.io:
#     the ImageVolume test pulls with policy Always;
#  3. ginkgo runs e2e.test twice: the parallel pass ([Conformance] without
#     [Serial]) and the serial pass ([Serial] and [Conformance]);
#  4. JUnit and logs go to $CONFORMANCE_OUT/{parallel,serial,logs}, and
#     $CONFORMANCE_OUT/summary.txt ends with "N passed, M failed, K skipped";
#     the exit status is 0 only if every pass passed.
#
# Everything it starts is stopped at exit, also on failure or ^C: nodes,
# their pods and shims, namespaces, bridge, registry, kernel tunables.
#
# Environment (the Makefile sets the first five):
#   BERTH_BIN, BERTH_AIRGAP, CONFORMANCE_BUNDLE, CONFORMANCE_TOOLS, CONFORMANCE_OUT
#   CONFORMANCE_NODES   ginkgo processes of the parallel pass (4)
#   CONFORMANCE_FOCUS   replaces the focus of both passes (debugging)
#   CONFORMANCE_SKIP    added to the skip of both passes (debugging)
#   CONFORMANCE_PASSES  "parallel serial" (default), or one of them
#   CONFORMANCE_KEEP=1  leave the cluster running at the end (then run
#                       scripts/conformance/run.sh down to remove it)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
netns=$repo/scripts/bench/netns-node.sh
work=${CONFORMANCE_WORK:-/tmp/berth-conformance}
export BENCH_NETNS_DIR=$work
server_ip=10.97.0.2 agent_ip=10.97.0.3 bridge_ip=10.97.0.1 registry_port=5000
kc=$work/kubeconfig
# The kubelet sets these; the host gets its own values back at the end.
tunables="kernel.panic kernel.panic_on_oops vm.overcommit_memory"

log() { printf '%s conformance: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 1; }

down() {
  set +e
  if [ -f "$work/registry.pid" ]; then kill "$(cat "$work/registry.pid")" 2>/dev/null; rm -f "$work/registry.pid"; fi
  for n in agent server; do "$netns" down "$n"; done
  "$netns" bridge-down x
  if [ -f "$work/tunables" ]; then
    while read -r k v; do sysctl -qw "$k=$v"; done < "$work/tunables"
  fi
  set -e
}

if [ "${1:-}" = down ]; then down; exit 0; fi

[ "$(id -u)" = 0 ] || die "run as root (network namespaces, mounts, containerd)"
bin=${BERTH_BIN:?set BERTH_BIN to bin/berth}
tools=${CONFORMANCE_TOOLS:?set CONFORMANCE_TOOLS to build/conformance/bin}
out=${CONFORMANCE_OUT:?set CONFORMANCE_OUT to dist/conformance}
for f in "$bin" "${BERTH_AIRGAP:?}" "${CONFORMANCE_BUNDLE:?}" "$tools/e2e.test" "$tools/ginkgo" "$tools/kubectl"; do
  [ -e "$f" ] || die "$f is missing: make conformance builds it"
done
kitten_tar=$out/images/kitten-1.8-$(go env GOARCH).tar
[ -e "$kitten_tar" ] || die "$kitten_tar is missing: make conformance-images builds it"
for p in ip nsenter unshare iptables; do command -v $p >/dev/null || die "$p is missing (make deps)"; done

# Leftovers of an interrupted run go first.
down
rm -rf "$work"
mkdir -p "$work"
chmod 700 "$work"
for k in $tunables; do echo "$k $(sysctl -n "$k")"; done > "$work/tunables"
on_exit() {
  local rc=$?
  if [ "${CONFORMANCE_KEEP:-}" != 1 ]; then down; fi
  exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT TERM
rm -rf "$out/parallel" "$out/serial" "$out/logs" "$out/summary.txt"
mkdir -p "$out/logs"

"$netns" bridge
"$netns" up server 2
"$netns" up agent 3
for n in server agent; do
  mkdir -p "$work/$n/data/agent/images"
  cp "$BERTH_AIRGAP" "$CONFORMANCE_BUNDLE" "$work/$n/data/agent/images/"
  # The node's /etc/berth (a private bind mount, see netns-node.sh).
  cat > "$work/$n/etc-berth/registries.yaml" <<EOF
mirrors:
  registry.k8s.io:
    endpoint:
      - "http://$bridge_ip:$registry_port"
EOF
done

# The registry first: the nodes' containerd may ask it for images at once.
(cd "$repo" && go build -o "$work/testregistry" ./hack/testregistry)
"$work/testregistry" -addr "$bridge_ip:$registry_port" "$kitten_tar" \
  > "$work/registry.ready" 2> "$out/logs/registry.log" &
echo $! > "$work/registry.pid"
for _ in $(seq 600); do grep -q ready "$work/registry.ready" 2>/dev/null && break
  kill -0 "$(cat "$work/registry.pid")" 2>/dev/null || die "the test registry failed: $(tail -5 "$out/logs/registry.log")"
  sleep 0.2; done
grep -q ready "$work/registry.ready" || die "the test registry did not come up"

log "starting the server node"
"$netns" start server "$bin" server -d "$work/server/data" --node-name berth-server \
  --node-ip $server_ip --advertise-address $server_ip --flannel-iface eth0 \
  --kubelet-arg=cgroup-root=/bb-server --write-kubeconfig "$work/admin.yaml"
for _ in $(seq 300); do [ -s "$work/admin.yaml" ] && [ -s "$work/server/data/server/token" ] && break; sleep 1; done
[ -s "$work/admin.yaml" ] || die "the server wrote no kubeconfig in 300 s: $work/server/log"
# The server's kubeconfig names its own loopback; from the host it is on the bridge.
sed "s#server: https://[^:]*:6443#server: https://$server_ip:6443#" "$work/admin.yaml" > "$kc"
chmod 600 "$kc"
export KUBECONFIG=$kc PATH=$tools:$PATH

log "starting the agent node"
"$netns" start agent "$bin" agent --server "https://$server_ip:6443" \
  --token "$(cat "$work/server/data/server/token")" -d "$work/agent/data" --node-name berth-agent \
  --node-ip $agent_ip --flannel-iface eth0 --kubelet-arg=cgroup-root=/bb-agent

for _ in $(seq 300); do
  [ "$(kubectl get nodes --no-headers 2>/dev/null | awk '$2=="Ready"' | wc -l)" = 2 ] && break; sleep 2; done
kubectl get nodes -o wide
[ "$(kubectl get nodes --no-headers | awk '$2=="Ready"' | wc -l)" = 2 ] || die "two Ready nodes expected"
# e2e.test waits for every kube-system pod to be ready before any test.
kubectl -n kube-system wait --for=condition=Available deployment --all --timeout=300s
kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}{" taints="}{.spec.taints}{"\n"}{end}'

# One pass: ginkgo's own timeout (default 1 h) is raised far above any
# pass's length; a test's own timeouts still apply.
pass() {
  local what=$1 nodes=$2 focus=$3 skip=$4 t0 rc=0
  mkdir -p "$out/$what"
  log "$what pass: focus '$focus' skip '$skip', $nodes process(es)"
  t0=$(date +%s)
  "$tools/ginkgo" --nodes="$nodes" --timeout=6h --no-color --focus="$focus" ${skip:+--skip="$skip"} \
    "$tools/e2e.test" -- --kubeconfig="$kc" --provider=skeleton --kubectl-path="$tools/kubectl" \
    --report-dir="$out/$what" --report-prefix="$what" --disable-log-dump \
    > "$out/logs/$what.log" 2>&1 || rc=$?
  echo "$what $(( $(date +%s) - t0 )) $rc" >> "$out/passes"
  log "$what pass: exit $rc after $(( $(date +%s) - t0 )) s ($out/logs/$what.log)"
}

rm -f "$out/passes"
skip_extra=${CONFORMANCE_SKIP:+|$CONFORMANCE_SKIP}
for p in ${CONFORMANCE_PASSES:-parallel serial}; do
  case $p in
  parallel) pass parallel "${CONFORMANCE_NODES:-4}" "${CONFORMANCE_FOCUS:-\[Conformance\]}" "\[Serial\]$skip_extra" ;;
  serial) pass serial 1 "${CONFORMANCE_FOCUS:-\[Serial\].*\[Conformance\]}" "${CONFORMANCE_SKIP:-}" ;;
  *) die "unknown pass $p" ;;
  esac
done

# The nodes' logs travel with the report.
for n in server agent; do cp "$work/$n/log" "$out/logs/$n.log" 2>/dev/null || true; done
(cd "$repo/test/conformance" && export GOWORK=off GOFLAGS=-mod=readonly &&
  go run ./summary -passes "$out/passes" \
    -suite "$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)/test/conformance/testdata/conformance.yaml" \
    "$out/parallel" "$out/serial") > "$out/summary.txt"
cat "$out/summary.txt"
# A pass with failures (or one that did not finish) fails the run.
if awk '$3 != 0 {bad=1} END {exit !bad}' "$out/passes"; then
  die "a pass failed: see $out/summary.txt and $out/logs"
fi
