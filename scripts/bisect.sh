#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Build every patch of the series on its own, in order: the series must be
# bisectable.  Checks out each commit of kp-base..kvm-protmem in $KP_LINUX
# and builds it incrementally in $KP_BUILD (options of the config fragment
# that only later patches add are allowed to be missing), then returns to
# the branch.  Run after scripts/kp apply.  KP_BISECT_FROM=N starts at patch
# N (the patches before it are taken as built), e.g. to check the patches
# just added.
KP_STEP=bisect
. "$(dirname "$0")/lib/common.sh"

: >"$KP_LOGS/bisect.log"
cd "$KP_LINUX" || kp_die "no tree at $KP_LINUX"
[ "$(git rev-parse HEAD)" = "$(cat "$KP_TREE/applied" 2>/dev/null)" ] ||
	kp_die "the branch is not what 'apply' made of patches/ (run scripts/kp apply)"
branch=$(git rev-parse --abbrev-ref HEAD)
trap 'git -C "$KP_LINUX" checkout -q "$branch"' EXIT

case "${KP_BISECT_FROM:-1}" in
'' | *[!0-9]*) kp_die "KP_BISECT_FROM must be a patch number, not '$KP_BISECT_FROM'" ;;
esac
n=0
for c in $(git rev-list --reverse kp-base..HEAD); do
	n=$((n + 1))
	[ "$n" -lt "${KP_BISECT_FROM:-1}" ] && continue
	subject=$(git log -1 --format=%s "$c")
	git checkout -q "$c" || kp_die "cannot check out $c"
	kp_timer_start
	KP_CONFIG_ALLOW_DROPPED=1 "$KP_TOP/scripts/build.sh" >>"$KP_LOGS/bisect.log" 2>&1 ||
		kp_die "patch $n does not build on its own: $subject" "$KP_LOGS/build.log"
	echo "kp: bisect: patch $n builds ($(kp_timer_end)s): $subject"
done
if [ "${KP_BISECT_FROM:-1}" -gt 1 ]; then
	kp_say "patches $KP_BISECT_FROM-$n build on their own (1-$((KP_BISECT_FROM - 1)) not built)"
else
	kp_say "all $n patches build on their own"
fi
