/* SPDX-License-Identifier: GPL-2.0 */
/*
 * guest_memfd memory that is not in the host's direct map
 * (GUEST_MEMFD_FLAG_NO_DIRECT_MAP).
 *
 * Internal to KVM.  The component is written in Rust (virt/kvm/protmem.rs);
 * this header declares both directions of the interface between it and
 * guest_memfd.c, and rust/bindings/bindings_helper.h includes it so that the
 * Rust side is checked against these declarations.
 * See Documentation/virt/kvm/protected-memory.rst.
 */
#ifndef __LINUX_KVM_PROTMEM_H
#define __LINUX_KVM_PROTMEM_H

#include <linux/types.h>

struct folio;
struct inode;
struct page;

/* One per guest_memfd inode created with GUEST_MEMFD_FLAG_NO_DIRECT_MAP. */
struct kvm_protmem;

#ifdef CONFIG_KVM_PROTMEM
/* Implemented in Rust, virt/kvm/protmem.rs. */
struct kvm_protmem *kvm_protmem_create(u64 *pages, u64 *flushes);
void kvm_protmem_detach(struct kvm_protmem *pm);
void kvm_protmem_put(struct kvm_protmem *pm);
int kvm_protmem_populate(struct kvm_protmem *pm, struct inode *inode,
			 pgoff_t start, pgoff_t end, pgoff_t size, bool blocks,
			 bool interruptible);
void kvm_protmem_free_folio(void *owner);

/* Implemented in virt/kvm/guest_memfd.c, for the Rust side. */
bool kvm_gmem_has_folio(struct inode *inode, pgoff_t start, pgoff_t end);
int kvm_gmem_node(struct inode *inode, pgoff_t index);
unsigned long kvm_gmem_charge_pages(struct inode *inode, struct page *page,
				    unsigned long nr, bool hard);
int kvm_gmem_insert_folio(struct inode *inode, struct folio *folio,
			  pgoff_t index, void *owner);
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
