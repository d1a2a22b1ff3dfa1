# SPDX-License-Identifier: GPL-2.0
# Common helpers for the kvm-protmem workbench scripts.  Sourced, not run.
#
# Every step logs to $KP_WORK/logs/<step>.log.  A failing step prints one
# line "kp: <step>: FAILED: <reason> (log: <path>)" and exits non-zero.

set -o pipefail

KP_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KP_WORK=${KP_WORK:-/var/tmp/kvm-protmem}
# Debian's base and a user's KERNEL_SRC tree each get a directory of their
# own, so switching between them never clobbers a build.
if [ -n "${KERNEL_SRC:-}" ]; then
	KP_TREE=${KP_TREE:-$KP_WORK/ext}
else
	KP_TREE=${KP_TREE:-$KP_WORK/debian}
fi
KP_LINUX=$KP_TREE/linux
# KP_VARIANT=debug: the debug kernel (configs/debug.config on top of
# configs/kvm-protmem.config), built, booted and logged in directories of its
# own, from the same tree.  KP_VARIANT=kasan: the debug kernel with
# configs/kasan.config on top (scripts/kp test runs it last; scripts/kp kasan
# runs it alone).
case "${KP_VARIANT:-}" in
'') KP_SUFFIX= ;;
debug) KP_SUFFIX=-debug ;;
kasan) KP_SUFFIX=-kasan ;;
*)
	echo "kp: unknown KP_VARIANT '$KP_VARIANT' (known: debug, kasan)" >&2
	exit 2
	;;
esac
KP_BUILD=$KP_TREE/build$KP_SUFFIX
KP_RUN=$KP_TREE/run$KP_SUFFIX
KP_LOGS=$KP_TREE/logs$KP_SUFFIX
KP_JOBS=${KP_JOBS:-$(nproc)}
KP_LLVM=${KP_LLVM:--19}

# The kernel's Rust support needs Debian's rustc-web (with rust-src), not
# rustup's toolchain that may sit first on PATH.
# bindgen is found where 'cargo install' put it.
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH:/usr/local/bin:$HOME/.cargo/bin

mkdir -p "$KP_LOGS"

KP_STEP=${KP_STEP:-kp}

kp_say() { printf 'kp: %s: %s\n' "$KP_STEP" "$*" >&2; }

# kp_die REASON [LOG]
kp_die() {
	local log=${2:-$KP_LOGS/$KP_STEP.log}
	printf 'kp: %s: FAILED: %s (log: %s)\n' "$KP_STEP" "$1" "$log" >&2
	exit 1
}

# kp_need TOOL[:PACKAGE]... : fail, naming the package, when a tool is missing.
kp_need() {
	local t tool pkg
	for t in "$@"; do
		tool=${t%%:*}
		pkg=${t#*:}
		[ "$pkg" = "$t" ] && pkg=$tool
		command -v "$tool" >/dev/null 2>&1 ||
			kp_die "missing tool '$tool' (Debian package $pkg; 'scripts/kp setup' installs it)"
	done
}

# kp_log CMD... : run CMD with its output appended to the step log.
kp_log() {
	"$@" >>"$KP_LOGS/$KP_STEP.log" 2>&1
}

kp_timer_start() { KP_T0=$(date +%s); }
kp_timer_end() { echo $(($(date +%s) - KP_T0)); }

# kp_selftest NAME: split a test's name in configs/selftests.list into
# kp_dir, its directory below tools/testing/selftests, and kp_prog, the
# program in it.  "DIR:PROGRAM" (mm:memfd_secret) names a test of any
# directory; a name without a colon is a KVM selftest, as the list's lines
# were before other directories' tests joined it.  scripts/guest/init splits
# the names the same way.
# shellcheck disable=SC2034 # kp_dir and kp_prog are the caller's
kp_selftest() {
	case $1 in
	*:*) kp_dir=${1%%:*} kp_prog=${1#*:} ;;
	*) kp_dir=kvm kp_prog=$1 ;;
	esac
}

# Make flags for every kernel build step.
kp_make_flags() {
	echo "-C $KP_LINUX O=$KP_BUILD ARCH=x86_64 LLVM=$KP_LLVM -j$KP_JOBS"
}
