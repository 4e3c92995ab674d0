/*-------------------------------------------------------------------------
 *
 * verify.c
 *	  registry.verify() and registry.versions() (layer 7, maintenance):
 *	  recompute a table's digests and counts from disk (rebuild.c) and
 *	  compare them with shared memory (digest.c) and registry.row_keys;
 *	  list every key's version.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/tuplestore.h"

#include "digest.h"
#include "rebuild.h"
#include "registry.h"
#include "row_keys.h"
#include "rows.h"
#include "node.h"
#include "tombstones.h"

PG_FUNCTION_INFO_V1(registry_verify);
PG_FUNCTION_INFO_V1(registry_versions);

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
	KeyRangeScan ks;
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
	DigestTotals d;
	int64		mlive,
				mtombs;
	bool		has_slot;
	Snapshot	snap;
	KeyRangeScan tsc;
	KeyVersion	e;
	VerifyState vs;
	int			b;

	/* quiesce writers of this table and of all tombstones */
	LockRelationOid(t->relid, ShareLock);
	LockRelationOid(trelid, ShareLock);
	snap = RegisterSnapshot(GetLatestSnapshot());

	has_slot = digest_read_table(t->tid, nb, mem, &mlive, &mtombs);
	if (!has_slot)
		verify_report(ts, desc, t->qualname, "no digest slot", -1, NULL,
					  "The table has no digests in shared memory.");

	memset(&d, 0, sizeof(d));
	d.tid = t->tid;
	d.buckets = palloc0(sizeof(uint64) * nb);
	vs.t = t;
	vs.snap = snap;
	vs.ts = ts;
	vs.desc = desc;
	(void) rebuild_scan_rows(t, snap, &d, verify_row, &vs);

	tombstone_scan_begin(&tsc, t->tid, 0, PG_UINT32_MAX, snap);
	while (tombstone_scan_next(&tsc, &e))
	{
		CHECK_FOR_INTERRUPTS();
		rebuild_add_entry(&d, e.khash, e.key, e.version, e.origin, true);
		if (keys_hash(e.key, strlen(e.key)) != e.khash)
			verify_report(ts, desc, t->qualname, "wrong key hash", -1, e.key,
						  "A tombstone is stored under another key's hash.");
		pfree(e.key);
	}
	tombstone_scan_end(&tsc);

	if (!t->khash_deferred)
		verify_row_keys(t, snap, d.live + d.unversioned, ts, desc);

	if (has_slot)
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
	if (!node_is_ready())
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
	DigestTotals d;
	VersionsOut vo;
	KeyRangeScan tsc;
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
	(void) rebuild_scan_rows(t, snap, &d, versions_row, &vo);
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
