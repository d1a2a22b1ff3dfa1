#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The checks a maintainer runs first, on the applied series:
#   - scripts/checkpatch.pl --strict on every patch of patches/: no error,
#     no warning, no check;
#   - make rustfmtcheck: the Rust code is rustfmt-clean.
# Clippy needs a build of its own (CLIPPY=1); see the README.
KP_STEP=lint
. "$(dirname "$0")/lib/common.sh"

: >"$KP_LOGS/lint.log"
[ -x "$KP_LINUX/scripts/checkpatch.pl" ] || kp_die "no tree at $KP_LINUX (run scripts/kp apply)"
kp_need perl

bad=0
n=0
for p in "$KP_TOP"/patches/*.patch; do
	[ -e "$p" ] || break
	n=$((n + 1))
	out=$("$KP_LINUX/scripts/checkpatch.pl" --strict --no-tree --show-types "$p" 2>&1)
	echo "$out" >>"$KP_LOGS/lint.log"
	if ! grep -q 'total: 0 errors, 0 warnings, 0 checks' <<<"$out"; then
		echo "kp: lint: checkpatch: $(basename "$p"):" >&2
		grep -E "^(ERROR|WARNING|CHECK)" <<<"$out" | sed "s/^/  /" >&2
		bad=$((bad + 1))
	fi
done
[ $bad = 0 ] || kp_die "checkpatch --strict complains about $bad of $n patches"

if [ -f "$KP_BUILD/.config" ]; then
	kp_log make -s -C "$KP_LINUX" O="$KP_BUILD" ARCH=x86_64 LLVM="$KP_LLVM" rustfmtcheck ||
		kp_die "make rustfmtcheck: Rust code is not rustfmt-clean"
fi
kp_say "checkpatch --strict clean on $n patches; rustfmtcheck clean"
