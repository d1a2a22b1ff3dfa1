#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The checks a maintainer runs first, on the applied series:
#   - scripts/checkpatch.pl --strict on every patch of patches/: no error,
#     no warning, no check;
#   - make rustfmtcheck: the Rust code is rustfmt-clean;
#   - scripts/kernel-doc -Wall: no new warning in the C files it touches.
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
# kernel-doc: no warning in the C files the series touches that the base
# did not have already (compared file by file, base against series).
kdoc_warnings() {
	git -C "$KP_LINUX" show "$1:$2" 2>/dev/null >"$KP_TREE/kdoc.tmp.${2##*.}" || return 0
	"$KP_LINUX/scripts/kernel-doc" -none -Wall "$KP_TREE/kdoc.tmp.${2##*.}" 2>&1 |
		sed "s|$KP_TREE/kdoc.tmp.[ch]|$2|"
}
kdoc=0
for f in $(git -C "$KP_LINUX" diff --name-only kp-base kvm-protmem -- '*.c' '*.h'); do
	new=$(kdoc_warnings kvm-protmem "$f" | sed -E 's/:[0-9]+([ :])/\1/' | sort)
	old=$(kdoc_warnings kp-base "$f" | sed -E 's/:[0-9]+([ :])/\1/' | sort)
	added=$(comm -23 <(echo "$new") <(echo "$old") | grep .)
	if [ -n "$added" ]; then
		echo "$added" | sed 's/^/  /' >&2
		kdoc=$((kdoc + 1))
	fi
done
rm -f "$KP_TREE"/kdoc.tmp.*
[ $kdoc = 0 ] || kp_die "kernel-doc: new warnings in $kdoc files"

kp_say "checkpatch --strict clean on $n patches; rustfmtcheck clean; no new kernel-doc warnings"
