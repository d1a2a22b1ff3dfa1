// SPDX-License-Identifier: GPL-2.0-only
/*
 * guest_memfd memory outside the host's direct map
 * (GUEST_MEMFD_FLAG_NO_DIRECT_MAP): the ABI, what the host kernel can read,
 * the stats, and the errors when removing memory from the direct map fails.
 *
 * The failures are injected with the fail_direct_map fault point
 * (CONFIG_FAIL_DIRECT_MAP, debugfs), and by the fail_nth tests also with
 * fail_page_alloc and failslab (CONFIG_FAIL_PAGE_ALLOC, CONFIG_FAILSLAB);
 * the host kernel's view of the memory is read from /proc/kcore
 * (CONFIG_PROC_KCORE).  Tests that need them skip without them.
 *
 * Run by the kselftest runner, the program must end within the KVM
 * directory's timeout (120 s, tools/testing/selftests/kvm/settings).  The
 * tests that change the host for good run only when asked to, through the
 * environment: GMEM_NO_DIRECT_MAP_TEST_HWPOISON=1 (poisons host pages) and
 * GMEM_NO_DIRECT_MAP_TEST_HOTPLUG=1 (onlines and ejects hot-pluggable
 * memory); the /proc/kcore scans (the secret_* cases and the end of
 * mapped_fault_removes) read all of RAM and run on a host with more than
 * 16 GiB only with GMEM_NO_DIRECT_MAP_TEST_KCORE=1.
 *
 * The flag needs CONFIG_KVM_PROTMEM, which is written in Rust (CONFIG_RUST);
 * the KVM selftests' config does not turn them on, and the test skips
 * without them.  The tests
 * of the "mode" fixture run twice: with a whole 2 MiB block of mm's
 * direct-map pool for each 2 MiB range (the default) and page by page
 * (debugfs's kvm/gmem_no_direct_map_blocks=N), both with the pool keeping
 * no free block (direct_map_pool.max_free_blocks=0), which the block_cache
 * tests turn on.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include <linux/elf.h>
#include <linux/falloc.h>
#include <linux/kernel-page-flags.h>
#include <linux/kvm_para.h>
#include <linux/sizes.h>
#include <asm/kvm_para.h>
#include <asm/pvclock-abi.h>

#include "kvm_util.h"
#include "numaif.h"
#include "processor.h"
#include "svm_util.h"
#include "test_util.h"
#include "kselftest_harness.h"

#define DATA_SLOT	10
#define DATA_GPA	SZ_4G
#define DATA_SIZE	SZ_4M
#define DATA_PAGES	(DATA_SIZE / PAGE_SIZE)

#define SECRET_WORDS	8

#define FAIL_DIR	"/sys/kernel/debug/fail_direct_map/"
#define FAIL_PAGE_DIR	"/sys/kernel/debug/fail_page_alloc/"
#define FAIL_SLAB_DIR	"/sys/kernel/debug/failslab/"
#define BLOCKS_PARAM	"/sys/kernel/debug/kvm/gmem_no_direct_map_blocks"
#define CACHE_PARAM	"/sys/module/direct_map_pool/parameters/max_free_blocks"
#define BLOCK_PAGES	(SZ_2M / PAGE_SIZE)
#define CG_ROOT		"/sys/fs/cgroup"
#define CG_TEST		CG_ROOT "/gmem_no_direct_map_test"

/*
 * Each test that writes a secret picks a new one: memory freed by an earlier
 * test (plain guest_memfd does not clear it) may still hold the last one.
 */
static u64 secret_seed;

static void new_secret(struct kvm_vm *vm)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	secret_seed = ((u64)getpid() << 40) ^ ((u64)ts.tv_sec << 30) ^ ts.tv_nsec;
	sync_global_to_guest(vm, secret_seed);
}

/* A word of the secret; the host only ever keeps its complement. */
static u64 secret_word(int i)
{
	u64 x = secret_seed + i * 0x9e3779b97f4a7c15ULL;

	x ^= x >> 31;
	x *= 0xbf58476d1ce4e5b9ULL;
	return x ^ (x >> 29);
}

static const struct vm_shape sw_protected = {
	.mode = VM_MODE_DEFAULT,
	.type = KVM_X86_SW_PROTECTED_VM,
};

static const struct vm_shape default_vm = {
	.mode = VM_MODE_DEFAULT,
	.type = KVM_X86_DEFAULT_VM,
};

/*
 * A default VM whose memory, from the first memslot on, is a guest_memfd
 * created with MMAP | INIT_SHARED | NO_DIRECT_MAP and mapped by the VMM.
 */
static const struct vm_shape gmem_only_vm = {
	.mode = VM_MODE_DEFAULT,
	.type = KVM_X86_DEFAULT_VM,
	.src_type = VM_MEM_SRC_GUEST_MEMFD_NO_DIRECT_MAP,
};

static int read_int(const char *path)
{
	char buf[32] = {};
	int fd = open(path, O_RDONLY);

	TEST_ASSERT(fd >= 0, "open %s", path);
	TEST_ASSERT(read(fd, buf, sizeof(buf) - 1) > 0, "read %s", path);
	close(fd);
	return atoi(buf);
}

static void write_int(const char *path, int val)
{
	char buf[16];

	snprintf(buf, sizeof(buf), "%d", val);
	write_file(path, buf);
}

/*
 * Set the most free 2 MiB blocks that mm's direct-map pool keeps off the
 * direct map, and return the old limit.  Lowering it maps the blocks beyond
 * the new limit again and frees them before the write returns, so 0 empties
 * the pool of free blocks.
 */
static int block_cache(int max)
{
	int old = read_int(CACHE_PARAM);

	write_int(CACHE_PARAM, max);
	return old;
}

/*
 * Wait up to @secs seconds for the vmstat counter @name to reach @want, and
 * return its value: blocks are mapped again by a worker.
 */
static u64 wait_vmstat(const char *name, u64 want, int secs)
{
	u64 val;
	int i;

	for (i = 0; i < secs * 100; i++) {
		val = get_vmstat(name);
		if (val >= want)
			break;
		usleep(10000);
	}
	return val;
}

FIXTURE(mode) {
	int cache;
};

FIXTURE_VARIANT(mode) {
	bool blocks;
};

FIXTURE_VARIANT_ADD(mode, blocks) {
	.blocks = true,
};

FIXTURE_VARIANT_ADD(mode, per_page) {
	.blocks = false,
};

/*
 * Whole 2 MiB blocks for empty 2 MiB ranges (KVM's default) or single pages,
 * through KVM's debugfs knob; false if that mode cannot be had (no debugfs:
 * blocks, the default, can).
 */
static bool use_blocks(bool on)
{
	if (!can_write(BLOCKS_PARAM))
		return on;
	write_file(BLOCKS_PARAM, on ? "Y" : "N");
	return true;
}

FIXTURE_SETUP(mode)
{
	if (access(CACHE_PARAM, W_OK))
		SKIP(return, "no %s", CACHE_PARAM);
	if (!use_blocks(variant->blocks))
		SKIP(return, "no %s (debugfs)", BLOCKS_PARAM);
	self->cache = block_cache(0);
}

static bool can_inject(void);
static void inject_off(void);

FIXTURE_TEARDOWN_PARENT(mode)
{
	/* The only fault point these tests arm. */
	if (can_inject())
		inject_off();
	use_blocks(true);
	if (!access(CACHE_PARAM, W_OK))
		block_cache(self->cache);
}

/* Pages that a fault on one page brings in. */
static u64 fault_pages(bool blocks)
{
	return blocks ? BLOCK_PAGES : 1;
}

static bool can_inject(void)
{
	return can_write(FAIL_DIR "times");
}

/*
 * Fail every removal from the nth from now on: the pool removes 2 MiB
 * pageblocks, and tries another node when a removal fails, so one failure
 * alone may not reach the caller.  The fault point skips @space bytes.
 */
static void inject_nth(int nth)
{
	char buf[32];

	/* Only this thread's removals (and its children's) fail. */
	write_file("/proc/thread-self/make-it-fail", "1");
	write_file(FAIL_DIR "task-filter", "Y");
	write_file(FAIL_DIR "verbose", "0");
	write_file(FAIL_DIR "probability", "100");
	write_file(FAIL_DIR "interval", "1");
	snprintf(buf, sizeof(buf), "%lu",
		 nth > 1 ? (nth - 1) * (unsigned long)SZ_2M + 1 : 0);
	write_file(FAIL_DIR "space", buf);
	write_file(FAIL_DIR "times", "-1");
}

static void inject_off(void)
{
	write_file(FAIL_DIR "times", "0");
	write_file(FAIL_DIR "probability", "0");
	write_file(FAIL_DIR "interval", "1");
	write_file(FAIL_DIR "space", "0");
	write_file(FAIL_DIR "task-filter", "N");
	write_file("/proc/thread-self/make-it-fail", "0");
}

static void fault_attr_off(const char *dir)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%stimes", dir);
	if (!can_write(path))
		return;
	write_file(path, "0");
	snprintf(path, sizeof(path), "%sprobability", dir);
	write_file(path, "0");
}

/*
 * Disarm every fault point a test may arm, and set fail_page_alloc's and
 * failslab's options back to their defaults, from a fixture's teardown.
 * The fixtures tear down in the parent, which the harness does however the
 * test ended (an assertion, a library TEST_ASSERT()'s exit, a crash), but
 * for the harness's own timeout: an armed fault point would fail the host's
 * other allocations.  fail-nth belongs to the test's task and ends with it.
 */
static void disarm_fault_injection(void)
{
	if (can_inject())
		inject_off();
	fault_attr_off(FAIL_PAGE_DIR);
	fault_attr_off(FAIL_SLAB_DIR);
	/* fail_page_alloc's and failslab's defaults. */
	if (can_write(FAIL_PAGE_DIR "min-order")) {
		write_file(FAIL_PAGE_DIR "min-order", "1");
		write_file(FAIL_PAGE_DIR "ignore-gfp-wait", "Y");
		write_file(FAIL_PAGE_DIR "ignore-gfp-highmem", "Y");
	}
	if (can_write(FAIL_SLAB_DIR "ignore-gfp-wait"))
		write_file(FAIL_SLAB_DIR "ignore-gfp-wait", "Y");
}

static struct kvm_vm *vm_with_gmem(void *guest_code, struct kvm_vcpu **vcpu,
				   u64 flags, int *gmem)
{
	struct kvm_vm *vm = vm_create_shape_with_one_vcpu(sw_protected, vcpu,
							  guest_code);

	*gmem = vm_create_guest_memfd(vm, DATA_SIZE, flags);
	vm_mem_add(vm, VM_MEM_SRC_ANONYMOUS, DATA_GPA, DATA_SLOT, DATA_PAGES,
		   KVM_MEM_GUEST_MEMFD, *gmem, 0);
	virt_map(vm, DATA_GPA, DATA_GPA, DATA_PAGES);
	return vm;
}

/* The flags of this series, and what each VM type takes. */
#define GMEM_FLAGS	(GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED | \
			 GUEST_MEMFD_FLAG_NO_DIRECT_MAP)
#define NDM_MAPPED	GMEM_FLAGS

/*
 * KVM_CAP_GUEST_MEMFD_FLAGS lists exactly the flags that work, system-wide
 * (/dev/kvm) and per VM type: INIT_SHARED only where the VM has no private
 * memory, as without NO_DIRECT_MAP.  Every combination of listed flags
 * works, NO_DIRECT_MAP with MMAP and INIT_SHARED included.
 */
TEST(flags_and_caps)
{
	const struct {
		const struct vm_shape *shape;
		u64 caps;
	} vms[] = {
		{ &default_vm, GMEM_FLAGS },
		{ &sw_protected, GMEM_FLAGS & ~GUEST_MEMFD_FLAG_INIT_SHARED },
	};
	u64 sys = kvm_check_cap(KVM_CAP_GUEST_MEMFD_FLAGS);
	int i;

	ASSERT_EQ(sys & GMEM_FLAGS, GMEM_FLAGS);

	for (i = 0; i < ARRAY_SIZE(vms); i++) {
		struct kvm_vm *vm = vm_create_barebones_type(vms[i].shape->type);
		u64 caps = vm_check_cap(vm, KVM_CAP_GUEST_MEMFD_FLAGS);
		u64 flags;
		int fd;

		ASSERT_EQ(caps & GMEM_FLAGS, vms[i].caps);

		/* Every combination of NO_DIRECT_MAP with the others. */
		for (flags = 0; flags <= GMEM_FLAGS; flags++) {
			bool valid = !(flags & ~caps);

			if (!(flags & GUEST_MEMFD_FLAG_NO_DIRECT_MAP))
				continue;
			fd = __vm_create_guest_memfd(vm, DATA_SIZE, flags);
			if (valid) {
				ASSERT_GE(fd, 0) TH_LOG("flags 0x%lx", flags);
				close(fd);
			} else {
				ASSERT_EQ(fd, -1) TH_LOG("flags 0x%lx", flags);
				ASSERT_EQ(errno, EINVAL);
			}
		}

		/* Unknown flags and bad sizes. */
		fd = __vm_create_guest_memfd(vm, DATA_SIZE,
					     GUEST_MEMFD_FLAG_NO_DIRECT_MAP |
					     (1ULL << 63));
		ASSERT_EQ(fd, -1);
		ASSERT_EQ(errno, EINVAL);
		fd = __vm_create_guest_memfd(vm, PAGE_SIZE + 1,
					     GUEST_MEMFD_FLAG_NO_DIRECT_MAP);
		ASSERT_EQ(fd, -1);
		ASSERT_EQ(errno, EINVAL);
		fd = __vm_create_guest_memfd(vm, 0,
					     GUEST_MEMFD_FLAG_NO_DIRECT_MAP);
		ASSERT_EQ(fd, -1);
		ASSERT_EQ(errno, EINVAL);

		kvm_vm_free(vm);
	}
}

#define KCORE_OPT_IN	"GMEM_NO_DIRECT_MAP_TEST_KCORE"
/* The RAM a secret scan reads unless asked to read more. */
#define KCORE_SCAN_MAX	(16ULL * SZ_1G)

static u64 read_meminfo(const char *name);

/*
 * Why the secret scans, which read all of RAM through /proc/kcore, cannot
 * run here, or NULL.  On a host with much memory a scan outlasts the
 * kselftest runner's timeout (120 s for KVM): above KCORE_SCAN_MAX of RAM
 * they run only when GMEM_NO_DIRECT_MAP_TEST_KCORE is 1.
 */
static const char *kcore_scan_refused(void)
{
	const char *opt_in = getenv(KCORE_OPT_IN);
	static char why[128];
	u64 total;

	if (access("/proc/kcore", R_OK))
		return "no /proc/kcore (CONFIG_PROC_KCORE)";
	if (opt_in && !strcmp(opt_in, "1"))
		return NULL;
	total = read_meminfo("MemTotal");
	if (total <= KCORE_SCAN_MAX)
		return NULL;
	snprintf(why, sizeof(why),
		 "would read %llu MiB through /proc/kcore: set %s=1",
		 (unsigned long long)(total >> 20), KCORE_OPT_IN);
	return why;
}

/* Whether a kcore segment is RAM: in the direct map, below the kernel image. */
static bool kcore_ram(const struct elf64_phdr *ph)
{
	return ph->p_type == PT_LOAD && ph->p_paddr != (u64)-1 &&
	       ph->p_vaddr < 0xffffffff80000000ULL;
}

/*
 * Scan the host's direct map, through /proc/kcore, for the secret.  The RAM
 * segments of kcore are the PT_LOAD headers with a physical address below
 * the kernel image.  A page that is not mapped reads as zeroes.
 */
static bool kcore_has_secret(void)
{
	const size_t chunk = SZ_1M;
	u64 want[SECRET_WORDS];
	struct elf64_hdr eh;
	bool found = false;
	u8 *buf;
	int fd, i;

	for (i = 0; i < SECRET_WORDS; i++)
		want[i] = ~secret_word(i);

	fd = open("/proc/kcore", O_RDONLY);
	TEST_ASSERT(fd >= 0, "open /proc/kcore");
	TEST_ASSERT(pread(fd, &eh, sizeof(eh), 0) == sizeof(eh), "kcore ehdr");
	buf = malloc(chunk);
	TEST_ASSERT(buf, "malloc");

	for (i = 0; i < eh.e_phnum && !found; i++) {
		struct elf64_phdr ph;
		u64 off;

		TEST_ASSERT(pread(fd, &ph, sizeof(ph),
				  eh.e_phoff + i * sizeof(ph)) == sizeof(ph),
			    "kcore phdr");
		if (!kcore_ram(&ph))
			continue;

		for (off = 0; off < ph.p_filesz && !found; off += chunk) {
			size_t len = min_t(u64, chunk, ph.p_filesz - off);
			ssize_t r = pread(fd, buf, len, ph.p_offset + off);
			size_t j;

			TEST_ASSERT(r == (ssize_t)len, "kcore read");
			for (j = 0; j + sizeof(want) <= len; j += 64) {
				u64 *w = (u64 *)(buf + j);
				int k;

				for (k = 0; k < SECRET_WORDS; k++)
					if (w[k] != ~want[k])
						break;
				if (k == SECRET_WORDS) {
					found = true;
					break;
				}
			}
		}
	}
	/* Do not leave the secret around in this process. */
	memset(buf, 0, chunk);
	free(buf);
	close(fd);
	return found;
}

static void guest_write_secret(void)
{
	u64 *p = (u64 *)DATA_GPA;
	int i;

	for (i = 0; i < SECRET_WORDS; i++)
		p[i] = secret_word(i);
	GUEST_SYNC(1);
	for (i = 0; i < SECRET_WORDS; i++)
		GUEST_ASSERT_EQ(p[i], secret_word(i));
	GUEST_DONE();
}

static void run_until(struct kvm_vcpu *vcpu, u64 want)
{
	struct ucall uc;

	vcpu_run(vcpu);
	TEST_ASSERT_KVM_EXIT_REASON(vcpu, KVM_EXIT_IO);
	switch (get_ucall(vcpu, &uc)) {
	case UCALL_ABORT:
		REPORT_GUEST_ASSERT(uc);
		break;
	default:
		TEST_ASSERT(uc.cmd == want, "ucall %lu, wanted %lu", uc.cmd, want);
	}
}

/*
 * The guest writes a secret to private memory.  Without the flag the host
 * kernel finds it in its direct map (which shows that the scan works); with
 * the flag it does not, and the guest still reads its secret back.
 */
static void secret_test(u64 flags, bool visible)
{
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	int gmem;

	vm = vm_with_gmem(guest_write_secret, &vcpu, flags, &gmem);
	new_secret(vm);
	vm_mem_set_private(vm, DATA_GPA, DATA_SIZE);

	run_until(vcpu, UCALL_SYNC);
	TEST_ASSERT_EQ(kcore_has_secret(), visible);
	run_until(vcpu, UCALL_DONE);

	close(gmem);
	kvm_vm_free(vm);
	/*
	 * Pages that leave a NO_DIRECT_MAP guest_memfd are zeroed as they are
	 * mapped again (plain guest_memfd leaves that to the page allocator).
	 */
	if (flags & GUEST_MEMFD_FLAG_NO_DIRECT_MAP)
		TEST_ASSERT_EQ(kcore_has_secret(), false);
}

FIXTURE(kcore) {
};

FIXTURE_SETUP(kcore)
{
	const char *why = kcore_scan_refused();

	if (why)
		SKIP(return, "%s", why);
}

FIXTURE_TEARDOWN(kcore)
{
}

/*
 * The scan reads RAM through /proc/kcore until it finds the secret: more
 * than the harness's default 30 s on a slow or crowded host (seen with 20
 * vCPUs under TCG).
 */
TEST_F_TIMEOUT(kcore, secret_visible_without_flag, 180)
{
	secret_test(0, true);
}

/* Reading all of RAM through /proc/kcore twice takes a while on a debug kernel. */
TEST_F_TIMEOUT(mode, secret_not_in_direct_map, 180)
{
	const char *why = kcore_scan_refused();

	if (why)
		SKIP(return, "%s", why);
	secret_test(GUEST_MEMFD_FLAG_NO_DIRECT_MAP, false);
}

static void guest_nothing(void)
{
	GUEST_DONE();
}

static u64 splits(void)
{
	return get_vmstat("direct_map_level2_splits") +
	       get_vmstat("direct_map_level3_splits");
}

static u64 collapses(void)
{
	return get_vmstat("direct_map_level2_collapses") +
	       get_vmstat("direct_map_level3_collapses");
}

/*
 * fallocate() removes the whole range with one TLB flush; punching a hole
 * and closing the guest_memfd restore it; the VM's stats and /proc/vmstat
 * agree, down to the large mappings split and collapsed again.  In 2 MiB
 * blocks no 2 MiB mapping is split, and a page punched out of a block stays
 * removed until the whole block is free.
 */
TEST_F(mode, stats_follow_the_page_cache)
{
	u64 removed0 = get_vmstat("direct_map_removed");
	u64 restored0 = get_vmstat("direct_map_restored");
	u64 l2_splits0 = get_vmstat("direct_map_level2_splits");
	u64 splits0 = splits(), collapses0 = collapses();
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	int gmem;

	vm = vm_with_gmem(guest_nothing, &vcpu, GUEST_MEMFD_FLAG_NO_DIRECT_MAP,
			  &gmem);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), 0);

	ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE, 0, DATA_SIZE), 0);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), DATA_PAGES);
	ASSERT_EQ(vm_get_stat(vm, direct_map_flushes), 1);
	ASSERT_EQ(get_vmstat("direct_map_removed") - removed0, DATA_PAGES);
	if (variant->blocks)
		ASSERT_EQ(get_vmstat("direct_map_level2_splits"), l2_splits0);
	TH_LOG("%s: %lu splits (level 2: %lu) for %lu pages",
	       variant->blocks ? "blocks" : "per page", splits() - splits0,
	       get_vmstat("direct_map_level2_splits") - l2_splits0,
	       (u64)DATA_PAGES);

	/* Already there: nothing to do. */
	ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE, 0, DATA_SIZE), 0);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), DATA_PAGES);
	ASSERT_EQ(vm_get_stat(vm, direct_map_flushes), 1);

	ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
			    0, DATA_SIZE / 2), 0);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), DATA_PAGES / 2);

	/* One page out of the second half. */
	ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
			    DATA_SIZE / 2 + PAGE_SIZE, PAGE_SIZE), 0);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), DATA_PAGES / 2 - 1);

	/* Closing the last file restores the rest, while the VM lives. */
	vm_mem_region_delete(vm, DATA_SLOT);
	close(gmem);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), 0);
	kvm_vm_free(vm);

	ASSERT_EQ(get_vmstat("direct_map_removed") - removed0, DATA_PAGES);
	ASSERT_EQ(get_vmstat("direct_map_restored") - restored0, DATA_PAGES);
	/* Every large mapping the removals split is whole again. */
	ASSERT_EQ(collapses() - collapses0, splits() - splits0);
}

/*
 * A removal that fails in the middle of a request: fallocate() gets ENOMEM,
 * nothing of the request stays allocated or removed, and the next try works.
 */
TEST_F(mode, fallocate_enomem)
{
	u64 removed0 = get_vmstat("direct_map_removed");
	u64 restored0 = get_vmstat("direct_map_restored");
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	int gmem, nth;

	if (!can_inject())
		SKIP(return, "no " FAIL_DIR " (CONFIG_FAIL_DIRECT_MAP)");

	vm = vm_with_gmem(guest_nothing, &vcpu, GUEST_MEMFD_FLAG_NO_DIRECT_MAP,
			  &gmem);
	for (nth = 1; nth <= 2; nth++) {
		inject_nth(nth);
		ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE, 0, DATA_SIZE), -1);
		ASSERT_EQ(errno, ENOMEM);
		inject_off();
		ASSERT_EQ(vm_get_stat(vm, direct_map_pages), 0);
	}
	ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE, 0, DATA_SIZE), 0);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), DATA_PAGES);

	close(gmem);
	kvm_vm_free(vm);
	ASSERT_EQ(get_vmstat("direct_map_removed") - removed0,
		  get_vmstat("direct_map_restored") - restored0);
}

/*
 * No 2 MiB block to be had (fail_page_alloc fails the order-9 allocation):
 * the range comes in page by page instead, and fallocate() succeeds.  A
 * page punched out of it is then restored at once, which it would not be
 * in a block.
 */
FIXTURE(page_alloc_fails) {
	int cache;
};

FIXTURE_SETUP(page_alloc_fails)
{
	if (!can_write(FAIL_PAGE_DIR "times") || !can_write(BLOCKS_PARAM) ||
	    access(CACHE_PARAM, W_OK))
		SKIP(return, "no " FAIL_PAGE_DIR " (CONFIG_FAIL_PAGE_ALLOC) or " BLOCKS_PARAM);
	/* A free block of the pool would be used instead of a new one. */
	self->cache = block_cache(0);
}

/* Not run when the setup skipped. */
FIXTURE_TEARDOWN_PARENT(page_alloc_fails)
{
	disarm_fault_injection();
	block_cache(self->cache);
}

TEST_F(page_alloc_fails, blocks_fall_back_to_pages)
{
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	int gmem;

	vm = vm_with_gmem(guest_nothing, &vcpu, GUEST_MEMFD_FLAG_NO_DIRECT_MAP,
			  &gmem);
	write_file(BLOCKS_PARAM, "Y");
	write_file(FAIL_PAGE_DIR "verbose", "0");
	write_file(FAIL_PAGE_DIR "ignore-gfp-wait", "N");
	write_file(FAIL_PAGE_DIR "ignore-gfp-highmem", "N");
	write_file(FAIL_PAGE_DIR "min-order", "9");
	write_file(FAIL_PAGE_DIR "probability", "100");
	write_file(FAIL_PAGE_DIR "interval", "1");
	/* The pool's new block on this node, then anywhere. */
	write_file(FAIL_PAGE_DIR "times", "2");
	ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE, 0, SZ_2M), 0);
	disarm_fault_injection();

	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), BLOCK_PAGES);
	/* One flush for the request, page by page or not. */
	ASSERT_EQ(vm_get_stat(vm, direct_map_flushes), 1);
	ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
			    PAGE_SIZE, PAGE_SIZE), 0);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), BLOCK_PAGES - 1);

	close(gmem);
	kvm_vm_free(vm);
}

static void guest_mark_then_check_zero(void)
{
	u64 i;

	for (i = 0; i < DATA_PAGES; i++)
		WRITE_ONCE(*(u64 *)(DATA_GPA + i * PAGE_SIZE), secret_word(i));
	GUEST_SYNC(1);
	/* The host punched the memory out and allocated it again. */
	for (i = 0; i < DATA_PAGES; i++)
		GUEST_ASSERT_EQ(READ_ONCE(*(u64 *)(DATA_GPA + i * PAGE_SIZE)), 0);
	GUEST_DONE();
}

/*
 * The block_cache tests (of the pool's free blocks, which took the place of
 * guest_memfd's own block cache) start with 2 MiB blocks on and the pool
 * keeping no free block, and read the direct-map counters after emptying it
 * (which restores what it held); each sets the limit it needs.  The old
 * limit is put back afterwards.
 */
FIXTURE(block_cache) {
	int cache;
	u64 removed0, restored0;
	/* Sysctls a test changed, to put back; -1 if unchanged. */
	int wsf, hvo;
};

FIXTURE_SETUP(block_cache)
{
	if (access(CACHE_PARAM, W_OK))
		SKIP(return, "no " CACHE_PARAM);
	use_blocks(true);
	self->cache = block_cache(0);
	self->removed0 = get_vmstat("direct_map_removed");
	self->restored0 = get_vmstat("direct_map_restored");
	self->wsf = -1;
	self->hvo = -1;
}

#define HVO		"/proc/sys/vm/hugetlb_optimize_vmemmap"
#define NR_HUGEPAGES	"/proc/sys/vm/nr_hugepages"
#define WSF		"/proc/sys/vm/watermark_scale_factor"

/*
 * In the parent: a test that failed, exited or crashed does not leave the
 * sysctls (the harness's own timeout kills the parent too).
 */
FIXTURE_TEARDOWN_PARENT(block_cache)
{
	if (self->wsf >= 0)
		write_int(WSF, self->wsf);
	if (self->hvo >= 0)
		write_int(HVO, self->hvo);
	if (!access(CACHE_PARAM, W_OK))
		block_cache(self->cache);
	/* Left by a test that failed in it; gone once its tasks are. */
	rmdir(CG_TEST);
}

/*
 * Free 2 MiB blocks stay off the direct map, in the pool, and the next
 * request takes them from there: no removal, no flush, no restore, and the
 * guest finds them zeroed.  Lowering the limit to 0 maps them again.
 */
TEST_F(block_cache, reuses_blocks)
{
	u64 restored0 = self->restored0;
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	int gmem;

	block_cache(DATA_PAGES / BLOCK_PAGES);

	vm = vm_with_gmem(guest_mark_then_check_zero, &vcpu,
			  GUEST_MEMFD_FLAG_NO_DIRECT_MAP, &gmem);
	vm_mem_set_private(vm, DATA_GPA, DATA_SIZE);
	ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE, 0, DATA_SIZE), 0);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), DATA_PAGES);
	/* Removed for this request: the pool kept no free block. */
	ASSERT_EQ(vm_get_stat(vm, direct_map_flushes), 1);
	run_until(vcpu, UCALL_SYNC);

	ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
			    0, DATA_SIZE), 0);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), 0);
	/* Kept off the direct map. */
	ASSERT_EQ(get_vmstat("direct_map_restored") - restored0, 0);

	ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE, 0, DATA_SIZE), 0);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), DATA_PAGES);
	/* Reused: nothing removed, no second flush. */
	ASSERT_EQ(vm_get_stat(vm, direct_map_flushes), 1);
	run_until(vcpu, UCALL_DONE);

	close(gmem);
	kvm_vm_free(vm);
	ASSERT_EQ(get_vmstat("direct_map_restored") - restored0, 0);
	block_cache(0);
	ASSERT_EQ(get_vmstat("direct_map_restored") - restored0, DATA_PAGES);
}

/*
 * The cache keeps no more blocks than its limit, and its shrinker gives
 * them back when the kernel reclaims (here: drop_caches).
 */
TEST_F(block_cache, limit_and_shrinker)
{
	u64 removed0 = self->removed0, restored0 = self->restored0;
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	int gmem;

	block_cache(1);

	vm = vm_with_gmem(guest_nothing, &vcpu, GUEST_MEMFD_FLAG_NO_DIRECT_MAP,
			  &gmem);
	ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE, 0, DATA_SIZE), 0);
	close(gmem);
	kvm_vm_free(vm);
	ASSERT_EQ(get_vmstat("direct_map_removed") - removed0, DATA_PAGES);
	/* One block kept, the others mapped again. */
	ASSERT_EQ(get_vmstat("direct_map_restored") - restored0,
		  DATA_PAGES - BLOCK_PAGES);

	/* The shrinker hands the blocks to a worker, which maps them again. */
	write_file("/proc/sys/vm/drop_caches", "2");
	ASSERT_EQ(wait_vmstat("direct_map_restored", restored0 + DATA_PAGES, 30) -
		  restored0, DATA_PAGES);
}

#define RACE_ROUNDS	16
#define RACE_FALLOCATORS	3

/* A thread that adds one page of the first 2 MiB range, once a round. */
struct racer {
	pthread_t thread;
	pthread_barrier_t *go;
	/* Pre-faults the page with it, as a guest fault; NULL: fallocate(). */
	struct kvm_vcpu *vcpu;
	int gmem;
	u64 page;
	/* errno of the last call that failed, 0 if none did. */
	int err;
};

static void *race(void *arg)
{
	struct racer *r = arg;
	int round;

	for (round = 0; round < RACE_ROUNDS; round++) {
		pthread_barrier_wait(r->go);
		if (r->vcpu) {
			struct kvm_pre_fault_memory range = {
				.gpa = DATA_GPA + r->page * PAGE_SIZE,
				.size = PAGE_SIZE,
			};

			if (__vcpu_ioctl(r->vcpu, KVM_PRE_FAULT_MEMORY, &range))
				r->err = errno;
		} else if (fallocate(r->gmem, FALLOC_FL_KEEP_SIZE,
				     r->page * PAGE_SIZE, PAGE_SIZE)) {
			r->err = errno;
		}
		pthread_barrier_wait(r->go);
	}
	return NULL;
}

/*
 * Requests that find the same 2 MiB range empty at the same time (fallocate()
 * holds the invalidate lock shared, and a guest fault takes no lock of the
 * file) add one 2 MiB block between them, not part of a block each, and the
 * others remove nothing.  Counted with the VM's stats (pages added, flushes
 * for removed blocks) in each of RACE_ROUNDS rounds; in every other round the
 * first request takes its block from the pool's free blocks.  Whatever was
 * removed is mapped again once the pool keeps nothing.
 */
TEST_F_TIMEOUT(block_cache, populate_race, 120)
{
	struct racer racers[RACE_FALLOCATORS + 1] = {};
	int nr = RACE_FALLOCATORS, i, round, extra = 0, singles = 0;
	u64 removals, flushes, pages, most = 0;
	pthread_barrier_t go;
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	int gmem;

	vm = vm_with_gmem(guest_nothing, &vcpu, GUEST_MEMFD_FLAG_NO_DIRECT_MAP,
			  &gmem);
	vm_mem_set_private(vm, DATA_GPA, DATA_SIZE);
	if (kvm_check_cap(KVM_CAP_PRE_FAULT_MEMORY))
		racers[nr++].vcpu = vcpu;
	else
		TH_LOG("no KVM_CAP_PRE_FAULT_MEMORY: no fault in the race");

	ASSERT_EQ(pthread_barrier_init(&go, NULL, nr + 1), 0);
	for (i = 0; i < nr; i++) {
		racers[i].go = &go;
		racers[i].gmem = gmem;
		/* Different pages of the range, none of them page 0. */
		racers[i].page = i * (BLOCK_PAGES / nr) + 1;
		ASSERT_EQ(pthread_create(&racers[i].thread, NULL, race,
					 &racers[i]), 0);
	}

	for (round = 0; round < RACE_ROUNDS; round++) {
		/*
		 * Every other round, one free block in the pool (the warm-up
		 * allocates it): the first request takes it, and the others
		 * race it with blocks they allocate.
		 */
		block_cache(round % 2);
		if (round % 2) {
			ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE, 0,
					    SZ_2M), 0);
			ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE |
					    FALLOC_FL_PUNCH_HOLE, 0, SZ_2M), 0);
		}
		/* Nothing leaves the file between the barriers. */
		removals = vm_get_stat(vm, direct_map_pages);
		flushes = vm_get_stat(vm, direct_map_flushes);
		pthread_barrier_wait(&go);
		/* The racers add their pages. */
		pthread_barrier_wait(&go);
		removals = vm_get_stat(vm, direct_map_pages) - removals;
		flushes = vm_get_stat(vm, direct_map_flushes) - flushes;
		/*
		 * A request that lost the race but removed a block of its own
		 * (which then goes back to the pool) shows in the flushes: at
		 * most one, for the block the range got.  Not when the range
		 * came page by page (no block to be had): racers on other
		 * nodes may then each remove a block of their node.
		 */
		if (removals > BLOCK_PAGES ||
		    (removals == BLOCK_PAGES && flushes > 1))
			extra++;
		else if (removals < BLOCK_PAGES)
			singles++;

		/* Page 0 punched out of its block, and added on its own. */
		ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE |
				    FALLOC_FL_PUNCH_HOLE, 0, PAGE_SIZE), 0);
		ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE, 0, PAGE_SIZE), 0);
		pages = vm_get_stat(vm, direct_map_pages);
		most = pages > most ? pages : most;

		ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE |
				    FALLOC_FL_PUNCH_HOLE, 0, SZ_2M), 0);
		ASSERT_EQ(vm_get_stat(vm, direct_map_pages), 0);
	}
	for (i = 0; i < nr; i++) {
		ASSERT_EQ(pthread_join(racers[i].thread, NULL), 0);
		EXPECT_EQ(racers[i].err, 0) {
			TH_LOG("racer %d (%s): %s", i,
			       racers[i].vcpu ? "fault" : "fallocate",
			       strerror(racers[i].err));
		}
	}
	pthread_barrier_destroy(&go);

	TH_LOG("%d/%d rounds with >1 block, %d none; most pages removed %lu, in the file %lu",
	       extra, RACE_ROUNDS, singles, most, (u64)BLOCK_PAGES);
	ASSERT_EQ(extra, 0);

	close(gmem);
	kvm_vm_free(vm);
	/* Everything removed is mapped again once the pool lets go. */
	block_cache(0);
	ASSERT_EQ(get_vmstat("direct_map_removed") - self->removed0,
		  get_vmstat("direct_map_restored") - self->restored0);
	if (singles == RACE_ROUNDS)
		SKIP(return, "no 2 MiB block could be had: nothing raced for one");
}

/* Read @name from /proc/meminfo into @bytes; false if it has no such line. */
static bool find_meminfo(const char *name, u64 *bytes)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char key[64];
	u64 val;

	TEST_ASSERT(f, "open /proc/meminfo");
	while (fscanf(f, "%63s %lu kB\n", key, &val) == 2) {
		if (!strncmp(key, name, strlen(name)) && key[strlen(name)] == ':') {
			fclose(f);
			*bytes = val << 10;
			return true;
		}
	}
	fclose(f);
	return false;
}

static u64 read_meminfo(const char *name)
{
	u64 bytes;

	TEST_ASSERT(find_meminfo(name, &bytes), "no %s in /proc/meminfo", name);
	return bytes;
}

/*
 * Whether kswapd gave up on a node: after MAX_RECLAIM_RETRIES runs without
 * progress it is not woken again until reclaim makes progress on a balanced
 * node, which memory that only the shrinker frees does not give it.
 */
static bool kswapd_gave_up(void)
{
	FILE *f = fopen("/proc/zoneinfo", "r");
	char line[128];
	bool hopeless = false;
	int val;

	TEST_ASSERT(f, "open /proc/zoneinfo");
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, " node_unreclaimable: %d", &val) == 1 && val)
			hopeless = true;
	fclose(f);
	return hopeless;
}

/*
 * Allocate page tables with init_mm's mmap lock held for reading, as a real
 * host does: the HugeTLB vmemmap optimisation splits the vmemmap's 2 MiB
 * mappings of a new huge page under that lock.  Under lockdep this records
 * that the lock is held across an allocation that may reclaim.
 */
static bool page_tables_under_init_mm_lock(int *saved_hvo)
{
	int nr, got, hvo, fd;

	if (access(HVO, W_OK) || access(NR_HUGEPAGES, W_OK))
		return false;
	nr = read_int(NR_HUGEPAGES);
	hvo = read_int(HVO);
	/* Refused, e.g. without a vmemmap to optimise: nothing to record. */
	fd = open(HVO, O_WRONLY);
	if (fd < 0)
		return false;
	if (write(fd, "1", 1) != 1) {
		close(fd);
		return false;
	}
	close(fd);
	*saved_hvo = hvo;
	write_int(NR_HUGEPAGES, nr + 1);
	got = read_int(NR_HUGEPAGES);
	write_int(NR_HUGEPAGES, nr);
	return got > nr;
}

/*
 * Real reclaim runs the pool's shrinker: kswapd, woken by an allocation
 * that takes free memory below the low watermark (raised here to 30% of
 * memory), holds the reclaim context and calls every shrinker while it
 * cannot free the anonymous memory that fills the machine.  The blocks must
 * come back to the direct map, and never from inside reclaim: a restore takes
 * init_mm's mmap lock for writing, and a task that allocates page tables
 * under it for reading can itself reclaim (see above).  With lockdep
 * (the debug kernels), that is a reported lock inversion, which the test
 * reads from debug_locks.  It skips where it cannot be sure that kswapd
 * reaches the shrinker soon (swap, or memory that takes long to fill) or
 * where it would take too much of a busy machine's memory.
 */
TEST_F_TIMEOUT(block_cache, shrinker_under_kswapd, 300)
{
	u64 restored0 = self->restored0, total, max, len, step, restored;
	u64 kswapd0;
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	char *mem;
	int gmem;

	if (access(WSF, W_OK))
		SKIP(return, "no " WSF);
	total = read_meminfo("MemTotal");
	if (read_meminfo("SwapTotal"))
		SKIP(return, "swap: kswapd may reclaim without the shrinker");
	if (total > 16ULL * SZ_1G)
		SKIP(return, "%lu MiB of memory: too much to fill", total >> 20);
	if (read_meminfo("MemFree") < total / 2)
		SKIP(return, "less than half of memory free");
	if (kswapd_gave_up())
		SKIP(return, "kswapd gave up on a node (an earlier run of this test?)");
	if (!lockdep_debug_locks())
		SKIP(return, "lockdep is off: it reported before this test");
	if (lockdep_debug_locks() < 0)
		TH_LOG("no lockdep: the lock order is not checked");
	if (!page_tables_under_init_mm_lock(&self->hvo))
		TH_LOG("no huge page: no page table allocated under init_mm's lock");

	block_cache(DATA_PAGES / BLOCK_PAGES);
	vm = vm_with_gmem(guest_nothing, &vcpu, GUEST_MEMFD_FLAG_NO_DIRECT_MAP,
			  &gmem);
	ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE, 0, DATA_SIZE), 0);
	close(gmem);
	kvm_vm_free(vm);
	ASSERT_EQ(get_vmstat("direct_map_restored") - restored0, 0);

	self->wsf = read_int(WSF);
	write_int(WSF, 3000);
	/*
	 * Fill in steps until both blocks come back (a scan of the pool's
	 * shrinker gives back one), leaving 5% of memory free.  Stopping at
	 * kswapd's first run is not enough: kswapd runs per node, ends as
	 * soon as one eligible zone is balanced, and reaches the shrinkers
	 * only at a low priority (1024 pages >> priority), so with two nodes
	 * it may run and stop without ever asking the pool.
	 */
	max = read_meminfo("MemFree") - total / 20;
	mem = mmap(NULL, max, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(mem, MAP_FAILED);
	/* No huge pages: their compaction would stall the fill. */
	madvise(mem, max, MADV_NOHUGEPAGE);
	kswapd0 = get_vmstat("pageoutrun");
	len = 0;
	while (len < max &&
	       get_vmstat("direct_map_restored") < restored0 + DATA_PAGES) {
		step = min_t(u64, SZ_64M, max - len);
		if (madvise(mem + len, step, MADV_POPULATE_WRITE))
			memset(mem + len, 1, step);
		len += step;
	}
	restored = wait_vmstat("direct_map_restored", restored0 + DATA_PAGES, 60);
	TH_LOG("%lu MiB of %lu MiB filled, %lu pages restored, kswapd ran %lu times",
	       len >> 20, total >> 20, restored - restored0,
	       get_vmstat("pageoutrun") - kswapd0);
	munmap(mem, max);

	ASSERT_EQ(restored - restored0, DATA_PAGES);
	ASSERT_NE(lockdep_debug_locks(), 0) TH_LOG("lockdep reported a problem");
}

/*
 * memory.current moves in batches: each CPU keeps charges of a few cgroups
 * in stock, up to MEMCG_CHARGE_BATCH (64) pages each, taken from when a
 * charge needs them, and given back when another cgroup takes the slot, the
 * stock would grow past the batch, or it is drained.  A test that runs on
 * one CPU, with its children, from before it enters the cgroup, sees the
 * cgroup's real charge within that one CPU's stock, used up or given back
 * while it measures: twice 64 pages.  (Kernel objects the test's cgroup
 * frees on other CPUs may add to their stock; the slack covers that too.)
 * The harness runs each test in a child of its own, so the pinning ends
 * with the test.
 */
#define MEMCG_CHARGE_SLACK	((s64)(2 * 64 * PAGE_SIZE))

static void pin_to_one_cpu(void)
{
	pin_self_to_cpu(sched_getcpu());
}

static s64 memory_current(void)
{
	char buf[32] = {};
	int fd = open(CG_TEST "/memory.current", O_RDONLY);

	TEST_ASSERT(fd >= 0, "open memory.current");
	TEST_ASSERT(read(fd, buf, sizeof(buf) - 1) > 0, "read memory.current");
	close(fd);
	return strtoull(buf, NULL, 10);
}

static void move_to_cgroup(const char *cg)
{
	char path[128], pid[16];

	snprintf(path, sizeof(path), "%s/cgroup.procs", cg);
	snprintf(pid, sizeof(pid), "%d", getpid());
	write_file(path, pid);
}

/*
 * Make a memory cgroup for the test, with no limit.  Return false if there
 * is no cgroup2 hierarchy at CG_ROOT and something else is there (a host
 * with cgroup v1): the test does not mount over it; or if the memory
 * controller cannot be enabled below the root.
 */
static bool make_test_cgroup(void)
{
	struct stat root, parent;
	bool ok;
	int fd;

	if (access(CG_ROOT "/cgroup.controllers", R_OK)) {
		TEST_ASSERT(!stat(CG_ROOT, &root) && !stat(CG_ROOT "/..", &parent),
			    "stat " CG_ROOT);
		if (root.st_dev != parent.st_dev)
			return false;
		TEST_ASSERT(!mount("none", CG_ROOT, "cgroup2", 0, NULL),
			    "mount cgroup2");
	}
	/* Refused where the root cgroup has tasks of its own (a container). */
	fd = open(CG_ROOT "/cgroup.subtree_control", O_WRONLY);
	TEST_ASSERT(fd >= 0, "open " CG_ROOT "/cgroup.subtree_control");
	ok = write(fd, "+memory", 7) == 7;
	close(fd);
	if (!ok)
		return false;
	TEST_ASSERT(!mkdir(CG_TEST, 0755) || errno == EEXIST, "mkdir " CG_TEST);
	write_file(CG_TEST "/memory.max", "max");
	return true;
}

/* Move the test into a memory cgroup of its own, with no limit. */
static bool enter_test_cgroup(void)
{
	if (!make_test_cgroup())
		return false;
	move_to_cgroup(CG_TEST);
	return true;
}

/* The value of @key in the flat-keyed cgroup file @path. */
static long cgroup_key(const char *path, const char *key)
{
	char line[128];
	long val = -1;
	FILE *f = fopen(path, "r");

	TEST_ASSERT(f, "open %s", path);
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, strlen(key)) && line[strlen(key)] == ' ')
			val = atol(line + strlen(key) + 1);
	fclose(f);
	return val;
}

static void leave_test_cgroup(void)
{
	move_to_cgroup(CG_ROOT);
	rmdir(CG_TEST);
}

/*
 * Memory outside the direct map is charged to the memory cgroup of the task
 * that allocates it, uncharged when it leaves the guest_memfd (back to the
 * pool), and charged again when it comes back from the pool.
 */
TEST_F(block_cache, memcg_charges_the_vm)
{
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	s64 c0, c;
	u64 flushes;
	int gmem;

	pin_to_one_cpu();
	if (!enter_test_cgroup())
		SKIP(return, "no cgroup2 at " CG_ROOT);
	block_cache(DATA_PAGES / BLOCK_PAGES);

	vm = vm_with_gmem(guest_nothing, &vcpu, GUEST_MEMFD_FLAG_NO_DIRECT_MAP,
			  &gmem);
	c0 = memory_current();
	ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE, 0, DATA_SIZE), 0);
	c = memory_current();
	TH_LOG("memory.current: %+ld KiB for %u KiB", (long)(c - c0) >> 10,
	       DATA_SIZE >> 10);
	ASSERT_GE(c - c0, DATA_SIZE - MEMCG_CHARGE_SLACK);
	ASSERT_LT(c - c0, DATA_SIZE + SZ_1M);

	ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
			    0, DATA_SIZE), 0);
	ASSERT_LT(memory_current() - c0, SZ_1M);

	/* From the pool's free blocks: nothing removed, no flush. */
	flushes = vm_get_stat(vm, direct_map_flushes);
	ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE, 0, DATA_SIZE), 0);
	ASSERT_EQ(vm_get_stat(vm, direct_map_flushes), flushes);
	ASSERT_GE(memory_current() - c0, DATA_SIZE - MEMCG_CHARGE_SLACK);

	close(gmem);
	kvm_vm_free(vm);
	leave_test_cgroup();
}

/*
 * Add @len bytes at @offset to @gmem from a child process in CG_TEST, so that
 * they are charged there, the child's memory policy preferring @node if it is
 * not -1 (its only allocations after that are the request's).  The pool takes
 * its pages there first as it would under MPOL_BIND, which it does not
 * enforce; but the request's own kernel allocations follow the policy, and
 * under MPOL_BIND would meet the OOM killer once the node is full (as in
 * pool_fill_node()).  The child faults in, before it enters the cgroup, all
 * it writes there: the cgroup is charged only for the guest_memfd.  Return 0
 * if they were added; else the child's errno (ENOMEM), or minus the signal
 * that killed it (the cgroup's OOM killer).
 */
static int fallocate_in_cgroup_node(int gmem, u64 offset, u64 len, int node)
{
	int fd, status;
	pid_t child;

	fd = open(CG_TEST "/cgroup.procs", O_WRONLY);
	TEST_ASSERT(fd >= 0, "open " CG_TEST "/cgroup.procs");
	child = fork();
	TEST_ASSERT(child >= 0, "fork");
	if (!child) {
		char stack[SZ_64K], pid[16];
		int n, r;

		memset(stack, 0, sizeof(stack));
		/* Keep the stores: they fault the stack in. */
		asm volatile("" : : "r"(stack) : "memory");
		n = snprintf(pid, sizeof(pid), "%d", getpid());
		errno = 0;
		if (write(fd, pid, n) != n)
			_exit(255);
		if (node >= 0) {
			unsigned long mask = 1UL << node;

			if (set_mempolicy(MPOL_PREFERRED, &mask,
					  sizeof(mask) * 8))
				_exit(254);
		}
		r = fallocate(gmem, FALLOC_FL_KEEP_SIZE, offset, len);
		_exit(r ? errno : 0);
	}
	close(fd);
	TEST_ASSERT(waitpid(child, &status, 0) == child, "waitpid");
	return WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
}

static int fallocate_in_cgroup(int gmem, u64 offset, u64 len)
{
	return fallocate_in_cgroup_node(gmem, offset, len, -1);
}

/*
 * Ask for the 2 MiB block at @offset from a memory cgroup with room for less
 * than that, while the pool has a free block, and check that the refusal
 * (ENOMEM, or the OOM killer) cost no removal from the direct map, no TLB
 * flush, and no page left in the file.
 */
static void refused_for_free(struct __test_metadata *_metadata,
			     struct kvm_vm *vm, int gmem, u64 offset)
{
	u64 flushes = vm_get_stat(vm, direct_map_flushes);
	u64 pages = vm_get_stat(vm, direct_map_pages);
	int r = fallocate_in_cgroup(gmem, offset, SZ_2M);

	EXPECT_TRUE(r == ENOMEM || r == -SIGKILL) TH_LOG("child: %d", r);
	/* Nothing removed for it: the VM's own count, not the host's. */
	EXPECT_EQ(vm_get_stat(vm, direct_map_flushes) - flushes, 0);
	EXPECT_EQ(vm_get_stat(vm, direct_map_pages), pages);
}

static int cgroup_gmem_pfns(u64 *pfns, int max);

/*
 * A memory cgroup at its limit refuses memory before it costs the direct map
 * much: each allocation from the pool is charged right after it, so that a
 * refused request costs no removal and no TLB flush (IPIs to every CPU) when
 * the pool has a free block, and at most one block removed, which the pool
 * keeps, when it has none, however large the request.  A request for part
 * of a block gets the pages it asked for when the cgroup has room for them
 * but not for the block.  The requests come from children in a cgroup with
 * room for 300 pages; its OOM killer may kill them, as it would kill a VMM.
 */
TEST_F_TIMEOUT(block_cache, memcg_limit_refuses_before_removal, 120)
{
	u64 removed, restored0, restored, flushes, pfns[8];
	struct kvm_vcpu *vcpu;
	long max_events, events;
	struct kvm_vm *vm;
	int gmem, i, r;

	/* A memcg OOM panics the host with panic_on_oom=2. */
	if (read_int("/proc/sys/vm/panic_on_oom") == 2)
		SKIP(return, "vm.panic_on_oom is 2");
	/* The children too: their charges stay within one CPU's stock. */
	pin_to_one_cpu();
	vm = vm_with_gmem(guest_nothing, &vcpu, GUEST_MEMFD_FLAG_NO_DIRECT_MAP,
			  &gmem);

	/* One free block in the pool, for the first 2 MiB of the file. */
	block_cache(1);
	ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE, 0, SZ_2M), 0);
	restored0 = get_vmstat("direct_map_restored");
	ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
			    0, SZ_2M), 0);
	if (get_vmstat("direct_map_restored") != restored0)
		SKIP(goto out, "no 2 MiB block could be had");

	if (!make_test_cgroup())
		SKIP(goto out, "no cgroup2 memory controller at " CG_ROOT);
	/* Room for more than a charge batch (64 pages), not for a block. */
	write_int(CG_TEST "/memory.max", 300 * PAGE_SIZE);
	max_events = cgroup_key(CG_TEST "/memory.events", "max");
	/* The pool's free block is charged, refused and kept. */
	for (i = 0; i < 4; i++)
		refused_for_free(_metadata, vm, gmem, 0);
	write_file(CG_TEST "/memory.max", "max");
	flushes = vm_get_stat(vm, direct_map_flushes);
	ASSERT_EQ(fallocate_in_cgroup(gmem, 0, SZ_2M), 0);
	ASSERT_EQ(vm_get_stat(vm, direct_map_flushes), flushes);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), BLOCK_PAGES);
	ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
			    0, SZ_2M), 0);

	/*
	 * Four pages of the empty 2 MiB range: the request takes the pool's
	 * free block for the range, and the cgroup has room for the pages it
	 * asked for but not for the rest of the block.  The request keeps the
	 * four (no error, no flush) and gives the rest back to the pool.
	 */
	write_int(CG_TEST "/memory.max", 300 * PAGE_SIZE);
	flushes = vm_get_stat(vm, direct_map_flushes);
	events = cgroup_key(CG_TEST "/memory.events", "max");
	ASSERT_EQ(fallocate_in_cgroup(gmem, 0, 4 * PAGE_SIZE), 0);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), 4);
	ASSERT_EQ(vm_get_stat(vm, direct_map_flushes), flushes);
	ASSERT_LE(memory_current(), MEMCG_CHARGE_SLACK);
	/* The block's charge reached the limit: four pages alone would not. */
	ASSERT_GT(cgroup_key(CG_TEST "/memory.events", "max"), events);
	/* The first four pages of the block stayed charged, and only they. */
	if (!access("/proc/kpagecgroup", R_OK)) {
		ASSERT_EQ(cgroup_gmem_pfns(pfns, 8), 4);
		ASSERT_EQ(pfns[0] % BLOCK_PAGES, 0);
		ASSERT_EQ(pfns[3], pfns[0] + 3);
	}
	ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
			    0, 4 * PAGE_SIZE), 0);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), 0);
	write_file(CG_TEST "/memory.max", "max");

	/*
	 * With the pool empty, a request for the whole file (two blocks): the
	 * pool removes a new block for it (one flush, counted), which the
	 * cgroup refuses, and the request stops there; the block stays in the
	 * pool, and the next requests cost nothing.
	 */
	block_cache(0);
	block_cache(DATA_PAGES / BLOCK_PAGES);
	write_int(CG_TEST "/memory.max", 300 * PAGE_SIZE);
	removed = get_vmstat("direct_map_removed");
	restored = get_vmstat("direct_map_restored");
	flushes = vm_get_stat(vm, direct_map_flushes);
	r = fallocate_in_cgroup(gmem, 0, DATA_SIZE);
	EXPECT_TRUE(r == ENOMEM || r == -SIGKILL) TH_LOG("child: %d", r);
	EXPECT_EQ(get_vmstat("direct_map_removed") - removed, BLOCK_PAGES);
	EXPECT_EQ(vm_get_stat(vm, direct_map_flushes) - flushes, 1);
	for (i = 0; i < 3; i++)
		refused_for_free(_metadata, vm, gmem, SZ_2M);
	EXPECT_EQ(get_vmstat("direct_map_restored"), restored);

	/* Each request got to the limit; none left a charge behind. */
	ASSERT_GE(cgroup_key(CG_TEST "/memory.events", "max") - max_events, 8);
	/* Less than a block: a leaked block or request would be seen. */
	ASSERT_LE(memory_current(), MEMCG_CHARGE_SLACK);

	/* Nothing got in; what left the file was counted once. */
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), 0);

out:
	close(gmem);
	kvm_vm_free(vm);
	rmdir(CG_TEST);
	block_cache(0);
	removed = get_vmstat("direct_map_removed") - self->removed0;
	ASSERT_EQ(wait_vmstat("direct_map_restored", self->restored0 + removed,
			      30) - self->restored0, removed);
}

#define HWPOISON_PFN	"/sys/kernel/debug/hwpoison/corrupt-pfn"
#define NODES		"/sys/devices/system/node/"
#define HWPOISON_OPT_IN	"GMEM_NO_DIRECT_MAP_TEST_HWPOISON"

/*
 * Find the pages of guest_memfds charged to CG_TEST, from /proc/kpagecgroup
 * and /proc/kpageflags: the children of fallocate_in_cgroup() charge it
 * nothing else that is not a kernel object.  Poisoned pages are left out.
 * Store up to @max of their pfns, in order, and return how many there are.
 */
static int cgroup_gmem_pfns(u64 *pfns, int max)
{
	u64 *ino = malloc(SZ_1M), flags, pfn, i, got;
	struct stat st;
	int cg, fl, n = 0;
	ssize_t r;

	TEST_ASSERT(ino, "malloc");
	TEST_ASSERT(!stat(CG_TEST, &st), "stat " CG_TEST);
	cg = open("/proc/kpagecgroup", O_RDONLY);
	fl = open("/proc/kpageflags", O_RDONLY);
	TEST_ASSERT(cg >= 0 && fl >= 0, "open /proc/kpagecgroup, /proc/kpageflags");
	for (pfn = 0;; pfn += got) {
		r = pread(cg, ino, SZ_1M, pfn * sizeof(u64));
		if (r <= 0)
			break;
		got = r / sizeof(u64);
		for (i = 0; i < got; i++) {
			if (ino[i] != st.st_ino)
				continue;
			TEST_ASSERT(pread(fl, &flags, sizeof(flags),
					  (pfn + i) * sizeof(u64)) == sizeof(flags),
				    "read /proc/kpageflags");
			if (flags & (1ULL << KPF_HWPOISON | 1ULL << KPF_SLAB |
				     1ULL << KPF_ANON | 1ULL << KPF_PGTABLE))
				continue;
			if (n < max)
				pfns[n] = pfn + i;
			n++;
		}
	}
	close(cg);
	close(fl);
	free(ino);
	return n;
}

static bool page_poisoned(u64 pfn)
{
	u64 flags;
	int fd = open("/proc/kpageflags", O_RDONLY);

	TEST_ASSERT(fd >= 0, "open /proc/kpageflags");
	TEST_ASSERT(pread(fd, &flags, sizeof(flags), pfn * sizeof(flags)) ==
		    sizeof(flags), "read /proc/kpageflags");
	close(fd);
	return flags & (1ULL << KPF_HWPOISON);
}

static const char * const mf_results[] = {
	"ignored", "failed", "delayed", "recovered",
};

/*
 * Sum the memory_failure counter @name over all nodes; -1 if no node has
 * it.
 */
static long mf_count(const char *name)
{
	char path[128];
	long sum = -1;
	int node;

	for (node = 0; node < 1024; node++) {
		snprintf(path, sizeof(path), NODES "node%d/memory_failure/%s",
			 node, name);
		if (!access(path, R_OK))
			sum = (sum < 0 ? 0 : sum) + read_int(path);
	}
	return sum;
}

/*
 * Poison @pfn with memory_failure() (hwpoison/corrupt-pfn) and return how it
 * ended, as the nodes' memory_failure counters count it.
 */
static const char *poison(u64 pfn)
{
	long before[ARRAY_SIZE(mf_results)];
	const char *result = "none";
	int i, fd, len;
	char buf[32];

	for (i = 0; i < ARRAY_SIZE(mf_results); i++)
		before[i] = mf_count(mf_results[i]);
	fd = open(HWPOISON_PFN, O_WRONLY);
	TEST_ASSERT(fd >= 0, "open " HWPOISON_PFN);
	len = snprintf(buf, sizeof(buf), "%llu", (unsigned long long)pfn);
	/* memory_failure()'s error, if it fails, is the write's: ignored. */
	(void)!write(fd, buf, len);
	close(fd);
	TEST_ASSERT(page_poisoned(pfn), "pfn %#llx not poisoned",
		    (unsigned long long)pfn);
	for (i = 0; i < ARRAY_SIZE(mf_results); i++)
		if (mf_count(mf_results[i]) != before[i])
			result = mf_results[i];
	return result;
}

/*
 * Hardware poison in a page out of the direct map (memory_failure(), as
 * hwpoison/corrupt-pfn simulates it): it ends as it does in plain
 * guest_memfd, and once the page leaves the file the poisoned page is
 * never mapped again, zeroed or reused.  The pool hands out no other page of
 * its 2 MiB block; it maps the rest of the block again and frees it once the
 * poisoned page came back too.  While memory_failure() holds the page (it
 * does when it failed) the block is never whole again: it is not handed out
 * as a block nor mapped again, but its other pages, which the pool does not
 * know to be next to a poisoned one, may be handed out singly.  On a real
 * machine check, touching the page again would be fatal; here the test
 * counts what the direct map did.
 *
 * It poisons two pages of the host for good (they stay out of use, and out
 * of the direct map, which also refuses hibernation until the next boot):
 * it runs only when the environment variable GMEM_NO_DIRECT_MAP_TEST_HWPOISON
 * is 1.
 */
TEST_F_TIMEOUT(block_cache, hwpoison, 120)
{
	u64 pfns[BLOCK_PAGES], pfn, flushes, restored0, restored;
	const char *plain_result, *result, *opt_in;
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	int gmem, plain;

	opt_in = getenv(HWPOISON_OPT_IN);
	if (!opt_in || strcmp(opt_in, "1"))
		SKIP(return, "poisons host pages for good: set " HWPOISON_OPT_IN "=1");
	if (!can_write(HWPOISON_PFN) || access("/proc/kpagecgroup", R_OK) ||
	    mf_count("total") < 0)
		SKIP(return, "no %s, kpagecgroup or memory_failure counters",
		     HWPOISON_PFN);

	vm = vm_with_gmem(guest_nothing, &vcpu, GUEST_MEMFD_FLAG_NO_DIRECT_MAP,
			  &gmem);
	plain = vm_create_guest_memfd(vm, DATA_SIZE, 0);
	if (!make_test_cgroup())
		SKIP(goto out, "no cgroup2 at " CG_ROOT);
	block_cache(1);

	/* A page of plain guest_memfd first: what memory_failure() does there. */
	ASSERT_EQ(fallocate_in_cgroup(plain, 0, PAGE_SIZE), 0);
	ASSERT_EQ(cgroup_gmem_pfns(pfns, BLOCK_PAGES), 1);
	plain_result = poison(pfns[0]);
	ASSERT_STRNE(plain_result, "none");

	/* A block out of the direct map, poisoned in its middle. */
	ASSERT_EQ(fallocate_in_cgroup(gmem, 0, SZ_2M), 0);
	if (cgroup_gmem_pfns(pfns, BLOCK_PAGES) != BLOCK_PAGES ||
	    pfns[BLOCK_PAGES - 1] - pfns[0] != BLOCK_PAGES - 1)
		SKIP(goto out, "no 2 MiB block could be had");
	pfn = pfns[BLOCK_PAGES / 2];
	result = poison(pfn);
	TH_LOG("memory_failure(): %s in plain guest_memfd, %s without the direct map",
	       plain_result, result);
	ASSERT_STREQ(result, plain_result);

	/* The block leaves the file: all of it comes back but the poison. */
	restored0 = get_vmstat("direct_map_restored");
	ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
			    0, SZ_2M), 0);
	/* PUNCH_HOLE waits for the pool's worker before it returns. */
	restored = get_vmstat("direct_map_restored") - restored0;
	/*
	 * memory_failure() keeps its reference to a page it failed on: the
	 * page never comes back, and its block stays in the pool, never
	 * whole again.
	 */
	ASSERT_EQ(restored, strcmp(result, "failed") ? BLOCK_PAGES - 1 : 0);
	ASSERT_TRUE(page_poisoned(pfn));

	/* Not reused: the next 2 MiB is a new block, without the poison. */
	flushes = vm_get_stat(vm, direct_map_flushes);
	ASSERT_EQ(fallocate(gmem, FALLOC_FL_KEEP_SIZE, 0, SZ_2M), 0);
	ASSERT_EQ(vm_get_stat(vm, direct_map_flushes) - flushes, 1);
out:
	close(plain);
	close(gmem);
	kvm_vm_free(vm);
	rmdir(CG_TEST);
}

#define HOTPLUG_OPT_IN	"GMEM_NO_DIRECT_MAP_TEST_HOTPLUG"
#define ACPI_DEVICES	"/sys/bus/acpi/devices/"
#define MEMORY_DIR	"/sys/devices/system/memory/"
#define PTDUMP_KERNEL	"/sys/kernel/debug/page_tables/kernel"
#define MAX_DIMMS	256

/* An ACPI memory device (a QEMU pc-dimm) and its one memory block. */
struct dimm {
	char name[32];
	int block;
};

/* A 1 GiB range of memory that only ACPI memory devices on one node hold. */
struct hotplug {
	u64 start, block_size;
	int node, nr;
	struct dimm dimm[MAX_DIMMS];
};

static bool block_offline(int block)
{
	char path[80], buf[16] = {};
	int fd;

	snprintf(path, sizeof(path), MEMORY_DIR "memory%d/state", block);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return false;
	read(fd, buf, sizeof(buf) - 1);
	close(fd);
	return !strncmp(buf, "offline", 7);
}

/* The node a memory block is on, or -1. */
static int block_node(int block)
{
	char path[80];
	struct dirent *de;
	int node = -1;
	DIR *d;

	snprintf(path, sizeof(path), MEMORY_DIR "memory%d", block);
	d = opendir(path);
	if (!d)
		return -1;
	while ((de = readdir(d)))
		if (sscanf(de->d_name, "node%d", &node) == 1)
			break;
	closedir(d);
	return node;
}

/*
 * Find a 1 GiB range that ACPI memory devices of one memory block each fill,
 * all offline, on a node that has no other memory: memory the test may
 * online, use and eject.
 */
static bool find_hotplug_range(struct hotplug *h)
{
	struct dimm all[MAX_DIMMS];
	char path[300], link[300], *p;
	int n = 0, i, j, node, block;
	struct dirent *de;
	u64 start;
	DIR *d;
	ssize_t r;
	FILE *f;

	f = fopen(MEMORY_DIR "block_size_bytes", "r");
	if (!f)
		return false;
	if (fscanf(f, "%lx", &h->block_size) != 1)
		h->block_size = 0;
	fclose(f);
	if (!h->block_size || SZ_1G % h->block_size)
		return false;

	d = opendir(ACPI_DEVICES);
	if (!d)
		return false;
	while ((de = readdir(d)) && n < MAX_DIMMS) {
		if (strncmp(de->d_name, "PNP0C80:", 8))
			continue;
		snprintf(path, sizeof(path), ACPI_DEVICES "%s/physical_node1",
			 de->d_name);
		if (!access(path, F_OK))
			continue;
		snprintf(path, sizeof(path), ACPI_DEVICES "%s/physical_node",
			 de->d_name);
		r = readlink(path, link, sizeof(link) - 1);
		if (r <= 0)
			continue;
		link[r] = 0;
		p = strrchr(link, '/');
		if (!p || sscanf(p, "/memory%d", &block) != 1)
			continue;
		snprintf(all[n].name, sizeof(all[n].name), "%.31s", de->d_name);
		all[n++].block = block;
	}
	closedir(d);

	for (i = 0; i < n; i++) {
		start = (all[i].block * h->block_size) & ~(u64)(SZ_1G - 1);
		node = block_node(all[i].block);
		h->nr = 0;
		for (j = 0; j < n; j++) {
			u64 a = all[j].block * h->block_size;

			if (a < start || a >= start + SZ_1G)
				continue;
			if (!block_offline(all[j].block) ||
			    block_node(all[j].block) != node)
				break;
			h->dimm[h->nr++] = all[j];
		}
		if (j < n || node < 0 ||
		    h->nr * h->block_size != SZ_1G || h->nr < 2)
			continue;

		/* The node's memory is these devices' and nothing else. */
		snprintf(path, sizeof(path), "/sys/devices/system/node/node%d", node);
		d = opendir(path);
		if (!d)
			continue;
		while ((de = readdir(d))) {
			if (sscanf(de->d_name, "memory%d", &block) != 1)
				continue;
			for (j = 0; j < h->nr; j++)
				if (h->dimm[j].block == block)
					break;
			if (j == h->nr)
				break;
		}
		closedir(d);
		if (de)
			continue;
		h->start = start;
		h->node = node;
		return true;
	}
	return false;
}

/* Write @state to a memory block, trying @tries times (offlining: EBUSY). */
static bool set_block_state(int block, const char *state, int tries)
{
	char path[80];
	int i;

	snprintf(path, sizeof(path), MEMORY_DIR "memory%d/state", block);
	for (i = 0; i < tries; i++) {
		int fd = open(path, O_WRONLY);
		bool ok;

		TEST_ASSERT(fd >= 0, "open %s", path);
		ok = write(fd, state, strlen(state)) == (ssize_t)strlen(state);
		close(fd);
		if (ok)
			return true;
		usleep(100000);
	}
	return false;
}

static bool can_read(const char *path)
{
	int fd = open(path, O_RDONLY);

	if (fd < 0)
		return false;
	close(fd);
	return true;
}

/* The direct map's virtual address of physical address 0, from kcore. */
static u64 direct_map_offset(void)
{
	static u64 offset;
	struct elf64_hdr eh;
	int fd, i;

	if (offset)
		return offset;

	fd = open("/proc/kcore", O_RDONLY);
	TEST_ASSERT(fd >= 0, "open /proc/kcore");
	TEST_ASSERT(pread(fd, &eh, sizeof(eh), 0) == sizeof(eh), "kcore ehdr");
	for (i = 0; i < eh.e_phnum; i++) {
		struct elf64_phdr ph;

		TEST_ASSERT(pread(fd, &ph, sizeof(ph),
				  eh.e_phoff + i * sizeof(ph)) == sizeof(ph),
			    "kcore phdr");
		if (kcore_ram(&ph)) {
			offset = ph.p_vaddr - ph.p_paddr;
			break;
		}
	}
	close(fd);
	TEST_ASSERT(offset, "no RAM segment in /proc/kcore");
	return offset;
}

/* How a physical range is mapped in the direct map, in bytes. */
struct mapped {
	u64 pud, pmd, pte, absent;
};

static struct mapped direct_map_levels(u64 phys, u64 size)
{
	u64 lo = direct_map_offset() + phys, hi = lo + size, a, b;
	struct mapped m = {};
	char line[256];
	FILE *f;

	f = fopen(PTDUMP_KERNEL, "r");
	TEST_ASSERT(f, "open " PTDUMP_KERNEL);
	while (fgets(line, sizeof(line), f)) {
		char *level;
		u64 len;

		if (sscanf(line, "0x%lx-0x%lx", &a, &b) != 2 || b <= lo || a >= hi)
			continue;
		len = min(b, hi) - max(a, lo);
		line[strcspn(line, "\n")] = 0;
		level = strrchr(line, ' ') + 1;
		if (!strstr(line, " RW ") && !strstr(line, " ro "))
			m.absent += len;
		else if (!strcmp(level, "pud"))
			m.pud += len;
		else if (!strcmp(level, "pmd"))
			m.pmd += len;
		else
			m.pte += len;
	}
	fclose(f);
	return m;
}

/*
 * Add DATA_SIZE of NO_DIRECT_MAP memory on the hot-added node (in the test
 * cgroup, whose pages /proc/kpagecgroup tells), free it, and return how the
 * 1 GiB range is mapped once the memory is back.  (ptdump cannot show the
 * removal of a whole 2M mapping: a not-present 2M entry has no PSE bit, and
 * its walk skips it.)
 */
static struct mapped hotplug_round(struct __test_metadata *_metadata,
				   struct hotplug *h, bool blocks)
{
	u64 restored0 = get_vmstat("direct_map_restored");
	u64 pfns[DATA_PAGES];
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	int gmem, n, i;

	write_file(BLOCKS_PARAM, blocks ? "Y" : "N");
	vm = vm_with_gmem(guest_nothing, &vcpu, GUEST_MEMFD_FLAG_NO_DIRECT_MAP,
			  &gmem);
	TEST_ASSERT(!fallocate_in_cgroup_node(gmem, 0, DATA_SIZE, h->node),
		    "fallocate on node %d", h->node);
	n = cgroup_gmem_pfns(pfns, DATA_PAGES);
	TEST_ASSERT(n == DATA_PAGES, "%d guest_memfd pages, not %d", n,
		    (int)DATA_PAGES);
	for (i = 0; i < n; i++)
		TEST_ASSERT(pfns[i] >= h->start / PAGE_SIZE &&
			    pfns[i] < (h->start + SZ_1G) / PAGE_SIZE,
			    "pfn 0x%lx is not in the hot-added range", pfns[i]);
	close(gmem);
	kvm_vm_free(vm);
	TEST_ASSERT(wait_vmstat("direct_map_restored", restored0 + DATA_PAGES,
				30) >= restored0 + DATA_PAGES,
		    "the memory was not mapped again");
	return direct_map_levels(h->start, SZ_1G);
}

/*
 * Fill the hot-added node with free 2 MiB blocks of the pool, out of the
 * direct map: a guest_memfd as large as the node takes them there (and
 * elsewhere once the node is full), and leaves them in the pool.
 */
static void pool_fill_node(struct __test_metadata *_metadata, struct hotplug *h)
{
	u64 restored0 = get_vmstat("direct_map_restored");
	struct kvm_vm *vm = vm_create_barebones_type(KVM_X86_SW_PROTECTED_VM);
	int gmem = vm_create_guest_memfd(vm, SZ_1G,
					 GUEST_MEMFD_FLAG_NO_DIRECT_MAP);

	write_file(BLOCKS_PARAM, "Y");
	block_cache(SZ_1G / SZ_2M);
	TEST_ASSERT(!fallocate_in_cgroup_node(gmem, 0, SZ_1G, h->node),
		    "fallocate on node %d", h->node);
	close(gmem);
	kvm_vm_free(vm);
	TEST_ASSERT(get_vmstat("direct_map_restored") == restored0,
		    "the pool did not keep the blocks");
}

/*
 * Memory that the hotplug code mapped with 2M pages is removed and restored
 * in 2 MiB blocks and page by page, and is mapped with 2M pages again, not
 * with a 1G page: memory hot-remove takes down only whole 1G mappings, and
 * would otherwise take the 1G page for a page table.  Then one memory device
 * is ejected, and the rest of the range is still mapped and used.
 */
TEST_F_TIMEOUT(block_cache, hotplugged_memory, 300)
{
	const char *opt_in = getenv(HOTPLUG_OPT_IN);
	u64 mapped_2m, mapped_1g, restored0, restored;
	struct dimm *gone = NULL;
	struct hotplug h;
	struct mapped m;
	char path[300];
	int i;

	if (!opt_in || strcmp(opt_in, "1"))
		SKIP(return, "onlines, uses and ejects hot-pluggable memory: set "
		     HOTPLUG_OPT_IN "=1");
	if (!can_read(PTDUMP_KERNEL) || !can_read("/proc/kcore"))
		SKIP(return, "cannot read " PTDUMP_KERNEL " or /proc/kcore");
	/* debug_pagealloc maps all memory with 4K pages; nogbpages no 1G. */
	if (!find_meminfo("DirectMap2M", &mapped_2m) || !mapped_2m ||
	    !find_meminfo("DirectMap1G", &mapped_1g) || !mapped_1g)
		SKIP(return, "no 2M or no 1G pages in the direct map");
	if (!find_hotplug_range(&h))
		SKIP(return, "needs 1 GiB of offline memory devices alone on a node (8 pc-dimms)");
	if (!can_write(BLOCKS_PARAM))
		SKIP(return, "no " BLOCKS_PARAM " (debugfs)");
	if (!make_test_cgroup())
		SKIP(return, "no cgroup2 at " CG_ROOT);

	for (i = 0; i < h.nr; i++)
		ASSERT_TRUE(set_block_state(h.dimm[i].block, "online_kernel", 1));
	m = direct_map_levels(h.start, SZ_1G);
	ASSERT_EQ(m.pmd, SZ_1G) TH_LOG("hot-added memory is not mapped with 2M pages");

	m = hotplug_round(_metadata, &h, true);
	ASSERT_EQ(m.pud, 0) TH_LOG("a restore made a 1G mapping of hot-added 2M mappings");
	ASSERT_EQ(m.pmd, SZ_1G);
	m = hotplug_round(_metadata, &h, false);
	ASSERT_EQ(m.pud, 0) TH_LOG("a restore made a 1G mapping of hot-added 2M mappings");
	ASSERT_EQ(m.pmd, SZ_1G);
	write_file(BLOCKS_PARAM, "Y");

	/*
	 * Eject a device whose memory goes offline (kernel allocations made
	 * while the node was preferred may pin some; the kernel reports
	 * each failure with a dump of the page): its memory block is removed,
	 * and its mapping with it.  The memory is full of free blocks of the
	 * pool: they do not keep it online, the pool gives them back when the
	 * memory is isolated.
	 */
	write_file("/proc/sys/vm/drop_caches", "3");
	pool_fill_node(_metadata, &h);
	/* Only the offline gives blocks back now: the shrinkers ran before. */
	restored0 = get_vmstat("direct_map_restored");
	for (i = h.nr - 1; i >= 0 && !gone; i--)
		if (set_block_state(h.dimm[i].block, "offline", 1))
			gone = &h.dimm[i];
	restored = get_vmstat("direct_map_restored") - restored0;
	block_cache(0);
	ASSERT_NE(gone, NULL) TH_LOG("no memory device of the range goes offline");
	TH_LOG("memory%d went offline: %lu pages of free pool blocks given back",
	       gone->block, restored);
	ASSERT_GE(restored, BLOCK_PAGES);
	snprintf(path, sizeof(path), ACPI_DEVICES "%s/eject", gone->name);
	write_file(path, "1");
	snprintf(path, sizeof(path), MEMORY_DIR "memory%d", gone->block);
	for (i = 0; i < 300 && !access(path, F_OK); i++)
		usleep(100000);
	ASSERT_NE(access(path, F_OK), 0) TH_LOG("%s was not removed", gone->name);
	m = direct_map_levels(gone->block * h.block_size, h.block_size);
	ASSERT_EQ(m.absent, h.block_size);

	/* The rest is mapped as it was, and still used and restored. */
	m = hotplug_round(_metadata, &h, true);
	ASSERT_EQ(m.pud, 0);
	ASSERT_EQ(m.pmd, SZ_1G - h.block_size);
	ASSERT_EQ(m.absent, h.block_size);

	/* Offline what is left, as it was found (best effort). */
	for (i = 0; i < h.nr; i++)
		if (&h.dimm[i] != gone)
			set_block_state(h.dimm[i].block, "offline", 1);
	rmdir(CG_TEST);
}

static void guest_touch(void)
{
	WRITE_ONCE(*(u64 *)DATA_GPA, 1);
	GUEST_DONE();
}

/*
 * Whether the VM's requests since @flushes0 (its direct_map_flushes) took
 * all their memory from free pages of the pool, with no removal (a request
 * counts a flush exactly when the pool removed memory for it): then an
 * injected removal failure had nothing to fail.  Another user of the pool
 * on the host (a VM with the flag, secretmem, a block kept by
 * memory_failure()) may leave such pages, and the mode fixture can only
 * release free blocks, not the free pages of blocks still in use.
 */
static bool no_removal_to_fail(struct kvm_vm *vm, u64 flushes0)
{
	return vm_get_stat(vm, direct_map_pages) &&
	       vm_get_stat(vm, direct_map_flushes) == flushes0;
}

/*
 * A removal that fails when a vCPU faults private memory in: KVM_RUN fails
 * with ENOMEM and a KVM_EXIT_MEMORY_FAULT for the page, and the VM goes on
 * once the VMM runs the vCPU again.
 */
TEST_F(mode, fault_enomem)
{
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	u64 flushes0;
	int gmem, r;

	if (!can_inject())
		SKIP(return, "no " FAIL_DIR " (CONFIG_FAIL_DIRECT_MAP)");

	vm = vm_with_gmem(guest_touch, &vcpu, GUEST_MEMFD_FLAG_NO_DIRECT_MAP,
			  &gmem);
	vm_mem_set_private(vm, DATA_GPA, DATA_SIZE);

	flushes0 = vm_get_stat(vm, direct_map_flushes);
	inject_nth(1);
	r = _vcpu_run(vcpu);
	inject_off();
	if (!r && no_removal_to_fail(vm, flushes0)) {
		close(gmem);
		kvm_vm_free(vm);
		SKIP(return, "the pool had free pages: no removal to fail");
	}
	ASSERT_EQ(r, -1);
	ASSERT_EQ(errno, ENOMEM);
	ASSERT_EQ(vcpu->run->exit_reason, KVM_EXIT_MEMORY_FAULT);
	ASSERT_EQ(vcpu->run->memory_fault.gpa, DATA_GPA);
	ASSERT_TRUE(vcpu->run->memory_fault.flags & KVM_MEMORY_EXIT_FLAG_PRIVATE);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), 0);

	run_until(vcpu, UCALL_DONE);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), fault_pages(variant->blocks));

	close(gmem);
	kvm_vm_free(vm);
}

static void guest_kvmclock(void)
{
	/* kvm-clock's page at a private GPA. */
	wrmsr(MSR_KVM_SYSTEM_TIME_NEW, DATA_GPA | KVM_MSR_ENABLED);
	GUEST_SYNC(1);
	/* The private page is the guest's own: KVM did not write it. */
	GUEST_ASSERT_EQ(READ_ONCE(*(u64 *)DATA_GPA), 0);
	wrmsr(MSR_KVM_SYSTEM_TIME_NEW, 0);
	GUEST_DONE();
}

/*
 * KVM's own accesses to guest memory (here kvm-clock, a gfn_to_pfn_cache
 * user) go through the memslot's host virtual addresses, never to private
 * memory: with kvm-clock at a private GPA, KVM writes the clock to the
 * shared memory behind the GPA and the guest's private page stays as it
 * was.  This is a parity check: the test runs the same VM on a guest_memfd
 * without the flag and with it, and the flag must change nothing but where
 * the private page is (out of the direct map, counted in direct_map_pages);
 * a KVM that reached private memory through the direct map would oops with
 * the flag.
 */
static void kvmclock_at_private_gpa(struct __test_metadata *_metadata,
				    u64 flags)
{
	struct pvclock_vcpu_time_info *pvti;
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	int gmem;

	vm = vm_with_gmem(guest_kvmclock, &vcpu, flags, &gmem);
	vm_mem_set_private(vm, DATA_GPA, DATA_SIZE);
	pvti = addr_gpa2hva(vm, DATA_GPA);
	memset(pvti, 0, sizeof(*pvti));

	run_until(vcpu, UCALL_SYNC);
	/* Only KVM writes these; the version is even once it is done. */
	ASSERT_NE(READ_ONCE(pvti->version), 0);
	ASSERT_EQ(READ_ONCE(pvti->version) & 1, 0);
	ASSERT_NE(READ_ONCE(pvti->tsc_to_system_mul), 0);
	run_until(vcpu, UCALL_DONE);
	/* Only the flag's pages are counted. */
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages) != 0,
		  !!(flags & GUEST_MEMFD_FLAG_NO_DIRECT_MAP));

	close(gmem);
	kvm_vm_free(vm);
}

TEST(kvmclock_uses_host_mapping)
{
	kvmclock_at_private_gpa(_metadata, 0);
	kvmclock_at_private_gpa(_metadata, GUEST_MEMFD_FLAG_NO_DIRECT_MAP);
}

/*
 * A VM whose data slot is a guest_memfd of @flags that the slot's userspace
 * address maps (Firecracker's layout with NDM_MAPPED): KVM and the VMM reach
 * the memory through that mapping.  *@mem is the mapping.
 */
static struct kvm_vm *vm_with_mapped_gmem(void *guest_code,
					  struct kvm_vcpu **vcpu, u64 flags,
					  int *gmem, u8 **mem)
{
	struct kvm_vm *vm = vm_create_shape_with_one_vcpu(default_vm, vcpu,
							  guest_code);

	*gmem = vm_create_guest_memfd(vm, DATA_SIZE, flags);
	vm_mem_add(vm, VM_MEM_SRC_GUEST_MEMFD_NO_DIRECT_MAP, DATA_GPA,
		   DATA_SLOT, DATA_PAGES, KVM_MEM_GUEST_MEMFD, *gmem, 0);
	virt_map(vm, DATA_GPA, DATA_GPA, DATA_PAGES);
	*mem = addr_gpa2hva(vm, DATA_GPA);
	return vm;
}

static bool resident(void *addr)
{
	unsigned char vec = 0;

	TEST_ASSERT(!mincore(addr, PAGE_SIZE, &vec), "mincore");
	return vec & 1;
}

/*
 * A page that the VMM touches through its mapping is taken off the direct
 * map before it is mapped, as fallocate() and guest faults take it: a whole
 * 2 MiB block for an empty aligned range (one flush), one page otherwise,
 * and a later touch inside the block costs nothing.  A secret that the guest
 * writes is absent from the direct map, and the VMM reads it through its
 * mapping.
 */
TEST_F_TIMEOUT(mode, mapped_fault_removes, 180)
{
	u64 flushes, *p;
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	int gmem, i;
	u8 *mem;

	vm = vm_with_mapped_gmem(guest_write_secret, &vcpu, NDM_MAPPED, &gmem,
				 &mem);
	new_secret(vm);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), 0);

	/* The VMM's first touch, at a 2 MiB-aligned offset. */
	WRITE_ONCE(mem[SZ_2M], 1);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), fault_pages(variant->blocks));
	flushes = vm_get_stat(vm, direct_map_flushes);
	ASSERT_LE(flushes, 1);
	ASSERT_TRUE(resident(mem + SZ_2M));

	/* A second touch in the same 2 MiB. */
	WRITE_ONCE(mem[SZ_2M + PAGE_SIZE], 2);
	if (variant->blocks) {
		ASSERT_EQ(vm_get_stat(vm, direct_map_pages), BLOCK_PAGES);
		ASSERT_EQ(vm_get_stat(vm, direct_map_flushes), flushes);
	} else {
		ASSERT_EQ(vm_get_stat(vm, direct_map_pages), 2);
	}
	ASSERT_EQ(READ_ONCE(mem[SZ_2M]), 1);

	/* The guest writes a secret at the start of the slot. */
	run_until(vcpu, UCALL_SYNC);
	if (!kcore_scan_refused())
		ASSERT_FALSE(kcore_has_secret());
	p = (u64 *)mem;
	for (i = 0; i < SECRET_WORDS; i++)
		ASSERT_EQ(~READ_ONCE(p[i]), ~secret_word(i));
	run_until(vcpu, UCALL_DONE);

	kvm_vm_free(vm);
	close(gmem);
}

/*
 * A removal that fails in a fault on the VMM's mapping: the access gets
 * SIGBUS, nothing is added or mapped, and the next access, once removals
 * work again, succeeds.
 */
TEST_F(mode, mapped_fault_sigbus)
{
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	int gmem, status;
	u64 flushes0;
	pid_t pid;
	u8 *mem;

	if (!can_inject())
		SKIP(return, "no " FAIL_DIR " (CONFIG_FAIL_DIRECT_MAP)");

	vm = vm_with_mapped_gmem(guest_nothing, &vcpu, NDM_MAPPED, &gmem, &mem);

	flushes0 = vm_get_stat(vm, direct_map_flushes);
	inject_nth(1);
	pid = fork();
	if (!pid) {
		/* Not the library's handler: die of it. */
		signal(SIGBUS, SIG_DFL);
		WRITE_ONCE(mem[0], 1);
		_exit(0);
	}
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	inject_off();
	/*
	 * The pool hands out free pages of blocks it removed before without a
	 * removal: another user of the pool on the host (a VM with the flag,
	 * secretmem) may have left some, and then there is nothing to fail.
	 */
	if (WIFEXITED(status) && !WEXITSTATUS(status) &&
	    no_removal_to_fail(vm, flushes0)) {
		kvm_vm_free(vm);
		close(gmem);
		SKIP(return, "the pool had free pages: no removal to fail");
	}
	ASSERT_TRUE(WIFSIGNALED(status)) TH_LOG("status 0x%x", status);
	ASSERT_EQ(WTERMSIG(status), SIGBUS);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), 0);
	ASSERT_FALSE(resident(mem));

	WRITE_ONCE(mem[0], 1);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), fault_pages(variant->blocks));

	kvm_vm_free(vm);
	close(gmem);
}

static sig_atomic_t nr_kicks;

static void on_kick(int sig)
{
	nr_kicks++;
}

struct kicker {
	pthread_t target;
	int gmem;
	bool stop;
};

/*
 * Signal the target every 50 us, as a VMM kicks its vCPU threads, and keep
 * allocating and punching the second half of the file, so that the
 * target's faults on the first half wait for populate_lock.
 */
static void *kick(void *arg)
{
	struct kicker *k = arg;

	while (!READ_ONCE(k->stop)) {
		pthread_kill(k->target, SIGUSR1);
		TEST_ASSERT(!fallocate(k->gmem, FALLOC_FL_KEEP_SIZE, DATA_SIZE / 2,
				       DATA_SIZE / 2) || errno == EINTR,
			    "fallocate: %s", strerror(errno));
		TEST_ASSERT(!fallocate(k->gmem, FALLOC_FL_KEEP_SIZE |
				       FALLOC_FL_PUNCH_HOLE, DATA_SIZE / 2,
				       DATA_SIZE / 2), "punch hole");
		usleep(50);
	}
	return NULL;
}

/*
 * Signals do not fail faults on the mapping: a VMM kicks its threads with
 * signals, and a fault that got SIGBUS for it would kill the VMM (the
 * library's SIGBUS handler fails the test).  Page by page, so that every
 * fault takes memory from the pool, while another thread's fallocate()s
 * make the faults wait for them (without the mmap lock).
 */
TEST_F_TIMEOUT(mode, mapped_fault_signals, 180)
{
	struct sigaction sa = { .sa_handler = on_kick, .sa_flags = SA_RESTART };
	struct kvm_vcpu *vcpu;
	struct kicker k = {};
	struct kvm_vm *vm;
	pthread_t thread;
	int gmem;
	u64 off;
	u8 *mem;

	vm = vm_with_mapped_gmem(guest_nothing, &vcpu, NDM_MAPPED, &gmem, &mem);
	ASSERT_EQ(sigaction(SIGUSR1, &sa, NULL), 0);
	nr_kicks = 0;
	k.target = pthread_self();
	k.gmem = gmem;
	ASSERT_EQ(pthread_create(&thread, NULL, kick, &k), 0);

	for (off = 0; off < DATA_SIZE / 2; off += PAGE_SIZE)
		WRITE_ONCE(mem[off], 1);

	WRITE_ONCE(k.stop, true);
	ASSERT_EQ(pthread_join(thread, NULL), 0);
	signal(SIGUSR1, SIG_DFL);
	ASSERT_GT(READ_ONCE(nr_kicks), 0);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), DATA_PAGES / 2);
	for (off = 0; off < DATA_SIZE / 2; off += PAGE_SIZE)
		ASSERT_EQ(READ_ONCE(mem[off]), 1);

	kvm_vm_free(vm);
	close(gmem);
}

/*
 * What GUP-based accesses to @mem, a mapping of the guest memory @gmem (a
 * guest_memfd of DATA_SIZE), get.
 */
static void gup_access(struct __test_metadata *_metadata, int gmem, u8 *mem,
		       bool refused)
{
	struct iovec local, remote = { mem, PAGE_SIZE };
	char buf[PAGE_SIZE];
	int fd, pipefd[2];
	ssize_t r;
	u8 *p;

	local.iov_base = buf;
	local.iov_len = sizeof(buf);
	r = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
	if (refused) {
		ASSERT_EQ(r, -1);
		ASSERT_EQ(errno, EFAULT);
	} else {
		ASSERT_EQ(r, PAGE_SIZE);
		ASSERT_EQ(buf[0], mem[0]);
	}

	fd = open("/proc/self/mem", O_RDONLY);
	ASSERT_GE(fd, 0);
	r = pread(fd, buf, PAGE_SIZE, (off_t)(uintptr_t)mem);
	close(fd);
	if (refused) {
		ASSERT_EQ(r, -1);
		ASSERT_EQ(errno, EIO);
	} else {
		ASSERT_EQ(r, PAGE_SIZE);
	}

	r = madvise(mem + PAGE_SIZE, PAGE_SIZE, MADV_POPULATE_WRITE);
	ASSERT_EQ(r, refused ? -1 : 0);
	/* MADV_POPULATE_* reports a mapping GUP refuses as EINVAL. */
	if (refused)
		ASSERT_EQ(errno, EINVAL);

	/* vmsplice() pins with GUP-fast: a page that is mapped already. */
	ASSERT_EQ(pipe(pipefd), 0);
	r = vmsplice(pipefd[1], &remote, 1, 0);
	close(pipefd[0]);
	close(pipefd[1]);
	if (refused) {
		ASSERT_EQ(r, -1);
		ASSERT_EQ(errno, EFAULT);
	} else {
		ASSERT_EQ(r, PAGE_SIZE);
	}

	/* mlock() populates with GUP, and reports its EFAULT as ENOMEM. */
	r = mlock(mem + 2 * PAGE_SIZE, PAGE_SIZE);
	if (refused) {
		ASSERT_EQ(r, -1);
		ASSERT_EQ(errno, ENOMEM);
	} else {
		ASSERT_EQ(r, 0);
		ASSERT_EQ(munlock(mem + 2 * PAGE_SIZE, PAGE_SIZE), 0);
	}

	/* MAP_POPULATE ignores GUP's refusal: the mapping, without pages. */
	p = mmap(NULL, PAGE_SIZE, PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_POPULATE, gmem, DATA_SIZE - PAGE_SIZE);
	ASSERT_NE(p, MAP_FAILED);
	ASSERT_EQ(resident(p), !refused);
	ASSERT_EQ(munmap(p, PAGE_SIZE), 0);
}

/*
 * GUP refuses memory off the direct map, as it refuses secretmem's: a
 * pinned page could be read through the direct map.  Without the flag the
 * same accesses work.  process_vm_readv(), /proc/self/mem,
 * MADV_POPULATE_WRITE, mlock() and MAP_POPULATE go through GUP's slow path,
 * vmsplice() of a mapped page through GUP-fast.
 */
TEST(mapped_gup_refused)
{
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	int gmem;
	u8 *mem;

	vm = vm_with_mapped_gmem(guest_nothing, &vcpu,
				 GUEST_MEMFD_FLAG_MMAP |
				 GUEST_MEMFD_FLAG_INIT_SHARED, &gmem, &mem);
	WRITE_ONCE(mem[0], 0x5a);
	gup_access(_metadata, gmem, mem, false);
	kvm_vm_free(vm);
	close(gmem);

	vm = vm_with_mapped_gmem(guest_nothing, &vcpu, NDM_MAPPED, &gmem, &mem);
	WRITE_ONCE(mem[0], 0x5a);
	gup_access(_metadata, gmem, mem, true);
	ASSERT_EQ(READ_ONCE(mem[0]), 0x5a);
	kvm_vm_free(vm);
	close(gmem);
}

/* The pfn that the VMM's @addr maps, from /proc/self/pagemap; 0 if none. */
static u64 mapped_pfn(void *addr)
{
	u64 ent = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);

	TEST_ASSERT(fd >= 0, "open /proc/self/pagemap");
	TEST_ASSERT(pread(fd, &ent, sizeof(ent),
			  (uintptr_t)addr / PAGE_SIZE * sizeof(ent)) == sizeof(ent),
		    "read /proc/self/pagemap");
	close(fd);
	/* Bit 63: present; bits 0-54: the pfn (0 without CAP_SYS_ADMIN). */
	return ent >> 63 ? ent & GENMASK_ULL(54, 0) : 0;
}

static sigjmp_buf poison_jmp;
static int poison_code;

static void poison_on_sigbus(int sig, siginfo_t *si, void *ctx)
{
	poison_code = si->si_code;
	siglongjmp(poison_jmp, 1);
}

/* What the VMM's read of @p gets, in words, into @buf. */
static void read_poisoned(u8 *p, char *buf, size_t size)
{
	struct sigaction sa = {
		.sa_sigaction = poison_on_sigbus,
		.sa_flags = SA_SIGINFO,
	}, old;

	sigaction(SIGBUS, &sa, &old);
	if (sigsetjmp(poison_jmp, 1))
		snprintf(buf, size, "SIGBUS, si_code %d", poison_code);
	else
		snprintf(buf, size, "read %#x", READ_ONCE(*p));
	sigaction(SIGBUS, &old, NULL);
}

#define SOFT_OFFLINE	"/sys/devices/system/memory/soft_offline_page"

/* Soft-offline @pfn, as a RAS daemon does on corrected errors: 0 or errno. */
static int soft_offline(u64 pfn)
{
	char buf[32];
	int fd, len, r = 0;

	fd = open(SOFT_OFFLINE, O_WRONLY);
	TEST_ASSERT(fd >= 0, "open " SOFT_OFFLINE);
	len = snprintf(buf, sizeof(buf), "%#llx",
		       (unsigned long long)pfn * PAGE_SIZE);
	if (write(fd, buf, len) != len)
		r = errno;
	close(fd);
	return r;
}

/*
 * Hardware poison in a page that the VMM maps (memory_failure(), as
 * hwpoison/corrupt-pfn simulates it): memory_failure(), and the VMM's next
 * read of the page, end as they do for a page of a mappable guest_memfd in
 * the direct map; once the file is gone, the poisoned page is not mapped
 * into the direct map again, nor, while memory_failure() holds it, the rest
 * of its 2 MiB block.  Opt-in, as block_cache.hwpoison: it poisons two host
 * pages for good.  Before it, a soft offline of another page (what a RAS
 * daemon does on corrected errors, by migrating the page) ends as in the
 * direct map too, without touching the page through it.
 */
TEST_F_TIMEOUT(block_cache, mapped_hwpoison, 120)
{
	static const u64 flags[] = {
		GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED,
		NDM_MAPPED,
	};
	u64 pfn = 0, removed0 = 0, restored0 = 0, left;
	const char *result[2], *opt_in;
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm[2];
	int gmem[2], soft[2], i;
	char got[2][32];
	u8 *mem[2];

	opt_in = getenv(HWPOISON_OPT_IN);
	if (!opt_in || strcmp(opt_in, "1"))
		SKIP(return, "poisons host pages for good: set " HWPOISON_OPT_IN "=1");
	if (!can_write(HWPOISON_PFN) || access(SOFT_OFFLINE, W_OK) ||
	    mf_count("total") < 0)
		SKIP(return, "no %s, %s or memory_failure counters",
		     HWPOISON_PFN, SOFT_OFFLINE);
	if ((kvm_check_cap(KVM_CAP_GUEST_MEMFD_FLAGS) & NDM_MAPPED) != NDM_MAPPED)
		SKIP(return, "no MMAP | INIT_SHARED | NO_DIRECT_MAP");

	for (i = 0; i < 2; i++) {
		vm[i] = vm_with_mapped_gmem(guest_nothing, &vcpu, flags[i],
					    &gmem[i], &mem[i]);
		removed0 = get_vmstat("direct_map_removed");
		restored0 = get_vmstat("direct_map_restored");
		WRITE_ONCE(mem[i][0], 0x5a);
		WRITE_ONCE(mem[i][PAGE_SIZE], 0xa5);
		pfn = mapped_pfn(mem[i] + PAGE_SIZE);
		ASSERT_NE(pfn, 0);
		soft[i] = soft_offline(pfn);
		ASSERT_EQ(READ_ONCE(mem[i][PAGE_SIZE]), 0xa5);

		pfn = mapped_pfn(mem[i]);
		ASSERT_NE(pfn, 0);
		result[i] = poison(pfn);
		read_poisoned(mem[i], got[i], sizeof(got[i]));
	}
	TH_LOG("soft offline: %s in the direct map, %s without",
	       strerror(soft[0]), strerror(soft[1]));
	TH_LOG("memory_failure(): %s in the direct map, %s without; the VMM's read: %s, %s",
	       result[0], result[1], got[0], got[1]);
	ASSERT_EQ(soft[1], soft[0]);
	ASSERT_STREQ(result[1], result[0]);
	ASSERT_STREQ(got[1], got[0]);

	/* Release waits for the pool's worker. */
	kvm_vm_free(vm[1]);
	close(gmem[1]);
	left = get_vmstat("direct_map_removed") - removed0 -
	       (get_vmstat("direct_map_restored") - restored0);
	ASSERT_EQ(left, strcmp(result[1], "failed") ? 1 : BLOCK_PAGES);
	ASSERT_TRUE(page_poisoned(pfn));

	kvm_vm_free(vm[0]);
	close(gmem[0]);
}

#define OUTS_PORT	0x80
#define INS_PORT	0x81
#define MMIO_GPA	0xc0000000ul	/* in no memslot */

static u64 pvti_gpa;
static char outs_data[8] = "gmem-ndm";
static char ins_buf[8];

static void guest_gmem_only(void)
{
	const char *src = outs_data;
	u64 count = sizeof(outs_data);
	char *dst;

	wrmsr(MSR_KVM_SYSTEM_TIME_NEW, pvti_gpa | KVM_MSR_ENABLED);
	GUEST_SYNC(1);
	/* Again, once the VMM punched the page out: KVM writes a new one. */
	wrmsr(MSR_KVM_SYSTEM_TIME_NEW, pvti_gpa | KVM_MSR_ENABLED);
	GUEST_SYNC(2);
	wrmsr(MSR_KVM_SYSTEM_TIME_NEW, 0);

	/* String I/O, which KVM emulates: it fetches, walks and reads... */
	asm volatile("cld; rep outsb"
		     : "+S"(src), "+c"(count) : "d"(OUTS_PORT) : "memory");
	/* ... and writes. */
	dst = ins_buf;
	count = sizeof(ins_buf);
	asm volatile("cld; rep insb"
		     : "+D"(dst), "+c"(count) : "d"(INS_PORT) : "memory");
	GUEST_ASSERT(!memcmp(ins_buf, "from-vmm", sizeof(ins_buf)));

	/* MMIO, from instructions in guest memory. */
	WRITE_ONCE(*(u64 *)MMIO_GPA, 0x1234abcd5678ef90ull);
	GUEST_ASSERT_EQ(READ_ONCE(*(u32 *)MMIO_GPA), 0xfeedf00d);
	GUEST_DONE();
}

/*
 * A KVM_X86_DEFAULT_VM whose only memory is a guest_memfd off the direct map
 * that the VMM maps (MMAP | INIT_SHARED | NO_DIRECT_MAP): guest code, page
 * tables and stack live there, the VMM loads the guest through its mapping,
 * and KVM's own accesses work.  kvm-clock (a gfn_to_pfn_cache) maps its page
 * from guest_memfd, and maps the new page after the VMM punches the old one
 * out while no VMA maps it, so that only guest_memfd's invalidation, not an
 * mmu_notifier event, can tell KVM (read here through a second mapping, the
 * library's alias, not the slot's userspace address).  The instruction
 * emulator fetches, walks the guest's page tables, and reads and writes
 * guest memory for string I/O; MMIO exits work from code in such memory.
 */
TEST(default_vm_gmem_only)
{
	struct pvclock_vcpu_time_info *pvti;
	unsigned int n = 0, in = 0, mmio = 0;
	char got[sizeof(outs_data)];
	struct kvm_vcpu *vcpu;
	struct ucall uc;
	struct kvm_vm *vm;
	gva_t gva;

	vm = vm_create_shape_with_one_vcpu(gmem_only_vm, &vcpu, guest_gmem_only);
	virt_map(vm, MMIO_GPA, MMIO_GPA, 1);
	gva = vm_alloc_page(vm);
	pvti_gpa = addr_gva2gpa(vm, gva);
	sync_global_to_guest(vm, pvti_gpa);
	pvti = addr_gpa2alias(vm, pvti_gpa);
	ASSERT_NE(pvti, NULL);
	/* Nothing maps the page at the slot's userspace address (KVM's uhva). */
	ASSERT_EQ(madvise(addr_gpa2hva(vm, pvti_gpa), PAGE_SIZE,
			  MADV_DONTNEED), 0);
	ASSERT_GT(vm_get_stat(vm, direct_map_pages), 0);

	run_until(vcpu, UCALL_SYNC);
	ASSERT_NE(READ_ONCE(pvti->version), 0);
	ASSERT_NE(READ_ONCE(pvti->tsc_to_system_mul), 0);

	/*
	 * Unmapped everywhere, the page is truncated without an mmu_notifier
	 * event (truncation zaps the VMAs of a mapped page only): only
	 * guest_memfd's own invalidation can tell KVM.
	 */
	ASSERT_EQ(madvise(pvti, PAGE_SIZE, MADV_DONTNEED), 0);
	ASSERT_EQ(fallocate(memslot2region(vm, 0)->region.guest_memfd,
			    FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			    pvti_gpa, PAGE_SIZE), 0);
	ASSERT_EQ(READ_ONCE(pvti->version), 0);
	run_until(vcpu, UCALL_SYNC);
	ASSERT_NE(READ_ONCE(pvti->version), 0);
	ASSERT_NE(READ_ONCE(pvti->tsc_to_system_mul), 0);

	for (;;) {
		struct kvm_run *run = vcpu->run;
		u8 *data;

		vcpu_run(vcpu);
		if (run->exit_reason == KVM_EXIT_MMIO) {
			ASSERT_EQ(run->mmio.phys_addr, MMIO_GPA);
			if (run->mmio.is_write) {
				u64 v = 0;

				ASSERT_EQ(run->mmio.len, 8);
				memcpy(&v, run->mmio.data, 8);
				ASSERT_EQ(v, 0x1234abcd5678ef90ull);
			} else {
				u32 v = 0xfeedf00d;

				ASSERT_EQ(run->mmio.len, 4);
				memcpy(run->mmio.data, &v, 4);
			}
			mmio++;
			continue;
		}
		TEST_ASSERT_KVM_EXIT_REASON(vcpu, KVM_EXIT_IO);
		data = (u8 *)run + run->io.data_offset;
		if (run->io.port == OUTS_PORT) {
			ASSERT_EQ(run->io.direction, KVM_EXIT_IO_OUT);
			ASSERT_EQ(run->io.size, 1);
			ASSERT_LE(n + run->io.count, sizeof(got));
			memcpy(got + n, data, run->io.count);
			n += run->io.count;
		} else if (run->io.port == INS_PORT) {
			ASSERT_EQ(run->io.direction, KVM_EXIT_IO_IN);
			ASSERT_EQ(run->io.size, 1);
			ASSERT_LE(in + run->io.count, sizeof(ins_buf));
			memcpy(data, "from-vmm" + in, run->io.count);
			in += run->io.count;
		} else {
			break;
		}
	}
	ASSERT_EQ(n, sizeof(got));
	ASSERT_EQ(memcmp(got, "gmem-ndm", sizeof(got)), 0);
	ASSERT_EQ(in, sizeof(ins_buf));
	ASSERT_EQ(mmio, 2);
	switch (get_ucall(vcpu, &uc)) {
	case UCALL_ABORT:
		REPORT_GUEST_ASSERT(uc);
		break;
	default:
		ASSERT_EQ(uc.cmd, UCALL_DONE);
	}

	kvm_vm_free(vm);
}

#define NESTED_ROUNDS	500

static void l2_vmcall(struct svm_test_data *svm)
{
	for (;;)
		__asm__ __volatile__("vmcall");
}

static void l1_svm(struct svm_test_data *svm)
{
	int i;

	generic_svm_setup(svm, l2_vmcall);
	for (i = 0; i < NESTED_ROUNDS; i++) {
		run_guest(svm->vmcb, svm->vmcb_gpa);
		GUEST_ASSERT_EQ(svm->vmcb->control.exit_code, SVM_EXIT_VMMCALL);
		svm->vmcb->save.rip += 3;
	}
	GUEST_DONE();
}

/* Whether vmalloc flushes every vunmap() itself (debug_pagealloc=on). */
static bool vunmap_flushes(void)
{
	char cmdline[4096] = {};
	int fd = open("/proc/cmdline", O_RDONLY);

	TEST_ASSERT(fd >= 0, "open /proc/cmdline");
	TEST_ASSERT(read(fd, cmdline, sizeof(cmdline) - 1) > 0, "read /proc/cmdline");
	close(fd);
	return strstr(cmdline, "debug_pagealloc=on");
}

/* Function-call IPIs (x86's "CAL" in /proc/interrupts), summed over CPUs. */
static u64 call_ipis(void)
{
	FILE *f = fopen("/proc/interrupts", "r");
	char word[64];
	u64 sum = 0;
	bool cal = false;

	TEST_ASSERT(f, "open /proc/interrupts");
	while (fscanf(f, "%63s", word) == 1) {
		if (!strcmp(word, "CAL:"))
			cal = true;
		else if (cal && word[0] >= '0' && word[0] <= '9')
			sum += strtoull(word, NULL, 10);
		else if (cal)
			break;
	}
	fclose(f);
	return sum;
}

/*
 * Steal time in a guest_memfd off the direct map: KVM writes the guest's
 * kvm_steal_time through the VMM's mapping (a gfn_to_hva_cache and
 * user-access helpers), at every vCPU load.
 */
static void guest_steal_time(gpa_t st_gpa, struct kvm_steal_time *st)
{
	u32 version;

	wrmsr(MSR_KVM_STEAL_TIME, st_gpa | KVM_MSR_ENABLED);
	GUEST_SYNC(0);
	version = READ_ONCE(st->version);
	GUEST_ASSERT(version && !(version & 1));
	GUEST_SYNC(1);
	GUEST_ASSERT(READ_ONCE(st->version) > version);
	wrmsr(MSR_KVM_STEAL_TIME, 0);
	GUEST_DONE();
}

TEST(steal_time_gmem_only)
{
	struct kvm_steal_time *st;
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	gva_t st_gva;

	if (!kvm_cpu_has(X86_FEATURE_KVM_STEAL_TIME))
		SKIP(return, "no steal time");

	vm = vm_create_shape_with_one_vcpu(gmem_only_vm, &vcpu,
					   guest_steal_time);
	st_gva = vm_alloc_page(vm);
	st = addr_gva2hva(vm, st_gva);
	memset(st, 0, sizeof(*st));
	vcpu_args_set(vcpu, 2, addr_gva2gpa(vm, st_gva), st_gva);
	run_until(vcpu, UCALL_SYNC);
	run_until(vcpu, UCALL_SYNC);
	run_until(vcpu, UCALL_DONE);
	/* The VMM reads what KVM wrote, through its mapping. */
	ASSERT_NE(READ_ONCE(st->version), 0);
	kvm_vm_free(vm);
}

static void guest_write_data(void)
{
	WRITE_ONCE(*(u64 *)DATA_GPA, 0x1234);
	GUEST_DONE();
}

/*
 * A KVM_X86_DEFAULT_VM has no private memory: a guest_memfd without MMAP is
 * accepted there, but the guest gets the memory behind the memslot's
 * userspace address, and the file gets no page (as documented).
 */
TEST(default_vm_without_mmap_unused)
{
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	int gmem;

	vm = vm_create_shape_with_one_vcpu(default_vm, &vcpu, guest_write_data);
	gmem = vm_create_guest_memfd(vm, DATA_SIZE,
				     GUEST_MEMFD_FLAG_NO_DIRECT_MAP);
	vm_mem_add(vm, VM_MEM_SRC_ANONYMOUS, DATA_GPA, DATA_SLOT, DATA_PAGES,
		   KVM_MEM_GUEST_MEMFD, gmem, 0);
	virt_map(vm, DATA_GPA, DATA_GPA, DATA_PAGES);
	run_until(vcpu, UCALL_DONE);
	ASSERT_EQ(READ_ONCE(*(u64 *)addr_gpa2hva(vm, DATA_GPA)), 0x1234);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), 0);
	kvm_vm_free(vm);
	close(gmem);
}

/*
 * Nested SVM with vmcb12 (and all of L1's and L2's memory) in a guest_memfd
 * off the direct map: VMRUN and the #VMEXIT map vmcb12 with kvm_vcpu_map(),
 * which takes the page from guest_memfd and maps it with vmap(), as GUP
 * refuses it.  Taking the mapping down costs no host-wide TLB flush (an IPI
 * to every other CPU), or L1 could make the host flush at will: 500 rounds
 * of VMRUN and #VMEXIT (1000 mappings taken down) cost fewer function-call
 * IPIs than a quarter of a flush per round would.  Not counted when
 * debug_pagealloc is on: vmalloc then flushes every vunmap() itself.
 */
TEST(nested_svm_gmem_only)
{
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	long cpus;
	u64 ipis;
	gva_t svm_gva;

	if (!kvm_cpu_has(X86_FEATURE_SVM))
		SKIP(return, "no nested SVM");

	vm = vm_create_shape_with_one_vcpu(gmem_only_vm, &vcpu, l1_svm);
	vcpu_alloc_svm(vm, &svm_gva);
	vcpu_args_set(vcpu, 1, svm_gva);
	ipis = call_ipis();
	run_until(vcpu, UCALL_DONE);
	ipis = call_ipis() - ipis;
	kvm_vm_free(vm);
	cpus = sysconf(_SC_NPROCESSORS_ONLN);
	TH_LOG("%d rounds of VMRUN and #VMEXIT: %lu function-call IPIs on %ld CPUs",
	       NESTED_ROUNDS, ipis, cpus);
	if (cpus > 1 && !vunmap_flushes())
		ASSERT_LT(ipis, NESTED_ROUNDS * (cpus - 1) / 4);
}

#define MAP_GPA_PRIVATE_ATTR	BIT_ULL(4)	/* KVM_MAP_GPA_RANGE_ENCRYPTED */
/* What this test's VMM answers for ENOMEM: the guest and the VMM agree. */
#define HC_ENOMEM		ENOMEM

static void guest_convert(void)
{
	u64 ret;

	/* Out of memory: the VMM says so, nothing changed. */
	ret = __kvm_hypercall_map_gpa_range(DATA_GPA, PAGE_SIZE,
					    MAP_GPA_PRIVATE_ATTR);
	GUEST_ASSERT_EQ(ret, -HC_ENOMEM);
	/* A range outside guest memory. */
	ret = __kvm_hypercall_map_gpa_range(DATA_GPA + DATA_SIZE, PAGE_SIZE,
					    MAP_GPA_PRIVATE_ATTR);
	GUEST_ASSERT_EQ(ret, -KVM_EINVAL);
	/* And again, with memory. */
	ret = __kvm_hypercall_map_gpa_range(DATA_GPA, PAGE_SIZE,
					    MAP_GPA_PRIVATE_ATTR);
	GUEST_ASSERT_EQ(ret, 0);
	WRITE_ONCE(*(u64 *)DATA_GPA, 0x1234);
	GUEST_ASSERT_EQ(READ_ONCE(*(u64 *)DATA_GPA), 0x1234);
	GUEST_DONE();
}

/*
 * The VMM side of KVM_HC_MAP_GPA_RANGE for memory outside the direct map, as
 * Documentation/virt/kvm/x86/hypercalls.rst describes it: allocate the
 * private memory first (fallocate), and only then change the attributes;
 * ENOMEM goes back to the guest as -HC_ENOMEM, a range outside guest memory
 * as -KVM_EINVAL.
 */
static u64 vmm_map_gpa_range(struct kvm_vm *vm, int gmem, u64 gpa, u64 npages)
{
	u64 size = npages * PAGE_SIZE;

	if (gpa < DATA_GPA || gpa + size > DATA_GPA + DATA_SIZE || gpa + size < gpa)
		return -KVM_EINVAL;
	if (fallocate(gmem, FALLOC_FL_KEEP_SIZE, gpa - DATA_GPA, size))
		return errno == ENOMEM ? -HC_ENOMEM : -KVM_EINVAL;
	vm_mem_set_private(vm, gpa, size);
	return 0;
}

TEST_F(mode, map_gpa_range_enomem)
{
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	u64 flushes0 = 0;
	int gmem, calls = 0;
	struct ucall uc;

	if (!can_inject())
		SKIP(return, "no " FAIL_DIR " (CONFIG_FAIL_DIRECT_MAP)");

	vm = vm_with_gmem(guest_convert, &vcpu, GUEST_MEMFD_FLAG_NO_DIRECT_MAP,
			  &gmem);
	vm_enable_cap(vm, KVM_CAP_EXIT_HYPERCALL, 1 << KVM_HC_MAP_GPA_RANGE);

	for (;;) {
		struct kvm_run *run = vcpu->run;

		vcpu_run(vcpu);
		if (run->exit_reason == KVM_EXIT_HYPERCALL) {
			ASSERT_EQ(run->hypercall.nr, KVM_HC_MAP_GPA_RANGE);
			ASSERT_EQ(run->hypercall.args[2], MAP_GPA_PRIVATE_ATTR);
			if (calls++ == 0) {
				flushes0 = vm_get_stat(vm, direct_map_flushes);
				inject_nth(1);
			}
			run->hypercall.ret = vmm_map_gpa_range(vm, gmem,
							       run->hypercall.args[0],
							       run->hypercall.args[1]);
			inject_off();
			/*
			 * The kernel's part: the failed fallocate() said
			 * ENOMEM and added nothing.
			 */
			if (calls == 1 && !run->hypercall.ret &&
			    no_removal_to_fail(vm, flushes0)) {
				close(gmem);
				kvm_vm_free(vm);
				SKIP(return, "the pool had free pages: no removal to fail");
			}
			if (calls == 1) {
				ASSERT_EQ(run->hypercall.ret, -HC_ENOMEM);
				ASSERT_EQ(vm_get_stat(vm, direct_map_pages), 0);
			}
			continue;
		}
		TEST_ASSERT_KVM_EXIT_REASON(vcpu, KVM_EXIT_IO);
		if (get_ucall(vcpu, &uc) == UCALL_ABORT)
			REPORT_GUEST_ASSERT(uc);
		ASSERT_EQ(uc.cmd, UCALL_DONE);
		break;
	}
	ASSERT_EQ(calls, 3);
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), fault_pages(variant->blocks));

	close(gmem);
	kvm_vm_free(vm);
}

#define FAIL_NTH	"/proc/thread-self/fail-nth"
#define FAIL_NTH_MAX	5000
/*
 * Free pages a test may end with fewer of: what KVM or the harness keep
 * (page tables, slabs, per-CPU lists), not a page of the guest_memfd.
 */
#define NTH_FREE_SLACK	256

/*
 * The fail_nth tests fail, in turn, every step of every path that takes
 * memory off the direct map: fallocate(), a fault in KVM_RUN, the round trip
 * of KVM_HC_MAP_GPA_RANGE through the VMM, and a change of attributes.  A
 * step is any fault-injection site the thread passes: each removal
 * (fail_direct_map) and, once fail_page_alloc and failslab are told not to
 * ignore them, every page and slab allocation, including the folios, the
 * 2 MiB blocks, KVM's page tables and the Rust component's own objects.
 * /proc/thread-self/fail-nth fails the nth site from now, for n = 1, 2, ...
 * until the call gets through without reaching it.
 *
 * A call that hits the failure either fails with ENOMEM and leaves nothing
 * half-done, or absorbs it (a block that falls back to pages); either way the
 * VM goes on and the same call then succeeds.  At the end every page taken
 * off the direct map is back on it, and the free pages are back to where
 * they were.
 *
 * Page by page, every page is a few steps more: those tests take 1 MiB, the
 * others 4 MiB (two blocks).
 */
static u64 nth_size;

struct nth {
	struct kvm_vm *vm;
	struct kvm_vcpu *vcpu;
	int gmem;
	/* user_fault: the VMM's mapping of the guest_memfd. */
	u8 *mem;
	u64 fault_pages;
	/* map_gpa_range: the VMM's answer, once it has given it. */
	bool answered;
	u64 hc_ret;
	int guest_enomem;
	/* fallocate: failed calls that left a prefix of the range in. */
	int partial;
};

/* What one run of a path found; the figures the tests print. */
struct nth_count {
	int steps, failed, absorbed;
};

/* Where the counters were before a test. */
struct nth_base {
	u64 removed, restored;
	s64 free;
};

FIXTURE(fail_nth) {
	int cache, fd;
	struct nth_base base;
};

FIXTURE_VARIANT(fail_nth) {
	const char *name;
	bool blocks;
	bool cached;
};

FIXTURE_VARIANT_ADD(fail_nth, blocks) {
	.name = "blocks",
	.blocks = true,
};

FIXTURE_VARIANT_ADD(fail_nth, per_page) {
	.name = "per_page",
	.blocks = false,
};

/* Blocks taken from the pool's free blocks. */
FIXTURE_VARIANT_ADD(fail_nth, cached) {
	.name = "cached",
	.blocks = true,
	.cached = true,
};

/* Let fail-nth fail any allocation; disarm_fault_injection() undoes it. */
static void fail_alloc_all(void)
{
	write_file(FAIL_PAGE_DIR "ignore-gfp-wait", "N");
	write_file(FAIL_PAGE_DIR "ignore-gfp-highmem", "N");
	write_file(FAIL_PAGE_DIR "min-order", "0");
	write_file(FAIL_SLAB_DIR "ignore-gfp-wait", "N");
}

static void nth_warm_up(void)
{
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	int gmem;

	vm = vm_with_gmem(guest_nothing, &vcpu, GUEST_MEMFD_FLAG_NO_DIRECT_MAP,
			  &gmem);
	TEST_ASSERT(!fallocate(gmem, FALLOC_FL_KEEP_SIZE, 0, DATA_SIZE),
		    "fallocate");
	vcpu_run(vcpu);
	close(gmem);
	kvm_vm_free(vm);
}

FIXTURE_SETUP(fail_nth)
{
	if (access(FAIL_NTH, W_OK) || !can_inject() ||
	    !can_write(FAIL_PAGE_DIR "times") ||
	    !can_write(FAIL_SLAB_DIR "times") || !can_write(BLOCKS_PARAM) ||
	    access(CACHE_PARAM, W_OK))
		SKIP(return, "no " FAIL_NTH ", fail_direct_map, fail_page_alloc, failslab or "
		     CACHE_PARAM);
	self->fd = open(FAIL_NTH, O_RDWR);
	ASSERT_GE(self->fd, 0);
	write_file(BLOCKS_PARAM, variant->blocks ? "Y" : "N");
	self->cache = block_cache(0);
	nth_size = variant->blocks ? DATA_SIZE : SZ_1M;
	/* What the first VM of a process allocates for good is not a leak. */
	nth_warm_up();
	self->base.removed = get_vmstat("direct_map_removed");
	self->base.restored = get_vmstat("direct_map_restored");
	self->base.free = get_free_pages();
	/* fail-nth ignores the probability: 0 keeps other threads out. */
	inject_off();
	write_file(FAIL_DIR "probability", "0");
	write_file(FAIL_PAGE_DIR "verbose", "0");
	write_file(FAIL_PAGE_DIR "probability", "0");
	write_file(FAIL_SLAB_DIR "verbose", "0");
	write_file(FAIL_SLAB_DIR "probability", "0");
	fail_alloc_all();
}

FIXTURE_TEARDOWN_PARENT(fail_nth)
{
	if (access(FAIL_NTH, W_OK))
		return;
	disarm_fault_injection();
	block_cache(self->cache);
}

static void fail_nth(int fd, int n)
{
	char buf[16];
	int len = snprintf(buf, sizeof(buf), "%d", n);

	TEST_ASSERT(pwrite(fd, buf, len, 0) == len, "write %d to " FAIL_NTH, n);
}

/* Turn fail-nth off, and return whether the failure was injected. */
static bool fail_nth_hit(int fd)
{
	char buf[16] = {};

	TEST_ASSERT(pread(fd, buf, sizeof(buf) - 1, 0) > 0, "read " FAIL_NTH);
	fail_nth(fd, 0);
	return atoi(buf) == 0;
}

static void nth_setup(struct nth *t, void *guest_code, bool blocks)
{
	memset(t, 0, sizeof(*t));
	t->vm = vm_with_gmem(guest_code, &t->vcpu, GUEST_MEMFD_FLAG_NO_DIRECT_MAP,
			     &t->gmem);
	t->fault_pages = fault_pages(blocks);
	sync_global_to_guest(t->vm, nth_size);
}

static u64 nth_pages(struct nth *t)
{
	return vm_get_stat(t->vm, direct_map_pages);
}

static void nth_punch(struct nth *t)
{
	TEST_ASSERT(!fallocate(t->gmem, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
			       0, nth_size), "punch hole");
	TEST_ASSERT_EQ(nth_pages(t), 0);
}

/*
 * One path: @call (0 or -errno) with the nth step failing, for every n;
 * @failed checks what a failed call left, @done what a successful one did,
 * @undo goes back to where @call starts.
 */
static struct nth_count every_step(int fd, struct nth *t, const char *name,
				   int (*call)(struct nth *t),
				   void (*failed)(struct nth *t),
				   void (*done)(struct nth *t),
				   void (*undo)(struct nth *t))
{
	struct nth_count c = {};
	int n, r;

	for (n = 1;; n++) {
		bool hit;

		TEST_ASSERT(n <= FAIL_NTH_MAX, "%s: more than %d steps", name,
			    FAIL_NTH_MAX);
		fail_nth(fd, n);
		r = call(t);
		hit = fail_nth_hit(fd);
		TEST_ASSERT(!r || hit, "%s: %s without a failure", name,
			    strerror(-r));
		if (!hit) {
			c.steps = n - 1;
			done(t);
			undo(t);
			break;
		}
		if (r) {
			TEST_ASSERT(r == -ENOMEM, "%s: step %d: %s, not ENOMEM",
				    name, n, strerror(-r));
			c.failed++;
			failed(t);
			/* The VM goes on: the same call works. */
			r = call(t);
			TEST_ASSERT(!r, "%s: step %d, again: %s", name, n,
				    strerror(-r));
		} else {
			c.absorbed++;
		}
		done(t);
		undo(t);
	}
	return c;
}

/*
 * Close the VM; nothing may stay off the direct map, or leak.  The VM's own
 * counters are exact: every page that entered its file left it.  The
 * host-wide ones (direct-map changes, free pages) also see what the pool did
 * with those pages, but other users of the pool (memfd_secret(), other VMs
 * with the flag) move them too: the test expects a host where nothing else
 * uses the pool while it runs, as the kselftest runner gives it.
 */
static void nth_finish(struct __test_metadata *_metadata,
		       const struct nth_base *base, struct nth *t,
		       const char *variant, struct nth_count c)
{
	s64 free_delta;

	ASSERT_EQ(fallocate(t->gmem, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
			    0, DATA_SIZE), 0);
	ASSERT_EQ(vm_get_stat(t->vm, direct_map_pages), 0);
	close(t->gmem);
	kvm_vm_free(t->vm);
	block_cache(0);
	free_delta = get_free_pages() - base->free;
	printf("# kp-figure: fail-nth %s %s: %d steps failed in turn: ",
	       variant, _metadata->name, c.steps);
	printf("%d calls failed with ENOMEM, %d failures absorbed ", c.failed,
	       c.absorbed);
	printf("(%d answered -ENOMEM to the guest); free pages %+lld\n",
	       t->guest_enomem, (long long)free_delta);
	ASSERT_GT(c.steps, 0);
	ASSERT_EQ(get_vmstat("direct_map_removed") - base->removed,
		  get_vmstat("direct_map_restored") - base->restored);
	ASSERT_GT(free_delta, -NTH_FREE_SLACK);
}

/* With the pool keeping them, two free blocks are in it before each call. */
static void nth_fill_cache(struct nth *t, bool cached)
{
	if (!cached)
		return;
	block_cache(DATA_PAGES / BLOCK_PAGES);
	TEST_ASSERT(!fallocate(t->gmem, FALLOC_FL_KEEP_SIZE, 0, nth_size),
		    "fallocate");
	nth_punch(t);
}

static int nth_fallocate(struct nth *t)
{
	return fallocate(t->gmem, FALLOC_FL_KEEP_SIZE, 0, nth_size) ? -errno : 0;
}

/* Some pages may be in (a prefix of the range), but no more than asked. */
static void nth_fallocate_failed(struct nth *t)
{
	TEST_ASSERT(nth_pages(t) < nth_size / PAGE_SIZE,
		    "%lu pages after ENOMEM", nth_pages(t));
	t->partial += nth_pages(t) > 0;
}

static void nth_fallocate_done(struct nth *t)
{
	TEST_ASSERT_EQ(nth_pages(t), nth_size / PAGE_SIZE);
}

TEST_F_TIMEOUT(fail_nth, fallocate, 300)
{
	struct nth t;
	struct nth_count c;

	nth_setup(&t, guest_nothing, variant->blocks);
	nth_fill_cache(&t, variant->cached);
	c = every_step(self->fd, &t, "fallocate", nth_fallocate,
		       nth_fallocate_failed, nth_fallocate_done, nth_punch);
	printf("# %d of the %d failed calls left a prefix of the range in\n",
	       t.partial, c.failed);
	nth_finish(_metadata, &self->base, &t, variant->name, c);
}

static void guest_touch_loop(void)
{
	u64 i;

	for (i = 1;; i++) {
		WRITE_ONCE(*(u64 *)DATA_GPA, i);
		GUEST_SYNC(i);
	}
}

/* KVM_RUN alone: _vcpu_run() also reads the registers, a step of its own. */
static int nth_run(struct nth *t)
{
	int r;

	do {
		r = __vcpu_run(t->vcpu);
	} while (r && errno == EINTR);
	return r ? -errno : 0;
}

/* A block, or a page when no block could be had. */
static void nth_run_failed(struct nth *t)
{
	u64 pages = nth_pages(t);

	TEST_ASSERT(pages == 0 || pages == 1 || pages == t->fault_pages,
		    "%lu pages after ENOMEM", pages);
}

static void nth_run_done(struct nth *t)
{
	u64 pages = nth_pages(t);
	struct ucall uc;

	TEST_ASSERT_KVM_EXIT_REASON(t->vcpu, KVM_EXIT_IO);
	TEST_ASSERT_EQ(get_ucall(t->vcpu, &uc), UCALL_SYNC);
	TEST_ASSERT(pages == 1 || pages == t->fault_pages, "%lu pages", pages);
}

TEST_F_TIMEOUT(fail_nth, fault, 300)
{
	struct nth t;
	struct nth_count c;

	nth_setup(&t, guest_touch_loop, variant->blocks);
	vm_mem_set_private(t.vm, DATA_GPA, DATA_SIZE);
	nth_fill_cache(&t, variant->cached);
	c = every_step(self->fd, &t, "fault", nth_run, nth_run_failed,
		       nth_run_done, nth_punch);
	nth_finish(_metadata, &self->base, &t, variant->name, c);
}

static sigjmp_buf nth_jmp;

static void nth_on_sigbus(int sig)
{
	siglongjmp(nth_jmp, 1);
}

/* A touch of the VMM's mapping; SIGBUS is what a failed fault gets. */
static int nth_touch(struct nth *t)
{
	struct sigaction sa = { .sa_handler = nth_on_sigbus }, old;
	int r = 0;

	sigaction(SIGBUS, &sa, &old);
	if (sigsetjmp(nth_jmp, 1))
		r = -ENOMEM;
	else
		WRITE_ONCE(t->mem[0], 1);
	sigaction(SIGBUS, &old, NULL);
	return r;
}

/* All or nothing: nothing added, nothing mapped. */
static void nth_touch_failed(struct nth *t)
{
	TEST_ASSERT_EQ(nth_pages(t), 0);
	TEST_ASSERT(!resident(t->mem), "mapped after SIGBUS");
}

static void nth_touch_done(struct nth *t)
{
	u64 pages = nth_pages(t);

	TEST_ASSERT(pages == 1 || pages == t->fault_pages, "%lu pages", pages);
	TEST_ASSERT(resident(t->mem), "not mapped");
}

/*
 * A fault on the VMM's mapping of a guest_memfd with MMAP | INIT_SHARED |
 * NO_DIRECT_MAP, each step failing in turn: SIGBUS (the pool failed) with
 * nothing added, or the failure absorbed (a VM_FAULT_OOM retried, a block
 * that fell back to a page).
 */
TEST_F_TIMEOUT(fail_nth, user_fault, 300)
{
	struct nth_count c;
	struct nth t = {};

	t.vm = vm_with_mapped_gmem(guest_nothing, &t.vcpu, NDM_MAPPED, &t.gmem,
				   &t.mem);
	t.fault_pages = fault_pages(variant->blocks);
	nth_fill_cache(&t, variant->cached);
	c = every_step(self->fd, &t, "user fault", nth_touch, nth_touch_failed,
		       nth_touch_done, nth_punch);
	nth_finish(_metadata, &self->base, &t, variant->name, c);
}

static void guest_map_loop(void)
{
	for (;;)
		GUEST_SYNC(__kvm_hypercall_map_gpa_range(DATA_GPA, nth_size,
							 MAP_GPA_PRIVATE_ATTR));
}

static int nth_set_attributes(struct nth *t, u64 attributes)
{
	struct kvm_memory_attributes attr = {
		.attributes = attributes,
		.address = DATA_GPA,
		.size = nth_size,
	};

	return __vm_ioctl(t->vm, KVM_SET_MEMORY_ATTRIBUTES, &attr) ? -errno : 0;
}

/*
 * The VMM's side of the hypercall, and the KVM_RUN that gives the guest the
 * answer: vmm_map_gpa_range(), except that when it answers -HC_ENOMEM the
 * VMM first gives back what it allocated.
 */
static int nth_map_gpa_range(struct nth *t)
{
	int r;

	if (!t->answered) {
		if (fallocate(t->gmem, FALLOC_FL_KEEP_SIZE, 0, nth_size)) {
			TEST_ASSERT(errno == ENOMEM, "fallocate: %s", strerror(errno));
			t->hc_ret = -HC_ENOMEM;
		} else {
			r = nth_set_attributes(t, KVM_MEMORY_ATTRIBUTE_PRIVATE);
			TEST_ASSERT(!r || r == -ENOMEM, "attributes: %s", strerror(-r));
			t->hc_ret = r ? -HC_ENOMEM : 0;
		}
		if (t->hc_ret) {
			t->guest_enomem++;
			TEST_ASSERT(!fallocate(t->gmem, FALLOC_FL_KEEP_SIZE |
					       FALLOC_FL_PUNCH_HOLE, 0, nth_size),
				    "punch hole");
		}
		t->vcpu->run->hypercall.ret = t->hc_ret;
		t->answered = true;
	}
	/* If KVM_RUN fails, the hypercall is complete all the same. */
	return nth_run(t);
}

static void nth_map_gpa_range_pages(struct nth *t)
{
	TEST_ASSERT_EQ(nth_pages(t), t->hc_ret ? 0 : nth_size / PAGE_SIZE);
}

/* The guest got the VMM's answer; the memory is there if it was yes. */
static void nth_map_gpa_range_done(struct nth *t)
{
	struct ucall uc;

	TEST_ASSERT_KVM_EXIT_REASON(t->vcpu, KVM_EXIT_IO);
	TEST_ASSERT_EQ(get_ucall(t->vcpu, &uc), UCALL_SYNC);
	TEST_ASSERT_EQ(uc.args[1], t->hc_ret);
	nth_map_gpa_range_pages(t);
}

/* Back to shared and empty, and the guest's next hypercall. */
static void nth_map_gpa_range_undo(struct nth *t)
{
	TEST_ASSERT_EQ(nth_set_attributes(t, 0), 0);
	nth_punch(t);
	vcpu_run(t->vcpu);
	TEST_ASSERT_KVM_EXIT_REASON(t->vcpu, KVM_EXIT_HYPERCALL);
	t->answered = false;
}

TEST_F_TIMEOUT(fail_nth, map_gpa_range, 300)
{
	struct nth t;
	struct nth_count c;

	nth_setup(&t, guest_map_loop, variant->blocks);
	vm_enable_cap(t.vm, KVM_CAP_EXIT_HYPERCALL, 1 << KVM_HC_MAP_GPA_RANGE);
	nth_fill_cache(&t, variant->cached);
	nth_map_gpa_range_undo(&t);
	c = every_step(self->fd, &t, "map_gpa_range", nth_map_gpa_range,
		       nth_map_gpa_range_pages, nth_map_gpa_range_done,
		       nth_map_gpa_range_undo);
	nth_finish(_metadata, &self->base, &t, variant->name, c);
}

static int nth_to_private(struct nth *t)
{
	return nth_set_attributes(t, KVM_MEMORY_ATTRIBUTE_PRIVATE);
}

/* A change of attributes neither removes nor restores memory. */
static void nth_attributes_check(struct nth *t)
{
	TEST_ASSERT_EQ(nth_pages(t), nth_size / PAGE_SIZE);
}

static void nth_to_shared(struct nth *t)
{
	TEST_ASSERT_EQ(nth_set_attributes(t, 0), 0);
	nth_attributes_check(t);
}

TEST_F_TIMEOUT(fail_nth, set_attributes, 300)
{
	struct nth t;
	struct nth_count c;

	nth_setup(&t, guest_nothing, variant->blocks);
	nth_fill_cache(&t, variant->cached);
	ASSERT_EQ(nth_fallocate(&t), 0);
	c = every_step(self->fd, &t, "set_attributes", nth_to_private,
		       nth_attributes_check, nth_attributes_check,
		       nth_to_shared);
	nth_finish(_metadata, &self->base, &t, variant->name, c);
}

/*
 * Bad input, a row at a time: each row is one call with one thing wrong and
 * the exact error it gets, or a call with nothing wrong (error 0) to show
 * that the same call can succeed.  A row that fails leaves the VM's
 * direct-map counters where they were.
 */
enum bad_call {
	BAD_CREATE,		/* KVM_CREATE_GUEST_MEMFD: size, flags */
	BAD_FALLOCATE,		/* fallocate(): mode, offset, length */
	BAD_ATTRIBUTES,		/* KVM_SET_MEMORY_ATTRIBUTES: address, size, attributes, flags */
	BAD_MMAP,		/* mmap() of a new guest_memfd: its flags, mmap() flags */
};

struct bad_row {
	const char *what;
	enum bad_call call;
	u64 a, b, c, d;
	int err;
};

#define NDM	GUEST_MEMFD_FLAG_NO_DIRECT_MAP
#define KEEP	FALLOC_FL_KEEP_SIZE
#define PUNCH	(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE)
#define PRIV	KVM_MEMORY_ATTRIBUTE_PRIVATE

static const struct bad_row bad_rows[] = {
	{ "create: unknown flag", BAD_CREATE, DATA_SIZE, NDM | BIT_ULL(63), 0, 0, EINVAL },
	{ "create: with MMAP", BAD_CREATE, DATA_SIZE, NDM | GUEST_MEMFD_FLAG_MMAP, 0, 0, 0 },
	/* Not on a VM with private memory, with the flag or without. */
	{ "create: with INIT_SHARED", BAD_CREATE, DATA_SIZE, NDM | GUEST_MEMFD_FLAG_INIT_SHARED,
	  0, 0, EINVAL },
	{ "create: size 0", BAD_CREATE, 0, NDM, 0, 0, EINVAL },
	{ "create: size not page-aligned", BAD_CREATE, PAGE_SIZE + 1, NDM, 0, 0, EINVAL },
	{ "create: negative size", BAD_CREATE, -PAGE_SIZE, NDM, 0, 0, EINVAL },
	{ "create: good", BAD_CREATE, DATA_SIZE, NDM, 0, 0, 0 },
	{ "fallocate: offset not page-aligned", BAD_FALLOCATE, KEEP, 1, PAGE_SIZE, 0, EINVAL },
	{ "fallocate: length not page-aligned", BAD_FALLOCATE, KEEP, 0, PAGE_SIZE + 1, 0, EINVAL },
	{ "fallocate: length 0", BAD_FALLOCATE, KEEP, 0, 0, 0, EINVAL },
	{ "fallocate: negative offset", BAD_FALLOCATE, KEEP, -PAGE_SIZE, PAGE_SIZE, 0, EINVAL },
	{ "fallocate: past the end", BAD_FALLOCATE, KEEP, DATA_SIZE, PAGE_SIZE, 0, EINVAL },
	{ "fallocate: across the end", BAD_FALLOCATE, KEEP, DATA_SIZE - PAGE_SIZE, 2 * PAGE_SIZE,
	  0, EINVAL },
	{ "fallocate: offset + length overflows", BAD_FALLOCATE, KEEP, PAGE_SIZE,
	  INT64_MAX & ~(PAGE_SIZE - 1), 0, EFBIG },
	{ "fallocate: without KEEP_SIZE", BAD_FALLOCATE, 0, 0, PAGE_SIZE, 0, EOPNOTSUPP },
	{ "fallocate: ZERO_RANGE", BAD_FALLOCATE, KEEP | FALLOC_FL_ZERO_RANGE, 0, PAGE_SIZE, 0,
	  EOPNOTSUPP },
	{ "mmap: without MMAP", BAD_MMAP, NDM, MAP_SHARED, 0, 0, ENODEV },
	{ "mmap: MAP_PRIVATE", BAD_MMAP, NDM | GUEST_MEMFD_FLAG_MMAP, MAP_PRIVATE, 0, 0, EINVAL },
	{ "mmap: good", BAD_MMAP, NDM | GUEST_MEMFD_FLAG_MMAP, MAP_SHARED, 0, 0, 0 },
	{ "punch hole: not page-aligned", BAD_FALLOCATE, PUNCH, 1, PAGE_SIZE, 0, EINVAL },
	{ "punch hole: nothing there", BAD_FALLOCATE, PUNCH, 0, DATA_SIZE, 0, 0 },
	{ "fallocate: good", BAD_FALLOCATE, KEEP, 0, DATA_SIZE, 0, 0 },
	{ "fallocate: again", BAD_FALLOCATE, KEEP, 0, DATA_SIZE, 0, 0 },
	{ "attributes: size 0", BAD_ATTRIBUTES, DATA_GPA, 0, PRIV, 0, EINVAL },
	{ "attributes: address not page-aligned", BAD_ATTRIBUTES, DATA_GPA + 1, PAGE_SIZE, PRIV,
	  0, EINVAL },
	{ "attributes: size not page-aligned", BAD_ATTRIBUTES, DATA_GPA, PAGE_SIZE + 1, PRIV, 0,
	  EINVAL },
	{ "attributes: address + size overflows", BAD_ATTRIBUTES, -PAGE_SIZE, 2 * PAGE_SIZE,
	  PRIV, 0, EINVAL },
	{ "attributes: unknown attribute", BAD_ATTRIBUTES, DATA_GPA, PAGE_SIZE, BIT_ULL(0), 0,
	  EINVAL },
	{ "attributes: flags", BAD_ATTRIBUTES, DATA_GPA, PAGE_SIZE, PRIV, 1, EINVAL },
	{ "attributes: outside any memslot", BAD_ATTRIBUTES, 2 * DATA_GPA, PAGE_SIZE, PRIV, 0, 0 },
	{ "attributes: private", BAD_ATTRIBUTES, DATA_GPA, DATA_SIZE, PRIV, 0, 0 },
	{ "attributes: private again", BAD_ATTRIBUTES, DATA_GPA, DATA_SIZE, PRIV, 0, 0 },
	{ "attributes: shared", BAD_ATTRIBUTES, DATA_GPA, DATA_SIZE, 0, 0, 0 },
	{ "attributes: shared again", BAD_ATTRIBUTES, DATA_GPA, DATA_SIZE, 0, 0, 0 },
};

static int bad_call(struct kvm_vm *vm, int gmem, const struct bad_row *row)
{
	struct kvm_memory_attributes attr = {
		.address = row->a,
		.size = row->b,
		.attributes = row->c,
		.flags = row->d,
	};
	int fd;

	switch (row->call) {
	case BAD_CREATE:
		fd = __vm_create_guest_memfd(vm, row->a, row->b);
		if (fd < 0)
			return errno;
		close(fd);
		return 0;
	case BAD_FALLOCATE:
		return fallocate(gmem, row->a, row->b, row->c) ? errno : 0;
	case BAD_MMAP: {
		void *p;
		int err = 0;

		fd = vm_create_guest_memfd(vm, DATA_SIZE, row->a);
		p = mmap(NULL, DATA_SIZE, PROT_READ | PROT_WRITE, row->b, fd, 0);
		if (p == MAP_FAILED)
			err = errno;
		else
			munmap(p, DATA_SIZE);
		close(fd);
		return err;
	}
	case BAD_ATTRIBUTES:
		return __vm_ioctl(vm, KVM_SET_MEMORY_ATTRIBUTES, &attr) ? errno : 0;
	}
	return -1;
}

static const char *errno_name(int err)
{
	switch (err) {
	case 0:
		return "0";
	case EINVAL:
		return "EINVAL";
	case EFBIG:
		return "EFBIG";
	case EOPNOTSUPP:
		return "EOPNOTSUPP";
	case ENODEV:
		return "ENODEV";
	case ENOMEM:
		return "ENOMEM";
	}
	return strerror(err);
}

static const char *hc_name(u64 ret)
{
	switch (ret) {
	case 0:
		return "0";
	case -KVM_EINVAL:
		return "-KVM_EINVAL";
	case -HC_ENOMEM:
		return "-ENOMEM";
	}
	return "?";
}

/*
 * KVM_HC_MAP_GPA_RANGE from the guest.  What the kernel makes true is
 * checked for each row: whether KVM answered the call itself or forwarded
 * it (KVM_EXIT_HYPERCALL), what reached the guest, and how many pages the
 * VMM's fallocate() and PUNCH_HOLE left in the file; @ret of a forwarded call
 * is only the test's VMM's answer, passed through by KVM.
 */
struct bad_hc_row {
	const char *what;
	u64 gpa, npages, attrs;
	u64 ret;
	bool forwarded;
	u64 pages;
};

static const struct bad_hc_row bad_hc_rows[] = {
	/* KVM answers these itself. */
	{ "hypercall: GPA not page-aligned", DATA_GPA + 1, 1, MAP_GPA_PRIVATE_ATTR, -KVM_EINVAL },
	{ "hypercall: 0 pages", DATA_GPA, 0, MAP_GPA_PRIVATE_ATTR, -KVM_EINVAL },
	{ "hypercall: GFN + pages overflows", DATA_GPA, -1ULL, MAP_GPA_PRIVATE_ATTR, -KVM_EINVAL },
	/* The VMM (vmm_convert()) answers these. */
	{ "hypercall: outside guest memory", DATA_GPA + DATA_SIZE, 1, MAP_GPA_PRIVATE_ATTR,
	  -KVM_EINVAL, true },
	{ "hypercall: across the end of guest memory", DATA_GPA + DATA_SIZE - PAGE_SIZE, 2,
	  MAP_GPA_PRIVATE_ATTR, -KVM_EINVAL, true },
	{ "hypercall: unknown attribute", DATA_GPA, 1, BIT_ULL(5), -KVM_EINVAL, true },
	{ "hypercall: private", DATA_GPA, DATA_PAGES, MAP_GPA_PRIVATE_ATTR, 0, true,
	  DATA_PAGES },
	/* Allocated already: nothing is added again. */
	{ "hypercall: private again", DATA_GPA, DATA_PAGES, MAP_GPA_PRIVATE_ATTR, 0, true,
	  DATA_PAGES },
	{ "hypercall: shared", DATA_GPA, DATA_PAGES, 0, 0, true },
	{ "hypercall: shared again", DATA_GPA, DATA_PAGES, 0, 0, true },
};

static void guest_bad_hypercalls(void)
{
	int i;

	for (i = 0; i < ARRAY_SIZE(bad_hc_rows); i++) {
		const struct bad_hc_row *row = &bad_hc_rows[i];
		u64 ret = kvm_hypercall(KVM_HC_MAP_GPA_RANGE, row->gpa, row->npages,
					row->attrs, 0);

		GUEST_SYNC2(i, ret);
	}
	GUEST_DONE();
}

/*
 * The VMM's side: a conversion to private allocates first (fallocate), one
 * to shared frees the private memory after the change (PUNCH_HOLE).
 */
static u64 vmm_convert(struct kvm_vm *vm, int gmem, u64 gpa, u64 npages,
		       u64 attrs)
{
	u64 size = npages * PAGE_SIZE;

	if (attrs & ~MAP_GPA_PRIVATE_ATTR)
		return -KVM_EINVAL;
	if (!(attrs & MAP_GPA_PRIVATE_ATTR)) {
		if (gpa < DATA_GPA || gpa + size > DATA_GPA + DATA_SIZE || gpa + size < gpa)
			return -KVM_EINVAL;
		vm_mem_set_shared(vm, gpa, size);
		if (fallocate(gmem, PUNCH, gpa - DATA_GPA, size))
			return -KVM_EINVAL;
		return 0;
	}
	return vmm_map_gpa_range(vm, gmem, gpa, npages);
}

TEST(bad_input)
{
	u64 pages = 0;
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	int gmem, i, rows = 0, exits = 0;
	struct ucall uc;

	vm = vm_with_gmem(guest_bad_hypercalls, &vcpu, NDM, &gmem);
	for (i = 0; i < ARRAY_SIZE(bad_rows); i++) {
		const struct bad_row *row = &bad_rows[i];
		int err = bad_call(vm, gmem, row);

		printf("# %-44s %-11s (want %s)\n", row->what, errno_name(err),
		       errno_name(row->err));
		EXPECT_EQ(err, row->err);
		if (err)
			EXPECT_EQ(vm_get_stat(vm, direct_map_pages), pages);
		pages = vm_get_stat(vm, direct_map_pages);
		rows++;
	}
	ASSERT_EQ(fallocate(gmem, PUNCH, 0, DATA_SIZE), 0);

	vm_enable_cap(vm, KVM_CAP_EXIT_HYPERCALL, 1 << KVM_HC_MAP_GPA_RANGE);
	for (;;) {
		struct kvm_run *run = vcpu->run;
		const struct bad_hc_row *row;

		vcpu_run(vcpu);
		if (run->exit_reason == KVM_EXIT_HYPERCALL) {
			exits++;
			run->hypercall.ret = vmm_convert(vm, gmem, run->hypercall.args[0],
							 run->hypercall.args[1],
							 run->hypercall.args[2]);
			continue;
		}
		TEST_ASSERT_KVM_EXIT_REASON(vcpu, KVM_EXIT_IO);
		switch (get_ucall(vcpu, &uc)) {
		case UCALL_SYNC:
			i = uc.args[0];
			ASSERT_LT(i, ARRAY_SIZE(bad_hc_rows));
			row = &bad_hc_rows[i];
			printf("# %-44s %-11s (want %s), %s\n", row->what,
			       hc_name(uc.args[1]), hc_name(row->ret),
			       exits ? "forwarded" : "answered by KVM");
			EXPECT_EQ(uc.args[1], row->ret);
			EXPECT_EQ(exits, row->forwarded);
			EXPECT_EQ(vm_get_stat(vm, direct_map_pages), row->pages);
			exits = 0;
			rows++;
			continue;
		case UCALL_ABORT:
			REPORT_GUEST_ASSERT(uc);
		}
		ASSERT_EQ(uc.cmd, UCALL_DONE);
		break;
	}
	/* Converted back to shared, the memory was given back. */
	ASSERT_EQ(vm_get_stat(vm, direct_map_pages), 0);
	close(gmem);
	kvm_vm_free(vm);
	printf("# kp-figure: bad input: %d rows, each with its exact error\n", rows);
}

int main(int argc, char **argv)
{
	TEST_REQUIRE(kvm_check_cap(KVM_CAP_VM_TYPES) & BIT(KVM_X86_SW_PROTECTED_VM));
	TEST_REQUIRE(kvm_check_cap(KVM_CAP_GUEST_MEMFD_FLAGS) &
		     GUEST_MEMFD_FLAG_NO_DIRECT_MAP);

	return test_harness_run(argc, argv);
}
