/*-------------------------------------------------------------------------
 *
 * versions.c
 *	  Durable row versions: registry.row_versions, one row per (table, key)
 *	  with the version, origin and tombstone flag of the key's latest
 *	  state.  It is the truth about versions; shared memory is rebuilt
 *	  from it.
 *
 * The capture trigger writes here for every row change, so this is the
 * hot path of every write to a registry table.  It uses the heap and
 * index access methods directly (no SPI, no planner): one index probe,
 * then a HOT update of the version row in the common case.
 *
 * Concurrency: every writer of a key (local transactions, the apply
 * path) goes through the version row.  A lookup uses a dirty snapshot and
 * waits for an in-progress writer of the row, and heap_update() waits for
 * and reports a concurrent update; either way the writer starts again
 * from the newly committed state.  Local writers then take a fresh stamp,
 * so a write that commits later always carries the larger version.
 *
 * The primary key is (tid, khash, key): khash places a key in its digest
 * bucket (the high bits), so a bucket's entries are one index range.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/pg_collation.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "registry.h"
#include "versions.h"

#define Natts_row_versions	6

int32
khash_to_int4(uint32 h)
{
	return (int32) (h ^ 0x80000000U);
}

uint32
int4_to_khash(int32 v)
{
	return ((uint32) v) ^ 0x80000000U;
}

static void
state_from_tuple(HeapTuple tup, TupleDesc desc, VersionState *out)
{
	Datum		values[Natts_row_versions];
	bool		nulls[Natts_row_versions];

	heap_deform_tuple(tup, desc, values, nulls);
	out->exists = true;
	out->version = (RegVersion) DatumGetInt64(values[3]);
	text_to_cstring_buffer(DatumGetTextPP(values[4]), out->origin,
						   sizeof(out->origin));
	out->deleted = DatumGetBool(values[5]);
}

/*
 * The latest version row of a key: committed, or written by our own
 * transaction.  Waits for any other transaction that is writing it.
 * Returns a palloc'd copy (t_self set) or NULL.
 */
static HeapTuple
fetch_latest(Relation rel, Relation idx, int32 tid, uint32 khash,
			 Datum keytext)
{
	ScanKeyData skey[3];
	SnapshotData dirty;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	HeapTuple	result;

	ScanKeyInit(&skey[0], 1, BTEqualStrategyNumber, F_INT4EQ,
				Int32GetDatum(tid));
	ScanKeyInit(&skey[1], 2, BTEqualStrategyNumber, F_INT4EQ,
				Int32GetDatum(khash_to_int4(khash)));
	ScanKeyInit(&skey[2], 3, BTEqualStrategyNumber, F_TEXTEQ, keytext);
	skey[2].sk_collation = C_COLLATION_OID;

	InitDirtySnapshot(dirty);
	slot = table_slot_create(rel, NULL);
	for (;;)
	{
		TransactionId xwait;
		bool		found;

		result = NULL;
		scan = index_beginscan(rel, idx, &dirty, 3, 0);
		index_rescan(scan, skey, 3, NULL, 0);
		found = index_getnext_slot(scan, ForwardScanDirection, slot);
		xwait = TransactionIdIsValid(dirty.xmin) ? dirty.xmin : dirty.xmax;
		if (found && !TransactionIdIsValid(xwait))
			result = ExecCopySlotHeapTuple(slot);
		index_endscan(scan);

		if (found && TransactionIdIsValid(xwait))
		{
			/* another transaction is writing this key: wait, then look again */
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

void
versions_lookup(int32 tid, uint32 khash, const char *key, VersionState *out)
{
	Relation	rel;
	Relation	idx;
	HeapTuple	tup;

	rel = table_open(registry_relid("row_versions"), RowExclusiveLock);
	idx = index_open(registry_relid("row_versions_pkey"), RowExclusiveLock);
	tup = fetch_latest(rel, idx, tid, khash, CStringGetTextDatum(key));
	memset(out, 0, sizeof(VersionState));
	if (tup)
	{
		state_from_tuple(tup, RelationGetDescr(rel), out);
		heap_freetuple(tup);
	}
	index_close(idx, NoLock);
	table_close(rel, NoLock);
}

static bool
version_greater(RegVersion v1, const char *o1, RegVersion v2, const char *o2)
{
	if (v1 != v2)
		return v1 > v2;
	return strcmp(o1, o2) > 0;
}

/*
 * Write the new state of a key and return the version written.
 *
 * apply_version == 0: a local change; it is stamped now, above the key's
 * previous version whatever the clock says.
 * apply_version != 0: a remote change being applied; it must still be
 * newer than the stored state, else a concurrent writer won the race and
 * the caller retries its batch (serialization failure).
 *
 * *old receives the state that was replaced.
 */
RegVersion
versions_write(int32 tid, uint32 khash, const char *key,
			   RegVersion apply_version, const char *origin, bool deleted,
			   VersionState *old)
{
	Relation	rel;
	Relation	idx;
	TupleDesc	desc;
	Datum		keytext = CStringGetTextDatum(key);
	Datum		values[Natts_row_versions];
	bool		nulls[Natts_row_versions] = {false};
	RegVersion	version = 0;

	rel = table_open(registry_relid("row_versions"), RowExclusiveLock);
	idx = index_open(registry_relid("row_versions_pkey"), RowExclusiveLock);
	desc = RelationGetDescr(rel);

	values[0] = Int32GetDatum(tid);
	values[1] = Int32GetDatum(khash_to_int4(khash));
	values[2] = keytext;
	values[4] = CStringGetTextDatum(origin);
	values[5] = BoolGetDatum(deleted);

	for (;;)
	{
		HeapTuple	oldtup;
		HeapTuple	newtup;

		CHECK_FOR_INTERRUPTS();
		oldtup = fetch_latest(rel, idx, tid, khash, keytext);
		memset(old, 0, sizeof(VersionState));
		if (oldtup)
			state_from_tuple(oldtup, desc, old);

		if (apply_version != 0)
		{
			version = apply_version;
			if (old->exists &&
				!version_greater(version, origin, old->version, old->origin))
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("registry key \"%s\" was changed concurrently", key),
						 errdetail("A version at least as new as the one being applied was written meanwhile.")));
		}
		else
		{
			version = hlc_now();
			if (old->exists && version <= old->version)
			{
				/* the clock is behind this key (restored data, clock step) */
				hlc_observe_stored(old->version);
				version = hlc_now();
			}
		}
		values[3] = Int64GetDatum((int64) version);
		newtup = heap_form_tuple(desc, values, nulls);

		if (oldtup == NULL)
		{
			heap_insert(rel, newtup, GetCurrentCommandId(true), 0, NULL);
			index_insert(idx, values, nulls, &newtup->t_self, rel,
						 UNIQUE_CHECK_YES, false, BuildIndexInfo(idx));
			heap_freetuple(newtup);
			break;
		}
		else
		{
			TM_Result	res;
			TM_FailureData tmfd;
			LockTupleMode lockmode;
			HeapTupleHeader hdr = oldtup->t_data;

			/*
			 * The same statement may touch a key twice (keys shifted by one
			 * UPDATE); a row version made by this very command would be
			 * invisible to heap_update, so move to the next command first.
			 */
			if (TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetRawXmin(hdr)) &&
				HeapTupleHeaderGetCmin(hdr) >= GetCurrentCommandId(false))
				CommandCounterIncrement();

			res = heap_update(rel, &oldtup->t_self, newtup,
							  GetCurrentCommandId(true), InvalidSnapshot,
							  true, &tmfd, &lockmode);
			if (res == TM_Ok)
			{
				if (!HeapTupleIsHeapOnly(newtup))
					index_insert(idx, values, nulls, &newtup->t_self, rel,
								 UNIQUE_CHECK_YES, true, BuildIndexInfo(idx));
				heap_freetuple(newtup);
				heap_freetuple(oldtup);
				break;
			}
			heap_freetuple(newtup);
			heap_freetuple(oldtup);
			if (res == TM_SelfModified)
				CommandCounterIncrement();
			else if (res != TM_Updated && res != TM_Deleted)
				elog(ERROR, "registry: unexpected result %d updating a row version",
					 (int) res);
			/* someone else's write committed first: start again from it */
		}
	}

	index_close(idx, NoLock);
	table_close(rel, NoLock);
	return version;
}

/* ---- reading versions under an MVCC snapshot ---- */

void
versions_scan_begin(VersionScan *vs, int32 tid, uint32 lo, uint32 hi,
					Snapshot snap)
{
	ScanKeyData skey[3];

	vs->rel = table_open(registry_relid("row_versions"), AccessShareLock);
	vs->idx = index_open(registry_relid("row_versions_pkey"), AccessShareLock);
	ScanKeyInit(&skey[0], 1, BTEqualStrategyNumber, F_INT4EQ,
				Int32GetDatum(tid));
	ScanKeyInit(&skey[1], 2, BTGreaterEqualStrategyNumber, F_INT4GE,
				Int32GetDatum(khash_to_int4(lo)));
	ScanKeyInit(&skey[2], 2, BTLessEqualStrategyNumber, F_INT4LE,
				Int32GetDatum(khash_to_int4(hi)));
	vs->slot = table_slot_create(vs->rel, NULL);
	vs->scan = index_beginscan(vs->rel, vs->idx, snap, 3, 0);
	index_rescan(vs->scan, skey, 3, NULL, 0);
}

bool
versions_scan_next(VersionScan *vs, VersionEntry *e)
{
	Datum		values[Natts_row_versions];
	bool		nulls[Natts_row_versions];

	if (!index_getnext_slot(vs->scan, ForwardScanDirection, vs->slot))
		return false;
	slot_getallattrs(vs->slot);
	memcpy(values, vs->slot->tts_values, sizeof(values));
	memcpy(nulls, vs->slot->tts_isnull, sizeof(nulls));
	e->khash = int4_to_khash(DatumGetInt32(values[1]));
	e->key = TextDatumGetCString(values[2]);
	e->version = (RegVersion) DatumGetInt64(values[3]);
	text_to_cstring_buffer(DatumGetTextPP(values[4]), e->origin,
						   sizeof(e->origin));
	e->deleted = DatumGetBool(values[5]);
	return true;
}

void
versions_scan_end(VersionScan *vs)
{
	index_endscan(vs->scan);
	ExecDropSingleTupleTableSlot(vs->slot);
	index_close(vs->idx, NoLock);
	table_close(vs->rel, NoLock);
}

/* The state of one key as seen by an MVCC snapshot. */
bool
versions_get(int32 tid, uint32 khash, const char *key, Snapshot snap,
			 VersionState *out)
{
	Relation	rel;
	Relation	idx;
	ScanKeyData skey[3];
	IndexScanDesc scan;
	TupleTableSlot *slot;
	bool		found;

	rel = table_open(registry_relid("row_versions"), AccessShareLock);
	idx = index_open(registry_relid("row_versions_pkey"), AccessShareLock);
	ScanKeyInit(&skey[0], 1, BTEqualStrategyNumber, F_INT4EQ,
				Int32GetDatum(tid));
	ScanKeyInit(&skey[1], 2, BTEqualStrategyNumber, F_INT4EQ,
				Int32GetDatum(khash_to_int4(khash)));
	ScanKeyInit(&skey[2], 3, BTEqualStrategyNumber, F_TEXTEQ,
				CStringGetTextDatum(key));
	skey[2].sk_collation = C_COLLATION_OID;
	slot = table_slot_create(rel, NULL);
	scan = index_beginscan(rel, idx, snap, 3, 0);
	index_rescan(scan, skey, 3, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	memset(out, 0, sizeof(VersionState));
	if (found)
	{
		HeapTuple	tup = ExecFetchSlotHeapTuple(slot, false, NULL);

		state_from_tuple(tup, RelationGetDescr(rel), out);
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(idx, NoLock);
	table_close(rel, NoLock);
	return found;
}
