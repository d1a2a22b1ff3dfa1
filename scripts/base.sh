#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Make the base tree: a git repository at $KP_LINUX whose tag kp-base is one
# commit holding Debian's linux-source-$KP_BASE_SERIES (scripts/base.conf) as
# shipped.  Idempotent: an existing tree made from the same package version
# is reused.
#
# With KERNEL_SRC=/path, the user's tree is used instead: a git tree gets a
# detached worktree at its HEAD (the user's branches are not touched); a plain
# tree is copied into a new repository with one base commit.
KP_STEP=base
. "$(dirname "$0")/lib/common.sh"
. "$KP_TOP/scripts/base.conf"

: >"$KP_LOGS/base.log"

base_from_kernel_src() {
	local src=$KERNEL_SRC
	[ -f "$src/Makefile" ] && grep -q '^PATCHLEVEL' "$src/Makefile" ||
		kp_die "KERNEL_SRC=$src is not a kernel source tree"
	if git -C "$src" rev-parse --verify -q HEAD >/dev/null 2>&1; then
		local head
		head=$(git -C "$src" rev-parse HEAD)
		if [ -d "$KP_LINUX" ] &&
		   [ "$(git -C "$KP_LINUX" rev-parse -q --verify kp-base 2>/dev/null)" = "$head" ]; then
			kp_say "reusing worktree $KP_LINUX of $src at $head"
		else
			if [ -e "$KP_LINUX" ]; then
				git -C "$src" worktree remove --force "$KP_LINUX" >>"$KP_LOGS/base.log" 2>&1 ||
					rm -rf "$KP_LINUX"
				git -C "$src" worktree prune
			fi
			kp_log git -C "$src" worktree add --detach "$KP_LINUX" "$head" ||
				kp_die "cannot add a worktree of $src at $KP_LINUX"
			kp_log git -C "$KP_LINUX" tag -f kp-base "$head"
		fi
		printf 'source=%s\nversion=%s\ncommit=%s\n' "$src" \
			"$(make -s -C "$KP_LINUX" kernelversion 2>/dev/null)" "$head" >"$KP_TREE/base.info"
	else
		kp_say "KERNEL_SRC is not a git tree: copying it into $KP_LINUX"
		rm -rf "$KP_LINUX"
		mkdir -p "$KP_LINUX"
		kp_log cp -a "$src/." "$KP_LINUX/" || kp_die "cannot copy $src"
		make_base_commit "tree copied from $src"
		printf 'source=%s\nversion=%s\ncommit=%s\n' "$src" \
			"$(make -s -C "$KP_LINUX" kernelversion 2>/dev/null)" \
			"$(git -C "$KP_LINUX" rev-parse kp-base)" >"$KP_TREE/base.info"
	fi
}

# make_base_commit DESCRIPTION: commit the tree at $KP_LINUX as it is.
make_base_commit() {
	local version
	version=$(make -s -C "$KP_LINUX" kernelversion 2>/dev/null) ||
		kp_die "cannot read the kernel version of $KP_LINUX"
	(
		cd "$KP_LINUX" || exit 1
		git init -q -b kp-base-branch . &&
		git config gc.auto 0 &&
		git add -A -f . &&
		GIT_AUTHOR_NAME="kvm-protmem base" GIT_AUTHOR_EMAIL="base@kvm-protmem.invalid" \
		GIT_COMMITTER_NAME="kvm-protmem base" GIT_COMMITTER_EMAIL="base@kvm-protmem.invalid" \
		GIT_AUTHOR_DATE="$KP_BASE_DATE" GIT_COMMITTER_DATE="$KP_BASE_DATE" \
			git commit -q --no-gpg-sign -m "Linux $version" -m "$1" &&
		git tag -f kp-base
	) >>"$KP_LOGS/base.log" 2>&1 || kp_die "cannot make the base commit"
}

# Pick the package version: the pinned one, else the newest $KP_BASE_SERIES.y on offer.
pick_version() {
	local versions
	versions=$(apt-cache madison "$KP_BASE_PACKAGE" 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}')
	[ -n "$versions" ] ||
		kp_die "no $KP_BASE_PACKAGE in the configured apt suites (run scripts/kp setup, which adds $KP_BASE_SUITES)"
	if grep -qxF "$KP_BASE_DEB_VERSION" <<<"$versions"; then
		echo "$KP_BASE_DEB_VERSION"
		return
	fi
	local v
	v=$(printf '%s\n' "$versions" | awk -v s="$KP_BASE_SERIES." 'index($0, s) == 1' | sort -V | tail -n1)
	[ -n "$v" ] || kp_die "no $KP_BASE_SERIES.y version of $KP_BASE_PACKAGE is on offer (have: $(echo $versions))"
	kp_say "WARNING: pinned $KP_BASE_PACKAGE $KP_BASE_DEB_VERSION is gone from the archive; using $v."
	kp_say "WARNING: the base commit differs from the one patches/ records; see README 'Base tree'."
	echo "$v"
}

base_from_debian() {
	kp_need apt-cache:apt dpkg-deb:dpkg tar xz:xz-utils git make
	local ver deb tarball
	ver=$(pick_version) || exit 1
	if [ -f "$KP_TREE/base.info" ] && grep -qxF "deb_version=$ver" "$KP_TREE/base.info" &&
	   git -C "$KP_LINUX" rev-parse -q --verify kp-base >/dev/null 2>&1; then
		kp_say "reusing $KP_LINUX ($KP_BASE_PACKAGE $ver, $(git -C "$KP_LINUX" rev-parse --short kp-base))"
		return
	fi
	mkdir -p "$KP_WORK/deb"
	deb=$KP_WORK/deb/${KP_BASE_PACKAGE}_${ver#*:}_all.deb
	if [ ! -s "$deb" ]; then
		kp_say "downloading $KP_BASE_PACKAGE $ver"
		# apt's sandbox user cannot write here; download as root quietly.
		(cd "$KP_WORK/deb" && apt-get -o APT::Sandbox::User=root download "$KP_BASE_PACKAGE=$ver") \
			>>"$KP_LOGS/base.log" 2>&1 && [ -s "$deb" ] ||
			kp_die "apt-get download $KP_BASE_PACKAGE=$ver failed (is the Debian archive reachable?)"
	fi
	kp_say "unpacking $(basename "$deb")"
	rm -rf "$KP_LINUX" "$KP_TREE/unpack"
	mkdir -p "$KP_TREE/unpack"
	dpkg-deb --fsys-tarfile "$deb" |
		tar -x -O "./usr/src/$KP_BASE_PACKAGE.tar.xz" |
		tar -xJ -C "$KP_TREE/unpack" ||
		kp_die "cannot unpack $deb"
	mv "$KP_TREE/unpack/$KP_BASE_PACKAGE" "$KP_LINUX" && rmdir "$KP_TREE/unpack" ||
		kp_die "unexpected layout in $deb"
	# Debian's tarball appends a block to .gitignore that ignores the whole
	# top level; with it, new files are silently left out of commits.
	python3 - "$KP_LINUX/.gitignore" <<'PY' || kp_die "cannot fix .gitignore"
import sys
p = sys.argv[1]
lines = open(p).read().split('\n')
for i, l in enumerate(lines):
    if l.startswith('# Debian packaging: ignore everything at the top level'):
        j = i - 1 if i > 0 and lines[i - 1] == '#' else i
        while j > 0 and lines[j - 1] == '':
            j -= 1
        open(p, 'w').write('\n'.join(lines[:j]) + '\n')
        break
PY
	make_base_commit "Debian $KP_BASE_PACKAGE $ver, as shipped (Debian's patches applied), less the block that Debian's packaging appends to .gitignore."
	printf 'source=debian\npackage=%s\ndeb_version=%s\nversion=%s\ncommit=%s\n' \
		"$KP_BASE_PACKAGE" "$ver" "$(make -s -C "$KP_LINUX" kernelversion)" \
		"$(git -C "$KP_LINUX" rev-parse kp-base)" >"$KP_TREE/base.info"
}

kp_timer_start
if [ -n "${KERNEL_SRC:-}" ]; then
	base_from_kernel_src
else
	base_from_debian
fi
kp_say "base: $(tr '\n' ' ' <"$KP_TREE/base.info")($(kp_timer_end)s)"
