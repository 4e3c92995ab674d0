/*-------------------------------------------------------------------------
 *
 * tombstones.c
 *	  registry.tombstones: one row per deleted key with the version,
 *	  origin of its deletion.  Live keys have no row here; their version
 *	  is in their own row.
 *
 * Writers of a tombstone (a local DELETE, a re-INSERT removing it, the
 * apply path) look it up with a dirty snapshot and wait for any other
 * transaction writing it; heap_update()/heap_delete() wait for and report
 * a concurrent change, after which the writer starts again from the newly
 * committed state.  The heap and index access methods are used directly:
 * this runs inside the row trigger.
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
#include "catalog/index.h"
#include "catalog/pg_collation.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "digest.h"
#include "publishing.h"
#include "registry.h"
#include "tombstones.h"

#define Natts_tombstones	6

static void
state_from_tuple(HeapTuple tup, TupleDesc desc, VersionState *out)
{
	Datum		values[Natts_tombstones];
	bool		nulls[Natts_tombstones];

	heap_deform_tuple(tup, desc, values, nulls);
	out->exists = true;
	out->deleted = true;
	out->version = (RegVersion) DatumGetInt64(values[3]);
	text_to_cstring_buffer(DatumGetTextPP(values[4]), out->origin,
						   sizeof(out->origin));
}

#define open_tombstones(rel, idx, mode) \
	keyed_table_open(REGISTRY_REL_TOMBSTONES, REGISTRY_REL_TOMBSTONES_PKEY, \
					 (rel), (idx), (mode))
#define close_tombstones(rel, idx)	keyed_table_close((rel), (idx))

typedef struct TakeState
{
	Relation	rel;
	VersionState *old;
} TakeState;

static void
tombstone_seen(HeapTuple tup, void *arg)
{
	TakeState  *ts = arg;

	publishing_wait(HeapTupleHeaderGetXmin(tup->t_data));
	state_from_tuple(tup, RelationGetDescr(ts->rel), ts->old);
}

/*
 * Remove the tombstone of a key that is being (re)inserted.  Returns
 * whether there was one; *old receives it.
 */
bool
tombstone_take(int32 tid, uint32 khash, const char *key, VersionState *old)
{
	Relation	rel;
	Relation	idx;
	TakeState	ts;
	bool		found;

	open_tombstones(&rel, &idx, RowExclusiveLock);
	ts.rel = rel;
	ts.old = old;
	found = keyed_delete(rel, idx, tid, khash, CStringGetTextDatum(key),
						 tombstone_seen, &ts);
	if (!found)
		memset(old, 0, sizeof(VersionState));
	close_tombstones(rel, idx);
	return found;
}

/*
 * Record the deletion of a key.  With apply = false the version is
 * stamped here, above both "version" (the deleted row's) and any existing
 * tombstone; with apply = true "version" is the remote one and must be
 * newer than an existing tombstone, else a concurrent writer won and the
 * caller's batch is retried (serialization failure).  *old receives the
 * tombstone that was replaced, if any.  Returns the version written.
 */
RegVersion
tombstone_put(int32 tid, uint32 khash, const char *key, RegVersion version,
			  const char *origin, bool apply, VersionState *old)
{
	Relation	rel;
	Relation	idx;
	TupleDesc	desc;
	Datum		values[Natts_tombstones];
	bool		nulls[Natts_tombstones] = {false};

	open_tombstones(&rel, &idx, RowExclusiveLock);
	desc = RelationGetDescr(rel);
	values[0] = Int32GetDatum(tid);
	values[1] = Int32GetDatum(khash_to_int4(khash));
	values[2] = CStringGetTextDatum(key);
	values[4] = CStringGetTextDatum(origin);
	values[5] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());

	for (;;)
	{
		HeapTuple	oldtup;
		HeapTuple	newtup;
		TM_Result	res;
		TM_FailureData tmfd;
		LockTupleMode lockmode;

		CHECK_FOR_INTERRUPTS();
		oldtup = keyed_fetch_latest(rel, idx, tid, khash, values[2]);
		memset(old, 0, sizeof(VersionState));
		if (oldtup)
		{
			publishing_wait(HeapTupleHeaderGetXmin(oldtup->t_data));
			state_from_tuple(oldtup, desc, old);
			if (apply && !version_greater(version, origin, old->version, old->origin))
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("registry key \"%s\" was deleted concurrently with a newer version",
								key)));
			if (!apply && version <= old->version)
			{
				hlc_observe_stored(old->version);
				version = hlc_now();
			}
		}
		values[3] = Int64GetDatum((int64) version);
		newtup = heap_form_tuple(desc, values, nulls);

		if (oldtup == NULL)
		{
			/* counted before it can be seen (digest.c), under our lock */
			digest_tombstone_writing(tid, khash);
			heap_insert(rel, newtup, GetCurrentCommandId(true), 0, NULL);
			index_insert(idx, values, nulls, &newtup->t_self, rel,
						 UNIQUE_CHECK_YES, false, BuildIndexInfo(idx));
			heap_freetuple(newtup);
			break;
		}
		keyed_step_past_own_command(oldtup);
		res = heap_update(rel, &oldtup->t_self, newtup, GetCurrentCommandId(true),
						  InvalidSnapshot, true, &tmfd, &lockmode);
		heap_freetuple(oldtup);
		if (res == TM_Ok)
		{
			if (!HeapTupleIsHeapOnly(newtup))
				index_insert(idx, values, nulls, &newtup->t_self, rel,
							 UNIQUE_CHECK_YES, true, BuildIndexInfo(idx));
			heap_freetuple(newtup);
			break;
		}
		heap_freetuple(newtup);
		if (res == TM_SelfModified)
			CommandCounterIncrement();
		else if (res != TM_Updated && res != TM_Deleted)
			elog(ERROR, "registry: unexpected result %d updating a tombstone",
				 (int) res);
	}
	close_tombstones(rel, idx);
	return version;
}

/* The tombstone of one key as seen by an MVCC snapshot. */
bool
tombstone_get(int32 tid, uint32 khash, const char *key, Snapshot snap,
			  VersionState *out)
{
	Relation	rel;
	Relation	idx;
	ScanKeyData skey[3];
	IndexScanDesc scan;
	TupleTableSlot *slot;
	bool		found;

	open_tombstones(&rel, &idx, AccessShareLock);
	keyed_scankeys(skey, tid, khash, CStringGetTextDatum(key));
	slot = table_slot_create(rel, NULL);
	scan = index_beginscan(rel, idx, snap, 3, 0);
	index_rescan(scan, skey, 3, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	memset(out, 0, sizeof(VersionState));
	if (found)
		state_from_tuple(ExecFetchSlotHeapTuple(slot, false, NULL),
						 RelationGetDescr(rel), out);
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	close_tombstones(rel, idx);
	return found;
}

/* Tombstones of a table with key hash in [lo, hi], in (hash, key) order. */
void
tombstone_scan_begin(KeyRangeScan *ts, int32 tid, uint32 lo, uint32 hi,
					 Snapshot snap)
{
	keyed_scan_begin(ts, registry_own_relid(REGISTRY_REL_TOMBSTONES),
						 registry_own_relid(REGISTRY_REL_TOMBSTONES_PKEY), tid, lo, hi, snap);
}

bool
tombstone_scan_next(KeyRangeScan *ts, KeyVersion *e)
{
	TupleTableSlot *slot = ts->slot;

	if (!index_getnext_slot(ts->scan, ForwardScanDirection, slot))
		return false;
	slot_getallattrs(slot);
	e->khash = int4_to_khash(DatumGetInt32(slot->tts_values[1]));
	e->key = TextDatumGetCString(slot->tts_values[2]);
	e->version = (RegVersion) DatumGetInt64(slot->tts_values[3]);
	text_to_cstring_buffer(DatumGetTextPP(slot->tts_values[4]), e->origin,
						   sizeof(e->origin));
	e->deleted = true;
	return true;
}

void
tombstone_scan_end(KeyRangeScan *ts)
{
	keyed_scan_end(ts);
}
