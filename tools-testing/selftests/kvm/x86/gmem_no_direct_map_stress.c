// SPDX-License-Identifier: GPL-2.0-only
/*
 * Concurrency stress for guest_memfd memory outside the host's direct map
 * (GUEST_MEMFD_FLAG_NO_DIRECT_MAP).
 *
 * vCPUs convert random 2 MiB ranges between shared and private with
 * KVM_HC_MAP_GPA_RANGE (the VMM fallocate()s before making a range private
 * and punches it out after making it shared) and write to them, while host
 * threads punch random holes and fallocate() random ranges of the same
 * guest_memfd.  At the end the host threads stop, and the guest_memfd and the
 * VM's file are closed while the vCPUs are still converting, so that the
 * guest_memfd is released under them; each vCPU closes itself at its next
 * exit (the VM goes when the child exits: the library's stats fds and the
 * vCPUs' mappings hold it).  All of it runs in
 * a child process; afterwards the parent empties the cache of free blocks and
 * checks that every page removed from the direct map was restored and that
 * the free pages came back, and that the kernel did not warn, oops or find a
 * bad page (a new taint, or more warnings or oopses counted) and lockdep did
 * not turn itself off meanwhile; the reports themselves are in the kernel
 * log.
 *
 * Usage: gmem_no_direct_map_stress [seconds, default 20] [plain | mapped]
 *
 * "plain" runs the same stress on a guest_memfd created without the flag, to
 * tell the flag's failures from those of guest_memfd, KVM or the machine; it
 * runs on a kernel without the flag too.
 *
 * "mapped" stresses the mode a VMM maps: a KVM_X86_DEFAULT_VM whose data is a
 * guest_memfd created with MMAP | INIT_SHARED | NO_DIRECT_MAP, its memslot's
 * userspace address mapping the guest_memfd.  The vCPUs do not convert (the VM
 * has no private memory): they write to random ranges and keep their
 * kvm-clock page in the data, so that KVM's mapping of that page (a
 * gfn_to_pfn_cache) is invalidated by the punches and mapped again; the host
 * threads also write to and read random pages through the VMM's mapping (user
 * faults) between their punches and fallocate()s.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/wait.h>

#include <linux/falloc.h>
#include <linux/kvm_para.h>
#include <asm/kvm_para.h>
#include <linux/sizes.h>

#include "kvm_util.h"
#include "processor.h"
#include "test_util.h"

#define NR_VCPUS		4
#define NR_PUNCHERS		2
#define DATA_SLOT		10
#define DATA_GPA		SZ_4G
#define DATA_SIZE		SZ_32M
#define NR_RANGES		(DATA_SIZE / SZ_2M)
#define CACHE_PARAM		"/sys/module/direct_map_pool/parameters/max_free_blocks"
#define MAP_GPA_PRIVATE		BIT_ULL(4)	/* KVM_MAP_GPA_RANGE_ENCRYPTED */
/* What this VMM answers the guest for ENOMEM: the two agree. */
#define HC_ENOMEM		ENOMEM
/* Free pages the run may end with fewer of: what KVM or the harness keep. */
#define FREE_SLACK		256
/* How long each thread may take to finish once told to stop. */
#define STOP_TIMEOUT_S		30
#define MAPPED_FLAGS		(GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED | \
				 GUEST_MEMFD_FLAG_NO_DIRECT_MAP)

static u64 next_rand(u64 *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static int gmem;
static u64 gmem_flags = GUEST_MEMFD_FLAG_NO_DIRECT_MAP;
static bool mapped;
/* The VMM's mapping of the guest_memfd, in mapped mode. */
static u8 *data_hva;

static void guest_code(u64 id)
{
	u64 x = 0x9e3779b97f4a7c15ULL * (id + 1), gpa, ret;
	int i;

	for (;;) {
		gpa = DATA_GPA + next_rand(&x) % NR_RANGES * SZ_2M;
		ret = __kvm_hypercall_map_gpa_range(gpa, SZ_2M,
						    next_rand(&x) & 1 ? MAP_GPA_PRIVATE : 0);
		__GUEST_ASSERT(!ret || ret == -HC_ENOMEM, "MAP_GPA_RANGE: %ld", ret);
		for (i = 0; i < 8; i++)
			WRITE_ONCE(*(u64 *)(gpa + next_rand(&x) % SZ_2M / 8 * 8), x);
		GUEST_SYNC(0);
	}
}

/*
 * Mapped mode: write to random ranges, with the vCPU's kvm-clock page in the
 * data (its own page of the first range); set it again now and then, so that
 * KVM maps it afresh as well as after the punches.
 */
static void guest_code_mapped(u64 id)
{
	u64 x = 0x9e3779b97f4a7c15ULL * (id + 1), gpa;
	u64 pvti_gpa = DATA_GPA + id * PAGE_SIZE;
	int i, n;

	for (n = 0;; n++) {
		if (!(n % 16))
			wrmsr(MSR_KVM_SYSTEM_TIME_NEW, pvti_gpa | KVM_MSR_ENABLED);
		gpa = DATA_GPA + next_rand(&x) % NR_RANGES * SZ_2M;
		for (i = 0; i < 8; i++)
			WRITE_ONCE(*(u64 *)(gpa + next_rand(&x) % SZ_2M / 8 * 8), x);
		GUEST_SYNC(0);
	}
}

static struct kvm_vm *vm;
static bool stop_host, closing;
static u64 nr_converted, nr_touched, nr_punched, nr_allocated, nr_errors;
static u64 nr_memory_faults, nr_user_faults;

/*
 * What each thread is doing, so that a run that does not finish says where
 * it stopped (the selftest runner's timeout would only say that it did not).
 */
static struct vcpu_state {
	int in_run;		/* inside KVM_RUN */
	u64 runs;
	u32 exit_reason;
	int err;		/* errno of the last failed KVM_RUN */
	u64 fault_gpa, fault_flags;
	u64 hc_gpa, hc_attrs;	/* the last conversion it asked for */
} vcpu_state[NR_VCPUS];

static struct host_state {
	int op;			/* an index into host_op[] */
	u64 ops, off, len;
} host_state[NR_PUNCHERS];
static const char * const host_op[] = {
	"idle", "punching", "allocating", "touching the mapping",
};

static int set_attributes(u64 gpa, u64 size, u64 attributes)
{
	struct kvm_memory_attributes attr = {
		.address = gpa,
		.size = size,
		.attributes = attributes,
	};

	return ioctl(vm->fd, KVM_SET_MEMORY_ATTRIBUTES, &attr);
}

/* The VMM's side of KVM_HC_MAP_GPA_RANGE, for memory outside the direct map. */
static u64 map_gpa_range(u64 gpa, u64 npages, u64 attrs)
{
	u64 size = npages * PAGE_SIZE, off = gpa - DATA_GPA;
	int r;

	TEST_ASSERT(gpa >= DATA_GPA && off + size <= DATA_SIZE,
		    "range 0x%lx + 0x%lx outside guest memory", gpa, size);
	/* The files are going away: tell the guest it worked. */
	if (READ_ONCE(closing))
		return 0;
	if (attrs & MAP_GPA_PRIVATE) {
		if (fallocate(gmem, FALLOC_FL_KEEP_SIZE, off, size)) {
			TEST_ASSERT(errno == ENOMEM || READ_ONCE(closing),
				    "fallocate: %s", strerror(errno));
			return errno == ENOMEM ? -HC_ENOMEM : 0;
		}
		r = set_attributes(gpa, size, KVM_MEMORY_ATTRIBUTE_PRIVATE);
	} else {
		r = set_attributes(gpa, size, 0);
		if (!r)
			r = fallocate(gmem, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
				      off, size);
	}
	TEST_ASSERT(!r || READ_ONCE(closing), "conversion failed: %s",
		    strerror(errno));
	return 0;
}

/*
 * A vCPU stopped in a way the guest never asks for: print what it was doing.
 * After a triple fault (KVM_EXIT_SHUTDOWN) SVM has put the vCPU through INIT:
 * its registers and exception queue are reset (the vector and error code of
 * the last exception may be left), but its last conversion is known here.
 */
static void report_vcpu(struct kvm_vcpu *vcpu)
{
	struct vcpu_state *st = &vcpu_state[vcpu->id];
	struct kvm_vcpu_events events;
	struct kvm_sregs sregs;
	struct kvm_regs regs;

	vcpu_regs_get(vcpu, &regs);
	vcpu_sregs_get(vcpu, &sregs);
	vcpu_events_get(vcpu, &events);
	printf("# vCPU %d after %lu runs: rip 0x%llx rsp 0x%llx rflags 0x%llx",
	       vcpu->id, st->runs, regs.rip, regs.rsp, regs.rflags);
	printf(" rax 0x%llx rdi 0x%llx\n", regs.rax, regs.rdi);
	printf("# cr0 0x%llx cr2 0x%llx cr3 0x%llx cr4 0x%llx efer 0x%llx idt 0x%llx/%u\n",
	       sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.efer,
	       sregs.idt.base, sregs.idt.limit);
	printf("# exception %s%s nr %u error 0x%x, interrupt %s, nmi %s, triple fault %s\n",
	       events.exception.injected ? "injected" : "",
	       events.exception.pending ? "pending" : "", events.exception.nr,
	       events.exception.error_code,
	       events.interrupt.injected ? "injected" : "no",
	       events.nmi.injected || events.nmi.pending ? "yes" : "no",
	       events.triple_fault.pending ? "pending" : "no");
	printf("# last conversion asked: 0x%lx to %s\n", st->hc_gpa,
	       st->hc_attrs & MAP_GPA_PRIVATE ? "private" : "shared");
}

static void *vcpu_thread(void *arg)
{
	struct kvm_vcpu *vcpu = arg;
	struct vcpu_state *st = &vcpu_state[vcpu->id];
	struct kvm_run *run = vcpu->run;
	struct ucall uc;
	int r;

	for (;;) {
		WRITE_ONCE(st->in_run, 1);
		r = ioctl(vcpu->fd, KVM_RUN, NULL);
		WRITE_ONCE(st->in_run, 0);
		WRITE_ONCE(st->runs, st->runs + 1);
		WRITE_ONCE(st->exit_reason, run->exit_reason);
		if (r) {
			WRITE_ONCE(st->err, errno);
			if (run->exit_reason == KVM_EXIT_MEMORY_FAULT) {
				WRITE_ONCE(st->fault_gpa, run->memory_fault.gpa);
				WRITE_ONCE(st->fault_flags, run->memory_fault.flags);
			}
			/*
			 * Another vCPU changed the range's attributes while
			 * this one faulted on it: KVM asks the VMM to convert.
			 * The guest wants whatever the range is now: run on,
			 * unless the VMM is going away.
			 */
			if (errno == EFAULT && !READ_ONCE(closing) &&
			    run->exit_reason == KVM_EXIT_MEMORY_FAULT) {
				__atomic_add_fetch(&nr_memory_faults, 1, __ATOMIC_RELAXED);
				continue;
			}
			TEST_ASSERT(READ_ONCE(closing), "KVM_RUN: %s", strerror(errno));
		}
		/*
		 * The VM's file and the guest_memfd may be closed already;
		 * closing the last vCPU destroys the VM, under the others.
		 */
		if (READ_ONCE(closing)) {
			close(vcpu->fd);
			return NULL;
		}
		if (run->exit_reason == KVM_EXIT_HYPERCALL) {
			TEST_ASSERT_EQ(run->hypercall.nr, KVM_HC_MAP_GPA_RANGE);
			WRITE_ONCE(st->hc_gpa, run->hypercall.args[0]);
			WRITE_ONCE(st->hc_attrs, run->hypercall.args[2]);
			run->hypercall.ret = map_gpa_range(run->hypercall.args[0],
							   run->hypercall.args[1],
							   run->hypercall.args[2]);
			__atomic_add_fetch(&nr_converted, 1, __ATOMIC_RELAXED);
			continue;
		}
		if (run->exit_reason != KVM_EXIT_IO)
			report_vcpu(vcpu);
		TEST_ASSERT_KVM_EXIT_REASON(vcpu, KVM_EXIT_IO);
		if (get_ucall(vcpu, &uc) == UCALL_ABORT)
			REPORT_GUEST_ASSERT(uc);
		__atomic_add_fetch(&nr_touched, 8, __ATOMIC_RELAXED);
	}
}

/*
 * Punch holes in and fallocate() random ranges, 4 KiB to 2 MiB; in mapped
 * mode, also write to a random page through the VMM's mapping and read
 * another.
 */
static void *host_thread(void *arg)
{
	u64 x = (uintptr_t)arg * 0x2545f4914f6cdd1dULL + 1;
	struct host_state *st = &host_state[(uintptr_t)arg];

	while (!READ_ONCE(stop_host)) {
		u64 len = PAGE_SIZE << (next_rand(&x) % 10);
		u64 off = next_rand(&x) % (DATA_SIZE / len) * len;
		bool punch = next_rand(&x) & 1;

		WRITE_ONCE(st->off, off);
		WRITE_ONCE(st->len, len);
		WRITE_ONCE(st->op, punch ? 1 : 2);
		WRITE_ONCE(st->ops, st->ops + 1);
		if (punch) {
			TEST_ASSERT(!fallocate(gmem, FALLOC_FL_KEEP_SIZE |
					       FALLOC_FL_PUNCH_HOLE, off, len),
				    "punch: %s", strerror(errno));
			__atomic_add_fetch(&nr_punched, 1, __ATOMIC_RELAXED);
		} else if (fallocate(gmem, FALLOC_FL_KEEP_SIZE, off, len)) {
			TEST_ASSERT(errno == ENOMEM, "fallocate: %s", strerror(errno));
			__atomic_add_fetch(&nr_errors, 1, __ATOMIC_RELAXED);
		} else {
			__atomic_add_fetch(&nr_allocated, 1, __ATOMIC_RELAXED);
		}
		if (mapped) {
			WRITE_ONCE(st->op, 3);
			WRITE_ONCE(data_hva[next_rand(&x) % DATA_SIZE], x);
			READ_ONCE(data_hva[next_rand(&x) % DATA_SIZE]);
			__atomic_add_fetch(&nr_user_faults, 2, __ATOMIC_RELAXED);
		}
		WRITE_ONCE(st->op, 0);
	}
	return NULL;
}

/* Join @thread within STOP_TIMEOUT_S, or say what every thread is doing and fail. */
static void join_or_report(pthread_t thread, const char *what, int i)
{
	struct timespec deadline;
	int j, r;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += STOP_TIMEOUT_S;
	r = pthread_timedjoin_np(thread, NULL, &deadline);
	if (!r)
		return;

	for (j = 0; j < NR_VCPUS; j++) {
		printf("# vCPU %d: %s KVM_RUN, %lu runs, exit %u, errno %d, fault 0x%lx/0x%lx",
		       j, READ_ONCE(vcpu_state[j].in_run) ? "in" : "out of",
		       READ_ONCE(vcpu_state[j].runs), READ_ONCE(vcpu_state[j].exit_reason),
		       READ_ONCE(vcpu_state[j].err), READ_ONCE(vcpu_state[j].fault_gpa),
		       READ_ONCE(vcpu_state[j].fault_flags));
		printf(", last conversion 0x%lx/0x%lx\n",
		       READ_ONCE(vcpu_state[j].hc_gpa), READ_ONCE(vcpu_state[j].hc_attrs));
	}
	for (j = 0; j < NR_PUNCHERS; j++)
		printf("# host thread %d: %s, %lu calls, last 0x%lx + 0x%lx\n", j,
		       host_op[READ_ONCE(host_state[j].op)], READ_ONCE(host_state[j].ops),
		       READ_ONCE(host_state[j].off), READ_ONCE(host_state[j].len));
	TEST_FAIL("%s %d did not finish within %d s of being told to stop (%s)",
		  what, i, STOP_TIMEOUT_S, strerror(r));
}

static const char *mode_name(void)
{
	if (mapped)
		return " (mapped)";
	return gmem_flags ? "" : " (plain)";
}

static void run_stress(int seconds)
{
	const struct vm_shape shape = {
		.mode = VM_MODE_DEFAULT,
		.type = mapped ? KVM_X86_DEFAULT_VM : KVM_X86_SW_PROTECTED_VM,
	};
	pthread_t vcpu_threads[NR_VCPUS], host_threads[NR_PUNCHERS];
	struct kvm_vcpu *vcpus[NR_VCPUS];
	uintptr_t i;

	vm = __vm_create_with_vcpus(shape, NR_VCPUS, 0,
				    mapped ? guest_code_mapped : guest_code, vcpus);
	if (mapped) {
		/* The library creates the guest_memfd and maps it. */
		vm_mem_add(vm, VM_MEM_SRC_GUEST_MEMFD_NO_DIRECT_MAP, DATA_GPA,
			   DATA_SLOT, DATA_SIZE / PAGE_SIZE, 0, -1, 0);
		gmem = kvm_dup(memslot2region(vm, DATA_SLOT)->region.guest_memfd);
		data_hva = addr_gpa2hva(vm, DATA_GPA);
	} else {
		vm_enable_cap(vm, KVM_CAP_EXIT_HYPERCALL, 1 << KVM_HC_MAP_GPA_RANGE);
		gmem = vm_create_guest_memfd(vm, DATA_SIZE, gmem_flags);
		vm_mem_add(vm, VM_MEM_SRC_ANONYMOUS, DATA_GPA, DATA_SLOT,
			   DATA_SIZE / PAGE_SIZE, KVM_MEM_GUEST_MEMFD, gmem, 0);
	}
	virt_map(vm, DATA_GPA, DATA_GPA, DATA_SIZE / PAGE_SIZE);

	for (i = 0; i < NR_VCPUS; i++) {
		vcpu_args_set(vcpus[i], 1, i);
		kvm_pthread_create(&vcpu_threads[i], NULL, vcpu_thread, vcpus[i]);
	}
	for (i = 0; i < NR_PUNCHERS; i++)
		kvm_pthread_create(&host_threads[i], NULL, host_thread, (void *)i);

	sleep(seconds);
	WRITE_ONCE(stop_host, true);
	for (i = 0; i < NR_PUNCHERS; i++)
		join_or_report(host_threads[i], "host thread", i);

	/*
	 * Close the guest_memfd and the VM's file while the vCPUs convert;
	 * each vCPU closes itself at its next exit.  vm_mem_add() keeps a
	 * duplicate of the guest_memfd, which would keep it alive: close that
	 * too, so that the guest_memfd is released under the vCPUs.  The VM
	 * itself goes when the child exits (the library's stats fds and the
	 * vCPUs' mappings hold it).  The struct kvm_vm is left behind.
	 */
	WRITE_ONCE(closing, true);
	close(gmem);
	close(memslot2region(vm, DATA_SLOT)->region.guest_memfd);
	close(vm->fd);
	for (i = 0; i < NR_VCPUS; i++)
		join_or_report(vcpu_threads[i], "vCPU", i);

	printf("# kp-figure: stress%s: %d s, %d vCPUs, %d host threads: ",
	       mode_name(), seconds, NR_VCPUS, NR_PUNCHERS);
	printf("%lu conversions, %lu guest writes, %lu memory-fault exits, ",
	       nr_converted, nr_touched, nr_memory_faults);
	printf("%lu punches, %lu fallocates (%lu ENOMEM), %lu VMM accesses\n",
	       nr_punched, nr_allocated, nr_errors, nr_user_faults);
	TEST_ASSERT((nr_converted || mapped) && nr_punched && nr_allocated &&
		    nr_touched && (nr_user_faults || !mapped),
		    "nothing happened in %d s", seconds);
}

#define TAINTED	"/proc/sys/kernel/tainted"

static unsigned long kernel_taint(void)
{
	FILE *f = fopen(TAINTED, "r");
	unsigned long val = 0;

	TEST_ASSERT(f, "open " TAINTED);
	TEST_ASSERT(fscanf(f, "%lu", &val) == 1, "read " TAINTED);
	fclose(f);
	return val;
}

/* Taints that a kernel report sets: BAD_PAGE, DIE, WARN, SOFTLOCKUP. */
#define REPORT_TAINTS	((1UL << 5) | (1UL << 7) | (1UL << 9) | (1UL << 14))

/*
 * The kernel's count of warnings or oopses (/sys/kernel/warn_count,
 * oops_count; 0 without them): a taint once set stays, so on a host that
 * warned before only the counts show a new report.
 */
static unsigned long report_count(const char *path)
{
	FILE *f = fopen(path, "r");
	unsigned long val = 0;

	if (!f)
		return 0;
	if (fscanf(f, "%lu", &val) != 1)
		val = 0;
	fclose(f);
	return val;
}

#define WARN_COUNT	"/sys/kernel/warn_count"
#define OOPS_COUNT	"/sys/kernel/oops_count"

int main(int argc, char *argv[])
{
	unsigned long taint0 = kernel_taint();
	unsigned long warns0 = report_count(WARN_COUNT);
	unsigned long oopses0 = report_count(OOPS_COUNT);
	int lockdep0 = lockdep_debug_locks();
	char cache0[16] = "16";
	int seconds = argc > 1 ? atoi(argv[1]) : 20;
	bool plain = argc > 2 && !strcmp(argv[2], "plain"), series;
	u64 removed0 = 0, restored0 = 0, removed = 0, left = 0, free0, free1;
	int i;
	pid_t pid;
	int status;

	mapped = argc > 2 && !strcmp(argv[2], "mapped");
	TEST_ASSERT(argc <= 3 && seconds > 0 && (argc < 3 || plain || mapped),
		    "usage: %s [seconds > 0, default 20] [plain | mapped]", argv[0]);
	if (mapped) {
		TEST_REQUIRE((kvm_check_cap(KVM_CAP_GUEST_MEMFD_FLAGS) &
			      MAPPED_FLAGS) == MAPPED_FLAGS);
	} else {
		TEST_REQUIRE(kvm_check_cap(KVM_CAP_VM_TYPES) &
			     BIT(KVM_X86_SW_PROTECTED_VM));
	}
	/* The counters and the pool are there only with the flag's code. */
	series = !access(CACHE_PARAM, W_OK);
	if (plain) {
		gmem_flags = 0;
	} else {
		TEST_REQUIRE(kvm_check_cap(KVM_CAP_GUEST_MEMFD_FLAGS) &
			     GUEST_MEMFD_FLAG_NO_DIRECT_MAP);
		TEST_REQUIRE(series);
	}

	if (series) {
		FILE *f = fopen(CACHE_PARAM, "r");

		TEST_ASSERT(f && fscanf(f, "%15s", cache0) == 1, "read " CACHE_PARAM);
		fclose(f);
		write_file(CACHE_PARAM, "0");
		write_file(CACHE_PARAM, cache0);
		removed0 = get_vmstat("direct_map_removed");
		restored0 = get_vmstat("direct_map_restored");
	}
	free0 = get_free_pages();

	pid = fork();
	TEST_ASSERT(pid >= 0, "fork");
	if (!pid) {
		run_stress(seconds);
		exit(0);
	}
	TEST_ASSERT(waitpid(pid, &status, 0) == pid, "waitpid");
	TEST_ASSERT(WIFEXITED(status) && !WEXITSTATUS(status),
		    "the stress failed (status 0x%x)", status);

	if (series) {
		/* Empty the cache of free blocks: then every page is restored. */
		write_file(CACHE_PARAM, "0");
		removed = get_vmstat("direct_map_removed") - removed0;
		left = removed - (get_vmstat("direct_map_restored") - restored0);
	}
	/* What RCU and the workqueues free late may take a moment. */
	for (i = 0; i < 10; i++) {
		free1 = get_free_pages();
		if (free1 + FREE_SLACK >= free0)
			break;
		sleep(1);
	}
	printf("# kp-figure: stress%s: %lu pages removed, %lu left out of the direct map; ",
	       mode_name(), removed, left);
	printf("free pages %lu before, %lu after\n", free0, free1);
	if (series)
		write_file(CACHE_PARAM, cache0);
	TEST_ASSERT(!(kernel_taint() & ~taint0 & REPORT_TAINTS),
		    "kernel report (taint %#lx, was %#lx): see its log",
		    kernel_taint(), taint0);
	TEST_ASSERT(report_count(WARN_COUNT) == warns0 &&
		    report_count(OOPS_COUNT) == oopses0,
		    "the kernel warned or oopsed: see its log");
	TEST_ASSERT(lockdep_debug_locks() == lockdep0, "lockdep reported: see the kernel log");
	TEST_ASSERT_EQ(left, 0);
	/* Without the flag nothing leaves the direct map. */
	if (plain)
		TEST_ASSERT_EQ(removed, 0);
	TEST_ASSERT(free1 + FREE_SLACK >= free0, "%lu pages fewer free",
		    free0 - free1);
	return 0;
}
