/* SPDX-License-Identifier: GPL-2.0 */
/*
 * guest_memfd memory that is not in the host's direct map
 * (GUEST_MEMFD_FLAG_NO_DIRECT_MAP).
 *
 * Internal to KVM.  The component is written in Rust (virt/kvm/protmem.rs);
 * this header declares the functions that guest_memfd.c calls, and
 * rust/bindings/bindings_helper.h includes it so that the Rust side is checked
 * against these declarations.  The component calls no KVM function: it
 * reaches the page cache and the memory policy of the file through the
 * kernel crate.
 * See Documentation/virt/kvm/protected-memory.rst.
 */
#ifndef __LINUX_KVM_PROTMEM_H
#define __LINUX_KVM_PROTMEM_H

#include <linux/types.h>

struct address_space;
struct shared_policy;

/* One per guest_memfd inode created with GUEST_MEMFD_FLAG_NO_DIRECT_MAP. */
struct kvm_protmem;

#ifdef CONFIG_KVM_PROTMEM
/* Implemented in Rust, virt/kvm/protmem.rs; see there. */
struct kvm_protmem *kvm_protmem_create(u64 *pages, u64 *flushes);
void kvm_protmem_detach(struct kvm_protmem *pm);
void kvm_protmem_put(struct kvm_protmem *pm);
int kvm_protmem_populate(struct kvm_protmem *pm,
			 struct address_space *mapping,
			 struct shared_policy *policy, pgoff_t start,
			 pgoff_t end, pgoff_t size, bool blocks,
			 bool interruptible);
void kvm_protmem_free_folio(void *owner);
#else
/* Without CONFIG_KVM_PROTMEM no guest_memfd has a struct kvm_protmem. */
static inline void kvm_protmem_detach(struct kvm_protmem *pm)
{
}

static inline void kvm_protmem_put(struct kvm_protmem *pm)
{
}
#endif /* CONFIG_KVM_PROTMEM */

#endif /* __LINUX_KVM_PROTMEM_H */
