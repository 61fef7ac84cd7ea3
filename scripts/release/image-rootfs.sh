#!/usr/bin/env bash
# Assembles the root file system of berth's container image (Dockerfile) for
# one architecture, with no registry and no container engine: Debian 12's
# packages for the node tools, unpacked with dpkg-deb, plus berth and its
# helper binaries as make release built them. Run by `make image`:
#
#   scripts/release/image-rootfs.sh ARCH DEBARCH TRIPLET RELEASE_DIR ROOTFS DEB_CACHE
#   e.g. amd64 amd64 x86_64-linux-gnu build/release/amd64 build/image/amd64/rootfs dist/cache/deb
#
# Layout: /bin holds berth, its helpers (containerd, runc, CNI plugins,
# crictl) and /sha256sums + /.installed describe them, exactly the tree the
# release launcher unpacks into <data-dir>/data/<sha256>/, so berth uses its
# helpers in place (pkg/data.Beside) and nothing is unpacked at start.
# Debian supplies what a node execs on the host's behalf: iptables (nft
# backend by default, legacy as iptables-legacy), ipset, conntrack, mount
# (util-linux), modprobe (kmod), the CA bundle, and busybox for a shell and
# the small tools; glibc for berth (cgo) and those tools.
#
# Every ELF file's interpreter and libraries are checked to be present, and
# the tools are run once in the tree (chroot; qemu-user for another
# architecture).
set -euo pipefail

arch=$1 debarch=$2 triplet=$3 release=$4 root=$5 cache=$6

# Package → why. Libraries are listed by hand (apt's closure would pull in
# debconf, perl and systemd); the NEEDED check below catches a missing one.
packages=(
	libc6 libgcc-s1                         # glibc: berth (cgo), all tools
	iptables libip4tc2 libip6tc2 libxtables12 libnftnl11 libmnl0 libnetfilter-conntrack3 libnfnetlink0
	ipset libipset13                        # network policy
	conntrack                               # stale UDP conntrack entries (kube-proxy)
	mount libmount1 libblkid1 libselinux1 libpcre2-8-0 libsmartcols1   # volumes
	kmod libkmod2 liblzma5 libssl3 libzstd1 # modprobe (with the host's /lib/modules mounted)
	busybox-static                          # sh, coreutils for debugging and exec probes
	ca-certificates                         # the CA bundle (registries, HTTPS)
)
names=()
for p in "${packages[@]}"; do names+=("$p"); done

die() { echo "image-rootfs: $*" >&2; exit 1; }
[ -x "$release/berth" ] || die "no $release/berth: run make release-bin-$arch first"
[ -d "$release/helpers/bin" ] || die "no $release/helpers/bin: run make release-bin-$arch first"

# Download what is not cached yet (dist/cache/deb, shared with berth-images).
mkdir -p "$cache"
missing=()
for p in "${names[@]}"; do
	compgen -G "$cache/${p}_*_${debarch}.deb" >/dev/null || compgen -G "$cache/${p}_*_all.deb" >/dev/null ||
		missing+=("$p:$debarch")
done
if [ "${#missing[@]}" -gt 0 ]; then
	dl=$(mktemp -d)
	trap 'rm -rf "$dl"' EXIT
	sandbox=()
	[ "$(id -u)" -eq 0 ] && sandbox=(-o APT::Sandbox::User=root)
	echo "image-rootfs: apt-get download ${missing[*]}"
	(cd "$dl" && apt-get "${sandbox[@]}" download "${missing[@]}") ||
		die "apt-get download failed (another architecture needs dpkg --add-architecture $debarch and apt-get update: make deps)"
	mv "$dl"/*.deb "$cache"/
fi

rm -rf "$root"
mkdir -p "$root"
for p in "${names[@]}"; do
	debs=$(compgen -G "$cache/${p}_*_${debarch}.deb" || compgen -G "$cache/${p}_*_all.deb" || true)
	[ "$(echo "$debs" | grep -c .)" -eq 1 ] || die "want exactly one cached package for $p:$debarch, have: ${debs:-none}"
	dpkg-deb -x "$debs" "$root"
	echo "$p $(dpkg-deb -f "$debs" Version)" >>"$root/.packages"
done
# Only what runs: no documentation but the licences, no init scripts.
find "$root/usr/share/doc" -type f ! -name copyright -delete 2>/dev/null || true
find "$root/usr/share/doc" -type l -delete 2>/dev/null || true
rm -rf "$root"/usr/share/{man,info,locale,lintian,bug,bash-completion,zsh,pkgconfig} "$root"/etc/{init.d,default,cron.daily,logrotate.d} \
	"$root"/usr/lib/"$triplet"/gconv "$root"/usr/include "$root"/usr/share/ca-certificates-* 2>/dev/null || true
mkdir -p "$root"/usr/share/doc/berth-image
mv "$root/.packages" "$root/usr/share/doc/berth-image/debian-packages"

# iptables: the update-alternatives links dpkg-deb -x does not make. nft
# (the kernel's nf_tables) is what Debian 11+, Ubuntu 20.10+ and RHEL 8+
# hosts use; a legacy-iptables host needs iptables-legacy (both are here).
for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
	ln -sf xtables-nft-multi "$root/usr/sbin/$t"
done
# The CA bundle update-ca-certificates would write.
mkdir -p "$root/etc/ssl/certs"
cat "$root"/usr/share/ca-certificates/mozilla/*.crt >"$root/etc/ssl/certs/ca-certificates.crt"

# berth and its helpers: the unpacked-payload layout (see the header).
mkdir -p "$root/bin"
: >"$root/sha256sums"
for f in "$release/berth" "$release"/helpers/bin/*; do
	case "$f" in *.new) continue ;; esac
	n=$(basename "$f")
	install -m 0755 "$f" "$root/bin/$n"
	echo "$(sha256sum <"$f" | cut -d' ' -f1)  bin/$n" >>"$root/sha256sums"
done
sort -k2 -o "$root/sha256sums" "$root/sha256sums"
echo "image" >"$root/.installed"

# Files a node and its tools expect.
mkdir -p "$root"/{etc/berth,var/lib/berth,var/lib/kubelet,var/lib/cni,var/log,run,proc,sys,dev,root,tmp}
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' >"$root/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"

# busybox applets, where no real tool of that name exists.
run_in() { # run a program of the tree (another architecture through qemu-user)
	local bin=$1
	shift
	if [ "$arch" != "$host" ]; then QEMU_LD_PREFIX=$root "$root$bin" "$@"; else "$root$bin" "$@"; fi
}
case "$(uname -m)" in x86_64) host=amd64 ;; aarch64) host=arm64 ;; armv7l) host=arm ;; *) host=$(uname -m) ;; esac
applets=0
while read -r a; do
	case "$a" in "" | busybox) continue ;; esac
	exists=
	for d in bin sbin usr/bin usr/sbin; do
		if [ -e "$root/$d/$a" ] || [ -L "$root/$d/$a" ]; then exists=1; fi
	done
	[ -z "$exists" ] || continue
	ln -s busybox "$root/bin/$a"
	applets=$((applets + 1))
done < <(run_in /bin/busybox --list)
[ "$applets" -gt 50 ] || die "only $applets busybox applets linked"

# Every ELF's interpreter and libraries must be in the tree.
libdirs=("lib/$triplet" "usr/lib/$triplet" lib usr/lib)
bad=0
while IFS= read -r -d '' f; do
	head -c4 "$f" 2>/dev/null | grep -q $'^\x7fELF' || continue
	interp=$(readelf -l "$f" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
	if [ -n "$interp" ] && [ ! -e "$root$interp" ]; then
		echo "image-rootfs: ${f#"$root"}: interpreter $interp missing" >&2
		bad=1
	fi
	for lib in $(readelf -d "$f" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
		found=
		for d in "${libdirs[@]}"; do [ -e "$root/$d/$lib" ] && found=1 && break; done
		[ -n "$found" ] || { echo "image-rootfs: ${f#"$root"}: library $lib missing" >&2; bad=1; }
	done
done < <(find "$root" -type f -print0)
[ "$bad" -eq 0 ] || die "the tree lacks libraries (add their packages above)"

# Run the tools once in the tree: chroot (qemu-user with binfmt_misc's
# fix-binary flag for another architecture), without /proc for the
# --version calls, with a private /proc and /sys for check-config.
for cmd in "/bin/berth --version" "/usr/sbin/iptables --version" "/usr/sbin/iptables-legacy --version" \
	"/usr/sbin/ipset --version" "/usr/sbin/conntrack --version" "/bin/mount --version" "/sbin/modprobe --version" \
	"/bin/sh -c true" "/bin/crictl --version" "/bin/containerd --version" "/bin/runc --version"; do
	# shellcheck disable=SC2086 # cmd is a command line
	out=$(chroot "$root" $cmd 2>&1) || die "in the tree, $cmd failed: $out"
	echo "image-rootfs: $cmd: $(echo "$out" | head -1)"
done
unshare --mount --fork sh -c "mount -t proc proc '$root/proc' && mount --rbind /sys '$root/sys' && mount --make-rslave '$root/sys' &&
	chroot '$root' /bin/berth check-config -d /tmp/berth-check" >"$root/tmp/check" 2>&1 ||
	{ cat "$root/tmp/check" >&2; die "check-config in the tree failed"; }
grep '^verdict' "$root/tmp/check" | sed 's/^/image-rootfs: check-config in the tree: /'
rm -rf "$root/tmp/check" "$root/tmp/berth-check"
echo "image-rootfs: $root: $(du -sm "$root" | cut -f1) MiB"
