/*-------------------------------------------------------------------------
 *
 * digest.c
 *	  Per-table digests: keys hashed into a fixed number of buckets, each
 *	  bucket the XOR of its entries' hashes, where an entry is (key,
 *	  version, origin, deleted).  XOR makes a change an O(1) update (out
 *	  with the old entry, in with the new) and any range of buckets a node
 *	  of the tree above them: the root is the XOR of all buckets.
 *
 * A key's bucket is the high bits of its 32-bit key hash, so buckets of a
 * coarser power-of-two count are unions of finer ones and two nodes with
 * different registry.digest_buckets can still compare at the coarser one.
 *
 * Also here: the shared-memory table slots that hold the digests, the
 * rebuild of all digests from registry.row_versions at start, and
 * registry.verify().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/pg_bitutils.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/tuplestore.h"

#include "registry.h"
#include "rows.h"
#include "shmem.h"
#include "versions.h"

PG_FUNCTION_INFO_V1(registry_verify);

/* ---- hashing ---- */

uint64
digest_entry_hash(const char *key, RegVersion version, const char *origin,
				  bool deleted)
{
	char		buf[4096 + REGISTRY_NAME_LEN + 16];
	size_t		klen = strlen(key);
	size_t		olen = strlen(origin);
	size_t		n = 0;
	int			i;

	Assert(klen <= 4096 && olen < REGISTRY_NAME_LEN);
	memcpy(buf, key, klen);
	n = klen;
	buf[n++] = '\0';
	for (i = 7; i >= 0; i--)
		buf[n++] = (char) ((version >> (8 * i)) & 0xFF);
	memcpy(buf + n, origin, olen);
	n += olen;
	buf[n++] = '\0';
	buf[n++] = deleted ? 1 : 0;
	return hash_bytes64(buf, n, UINT64CONST(0x6469676573747631));
}

int
digest_bucket_shift(int nbuckets)
{
	return 32 - pg_leftmost_one_pos32((uint32) nbuckets);
}

int
digest_bucket_of(uint32 khash, int nbuckets)
{
	if (nbuckets <= 1)
		return 0;
	return (int) (khash >> digest_bucket_shift(nbuckets));
}

/* The key-hash range [lo, hi] of bucket b among nbuckets. */
void		digest_bucket_range(int b, int nbuckets, uint32 *lo, uint32 *hi);

void
digest_bucket_range(int b, int nbuckets, uint32 *lo, uint32 *hi)
{
	int			shift;

	if (nbuckets <= 1)
	{
		*lo = 0;
		*hi = PG_UINT32_MAX;
		return;
	}
	shift = digest_bucket_shift(nbuckets);
	*lo = (uint32) b << shift;
	*hi = *lo | (uint32) ((((uint64) 1) << shift) - 1);
}

/* ---- table slots ---- */

uint64 *
table_slot_buckets(int slot)
{
	return RegistryDigests + (Size) slot * registry_digest_buckets;
}

/* Slot of tid, or -1.  Caller holds meta_lock or digest_lock. */
static int
slot_search(int32 tid)
{
	int			i;

	for (i = 0; i < registry_max_tables; i++)
		if (RegistryTables[i].tid == tid)
			return i;
	return -1;
}

int
table_slot_find(int32 tid)
{
	int			slot;

	LWLockAcquire(RegistryState->meta_lock, LW_SHARED);
	slot = slot_search(tid);
	LWLockRelease(RegistryState->meta_lock);
	return slot;
}

static void
slot_clear(int slot, int32 tid, Oid relid)
{
	RegTableSlot *ts = &RegistryTables[slot];

	memset(table_slot_buckets(slot), 0, sizeof(uint64) * registry_digest_buckets);
	ts->tid = tid;
	ts->relid = relid;
	ts->live_rows = 0;
	ts->tombstones = 0;
	ts->changes = 0;
	ts->last_change = 0;
}

/*
 * Free the slots of tables that are no longer registered.  Needs a
 * transaction (reads the catalog).
 */
void
table_slots_gc(void)
{
	List	   *regs = regtable_all();
	int			i;

	LWLockAcquire(RegistryState->meta_lock, LW_EXCLUSIVE);
	LWLockAcquire(RegistryState->digest_lock, LW_EXCLUSIVE);
	for (i = 0; i < registry_max_tables; i++)
	{
		ListCell   *lc;
		bool		keep = false;

		if (RegistryTables[i].tid == 0)
			continue;
		foreach(lc, regs)
		{
			if (((RegTid *) lfirst(lc))->tid == RegistryTables[i].tid)
				keep = true;
		}
		if (!keep)
			slot_clear(i, 0, InvalidOid);
	}
	LWLockRelease(RegistryState->digest_lock);
	LWLockRelease(RegistryState->meta_lock);
}

/*
 * The slot of a table, allocated (empty) if it has none.  Errors when
 * registry.max_tables slots are in use.
 */
int
table_slot_for(int32 tid, Oid relid)
{
	int			slot;
	int			attempt;

	slot = table_slot_find(tid);
	if (slot >= 0)
		return slot;

	for (attempt = 0; attempt < 2; attempt++)
	{
		LWLockAcquire(RegistryState->meta_lock, LW_EXCLUSIVE);
		slot = slot_search(tid);
		if (slot < 0)
		{
			slot = slot_search(0);
			if (slot >= 0)
			{
				LWLockAcquire(RegistryState->digest_lock, LW_EXCLUSIVE);
				slot_clear(slot, tid, relid);
				LWLockRelease(RegistryState->digest_lock);
			}
		}
		LWLockRelease(RegistryState->meta_lock);
		if (slot >= 0)
			return slot;
		table_slots_gc();
	}
	ereport(ERROR,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("too many registry tables"),
			 errdetail("All %d table slots are in use.", registry_max_tables),
			 errhint("Raise registry.max_tables and restart, or unregister tables.")));
	return -1;					/* keep compiler quiet */
}

/* ---- rebuild ---- */

/*
 * Recompute every digest from registry.row_versions.  Runs in the
 * maintenance worker at start, inside a transaction.
 *
 * Writers keep going: with row_versions locked in SHARE mode for a
 * moment (so every writer has either published already or not written
 * yet) the digests are zeroed and a snapshot taken; afterwards committers
 * add their deltas to the zeroed digests while this scan adds the
 * snapshot's entries.  Each change is thus counted exactly once.
 */
void
digest_rebuild(void)
{
	Oid			vrelid = registry_relid("row_versions");
	List	   *regs;
	ListCell   *lc;
	int			nregs;
	int32	   *tids;
	uint64	   *local;
	int64	   *live;
	int64	   *tombs;
	Snapshot	snap;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	RegVersion	maxv = 0;
	int			i;
	int			nb = registry_digest_buckets;

	pg_atomic_write_u32(&RegistryState->state, REG_STATE_REBUILDING);

	LockRelationOid(vrelid, ShareLock);
	regs = regtable_all();
	nregs = list_length(regs);
	tids = palloc0(sizeof(int32) * Max(nregs, 1));
	i = 0;
	foreach(lc, regs)
		tids[i++] = ((RegTid *) lfirst(lc))->tid;

	table_slots_gc();
	foreach(lc, regs)
	{
		RegTid	   *r = lfirst(lc);
		int			slot = table_slot_for(r->tid, r->relid);

		LWLockAcquire(RegistryState->digest_lock, LW_EXCLUSIVE);
		slot_clear(slot, r->tid, r->relid);
		LWLockRelease(RegistryState->digest_lock);
	}
	snap = RegisterSnapshot(GetLatestSnapshot());
	UnlockRelationOid(vrelid, ShareLock);

	local = palloc0(sizeof(uint64) * nb * Max(nregs, 1));
	live = palloc0(sizeof(int64) * Max(nregs, 1));
	tombs = palloc0(sizeof(int64) * Max(nregs, 1));

	rel = table_open(vrelid, AccessShareLock);
	scan = table_beginscan(rel, snap, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Datum		values[6];
		bool		nulls[6];
		int32		tid;
		int			t;
		char	   *key;
		char		origin[REGISTRY_NAME_LEN];
		RegVersion	v;
		bool		deleted;
		uint32		khash;

		CHECK_FOR_INTERRUPTS();
		heap_deform_tuple(tup, RelationGetDescr(rel), values, nulls);
		tid = DatumGetInt32(values[0]);
		for (t = 0; t < nregs; t++)
			if (tids[t] == tid)
				break;
		v = (RegVersion) DatumGetInt64(values[3]);
		if (v > maxv)
			maxv = v;
		if (t == nregs)
			continue;
		khash = int4_to_khash(DatumGetInt32(values[1]));
		key = TextDatumGetCString(values[2]);
		text_to_cstring_buffer(DatumGetTextPP(values[4]), origin, sizeof(origin));
		deleted = DatumGetBool(values[5]);
		local[(Size) t * nb + digest_bucket_of(khash, nb)] ^=
			digest_entry_hash(key, v, origin, deleted);
		if (deleted)
			tombs[t]++;
		else
			live[t]++;
		pfree(key);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	UnregisterSnapshot(snap);

	hlc_observe_stored(maxv);

	LWLockAcquire(RegistryState->digest_lock, LW_EXCLUSIVE);
	for (i = 0; i < nregs; i++)
	{
		int			slot = slot_search(tids[i]);
		uint64	   *buckets;
		int			b;

		if (slot < 0)
			continue;			/* unregistered meanwhile */
		buckets = table_slot_buckets(slot);
		for (b = 0; b < nb; b++)
			buckets[b] ^= local[(Size) i * nb + b];
		RegistryTables[slot].live_rows += live[i];
		RegistryTables[slot].tombstones += tombs[i];
	}
	RegistryState->digest_rebuilds++;
	RegistryState->ready_at = GetCurrentTimestamp();
	pg_atomic_write_u32(&RegistryState->state, REG_STATE_READY);
	LWLockRelease(RegistryState->digest_lock);
}

/* ---- verify ---- */

static void
verify_report(Tuplestorestate *ts, TupleDesc desc, const char *table,
			  const char *problem, int bucket, const char *key,
			  const char *detail)
{
	Datum		values[5];
	bool		nulls[5] = {false};

	values[0] = CStringGetTextDatum(table);
	values[1] = CStringGetTextDatum(problem);
	if (bucket >= 0)
		values[2] = Int32GetDatum(bucket);
	else
		nulls[2] = true;
	if (key)
		values[3] = CStringGetTextDatum(key);
	else
		nulls[3] = true;
	if (detail)
		values[4] = CStringGetTextDatum(detail);
	else
		nulls[4] = true;
	tuplestore_putvalues(ts, desc, values, nulls);
}

static void
verify_table(RegTable *t, Tuplestorestate *ts, TupleDesc desc)
{
	Oid			vrelid = registry_relid("row_versions");
	int			nb = registry_digest_buckets;
	uint64	   *disk = palloc0(sizeof(uint64) * nb);
	uint64	   *mem = palloc0(sizeof(uint64) * nb);
	int64		live = 0,
				tombs = 0,
				mlive = 0,
				mtombs = 0;
	int64		rows = 0;
	int			slot;
	Snapshot	snap;
	VersionScan vs;
	VersionEntry e;
	RowLookup	rl;
	Relation	urel;
	TableScanDesc scan;
	TupleTableSlot *tslot;
	int			nest;
	int			b;
	MemoryContext rowcxt,
				old;

	/* quiesce writers of this table and of all versions */
	LockRelationOid(t->relid, ShareLock);
	LockRelationOid(vrelid, ShareLock);
	snap = RegisterSnapshot(GetLatestSnapshot());

	LWLockAcquire(RegistryState->digest_lock, LW_SHARED);
	slot = slot_search(t->tid);
	if (slot >= 0)
	{
		memcpy(mem, table_slot_buckets(slot), sizeof(uint64) * nb);
		mlive = RegistryTables[slot].live_rows;
		mtombs = RegistryTables[slot].tombstones;
	}
	LWLockRelease(RegistryState->digest_lock);
	if (slot < 0)
		verify_report(ts, desc, t->qualname, "no digest slot", -1, NULL,
					  "The table has no digests in shared memory.");

	rowcxt = AllocSetContextCreate(CurrentMemoryContext, "registry verify",
								   ALLOCSET_DEFAULT_SIZES);
	canonical_gucs_push(&nest);

	/* digests and counts from disk; every live version has its row */
	row_lookup_begin(&rl, t, AccessShareLock, snap);
	versions_scan_begin(&vs, t->tid, 0, PG_UINT32_MAX, snap);
	old = MemoryContextSwitchTo(rowcxt);
	while (versions_scan_next(&vs, &e))
	{
		CHECK_FOR_INTERRUPTS();
		disk[digest_bucket_of(e.khash, nb)] ^=
			digest_entry_hash(e.key, e.version, e.origin, e.deleted);
		if (e.deleted)
			tombs++;
		else
		{
			live++;
			if (!row_lookup(&rl, e.key))
			{
				MemoryContextSwitchTo(old);
				verify_report(ts, desc, t->qualname, "version without row", -1,
							  e.key, "row_versions has a live version but the table has no such row.");
				old = MemoryContextSwitchTo(rowcxt);
			}
		}
		if (keys_hash(e.key, strlen(e.key)) != e.khash)
		{
			MemoryContextSwitchTo(old);
			verify_report(ts, desc, t->qualname, "wrong key hash", -1, e.key, NULL);
			old = MemoryContextSwitchTo(rowcxt);
		}
		MemoryContextReset(rowcxt);
	}
	MemoryContextSwitchTo(old);
	versions_scan_end(&vs);
	row_lookup_end(&rl);

	/* every row has a live version */
	urel = table_open(t->relid, AccessShareLock);
	scan = table_beginscan(urel, snap, 0, NULL);
	tslot = table_slot_create(urel, NULL);
	while (table_scan_getnextslot(scan, ForwardScanDirection, tslot))
	{
		Datum		kv[INDEX_MAX_KEYS];
		bool		kn[INDEX_MAX_KEYS];
		char	   *key;
		VersionState st;
		int			i;

		CHECK_FOR_INTERRUPTS();
		old = MemoryContextSwitchTo(rowcxt);
		rows++;
		for (i = 0; i < t->nkeys; i++)
			kv[i] = slot_getattr(tslot, t->keys[i].attnum, &kn[i]);
		key = keys_encode(t->keys, t->nkeys, kv, kn, t->qualname);
		if (!versions_get(t->tid, keys_hash(key, strlen(key)), key, snap, &st))
		{
			MemoryContextSwitchTo(old);
			verify_report(ts, desc, t->qualname, "row without version", -1, key,
						  "The table has a row that row_versions does not know.");
			old = MemoryContextSwitchTo(rowcxt);
		}
		else if (st.deleted)
		{
			MemoryContextSwitchTo(old);
			verify_report(ts, desc, t->qualname, "row with tombstone", -1, key,
						  "The table has a row whose version says it is deleted.");
			old = MemoryContextSwitchTo(rowcxt);
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(rowcxt);
	}
	ExecDropSingleTupleTableSlot(tslot);
	table_endscan(scan);
	table_close(urel, AccessShareLock);
	canonical_gucs_pop(nest);
	MemoryContextDelete(rowcxt);

	if (slot >= 0)
	{
		for (b = 0; b < nb; b++)
		{
			if (disk[b] != mem[b])
			{
				char		detail[128];

				snprintf(detail, sizeof(detail),
						 "shared memory %016llx, recomputed %016llx",
						 (unsigned long long) mem[b], (unsigned long long) disk[b]);
				verify_report(ts, desc, t->qualname, "digest mismatch", b, NULL,
							  detail);
			}
		}
		if (live != mlive || tombs != mtombs)
		{
			char		detail[160];

			snprintf(detail, sizeof(detail),
					 "shared memory " INT64_FORMAT " live / " INT64_FORMAT
					 " tombstones, disk " INT64_FORMAT " / " INT64_FORMAT,
					 mlive, mtombs, live, tombs);
			verify_report(ts, desc, t->qualname, "count mismatch", -1, NULL, detail);
		}
	}
	if (rows != live)
	{
		char		detail[128];

		snprintf(detail, sizeof(detail),
				 INT64_FORMAT " rows, " INT64_FORMAT " live versions", rows, live);
		verify_report(ts, desc, t->qualname, "row count mismatch", -1, NULL, detail);
	}

	UnregisterSnapshot(snap);
	/* verification is read-only: let writers go as soon as we are done */
	UnlockRelationOid(vrelid, ShareLock);
	UnlockRelationOid(t->relid, ShareLock);
	pfree(disk);
	pfree(mem);
}

/*
 * registry.verify(tbl regclass default null): recompute digests and
 * counts from disk, check rows against versions, and report every
 * difference; no rows means all is consistent.  Writers of the verified
 * table wait while it runs.
 */
Datum
registry_verify(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	List	   *tables = NIL;
	ListCell   *lc;

	registry_check_preloaded();
	registry_check_admin();
	if (pg_atomic_read_u32(&RegistryState->state) != REG_STATE_READY)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("registry is still rebuilding its digests"),
				 errhint("Wait until registry.node shows state \"ready\".")));

	InitMaterializedSRF(fcinfo, 0);

	if (!PG_ARGISNULL(0))
		tables = list_make1_int(regtable_by_relid(PG_GETARG_OID(0), false)->tid);
	else
	{
		foreach(lc, regtable_all())
			tables = lappend_int(tables, ((RegTid *) lfirst(lc))->tid);
	}
	foreach(lc, tables)
	{
		RegTable   *t = regtable_by_tid(lfirst_int(lc), true);

		if (t)
			verify_table(t, rsinfo->setResult, rsinfo->setDesc);
	}
	return (Datum) 0;
}
