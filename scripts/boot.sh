#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Pack an initramfs (busybox-static, the selftests and their libraries,
# scripts/guest/init), boot $KP_BUILD's kernel under QEMU TCG with nested
# SVM, and collect:
#   $KP_RUN/console.log    the kernel's console (ttyS0), the artifact to keep
#   $KP_RUN/results.ktap   the tests' KTAP (ttyS1)
# Then print the results (scripts/ktap-summary.py).  Exit 0 only when the
# guest finished, no test failed and the console shows no kernel splat.
KP_STEP=boot
. "$(dirname "$0")/lib/common.sh"

: >"$KP_LOGS/boot.log"
kp_need qemu-system-x86_64:qemu-system-x86 cpio busybox:busybox-static python3

KERNEL=$KP_BUILD/arch/x86/boot/bzImage
LIST=${KP_SELFTESTS_LIST:-$KP_TOP/configs/selftests.list}
SELFTESTS=$KP_BUILD/kselftest
TIMEOUT=${KP_BOOT_TIMEOUT:-1800}
MEM=${KP_GUEST_MEM:-4G}
SMP=${KP_GUEST_SMP:-2}
# NUMA and hot-pluggable memory: the CPUs and all but 512 MiB of the memory
# on node 0, 512 MiB on node 1 (guest_memfd_test's mbind() cases need two
# nodes with memory), and DIMMS pc-dimms of 128 MiB on node 2, which the
# guest's ACPI memory-hotplug driver adds (and maps) at boot as it adds
# hot-added memory; gmem_no_direct_map_test's block_cache.hotplugged_memory
# onlines, uses and ejects them.  0: none, and one NUMA node.
DIMMS=${KP_GUEST_DIMMS:-8}
case $MEM in
*G) mem_mib=$((${MEM%G} * 1024)) ;;
*M) mem_mib=${MEM%M} ;;
*[0-9]) mem_mib=$MEM ;;
*) kp_die "KP_GUEST_MEM=$MEM: give it in MiB, or with M or G" ;;
esac
memory=(-m "$MEM")
if [ "$DIMMS" -gt 0 ]; then
	memory=(-m "${mem_mib}M,slots=$DIMMS,maxmem=$((mem_mib + DIMMS * 128))M"
		-object "memory-backend-ram,id=ram0,size=$((mem_mib - 512))M"
		-object memory-backend-ram,id=ram1,size=512M
		-numa "node,nodeid=0,cpus=0-$((SMP - 1)),memdev=ram0"
		-numa node,nodeid=1,memdev=ram1
		-numa node,nodeid=2)
	for i in $(seq 0 $((DIMMS - 1))); do
		memory+=(-object "memory-backend-ram,id=dimm$i,size=128M"
			 -device "pc-dimm,id=dimm$i,memdev=dimm$i,node=2")
	done
fi
[ -f "$KERNEL" ] || kp_die "no kernel at $KERNEL (run scripts/kp build)"

BUSYBOX=$(command -v busybox)
file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' ||
	ldd "$BUSYBOX" 2>&1 | grep -q 'not a dynamic' ||
	kp_die "$BUSYBOX is not static (install busybox-static)"

kp_timer_start
root=$KP_RUN/initramfs
rm -rf "$root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,kp,usr/bin}
cp "$BUSYBOX" "$root/bin/busybox"
cp "$KP_TOP/scripts/guest/init" "$root/init"
cp "$KP_TOP/scripts/guest/hang.sh" "$root/kp/hang.sh"
# The kselftest runner calls /usr/bin/timeout by that path.
cp "$KP_TOP/scripts/guest/timeout" "$root/usr/bin/timeout"
mknod -m 600 "$root/dev/console" c 5 1
mknod -m 666 "$root/dev/null" c 1 3
# "runner" lines: tests run by the kselftest runner (/kp/runner.list,
# COLLECTION:TEST and the --override-timeout, if any); the others by the
# init itself (/kp/tests.list).
grep -v '^#' "$LIST" | awk 'NF && $1 != "runner"' >"$root/kp/tests.list"
: >"$root/kp/runner.list"
INSTALL=$SELFTESTS/kselftest_install

# The shared libraries that a program loads, at the same paths.
copy_libs() {
	ldd "$1" | grep -oE '/[^ ]+' | while read -r lib; do
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
}

# The tests, a test of tools/testing/selftests/DIR in /kp/DIR (KVM's in
# /kp/kvm).
while read -r t _; do
	kp_selftest "$t"
	bin=$SELFTESTS/$kp_dir/$kp_prog
	[ -x "$bin" ] || kp_die "selftest $t not built (run scripts/kp selftests)"
	mkdir -p "$root/kp/$kp_dir/$(dirname "$kp_prog")"
	cp "$bin" "$root/kp/$kp_dir/$kp_prog"
	copy_libs "$bin"
done <"$root/kp/tests.list"

# The kselftest-install tree in /kp/kselftest: the runner, its list, the
# directories' settings, and of the tests only those the list names
# (installed flat, as the install rule does: COLLECTION:BASENAME).
while read -r r t tmo _; do
	[ "$r" = runner ] || continue
	kp_selftest "$t"
	[ -f "$INSTALL/run_kselftest.sh" ] || kp_die "no kselftest-install tree in $INSTALL (run scripts/kp selftests)"
	name=$kp_dir:$(basename "$kp_prog")
	grep -qxF "$name" "$INSTALL/kselftest-list.txt" ||
		kp_die "$name is not in $INSTALL/kselftest-list.txt: the runner would not run it"
	if [ ! -d "$root/kp/kselftest" ]; then
		mkdir -p "$root/kp/kselftest"
		cp -r "$INSTALL/run_kselftest.sh" "$INSTALL/kselftest" "$INSTALL/kselftest-list.txt" "$root/kp/kselftest/"
	fi
	mkdir -p "$root/kp/kselftest/$kp_dir"
	[ -f "$INSTALL/$kp_dir/settings" ] && cp "$INSTALL/$kp_dir/settings" "$root/kp/kselftest/$kp_dir/"
	cp "$INSTALL/$kp_dir/$(basename "$kp_prog")" "$root/kp/kselftest/$kp_dir/"
	copy_libs "$INSTALL/$kp_dir/$(basename "$kp_prog")"
	echo "$name${tmo:+ $tmo}" >>"$root/kp/runner.list"
done < <(grep -v '^#' "$LIST")
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$KP_RUN/initramfs.cpio" ||
	kp_die "cannot pack the initramfs"

# Suites to run again after boot, passed on the kernel command line.
RERUN=${KP_KUNIT_RERUN-$(grep -v '^#' "$KP_TOP/configs/kunit-rerun.list" | xargs | tr ' ' ',')}
append="console=ttyS0 panic=-1 oops=panic nokaslr ${RERUN:+kp.rerun=$RERUN} ${KP_APPEND:-}"
rm -f "$KP_RUN/console.log" "$KP_RUN/results.ktap"
kp_say "booting $(cat "$KP_BUILD/include/config/kernel.release") (TCG, -cpu max,+svm,+npt, $SMP cpus, $MEM + $DIMMS x 128M DIMMs; timeout ${TIMEOUT}s; console $KP_RUN/console.log)"
echo "qemu-system-x86_64 ... -append \"$append\"" >>"$KP_LOGS/boot.log"
timeout "$TIMEOUT" qemu-system-x86_64 \
	-accel tcg,thread=multi -cpu max,+svm,+npt -smp "$SMP" "${memory[@]}" \
	-kernel "$KERNEL" -initrd "$KP_RUN/initramfs.cpio" -append "$append" \
	-display none -monitor none -no-reboot \
	-serial "file:$KP_RUN/console.log" -serial "file:$KP_RUN/results.ktap" \
	>>"$KP_LOGS/boot.log" 2>&1
rc=$?
secs=$(kp_timer_end)
finished=yes
grep -q '^# kp: done' "$KP_RUN/results.ktap" 2>/dev/null || finished=no
if [ $rc = 124 ]; then
	kp_say "the guest did not finish within ${TIMEOUT}s (hang?); console: $KP_RUN/console.log"
elif [ $rc != 0 ]; then
	kp_say "QEMU failed (exit $rc); see $KP_LOGS/boot.log"
elif [ $finished = no ]; then
	kp_say "the guest stopped before the tests finished (panic or crash?); console: $KP_RUN/console.log"
fi
kp_say "boot + tests took ${secs}s"

KP_STEP=results
# shellcheck disable=SC2046
python3 "$KP_TOP/scripts/ktap-summary.py" --finished "$finished" \
	$(awk '!/^#/ && NF { print "--no-skip", $1 }' "$KP_TOP/configs/no-skip.list") \
	--console "$KP_RUN/console.log" "$KP_RUN/results.ktap" | tee "$KP_RUN/summary.txt"
src=${PIPESTATUS[0]}
# The fragmentation benchmark's figures, when it ran: CSV, table and plot.
rm -f "$KP_RUN"/bench.*
python3 "$KP_TOP/scripts/bench-plot.py" "$KP_RUN/results.ktap" "$KP_RUN" >/dev/null &&
	[ -f "$KP_RUN/bench.txt" ] &&
	if [ "${KP_VARIANT:-}" = debug ]; then
		kp_say "benchmark: $KP_RUN/bench.{csv,txt,svg} (debug kernel: not the series' figures)"
	else
		kp_say "benchmark: $KP_RUN/bench.{csv,txt,svg}; $(grep '^Targets' "$KP_RUN/bench.txt")"
	fi
# The next run overwrites $KP_RUN: keep a failed run's console, KTAP and
# summary (the five newest failed runs of this kernel).
if [ "$finished" != yes ] || [ $rc != 0 ] || [ "$src" != 0 ]; then
	keep=$KP_RUN.failed-$(date -u +%Y%m%dT%H%M%SZ)
	mkdir -p "$keep"
	cp "$KP_RUN"/console.log "$KP_RUN"/results.ktap "$KP_RUN"/summary.txt "$keep"/ 2>/dev/null
	find "$KP_TREE" -maxdepth 1 -name "$(basename "$KP_RUN").failed-*" | LC_ALL=C sort |
		head -n -5 | xargs -r rm -rf
	kp_say "kept this run's console, KTAP and summary in $keep"
	[ "$finished" = yes ] && [ $rc = 0 ] || kp_die "the run did not finish" "$keep/console.log"
	kp_die "tests failed" "$keep/console.log"
fi
