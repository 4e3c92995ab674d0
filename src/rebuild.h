/*-------------------------------------------------------------------------
 *
 * rebuild.h
 *	  Digests computed from disk (rebuild.c, layer 6).
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_REBUILD_H
#define REGISTRY_REBUILD_H

#include "utils/snapshot.h"

#include "registry.h"
#include "rows.h"

struct DigestTotals;				/* digest.h */

extern void rebuild_add_entry(struct DigestTotals *d, uint32 khash, const char *key,
							  RegVersion v, const char *origin, bool deleted);
extern RegVersion rebuild_scan_rows(RegTable *t, Snapshot snap,
									struct DigestTotals *d, RowCallback per_row,
									void *arg);
extern RegVersion rebuild_digest_of_table(RegTable *t, Snapshot snap,
										  uint64 *buckets, int64 *live,
										  int64 *tombs, int64 *unversioned);
extern void rebuild_digests(void);

#endif							/* REGISTRY_REBUILD_H */
