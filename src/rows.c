/*-------------------------------------------------------------------------
 *
 * rows.c
 *	  Finding a registry table's row by its canonical key, and turning a
 *	  row into the text values that travel between nodes.
 *
 * Key text and row values are read and written in the canonical settings
 * of keys.c (keys_canonical_gucs_push); callers arrange for them once per
 * batch rather than per row.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "registry.h"
#include "rows.h"

/*
 * Open a lookup of t's rows by key: the table and its primary key index,
 * locked with lockmode until the end of the transaction.
 */
void
row_lookup_begin(RowLookup *rl, RegTable *t, LOCKMODE lockmode, Snapshot snap)
{
	rl->t = t;
	rl->rel = table_open(t->relid, lockmode);
	rl->idx = index_open(t->pkindex, lockmode);
	rl->slot = table_slot_create(rl->rel, NULL);
	rl->scan = index_beginscan(rl->rel, rl->idx, snap, t->nkeys, 0);
}

void
row_lookup_end(RowLookup *rl)
{
	index_endscan(rl->scan);
	ExecDropSingleTupleTableSlot(rl->slot);
	index_close(rl->idx, NoLock);
	table_close(rl->rel, NoLock);
}

/*
 * The key's values as datums of the key columns' types.  Errors on key
 * text that does not parse, as a malformed peer answer would.
 */
void
row_key_datums(RegTable *t, const char *key, Datum *values)
{
	List	   *parts = keys_split(key, t->nkeys);
	int			i;

	for (i = 0; i < t->nkeys; i++)
	{
		KeyColumn  *k = &t->keys[i];

		values[i] = OidInputFunctionCall(k->infunc, (char *) list_nth(parts, i),
										 k->ioparam, k->typmod);
	}
	list_free_deep(parts);
}

/* Fetch the row with the given key into rl->slot; false if there is none. */
bool
row_lookup(RowLookup *rl, const char *key)
{
	Datum		values[INDEX_MAX_KEYS];

	row_key_datums(rl->t, key, values);
	return row_lookup_datums(rl, values);
}

/*
 * The same with the key already parsed (row_key_datums).  Runs the index
 * scan: call it in a context that lives as long as the lookup, not in a
 * per-row one (btree keeps what it allocates on first use).
 */
bool
row_lookup_datums(RowLookup *rl, Datum *values)
{
	RegTable   *t = rl->t;
	ScanKeyData skey[INDEX_MAX_KEYS];
	int			i;

	for (i = 0; i < t->nkeys; i++)
	{
		ScanKeyInit(&skey[i], i + 1, BTEqualStrategyNumber, t->keys[i].eqproc,
					values[i]);
		skey[i].sk_collation = t->keys[i].collation;
	}
	index_rescan(rl->scan, skey, t->nkeys, NULL, 0);
	return index_getnext_slot(rl->scan, ForwardScanDirection, rl->slot);
}

/*
 * The version columns of a row; exists = false for a row that was never
 * stamped (only seen while registry.replicate() stamps existing rows).
 */
void
row_version(RegTable *t, TupleTableSlot *slot, VersionState *st)
{
	bool		vnull,
				onull;
	Datum		v = slot_getattr(slot, t->verattnum, &vnull);
	Datum		o = slot_getattr(slot, t->orgattnum, &onull);

	memset(st, 0, sizeof(VersionState));
	if (vnull || onull)
		return;
	st->exists = true;
	st->deleted = false;
	st->version = (RegVersion) DatumGetInt64(v);
	text_to_cstring_buffer(DatumGetTextPP(o), st->origin, sizeof(st->origin));
}

/* The canonical key of the row in slot. */
char *
row_key(RegTable *t, TupleTableSlot *slot)
{
	Datum		values[INDEX_MAX_KEYS];
	bool		isnull[INDEX_MAX_KEYS];
	int			i;

	for (i = 0; i < t->nkeys; i++)
		values[i] = slot_getattr(slot, t->keys[i].attnum, &isnull[i]);
	return keys_encode(t->keys, t->nkeys, values, isnull, t->qualname);
}

/*
 * Call fn with the key and version of every row of t visible to snap, in
 * heap order (a sequential scan); each call runs in a memory context
 * reset after it.
 */
void
row_foreach(RegTable *t, Snapshot snap, RowCallback fn, void *arg)
{
	Relation	rel = table_open(t->relid, AccessShareLock);
	TableScanDesc scan = table_beginscan(rel, snap, 0, NULL);
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext,
												 "registry row scan",
												 ALLOCSET_DEFAULT_SIZES);

	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		MemoryContext old = MemoryContextSwitchTo(rowcxt);
		VersionState st;
		char	   *key;

		CHECK_FOR_INTERRUPTS();
		key = row_key(t, slot);
		row_version(t, slot, &st);
		fn(arg, key, &st);
		MemoryContextSwitchTo(old);
		MemoryContextReset(rowcxt);
	}
	ExecDropSingleTupleTableSlot(slot);
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	MemoryContextDelete(rowcxt);
}

/* Every row of t, in primary-key order (a whole-table read). */
void
row_scan_all_begin(RowLookup *rs, RegTable *t, Snapshot snap)
{
	rs->t = t;
	rs->rel = table_open(t->relid, AccessShareLock);
	rs->idx = index_open(t->pkindex, AccessShareLock);
	rs->slot = table_slot_create(rs->rel, NULL);
	rs->scan = index_beginscan(rs->rel, rs->idx, snap, 0, 0);
	index_rescan(rs->scan, NULL, 0, NULL, 0);
}

bool
row_scan_next(RowLookup *rs)
{
	return index_getnext_slot(rs->scan, ForwardScanDirection, rs->slot);
}

void
row_scan_end(RowLookup *rs)
{
	index_endscan(rs->scan);
	ExecDropSingleTupleTableSlot(rs->slot);
	index_close(rs->idx, NoLock);
	table_close(rs->rel, NoLock);
}

/*
 * Text of every transmitted column of the row in slot (NULL for SQL null),
 * palloc'd in the current memory context.
 */
char	  **
row_values(RegTable *t, TupleTableSlot *slot)
{
	char	  **values = palloc(sizeof(char *) * Max(t->ncols, 1));
	int			i;

	slot_getallattrs(slot);
	for (i = 0; i < t->ncols; i++)
	{
		RowColumn  *c = &t->cols[i];
		int			a = c->attnum - 1;

		if (slot->tts_isnull[a])
			values[i] = NULL;
		else
			values[i] = OutputFunctionCall(&c->outinfo, slot->tts_values[a]);
	}
	return values;
}
