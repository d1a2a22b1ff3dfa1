#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The checks a maintainer runs first, on the applied series:
#   - scripts/checkpatch.pl --strict on every patch of patches/: no error,
#     no warning, no check;
#   - make rustfmtcheck: the Rust code is rustfmt-clean;
#   - scripts/kernel-doc -Wall: no new warning in the C files it touches;
#   - docutils (scripts/rst-check.py): no new problem in the .rst files it
#     touches (Sphinx is not needed);
#   - the options the series adds to the KVM selftests' config fragment
#     are on after merging it onto x86_64_defconfig;
#   - clippy: no Rust warning in the last build's log (scripts/build.sh
#     compiles Rust with CLIPPY=1; an incremental build shows the crates it
#     recompiled, a build from scratch all of them).
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

# docutils: no problem in the .rst files the series touches that the base
# did not have already.
kp_need python3
python3 -c 'import docutils' 2>/dev/null ||
	kp_die "python3-docutils is missing ('scripts/kp setup' installs it)"
rst_problems() {
	git -C "$KP_LINUX" show "$1:$2" 2>/dev/null | python3 "$KP_TOP/scripts/rst-check.py" | sort
}
rst=0
nrst=0
for f in $(git -C "$KP_LINUX" diff --name-only kp-base kvm-protmem -- '*.rst'); do
	nrst=$((nrst + 1))
	added=$(comm -23 <(rst_problems kvm-protmem "$f") <(rst_problems kp-base "$f") | grep .)
	if [ -n "$added" ]; then
		echo "  $f:" >&2
		echo "$added" | sed 's/^/    /' >&2
		rst=$((rst + 1))
	fi
done
[ $rst = 0 ] || kp_die "docutils: new problems in $rst .rst files"

# Sphinx: Documentation/virt, where the series adds and changes documents,
# builds without a warning (Debian has no graphviz here: its notice aside).
kp_need sphinx-build:python3-sphinx
if ! make -C "$KP_LINUX" O="$KP_TREE/htmldocs" htmldocs SPHINXDIRS=virt \
	>"$KP_LOGS/htmldocs.log" 2>&1; then
	kp_die "make htmldocs SPHINXDIRS=virt failed" "$KP_LOGS/htmldocs.log"
fi
sw=$(grep -E 'WARNING|ERROR' "$KP_LOGS/htmldocs.log" | grep -v 'dot(1) not found')
if [ -n "$sw" ]; then
	echo "$sw" | head -n 20 | sed 's/^/  /' >&2
	kp_die "Sphinx warnings in Documentation/virt" "$KP_LOGS/htmldocs.log"
fi

# The KVM selftests' config fragment: every option the series adds to it
# is on after merge_config.sh of the fragment onto x86_64_defconfig (an
# option whose dependencies the fragment misses would be dropped silently).
frag=tools/testing/selftests/kvm/config
added=$(git -C "$KP_LINUX" diff kp-base kvm-protmem -- "$frag" | sed -n 's/^+\(CONFIG_[A-Z0-9_]*\)=y$/\1/p')
nfrag=$(echo $added | wc -w)
if [ "$nfrag" -gt 0 ]; then
	kc=$KP_TREE/kselftest-config
	rm -rf "$kc"
	mkdir -p "$kc"
	{ make -C "$KP_LINUX" O="$kc" ARCH=x86_64 LLVM="$KP_LLVM" defconfig &&
		(cd "$kc" && ARCH=x86_64 LLVM="$KP_LLVM" \
			"$KP_LINUX/scripts/kconfig/merge_config.sh" -m .config "$KP_LINUX/$frag") &&
		make -C "$KP_LINUX" O="$kc" ARCH=x86_64 LLVM="$KP_LLVM" olddefconfig; } \
		>"$KP_LOGS/kselftest-config.log" 2>&1 ||
		kp_die "cannot merge $frag onto x86_64_defconfig" "$KP_LOGS/kselftest-config.log"
	off=$(for o in $added; do grep -q "^$o=y" "$kc/.config" || echo "$o"; done)
	[ -z "$off" ] || kp_die "$frag on x86_64_defconfig leaves off: $(echo $off)" "$KP_LOGS/kselftest-config.log"
fi

# Clippy and rustc: any warning in the last build's log.
if grep -q ' CLIPPY ' "$KP_LOGS/build.log" 2>/dev/null; then
	# Each warning with the file its "-->" line names, less the base's own
	# (configs/base-rust-warnings) and rustc's "N warnings emitted" totals.
	rw=$(python3 - "$KP_LOGS/build.log" "$KP_TOP/configs/base-rust-warnings" <<'PY'
import re
import sys
known = set()
for line in open(sys.argv[2]):
    if line.strip() and not line.startswith('#'):
        known.add(tuple(line.rstrip('\n').split('\t')))
lines = open(sys.argv[1], errors='replace').read().split('\n')
head = re.compile(r'^(warning|error)(\[[A-Za-z0-9_]+\])?: (.*)')
found = []
for i, line in enumerate(lines):
    m = head.match(line)
    if not m or re.fullmatch(r'\d+ warnings? emitted', m.group(3)):
        continue
    where = ''
    for nxt in lines[i + 1:i + 6]:
        if head.match(nxt):
            break
        w = re.match(r'^\s*--> ([^:]+):', nxt)
        if w:
            where = w.group(1)
            break
    if (m.group(3), where) not in known:
        found.append(f'{i + 1}:{line} ({where or "no location"})')
print('\n'.join(found[:20]))
PY
) || kp_die "cannot read the Rust warnings of the build log" "$KP_LOGS/build.log"
	if [ -n "$rw" ]; then
		echo "$rw" | sed 's/^/  /' >&2
		kp_die "Rust warnings (clippy) in the build" "$KP_LOGS/build.log"
	fi
	clippy="no clippy warnings in the crates built"
else
	clippy="clippy not run (the last build compiled no Rust with CLIPPY=1)"
fi

kp_say "checkpatch --strict clean on $n patches; rustfmtcheck clean; no new kernel-doc warnings; docutils clean on $nrst .rst files; Sphinx (htmldocs, virt) clean; the $nfrag options added to the KVM selftests' config are on with defconfig; $clippy"
