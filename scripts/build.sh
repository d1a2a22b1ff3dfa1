#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Configure and build the kernel in $KP_BUILD (out of tree, incremental,
# ccache) from the tree that scripts/apply.sh prepared, then the UAPI
# headers that the selftests use.
#
# The configuration is allnoconfig plus configs/kvm-protmem.config (and
# configs/debug.config with KP_VARIANT=debug); every
# option the fragment asks for must be in the result, or the step fails (an
# option silently dropped by Kconfig, e.g. RUST when the toolchain is not
# usable, would otherwise make the tests meaningless).
KP_STEP=build
. "$(dirname "$0")/lib/common.sh"

: >"$KP_LOGS/build.log"
kp_need clang-19 ld.lld-19:lld-19 ccache rustc:rustc-web bindgen:bindgen-cli flex bison bc
[ -d "$KP_LINUX/.git" ] || kp_die "no kernel tree at $KP_LINUX (run scripts/kp apply)"

FRAGMENT=${KP_CONFIG_FRAGMENT:-$KP_TOP/configs/kvm-protmem.config}
case "${KP_VARIANT:-}" in
debug | kasan)
	# The debug kernel: the test kernel's options, then the debug ones
	# (and for kasan, KASAN's).
	mkdir -p "$KP_BUILD"
	extra=()
	[ "$KP_VARIANT" = kasan ] && extra=("$KP_TOP/configs/kasan.config")
	cat "$FRAGMENT" "$KP_TOP/configs/debug.config" "${extra[@]}" \
		>"$KP_BUILD/kp-$KP_VARIANT.config"
	FRAGMENT=$KP_BUILD/kp-$KP_VARIANT.config
	;;
esac
export CCACHE_DIR=${CCACHE_DIR:-$KP_WORK/ccache}
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-8G}
# ccache must not hash the absolute paths of the build directory away from
# earlier runs; the tree lives at a fixed path, so this is safe.
export CCACHE_BASEDIR=$KP_TREE
export CCACHE_NOHASHDIR=1
# Let ccache hit across rebuilds even though Kbuild changes the timestamps.
export CCACHE_SLOPPINESS=time_macros,include_file_mtime,include_file_ctime
# Reproducible-ish builds: the version string does not change every time.
export KBUILD_BUILD_TIMESTAMP="${KBUILD_BUILD_TIMESTAMP:-2026-01-01}"
export KBUILD_BUILD_USER=kvm-protmem KBUILD_BUILD_HOST=workbench

# Rust is compiled by clippy-driver (CLIPPY=1), so that 'lint' can check the
# build log for clippy's warnings; KP_CLIPPY=0 uses plain rustc.
clippy=
[ "${KP_CLIPPY:-1}" = 0 ] || clippy=CLIPPY=1
# shellcheck disable=SC2046
MAKE="make $(kp_make_flags) $clippy CC=ccache\\ clang-19"
mk() { eval "$MAKE" '"$@"'; }

kp_timer_start
mkdir -p "$KP_BUILD"

kp_say "rustavailable"
if ! mk rustavailable >>"$KP_LOGS/build.log" 2>&1; then
	grep -E '\*\*\*' "$KP_LOGS/build.log" | sed 's/^/  /' >&2
	kp_die "Rust is not available for the kernel build: the lines above say what is missing"
fi

kp_say "config: allnoconfig + $(basename "$FRAGMENT")"
KCONFIG_ALLCONFIG=$FRAGMENT kp_log mk allnoconfig || kp_die "allnoconfig failed"
dropped=$(grep -E '^CONFIG_[A-Z0-9_]+=' "$FRAGMENT" | while IFS= read -r line; do
	grep -qxF "$line" "$KP_BUILD/.config" || echo "$line"
done)
if [ -n "$dropped" ]; then
	# Building an early patch of the series (scripts/kp bisect): options
	# that later patches add cannot be set yet.
	[ -n "${KP_CONFIG_ALLOW_DROPPED:-}" ] ||
		kp_die "Kconfig dropped options of the fragment: $(echo $dropped) (check their dependencies)"
	kp_say "not in this tree's Kconfig (allowed): $(echo $dropped)"
fi

kp_say "kernel (make -j$KP_JOBS, log $KP_LOGS/build.log)"
if ! kp_log mk bzImage modules; then
	grep -E 'error:|Error [0-9]|\*\*\*' "$KP_LOGS/build.log" | head -n 20 | sed 's/^/  /' >&2
	kp_die "kernel build failed"
fi
kp_log mk headers || kp_die "make headers failed"
kp_say "built $(cat "$KP_BUILD/include/config/kernel.release") ($(kp_timer_end)s; ccache: $(ccache -s 2>/dev/null | awk '/Hits:/ {print $2 "/" $4; exit}') hits)"
