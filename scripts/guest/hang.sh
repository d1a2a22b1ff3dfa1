# SPDX-License-Identifier: GPL-2.0
#
# Sourced by the test initramfs's init and by its /usr/bin/timeout: what to
# do with a test that outlived its timeout.

# The test's process and its descendants, parents first.
tree() {
	echo "$1"
	for c in $(awk -v p="$1" '$4 == p { print $1 }' /proc/[0-9]*/stat 2>/dev/null); do
		tree "$c"
	done
}

kill_tree() {
	for p in $(tree "$1"); do
		kill -KILL "$p" 2>/dev/null
	done
}

# For a test that outlived its timeout: each task's state and kernel stack,
# and KVM's per-VM statistics twice, 2 s apart (a vCPU that keeps exiting
# or faulting moves them; a stuck one does not; which of the exit counters
# moves says what kind of exit it keeps taking, as far as KVM counts it).
hang_report() {
	echo "# kp: hang: tasks of the test (state, wchan, kernel stack)"
	for p in $(tree "$1"); do
		for t in /proc/"$p"/task/*; do
			echo "# kp: hang: task ${t##*/} ($(cat "$t/comm")):" \
				"$(cut -d' ' -f3 "$t/stat") $(cat "$t/wchan")"
			sed 's/^/# kp: hang:     /' "$t/stack"
		done
	done
	for i in 1 2; do
		for d in /sys/kernel/debug/kvm/*-*; do
			[ -d "$d" ] || continue
			echo "# kp: hang: kvm ${d##*/} sample $i:" \
				"$(cd "$d" && for f in exits pf_taken pf_fixed \
					pf_emulate pf_spurious pf_fast halt_exits \
					hypercalls io_exits mmio_exits signal_exits \
					request_irq_exits irq_exits irq_window_exits \
					nmi_window_exits irq_injections \
					nmi_injections pf_guest tlb_flush insn_emulation \
					insn_emulation_fail nested_run guest_mode \
					halt_wakeup blocking \
					req_event; do
					[ -f $f ] && printf '%s=%s ' $f "$(cat $f)"
				done)"
		done
		[ $i = 1 ] && sleep 2
	done
	echo "# kp: hang: blocked tasks and CPU backtraces on the console"
	echo w >/proc/sysrq-trigger 2>/dev/null
	echo l >/proc/sysrq-trigger 2>/dev/null
}

# Run "$@" for at most $1 seconds; after that, report where its tasks are,
# kill them and return 124, as coreutils' timeout does.
run_with_timeout() {
	local tmo=$1 start pid
	shift
	start=$(date +%s)
	"$@" &
	pid=$!
	while kill -0 $pid 2>/dev/null && [ $(( $(date +%s) - start )) -lt "$tmo" ]; do
		sleep 1
	done
	if kill -0 $pid 2>/dev/null; then
		hang_report $pid
		kill_tree $pid
		wait $pid
		return 124
	fi
	wait $pid
}
