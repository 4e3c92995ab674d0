/*-------------------------------------------------------------------------
 *
 * keyed.h
 *	  The extension's tables keyed (tid, khash, key): registry.tombstones,
 *	  registry.row_keys and registry.lease_stash (keyed.c, layer 4).
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_KEYED_H
#define REGISTRY_KEYED_H

#include "access/genam.h"
#include "access/htup.h"
#include "executor/tuptable.h"
#include "storage/lockdefs.h"
#include "utils/relcache.h"
#include "utils/snapshot.h"

#include "registry.h"

/*
 * An index-range scan by key hash over one table's rows of
 * registry.tombstones or registry.row_keys.
 */
typedef struct KeyRangeScan
{
	Relation	rel;
	Relation	idx;
	IndexScanDesc scan;
	TupleTableSlot *slot;
} KeyRangeScan;

extern void keyed_table_open(RegistryOwnRel relid, RegistryOwnRel idxid,
							 Relation *rel, Relation *idx, LOCKMODE mode);
extern void keyed_table_close(Relation rel, Relation idx);
extern void keyed_scankeys(ScanKey skey, int32 tid, uint32 khash,
						   Datum keytext);
extern HeapTuple keyed_fetch_latest(Relation rel, Relation idx, int32 tid,
									uint32 khash, Datum keytext);
extern void keyed_step_past_own_command(HeapTuple tup);
extern bool keyed_delete(Relation rel, Relation idx, int32 tid, uint32 khash,
						 Datum keytext,
						 void (*seen) (HeapTuple tup, void *arg), void *arg);
extern void keyed_scan_begin(KeyRangeScan *ks, Oid relid, Oid idxid,
							 int32 tid, uint32 lo, uint32 hi, Snapshot snap);
extern void keyed_scan_end(KeyRangeScan *ks);

#endif							/* REGISTRY_KEYED_H */
