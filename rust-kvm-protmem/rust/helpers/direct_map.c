// SPDX-License-Identifier: GPL-2.0

#include <linux/direct_map.h>

__rust_helper void rust_helper_direct_map_batch_init(struct direct_map_batch *batch)
{
	direct_map_batch_init(batch);
}
