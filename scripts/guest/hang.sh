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

# Which exits KVM takes, and where, for 1 s: its kvm_exit and
# kvm_nested_vmexit_inject trace events (kernels with tracing: the debug
# kernel), counted by event, reason and guest RIP.
hang_exits() {
	local t=/sys/kernel/tracing e

	[ -d $t/events ] || mount -t tracefs nodev $t 2>/dev/null
	if [ ! -f $t/events/kvm/kvm_exit/enable ]; then
		echo "# kp: hang: no KVM trace events in $t"
		return 0
	fi
	echo >$t/trace
	for e in kvm/kvm_exit kvm/kvm_nested_vmexit_inject; do
		{ echo 1 >$t/events/$e/enable; } 2>/dev/null
	done
	sleep 1
	for e in kvm/kvm_exit kvm/kvm_nested_vmexit_inject; do
		{ echo 0 >$t/events/$e/enable; } 2>/dev/null
	done
	# At least: the ring buffer drops events in a storm.
	echo "# kp: hang: KVM exits in 1 s (at least $(grep -c ': kvm_' $t/trace) events), by event, reason and RIP:"
	sed -n -e 's/.* \(kvm_exit\): .*reason \([A-Za-z_0-9]*\).* rip \(0x[0-9a-f]*\).*/\1 \2 \3/p' \
		-e 's/.* \(kvm_nested_vmexit_inject\): .*reason: \([A-Za-z_0-9]*\).*/\1 \2/p' \
		$t/trace | sort | uniq -c | sort -rn | head -12 |
		sed 's/^/# kp: hang:   /'
	grep -m 2 ': kvm_' $t/trace | sed 's/^/# kp: hang: e.g. /'
}

# For a test that outlived its timeout: each task's state and kernel stack,
# and KVM's per-VM statistics twice, 2 s apart (a vCPU that keeps exiting
# or faulting moves them; a stuck one does not; which of the exit counters
# moves says what kind of exit it keeps taking, as far as KVM counts it).
hang_report() {
	local p t d i f s out

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
	# Last, and not waited for past 10 s: clearing the trace buffer and
	# switching events wait for RCU and for every CPU, which a stalled
	# kernel may never give.  Into a file of its own, with no descriptor
	# of the runner's (its pipes are 1, 3 and 4; ash keeps copies of the
	# redirected ones unless exec replaces them), so that a sampler stuck
	# in the kernel holds no pipe open.
	out=/tmp/hang-exits.$1
	{ exec >"$out" 2>&1 </dev/null 3>&- 4>&-; hang_exits; } &
	s=$!
	i=0
	while kill -0 $s 2>/dev/null && [ $i -lt 100 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	cat "$out"
	if kill -0 $s 2>/dev/null; then
		echo "# kp: hang: (the exit sample did not finish in 10 s)"
	fi
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
