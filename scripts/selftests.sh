#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Build the KVM selftests named in configs/selftests.list, and the test
# programs the series adds to Makefile.kvm (run or not), against the UAPI
# headers of $KP_BUILD, into $KP_BUILD/kselftest/kvm.  Only those tests (and
# libkvm) are built; "make kselftest TARGETS=kvm" builds them all.
KP_STEP=selftests
. "$(dirname "$0")/lib/common.sh"

: >"$KP_LOGS/selftests.log"
kp_need gcc make
[ -f "$KP_BUILD/usr/include/linux/kvm.h" ] || kp_die "no UAPI headers in $KP_BUILD/usr/include (run scripts/kp build)"

LIST=${KP_SELFTESTS_LIST:-$KP_TOP/configs/selftests.list}
OUT=$KP_BUILD/kselftest/kvm
targets=$(awk '!/^#/ && NF { print "'"$OUT"'/" $1 }' "$LIST" | sort -u | xargs)
[ -n "$targets" ] || kp_die "no tests in $LIST"

kp_timer_start
mkdir -p "$OUT"
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
	case " $targets " in *" $OUT/$t "*) ;; *) targets="$targets $OUT/$t" ;; esac
done
# shellcheck disable=SC2086
if ! kp_log make -C "$KP_LINUX/tools/testing/selftests/kvm" -j"$KP_JOBS" ARCH=x86_64 \
	OUTPUT="$OUT" KHDR_INCLUDES="-isystem $KP_BUILD/usr/include" $targets; then
	grep -E 'error:|Error [0-9]|No rule' "$KP_LOGS/selftests.log" | head -n 20 | sed 's/^/  /' >&2
	kp_die "selftest build failed"
fi
warnings=$(for f in $ours; do grep -F "$(basename "$f"):" "$KP_LOGS/selftests.log" | grep -E 'warning:'; done)
if [ -n "$warnings" ]; then
	echo "$warnings" | head -n 20 | sed 's/^/  /' >&2
	kp_die "warnings in the series' selftests"
fi
kp_say "built $(echo $targets | wc -w) tests in $OUT ($(kp_timer_end)s; $(echo $ours | wc -w) of the series' sources compiled afresh, no warnings)"
