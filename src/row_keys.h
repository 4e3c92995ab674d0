/*-------------------------------------------------------------------------
 *
 * row_keys.h
 *	  Access to registry.row_keys: the key of every live row of every
 *	  registry table, ordered by key hash, so that a digest bucket's rows
 *	  can be found without an index on the registry table itself.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_ROW_KEYS_H
#define REGISTRY_ROW_KEYS_H

#include "access/genam.h"
#include "executor/tuptable.h"
#include "utils/snapshot.h"

#include "registry.h"
#include "keyed.h"

extern void row_keys_add(int32 tid, uint32 khash, const char *key);
extern void row_keys_remove(int32 tid, uint32 khash, const char *key);
extern void row_keys_clear(int32 tid);
extern int64 row_keys_build(RegTable *t, bool may_rebuild_index, bool *rebuilt);
extern void row_keys_scan_begin(KeyRangeScan *ks, int32 tid, uint32 lo,
								uint32 hi, Snapshot snap);
extern bool row_keys_scan_next(KeyRangeScan *ks, uint32 *khash, char **key);
extern void row_keys_scan_end(KeyRangeScan *ks);

#endif							/* REGISTRY_ROW_KEYS_H */
