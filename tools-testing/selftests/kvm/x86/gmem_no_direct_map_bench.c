// SPDX-License-Identifier: GPL-2.0-only
/*
 * Direct-map fragmentation and conversion cost of guest_memfd memory outside
 * the direct map (GUEST_MEMFD_FLAG_NO_DIRECT_MAP), in four modes, in one
 * boot:
 *
 *   plain     guest_memfd without the flag (nothing is removed);
 *   per-page  the flag, with debugfs's kvm/gmem_no_direct_map_blocks=N
 *             (each page is taken on its own from mm's direct-map pool,
 *             which removes whole pageblocks for them);
 *   blocks    the flag, with 2 MiB blocks (the default), and the pool
 *             keeping no free block (direct_map_pool.max_free_blocks=0):
 *             every block is allocated and removed, and mapped again at
 *             teardown;
 *   cached    the same with the pool keeping enough free blocks, filled by
 *             an untimed run before: every block comes from the pool,
 *             already zeroed and removed.  The pool is emptied before "left"
 *             is counted.
 *
 * For each size, a software-protected VM converts its memory to private in
 * 2 MiB requests, the way a VMM handles KVM_HC_MAP_GPA_RANGE for memory
 * outside the direct map: fallocate() the range of the guest_memfd, then
 * KVM_SET_MEMORY_ATTRIBUTES.  Then the memory is punched out and the
 * guest_memfd and the VM are closed.  /proc/vmstat and the VM's stats give
 * the splits, collapses, flushes and pages; the clock gives the rate.
 *
 * Then the end-to-end cost (below), at 64 MiB or the maximum size if it
 * is smaller.
 *
 * Prints tables and, one per mode and size, "csv:" and "e2e:" lines for
 * scripts/bench-plot.py.  Exits 1 if a figure breaks a rule that must
 * always hold (a page left out of the direct map after teardown, more than
 * one TLB flush per request); the targets are reported, not enforced.
 *
 * Usage: gmem_no_direct_map_bench [max size in MiB, default 1024]
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <linux/falloc.h>
#include <linux/sizes.h>

#include "kvm_util.h"
#include "processor.h"
#include "test_util.h"
#include "ucall_common.h"

#define BLOCKS_PARAM	"/sys/kernel/debug/kvm/gmem_no_direct_map_blocks"
#define CACHE_PARAM	"/sys/module/direct_map_pool/parameters/max_free_blocks"

enum mode { PLAIN, PER_PAGE, BLOCKS, CACHED, NR_MODES };

static const char * const mode_name[NR_MODES] = {
	"plain", "per-page", "blocks", "cached"
};

struct counters {
	u64 removed, restored, flushes, l2_splits, l3_splits, l2_coll, l3_coll;
};

static void read_counters(struct counters *c)
{
	c->removed = get_vmstat("direct_map_removed");
	c->restored = get_vmstat("direct_map_restored");
	c->flushes = get_vmstat("direct_map_remove_flushes");
	c->l2_splits = get_vmstat("direct_map_level2_splits");
	c->l3_splits = get_vmstat("direct_map_level3_splits");
	c->l2_coll = get_vmstat("direct_map_level2_collapses");
	c->l3_coll = get_vmstat("direct_map_level3_collapses");
}

static void set_blocks(bool on)
{
	write_file(BLOCKS_PARAM, on ? "Y" : "N");
}

/* Lowering the limit frees the blocks beyond it: 0 empties the pool. */
static void set_cache(u64 blocks)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "%lu", blocks);
	write_file(CACHE_PARAM, buf);
}

/* Fill the pool with @size of free blocks. */
static void warm_cache(u64 size)
{
	struct kvm_vm *vm = vm_create_barebones_type(KVM_X86_SW_PROTECTED_VM);
	int fd = vm_create_guest_memfd(vm, size, GUEST_MEMFD_FLAG_NO_DIRECT_MAP);

	TEST_ASSERT(!fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, size), "warm-up");
	close(fd);
	kvm_vm_free(vm);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct result {
	double secs;
	u64 requests, flushes, l2_splits, l3_splits, l2_coll, l3_coll;
	u64 removed, left, vm_flushes;
};

static void run(enum mode mode, u64 size, struct result *r)
{
	u64 flags = mode == PLAIN ? 0 : GUEST_MEMFD_FLAG_NO_DIRECT_MAP;
	struct counters z, a, b, c;
	struct kvm_vm *vm;
	double t0;
	u64 off;
	int fd;

	/* Empty the cache first: restoring what it held is not this run's. */
	set_cache(0);
	read_counters(&z);
	set_blocks(mode != PER_PAGE);
	if (mode == CACHED) {
		set_cache(size / SZ_2M);
		warm_cache(size);
	}

	vm = vm_create_barebones_type(KVM_X86_SW_PROTECTED_VM);
	fd = vm_create_guest_memfd(vm, size, flags);

	read_counters(&a);
	t0 = now();
	for (off = 0; off < size; off += SZ_2M) {
		TEST_ASSERT(!fallocate(fd, FALLOC_FL_KEEP_SIZE, off, SZ_2M),
			    "fallocate at 0x%lx", off);
		vm_set_memory_attributes(vm, off, SZ_2M,
					 KVM_MEMORY_ATTRIBUTE_PRIVATE);
	}
	r->secs = now() - t0;
	read_counters(&b);
	r->requests = size / SZ_2M;
	r->vm_flushes = flags ? vm_get_stat(vm, direct_map_flushes) : 0;

	TEST_ASSERT(!fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
			       0, size), "punch");
	close(fd);
	kvm_vm_free(vm);
	set_cache(0);
	read_counters(&c);

	r->flushes = b.flushes - a.flushes;
	r->l2_splits = b.l2_splits - a.l2_splits;
	r->l3_splits = b.l3_splits - a.l3_splits;
	r->l2_coll = c.l2_coll - b.l2_coll;
	r->l3_coll = c.l3_coll - b.l3_coll;
	r->removed = b.removed - a.removed;
	r->left = (c.removed - z.removed) - (c.restored - z.restored);
}

/*
 * End to end: a vCPU writes every page of its memory, from fresh memory (the
 * pool keeping no free block) and from the pool's free blocks, for plain
 * guest_memfd and with the flag, in four ways:
 *
 *   fallocate  the VMM allocates the private memory (fallocate()) first;
 *   fault      the guest's faults bring in the private memory;
 *   mmap-vmm   MMAP | INIT_SHARED on a KVM_X86_DEFAULT_VM, the VMM touches
 *              every page through its mapping first;
 *   mmap-guest the same, the guest's faults bring the memory in.
 *
 * The time runs from the first allocation to the guest's last write.
 */
#define E2E_GPA		SZ_4G
#define E2E_SLOT	10

enum e2e { E2E_FALLOCATE, E2E_FAULT, E2E_MMAP_VMM, E2E_MMAP_GUEST, NR_E2E };

static const char * const e2e_name[NR_E2E] = {
	"fallocate", "fault", "mmap-vmm", "mmap-guest"
};

static u64 e2e_size;

static void guest_touch_all(void)
{
	u64 off;

	for (off = 0; off < e2e_size; off += PAGE_SIZE)
		WRITE_ONCE(*(u64 *)(E2E_GPA + off), off);
	GUEST_DONE();
}

struct e2e_result {
	double secs;
	u64 flushes, l2_splits;
};

static void e2e_run(enum e2e how, bool ndm, bool cached, u64 size,
		    struct e2e_result *r)
{
	bool mapped = how == E2E_MMAP_VMM || how == E2E_MMAP_GUEST;
	const struct vm_shape shape = {
		.mode = VM_MODE_DEFAULT,
		.type = mapped ? KVM_X86_DEFAULT_VM : KVM_X86_SW_PROTECTED_VM,
	};
	u64 flags = (ndm ? GUEST_MEMFD_FLAG_NO_DIRECT_MAP : 0) |
		    (mapped ? GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED : 0);
	struct kvm_vcpu *vcpu;
	struct counters a, b;
	struct kvm_vm *vm;
	struct ucall uc;
	double t0;
	u8 *mem;
	u64 off;
	int fd;

	set_cache(0);
	set_blocks(true);
	if (cached && ndm) {
		set_cache(size / SZ_2M);
		warm_cache(size);
	}

	/* Room in the first memslot for the page tables of the mapping. */
	vm = __vm_create_shape_with_one_vcpu(shape, &vcpu, size / PAGE_SIZE / 256,
					     guest_touch_all);
	e2e_size = size;
	sync_global_to_guest(vm, e2e_size);
	fd = vm_create_guest_memfd(vm, size, flags);
	vm_mem_add(vm, mapped ? VM_MEM_SRC_GUEST_MEMFD_NO_DIRECT_MAP :
		   VM_MEM_SRC_ANONYMOUS, E2E_GPA, E2E_SLOT, size / PAGE_SIZE,
		   KVM_MEM_GUEST_MEMFD, fd, 0);
	virt_map(vm, E2E_GPA, E2E_GPA, size / PAGE_SIZE);
	if (!mapped)
		vm_set_memory_attributes(vm, E2E_GPA, size,
					 KVM_MEMORY_ATTRIBUTE_PRIVATE);
	mem = addr_gpa2hva(vm, E2E_GPA);

	read_counters(&a);
	t0 = now();
	if (how == E2E_FALLOCATE)
		TEST_ASSERT(!fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, size),
			    "fallocate");
	if (how == E2E_MMAP_VMM)
		for (off = 0; off < size; off += PAGE_SIZE)
			WRITE_ONCE(mem[off], 1);
	vcpu_run(vcpu);
	r->secs = now() - t0;
	read_counters(&b);
	TEST_ASSERT_KVM_EXIT_REASON(vcpu, KVM_EXIT_IO);
	TEST_ASSERT_EQ(get_ucall(vcpu, &uc), UCALL_DONE);
	r->flushes = b.flushes - a.flushes;
	r->l2_splits = b.l2_splits - a.l2_splits;

	close(fd);
	kvm_vm_free(vm);
	set_cache(0);
}

/* Returns whether a rule that must always hold was broken. */
static int end_to_end(u64 size)
{
	int how, cached, bad = 0;

	printf("%-10s %-6s %5s %9s %9s %8s %10s %9s\n", "end to end", "from",
	       "MiB", "plain s", "flag s", "vs plain", "flush/2MiB",
	       "l2spl/GiB");
	for (how = 0; how < NR_E2E; how++) {
		for (cached = 0; cached < 2; cached++) {
			struct e2e_result plain, flag;
			double blocks = (double)size / SZ_2M;

			e2e_run(how, false, false, size, &plain);
			e2e_run(how, true, cached, size, &flag);
			printf("%-10s %-6s %5lu %9.3f %9.3f %7.2fx %10.3f %9.1f\n",
			       e2e_name[how], cached ? "pool" : "fresh",
			       size / SZ_1M, plain.secs, flag.secs,
			       plain.secs / flag.secs, flag.flushes / blocks,
			       flag.l2_splits / ((double)size / SZ_1G));
			printf("e2e: %s,%s,%lu,%.6f,%.6f,%lu,%lu\n",
			       e2e_name[how], cached ? "pool" : "fresh",
			       size / SZ_1M, plain.secs, flag.secs,
			       flag.flushes, flag.l2_splits);
			if (flag.flushes > blocks) {
				printf("# %s: %lu flushes for %.0f blocks\n",
				       e2e_name[how], flag.flushes, blocks);
				bad = 1;
			}
		}
	}
	return bad;
}

int main(int argc, char *argv[])
{
	u64 max = (argc > 1 ? strtoull(argv[1], NULL, 0) : 1024) * SZ_1M;
	static const u64 sizes[] = { SZ_2M, SZ_64M, SZ_256M, SZ_1G };
	int i, m, bad = 0;

	TEST_REQUIRE(kvm_check_cap(KVM_CAP_VM_TYPES) & BIT(KVM_X86_SW_PROTECTED_VM));
	TEST_REQUIRE(kvm_check_cap(KVM_CAP_GUEST_MEMFD_FLAGS) &
		     GUEST_MEMFD_FLAG_NO_DIRECT_MAP);
	TEST_REQUIRE(can_write(BLOCKS_PARAM) && can_write(CACHE_PARAM));

	printf("%-9s %7s %9s %9s %9s %11s %9s %8s %6s\n", "mode", "MiB",
	       "l2spl/GiB", "l3spl/GiB", "collapsed", "flush/req", "MiB/s",
	       "vs plain", "left");
	for (i = 0; i < ARRAY_SIZE(sizes) && sizes[i] <= max; i++) {
		struct result res[NR_MODES];

		for (m = 0; m < NR_MODES; m++) {
			struct result *r = &res[m];
			double gib = (double)sizes[i] / SZ_1G;
			u64 split;

			run(m, sizes[i], r);
			split = r->l2_splits + r->l3_splits;
			printf("%-9s %7lu %9.1f %9.1f %8.1f%% %11.3f %9.1f %7.2fx %6lu\n",
			       mode_name[m], sizes[i] / SZ_1M,
			       r->l2_splits / gib, r->l3_splits / gib,
			       split ? 100.0 * (r->l2_coll + r->l3_coll) / split : 100.0,
			       (double)r->flushes / r->requests,
			       sizes[i] / SZ_1M / r->secs,
			       res[PLAIN].secs / r->secs, r->left);
			printf("csv: %s,%lu,%lu,%lu,%lu,%lu,%lu,%lu,%.6f,%.6f,%lu,%lu\n",
			       mode_name[m], sizes[i] / SZ_1M, r->requests,
			       r->l2_splits, r->l3_splits, r->l2_coll, r->l3_coll,
			       r->flushes, r->secs, res[PLAIN].secs / r->secs,
			       r->left, r->vm_flushes);
			if (r->left) {
				printf("# %s: %lu pages left out of the direct map\n",
				       mode_name[m], r->left);
				bad = 1;
			}
			if (m != PLAIN && r->flushes > r->requests) {
				printf("# %s: %lu flushes for %lu requests\n",
				       mode_name[m], r->flushes, r->requests);
				bad = 1;
			}
		}
	}
	bad |= end_to_end(min_t(u64, max, SZ_64M));
	set_blocks(true);
	set_cache(16);
	return bad;
}
