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
//! This file is linked into kvm.ko next to `guest_memfd.c`, which calls the five functions below
//! (declared in `include/linux/kvm_protmem.h`); only they rely on what their callers promise. The
//! component calls no C function itself: it reaches the direct map, the page cache and the file's
//! memory policy through [`kernel::mm`].
//!
//! See `Documentation/virt/kvm/protected-memory.rst`.

use core::{ops::Range, ptr::NonNull};
use kernel::{
    alloc::{Flags, KVVec},
    bindings,
    mm::{
        direct_map::{NoDirectMapCache, PoolBatch, PoolPage},
        mempolicy::SharedPolicy,
    },
    new_spinlock,
    prelude::*,
    sync::{
        atomic::{ForeignAtomic, Relaxed},
        Arc, ArcBorrow, SpinLock,
    },
    task,
    types::ForeignOwnable,
};

/// The number of pages in a 2 MiB block, the size of a PMD mapping on x86-64.
const BLOCK_PAGES: usize = 512;

/// Two counters of a VM's stats (`struct kvm_vm_stat` on x86), valid until the VM lets go of the
/// guest_memfd ([`kvm_protmem_detach`] drops them).
struct Stats {
    /// `direct_map_pages`: the pages of the VM's guest_memfds that are off the direct map.
    pages: ForeignAtomic<u64>,
    /// `direct_map_flushes`: the kernel TLB flushes issued for the VM's requests.
    flushes: ForeignAtomic<u64>,
}

/// The direct-map state of one guest_memfd inode: where its counters go.
///
/// Every folio of the inode's page cache keeps a reference to it in `private`, so that a folio
/// that leaves the page cache after the inode's last file is counted, or not, safely.
///
/// # Invariants
///
/// `stats` is `None` from [`kvm_protmem_detach`] on: the VM may be gone.
#[pin_data]
struct Protmem {
    /// The VM's counters; `None` once the VM lets go of the guest_memfd.
    #[pin]
    stats: SpinLock<Option<Stats>>,
}

impl Protmem {
    /// Counts `nr` pages that entered the page cache, and the TLB flush (`flushed`) that took
    /// the pageblocks the pool removed for them out of every CPU's TLB.
    fn added(&self, nr: usize, flushed: bool) {
        if let Some(s) = self.stats.lock().as_ref() {
            s.pages.add(nr as u64, Relaxed);
            s.flushes.add(u64::from(flushed), Relaxed);
        }
    }

    /// Counts a page that left the page cache, back to the pool.
    fn left(&self) {
        if let Some(s) = self.stats.lock().as_ref() {
            s.pages.fetch_sub(1u64, Relaxed);
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
    // SAFETY: By the safety requirements both are valid, aligned `u64`s until
    // `kvm_protmem_detach()`, which drops them (`Protmem`'s invariant). The component writes them
    // only atomically. KVM's stats code reads every stat, and clears cumulative ones, with plain
    // word-sized accesses, as it does for the C stats that are updated concurrently: a race that
    // LKMM counts, which the stats tolerate (a read may miss an update in flight).
    let (pages, flushes) = unsafe {
        (
            ForeignAtomic::from_ptr(pages),
            ForeignAtomic::from_ptr(flushes),
        )
    };
    // INVARIANT: Not detached yet.
    let init = pin_init!(Protmem {
        stats <- new_spinlock!(Some(Stats { pages, flushes }), "kvm_protmem"),
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

    // INVARIANT: Detached: the counters are dropped, and never set again.
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
/// `pm` must be the state of a guest_memfd inode of `size` pages that the caller holds a reference
/// to; `mapping` its page cache, with `AS_NO_DIRECT_MAP`, whose `->free_folio()` passes the
/// `private` field of each folio, if not NULL, to [`kvm_protmem_free_folio`], once; and `policy`
/// its memory policy, initialised. The caller holds the inode's `populate_lock` and may sleep.
#[export]
pub unsafe extern "C" fn kvm_protmem_populate(
    pm: *mut bindings::kvm_protmem,
    mapping: *mut bindings::address_space,
    policy: *mut bindings::shared_policy,
    start: usize,
    end: usize,
    size: usize,
    blocks: bool,
    interruptible: bool,
) -> c_int {
    // SAFETY: By the safety requirements `pm` came from `into_foreign()` and is owned by the
    // inode, which outlives this call, as do its page cache and memory policy. The page cache
    // keeps its folios out of the direct map, and gives a non-NULL `private` of a folio to
    // `kvm_protmem_free_folio()`, which is `Arc::<Protmem>::from_foreign()`.
    let (pm, cache, policy) = unsafe {
        (
            <Arc<Protmem> as ForeignOwnable>::borrow(pm.cast()),
            NoDirectMapCache::from_raw(mapping),
            SharedPolicy::from_raw(policy),
        )
    };
    // INVARIANT: By the safety requirements the inode is of `size` pages, its state is `pm`, and
    // its `populate_lock` is held for the duration of this call.
    let gmem = Gmem {
        cache,
        policy,
        size,
        pm,
    };
    match populate(&gmem, start..end, blocks, interruptible) {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// A guest_memfd inode created with `GUEST_MEMFD_FLAG_NO_DIRECT_MAP` and its state, during one
/// request of [`kvm_protmem_populate`].
///
/// # Invariants
///
/// `cache` and `policy` are the page cache and the memory policy of a guest_memfd inode of `size`
/// pages whose state is `pm`, and its `populate_lock` is held while they are borrowed: nothing
/// else adds a page to the page cache meanwhile.
struct Gmem<'a> {
    cache: &'a NoDirectMapCache<Arc<Protmem>>,
    policy: &'a SharedPolicy,
    size: usize,
    pm: ArcBorrow<'a, Protmem>,
}

impl Gmem<'_> {
    /// Adds `page` to the file's page cache at `index`, with a reference to the inode's state for
    /// [`kvm_protmem_free_folio`]. Fails with `EEXIST` if the index has a page already.
    fn insert(&self, page: PoolPage, index: usize) -> Result {
        page.add_to_page_cache(self.cache, index, Arc::<Protmem>::from(self.pm))
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

/// The allocation flags of a request's lists: charged to the caller's memory cgroup, and without
/// the allocator's warning when a very large request cannot have them (it fails with `ENOMEM`).
fn list_flags() -> Flags {
    GFP_KERNEL_ACCOUNT | __GFP_NOWARN
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
        if gmem.cache.has_folio(index..index + 1) {
            index += 1;
            continue;
        }
        let base = index & !(BLOCK_PAGES - 1);
        // Not over a page this request already wants: it is not in the page cache yet. (A block
        // it wants ends at or before `base`.)
        let block = blocks
            && base >= wants.last().map_or(0, |w: &Want| w.first + 1)
            && base + BLOCK_PAGES <= gmem.size
            && !gmem.cache.has_folio(base..base + BLOCK_PAGES);
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
            list_flags(),
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
        // Room first, here and before single pages: no list grows once pages of a want are
        // taken, and a failure of `alloc_page()` is the pool's.
        batch.reserve(1)?;
        firsts.reserve(1, list_flags())?;
        let nid = gmem.policy.preferred_node(w.first);
        // A block without trying hard: single pages may come from blocks the pool has.
        if w.block && batch.alloc_block(gfp | __GFP_NORETRY, nid).is_ok() {
            let want = w.lo - w.first..w.hi - w.first;
            let first = if batch.charge_last(gmem.cache, want)? {
                w.first
            } else {
                w.lo
            };
            firsts.push(first, list_flags())?;
            continue;
        }
        batch.reserve(w.hi - w.lo)?;
        firsts.reserve(w.hi - w.lo, list_flags())?;
        for i in w.lo..w.hi {
            stop_if_killed()?;
            // The pool has no page to give: not the memory cgroup's refusal.
            batch
                .alloc_page(gfp, nid)
                .map_err(|e| if e == ENOMEM { ENOSPC } else { e })?;
            batch.charge_last(gmem.cache, 0..1)?;
            firsts.push(i, list_flags())?;
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
    let mut batch = PoolBatch::with_capacity(wants.len(), list_flags())?;
    let mut firsts = KVVec::with_capacity(wants.len(), list_flags())?;
    let allocated = allocate(gmem, &wants, &mut batch, &mut firsts);

    // One TLB flush for every pageblock removed above, before any page can be reached. It is
    // counted even if nothing gets in. On error every page goes back to the pool unused
    // (uncharged), after the flush.
    let flushes = batch.nr_removed() > 0;
    if let Err(e) = allocated {
        drop(batch);
        gmem.pm.added(0, flushes);
        return Err(e);
    }

    let mut ret = Ok(());
    let mut added = 0;
    // Pages that are not added go back to the pool when dropped, which zeroes them again.
    'insert: for (pages, first) in batch.flush().zip(firsts) {
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
