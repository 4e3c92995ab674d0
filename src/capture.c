/*-------------------------------------------------------------------------
 *
 * capture.c
 *	  Capturing changes to registry tables: the row triggers.  What they
 *	  capture is kept with publish_record() and published when (and only
 *	  when) the transaction commits (publish.c).
 *
 * Three triggers on every registry table:
 *
 *	registry_stamp		BEFORE INSERT OR UPDATE FOR EACH ROW: writes the new
 *						version into the row's registry_version and
 *						registry_origin columns, and remembers an UPDATE
 *						in a backend-local list.  An UPDATE therefore costs
 *						no other write and no AFTER trigger event.
 *	registry_capture	AFTER INSERT OR DELETE FOR EACH ROW: keeps
 *						registry.tombstones in step (a DELETE writes the
 *						key's tombstone, an INSERT removes it) and
 *						remembers the change.  On a table with another
 *						BEFORE UPDATE trigger firing after registry_stamp,
 *						which could still change or skip the row, it fires
 *						for UPDATE too and records UPDATEs instead.
 *						In an ephemeral table, a peer's delete of a row
 *						this node owns stashes the row for its
 *						re-registration (lease_stash.c).
 *	registry_truncate	BEFORE TRUNCATE: writes a tombstone for every row.
 *
 * How a write is captured depends on the capture mode (publish.h): a
 * local write by default, the remote version kept while the apply path
 * writes a row, one bulk change while a table is truncated or registered.
 *
 * Before a key's last writer is read, the triggers wait for that writer's
 * publication if it is still under way (publishing.c), so that the change
 * log is in commit order for every key.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/nbtree.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "capture.h"
#include "digest.h"
#include "lease_stash.h"
#include "publish.h"
#include "publishing.h"
#include "registry.h"
#include "row_keys.h"
#include "rows.h"
#include "tombstones.h"

PG_FUNCTION_INFO_V1(registry_stamp);
PG_FUNCTION_INFO_V1(registry_capture);
PG_FUNCTION_INFO_V1(registry_capture_truncate);

static void wait_for_slot_writer(TupleTableSlot *slot);
static void wait_for_key_holder(RegTable *t, Relation rel, TupleTableSlot *newslot);
static bool same_key(RegTable *t, Relation rel, TupleTableSlot *a, TupleTableSlot *b);
static bool bulk_expected(RegTable *t, TupleTableSlot *slot, RegVersion version,
						  const char *origin);

/* The APPLY_ROW mode (publish.h) if key of t is the row being applied. */
static const CaptureMode *
applying(RegTable *t, const char *key)
{
	const CaptureMode *m = publish_mode_applying(t->tid);

	return (m && strcmp(m->key, key) == 0) ? m : NULL;
}

static bool
same_key(RegTable *t, Relation rel, TupleTableSlot *a, TupleTableSlot *b)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;

	for (i = 0; i < t->nkeys; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, t->keys[i].attnum - 1);
		bool		n1,
					n2;
		Datum		d1 = slot_getattr(a, t->keys[i].attnum, &n1);
		Datum		d2 = slot_getattr(b, t->keys[i].attnum, &n2);

		if (n1 != n2)
			return false;
		if (!n1 && !datumIsEqual(d1, d2, att->attbyval, att->attlen))
			return false;
	}
	return true;
}

static RegTable *
trigger_table(TriggerData *td)
{
	Relation	rel = td->tg_relation;
	RegTable   *t;

	registry_check_preloaded();
	t = regtable_by_relid(RelationGetRelid(rel), true);
	if (t == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" has registry triggers but is not a registry table",
						RelationGetRelationName(rel)),
				 errhint("Register it with registry.replicate(), or drop its registry_* triggers.")));
	if (t->restored)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("registry table \"%s\" is being restored",
						RelationGetRelationName(rel)),
				 errdetail("Its registration came from a dump; it is taken up once the table has its primary key and registry triggers again."),
				 errhint("Finish the restore.")));
	return t;
}

static void
check_trigger(FunctionCallInfo fcinfo, const char *name, bool before)
{
	TriggerData *td = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_ROW(td->tg_event) ||
		(before ? !TRIGGER_FIRED_BEFORE(td->tg_event) : !TRIGGER_FIRED_AFTER(td->tg_event)))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("%s must be called as a %s ... FOR EACH ROW trigger",
						name, before ? "BEFORE" : "AFTER")));
}

/*
 * Whether this BEFORE UPDATE call must record the update itself.
 *
 * An AFTER row trigger costs an event queued and replayed per row, more
 * than everything else the registry does for an UPDATE, so registry_capture
 * fires only for INSERT and DELETE and UPDATEs are recorded here.  That is
 * right only while registry_stamp is the last BEFORE UPDATE row trigger to
 * fire: a later one could still change the key or skip the row.  Tables
 * with such triggers get registry_capture for UPDATE as well (the DDL
 * check keeps that up to date) and the update is recorded after the fact.
 */
static bool
update_recorded_before(RegTable *t, TriggerData *td)
{
	TriggerDesc *desc = td->tg_relation->trigdesc;
	bool		after_stamp = false;
	bool		later = false;
	int			i;

	for (i = 0; i < desc->numtriggers; i++)
	{
		Trigger    *tg = &desc->triggers[i];

		if (tg->tgoid == td->tg_trigger->tgoid)
			after_stamp = true;
		else if (strcmp(tg->tgname, REGISTRY_CAPTURE_TRIGGER) == 0)
		{
			if (TRIGGER_FOR_UPDATE(tg->tgtype))
				return false;
		}
		else if (after_stamp && tg->tgenabled != TRIGGER_DISABLED &&
				 TRIGGER_FOR_ROW(tg->tgtype) && TRIGGER_FOR_BEFORE(tg->tgtype) &&
				 TRIGGER_FOR_UPDATE(tg->tgtype))
			later = true;
	}
	if (later)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("registry table %s has a BEFORE UPDATE trigger that fires after " REGISTRY_STAMP_TRIGGER,
						t->qualname),
				 errdetail("Its trigger " REGISTRY_CAPTURE_TRIGGER " must then fire for UPDATE too; the check that arranges this did not run (event triggers disabled?)."),
				 errhint("Run ALTER TABLE %s ENABLE ALWAYS TRIGGER " REGISTRY_STAMP_TRIGGER " with event triggers enabled.",
						 t->qualname)));
	return true;
}

static void
unstamped_error(RegTable *t)
{
	ereport(ERROR,
			(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
			 errmsg("row of registry table %s does not carry a new version",
					t->qualname),
			 errdetail("registry_version and registry_origin are set by the registry_stamp trigger."),
			 errhint("Do not change them in other triggers.")));
}

static void insert_key(RegTable *t, const char *key, const VersionState *live,
					   bool row_written);
static void delete_key(RegTable *t, const char *key, const VersionState *live);

/*
 * An UPDATE from old to new (each slot a version of the row): a change of
 * the key's version, or, when the key itself changed, a delete of the old
 * key and an insert of the new one.  before_write: called from the BEFORE
 * trigger, ahead of the row's unique check (see wait_for_key_holder()).
 */
static void
capture_update(RegTable *t, Relation rel, TupleTableSlot *oldslot,
			   TupleTableSlot *newslot, const VersionState *oldst,
			   const VersionState *newst, bool before_write)
{
	if (!newst->exists ||
		(oldst->exists && !version_greater(newst->version, newst->origin,
										   oldst->version, oldst->origin)))
		unstamped_error(t);
	if (same_key(t, rel, oldslot, newslot))
	{
		char	   *key = row_key(t, newslot);

		publish_record(t, keys_hash(key, strlen(key)), key, oldst,
					   newst->version, newst->origin, false);
	}
	else
	{
		if (before_write)
			wait_for_key_holder(t, rel, newslot);
		delete_key(t, row_key(t, oldslot), oldst);
		insert_key(t, row_key(t, newslot), newst, !before_write);
	}
}

/*
 * Before an UPDATE that moves a row to a new key is recorded (in the
 * BEFORE trigger, so before the row is written and its unique check), make
 * the new key's state final: wait for any transaction still writing a row
 * with that key, and lock a committed row with it so that nobody deletes
 * it before the unique check fails this UPDATE, as it then will.  Else a
 * concurrent DELETE of that row could write its tombstone after this one
 * looked for it, and the key would end up with a live row and a newer
 * tombstone.  (The unique check would wait for such a writer anyway.)
 */
static void
wait_for_key_holder(RegTable *t, Relation rel, TupleTableSlot *newslot)
{
	Oid			pkoid = RelationGetPrimaryKeyIndex(rel);
	Relation	pkrel;
	ScanKeyData skey[INDEX_MAX_KEYS];
	SnapshotData dirty;
	TupleTableSlot *slot;
	int			nkeys;
	int			i;

	if (!OidIsValid(pkoid))
		return;
	pkrel = index_open(pkoid, AccessShareLock);
	nkeys = IndexRelationGetNumberOfKeyAttributes(pkrel);
	for (i = 0; i < nkeys; i++)
	{
		bool		isnull;
		Datum		v = slot_getattr(newslot, pkrel->rd_index->indkey.values[i], &isnull);
		Oid			opno = get_opfamily_member(pkrel->rd_opfamily[i],
											   pkrel->rd_opcintype[i],
											   pkrel->rd_opcintype[i],
											   BTEqualStrategyNumber);

		if (isnull || !OidIsValid(opno))
		{
			/* the statement fails anyway (NOT NULL); nothing to wait for */
			index_close(pkrel, AccessShareLock);
			return;
		}
		ScanKeyEntryInitialize(&skey[i], 0, i + 1, BTEqualStrategyNumber,
							   pkrel->rd_opcintype[i], pkrel->rd_indcollation[i],
							   get_opcode(opno), v);
	}
	InitDirtySnapshot(dirty);
	slot = table_slot_create(rel, NULL);
	for (;;)
	{
		IndexScanDesc scan;
		TransactionId xwait = InvalidTransactionId;
		ItemPointerData ctid;

		CHECK_FOR_INTERRUPTS();
		scan = index_beginscan(rel, pkrel, &dirty, nkeys, 0);
		index_rescan(scan, skey, nkeys, NULL, 0);
		ExecClearTuple(slot);
		/* one row at most: the unique index holds one live entry per key */
		if (index_getnext_slot(scan, ForwardScanDirection, slot))
		{
			/* the dirty snapshot says who is writing the tuple it returned */
			xwait = TransactionIdIsValid(dirty.xmin) ? dirty.xmin : dirty.xmax;
			ctid = slot->tts_tid;
		}
		index_endscan(scan);
		if (TransactionIdIsValid(xwait))
		{
			ExecClearTuple(slot);
			XactLockTableWait(xwait, rel, &ctid, XLTW_InsertIndex);
			continue;
		}
		if (TTS_EMPTY(slot))
			break;				/* no row has the key */
		else
		{
			TM_FailureData tmfd;
			TM_Result	res;

			ctid = slot->tts_tid;
			res = table_tuple_lock(rel, &ctid, GetActiveSnapshot(), slot,
								   GetCurrentCommandId(false), LockTupleKeyShare,
								   LockWaitBlock, 0, &tmfd);
			ExecClearTuple(slot);
			/* deleted or moved meanwhile: look again */
			if (res != TM_Updated && res != TM_Deleted)
				break;
		}
	}
	ExecDropSingleTupleTableSlot(slot);
	index_close(pkrel, AccessShareLock);
}

/*
 * The new version written over the old one in the row being updated, when
 * that is all that changes: its origin already this node's, its version
 * not null (an int8 overwritten by an int8).  Forming a new tuple and
 * storing it back into the executor's slot is a third of what the stamp
 * costs.  Done only on the slot's own materialized tuple with nothing
 * deformed from it yet, so that nobody holds a stale copy of the value.
 */
static bool
restamp_in_place(RegTable *t, TupleTableSlot *newslot, HeapTuple tup,
				 RegVersion v)
{
	TupleDesc	desc = newslot->tts_tupleDescriptor;
	HeapTupleHeader th = tup->t_data;
	char	   *tp = (char *) th + th->t_hoff;
	bool		hasnulls = HeapTupleHasNulls(tup);
	char	   *verp = NULL;
	char	   *orgp = NULL;
	int			last = Max(t->verattnum, t->orgattnum);
	uint32		off = 0;		/* as heap_deform_tuple keeps it */
	size_t		namelen = strlen(registry_node_name);
	int			i;
	int64		nv = (int64) v;

	/* the slot's own copy (not a tuple in a shared buffer), not deformed */
	if (!TTS_IS_BUFFERTUPLE(newslot) || !TTS_SHOULDFREE(newslot) ||
		((BufferHeapTupleTableSlot *) newslot)->base.tuple != tup ||
		newslot->tts_nvalid != 0 || last > HeapTupleHeaderGetNatts(th))
		return false;

	/* one walk to both attributes, as heap_deform_tuple does */
	for (i = 0; i < last; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (hasnulls && att_isnull(i, th->t_bits))
		{
			if (i == t->verattnum - 1 || i == t->orgattnum - 1)
				return false;	/* a null version or origin: the tuple must grow */
			continue;
		}
		off = att_align_pointer(off, att->attalign, att->attlen, tp + off);
		if (i == t->verattnum - 1)
			verp = (att->attlen == sizeof(int64)) ? tp + off : NULL;
		else if (i == t->orgattnum - 1)
			orgp = tp + off;
		off = att_addlength_pointer(off, att->attlen, tp + off);
	}
	if (verp == NULL || orgp == NULL ||
		VARATT_IS_EXTERNAL(orgp) || VARATT_IS_COMPRESSED(orgp) ||
		VARSIZE_ANY_EXHDR(orgp) != namelen ||
		memcmp(VARDATA_ANY(orgp), registry_node_name, namelen) != 0)
		return false;
	memcpy(verp, &nv, sizeof(int64));
	return true;
}

/*
 * Whether an UPDATE's new tuple is byte for byte the old one: the same
 * null bitmap and data, every column (the version and origin, copied from
 * the old row, too).  One comparison, no deforming: the cost of a real
 * UPDATE barely moves.  Values are compared as stored, so a value the old
 * row holds compressed or out of line, written again, counts as a change.
 */
static bool
tuple_unchanged(HeapTuple oldtup, HeapTuple newtup)
{
	Size		off = offsetof(HeapTupleHeaderData, t_bits);

	if (oldtup == NULL || oldtup->t_len != newtup->t_len ||
		oldtup->t_data->t_hoff != newtup->t_data->t_hoff ||
		HeapTupleHeaderGetNatts(oldtup->t_data) != HeapTupleHeaderGetNatts(newtup->t_data) ||
		HeapTupleHasNulls(oldtup) != HeapTupleHasNulls(newtup))
		return false;
	return memcmp((char *) oldtup->t_data + off, (char *) newtup->t_data + off,
				  oldtup->t_len - off) == 0;
}

/*
 * BEFORE INSERT OR UPDATE: stamp the row.  A local write gets a new
 * version, above the row's previous one whatever the clock says; a row
 * written by the apply path keeps its remote version, which must be newer
 * than the row's (else a concurrent local write won: the batch retries).
 * An UPDATE is recorded here too, unless update_recorded_before() says no.
 */
Datum
registry_stamp(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	RegTable   *t;
	HeapTuple	newtup;
	HeapTuple	result;
	VersionState old;
	VersionState newst;
	RegVersion	v;
	const CaptureMode *apply;
	bool		given = false;
	int			cols[2];
	Datum		vals[2];
	bool		nulls[2] = {false, false};
	static Datum node_origin = (Datum) 0;

	check_trigger(fcinfo, "registry.stamp()", true);
	t = trigger_table(td);
	desc = RelationGetDescr(td->tg_relation);
	newtup = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;

	memset(&old, 0, sizeof(old));
	memset(&newst, 0, sizeof(newst));
	newst.exists = true;
	if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		bool		vnull,
					onull;

		/* through the slot: deformed once, the key columns read later too */
		Datum		ov = slot_getattr(td->tg_trigslot, t->verattnum, &vnull);
		Datum		oo = slot_getattr(td->tg_trigslot, t->orgattnum, &onull);

		if (!vnull && !onull)
		{
			old.exists = true;
			old.version = (RegVersion) DatumGetInt64(ov);
			text_to_cstring_buffer(DatumGetTextPP(oo), old.origin, sizeof(old.origin));
		}
	}

	if (publish_mode_bulk_applying(t->tid))
	{
		bool		vnull;
		Datum		nv = heap_getattr(newtup, t->verattnum, desc, &vnull);
		bool		onull;
		Datum		no = heap_getattr(newtup, t->orgattnum, desc, &onull);
		TupleTableSlot *nslot = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ?
			td->tg_newslot : td->tg_trigslot;

		if (!vnull && !onull)
		{
			newst.version = (RegVersion) DatumGetInt64(nv);
			text_to_cstring_buffer(DatumGetTextPP(no), newst.origin, sizeof(newst.origin));
		}
		/* the statement set the remote version; it must still be newer */
		if (!vnull && !onull &&
			bulk_expected(t, nslot, newst.version, newst.origin))
		{
			if (old.exists && !version_greater(newst.version, newst.origin,
											   old.version, old.origin))
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("a row of registry table %s was changed concurrently",
								t->qualname)));
			result = newtup;
			goto stamped;
		}
		/* not one of the apply's rows: user code wrote it, stamped here */
	}

	apply = publish_mode_applying(t->tid);
	if (apply)
	{
		bool		vnull,
					onull;
		Datum		nv = heap_getattr(newtup, t->verattnum, desc, &vnull);
		Datum		no = heap_getattr(newtup, t->orgattnum, desc, &onull);

		if (!vnull && !onull && (RegVersion) DatumGetInt64(nv) == apply->version)
		{
			char	   *o = TextDatumGetCString(no);
			TupleTableSlot *nslot = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ?
				td->tg_newslot : td->tg_trigslot;

			/* the key being applied, not another that user code writes */
			given = strcmp(o, apply->origin) == 0 &&
				strcmp(row_key(t, nslot), apply->key) == 0;
			pfree(o);
		}
	}

	if (given)
	{
		if (old.exists && !version_greater(apply->version, apply->origin,
										   old.version, old.origin))
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("a row of registry table %s was changed concurrently",
							t->qualname),
					 errdetail("A version at least as new as the one being applied was written meanwhile.")));
		newst.version = apply->version;
		strlcpy(newst.origin, apply->origin, sizeof(newst.origin));
		result = newtup;
		goto stamped;
	}

	/*
	 * A local UPDATE that leaves the row exactly as it was keeps its
	 * version and is not recorded: it changes nothing a peer could see, and
	 * a new version for old content would win over a newer change of the
	 * row made elsewhere meanwhile (last writer wins).  With a BEFORE
	 * UPDATE trigger firing after this one the row may still change: not
	 * judged here.
	 */
	if (TRIGGER_FIRED_BY_UPDATE(td->tg_event) && old.exists &&
		tuple_unchanged(td->tg_trigtuple, newtup) &&
		update_recorded_before(t, td))
		return PointerGetDatum(newtup);

	v = hlc_now();
	if (old.exists && v <= old.version)
	{
		/* the clock is behind this row (restored data, clock stepped) */
		hlc_observe_stored(old.version);
		v = hlc_now();
	}
	if (node_origin == (Datum) 0)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);

		node_origin = CStringGetTextDatum(registry_node_name);
		MemoryContextSwitchTo(oldcxt);
	}
	if (TRIGGER_FIRED_BY_UPDATE(td->tg_event) &&
		restamp_in_place(t, td->tg_newslot, newtup, v))
		result = newtup;
	else
	{
		cols[0] = t->verattnum;
		cols[1] = t->orgattnum;
		vals[0] = Int64GetDatum((int64) v);
		vals[1] = node_origin;
		result = heap_modify_tuple_by_cols(newtup, desc, 2, cols, vals, nulls);
	}
	newst.version = v;
	strlcpy(newst.origin, registry_node_name, sizeof(newst.origin));

stamped:
	if (TRIGGER_FIRED_BY_UPDATE(td->tg_event) && update_recorded_before(t, td))
	{
		/* the key columns of tg_newslot are those of result */
		publishing_wait(HeapTupleHeaderGetXmin(td->tg_trigtuple->t_data));
		capture_update(t, td->tg_relation, td->tg_trigslot, td->tg_newslot,
					   &old, &newst, true);
	}
	return PointerGetDatum(result);
}

/*
 * A key is being inserted: take its tombstone, which must be older.
 * row_written: the row is already in the table (and its primary key).
 *
 * Most inserted keys have no tombstone, and looking costs two relation
 * opens and an index probe.  Once the row is written, a bucket whose
 * tombstone count is zero (digest.c) has none to take: a tombstone of
 * the key committed, or being written, is counted before it is written.
 * One whose writer counts it only after this look would find the row
 * written: a local DELETE of the key, or a key-changing UPDATE away from
 * it, deletes a row, for which this insert's unique check has waited; a
 * remote delete that found no row looks again for one after writing its
 * tombstone (apply.c, row_being_written) and gives up on finding this
 * one.  Before the row is written (a key-changing UPDATE, recorded in
 * the BEFORE trigger) the look is always made.
 */
static void
insert_key(RegTable *t, const char *key, const VersionState *live,
		   bool row_written)
{
	uint32		khash = keys_hash(key, strlen(key));
	VersionState tomb;
	bool		had_tomb;

	if (row_written && !digest_tombstone_possible(t->slot, t->tid, khash))
	{
		memset(&tomb, 0, sizeof(tomb));
		had_tomb = false;
	}
	else
		had_tomb = tombstone_take(t->tid, khash, key, &tomb);
	if (had_tomb &&
		!version_greater(live->version, live->origin, tomb.version, tomb.origin))
	{
		/*
		 * The key was deleted by a version newer than the one stamped on
		 * this row: a remote delete applied while this row was stamped.
		 * Retrying stamps above it.
		 */
		hlc_observe_stored(tomb.version);
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("registry key \"%s\" of table %s was deleted concurrently with a newer version",
						key, t->qualname),
				 errhint("Retry the transaction.")));
	}
	/* a row stashed before the delete is older than this write */
	if (had_tomb && t->lease_ttl_ms > 0)
		lease_stash_drop(t, khash, key);
	row_keys_add(t->tid, khash, key);
	publish_record(t, khash, key, &tomb, live->version, live->origin, false);
}

/* A key is being deleted: write its tombstone. */
static void
delete_key(RegTable *t, const char *key, const VersionState *live)
{
	uint32		khash = keys_hash(key, strlen(key));
	VersionState old;
	RegVersion	v;
	const char *origin;
	const CaptureMode *apply = applying(t, key);

	if (apply)
	{
		origin = apply->origin;
		if (live->exists && !version_greater(apply->version, origin,
											 live->version, live->origin))
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("registry key \"%s\" of table %s was changed concurrently",
							key, t->qualname)));
		v = tombstone_put(t->tid, khash, key, apply->version, origin, true, &old);
	}
	else
	{
		origin = registry_node_name;
		v = hlc_now();
		if (live->exists && v <= live->version)
		{
			hlc_observe_stored(live->version);
			v = hlc_now();
		}
		v = tombstone_put(t->tid, khash, key, v, origin, false, &old);
	}
	row_keys_remove(t->tid, khash, key);
	/* a stray tombstone next to a live row would be a bug; count the row */
	publish_record(t, khash, key, live, v, origin, true);
}

/*
 * A row of an ephemeral table that this node owns (its registry_origin)
 * being deleted by a peer's change, applied here: most likely the peer
 * expired it, not having heard from this node for registry.owner_timeout.
 * The row is stashed (lease_stash.c) so that a client renewing the key
 * here writes it again (registry.renew(), a re-registration).  Deletes
 * reach a table from a peer only one key at a time (apply_row(), the
 * APPLY_ROW mode); a bulk apply writes live rows only, and a whole-table
 * pull (resync) empties the table without capturing its deletes.
 */
static void
stash_if_peer_deletes(RegTable *t, TupleTableSlot *slot, const char *key,
					  const VersionState *old)
{
	const CaptureMode *apply = applying(t, key);
	FmgrInfo	flinfo;
	Datum		row;

	if (apply == NULL || !old->exists ||
		strcmp(old->origin, registry_node_name) != 0 ||
		strcmp(apply->origin, registry_node_name) == 0)
		return;

	/*
	 * to_jsonb() of the row as a record of the table's type: the function
	 * reads its argument's type from the call expression, so it gets one.
	 */
	fmgr_info(F_TO_JSONB, &flinfo);
	fmgr_info_set_expr((Node *) makeFuncExpr(F_TO_JSONB, JSONBOID,
											 list_make1(makeNullConst(slot->tts_tupleDescriptor->tdtypeid,
																	  -1, InvalidOid)),
											 InvalidOid, InvalidOid,
											 COERCE_EXPLICIT_CALL),
					   &flinfo);
	row = FunctionCall1(&flinfo, ExecFetchSlotHeapTupleDatum(slot));
	row = DirectFunctionCall2(jsonb_delete, row,
							  CStringGetTextDatum(REGISTRY_VERSION_COLUMN));
	row = DirectFunctionCall2(jsonb_delete, row,
							  CStringGetTextDatum(REGISTRY_ORIGIN_COLUMN));
	lease_stash_put(t, keys_hash(key, strlen(key)), key, row, old->version,
					apply->version);
}

/*
 * AFTER INSERT OR DELETE (and UPDATE, see update_recorded_before()): keep
 * tombstones in step and remember the change.
 */
Datum
registry_capture(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	RegTable   *t;
	VersionState oldst;
	VersionState newst;

	check_trigger(fcinfo, "registry.capture()", false);
	t = trigger_table(td);
	/* resync() empties a table without recording it; any other row counts */
	if (publish_mode_suppressed(t->tid) && TRIGGER_FIRED_BY_DELETE(td->tg_event))
		return PointerGetDatum(NULL);

	if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
	{
		row_version(t, td->tg_trigslot, &newst);
		if (!newst.exists)
			goto unstamped;
		insert_key(t, row_key(t, td->tg_trigslot), &newst, true);
	}
	else if (TRIGGER_FIRED_BY_DELETE(td->tg_event))
	{
		char	   *key;

		wait_for_slot_writer(td->tg_trigslot);
		row_version(t, td->tg_trigslot, &oldst);
		key = row_key(t, td->tg_trigslot);
		if (t->lease_ttl_ms > 0)
			stash_if_peer_deletes(t, td->tg_trigslot, key, &oldst);
		delete_key(t, key, &oldst);
	}
	else if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		/* only where update_recorded_before() said no */
		wait_for_slot_writer(td->tg_trigslot);
		row_version(t, td->tg_trigslot, &oldst);
		row_version(t, td->tg_newslot, &newst);
		capture_update(t, td->tg_relation, td->tg_trigslot, td->tg_newslot,
					   &oldst, &newst, false);
	}
	return PointerGetDatum(NULL);

unstamped:
	unstamped_error(t);
	return PointerGetDatum(NULL);
}

/*
 * BEFORE TRUNCATE: TRUNCATE is replicated as the deletion of every row.
 * The rows' tombstones are written here (as one bulk change); the
 * TRUNCATE then removes the rows themselves.
 */
Datum
registry_capture_truncate(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	RegTable   *t;
	Relation	rel;
	TableScanDesc scan;
	TupleTableSlot *slot;
	Snapshot	snap;
	MemoryContext rowcxt;
	MemoryContext old;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("registry.capture_truncate() must be called as a TRUNCATE trigger")));
	t = trigger_table(td);
	rel = td->tg_relation;

	rowcxt = AllocSetContextCreate(CurrentMemoryContext, "registry truncate",
								   ALLOCSET_DEFAULT_SIZES);
	publish_mode_push(&(CaptureMode) {.kind = CAPTURE_MODE_BULK, .table = t});
	snap = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snap, 0, NULL);
	slot = table_slot_create(rel, NULL);
	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		VersionState st;

		CHECK_FOR_INTERRUPTS();
		old = MemoryContextSwitchTo(rowcxt);
		row_version(t, slot, &st);
		delete_key(t, row_key(t, slot), &st);
		MemoryContextSwitchTo(old);
		MemoryContextReset(rowcxt);
	}
	ExecDropSingleTupleTableSlot(slot);
	table_endscan(scan);
	UnregisterSnapshot(snap);
	MemoryContextDelete(rowcxt);
	publish_mode_pop(CAPTURE_MODE_BULK);
	return PointerGetDatum(NULL);
}

/*
 * registry.replicate() on a table with rows: stamp each as a fresh local
 * insert, through the triggers, collected as one bulk change.
 */
void
capture_stamp_existing(RegTable *t)
{
	StringInfoData sql;
	int			rc;

	initStringInfo(&sql);
	appendStringInfo(&sql, "UPDATE ONLY %s SET registry_version = NULL",
					 t->qualname);
	publish_mode_push(&(CaptureMode) {.kind = CAPTURE_MODE_BULK, .table = t});
	rc = SPI_execute(sql.data, false, 0);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "registry: could not stamp the rows of %s: %s",
			 t->qualname, SPI_result_code_string(rc));
	publish_mode_pop(CAPTURE_MODE_BULK);
}

/* Whether the row in slot is one the bulk apply's statement writes. */
static bool
bulk_expected(RegTable *t, TupleTableSlot *slot, RegVersion version,
			  const char *origin)
{
	return publish_mode_bulk_apply_row(row_key(t, slot), version, origin);
}

static void
wait_for_slot_writer(TupleTableSlot *slot)
{
	bool		shouldfree;
	HeapTuple	tup = ExecFetchSlotHeapTuple(slot, false, &shouldfree);

	publishing_wait(HeapTupleHeaderGetXmin(tup->t_data));
	if (shouldfree)
		heap_freetuple(tup);
}
