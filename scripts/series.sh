#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The series is the branch kvm-protmem of $KP_LINUX, on tag kp-base;
# patches/ is its git format-patch output with fixed options
# (scripts/series.conf), and the readable copies (rust-kvm-protmem/,
# Documentation/, tools-testing/) hold the final version of the files it adds.
# MAINTAINERS-snippet and cover-letter.txt (scripts/cover-letter.in filled in
# from the branch and from results/) are generated with them.
#
#   series.sh export   write patches/ and the readable copies from the branch
#   series.sh check    regenerate both from the branch that 'apply' made out
#                      of patches/ and fail on any difference
#
# Workflow: scripts/kp apply; edit and commit in $KP_LINUX (git rebase -i for
# an earlier patch); scripts/kp series export; commit the result here.
KP_STEP=series
. "$(dirname "$0")/lib/common.sh"
. "$KP_TOP/scripts/series.conf"
. "$KP_TOP/scripts/base.conf"

: >"$KP_LOGS/series.log"
kp_need git diff
git -C "$KP_LINUX" rev-parse -q --verify kp-base >/dev/null 2>&1 ||
	kp_die "no base tree at $KP_LINUX (run scripts/kp base)"

# generate DIR: patches into DIR/patches, readable copies into DIR/<mirror>.
generate() {
	local dir=$1 f rel m kprefix rprefix
	mkdir -p "$dir/patches"
	# shellcheck disable=SC2086
	GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 \
		git -C "$KP_LINUX" $KP_GIT_CONFIG format-patch $KP_FORMAT_PATCH_OPTS \
		--base=kp-base -o "$dir/patches" kp-base..kvm-protmem >>"$KP_LOGS/series.log" 2>&1 ||
		kp_die "git format-patch failed"
	# MAINTAINERS-snippet: the entries of MAINTAINERS that the series adds
	# to or changes, as they are at the end of the series.
	git -C "$KP_LINUX" show kvm-protmem:MAINTAINERS >"$dir/.maintainers" &&
	git -C "$KP_LINUX" diff -U0 kp-base kvm-protmem -- MAINTAINERS >"$dir/.diff" &&
	python3 - "$dir/.maintainers" "$dir/.diff" >"$dir/MAINTAINERS-snippet" <<'PY' ||
import re
import sys
lines = open(sys.argv[1]).read().split('\n')
changed = set()
for m in re.finditer(r'^@@ -\S+ \+(\d+)(?:,(\d+))? @@', open(sys.argv[2]).read(), re.M):
    start, count = int(m.group(1)), int(m.group(2) or 1)
    changed.update(range(start, start + count))
out, block = [], []
for n, line in enumerate(lines + [''], 1):
    if line:
        block.append((n, line))
        continue
    if block and any(k in changed for k, _ in block):
        out.append('\n'.join(l for _, l in block))
    block = []
print('\n\n'.join(out) if out else '(The series does not change MAINTAINERS yet.)')
PY
		kp_die "cannot extract the MAINTAINERS entries"
	rm -f "$dir/.maintainers" "$dir/.diff"
	# cover-letter.txt: scripts/cover-letter.in with the subjects, the
	# diffstat and the figures that 'scripts/kp record' put in results/.
	git -C "$KP_LINUX" log --reverse --format=%s kp-base..kvm-protmem >"$dir/.subjects" &&
	# shellcheck disable=SC2086
	GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 \
		git -C "$KP_LINUX" $KP_GIT_CONFIG diff --stat=72 kp-base kvm-protmem >"$dir/.diffstat" &&
	# The Rust/C boundary, counted in the branch's files.
	mkdir -p "$dir/.boundary" &&
	for f in virt/kvm/protmem.rs include/linux/kvm_protmem.h rust/kernel/mm/direct_map.rs \
		rust/kernel/mm/filemap.rs rust/kernel/mm/mempolicy.rs; do
		git -C "$KP_LINUX" show "kvm-protmem:$f" >"$dir/.boundary/${f##*/}" ||
			kp_die "cannot read $f of the branch"
	done &&
	python3 "$KP_TOP/scripts/cover-letter.py" "$KP_TOP/scripts/cover-letter.in" \
		"$KP_TOP/results" "$(git -C "$KP_LINUX" rev-parse kp-base)" \
		"$dir/.subjects" "$dir/.diffstat" "$KP_TREE/base.info" \
		"$dir/.boundary" >"$dir/cover-letter.txt" ||
		kp_die "cannot write the cover letter"
	rm -rf "$dir/.subjects" "$dir/.diffstat" "$dir/.boundary"
	git -C "$KP_LINUX" diff --name-only --diff-filter=A kp-base kvm-protmem | while read -r f; do
		for m in $KP_MIRRORS; do
			kprefix=${m%%:*}
			rprefix=${m#*:}
			case "$f" in
			"$kprefix"*)
				rel=$rprefix${f#"$kprefix"}
				mkdir -p "$dir/$(dirname "$rel")"
				git -C "$KP_LINUX" show "kvm-protmem:$f" >"$dir/$rel"
				break
				;;
			esac
		done
	done
}

mirror_dirs() {
	local m
	for m in $KP_MIRRORS; do echo "${m#*:}"; done | cut -d/ -f1 | sort -u
}

# The generated files under the repository's mirror directories (everything
# there but the hand-written README.md at the top of each).
listed() {
	local d
	(cd "$1" && for d in $(mirror_dirs); do
		[ -d "$d" ] && find "$d" -type f ! -path "$d/README.md"
	done; [ -d patches ] && find patches -name '*.patch'; echo MAINTAINERS-snippet
	echo cover-letter.txt) | LC_ALL=C sort
}

case "${1:-}" in
export)
	[ -z "$(git -C "$KP_LINUX" status --porcelain --untracked-files=no)" ] ||
		kp_die "uncommitted changes in $KP_LINUX: commit them first"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	generate "$tmp"
	listed "$KP_TOP" | (cd "$KP_TOP" && xargs -r rm -f)
	(cd "$tmp" && listed . | while read -r f; do
		mkdir -p "$KP_TOP/$(dirname "$f")"
		cp "$f" "$KP_TOP/$f"
	done)
	git -C "$KP_LINUX" rev-parse kvm-protmem >"$KP_TREE/applied"
	kp_say "exported $(ls "$tmp/patches" | wc -l) patches and $(listed "$tmp" | grep -vc '^patches/') readable files"
	;;
check)
	if [ -n "${KERNEL_SRC:-}" ]; then
		kp_say "skipped: patches/ is generated on the pinned Debian base, not on KERNEL_SRC"
		exit 0
	fi
	[ "$(git -C "$KP_LINUX" rev-parse kvm-protmem)" = "$(cat "$KP_TREE/applied" 2>/dev/null)" ] ||
		kp_die "the branch in $KP_LINUX is not what 'apply' made of patches/ (run scripts/kp apply)"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	generate "$tmp/gen"
	mkdir -p "$tmp/repo"
	listed "$KP_TOP" | (cd "$KP_TOP" && xargs -r cp --parents -t "$tmp/repo")
	ignore=()
	if ! grep -qxF "deb_version=$KP_BASE_DEB_VERSION" "$KP_TREE/base.info"; then
		kp_say "WARNING: base is not the pinned $KP_BASE_DEB_VERSION: base-commit lines not compared"
		ignore=(-I '^base-commit: ')
	fi
	if ! diff -ruN "${ignore[@]}" "$tmp/repo" "$tmp/gen" >"$KP_LOGS/series.diff"; then
		diffstat -p1 "$KP_LOGS/series.diff" 2>/dev/null >&2 ||
			grep '^diff ' "$KP_LOGS/series.diff" | sed 's/^/  /' >&2
		kp_die "patches/ or the readable copies differ from what the series generates (scripts/kp series export fixes it)" "$KP_LOGS/series.diff"
	fi
	kp_say "patches/ and the readable copies are what the series generates ($(ls "$tmp/gen/patches" | wc -l) patches)"
	;;
*)
	echo "usage: $0 export|check" >&2
	exit 2
	;;
esac
