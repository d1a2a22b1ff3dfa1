// SPDX-License-Identifier: GPL-2.0

//! The page cache of a file.
//!
//! C header: [`include/linux/pagemap.h`](srctree/include/linux/pagemap.h)

use crate::{
    bindings,
    page::{PAGE_SHIFT, PAGE_SIZE},
    types::Opaque,
};
use core::ops::Range;

/// The page cache of a file, a `struct address_space`.
///
/// Only a reference to one exists (see [`AddressSpace::from_raw`]).
///
/// # Invariants
///
/// The address space is valid, and its inode is not evicted, for as long as it is borrowed.
#[repr(transparent)]
pub struct AddressSpace(Opaque<bindings::address_space>);

impl AddressSpace {
    /// Returns the address space at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` must point to the address space of an inode that the caller holds a reference to
    /// (e.g. through an open file of it) for `'a`, so that the inode is not evicted meanwhile.
    pub unsafe fn from_raw<'a>(ptr: *mut bindings::address_space) -> &'a Self {
        // INVARIANT: By the safety requirements.
        // SAFETY: By the safety requirements `ptr` is valid for `'a`; `AddressSpace` is
        // `repr(transparent)` over it.
        unsafe { &*ptr.cast() }
    }

    /// Returns a raw pointer to the address space.
    pub fn as_raw(&self) -> *mut bindings::address_space {
        self.0.get()
    }

    /// Returns whether the page cache has a folio for any index in `range` (in pages).
    ///
    /// The answer may be stale as soon as it is given, unless the caller keeps others from adding
    /// folios to, and removing folios from, that range.
    pub fn has_folio(&self, range: Range<usize>) -> bool {
        // The last index whose bytes fit in `loff_t`: the page cache has no folio beyond it.
        const MAX_INDEX: u64 = (i64::MAX as u64) >> PAGE_SHIFT;
        let (first, end) = (range.start as u64, (range.end as u64).min(MAX_INDEX + 1));
        if first >= end {
            return false;
        }
        // Byte offsets of the range, the last one inclusive: at most `i64::MAX`.
        let start = (first << PAGE_SHIFT) as i64;
        let last = (((end - 1) << PAGE_SHIFT) | (PAGE_SIZE as u64 - 1)) as i64;
        // SAFETY: By the type invariant the address space is valid.
        unsafe { bindings::filemap_range_has_page(self.as_raw(), start, last) }
    }

    /// Returns whether the folios of the page cache are kept out of the kernel's direct map
    /// (`AS_NO_DIRECT_MAP`): nothing may reach them through it.
    pub fn no_direct_map(&self) -> bool {
        // SAFETY: By the type invariant the address space is valid.
        unsafe { bindings::mapping_no_direct_map(self.as_raw()) }
    }
}
