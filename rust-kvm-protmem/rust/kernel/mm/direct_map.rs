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
    alloc::{Flags, KVVec},
    bindings,
    error::{code::ENOMEM, to_result, Result},
    page::Page,
};
use core::mem::{ManuallyDrop, MaybeUninit};

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

    /// Takes back pages that left a page cache, to add them to a page cache again without
    /// mapping them again.
    ///
    /// Each page is taken off its LRU list and uncharged from its memory cgroup, as freeing it
    /// would, and can then be added to a page cache like a newly allocated page. A page on no LRU
    /// list is only uncharged, if it is charged.
    ///
    /// Fails with [`EHWPOISON`] if a page has hardware poison (the pages must not be reused), with
    /// [`EBUSY`] if somebody else still holds a reference to a page (the page cache holds one for
    /// a moment after `->free_folio()`), and with [`EINVAL`] for a page of a large folio or one
    /// still in a page cache. On error the pages may be dropped (mapped again and freed), or taken
    /// back again later.
    ///
    /// Might sleep.
    ///
    /// [`EHWPOISON`]: crate::error::code::EHWPOISON
    /// [`EBUSY`]: crate::error::code::EBUSY
    /// [`EINVAL`]: crate::error::code::EINVAL
    pub fn reuse(&mut self) -> Result {
        // SAFETY: By the type invariant and the `DirectMapPages` contract, `self` owns the pages,
        // holding a reference to each; `direct_map_reuse_pages()` checks that none of them is in
        // a page cache, and that nobody else holds one.
        to_result(unsafe {
            bindings::direct_map_reuse_pages(self.pages.first_page(), self.pages.nr_pages())
        })
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

#[macros::kunit_tests(rust_direct_map)]
mod tests {
    use super::*;
    use crate::prelude::*;

    /// A page that the test keeps allocated, lent to a [`Removed`] so that the test can look at
    /// it after the [`Removed`] is gone.
    struct Lent(*mut bindings::page);

    // SAFETY: A `Lent` borrows the reference of the test's `Page` instead of holding one: the
    // tests keep that `Page` for longer than any `Lent` of it, and neither free the page nor change
    // its direct mapping while it is lent. Dropping a `Lent` touches nothing, and the test pages
    // have no hardware poison.
    unsafe impl DirectMapPages for Lent {
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
        let removed = Removed::new(Lent(page.as_ptr()))?;
        assert!(!readable(&page));
        let lent = removed.restore().ok_or(EIO)?;
        assert_eq!(lent.0, page.as_ptr());
        assert!(readable(&page));
        Ok(())
    }

    #[test]
    fn drop_maps_again() -> Result {
        let page = Page::alloc_page(GFP_KERNEL)?;

        let removed = Removed::new(Lent(page.as_ptr()))?;
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

        batch.remove(Lent(a.as_ptr()), GFP_KERNEL)?;
        batch.remove(Lent(b.as_ptr()), GFP_KERNEL)?;
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

        batch.remove(Lent(page.as_ptr()), GFP_KERNEL)?;
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
        let mut removed = Removed::new(Lent(page.as_ptr()))?;
        let mut batch = Batch::<Lent>::new();
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
