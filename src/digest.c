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
 * rebuild of all digests from the registered tables and registry.tombstones
 * at start, and
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
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/tuplestore.h"

#include "registry.h"
#include "row_keys.h"
#include "rows.h"
#include "shmem.h"
#include "tombstones.h"

PG_FUNCTION_INFO_V1(registry_verify);
PG_FUNCTION_INFO_V1(registry_versions);

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

/* A table's live rows and tombstones, as published; false if it has no slot. */
bool
table_counts(int32 tid, int64 *live, int64 *tombstones)
{
	int			slot;

	LWLockAcquire(RegistryState->digest_lock, LW_SHARED);
	slot = slot_search(tid);
	if (slot >= 0)
	{
		*live = RegistryTables[slot].live_rows;
		*tombstones = RegistryTables[slot].tombstones;
	}
	LWLockRelease(RegistryState->digest_lock);
	return slot >= 0;
}

/* ---- rebuild ---- */

/* Accumulates one table's digests while scanning. */
typedef struct TableDigest
{
	int32		tid;
	uint64	   *buckets;
	int64		live;
	int64		tombs;
	int64		unversioned;
} TableDigest;

static void
digest_add(TableDigest *d, uint32 khash, const char *key, RegVersion v,
		   const char *origin, bool deleted)
{
	d->buckets[digest_bucket_of(khash, registry_digest_buckets)] ^=
		digest_entry_hash(key, v, origin, deleted);
	if (deleted)
		d->tombs++;
	else
		d->live++;
}

typedef struct DigestScan
{
	TableDigest *d;
	RegVersion	maxv;
	void		(*per_row) (void *arg, const char *key, VersionState *st);
	void	   *arg;
} DigestScan;

static void
digest_row(void *arg, const char *key, VersionState *st)
{
	DigestScan *ds = arg;

	if (st->exists)
	{
		digest_add(ds->d, keys_hash(key, strlen(key)), key, st->version,
				   st->origin, false);
		if (st->version > ds->maxv)
			ds->maxv = st->version;
	}
	else
		ds->d->unversioned++;
	if (ds->per_row)
		ds->per_row(ds->arg, key, st);
}

/*
 * Add a table's live rows to its digest; calls per_row (if not NULL) with
 * each row's key and version state.  Returns the largest version seen.
 */
static RegVersion
digest_scan_rows(RegTable *t, Snapshot snap, TableDigest *d,
				 void (*per_row) (void *arg, const char *key, VersionState *st),
				 void *arg)
{
	DigestScan	ds;

	ds.d = d;
	ds.maxv = 0;
	ds.per_row = per_row;
	ds.arg = arg;
	row_foreach(t, snap, digest_row, &ds);
	return ds.maxv;
}

/*
 * Table t's digests and counts as stored under snap, rows and tombstones,
 * into buckets (registry_digest_buckets of them, zeroed by the caller).
 * Rows without a version are only counted.  Returns the largest version.
 */
RegVersion
digest_of_table(RegTable *t, Snapshot snap, uint64 *buckets, int64 *live,
				int64 *tombs, int64 *unversioned)
{
	TableDigest d;
	TombstoneScan tsc;
	KeyVersion	e;
	RegVersion	maxv;

	memset(&d, 0, sizeof(d));
	d.tid = t->tid;
	d.buckets = buckets;
	maxv = digest_scan_rows(t, snap, &d, NULL, NULL);
	tombstone_scan_begin(&tsc, t->tid, 0, PG_UINT32_MAX, snap);
	while (tombstone_scan_next(&tsc, &e))
	{
		CHECK_FOR_INTERRUPTS();
		digest_add(&d, e.khash, e.key, e.version, e.origin, true);
		maxv = Max(maxv, e.version);
		pfree(e.key);
	}
	tombstone_scan_end(&tsc);
	*live = d.live;
	*tombs = d.tombs;
	*unversioned = d.unversioned;
	return maxv;
}

/*
 * Recompute every digest from the registry tables and their tombstones.
 * Runs in the maintenance worker at start, inside a transaction.
 *
 * Writers keep going: with the tables locked in SHARE mode for a moment
 * (so every writer has either published already or not written yet) the
 * digests are zeroed and a snapshot taken; afterwards committers add their
 * deltas to the zeroed digests while this scan adds the snapshot's
 * entries.  Each change is thus counted exactly once.
 */
void
digest_rebuild(void)
{
	Oid			trelid = registry_relid("tombstones");
	List	   *regs;
	ListCell   *lc;
	int			nregs;
	TableDigest *d;
	Snapshot	snap;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	RegVersion	maxv = 0;
	int			i;
	int			nb = registry_digest_buckets;

	pg_atomic_write_u32(&RegistryState->state, REG_STATE_REBUILDING);

	/* a restored table gets its digests when it is taken up */
	regs = NIL;
	foreach(lc, regtable_all())
	{
		if (!((RegTid *) lfirst(lc))->restored)
			regs = lappend(regs, lfirst(lc));
	}
	nregs = list_length(regs);
	d = palloc0(sizeof(TableDigest) * Max(nregs, 1));
	foreach(lc, regs)
		LockRelationOid(((RegTid *) lfirst(lc))->relid, ShareLock);
	LockRelationOid(trelid, ShareLock);

	table_slots_gc();
	i = 0;
	foreach(lc, regs)
	{
		RegTid	   *r = lfirst(lc);
		int			slot = table_slot_for(r->tid, r->relid);

		LWLockAcquire(RegistryState->digest_lock, LW_EXCLUSIVE);
		slot_clear(slot, r->tid, r->relid);
		LWLockRelease(RegistryState->digest_lock);
		d[i].tid = r->tid;
		d[i].buckets = palloc0(sizeof(uint64) * nb);
		i++;
	}
	snap = RegisterSnapshot(GetLatestSnapshot());
	UnlockRelationOid(trelid, ShareLock);
	foreach(lc, regs)
		UnlockRelationOid(((RegTid *) lfirst(lc))->relid, ShareLock);

	for (i = 0; i < nregs; i++)
	{
		RegTable   *t = regtable_by_tid(d[i].tid, true);
		RegVersion	v;

		if (t == NULL)
			continue;
		v = digest_scan_rows(t, snap, &d[i], NULL, NULL);
		if (v > maxv)
			maxv = v;
		if (d[i].unversioned > 0)
			ereport(WARNING,
					(errmsg("registry table %s has " INT64_FORMAT " rows without a version",
							t->qualname, d[i].unversioned),
					 errhint("Run registry.verify().")));
	}

	rel = table_open(trelid, AccessShareLock);
	scan = table_beginscan(rel, snap, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Datum		values[6];
		bool		nulls[6];
		int32		tid;
		char	   *key;
		char		origin[REGISTRY_NAME_LEN];
		RegVersion	v;

		CHECK_FOR_INTERRUPTS();
		heap_deform_tuple(tup, RelationGetDescr(rel), values, nulls);
		tid = DatumGetInt32(values[0]);
		v = (RegVersion) DatumGetInt64(values[3]);
		if (v > maxv)
			maxv = v;
		for (i = 0; i < nregs; i++)
			if (d[i].tid == tid)
				break;
		if (i == nregs)
			continue;
		key = TextDatumGetCString(values[2]);
		text_to_cstring_buffer(DatumGetTextPP(values[4]), origin, sizeof(origin));
		digest_add(&d[i], int4_to_khash(DatumGetInt32(values[1])), key, v,
				   origin, true);
		pfree(key);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	UnregisterSnapshot(snap);

	hlc_observe_stored(maxv);

	LWLockAcquire(RegistryState->digest_lock, LW_EXCLUSIVE);
	for (i = 0; i < nregs; i++)
	{
		int			slot = slot_search(d[i].tid);
		uint64	   *buckets;
		int			b;

		if (slot < 0)
			continue;			/* unregistered meanwhile */
		buckets = table_slot_buckets(slot);
		for (b = 0; b < nb; b++)
			buckets[b] ^= d[i].buckets[b];
		RegistryTables[slot].live_rows += d[i].live;
		RegistryTables[slot].tombstones += d[i].tombs;
	}
	RegistryState->digest_rebuilds++;
	RegistryState->ready_at = GetCurrentTimestamp();
	pg_atomic_write_u32(&RegistryState->state, REG_STATE_READY);
	LWLockRelease(RegistryState->digest_lock);
}

/* ---- verify ---- */

typedef struct VerifyState
{
	RegTable   *t;
	Snapshot	snap;
	Tuplestorestate *ts;
	TupleDesc	desc;
} VerifyState;

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

/* Each row must be versioned and must not also have a tombstone. */
static void
verify_row(void *arg, const char *key, VersionState *st)
{
	VerifyState *vs = arg;
	VersionState tomb;

	if (!st->exists)
		verify_report(vs->ts, vs->desc, vs->t->qualname, "row without version",
					  -1, key, "registry_version or registry_origin is null.");
	if (tombstone_get(vs->t->tid, keys_hash(key, strlen(key)), key, vs->snap, &tomb))
		verify_report(vs->ts, vs->desc, vs->t->qualname, "row with tombstone",
					  -1, key, "The key has both a row and a tombstone.");
}

/*
 * registry.row_keys must list each row of t exactly once, under its key's
 * hash (a whole-table pull in progress excepted): every entry has its row
 * (a lookup by primary key), and there are as many entries as rows.
 */
static void
verify_row_keys(RegTable *t, Snapshot snap, int64 rows, Tuplestorestate *ts,
				TupleDesc desc)
{
	RowKeyScan	ks;
	RowLookup	rl;
	uint32		khash;
	char	   *key;
	int64		n = 0;
	MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext,
												 "registry row key check",
												 ALLOCSET_DEFAULT_SIZES);
	MemoryContext old;

	row_keys_scan_begin(&ks, t->tid, 0, PG_UINT32_MAX, snap);
	row_lookup_begin(&rl, t, AccessShareLock, snap);
	while (row_keys_scan_next(&ks, &khash, &key))
	{
		Datum		values[INDEX_MAX_KEYS];

		CHECK_FOR_INTERRUPTS();
		n++;
		if (keys_hash(key, strlen(key)) != khash)
			verify_report(ts, desc, t->qualname, "wrong key hash", -1, key,
						  "registry.row_keys lists the key under another key's hash.");
		else
		{
			/*
			 * Parsing the key allocates, per key: in a context reset each
			 * time.  The scan itself runs outside it (row_lookup_datums).
			 */
			old = MemoryContextSwitchTo(rowcxt);
			row_key_datums(t, key, values);
			MemoryContextSwitchTo(old);
			if (!row_lookup_datums(&rl, values))
				verify_report(ts, desc, t->qualname, "stray row key", -1, key,
							  "registry.row_keys lists a key the table has no row for.");
			MemoryContextReset(rowcxt);
		}
		pfree(key);
	}
	row_lookup_end(&rl);
	row_keys_scan_end(&ks);
	MemoryContextDelete(rowcxt);
	if (n != rows)
	{
		char		detail[128];

		snprintf(detail, sizeof(detail),
				 "the table has " INT64_FORMAT " rows, registry.row_keys lists " INT64_FORMAT,
				 rows, n);
		verify_report(ts, desc, t->qualname, "row key count mismatch", -1, NULL, detail);
	}
}

static void
verify_table(RegTable *t, Tuplestorestate *ts, TupleDesc desc)
{
	Oid			trelid = registry_relid("tombstones");
	int			nb = registry_digest_buckets;
	uint64	   *mem = palloc0(sizeof(uint64) * nb);
	TableDigest d;
	int64		mlive = 0,
				mtombs = 0;
	int			slot;
	Snapshot	snap;
	TombstoneScan tsc;
	KeyVersion	e;
	VerifyState vs;
	int			b;

	/* quiesce writers of this table and of all tombstones */
	LockRelationOid(t->relid, ShareLock);
	LockRelationOid(trelid, ShareLock);
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

	memset(&d, 0, sizeof(d));
	d.tid = t->tid;
	d.buckets = palloc0(sizeof(uint64) * nb);
	vs.t = t;
	vs.snap = snap;
	vs.ts = ts;
	vs.desc = desc;
	(void) digest_scan_rows(t, snap, &d, verify_row, &vs);

	tombstone_scan_begin(&tsc, t->tid, 0, PG_UINT32_MAX, snap);
	while (tombstone_scan_next(&tsc, &e))
	{
		CHECK_FOR_INTERRUPTS();
		digest_add(&d, e.khash, e.key, e.version, e.origin, true);
		if (keys_hash(e.key, strlen(e.key)) != e.khash)
			verify_report(ts, desc, t->qualname, "wrong key hash", -1, e.key,
						  "A tombstone is stored under another key's hash.");
		pfree(e.key);
	}
	tombstone_scan_end(&tsc);

	if (!t->khash_deferred)
		verify_row_keys(t, snap, d.live + d.unversioned, ts, desc);

	if (slot >= 0)
	{
		for (b = 0; b < nb; b++)
		{
			if (d.buckets[b] != mem[b])
			{
				char		detail[128];

				snprintf(detail, sizeof(detail),
						 "shared memory %016llx, recomputed %016llx",
						 (unsigned long long) mem[b], (unsigned long long) d.buckets[b]);
				verify_report(ts, desc, t->qualname, "digest mismatch", b, NULL,
							  detail);
			}
		}
		if (d.live != mlive || d.tombs != mtombs)
		{
			char		detail[160];

			snprintf(detail, sizeof(detail),
					 "shared memory " INT64_FORMAT " live / " INT64_FORMAT
					 " tombstones, disk " INT64_FORMAT " / " INT64_FORMAT,
					 mlive, mtombs, d.live, d.tombs);
			verify_report(ts, desc, t->qualname, "count mismatch", -1, NULL, detail);
		}
	}

	UnregisterSnapshot(snap);
	/* verification is read-only: let writers go as soon as we are done */
	UnlockRelationOid(trelid, ShareLock);
	UnlockRelationOid(t->relid, ShareLock);
	pfree(d.buckets);
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

	/*
	 * verify() reads every key and holds writers off while it runs: only
	 * on tables the caller may read, checked before any lock.
	 */
	if (!PG_ARGISNULL(0))
	{
		registry_check_table_privilege(PG_GETARG_OID(0), ACL_SELECT, "registry.verify()");
		tables = list_make1_int(regtable_by_relid(PG_GETARG_OID(0), false)->tid);
	}
	else
	{
		foreach(lc, regtable_all())
		{
			RegTid	   *r = lfirst(lc);

			/* a restored table not taken up yet has no digests to check */
			if (r->restored)
				continue;
			if (pg_class_aclcheck(r->relid, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
			{
				ereport(NOTICE,
						(errmsg("registry table \"%s\" not verified: permission denied",
								get_rel_name(r->relid))));
				continue;
			}
			tables = lappend_int(tables, r->tid);
		}
	}
	foreach(lc, tables)
	{
		RegTable   *t = regtable_by_tid(lfirst_int(lc), true);

		if (t)
			verify_table(t, rsinfo->setResult, rsinfo->setDesc);
	}
	return (Datum) 0;
}

/* ---- registry.versions(tbl) ---- */

typedef struct VersionsOut
{
	Tuplestorestate *ts;
	TupleDesc	desc;
} VersionsOut;

static void
versions_put(VersionsOut *vo, const char *key, const VersionState *st)
{
	Datum		values[4];
	bool		nulls[4] = {false};

	values[0] = CStringGetTextDatum(key);
	if (st->exists)
	{
		values[1] = Int64GetDatum((int64) st->version);
		values[2] = CStringGetTextDatum(st->origin);
	}
	else
		nulls[1] = nulls[2] = true;
	values[3] = BoolGetDatum(st->deleted);
	tuplestore_putvalues(vo->ts, vo->desc, values, nulls);
}

static void
versions_row(void *arg, const char *key, VersionState *st)
{
	versions_put(arg, key, st);
}

/*
 * registry.versions(tbl): every key with its version, live rows first (in
 * table order) then tombstones (in hash order).
 */
Datum
registry_versions(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	RegTable   *t;
	TableDigest d;
	VersionsOut vo;
	TombstoneScan tsc;
	KeyVersion	e;
	Snapshot	snap = GetActiveSnapshot();

	registry_check_preloaded();
	registry_check_admin();
	registry_check_table_privilege(PG_GETARG_OID(0), ACL_SELECT, "registry.versions()");
	t = regtable_by_relid(PG_GETARG_OID(0), false);
	InitMaterializedSRF(fcinfo, 0);
	vo.ts = rsinfo->setResult;
	vo.desc = rsinfo->setDesc;

	memset(&d, 0, sizeof(d));
	d.buckets = palloc0(sizeof(uint64) * registry_digest_buckets);
	(void) digest_scan_rows(t, snap, &d, versions_row, &vo);
	tombstone_scan_begin(&tsc, t->tid, 0, PG_UINT32_MAX, snap);
	while (tombstone_scan_next(&tsc, &e))
	{
		VersionState st;

		st.exists = true;
		st.deleted = true;
		st.version = e.version;
		strlcpy(st.origin, e.origin, sizeof(st.origin));
		versions_put(&vo, e.key, &st);
	}
	tombstone_scan_end(&tsc);
	return (Datum) 0;
}
