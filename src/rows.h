/*-------------------------------------------------------------------------
 *
 * rows.h
 *	  Registry table rows by key, and their transmitted text form.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_ROWS_H
#define REGISTRY_ROWS_H

#include "access/genam.h"
#include "executor/tuptable.h"
#include "storage/lockdefs.h"
#include "utils/snapshot.h"

#include "registry.h"

/* A scan of a registry table through its primary key index. */
typedef struct RowLookup
{
	RegTable   *t;
	Relation	rel;
	Relation	idx;
	IndexScanDesc scan;
	TupleTableSlot *slot;
} RowLookup;

extern void row_lookup_begin(RowLookup *rl, RegTable *t, LOCKMODE lockmode,
							 Snapshot snap);
extern bool row_lookup(RowLookup *rl, const char *key);
extern bool row_lookup_datums(RowLookup *rl, Datum *values);
extern void row_lookup_end(RowLookup *rl);

extern void row_version(RegTable *t, TupleTableSlot *slot, VersionState *st);
extern char *row_key(RegTable *t, TupleTableSlot *slot);
typedef void (*RowCallback) (void *arg, const char *key, VersionState *st);
extern void row_foreach(RegTable *t, Snapshot snap, RowCallback fn, void *arg);
extern void row_scan_all_begin(RowLookup *rs, RegTable *t, Snapshot snap);
extern bool row_scan_next(RowLookup *rs);
extern void row_scan_end(RowLookup *rs);
extern void row_key_datums(RegTable *t, const char *key, Datum *values);
extern char **row_values(RegTable *t, TupleTableSlot *slot);

#endif							/* REGISTRY_ROWS_H */
