// SPDX-License-Identifier: GPL-2.0
/*
 * A pool of memory out of the direct map, in pageblocks.
 *
 * Users that keep memory out of the direct map (secretmem, KVM's guest_memfd
 * without the direct map) take it from here, a page or a pageblock (2 MiB on
 * x86-64) at a time, instead of removing pages one by one:
 *
 * - Memory is removed a pageblock at a time, so that the direct map's large
 *   mapping of the block is removed whole, never split, and comes back whole
 *   when the block is released.  Single pages are handed out from pageblocks
 *   the pool has already removed.
 *
 * - Pages leave their user through the page allocator's own free path: a
 *   page of a pool block (PB_direct_map_pool) goes back to the pool, still
 *   out of the direct map, instead of to the free lists.  Whoever frees the
 *   page (the page cache at truncation, the last put_page() of a pin) needs
 *   to know nothing about the pool.
 *
 * - Pages are reused without a removal or a TLB flush: a page that comes
 *   back dirty is zeroed through a temporary mapping before it is handed out
 *   again (direct_map_batch_zero()), and a block whose pages have all come
 *   back is zeroed by a worker and kept whole, up to a limit.
 *
 * - Nothing is restored or collapsed in the free path or in reclaim: the
 *   free path only marks the page free, under a spinlock; a worker, in
 *   process context and outside reclaim, zeroes blocks, and restores and
 *   frees those the pool does not keep (over the limit, asked for by the
 *   shrinker, with hardware poison, or in a pageblock being isolated for
 *   memory offlining).
 *
 * Free pages of the pool have a reference count of zero, like free pages of
 * the page allocator, so that a speculative reference (folio_try_get())
 * cannot take them.  A page with hardware poison never leaves the pool
 * again: its block is not used for new allocations, and when the block's
 * other pages have all come back they are restored and freed, the poisoned
 * page stays out of the direct map and out of use.
 */

#include <linux/direct_map.h>
#include <linux/highmem.h>
#include <linux/jump_label.h>
#include <linux/memory.h>
#include <linux/mm.h>
#include <linux/moduleparam.h>
#include <linux/page-isolation.h>
#include <linux/set_memory.h>
#include <linux/shrinker.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/vmstat.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>

#include "internal.h"
#include "page_alloc.h"

DEFINE_STATIC_KEY_FALSE(direct_map_pool_used);

/* Where a block is. */
enum dm_block_state {
	DM_BLOCK_USED,		/* every page in use (or poisoned): on no list */
	DM_BLOCK_PARTIAL,	/* some pages free: on its node's partial list */
	DM_BLOCK_FREE,		/* every page free and zeroed: on a free list */
	DM_BLOCK_WORK,		/* every page free: the worker's */
};

/**
 * struct dm_block - A pageblock of the pool
 * @list: on a partial or free list, or the worker's list, as @state says
 * @pfn: first page frame of the block
 * @nid: node of the block
 * @state: where the block is
 * @poisoned: a page of the block has hardware poison: never hand out another
 * @nr_free: pages of the block that are in the pool (not in use)
 * @bits: two bitmaps of pageblock_nr_pages bits: which pages are free, and
 *        which free pages need zeroing before they are handed out again
 *
 * Protected by dm_pool.lock, except @pfn and @nid, which never change.
 */
struct dm_block {
	struct list_head list;
	unsigned long pfn;
	int nid;
	enum dm_block_state state;
	bool poisoned;
	unsigned int nr_free;
	unsigned long bits[];
};

static struct {
	/* Taken in the free path, which may run in any context. */
	spinlock_t lock;
	/* Per node: blocks with free pages, blocks entirely free. */
	struct list_head *partial;
	struct list_head *free;
	/* Blocks that came back entirely, for the worker. */
	struct list_head work;
	unsigned long nr_free_blocks;
	/* Free blocks the worker is asked to release (shrinker, offlining). */
	unsigned long nr_to_release;
} dm_pool = {
	.lock = __SPIN_LOCK_UNLOCKED(dm_pool.lock),
	.work = LIST_HEAD_INIT(dm_pool.work),
};

/* Blocks by pageblock index (pfn >> pageblock_order). */
static DEFINE_XARRAY(dm_blocks);

/* Free blocks kept out of the direct map, zeroed, for the next user. */
static unsigned int dm_pool_max_free_blocks = 16;

static void dm_pool_worker(struct work_struct *work);
static DECLARE_WORK(dm_pool_work, dm_pool_worker);

static unsigned long *dm_free_bits(struct dm_block *b)
{
	return b->bits;
}

static unsigned long *dm_dirty_bits(struct dm_block *b)
{
	return b->bits + BITS_TO_LONGS(pageblock_nr_pages);
}

static struct page *dm_block_page(struct dm_block *b, unsigned long i)
{
	return pfn_to_page(b->pfn + i);
}

/* Isolated for memory offlining or a contiguous allocation: give it back. */
static bool dm_block_isolated(struct dm_block *b)
{
	return get_pageblock_isolate(dm_block_page(b, 0));
}

static void dm_pool_kick(void)
{
	queue_work(system_dfl_wq, &dm_pool_work);
}

/*
 * Called by the page allocator's free path for a page of a pool block, in
 * any context, after the page's state has been reset as for any freed page.
 * A page with hardware poison comes here too (@poisoned): the pool counts it
 * as back, and never hands it out or maps it again.
 */
void direct_map_pool_free(struct page *page, unsigned int order, bool poisoned)
{
	unsigned long pfn = page_to_pfn(page), flags, i, off;
	unsigned long nr = 1UL << order;
	struct dm_block *b;
	bool kick = false;

	b = xa_load(&dm_blocks, pfn >> pageblock_order);
	if (WARN_ON_ONCE(!b)) {
		/* Out of the direct map, and not ours: leak it. */
		return;
	}
	off = pfn - b->pfn;

	spin_lock_irqsave(&dm_pool.lock, flags);
	for (i = off; i < off + nr; i++) {
		if (WARN_ON_ONCE(__test_and_set_bit(i, dm_free_bits(b))))
			continue;
		if (!poisoned)
			__set_bit(i, dm_dirty_bits(b));
		b->nr_free++;
	}
	if (poisoned && !b->poisoned) {
		b->poisoned = true;
		if (b->state == DM_BLOCK_PARTIAL) {
			list_del_init(&b->list);
			b->state = DM_BLOCK_USED;
		}
	}
	if (b->nr_free == pageblock_nr_pages) {
		list_move_tail(&b->list, &dm_pool.work);
		b->state = DM_BLOCK_WORK;
		kick = true;
	} else if (b->state == DM_BLOCK_USED && !b->poisoned) {
		list_add_tail(&b->list, &dm_pool.partial[b->nid]);
		b->state = DM_BLOCK_PARTIAL;
	}
	spin_unlock_irqrestore(&dm_pool.lock, flags);

	if (kick)
		dm_pool_kick();
}

/* Mark the pageblock(s) of a block as the pool's, or give them back. */
static void dm_block_mark(struct dm_block *b, bool pool)
{
	struct page *page = dm_block_page(b, 0);

	if (pool)
		set_pfnblock_bit(page, b->pfn, PB_direct_map_pool);
	else
		clear_pfnblock_bit(page, b->pfn, PB_direct_map_pool);
}

/*
 * Restore the block's pages and free them to the page allocator, except
 * pages with hardware poison, which stay out of the direct map and out of
 * use.  The block is the caller's: every page is back, and it is on no list.
 */
static void dm_block_release(struct dm_block *b)
{
	struct page *first = dm_block_page(b, 0);
	bool poison = direct_map_has_hwpoison(first, pageblock_nr_pages);
	unsigned long i, released = 0;

	xa_erase(&dm_blocks, b->pfn >> pageblock_order);
	dm_block_mark(b, false);
	direct_map_restore(first, pageblock_nr_pages);

	for (i = 0; i < pageblock_nr_pages; i++) {
		struct page *page = dm_block_page(b, i);

		if (PageHWPoison(page))
			continue;
		/* A page next to a poisoned one whose restore failed. */
		if (poison && !direct_map_page_present(page))
			continue;
		if (test_bit(i, dm_dirty_bits(b)))
			clear_highpage(page);
		free_frozen_pages(page, 0);
		released++;
	}
	count_vm_events(DIRECT_MAP_POOL_RELEASED, released);
	kfree(b);
}

/* Zero the dirty pages of a block through temporary mappings. */
static int dm_block_zero(struct direct_map_batch *batch, struct dm_block *b)
{
	unsigned long *dirty = dm_dirty_bits(b);
	unsigned long start, end;
	int ret;

	for_each_set_bitrange(start, end, dirty, pageblock_nr_pages) {
		ret = direct_map_batch_zero(batch, dm_block_page(b, start),
					    end - start);
		if (ret)
			return ret;
	}
	bitmap_zero(dirty, pageblock_nr_pages);
	return 0;
}

/* Take a free block for release, as the shrinker or offlining asked. */
static struct dm_block *dm_pool_take_free_to_release(void)
{
	struct dm_block *b;
	int nid;

	guard(spinlock_irqsave)(&dm_pool.lock);
	for_each_node(nid) {
		list_for_each_entry(b, &dm_pool.free[nid], list) {
			if (!dm_pool.nr_to_release &&
			    dm_pool.nr_free_blocks <= dm_pool_max_free_blocks &&
			    !dm_block_isolated(b))
				continue;
			list_del_init(&b->list);
			b->state = DM_BLOCK_WORK;
			dm_pool.nr_free_blocks--;
			if (dm_pool.nr_to_release)
				dm_pool.nr_to_release--;
			return b;
		}
	}
	dm_pool.nr_to_release = 0;
	return NULL;
}

/*
 * Process context, outside reclaim: zero the blocks that came back whole and
 * keep them, or restore and free them; then release free blocks over the
 * limit, asked for by the shrinker, or in pageblocks being offlined.
 */
static void dm_pool_worker(struct work_struct *work)
{
	struct direct_map_batch batch;
	struct dm_block *b, *tmp;
	LIST_HEAD(blocks);
	LIST_HEAD(keep);

	spin_lock_irq(&dm_pool.lock);
	list_splice_init(&dm_pool.work, &blocks);
	spin_unlock_irq(&dm_pool.lock);

	direct_map_batch_init(&batch);
	list_for_each_entry_safe(b, tmp, &blocks, list) {
		list_del_init(&b->list);
		if (b->poisoned || dm_block_isolated(b) ||
		    direct_map_has_hwpoison(dm_block_page(b, 0), pageblock_nr_pages) ||
		    READ_ONCE(dm_pool.nr_free_blocks) >= dm_pool_max_free_blocks ||
		    dm_block_zero(&batch, b)) {
			dm_block_release(b);
			continue;
		}
		list_add_tail(&b->list, &keep);
	}
	/* The temporary mappings are gone from every TLB before reuse. */
	direct_map_batch_flush(&batch);

	spin_lock_irq(&dm_pool.lock);
	list_for_each_entry_safe(b, tmp, &keep, list) {
		list_move_tail(&b->list, &dm_pool.free[b->nid]);
		b->state = DM_BLOCK_FREE;
		dm_pool.nr_free_blocks++;
	}
	spin_unlock_irq(&dm_pool.lock);

	while ((b = dm_pool_take_free_to_release()))
		dm_block_release(b);
}

/*
 * Allocate, split and remove a new block.  Every page is the caller's, with
 * a reference count of one, zeroed; the batch flushes the removal.
 */
static struct dm_block *dm_block_new(struct direct_map_batch *batch, gfp_t gfp,
				     int nid)
{
	size_t bits = 2 * BITS_TO_LONGS(pageblock_nr_pages) * sizeof(long);
	struct page *page;
	struct dm_block *b;
	int ret;

	b = kzalloc(sizeof(*b) + bits, gfp & GFP_RECLAIM_MASK);
	if (!b)
		return ERR_PTR(-ENOMEM);

	/* Never movable, never highmem: the pages stay where they are. */
	gfp &= ~(__GFP_COMP | __GFP_MOVABLE | __GFP_HIGHMEM);
	page = alloc_pages_node(nid, gfp | __GFP_ZERO, pageblock_order);
	if (!page) {
		kfree(b);
		return ERR_PTR(-ENOMEM);
	}
	INIT_LIST_HEAD(&b->list);
	b->pfn = page_to_pfn(page);
	b->nid = page_to_nid(page);
	b->state = DM_BLOCK_USED;

	ret = xa_insert(&dm_blocks, b->pfn >> pageblock_order, b,
			gfp & GFP_RECLAIM_MASK);
	if (ret)
		goto free;
	ret = direct_map_batch_remove(batch, page, pageblock_nr_pages);
	if (ret) {
		xa_erase(&dm_blocks, b->pfn >> pageblock_order);
		goto free;
	}
	split_page(page, pageblock_order);
	static_branch_enable(&direct_map_pool_used);
	dm_block_mark(b, true);
	return b;
free:
	__free_pages(page, pageblock_order);
	kfree(b);
	return ERR_PTR(ret);
}

static int dm_pool_node(int nid)
{
	return nid == NUMA_NO_NODE ? numa_mem_id() : nid;
}

/*
 * Take the first usable free page of a block.  Return its index, or -1 if
 * the block has none (its free pages are poisoned, or it is being
 * isolated), in which case the block has been taken off its list.
 */
static long dm_block_take_page(struct dm_block *b, bool *dirty)
{
	unsigned long i;

	lockdep_assert_held(&dm_pool.lock);

	if (!b->poisoned && !dm_block_isolated(b)) {
		for_each_set_bit(i, dm_free_bits(b), pageblock_nr_pages) {
			if (PageHWPoison(dm_block_page(b, i))) {
				b->poisoned = true;
				break;
			}
			__clear_bit(i, dm_free_bits(b));
			*dirty = __test_and_clear_bit(i, dm_dirty_bits(b));
			b->nr_free--;
			if (b->state == DM_BLOCK_FREE) {
				dm_pool.nr_free_blocks--;
				list_move_tail(&b->list, &dm_pool.partial[b->nid]);
				b->state = DM_BLOCK_PARTIAL;
			}
			if (!b->nr_free) {
				list_del_init(&b->list);
				b->state = DM_BLOCK_USED;
			}
			return i;
		}
	}
	/* Nothing to hand out here: the worker releases it once it is free. */
	if (b->state == DM_BLOCK_FREE) {
		dm_pool.nr_free_blocks--;
		list_move_tail(&b->list, &dm_pool.work);
		b->state = DM_BLOCK_WORK;
		dm_pool_kick();
	} else {
		list_del_init(&b->list);
		b->state = DM_BLOCK_USED;
	}
	return -1;
}

/**
 * direct_map_alloc_page - Allocate a page out of the direct map
 * @batch: the batch whose flush the caller issues before anyone writes the page
 * @gfp: allocation flags, for a new block and the pool's bookkeeping
 * @nid: preferred node, or NUMA_NO_NODE
 * @pagep: the page, on success
 *
 * Hand out a free page of a pageblock that the pool has removed from the
 * direct map, or remove a new pageblock and hand out its first page.  The
 * page is zeroed, has a reference count of one, and is the caller's like a
 * page from alloc_page(): when it is freed, through any path, it goes back
 * to the pool, still out of the direct map.  It must be freed, never
 * restored: it is never handed to the page allocator while out of the
 * direct map.
 *
 * The page may have been zeroed, or its block removed, through @batch: the
 * caller calls direct_map_batch_flush() before the page's new user (or
 * anyone else) can write to it.
 *
 * Context: Process context; may sleep.
 * Return: 0 on success; -ENOMEM if no page could be had (a new block could
 * not be allocated, removed or zeroed); -EOPNOTSUPP if the kernel cannot
 * change its direct map.  On error nothing changed for the caller.
 */
int direct_map_alloc_page(struct direct_map_batch *batch, gfp_t gfp, int nid,
			  struct page **pagep)
{
	struct dm_block *b;
	bool dirty = false;
	long i = -1;
	int ret;

	might_sleep();

	if (!can_set_direct_map())
		return -EOPNOTSUPP;
	nid = dm_pool_node(nid);

	spin_lock_irq(&dm_pool.lock);
	while (i < 0) {
		b = list_first_entry_or_null(&dm_pool.partial[nid],
					     struct dm_block, list);
		if (!b)
			b = list_first_entry_or_null(&dm_pool.free[nid],
						     struct dm_block, list);
		if (!b)
			break;
		i = dm_block_take_page(b, &dirty);
	}
	spin_unlock_irq(&dm_pool.lock);

	if (i < 0) {
		b = dm_block_new(batch, gfp, nid);
		if (IS_ERR(b))
			return PTR_ERR(b);
		/* Keep the first page; the others go to the pool, zeroed. */
		for (i = 1; i < pageblock_nr_pages; i++)
			set_page_count(dm_block_page(b, i), 0);
		spin_lock_irq(&dm_pool.lock);
		bitmap_set(dm_free_bits(b), 1, pageblock_nr_pages - 1);
		b->nr_free = pageblock_nr_pages - 1;
		list_add_tail(&b->list, &dm_pool.partial[b->nid]);
		b->state = DM_BLOCK_PARTIAL;
		spin_unlock_irq(&dm_pool.lock);
		*pagep = dm_block_page(b, 0);
		return 0;
	}

	if (dirty) {
		ret = direct_map_batch_zero(batch, dm_block_page(b, i), 1);
		if (ret) {
			/* Still without a reference: give it back, dirty. */
			direct_map_pool_free(dm_block_page(b, i), 0, false);
			return ret;
		}
	}
	set_page_refcounted(dm_block_page(b, i));
	count_vm_event(DIRECT_MAP_POOL_REUSED);
	*pagep = dm_block_page(b, i);
	return 0;
}
EXPORT_SYMBOL_FOR_MODULES(direct_map_alloc_page, "kvm");

/**
 * direct_map_alloc_block - Allocate a pageblock out of the direct map
 * @batch: the batch whose flush the caller issues before anyone writes the
 *         pages
 * @gfp: allocation flags for a new block (e.g. with __GFP_NORETRY, so that
 *       the caller can fall back to single pages)
 * @nid: preferred node, or NUMA_NO_NODE
 * @pagep: the first page, on success
 *
 * Hand out a whole pageblock (pageblock_nr_pages pages, 2 MiB on x86-64)
 * out of the direct map: one the pool keeps, zeroed, without a removal or a
 * flush, or a new one removed through @batch.  Each page is zeroed, has a
 * reference count of one, and goes back to the pool when it is freed.
 *
 * Context: Process context; may sleep.
 * Return: 0 on success; -ENOMEM or -EOPNOTSUPP as direct_map_alloc_page().
 */
int direct_map_alloc_block(struct direct_map_batch *batch, gfp_t gfp, int nid,
			   struct page **pagep)
{
	struct dm_block *b, *tmp;
	unsigned long i;

	might_sleep();

	if (!can_set_direct_map())
		return -EOPNOTSUPP;
	nid = dm_pool_node(nid);

	spin_lock_irq(&dm_pool.lock);
	list_for_each_entry_safe(b, tmp, &dm_pool.free[nid], list) {
		if (b->poisoned || dm_block_isolated(b) ||
		    direct_map_has_hwpoison(dm_block_page(b, 0),
					    pageblock_nr_pages)) {
			/* The worker releases it. */
			dm_pool.nr_free_blocks--;
			list_move_tail(&b->list, &dm_pool.work);
			b->state = DM_BLOCK_WORK;
			dm_pool_kick();
			continue;
		}
		list_del_init(&b->list);
		b->state = DM_BLOCK_USED;
		dm_pool.nr_free_blocks--;
		bitmap_zero(dm_free_bits(b), pageblock_nr_pages);
		b->nr_free = 0;
		goto found;
	}
	spin_unlock_irq(&dm_pool.lock);

	b = dm_block_new(batch, gfp, nid);
	if (IS_ERR(b))
		return PTR_ERR(b);
	*pagep = dm_block_page(b, 0);
	return 0;

found:
	spin_unlock_irq(&dm_pool.lock);
	for (i = 0; i < pageblock_nr_pages; i++)
		set_page_refcounted(dm_block_page(b, i));
	count_vm_events(DIRECT_MAP_POOL_REUSED, pageblock_nr_pages);
	*pagep = dm_block_page(b, 0);
	return 0;
}
EXPORT_SYMBOL_FOR_MODULES(direct_map_alloc_block, "kvm");

/**
 * direct_map_pool_owns - Whether a page belongs to the direct-map pool
 * @page: the page
 *
 * Return: true if @page is part of a block of the pool: it is out of the
 * direct map and goes back to the pool when it is freed.
 */
bool direct_map_pool_owns(struct page *page)
{
	return direct_map_pool_page(page);
}
EXPORT_SYMBOL_FOR_MODULES(direct_map_pool_owns, "kvm");

static unsigned long dm_pool_count(struct shrinker *s,
				   struct shrink_control *sc)
{
	return READ_ONCE(dm_pool.nr_free_blocks) * pageblock_nr_pages;
}

/* Reclaim context: only ask the worker; restoring takes locks reclaim may hold. */
static unsigned long dm_pool_scan(struct shrinker *s, struct shrink_control *sc)
{
	unsigned long nr = DIV_ROUND_UP(sc->nr_to_scan, pageblock_nr_pages);
	unsigned long flags;

	spin_lock_irqsave(&dm_pool.lock, flags);
	nr = min(nr, dm_pool.nr_free_blocks);
	dm_pool.nr_to_release = max(dm_pool.nr_to_release, nr);
	spin_unlock_irqrestore(&dm_pool.lock, flags);
	if (!nr)
		return SHRINK_STOP;
	dm_pool_kick();
	return nr * pageblock_nr_pages;
}

/* Release the free blocks of pageblocks being isolated for offlining. */
static int dm_pool_memory_callback(struct notifier_block *nb,
				   unsigned long action, void *arg)
{
	if (action == MEM_GOING_OFFLINE) {
		dm_pool_kick();
		flush_work(&dm_pool_work);
	}
	return NOTIFY_OK;
}

static int dm_pool_set_max(const char *val, const struct kernel_param *kp)
{
	int ret = param_set_uint(val, kp);

	if (!ret)
		dm_pool_kick();
	return ret;
}

static const struct kernel_param_ops dm_pool_max_ops = {
	.set = dm_pool_set_max,
	.get = param_get_uint,
};
module_param_cb(max_free_blocks, &dm_pool_max_ops, &dm_pool_max_free_blocks,
		0644);
MODULE_PARM_DESC(max_free_blocks,
		 "Free pageblocks kept out of the direct map for reuse");

static int __init dm_pool_init(void)
{
	struct shrinker *shrinker;
	int nid;

	dm_pool.partial = kcalloc(nr_node_ids, sizeof(*dm_pool.partial),
				  GFP_KERNEL);
	dm_pool.free = kcalloc(nr_node_ids, sizeof(*dm_pool.free), GFP_KERNEL);
	if (!dm_pool.partial || !dm_pool.free)
		panic("direct_map_pool: cannot allocate its lists\n");
	for (nid = 0; nid < nr_node_ids; nid++) {
		INIT_LIST_HEAD(&dm_pool.partial[nid]);
		INIT_LIST_HEAD(&dm_pool.free[nid]);
	}

	shrinker = shrinker_alloc(0, "direct_map_pool");
	if (shrinker) {
		shrinker->count_objects = dm_pool_count;
		shrinker->scan_objects = dm_pool_scan;
		shrinker_register(shrinker);
	}
	hotplug_memory_notifier(dm_pool_memory_callback, DEFAULT_CALLBACK_PRI);
	return 0;
}
core_initcall(dm_pool_init);

#ifdef CONFIG_DIRECT_MAP_KUNIT_TEST
#include "direct_map_pool_test.c"
#endif
