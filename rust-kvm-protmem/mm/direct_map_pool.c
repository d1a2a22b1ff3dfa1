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
 * - Pages are reused without a removal: a page that comes back is zeroed
 *   through a temporary mapping by a worker soon after (one flush per run),
 *   or, if it is asked for first, on the spot (direct_map_batch_zero(), the
 *   caller's flush); a block whose pages have all come back is kept whole,
 *   zeroed, up to a limit.
 *
 * - Nothing is restored or collapsed in the free path or in reclaim: the
 *   free path only marks the page free, under a spinlock, in any context but
 *   NMI; the worker, in process context and outside reclaim, zeroes, and
 *   restores and frees the blocks the pool does not keep (over the limit,
 *   asked for by the shrinker or hibernation, with hardware poison, or in a
 *   pageblock being isolated for offlining or a contiguous allocation).
 *   alloc_contig_range() restores and frees the free blocks of the range it
 *   isolated itself, also in process context and outside reclaim.
 *
 * Free pages of the pool have a reference count of zero, like free pages of
 * the page allocator, so that a speculative reference (folio_try_get())
 * cannot take them.  A page with hardware poison never leaves the pool
 * again: its block is not used for new allocations, and when the block's
 * other pages have all come back they are restored and freed, the poisoned
 * page stays out of the direct map and out of use.
 */

#include <linux/cpuset.h>
#include <linux/direct_map.h>
#include <linux/highmem.h>
#include <linux/jump_label.h>
#include <linux/memcontrol.h>
#include <linux/memory.h>
#include <linux/mempolicy.h>
#include <linux/mm.h>
#include <linux/moduleparam.h>
#include <linux/page-isolation.h>
#include <linux/rcupdate.h>
#include <linux/set_memory.h>
#include <linux/shrinker.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/suspend.h>
#include <linux/vmstat.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>

#include "internal.h"
#include "page_alloc.h"

DEFINE_STATIC_KEY_FALSE(direct_map_pool_used);

/* Where a block is. */
enum dm_block_state {
	DM_BLOCK_USED,		/* no clean page to hand out: on no list */
	DM_BLOCK_PARTIAL,	/* some pages free: on its node's partial list */
	DM_BLOCK_FREE,		/* every page free and zeroed: on a free list */
	DM_BLOCK_WORK,		/* every page back: the worker's, on no list or its list */
	DM_BLOCK_PENDING,	/* new, its removal not flushed: one batch's */
};

/**
 * struct dm_block - A pageblock of the pool
 * @list: on a partial or free list, or the worker's list, as @state says
 * @pfn: first page frame of the block
 * @nid: node of the block
 * @state: where the block is
 * @poisoned: a page of the block has hardware poison: hand out no other
 * @dying: being given back: the isolation path must not touch it
 * @rcu: the block is freed after a grace period, for that path
 * @next_pending: the next block pending in the same batch
 * @nr_free: pages of the block that are in the pool
 * @nr_zeroing: free pages the worker took to zero them
 * @bits: two bitmaps of pageblock_nr_pages bits: which pages are free, and
 *        which free pages need zeroing before they are handed out
 *
 * Protected by dm_pool.lock, except @pfn and @nid, which never change.  A
 * block is freed only once every page is back, by the task that took it in
 * DM_BLOCK_WORK off every list (the worker, or
 * direct_map_pool_drain_isolated()): the free path cannot reach it then,
 * and the isolation path finds it under RCU and checks @dying.
 */
struct dm_block {
	struct list_head list;
	unsigned long pfn;
	int nid;
	enum dm_block_state state;
	bool poisoned;
	bool dying;
	struct rcu_head rcu;
	struct dm_block *next_pending;
	unsigned int nr_free;
	unsigned int nr_zeroing;
	unsigned long bits[];
};

static struct {
	/* Taken in the free path, with interrupts off; never in NMI. */
	spinlock_t lock;
	/* Per node: blocks with free pages, blocks entirely free. */
	struct list_head *partial;
	struct list_head *free;
	/* Blocks whose pages are all back, for the worker. */
	struct list_head work;
	unsigned long nr_free_blocks;
	/* Free blocks the worker is asked to release (shrinker). */
	unsigned long nr_to_release;
	/* Keep no free block (hibernation in progress). */
	bool no_keep;
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
/*
 * Unbound, with a rescuer: the shrinker gives memory back only through the
 * worker, which must run when no new worker thread can be had.
 */
static struct workqueue_struct *dm_pool_wq;

/*
 * The pool works in pageblocks of at most 2 MiB that the direct map maps
 * with one PMD at most: larger pageblocks (4 MiB without THP and HugeTLB,
 * 32 MiB and more with larger base pages) would pin too much per page.
 */
static bool dm_pool_usable(void)
{
	return dm_pool.partial && can_set_direct_map() &&
	       pageblock_order <= PMD_ORDER &&
	       (PAGE_SIZE << pageblock_order) <= SZ_2M;
}

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

static bool dm_block_isolated(struct dm_block *b)
{
	return get_pageblock_isolate(dm_block_page(b, 0));
}

static void dm_pool_kick(void)
{
	queue_work(dm_pool_wq, &dm_pool_work);
}

/* A free block leaves, or joins, the free lists (and the removed count). */
static void dm_block_leave_free(struct dm_block *b)
{
	lockdep_assert_held(&dm_pool.lock);
	dm_pool.nr_free_blocks--;
	direct_map_account_pool(pageblock_nr_pages);
}

static void dm_block_join_free(struct dm_block *b)
{
	lockdep_assert_held(&dm_pool.lock);
	list_move_tail(&b->list, &dm_pool.free[b->nid]);
	b->state = DM_BLOCK_FREE;
	dm_pool.nr_free_blocks++;
	direct_map_account_pool(-(long)pageblock_nr_pages);
}

/*
 * Whether every page of the block is back.  A page that memory_failure()
 * keeps is never back: its block is never whole again, and unmovable.
 */
static bool dm_block_complete(struct dm_block *b)
{
	return b->nr_free == pageblock_nr_pages;
}

/* After pages came back: put the block where it now belongs. */
static bool dm_block_requeue(struct dm_block *b)
{
	lockdep_assert_held(&dm_pool.lock);

	if (b->state == DM_BLOCK_WORK || b->state == DM_BLOCK_PENDING)
		return false;
	if (dm_block_complete(b)) {
		/*
		 * Clean (given back unused), and room for it: free at once, for
		 * the next user.  The allocators check it for hardware poison.
		 */
		if (!b->poisoned && !dm_block_isolated(b) &&
		    bitmap_empty(dm_dirty_bits(b), pageblock_nr_pages) &&
		    !dm_pool.no_keep &&
		    dm_pool.nr_free_blocks < dm_pool_max_free_blocks) {
			dm_block_join_free(b);
			return false;
		}
		list_move_tail(&b->list, &dm_pool.work);
		b->state = DM_BLOCK_WORK;
		return true;
	}
	if (b->poisoned) {
		list_del_init(&b->list);
		b->state = DM_BLOCK_USED;
	} else if (b->state == DM_BLOCK_USED && b->nr_free) {
		list_add_tail(&b->list, &dm_pool.partial[b->nid]);
		b->state = DM_BLOCK_PARTIAL;
	}
	return false;
}

/* Pages come back to their block: @dirty if they need zeroing. */
static void dm_pool_put(struct page *page, unsigned int order, bool poisoned,
			bool dirty)
{
	unsigned long pfn = page_to_pfn(page), flags, i, off;
	unsigned long nr = 1UL << order;
	struct dm_block *b;
	bool kick;

	b = xa_load(&dm_blocks, pfn >> pageblock_order);
	if (WARN_ON_ONCE(!b)) {
		/* Out of the direct map, and not ours: leak it. */
		return;
	}
	off = pfn - b->pfn;

	spin_lock_irqsave(&dm_pool.lock, flags);
	for (i = off; i < off + nr; i++) {
		if (WARN_ON_ONCE(test_bit(i, dm_free_bits(b)))) {
			/* Freed twice: leave the block as it is. */
			spin_unlock_irqrestore(&dm_pool.lock, flags);
			return;
		}
	}
	bitmap_set(dm_free_bits(b), off, nr);
	if (dirty)
		bitmap_set(dm_dirty_bits(b), off, nr);
	b->nr_free += nr;
	if (poisoned)
		b->poisoned = true;
	dm_block_requeue(b);
	/* The worker zeroes what came back, soon: secrets do not linger. */
	kick = dirty || b->state == DM_BLOCK_WORK;
	spin_unlock_irqrestore(&dm_pool.lock, flags);

	if (kick)
		dm_pool_kick();
}

/*
 * Called by the page allocator's free path for a page of a pool block, in
 * any context but NMI, after the page's state has been reset as for any
 * freed page.  A page with hardware poison comes here too (@poisoned): the
 * pool counts it as back, and never hands it out or maps it again.
 */
void direct_map_pool_free(struct page *page, unsigned int order, bool poisoned)
{
	dm_pool_put(page, order, poisoned, !poisoned);
}

/**
 * direct_map_pool_block_pages - The number of pages in a block of the pool
 *
 * Return: the number of pages that direct_map_alloc_block() hands out (a
 * pageblock: 512 on x86-64), or 0 if the pool cannot be used on this kernel
 * (its direct map cannot be changed, or its pageblocks are larger than
 * 2 MiB): then the allocations fail with -EOPNOTSUPP.
 */
unsigned long direct_map_pool_block_pages(void)
{
	return dm_pool_usable() ? pageblock_nr_pages : 0;
}
EXPORT_SYMBOL_FOR_MODULES(direct_map_pool_block_pages, "kvm");

/**
 * direct_map_free_unused - Give back pages that were never used
 * @page: the first page, from direct_map_alloc_page() or
 *        direct_map_alloc_block()
 * @nr: the number of pages
 *
 * Give back pages that the caller has not written, nor let anyone else
 * reach, since the pool handed them out and the batch they came with was
 * flushed: e.g. pages that a memory cgroup refused.  They go back zeroed, as
 * they came, without the zeroing (and the TLB flush of its temporary
 * mappings) that a freed page costs; pages charged to a memory cgroup are
 * uncharged.  A page that someone else holds a speculative reference to is
 * freed the usual way instead, when that reference goes.
 *
 * Context: Process context.
 */
void direct_map_free_unused(struct page *page, unsigned long nr)
{
	unsigned long i;

	for (i = 0; i < nr; i++) {
		struct page *p = page + i;

		/* Not the pool's: still out of the direct map, leak it. */
		if (WARN_ON_ONCE(!direct_map_pool_page(p)))
			continue;
		/*
		 * Used after all, poisoned meanwhile, or held by someone else
		 * for a moment: freed the usual way, with its checks, and
		 * zeroed again by the worker.
		 */
		if (WARN_ON_ONCE(p->mapping || folio_mapped(page_folio(p)) ||
				 (p->flags.f & PAGE_FLAGS_CHECK_AT_FREE)) ||
		    PageHWPoison(p) || !page_ref_freeze(p, 1)) {
			put_page(p);
			continue;
		}
		mem_cgroup_uncharge(page_folio(p));
		p->flags.f &= ~PAGE_FLAGS_CHECK_AT_PREP;
		direct_map_pool_pre_free(p);
		dm_pool_put(p, 0, false, false);
	}
}
EXPORT_SYMBOL_FOR_MODULES(direct_map_free_unused, "kvm");

/**
 * direct_map_pool_wait - Wait for the pool to process the pages freed so far
 *
 * Wait until the pool's worker has zeroed the pages freed before the call,
 * and kept or released the pageblocks that came back whole: then the pages
 * are ready to be handed out without zeroing, and a whole free pageblock
 * without a removal.  For a caller that frees much memory and may ask for
 * it again soon, e.g. a truncation.
 *
 * Context: Process context; may sleep.  Holds no lock that a page-table
 * allocation may take (the worker maps released pageblocks again).
 */
void direct_map_pool_wait(void)
{
	might_sleep();
	flush_work(&dm_pool_work);
}
EXPORT_SYMBOL_FOR_MODULES(direct_map_pool_wait, "kvm");

/*
 * Called when the page allocator asks whether the pageblock of a pool page
 * can be isolated (for memory offlining or a contiguous allocation), under
 * the zone's lock.  A block that is complete, or free, can: the worker maps
 * it again and frees it into the isolated pageblock.  Any other is
 * unmovable.
 */
bool direct_map_pool_isolate(struct page *page)
{
	unsigned long pfn = page_to_pfn(page), flags;
	struct dm_block *b;
	bool movable = true;

	guard(rcu)();
	b = xa_load(&dm_blocks, pfn >> pageblock_order);
	/* Being released: its pages are on their way to the free lists. */
	if (!b)
		return true;

	/*
	 * Only a question, maybe a probe (pfn_range_valid_contig()), under the
	 * zone's lock: change nothing, wake nobody.  A free block is movable:
	 * the worker gives back the free blocks of isolated pageblocks when it
	 * runs, which the MEM_GOING_OFFLINE notifier makes it do, and the
	 * allocators, which claim a free block before they hand out any of it,
	 * look for the isolate bit under the zone's lock after the claim.  A
	 * block with pages in use, or claimed, is unmovable, and stays in use.
	 */
	spin_lock_irqsave(&dm_pool.lock, flags);
	movable = b->dying || b->state == DM_BLOCK_FREE ||
		  b->state == DM_BLOCK_WORK;
	spin_unlock_irqrestore(&dm_pool.lock, flags);
	return movable;
}

/* Mark the pageblock of a block as the pool's, or give it back. */
static void dm_block_mark(struct dm_block *b, bool pool)
{
	struct page *page = dm_block_page(b, 0);

	if (pool)
		set_pfnblock_bit(page, b->pfn, PB_direct_map_pool);
	else
		clear_pfnblock_bit(page, b->pfn, PB_direct_map_pool);
}

/*
 * Restore the block's pages and free them to the page allocator, zeroed,
 * except pages with hardware poison, which stay out of the direct map and
 * out of use.  The block is the caller's (the worker's, or
 * direct_map_pool_drain_isolated()'s): it is complete and on no list.
 */
static void dm_block_release(struct dm_block *b)
{
	struct page *first = dm_block_page(b, 0);
	bool poison = direct_map_has_hwpoison(first, pageblock_nr_pages);
	unsigned long i, released = 0;

	spin_lock_irq(&dm_pool.lock);
	b->dying = true;
	spin_unlock_irq(&dm_pool.lock);
	xa_erase(&dm_blocks, b->pfn >> pageblock_order);
	dm_block_mark(b, false);
	direct_map_restore(first, pageblock_nr_pages);

	for (i = 0; i < pageblock_nr_pages; i++) {
		struct page *page = dm_block_page(b, i);

		/* Poisoned, or held by memory_failure(): never freed here. */
		if (PageHWPoison(page) || !test_bit(i, dm_free_bits(b)))
			continue;
		/* A page next to a poisoned one whose restore failed. */
		if (poison && !direct_map_page_present(page))
			continue;
		if (test_bit(i, dm_dirty_bits(b)))
			clear_highpage(page);
		/* Its free hooks ran when it came to the pool: as allocated. */
		direct_map_pool_pre_release(page);
		free_frozen_pages(page, 0);
		released++;
	}
	count_vm_events(DIRECT_MAP_POOL_RELEASED, released);
	kfree_rcu(b, rcu);
}

/*
 * Called by alloc_contig_range() once the pageblocks of [@start_pfn,
 * @end_pfn) are isolated, so that the free blocks of the pool there are free
 * in the page allocator when it tests the range.  Isolation found each such
 * block free, the worker's, or being released; one an allocator claimed
 * just before the isolate bit was set goes to the worker too.  Free blocks
 * are released here, in the caller's context (a clean block needs no
 * allocation); for the others, wait for the worker, and look again once.
 * Offlining waits for the worker from its MEM_GOING_OFFLINE notifier.
 *
 * Context: Process context; may sleep.
 */
void direct_map_pool_drain_isolated(unsigned long start_pfn,
				    unsigned long end_pfn)
{
	struct dm_block *b;
	struct page *page;
	unsigned long pfn;
	bool wait;
	int pass;

	if (!static_branch_unlikely(&direct_map_pool_used))
		return;
	might_sleep();

	for (pass = 0; pass < 2; pass++) {
		wait = false;
		for (pfn = pageblock_start_pfn(start_pfn); pfn < end_pfn;
		     pfn += pageblock_nr_pages) {
			page = pfn_to_online_page(pfn);
			if (!page || !direct_map_pool_page(page))
				continue;
			/* The spinlock is the RCU section for xa_load(). */
			spin_lock_irq(&dm_pool.lock);
			b = xa_load(&dm_blocks, pfn >> pageblock_order);
			if (b && b->state == DM_BLOCK_FREE &&
			    dm_block_isolated(b)) {
				dm_block_leave_free(b);
				list_del_init(&b->list);
				b->state = DM_BLOCK_WORK;
			} else {
				wait = true;
				b = NULL;
			}
			spin_unlock_irq(&dm_pool.lock);
			if (b) {
				dm_block_release(b);
				cond_resched();
			}
		}
		if (!wait)
			return;
		dm_pool_kick();
		flush_work(&dm_pool_work);
	}
}

/* Zero the pages of @bits of a block through temporary mappings. */
static int dm_block_zero(struct direct_map_batch *batch, struct dm_block *b,
			 unsigned long *bits)
{
	unsigned long start, end;
	int ret;

	for_each_set_bitrange(start, end, bits, pageblock_nr_pages) {
		ret = direct_map_batch_zero(batch, dm_block_page(b, start),
					    end - start);
		if (ret)
			return ret;
	}
	return 0;
}

/* Take a free block for release, if the shrinker or hibernation asks. */
static struct dm_block *dm_pool_take_free_to_release(void)
{
	struct dm_block *b;
	int nid;

	guard(spinlock_irq)(&dm_pool.lock);
	for_each_node(nid) {
		list_for_each_entry(b, &dm_pool.free[nid], list) {
			if (!dm_pool.nr_to_release && !dm_pool.no_keep &&
			    dm_pool.nr_free_blocks <= dm_pool_max_free_blocks &&
			    !dm_block_isolated(b))
				continue;
			dm_block_leave_free(b);
			list_del_init(&b->list);
			b->state = DM_BLOCK_WORK;
			if (dm_pool.nr_to_release)
				dm_pool.nr_to_release--;
			return b;
		}
	}
	dm_pool.nr_to_release = 0;
	return NULL;
}

/*
 * Take the dirty free pages of a block that still has pages in use, to zero
 * them; the allocators do not hand out pages the worker holds.
 */
static struct dm_block *dm_pool_take_dirty(unsigned long *bits)
{
	struct dm_block *b;
	int nid;

	guard(spinlock_irq)(&dm_pool.lock);
	for_each_node(nid) {
		list_for_each_entry(b, &dm_pool.partial[nid], list) {
			unsigned long *dirty = dm_dirty_bits(b);

			if (bitmap_empty(dirty, pageblock_nr_pages))
				continue;
			bitmap_copy(bits, dirty, pageblock_nr_pages);
			bitmap_andnot(dm_free_bits(b), dm_free_bits(b), bits,
				      pageblock_nr_pages);
			bitmap_zero(dirty, pageblock_nr_pages);
			b->nr_zeroing = bitmap_weight(bits, pageblock_nr_pages);
			b->nr_free -= b->nr_zeroing;
			if (!b->nr_free) {
				list_del_init(&b->list);
				b->state = DM_BLOCK_USED;
			}
			return b;
		}
	}
	return NULL;
}

/*
 * Give back the pages dm_pool_take_dirty() took; @ret says if they are
 * zeroed (0), or if one has hardware poison (-EHWPOISON): then the pool hands
 * out no other page of the block.
 */
static void dm_pool_put_zeroed(struct dm_block *b, unsigned long *bits,
			       int ret)
{
	bool zeroed = !ret;

	guard(spinlock_irq)(&dm_pool.lock);
	if (ret == -EHWPOISON)
		b->poisoned = true;
	bitmap_or(dm_free_bits(b), dm_free_bits(b), bits, pageblock_nr_pages);
	if (!zeroed)
		bitmap_or(dm_dirty_bits(b), dm_dirty_bits(b), bits,
			  pageblock_nr_pages);
	b->nr_free += b->nr_zeroing;
	b->nr_zeroing = 0;
	dm_block_requeue(b);
}

/*
 * Process context, outside reclaim: zero the pages that came back; keep the
 * blocks that came back whole, or restore and free them; then release free
 * blocks over the limit, or asked for by the shrinker or hibernation.
 */
static void dm_pool_worker(struct work_struct *work)
{
	unsigned long *bits = bitmap_alloc(pageblock_nr_pages, GFP_KERNEL);
	struct direct_map_batch batch;
	struct dm_block *b, *tmp;
	LIST_HEAD(blocks);
	LIST_HEAD(keep);
	LIST_HEAD(zeroed);
	int ret;

	direct_map_batch_init(&batch);

	/* Pages of blocks in use; without memory for the bitmap, later. */
	while (bits && (b = dm_pool_take_dirty(bits))) {
		ret = dm_block_zero(&batch, b, bits);
		direct_map_batch_flush(&batch);
		/* A poisoned block leaves the partial lists: go on. */
		dm_pool_put_zeroed(b, bits, ret);
		if (ret && ret != -EHWPOISON)
			break;
		cond_resched();
	}
	bitmap_free(bits);

	spin_lock_irq(&dm_pool.lock);
	list_splice_init(&dm_pool.work, &blocks);
	spin_unlock_irq(&dm_pool.lock);

	list_for_each_entry_safe(b, tmp, &blocks, list) {
		list_del_init(&b->list);
		if (b->poisoned || dm_block_isolated(b) ||
		    b->nr_free != pageblock_nr_pages ||
		    direct_map_has_hwpoison(dm_block_page(b, 0), pageblock_nr_pages) ||
		    READ_ONCE(dm_pool.no_keep) ||
		    READ_ONCE(dm_pool.nr_free_blocks) >= dm_pool_max_free_blocks ||
		    dm_block_zero(&batch, b, dm_dirty_bits(b))) {
			dm_block_release(b);
			continue;
		}
		bitmap_zero(dm_dirty_bits(b), pageblock_nr_pages);
		list_add_tail(&b->list, &keep);
	}
	/* The temporary mappings are gone from every TLB before reuse. */
	direct_map_batch_flush(&batch);

	spin_lock_irq(&dm_pool.lock);
	list_for_each_entry_safe(b, tmp, &keep, list)
		dm_block_join_free(b);
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

	/*
	 * Never movable, never highmem, never charged: the pages stay where
	 * they are, and are charged when they enter a page cache.
	 */
	gfp &= ~(__GFP_COMP | __GFP_MOVABLE | __GFP_HIGHMEM | __GFP_ACCOUNT);

	b = kzalloc(sizeof(*b) + bits, gfp & GFP_RECLAIM_MASK);
	if (!b)
		return ERR_PTR(-ENOMEM);

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
	if (!static_key_enabled(&direct_map_pool_used))
		static_branch_enable(&direct_map_pool_used);
	dm_block_mark(b, true);
	return b;
free:
	__free_pages(page, pageblock_order);
	kfree(b);
	return ERR_PTR(ret);
}

/* A new block: on @nid if it has one, else anywhere. */
static struct dm_block *dm_block_new_near(struct direct_map_batch *batch,
					  gfp_t gfp, int nid, bool any)
{
	if (!any)
		return dm_block_new(batch, gfp | __GFP_THISNODE, nid);
	return dm_block_new(batch, gfp, nid);
}

/*
 * @nid if it is a node with memory, else the node the task's memory policy
 * picks, as alloc_pages() would.  A node that loses its memory after this
 * only makes the __GFP_THISNODE attempt of dm_block_new_near() fail.
 */
static int dm_pool_node(int nid)
{
	if (nid >= 0 && nid < MAX_NUMNODES && node_state(nid, N_MEMORY))
		return nid;
#ifdef CONFIG_NUMA
	return mempolicy_slab_node();
#else
	return numa_mem_id();
#endif
}

/*
 * Take the first free block of @nid off its list, for the caller alone: in
 * DM_BLOCK_USED, with every page still free, the isolation hook calls it
 * unmovable from now on.
 */
static struct dm_block *dm_pool_claim_free(int nid)
{
	struct dm_block *b;

	lockdep_assert_held(&dm_pool.lock);
	b = list_first_entry_or_null(&dm_pool.free[nid], struct dm_block, list);
	if (b) {
		dm_block_leave_free(b);
		list_del_init(&b->list);
		b->state = DM_BLOCK_USED;
	}
	return b;
}

/*
 * Whether the pageblock of a block just claimed is isolated.
 * set_migratetype_isolate() asks direct_map_pool_isolate() and sets the
 * isolate bit in one section under the zone's lock.  Taking that lock
 * after the claim orders this check after any isolation that found the
 * block free (its bit is set then), and any isolation after it finds the
 * block in use and fails.  Without it the pool could hand out a block of
 * a pageblock that offlining has just isolated, and offlining would retry
 * on pages that never come back.
 */
static bool dm_block_isolated_after_claim(struct dm_block *b)
{
	struct zone *zone = page_zone(dm_block_page(b, 0));
	bool isolated;

	lockdep_assert_irqs_enabled();
	lockdep_assert_not_held(&dm_pool.lock);
	spin_lock_irq(&zone->lock);
	isolated = dm_block_isolated(b);
	spin_unlock_irq(&zone->lock);
	return isolated;
}

/*
 * Claim a free block of @nid whose pageblock is not isolated and has no
 * hardware poison.  The others go to the worker, which releases them; set
 * *@kick then.  Drops and takes dm_pool.lock again.
 */
static struct dm_block *dm_pool_claim_usable(int nid, bool *kick)
{
	struct dm_block *b;
	bool poison, isolated;

	lockdep_assert_held(&dm_pool.lock);
	while ((b = dm_pool_claim_free(nid))) {
		spin_unlock_irq(&dm_pool.lock);
		poison = direct_map_has_hwpoison(dm_block_page(b, 0),
						 pageblock_nr_pages);
		isolated = dm_block_isolated_after_claim(b);
		spin_lock_irq(&dm_pool.lock);
		if (!poison && !isolated)
			return b;
		/* Complete, and poisoned or isolated: the worker's. */
		b->poisoned |= poison;
		*kick |= dm_block_requeue(b);
	}
	return NULL;
}

/*
 * Take a clean free page of a block (or, failing that, a dirty one, which
 * the caller zeroes).  Return its index, or -1 if the block has none to
 * hand out, in which case the block has been taken off its list (and
 * given to the worker if it is complete).  The block
 * is partial, or claimed (a block whose pageblock can be isolated is free,
 * or the worker's: never one of these).
 */
static long dm_block_take_page(struct dm_block *b, bool *dirty, bool *kick)
{
	unsigned long *free = dm_free_bits(b), *dbits = dm_dirty_bits(b);
	unsigned long i = pageblock_nr_pages, j;

	lockdep_assert_held(&dm_pool.lock);

	if (!b->poisoned) {
		for_each_set_bit(j, free, pageblock_nr_pages) {
			if (PageHWPoison(dm_block_page(b, j))) {
				b->poisoned = true;
				break;
			}
			if (i == pageblock_nr_pages)
				i = j;
			if (!test_bit(j, dbits)) {
				i = j;
				break;
			}
		}
	}
	if (b->poisoned || i == pageblock_nr_pages) {
		/* Nothing to hand out: the worker releases it once complete. */
		WARN_ON_ONCE(!b->poisoned && b->nr_free);
		list_del_init(&b->list);
		b->state = DM_BLOCK_USED;
		if (dm_block_complete(b)) {
			list_add_tail(&b->list, &dm_pool.work);
			b->state = DM_BLOCK_WORK;
			*kick = true;
		}
		return -1;
	}

	__clear_bit(i, free);
	*dirty = __test_and_clear_bit(i, dbits);
	b->nr_free--;
	if (!b->nr_free) {
		list_del_init(&b->list);
		b->state = DM_BLOCK_USED;
	} else if (b->state == DM_BLOCK_USED) {
		/* Claimed: its other pages are for anyone now. */
		dm_block_requeue(b);
	}
	return i;
}

/*
 * Whether the pool may hand out memory of node @n to the current task, when
 * it looks at @nid, or at any node if @any: only where the task's cpuset
 * allows, as the page allocator does for its callers' GFP_USER allocations.
 * Read without read_mems_allowed_begin(): a rebind widens the mask before
 * it narrows it, so a stale answer either makes the pool take a new block,
 * which the page allocator places, or hands out a page of a node that the
 * cpuset is just leaving, as the page allocator may during a rebind.
 */
static bool dm_pool_may_use(int n, int nid, bool any)
{
	if (!any && n != nid)
		return false;
	return !cpusets_enabled() || node_isset(n, cpuset_current_mems_allowed);
}

/* A page from the blocks of @nid, or of any node if @any. */
static struct dm_block *dm_pool_take_page(int nid, bool any, long *i,
					  bool *dirty)
{
	struct dm_block *b = NULL;
	bool kick = false;
	int n;

	spin_lock_irq(&dm_pool.lock);
	for_each_node(n) {
		if (!dm_pool_may_use(n, nid, any))
			continue;
		for (;;) {
			b = list_first_entry_or_null(&dm_pool.partial[n],
						     struct dm_block, list);
			if (!b)
				b = dm_pool_claim_usable(n, &kick);
			if (!b)
				break;
			*i = dm_block_take_page(b, dirty, &kick);
			if (*i >= 0)
				goto out;
		}
	}
	b = NULL;
out:
	spin_unlock_irq(&dm_pool.lock);
	if (kick)
		dm_pool_kick();
	return b;
}

/* A free page on @nid of a block pending in @batch: removed through it, clean. */
static struct dm_block *dm_pool_take_pending(struct direct_map_batch *batch,
					     int nid, long *i)
{
	struct dm_block *b;
	unsigned long j;

	guard(spinlock_irq)(&dm_pool.lock);
	for (b = batch->pool_pending; b; b = b->next_pending) {
		if (b->poisoned || b->nid != nid)
			continue;
		for_each_set_bit(j, dm_free_bits(b), pageblock_nr_pages) {
			if (PageHWPoison(dm_block_page(b, j))) {
				b->poisoned = true;
				break;
			}
			/* Freed back already: the worker zeroes it. */
			if (test_bit(j, dm_dirty_bits(b)))
				continue;
			__clear_bit(j, dm_free_bits(b));
			b->nr_free--;
			*i = j;
			return b;
		}
	}
	return NULL;
}

/*
 * Called by direct_map_batch_flush() after the flush: the blocks removed
 * through @batch for single pages are unreachable on every CPU now, and the
 * pool may hand their free pages to anyone.
 */
void direct_map_pool_publish(struct direct_map_batch *batch)
{
	struct dm_block *b = batch->pool_pending, *next;
	unsigned long flags;
	bool kick = false;

	for (; b; b = next) {
		spin_lock_irqsave(&dm_pool.lock, flags);
		next = b->next_pending;
		b->next_pending = NULL;
		b->state = DM_BLOCK_USED;
		kick |= dm_block_requeue(b);
		spin_unlock_irqrestore(&dm_pool.lock, flags);
	}
	batch->pool_pending = NULL;
	if (kick)
		dm_pool_kick();
}

/**
 * direct_map_alloc_page - Allocate a page out of the direct map
 * @batch: the batch whose flush the caller issues before anyone writes the
 *         page
 * @gfp: allocation flags, for a new block and the pool's bookkeeping
 * @nid: preferred node, or NUMA_NO_NODE (or a node without memory) for
 *       the one the task's memory policy picks
 * @pagep: the page, on success
 *
 * Hand out a free page of a pageblock that the pool has removed from the
 * direct map, or remove a new pageblock and hand out its first page.  The
 * pool looks at the blocks of @nid, then makes a new block there, then
 * looks at the other nodes' blocks, then makes a new block anywhere; it
 * skips the blocks of nodes that the task's cpuset does not allow.  The
 * page is zeroed, has a reference count of one, and is the caller's like a
 * page from alloc_page(): when it is freed, through any path, it goes back
 * to the pool, still out of the direct map.  It must be freed, never
 * restored.
 *
 * The page may have been zeroed, or its block removed, through @batch: the
 * caller calls direct_map_batch_flush() before the page's new user (or
 * anyone else) can write to it.
 *
 * Context: Process context; may sleep.
 * Return: 0 on success; -ENOMEM if no page could be had (a new block could
 * not be allocated, removed or zeroed); -EOPNOTSUPP if the kernel cannot
 * change its direct map, or its pageblocks are larger than 2 MiB.  On error
 * nothing changed for the caller.
 */
int direct_map_alloc_page(struct direct_map_batch *batch, gfp_t gfp, int nid,
			  struct page **pagep)
{
	struct dm_block *b;
	bool dirty = false;
	int pass, ret;
	long i = -1;

	might_sleep();

	if (!dm_pool_usable())
		return -EOPNOTSUPP;
	nid = dm_pool_node(nid);

	/* A block this batch removed, for this caller only until the flush. */
	b = dm_pool_take_pending(batch, nid, &i);
	if (b)
		goto out;

	for (pass = 0; pass < 2; pass++) {
		b = dm_pool_take_page(nid, pass, &i, &dirty);
		if (b)
			break;
		b = dm_block_new_near(batch, gfp, nid, pass);
		if (IS_ERR(b))
			continue;
		/*
		 * Keep the first page; the others are free and zeroed, but
		 * other CPUs may still reach them through the direct map until
		 * the batch is flushed: until then only this batch takes them.
		 */
		for (i = 1; i < pageblock_nr_pages; i++) {
			direct_map_pool_pre_free(dm_block_page(b, i));
			set_page_count(dm_block_page(b, i), 0);
		}
		spin_lock_irq(&dm_pool.lock);
		bitmap_set(dm_free_bits(b), 1, pageblock_nr_pages - 1);
		b->nr_free = pageblock_nr_pages - 1;
		b->state = DM_BLOCK_PENDING;
		b->next_pending = batch->pool_pending;
		batch->pool_pending = b;
		spin_unlock_irq(&dm_pool.lock);
		*pagep = dm_block_page(b, 0);
		return 0;
	}
	if (IS_ERR(b))
		return PTR_ERR(b);

	if (dirty) {
		ret = direct_map_batch_zero(batch, dm_block_page(b, i), 1);
		if (ret) {
			/* Still without a reference: give it back, dirty. */
			direct_map_pool_free(dm_block_page(b, i), 0, false);
			return ret;
		}
	}
out:
	direct_map_pool_post_alloc(dm_block_page(b, i), gfp);
	count_vm_event(DIRECT_MAP_POOL_REUSED);
	*pagep = dm_block_page(b, i);
	return 0;
}
EXPORT_SYMBOL_FOR_MODULES(direct_map_alloc_page, "kvm");

/* A free block of @nid, or of any node if @any. */
static struct dm_block *dm_pool_take_block(int nid, bool any)
{
	struct dm_block *b = NULL;
	bool kick = false;
	int n;

	spin_lock_irq(&dm_pool.lock);
	for_each_node(n) {
		if (!dm_pool_may_use(n, nid, any))
			continue;
		b = dm_pool_claim_usable(n, &kick);
		if (b) {
			bitmap_zero(dm_free_bits(b), pageblock_nr_pages);
			b->nr_free = 0;
			break;
		}
	}
	spin_unlock_irq(&dm_pool.lock);
	if (kick)
		dm_pool_kick();
	return b;
}

/**
 * direct_map_alloc_block - Allocate a pageblock out of the direct map
 * @batch: the batch whose flush the caller issues before anyone writes the
 *         pages
 * @gfp: allocation flags for a new block
 * @nid: preferred node, or NUMA_NO_NODE (or a node without memory) for
 *       the one the task's memory policy picks
 * @pagep: the first page, on success
 *
 * Hand out a whole pageblock (pageblock_nr_pages pages, 2 MiB on x86-64)
 * out of the direct map: one the pool keeps, zeroed, without a removal or a
 * flush, or a new one removed through @batch, on @nid first as
 * direct_map_alloc_page() does.  Each page is zeroed, has a reference count
 * of one, and goes back to the pool when it is freed.
 *
 * Context: Process context; may sleep.
 * Return: 0 on success; -ENOMEM or -EOPNOTSUPP as direct_map_alloc_page().
 */
int direct_map_alloc_block(struct direct_map_batch *batch, gfp_t gfp, int nid,
			   struct page **pagep)
{
	struct dm_block *b;
	unsigned long i;
	int pass;

	might_sleep();

	if (!dm_pool_usable())
		return -EOPNOTSUPP;
	nid = dm_pool_node(nid);

	for (pass = 0; pass < 2; pass++) {
		b = dm_pool_take_block(nid, pass);
		if (b) {
			for (i = 0; i < pageblock_nr_pages; i++)
				direct_map_pool_post_alloc(dm_block_page(b, i),
							   gfp);
			count_vm_events(DIRECT_MAP_POOL_REUSED,
					pageblock_nr_pages);
			break;
		}
		b = dm_block_new_near(batch, gfp, nid, pass);
		if (!IS_ERR(b))
			break;
	}
	if (IS_ERR(b))
		return PTR_ERR(b);
	*pagep = dm_block_page(b, 0);
	return 0;
}
EXPORT_SYMBOL_FOR_MODULES(direct_map_alloc_block, "kvm");

static unsigned long dm_pool_count(struct shrinker *s,
				   struct shrink_control *sc)
{
	return READ_ONCE(dm_pool.nr_free_blocks) * pageblock_nr_pages;
}

/*
 * Reclaim context: only ask the worker.  Restoring takes init_mm's mmap lock
 * for the collapse, which a task that allocates page tables may hold.
 */
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

/* Offlining: wait for the worker to free the blocks isolation gave back. */
static int dm_pool_memory_callback(struct notifier_block *nb,
				   unsigned long action, void *arg)
{
	if (action == MEM_GOING_OFFLINE) {
		dm_pool_kick();
		flush_work(&dm_pool_work);
	}
	return NOTIFY_OK;
}

/* Hibernation: no free block may stay out of the direct map. */
static int dm_pool_pm_callback(struct notifier_block *nb, unsigned long action,
			       void *arg)
{
	switch (action) {
	case PM_HIBERNATION_PREPARE:
		WRITE_ONCE(dm_pool.no_keep, true);
		dm_pool_kick();
		flush_work(&dm_pool_work);
		break;
	case PM_POST_HIBERNATION:
		WRITE_ONCE(dm_pool.no_keep, false);
		break;
	}
	return NOTIFY_OK;
}

static int dm_pool_set_max(const char *val, const struct kernel_param *kp)
{
	int ret = param_set_uint(val, kp);

	/* A lower limit is in effect when the write returns. */
	if (!ret && dm_pool.partial) {
		dm_pool_kick();
		flush_work(&dm_pool_work);
	}
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
	struct list_head *partial, *free;
	struct shrinker *shrinker;
	int nid;

	dm_pool_wq = alloc_workqueue("direct_map_pool",
				     WQ_UNBOUND | WQ_MEM_RECLAIM, 0);
	partial = kcalloc(nr_node_ids, sizeof(*partial), GFP_KERNEL);
	free = kcalloc(nr_node_ids, sizeof(*free), GFP_KERNEL);
	if (!dm_pool_wq || !partial || !free) {
		/* The allocators then say -EOPNOTSUPP; users fall back. */
		if (dm_pool_wq)
			destroy_workqueue(dm_pool_wq);
		dm_pool_wq = NULL;
		kfree(partial);
		kfree(free);
		return -ENOMEM;
	}
	for (nid = 0; nid < nr_node_ids; nid++) {
		INIT_LIST_HEAD(&partial[nid]);
		INIT_LIST_HEAD(&free[nid]);
	}
	dm_pool.partial = partial;
	dm_pool.free = free;

	shrinker = shrinker_alloc(0, "direct_map_pool");
	if (shrinker) {
		shrinker->count_objects = dm_pool_count;
		shrinker->scan_objects = dm_pool_scan;
		shrinker_register(shrinker);
	}
	hotplug_memory_notifier(dm_pool_memory_callback, DEFAULT_CALLBACK_PRI);
	pm_notifier(dm_pool_pm_callback, 0);
	return 0;
}
core_initcall(dm_pool_init);

#ifdef CONFIG_DIRECT_MAP_POOL_KUNIT_TEST
#include "direct_map_pool_kunit.c"
#endif
