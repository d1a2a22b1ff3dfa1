#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Put the series on the base: branch kvm-protmem of $KP_LINUX is reset to
# tag kp-base and patches/*.patch are applied with git am, one at a time, so
# that a failure names the patch and the hunk.  Files that the series does
# not change keep their timestamps, so the next build is incremental.
KP_STEP=apply
. "$(dirname "$0")/lib/common.sh"

: >"$KP_LOGS/apply.log"
kp_need git
git -C "$KP_LINUX" rev-parse -q --verify kp-base >/dev/null 2>&1 ||
	kp_die "no base tree at $KP_LINUX (run scripts/kp base)"

PATCHES=${KP_PATCHES:-$KP_TOP/patches}
export GIT_COMMITTER_NAME=${GIT_COMMITTER_NAME:-kvm-protmem workbench}
export GIT_COMMITTER_EMAIL=${GIT_COMMITTER_EMAIL:-workbench@kvm-protmem.invalid}
. "$KP_TOP/scripts/series.conf"

kp_timer_start
cd "$KP_LINUX" || exit 1
# Never throw away a developer's work on the branch: uncommitted changes, or
# commits made since the last apply that were not exported to patches/.
if [ -z "${KP_FORCE:-}" ]; then
	[ -z "$(git status --porcelain --untracked-files=no)" ] ||
		kp_die "uncommitted changes in $KP_LINUX: commit and 'scripts/kp series export' them, or KP_FORCE=1 to discard"
	head=$(git rev-parse HEAD)
	if [ "$head" != "$(git rev-parse kp-base)" ] && [ "$head" != "$(cat "$KP_TREE/applied" 2>/dev/null)" ]; then
		kp_die "branch in $KP_LINUX has commits that patches/ may not hold: 'scripts/kp series export' them, or KP_FORCE=1 to discard"
	fi
fi
git am --abort >/dev/null 2>&1
git checkout -q -f -B kvm-protmem kp-base >>"$KP_LOGS/apply.log" 2>&1 ||
	kp_die "cannot reset branch kvm-protmem to kp-base"
git clean -q -f -d >>"$KP_LOGS/apply.log" 2>&1

n=0
for p in "$PATCHES"/*.patch; do
	[ -e "$p" ] || break
	n=$((n + 1))
	if ! git am -q --no-3way "$p" >"$KP_LOGS/apply.last" 2>&1; then
		cat "$KP_LOGS/apply.last" >>"$KP_LOGS/apply.log"
		git am --abort >/dev/null 2>&1
		grep -E '^error:|^Patch failed' "$KP_LOGS/apply.last" | sed 's/^/  /' >&2
		kp_die "$(basename "$p") does not apply to $(git rev-parse --short kp-base) ($(sed -n 's/^version=//p' "$KP_TREE/base.info"))"
	fi
	cat "$KP_LOGS/apply.last" >>"$KP_LOGS/apply.log"
done
git rev-parse HEAD >"$KP_TREE/applied"
# Commits made in the Debian work tree are the series' own: give them its
# identity (a KERNEL_SRC repository keeps its owner's configuration).
if [ -z "${KERNEL_SRC:-}" ]; then
	git config user.name "$KP_AUTHOR_NAME"
	git config user.email "$KP_AUTHOR_EMAIL"
fi
[ $n = 0 ] && kp_say "patches/ is empty: testing the base as it is"
kp_say "applied $n patches onto kp-base $(git rev-parse --short kp-base); HEAD $(git rev-parse --short HEAD) ($(kp_timer_end)s)"
