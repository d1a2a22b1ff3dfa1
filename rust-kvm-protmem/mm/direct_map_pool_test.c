// SPDX-License-Identifier: GPL-2.0
/*
 * KUnit tests for the direct-map pool.  Included by mm/direct_map_pool.c, so
 * that the tests can see a block's bitmaps and wait for the worker.  Run
 * again after boot with:
 *   echo 1 > /sys/kernel/debug/kunit/direct_map_pool/run
 */

#include <kunit/test.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>

struct dm_pool_counts {
	unsigned long removed, restored, flushes, reused, released;
};

static void dm_pool_read_counts(struct kunit *test, struct dm_pool_counts *c)
{
	unsigned long *ev = kunit_kcalloc(test, NR_VM_EVENT_ITEMS,
					  sizeof(*ev), GFP_KERNEL);

	KUNIT_ASSERT_NOT_NULL(test, ev);
	all_vm_events(ev);
	c->removed = ev[DIRECT_MAP_REMOVED];
	c->restored = ev[DIRECT_MAP_RESTORED];
	c->flushes = ev[DIRECT_MAP_REMOVE_FLUSH];
	c->reused = ev[DIRECT_MAP_POOL_REUSED];
	c->released = ev[DIRECT_MAP_POOL_RELEASED];
	kunit_kfree(test, ev);
}

static bool dm_pool_readable(struct page *page)
{
	char c;

	return !copy_from_kernel_nofault(&c, page_address(page), 1);
}

/*
 * Given back to the page allocator: mapped again, unless debug_pagealloc
 * takes free pages out of the direct map itself.
 */
static void dm_pool_expect_released(struct kunit *test, struct page *page)
{
	KUNIT_EXPECT_FALSE(test, direct_map_pool_owns(page));
	if (!debug_pagealloc_enabled_static())
		KUNIT_EXPECT_TRUE(test, dm_pool_readable(page));
}

static struct dm_block *dm_pool_block_of(struct page *page)
{
	return xa_load(&dm_blocks, page_to_pfn(page) >> pageblock_order);
}

static bool dm_pool_page_free(struct page *page)
{
	struct dm_block *b = dm_pool_block_of(page);

	return b && test_bit(page_to_pfn(page) - b->pfn, dm_free_bits(b));
}

/* Let the worker finish what the frees so far gave it. */
static void dm_pool_settle(void)
{
	dm_pool_kick();
	flush_work(&dm_pool_work);
}

/* Set the limit of free blocks kept, and return the old one. */
static unsigned int dm_pool_set_limit(unsigned int max)
{
	unsigned int old = dm_pool_max_free_blocks;

	WRITE_ONCE(dm_pool_max_free_blocks, max);
	dm_pool_settle();
	return old;
}

/*
 * A page freed through the page allocator's free path goes back to the
 * pool, still out of the direct map, and comes out of the pool again zeroed,
 * without a removal.
 */
static void direct_map_pool_test_free_path(struct kunit *test)
{
	struct direct_map_batch batch;
	struct dm_pool_counts a, b;
	struct page *page, *again, *hold;
	struct dm_block *blk;
	void *addr;

	direct_map_batch_init(&batch);
	KUNIT_ASSERT_EQ(test, direct_map_alloc_page(&batch, GFP_KERNEL,
						    NUMA_NO_NODE, &page), 0);
	direct_map_batch_flush(&batch);
	KUNIT_EXPECT_TRUE(test, direct_map_pool_owns(page));
	KUNIT_EXPECT_FALSE(test, dm_pool_readable(page));
	KUNIT_EXPECT_EQ(test, page_ref_count(page), 1);
	KUNIT_EXPECT_FALSE(test, dm_pool_page_free(page));

	/* A second page in use keeps the block from coming back whole. */
	direct_map_batch_init(&batch);
	KUNIT_ASSERT_EQ(test, direct_map_alloc_page(&batch, GFP_KERNEL,
						    page_to_nid(page), &hold), 0);
	direct_map_batch_flush(&batch);
	if (dm_pool_block_of(hold) != dm_pool_block_of(page)) {
		put_page(hold);
		put_page(page);
		kunit_skip(test, "the pool gave the second page from another block");
	}

	addr = vmap(&page, 1, VM_MAP, PAGE_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, addr);
	KUNIT_EXPECT_NULL(test, memchr_inv(addr, 0, PAGE_SIZE));
	memset(addr, 0xa5, PAGE_SIZE);
	vunmap(addr);

	put_page(page);
	KUNIT_EXPECT_EQ(test, page_ref_count(page), 0);
	KUNIT_EXPECT_FALSE(test, PageBuddy(page));
	KUNIT_EXPECT_TRUE(test, dm_pool_page_free(page));
	KUNIT_EXPECT_FALSE(test, dm_pool_readable(page));

	/*
	 * The pool hands out the first free page of the first block with free
	 * pages: put the page's block first, so that it is this page (other
	 * users of the pool may have blocks with free pages too).
	 */
	blk = dm_pool_block_of(page);
	KUNIT_ASSERT_NOT_NULL(test, blk);
	spin_lock_irq(&dm_pool.lock);
	if (blk->state == DM_BLOCK_PARTIAL &&
	    find_first_bit(dm_free_bits(blk), pageblock_nr_pages) ==
	    page_to_pfn(page) - blk->pfn)
		list_move(&blk->list, &dm_pool.partial[blk->nid]);
	else
		blk = NULL;
	spin_unlock_irq(&dm_pool.lock);
	if (!blk) {
		put_page(hold);
		kunit_skip(test, "the page is not the first free page of its block");
	}

	dm_pool_read_counts(test, &a);
	direct_map_batch_init(&batch);
	KUNIT_ASSERT_EQ(test, direct_map_alloc_page(&batch, GFP_KERNEL,
						    blk->nid, &again), 0);
	direct_map_batch_flush(&batch);
	dm_pool_read_counts(test, &b);
	KUNIT_ASSERT_PTR_EQ(test, again, page);
	KUNIT_EXPECT_EQ(test, b.removed - a.removed, 0);
	KUNIT_EXPECT_GE(test, b.reused - a.reused, 1);
	addr = vmap(&page, 1, VM_MAP, PAGE_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, addr);
	KUNIT_EXPECT_NULL(test, memchr_inv(addr, 0, PAGE_SIZE));
	vunmap(addr);
	put_page(page);
	put_page(hold);
}

/*
 * A pageblock is removed whole and, once all its pages are back, kept zeroed
 * up to the limit, then restored and freed by the worker, not by the free
 * path or the shrinker.
 */
static void direct_map_pool_test_block(struct kunit *test)
{
	struct direct_map_batch batch;
	struct shrink_control sc = { .gfp_mask = GFP_KERNEL };
	struct dm_pool_counts a, b;
	unsigned int old_max;
	struct page *page;
	unsigned long i;

	old_max = dm_pool_set_limit(UINT_MAX);
	direct_map_batch_init(&batch);
	KUNIT_ASSERT_EQ(test, direct_map_alloc_block(&batch, GFP_KERNEL,
						     NUMA_NO_NODE, &page), 0);
	direct_map_batch_flush(&batch);
	for (i = 0; i < pageblock_nr_pages; i += 64)
		KUNIT_EXPECT_FALSE(test, dm_pool_readable(page + i));

	for (i = 0; i < pageblock_nr_pages; i++)
		put_page(page + i);
	dm_pool_settle();
	KUNIT_ASSERT_NOT_NULL(test, dm_pool_block_of(page));
	KUNIT_EXPECT_EQ(test, dm_pool_block_of(page)->state, DM_BLOCK_FREE);
	KUNIT_EXPECT_FALSE(test, dm_pool_readable(page));

	/* Reclaim asks; it restores nothing itself. */
	dm_pool_read_counts(test, &a);
	sc.nr_to_scan = dm_pool_count(NULL, &sc);
	KUNIT_EXPECT_GE(test, sc.nr_to_scan, pageblock_nr_pages);
	disable_work_sync(&dm_pool_work);
	KUNIT_EXPECT_GE(test, dm_pool_scan(NULL, &sc), pageblock_nr_pages);
	dm_pool_read_counts(test, &b);
	enable_work(&dm_pool_work);
	KUNIT_EXPECT_EQ(test, b.restored - a.restored, 0);
	KUNIT_EXPECT_FALSE(test, dm_pool_readable(page));

	dm_pool_settle();
	dm_pool_read_counts(test, &b);
	KUNIT_EXPECT_NULL(test, dm_pool_block_of(page));
	KUNIT_EXPECT_GE(test, b.restored - a.restored, pageblock_nr_pages);
	KUNIT_EXPECT_GE(test, b.released - a.released, pageblock_nr_pages);
	for (i = 0; i < pageblock_nr_pages; i += 64)
		dm_pool_expect_released(test, page + i);
	dm_pool_set_limit(old_max);
}

/*
 * A page with hardware poison comes back to the pool through the free path,
 * is never handed out or mapped again, and the rest of its block is
 * restored and freed.  The test sets and clears the poison flag itself, on
 * a page it owns.
 */
static void direct_map_pool_test_hwpoison(struct kunit *test)
{
	struct direct_map_batch batch;
	struct dm_pool_counts a, b;
	struct page *page;
	unsigned long i;

	if (!IS_ENABLED(CONFIG_MEMORY_FAILURE))
		kunit_skip(test, "no CONFIG_MEMORY_FAILURE");

	direct_map_batch_init(&batch);
	KUNIT_ASSERT_EQ(test, direct_map_alloc_block(&batch, GFP_KERNEL,
						     NUMA_NO_NODE, &page), 0);
	direct_map_batch_flush(&batch);
	SetPageHWPoison(page + 1);

	dm_pool_read_counts(test, &a);
	for (i = 0; i < pageblock_nr_pages; i++)
		put_page(page + i);
	dm_pool_settle();
	dm_pool_read_counts(test, &b);

	KUNIT_EXPECT_NULL(test, dm_pool_block_of(page));
	KUNIT_EXPECT_GE(test, b.released - a.released, pageblock_nr_pages - 1);
	dm_pool_expect_released(test, page);
	KUNIT_EXPECT_FALSE(test, dm_pool_readable(page + 1));
	dm_pool_expect_released(test, page + 2);
	KUNIT_EXPECT_EQ(test, page_ref_count(page + 1), 0);

	/* Unpoisoned: mapped again and freed like any page. */
	ClearPageHWPoison(page + 1);
	direct_map_restore(page + 1, 1);
	set_page_refcounted(page + 1);
	__free_page(page + 1);
}

static struct kunit_case direct_map_pool_test_cases[] = {
	KUNIT_CASE(direct_map_pool_test_free_path),
	KUNIT_CASE(direct_map_pool_test_block),
	KUNIT_CASE(direct_map_pool_test_hwpoison),
	{}
};

static struct kunit_suite direct_map_pool_test_suite = {
	.name = "direct_map_pool",
	.test_cases = direct_map_pool_test_cases,
};

kunit_test_suite(direct_map_pool_test_suite);
