/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Removing memory from the kernel's direct map, for memory that the kernel
 * must not reach through its own mappings (e.g. guest-private memory).
 * See mm/direct_map.c.
 */
#ifndef _LINUX_DIRECT_MAP_H
#define _LINUX_DIRECT_MAP_H

#include <linux/errno.h>
#include <linux/limits.h>
#include <linux/types.h>

struct page;

/**
 * struct direct_map_batch - Removals that share one TLB flush
 * @start: lowest direct-map address removed since the last flush
 * @end: end of the highest range removed since the last flush
 * @nr_pages: number of pages removed since the last flush
 * @nr_splits: number of large (1G, 2M) mappings those removals split
 * @nr_zeroed: number of pages zeroed through temporary mappings since the
 *             last flush
 * @pool_pending: pageblocks that the direct-map pool removed through this
 *                batch for single pages: the pool hands their other pages
 *                to others only after the flush
 *
 * Initialise with direct_map_batch_init(), add ranges with
 * direct_map_batch_remove() or direct_map_batch_zero(), and always end with
 * direct_map_batch_flush(): until then, other CPUs may still reach the pages
 * through stale TLB entries.
 */
struct direct_map_batch {
	unsigned long start;
	unsigned long end;
	unsigned long nr_pages;
	unsigned long nr_splits;
	unsigned long nr_zeroed;
	void *pool_pending;
};

static inline void direct_map_batch_init(struct direct_map_batch *batch)
{
	batch->start = ULONG_MAX;
	batch->end = 0;
	batch->nr_pages = 0;
	batch->nr_splits = 0;
	batch->nr_zeroed = 0;
	batch->pool_pending = NULL;
}

#ifdef CONFIG_DIRECT_MAP_REMOVAL
int direct_map_batch_remove(struct direct_map_batch *batch, struct page *page,
			    unsigned long nr);
int direct_map_batch_zero(struct direct_map_batch *batch, struct page *page,
			  unsigned long nr);
void direct_map_batch_flush(struct direct_map_batch *batch);
int direct_map_remove(struct page *page, unsigned long nr);
void direct_map_restore(struct page *page, unsigned long nr);
bool direct_map_page_present(struct page *page);
void *direct_map_vmap_page(struct page *page);
void direct_map_vunmap_page(void *addr);
void direct_map_flush_aliases(void);
bool direct_map_has_hwpoison(struct page *page, unsigned long nr);
bool direct_map_removal_active(void);
int direct_map_alloc_page(struct direct_map_batch *batch, gfp_t gfp, int nid,
			  struct page **pagep);
int direct_map_alloc_block(struct direct_map_batch *batch, gfp_t gfp, int nid,
			   struct page **pagep);
void direct_map_free_unused(struct page *page, unsigned long nr);
void direct_map_pool_wait(void);
unsigned long direct_map_pool_block_pages(void);
#else
static inline int direct_map_batch_remove(struct direct_map_batch *batch,
					  struct page *page, unsigned long nr)
{
	return -EOPNOTSUPP;
}

static inline int direct_map_batch_zero(struct direct_map_batch *batch,
					struct page *page, unsigned long nr)
{
	return -EOPNOTSUPP;
}

static inline void direct_map_batch_flush(struct direct_map_batch *batch)
{
}

static inline int direct_map_remove(struct page *page, unsigned long nr)
{
	return -EOPNOTSUPP;
}

static inline void direct_map_restore(struct page *page, unsigned long nr)
{
}

static inline bool direct_map_page_present(struct page *page)
{
	return true;
}

static inline void *direct_map_vmap_page(struct page *page)
{
	return NULL;
}

static inline void direct_map_vunmap_page(void *addr)
{
}

static inline void direct_map_flush_aliases(void)
{
}

static inline bool direct_map_has_hwpoison(struct page *page, unsigned long nr)
{
	return false;
}

static inline bool direct_map_removal_active(void)
{
	return false;
}

static inline int direct_map_alloc_page(struct direct_map_batch *batch,
					gfp_t gfp, int nid, struct page **pagep)
{
	return -EOPNOTSUPP;
}

static inline int direct_map_alloc_block(struct direct_map_batch *batch,
					 gfp_t gfp, int nid, struct page **pagep)
{
	return -EOPNOTSUPP;
}

static inline void direct_map_free_unused(struct page *page, unsigned long nr)
{
}

static inline void direct_map_pool_wait(void)
{
}

static inline unsigned long direct_map_pool_block_pages(void)
{
	return 0;
}
#endif /* CONFIG_DIRECT_MAP_REMOVAL */

#ifdef CONFIG_DEBUG_DIRECT_MAP
bool direct_map_check_free(struct page *page, unsigned int order);
#else
static inline bool direct_map_check_free(struct page *page, unsigned int order)
{
	return true;
}
#endif

#endif /* _LINUX_DIRECT_MAP_H */
