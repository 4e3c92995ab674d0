/*-------------------------------------------------------------------------
 *
 * rebuild.c
 *	  Digests computed from disk (layer 6): one table's, for a bulk change
 *	  (capture) or a check (verify.c), and every table's at start, by the
 *	  maintenance worker, added to the shared-memory digests of digest.c.
 *
 * Reads the registered tables (rows.c) and registry.tombstones
 * (tombstones.c) under a snapshot; calls the catalog cache (layer 5) and
 * digest.c (layer 3).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/tableam.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "digest.h"
#include "rebuild.h"
#include "registry.h"
#include "rows.h"
#include "node.h"
#include "tombstones.h"

/* Add one entry to a table's digests and counts. */
void
rebuild_add_entry(DigestTotals *d, uint32 khash, const char *key,
				  RegVersion v, const char *origin, bool deleted)
{
	d->buckets[digest_bucket_of(khash, registry_digest_buckets)] ^=
		digest_entry_hash(key, v, origin, deleted);
	if (deleted)
		d->tombs++;
	else
		d->live++;
}

/* rebuild_scan_rows()'s state, passed through row_foreach() */
typedef struct RowScanState
{
	DigestTotals *d;
	RegVersion	maxv;
	RowCallback per_row;
	void	   *arg;
} RowScanState;

static void
scan_row(void *arg, const char *key, VersionState *st)
{
	RowScanState *ds = arg;

	if (st->exists)
	{
		rebuild_add_entry(ds->d, keys_hash(key, strlen(key)), key,
						  st->version, st->origin, false);
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
RegVersion
rebuild_scan_rows(RegTable *t, Snapshot snap, DigestTotals *d,
				  RowCallback per_row, void *arg)
{
	RowScanState ds;

	ds.d = d;
	ds.maxv = 0;
	ds.per_row = per_row;
	ds.arg = arg;
	row_foreach(t, snap, scan_row, &ds);
	return ds.maxv;
}

/*
 * Table t's digests and counts as stored under snap, rows and tombstones,
 * into buckets (registry_digest_buckets of them, zeroed by the caller).
 * Rows without a version are only counted.  Returns the largest version.
 */
RegVersion
rebuild_digest_of_table(RegTable *t, Snapshot snap, uint64 *buckets,
						int64 *live, int64 *tombs, int64 *unversioned)
{
	DigestTotals d;
	KeyRangeScan tsc;
	KeyVersion	e;
	RegVersion	maxv;

	memset(&d, 0, sizeof(d));
	d.tid = t->tid;
	d.buckets = buckets;
	maxv = rebuild_scan_rows(t, snap, &d, NULL, NULL);
	tombstone_scan_begin(&tsc, t->tid, 0, PG_UINT32_MAX, snap);
	while (tombstone_scan_next(&tsc, &e))
	{
		CHECK_FOR_INTERRUPTS();
		rebuild_add_entry(&d, e.khash, e.key, e.version, e.origin, true);
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
rebuild_digests(void)
{
	Oid			trelid = registry_relid("tombstones");
	List	   *regs;
	ListCell   *lc;
	int			nregs;
	DigestTotals *d;
	Snapshot	snap;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	RegVersion	maxv = 0;
	int			i;
	int			nb = registry_digest_buckets;

	node_set_rebuilding();

	/* a restored table gets its digests when it is taken up */
	regs = NIL;
	foreach(lc, regtable_all())
	{
		if (!((RegTid *) lfirst(lc))->restored)
			regs = lappend(regs, lfirst(lc));
	}
	nregs = list_length(regs);
	d = palloc0(sizeof(DigestTotals) * Max(nregs, 1));
	foreach(lc, regs)
		LockRelationOid(((RegTid *) lfirst(lc))->relid, ShareLock);
	LockRelationOid(trelid, ShareLock);

	regtable_slots_gc();
	i = 0;
	foreach(lc, regs)
	{
		RegTid	   *r = lfirst(lc);
		int			slot = regtable_slot(r->tid, r->relid);

		digest_slot_clear(slot, r->tid, r->relid);
		d[i].tid = r->tid;
		d[i].buckets = palloc0(sizeof(uint64) * nb);
		d[i].tomb_counts = palloc0(sizeof(int32) * nb);
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
		v = rebuild_scan_rows(t, snap, &d[i], NULL, NULL);
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
		rebuild_add_entry(&d[i], int4_to_khash(DatumGetInt32(values[1])), key,
						  v, origin, true);
		d[i].tomb_counts[digest_bucket_of(int4_to_khash(DatumGetInt32(values[1])), nb)]++;
		pfree(key);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	UnregisterSnapshot(snap);

	hlc_observe_stored(maxv);

	digest_add_rebuilt(nregs, d);

	/*
	 * After the digests are whole: readers that wait for "ready" see them
	 * complete.
	 */
	node_set_ready();
}
