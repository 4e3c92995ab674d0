/*-------------------------------------------------------------------------
 *
 * capture.c
 *	  Capturing changes to registry tables, and publishing them to shared
 *	  memory when (and only when) the transaction commits.
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
 *	registry_truncate	BEFORE TRUNCATE: writes a tombstone for every row.
 *
 * Savepoint rollbacks drop their part of the list; an aborted transaction
 * drops all of it.  At pre-commit the list is coalesced (one entry per key
 * per transaction) and everything the publication needs is computed, so
 * that the commit callback itself only copies into shared memory: it
 * cannot fail.
 *
 * Bulk changes (TRUNCATE, registering a table that already has rows) are
 * published as one digest delta per table and one "resync" entry in the
 * change log, instead of one entry per key.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/nbtree.h"
#include "access/tableam.h"
#include "access/twophase.h"
#include "access/xact.h"
#include "catalog/pg_trigger.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "registry.h"
#include "row_keys.h"
#include "rows.h"
#include "shmem.h"
#include "tombstones.h"

PG_FUNCTION_INFO_V1(registry_stamp);
PG_FUNCTION_INFO_V1(registry_capture);
PG_FUNCTION_INFO_V1(registry_capture_truncate);

typedef struct PendingChange
{
	SubTransactionId subid;
	bool		bulk;
	bool		reset;			/* bulk: the table's digests start over */
	bool		silent;			/* bulk: no change log entry (tombstone purge) */
	bool		merged;			/* folded into an earlier entry for its key */
	int32		tid;
	Oid			relid;
	uint32		khash;
	char	   *key;
	RegVersion	version;
	int16		origin;
	bool		deleted;
	bool		old_live;		/* state before the transaction's first change */
	uint64		delta;			/* XOR of old and new entry digests */
	int64		live_delta;
	int64		tomb_delta;
	uint64	   *bucket_delta;	/* bulk: per-bucket digest deltas */
	/* computed at pre-commit */
	int			slot;
	char		op;
} PendingChange;

static PendingChange *pending = NULL;
static int	npending = 0;
static int	maxpending = 0;
static bool pending_ready = false;	/* pre-commit done */

/* the apply path's row being written, if any */
static bool apply_active = false;
static RegVersion apply_version = 0;
static char apply_origin[REGISTRY_NAME_LEN];
static int32 apply_tid = 0;
static const char *apply_key = NULL;

/* registry.replicate() stamping a table's existing rows */
typedef struct BulkChange
{
	uint64	   *bucket_delta;
	int64		live_delta;
	int64		tomb_delta;
	/* the origin of every row, if they share one */
	char		origin[REGISTRY_NAME_LEN];
	bool		mixed;
} BulkChange;

static int32 bulk_tid = 0;
static BulkChange bulk;
static int64 bulk_count = 0;

/*
 * the apply path writing many rows of one table with their own versions:
 * only those rows (bulk_expect, sorted by key) keep theirs
 */
static int32 bulk_apply_tid = 0;
static ApplyRow **bulk_expect = NULL;
static int	bulk_nexpect = 0;

/* registry.resync() emptying a table without capturing it */
static int32 suppressed_tid = 0;

/*
 * The subtransaction that set each mode above: only its abort drops the
 * mode.  A subtransaction that user code starts while a row is applied (a
 * plpgsql block with an EXCEPTION clause in a trigger or a CHECK
 * function) may abort without ending the apply: the row must still be
 * written with its remote version.  The modes are set apart (a bulk change
 * of another table may start inside an apply), so each has its own.
 */
typedef enum CaptureMode
{
	MODE_APPLY,					/* apply_active */
	MODE_BULK,					/* bulk_tid, bulk_apply_tid, bulk_expect */
	MODE_SUPPRESS,				/* suppressed_tid */
	NUM_MODES
} CaptureMode;

static SubTransactionId modes_subid[NUM_MODES];

static void
mode_set(CaptureMode mode)
{
	modes_subid[mode] = GetCurrentSubTransactionId();
}

static void
mode_drop(CaptureMode mode)
{
	switch (mode)
	{
		case MODE_APPLY:
			apply_active = false;
			break;
		case MODE_BULK:
			bulk_tid = 0;
			bulk_apply_tid = 0;
			bulk_expect = NULL;
			bulk_nexpect = 0;
			break;
		case MODE_SUPPRESS:
			suppressed_tid = 0;
			break;
		default:
			break;
	}
	modes_subid[mode] = InvalidSubTransactionId;
}

static bool publishing_set = false;

static void wait_for_slot_writer(TupleTableSlot *slot);
static void wait_for_key_holder(RegTable *t, Relation rel, TupleTableSlot *newslot);
static bool same_key(RegTable *t, Relation rel, TupleTableSlot *a, TupleTableSlot *b);

static void nested_capture_error(void);
static bool bulk_expected(RegTable *t, TupleTableSlot *slot, RegVersion version,
						  const char *origin);
static bool bulk_expected_key(const char *key, RegVersion version,
							  const char *origin);
static void capture_xact_callback(XactEvent event, void *arg);
static void capture_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
									 SubTransactionId parentSubid, void *arg);

void
capture_init(void)
{
	RegisterXactCallback(capture_xact_callback, NULL);
	RegisterSubXactCallback(capture_subxact_callback, NULL);
}

/*
 * The next write of (tid, key) carries the given remote version instead
 * of a local stamp.  key must stay valid until cleared.
 */
void
capture_set_apply(int32 tid, const char *key, RegVersion version,
				  const char *origin)
{
	if (apply_active || bulk_apply_tid != 0)
		nested_capture_error();
	apply_active = true;
	mode_set(MODE_APPLY);
	apply_tid = tid;
	apply_key = key;
	apply_version = version;
	strlcpy(apply_origin, origin, sizeof(apply_origin));
}

void
capture_clear_apply(void)
{
	apply_active = false;
}

/*
 * The modes hold for one statement of ours; user code that runs inside it
 * (a trigger, a constraint) must not start another: its writes would be
 * taken for the apply's, or mix with its bulk change.
 */
static void
nested_capture_error(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("a registry change is already being recorded in this statement"),
			 errdetail("User code that runs while registry rows are applied, a table is truncated or registered cannot apply registry rows, truncate or register a registry table itself.")));
}

static bool
applying(RegTable *t, const char *key)
{
	return apply_active && apply_tid == t->tid && strcmp(apply_key, key) == 0;
}

static PendingChange *
pending_append(void)
{
	PendingChange *p;

	if (npending >= maxpending)
	{
		int			newmax = maxpending ? maxpending * 2 : 16;

		if (pending == NULL)
			pending = MemoryContextAlloc(TopTransactionContext,
										 newmax * sizeof(PendingChange));
		else
			pending = repalloc_huge(pending, newmax * sizeof(PendingChange));
		maxpending = newmax;
	}
	p = &pending[npending++];
	memset(p, 0, sizeof(PendingChange));
	p->subid = GetCurrentSubTransactionId();
	p->slot = -1;
	return p;
}

static uint64
state_hash(const char *key, const VersionState *st)
{
	if (!st->exists)
		return 0;
	return digest_entry_hash(key, st->version, st->origin, st->deleted);
}

/* Remember one key change: old state -> (version, origin, deleted). */
void
capture_record(RegTable *t, uint32 khash, const char *key,
			   const VersionState *old, RegVersion version,
			   const char *origin, bool deleted)
{
	PendingChange *p;
	uint64		delta = state_hash(key, old) ^
		digest_entry_hash(key, version, origin, deleted);
	bool		old_live = old->exists && !old->deleted;
	int64		live_delta = (deleted ? 0 : 1) - (old_live ? 1 : 0);
	int64		tomb_delta = (deleted ? 1 : 0) - ((old->exists && old->deleted) ? 1 : 0);

	/*
	 * A bulk change collects its table's changes -- but during a bulk apply
	 * only the rows of the apply's statement: what user code writes
	 * meanwhile (in a subtransaction that may yet abort) is a change of
	 * its own, dropped with its subtransaction.
	 */
	if (bulk_tid == t->tid &&
		(bulk_apply_tid != t->tid || bulk_expected_key(key, version, origin)))
	{
		bulk.bucket_delta[digest_bucket_of(khash, registry_digest_buckets)] ^= delta;
		bulk.live_delta += live_delta;
		bulk.tomb_delta += tomb_delta;
		if (bulk_count == 0)
			strlcpy(bulk.origin, origin, sizeof(bulk.origin));
		else if (!bulk.mixed && strcmp(bulk.origin, origin) != 0)
			bulk.mixed = true;
		bulk_count++;
		return;
	}

	p = pending_append();
	p->tid = t->tid;
	p->relid = t->relid;
	p->khash = khash;
	p->key = MemoryContextStrdup(TopTransactionContext, key);
	p->version = version;
	p->origin = origin_id(origin);
	p->deleted = deleted;
	p->old_live = old_live;
	p->delta = delta;
	p->live_delta = live_delta;
	p->tomb_delta = tomb_delta;
}

static void
bulk_begin(RegTable *t)
{
	if (bulk_tid != 0)
		nested_capture_error();
	bulk.bucket_delta = MemoryContextAllocZero(TopTransactionContext,
											   sizeof(uint64) * registry_digest_buckets);
	bulk.live_delta = 0;
	bulk.tomb_delta = 0;
	bulk.mixed = false;
	bulk.origin[0] = '\0';
	bulk_count = 0;
	bulk_tid = t->tid;
	mode_set(MODE_BULK);
}

/* Publish what bulk_begin() collected as one change of the table. */
static void
bulk_end(RegTable *t)
{
	PendingChange *p;

	bulk_tid = 0;
	if (bulk_count == 0)
		return;
	p = pending_append();
	p->bulk = true;
	p->tid = t->tid;
	p->relid = t->relid;
	p->key = "";
	p->bucket_delta = bulk.bucket_delta;
	p->live_delta = bulk.live_delta;
	p->tomb_delta = bulk.tomb_delta;

	/*
	 * Rows that all came from one node are that node's change: a peer
	 * asking for changes not its own then need not hear of it.
	 */
	p->origin = bulk.mixed ? 0 : origin_id(bulk.origin);
	p->version = hlc_current();
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

static void insert_key(RegTable *t, const char *key, const VersionState *live);
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

		capture_record(t, keys_hash(key, strlen(key)), key, oldst,
					   newst->version, newst->origin, false);
	}
	else
	{
		if (before_write)
			wait_for_key_holder(t, rel, newslot);
		delete_key(t, row_key(t, oldslot), oldst);
		insert_key(t, row_key(t, newslot), newst);
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

	if (bulk_apply_tid == t->tid)
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

	if (apply_active && apply_tid == t->tid)
	{
		bool		vnull,
					onull;
		Datum		nv = heap_getattr(newtup, t->verattnum, desc, &vnull);
		Datum		no = heap_getattr(newtup, t->orgattnum, desc, &onull);

		if (!vnull && !onull && (RegVersion) DatumGetInt64(nv) == apply_version)
		{
			char	   *o = TextDatumGetCString(no);
			TupleTableSlot *nslot = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ?
				td->tg_newslot : td->tg_trigslot;

			/* the key being applied, not another that user code writes */
			given = strcmp(o, apply_origin) == 0 &&
				strcmp(row_key(t, nslot), apply_key) == 0;
			pfree(o);
		}
	}

	if (given)
	{
		if (old.exists && !version_greater(apply_version, apply_origin,
										   old.version, old.origin))
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("a row of registry table %s was changed concurrently",
							t->qualname),
					 errdetail("A version at least as new as the one being applied was written meanwhile.")));
		newst.version = apply_version;
		strlcpy(newst.origin, apply_origin, sizeof(newst.origin));
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
		wait_for_publication(HeapTupleHeaderGetXmin(td->tg_trigtuple->t_data));
		capture_update(t, td->tg_relation, td->tg_trigslot, td->tg_newslot,
					   &old, &newst, true);
	}
	return PointerGetDatum(result);
}

/* A key is being inserted: take its tombstone, which must be older. */
static void
insert_key(RegTable *t, const char *key, const VersionState *live)
{
	uint32		khash = keys_hash(key, strlen(key));
	VersionState tomb;

	if (tombstone_take(t->tid, khash, key, &tomb) &&
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
	row_keys_add(t->tid, khash, key);
	capture_record(t, khash, key, &tomb, live->version, live->origin, false);
}

/* A key is being deleted: write its tombstone. */
static void
delete_key(RegTable *t, const char *key, const VersionState *live)
{
	uint32		khash = keys_hash(key, strlen(key));
	VersionState old;
	RegVersion	v;
	const char *origin;

	if (applying(t, key))
	{
		origin = apply_origin;
		if (live->exists && !version_greater(apply_version, origin,
											 live->version, live->origin))
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("registry key \"%s\" of table %s was changed concurrently",
							key, t->qualname)));
		v = tombstone_put(t->tid, khash, key, apply_version, origin, true, &old);
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
	capture_record(t, khash, key, live, v, origin, true);
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
	if (suppressed_tid == t->tid && TRIGGER_FIRED_BY_DELETE(td->tg_event))
		return PointerGetDatum(NULL);

	if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
	{
		row_version(t, td->tg_trigslot, &newst);
		if (!newst.exists)
			goto unstamped;
		insert_key(t, row_key(t, td->tg_trigslot), &newst);
	}
	else if (TRIGGER_FIRED_BY_DELETE(td->tg_event))
	{
		wait_for_slot_writer(td->tg_trigslot);
		row_version(t, td->tg_trigslot, &oldst);
		delete_key(t, row_key(t, td->tg_trigslot), &oldst);
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
	bulk_begin(t);
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
	bulk_end(t);
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
	bulk_begin(t);
	rc = SPI_execute(sql.data, false, 0);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "registry: could not stamp the rows of %s: %s",
			 t->qualname, SPI_result_code_string(rc));
	if (SPI_processed > 0)
		bulk_end(t);
	else
		bulk_tid = 0;
}

/*
 * A table restored from a dump, now whole again: its rows and tombstones
 * already carry their versions, which are kept.  The table's digests and
 * counts start again from exactly them, published as one bulk change, and
 * the clock moves past the newest version.
 */
void
capture_adopt(RegTable *t)
{
	Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());
	int64		unversioned;
	RegVersion	maxv;

	capture_reset_table(t);
	bulk_begin(t);
	maxv = digest_of_table(t, snap, bulk.bucket_delta, &bulk.live_delta,
						   &bulk.tomb_delta, &unversioned);
	UnregisterSnapshot(snap);
	if (unversioned > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("restored registry table %s has " INT64_FORMAT " rows without a version",
						t->qualname, unversioned),
				 errhint("Call registry.unreplicate() and registry.replicate() on it.")));
	/* published as this node's change, whatever the rows' origins */
	bulk_count = bulk.live_delta + bulk.tomb_delta;
	bulk.mixed = true;
	bulk_end(t);
	hlc_observe_stored(maxv);
}

static int
apply_row_key_cmp(const void *a, const void *b)
{
	return strcmp((*(ApplyRow *const *) a)->key, (*(ApplyRow *const *) b)->key);
}

/*
 * The rows rows[taken[0..m-1]] are about to be written with their own
 * versions by one statement of the apply path.  A row the statement
 * writes keeps its version only if it is one of them, with that version
 * and origin: a row that user code on the table writes meanwhile (a
 * trigger) is a local write like any other.
 */
void
capture_set_bulk_apply(RegTable *t, ApplyRow *rows, int *taken, int m)
{
	int			i;

	if (apply_active || bulk_apply_tid != 0)
		nested_capture_error();
	bulk_expect = palloc(sizeof(ApplyRow *) * Max(m, 1));
	for (i = 0; i < m; i++)
		bulk_expect[i] = &rows[taken[i]];
	qsort(bulk_expect, m, sizeof(ApplyRow *), apply_row_key_cmp);
	bulk_nexpect = m;
	bulk_apply_tid = t->tid;
	bulk_begin(t);			/* the bulk mode, with bulk_apply_tid */
}

/* Whether (key, version, origin) is a row the bulk apply writes. */
static bool
bulk_expected_key(const char *key, RegVersion version, const char *origin)
{
	ApplyRow	probe;
	ApplyRow   *pp = &probe;
	ApplyRow  **found;

	probe.key = key;
	found = bsearch(&pp, bulk_expect, bulk_nexpect, sizeof(ApplyRow *),
					apply_row_key_cmp);
	return found && (*found)->version == version &&
		strcmp((*found)->origin, origin) == 0;
}

/* Whether the row in slot is one the bulk apply's statement writes. */
static bool
bulk_expected(RegTable *t, TupleTableSlot *slot, RegVersion version,
			  const char *origin)
{
	return bulk_expected_key(row_key(t, slot), version, origin);
}

void
capture_end_bulk_apply(RegTable *t)
{
	bulk_apply_tid = 0;
	bulk_expect = NULL;
	bulk_nexpect = 0;
	bulk_end(t);
}

/*
 * The apply path writes rows of keys this node does not have, with their
 * versions set, bypassing the triggers; it then records each row with
 * capture_record() and they are published as one bulk change.
 */
void
capture_fresh_begin(RegTable *t)
{
	suppressed_tid = t->tid;
	mode_set(MODE_SUPPRESS);
	bulk_begin(t);
}

void
capture_fresh_end(RegTable *t)
{
	suppressed_tid = 0;
	bulk_end(t);
}

/* Writes to table tid are not captured until the transaction ends. */
void
capture_suppress(int32 tid)
{
	suppressed_tid = tid;
	mode_set(MODE_SUPPRESS);
}

/* At commit, the table's digests and counts start from zero. */
void
capture_reset_table(RegTable *t)
{
	PendingChange *p = pending_append();

	p->bulk = true;
	p->reset = true;
	p->tid = t->tid;
	p->relid = t->relid;
	p->key = "";
	p->bucket_delta = MemoryContextAllocZero(TopTransactionContext,
											 sizeof(uint64) * registry_digest_buckets);
	p->version = hlc_current();
}

/* Purged tombstones leave the digests without a change log entry. */
void
capture_forget_tombstones(RegTable *t, int n, uint32 *khashes, char **keys,
						  RegVersion *versions, char **origins)
{
	PendingChange *p;
	int			i;

	if (n == 0)
		return;
	bulk_begin(t);
	for (i = 0; i < n; i++)
	{
		bulk.bucket_delta[digest_bucket_of(khashes[i], registry_digest_buckets)] ^=
			digest_entry_hash(keys[i], versions[i], origins[i], true);
		bulk.tomb_delta--;
	}
	bulk_tid = 0;
	p = pending_append();
	p->bulk = true;
	p->silent = true;
	p->tid = t->tid;
	p->relid = t->relid;
	p->key = "";
	p->bucket_delta = bulk.bucket_delta;
	p->tomb_delta = bulk.tomb_delta;
	p->version = hlc_current();
}

/* ---- keeping publications in commit order ----
 *
 * A transaction becomes visible before its commit callback publishes it,
 * so a later transaction could change the same key and publish first.  A
 * committing transaction therefore announces its xids in a per-process
 * slot from pre-commit until it has published, and a writer that finds
 * a key last written by such a transaction waits (microseconds) for it.
 * The change log is thus in commit order for every key.
 *
 * A row written in a subtransaction carries the subtransaction's xid, so
 * the slot holds the range from the top-level xid to the highest xid of
 * its committed subtransactions (which are assigned after it).  Another
 * transaction's xid may fall inside the range; its writer then waits for
 * this publication as well, which costs microseconds and nothing else.
 */

int
publishing_slots(void)
{
	return MaxBackends + NUM_AUXILIARY_PROCS + max_prepared_xacts;
}

void
publishing_init(void)
{
	int			i;

	for (i = 0; i < 2 * publishing_slots(); i++)
		pg_atomic_init_u32(&RegistryPublishing[i], InvalidTransactionId);
}

static void
publishing_begin(void)
{
	TransactionId top = GetTopTransactionId();
	TransactionId high = top;
	TransactionId *children;
	int			nchildren = xactGetCommittedChildren(&children);
	int			i;

	for (i = 0; i < nchildren; i++)
		if (TransactionIdFollows(children[i], high))
			high = children[i];
	/* the high end first: a reader that sees the low end sees both */
	pg_atomic_write_u32(&RegistryPublishing[2 * MyProc->pgprocno + 1], high);
	pg_write_barrier();
	pg_atomic_write_u32(&RegistryPublishing[2 * MyProc->pgprocno], top);
	pg_atomic_fetch_add_u32(&RegistryState->publishing, 1);
	publishing_set = true;
}

static void
publishing_end(void)
{
	if (!publishing_set)
		return;
	pg_atomic_write_u32(&RegistryPublishing[2 * MyProc->pgprocno], InvalidTransactionId);
	pg_atomic_fetch_sub_u32(&RegistryState->publishing, 1);
	publishing_set = false;
}

static bool
is_publishing(TransactionId xid)
{
	int			i;
	int			n = publishing_slots();

	for (i = 0; i < n; i++)
	{
		TransactionId low = pg_atomic_read_u32(&RegistryPublishing[2 * i]);
		TransactionId high;

		if (!TransactionIdIsValid(low) || TransactionIdPrecedes(xid, low))
			continue;
		pg_read_barrier();
		high = pg_atomic_read_u32(&RegistryPublishing[2 * i + 1]);
		if (TransactionIdPrecedesOrEquals(xid, high))
			return true;
	}
	return false;
}

/* Wait until the transaction that last wrote a key has published it. */
void
wait_for_publication(TransactionId xid)
{
	bool		waited = false;

	if (!TransactionIdIsNormal(xid) || TransactionIdIsCurrentTransactionId(xid))
		return;
	pg_memory_barrier();
	if (pg_atomic_read_u32(&RegistryState->publishing) == 0)
		return;
	while (is_publishing(xid))
	{
		waited = true;
		pg_usleep(10L);
		CHECK_FOR_INTERRUPTS();
	}
	if (waited)
	{
		SpinLockAcquire(&RegistryState->mutex);
		RegistryState->publication_waits++;
		SpinLockRelease(&RegistryState->mutex);
	}
}

static void
wait_for_slot_writer(TupleTableSlot *slot)
{
	bool		shouldfree;
	HeapTuple	tup = ExecFetchSlotHeapTuple(slot, false, &shouldfree);

	wait_for_publication(HeapTupleHeaderGetXmin(tup->t_data));
	if (shouldfree)
		heap_freetuple(tup);
}

/* ---- transaction end ---- */

typedef struct CoalesceKey
{
	int32		tid;
	const char *key;
} CoalesceKey;

typedef struct CoalesceEntry
{
	CoalesceKey k;
	int			first;
} CoalesceEntry;

static uint32
coalesce_hash(const void *key, Size keysize)
{
	const CoalesceKey *k = key;

	return keys_hash(k->key, strlen(k->key)) ^ (uint32) k->tid;
}

static int
coalesce_match(const void *key1, const void *key2, Size keysize)
{
	const CoalesceKey *a = key1;
	const CoalesceKey *b = key2;

	if (a->tid != b->tid)
		return 1;
	return strcmp(a->key, b->key);
}

/*
 * Fold repeated changes of a key into its first entry: the transaction's
 * effect is first old state -> last new state.
 */
static void
coalesce_pending(void)
{
	HASHCTL		ctl;
	HTAB	   *h;
	int			i;

	if (npending < 2)
		return;
	ctl.keysize = sizeof(CoalesceKey);
	ctl.entrysize = sizeof(CoalesceEntry);
	ctl.hash = coalesce_hash;
	ctl.match = coalesce_match;
	ctl.hcxt = TopTransactionContext;
	h = hash_create("registry coalesce", npending, &ctl,
					HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
	for (i = 0; i < npending; i++)
	{
		PendingChange *p = &pending[i];
		CoalesceKey k;
		CoalesceEntry *e;
		bool		found;

		if (p->bulk)
			continue;
		k.tid = p->tid;
		k.key = p->key;
		e = hash_search(h, &k, HASH_ENTER, &found);
		if (!found)
			e->first = i;
		else
		{
			PendingChange *f = &pending[e->first];

			f->delta ^= p->delta;
			f->live_delta += p->live_delta;
			f->tomb_delta += p->tomb_delta;
			f->version = p->version;
			f->origin = p->origin;
			f->deleted = p->deleted;
			p->merged = true;
		}
	}
	hash_destroy(h);
}

/*
 * Everything that can fail happens here, before the commit record is
 * written: coalescing, finding each table's shared-memory slot.
 */
static void
capture_pre_commit(void)
{
	int			i;

	coalesce_pending();
	for (i = 0; i < npending; i++)
	{
		PendingChange *p = &pending[i];

		if (p->merged)
			continue;
		p->slot = table_slot_for(p->tid, p->relid);
		if (p->bulk)
			p->op = REG_OP_RESYNC;
		else if (p->deleted)
			p->op = REG_OP_DELETE;
		else if (p->old_live)
			p->op = REG_OP_UPDATE;
		else
			p->op = REG_OP_INSERT;
	}
	pending_ready = true;
	publishing_begin();
}

/*
 * Commit callback: copy the transaction's changes into shared memory.
 * Nothing here may raise an error; every size was checked before commit.
 */
static void
capture_publish(void)
{
	int			i;
	int			n = 0;
	TimestampTz now = GetCurrentTransactionStopTimestamp();
	uint64		capacity = (uint64) registry_change_log_size;
	int			nbuckets = registry_digest_buckets;

	for (i = 0; i < npending; i++)
		if (!pending[i].merged && !pending[i].silent)
			n++;

	LWLockAcquire(RegistryState->changelog_lock, LW_EXCLUSIVE);
	if (n == 0)
		;
	else if ((uint64) n > capacity)
	{
		/* cannot keep them all: readers see a gap and compare digests */
		RegistryState->cl_overwritten +=
			RegistryState->cl_last_seq + 1 - RegistryState->cl_first_seq;
		RegistryState->cl_last_seq += n;
		RegistryState->cl_first_seq = RegistryState->cl_last_seq + 1;
		RegistryState->cl_truncations++;
	}
	else
	{
		for (i = 0; i < npending; i++)
		{
			PendingChange *p = &pending[i];
			uint64		seq;
			ChangeLogEntry *e;

			if (p->merged || p->silent)
				continue;
			seq = ++RegistryState->cl_last_seq;
			if (seq - RegistryState->cl_first_seq >= capacity)
			{
				RegistryState->cl_first_seq = seq - capacity + 1;
				RegistryState->cl_overwritten++;
			}
			e = changelog_entry(seq);
			e->seq = seq;
			e->version = p->version;
			e->committed_at = now;
			e->tid = p->tid;
			e->khash = p->khash;
			e->origin = p->origin;
			e->op = p->op;
			e->keylen = strlen(p->key);
			memcpy(e->key, p->key, e->keylen + 1);
		}
	}
	LWLockRelease(RegistryState->changelog_lock);

	LWLockAcquire(RegistryState->acceptor_lock, LW_EXCLUSIVE);
	for (i = 0; i < npending; i++)
	{
		PendingChange *p = &pending[i];

		if (p->merged || p->bulk)
			continue;
		(void) acceptor_note(p->tid, p->khash, p->key, p->version, p->origin,
							 p->op, now);
	}
	LWLockRelease(RegistryState->acceptor_lock);

	LWLockAcquire(RegistryState->digest_lock, LW_EXCLUSIVE);
	for (i = 0; i < npending; i++)
	{
		PendingChange *p = &pending[i];
		RegTableSlot *ts;
		uint64	   *buckets;

		if (p->merged || p->slot < 0)
			continue;
		ts = &RegistryTables[p->slot];
		if (ts->tid != p->tid)
			continue;			/* unregistered meanwhile */
		buckets = table_slot_buckets(p->slot);
		if (p->reset)
		{
			memset(buckets, 0, sizeof(uint64) * nbuckets);
			ts->live_rows = 0;
			ts->tombstones = 0;
		}
		else if (p->bulk)
		{
			int			b;

			for (b = 0; b < nbuckets; b++)
				buckets[b] ^= p->bucket_delta[b];
		}
		else
		{
			buckets[digest_bucket_of(p->khash, nbuckets)] ^= p->delta;
			ts->changes++;
		}
		ts->live_rows += p->live_delta;
		ts->tombstones += p->tomb_delta;
		ts->last_change = now;
	}
	LWLockRelease(RegistryState->digest_lock);

	/* peers waiting in registry.changes_since() */
	ConditionVariableBroadcast(&RegistryState->changes_cv);

	/* signal the notifier only if it is idle; under load it polls */
	if (pg_atomic_exchange_u32(&RegistryState->notify_wanted, 0) != 0)
		worker_set_latch(REG_WORKER_MAINTENANCE);
}

static void
pending_reset(void)
{
	pending = NULL;
	npending = 0;
	maxpending = 0;
	pending_ready = false;
	apply_active = false;
	bulk_tid = 0;
	bulk_apply_tid = 0;
	bulk_expect = NULL;
	bulk_nexpect = 0;
	suppressed_tid = 0;
}

static void
capture_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			if (npending > 0)
				capture_pre_commit();
			break;
		case XACT_EVENT_COMMIT:
			if (npending > 0 && pending_ready)
				capture_publish();
			publishing_end();
			origins_unpin();
			pending_reset();
			break;
		case XACT_EVENT_PRE_PREPARE:
			if (npending > 0)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that has modified registry tables"),
						 errdetail("Registry changes are published when they commit; a prepared transaction would commit them unseen.")));
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			publishing_end();
			origins_unpin();
			pending_reset();
			break;
		default:
			break;
	}
}

static void
capture_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	int			i;

	/* a subtransaction's entries are always the tail of the list */
	switch (event)
	{
		case SUBXACT_EVENT_COMMIT_SUB:
			for (i = npending - 1; i >= 0 && pending[i].subid == mySubid; i--)
				pending[i].subid = parentSubid;
			for (i = 0; i < NUM_MODES; i++)
				if (modes_subid[i] == mySubid)
					modes_subid[i] = parentSubid;
			break;
		case SUBXACT_EVENT_ABORT_SUB:
			while (npending > 0 && pending[npending - 1].subid == mySubid)
				npending--;
			for (i = 0; i < NUM_MODES; i++)
				if (modes_subid[i] == mySubid)
					mode_drop((CaptureMode) i);
			break;
		default:
			break;
	}
}
