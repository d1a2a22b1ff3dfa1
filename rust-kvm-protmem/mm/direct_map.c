// SPDX-License-Identifier: GPL-2.0
/*
 * Removing memory from the kernel's direct map.
 *
 * Memory that the kernel must not reach through its own mappings, such as
 * the private memory of a KVM guest, is removed from the direct map while
 * it is in use and restored before it is freed.  A user that does it
 * through this file gets these rules:
 *
 * - Removal can fail.  A large (1G or 2M) mapping that the range covers
 *   only in part must be split, and the split allocates page tables.  A
 *   failed removal changes nothing: what it already removed is restored
 *   before the error is returned.
 *
 * - Removal is followed by a TLB shootdown on all CPUs.  The batch form
 *   lets a caller remove several ranges and pay for one flush.
 *
 * - Restoring cannot fail for a range that was removed with the same
 *   boundaries, and gives large mappings back where the architecture can
 *   collapse them (set_direct_map_default_collapse()).
 *
 * The range is changed in steps that never cross a PMD boundary.  Within
 * one step the architecture allocates (splits) before it changes any entry,
 * so a failing step has changed nothing, and restoring the earlier steps
 * with the same boundaries needs no allocation.
 *
 * Removed pages can also go from one user to the next without coming back:
 * direct_map_batch_zero() clears them through a temporary mapping.  The
 * direct-map pool (mm/direct_map_pool.c) hands such pages out.
 */

#include <kunit/static_stub.h>
#include <kunit/visibility.h>
#include <linux/direct_map.h>
#include <linux/fault-inject.h>
#include <linux/mm.h>
#include <linux/pgtable.h>
#include <linux/set_memory.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
#include <linux/vmstat.h>
#include <asm/tlbflush.h>

#include "internal.h"

/*
 * The API is exported to the modules that use it: KVM, and its KUnit test
 * (mm/direct_map_kunit.c) when that is a module.
 */
#if IS_MODULE(CONFIG_DIRECT_MAP_KUNIT_TEST)
#define DIRECT_MAP_USERS	"kvm,direct_map_kunit"
#else
#define DIRECT_MAP_USERS	"kvm"
#endif

/* Pages out of the direct map now, for hibernation_available(). */
static atomic_long_t direct_map_nr_removed;

/**
 * direct_map_removal_active - Whether any page is out of the direct map
 *
 * Hibernation is refused while this is true: the image would be made
 * through the direct map, or would write the removed memory to disk.
 *
 * Return: true if pages removed by this API have not all been restored.
 */
bool direct_map_removal_active(void)
{
	return atomic_long_read(&direct_map_nr_removed) > 0;
}
EXPORT_SYMBOL_IF_KUNIT(direct_map_removal_active);

/*
 * The direct-map pool's free blocks do not count: it gives them back before
 * hibernation (mm/direct_map_pool.c).
 */
void direct_map_account_pool(long nr)
{
	atomic_long_add(nr, &direct_map_nr_removed);
}

#ifdef CONFIG_FAIL_DIRECT_MAP
static DECLARE_FAULT_ATTR(fail_direct_map);

static int __init setup_fail_direct_map(char *str)
{
	return setup_fault_attr(&fail_direct_map, str);
}
__setup("fail_direct_map=", setup_fail_direct_map);

static int __init fail_direct_map_debugfs(void)
{
	return PTR_ERR_OR_ZERO(fault_create_debugfs_attr("fail_direct_map", NULL,
							 &fail_direct_map));
}
late_initcall(fail_direct_map_debugfs);

#endif /* CONFIG_FAIL_DIRECT_MAP */

/*
 * Fail a removal step as a split that cannot allocate would: from the
 * fail_direct_map fault point, or from a KUnit test's static stub (which
 * sees only the calls of the test's own task).
 */
VISIBLE_IF_KUNIT bool direct_map_should_fail(unsigned long nr)
{
	KUNIT_STATIC_STUB_REDIRECT(direct_map_should_fail, nr);
#ifdef CONFIG_FAIL_DIRECT_MAP
	return should_fail(&fail_direct_map, nr << PAGE_SHIFT);
#else
	return false;
#endif
}
EXPORT_SYMBOL_IF_KUNIT(direct_map_should_fail);

#if IS_ENABLED(CONFIG_DIRECT_MAP_KUNIT_TEST)
/* The count behind direct_map_removal_active(), for the KUnit test. */
long direct_map_nr_removed_pages(void)
{
	return atomic_long_read(&direct_map_nr_removed);
}
EXPORT_SYMBOL_IF_KUNIT(direct_map_nr_removed_pages);
#endif

/* Pages from @pfn up to the next PMD boundary, at most @left. */
static unsigned long direct_map_step(unsigned long pfn, unsigned long left)
{
	return min(left, ALIGN(pfn + 1, PTRS_PER_PMD) - pfn);
}

static void __direct_map_restore(unsigned long pfn, unsigned long nr)
{
	unsigned long done, n;

	for (done = 0; done < nr; done += n) {
		n = direct_map_step(pfn + done, nr - done);
		/*
		 * Cannot fail: these steps were removed with the same
		 * boundaries, so any split they need has been done.
		 */
		WARN_ON_ONCE(set_direct_map_default_collapse(pfn_to_page(pfn + done), n));
	}
}

/* Whether any of @nr pages from @page has hardware poison. */
static bool direct_map_poisoned(struct page *page, unsigned long nr)
{
	unsigned long i;

	for (i = 0; i < nr; i++)
		if (PageHWPoison(page + i))
			return true;
	return false;
}

/*
 * Restore one step of a range being restored.  A page with hardware poison
 * is never mapped again: memory_failure() may have unmapped it already
 * (set_mce_nospec()), and any access, even a speculative one, would consume
 * the poison.  The runs of other pages in such a step are restored one by
 * one, which splits the step's large mapping; a run whose split fails (an
 * order-0 page-table allocation) stays removed.  Return the number of pages
 * left removed.
 */
static unsigned long direct_map_restore_step(unsigned long pfn,
					     unsigned long n)
{
	unsigned long i = 0, run, left = 0;

	if (!direct_map_poisoned(pfn_to_page(pfn), n)) {
		/*
		 * Cannot fail: the step was removed with the same boundaries,
		 * so any split it needs has been done.
		 */
		WARN_ON_ONCE(set_direct_map_default_collapse(pfn_to_page(pfn), n));
		return 0;
	}

	while (i < n) {
		if (PageHWPoison(pfn_to_page(pfn + i))) {
			left++;
			i++;
			continue;
		}
		for (run = 1; i + run < n; run++)
			if (PageHWPoison(pfn_to_page(pfn + i + run)))
				break;
		if (set_direct_map_default_collapse(pfn_to_page(pfn + i), run)) {
			pr_warn_ratelimited("direct_map: pfns %#lx-%#lx next to a poisoned page stay removed\n",
					    pfn + i, pfn + i + run - 1);
			left += run;
		}
		i += run;
	}
	return left;
}

/**
 * direct_map_page_present - Whether a page is in the direct map
 * @page: the page
 *
 * After direct_map_restore() of a range with hardware poison in it
 * (direct_map_has_hwpoison()), a poisoned page, or rarely one next to it
 * whose restore failed, is still out of the direct map.  The caller must
 * not touch such a page.  It may drop its reference to a poisoned one (the
 * page allocator never hands out a poisoned page); it keeps any other, out
 * of use for good.
 *
 * Context: Process context; may sleep (the walk of the direct map holds
 * init_mm's mmap lock, so that no collapse frees a page table under it).
 * Return: true if the kernel can access @page through the direct map.
 */
bool direct_map_page_present(struct page *page)
{
	bool present;

	might_sleep();

	if (PageHighMem(page))
		return true;

	mmap_read_lock(&init_mm);
	present = kernel_page_present(page);
	mmap_read_unlock(&init_mm);
	return present;
}
EXPORT_SYMBOL_FOR_MODULES(direct_map_page_present, DIRECT_MAP_USERS);

/**
 * direct_map_vmap_page - Map a page that is out of the direct map
 * @page: the page; the caller holds a reference to it until
 *        direct_map_vunmap_page() returns
 *
 * Give the kernel a mapping of @page, whose direct-map entry may be
 * removed, in the vmalloc area.  No other address of the page is used, so
 * the page's direct-map entry stays as it is.
 *
 * Context: Process context; may sleep.
 * Return: the address of the page, or NULL when out of memory.
 */
void *direct_map_vmap_page(struct page *page)
{
	return vmap(&page, 1, VM_MAP, PAGE_KERNEL);
}
EXPORT_SYMBOL_FOR_MODULES(direct_map_vmap_page, DIRECT_MAP_USERS);

/**
 * direct_map_vunmap_page - Take down a mapping from direct_map_vmap_page()
 * @addr: the address direct_map_vmap_page() returned
 *
 * The mapping is cleared, but, as for any vunmap(), CPUs may keep TLB entries
 * for it until the vmalloc area is purged: the caller keeps its reference to
 * the page until direct_map_flush_aliases() has returned, and only then may
 * the page be freed (and handed to another user of the direct-map pool).
 * Without a flush of its own, taking a mapping down costs no IPI.
 *
 * Context: Process context; may sleep.
 */
void direct_map_vunmap_page(void *addr)
{
	vunmap(addr);
}
EXPORT_SYMBOL_FOR_MODULES(direct_map_vunmap_page, DIRECT_MAP_USERS);

/**
 * direct_map_flush_aliases - Flush the mappings taken down so far
 *
 * Purge the vmalloc areas that direct_map_vunmap_page() (or any vunmap())
 * left, with one TLB flush for all of them: when this returns, no CPU can
 * reach a page through a mapping taken down before the call.
 *
 * Context: Process context; may sleep.
 */
void direct_map_flush_aliases(void)
{
	vm_unmap_aliases();
}
EXPORT_SYMBOL_FOR_MODULES(direct_map_flush_aliases, DIRECT_MAP_USERS);

/**
 * direct_map_has_hwpoison - Whether removed pages have hardware poison
 * @page: first page of a physically contiguous range
 * @nr: number of pages in the range
 *
 * A user that keeps removed pages for reuse checks them before it hands
 * them to the next user: a poisoned page must be neither zeroed nor reused.
 *
 * Context: Any context.
 * Return: true if any of the pages has hardware poison.
 */
bool direct_map_has_hwpoison(struct page *page, unsigned long nr)
{
	return direct_map_poisoned(page, nr);
}
EXPORT_SYMBOL_FOR_MODULES(direct_map_has_hwpoison, DIRECT_MAP_USERS);

/**
 * direct_map_batch_remove - Remove pages from the direct map, flush later
 * @batch: the batch that will flush the TLB for this range
 * @page: first page of a physically contiguous range
 * @nr: number of pages in the range
 *
 * Make @nr pages from @page not present in the direct map.  Either all of
 * them are removed, or none is.  The caller must call
 * direct_map_batch_flush() before it relies on the pages being unreachable,
 * and direct_map_restore() on the same range before it frees the pages.
 * The large mappings the removal splits are added to @batch->nr_splits.
 *
 * Context: Process context; may sleep (splitting allocates).  The caller
 * must own the pages and keep anyone else from changing their direct
 * mapping.
 * Return: 0 on success; -EINVAL for an empty or highmem range; -EOPNOTSUPP
 * when this kernel cannot change its direct map (can_set_direct_map() is
 * false); -ENOMEM when a large mapping had to be split and page tables could
 * not be allocated.  On error nothing was removed.
 */
int direct_map_batch_remove(struct direct_map_batch *batch, struct page *page,
			    unsigned long nr)
{
	unsigned long pfn = page_to_pfn(page);
	unsigned long addr, done, n, splits = 0;
	unsigned int n_splits;
	int ret = 0;

	might_sleep();

	if (!can_set_direct_map())
		return -EOPNOTSUPP;
	if (!nr || PageHighMem(page))
		return -EINVAL;

	for (done = 0; done < nr; done += n) {
		n = direct_map_step(pfn + done, nr - done);
		if (direct_map_should_fail(n)) {
			ret = -ENOMEM;
			break;
		}
		n_splits = direct_map_splits_needed(pfn_to_page(pfn + done), n);
		ret = set_direct_map_valid_noflush(pfn_to_page(pfn + done), n, false);
		if (ret)
			break;
		splits += n_splits;
	}
	if (ret) {
		/*
		 * No flush needed: x86 does not cache not-present entries, and
		 * any stale entry maps the pages just as the restore does.
		 */
		__direct_map_restore(pfn, done);
		return ret;
	}

	addr = (unsigned long)page_address(page);
	batch->start = min(batch->start, addr);
	batch->end = max(batch->end, addr + (nr << PAGE_SHIFT));
	batch->nr_pages += nr;
	batch->nr_splits += splits;
	atomic_long_add(nr, &direct_map_nr_removed);
	count_vm_events(DIRECT_MAP_REMOVED, nr);
	return 0;
}
EXPORT_SYMBOL_FOR_MODULES(direct_map_batch_remove, DIRECT_MAP_USERS);

/**
 * direct_map_batch_zero - Zero pages that are out of the direct map
 * @batch: the batch whose flush removes the temporary mapping from the TLBs
 * @page: first page of a physically contiguous range out of the direct map
 * @nr: number of pages in the range
 *
 * Zero the pages through a temporary kernel mapping rather than mapping
 * them again in the direct map, so that removed memory can be handed from
 * one user to the next without a restore, a new removal and its flush.  The
 * temporary mapping is gone when this returns, but CPUs may still hold it in
 * their TLBs until direct_map_batch_flush(), which the caller must call
 * before the next user of the pages can write to them.
 *
 * Context: Process context; may sleep.  The caller must own the pages.
 * Return: 0 on success; -EINVAL for an empty range; -EHWPOISON if a page
 * has hardware poison (it must not be written); -ENOMEM if no temporary
 * mapping could be made.  On error the pages are unchanged.
 */
int direct_map_batch_zero(struct direct_map_batch *batch, struct page *page,
			  unsigned long nr)
{
	struct page **pages;
	unsigned long i;
	void *addr;

	might_sleep();

	if (!nr)
		return -EINVAL;
	if (direct_map_poisoned(page, nr))
		return -EHWPOISON;
	if (direct_map_should_fail(nr))
		return -ENOMEM;

	pages = kvmalloc_array(nr, sizeof(*pages), GFP_KERNEL);
	if (!pages)
		return -ENOMEM;
	for (i = 0; i < nr; i++)
		pages[i] = page + i;
	addr = vmap(pages, nr, VM_MAP, PAGE_KERNEL);
	kvfree(pages);
	if (!addr)
		return -ENOMEM;

	memset(addr, 0, nr << PAGE_SHIFT);
	vunmap(addr);
	batch->nr_zeroed += nr;
	return 0;
}
EXPORT_SYMBOL_FOR_MODULES(direct_map_batch_zero, DIRECT_MAP_USERS);

/**
 * direct_map_batch_flush - Flush the TLBs for the ranges a batch removed
 * @batch: the batch
 *
 * Issue one kernel TLB flush, on all CPUs, covering every range removed
 * through @batch since it was initialised or last flushed, and empty the
 * batch.  If pages were zeroed through the batch, the temporary mappings
 * (which vunmap() leaves for a lazy flush) are flushed as well.  Does
 * nothing for an empty batch.
 *
 * Context: Process context; interrupts enabled; may sleep if pages were
 * zeroed through the batch.
 */
void direct_map_batch_flush(struct direct_map_batch *batch)
{
	/* A pending block of the pool came with a removal. */
	if (!batch->nr_pages && !batch->nr_zeroed) {
		WARN_ON_ONCE(batch->pool_pending);
		return;
	}

	if (batch->nr_pages)
		flush_tlb_kernel_range(batch->start, batch->end);
	if (batch->nr_zeroed)
		vm_unmap_aliases();
	count_vm_event(DIRECT_MAP_REMOVE_FLUSH);
	/* Only now may the pool hand the rest of new blocks to others. */
	direct_map_pool_publish(batch);
	direct_map_batch_init(batch);
}
EXPORT_SYMBOL_FOR_MODULES(direct_map_batch_flush, DIRECT_MAP_USERS);

/**
 * direct_map_remove - Remove pages from the direct map and flush the TLBs
 * @page: first page of a physically contiguous range
 * @nr: number of pages in the range
 *
 * direct_map_batch_remove() and direct_map_batch_flush() for one range:
 * when it returns 0, no CPU can reach the pages through the direct map.
 *
 * Context: Process context; may sleep.
 * Return: as direct_map_batch_remove(); on error nothing was removed.
 */
int direct_map_remove(struct page *page, unsigned long nr)
{
	struct direct_map_batch batch;
	int ret;

	direct_map_batch_init(&batch);
	ret = direct_map_batch_remove(&batch, page, nr);
	direct_map_batch_flush(&batch);
	return ret;
}
EXPORT_SYMBOL_FOR_MODULES(direct_map_remove, DIRECT_MAP_USERS);

/**
 * direct_map_restore - Give removed pages back to the direct map
 * @page: first page of a range removed by direct_map_remove() or
 *        direct_map_batch_remove()
 * @nr: number of pages in that range
 *
 * Map the pages again with the direct map's default protections, and
 * collapse large mappings where the whole large page is mapped again.  The
 * range must be one that was removed, with the same boundaries; then this
 * cannot fail.  The pages may be used and freed once it returns, except
 * that a page with hardware poison is never mapped again, nor, if the split
 * around it fails, the other pages of its 2M range: after a restore of a
 * range for which direct_map_has_hwpoison() is true, the caller checks each
 * page with direct_map_page_present().  A page poisoned after the check
 * that this makes is mapped again, as in mm's other paths.
 *
 * Context: Process context; may sleep.
 */
void direct_map_restore(struct page *page, unsigned long nr)
{
	unsigned long pfn = page_to_pfn(page);
	unsigned long done, n, left = 0;

	might_sleep();

	if (WARN_ON_ONCE(!can_set_direct_map() || !nr))
		return;

	for (done = 0; done < nr; done += n) {
		n = direct_map_step(pfn + done, nr - done);
		left += direct_map_restore_step(pfn + done, n);
	}
	/* What stays removed is out of use for good, and stays counted. */
	atomic_long_sub(nr - left, &direct_map_nr_removed);
	count_vm_events(DIRECT_MAP_RESTORED, nr - left);
}
EXPORT_SYMBOL_FOR_MODULES(direct_map_restore, DIRECT_MAP_USERS);

#ifdef CONFIG_DEBUG_DIRECT_MAP
/**
 * direct_map_check_free - Check that a page being freed is in the direct map
 * @page: first page of the block being freed
 * @order: order of the block
 *
 * Called by the page allocator for every page that is freed.  A page that
 * was removed from the direct map and not restored would fault when the
 * allocator or its next user touches it; warn once instead, and have the
 * allocator keep it.
 *
 * Context: Any context.
 * Return: true if every page of the block is present in the direct map,
 * false if the block must not be freed.
 */
bool direct_map_check_free(struct page *page, unsigned int order)
{
	unsigned long i;

	/* The pool takes it back, out of the direct map. */
	if (PageHighMem(page) || direct_map_pool_page(page))
		return true;

	for (i = 0; i < (1UL << order); i++) {
		if (likely(kernel_page_present(page + i)))
			continue;
		/* The allocator keeps an order-0 poisoned page, untouched. */
		if (!order && PageHWPoison(page + i))
			continue;
		WARN_ONCE(1, "direct_map: pfn %#lx freed while out of the direct map; leaking it\n",
			  page_to_pfn(page + i));
		return false;
	}
	return true;
}
#endif
