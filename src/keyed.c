/*-------------------------------------------------------------------------
 *
 * keyed.c
 *	  The extension's tables keyed (tid, khash, key): registry.tombstones,
 *	  registry.row_keys and registry.lease_stash.  Opening them with their
 *	  primary key, finding a key's latest row (waiting for its writer),
 *	  deleting it, and index range scans by key hash.  Used by
 *	  tombstones.c, row_keys.c and lease_stash.c (layer 4, durable stores);
 *	  calls only layer 1 (registry_own_relid).
 *
 * The heap and index access methods are used directly: this runs inside
 * the row triggers.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_collation.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "registry.h"
#include "keyed.h"

/* Scan keys for (tid, khash, key) = the arguments. */
void
keyed_scankeys(ScanKey skey, int32 tid, uint32 khash, Datum keytext)
{
	ScanKeyInit(&skey[0], 1, BTEqualStrategyNumber, F_INT4EQ,
				Int32GetDatum(tid));
	ScanKeyInit(&skey[1], 2, BTEqualStrategyNumber, F_INT4EQ,
				Int32GetDatum(khash_to_int4(khash)));
	ScanKeyInit(&skey[2], 3, BTEqualStrategyNumber, F_TEXTEQ, keytext);
	skey[2].sk_collation = C_COLLATION_OID;
}

/*
 * The row of a key in rel (registry.tombstones, registry.row_keys or
 * registry.lease_stash, each keyed (tid, khash, key)) as committed, or as
 * written by our own transaction; waits for any other transaction writing
 * it.  Returns a palloc'd copy (t_self set) or NULL.
 */
HeapTuple
keyed_fetch_latest(Relation rel, Relation idx, int32 tid, uint32 khash,
				   Datum keytext)
{
	ScanKeyData skey[3];
	SnapshotData dirty;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	HeapTuple	result;

	keyed_scankeys(skey, tid, khash, keytext);
	InitDirtySnapshot(dirty);
	slot = table_slot_create(rel, NULL);
	for (;;)
	{
		TransactionId xwait = InvalidTransactionId;
		bool		found;

		result = NULL;
		scan = index_beginscan(rel, idx, &dirty, 3, 0);
		index_rescan(scan, skey, 3, NULL, 0);
		found = index_getnext_slot(scan, ForwardScanDirection, slot);
		/* the dirty snapshot says who is writing the tuple it returned */
		if (found)
			xwait = TransactionIdIsValid(dirty.xmin) ? dirty.xmin : dirty.xmax;
		if (found && !TransactionIdIsValid(xwait))
			result = ExecCopySlotHeapTuple(slot);
		index_endscan(scan);

		if (found && TransactionIdIsValid(xwait))
		{
			ItemPointerData ctid = slot->tts_tid;

			ExecClearTuple(slot);
			XactLockTableWait(xwait, rel, &ctid, XLTW_FetchUpdated);
			CHECK_FOR_INTERRUPTS();
			continue;
		}
		break;
	}
	ExecDropSingleTupleTableSlot(slot);
	return result;
}

/*
 * A row version made by the current command is invisible to heap_update
 * and heap_delete; step to the next command first.  Happens when one
 * statement deletes and re-inserts a key (keys shifted by an UPDATE).
 */
void
keyed_step_past_own_command(HeapTuple tup)
{
	HeapTupleHeader hdr = tup->t_data;

	if (TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetRawXmin(hdr)) &&
		HeapTupleHeaderGetCmin(hdr) >= GetCurrentCommandId(false))
		CommandCounterIncrement();
}

/* Open one of the extension's tables keyed (tid, khash, key) with its key. */
void
keyed_table_open(RegistryOwnRel relid, RegistryOwnRel idxid,
				 Relation *rel, Relation *idx, LOCKMODE mode)
{
	*rel = table_open(registry_own_relid(relid), mode);
	*idx = index_open(registry_own_relid(idxid), mode);
}

/* Locks stay until the end of the transaction. */
void
keyed_table_close(Relation rel, Relation idx)
{
	index_close(idx, NoLock);
	table_close(rel, NoLock);
}

/*
 * Delete the row of a key from rel (registry.tombstones,
 * registry.row_keys or registry.lease_stash), waiting for and retrying
 * after a concurrent writer.  seen, if not NULL, is shown each version
 * found before it is deleted.
 * Returns whether a row was deleted.
 */
bool
keyed_delete(Relation rel, Relation idx, int32 tid, uint32 khash,
			 Datum keytext, void (*seen) (HeapTuple tup, void *arg), void *arg)
{
	for (;;)
	{
		HeapTuple	tup;
		TM_Result	res;
		TM_FailureData tmfd;

		CHECK_FOR_INTERRUPTS();
		tup = keyed_fetch_latest(rel, idx, tid, khash, keytext);
		if (tup == NULL)
			return false;
		if (seen)
			seen(tup, arg);
		keyed_step_past_own_command(tup);
		res = heap_delete(rel, &tup->t_self, GetCurrentCommandId(true),
						  InvalidSnapshot, true, &tmfd, false);
		heap_freetuple(tup);
		if (res == TM_Ok)
			return true;
		if (res == TM_SelfModified)
			CommandCounterIncrement();
		else if (res != TM_Updated && res != TM_Deleted)
			elog(ERROR, "registry: unexpected result %d deleting from %s",
				 (int) res, RelationGetRelationName(rel));
	}
}

/* Rows of table tid in relid with key hash in [lo, hi], in (hash, key) order. */
void
keyed_scan_begin(KeyRangeScan *ks, Oid relid, Oid idxid, int32 tid,
				 uint32 lo, uint32 hi, Snapshot snap)
{
	ScanKeyData skey[3];

	ks->rel = table_open(relid, AccessShareLock);
	ks->idx = index_open(idxid, AccessShareLock);
	ScanKeyInit(&skey[0], 1, BTEqualStrategyNumber, F_INT4EQ,
				Int32GetDatum(tid));
	ScanKeyInit(&skey[1], 2, BTGreaterEqualStrategyNumber, F_INT4GE,
				Int32GetDatum(khash_to_int4(lo)));
	ScanKeyInit(&skey[2], 2, BTLessEqualStrategyNumber, F_INT4LE,
				Int32GetDatum(khash_to_int4(hi)));
	ks->slot = table_slot_create(ks->rel, NULL);
	ks->scan = index_beginscan(ks->rel, ks->idx, snap, 3, 0);
	index_rescan(ks->scan, skey, 3, NULL, 0);
}

void
keyed_scan_end(KeyRangeScan *ks)
{
	index_endscan(ks->scan);
	ExecDropSingleTupleTableSlot(ks->slot);
	index_close(ks->idx, NoLock);
	table_close(ks->rel, NoLock);
}
