// SPDX-License-Identifier: GPL-2.0

//! guest_memfd memory that is not in the host's direct map.
//!
//! A guest_memfd created with `GUEST_MEMFD_FLAG_NO_DIRECT_MAP` keeps every page of its page cache
//! off the host kernel's direct map. Pages are zeroed and removed before they enter the page
//! cache ([`kvm_protmem_populate`]), and are mapped again, zeroed and freed, in process context
//! and outside reclaim, once they have all left it ([`kvm_protmem_free_folio`] queues them, and
//! [`Cache::drain`] frees them): the page cache never holds a page that is still mapped, and
//! nothing frees a page that is still removed.
//!
//! Pages are removed in [`Block`]s: 2 MiB of naturally aligned memory for a naturally aligned
//! 2 MiB range of the file, so that the direct map's 2 MiB mapping of the block is removed and
//! restored whole, never split; or a single page when no 2 MiB block can be had or the range is
//! partly in use already.
//!
//! A 2 MiB block whose pages have all left the page cache is kept off the direct map, up to a
//! limit, in a [`Cache`] shared by all guest_memfds: it is taken back from the LRU and the memory
//! cgroup, zeroed through a temporary mapping, and reused for the next 2 MiB range of any
//! guest_memfd without a removal, a TLB flush or an allocation. Pages are charged to the memory
//! cgroup before they are removed or taken from the cache: a cgroup at its limit refuses memory
//! before it costs a removal or a flush. Under memory pressure a shrinker
//! lets the cached blocks go, and a worker maps them again and frees them.
//!
//! This file is linked into kvm.ko next to `guest_memfd.c`, which calls the functions below; both
//! sides are declared in `include/linux/kvm_protmem.h`. The direct map is changed only through
//! [`kernel::mm::direct_map`].
//!
//! See `Documentation/virt/kvm/protected-memory.rst`.

use core::{mem::MaybeUninit, pin::Pin, ptr::NonNull};
use kernel::{
    alloc::KVVec,
    bindings,
    error::to_result,
    mm::direct_map::{Batch, DirectMapPages, Removed},
    new_mutex, new_spinlock,
    prelude::*,
    sync::{
        atomic::{Acquire, Atomic, Relaxed, Release},
        Arc, ArcBorrow, Mutex, SpinLock, UniqueArc,
    },
    types::ForeignOwnable,
};

/// The order of a [`Block`] of pages: 2 MiB, the size of a PMD mapping on x86-64.
const BLOCK_ORDER: u32 = 9;

/// The number of pages in a 2 MiB [`Block`].
const BLOCK_PAGES: usize = 1 << BLOCK_ORDER;

/// How often [`Cache::drain`] finds a page of a block held by someone else before it frees the
/// block instead of keeping it.
const MAX_BUSY: u8 = 8;

/// Physically contiguous order-0 pages of a guest_memfd, allocated together.
///
/// # Invariants
///
/// `first` is the first of `nr` physically contiguous order-0 pages, 1 or [`BLOCK_PAGES`],
/// zeroed (and charged, see `kvm_gmem_charge_pages()`) when they were allocated; this value holds
/// one reference to each of them.
struct Pages {
    first: NonNull<bindings::page>,
    nr: usize,
}

impl Pages {
    /// Allocates `1 << order` zeroed pages for the range of `inode` that starts at `index`, charged
    /// to the memory cgroup that its page cache charges.
    ///
    /// Returns `None` when the memory cannot be had or charged (without retrying hard for a 2 MiB
    /// block).
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
        // are mapped again (a `Pages` is dropped removed only by `Removed`, which maps it first),
        // but for pages with hardware poison and rarely pages next to them, which
        // `kvm_gmem_free_pages()` does not touch.
        unsafe { bindings::kvm_gmem_free_pages(self.first.as_ptr(), self.nr) };
    }
}

// SAFETY: A `Pages` is only references to pages, which may be dropped on any thread.
unsafe impl Send for Pages {}

// SAFETY: A shared `Pages` gives only the pages' address and number, which never change.
unsafe impl Sync for Pages {}

// SAFETY: By the type invariant the pages are physically contiguous and this value holds a
// reference to each of them until it is dropped; guest_memfd changes their direct mapping only
// through the `Removed` that owns them. `Pages::drop` (`kvm_gmem_free_pages()`) drops the
// references, touching no page out of the direct map and keeping those that are not poisoned.
unsafe impl DirectMapPages for Pages {
    fn first_page(&self) -> *mut bindings::page {
        self.first.as_ptr()
    }

    fn nr_pages(&self) -> usize {
        self.nr
    }
}

/// A block's pages, with the link that queues them once the block is free.
///
/// Allocated with the block, in process context, so that queueing the pages for the release
/// worker needs no allocation: `->free_folio()` and the shrinker may neither allocate nor sleep.
struct Node {
    removed: Removed<Pages>,
    next: Option<KBox<Node>>,
    /// How often a drain found a page of the block still held by someone else.
    busy: u8,
}

/// A stack of [`Node`]s.
///
/// Dropping it drops the nodes one at a time (a recursive drop of a long chain could overflow
/// the stack): each block is mapped again, zeroed and freed.
struct Stack {
    head: Option<KBox<Node>>,
    len: usize,
}

impl Stack {
    const fn new() -> Self {
        Self { head: None, len: 0 }
    }

    fn push(&mut self, mut node: KBox<Node>) {
        // A chain pushed along would be dropped with this stack, under its lock.
        debug_assert!(node.next.is_none());
        node.next = self.head.take();
        self.head = Some(node);
        self.len += 1;
    }

    fn pop(&mut self) -> Option<KBox<Node>> {
        let mut node = self.head.take()?;

        self.head = node.next.take();
        self.len -= 1;
        Some(node)
    }

    /// Takes all the nodes, leaving the stack empty.
    fn take(&mut self) -> Self {
        core::mem::replace(self, Self::new())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        while let Some(node) = self.pop() {
            drop(node);
        }
    }
}

/// Pages off the direct map, shared by the page-cache folios that use them.
///
/// Each page of the block that is in the page cache is a folio of its own, whose `private` holds
/// a reference to the block. Pages that leave the page cache stay allocated, and removed, until
/// the block's last page leaves it: then the block is queued for [`Cache::drain`], which keeps a
/// 2 MiB block for reuse, or maps it again as a whole (a 2 MiB block as the 2 MiB mapping it
/// was), zeroes it and frees it.
///
/// A block costs two 32-byte slab objects: the `Arc` (its count, `node` and `pm`) and the
/// [`Node`] (the `Removed`, the link and the busy count).
///
/// # Invariants
///
/// `node` is `Some` from the block's creation until it is dropped, or until
/// [`Block::release_unused`] takes it.
struct Block {
    /// The pages; `None` only while the block is dropped.
    node: Option<KBox<Node>>,
    pm: Arc<Protmem>,
}

// The folios of a block hold references to it on any CPU: it must be shareable, with no
// `unsafe impl` (its fields are).
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Block>();
};

impl Block {
    fn removed(&self) -> Option<&Removed<Pages>> {
        self.node.as_ref().map(|node| &node.removed)
    }

    /// Gives the pages of a block that no page of entered the page cache back at once: the
    /// [`Cache`] keeps a 2 MiB block, still zeroed, if it has room, and the others are mapped
    /// again and freed here, by the caller, instead of queued.
    ///
    /// A block whose pages entered the page cache must be dropped instead, even if this is its
    /// last reference: its pages may still be on an LRU list and charged, and hold guest data.
    fn release_unused(this: Arc<Self>) {
        let Some(mut unique) = Arc::into_unique_or_drop(this) else {
            return;
        };
        // `Block` is `Unpin`.
        let block = Pin::get_mut(unique.as_mut());

        // INVARIANT: `node` is taken, and the block is dropped right after.
        if let Some(node) = block.node.take() {
            block.pm.restored(node.removed.nr_pages());
            drop(block.pm.cache.keep_unused(node));
        }
    }

    /// Returns the folio of the block's page `i`, which must be less than [`Block::nr_pages`].
    fn folio(&self, i: usize) -> *mut bindings::folio {
        debug_assert!(i < self.nr_pages());
        self.removed().map_or(core::ptr::null_mut(), |r| {
            // SAFETY: The `struct page`s of a buddy allocation are contiguous, and the block holds
            // a reference to each of its pages, so page `i` is valid. The pages are order-0: each
            // is a folio of its own.
            unsafe { bindings::page_folio(r.first_page().wrapping_add(i)) }
        })
    }

    fn nr_pages(&self) -> usize {
        self.removed().map_or(0, |r| r.nr_pages())
    }
}

impl Drop for Block {
    /// Runs from `->free_folio()`, for the block's last page: constant work, no sleeping.
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            self.pm.restored(node.removed.nr_pages());
            self.pm.cache.release(node);
        }
    }
}

/// Free blocks, and free 2 MiB blocks kept off the direct map for reuse by any guest_memfd.
///
/// A block is *released* when its last page leaves the page cache. [`Cache::drain`], in process
/// context with no lock held that a page-table allocation may hold, takes the released blocks:
/// up to `max` 2 MiB blocks are taken back from the LRU and the memory cgroup (freeing them would
/// have done that; the page cache still held the last page when the block was released) and
/// zeroed through a temporary mapping, with one TLB flush for all of them, and are then *ready*
/// to be reused with no removal, flush, allocation or zeroing. The others are mapped again,
/// zeroed and freed.
///
/// `->free_folio()` and the shrinker only move nodes between stacks under a spinlock, and queue
/// the release worker (`kvm_gmem_protmem_kick()`), which drains. Nothing that maps memory again,
/// sleeps or allocates runs in reclaim: mapping memory again ends in a collapse, which takes
/// init_mm's mmap lock, and a task that allocates page tables under that lock can reclaim.
///
/// Released blocks do not pile up: every release queues the worker, the threads that truncate
/// (PUNCH_HOLE, the last close) drain themselves before they return, and a block that stays busy
/// is freed after [`MAX_BUSY`] tries.
#[pin_data]
struct Cache {
    #[pin]
    lists: SpinLock<Lists>,
    /// Serialises drains: a caller of [`Cache::drain`] returns when every block released before
    /// the call is ready or freed, even if the worker took it.
    #[pin]
    draining: Mutex<()>,
    /// Released and doomed blocks that no drain has finished with yet; changed under `lists`
    /// when a block is queued, and after a drain has put what it kept in `ready`.
    pending: Atomic<usize>,
    /// The most blocks kept ready; 0 turns the cache off.
    max: Atomic<usize>,
}

/// The stacks of a [`Cache`].
struct Lists {
    /// Blocks whose pages have all left the page cache.
    released: Stack,
    /// 2 MiB blocks, zeroed, off the direct map and flushed, for reuse. Invariant: their pages are
    /// charged to no memory cgroup and on no LRU list ([`Removed::reuse`] took them back).
    ready: Stack,
    /// Blocks to map again and free: ready blocks the shrinker or a lower limit let go.
    doomed: Stack,
}

impl Cache {
    /// Queues a block whose pages are not in the page cache any more.
    ///
    /// Any context in which `->free_folio()` runs: no sleeping, no allocation.
    fn release(&self, node: KBox<Node>) {
        let mut lists = self.lists.lock();

        self.pending.add(1, Relaxed);
        lists.released.push(node);
        drop(lists);
        // Later: the truncation that freed the block drains it itself, once it is done.
        kick(false);
    }

    /// Makes the released blocks ready, or frees them, and frees the doomed ones.
    ///
    /// Process context; may sleep; the caller holds no lock that a page-table allocation may hold.
    /// Called by the release worker, after a truncation and on a new limit. Returns when every
    /// block released or doomed before the call is ready or freed, even one the worker took,
    /// except blocks that someone else still holds a page of: those are tried again later.
    fn drain(&self) {
        // Pairs with the `Release` below: a drain that finished blocks is seen with its results.
        if self.pending.load(Acquire) == 0 {
            return;
        }
        let _serialised = self.draining.lock();
        let mut busy = Stack::new();

        loop {
            let (mut released, doomed, room) = {
                let mut lists = self.lists.lock();
                let room = self.max.load(Relaxed).saturating_sub(lists.ready.len);
                (lists.released.take(), lists.doomed.take(), room)
            };
            let taken = released.len + doomed.len;
            if taken == 0 {
                break;
            }
            // Mapped again, zeroed and freed.
            drop(doomed);

            let mut ready = Stack::new();
            let mut batch = Batch::<Pages>::new();
            let mut again = 0;
            while let Some(mut node) = released.pop() {
                if ready.len == room || node.removed.nr_pages() != BLOCK_PAGES {
                    // Mapped again, zeroed and freed.
                    drop(node);
                    continue;
                }
                match node.removed.reuse() {
                    Ok(()) => {
                        if batch.zero(&mut node.removed).is_ok() {
                            node.busy = 0;
                            ready.push(node);
                        }
                    }
                    Err(e) if e == EBUSY && node.busy < MAX_BUSY => {
                        node.busy += 1;
                        again += 1;
                        busy.push(node);
                    }
                    // Mapped again and freed below.
                    Err(_) => {}
                }
            }
            // The temporary mappings leave the TLBs before any of the pages can be reused.
            batch.flush();

            let mut lists = self.lists.lock();
            while lists.ready.len < self.max.load(Relaxed) {
                match ready.pop() {
                    Some(node) => lists.ready.push(node),
                    None => break,
                }
            }
            drop(lists);
            // Beyond a limit lowered meanwhile: mapped again and freed, outside the lock.
            drop(ready);
            let before = self.pending.fetch_sub(taken - again, Release);
            debug_assert!(before >= taken - again);
        }

        if busy.len > 0 {
            let mut lists = self.lists.lock();
            while let Some(node) = busy.pop() {
                lists.released.push(node);
            }
            drop(lists);
            kick(false);
        }
    }

    /// Keeps a block that no page of entered the page cache, and so is still zeroed, removed and
    /// flushed, if it is a 2 MiB block and there is room; gives it back otherwise.
    ///
    /// Process context; may sleep.
    fn keep_unused(&self, mut node: KBox<Node>) -> Option<KBox<Node>> {
        if node.removed.nr_pages() != BLOCK_PAGES {
            return Some(node);
        }
        // A ready block belongs to no memory cgroup: uncharged here, as it would be if freed. Its
        // pages were never on an LRU list, so nobody else holds them.
        if node.removed.reuse().is_err() {
            return Some(node);
        }
        let mut lists = self.lists.lock();
        if lists.ready.len >= self.max.load(Relaxed) {
            return Some(node);
        }
        lists.ready.push(node);
        None
    }

    /// Takes a ready block, zeroed and off the direct map, if there is one.
    fn take(&self) -> Option<KBox<Node>> {
        self.lists.lock().ready.pop()
    }

    /// Returns the number of pages in ready blocks.
    fn count(&self) -> usize {
        self.lists.lock().ready.len * BLOCK_PAGES
    }

    /// Lets ready blocks go until `nr_pages` pages are let go or none is ready, for the release
    /// worker to map them again and free them.
    ///
    /// Reclaim context: moves blocks under the spinlock and queues the worker, nothing more.
    /// Returns the number of pages let go.
    fn shrink(&self, nr_pages: usize) -> usize {
        let mut freed = 0;

        {
            let mut lists = self.lists.lock();
            while freed < nr_pages {
                match lists.ready.pop() {
                    Some(node) => {
                        freed += node.removed.nr_pages();
                        self.pending.add(1, Relaxed);
                        lists.doomed.push(node);
                    }
                    None => break,
                }
            }
        }
        if freed > 0 {
            kick(true);
        }
        freed
    }

    /// Keeps at most `max` blocks from now on, and frees the blocks beyond that.
    fn resize(&self, max: usize) {
        self.max.store(max, Relaxed);
        {
            let mut lists = self.lists.lock();
            while lists.ready.len > max {
                match lists.ready.pop() {
                    Some(node) => {
                        self.pending.add(1, Relaxed);
                        lists.doomed.push(node);
                    }
                    None => break,
                }
            }
        }
        self.drain();
    }
}

/// Queues the release worker, which calls [`Cache::drain`]: at once if `now`, else a little later.
fn kick(now: bool) {
    // SAFETY: `kvm_gmem_protmem_kick()` only queues a work item, in any context.
    unsafe { bindings::kvm_gmem_protmem_kick(now) };
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
        lists <- new_spinlock!(
            Lists {
                released: Stack::new(),
                ready: Stack::new(),
                doomed: Stack::new(),
            },
            "kvm_protmem_cache"
        ),
        draining <- new_mutex!((), "kvm_protmem_drain"),
        pending: Atomic::new(0),
        max: Atomic::new(max as usize),
    });

    match Arc::pin_init(init, GFP_KERNEL) {
        Ok(cache) => cache.into_foreign().cast(),
        Err(_) => core::ptr::null_mut(),
    }
}

/// Frees the blocks of the cache and drops the caller's reference.
///
/// # Safety
///
/// `cache` must come from [`kvm_protmem_cache_create`]; it is destroyed only once, and not used
/// by the caller after. No guest_memfd uses it any more, and the release worker has stopped; the
/// caller may sleep.
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
    cache.count() as c_ulong
}

/// Lets free blocks go, for the release worker to map them again and free them, until
/// `nr_pages` pages are let go or none is left; for the shrinker, in reclaim context.
///
/// Returns the number of pages let go.
///
/// # Safety
///
/// `cache` must come from [`kvm_protmem_cache_create`] and not have been destroyed.
#[export]
pub unsafe extern "C" fn kvm_protmem_cache_scan(
    cache: *mut bindings::kvm_protmem_cache,
    nr_pages: c_ulong,
) -> c_ulong {
    // SAFETY: By the safety requirements `cache` came from `into_foreign()` and was not put.
    let cache = unsafe { <Arc<Cache> as ForeignOwnable>::borrow(cache.cast()) };

    cache.shrink(nr_pages) as c_ulong
}

/// Makes the blocks released so far ready for reuse, or maps them again and frees them; for the
/// release worker, and after a truncation.
///
/// # Safety
///
/// `cache` must come from [`kvm_protmem_cache_create`] and not have been destroyed; the caller
/// may sleep, and holds no lock that a page-table allocation may hold.
#[export]
pub unsafe extern "C" fn kvm_protmem_cache_drain(cache: *mut bindings::kvm_protmem_cache) {
    // SAFETY: By the safety requirements `cache` came from `into_foreign()` and was not put.
    let cache = unsafe { <Arc<Cache> as ForeignOwnable>::borrow(cache.cast()) };

    cache.drain();
}

/// Adds zeroed pages, off the direct map, for every index in `start..end` that has none.
///
/// With `blocks`, an index whose naturally aligned 2 MiB range of the file (below `size`) is
/// entirely empty gets a 2 MiB [`Block`] for the whole range, from the [`Cache`] if it has one
/// (and no mbind() policy applies); other indices, and any index when no 2 MiB block can be had,
/// get a page of their own.
///
/// Every page of the request is allocated and charged to the memory cgroup, or taken from the
/// [`Cache`] and charged, before any is removed: a request that the cgroup refuses (`-ENOMEM`, or
/// its OOM killer) costs no removal and no TLB flush.
///
/// All or nothing for the direct map: everything is removed, with one TLB flush for the whole
/// request, before any of it enters the page cache. If a removal fails, nothing is added and the
/// error (`-ENOMEM` when a large mapping could not be split) is returned. If the page cache fails
/// to add a page (`-ENOMEM` for its own tree), the pages added before it stay, as they do without
/// the flag, and the error is returned. The blocks of this request that no page of got in go to
/// the [`Cache`] (2 MiB blocks, while it has room), or are mapped again and freed, before it
/// returns.
///
/// The caller serialises the requests of an inode (guest_memfd.c's `populate_lock`), so each
/// sees the pages the others added: every page of a block enters the page cache, unless the page
/// cache fails, and a 2 MiB range of the file has at most one 2 MiB block with a page in it. An
/// index of the file then holds at most two pages: the one in the page cache, and one that left
/// it and waits in a block that still has pages in the page cache.
///
/// Returns 0, `-ENOMEM`, `-EINTR`, or an error of the page cache.
///
/// # Safety
///
/// `pm` must be the state of `inode`, a live guest_memfd inode of `size` pages; the caller may
/// sleep, and holds no lock that a page-table allocation may hold (mapping memory again takes
/// init_mm's mmap lock).
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

/// Charges the pages of `removed`, taken from the [`Cache`], to the memory cgroup that the page
/// cache of `inode` charges, as newly allocated pages are charged: before anything else is done
/// with them.
///
/// On error the pages charged before the one that failed stay charged, until
/// [`Cache::keep_unused`] or freeing them uncharges them.
///
/// # Safety
///
/// `inode` must be a live guest_memfd inode, and none of the pages may be charged (a page is
/// charged only once).
unsafe fn charge(inode: *mut bindings::inode, removed: &Removed<Pages>) -> Result {
    // SAFETY: `inode` is a live guest_memfd inode and the pages are not charged, by the safety
    // requirements; `removed` holds a reference to each of its pages, which are in no page cache.
    to_result(unsafe {
        bindings::kvm_gmem_charge_pages(inode, removed.first_page(), removed.nr_pages())
    })
}

/// A block that a request will add: charged, and still in the direct map unless it came from the
/// [`Cache`]. See [`kvm_protmem_populate`].
enum Plan {
    /// From the [`Cache`]: zeroed, removed and flushed already.
    Cached(KBox<Node>),
    /// Newly allocated and zeroed, in the direct map; with the room for its node. The pages are
    /// `None` once they went to the [`Batch`] that removes them (after the plan, so
    /// [`Plan::nr_pages`] is only asked before).
    New(Option<Pages>, KBox<MaybeUninit<Node>>),
}

impl Plan {
    fn nr_pages(&self) -> usize {
        match self {
            Plan::Cached(node) => node.removed.nr_pages(),
            Plan::New(pages, _) => pages.as_ref().map_or(0, |pages| pages.nr),
        }
    }

    /// Gives up a block that was not removed: back to the [`Cache`], or freed (which uncharges it).
    fn give_back(self, cache: &Cache) {
        if let Plan::Cached(node) = self {
            drop(cache.keep_unused(node));
        }
    }
}

/// A [`Plan`] for the pages of a request from `first`, with the room for its [`Block`].
struct Planned {
    first: usize,
    plan: Plan,
    block: UniqueArc<MaybeUninit<Block>>,
}

/// Allocates and charges the block for `index`, or takes one from the [`Cache`] and charges it;
/// see [`kvm_protmem_populate`]. Nothing is removed here.
///
/// Indices below `planned` already have pages planned by this request, which are not in the page
/// cache yet: a 2 MiB block must not cover them.
///
/// # Safety
///
/// As for [`kvm_protmem_populate`].
unsafe fn plan_block(
    pm: ArcBorrow<'_, Protmem>,
    inode: *mut bindings::inode,
    index: usize,
    planned: usize,
    size: usize,
    blocks: bool,
) -> Result<Planned> {
    // Room first, before anything is charged.
    let block = UniqueArc::new_uninit(GFP_KERNEL_ACCOUNT)?;
    let base = index & !(BLOCK_PAGES - 1);
    let whole = blocks
        && base >= planned
        && base + BLOCK_PAGES <= size
        // SAFETY: `inode` is a live guest_memfd inode.
        && !unsafe { has_page(inode, base, base + BLOCK_PAGES) };
    // SAFETY: `inode` is a live guest_memfd inode.
    let mut whole = whole && !unsafe { bindings::kvm_gmem_has_policy(inode, base) };
    let cached = whole
        .then(|| pm.cache.take())
        .flatten()
        // Poisoned while it was cached: mapped again and freed, but for the poisoned pages.
        .filter(|node| !node.removed.has_hwpoison())
        // SAFETY: `inode` is a live guest_memfd inode; a ready block is not charged.
        .and_then(|node| match unsafe { charge(inode, &node.removed) } {
            Ok(()) => Some(node),
            // The cgroup has no room for it: back to the cache, uncharged, or mapped again and
            // freed. A new block would not be charged either: single pages may.
            Err(_) => {
                drop(pm.cache.keep_unused(node));
                whole = false;
                None
            }
        });

    let (first, plan) = if let Some(node) = cached {
        (base, Plan::Cached(node))
    } else {
        // The node too: the pages must be queued without an allocation when they are freed.
        let node = KBox::<Node>::new_uninit(GFP_KERNEL_ACCOUNT)?;
        // SAFETY: `inode` is a live guest_memfd inode.
        let pages = match whole.then(|| unsafe { Pages::alloc(inode, base, BLOCK_ORDER) }) {
            Some(Some(pages)) => pages,
            // SAFETY: `inode` is a live guest_memfd inode.
            _ => unsafe { Pages::alloc(inode, index, 0) }.ok_or(ENOMEM)?,
        };
        let first = if pages.nr == BLOCK_PAGES { base } else { index };
        (first, Plan::New(Some(pages), node))
    };

    Ok(Planned { first, plan, block })
}

/// Plans the blocks for `start..end`; see [`kvm_protmem_populate`]. On error every block planned
/// is given back, and nothing was removed.
///
/// # Safety
///
/// As for [`kvm_protmem_populate`].
unsafe fn plan(
    pm: ArcBorrow<'_, Protmem>,
    inode: *mut bindings::inode,
    start: usize,
    end: usize,
    size: usize,
    blocks: bool,
) -> Result<KVVec<Planned>> {
    let mut plans: KVVec<Planned> = KVVec::new();

    let planned = (|| -> Result {
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
            plans.reserve(1, GFP_KERNEL_ACCOUNT)?;
            // SAFETY: As for this function.
            let p = unsafe { plan_block(pm, inode, index, planned, size, blocks) }?;
            index = p.first + p.plan.nr_pages();
            planned = index;
            if let Err(e) = plans.push_within_capacity(p) {
                // Cannot happen: there is room for one more.
                e.0.plan.give_back(&pm.cache);
                return Err(ENOMEM);
            }
        }
        Ok(())
    })();

    match planned {
        Ok(()) => Ok(plans),
        Err(e) => {
            for p in plans {
                p.plan.give_back(&pm.cache);
            }
            Err(e)
        }
    }
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
    // SAFETY: As for this function.
    let mut plans = unsafe { plan(pm, inode, start, end, size, blocks) }?;
    let mut new: KVVec<(usize, Arc<Block>)> = KVVec::new();
    let batch = new
        .reserve(plans.len(), GFP_KERNEL_ACCOUNT)
        .map_err(Error::from)
        .and_then(|()| Batch::with_capacity(plans.len(), GFP_KERNEL_ACCOUNT));
    let mut batch = match batch {
        Ok(batch) => batch,
        Err(e) => {
            for p in plans {
                p.plan.give_back(&pm.cache);
            }
            return Err(e);
        }
    };
    let mut reused = 0;
    let mut removed = Ok(());
    // The plans from this one on were not removed (the first of them failed).
    let mut failed = plans.len();

    for (i, p) in plans.iter_mut().enumerate() {
        match &mut p.plan {
            Plan::Cached(node) => reused += node.removed.nr_pages(),
            Plan::New(pages, _) => {
                let Some(pages) = pages.take() else { continue };
                // On error the pages were not removed, and are freed.
                if let Err(e) = batch.remove(pages, GFP_KERNEL_ACCOUNT) {
                    removed = Err(e);
                    failed = i;
                    break;
                }
            }
        }
    }

    // One TLB flush for everything removed above, before any of it can be reached.
    let (nr, splits) = (batch.nr_pages(), batch.nr_splits());
    let mut flushed = batch.flush().into_iter();
    pm.removed(nr, splits);
    pm.reused(reused);

    for (i, p) in plans.into_iter().enumerate() {
        let node = match p.plan {
            // Not removed: back to the cache, or freed.
            plan if i >= failed => {
                plan.give_back(&pm.cache);
                continue;
            }
            Plan::Cached(node) => node,
            // Removed and flushed: `flush()` returns them in the order of the plans.
            Plan::New(_, node) => match flushed.next() {
                Some(removed) => node.write(Node {
                    removed,
                    next: None,
                    busy: 0,
                }),
                // Cannot happen: every plan before `failed` was removed. Nothing is added.
                None => {
                    debug_assert!(false, "fewer ranges flushed than removed");
                    removed = Err(ENOMEM);
                    continue;
                }
            },
        };
        let block = p.block.write(Block {
            node: Some(node),
            pm: pm.into(),
        });
        if let Err(e) = new.push_within_capacity((p.first, block.into())) {
            // Cannot happen: there is room for every plan.
            Block::release_unused(e.0 .1);
        }
    }
    debug_assert!(flushed.next().is_none());

    if let Err(e) = removed {
        // None of them entered the page cache: kept, or mapped again and freed here.
        for (_, block) in new {
            Block::release_unused(block);
        }
        return Err(e);
    }

    let mut ret = Ok(());
    let mut new = new.into_iter();
    for (first, block) in &mut new {
        let mut entered = false;
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
                // Only a page added other than by `kvm_protmem_populate` could be there, and
                // nothing adds one: that page would do as well as this one.
                if err != -(bindings::EEXIST as c_int) {
                    ret = to_result(err);
                    break;
                }
            } else {
                entered = true;
            }
        }
        if entered {
            // Released, and drained, when its last page leaves the page cache: maybe already,
            // truncated by a PUNCH_HOLE that raced with a fault.
            drop(block);
        } else {
            // No page of it got in: kept, or mapped again and freed here.
            Block::release_unused(block);
        }
        if ret.is_err() {
            break;
        }
    }
    // The blocks after a failed insertion.
    for (_, block) in new {
        Block::release_unused(block);
    }
    ret
}

/// Lets go of a folio that leaves the page cache.
///
/// Called from guest_memfd's `->free_folio()` for folios whose `private` is set. When it was the
/// last page of its block in the page cache, the block is queued for [`Cache::drain`]; until then
/// the page stays allocated (the block holds a reference) and removed. Constant work under a
/// spinlock: it neither sleeps nor allocates.
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
