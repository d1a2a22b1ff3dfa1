// SPDX-License-Identifier: GPL-2.0

#include <linux/pagemap.h>

__rust_helper bool rust_helper_mapping_no_direct_map(const struct address_space *mapping)
{
	return mapping_no_direct_map(mapping);
}

__rust_helper gfp_t rust_helper_mapping_gfp_mask(struct address_space *mapping)
{
	return mapping_gfp_mask(mapping);
}

__rust_helper void *rust_helper_folio_change_private(struct folio *folio, void *data)
{
	return folio_change_private(folio, data);
}

__rust_helper void rust_helper___folio_mark_uptodate(struct folio *folio)
{
	__folio_mark_uptodate(folio);
}
