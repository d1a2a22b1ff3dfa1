// SPDX-License-Identifier: GPL-2.0

//! guest_memfd memory that is not in the host's direct map.
//!
//! A guest_memfd created with `GUEST_MEMFD_FLAG_NO_DIRECT_MAP` keeps every page of its page cache
//! off the host kernel's direct map. Its pages come from mm's direct-map pool
//! ([`kernel::mm::direct_map::PoolBatch`]), out of the direct map and zeroed, before they enter
//! the page cache ([`kvm_protmem_populate`]); they leave it through mm's own free path, which
//! gives them back to the pool, still out of the direct map: the page cache never holds a page
//! that is still mapped, and nothing frees a page that is still removed.
//!
//! The pool removes memory a pageblock (2 MiB on x86-64) at a time, so that the direct map's
//! 2 MiB mapping is removed whole, never split, and restored whole when the pool gives the block
//! back; it keeps free blocks and freed pages for reuse without a removal or a TLB flush. A
//! naturally aligned 2 MiB range of the file gets a whole block when it can; other indices get a
//! page of their own, from a block the pool has already removed when it has one.
//!
//! This file is linked into kvm.ko next to `guest_memfd.c`, which calls the functions below; both
//! sides are declared in `include/linux/kvm_protmem.h`. The direct map is changed only through
//! [`kernel::mm::direct_map`].
//!
//! See `Documentation/virt/kvm/protected-memory.rst`.

use core::{ops::Range, ptr::NonNull};
use kernel::{
    alloc::KVVec,
    bindings,
    error::to_result,
    mm::direct_map::{PoolBatch, PoolPage},
    new_spinlock,
    prelude::*,
    sync::{
        atomic::{Atomic, Relaxed},
        Arc, ArcBorrow, SpinLock,
    },
    task,
    types::ForeignOwnable,
};

/// The number of pages in a 2 MiB block, the size of a PMD mapping on x86-64.
const BLOCK_PAGES: usize = 512;

/// Two counters of a VM's stats (`struct kvm_vm_stat` on x86).
///
/// # Invariants
///
/// `pages` and `flushes` point to `u64` stats of a VM, valid for reads and writes and aligned, for
/// as long as `self` exists ([`kvm_protmem_detach`] drops it before the VM can go); the component
/// writes them only atomically.
struct StatsPtr {
    pages: NonNull<u64>,
    flushes: NonNull<u64>,
}

// SAFETY: The counters are updated with atomic operations from any thread.
unsafe impl Send for StatsPtr {}

impl StatsPtr {
    /// `direct_map_pages`: the pages of the VM's guest_memfds that are off the direct map.
    fn pages(&self) -> &Atomic<u64> {
        // SAFETY: By the type invariant the pointer is valid and aligned for as long as `self`
        // exists, and the component writes it only atomically. Known exception to "no data
        // race": KVM's stats code reads every stat, and clears cumulative ones, with plain
        // word-sized accesses, as it does for the C stats that are updated concurrently.
        unsafe { Atomic::from_ptr(self.pages.as_ptr()) }
    }

    /// `direct_map_flushes`: the kernel TLB flushes issued for the VM's requests.
    fn flushes(&self) -> &Atomic<u64> {
        // SAFETY: As for `pages()`.
        unsafe { Atomic::from_ptr(self.flushes.as_ptr()) }
    }
}

/// The direct-map state of one guest_memfd inode: where its counters go.
///
/// Every folio of the inode's page cache keeps a reference to it in `private`, so that a folio
/// that leaves the page cache after the inode's last file is counted, or not, safely.
#[pin_data]
struct Protmem {
    /// The VM's counters; `None` once the VM lets go of the guest_memfd.
    #[pin]
    stats: SpinLock<Option<StatsPtr>>,
}

impl Protmem {
    /// Counts `nr` pages that entered the page cache, and the TLB flush (`flushed`) that took
    /// the pageblocks the pool removed for them out of every CPU's TLB.
    fn added(&self, nr: usize, flushed: bool) {
        if let Some(s) = self.stats.lock().as_ref() {
            s.pages().add(nr as u64, Relaxed);
            s.flushes().add(u64::from(flushed), Relaxed);
        }
    }

    /// Counts a page that left the page cache, back to the pool.
    fn left(&self) {
        if let Some(s) = self.stats.lock().as_ref() {
            s.pages().fetch_sub(1u64, Relaxed);
        }
    }
}

/// Creates the state of a guest_memfd inode created with `GUEST_MEMFD_FLAG_NO_DIRECT_MAP`.
///
/// Returns NULL when out of memory.
///
/// # Safety
///
/// `pages` and `flushes` must point to the `direct_map_pages` and `direct_map_flushes` stats of a
/// VM, aligned `u64`s that stay valid until [`kvm_protmem_detach`] is called and that nothing else
/// writes but KVM's stats code.
#[export]
pub unsafe extern "C" fn kvm_protmem_create(
    pages: *mut u64,
    flushes: *mut u64,
) -> *mut bindings::kvm_protmem {
    let (Some(pages), Some(flushes)) = (NonNull::new(pages), NonNull::new(flushes)) else {
        return core::ptr::null_mut();
    };
    // INVARIANT: By the safety requirements both pointers are valid, aligned `u64`s until
    // `kvm_protmem_detach()`, which nothing else writes but KVM's stats code.
    let init = pin_init!(Protmem {
        stats <- new_spinlock!(Some(StatsPtr { pages, flushes }), "kvm_protmem"),
    });

    match Arc::pin_init(init, GFP_KERNEL_ACCOUNT) {
        Ok(pm) => pm.into_foreign().cast(),
        Err(_) => core::ptr::null_mut(),
    }
}

/// Stops counting for the VM: after this returns, its stats may go away.
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

/// Drops the inode's reference to its state; folios still in the page cache keep theirs.
///
/// # Safety
///
/// `pm` must come from [`kvm_protmem_create`]; it is put only once.
#[export]
pub unsafe extern "C" fn kvm_protmem_put(pm: *mut bindings::kvm_protmem) {
    // SAFETY: By the safety requirements this is the reference `kvm_protmem_create()` returned.
    drop(unsafe { <Arc<Protmem> as ForeignOwnable>::from_foreign(pm.cast()) });
}

/// Adds zeroed pages, off the direct map, for every index in `start..end` that has none.
///
/// With `blocks`, an index whose naturally aligned 2 MiB range of the file (below `size`) is
/// entirely empty gets a whole 2 MiB block of the pool for the range, when the pool can give one;
/// other indices get a page of their own. An mbind() policy of the file names the node the pool
/// prefers; without one the task's memory policy does.
///
/// All or nothing: every page of the request is taken from the pool, with one TLB flush for the
/// pageblocks the pool removed for it, and charged to the memory cgroup of the page cache, before
/// any enters the page cache. If the pool has no memory (`-ENOSPC`) or the cgroup refuses it,
/// nothing is added and the pages go back to the pool unused: a cgroup at its limit costs no
/// zeroing, and a removal only when the pool had no free pageblock, which it then keeps. If the
/// page cache fails to add a page (`-ENOMEM` for its own tree), the pages added before it stay,
/// as they do without the flag, and the error is returned.
///
/// The caller serialises the requests of an inode (guest_memfd.c's `populate_lock`), so each
/// sees the pages the others added: an index of the file holds at most one page.
///
/// With `interruptible`, any signal stops the request before it takes memory (`-EINTR`), as it
/// stops plain guest_memfd's fallocate(); without (a fault on a user mapping), only a fatal
/// signal does: a VMM that kicks its vCPU threads with signals must not see its own accesses
/// fail. A fatal signal stops a request between two allocations in either mode.
///
/// Returns 0, `-ENOMEM` (the memory cgroup refused a page, or no room for the request's
/// bookkeeping), `-ENOSPC` (the pool had no page, or could not take one out of the direct map),
/// `-EINTR`, `-EOPNOTSUPP` (no pool), `-EINVAL` (no inode), or an error of the page cache.
///
/// # Safety
///
/// `pm` must be the state of `inode`, a live guest_memfd inode of `size` pages whose
/// `populate_lock` the caller holds; the caller may sleep.
#[export]
pub unsafe extern "C" fn kvm_protmem_populate(
    pm: *mut bindings::kvm_protmem,
    inode: *mut bindings::inode,
    start: usize,
    end: usize,
    size: usize,
    blocks: bool,
    interruptible: bool,
) -> c_int {
    // SAFETY: By the safety requirements `pm` came from `into_foreign()` and is owned by the
    // inode, which outlives this call.
    let pm = unsafe { <Arc<Protmem> as ForeignOwnable>::borrow(pm.cast()) };
    let Some(inode) = NonNull::new(inode) else {
        return EINVAL.to_errno();
    };
    // INVARIANT: By the safety requirements `inode` is live, of `size` pages, its state is `pm`,
    // and its `populate_lock` is held for the duration of this call, longer than `pm` is
    // borrowed.
    let gmem = Gmem { inode, size, pm };
    match populate(&gmem, start..end, blocks, interruptible) {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// A guest_memfd inode created with `GUEST_MEMFD_FLAG_NO_DIRECT_MAP` and its state, during one
/// request of [`kvm_protmem_populate`]: the only place where the component calls guest_memfd.c.
///
/// # Invariants
///
/// `inode` is a live guest_memfd inode of `size` pages whose state is `pm`, and its
/// `populate_lock` is held while `pm` is borrowed: nothing else adds a page to its page cache
/// meanwhile.
struct Gmem<'a> {
    inode: NonNull<bindings::inode>,
    size: usize,
    pm: ArcBorrow<'a, Protmem>,
}

impl Gmem<'_> {
    /// Returns whether the file has a page for any index in `range`.
    fn has_page(&self, range: Range<usize>) -> bool {
        // SAFETY: `self.inode` is a live guest_memfd inode by the type invariant.
        unsafe { bindings::kvm_gmem_has_folio(self.inode.as_ptr(), range.start, range.end) }
    }

    /// Returns the node that an mbind() policy of the file names for `index`, if any.
    fn node(&self, index: usize) -> Option<i32> {
        // SAFETY: As in `has_page()`.
        match unsafe { bindings::kvm_gmem_node(self.inode.as_ptr(), index) } {
            bindings::NUMA_NO_NODE => None,
            nid => Some(nid),
        }
    }

    /// Charges the last allocation of `batch` to the memory cgroup that the file's page cache
    /// charges: its pages `want` as the page cache charges them, then the others without trying
    /// hard. Returns whether all of them were charged; if only `want` could be, the batch keeps
    /// only those. Fails with `ENOMEM` if the cgroup refused one of `want`. Pages that are given
    /// back unused are uncharged.
    fn charge_last(&self, batch: &mut PoolBatch, want: Range<usize>) -> Result<bool> {
        let (page, nr) = batch.take_last_to_charge().ok_or(EINVAL)?;
        if want.start >= want.end || want.end > nr {
            return Err(EINVAL);
        }
        let charge = |range: Range<usize>, hard: bool| {
            let n = range.end - range.start;
            if n == 0 {
                return true;
            }
            // SAFETY: `self.inode` is a live guest_memfd inode; the pages are the pool's, in no
            // page cache, reached by nobody else and not charged: `take_last_to_charge()` gives
            // an allocation once, and each page of it is in one of the disjoint ranges below.
            n == unsafe {
                bindings::kvm_gmem_charge_pages(
                    self.inode.as_ptr(),
                    page.wrapping_add(range.start),
                    n,
                    hard,
                )
            }
        };

        if !charge(want.clone(), true) {
            return Err(ENOMEM);
        }
        if charge(0..want.start, false) && charge(want.end..nr, false) {
            return Ok(true);
        }
        batch.trim_last(want.start, want.end);
        Ok(false)
    }

    /// Adds `page` to the file's page cache at `index`, up to date, with a reference to the
    /// inode's state in its `private` for [`kvm_protmem_free_folio`]. The page cache takes its own
    /// reference to the page. Fails with `EEXIST` if the index has a page already. The page is
    /// expected to be charged ([`Gmem::charge_last`]); one that is not escapes the memory cgroup
    /// (and `filemap_add_charged_folio()` warns).
    fn insert(&self, page: PoolPage, index: usize) -> Result {
        let owner = Arc::<Protmem>::from(self.pm).into_foreign();
        // SAFETY: `self.inode` is a live guest_memfd inode whose `populate_lock` is held; the
        // folio is an order-0 page of the pool, zeroed, off the direct map and flushed, and in no
        // page cache (a `PoolPage` is its only owner); `owner` is a reference to the inode's
        // state for the folio to keep in `private`.
        let err = unsafe {
            bindings::kvm_gmem_insert_folio(self.inode.as_ptr(), page.folio(), index, owner)
        };
        if err != 0 {
            // SAFETY: The insertion failed, so the folio did not keep `owner`.
            drop(unsafe { <Arc<Protmem> as ForeignOwnable>::from_foreign(owner) });
        }
        to_result(err)
    }
}

/// What a request takes from the pool for one index, or one 2 MiB range, of the file.
struct Want {
    /// The first index of the file that the pages are for.
    first: usize,
    /// A whole block for the 2 MiB range from `first`, or a single page.
    block: bool,
    /// The indices that the request asked for: all of them get a page if no whole block can be
    /// had or charged.
    lo: usize,
    hi: usize,
}

/// Lists what `range` of the file needs; see [`kvm_protmem_populate`].
fn wants(
    gmem: &Gmem<'_>,
    range: Range<usize>,
    blocks: bool,
    interruptible: bool,
) -> Result<KVVec<Want>> {
    let mut wants = KVVec::new();
    let mut index = range.start;

    while index < range.end {
        if interruptible && current!().signal_pending() {
            return Err(EINTR);
        }
        if gmem.has_page(index..index + 1) {
            index += 1;
            continue;
        }
        let base = index & !(BLOCK_PAGES - 1);
        // Not over a page this request already wants: it is not in the page cache yet. (A block
        // it wants ends at or before `base`.)
        let block = blocks
            && base >= wants.last().map_or(0, |w: &Want| w.first + 1)
            && base + BLOCK_PAGES <= gmem.size
            && !gmem.has_page(base..base + BLOCK_PAGES);
        let (first, nr) = if block {
            (base, BLOCK_PAGES)
        } else {
            (index, 1)
        };
        wants.push(
            Want {
                first,
                block,
                lo: index,
                hi: range.end.min(first + nr),
            },
            GFP_KERNEL_ACCOUNT,
        )?;
        index = first + nr;
    }
    Ok(wants)
}

/// Reschedules if needed, and fails with `EINTR` if the current task has a fatal signal: an
/// OOM-killed VMM must not go on taking memory.
fn stop_if_killed() -> Result {
    task::cond_resched();
    if current!().fatal_signal_pending() {
        return Err(EINTR);
    }
    Ok(())
}

/// Takes the pages of `wants` from the pool through `batch`, charging each allocation right
/// after it, and records the first index of each in `firsts`.
fn allocate(
    gmem: &Gmem<'_>,
    wants: &[Want],
    batch: &mut PoolBatch,
    firsts: &mut KVVec<usize>,
) -> Result {
    let gfp = GFP_USER | __GFP_NOWARN;

    for w in wants {
        stop_if_killed()?;
        let nid = gmem.node(w.first);
        // A block without trying hard: single pages may come from blocks the pool has.
        if w.block && batch.alloc_block(gfp | __GFP_NORETRY, nid).is_ok() {
            let want = w.lo - w.first..w.hi - w.first;
            let first = if gmem.charge_last(batch, want)? {
                w.first
            } else {
                w.lo
            };
            firsts.push(first, GFP_KERNEL_ACCOUNT)?;
            continue;
        }
        for i in w.lo..w.hi {
            stop_if_killed()?;
            // The pool has no page to give: not the memory cgroup's refusal.
            batch
                .alloc_page(gfp, nid)
                .map_err(|e| if e == ENOMEM { ENOSPC } else { e })?;
            gmem.charge_last(batch, 0..1)?;
            firsts.push(i, GFP_KERNEL_ACCOUNT)?;
        }
    }
    Ok(())
}

/// See [`kvm_protmem_populate`].
fn populate(gmem: &Gmem<'_>, range: Range<usize>, blocks: bool, interruptible: bool) -> Result {
    let blocks = blocks && PoolBatch::block_pages() == BLOCK_PAGES;
    let wants = wants(gmem, range, blocks, interruptible)?;
    if wants.is_empty() {
        return Ok(());
    }
    let mut batch = PoolBatch::with_capacity(wants.len(), GFP_KERNEL_ACCOUNT)?;
    let mut firsts = KVVec::with_capacity(wants.len(), GFP_KERNEL_ACCOUNT)?;
    let allocated = allocate(gmem, &wants, &mut batch, &mut firsts);

    // One TLB flush for every pageblock removed above, before any page can be reached. It is
    // counted even if nothing gets in. On error every page goes back to the pool unused
    // (uncharged), after the flush.
    let flushes = batch.nr_removed() > 0;
    let flushed = match allocated {
        Ok(()) => batch.flush(GFP_KERNEL_ACCOUNT),
        Err(e) => {
            drop(batch);
            Err(e)
        }
    };
    let flushed = flushed.inspect_err(|_| gmem.pm.added(0, flushes))?;

    let mut ret = Ok(());
    let mut added = 0;
    // Pages that are not added go back to the pool when dropped, which zeroes them again.
    'insert: for (pages, first) in flushed.into_iter().zip(firsts) {
        for (i, page) in pages.into_iter().enumerate() {
            match gmem.insert(page, first + i) {
                Ok(()) => added += 1,
                // Only a page added other than by `kvm_protmem_populate` could be there, and
                // nothing adds one: that page would do as well as this one.
                Err(e) if e == EEXIST => {}
                Err(e) => {
                    ret = Err(e);
                    break 'insert;
                }
            }
        }
    }
    gmem.pm.added(added, flushes);
    ret
}

/// Lets go of a folio that leaves the page cache: its page goes back to the pool when it is
/// freed, through mm's free path.
///
/// Called from guest_memfd's `->free_folio()` for folios whose `private` is set. Constant work
/// under a spinlock: it neither sleeps nor allocates.
///
/// # Safety
///
/// `owner` must be the `private` of the folio, set by [`kvm_protmem_populate`] when the folio
/// entered the page cache, and the page cache must have just let go of the folio; this is called
/// once per folio.
#[export]
pub unsafe extern "C" fn kvm_protmem_free_folio(owner: *mut c_void) {
    // SAFETY: By the safety requirements `owner` is the reference to the state the folio kept.
    let pm = unsafe { <Arc<Protmem> as ForeignOwnable>::from_foreign(owner) };

    pm.left();
}
