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

use core::ptr::NonNull;
use kernel::{
    alloc::KVVec,
    bindings,
    error::to_result,
    mm::direct_map::{PoolBatch, PoolPages},
    new_spinlock,
    prelude::*,
    sync::{
        atomic::{Atomic, Relaxed},
        Arc, ArcBorrow, SpinLock,
    },
    types::ForeignOwnable,
};

/// The number of pages in a 2 MiB block, the size of a PMD mapping on x86-64.
const BLOCK_PAGES: usize = 512;

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
/// Every folio of the inode's page cache keeps a reference to it in `private`, so that a folio
/// that leaves the page cache after the inode's last file is counted, or not, safely.
#[pin_data]
struct Protmem {
    /// The VM's counters; `None` once the VM lets go of the guest_memfd.
    #[pin]
    stats: SpinLock<Option<StatsPtr>>,
}

impl Protmem {
    /// Counts `nr` pages that entered the page cache, `reused` of them from pageblocks that the
    /// pool had removed before the request, with `flushes` TLB flushes (0 or 1) that split
    /// `splits` large mappings of the direct map.
    fn added(&self, nr: usize, reused: usize, flushes: usize, splits: usize) {
        let stats = self.stats.lock();
        if let Some(s) = stats.as_ref() {
            let p = s.0.as_ptr();
            // SAFETY: By the type invariant of `StatsPtr` the VM is alive, and it stays alive
            // while the lock is held: `kvm_protmem_detach()` takes the lock before the VM can go.
            unsafe {
                StatsPtr::add(&raw mut (*p).direct_map_pages, nr as u64);
                StatsPtr::add(&raw mut (*p).direct_map_removals, nr as u64);
                StatsPtr::add(&raw mut (*p).direct_map_reused, reused as u64);
                StatsPtr::add(&raw mut (*p).direct_map_flushes, flushes as u64);
                StatsPtr::add(&raw mut (*p).direct_map_splits, splits as u64);
            }
        }
    }

    /// Counts a page that left the page cache, back to the pool.
    fn left(&self) {
        let stats = self.stats.lock();
        if let Some(s) = stats.as_ref() {
            let p = s.0.as_ptr();
            // SAFETY: As in `added()`.
            unsafe {
                StatsPtr::add(&raw mut (*p).direct_map_pages, 1u64.wrapping_neg());
                StatsPtr::add(&raw mut (*p).direct_map_restores, 1);
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
/// [`kvm_protmem_detach`] is called.
#[export]
pub unsafe extern "C" fn kvm_protmem_create(
    stats: *mut bindings::kvm_vm_stat_generic,
) -> *mut bindings::kvm_protmem {
    let Some(stats) = NonNull::new(stats) else {
        return core::ptr::null_mut();
    };
    // INVARIANT: by the safety requirements the VM is alive until `kvm_protmem_detach()`.
    let init = pin_init!(Protmem {
        stats <- new_spinlock!(Some(StatsPtr(stats)), "kvm_protmem"),
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
/// `-EINTR`, `-EOPNOTSUPP` (no pool), or an error of the page cache.
///
/// # Safety
///
/// `pm` must be the state of `inode`, a live guest_memfd inode of `size` pages; the caller may
/// sleep.
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
    // SAFETY: `inode` is a live guest_memfd inode of `size` pages by the safety requirements.
    match unsafe { populate(pm, inode, start, end, size, blocks, interruptible) } {
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

/// Lists what `start..end` needs; see [`kvm_protmem_populate`].
///
/// # Safety
///
/// As for [`kvm_protmem_populate`].
unsafe fn wants(
    inode: *mut bindings::inode,
    start: usize,
    end: usize,
    size: usize,
    blocks: bool,
    interruptible: bool,
) -> Result<KVVec<Want>> {
    let mut wants = KVVec::new();
    let mut index = start;

    while index < end {
        if interruptible && current!().signal_pending() {
            return Err(EINTR);
        }
        // SAFETY: `inode` is a live guest_memfd inode.
        if unsafe { has_page(inode, index, index + 1) } {
            index += 1;
            continue;
        }
        let base = index & !(BLOCK_PAGES - 1);
        // Not over a page this request already wants: it is not in the page cache yet. (A block
        // it wants ends at or before `base`.)
        let whole = blocks
            && base >= wants.last().map_or(0, |w: &Want| w.first + 1)
            && base + BLOCK_PAGES <= size
            // SAFETY: `inode` is a live guest_memfd inode.
            && !unsafe { has_page(inode, base, base + BLOCK_PAGES) };
        let (first, nr) = if whole {
            (base, BLOCK_PAGES)
        } else {
            (index, 1)
        };
        wants.push(
            Want {
                first,
                block: whole,
                lo: index,
                hi: end.min(first + nr),
            },
            GFP_KERNEL_ACCOUNT,
        )?;
        index = first + nr;
    }
    Ok(wants)
}

/// Pages from the pool for the indices from `first` of the file.
struct Got {
    first: usize,
    pages: PoolPages,
}

/// Charges the pages `from..to` of the last allocation of `batch` to the memory cgroup that the
/// page cache of `inode` charges, as the page cache does if `hard`, else without trying hard, and
/// returns whether it charged all of them. (If not, those it charged are uncharged when the
/// allocation is given back.)
///
/// # Safety
///
/// `inode` must be a live guest_memfd inode; the pages `from..to` of the allocation are not
/// charged yet.
unsafe fn charge_last(
    inode: *mut bindings::inode,
    batch: &PoolBatch,
    from: usize,
    to: usize,
    hard: bool,
) -> bool {
    let Some((page, nr)) = batch.last() else {
        return false;
    };
    if from >= to {
        return true;
    }
    if to > nr {
        return false;
    }

    // SAFETY: `inode` is a live guest_memfd inode; the pages are the pool's, handed out through
    // `batch` and reached by nobody else, in no page cache and, by the safety requirements, not
    // charged yet.
    let charged =
        unsafe { bindings::kvm_gmem_charge_pages(inode, page.wrapping_add(from), to - from, hard) };
    charged == to - from
}

/// Reschedules if needed, and fails with `EINTR` if the current task has a fatal signal.
fn stop_if_killed() -> Result {
    // SAFETY: Only reschedules, and reads the current task's signals.
    if unsafe { bindings::kvm_gmem_populate_killed() } {
        return Err(EINTR);
    }
    Ok(())
}

/// Takes the pages of `wants` from the pool through `batch`, charging each allocation right
/// after it, and records the first index of each in `firsts`.
///
/// # Safety
///
/// As for [`kvm_protmem_populate`].
unsafe fn allocate(
    inode: *mut bindings::inode,
    wants: &[Want],
    batch: &mut PoolBatch,
    firsts: &mut KVVec<usize>,
) -> Result {
    let gfp = GFP_USER | __GFP_NOWARN;

    for w in wants {
        // An OOM-killed VMM must not go on taking memory.
        stop_if_killed()?;
        // SAFETY: `inode` is a live guest_memfd inode.
        let nid = match unsafe { bindings::kvm_gmem_node(inode, w.first) } {
            bindings::NUMA_NO_NODE => None,
            nid => Some(nid),
        };
        // A block without trying hard: single pages may come from blocks the pool has.
        if w.block && batch.alloc_block(gfp | __GFP_NORETRY, nid).is_ok() {
            let (lo, hi) = (w.lo - w.first, w.hi - w.first);

            // The pages asked for first, as the page cache charges them; then the rest of the
            // block, without trying hard. Without room for the rest, only the pages asked for
            // are kept.
            // SAFETY: `inode` is a live guest_memfd inode; nothing of the block is charged, and
            // each range is charged once.
            let whole = unsafe {
                if !charge_last(inode, batch, lo, hi, true) {
                    return Err(ENOMEM);
                }
                charge_last(inode, batch, 0, lo, false)
                    && charge_last(inode, batch, hi, BLOCK_PAGES, false)
            };
            if whole {
                firsts.push(w.first, GFP_KERNEL_ACCOUNT)?;
            } else {
                batch.trim_last(lo, hi);
                firsts.push(w.lo, GFP_KERNEL_ACCOUNT)?;
            }
            continue;
        }
        for i in w.lo..w.hi {
            stop_if_killed()?;
            // The pool has no page to give: not the memory cgroup's refusal.
            batch
                .alloc_page(gfp, nid)
                .map_err(|e| if e == ENOMEM { ENOSPC } else { e })?;
            // SAFETY: `inode` is a live guest_memfd inode; the page is not charged.
            if !unsafe { charge_last(inode, batch, 0, 1, true) } {
                return Err(ENOMEM);
            }
            firsts.push(i, GFP_KERNEL_ACCOUNT)?;
        }
    }
    Ok(())
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
    interruptible: bool,
) -> Result {
    let blocks = blocks && PoolBatch::block_pages() == BLOCK_PAGES;
    // SAFETY: As for this function.
    let wants = unsafe { wants(inode, start, end, size, blocks, interruptible) }?;
    if wants.is_empty() {
        return Ok(());
    }
    let mut batch = PoolBatch::with_capacity(wants.len(), GFP_KERNEL_ACCOUNT)?;
    let mut firsts = KVVec::with_capacity(wants.len(), GFP_KERNEL_ACCOUNT)?;
    // SAFETY: As for this function.
    let allocated = unsafe { allocate(inode, &wants, &mut batch, &mut firsts) };

    // One TLB flush for every pageblock removed above, before any page can be reached. It is
    // counted even if nothing gets in. On error every page goes back to the pool unused
    // (uncharged), after the flush.
    let (removed, splits) = (batch.nr_removed(), batch.nr_splits());
    let flushes = usize::from(removed > 0);
    let flushed = match allocated {
        Ok(()) => batch.flush(GFP_KERNEL_ACCOUNT),
        Err(e) => {
            drop(batch);
            Err(e)
        }
    };
    let flushed = flushed.inspect_err(|_| pm.added(0, 0, flushes, splits))?;

    let mut ret = Ok(());
    let mut added = 0;
    let mut got = flushed
        .into_iter()
        .zip(firsts)
        .map(|(pages, first)| Got { first, pages });
    'insert: for g in &mut got {
        for i in 0..g.pages.nr_pages() {
            let owner = Arc::<Protmem>::from(pm).into_foreign();
            // SAFETY: `inode` is a live guest_memfd inode; the folio is an order-0 page from the
            // pool, zeroed, charged, off the direct map and flushed, and in no page cache;
            // `owner` is a reference to the inode's state for the folio to keep in `private`.
            let err = unsafe {
                bindings::kvm_gmem_insert_folio(
                    inode,
                    bindings::page_folio(g.pages.page(i)),
                    g.first + i,
                    owner,
                )
            };
            if err != 0 {
                // SAFETY: The insertion failed, so the folio did not keep `owner`.
                drop(unsafe { <Arc<Protmem> as ForeignOwnable>::from_foreign(owner) });
                // Only a page added other than by `kvm_protmem_populate` could be there, and
                // nothing adds one: that page would do as well as this one.
                if err != -(bindings::EEXIST as c_int) {
                    ret = to_result(err);
                    break 'insert;
                }
            } else {
                added += 1;
            }
        }
        // The page cache holds its own reference to each page it took; the others go back to
        // the pool, which zeroes them again.
    }
    // Reused: what the pool had removed before, i.e. all but as many as it removed for this
    // request.
    pm.added(added, added.saturating_sub(removed), flushes, splits);
    // The allocations after a failed insertion: freed, back to the pool.
    drop(got);
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
