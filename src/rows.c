/*-------------------------------------------------------------------------
 *
 * rows.c
 *	  Finding a registry table's row by its canonical key, and turning a
 *	  row into the text values that travel between nodes.
 *
 * Key text and row values are read and written in the canonical settings
 * of keys.c (canonical_gucs_push); callers arrange for them once per
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
#include "utils/builtins.h"
#include "utils/lsyscache.h"
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
	RegTable   *t = rl->t;
	ScanKeyData skey[INDEX_MAX_KEYS];
	Datum		values[INDEX_MAX_KEYS];
	int			i;

	row_key_datums(t, key, values);
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
