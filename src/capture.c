/*-------------------------------------------------------------------------
 *
 * capture.c
 *	  Capturing changes to registry tables, and publishing them to shared
 *	  memory when (and only when) the transaction commits.
 *
 * The row trigger registry.capture() writes each changed key's new
 * version to registry.row_versions (versions.c) and remembers the change
 * in a backend-local list.  Savepoint rollbacks drop their part of the
 * list; an aborted transaction drops all of it.  At pre-commit the list is
 * coalesced (one entry per key per transaction) and everything the
 * publication needs is computed, so that the commit callback itself only
 * copies into shared memory: it cannot fail.
 *
 * Bulk changes (TRUNCATE, registering a table that already has rows) are
 * published as one digest delta per table and one "resync" entry in the
 * change log, instead of one entry per key.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "commands/trigger.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/datum.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "registry.h"
#include "shmem.h"
#include "versions.h"

PG_FUNCTION_INFO_V1(registry_capture);
PG_FUNCTION_INFO_V1(registry_capture_truncate);

typedef struct PendingChange
{
	SubTransactionId subid;
	bool		bulk;
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
 * The next trigger firing for (tid, key) writes the given remote version
 * instead of stamping a local one.  key must stay valid until cleared.
 */
void
capture_set_apply(int32 tid, const char *key, RegVersion version,
				  const char *origin)
{
	apply_active = true;
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

/* Remember one key change that has been written to row_versions. */
void
capture_record(RegTable *t, uint32 khash, const char *key,
			   const VersionState *old, RegVersion version,
			   const char *origin, bool deleted)
{
	PendingChange *p;
	uint64		oldhash = 0;
	bool		old_live = old->exists && !old->deleted;

	if (old->exists)
		oldhash = digest_entry_hash(key, old->version, old->origin, old->deleted);

	p = pending_append();
	p->tid = t->tid;
	p->relid = t->relid;
	p->khash = khash;
	p->key = MemoryContextStrdup(TopTransactionContext, key);
	p->version = version;
	p->origin = origin_id(origin);
	p->deleted = deleted;
	p->old_live = old_live;
	p->delta = oldhash ^ digest_entry_hash(key, version, origin, deleted);
	p->live_delta = (deleted ? 0 : 1) - (old_live ? 1 : 0);
	p->tomb_delta = (deleted ? 1 : 0) - ((old->exists && old->deleted) ? 1 : 0);
}

/* Remember a bulk change of one table (bucket_delta is taken over). */
void
capture_record_bulk(RegTable *t, uint64 *bucket_delta, int64 live_delta,
					int64 tomb_delta)
{
	PendingChange *p = pending_append();

	p->bulk = true;
	p->tid = t->tid;
	p->relid = t->relid;
	p->key = "";
	p->bucket_delta = bucket_delta;
	p->live_delta = live_delta;
	p->tomb_delta = tomb_delta;
	p->origin = 0;
	p->version = hlc_current();
}

/*
 * Write one key's new state.  In the apply path the remote version is
 * used for the key being applied; anything else (e.g. a user trigger
 * writing another registry table) is a local change.
 */
static void
change_key(RegTable *t, const char *key, bool deleted)
{
	uint32		khash = keys_hash(key, strlen(key));
	VersionState old;
	RegVersion	v;
	const char *origin = registry_node_name;
	RegVersion	av = 0;

	if (apply_active && apply_tid == t->tid && strcmp(apply_key, key) == 0)
	{
		av = apply_version;
		origin = apply_origin;
	}
	v = versions_write(t->tid, khash, key, av, origin, deleted, &old);
	capture_record(t, khash, key, &old, v, origin, deleted);
}

static char *
key_of_slot(RegTable *t, TupleTableSlot *slot, Relation rel)
{
	Datum		values[INDEX_MAX_KEYS];
	bool		isnull[INDEX_MAX_KEYS];
	int			i;

	for (i = 0; i < t->nkeys; i++)
		values[i] = slot_getattr(slot, t->keys[i].attnum, &isnull[i]);
	return keys_encode(t->keys, t->nkeys, values, isnull,
					   RelationGetRelationName(rel));
}

static bool
same_key(RegTable *t, TupleTableSlot *a, TupleTableSlot *b, Relation rel)
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

/*
 * AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW on every registry table.
 * An update that changes the key is a delete of the old key and an
 * insert of the new one.
 */
Datum
registry_capture(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	rel;
	RegTable   *t;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("registry.capture() must be called as a trigger")));
	if (!TRIGGER_FIRED_AFTER(td->tg_event) || !TRIGGER_FIRED_FOR_ROW(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("registry.capture() must fire AFTER ... FOR EACH ROW")));
	registry_check_preloaded();

	rel = td->tg_relation;
	t = regtable_by_relid(RelationGetRelid(rel), true);
	if (t == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" has a registry trigger but is not a registry table",
						RelationGetRelationName(rel)),
				 errhint("Register it with registry.replicate(), or drop trigger registry_capture.")));

	if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
		change_key(t, key_of_slot(t, td->tg_trigslot, rel), false);
	else if (TRIGGER_FIRED_BY_DELETE(td->tg_event))
		change_key(t, key_of_slot(t, td->tg_trigslot, rel), true);
	else if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		if (same_key(t, td->tg_trigslot, td->tg_newslot, rel))
			change_key(t, key_of_slot(t, td->tg_newslot, rel), false);
		else
		{
			change_key(t, key_of_slot(t, td->tg_trigslot, rel), true);
			change_key(t, key_of_slot(t, td->tg_newslot, rel), false);
		}
	}
	return PointerGetDatum(NULL);
}

/* Accumulates the digest effect of many key changes of one table. */
typedef struct BulkChange
{
	uint64	   *bucket_delta;
	int64		live_delta;
	int64		tomb_delta;
} BulkChange;

static void
bulk_init(BulkChange *b)
{
	b->bucket_delta = MemoryContextAllocZero(TopTransactionContext,
											 sizeof(uint64) * registry_digest_buckets);
	b->live_delta = 0;
	b->tomb_delta = 0;
}

static void
bulk_write(BulkChange *b, RegTable *t, const char *key, bool deleted)
{
	uint32		khash = keys_hash(key, strlen(key));
	VersionState old;
	RegVersion	v;
	uint64		delta;

	v = versions_write(t->tid, khash, key, 0, registry_node_name, deleted, &old);
	delta = digest_entry_hash(key, v, registry_node_name, deleted);
	if (old.exists)
		delta ^= digest_entry_hash(key, old.version, old.origin, old.deleted);
	b->bucket_delta[digest_bucket_of(khash, registry_digest_buckets)] ^= delta;
	b->live_delta += (deleted ? 0 : 1) - ((old.exists && !old.deleted) ? 1 : 0);
	b->tomb_delta += (deleted ? 1 : 0) - ((old.exists && old.deleted) ? 1 : 0);
}

/*
 * BEFORE TRUNCATE: TRUNCATE is replicated as the deletion of every row.
 * The rows' tombstones are written here; the TRUNCATE then removes the
 * rows themselves.
 */
Datum
registry_capture_truncate(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	RegTable   *t;
	VersionScan vs;
	VersionEntry e;
	Snapshot	snap;
	List	   *keys = NIL;
	ListCell   *lc;
	BulkChange	b;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("registry.capture_truncate() must be called as a TRUNCATE trigger")));
	registry_check_preloaded();
	t = regtable_by_relid(RelationGetRelid(td->tg_relation), false);

	snap = RegisterSnapshot(GetLatestSnapshot());
	versions_scan_begin(&vs, t->tid, 0, PG_UINT32_MAX, snap);
	while (versions_scan_next(&vs, &e))
	{
		if (!e.deleted)
			keys = lappend(keys, e.key);
	}
	versions_scan_end(&vs);
	UnregisterSnapshot(snap);

	bulk_init(&b);
	foreach(lc, keys)
		bulk_write(&b, t, (char *) lfirst(lc), true);
	capture_record_bulk(t, b.bucket_delta, b.live_delta, b.tomb_delta);
	return PointerGetDatum(NULL);
}

/* registry.replicate() on a table with rows: each becomes a local insert. */
void		capture_register_existing(RegTable *t, Relation rel);

void
capture_register_existing(RegTable *t, Relation rel)
{
	TableScanDesc scan;
	TupleTableSlot *slot;
	Snapshot	snap;
	BulkChange	b;
	bool		any = false;
	MemoryContext rowcxt;
	MemoryContext old;

	bulk_init(&b);
	rowcxt = AllocSetContextCreate(CurrentMemoryContext, "registry register",
								   ALLOCSET_DEFAULT_SIZES);
	snap = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snap, 0, NULL);
	slot = table_slot_create(rel, NULL);
	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		CHECK_FOR_INTERRUPTS();
		old = MemoryContextSwitchTo(rowcxt);
		bulk_write(&b, t, key_of_slot(t, slot, rel), false);
		MemoryContextSwitchTo(old);
		MemoryContextReset(rowcxt);
		any = true;
	}
	ExecDropSingleTupleTableSlot(slot);
	table_endscan(scan);
	UnregisterSnapshot(snap);
	MemoryContextDelete(rowcxt);
	if (any)
		capture_record_bulk(t, b.bucket_delta, b.live_delta, b.tomb_delta);
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
		{
			e->first = i;
			continue;
		}
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
	TimestampTz now = GetCurrentTimestamp();
	uint64		capacity = (uint64) registry_change_log_size;
	int			nbuckets = registry_digest_buckets;

	for (i = 0; i < npending; i++)
		if (!pending[i].merged)
			n++;
	if (n == 0)
		return;

	LWLockAcquire(RegistryState->changelog_lock, LW_EXCLUSIVE);
	if ((uint64) n > capacity)
	{
		/* cannot keep them all: readers see a gap and compare digests */
		RegistryState->cl_last_seq += n;
		RegistryState->cl_overwritten +=
			RegistryState->cl_last_seq - RegistryState->cl_first_seq + 1 - n;
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

			if (p->merged)
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
		acceptor_note(p->tid, p->khash, p->key, p->version, p->origin, p->op,
					  now);
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
		if (p->bulk)
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

	worker_set_latch(REG_WORKER_MAINTENANCE);
	worker_set_latch(REG_WORKER_SYNC);
}

static void
pending_reset(void)
{
	pending = NULL;
	npending = 0;
	maxpending = 0;
	pending_ready = false;
	apply_active = false;
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
			break;
		case SUBXACT_EVENT_ABORT_SUB:
			while (npending > 0 && pending[npending - 1].subid == mySubid)
				npending--;
			apply_active = false;
			break;
		default:
			break;
	}
}
