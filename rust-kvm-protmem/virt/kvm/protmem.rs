// SPDX-License-Identifier: GPL-2.0

//! guest_memfd memory that is not in the host's direct map.
//!
//! A guest_memfd created with `GUEST_MEMFD_FLAG_NO_DIRECT_MAP` keeps every page of its page cache
//! off the host kernel's direct map. A folio is zeroed and removed before it enters the page cache
//! ([`kvm_protmem_populate`]) and is mapped again when it leaves it
//! ([`kvm_protmem_free_folio`]); the page cache never holds a folio that is still mapped, and
//! nothing frees a folio that is still removed.
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
    mm::direct_map::{Batch, DirectMapPages, Removed},
    new_spinlock,
    prelude::*,
    sync::{
        atomic::{Atomic, Relaxed},
        Arc, ArcBorrow, SpinLock,
    },
    types::ForeignOwnable,
};

/// A reference to a folio of a guest_memfd.
///
/// # Invariants
///
/// `self.0` points to a folio of which this value owns one reference.
struct GmemFolio(NonNull<bindings::folio>);

impl GmemFolio {
    /// Allocates a zeroed, up-to-date folio for `index` of `inode`, not yet in the page cache.
    ///
    /// # Safety
    ///
    /// `inode` must be a live guest_memfd inode.
    unsafe fn alloc(inode: *mut bindings::inode, index: usize) -> Result<Self> {
        // SAFETY: `inode` is a live guest_memfd inode by the safety requirements.
        let folio = unsafe { bindings::kvm_gmem_alloc_folio(inode, index) };

        // INVARIANT: `kvm_gmem_alloc_folio()` returns a new reference, or NULL.
        Ok(Self(NonNull::new(folio).ok_or(ENOMEM)?))
    }

    fn as_ptr(&self) -> *mut bindings::folio {
        self.0.as_ptr()
    }
}

impl Drop for GmemFolio {
    fn drop(&mut self) {
        // SAFETY: By the type invariant this value owns one reference to the folio.
        unsafe { bindings::folio_put(self.as_ptr()) };
    }
}

// SAFETY: A folio is physically contiguous, starts with its first page, and is not freed while a
// reference to it exists. A `GmemFolio` is only created for a folio that is not in the page cache
// yet (nobody else can reach it) or, by `kvm_protmem_free_folio()`, for a folio that the page
// cache is letting go of; guest_memfd changes no folio's direct mapping itself.
unsafe impl DirectMapPages for GmemFolio {
    fn first_page(&self) -> *mut bindings::page {
        // A folio starts with its first page.
        self.as_ptr().cast()
    }

    fn nr_pages(&self) -> usize {
        // SAFETY: By the type invariant the folio is alive.
        unsafe { bindings::folio_nr_pages(self.as_ptr()) }
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
/// Every folio that the inode's page cache holds off the direct map keeps a reference to it in
/// `folio->private`, so that [`kvm_protmem_free_folio`] can count the restore.
#[pin_data]
struct Protmem {
    /// The VM's counters; `None` once the VM lets go of the guest_memfd.
    #[pin]
    stats: SpinLock<Option<StatsPtr>>,
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

    /// Counts `nr` pages mapped again.
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

    /// Maps `removed` again, counts it, and drops the folio.
    fn restore(&self, removed: Removed<GmemFolio>) {
        let nr = removed.nr_pages();

        drop(removed.restore());
        self.restored(nr);
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

/// Adds zeroed folios, off the direct map, for every index in `start..end` that has none.
///
/// All or nothing for the direct map: every new folio is removed, with one TLB flush for the
/// whole range, before any of them enters the page cache. If a removal fails, no folio is added
/// and the error (`-ENOMEM` when a large mapping could not be split) is returned. A folio that
/// loses a race with another thread adding the same index is restored and freed.
///
/// Returns 0, `-ENOMEM`, `-EINTR`, or an error of the page cache.
///
/// # Safety
///
/// `pm` must be the state of `inode`, a live guest_memfd inode, and may sleep.
#[export]
pub unsafe extern "C" fn kvm_protmem_populate(
    pm: *mut bindings::kvm_protmem,
    inode: *mut bindings::inode,
    start: usize,
    end: usize,
) -> c_int {
    // SAFETY: By the safety requirements `pm` came from `into_foreign()` and is owned by the
    // inode, which outlives this call.
    let pm = unsafe { <Arc<Protmem> as ForeignOwnable>::borrow(pm.cast()) };
    // SAFETY: `inode` is a live guest_memfd inode by the safety requirements.
    match unsafe { populate(pm, inode, start, end) } {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
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
) -> Result {
    let mut new: KVVec<(usize, Removed<GmemFolio>)> = KVVec::new();
    let mut batch = Batch::new();

    let removed = (|| -> Result {
        for index in start..end {
            if current!().signal_pending() {
                return Err(EINTR);
            }
            // SAFETY: `inode` is a live guest_memfd inode.
            if unsafe { bindings::kvm_gmem_has_folio(inode, index) } {
                continue;
            }
            // Room first: a removed folio must not be dropped uncounted.
            new.reserve(1, GFP_KERNEL)?;
            // SAFETY: `inode` is a live guest_memfd inode.
            let folio = unsafe { GmemFolio::alloc(inode, index) }?;
            let removed = batch.remove(folio)?;
            if new.push_within_capacity((index, removed)).is_err() {
                // Cannot happen: there is room for one more.
                return Err(ENOMEM);
            }
        }
        Ok(())
    })();

    // One TLB flush for everything removed above, before any of it can be reached.
    let (nr, splits) = (batch.nr_pages(), batch.nr_splits());
    batch.flush();
    pm.removed(nr, splits);

    if let Err(e) = removed {
        for (_, r) in new {
            pm.restore(r);
        }
        return Err(e);
    }

    let mut ret = Ok(());
    for (index, r) in new {
        if ret.is_err() {
            pm.restore(r);
            continue;
        }
        let owner = Arc::from(pm).into_foreign();
        // The page cache takes the folio over, still removed: `kvm_protmem_free_folio()` gets
        // it back.
        let folio = r.into_raw();
        // SAFETY: `inode` is a live guest_memfd inode; `folio` is a new folio of which we own a
        // reference, locked by nobody; `owner` is a reference to `pm` for the folio to keep.
        let err = unsafe { bindings::kvm_gmem_insert_folio(inode, folio.as_ptr(), index, owner) };
        if err == 0 {
            // The page cache holds its own reference now.
            drop(folio);
            continue;
        }
        // SAFETY: The insertion failed, so the folio did not keep `owner`.
        drop(unsafe { <Arc<Protmem> as ForeignOwnable>::from_foreign(owner) });
        // SAFETY: `folio` came from `into_raw()` just above and was not mapped again.
        pm.restore(unsafe { Removed::from_raw(folio) });
        if err != -(bindings::EEXIST as c_int) {
            ret = to_result(err);
        }
    }
    ret
}

/// Maps a folio that leaves the page cache again and counts it.
///
/// Called from guest_memfd's `->free_folio()` for folios whose `private` is set; the caller
/// zeroes the folio and clears `private` afterwards.
///
/// # Safety
///
/// `owner` must be the `private` of `folio`, set by [`kvm_protmem_populate`] when the folio,
/// removed from the direct map, entered the page cache; the page cache has just let go of it.
#[export]
pub unsafe extern "C" fn kvm_protmem_free_folio(owner: *mut c_void, folio: *mut bindings::folio) {
    // SAFETY: By the safety requirements `owner` is the reference the folio kept.
    let pm = unsafe { <Arc<Protmem> as ForeignOwnable>::from_foreign(owner) };
    let Some(folio) = NonNull::new(folio) else {
        return;
    };
    // SAFETY: By the safety requirements the folio was removed as a whole and given up with
    // `into_raw()`; the page cache gives it back once. `GmemFolio` stands for the page cache's
    // reference, which the page cache drops after this returns, so it is forgotten below.
    let removed = unsafe { Removed::from_raw(GmemFolio(folio)) };
    let nr = removed.nr_pages();

    core::mem::forget(removed.restore());
    pm.restored(nr);
}
