/*-------------------------------------------------------------------------
 *
 * row_keys.c
 *	  registry.row_keys: the key of every live row of every registry
 *	  table, with its key hash.  bucket_entries() finds a digest bucket's
 *	  rows through it (then each row by its primary key).
 *
 * An index on the registry table itself would serve the same purpose, but
 * every UPDATE of the table would then pay for it (the planner and the
 * executor open every index of the table), and UPDATEs that keep the key
 * are by far the most frequent registry write (heartbeats, endpoint
 * changes).  An entry here is written only when a key appears or
 * disappears: by the capture trigger on INSERT and DELETE (and a
 * key-changing UPDATE), in the same transaction as the row, so that the
 * entries match the rows under any snapshot.
 *
 * A whole-table pull into an empty table writes no entries while it runs
 * (replicated_tables.khash_deferred); they are built in one pass when it
 * ends (row_keys_build), as on registration and when a restored table is
 * taken up.  After a pull, when the new entries are a good part of the
 * table, the index is rebuilt instead of added to (rebuild_worthwhile).
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
#include "catalog/pg_class.h"
#include "catalog/pg_collation.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "registry.h"
#include "row_keys.h"
#include "rows.h"

#define Natts_row_keys	3

/* entries handed to heap_multi_insert() at a time when building */
#define BUILD_BATCH		1000

/*
 * A build of at least this many entries, where they would be at least a
 * third of the table's, may rebuild the index instead (row_keys_build).
 */
#define REBUILD_MIN_KEYS	50000

#define open_row_keys(rel, idx, mode) \
	keyed_table_open(REGISTRY_REL_ROW_KEYS, REGISTRY_REL_ROW_KEYS_PKEY, \
					 (rel), (idx), (mode))
#define close_row_keys(rel, idx)	keyed_table_close((rel), (idx))

static void
insert_entry(Relation rel, Relation idx, IndexInfo *ii, int32 tid,
			 uint32 khash, Datum keytext)
{
	Datum		values[Natts_row_keys];
	bool		nulls[Natts_row_keys] = {false, false, false};
	HeapTuple	tup;

	values[0] = Int32GetDatum(tid);
	values[1] = Int32GetDatum(khash_to_int4(khash));
	values[2] = keytext;
	tup = heap_form_tuple(RelationGetDescr(rel), values, nulls);
	heap_insert(rel, tup, GetCurrentCommandId(true), 0, NULL);

	/*
	 * Not enforced: the table's own primary key keeps its keys unique, and
	 * says so in the user's terms.  A key-changing UPDATE onto an existing
	 * key lists the new key from the BEFORE trigger, before the table's
	 * primary key refuses the row; the statement then fails and takes this
	 * entry with it.  verify() would see a duplicate.
	 *
	 * UNIQUE_CHECK_PARTIAL looks for an equal entry but neither waits nor
	 * errors (a possible duplicate is only reported, and ignored here).
	 * It is cheaper than UNIQUE_CHECK_NO: with NO, btree runs a
	 * deduplication pass over a full leaf page before every split, in
	 * vain (the keys are unique; a deleted and re-inserted key's dead
	 * entries are what bottom-up deletion, which the check enables, is
	 * for).  The look costs a comparison or two on the leaf the insertion
	 * reads anyway.
	 */
	(void) index_insert(idx, values, nulls, &tup->t_self, rel,
						UNIQUE_CHECK_PARTIAL, false, ii);
	heap_freetuple(tup);
}

/* A key of table tid has been inserted. */
void
row_keys_add(int32 tid, uint32 khash, const char *key)
{
	Relation	rel;
	Relation	idx;

	open_row_keys(&rel, &idx, RowExclusiveLock);
	insert_entry(rel, idx, BuildIndexInfo(idx), tid, khash,
				 CStringGetTextDatum(key));
	close_row_keys(rel, idx);
}

/*
 * A key of table tid has been deleted.  A missing entry is not an error:
 * while a whole-table pull runs, the table's entries are not kept.
 */
void
row_keys_remove(int32 tid, uint32 khash, const char *key)
{
	Relation	rel;
	Relation	idx;

	open_row_keys(&rel, &idx, RowExclusiveLock);
	(void) keyed_delete(rel, idx, tid, khash, CStringGetTextDatum(key),
						NULL, NULL);
	close_row_keys(rel, idx);
}

/*
 * Remove every entry of table tid.  The caller holds a lock on the table
 * that keeps its writers out, so nobody else writes these entries.
 */
void
row_keys_clear(int32 tid)
{
	Relation	rel;
	Relation	idx;
	ScanKeyData skey;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	Snapshot	snap;

	CommandCounterIncrement();
	snap = RegisterSnapshot(GetLatestSnapshot());
	open_row_keys(&rel, &idx, RowExclusiveLock);
	ScanKeyInit(&skey, 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(tid));
	slot = table_slot_create(rel, NULL);
	scan = index_beginscan(rel, idx, snap, 1, 0);
	index_rescan(scan, &skey, 1, NULL, 0);
	while (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		CHECK_FOR_INTERRUPTS();
		simple_heap_delete(rel, &slot->tts_tid);
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	close_row_keys(rel, idx);
	UnregisterSnapshot(snap);
	CommandCounterIncrement();
}

typedef struct KeyEntry
{
	uint32		khash;
	int			len;			/* of key: sorted, the keys are read in an
								 * order unrelated to where they lie */
	char	   *key;
} KeyEntry;

typedef struct KeyCollect
{
	MemoryContext cxt;
	KeyEntry   *e;
	int64		n;
	int64		max;
} KeyCollect;

static void
collect_key(void *arg, const char *key, VersionState *st)
{
	KeyCollect *kc = arg;
	int			len = strlen(key);

	if (kc->n >= kc->max)
	{
		kc->max *= 2;
		kc->e = repalloc_huge(kc->e, sizeof(KeyEntry) * kc->max);
	}
	kc->e[kc->n].khash = keys_hash(key, len);
	kc->e[kc->n].len = len;
	kc->e[kc->n].key = MemoryContextStrdup(kc->cxt, key);
	kc->n++;
}

static int
key_entry_cmp(const void *a, const void *b)
{
	const KeyEntry *x = a;
	const KeyEntry *y = b;

	if (x->khash != y->khash)
		return x->khash < y->khash ? -1 : 1;
	return strcmp(x->key, y->key);
}

/*
 * Sort entries by (khash, key).  A million keys take a quarter of a second
 * with qsort() and its string comparisons; the hashes are uniform 32-bit
 * numbers, so two counting passes of 16 bits each order them in a few
 * milliseconds, and only the rare runs of equal hashes need comparing.
 */
#define RADIX_MIN	4096

static void
sort_entries(KeyEntry *e, int64 n)
{
	KeyEntry   *tmp;
	int64	   *count;
	int64		i;
	int			pass;

	if (n < RADIX_MIN)
	{
		qsort(e, n, sizeof(KeyEntry), key_entry_cmp);
		return;
	}
	tmp = palloc_extended(sizeof(KeyEntry) * n, MCXT_ALLOC_HUGE);
	count = palloc(sizeof(int64) * 65536);
	for (pass = 0; pass < 2; pass++)
	{
		int			shift = pass * 16;
		KeyEntry   *from = pass == 0 ? e : tmp;
		KeyEntry   *to = pass == 0 ? tmp : e;
		int64		sum = 0;

		memset(count, 0, sizeof(int64) * 65536);
		for (i = 0; i < n; i++)
			count[(from[i].khash >> shift) & 0xFFFF]++;
		for (i = 0; i < 65536; i++)
		{
			int64		c = count[i];

			count[i] = sum;
			sum += c;
		}
		for (i = 0; i < n; i++)
			to[count[(from[i].khash >> shift) & 0xFFFF]++] = from[i];
	}
	/* keys of one hash: by key */
	for (i = 0; i < n;)
	{
		int64		j = i + 1;

		while (j < n && e[j].khash == e[i].khash)
			j++;
		if (j - i > 1)
			qsort(e + i, j - i, sizeof(KeyEntry), key_entry_cmp);
		i = j;
	}
	pfree(count);
	pfree(tmp);
}

/*
 * Insert n entries of table tid, sorted by (khash, key): in index order,
 * so that consecutive index insertions land on the same leaf pages, with
 * one heap WAL record per page of entries.
 */
static void
insert_sorted(int32 tid, KeyEntry *e, int64 n, bool with_index)
{
	Relation	rel;
	Relation	idx;
	IndexInfo  *ii;
	BulkInsertState bistate;
	TupleTableSlot *slots[BUILD_BATCH];
	Datum		vals[BUILD_BATCH][Natts_row_keys];
	bool		nulls[Natts_row_keys] = {false, false, false};
	CommandId	cid;
	int			nslots = (int) Min(BUILD_BATCH, n);
	int			nbuf = 0;
	int64		i;

	if (n == 0)
		return;
	open_row_keys(&rel, &idx, RowExclusiveLock);
	ii = BuildIndexInfo(idx);
	bistate = GetBulkInsertState();
	cid = GetCurrentCommandId(true);
	for (i = 0; i < nslots; i++)
		slots[i] = table_slot_create(rel, NULL);
	for (i = 0; i < n; i += nbuf)
	{
		int			j;

		CHECK_FOR_INTERRUPTS();
		nbuf = (int) Min(BUILD_BATCH, n - i);
		for (j = 0; j < nbuf; j++)
		{
			TupleTableSlot *sl = slots[j];

			vals[j][0] = Int32GetDatum(tid);
			vals[j][1] = Int32GetDatum(khash_to_int4(e[i + j].khash));
			vals[j][2] = PointerGetDatum(cstring_to_text_with_len(e[i + j].key,
																  e[i + j].len));
			ExecClearTuple(sl);
			memcpy(sl->tts_values, vals[j], sizeof(vals[j]));
			memcpy(sl->tts_isnull, nulls, sizeof(nulls));
			ExecStoreVirtualTuple(sl);
		}
		/* one WAL record per heap page instead of one per entry */
		heap_multi_insert(rel, slots, nbuf, cid, 0, bistate);
		for (j = 0; j < nbuf; j++)
		{
			if (with_index)
				index_insert(idx, vals[j], nulls, &slots[j]->tts_tid, rel,
							 UNIQUE_CHECK_NO, false, ii);
			pfree(DatumGetPointer(vals[j][2]));
		}
	}
	for (i = 0; i < nslots; i++)
		ExecDropSingleTupleTableSlot(slots[i]);
	FreeBulkInsertState(bistate);
	close_row_keys(rel, idx);
}

/*
 * Whether n new entries (e) are worth rebuilding registry.row_keys' index
 * for, rather than adding each to it: a million entries added one by one
 * cost about two seconds, most of it the index (a descent, a WAL record
 * and page splits per entry); sorted and written page by page, as CREATE
 * INDEX does, a fraction of that.  But the rebuild sorts every entry of
 * every table, so it pays only when the new ones are a good part of them
 * (a node that has just pulled a large table whole, the usual case):
 * here, when the index's pages, dead entries included (as after an
 * unregistration, until vacuumed), would hold at most twice as many as
 * the new ones take.  The index, not the table: a rebuild leaves it
 * compact, and the table's dead entries cost the rebuild little.
 */
static bool
rebuild_worthwhile(KeyEntry *e, int64 n)
{
	Relation	idx;
	double		ours = 0;
	double		theirs;
	int64		i;

	if (n < REBUILD_MIN_KEYS)
		return false;
	for (i = 0; i < n; i++)
		ours += MAXALIGN(sizeof(IndexTupleData) + 2 * sizeof(int32) +
						 VARHDRSZ_SHORT + e[i].len) + sizeof(ItemIdData);
	idx = index_open(registry_own_relid(REGISTRY_REL_ROW_KEYS_PKEY), AccessShareLock);
	theirs = (double) RelationGetNumberOfBlocks(idx) * BLCKSZ;
	index_close(idx, AccessShareLock);
	return theirs <= 2 * ours;
}

/*
 * Make t's entries those of its rows: on registration, after a
 * whole-table pull, when a restored table is taken up.  Locks the table
 * against writers (as CREATE INDEX would) until the transaction ends;
 * the entries are inserted in index order.  Returns how many there are.
 *
 * may_rebuild_index: the caller (the "registry keys" worker) holds no
 * registry.row_keys scan open and may wait for every registry writer:
 * when worthwhile (rebuild_worthwhile), the entries are written to the
 * table alone and its index is rebuilt, under a lock that makes every
 * other writer of registry.row_keys (an INSERT or DELETE of a key in any
 * registry table) and every bucket read wait meanwhile, about half a
 * second per million entries (*rebuilt is then set).  The lock is taken
 * before any entry is written and conflicts with itself, so two such
 * builds cannot wait for each other.
 */
int64
row_keys_build(RegTable *t, bool may_rebuild_index, bool *rebuilt)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext,
											  "registry row keys",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old;
	KeyCollect	kc;
	Snapshot	snap;
	bool		rebuild;

	LockRelationOid(t->relid, ShareLock);

	old = MemoryContextSwitchTo(cxt);
	kc.cxt = cxt;
	kc.n = 0;
	kc.max = 1024;
	kc.e = palloc(sizeof(KeyEntry) * kc.max);
	snap = RegisterSnapshot(GetLatestSnapshot());
	row_foreach(t, snap, collect_key, &kc);
	UnregisterSnapshot(snap);
	sort_entries(kc.e, kc.n);

	rebuild = may_rebuild_index && rebuild_worthwhile(kc.e, kc.n);
	if (rebuild)
		LockRelationOid(registry_own_relid(REGISTRY_REL_ROW_KEYS),
						ShareRowExclusiveLock);
	row_keys_clear(t->tid);
	insert_sorted(t->tid, kc.e, kc.n, !rebuild);
	if (rebuild)
	{
		ReindexParams params = {0};

		CommandCounterIncrement();
		reindex_index(registry_own_relid(REGISTRY_REL_ROW_KEYS_PKEY), false,
					  RELPERSISTENCE_PERMANENT, &params);
	}
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
	CommandCounterIncrement();
	if (rebuilt)
		*rebuilt = rebuild;
	return kc.n;
}

/* Keys of a table with key hash in [lo, hi], in (hash, key) order. */
void
row_keys_scan_begin(KeyRangeScan *ks, int32 tid, uint32 lo, uint32 hi,
					Snapshot snap)
{
	keyed_scan_begin(ks, registry_own_relid(REGISTRY_REL_ROW_KEYS),
					 registry_own_relid(REGISTRY_REL_ROW_KEYS_PKEY), tid, lo, hi, snap);
}

/* The next key (palloc'd) and its hash; false at the end. */
bool
row_keys_scan_next(KeyRangeScan *ks, uint32 *khash, char **key)
{
	TupleTableSlot *slot = ks->slot;

	if (!index_getnext_slot(ks->scan, ForwardScanDirection, slot))
		return false;
	slot_getallattrs(slot);
	*khash = int4_to_khash(DatumGetInt32(slot->tts_values[1]));
	*key = TextDatumGetCString(slot->tts_values[2]);
	return true;
}

void
row_keys_scan_end(KeyRangeScan *ks)
{
	keyed_scan_end(ks);
}
