/*
 * store_i.h - private declarations shared by the files of store/.  The
 * public interface is store.h; this header holds only what more than one
 * file of store/ needs and no other module may use.  Keep it small.
 */
#ifndef DRFS_STORE_I_H
#define DRFS_STORE_I_H

#include "store.h"

/* The largest chunk_max a repository may use (docs/format.md "config"). */
#define CHUNK_MAX_LIMIT (4u << 20)

#endif /* DRFS_STORE_I_H */
