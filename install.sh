#!/bin/sh
# berth installer.
#
#   curl -sfL https://RELEASES/install.sh | sh -                          # server
#   curl -sfL https://RELEASES/install.sh | BERTH_URL=https://srv:6443 BERTH_TOKEN=K10… sh -   # agent
#   INSTALL_BERTH_SKIP_DOWNLOAD=true ./install.sh                         # air-gapped
#
# Environment (k3s's INSTALL_K3S_* and K3S_* renamed):
#   BERTH_URL                     server to join: makes this an agent install (https only)
#   BERTH_TOKEN, BERTH_TOKEN_FILE  join token (required with BERTH_URL)
#   BERTH_*, CONTAINERD_*, proxy variables
#                                 copied into the service's environment file (0600)
#   INSTALL_BERTH_EXEC            command and flags ("server --disable metrics-server",
#                                 "agent", or only flags); default server, agent with BERTH_URL
#   INSTALL_BERTH_ARTIFACT_URL    directory holding the binaries and sha256sum-<arch>.txt
#   INSTALL_BERTH_VERSION         release to install (from INSTALL_BERTH_RELEASE_URL)
#   INSTALL_BERTH_CHANNEL, INSTALL_BERTH_CHANNEL_URL
#                                 where the latest version is looked up (default stable)
#   INSTALL_BERTH_SKIP_DOWNLOAD   true: use the binary already in the bin dir (air gap)
#   INSTALL_BERTH_BIN_DIR         default /usr/local/bin (/opt/bin if read-only)
#   INSTALL_BERTH_SYSTEMD_DIR     default /etc/systemd/system
#   INSTALL_BERTH_NAME            service name suffix: berth-<name>
#   INSTALL_BERTH_SKIP_ENABLE     true: do not enable the service
#   INSTALL_BERTH_SKIP_START      true: do not (re)start the service
#   INSTALL_BERTH_FORCE_RESTART   true: restart even if nothing changed
#   INSTALL_BERTH_SYMLINK         skip | force (default: link kubectl, crictl, ctr if absent)
set -e
set -o noglob

info() { echo "[INFO]  $*"; }
warn() { echo "[WARN]  $*" >&2; }
fatal() {
	echo "[ERROR] $*" >&2
	exit 1
}

DEFAULT_RELEASE_URL=https://github.com/berth-io/berth/releases/download
DEFAULT_CHANNEL_URL=https://update.berth.io/v1-release/channels

# --- what to install ---------------------------------------------------------
setup_env() {
	# The command: the first word of INSTALL_BERTH_EXEC, else server or agent.
	case "${INSTALL_BERTH_EXEC}" in
	server | server\ *) CMD_BERTH=server ;;
	agent | agent\ *) CMD_BERTH=agent ;;
	*)
		if [ -n "${BERTH_URL}" ]; then CMD_BERTH=agent; else CMD_BERTH=server; fi
		INSTALL_BERTH_EXEC="${CMD_BERTH}${INSTALL_BERTH_EXEC:+ }${INSTALL_BERTH_EXEC}"
		;;
	esac
	if [ "${CMD_BERTH}" = agent ]; then
		[ -n "${BERTH_URL}" ] || fatal "an agent needs BERTH_URL (https://SERVER:6443)"
		case "${BERTH_URL}" in
		https://*) ;;
		*) fatal "BERTH_URL must be an https:// URL, got '${BERTH_URL}'" ;;
		esac
		if [ -z "${BERTH_TOKEN}" ] && [ -z "${BERTH_TOKEN_FILE}" ]; then
			fatal "BERTH_URL is set but neither BERTH_TOKEN nor BERTH_TOKEN_FILE: an agent needs the server's token (sudo cat /var/lib/berth/server/node-token on the server, or berth token create)"
		fi
		# The slim agent-only binary, unless only the full one is at hand.
		BIN_NAME=berth-agent
	else
		BIN_NAME=berth
	fi

	if [ -n "${INSTALL_BERTH_NAME}" ]; then
		SYSTEM_NAME="berth-$(echo "${INSTALL_BERTH_NAME}" | sed -e 's/^berth-//' -e 's/[^A-Za-z0-9@._-]/-/g')"
	elif [ "${CMD_BERTH}" = server ]; then
		SYSTEM_NAME=berth
	else
		SYSTEM_NAME=berth-agent
	fi

	BIN_DIR="${INSTALL_BERTH_BIN_DIR:-/usr/local/bin}"
	if [ -z "${INSTALL_BERTH_BIN_DIR}" ] && ! can_write "${BIN_DIR}"; then
		BIN_DIR=/opt/bin
	fi
	SYSTEMD_DIR="${INSTALL_BERTH_SYSTEMD_DIR:-/etc/systemd/system}"
	SERVICE_BERTH="${SYSTEM_NAME}.service"
	KILLALL_BERTH_SH="${BIN_DIR}/berth-killall.sh"
	UNINSTALL_BERTH_SH="${BIN_DIR}/${SYSTEM_NAME}-uninstall.sh"
	[ "${SYSTEM_NAME}" = berth ] && UNINSTALL_BERTH_SH="${BIN_DIR}/berth-uninstall.sh"

	SUDO=sudo
	[ "$(id -u)" -eq 0 ] && SUDO=
}

can_write() {
	mkdir -p "$1" 2>/dev/null || return 1
	t="$1/.berth-install-$$"
	touch "$t" 2>/dev/null || return 1
	rm -f "$t"
}

# --- init system -------------------------------------------------------------
verify_system() {
	if [ -x /sbin/openrc-run ]; then
		HAS_OPENRC=true
		return
	fi
	if [ -x /bin/systemctl ] || [ -x /usr/bin/systemctl ]; then
		HAS_SYSTEMD=true
		return
	fi
	warn "neither systemd nor OpenRC was found: berth will be installed, but not as a service; start it yourself: ${BIN_DIR}/${BIN_NAME} ${INSTALL_BERTH_EXEC}"
}

# systemd_running: the unit can be enabled and started only with systemd as
# the init (not in containers or chroots that merely have systemctl).
systemd_running() { [ -d /run/systemd/system ]; }

# --- architecture ------------------------------------------------------------
setup_verify_arch() {
	ARCH="${ARCH:-$(uname -m)}"
	case "${ARCH}" in
	amd64 | x86_64)
		ARCH=amd64
		SUFFIX=
		;;
	arm64 | aarch64)
		ARCH=arm64
		SUFFIX=-arm64
		;;
	arm*)
		ARCH=arm
		SUFFIX=-armhf
		;;
	riscv64)
		# Built by make release-riscv64, without an air-gap bundle.
		SUFFIX=-riscv64
		;;
	*) fatal "unsupported architecture '${ARCH}': berth is released for amd64 (x86_64), arm64 (aarch64), armhf (armv7) and riscv64" ;;
	esac
}

# --- download ----------------------------------------------------------------
verify_downloader() {
	if command -v curl >/dev/null 2>&1; then
		DOWNLOADER=curl
	elif command -v wget >/dev/null 2>&1; then
		DOWNLOADER=wget
	else
		fatal "neither curl nor wget is installed: install one, or use INSTALL_BERTH_SKIP_DOWNLOAD=true with the binary in ${BIN_DIR}"
	fi
}

download() {
	case "${DOWNLOADER}" in
	curl) curl -fL --retry 3 -sS -o "$1" "$2" ;;
	wget) wget -q -O "$1" "$2" ;;
	esac || fatal "download of $2 failed"
}

setup_tmp() {
	TMP_DIR=$(mktemp -d -t berth-install.XXXXXXXXXX)
	TMP_HASH="${TMP_DIR}/berth.hash"
	TMP_BIN="${TMP_DIR}/berth.bin"
	cleanup() {
		code=$?
		set +e
		trap - EXIT
		rm -rf "${TMP_DIR}"
		exit "${code}"
	}
	trap cleanup INT EXIT
}

get_release_version() {
	if [ -n "${INSTALL_BERTH_ARTIFACT_URL}" ]; then
		VERSION_BERTH=
		return
	fi
	if [ -n "${INSTALL_BERTH_VERSION}" ]; then
		VERSION_BERTH="${INSTALL_BERTH_VERSION}"
	else
		channel_url="${INSTALL_BERTH_CHANNEL_URL:-${DEFAULT_CHANNEL_URL}}/${INSTALL_BERTH_CHANNEL:-stable}"
		info "finding the latest release from ${channel_url}"
		case "${DOWNLOADER}" in
		curl) VERSION_BERTH=$(curl -w '%{url_effective}' -L -s -S -o /dev/null "${channel_url}") ;;
		wget) VERSION_BERTH=$(wget -SqO /dev/null "${channel_url}" 2>&1 | grep -i Location | sed -e 's|.*/||') ;;
		esac
		VERSION_BERTH="${VERSION_BERTH##*/}"
		[ -n "${VERSION_BERTH}" ] || fatal "could not find the latest release at ${channel_url}; set INSTALL_BERTH_VERSION"
	fi
	info "using ${VERSION_BERTH}"
}

artifact_url() {
	if [ -n "${INSTALL_BERTH_ARTIFACT_URL}" ]; then
		echo "${INSTALL_BERTH_ARTIFACT_URL%/}/$1"
	else
		echo "${INSTALL_BERTH_RELEASE_URL:-${DEFAULT_RELEASE_URL}}/${VERSION_BERTH}/$1"
	fi
}

download_and_verify() {
	verify_downloader
	setup_tmp
	get_release_version
	ASSET="${BIN_NAME}${SUFFIX}"
	info "downloading sha256sum-${ARCH}.txt"
	download "${TMP_HASH}" "$(artifact_url "sha256sum-${ARCH}.txt")"
	HASH_EXPECTED=$(awk -v f="${ASSET}" '$2 == f || $2 == "*" f { print $1 }' "${TMP_HASH}")
	[ -n "${HASH_EXPECTED}" ] || fatal "sha256sum-${ARCH}.txt lists no ${ASSET}"
	if [ -x "${BIN_DIR}/${BIN_NAME}" ] && [ "$(sha256 "${BIN_DIR}/${BIN_NAME}")" = "${HASH_EXPECTED}" ]; then
		info "${BIN_DIR}/${BIN_NAME} is already this release; not downloading it"
		SKIP_BINARY=true
		return
	fi
	info "downloading ${ASSET}"
	download "${TMP_BIN}" "$(artifact_url "${ASSET}")"
	HASH_BIN=$(sha256 "${TMP_BIN}")
	if [ "${HASH_BIN}" != "${HASH_EXPECTED}" ]; then
		fatal "${ASSET} from $(artifact_url "${ASSET}") has sha256 ${HASH_BIN}, but sha256sum-${ARCH}.txt says ${HASH_EXPECTED}: the download is corrupt or incomplete; nothing was installed"
	fi
}

sha256() { sha256sum "$1" | awk '{print $1}'; }

install_binary() {
	if [ "${SKIP_BINARY}" = true ]; then
		return
	fi
	${SUDO} mkdir -p "${BIN_DIR}"
	chmod 755 "${TMP_BIN}"
	# Staged beside the target, then renamed: a running berth keeps its
	# (old) file, and the new one is never seen half-written.
	${SUDO} cp "${TMP_BIN}" "${BIN_DIR}/.${BIN_NAME}.new"
	${SUDO} mv -f "${BIN_DIR}/.${BIN_NAME}.new" "${BIN_DIR}/${BIN_NAME}"
	BINARY_CHANGED=true
	info "installed ${BIN_DIR}/${BIN_NAME}"
}

# verify_existing_binary: the air-gapped path (no download).
verify_existing_binary() {
	if [ ! -x "${BIN_DIR}/${BIN_NAME}" ] && [ "${BIN_NAME}" = berth-agent ] && [ -x "${BIN_DIR}/berth" ]; then
		BIN_NAME=berth # the full binary runs agents too
	fi
	[ -x "${BIN_DIR}/${BIN_NAME}" ] || fatal "INSTALL_BERTH_SKIP_DOWNLOAD is set but ${BIN_DIR}/${BIN_NAME} is missing or not executable: copy the release binary there first"
	info "skipping the download; using ${BIN_DIR}/${BIN_NAME}"
}

# --- links and helper scripts ------------------------------------------------
create_symlinks() {
	[ "${INSTALL_BERTH_SYMLINK}" = skip ] && return
	if [ "${BIN_NAME}" = berth ]; then
		cmds="kubectl crictl ctr"
	else
		cmds="crictl ctr"
	fi
	for cmd in ${cmds}; do
		target="${BIN_DIR}/${cmd}"
		if [ -L "${target}" ] && [ "$(readlink "${target}")" = "${BIN_NAME}" ]; then
			continue
		fi
		if [ "${INSTALL_BERTH_SYMLINK}" = force ] || ! command -v "${cmd}" >/dev/null 2>&1; then
			info "linking ${target} -> ${BIN_NAME}"
			${SUDO} ln -sf "${BIN_NAME}" "${target}"
		else
			info "skipping ${cmd}: $(command -v "${cmd}") exists (INSTALL_BERTH_SYMLINK=force replaces it)"
		fi
	done
}

create_killall() {
	write_if_changed "${KILLALL_BERTH_SH}" 755 <<'EOF'
#!/bin/sh
# Stops berth and every container it started, and removes berth's network
# interfaces, iptables chains and mounts. Data is kept (see berth-uninstall.sh).
[ "$(id -u)" -eq 0 ] || exec sudo "$0" "$@"

for svc in /etc/systemd/system/berth*.service; do
	[ -s "${svc}" ] && command -v systemctl >/dev/null 2>&1 && systemctl stop "$(basename "${svc}")" 2>/dev/null
done
for svc in /etc/init.d/berth*; do
	[ -x "${svc}" ] && "${svc}" stop 2>/dev/null
done

pids_of() { # processes whose executable or command line mentions $1
	for p in /proc/[0-9]*; do
		pid=${p#/proc/}
		[ "${pid}" = "$$" ] && continue
		if tr '\0' ' ' <"${p}/cmdline" 2>/dev/null | grep -q -- "$1"; then echo "${pid}"; fi
	done
}
killtree() { # $@: pids, then their descendants (the parent first, so it cannot respawn them)
	for pid in "$@"; do
		children=$(grep -l "^PPid:[[:space:]]*${pid}\$" /proc/[0-9]*/status 2>/dev/null | sed 's|/proc/\([0-9]*\)/status|\1|')
		kill -9 "${pid}" 2>/dev/null
		# A subshell: sh has no local variables, and the recursion reuses pid.
		# shellcheck disable=SC2086
		[ -n "${children}" ] && (killtree ${children})
	done
}
# berth itself, then the shims (pods live under them).
# shellcheck disable=SC2046
killtree $(pids_of '/berth server') $(pids_of '/berth agent') $(pids_of 'berth-agent agent') 2>/dev/null
# shellcheck disable=SC2046
killtree $(pids_of 'containerd-shim-runc-v2 .*-address /run/berth/containerd') 2>/dev/null
# shellcheck disable=SC2046
killtree $(pids_of 'berth/agent/etc/containerd/config.toml') 2>/dev/null

do_unmount_and_remove() {
	awk -v path="$1" '$2 ~ ("^" path) { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
		umount -f "${m}" 2>/dev/null || umount -l "${m}"
	done
	[ "$2" = keep ] || rm -rf "$1"
}
do_unmount_and_remove /run/berth
do_unmount_and_remove /var/lib/berth keep
do_unmount_and_remove /var/lib/kubelet/pods
do_unmount_and_remove /var/lib/kubelet/plugins
# The kubelet makes its root dir a mount of its own.
do_unmount_and_remove /var/lib/kubelet keep
do_unmount_and_remove /run/netns/cni- keep
rm -f /run/netns/cni-* # the pods' netns pins

# Pod veths hang off cni0; flannel's VXLAN device and the bridge go too.
ip -o link show master cni0 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | while read -r veth; do
	ip link delete "${veth}" 2>/dev/null
done
for link in cni0 flannel.1 flannel-v6.1 flannel-wg kube-ipvs0; do
	ip link delete "${link}" 2>/dev/null
done
rm -rf /var/lib/cni/

# kube-proxy's KUBE-*, CNI portmap's CNI-* and flannel's FLANNEL-* chains and
# the rules that jump to them; everything else is left as it was.
for cmd in iptables ip6tables; do
	command -v "${cmd}-save" >/dev/null 2>&1 || continue
	"${cmd}-save" 2>/dev/null | grep -v -E -- '(KUBE-|CNI-|FLANNEL-|flannel)' | "${cmd}-restore" 2>/dev/null
done
exit 0
EOF
}

create_uninstall() {
	write_if_changed "${UNINSTALL_BERTH_SH}" 755 <<EOF
#!/bin/sh
# Removes berth: stops it and its containers (berth-killall.sh), then the
# service, binaries, links, /etc/berth, /var/lib/berth, /run/berth.
set -x
[ "\$(id -u)" -eq 0 ] || exec sudo "\$0" "\$@"

${KILLALL_BERTH_SH}

if command -v systemctl >/dev/null 2>&1 && [ -f "${SYSTEMD_DIR}/${SERVICE_BERTH}" ]; then
	systemctl disable ${SYSTEM_NAME} 2>/dev/null
	systemctl reset-failed ${SYSTEM_NAME} 2>/dev/null
	rm -f "${SYSTEMD_DIR}/${SERVICE_BERTH}" "${SYSTEMD_DIR}/${SERVICE_BERTH}.env"
	systemctl daemon-reload 2>/dev/null
fi
if [ -x /sbin/openrc-run ] && [ -f /etc/init.d/${SYSTEM_NAME} ]; then
	rc-update delete ${SYSTEM_NAME} default 2>/dev/null
	rm -f /etc/init.d/${SYSTEM_NAME} /etc/berth/${SYSTEM_NAME}.env
fi
rm -f "${SYSTEMD_DIR}/${SERVICE_BERTH}" "${SYSTEMD_DIR}/${SERVICE_BERTH}.env"

for cmd in kubectl crictl ctr; do
	case "\$(readlink "${BIN_DIR}/\${cmd}" 2>/dev/null)" in
	berth | berth-agent) rm -f "${BIN_DIR}/\${cmd}" ;;
	esac
done
# Other berth services (a second name) keep the binaries and the data.
for other in "${SYSTEMD_DIR}"/berth*.service /etc/init.d/berth*; do
	if [ -e "\${other}" ]; then
		rm -f "${UNINSTALL_BERTH_SH}"
		exit 0
	fi
done
rm -rf /etc/berth /var/lib/berth /run/berth /run/flannel /var/lib/kubelet /var/log/pods /var/log/containers
rm -f "${BIN_DIR}/berth" "${BIN_DIR}/berth-agent" "${KILLALL_BERTH_SH}" "${UNINSTALL_BERTH_SH}"
EOF
}

# write_if_changed FILE MODE < content: replaces FILE only when the content
# differs, and records that something changed (so the service restarts).
write_if_changed() {
	new="${TMP_DIR:-/tmp}/.berth-install-new.$$"
	cat >"${new}"
	if [ -f "$1" ] && cmp -s "${new}" "$1" && [ "$(stat -c %a "$1")" = "$2" ]; then
		rm -f "${new}"
		info "unchanged $1"
		return 0
	fi
	info "writing $1"
	${SUDO} mkdir -p "$(dirname "$1")"
	${SUDO} cp "${new}" "$1.new"
	${SUDO} chmod "$2" "$1.new"
	${SUDO} mv -f "$1.new" "$1"
	rm -f "${new}"
	CONFIG_CHANGED=true
}

# --- service -----------------------------------------------------------------
# quote_env VALUE: a systemd EnvironmentFile / sh double-quoted value.
# shellcheck disable=SC2016 # the sed expressions are literal on purpose
quote_env() { printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\$/\\$/g' -e 's/`/\\`/g')"; }

create_env_file() {
	if [ "${HAS_OPENRC}" = true ]; then
		FILE_BERTH_ENV="/etc/berth/${SYSTEM_NAME}.env"
	else
		FILE_BERTH_ENV="${SYSTEMD_DIR}/${SERVICE_BERTH}.env"
	fi
	umask 077
	env | grep -E '^(BERTH_|CONTAINERD_|KINE_|HTTP_PROXY=|HTTPS_PROXY=|NO_PROXY=|http_proxy=|https_proxy=|no_proxy=)' | grep -v -E '^INSTALL_BERTH_' | sort | while IFS= read -r line; do
		printf '%s=%s\n' "${line%%=*}" "$(quote_env "${line#*=}")"
	done | write_if_changed "${FILE_BERTH_ENV}" 600
	umask 022
}

# exec_args: INSTALL_BERTH_EXEC as ExecStart arguments, one per line, in
# systemd's double quotes ($ and % doubled: systemd expands them). xargs
# splits it honouring quotes, without running anything in it.
exec_args() {
	printf '%s\n' "${INSTALL_BERTH_EXEC}" | xargs -n1 printf '%s\n' | while IFS= read -r arg; do
		printf '    "%s" \\\n' "$(printf '%s' "${arg}" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\$/$$/g' -e 's/%/%%/g')"
	done
}

create_systemd_service_file() {
	write_if_changed "${SYSTEMD_DIR}/${SERVICE_BERTH}" 644 <<EOF
[Unit]
Description=berth - lightweight Kubernetes (${CMD_BERTH})
Documentation=https://github.com/berth-io/berth
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-${SYSTEMD_DIR}/${SERVICE_BERTH}.env
KillMode=process
Delegate=yes
User=root
# Containers inherit these; leave accounting to the kernel.
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStart=${BIN_DIR}/${BIN_NAME} \\
$(exec_args)

EOF
	# The last line of ExecStart ends in a backslash followed by an empty
	# line, which ends the command.
}

create_openrc_service_file() {
	LOG_FILE="/var/log/${SYSTEM_NAME}.log"
	write_if_changed "/etc/init.d/${SYSTEM_NAME}" 755 <<EOF
#!/sbin/openrc-run

depend() {
    after network-online
    want cgroups
}

start_pre() {
    /sbin/modprobe br_netfilter 2>/dev/null || true
    /sbin/modprobe overlay 2>/dev/null || true
}

supervisor=supervise-daemon
name=${SYSTEM_NAME}
command="${BIN_DIR}/${BIN_NAME}"
command_args="$(printf '%s' "${INSTALL_BERTH_EXEC}")"
output_log=${LOG_FILE}
error_log=${LOG_FILE}
pidfile="/var/run/${SYSTEM_NAME}.pid"
respawn_delay=5
respawn_max=0

set -o allexport
if [ -f /etc/environment ]; then . /etc/environment; fi
if [ -f ${FILE_BERTH_ENV} ]; then . ${FILE_BERTH_ENV}; fi
set +o allexport
EOF
	${SUDO} tee "/etc/logrotate.d/${SYSTEM_NAME}" >/dev/null <<EOF
${LOG_FILE} {
	missingok
	notifempty
	copytruncate
}
EOF
}

create_service_file() {
	if [ "${HAS_SYSTEMD}" = true ]; then
		create_systemd_service_file
	elif [ "${HAS_OPENRC}" = true ]; then
		create_openrc_service_file
	fi
}

service_enable_and_start() {
	if [ "${HAS_SYSTEMD}" = true ] && ! systemd_running; then
		warn "systemd is not running here: ${SERVICE_BERTH} is written but not enabled or started"
		return
	fi
	if [ "${INSTALL_BERTH_SKIP_ENABLE}" != true ]; then
		if [ "${HAS_SYSTEMD}" = true ]; then
			info "enabling ${SERVICE_BERTH}"
			${SUDO} systemctl enable "${SERVICE_BERTH}" >/dev/null
			${SUDO} systemctl daemon-reload >/dev/null
		elif [ "${HAS_OPENRC}" = true ]; then
			info "enabling ${SYSTEM_NAME} (OpenRC)"
			${SUDO} rc-update add "${SYSTEM_NAME}" default >/dev/null
		fi
	fi
	[ "${INSTALL_BERTH_SKIP_START}" = true ] && return
	if [ "${BINARY_CHANGED}" != true ] && [ "${CONFIG_CHANGED}" != true ] && [ "${INSTALL_BERTH_FORCE_RESTART}" != true ]; then
		info "nothing changed: ${SYSTEM_NAME} is not restarted"
		return
	fi
	if [ "${HAS_SYSTEMD}" = true ]; then
		info "starting ${SERVICE_BERTH}"
		${SUDO} systemctl restart "${SERVICE_BERTH}"
	elif [ "${HAS_OPENRC}" = true ]; then
		info "starting ${SYSTEM_NAME} (OpenRC)"
		${SUDO} "/etc/init.d/${SYSTEM_NAME}" restart
	fi
}

# --- main ----------------------------------------------------------------------
main() {
	# Arguments after `sh -s -` add to INSTALL_BERTH_EXEC, as with k3s.
	for arg in "$@"; do
		case "${arg}" in
		*\ * | *\'* | *\"*) arg="'$(printf '%s' "${arg}" | sed "s/'/'\\\\''/g")'" ;;
		esac
		INSTALL_BERTH_EXEC="${INSTALL_BERTH_EXEC}${INSTALL_BERTH_EXEC:+ }${arg}"
	done
	setup_env
	verify_system
	setup_verify_arch
	if [ "${INSTALL_BERTH_SKIP_DOWNLOAD}" = true ] || [ "${INSTALL_BERTH_SKIP_DOWNLOAD}" = binary ]; then
		verify_existing_binary
		TMP_DIR=$(mktemp -d -t berth-install.XXXXXXXXXX)
		trap 'rm -rf "${TMP_DIR}"' EXIT
	else
		download_and_verify
		install_binary
	fi
	create_symlinks
	create_killall
	create_uninstall
	if [ "${HAS_SYSTEMD}" != true ] && [ "${HAS_OPENRC}" != true ]; then
		info "installed ${BIN_DIR}/${BIN_NAME}; no service was written"
		return
	fi
	create_env_file
	create_service_file
	service_enable_and_start
}

main "$@"
