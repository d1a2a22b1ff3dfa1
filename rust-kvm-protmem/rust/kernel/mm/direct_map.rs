// SPDX-License-Identifier: GPL-2.0

//! Removing pages from the kernel's direct map.
//!
//! Memory that the kernel must not reach through its own mappings, such as the private memory
//! of a KVM guest, is removed from the direct map while it is in use and restored before it is
//! freed.
//!
//! [`Removed`] owns pages while they are off the direct map. The only ways to get the pages back
//! are [`Removed::restore`] and dropping the [`Removed`], and both map the pages again first, so
//! pages cannot be freed while they are removed, and pages that were not removed cannot be
//! restored. A page with hardware poison is never mapped again: [`Removed::restore`] then gives
//! nothing back. [`Batch`] removes several ranges for the price of one TLB flush.
//!
//! Removal can fail with [`ENOMEM`] (a large mapping had to be split and the split could not
//! allocate) or [`EOPNOTSUPP`] (this kernel cannot change its direct map); then nothing was
//! removed.
//!
//! C header: [`include/linux/direct_map.h`](srctree/include/linux/direct_map.h)
//!
//! [`ENOMEM`]: crate::error::code::ENOMEM
//! [`EOPNOTSUPP`]: crate::error::code::EOPNOTSUPP

use crate::{
    alloc::{allocator::KVmalloc, Flags, IntoIter, KVVec},
    bindings,
    error::{
        code::{EINVAL, ENOMEM},
        to_result, Error, Result,
    },
    ffi::c_void,
    mm::filemap::AddressSpace,
    page::Page,
    types::ForeignOwnable,
};
use core::{
    marker::PhantomData,
    mem::{ManuallyDrop, MaybeUninit},
    ops::{Deref, Range},
    ptr::NonNull,
};

/// Owned, physically contiguous pages that can be removed from the direct map as one range.
///
/// # Safety
///
/// Implementers guarantee that, for as long as the value exists:
///
/// - [`first_page`] points to the first of [`nr_pages`] (at least one) physically contiguous
///   pages, and both methods always return the same values;
/// - the value holds a reference to each of the pages, which it drops only when it is dropped, so
///   that no page is freed before that (others may hold references too, e.g. a page cache);
/// - nobody changes the direct mapping of the pages but through the [`Removed`] that owns the
///   value, except the kernel's handling of hardware poison, which may unmap a poisoned page;
/// - dropping the value does not touch (read, write or zero) a page that
///   `direct_map_page_present()` says is out of the direct map, and drops its reference to such
///   a page only if the page has hardware poison (the page allocator never hands a poisoned page
///   out again); it keeps the others, out of use for good. After [`Removed`] maps the pages
///   again, only a poisoned page, or rarely a page next to one, can be out of the direct map.
///
/// (Pages that are not in the direct map, i.e. highmem, are refused by the removal with `EINVAL`.)
///
/// [`first_page`]: DirectMapPages::first_page
/// [`nr_pages`]: DirectMapPages::nr_pages
pub unsafe trait DirectMapPages {
    /// Returns the first page of the range.
    fn first_page(&self) -> *mut bindings::page;

    /// Returns the number of pages in the range.
    fn nr_pages(&self) -> usize;
}

// SAFETY: A `Page` holds a reference to one order-0 page, which it drops only when dropped, without
// touching the page. A single page is out of the direct map after a restore only if it has
// hardware poison, and then freeing it is what the contract asks.
unsafe impl DirectMapPages for Page {
    fn first_page(&self) -> *mut bindings::page {
        self.as_ptr()
    }

    fn nr_pages(&self) -> usize {
        1
    }
}

/// Pages that are off the direct map.
///
/// Created by [`Removed::new`], which also flushes the TLBs, or by [`Batch::flush`], after the
/// flush: the pages of a `Removed` are out of the direct map and out of every CPU's TLB. Dropping
/// a `Removed` maps the pages again and then drops them; [`Removed::restore`] maps them again and
/// gives them back.
///
/// The pages are not reachable through a `Removed`: the kernel must not touch them through the
/// direct map while they are removed. Forgetting a `Removed` (e.g. with [`core::mem::forget`])
/// leaks its pages, still removed, but never frees them while they are removed.
///
/// # Invariants
///
/// The `pages.nr_pages()` pages from `pages.first_page()` are removed from the direct map, by
/// one removal of exactly that range; outside the [`Batch`] that removed them (if any), no CPU's
/// TLB holds their direct-map addresses any more. (A [`Batch::zero`] maps them at another
/// address, until that batch is flushed.)
///
/// # Examples
///
/// ```
/// use kernel::{mm::direct_map::Removed, page::Page, prelude::*};
///
/// let page = Page::alloc_page(GFP_KERNEL)?;
/// let removed = Removed::new(page)?;
/// assert_eq!(removed.nr_pages(), 1);
///
/// // Map the page again and get it back; dropping `removed` would do the same, then free it.
/// let page: Option<Page> = removed.restore();
/// assert!(page.is_some());
/// # Ok::<(), Error>(())
/// ```
pub struct Removed<P: DirectMapPages> {
    pages: ManuallyDrop<P>,
}

impl<P: DirectMapPages> Removed<P> {
    /// Removes `pages` from the direct map and flushes the TLBs of all CPUs.
    ///
    /// On error nothing was removed, and `pages` is dropped.
    ///
    /// Might sleep.
    pub fn new(pages: P) -> Result<Self> {
        // SAFETY: By the `DirectMapPages` contract `pages` owns `nr_pages()` contiguous pages from
        // `first_page()`, so nobody else changes their direct mapping.
        to_result(unsafe { bindings::direct_map_remove(pages.first_page(), pages.nr_pages()) })?;

        // INVARIANT: the removal of exactly this range succeeded.
        Ok(Self {
            pages: ManuallyDrop::new(pages),
        })
    }

    /// Returns the number of removed pages.
    pub fn nr_pages(&self) -> usize {
        self.pages.nr_pages()
    }

    /// Returns the first removed page, e.g. to find the `struct folio` of a page.
    ///
    /// The kernel must not read or write the page through the direct map while it is removed.
    pub fn first_page(&self) -> *mut bindings::page {
        self.pages.first_page()
    }

    /// Returns whether any of the pages has hardware poison: then they must be neither zeroed nor
    /// reused, only dropped (see [`DirectMapPages`]).
    pub fn has_hwpoison(&self) -> bool {
        // SAFETY: By the type invariant and the `DirectMapPages` contract, `self` holds a reference
        // to each of the pages, so their `struct page`s are valid.
        unsafe { bindings::direct_map_has_hwpoison(self.pages.first_page(), self.pages.nr_pages()) }
    }

    /// Maps the pages again and gives them back.
    ///
    /// Returns `None` if a page has hardware poison: it stays out of the direct map, and the
    /// pages are dropped instead (see [`DirectMapPages`]), as the caller could touch them.
    ///
    /// Might sleep.
    pub fn restore(self) -> Option<P> {
        if self.has_hwpoison() {
            return None;
        }
        let mut this = ManuallyDrop::new(self);

        this.restore_mapping();
        // SAFETY: `this` is not dropped and not used after this, so `pages` is taken only once.
        Some(unsafe { ManuallyDrop::take(&mut this.pages) })
    }

    fn restore_mapping(&self) {
        // SAFETY: By the type invariant, this range was removed with exactly these boundaries.
        unsafe { bindings::direct_map_restore(self.pages.first_page(), self.pages.nr_pages()) };
    }
}

impl<P: DirectMapPages> Drop for Removed<P> {
    fn drop(&mut self) {
        self.restore_mapping();
        // SAFETY: `drop` runs once and `pages` is not used after this; the pages are mapped again,
        // but for poisoned ones (and rarely pages next to them), which the `DirectMapPages`
        // contract tells the drop not to touch.
        unsafe { ManuallyDrop::drop(&mut self.pages) };
    }
}

/// Removals from the direct map that share one TLB flush.
///
/// [`Batch::remove`] removes a range without flushing and keeps it: the pages may still be
/// reachable through stale TLB entries on other CPUs, so nothing can use them as removed yet.
/// [`Batch::flush`] flushes the TLBs of all CPUs once, for every range removed through the batch,
/// and only then hands the ranges out, as [`Removed`]: a [`Removed`] is always removed *and*
/// flushed. Dropping the batch flushes too, and maps its ranges again.
///
/// # Invariants
///
/// - `raw` was initialised by `direct_map_batch_init()` and is only changed by the
///   `direct_map_batch_*()` functions;
/// - every range in `removed` was removed through `raw`, in the order of `removed`, and its TLB
///   flush is still to come.
///
/// Forgetting a batch (e.g. with [`core::mem::forget`]) leaks its ranges, still removed and maybe
/// not flushed, but never frees them while they are removed.
///
/// # Examples
///
/// ```
/// use kernel::{mm::direct_map::Batch, page::Page, prelude::*};
///
/// let mut batch = Batch::new();
/// batch.remove(Page::alloc_page(GFP_KERNEL)?, GFP_KERNEL)?;
/// batch.remove(Page::alloc_page(GFP_KERNEL)?, GFP_KERNEL)?;
/// assert_eq!(batch.nr_pages(), 2);
/// // One TLB flush for both pages, and then they can be used as removed.
/// let removed = batch.flush();
/// assert_eq!(removed.len(), 2);
///
/// // Restored (and freed) when dropped.
/// drop(removed);
/// # Ok::<(), Error>(())
/// ```
pub struct Batch<P: DirectMapPages> {
    raw: bindings::direct_map_batch,
    removed: KVVec<Removed<P>>,
}

impl<P: DirectMapPages> Batch<P> {
    /// Creates an empty batch.
    pub fn new() -> Self {
        let mut raw = MaybeUninit::<bindings::direct_map_batch>::uninit();

        // SAFETY: `raw` is valid for writes, and `direct_map_batch_init()` writes every field.
        unsafe { bindings::direct_map_batch_init(raw.as_mut_ptr()) };
        // INVARIANT: `raw` was initialised by `direct_map_batch_init()`; `removed` is empty.
        Self {
            // SAFETY: `direct_map_batch_init()` initialised `raw`.
            raw: unsafe { raw.assume_init() },
            removed: KVVec::new(),
        }
    }

    /// Creates an empty batch with room for `n` ranges, so that removing them does not allocate.
    pub fn with_capacity(n: usize, flags: Flags) -> Result<Self> {
        let mut batch = Self::new();

        batch.removed.reserve(n, flags)?;
        Ok(batch)
    }

    /// Removes `pages` from the direct map, and keeps them until the batch is flushed.
    ///
    /// `flags` are for the room to keep them, allocated first, if there is none.
    ///
    /// On error nothing of `pages` was removed, `pages` is dropped, and the ranges removed earlier
    /// through the batch stay in it.
    ///
    /// Might sleep.
    pub fn remove(&mut self, pages: P, flags: Flags) -> Result {
        self.removed.reserve(1, flags)?;
        // SAFETY: `self.raw` is initialised by the type invariant; by the `DirectMapPages`
        // contract `pages` owns `nr_pages()` contiguous pages from `first_page()`.
        to_result(unsafe {
            bindings::direct_map_batch_remove(&mut self.raw, pages.first_page(), pages.nr_pages())
        })?;

        // INVARIANT: the removal of exactly this range through `raw` succeeded.
        let removed = Removed {
            pages: ManuallyDrop::new(pages),
        };
        if let Err(e) = self.removed.push_within_capacity(removed) {
            // Cannot happen: there is room for one more. Mapped again and dropped.
            drop(e.0);
            return Err(ENOMEM);
        }
        Ok(())
    }

    /// Zeroes the pages of `removed` without mapping them again in the direct map.
    ///
    /// The pages are written through a temporary mapping, which is flushed from the TLBs with
    /// the rest of the batch: flush the batch before the pages go to their next user.
    ///
    /// Fails with [`ENOMEM`] when no temporary mapping can be made; then the pages are
    /// unchanged.
    ///
    /// Might sleep.
    pub fn zero<Q: DirectMapPages>(&mut self, removed: &mut Removed<Q>) -> Result {
        // SAFETY: `self.raw` is initialised by the type invariant; `removed` owns its pages, which
        // are off the direct map by its type invariant, and `&mut` keeps anyone else from using
        // them through it while they are written.
        to_result(unsafe {
            bindings::direct_map_batch_zero(
                &mut self.raw,
                removed.pages.first_page(),
                removed.pages.nr_pages(),
            )
        })
    }

    /// Returns the number of pages removed through the batch and not flushed yet.
    pub fn nr_pages(&self) -> usize {
        self.raw.nr_pages
    }

    /// Returns the number of large (1G, 2M) mappings that the removals not flushed yet split.
    pub fn nr_splits(&self) -> usize {
        self.raw.nr_splits
    }

    /// Flushes the TLBs of all CPUs, once, for every range removed through the batch (and once
    /// more for the temporary mappings of [`Batch::zero`], if any), and returns the ranges, in
    /// the order they were removed.
    ///
    /// Dropping what it returns maps the ranges again.
    pub fn flush(mut self) -> KVVec<Removed<P>> {
        self.flush_tlb();
        core::mem::take(&mut self.removed)
    }

    fn flush_tlb(&mut self) {
        // SAFETY: `self.raw` is initialised by the type invariant.
        unsafe { bindings::direct_map_batch_flush(&mut self.raw) };
    }
}

impl<P: DirectMapPages> Default for Batch<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: DirectMapPages> Drop for Batch<P> {
    fn drop(&mut self) {
        self.flush_tlb();
        // `removed` is dropped after this: its ranges are mapped again, then dropped.
    }
}

/// Pages from mm's direct-map pool: physically contiguous order-0 pages out of the direct map,
/// zeroed, whose removal is flushed from every TLB.
///
/// Handed out by [`PoolBatch::flush`] ([`FlushedPages`]). Dropping them frees them through the
/// page allocator, which gives them back to the pool, still out of the direct map; the pool zeroes
/// them before anyone gets them again. [`PoolPages::free_unused`] gives back pages that were never
/// used without that zeroing. The pages are not reachable through a `PoolPages`: the kernel must
/// not touch them through the direct map.
///
/// # Invariants
///
/// `first` is the first of `nr` (at least one) physically contiguous order-0 pages that
/// `direct_map_alloc_page()` or `direct_map_alloc_block()` handed out, through a batch that was
/// flushed since; this value holds the reference to each of them that the pool gave. With
/// `charged`, `filemap_charge_folio()` succeeded on each of them ([`PoolBatch::charge_last`]).
pub struct PoolPages {
    first: NonNull<bindings::page>,
    nr: usize,
    charged: bool,
}

// SAFETY: A `PoolPages` is only references to pages, which may be dropped on any thread.
unsafe impl Send for PoolPages {}

// SAFETY: A shared `PoolPages` gives only the pages' address and number, which never change.
unsafe impl Sync for PoolPages {}

impl PoolPages {
    /// Returns the number of pages.
    pub fn nr_pages(&self) -> usize {
        self.nr
    }

    /// Returns page `i`, which must be less than [`PoolPages::nr_pages`].
    fn page(&self, i: usize) -> *mut bindings::page {
        debug_assert!(i < self.nr);
        // The `struct page`s of physically contiguous pages of one pageblock are contiguous.
        self.first.as_ptr().wrapping_add(i)
    }

    /// Gives the pages back to the pool as they came, zeroed, without the zeroing that freeing
    /// them costs; pages charged to a memory cgroup are uncharged.
    ///
    /// # Safety
    ///
    /// Since the pool handed them out, nobody wrote the pages, and nobody made them reachable to
    /// anyone else: they are in no page cache, on no LRU list and mapped nowhere, their `private`
    /// is unset, and at most `filemap_charge_folio()` charged them.
    pub unsafe fn free_unused(self) {
        let this = ManuallyDrop::new(self);

        // SAFETY: By the type invariant these are pages of the pool, flushed, with the reference
        // that this value held; by the safety requirements nobody wrote or reached them.
        unsafe { bindings::direct_map_free_unused(this.first.as_ptr(), this.nr) };
    }
}

impl Drop for PoolPages {
    fn drop(&mut self) {
        for i in 0..self.nr {
            // SAFETY: By the type invariant this value holds a reference to each page; dropping it
            // frees the page to the pool, which knows it is out of the direct map.
            unsafe { bindings::put_page(self.page(i)) };
        }
    }
}

impl IntoIterator for PoolPages {
    type Item = PoolPage;
    type IntoIter = PoolPagesIter;

    fn into_iter(self) -> PoolPagesIter {
        let this = ManuallyDrop::new(self);

        // INVARIANT: The references of `this`, which is not dropped, go to the iterator.
        PoolPagesIter {
            first: this.first,
            next: 0,
            nr: this.nr,
            charged: this.charged,
        }
    }
}

/// The pages of a [`PoolPages`], one at a time.
///
/// # Invariants
///
/// `first` is the first of `nr` pages as in [`PoolPages`], charged as `charged` says; this value
/// holds the pool's reference to each of the pages `next..nr`.
pub struct PoolPagesIter {
    first: NonNull<bindings::page>,
    next: usize,
    nr: usize,
    charged: bool,
}

// SAFETY: As for `PoolPages`.
unsafe impl Send for PoolPagesIter {}

impl Iterator for PoolPagesIter {
    type Item = PoolPage;

    fn next(&mut self) -> Option<PoolPage> {
        if self.next >= self.nr {
            return None;
        }
        // SAFETY: `next < nr`, and the `struct page`s of physically contiguous pages of one
        // pageblock are contiguous.
        let page = unsafe { self.first.add(self.next) };
        self.next += 1;
        // INVARIANT: The reference to the page goes from the iterator to the `PoolPage`.
        Some(PoolPage {
            page,
            charged: self.charged,
        })
    }
}

impl Drop for PoolPagesIter {
    fn drop(&mut self) {
        for _ in self.by_ref() {}
    }
}

/// Returns the allocation flags of `mapping`'s page cache (`mapping_gfp_mask()`).
fn gfp_mask(mapping: &AddressSpace) -> bindings::gfp_t {
    // SAFETY: An `AddressSpace` is valid while borrowed.
    unsafe { bindings::mapping_gfp_mask(mapping.as_raw()) }
}

/// The page cache of a file that keeps its folios out of the direct map, which takes pages of the
/// pool ([`PoolPage::add_to_page_cache`]), each with a `T` in its folio's `private` field.
///
/// Only a reference to one exists (see [`NoDirectMapCache::from_raw`]). It dereferences to the
/// [`AddressSpace`], e.g. to charge pages for it ([`PoolBatch::charge_last`]).
///
/// # Invariants
///
/// For as long as it is borrowed, the address space is valid as an [`AddressSpace`] is; it has
/// `AS_NO_DIRECT_MAP`; and its `->free_folio()` passes the `private` field of each of its folios,
/// if not NULL, to `T::from_foreign()`, once, on whatever thread the folio leaves the page cache,
/// and nothing else uses the field.
#[repr(transparent)]
pub struct NoDirectMapCache<T: ForeignOwnable + Send> {
    mapping: AddressSpace,
    _private: PhantomData<T>,
}

impl<T: ForeignOwnable + Send> NoDirectMapCache<T> {
    /// Returns the page cache at `ptr`.
    ///
    /// # Safety
    ///
    /// For `'a`: `ptr` must be valid as for [`AddressSpace::from_raw`]; the address space must have
    /// `AS_NO_DIRECT_MAP`, so that nothing reaches its folios through the direct map; and its
    /// `->free_folio()` must pass the `private` field of each of its folios, if not NULL, to
    /// `T::from_foreign()`, once, while nothing else uses that field.
    pub unsafe fn from_raw<'a>(ptr: *mut bindings::address_space) -> &'a Self {
        // INVARIANT: By the safety requirements.
        // SAFETY: By the safety requirements `ptr` is valid for `'a`; `NoDirectMapCache` is
        // `repr(transparent)` over an `AddressSpace`, itself over the address space.
        let cache: &Self = unsafe { &*ptr.cast() };
        debug_assert!(cache.no_direct_map());
        cache
    }
}

impl<T: ForeignOwnable + Send> Deref for NoDirectMapCache<T> {
    type Target = AddressSpace;

    fn deref(&self) -> &AddressSpace {
        &self.mapping
    }
}

/// One page from mm's direct-map pool, as [`PoolPages`] has them: out of the direct map, zeroed,
/// its removal flushed from every TLB. Dropping it frees it, back to the pool.
///
/// # Invariants
///
/// `page` is an order-0 page that the pool handed out through a batch that was flushed since;
/// this value holds the reference to it that the pool gave. With `charged`,
/// `filemap_charge_folio()` succeeded on it.
pub struct PoolPage {
    page: NonNull<bindings::page>,
    charged: bool,
}

// SAFETY: As for `PoolPages`.
unsafe impl Send for PoolPage {}

// SAFETY: As for `PoolPages`.
unsafe impl Sync for PoolPage {}

impl PoolPage {
    /// Adds the page to the page cache `cache` at `index`, up to date, with `private` in the
    /// folio's `private` field, and drops this reference to it: the page cache holds its own.
    /// `cache`'s `->free_folio()` takes `private` back when the folio leaves the page cache.
    ///
    /// Fails with [`EINVAL`] if the page was not charged to a memory cgroup
    /// ([`PoolBatch::charge_last`]), [`EEXIST`] if `index` has a folio already, or an error of the
    /// page cache (e.g. [`ENOMEM`]); then the page goes back to the pool and `private` is
    /// dropped.
    ///
    /// Might sleep, depending on the allocation flags of the page cache.
    ///
    /// [`EEXIST`]: crate::error::code::EEXIST
    pub fn add_to_page_cache<T: ForeignOwnable + Send>(
        self,
        cache: &NoDirectMapCache<T>,
        index: usize,
        private: T,
    ) -> Result {
        if !self.charged {
            return Err(EINVAL);
        }
        let private = private.into_foreign();
        let ret = self.add(cache, index, private);
        if ret.is_err() {
            // SAFETY: `private` came from `into_foreign()` above, and the folio did not keep it.
            drop(unsafe { T::from_foreign(private) });
        }
        ret
    }

    /// Adds the page to `mapping` (which a [`NoDirectMapCache`] of the caller's is) with `private`.
    /// Not generic, so that its calls to C stay in the kernel crate.
    fn add(self, mapping: &AddressSpace, index: usize, private: *mut c_void) -> Result {
        // SAFETY: By the type invariant `self.page` is a page this value holds a reference to.
        let folio = unsafe { bindings::page_folio(self.page.as_ptr()) };

        // SAFETY: The folio is an order-0 page of the pool, zeroed, out of the direct map and out
        // of every TLB, charged, and in no page cache (this value owns it): it may be marked up to
        // date and given `private` before it becomes reachable. The address space is valid while
        // borrowed, and keeps its folios out of the direct map (the caller's `NoDirectMapCache`).
        let err = unsafe {
            bindings::__folio_mark_uptodate(folio);
            // Set before the folio can be truncated, so that `->free_folio()` sees it.
            bindings::folio_change_private(folio, private);
            bindings::filemap_add_charged_folio(mapping.as_raw(), folio, index, gfp_mask(mapping))
        };
        if err != 0 {
            // SAFETY: The folio is not in the page cache: nobody else reached it.
            unsafe { bindings::folio_change_private(folio, core::ptr::null_mut()) };
            return Err(Error::from_errno(err));
        }
        // SAFETY: `filemap_add_charged_folio()` returned the folio locked, in the page cache.
        unsafe { bindings::folio_unlock(folio) };
        Ok(())
    }
}

impl Drop for PoolPage {
    fn drop(&mut self) {
        // SAFETY: By the type invariant this value holds a reference to the page; dropping it
        // frees the page to the pool, which knows it is out of the direct map.
        unsafe { bindings::put_page(self.page.as_ptr()) };
    }
}

/// Pages that the pool handed out through a [`PoolBatch`] that is not flushed yet.
///
/// # Invariants
///
/// As for [`PoolPages`] (the pages are an allocation of the batch, or part of one), but the batch
/// they came through may not be flushed yet; nobody reached them but a charge by
/// [`PoolBatch::charge_last`], which sets `charged` on the allocation, or the piece of it that it
/// keeps, once `filemap_charge_folio()` succeeded on every page of it.
struct Pending {
    first: NonNull<bindings::page>,
    nr: usize,
    charged: bool,
}

impl Pending {
    /// The pages, once their batch was flushed.
    ///
    /// # Safety
    ///
    /// The batch that handed the pages out was flushed since.
    unsafe fn flushed(self) -> PoolPages {
        // INVARIANT: By the safety requirements the batch was flushed; `charge_last()` sets
        // `charged` only on pages it charged.
        PoolPages {
            first: self.first,
            nr: self.nr,
            charged: self.charged,
        }
    }
}

/// Allocations from mm's direct-map pool that share one TLB flush.
///
/// The pool hands out pages out of the direct map: from pageblocks it removed earlier, without a
/// removal or a flush, or from a new pageblock that it removes through the batch. Until
/// [`PoolBatch::flush`], other CPUs may still reach new pages through stale TLB entries, so the
/// batch keeps them; the flush returns them as [`PoolPages`]. Dropping the batch flushes, and
/// gives its pages back unused.
///
/// # Invariants
///
/// - `raw` was initialised by `direct_map_batch_init()` and is only changed by the
///   `direct_map_*()` functions;
/// - the pages of `pages` and `unused` were handed out through `raw`, and nothing else reached
///   them but a memory cgroup charge;
/// - with `last_open`, the last allocation of `pages` is the one that the last call of `alloc()`
///   made, [`PoolBatch::charge_last`] did not take it yet, and `unused` has room for the two
///   pieces of it that `charge_last()` may put there; without, nothing puts pieces there before
///   the next allocation.
///
/// # Examples
///
/// ```
/// use kernel::{mm::direct_map::PoolBatch, prelude::*};
///
/// let mut batch = PoolBatch::with_capacity(2, GFP_KERNEL)?;
/// match batch.alloc_page(GFP_KERNEL, None) {
///     // This kernel cannot change its direct map, or its pageblocks are too large.
///     Err(e) if e == EOPNOTSUPP => return Ok(()),
///     r => r?,
/// }
/// batch.alloc_page(GFP_KERNEL, None)?;
/// // One TLB flush at most, for a pageblock the pool removed.
/// let pages = batch.flush();
/// assert_eq!(pages.len(), 2);
///
/// // Back to the pool, out of the direct map.
/// drop(pages);
/// # Ok::<(), Error>(())
/// ```
pub struct PoolBatch {
    raw: bindings::direct_map_batch,
    pages: KVVec<Pending>,
    unused: KVVec<Pending>,
    flags: Flags,
    last_open: bool,
}

impl PoolBatch {
    /// Creates an empty batch with room in its list for `n` allocations. `flags` are for the
    /// batch's lists, now and whenever they grow.
    pub fn with_capacity(n: usize, flags: Flags) -> Result<Self> {
        let mut raw = MaybeUninit::<bindings::direct_map_batch>::uninit();

        // SAFETY: `direct_map_batch_init()` initialises the whole batch.
        unsafe { bindings::direct_map_batch_init(raw.as_mut_ptr()) };
        let mut pages = KVVec::new();
        pages.reserve(n, flags)?;
        // INVARIANT: `raw` is initialised, and no page was handed out.
        Ok(Self {
            // SAFETY: Initialised above.
            raw: unsafe { raw.assume_init() },
            pages,
            unused: KVVec::new(),
            flags,
            last_open: false,
        })
    }

    /// Returns the number of pages in a block of [`PoolBatch::alloc_block`], or 0 if the pool
    /// cannot be used on this kernel (then every allocation fails with [`EOPNOTSUPP`]).
    ///
    /// [`EOPNOTSUPP`]: crate::error::code::EOPNOTSUPP
    pub fn block_pages() -> usize {
        // SAFETY: This only reads constants.
        unsafe { bindings::direct_map_pool_block_pages() }
    }

    /// Makes room for `n` more allocations, so that making them allocates nothing for the batch's
    /// lists (whose flags [`PoolBatch::with_capacity`] took) as long as [`PoolBatch::charge_last`]
    /// keeps them whole. Fails with [`ENOMEM`] if there is no room; then only the batch's room
    /// may have grown.
    pub fn reserve(&mut self, n: usize) -> Result {
        self.pages.reserve(n, self.flags)?;
        // Room for the two pieces that `charge_last()` may make of the next allocation.
        self.unused.reserve(2, self.flags)?;
        Ok(())
    }

    fn alloc(&mut self, flags: Flags, nid: Option<i32>, block: bool) -> Result {
        let nid = nid.unwrap_or(bindings::NUMA_NO_NODE);
        let mut first: *mut bindings::page = core::ptr::null_mut();

        // INVARIANT: Until this call succeeds, the last call of `alloc()` made no allocation.
        self.last_open = false;
        self.reserve(1)?;
        // SAFETY: `self.raw` is initialised by the type invariant, and `first` is writable.
        to_result(unsafe {
            if block {
                bindings::direct_map_alloc_block(&mut self.raw, flags.as_raw(), nid, &mut first)
            } else {
                bindings::direct_map_alloc_page(&mut self.raw, flags.as_raw(), nid, &mut first)
            }
        })?;
        let Some(first) = NonNull::new(first) else {
            return Err(ENOMEM);
        };
        let nr = if block { Self::block_pages() } else { 1 };
        // INVARIANT: The pool handed out `nr` pages from `first`, with a reference to each,
        // through `self.raw`.
        if let Err(e) = self.pages.push_within_capacity(Pending {
            first,
            nr,
            charged: false,
        }) {
            // Cannot happen: there is room for one more. Given back after the flush.
            let _ = self.unused.push_within_capacity(e.0);
            return Err(ENOMEM);
        }
        // INVARIANT: It is the last allocation, and `reserve()` made room for its two pieces.
        self.last_open = true;
        Ok(())
    }

    /// Takes a page from the pool, on node `nid` if it has one (`None`: the node the task's memory
    /// policy picks), and keeps it until the batch is flushed.
    ///
    /// `flags` are for the pool's bookkeeping, and a new pageblock if the pool has no free page.
    /// Fails with [`ENOMEM`] when no page can be had, or no room to keep it (see
    /// [`PoolBatch::reserve`]), or [`EOPNOTSUPP`] (see [`PoolBatch::block_pages`]); then the batch
    /// kept what it had, but [`PoolBatch::charge_last`] takes none of it.
    ///
    /// Might sleep.
    ///
    /// [`EOPNOTSUPP`]: crate::error::code::EOPNOTSUPP
    pub fn alloc_page(&mut self, flags: Flags, nid: Option<i32>) -> Result {
        self.alloc(flags, nid, false)
    }

    /// Takes a whole block of [`PoolBatch::block_pages`] pages from the pool, as
    /// [`PoolBatch::alloc_page`] takes a page.
    ///
    /// Might sleep.
    pub fn alloc_block(&mut self, flags: Flags, nid: Option<i32>) -> Result {
        self.alloc(flags, nid, true)
    }

    /// Charges the last allocation to the memory cgroup that `mapping`'s page cache charges (with
    /// `filemap_charge_folio()`), before it is added there: the pages `want` (indices into the
    /// allocation) as the page cache charges its folios, then the others without trying hard and
    /// without the OOM killer. Returns whether all of them were charged; if only `want` could be,
    /// the batch keeps only those, and gives the others back once it is flushed.
    ///
    /// Fails with [`ENOMEM`] if the cgroup refused a page of `want`; then the batch gives the
    /// whole allocation back once it is flushed. Fails with [`EINVAL`] if the last call of
    /// [`PoolBatch::alloc_page`] or [`PoolBatch::alloc_block`] failed, or `charge_last()` took
    /// the allocation it made already, or `want` is empty or out of its bounds; then the batch
    /// keeps it as it was. Pages given back are uncharged.
    ///
    /// Might sleep (memory cgroup reclaim).
    pub fn charge_last(&mut self, mapping: &AddressSpace, want: Range<usize>) -> Result<bool> {
        let last = self.pages.last_mut().ok_or(EINVAL)?;
        if !self.last_open || want.start >= want.end || want.end > last.nr {
            return Err(EINVAL);
        }
        // INVARIANT: This call takes the allocation: only it puts pieces in `unused`, in the room
        // that the invariant gave.
        self.last_open = false;
        let (first, nr) = (last.first, last.nr);
        let charge = |mut range: Range<usize>, gfp: bindings::gfp_t| {
            range.all(|i| {
                // SAFETY: `i < nr`, and the `struct page`s of the `nr` physically contiguous pages
                // of one pageblock are contiguous: the page is one of the allocation's, handed out
                // through the batch, reached by nobody and not charged yet (the allocation is
                // charged once, here). The address space is valid while borrowed.
                unsafe {
                    let folio = bindings::page_folio(first.as_ptr().add(i));
                    bindings::filemap_charge_folio(mapping.as_raw(), folio, gfp) == 0
                }
            })
        };
        let gfp = gfp_mask(mapping);

        if !charge(want.clone(), gfp) {
            // Some may be charged: given back, never handed out.
            self.give_up_last();
            return Err(ENOMEM);
        }
        let light = gfp | bindings::__GFP_NORETRY | bindings::__GFP_NOWARN;
        let all = charge(0..want.start, light) && charge(want.end..nr, light);
        if !all {
            self.trim_last(want.start, want.end);
        }
        // INVARIANT: Every page that the batch keeps of the allocation is charged.
        if let Some(last) = self.pages.last_mut() {
            last.charged = true;
        }
        Ok(all)
    }

    /// Gives the last allocation back, unused, once the batch is flushed.
    fn give_up_last(&mut self) {
        if let Some(p) = self.pages.pop() {
            // Cannot fail: by the type invariant there is room for two pieces of the allocation
            // that `charge_last()` took.
            let _ = self.unused.push_within_capacity(p);
        }
    }

    /// Keeps only the pages `start..end` of the last allocation, and gives the others back,
    /// unused, once the batch is flushed. The caller checked that `start < end` and that `end` is
    /// at most its number of pages; at most once for an allocation. The pieces given back may hold
    /// charges (`charged` is unset: not known to be charged whole), which
    /// `direct_map_free_unused()` drops.
    fn trim_last(&mut self, start: usize, end: usize) {
        let Some(last) = self.pages.last_mut() else {
            return;
        };
        if start >= end || end > last.nr {
            return;
        }
        let (first, nr) = (last.first, last.nr);
        // INVARIANT: A piece is part of an allocation of the batch.
        let piece = |i: usize, n: usize| Pending {
            // SAFETY: `i < nr`, and the `struct page`s of the `nr` physically contiguous pages of
            // one pageblock are contiguous, so the result is in bounds of them.
            first: unsafe { first.add(i) },
            nr: n,
            charged: false,
        };

        *last = piece(start, end - start);
        // Cannot fail: by the type invariant there is room for two pieces of the allocation that
        // `charge_last()` took.
        if start > 0 {
            let _ = self.unused.push_within_capacity(piece(0, start));
        }
        if end < nr {
            let _ = self.unused.push_within_capacity(piece(end, nr - end));
        }
    }

    /// Returns the number of pages that the pool removed through the batch, for the pages it
    /// handed out (a new pageblock is removed whole).
    pub fn nr_removed(&self) -> usize {
        self.raw.nr_pages
    }

    /// Returns the number of large (1G, 2M) mappings that the removals split.
    pub fn nr_splits(&self) -> usize {
        self.raw.nr_splits
    }

    /// Flushes the TLBs of all CPUs, once, if the pool removed or zeroed anything through the
    /// batch, gives back what [`PoolBatch::charge_last`] let go, and returns the pages, in the
    /// order they were allocated.
    ///
    /// Cannot fail, and allocates nothing: it comes once the pages are taken, when memory may be
    /// shortest.
    pub fn flush(mut self) -> FlushedPages {
        self.flush_tlb();
        self.give_back_unused();
        // `self` is dropped on return, with nothing left to flush or give back.
        // INVARIANT: The batch the allocations came through is flushed.
        FlushedPages {
            pages: core::mem::take(&mut self.pages).into_iter(),
        }
    }

    fn flush_tlb(&mut self) {
        // SAFETY: `self.raw` is initialised by the type invariant.
        unsafe { bindings::direct_map_batch_flush(&mut self.raw) };
    }

    /// Gives back the pages of `unused`. The caller flushed the batch.
    fn give_back_unused(&mut self) {
        for p in core::mem::take(&mut self.unused) {
            // SAFETY: By the type invariant nothing reached the pages but a charge; the batch is
            // flushed.
            unsafe { p.flushed().free_unused() };
        }
    }
}

/// The pages that [`PoolBatch::flush`] returns, an allocation at a time, in the order they were
/// allocated. Dropping it frees the allocations it did not yield, as dropping them would.
///
/// # Invariants
///
/// The allocations of `pages` came through a batch that was flushed since, as [`PoolPages`]
/// requires.
#[must_use = "dropping it frees the pages"]
pub struct FlushedPages {
    pages: IntoIter<Pending, KVmalloc>,
}

impl Iterator for FlushedPages {
    type Item = PoolPages;

    fn next(&mut self) -> Option<PoolPages> {
        // SAFETY: By the type invariant the batch that handed the pages out was flushed.
        self.pages.next().map(|p| unsafe { p.flushed() })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.pages.size_hint()
    }
}

impl ExactSizeIterator for FlushedPages {}

impl Drop for FlushedPages {
    fn drop(&mut self) {
        for _ in self.by_ref() {}
    }
}

impl Drop for PoolBatch {
    fn drop(&mut self) {
        self.flush_tlb();
        self.give_back_unused();
        for p in core::mem::take(&mut self.pages) {
            // SAFETY: By the type invariant nothing reached the pages but a charge; the batch is
            // flushed.
            unsafe { p.flushed().free_unused() };
        }
    }
}

#[macros::kunit_tests(rust_direct_map)]
mod tests {
    use super::*;
    use crate::prelude::*;

    /// A page of the test's, which a [`Removed`] borrows: the test can look at the page after
    /// the [`Removed`] is gone.
    struct BorrowedPage(*mut bindings::page);

    // SAFETY: A `BorrowedPage` borrows the reference of the test's `Page` instead of holding one:
    // the tests keep that `Page` for longer than any `BorrowedPage` of it, and neither free the
    // page nor change its direct mapping meanwhile. Dropping a `BorrowedPage` touches nothing,
    // and the test pages have no hardware poison.
    unsafe impl DirectMapPages for BorrowedPage {
        fn first_page(&self) -> *mut bindings::page {
            self.0
        }

        fn nr_pages(&self) -> usize {
            1
        }
    }

    /// Returns whether the kernel can read `page` through the direct map.
    fn readable(page: &Page) -> bool {
        let mut byte = 0u8;

        // SAFETY: `page` is a valid page. On 64-bit `kmap_local_page()` returns its direct-map
        // address, present or not, and `copy_from_kernel_nofault()` returns an error instead of
        // faulting on a missing mapping.
        unsafe {
            let addr = bindings::kmap_local_page(page.as_ptr());
            let ret = bindings::copy_from_kernel_nofault((&raw mut byte).cast(), addr, 1);
            bindings::kunmap_local(addr);
            ret == 0
        }
    }

    #[test]
    fn restore_maps_again() -> Result {
        let page = Page::alloc_page(GFP_KERNEL)?;

        assert!(readable(&page));
        let removed = Removed::new(BorrowedPage(page.as_ptr()))?;
        assert!(!readable(&page));
        let borrowed = removed.restore().ok_or(EIO)?;
        assert_eq!(borrowed.0, page.as_ptr());
        assert!(readable(&page));
        Ok(())
    }

    #[test]
    fn drop_maps_again() -> Result {
        let page = Page::alloc_page(GFP_KERNEL)?;

        let removed = Removed::new(BorrowedPage(page.as_ptr()))?;
        assert!(!readable(&page));
        drop(removed);
        assert!(readable(&page));
        Ok(())
    }

    #[test]
    fn batch_removes_all() -> Result {
        let a = Page::alloc_page(GFP_KERNEL)?;
        let b = Page::alloc_page(GFP_KERNEL)?;
        let mut batch = Batch::new();

        batch.remove(BorrowedPage(a.as_ptr()), GFP_KERNEL)?;
        batch.remove(BorrowedPage(b.as_ptr()), GFP_KERNEL)?;
        assert_eq!(batch.nr_pages(), 2);
        let removed = batch.flush();
        assert_eq!(removed.len(), 2);
        assert_eq!(removed[0].first_page(), a.as_ptr());
        assert_eq!(removed[1].first_page(), b.as_ptr());
        assert!(!readable(&a) && !readable(&b));
        drop(removed);
        assert!(readable(&a) && readable(&b));
        Ok(())
    }

    #[test]
    fn dropped_batch_maps_again() -> Result {
        let page = Page::alloc_page(GFP_KERNEL)?;
        let mut batch = Batch::with_capacity(1, GFP_KERNEL)?;

        batch.remove(BorrowedPage(page.as_ptr()), GFP_KERNEL)?;
        assert!(!readable(&page));
        drop(batch);
        assert!(readable(&page));
        Ok(())
    }

    #[test]
    fn zero_without_mapping() -> Result {
        let page = Page::alloc_page(GFP_KERNEL)?;
        let secret = [0x5au8; 64];
        let mut back = [0xffu8; 64];

        // SAFETY: `secret` is valid for reads of its length, which is within the page; nothing
        // else uses the page.
        unsafe { page.write_raw(secret.as_ptr(), 0, secret.len())? };
        let mut removed = Removed::new(BorrowedPage(page.as_ptr()))?;
        let mut batch = Batch::<BorrowedPage>::new();
        batch.zero(&mut removed)?;
        batch.flush();
        assert!(!readable(&page));
        drop(removed);
        // SAFETY: `back` is valid for writes of its length, which is within the page; the page is
        // mapped again.
        unsafe { page.read_raw(back.as_mut_ptr(), 0, back.len())? };
        assert_eq!(back, [0u8; 64]);
        Ok(())
    }
}
