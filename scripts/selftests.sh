#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Build the selftests named in configs/selftests.list, and the test programs
# the series adds to Makefile.kvm (run or not), against the UAPI headers of
# $KP_BUILD, into $KP_BUILD/kselftest/<dir>: the KVM selftests into
# $KP_BUILD/kselftest/kvm, a test of another directory (mm:memfd_secret)
# with that directory's kselftest makefile into $KP_BUILD/kselftest/mm.
# Only those tests (and libkvm) are built; "make kselftest TARGETS=kvm"
# builds them all.
KP_STEP=selftests
. "$(dirname "$0")/lib/common.sh"

: >"$KP_LOGS/selftests.log"
kp_need gcc make
[ -f "$KP_BUILD/usr/include/linux/kvm.h" ] || kp_die "no UAPI headers in $KP_BUILD/usr/include (run scripts/kp build)"

LIST=${KP_SELFTESTS_LIST:-$KP_TOP/configs/selftests.list}
SRC=$KP_LINUX/tools/testing/selftests
# The programs to build, per directory below tools/testing/selftests.
declare -A targets=()
runner_dirs=
while read -r t x _; do
	if [ "$t" = runner ]; then
		t=$x
		kp_selftest "$t"
		case " $runner_dirs " in *" $kp_dir "*) ;; *) runner_dirs="$runner_dirs $kp_dir" ;; esac
	fi
	kp_selftest "$t"
	if [ -z "$kp_dir" ] || [ -z "$kp_prog" ] || [ ! -f "$SRC/$kp_dir/Makefile" ]; then
		kp_die "$LIST: '$t' is not DIR:PROGRAM of a directory below tools/testing/selftests with a Makefile" "$LIST"
	fi
	targets[$kp_dir]+=" $KP_BUILD/kselftest/$kp_dir/$kp_prog"
done < <(awk '!/^#/ && NF' "$LIST")
[ ${#targets[@]} -gt 0 ] || kp_die "no tests in $LIST"

kp_timer_start
OUT=$KP_BUILD/kselftest/kvm
# The test sources the series adds or changes are compiled every time, so
# that their warnings show (and fail this step) even when nothing changed.
ours=$(git -C "$KP_LINUX" diff --name-only kp-base -- 'tools/testing/selftests/kvm/*.c') ||
	kp_die "cannot list the series' selftest sources in $KP_LINUX"
for f in $ours; do touch "$KP_LINUX/$f"; done
# The programs the series adds to Makefile.kvm are built even when the list
# does not run them.
added=$(git -C "$KP_LINUX" diff kp-base -- tools/testing/selftests/kvm/Makefile.kvm) ||
	kp_die "cannot read the series' change to Makefile.kvm"
for t in $(sed -n 's/^+TEST_GEN_PROGS_[a-z0-9_]* *+= *//p' <<<"$added"); do
	targets[kvm]+=" $OUT/$t"
done
# Each directory is built by its own kselftest makefile (mm's writes its
# probe of the libraries, local_config.mk, next to its sources), and only
# the programs named: the whole mm suite is some 50 programs.
n=0
for d in $(printf '%s\n' "${!targets[@]}" | LC_ALL=C sort); do
	progs=$(tr ' ' '\n' <<<"${targets[$d]}" | awk NF | LC_ALL=C sort -u | xargs)
	n=$((n + $(wc -w <<<"$progs")))
	mkdir -p "$KP_BUILD/kselftest/$d"
	# shellcheck disable=SC2086
	# -Otarget keeps each compiler's diagnostics together, after its
	# command line, for the warning check below.
	if ! kp_log make -C "$SRC/$d" -j"$KP_JOBS" -Otarget ARCH=x86_64 OUTPUT="$KP_BUILD/kselftest/$d" \
		KHDR_INCLUDES="-isystem $KP_BUILD/usr/include" $progs; then
		grep -E 'error:|Error [0-9]|No rule' "$KP_LOGS/selftests.log" | head -n 20 | sed 's/^/  /' >&2
		kp_die "selftest build failed (tools/testing/selftests/$d)"
	fi
done
# A warning counts when it comes from compiling one of those sources,
# wherever gcc places it (the source, or a header it includes, e.g.
# kselftest_harness.h for a macro): the diagnostics of a compilation follow
# its command line ("gcc ... -c SOURCE -o ..."), kept together by -Otarget;
# those after any other command (a link) belong to no source.
names=$(for f in $ours; do basename "$f"; done | xargs)
warnings=$(awk -v names=" $names " '
	/^(gcc|cc|clang)[^ ]* / {
		u = ""
		for (i = 2; i < NF; i++)
			if ($i == "-c") { u = $(i + 1); sub(/.*\//, "", u) }
		next
	}
	/warning:/ && u != "" && index(names, " " u " ")' "$KP_LOGS/selftests.log")
if [ -n "$warnings" ]; then
	echo "$warnings" | head -n 20 | sed 's/^/  /' >&2
	kp_die "warnings in the series' selftests"
fi
# The tests that the guest runs through the kselftest runner ("runner"
# lines) run from a kselftest-install tree, made as a user makes it:
# "make -C tools/testing/selftests TARGETS=<dirs> install", which builds
# every test of those directories (the first time: later runs are
# incremental), into $KP_BUILD/kselftest/kselftest_install.
if [ -n "$runner_dirs" ]; then
	install_start=$(date +%s)
	# shellcheck disable=SC2086
	if ! kp_log make -C "$SRC" -j"$KP_JOBS" -Otarget ARCH=x86_64 O="$KP_BUILD" \
		KHDR_INCLUDES="-isystem $KP_BUILD/usr/include" TARGETS="$(echo $runner_dirs)" \
		FORCE_TARGETS=1 install; then
		grep -E 'error:|Error [0-9]|No rule' "$KP_LOGS/selftests.log" | head -n 20 | sed 's/^/  /' >&2
		kp_die "kselftest install failed (TARGETS=$(echo $runner_dirs))"
	fi
	kp_say "kselftest-install of$runner_dirs: $KP_BUILD/kselftest/kselftest_install ($(( $(date +%s) - install_start ))s, $(wc -l <"$KP_BUILD/kselftest/kselftest_install/kselftest-list.txt") tests listed)"
fi
dirs=$(printf '%s\n' "${!targets[@]}" | LC_ALL=C sort | xargs | tr ' ' ,)
kp_say "built $n tests in $KP_BUILD/kselftest/{$dirs} ($(kp_timer_end)s; $(echo $ours | wc -w) of the series' sources compiled afresh, no warnings)"
