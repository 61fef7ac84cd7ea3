#!/usr/bin/env bash
# Smoke test of one release binary, in the form it ships (launcher +
# payload), for any architecture: foreign ones run under qemu-user through
# binfmt_misc (make deps installs qemu-user-static and enables it). Run by
# `make release-smoke`:
#
#   scripts/release/smoke.sh ARCH ARTIFACT TRIPLET QEMU   e.g. arm64 berth-arm64 aarch64-linux-gnu qemu-aarch64-static
#
# It runs, in a fresh data dir, `--version` twice (the first run unpacks;
# both are timed), a multi-call link (kubectl for berth, ctr for
# berth-agent), and `check-config`, whose verdict must not be FAIL. Nothing
# is started and nothing outside the temporary directory is touched.
set -euo pipefail

arch=$1 name=$2 triplet=$3 qemu=$4
out=${RELEASE_OUT:-dist/artifacts}
bin=$(realpath -e "$out/$name" 2>/dev/null) || { echo "smoke: no $out/$name: run make release-$arch first" >&2; exit 1; }

say() { printf '%s: %s\n' "$name" "$*"; }
fail() { say "FAIL: $*" >&2; exit 1; }

case "$(uname -m)" in x86_64) host=amd64 ;; aarch64) host=arm64 ;; armv7l|armv8l) host=arm ;; riscv64) host=riscv64 ;; *) host=$(uname -m) ;; esac
if [ "$arch" != "$host" ]; then
	handler=/proc/sys/fs/binfmt_misc/${qemu%-static}
	if ! { [ -e "$handler" ] && grep -qx enabled "$handler"; }; then
		fail "binfmt_misc has no enabled $(basename "$handler") handler: install qemu-user-static and binfmt-support (make deps)"
	fi
	# Release binaries are static; a dynamically linked one would find its
	# loader and glibc for $triplet in Debian's libc6-*-cross here.
	export QEMU_LD_PREFIX=/usr/$triplet
	[ -d "$QEMU_LD_PREFIX" ] || fail "no $QEMU_LD_PREFIX: install the $triplet cross libc (make deps)"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export BERTH_DATA_DIR=$tmp/data
unset BERTH_CONFIG_FILE

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }

say "$(stat -c %s "$bin") bytes, $arch$([ "$arch" != "$host" ] && echo " under $qemu")"

t=$(now)
timeout -s KILL 300 "$bin" --version >"$tmp/version1" 2>"$tmp/err1" || { cat "$tmp/err1" >&2; fail "--version (first run) failed or took over 5 minutes"; }
first=$(elapsed "$t")
t=$(now)
timeout -s KILL 120 "$bin" --version >"$tmp/version2" 2>"$tmp/err2" || { cat "$tmp/err2" >&2; fail "--version (second run) failed"; }
second=$(elapsed "$t")
cmp -s "$tmp/version1" "$tmp/version2" || fail "first and second --version differ"
grep -q "^kubernetes v" "$tmp/version1" || { cat "$tmp/version1" >&2; fail "--version names no Kubernetes version"; }
grep -q "linux/$arch\$" "$tmp/version1" || { cat "$tmp/version1" >&2; fail "--version is not linux/$arch"; }
cur=$(readlink "$BERTH_DATA_DIR/data/current" || true)
dir=$BERTH_DATA_DIR/data/$cur
if [ -z "$cur" ] || [ ! -e "$dir/.installed" ]; then
	fail "no complete unpacked directory behind $BERTH_DATA_DIR/data/current"
fi
inner=$(find "$dir/bin" -maxdepth 1 -name 'berth*' -type f | head -1)
t=$(now)
"$inner" --version >/dev/null 2>&1 || fail "the unpacked $inner --version failed"
direct=$(elapsed "$t")
say "--version: first run (unpacks) ${first}s, second ${second}s, the unpacked binary itself ${direct}s"
sed 's/^/    /' "$tmp/version1"
say "unpacked: $(du -sm "$dir" | cut -f1) MiB in data/$cur, $(find "$dir/bin" -type f | wc -l) files"

# A multi-call link to the release binary: argv[0] must survive the launcher.
case "$name" in
berth-agent*) tool=ctr; args=(--version); want="containerd" ;;
*) tool=kubectl; args=(version --client); want="Client Version: v" ;;
esac
ln -s "$bin" "$tmp/$tool"
timeout -s KILL 120 "$tmp/$tool" "${args[@]}" >"$tmp/tool" 2>&1 || { cat "$tmp/tool" >&2; fail "$tool link failed"; }
grep -q "$want" "$tmp/tool" || { cat "$tmp/tool" >&2; fail "$tool link did not run $tool"; }
say "$tool link: $(head -1 "$tmp/tool")"

set +e
timeout -s KILL 120 "$bin" check-config -d "$tmp/data" >"$tmp/check" 2>&1
status=$?
set -e
sed 's/^/    /' "$tmp/check"
verdict=$(grep '^verdict:' "$tmp/check" || true)
[ -n "$verdict" ] || fail "check-config printed no verdict (exit $status)"
case "$verdict" in *FAIL*) fail "check-config: $verdict" ;; esac
[ "$status" -eq 0 ] || fail "check-config exited $status"
say "check-config: $verdict"
say "PASS"
