// SPDX-License-Identifier: GPL-2.0

#include <linux/mempolicy.h>

#ifdef CONFIG_NUMA
__rust_helper void rust_helper_mpol_cond_put(struct mempolicy *pol)
{
	mpol_cond_put(pol);
}
#endif
