/*-------------------------------------------------------------------------
 *
 * tombstones.h
 *	  Access to registry.tombstones: the durable versions of deleted keys.
 *
 * The versions of live rows are in the rows themselves (the
 * registry_version and registry_origin columns); a deleted key keeps its
 * version here, so that a delete wins over older writes arriving later
 * and so that digests cover deletions.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_TOMBSTONES_H
#define REGISTRY_TOMBSTONES_H

#include "access/genam.h"
#include "executor/tuptable.h"
#include "storage/lockdefs.h"
#include "utils/snapshot.h"

#include "registry.h"

/*
 * An index-range scan by key hash over one table's rows of
 * registry.tombstones or registry.row_keys (both keyed (tid, khash, key)).
 */
typedef struct KeyRangeScan
{
	Relation	rel;
	Relation	idx;
	IndexScanDesc scan;
	TupleTableSlot *slot;
} KeyRangeScan;
typedef KeyRangeScan TombstoneScan;

typedef struct KeyVersion
{
	uint32		khash;
	char	   *key;
	RegVersion	version;
	char		origin[REGISTRY_NAME_LEN];
	bool		deleted;
} KeyVersion;

/* shared with row_keys.c: both tables are keyed (tid, khash, key) */
extern void keyed_table_open(const char *relname, const char *idxname,
							 Relation *rel, Relation *idx, LOCKMODE mode);
extern void keyed_table_close(Relation rel, Relation idx);
extern bool keyed_delete(Relation rel, Relation idx, int32 tid, uint32 khash,
						 Datum keytext,
						 void (*seen) (HeapTuple tup, void *arg), void *arg);
extern void key_range_scan_begin(KeyRangeScan *ks, Oid relid, Oid idxid,
								 int32 tid, uint32 lo, uint32 hi,
								 Snapshot snap);
extern void key_range_scan_end(KeyRangeScan *ks);

extern bool tombstone_take(int32 tid, uint32 khash, const char *key,
						   VersionState *old);
extern RegVersion tombstone_put(int32 tid, uint32 khash, const char *key,
						  RegVersion version, const char *origin,
						  bool apply, VersionState *old);
extern bool tombstone_get(int32 tid, uint32 khash, const char *key,
						  Snapshot snap, VersionState *out);
extern void tombstone_scan_begin(TombstoneScan *ts, int32 tid, uint32 lo,
								 uint32 hi, Snapshot snap);
extern bool tombstone_scan_next(TombstoneScan *ts, KeyVersion *e);
extern void tombstone_scan_end(TombstoneScan *ts);

#endif							/* REGISTRY_TOMBSTONES_H */
