#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Install what the workbench needs on a Debian bookworm machine, as root.
# Idempotent: a second run installs nothing and takes seconds.
#
#   - Debian packages (rustc-web & co from bookworm-security, clang/LLVM 19,
#     QEMU, busybox-static, build tools; libcap-dev, which mm's memfd_secret
#     selftest links with);
#   - bindgen-cli from crates.io (cargo install --locked), at least 0.71.1;
#   - the apt suite that carries the base's linux-source (trixie-backports, else
#     sid), with pin priority 50 so that nothing else is taken from it.
KP_STEP=setup
. "$(dirname "$0")/lib/common.sh"
. "$KP_TOP/scripts/base.conf"

: >"$KP_LOGS/setup.log"

KP_PACKAGES="rustc-web rust-web-src rustfmt-web rust-web-clippy cargo-web
clang-19 lld-19 llvm-19 libclang-19-dev
qemu-system-x86 busybox-static cpio
make gcc libc6-dev libcap-dev bc flex bison libelf-dev libssl-dev ccache rsync
python3 python3-docutils python3-sphinx xz-utils git kmod perl"
KP_BINDGEN_MIN=0.71.1

[ "$(id -u)" = 0 ] || kp_die "run as root (it installs Debian packages)"
kp_need apt-get:apt dpkg

apt_updated=
apt_update() {
	[ -n "$apt_updated" ] && return
	kp_say "apt-get update"
	kp_log apt-get update || kp_die "apt-get update failed (is the Debian archive reachable?)"
	apt_updated=1
}

# add_suite SUITE: an apt source for SUITE, pinned low.
add_suite() {
	local suite=$1 name=kvm-protmem-$1
	[ -f "/etc/apt/sources.list.d/$name.sources" ] && return 1
	cat >"/etc/apt/sources.list.d/$name.sources" <<EOT
Types: deb
URIs: http://deb.debian.org/debian
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOT
	cat >"/etc/apt/preferences.d/$name" <<EOT
# kvm-protmem: only $KP_BASE_PACKAGE is wanted from $suite.
Package: *
Pin: release n=$suite
Pin-Priority: 50
EOT
	kp_say "added apt suite $suite (pin 50)"
}

kp_timer_start

missing=
for p in $KP_PACKAGES; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
	apt_update
	kp_say "installing:$missing"
	DEBIAN_FRONTEND=noninteractive kp_log apt-get install -y --no-install-recommends $missing ||
		kp_die "apt-get install failed for:$missing"
fi

# The base tree's suite: the first of $KP_BASE_SUITES that has a $KP_BASE_SERIES source.
have_base() {
	local m
	m=$(apt-cache madison "$KP_BASE_PACKAGE" 2>/dev/null)
	[[ $m == *"| $KP_BASE_SERIES."* ]]
}
if [ -n "${KERNEL_SRC:-}" ]; then
	kp_say "KERNEL_SRC is set: the Debian base package is not needed"
elif ! have_base; then
	for suite in $KP_BASE_SUITES; do
		add_suite "$suite" && apt_updated=
		apt_update
		have_base && break
		kp_say "WARNING: $suite has no $KP_BASE_PACKAGE $KP_BASE_SERIES.y; trying the next suite"
	done
	have_base || kp_die "no suite of ($KP_BASE_SUITES) offers $KP_BASE_PACKAGE $KP_BASE_SERIES.y"
fi
[ -n "${KERNEL_SRC:-}" ] ||
	kp_say "$KP_BASE_PACKAGE on offer: $(apt-cache madison "$KP_BASE_PACKAGE" | awk -F'|' '{gsub(/ /,"",$2); gsub(/^ +| +$/,"",$3); printf "%s (%s) ", $2, $3}')"

# bindgen-cli from crates.io, built by Debian's cargo-web unless a newer
# cargo is already first on PATH.
bindgen_ok() {
	local v
	v=$(bindgen --version 2>/dev/null | awk '{print $2}')
	[ -n "$v" ] && [ "$(printf '%s\n%s\n' "$KP_BINDGEN_MIN" "$v" | sort -V | head -n1)" = "$KP_BINDGEN_MIN" ]
}
export PATH=$PATH:/root/.cargo/bin:/usr/local/bin
if ! bindgen_ok; then
	cargo=$(command -v cargo) || kp_die "no cargo (Debian package cargo-web)"
	kp_say "cargo install --locked bindgen-cli (a few minutes)"
	kp_log "$cargo" install --locked --root /usr/local bindgen-cli ||
		kp_die "cargo install bindgen-cli failed (is crates.io reachable?)"
	bindgen_ok || kp_die "bindgen >= $KP_BINDGEN_MIN not found after install"
fi

kp_say "rustc $(/usr/bin/rustc --version | awk '{print $2}'), bindgen $(bindgen --version | awk '{print $2}'), clang $(clang-19 --version | sed -n '1s/.*version \([^ ]*\).*/\1/p'), qemu $(qemu-system-x86_64 --version | head -n1 | awk '{print $4}') ($(kp_timer_end)s)"
