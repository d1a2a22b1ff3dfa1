// SPDX-License-Identifier: GPL-2.0
/*
 * KUnit tests for direct-map removal.  A failed split is simulated with a
 * static stub on direct_map_should_fail(), which fails only the test's own
 * calls: the fail_direct_map fault point and other users are left alone.
 *
 * Splits and collapses are seen in two ways: the level of the direct-map
 * entry that maps a page (lookup_address()), checked on every run, and the
 * counters of /proc/vmstat, which x86 only counts once the system is running.
 * A run during boot checks the levels; run the suite again later to check the
 * counters as well:
 *   echo 1 > /sys/kernel/debug/kunit/direct_map/run
 */

#include <kunit/static_stub.h>
#include <kunit/test.h>
#include <linux/direct_map.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/pgtable.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/vmstat.h>

#include "internal.h"

/* Pages in a PMD-sized block. */
#define DM_PMD_NR	BIT(PMD_ORDER)

struct dm_counts {
	unsigned long removed, restored, flushes;
	unsigned long l2_splits, l3_splits, l2_collapses, l3_collapses;
};

static void dm_read_counts(struct kunit *test, struct dm_counts *c)
{
	unsigned long *ev = kunit_kcalloc(test, NR_VM_EVENT_ITEMS,
					  sizeof(*ev), GFP_KERNEL);

	KUNIT_ASSERT_NOT_NULL(test, ev);
	all_vm_events(ev);
	c->removed = ev[DIRECT_MAP_REMOVED];
	c->restored = ev[DIRECT_MAP_RESTORED];
	c->flushes = ev[DIRECT_MAP_REMOVE_FLUSH];
#ifdef CONFIG_X86
	c->l2_splits = ev[DIRECT_MAP_LEVEL2_SPLIT];
	c->l3_splits = ev[DIRECT_MAP_LEVEL3_SPLIT];
	c->l2_collapses = ev[DIRECT_MAP_LEVEL2_COLLAPSE];
	c->l3_collapses = ev[DIRECT_MAP_LEVEL3_COLLAPSE];
#endif
	kunit_kfree(test, ev);
}

/* Can the kernel read the page through the direct map? */
static bool dm_readable(struct page *page)
{
	char c;

	return !copy_from_kernel_nofault(&c, page_address(page), 1);
}

static void dm_expect_page(struct kunit *test, unsigned long pfn,
			   unsigned long i, unsigned long nr, bool want)
{
	bool readable = dm_readable(pfn_to_page(pfn + i));

	KUNIT_EXPECT_EQ_MSG(test, readable, want, "page %lu of %lu", i, nr);
}

/* Every 64th page and the last: readable (or not) as @want. */
static void dm_expect_readable(struct kunit *test, struct page *page,
			       unsigned long nr, bool want)
{
	unsigned long pfn = page_to_pfn(page), i;

	for (i = 0; i < nr; i += 64)
		dm_expect_page(test, pfn, i, nr, want);
	dm_expect_page(test, pfn, nr - 1, nr, want);
}

/* Are splits and collapses counted in /proc/vmstat yet? */
static bool dm_counting(struct kunit *test)
{
	if (!IS_ENABLED(CONFIG_X86))
		kunit_skip(test, "direct-map levels and split counters are x86 only");
	if (system_state == SYSTEM_RUNNING)
		return true;
	kunit_info(test, "split counters not counted during boot: levels checked only");
	return false;
}

static unsigned int dm_level(struct page *page)
{
	unsigned int level = 0;

#ifdef CONFIG_X86
	lookup_address((unsigned long)page_address(page), &level);
#endif
	return level;
}

#ifdef CONFIG_X86
static bool dm_global_as_default(struct page *page)
{
	unsigned int level;
	pte_t *pte = lookup_address((unsigned long)page_address(page), &level);

	return pte && (pte_flags(*pte) & _PAGE_GLOBAL) ==
		      (pgprot_val(PAGE_KERNEL) & _PAGE_GLOBAL);
}
#endif

/*
 * An order-9 block that the direct map maps with a 2M or 1G page, i.e. one
 * that no earlier test (or anything else) split.
 */
static struct page *dm_alloc_unsplit_block(struct kunit *test)
{
	struct page *rejected[8], *page = NULL;
	int i, n = 0;

	for (i = 0; i < ARRAY_SIZE(rejected); i++) {
		page = alloc_pages(GFP_KERNEL | __GFP_NOWARN, PMD_ORDER);
		if (!page)
			break;
		if (dm_level(page) >= PG_LEVEL_2M)
			break;
		rejected[n++] = page;
		page = NULL;
	}
	while (n--)
		__free_pages(rejected[n], PMD_ORDER);
	if (!page)
		kunit_skip(test, "no order-%d block mapped with a large page", PMD_ORDER);
	return page;
}

static void direct_map_test_unreachable(struct kunit *test)
{
	struct page *page = alloc_pages(GFP_KERNEL | __GFP_NOWARN, PMD_ORDER);
	void *addr;

	if (!page)
		kunit_skip(test, "no order-%d block", PMD_ORDER);
	addr = page_address(page);
	memset(addr, 0x5a, PMD_SIZE);

	KUNIT_ASSERT_EQ(test, direct_map_remove(page, DM_PMD_NR), 0);
	dm_expect_readable(test, page, DM_PMD_NR, false);

	direct_map_restore(page, DM_PMD_NR);
	dm_expect_readable(test, page, DM_PMD_NR, true);
	KUNIT_EXPECT_TRUE(test, !memchr_inv(addr, 0x5a, PMD_SIZE));
	__free_pages(page, PMD_ORDER);
}

/*
 * A removed page is reachable through direct_map_vmap_page() alone, and
 * through nothing once direct_map_vunmap_page() and then
 * direct_map_flush_aliases() returned.
 */
static void direct_map_test_vmap_alias(struct kunit *test)
{
	struct page *page = alloc_page(GFP_KERNEL);
	char c;
	u8 *va;

	KUNIT_ASSERT_NOT_NULL(test, page);
	memset(page_address(page), 0x5a, PAGE_SIZE);
	KUNIT_ASSERT_EQ(test, direct_map_remove(page, 1), 0);

	va = direct_map_vmap_page(page);
	KUNIT_ASSERT_NOT_NULL(test, va);
	KUNIT_EXPECT_TRUE(test, is_vmalloc_addr(va));
	KUNIT_EXPECT_PTR_EQ(test, vmalloc_to_page(va), page);
	KUNIT_EXPECT_EQ(test, va[PAGE_SIZE - 1], 0x5a);
	va[0] = 0xa5;
	KUNIT_EXPECT_FALSE(test, dm_readable(page));
	KUNIT_EXPECT_FALSE(test, direct_map_page_present(page));

	direct_map_vunmap_page(va);
	KUNIT_EXPECT_NULL(test, vmalloc_to_page(va));
	direct_map_flush_aliases();
	KUNIT_EXPECT_NE(test, copy_from_kernel_nofault(&c, va, 1), 0);

	direct_map_restore(page, 1);
	KUNIT_EXPECT_EQ(test, *(u8 *)page_address(page), 0xa5);
	__free_page(page);
}

static void direct_map_test_whole_pmd_no_split(struct kunit *test)
{
	struct dm_counts a, b, c;
	struct page *page;
	bool counting = dm_counting(test);
	unsigned int level;

	page = dm_alloc_unsplit_block(test);
	level = dm_level(page);
	kunit_info(test, "block mapped by a %s page", level == PG_LEVEL_1G ? "1G" : "2M");

	dm_read_counts(test, &a);
	KUNIT_ASSERT_EQ(test, direct_map_remove(page, DM_PMD_NR), 0);
	dm_read_counts(test, &b);
	/* Removed as a whole: one not-present 2M (or larger) entry. */
	KUNIT_EXPECT_GE(test, dm_level(page), PG_LEVEL_2M);
	direct_map_restore(page, DM_PMD_NR);
	dm_read_counts(test, &c);

	if (counting)
		KUNIT_EXPECT_EQ(test, b.l2_splits - a.l2_splits, 0);
	KUNIT_EXPECT_EQ(test, b.removed - a.removed, DM_PMD_NR);
	KUNIT_EXPECT_EQ(test, b.flushes - a.flushes, 1);
	KUNIT_EXPECT_EQ(test, c.restored - b.restored, DM_PMD_NR);
	/*
	 * Back to the large page it was (a 1G mapping that the removal split
	 * into 2M ones is collapsed again), with the global bit it had.
	 */
	KUNIT_EXPECT_EQ(test, dm_level(page), level);
	if (counting && level == PG_LEVEL_1G) {
		KUNIT_EXPECT_EQ(test, b.l3_splits - a.l3_splits, 1);
		KUNIT_EXPECT_EQ(test, c.l3_collapses - b.l3_collapses, 1);
	}
#ifdef CONFIG_X86
	KUNIT_EXPECT_TRUE(test, dm_global_as_default(page));
#endif
	dm_expect_readable(test, page, DM_PMD_NR, true);
	__free_pages(page, PMD_ORDER);
}

static void direct_map_test_one_page_split_collapse(struct kunit *test)
{
	struct dm_counts a, b, c;
	struct page *page, *one;
	bool counting = dm_counting(test);

	page = dm_alloc_unsplit_block(test);
	one = pfn_to_page(page_to_pfn(page) + 100);

	dm_read_counts(test, &a);
	KUNIT_ASSERT_EQ(test, direct_map_remove(one, 1), 0);
	dm_read_counts(test, &b);
	KUNIT_EXPECT_FALSE(test, dm_readable(one));
	KUNIT_EXPECT_TRUE(test, dm_readable(page));
	KUNIT_EXPECT_EQ(test, dm_level(page), PG_LEVEL_4K);

	direct_map_restore(one, 1);
	dm_read_counts(test, &c);

	if (counting) {
		KUNIT_EXPECT_EQ(test, b.l2_splits - a.l2_splits, 1);
		KUNIT_EXPECT_EQ(test, c.l2_collapses - b.l2_collapses, 1);
	}
	KUNIT_EXPECT_EQ(test, b.flushes - a.flushes, 1);
	KUNIT_EXPECT_GE(test, dm_level(page), PG_LEVEL_2M);
	KUNIT_EXPECT_TRUE(test, dm_readable(one));
	__free_pages(page, PMD_ORDER);
}

static void direct_map_test_batch_one_flush(struct kunit *test)
{
	struct page *pages[4];
	struct direct_map_batch batch;
	struct dm_counts a, b;
	int i;

	for (i = 0; i < ARRAY_SIZE(pages); i++) {
		pages[i] = alloc_pages(GFP_KERNEL | __GFP_NOWARN, 1);
		if (!pages[i]) {
			while (i--)
				__free_pages(pages[i], 1);
			kunit_skip(test, "no order-1 pages");
		}
	}

	dm_read_counts(test, &a);
	direct_map_batch_init(&batch);
	for (i = 0; i < ARRAY_SIZE(pages); i++)
		KUNIT_EXPECT_EQ(test, direct_map_batch_remove(&batch, pages[i], 2), 0);
	KUNIT_EXPECT_EQ(test, batch.nr_pages, 2 * ARRAY_SIZE(pages));
	direct_map_batch_flush(&batch);
	dm_read_counts(test, &b);

	KUNIT_EXPECT_EQ(test, b.flushes - a.flushes, 1);
	KUNIT_EXPECT_EQ(test, b.removed - a.removed, 2 * ARRAY_SIZE(pages));
	KUNIT_EXPECT_EQ(test, batch.nr_pages, 0);
	for (i = 0; i < ARRAY_SIZE(pages); i++) {
		dm_expect_readable(test, pages[i], 2, false);
		direct_map_restore(pages[i], 2);
		dm_expect_readable(test, pages[i], 2, true);
		__free_pages(pages[i], 1);
	}
}

/* Let the first PMD-sized step through, fail the second. */
static bool dm_fail_second_step(unsigned long nr)
{
	unsigned int *steps = kunit_get_current_test()->priv;

	return ++*steps == 2;
}

static void direct_map_test_injected_failure(struct kunit *test)
{
	struct page *page = alloc_pages(GFP_KERNEL | __GFP_NOWARN, PMD_ORDER + 1);
	unsigned int steps = 0;
	struct dm_counts a, b;
	long active;
	int ret;

	if (!page)
		kunit_skip(test, "no order-%d block", PMD_ORDER + 1);
	dm_read_counts(test, &a);
	active = direct_map_nr_removed_pages();
	test->priv = &steps;
	kunit_activate_static_stub(test, direct_map_should_fail,
				   dm_fail_second_step);
	ret = direct_map_remove(page, 2 * DM_PMD_NR);
	kunit_deactivate_static_stub(test, direct_map_should_fail);
	dm_read_counts(test, &b);
	KUNIT_EXPECT_EQ(test, steps, 2);
	KUNIT_EXPECT_EQ(test, direct_map_nr_removed_pages(), active);
	KUNIT_EXPECT_EQ(test, ret, -ENOMEM);
	/* Nothing removed: the first step was put back. */
	dm_expect_readable(test, page, 2 * DM_PMD_NR, true);
	KUNIT_EXPECT_EQ(test, b.removed - a.removed, 0);
	KUNIT_EXPECT_EQ(test, b.flushes - a.flushes, 0);
	__free_pages(page, PMD_ORDER + 1);
}

/* What hibernation_available() asks: removed pages are counted until restored. */
static void direct_map_test_active(struct kunit *test)
{
	struct page *page = alloc_page(GFP_KERNEL);
	long before = direct_map_nr_removed_pages();

	KUNIT_ASSERT_NOT_NULL(test, page);
	KUNIT_ASSERT_EQ(test, direct_map_remove(page, 1), 0);
	KUNIT_EXPECT_EQ(test, direct_map_nr_removed_pages(),
			before + 1);
	KUNIT_EXPECT_TRUE(test, direct_map_removal_active());
	direct_map_restore(page, 1);
	KUNIT_EXPECT_EQ(test, direct_map_nr_removed_pages(), before);
	__free_page(page);
}

static void direct_map_test_bad_input(struct kunit *test)
{
	struct page *page = alloc_page(GFP_KERNEL);
	struct direct_map_batch batch;

	KUNIT_ASSERT_NOT_NULL(test, page);
	direct_map_batch_init(&batch);
	KUNIT_EXPECT_EQ(test, direct_map_batch_remove(&batch, page, 0), -EINVAL);
	KUNIT_EXPECT_EQ(test, batch.nr_pages, 0);
	KUNIT_EXPECT_TRUE(test, dm_readable(page));
	__free_page(page);
}

/* Removed pages are zeroed without mapping them again, for one flush. */
static void direct_map_test_zero_removed(struct kunit *test)
{
	struct page *page = alloc_pages(GFP_KERNEL | __GFP_NOWARN, 2);
	struct direct_map_batch batch;
	struct dm_counts a, b;

	if (!page)
		kunit_skip(test, "no order-2 pages");
	memset(page_address(page), 0x5a, 4 * PAGE_SIZE);
	KUNIT_ASSERT_EQ(test, direct_map_remove(page, 4), 0);

	dm_read_counts(test, &a);
	direct_map_batch_init(&batch);
	KUNIT_EXPECT_EQ(test, direct_map_batch_zero(&batch, page, 4), 0);
	KUNIT_EXPECT_EQ(test, direct_map_batch_zero(&batch, page, 0), -EINVAL);
	KUNIT_EXPECT_EQ(test, batch.nr_zeroed, 4);
	direct_map_batch_flush(&batch);
	dm_read_counts(test, &b);
	KUNIT_EXPECT_EQ(test, b.flushes - a.flushes, 1);
	KUNIT_EXPECT_EQ(test, b.removed - a.removed, 0);
	KUNIT_EXPECT_EQ(test, b.restored - a.restored, 0);
	dm_expect_readable(test, page, 4, false);

	direct_map_restore(page, 4);
	KUNIT_EXPECT_NULL(test, memchr_inv(page_address(page), 0, 4 * PAGE_SIZE));
	__free_pages(page, 2);
}

/*
 * A page with hardware poison is never mapped again or zeroed, and the
 * rest of its range is restored around it.  The test
 * sets and clears the poison flag itself, on pages it owns.
 */
static void direct_map_test_hwpoison(struct kunit *test)
{
	struct page *page = alloc_pages(GFP_KERNEL | __GFP_NOWARN, 2);
	struct direct_map_batch batch;
	struct dm_counts a, b;

	if (!IS_ENABLED(CONFIG_MEMORY_FAILURE)) {
		if (page)
			__free_pages(page, 2);
		kunit_skip(test, "no CONFIG_MEMORY_FAILURE");
	}
	if (!page)
		kunit_skip(test, "no order-2 pages");
	KUNIT_ASSERT_EQ(test, direct_map_remove(page, 4), 0);
	SetPageHWPoison(page + 1);
	KUNIT_EXPECT_TRUE(test, direct_map_has_hwpoison(page, 4));
	KUNIT_EXPECT_FALSE(test, direct_map_has_hwpoison(page + 2, 2));

	direct_map_batch_init(&batch);
	KUNIT_EXPECT_EQ(test, direct_map_batch_zero(&batch, page, 4), -EHWPOISON);
	KUNIT_EXPECT_EQ(test, batch.nr_zeroed, 0);
	direct_map_batch_flush(&batch);

	dm_read_counts(test, &a);
	direct_map_restore(page, 4);
	dm_read_counts(test, &b);
	KUNIT_EXPECT_EQ(test, b.restored - a.restored, 3);
	dm_expect_readable(test, page, 1, true);
	dm_expect_readable(test, page + 1, 1, false);
	dm_expect_readable(test, page + 2, 2, true);
	KUNIT_EXPECT_TRUE(test, direct_map_page_present(page));
	KUNIT_EXPECT_FALSE(test, direct_map_page_present(page + 1));
	KUNIT_EXPECT_TRUE(test, direct_map_page_present(page + 3));

	/* Unpoisoned: restored like any removed page, then freed. */
	ClearPageHWPoison(page + 1);
	direct_map_restore(page + 1, 1);
	dm_expect_readable(test, page, 4, true);
	__free_pages(page, 2);
}

static struct kunit_case direct_map_test_cases[] = {
	KUNIT_CASE(direct_map_test_unreachable),
	KUNIT_CASE(direct_map_test_vmap_alias),
	KUNIT_CASE(direct_map_test_whole_pmd_no_split),
	KUNIT_CASE(direct_map_test_one_page_split_collapse),
	KUNIT_CASE(direct_map_test_batch_one_flush),
	KUNIT_CASE(direct_map_test_injected_failure),
	KUNIT_CASE(direct_map_test_active),
	KUNIT_CASE(direct_map_test_bad_input),
	KUNIT_CASE(direct_map_test_zero_removed),
	KUNIT_CASE(direct_map_test_hwpoison),
	{}
};

static struct kunit_suite direct_map_test_suite = {
	.name = "direct_map",
	.test_cases = direct_map_test_cases,
};

kunit_test_suite(direct_map_test_suite);

MODULE_DESCRIPTION("KUnit tests for direct-map removal");
MODULE_LICENSE("GPL");
MODULE_IMPORT_NS("EXPORTED_FOR_KUNIT_TESTING");
