// SPDX-License-Identifier: GPL-2.0

//! guest_memfd memory that is not in the host's direct map.
//!
//! A guest_memfd created with `GUEST_MEMFD_FLAG_NO_DIRECT_MAP` keeps every page of its page cache
//! off the host kernel's direct map. Pages are zeroed and removed before they enter the page
//! cache ([`kvm_protmem_populate`]), and are mapped again, zeroed and freed once they have all
//! left it ([`kvm_protmem_free_folio`]): the page cache never holds a page that is still mapped,
//! and nothing frees a page that is still removed.
//!
//! Pages are removed in [`Block`]s: 2 MiB of naturally aligned memory for a naturally aligned
//! 2 MiB range of the file, so that the direct map's 2 MiB mapping of the block is removed and
//! restored whole, never split; or a single page when no 2 MiB block can be had or the range is
//! partly in use already.
//!
//! A 2 MiB block whose pages have all left the page cache is kept off the direct map, up to a
//! limit, in a [`Cache`] shared by all guest_memfds: it is taken back from the LRU and the memory
//! cgroup, zeroed through a temporary mapping, and reused for the next 2 MiB range of any
//! guest_memfd without a removal, a TLB flush or an allocation. A shrinker maps the cached blocks
//! again and frees them under memory pressure.
//!
//! This file is linked into kvm.ko next to `guest_memfd.c`, which calls the functions below; both
//! sides are declared in `include/linux/kvm_protmem.h`. The direct map is changed only through
//! [`kernel::mm::direct_map`].
//!
//! See `Documentation/virt/kvm/protected-memory.rst`.

use core::{mem::ManuallyDrop, ptr::NonNull};
use kernel::{
    alloc::{kvec::PushError, KVVec},
    bindings,
    error::to_result,
    mm::direct_map::{Batch, DirectMapPages, Removed},
    new_mutex, new_spinlock,
    prelude::*,
    sync::{
        atomic::{Atomic, Relaxed},
        Arc, ArcBorrow, Mutex, SpinLock, UniqueArc,
    },
    types::ForeignOwnable,
};

/// The order of a [`Block`] of pages: 2 MiB, the size of a PMD mapping on x86-64.
const BLOCK_ORDER: u32 = 9;

/// The number of pages in a 2 MiB [`Block`].
const BLOCK_PAGES: usize = 1 << BLOCK_ORDER;

/// Physically contiguous order-0 pages of a guest_memfd, allocated together.
///
/// # Invariants
///
/// `first` is the first of `nr` physically contiguous order-0 pages, 1 or [`BLOCK_PAGES`],
/// zeroed when they were allocated; this value holds one reference to each of them.
struct Pages {
    first: NonNull<bindings::page>,
    nr: usize,
}

impl Pages {
    /// Allocates `1 << order` zeroed pages for the range of `inode` that starts at `index`.
    ///
    /// Returns `None` when the memory cannot be had (without retrying hard for a 2 MiB block).
    ///
    /// # Safety
    ///
    /// `inode` must be a live guest_memfd inode.
    unsafe fn alloc(inode: *mut bindings::inode, index: usize, order: u32) -> Option<Self> {
        // SAFETY: `inode` is a live guest_memfd inode by the safety requirements.
        let first = unsafe { bindings::kvm_gmem_alloc_pages(inode, index, order) };

        // INVARIANT: `kvm_gmem_alloc_pages()` returns `1 << order` zeroed order-0 pages, with a
        // reference to each, or NULL.
        NonNull::new(first).map(|first| Self {
            first,
            nr: 1 << order,
        })
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: By the type invariant this value holds a reference to each of the pages; they
        // are mapped again (a `Pages` is dropped removed only by `Removed`, which maps it first).
        unsafe { bindings::kvm_gmem_free_pages(self.first.as_ptr(), self.nr) };
    }
}

// SAFETY: A `Pages` is only references to pages, which may be dropped on any thread.
unsafe impl Send for Pages {}

// SAFETY: By the type invariant the pages are physically contiguous and this value holds a
// reference to each of them until it is dropped; guest_memfd changes their direct mapping only
// through the `Removed` that owns them, and frees them only through `Pages::drop`.
unsafe impl DirectMapPages for Pages {
    fn first_page(&self) -> *mut bindings::page {
        self.first.as_ptr()
    }

    fn nr_pages(&self) -> usize {
        self.nr
    }
}

/// Pages off the direct map, shared by the page-cache folios that use them.
///
/// Each page of the block that is in the page cache is a folio of its own, whose `private` holds
/// a reference to the block. Pages that leave the page cache stay allocated, and removed, until
/// the block's last page leaves it: then a 2 MiB block goes to the [`Cache`], and a block that
/// the cache does not keep is mapped again as a whole (a 2 MiB block as the 2 MiB mapping it
/// was), zeroed and freed.
///
/// A block costs 40 bytes: the `Arc`'s count (8, padded), `first` (8), the `Removed` (16) and
/// the reference to the guest_memfd's state (8).
struct Block {
    /// The first page, for the folios; the pages themselves are reachable only through `removed`.
    first: NonNull<bindings::page>,
    removed: ManuallyDrop<Removed<Pages>>,
    pm: Arc<Protmem>,
}

impl Block {
    /// Returns the folio of the block's page `i`.
    fn folio(&self, i: usize) -> *mut bindings::folio {
        // The pages are order-0, so each is a folio of its own; the `struct page`s of a buddy
        // allocation are contiguous.
        self.first.as_ptr().wrapping_add(i).cast()
    }

    fn nr_pages(&self) -> usize {
        self.removed.nr_pages()
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let nr = self.nr_pages();

        // SAFETY: `removed` is taken once, here, and not used after.
        let removed = unsafe { ManuallyDrop::take(&mut self.removed) };
        // Dropping it instead would map the pages again, then `Pages::drop` zeroes and frees them.
        self.pm.cache.put(removed);
        self.pm.restored(nr);
    }
}

/// Free 2 MiB blocks, kept off the direct map for reuse by any guest_memfd.
///
/// A block is *pending* from the moment its last page left the page cache until [`Cache::settle`]
/// has taken its pages back from the LRU and the memory cgroup (freeing them would have done
/// that; when the block is freed, the page cache still holds its last page) and zeroed them
/// through a temporary mapping, with one TLB flush for all the blocks it settles. The block is
/// then *ready* to be reused with no removal, flush, allocation or zeroing. At most `max` blocks
/// are kept ready; the others, and blocks that cannot be taken back (someone else holds a page),
/// are mapped again and freed. The shrinker frees pending and ready blocks alike.
///
/// Nothing that can reclaim memory is done with the lock held: the shrinker only try-locks it, and
/// blocks are freed (mapped again) after it is released.
#[pin_data]
struct Cache {
    #[pin]
    blocks: Mutex<CacheBlocks>,
    /// The number of pending blocks, to skip the lock when there are none.
    nr_pending: Atomic<usize>,
    /// The number of ready blocks, for the shrinker to count without the lock.
    nr_ready: Atomic<usize>,
    /// The most blocks kept ready; 0 turns the cache off.
    max: Atomic<usize>,
}

/// The blocks of a [`Cache`].
struct CacheBlocks {
    pending: KVec<Removed<Pages>>,
    ready: KVec<Removed<Pages>>,
}

impl Cache {
    /// Keeps the block `removed`, whose pages are not in the page cache any more, for
    /// [`Cache::settle`]; frees it (mapped again) if it is not a 2 MiB block, or there is no room.
    fn put(&self, removed: Removed<Pages>) {
        if removed.nr_pages() != BLOCK_PAGES || self.max.load(Relaxed) == 0 {
            return;
        }

        let rejected = {
            let mut blocks = self.blocks.lock();
            // GFP_NOWAIT: reclaim could call the shrinker, which needs the lock.
            if blocks.pending.reserve(1, GFP_NOWAIT).is_err() {
                Some(removed)
            } else {
                match blocks.pending.push_within_capacity(removed) {
                    Ok(()) => {
                        self.nr_pending.add(1, Relaxed);
                        None
                    }
                    Err(PushError(removed)) => Some(removed),
                }
            }
        };
        // Mapped again and freed, outside the lock.
        drop(rejected);
    }

    /// Makes the pending blocks ready, or frees them.
    ///
    /// Called in process context, after the pages of the pending blocks have left the page cache.
    fn settle(&self) {
        if self.nr_pending.load(Relaxed) == 0 {
            return;
        }

        let pending = {
            let mut blocks = self.blocks.lock();
            self.nr_pending.store(0, Relaxed);
            core::mem::take(&mut blocks.pending)
        };
        let Ok(mut ready) = KVec::<Removed<Pages>>::with_capacity(pending.len(), GFP_KERNEL) else {
            // Mapped again and freed.
            return;
        };
        let mut batch = Batch::new();

        for mut removed in pending {
            // SAFETY: The block holds a reference to each of its pages, off the direct map, and
            // none of them is in a page cache any more.
            let back = unsafe {
                bindings::direct_map_reuse_pages(removed.first_page(), removed.nr_pages())
            };
            if back == 0 && batch.zero(&mut removed).is_ok() {
                // There is room for every pending block.
                let _ = ready.push_within_capacity(removed);
            }
            // Otherwise `removed` is mapped again and freed here.
        }
        // The temporary mappings leave the TLBs before any of the pages can be reused.
        batch.flush();

        let mut blocks = self.blocks.lock();
        let room = self.max.load(Relaxed).saturating_sub(blocks.ready.len());
        let keep = ready.len().min(room);
        if keep > 0 && blocks.ready.reserve(keep, GFP_NOWAIT).is_ok() {
            for _ in 0..keep {
                if let Some(removed) = ready.pop() {
                    if blocks.ready.push_within_capacity(removed).is_ok() {
                        self.nr_ready.add(1, Relaxed);
                    }
                }
            }
        }
        drop(blocks);
        // The rest are mapped again and freed, outside the lock.
        drop(ready);
    }

    /// Takes a ready block, zeroed and off the direct map, if there is one.
    fn take(&self) -> Option<Removed<Pages>> {
        self.settle();
        if self.nr_ready.load(Relaxed) == 0 {
            return None;
        }

        let removed = self.blocks.lock().ready.pop();
        if removed.is_some() {
            self.nr_ready.add(1usize.wrapping_neg(), Relaxed);
        }
        removed
    }

    /// Removes a block, pending ones first, if the lock can be had at once.
    fn try_pop(&self) -> Option<Option<Removed<Pages>>> {
        let mut blocks = self.blocks.try_lock()?;

        if let Some(removed) = blocks.pending.pop() {
            self.nr_pending.add(1usize.wrapping_neg(), Relaxed);
            return Some(Some(removed));
        }
        let removed = blocks.ready.pop();
        if removed.is_some() {
            self.nr_ready.add(1usize.wrapping_neg(), Relaxed);
        }
        Some(removed)
    }

    /// Frees blocks, mapped again, until `nr_pages` pages are freed or the cache is empty.
    ///
    /// Returns the number of pages freed, or `None` if the cache is busy.
    fn shrink(&self, nr_pages: usize) -> Option<usize> {
        let mut freed = 0;

        while freed < nr_pages {
            match self.try_pop() {
                Some(Some(removed)) => {
                    freed += removed.nr_pages();
                    drop(removed);
                }
                Some(None) => break,
                None if freed == 0 => return None,
                None => break,
            }
        }
        Some(freed)
    }

    /// Keeps at most `max` blocks from now on, and frees the blocks beyond that.
    fn resize(&self, max: usize) {
        self.max.store(max, Relaxed);
        self.settle();
        loop {
            let removed = {
                let mut blocks = self.blocks.lock();
                if blocks.ready.len() <= max {
                    break;
                }
                self.nr_ready.add(1usize.wrapping_neg(), Relaxed);
                blocks.ready.pop()
            };
            drop(removed);
        }
    }
}

/// The per-VM counters in `struct kvm_vm_stat_generic`.
///
/// # Invariants
///
/// `self.0` points to the generic VM stats of a VM that is alive.
struct StatsPtr(NonNull<bindings::kvm_vm_stat_generic>);

// SAFETY: The counters are updated with atomic operations from any thread.
unsafe impl Send for StatsPtr {}

impl StatsPtr {
    /// Adds `delta` (wrapping) to the counter at `field`.
    ///
    /// # Safety
    ///
    /// `field` must point to one of the counters of a `StatsPtr` whose VM is alive for the
    /// duration of the call.
    unsafe fn add(field: *mut u64, delta: u64) {
        // SAFETY: `field` is valid and aligned (a `u64` field of the stats) by the safety
        // requirements; the component changes these counters only with atomic operations.
        unsafe { Atomic::<u64>::from_ptr(field) }.add(delta, Relaxed);
    }
}

/// The direct-map state of one guest_memfd inode: where its counters go.
///
/// Every [`Block`] of the inode keeps a reference to it, so that the restores of a block that
/// outlives the inode's last file are counted, or not, safely.
#[pin_data]
struct Protmem {
    /// The VM's counters; `None` once the VM lets go of the guest_memfd.
    #[pin]
    stats: SpinLock<Option<StatsPtr>>,
    /// Where free 2 MiB blocks go, and come from.
    cache: Arc<Cache>,
}

impl Protmem {
    /// Counts `nr` pages removed with one TLB flush (none when `nr` is 0), which split `splits`
    /// large mappings of the direct map.
    fn removed(&self, nr: usize, splits: usize) {
        if nr == 0 {
            return;
        }
        let stats = self.stats.lock();
        if let Some(s) = stats.as_ref() {
            let p = s.0.as_ptr();
            // SAFETY: By the type invariant of `StatsPtr` the VM is alive, and it stays alive
            // while the lock is held: `kvm_protmem_detach()` takes the lock before the VM can go.
            unsafe {
                StatsPtr::add(&raw mut (*p).direct_map_pages, nr as u64);
                StatsPtr::add(&raw mut (*p).direct_map_removals, nr as u64);
                StatsPtr::add(&raw mut (*p).direct_map_flushes, 1);
                StatsPtr::add(&raw mut (*p).direct_map_splits, splits as u64);
            }
        }
    }

    /// Counts `nr` pages taken from the [`Cache`], off the direct map already.
    fn reused(&self, nr: usize) {
        if nr == 0 {
            return;
        }
        let stats = self.stats.lock();
        if let Some(s) = stats.as_ref() {
            let p = s.0.as_ptr();
            // SAFETY: As in `removed()`.
            unsafe {
                StatsPtr::add(&raw mut (*p).direct_map_pages, nr as u64);
                StatsPtr::add(&raw mut (*p).direct_map_removals, nr as u64);
                StatsPtr::add(&raw mut (*p).direct_map_reused, nr as u64);
            }
        }
    }

    /// Counts `nr` pages given back: mapped again, or kept off the direct map by the [`Cache`].
    fn restored(&self, nr: usize) {
        let stats = self.stats.lock();
        if let Some(s) = stats.as_ref() {
            let p = s.0.as_ptr();
            // SAFETY: As in `removed()`.
            unsafe {
                StatsPtr::add(&raw mut (*p).direct_map_pages, (nr as u64).wrapping_neg());
                StatsPtr::add(&raw mut (*p).direct_map_restores, nr as u64);
            }
        }
    }
}

/// Creates the state of a guest_memfd inode created with `GUEST_MEMFD_FLAG_NO_DIRECT_MAP`.
///
/// Returns NULL when out of memory.
///
/// # Safety
///
/// `stats` must point to the generic stats of a VM that stays alive until
/// [`kvm_protmem_detach`] is called; `cache` must come from [`kvm_protmem_cache_create`] and not
/// have been destroyed.
#[export]
pub unsafe extern "C" fn kvm_protmem_create(
    stats: *mut bindings::kvm_vm_stat_generic,
    cache: *mut bindings::kvm_protmem_cache,
) -> *mut bindings::kvm_protmem {
    let Some(stats) = NonNull::new(stats) else {
        return core::ptr::null_mut();
    };
    // SAFETY: By the safety requirements `cache` came from `into_foreign()` and was not put.
    let cache = unsafe { <Arc<Cache> as ForeignOwnable>::borrow(cache.cast()) };
    // INVARIANT: by the safety requirements the VM is alive until `kvm_protmem_detach()`.
    let init = pin_init!(Protmem {
        stats <- new_spinlock!(Some(StatsPtr(stats)), "kvm_protmem"),
        cache: cache.into(),
    });

    match Arc::pin_init(init, GFP_KERNEL_ACCOUNT) {
        Ok(pm) => pm.into_foreign().cast(),
        Err(_) => core::ptr::null_mut(),
    }
}

/// Stops counting for the VM: after this returns, `stats` may go away.
///
/// # Safety
///
/// `pm` must come from [`kvm_protmem_create`] and not have been put.
#[export]
pub unsafe extern "C" fn kvm_protmem_detach(pm: *mut bindings::kvm_protmem) {
    // SAFETY: By the safety requirements `pm` came from `into_foreign()` and was not put.
    let pm = unsafe { <Arc<Protmem> as ForeignOwnable>::borrow(pm.cast()) };

    *pm.stats.lock() = None;
}

/// Drops the inode's reference to its state; folios still off the direct map keep theirs.
///
/// # Safety
///
/// `pm` must come from [`kvm_protmem_create`]; it is put only once.
#[export]
pub unsafe extern "C" fn kvm_protmem_put(pm: *mut bindings::kvm_protmem) {
    // SAFETY: By the safety requirements this is the reference `kvm_protmem_create()` returned.
    drop(unsafe { <Arc<Protmem> as ForeignOwnable>::from_foreign(pm.cast()) });
}

/// Creates the cache of free 2 MiB blocks, which keeps at most `max` blocks.
///
/// Returns NULL when out of memory.
#[export]
pub extern "C" fn kvm_protmem_cache_create(max: c_uint) -> *mut bindings::kvm_protmem_cache {
    let init = pin_init!(Cache {
        blocks <- new_mutex!(
            CacheBlocks {
                pending: KVec::new(),
                ready: KVec::new(),
            },
            "kvm_protmem_cache"
        ),
        nr_pending: Atomic::new(0),
        nr_ready: Atomic::new(0),
        max: Atomic::new(max as usize),
    });

    match Arc::pin_init(init, GFP_KERNEL) {
        Ok(cache) => cache.into_foreign().cast(),
        Err(_) => core::ptr::null_mut(),
    }
}

/// Frees the blocks of the cache and drops the caller's reference; guest_memfds that still use
/// it keep theirs, and their blocks are freed when they go.
///
/// # Safety
///
/// `cache` must come from [`kvm_protmem_cache_create`]; it is destroyed only once, and not used
/// by the caller after.
#[export]
pub unsafe extern "C" fn kvm_protmem_cache_destroy(cache: *mut bindings::kvm_protmem_cache) {
    // SAFETY: By the safety requirements this is the reference `kvm_protmem_cache_create()`
    // returned.
    let cache = unsafe { <Arc<Cache> as ForeignOwnable>::from_foreign(cache.cast()) };

    cache.resize(0);
}

/// Keeps at most `max` free blocks from now on, and frees the blocks beyond that.
///
/// # Safety
///
/// `cache` must come from [`kvm_protmem_cache_create`] and not have been destroyed; the caller
/// may sleep.
#[export]
pub unsafe extern "C" fn kvm_protmem_cache_resize(
    cache: *mut bindings::kvm_protmem_cache,
    max: c_uint,
) {
    // SAFETY: By the safety requirements `cache` came from `into_foreign()` and was not put.
    let cache = unsafe { <Arc<Cache> as ForeignOwnable>::borrow(cache.cast()) };

    cache.resize(max as usize);
}

/// Returns the number of pages in free blocks, for the shrinker.
///
/// # Safety
///
/// `cache` must come from [`kvm_protmem_cache_create`] and not have been destroyed.
#[export]
pub unsafe extern "C" fn kvm_protmem_cache_count(
    cache: *mut bindings::kvm_protmem_cache,
) -> c_ulong {
    // SAFETY: By the safety requirements `cache` came from `into_foreign()` and was not put.
    let cache = unsafe { <Arc<Cache> as ForeignOwnable>::borrow(cache.cast()) };
    let blocks = cache.nr_pending.load(Relaxed) + cache.nr_ready.load(Relaxed);

    (blocks * BLOCK_PAGES) as c_ulong
}

/// Frees free blocks, mapped again, until `nr_pages` pages are freed or none is left.
///
/// Returns the number of pages freed, or -1 if the cache is busy.
///
/// # Safety
///
/// `cache` must come from [`kvm_protmem_cache_create`] and not have been destroyed; the caller
/// may sleep.
#[export]
pub unsafe extern "C" fn kvm_protmem_cache_scan(
    cache: *mut bindings::kvm_protmem_cache,
    nr_pages: c_ulong,
) -> c_long {
    // SAFETY: By the safety requirements `cache` came from `into_foreign()` and was not put.
    let cache = unsafe { <Arc<Cache> as ForeignOwnable>::borrow(cache.cast()) };

    match cache.shrink(nr_pages) {
        Some(freed) => freed as c_long,
        None => -1,
    }
}

/// Makes the blocks that the inode's truncation freed ready for reuse.
///
/// # Safety
///
/// `pm` must come from [`kvm_protmem_create`] and not have been put; the caller may sleep and
/// must have finished truncating.
#[export]
pub unsafe extern "C" fn kvm_protmem_settle(pm: *mut bindings::kvm_protmem) {
    // SAFETY: By the safety requirements `pm` came from `into_foreign()` and was not put.
    let pm = unsafe { <Arc<Protmem> as ForeignOwnable>::borrow(pm.cast()) };

    pm.cache.settle();
}

/// Adds zeroed pages, off the direct map, for every index in `start..end` that has none.
///
/// With `blocks`, an index whose naturally aligned 2 MiB range of the file (below `size`) is
/// entirely empty gets a 2 MiB [`Block`] for the whole range, from the [`Cache`] if it has one
/// (and no mbind() policy applies); other indices, and any index when no 2 MiB block can be had,
/// get a page of their own.
///
/// All or nothing for the direct map: everything is removed, with one TLB flush for the whole
/// request, before any of it enters the page cache. If a removal fails, nothing is added and the
/// error (`-ENOMEM` when a large mapping could not be split) is returned. A page that loses a race
/// with another thread adding the same index stays with its block, which is freed when its last
/// page leaves the page cache, or at once if no page of it entered.
///
/// Returns 0, `-ENOMEM`, `-EINTR`, or an error of the page cache.
///
/// # Safety
///
/// `pm` must be the state of `inode`, a live guest_memfd inode of `size` pages, and the caller
/// may sleep.
#[export]
pub unsafe extern "C" fn kvm_protmem_populate(
    pm: *mut bindings::kvm_protmem,
    inode: *mut bindings::inode,
    start: usize,
    end: usize,
    size: usize,
    blocks: bool,
) -> c_int {
    // SAFETY: By the safety requirements `pm` came from `into_foreign()` and is owned by the
    // inode, which outlives this call.
    let pm = unsafe { <Arc<Protmem> as ForeignOwnable>::borrow(pm.cast()) };
    // SAFETY: `inode` is a live guest_memfd inode of `size` pages by the safety requirements.
    match unsafe { populate(pm, inode, start, end, size, blocks) } {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// Returns whether `inode` has a page for any index in `start..end`.
///
/// # Safety
///
/// `inode` must be a live guest_memfd inode.
unsafe fn has_page(inode: *mut bindings::inode, start: usize, end: usize) -> bool {
    // SAFETY: `inode` is a live guest_memfd inode by the safety requirements.
    unsafe { bindings::kvm_gmem_has_folio(inode, start, end) }
}

/// Allocates and removes (without flushing) the block for `index`; see [`kvm_protmem_populate`].
///
/// Indices below `planned` already have pages planned by this request, which are not in the page
/// cache yet: a 2 MiB block must not cover them.
///
/// Returns the block, the index of its first page, and whether it came from the [`Cache`].
///
/// # Safety
///
/// As for [`kvm_protmem_populate`].
unsafe fn new_block(
    pm: ArcBorrow<'_, Protmem>,
    inode: *mut bindings::inode,
    batch: &mut Batch,
    index: usize,
    planned: usize,
    size: usize,
    blocks: bool,
) -> Result<(usize, Arc<Block>, bool)> {
    // Room first: removed pages must not be dropped uncounted.
    let block = UniqueArc::new_uninit(GFP_KERNEL)?;
    let base = index & !(BLOCK_PAGES - 1);
    let whole = blocks
        && base >= planned
        && base + BLOCK_PAGES <= size
        // SAFETY: `inode` is a live guest_memfd inode.
        && !unsafe { has_page(inode, base, base + BLOCK_PAGES) };
    // SAFETY: `inode` is a live guest_memfd inode.
    let cached = (whole && !unsafe { bindings::kvm_gmem_has_policy(inode, base) })
        .then(|| pm.cache.take())
        .flatten();

    let (first, removed, reused) = if let Some(removed) = cached {
        (base, removed, true)
    } else {
        // SAFETY: `inode` is a live guest_memfd inode.
        let pages = match whole.then(|| unsafe { Pages::alloc(inode, base, BLOCK_ORDER) }) {
            Some(Some(pages)) => pages,
            // SAFETY: `inode` is a live guest_memfd inode.
            _ => unsafe { Pages::alloc(inode, index, 0) }.ok_or(ENOMEM)?,
        };
        let first = if pages.nr == BLOCK_PAGES { base } else { index };
        (first, batch.remove(pages)?, false)
    };
    let page = NonNull::new(removed.first_page()).ok_or(EINVAL)?;
    let block = block.write(Block {
        first: page,
        removed: ManuallyDrop::new(removed),
        pm: pm.into(),
    });

    Ok((first, block.into(), reused))
}

/// See [`kvm_protmem_populate`].
///
/// # Safety
///
/// As for [`kvm_protmem_populate`].
unsafe fn populate(
    pm: ArcBorrow<'_, Protmem>,
    inode: *mut bindings::inode,
    start: usize,
    end: usize,
    size: usize,
    blocks: bool,
) -> Result {
    let mut new: KVVec<(usize, Arc<Block>)> = KVVec::new();
    let mut batch = Batch::new();
    let mut reused = 0;

    let removed = (|| -> Result {
        let mut index = start;
        let mut planned = 0;

        while index < end {
            if current!().signal_pending() {
                return Err(EINTR);
            }
            // SAFETY: `inode` is a live guest_memfd inode.
            if unsafe { has_page(inode, index, index + 1) } {
                index += 1;
                continue;
            }
            new.reserve(1, GFP_KERNEL)?;
            // SAFETY: As for this function.
            let (first, block, cached) =
                unsafe { new_block(pm, inode, &mut batch, index, planned, size, blocks) }?;
            if cached {
                reused += block.nr_pages();
            }
            index = first + block.nr_pages();
            planned = index;
            if new.push_within_capacity((first, block)).is_err() {
                // Cannot happen: there is room for one more, and the block is restored if so.
                return Err(ENOMEM);
            }
        }
        Ok(())
    })();

    // One TLB flush for everything removed above, before any of it can be reached.
    let (nr, splits) = (batch.nr_pages(), batch.nr_splits());
    batch.flush();
    pm.removed(nr, splits);
    pm.reused(reused);

    // On error the blocks are restored and freed as `new` is dropped.
    removed?;

    let mut ret = Ok(());
    for (first, block) in new {
        for i in 0..block.nr_pages() {
            let owner = block.clone().into_foreign();
            // SAFETY: `inode` is a live guest_memfd inode; the folio is a new order-0 page of the
            // block, off the direct map and not in any page cache; `owner` is a reference to the
            // block for the folio to keep in `private`.
            let err =
                unsafe { bindings::kvm_gmem_insert_folio(inode, block.folio(i), first + i, owner) };
            if err != 0 {
                // SAFETY: The insertion failed, so the folio did not keep `owner`.
                drop(unsafe { <Arc<Block> as ForeignOwnable>::from_foreign(owner) });
                if err != -(bindings::EEXIST as c_int) {
                    ret = to_result(err);
                    break;
                }
            }
        }
        if ret.is_err() {
            break;
        }
        // Dropping the last reference restores and frees a block that no page of got in.
    }
    ret
}

/// Lets go of a folio that leaves the page cache.
///
/// Called from guest_memfd's `->free_folio()` for folios whose `private` is set. When it was the
/// last page of its block in the page cache, the block is mapped again, zeroed and freed; until
/// then the page stays allocated (the block holds a reference) and removed.
///
/// # Safety
///
/// `owner` must be the `private` of the folio, set by [`kvm_protmem_populate`] when the folio
/// entered the page cache, and the page cache must have just let go of the folio; this is called
/// once per folio.
#[export]
pub unsafe extern "C" fn kvm_protmem_free_folio(owner: *mut c_void) {
    // SAFETY: By the safety requirements `owner` is the reference to the block the folio kept.
    drop(unsafe { <Arc<Block> as ForeignOwnable>::from_foreign(owner) });
}
