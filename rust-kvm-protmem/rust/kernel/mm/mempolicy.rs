// SPDX-License-Identifier: GPL-2.0

//! NUMA memory policies.
//!
//! C header: [`include/linux/mempolicy.h`](srctree/include/linux/mempolicy.h)

use crate::{bindings, types::Opaque};

/// The memory policies that mbind() sets on ranges of a file, a `struct shared_policy` (e.g. of
/// shmem or guest_memfd).
///
/// Only a reference to one exists (see [`SharedPolicy::from_raw`]).
///
/// # Invariants
///
/// The shared policy is valid (initialised and not freed) for as long as it is borrowed.
#[repr(transparent)]
pub struct SharedPolicy(Opaque<bindings::shared_policy>);

impl SharedPolicy {
    /// Returns the shared policy at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` must point to a shared policy that was initialised with `mpol_shared_policy_init()`
    /// and is not freed (`mpol_free_shared_policy()`) for `'a`.
    pub unsafe fn from_raw<'a>(ptr: *mut bindings::shared_policy) -> &'a Self {
        // INVARIANT: By the safety requirements.
        // SAFETY: By the safety requirements `ptr` is valid for `'a`; `SharedPolicy` is
        // `repr(transparent)` over it.
        unsafe { &*ptr.cast() }
    }

    /// Returns the node that the policy set for the page at `index` of the file prefers: the
    /// first node it names (for an interleave policy too). `None` if no policy is set there, it
    /// names no node (`MPOL_LOCAL`), or without NUMA: then the policy of the task decides.
    pub fn preferred_node(&self, index: usize) -> Option<i32> {
        #[cfg(CONFIG_NUMA)]
        {
            // SAFETY: By the type invariant the shared policy is valid.
            let pol = unsafe { bindings::mpol_shared_policy_lookup(self.0.get(), index) };
            if pol.is_null() {
                return None;
            }
            // SAFETY: `mpol_shared_policy_lookup()` returned a policy with a reference, which is
            // dropped below. A shared policy is never changed in place: mbind() replaces it with
            // a new one (`sp_alloc()` duplicates it), and rebinding touches task and VMA
            // policies only.
            let (mode, nodes) = unsafe { (u32::from((*pol).mode), (*pol).nodes.bits) };
            // SAFETY: Drops the reference that `mpol_shared_policy_lookup()` took.
            unsafe { bindings::mpol_cond_put(pol) };
            if mode == bindings::mempolicy_mode_MPOL_LOCAL {
                return None;
            }
            let (i, word) = nodes.iter().enumerate().find(|(_, w)| **w != 0)?;
            i32::try_from(i * usize::BITS as usize + word.trailing_zeros() as usize).ok()
        }
        #[cfg(not(CONFIG_NUMA))]
        {
            let _ = index;
            None
        }
    }
}
