// SPDX-License-Identifier: GPL-2.0
/*
 * KUnit tests for the direct-map pool.  Included by mm/direct_map_pool.c, so
 * that the tests can see a block's bitmaps and hold off the worker.  Run
 * again after boot with:
 *   echo 1 > /sys/kernel/debug/kunit/direct_map_pool/run
 */

#include <kunit/test.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>

struct dm_pool_counts {
	unsigned long removed, restored, reused, released;
};

static void dm_pool_read_counts(struct kunit *test, struct dm_pool_counts *c)
{
	unsigned long *ev = kunit_kcalloc(test, NR_VM_EVENT_ITEMS,
					  sizeof(*ev), GFP_KERNEL);

	KUNIT_ASSERT_NOT_NULL(test, ev);
	all_vm_events(ev);
	c->removed = ev[DIRECT_MAP_REMOVED];
	c->restored = ev[DIRECT_MAP_RESTORED];
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
	KUNIT_EXPECT_FALSE(test, direct_map_pool_page(page));
	if (!debug_pagealloc_enabled_static())
		KUNIT_EXPECT_TRUE(test, dm_pool_readable(page));
}

static struct dm_block *dm_pool_block_of(struct page *page)
{
	return xa_load(&dm_blocks, page_to_pfn(page) >> pageblock_order);
}

/* Whether the page is free in the pool, and whether it waits for zeroing. */
static bool dm_pool_page_state(struct page *page, bool *dirty)
{
	struct dm_block *b;
	bool free = false;

	guard(spinlock_irq)(&dm_pool.lock);
	b = dm_pool_block_of(page);
	if (b) {
		free = test_bit(page_to_pfn(page) - b->pfn, dm_free_bits(b));
		*dirty = test_bit(page_to_pfn(page) - b->pfn, dm_dirty_bits(b));
	}
	return free;
}

/* Where the block of a page is, or -1 if the pool has no such block. */
static enum dm_block_state dm_pool_block_state(struct page *page)
{
	struct dm_block *b;

	guard(spinlock_irq)(&dm_pool.lock);
	b = dm_pool_block_of(page);
	return b ? b->state : -1;
}

/* Let the worker finish what the frees so far gave it. */
static void dm_pool_flush_work(void)
{
	dm_pool_kick();
	flush_work(&dm_pool_work);
}

static void dm_pool_restore_limit(void *old)
{
	WRITE_ONCE(dm_pool_max_free_blocks, (unsigned long)old);
	dm_pool_flush_work();
}

/* Set the limit of free blocks kept until the test ends. */
static void dm_pool_set_limit(struct kunit *test, unsigned int max)
{
	unsigned long old = dm_pool_max_free_blocks;
	int ret;

	WRITE_ONCE(dm_pool_max_free_blocks, max);
	ret = kunit_add_action_or_reset(test, dm_pool_restore_limit, (void *)old);
	KUNIT_ASSERT_EQ(test, ret, 0);
}

static void dm_pool_enable_work(void *unused)
{
	enable_work(&dm_pool_work);
}

/* Hold off the worker until the action is released or the test ends. */
static void dm_pool_disable_work(struct kunit *test)
{
	int ret;

	disable_work_sync(&dm_pool_work);
	ret = kunit_add_action_or_reset(test, dm_pool_enable_work, NULL);
	KUNIT_ASSERT_EQ(test, ret, 0);
}

static void dm_pool_put_page(void *page)
{
	put_page(page);
}

/* A page from the pool, given back when the test ends. */
static struct page *dm_pool_get_page(struct kunit *test, int nid)
{
	struct direct_map_batch batch;
	struct page *page;

	direct_map_batch_init(&batch);
	KUNIT_ASSERT_EQ(test, direct_map_alloc_page(&batch, GFP_KERNEL, nid,
						    &page), 0);
	direct_map_batch_flush(&batch);
	KUNIT_ASSERT_EQ(test, kunit_add_action_or_reset(test, dm_pool_put_page,
							page), 0);
	return page;
}

static void dm_pool_fill(struct kunit *test, struct page *page, int c)
{
	void *addr = vmap(&page, 1, VM_MAP, PAGE_KERNEL);

	KUNIT_ASSERT_NOT_NULL(test, addr);
	memset(addr, c, PAGE_SIZE);
	vunmap(addr);
}

static bool dm_pool_zeroed(struct kunit *test, struct page *page)
{
	void *addr = vmap(&page, 1, VM_MAP, PAGE_KERNEL);
	bool zeroed;

	KUNIT_ASSERT_NOT_NULL(test, addr);
	zeroed = !memchr_inv(addr, 0, PAGE_SIZE);
	vunmap(addr);
	return zeroed;
}

/*
 * A page freed through the page allocator's free path goes back to the
 * pool, still out of the direct map and without a reference; it comes out
 * of the pool again zeroed, without a removal; and the worker zeroes a page
 * that comes back before anyone asks for it.
 */
static void direct_map_pool_test_free_path(struct kunit *test)
{
	struct direct_map_batch batch;
	struct dm_pool_counts a, b;
	struct page *page, *again;
	struct dm_block *blk;
	bool dirty = false;
	int ret;

	direct_map_batch_init(&batch);
	KUNIT_ASSERT_EQ(test, direct_map_alloc_page(&batch, GFP_KERNEL,
						    NUMA_NO_NODE, &page), 0);
	direct_map_batch_flush(&batch);
	blk = dm_pool_block_of(page);
	/* A second page in use keeps the block from coming back whole. */
	if (dm_pool_block_of(dm_pool_get_page(test, page_to_nid(page))) != blk) {
		put_page(page);
		kunit_skip(test, "the pool gave the second page from another block");
	}
	KUNIT_EXPECT_TRUE(test, direct_map_pool_page(page));
	KUNIT_EXPECT_FALSE(test, dm_pool_readable(page));
	KUNIT_EXPECT_EQ(test, page_ref_count(page), 1);
	KUNIT_EXPECT_TRUE(test, dm_pool_zeroed(test, page));
	dm_pool_fill(test, page, 0xa5);

	dm_pool_disable_work(test);
	put_page(page);
	KUNIT_EXPECT_EQ(test, page_ref_count(page), 0);
	KUNIT_EXPECT_FALSE(test, PageBuddy(page));
	KUNIT_EXPECT_TRUE(test, dm_pool_page_state(page, &dirty));
	KUNIT_EXPECT_TRUE(test, dirty);
	KUNIT_EXPECT_FALSE(test, dm_pool_readable(page));

	/*
	 * The pool hands out the clean free pages of a block before a dirty
	 * one: take them (until the test ends), then the page comes back.
	 */
	dm_pool_read_counts(test, &a);
	for (;;) {
		spin_lock_irq(&dm_pool.lock);
		if (blk->state == DM_BLOCK_PARTIAL)
			list_move(&blk->list, &dm_pool.partial[blk->nid]);
		spin_unlock_irq(&dm_pool.lock);
		direct_map_batch_init(&batch);
		KUNIT_ASSERT_EQ(test, direct_map_alloc_page(&batch, GFP_KERNEL,
							    blk->nid, &again), 0);
		direct_map_batch_flush(&batch);
		if (again == page)
			break;
		if (dm_pool_block_of(again) != blk) {
			put_page(again);
			break;
		}
		ret = kunit_add_action_or_reset(test, dm_pool_put_page, again);
		KUNIT_ASSERT_EQ(test, ret, 0);
	}
	dm_pool_read_counts(test, &b);
	KUNIT_ASSERT_PTR_EQ(test, again, page);
	KUNIT_EXPECT_EQ(test, b.removed - a.removed, 0);
	KUNIT_EXPECT_GE(test, b.reused - a.reused, 1);
	KUNIT_EXPECT_TRUE(test, dm_pool_zeroed(test, page));

	/* The worker zeroes a page that came back. */
	dm_pool_fill(test, page, 0x5a);
	put_page(page);
	kunit_release_action(test, dm_pool_enable_work, NULL);
	dm_pool_flush_work();
	KUNIT_EXPECT_TRUE(test, dm_pool_page_state(page, &dirty));
	KUNIT_EXPECT_FALSE(test, dirty);
	KUNIT_EXPECT_TRUE(test, dm_pool_zeroed(test, page));
}

/*
 * A pageblock is removed whole and, once all its pages are back, kept zeroed
 * up to the limit, then restored and freed by the worker, not by the free
 * path or the shrinker.
 */
static void direct_map_pool_test_block(struct kunit *test)
{
	struct shrink_control sc = { .gfp_mask = GFP_KERNEL };
	struct direct_map_batch batch;
	struct dm_pool_counts a, b;
	struct page *page;
	unsigned long i;

	dm_pool_set_limit(test, UINT_MAX);
	direct_map_batch_init(&batch);
	KUNIT_ASSERT_EQ(test, direct_map_alloc_block(&batch, GFP_KERNEL,
						     NUMA_NO_NODE, &page), 0);
	direct_map_batch_flush(&batch);
	for (i = 0; i < pageblock_nr_pages; i += 64)
		KUNIT_EXPECT_FALSE(test, dm_pool_readable(page + i));

	for (i = 0; i < pageblock_nr_pages; i++)
		put_page(page + i);
	dm_pool_flush_work();
	KUNIT_EXPECT_EQ(test, dm_pool_block_state(page), DM_BLOCK_FREE);
	KUNIT_EXPECT_FALSE(test, dm_pool_readable(page));

	/* Reclaim asks; it restores nothing itself. */
	dm_pool_read_counts(test, &a);
	sc.nr_to_scan = dm_pool_count(NULL, &sc);
	KUNIT_EXPECT_GE(test, sc.nr_to_scan, pageblock_nr_pages);
	dm_pool_disable_work(test);
	KUNIT_EXPECT_GE(test, dm_pool_scan(NULL, &sc), pageblock_nr_pages);
	dm_pool_read_counts(test, &b);
	kunit_release_action(test, dm_pool_enable_work, NULL);
	KUNIT_EXPECT_EQ(test, b.restored - a.restored, 0);
	KUNIT_EXPECT_FALSE(test, dm_pool_readable(page));

	dm_pool_flush_work();
	dm_pool_read_counts(test, &b);
	KUNIT_EXPECT_NULL(test, dm_pool_block_of(page));
	KUNIT_EXPECT_GE(test, b.restored - a.restored, pageblock_nr_pages);
	KUNIT_EXPECT_GE(test, b.released - a.released, pageblock_nr_pages);
	for (i = 0; i < pageblock_nr_pages; i += 64)
		dm_pool_expect_released(test, page + i);
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
	dm_pool_flush_work();
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
	direct_map_pool_post_alloc(page + 1, GFP_KERNEL);
	__free_page(page + 1);
}

/* A free block of the pool, the only one (the others are released). */
static struct page *dm_pool_free_block(struct kunit *test)
{
	struct direct_map_batch batch;
	struct page *page;
	unsigned long i;

	dm_pool_set_limit(test, 0);
	dm_pool_flush_work();
	WRITE_ONCE(dm_pool_max_free_blocks, UINT_MAX);

	direct_map_batch_init(&batch);
	KUNIT_ASSERT_EQ(test, direct_map_alloc_block(&batch, GFP_KERNEL,
						     NUMA_NO_NODE, &page), 0);
	direct_map_batch_flush(&batch);
	for (i = 0; i < pageblock_nr_pages; i++)
		put_page(page + i);
	dm_pool_flush_work();
	if (dm_pool_block_state(page) != DM_BLOCK_FREE)
		kunit_skip(test, "another user of the pool took the block");
	return page;
}

static void dm_pool_unisolate(void *data)
{
	unsigned long pfn = page_to_pfn((struct page *)data);

	undo_isolate_page_range(pfn, pfn + pageblock_nr_pages);
}

/* Isolate the pageblock of a free block, or skip if another user took it. */
static void dm_pool_isolate_free(struct kunit *test, struct page *page)
{
	unsigned long pfn = page_to_pfn(page);
	int ret;

	ret = start_isolate_page_range(pfn, pfn + pageblock_nr_pages,
				       PB_ISOLATE_MODE_OTHER);
	if (ret && dm_pool_block_state(page) != DM_BLOCK_FREE)
		kunit_skip(test, "another user of the pool took the block");
	KUNIT_ASSERT_EQ(test, ret, 0);
	KUNIT_ASSERT_EQ(test, kunit_add_action_or_reset(test, dm_pool_unisolate,
							page), 0);
}

/*
 * The pool answers the isolation's question under the zone's lock, where the
 * isolate bit is set, but hands out free blocks under its own lock.  A
 * block an allocator has claimed is unmovable: its isolation fails.  A
 * block whose pageblock was isolated (the pool called it movable) before
 * the claim is not handed out: the allocator looks for the isolate bit
 * after the claim, under the zone's lock, and gives the block to the
 * worker, which frees it into the isolated pageblock.  The race itself is
 * too short to be hit here; isolating first and allocating after is the
 * order that the second look exists for.  Both allocators claim free
 * blocks through dm_pool_claim_usable().
 */
static void direct_map_pool_test_isolated(struct kunit *test)
{
	struct direct_map_batch batch;
	struct dm_pool_counts a, b;
	struct page *page, *other;
	struct dm_block *blk;
	unsigned long pfn, i;
	int nid, ret;

	/* No other free block: the allocator claims this one first. */
	page = dm_pool_free_block(test);
	pfn = page_to_pfn(page);
	nid = page_to_nid(page);

	/* Claimed: isolation fails, and changes nothing. */
	spin_lock_irq(&dm_pool.lock);
	blk = dm_pool_claim_free(nid);
	spin_unlock_irq(&dm_pool.lock);
	if (blk != dm_pool_block_of(page)) {
		if (blk) {
			bool kick;

			spin_lock_irq(&dm_pool.lock);
			kick = dm_block_requeue(blk);
			spin_unlock_irq(&dm_pool.lock);
			if (kick)
				dm_pool_kick();
		}
		kunit_skip(test, "another user of the pool took the block");
	}
	ret = start_isolate_page_range(pfn, pfn + pageblock_nr_pages,
				       PB_ISOLATE_MODE_OTHER);
	if (!ret)
		undo_isolate_page_range(pfn, pfn + pageblock_nr_pages);
	/* Back, first on its free list again. */
	spin_lock_irq(&dm_pool.lock);
	dm_block_requeue(blk);
	if (blk->state == DM_BLOCK_FREE)
		list_move(&blk->list, &dm_pool.free[nid]);
	spin_unlock_irq(&dm_pool.lock);
	KUNIT_EXPECT_EQ(test, ret, -EBUSY);
	KUNIT_ASSERT_EQ(test, dm_pool_block_state(page), DM_BLOCK_FREE);

	/* Isolated while free, then asked for: the worker's, not handed out. */
	dm_pool_disable_work(test);
	dm_pool_isolate_free(test, page);
	dm_pool_read_counts(test, &a);
	direct_map_batch_init(&batch);
	KUNIT_ASSERT_EQ(test, direct_map_alloc_block(&batch, GFP_KERNEL, nid,
						     &other), 0);
	direct_map_batch_flush(&batch);
	KUNIT_EXPECT_NE(test, page_to_pfn(other), pfn);
	KUNIT_EXPECT_EQ(test, dm_pool_block_state(page), DM_BLOCK_WORK);
	for (i = 0; i < pageblock_nr_pages; i++)
		put_page(other + i);
	kunit_release_action(test, dm_pool_enable_work, NULL);
	dm_pool_flush_work();
	dm_pool_read_counts(test, &b);

	KUNIT_EXPECT_NULL(test, dm_pool_block_of(page));
	KUNIT_EXPECT_GE(test, b.released - a.released, pageblock_nr_pages);
	/* Every page is free in the isolated pageblock: offlining goes on. */
	KUNIT_EXPECT_EQ(test, test_pages_isolated(pfn, pfn + pageblock_nr_pages,
						  PB_ISOLATE_MODE_OTHER), 0);
}

/*
 * A contiguous allocation over a free block of the pool gets it: the
 * allocation gives the block back itself once its pageblock is isolated,
 * before the range is tested (the worker is held off to show that).
 */
static void direct_map_pool_test_contig(struct kunit *test)
{
#ifdef CONFIG_CONTIG_ALLOC
	enum dm_block_state state;
	struct page *page;
	unsigned long pfn, i;
	int ret;

	page = dm_pool_free_block(test);
	pfn = page_to_pfn(page);
	dm_pool_disable_work(test);
	ret = alloc_contig_range(pfn, pfn + pageblock_nr_pages, ACR_FLAGS_NONE,
				 GFP_KERNEL);
	state = dm_pool_block_state(page);
	if (ret && (state == DM_BLOCK_USED || state == DM_BLOCK_PARTIAL))
		kunit_skip(test, "another user of the pool took the block");
	KUNIT_ASSERT_EQ(test, ret, 0);
	KUNIT_EXPECT_NULL(test, dm_pool_block_of(page));
	for (i = 0; i < pageblock_nr_pages; i += 64)
		dm_pool_expect_released(test, page + i);
	free_contig_range(pfn, pageblock_nr_pages);
#else
	kunit_skip(test, "no CONFIG_CONTIG_ALLOC");
#endif
}

static struct kunit_case direct_map_pool_test_cases[] = {
	KUNIT_CASE(direct_map_pool_test_free_path),
	KUNIT_CASE(direct_map_pool_test_block),
	KUNIT_CASE(direct_map_pool_test_hwpoison),
	KUNIT_CASE(direct_map_pool_test_isolated),
	KUNIT_CASE(direct_map_pool_test_contig),
	{}
};

static struct kunit_suite direct_map_pool_test_suite = {
	.name = "direct_map_pool",
	.test_cases = direct_map_pool_test_cases,
};

kunit_test_suite(direct_map_pool_test_suite);
