/*-------------------------------------------------------------------------
 *
 * apply.c
 *	  Writing a remote row with its remote version and origin: the
 *	  last-writer-wins rule and the statements that carry it out.
 *
 * For each row: the receive rule of the clock runs (a version too far in
 * the future is refused); the row is skipped unless its (version, origin)
 * is greater than the stored one; otherwise it is upserted (with its
 * version columns) or deleted through SQL (in replica mode, a key's live
 * row is updated in place without a statement: update_direct), so
 * constraints are checked and the registry triggers record it with the
 * remote version (CAPTURE_MODE_APPLY_ROW) and publish it at commit like
 * any local change.  A tombstone for a key without a local row is written
 * to registry.tombstones directly.
 *
 * A concurrent local write to the same key makes the capture trigger
 * raise a serialization failure; the caller retries the whole batch.
 *
 * Applying runs as session_replication_role = replica, as logical
 * replication does: ordinary user triggers and foreign-key checks do not
 * fire for replicated rows (the capture trigger fires ALWAYS).
 *
 * Rows of a whole table pulled into an empty one bypass the executor
 * (insert_fresh_direct) when nothing but our own triggers would fire.
 *
 * While a peer's row is applied, an error context callback (as the
 * built-in apply worker's apply_error_callback) names the peer, the table
 * and the row's key, version and origin in every error or warning raised
 * meanwhile: by user triggers, constraints, type input functions or our
 * own checks.  The caller names the peer with apply_set_peer(); without a
 * peer (registry.apply_row() called from SQL) no context is added.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/tableam.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "nodes/makefuncs.h"
#include "storage/lmgr.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "digest.h"
#include "publish.h"
#include "registry.h"
#include "apply.h"
#include "rows.h"
#include "tombstones.h"

PG_FUNCTION_INFO_V1(registry_apply_row);

/* ---- error context ---- */

/*
 * The peer whose rows are being applied, set by the caller
 * (apply_set_peer); empty when there is none.
 */
static char apply_peer[REGISTRY_NAME_LEN];

/* the worker's session settings are in place (apply_prepare_session) */
static bool apply_session_ready = false;

/*
 * What is being applied, for the error context callback: one frame per
 * apply_row(), apply_rows_bulk() or apply_rows_fresh() call, on its stack.
 * The row is the one being looked at; for a statement that writes many
 * rows at once (nrows > 0) only the first is named.  No row (key NULL):
 * the work is on the table as a whole.
 */
typedef struct ApplyErrorFrame
{
	ErrorContextCallback cb;
	RegTable   *t;
	const char *key;
	RegVersion	version;
	const char *origin;
	bool		deleted;
	int			nrows;			/* > 0: one statement for this many rows */
} ApplyErrorFrame;

/*
 * Name the peer whose rows the following apply calls write, or none
 * (NULL).  Copied: the caller's string need not outlive the call.
 */
void
apply_set_peer(const char *peer)
{
	if (peer)
		strlcpy(apply_peer, peer, sizeof(apply_peer));
	else
		apply_peer[0] = '\0';
}

static void
apply_error_callback(void *arg)
{
	ApplyErrorFrame *f = (ApplyErrorFrame *) arg;

	if (apply_peer[0] == '\0')
		return;
	if (f->key == NULL)
		errcontext("applying rows of table %s from peer \"%s\"",
				   f->t->qualname, apply_peer);
	else if (f->nrows > 0)
		errcontext("applying %d rows of table %s from peer \"%s\" at once, the first: key \"%s\", version " INT64_FORMAT ", origin \"%s\"",
				   f->nrows, f->t->qualname, apply_peer, f->key,
				   (int64) f->version, f->origin);
	else if (f->deleted)
		errcontext("applying the deletion of key \"%s\" of table %s from peer \"%s\", version " INT64_FORMAT ", origin \"%s\"",
				   f->key, f->t->qualname, apply_peer, (int64) f->version,
				   f->origin);
	else
		errcontext("applying the row of key \"%s\" of table %s from peer \"%s\", version " INT64_FORMAT ", origin \"%s\"",
				   f->key, f->t->qualname, apply_peer, (int64) f->version,
				   f->origin);
}

/*
 * Push a frame for table t, no row yet.  Popped by context_pop() on
 * return; an ERROR leaves it to the catcher, whose PG_TRY restores
 * error_context_stack (the frame dies with this stack).
 */
static void
context_push(ApplyErrorFrame *f, RegTable *t)
{
	memset(f, 0, sizeof(*f));
	f->t = t;
	f->cb.callback = apply_error_callback;
	f->cb.arg = f;
	f->cb.previous = error_context_stack;
	error_context_stack = &f->cb;
}

static void
context_pop(ApplyErrorFrame *f)
{
	Assert(error_context_stack == &f->cb);
	error_context_stack = f->cb.previous;
}

/* The row now looked at, alone (nrows 0) or first of nrows; NULL: none. */
static void
context_row(ApplyErrorFrame *f, const char *key, RegVersion version,
			const char *origin, bool deleted, int nrows)
{
	f->key = key;
	f->version = version;
	f->origin = origin;
	f->deleted = deleted;
	f->nrows = nrows;
}

static void
context_apply_row(ApplyErrorFrame *f, const ApplyRow *r)
{
	context_row(f, r->key, r->version, r->origin, false, 0);
}

static const char *
key_column_list(RegTable *t)
{
	StringInfoData b;
	int			i;

	initStringInfo(&b);
	for (i = 0; i < t->nkeys; i++)
		appendStringInfo(&b, "%s%s", i ? ", " : "", quote_identifier(t->keys[i].name));
	return b.data;
}

/*
 * "INSERT INTO <table> [AS t] (<our columns in the peer's order>,
 * registry_version, registry_origin) "
 */
static void
append_insert_head(StringInfo sql, ApplyColumns *ac, bool alias)
{
	RegTable   *t = ac->t;
	int			i;

	appendStringInfo(sql, "INSERT INTO %s%s (", t->qualname, alias ? " AS t" : "");
	for (i = 0; i < ac->ncols; i++)
		appendStringInfo(sql, "%s, ", quote_identifier(t->cols[ac->local[i]].name));
	appendStringInfo(sql, "registry_version, registry_origin)%s ",
					 t->has_identity_always ? " OVERRIDING SYSTEM VALUE" : "");
}

/*
 * Column i of the peer's list, as the type it has here, without its
 * modifier: the statements cast the peer's text to the type, and the
 * column's modifier then applies as it does to any INSERT or UPDATE
 * (assignment).  An explicit cast to varchar(n), char(n) or bit(n)
 * would cut a value too long for the column without a word; assigned, it
 * is refused (value too long), as the direct paths, which run the type's
 * input function with the modifier, refuse it too.  (Given as -1, so that
 * bit is written "bit", without length, rather than bit, which SQL reads
 * as bit(1).)
 */
static char *
column_type(ApplyColumns *ac, int i)
{
	RowColumn  *c = &ac->t->cols[ac->local[i]];

	return format_type_with_typemod(c->typid, -1);
}

/*
 * "ON CONFLICT (<key>) DO UPDATE SET <every non-key column and the
 * version> = EXCLUDED.<same>"; the caller may add a WHERE.  A column
 * GENERATED ALWAYS AS IDENTITY is left out: PostgreSQL lets no UPDATE set
 * it (a statement naming it fails, for every row, even one that does not
 * conflict), and no local UPDATE can have changed it but to a new default
 * of that node's own sequence, which is not replicated.
 */
static void
append_upsert_tail(StringInfo sql, ApplyColumns *ac)
{
	RegTable   *t = ac->t;
	int			i,
				j;

	appendStringInfo(sql, " ON CONFLICT (%s) DO UPDATE SET ", key_column_list(t));
	for (i = 0; i < ac->ncols; i++)
	{
		RowColumn  *c = &t->cols[ac->local[i]];
		bool		iskey = false;

		for (j = 0; j < t->nkeys; j++)
			if (t->keys[j].attnum == c->attnum)
				iskey = true;
		if (!iskey && !c->identity_always)
			appendStringInfo(sql, "%s = EXCLUDED.%s, ",
							 quote_identifier(c->name), quote_identifier(c->name));
	}
	appendStringInfoString(sql, "registry_version = EXCLUDED.registry_version, "
						   "registry_origin = EXCLUDED.registry_origin");
}

/* SPI_prepare leaves SPI's memory context current: come back to the caller's. */
static SPIPlanPtr
prepare_plan(const char *sql, int nargs, Oid *argtypes)
{
	MemoryContext mycxt = CurrentMemoryContext;
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	MemoryContextSwitchTo(mycxt);
	if (plan == NULL)
		elog(ERROR, "registry: could not prepare \"%s\": %s", sql,
			 SPI_result_code_string(SPI_result));
	return plan;
}

/*
 * Match the peer's column list to ours.  Every column we transmit must be
 * sent, with the same type name, and nothing else; anything else is an
 * incompatible table definition, reported before any row is written.
 */
ApplyColumns *
apply_map_columns(RegTable *t, int ncols, char **names, char **types)
{
	ApplyColumns *ac = palloc0(sizeof(ApplyColumns));
	StringInfoData sql;
	Oid		   *argtypes;
	int			i,
				j;

	ac->t = t;
	ac->ncols = ncols;
	ac->local = palloc(sizeof(int) * Max(ncols, 1));
	ac->keypos = palloc(sizeof(int) * t->nkeys);
	for (i = 0; i < ncols; i++)
	{
		for (j = 0; j < t->ncols; j++)
			if (strcmp(t->cols[j].name, names[i]) == 0)
				break;
		if (j == t->ncols)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("column \"%s\" of registry table %s does not exist on node \"%s\"",
							names[i], t->qualname, registry_node_name),
					 errhint("Registry tables must have the same columns on every node.")));
		if (strcmp(t->cols[j].typname, types[i]) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("column \"%s\" of registry table %s has type %s on node \"%s\" but %s on the peer",
							names[i], t->qualname, t->cols[j].typname,
							registry_node_name, types[i]),
					 errhint("Registry tables must have the same columns on every node.")));
		ac->local[i] = j;
	}
	if (ncols != t->ncols)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("registry table %s has %d columns on node \"%s\" but %d on the peer",
						t->qualname, t->ncols, registry_node_name, ncols),
				 errhint("Registry tables must have the same columns on every node.")));
	for (i = 0; i < t->nkeys; i++)
	{
		ac->keypos[i] = -1;
		for (j = 0; j < ncols; j++)
			if (t->cols[ac->local[j]].attnum == t->keys[i].attnum)
				ac->keypos[i] = j;
		if (ac->keypos[i] < 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("key column \"%s\" of registry table %s is not transmitted",
							t->keys[i].name, t->qualname)));
	}

	ac->infuncs = palloc(sizeof(FmgrInfo) * Max(ncols, 1));
	for (i = 0; i < ncols; i++)
		fmgr_info(t->cols[ac->local[i]].infunc, &ac->infuncs[i]);

	/* upsert: every column as text, cast by its local type, then the version */
	initStringInfo(&sql);
	append_insert_head(&sql, ac, false);
	appendStringInfoString(&sql, "VALUES (");
	for (i = 0; i < ncols; i++)
		appendStringInfo(&sql, "$%d::%s, ", i + 1, column_type(ac, i));
	appendStringInfo(&sql, "$%d::bigint, $%d)", ncols + 1, ncols + 2);
	append_upsert_tail(&sql, ac);
	argtypes = palloc(sizeof(Oid) * (ncols + 2));
	for (i = 0; i < ncols + 2; i++)
		argtypes[i] = TEXTOID;
	ac->upsert = prepare_plan(sql.data, ncols + 2, argtypes);

	resetStringInfo(&sql);
	appendStringInfo(&sql, "DELETE FROM ONLY %s WHERE (%s) = (", t->qualname,
					 key_column_list(t));
	for (i = 0; i < t->nkeys; i++)
		appendStringInfo(&sql, "%s$%d::%s", i ? ", " : "", i + 1,
						 format_type_with_typemod(t->keys[i].typid, -1));
	appendStringInfoString(&sql, ")");
	ac->delete = prepare_plan(sql.data, t->nkeys, argtypes);
	return ac;
}

static bool direct_insert_possible(Relation rel);
static void check_incoming(RegTable *t, const char *key, const char *origin,
						   bool deleted, char **values);
static void prepare_bulk(ApplyColumns *ac);
static ApplyResult apply_one_row(ApplyColumns *ac, const char *key,
								 RegVersion version, const char *origin,
								 bool deleted, char **values);
static int	rows_bulk(ApplyColumns *ac, ApplyRow *rows, int n,
					  int *refused_skew, ApplyErrorFrame *f);
static int	rows_fresh(ApplyColumns *ac, ApplyRow *rows, int n,
					   int *refused_skew, ApplyErrorFrame *f);

/* Keep the prepared statements beyond the current SPI connection. */
void
apply_keep_columns(ApplyColumns *ac)
{
	prepare_bulk(ac);
	SPI_keepplan(ac->upsert);
	SPI_keepplan(ac->delete);
	SPI_keepplan(ac->bulk);
}

void
apply_free_columns(ApplyColumns *ac)
{
	SPI_freeplan(ac->upsert);
	SPI_freeplan(ac->delete);
	SPI_freeplan(ac->bulk);
}

/*
 * The row's own key, from its key column values: a peer whose key and
 * row disagree sent a malformed answer.
 */
static void
check_row_key(ApplyColumns *ac, const char *key, char **values)
{
	RegTable   *t = ac->t;
	Datum		kv[INDEX_MAX_KEYS];
	bool		kn[INDEX_MAX_KEYS];
	char	   *rowkey;
	int			i;

	for (i = 0; i < t->nkeys; i++)
	{
		const char *v = values[ac->keypos[i]];

		kn[i] = (v == NULL);
		kv[i] = kn[i] ? (Datum) 0 :
			OidInputFunctionCall(t->keys[i].infunc, (char *) v,
								 t->keys[i].ioparam, t->keys[i].typmod);
	}
	rowkey = keys_encode(t->keys, t->nkeys, kv, kn, t->qualname);
	if (strcmp(rowkey, key) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("row for key \"%s\" of table %s has key \"%s\"",
						key, t->qualname, rowkey)));
}

/*
 * The committed (or our own) state of a key: live row, tombstone or none;
 * *tid is the live row's (else invalid).
 */
static void
current_state(RegTable *t, const char *key, uint32 khash, VersionState *st,
			  ItemPointer tid)
{
	RowLookup	rl;
	Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());

	ItemPointerSetInvalid(tid);
	row_lookup_begin(&rl, t, RowExclusiveLock, snap);
	if (row_lookup(&rl, key))
	{
		row_version(t, rl.slot, st);
		ItemPointerCopy(&rl.slot->tts_tid, tid);
	}
	else
		(void) tombstone_get(t->tid, khash, key, snap, st);
	row_lookup_end(&rl);
	UnregisterSnapshot(snap);
}

/*
 * Whether the key has a row, committed (since our look) or being inserted
 * by a transaction still in progress.  A remote delete that found no row
 * writes only a tombstone; an INSERT of the key not yet committed has
 * already looked for a tombstone to take and found none, so once both
 * commit the key would have a live row and a tombstone.  The delete gives
 * up rather than wait, because the inserter may be about to wait for the
 * tombstone; retried, it sees the row (or its absence) and is exact.
 */
static bool
row_being_written(RegTable *t, const char *key)
{
	RowLookup	rl;
	SnapshotData dirty;
	bool		found;

	InitDirtySnapshot(dirty);
	row_lookup_begin(&rl, t, RowExclusiveLock, &dirty);
	found = row_lookup(&rl, key);
	row_lookup_end(&rl);
	return found;
}

/*
 * Whether update_direct() may write to rel: only where the statement's
 * path would run nothing but our own triggers and plain checks.  That
 * is replica mode (the sync worker, a superuser's apply_row()), where
 * only triggers enabled ALWAYS or REPLICA fire and direct_insert_possible()
 * has ruled out any but ours: in origin mode the statement would also
 * fire BEFORE INSERT, statement-level and UPDATE OF triggers and check
 * SELECT rights, which a direct update does not.  Not with row-level
 * security, nor where the table has no replica identity to update by,
 * nor outside READ COMMITTED (ON CONFLICT's serialization checks), nor
 * when a column's type differs from what ac was made for (an ALTER since
 * the cached definition was read).
 */
static bool
update_direct_possible(ApplyColumns *ac, Relation rel)
{
	RegTable   *t = ac->t;
	TupleDesc	desc = RelationGetDescr(rel);
	int			c;

	if (SessionReplicationRole != SESSION_REPLICATION_ROLE_REPLICA ||
		IsolationUsesXactSnapshot() ||
		rel->rd_rel->relrowsecurity ||
		rel->rd_rel->relreplident == REPLICA_IDENTITY_NOTHING ||
		!direct_insert_possible(rel))
		return false;
	for (c = 0; c < ac->ncols; c++)
	{
		RowColumn  *col = &t->cols[ac->local[c]];
		Form_pg_attribute att;

		if (col->attnum < 1 || col->attnum > desc->natts)
			return false;
		att = TupleDescAttr(desc, col->attnum - 1);
		if (att->attisdropped || att->atttypid != col->typid ||
			att->atttypmod != col->typmod)
			return false;
	}
	if (t->verattnum < 1 || t->verattnum > desc->natts ||
		TupleDescAttr(desc, t->verattnum - 1)->atttypid != INT8OID ||
		t->orgattnum < 1 || t->orgattnum > desc->natts ||
		TupleDescAttr(desc, t->orgattnum - 1)->atttypid != TEXTOID)
		return false;
	return true;
}

/*
 * Update the key's live row, at tid, to the peer's values without a
 * statement: no plan to look up and start, no ON CONFLICT probe of the
 * index (a second walk of the row's HOT chain), as the built-in apply
 * worker updates.  The row is locked first, as it was read: if another
 * transaction changed it since (the version compared no longer being the
 * row's), false, and the caller runs the statement instead; false too
 * where update_direct_possible() says no.  Our triggers fire as for the
 * statement (the BEFORE trigger stamps the version, the AFTER one, where
 * it fires for UPDATE, records the change), constraints and unique
 * indexes are checked.  The key columns keep their stored values (the
 * peer's key is the same key, check_row_key()), and so does a column
 * GENERATED ALWAYS AS IDENTITY (append_upsert_tail() says why).
 * Everything is allocated in the executor state's memory, freed before
 * the next row.
 */
static bool
update_direct(ApplyColumns *ac, ItemPointer tid, RegVersion version,
			  const char *origin, char **values)
{
	RegTable   *t = ac->t;
	Relation	rel = table_open(t->relid, RowExclusiveLock);
	TupleDesc	desc = RelationGetDescr(rel);
	EState	   *estate;
	MemoryContext oldcxt;
	ResultRelInfo *rri;
	RangeTblEntry *rte;
	EPQState	epq;
	TupleTableSlot *oldslot;
	TupleTableSlot *newslot;
	TM_FailureData tmfd;
	TM_Result	res;
	int			c;

	if (!update_direct_possible(ac, rel))
	{
		table_close(rel, NoLock);
		return false;
	}
	estate = CreateExecutorState();
	oldcxt = MemoryContextSwitchTo(estate->es_query_cxt);
	rte = makeNode(RangeTblEntry);
	rte->rtekind = RTE_RELATION;
	rte->relid = RelationGetRelid(rel);
	rte->relkind = rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	ExecInitRangeTable(estate, list_make1(rte));
	rri = makeNode(ResultRelInfo);
	InitResultRelInfo(rri, rel, 1, NULL, 0);
	/* so that the AFTER triggers' events find it, and it is closed once */
	estate->es_opened_result_relations =
		lappend(estate->es_opened_result_relations, rri);
	estate->es_output_cid = GetCurrentCommandId(true);
	/* a snapshot of its own, as the statement would have */
	PushActiveSnapshot(GetTransactionSnapshot());
	estate->es_snapshot = GetActiveSnapshot();
	oldslot = table_slot_create(rel, &estate->es_tupleTable);
	newslot = table_slot_create(rel, &estate->es_tupleTable);

	res = table_tuple_lock(rel, tid, estate->es_snapshot, oldslot,
						   estate->es_output_cid, LockTupleNoKeyExclusive,
						   LockWaitBlock, 0, &tmfd);
	if (res != TM_Ok)
	{
		PopActiveSnapshot();
		ExecResetTupleTable(estate->es_tupleTable, false);
		MemoryContextSwitchTo(oldcxt);
		FreeExecutorState(estate);
		table_close(rel, NoLock);
		return false;
	}

	/* the stored row's values for what the peer's do not replace */
	slot_getallattrs(oldslot);
	ExecClearTuple(newslot);
	memcpy(newslot->tts_values, oldslot->tts_values, sizeof(Datum) * desc->natts);
	memcpy(newslot->tts_isnull, oldslot->tts_isnull, sizeof(bool) * desc->natts);
	for (c = 0; c < ac->ncols; c++)
	{
		RowColumn  *col = &t->cols[ac->local[c]];
		int			a = col->attnum - 1;
		bool		iskey = false;
		int			k;

		for (k = 0; k < t->nkeys; k++)
			if (t->keys[k].attnum == col->attnum)
				iskey = true;
		if (iskey || col->identity_always)
			continue;
		newslot->tts_values[a] = InputFunctionCall(&ac->infuncs[c], values[c],
												   col->ioparam, col->typmod);
		newslot->tts_isnull[a] = (values[c] == NULL);
	}
	newslot->tts_values[t->verattnum - 1] = Int64GetDatum((int64) version);
	newslot->tts_isnull[t->verattnum - 1] = false;
	newslot->tts_values[t->orgattnum - 1] = CStringGetTextDatum(origin);
	newslot->tts_isnull[t->orgattnum - 1] = false;
	ExecStoreVirtualTuple(newslot);

	ExecOpenIndices(rri, false);
	EvalPlanQualInit(&epq, estate, NULL, NIL, -1);
	AfterTriggerBeginQuery();
	ExecSimpleRelationUpdate(rri, estate, &epq, oldslot, newslot);
	AfterTriggerEndQuery(estate);
	EvalPlanQualEnd(&epq);
	PopActiveSnapshot();
	ExecResetTupleTable(estate->es_tupleTable, false);
	ExecCloseResultRelations(estate);
	MemoryContextSwitchTo(oldcxt);
	FreeExecutorState(estate);
	table_close(rel, NoLock);
	CommandCounterIncrement();
	return true;
}

/*
 * Apply one remote row.  Caller has called apply_begin() and prepared ac.
 * Errors (constraint violations, malformed values) abort the caller's
 * transaction: the batch is all or nothing.  They name the row
 * (apply_error_callback).
 */
ApplyResult
apply_row(ApplyColumns *ac, const char *key, RegVersion version,
		  const char *origin, bool deleted, char **values)
{
	ApplyErrorFrame f;
	ApplyResult r;

	context_push(&f, ac->t);
	context_row(&f, key, version, origin, deleted, 0);
	r = apply_one_row(ac, key, version, origin, deleted, values);
	context_pop(&f);
	return r;
}

static ApplyResult
apply_one_row(ApplyColumns *ac, const char *key, RegVersion version,
			  const char *origin, bool deleted, char **values)
{
	RegTable   *t = ac->t;
	uint32		khash;
	VersionState cur;
	ItemPointerData tid;
	Datum	   *args;
	char	   *nulls;
	int			i;
	int			rc;

	check_incoming(t, key, origin, deleted, values);
	if (!hlc_update(version, NULL))
		return APPLY_REFUSED_SKEW;

	khash = keys_hash(key, strlen(key));
	current_state(t, key, khash, &cur, &tid);
	if (cur.exists && !version_greater(version, origin, cur.version, cur.origin))
		return APPLY_SKIPPED_OLDER;

	/*
	 * A key we know nothing about, older than a tombstone purged here, may
	 * be one that was deleted: a tombstone needs no storing, a row is
	 * refused rather than brought back.
	 */
	if (!cur.exists && version <= t->purge_horizon)
		return deleted ? APPLY_SKIPPED_OLDER : APPLY_REFUSED_PURGED;

	publish_mode_push(&(CaptureMode) {.kind = CAPTURE_MODE_APPLY_ROW,
					  .table = t, .key = key, .version = version, .origin = origin});
	if (!deleted)
	{
		char		vtext[32];

		check_row_key(ac, key, values);
		if (ItemPointerIsValid(&tid) && !cur.deleted &&
			update_direct(ac, &tid, version, origin, values))
		{
			publish_mode_pop(CAPTURE_MODE_APPLY_ROW);
			return APPLY_APPLIED;
		}
		args = palloc(sizeof(Datum) * (ac->ncols + 2));
		nulls = palloc(ac->ncols + 2);
		for (i = 0; i < ac->ncols; i++)
		{
			args[i] = values[i] ? CStringGetTextDatum(values[i]) : (Datum) 0;
			nulls[i] = values[i] ? ' ' : 'n';
		}
		snprintf(vtext, sizeof(vtext), INT64_FORMAT, (int64) version);
		args[ac->ncols] = CStringGetTextDatum(vtext);
		args[ac->ncols + 1] = CStringGetTextDatum(origin);
		nulls[ac->ncols] = nulls[ac->ncols + 1] = ' ';
		rc = SPI_execute_plan(ac->upsert, args, nulls, false, 0);
		if (rc != SPI_OK_INSERT || SPI_processed != 1)
			ereport(ERROR,
					(errcode(ERRCODE_TRIGGERED_ACTION_EXCEPTION),
					 errmsg("applying key \"%s\" of table %s wrote %d rows",
							key, t->qualname, (int) SPI_processed)));
	}
	else
	{
		bool		done = false;

		if (cur.exists && !cur.deleted)
		{
			List	   *parts = keys_split(key, t->nkeys);

			args = palloc(sizeof(Datum) * t->nkeys);
			for (i = 0; i < t->nkeys; i++)
				args[i] = CStringGetTextDatum((char *) list_nth(parts, i));
			rc = SPI_execute_plan(ac->delete, args, NULL, false, 0);
			if (rc != SPI_OK_DELETE)
				elog(ERROR, "registry: delete failed: %s", SPI_result_code_string(rc));
			done = (SPI_processed == 1);
		}
		if (!done)
		{
			VersionState old;

			(void) tombstone_put(t->tid, khash, key, version, origin, true, &old);
			if (row_being_written(t, key))
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("registry key \"%s\" was inserted concurrently", key),
						 errdetail("A row of the key was committed or is being written since the delete looked."),
						 errhint("Retry: the delete then replaces the row if it is newer.")));
			publish_record(t, khash, key, &old, version, origin, true);
		}
	}
	publish_mode_pop(CAPTURE_MODE_APPLY_ROW);
	return APPLY_APPLIED;
}

static ArrayType *
text_array(Datum *elems, bool *nulls, int n)
{
	int			dims[1] = {n};
	int			lbs[1] = {1};

	return construct_md_array(elems, nulls, 1, dims, lbs, TEXTOID, -1, false,
							  TYPALIGN_INT);
}

/*
 * "SELECT u.a1::<type>, ..., u.v, u.o FROM unnest($1::text[], ...,
 * $n+1::bigint[], $n+2::text[]) AS u(a1, ..., v, o)": rows come in as one
 * array per column, then the versions and origins.
 */
static void
append_unnest_select(StringInfo sql, ApplyColumns *ac)
{
	int			n = ac->ncols;
	int			i;

	appendStringInfoString(sql, "SELECT ");
	for (i = 0; i < n; i++)
		appendStringInfo(sql, "u.a%d::%s, ", i + 1, column_type(ac, i));
	appendStringInfoString(sql, "u.v, u.o FROM unnest(");
	for (i = 0; i < n; i++)
		appendStringInfo(sql, "$%d::text[], ", i + 1);
	appendStringInfo(sql, "$%d::bigint[], $%d::text[]", n + 1, n + 2);
	appendStringInfoString(sql, ") AS u(");
	for (i = 0; i < n; i++)
		appendStringInfo(sql, "a%d, ", i + 1);
	appendStringInfoString(sql, "v, o)");
}

/*
 * The statement that applies many live rows at once: rows come in as one
 * text[] per column; last-writer-wins is the ON CONFLICT ... WHERE; (after
 * purges) the purge horizon filters in the SELECT.  Rows older than a
 * tombstone are left out before (apply_rows_bulk): the statement runs as
 * the table's owner, who cannot read registry.tombstones.
 */
static void
prepare_bulk(ApplyColumns *ac)
{
	RegTable   *t = ac->t;
	StringInfoData sql;
	Oid		   *argtypes;
	int			n = ac->ncols;
	int			i;

	initStringInfo(&sql);
	append_insert_head(&sql, ac, true);
	append_unnest_select(&sql, ac);
	if (t->purge_horizon > 0)
	{
		appendStringInfo(&sql, " WHERE (u.v > " INT64_FORMAT " OR EXISTS (SELECT 1 FROM ONLY %s x WHERE (",
						 (int64) t->purge_horizon, t->qualname);
		for (i = 0; i < t->nkeys; i++)
			appendStringInfo(&sql, "%sx.%s", i ? ", " : "", quote_identifier(t->keys[i].name));
		appendStringInfoString(&sql, ") = (");
		for (i = 0; i < t->nkeys; i++)
			appendStringInfo(&sql, "%su.a%d::%s", i ? ", " : "", ac->keypos[i] + 1,
							 format_type_with_typemod(t->keys[i].typid, -1));
		appendStringInfoString(&sql, ")))");
	}
	append_upsert_tail(&sql, ac);
	appendStringInfoString(&sql,
						   " WHERE EXCLUDED.registry_version > t.registry_version OR "
						   "(EXCLUDED.registry_version = t.registry_version AND "
						   "EXCLUDED.registry_origin COLLATE \"C\" > t.registry_origin COLLATE \"C\")");

	argtypes = palloc(sizeof(Oid) * (n + 2));
	for (i = 0; i < n; i++)
		argtypes[i] = TEXTARRAYOID;
	argtypes[n] = INT8ARRAYOID;
	argtypes[n + 1] = TEXTARRAYOID;
	ac->bulk = prepare_plan(sql.data, n + 2, argtypes);
}

/* What every remote row must be before anything else is looked at. */
static void
check_incoming(RegTable *t, const char *key, const char *origin, bool deleted,
			   char **values)
{
	size_t		len = strlen(key);

	if (len > (size_t) registry_max_key_length)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("registry key of table %s is too long for node \"%s\"",
						t->qualname, registry_node_name),
				 errdetail("The key is %d bytes; registry.max_key_length is %d bytes.",
						   (int) len, registry_max_key_length),
				 errhint("Set the same registry.max_key_length on every node.")));
	if (!registry_valid_node_name(origin))
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("invalid origin node name \"%s\"", origin)));
	if (!deleted && values == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("live row for key \"%s\" of table %s comes without values",
						key, t->qualname)));
}

/*
 * Check many live rows and run the clock's receive rule on each: the
 * indexes of those accepted go to taken[], the others are counted in
 * *refused_skew.  Returns how many were taken.
 */
static int
take_rows(RegTable *t, ApplyRow *rows, int n, int *taken, int *refused_skew,
		  ApplyErrorFrame *f)
{
	int			m = 0;
	int			i;

	*refused_skew = 0;
	for (i = 0; i < n; i++)
	{
		context_apply_row(f, &rows[i]);
		check_incoming(t, rows[i].key, rows[i].origin, false, rows[i].values);
		if (!hlc_update(rows[i].version, NULL))
			(*refused_skew)++;
		else
			taken[m++] = i;
	}
	context_row(f, NULL, 0, NULL, false, 0);
	return m;
}

/*
 * The statement arguments of rows[taken[0..m-1]]: one text[] per column,
 * then the versions (bigint[]) and origins (text[]).  Each row's key is
 * checked against its key columns.
 */
static void
row_arrays(ApplyColumns *ac, ApplyRow *rows, int *taken, int m, Datum *args,
		   ApplyErrorFrame *f)
{
	int			nc = ac->ncols;
	Datum	   *vals = palloc(sizeof(Datum) * m);
	bool	   *nulls = palloc(sizeof(bool) * m);
	int			dims[1] = {m};
	int			lbs[1] = {1};
	int			i,
				c;

	for (i = 0; i < m; i++)
	{
		context_apply_row(f, &rows[taken[i]]);
		check_row_key(ac, rows[taken[i]].key, rows[taken[i]].values);
	}
	context_row(f, NULL, 0, NULL, false, 0);
	for (c = 0; c < nc; c++)
	{
		for (i = 0; i < m; i++)
		{
			char	   *v = rows[taken[i]].values[c];

			nulls[i] = (v == NULL);
			vals[i] = v ? CStringGetTextDatum(v) : (Datum) 0;
		}
		args[c] = PointerGetDatum(text_array(vals, nulls, m));
	}
	for (i = 0; i < m; i++)
		vals[i] = Int64GetDatum((int64) rows[taken[i]].version);
	args[nc] = PointerGetDatum(construct_md_array(vals, NULL, 1, dims, lbs,
												  INT8OID, 8, true, TYPALIGN_DOUBLE));
	for (i = 0; i < m; i++)
		vals[i] = CStringGetTextDatum(rows[taken[i]].origin);
	args[nc + 1] = PointerGetDatum(text_array(vals, NULL, m));
}

/* Rows handed to table_multi_insert() at a time: a few heap pages. */
#define DIRECT_BATCH	128

/*
 * Whether rows of rel may be written without the executor's INSERT, and
 * still store and check exactly what the INSERT statement would.  The
 * apply path runs as session_replication_role = replica, so only
 * triggers enabled ALWAYS or REPLICA would fire: apart from our own
 * (which do nothing for fresh rows), any such trigger, a deferrable
 * constraint (checked by a trigger), a rule or a generated column sends
 * the rows through the statement instead.
 */
static bool
direct_insert_possible(Relation rel)
{
	TriggerDesc *trigdesc = rel->trigdesc;
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;

	if (rel->rd_rules != NULL || rel->rd_rel->relkind != RELKIND_RELATION)
		return false;
	if (desc->constr && desc->constr->has_generated_stored)
		return false;
	for (i = 0; trigdesc && i < trigdesc->numtriggers; i++)
	{
		Trigger    *tg = &trigdesc->triggers[i];

		if (strcmp(tg->tgname, "registry_stamp") == 0 ||
			strcmp(tg->tgname, "registry_capture") == 0 ||
			strcmp(tg->tgname, "registry_truncate") == 0)
			continue;
		if (tg->tgenabled == TRIGGER_FIRES_ALWAYS ||
			tg->tgenabled == TRIGGER_FIRES_ON_REPLICA || tg->tgdeferrable)
			return false;
	}
	return true;
}

/*
 * Write fresh rows (rows[taken[0..m-1]]) straight into the table and its
 * indexes, in batches, the way COPY FROM does: no statement to plan, no
 * text arrays to build and unnest, no trigger calls, and a bulk-write
 * buffer ring so that pulling a large table does not push its indexes
 * out of shared buffers.  Values go through their types' input functions
 * (domains check their constraints there), CHECK and NOT NULL
 * constraints are checked, and a key already present raises the unique
 * violation the caller falls back on.  The row's key is recomputed from
 * the parsed key columns and must be the one the peer sent.
 */
static void
insert_fresh_direct(ApplyColumns *ac, Relation rel, ApplyRow *rows,
					int *taken, int m, ApplyErrorFrame *f)
{
	RegTable   *t = ac->t;
	TupleDesc	desc = RelationGetDescr(rel);
	EState	   *estate = CreateExecutorState();
	ResultRelInfo *rri = makeNode(ResultRelInfo);
	RangeTblEntry *rte = makeNode(RangeTblEntry);
	BulkInsertState bistate = GetBulkInsertState();
	CommandId	cid = GetCurrentCommandId(true);
	MemoryContext batchcxt;
	MemoryContext oldcxt;
	FmgrInfo   *infuncs = palloc(sizeof(FmgrInfo) * Max(ac->ncols, 1));
	TupleTableSlot **slots = palloc(sizeof(TupleTableSlot *) * DIRECT_BATCH);
	Datum		origin_datum = (Datum) 0;
	const char *origin_text = NULL;
	int			nslots = 0;
	int			nbuf = 0;
	int			i,
				c;

	for (c = 0; c < ac->ncols; c++)
		fmgr_info(t->cols[ac->local[c]].infunc, &infuncs[c]);

	rte->rtekind = RTE_RELATION;
	rte->relid = RelationGetRelid(rel);
	rte->relkind = rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	ExecInitRangeTable(estate, list_make1(rte));
	InitResultRelInfo(rri, rel, 1, NULL, 0);
	ExecOpenIndices(rri, false);
	estate->es_output_cid = cid;
	batchcxt = AllocSetContextCreate(CurrentMemoryContext, "registry fresh rows",
									 ALLOCSET_DEFAULT_SIZES);

	for (i = 0; i <= m; i++)
	{
		TupleTableSlot *slot;
		ApplyRow   *r;
		Datum		kv[INDEX_MAX_KEYS];
		bool		kn[INDEX_MAX_KEYS];
		char	   *rowkey;

		if (nbuf == DIRECT_BATCH || (i == m && nbuf > 0))
		{
			int			j;

			context_apply_row(f, &rows[taken[i - nbuf]]);
			f->nrows = nbuf;
			table_multi_insert(rel, slots, nbuf, cid, 0, bistate);
			for (j = 0; j < nbuf; j++)
			{
				List	   *recheck;

				/* slots[j] holds the row taken nbuf - j rows before i */
				context_apply_row(f, &rows[taken[i - nbuf + j]]);
				ResetPerTupleExprContext(estate);
				recheck = ExecInsertIndexTuples(rri, slots[j], estate, false,
												false, NULL, NIL);
				if (recheck != NIL)
					elog(ERROR, "registry: deferred uniqueness check on %s",
						 t->qualname);
			}
			nbuf = 0;
			MemoryContextReset(batchcxt);
		}
		if (i == m)
			break;

		CHECK_FOR_INTERRUPTS();
		r = &rows[taken[i]];
		context_apply_row(f, r);
		/* a page of rows usually shares one origin */
		if (origin_text == NULL || strcmp(origin_text, r->origin) != 0)
		{
			origin_text = r->origin;
			origin_datum = CStringGetTextDatum(r->origin);
		}
		if (nslots <= nbuf)
			slots[nslots++] = table_slot_create(rel, NULL);
		slot = slots[nbuf];
		ExecClearTuple(slot);
		memset(slot->tts_isnull, true, sizeof(bool) * desc->natts);
		oldcxt = MemoryContextSwitchTo(batchcxt);
		for (c = 0; c < ac->ncols; c++)
		{
			RowColumn  *col = &t->cols[ac->local[c]];
			int			a = col->attnum - 1;
			char	   *v = r->values[c];

			slot->tts_values[a] = InputFunctionCall(&infuncs[c], v, col->ioparam,
													col->typmod);
			slot->tts_isnull[a] = (v == NULL);
		}
		for (c = 0; c < t->nkeys; c++)
		{
			int			a = t->keys[c].attnum - 1;

			kv[c] = slot->tts_values[a];
			kn[c] = slot->tts_isnull[a];
		}
		rowkey = keys_encode(t->keys, t->nkeys, kv, kn, t->qualname);
		if (strcmp(rowkey, r->key) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("row for key \"%s\" of table %s has key \"%s\"",
							r->key, t->qualname, rowkey)));
		slot->tts_values[t->verattnum - 1] = Int64GetDatum((int64) r->version);
		slot->tts_isnull[t->verattnum - 1] = false;
		slot->tts_values[t->orgattnum - 1] = origin_datum;
		slot->tts_isnull[t->orgattnum - 1] = false;
		MemoryContextSwitchTo(oldcxt);
		ExecStoreVirtualTuple(slot);
		if (desc->constr)
			ExecConstraints(rri, slot, estate);
		nbuf++;
	}

	context_row(f, NULL, 0, NULL, false, 0);
	for (i = 0; i < nslots; i++)
		ExecDropSingleTupleTableSlot(slots[i]);
	FreeBulkInsertState(bistate);
	table_finish_bulk_insert(rel, 0);
	ExecCloseIndices(rri);
	ExecResetTupleTable(estate->es_tupleTable, false);
	FreeExecutorState(estate);
	MemoryContextDelete(batchcxt);
	CommandCounterIncrement();
}

/*
 * Apply many live rows of keys this node has no row for (a whole table
 * pulled into an empty one): written directly (insert_fresh_direct), with
 * no conflict checks, and recorded here as one bulk change.  When
 * something else must see the rows (a user trigger, a rule, a deferrable
 * constraint) they go through apply_rows_bulk() instead.  A concurrent
 * local write of one of the keys makes the insert fail (unique violation)
 * or is found among the tombstones (serialization failure): the caller
 * then applies the batch with apply_rows_bulk().
 */
int
apply_rows_fresh(ApplyColumns *ac, ApplyRow *rows, int n, int *refused_skew)
{
	ApplyErrorFrame f;
	int			m;

	context_push(&f, ac->t);
	m = rows_fresh(ac, rows, n, refused_skew, &f);
	context_pop(&f);
	return m;
}

static int
rows_fresh(ApplyColumns *ac, ApplyRow *rows, int n, int *refused_skew,
		   ApplyErrorFrame *f)
{
	RegTable   *t = ac->t;
	int		   *taken;
	int			m = 0;
	int			i;
	int			rc;
	int64		live,
				tombs;
	HTAB	   *old_tombs = NULL;
	Relation	rel;
	uint32	   *khash;
	RegistryOwnerSave owner;

	*refused_skew = 0;
	if (n == 0)
		return 0;

	/*
	 * Something else must see the rows (a user trigger enabled ALWAYS or
	 * REPLICA, a rule, a deferrable constraint): they go through the bulk
	 * statement, whose rows alone keep their versions, and user code that
	 * runs meanwhile writes as anyone else does.
	 */
	rel = table_open(t->relid, RowExclusiveLock);
	if (!direct_insert_possible(rel))
	{
		table_close(rel, NoLock);
		return rows_bulk(ac, rows, n, refused_skew, f);
	}

	taken = palloc(sizeof(int) * n);
	m = take_rows(t, rows, n, taken, refused_skew, f);
	if (m == 0)
	{
		table_close(rel, NoLock);
		return 0;
	}
	publish_mode_push(&(CaptureMode) {.kind = CAPTURE_MODE_APPLY_FRESH, .table = t});
	insert_fresh_direct(ac, rel, rows, taken, m, f);
	table_close(rel, NoLock);

	khash = palloc(sizeof(uint32) * m);
	for (i = 0; i < m; i++)
		khash[i] = keys_hash(rows[taken[i]].key, strlen(rows[taken[i]].key));

	/*
	 * A key deleted here meanwhile (inserted and deleted by a local
	 * transaction since the pull began) has a tombstone: an older one goes,
	 * a newer one means the row must not be here.
	 */
	if (digest_table_counts(t->tid, &live, &tombs) && tombs > 0)
	{
		HASHCTL		ctl;
		Oid			argt[3] = {INT4OID, INT4ARRAYOID, TEXTARRAYOID};
		Datum		dargs[3];
		Datum	   *kh = palloc(sizeof(Datum) * m);
		Datum	   *ks = palloc(sizeof(Datum) * m);
		int			dims[1] = {m};
		int			lbs[1] = {1};

		for (i = 0; i < m; i++)
		{
			kh[i] = Int32GetDatum(khash_to_int4(khash[i]));
			ks[i] = CStringGetTextDatum(rows[taken[i]].key);
		}
		dargs[0] = Int32GetDatum(t->tid);
		dargs[1] = PointerGetDatum(construct_md_array(kh, NULL, 1, dims, lbs, INT4OID,
													  4, true, TYPALIGN_INT));
		dargs[2] = PointerGetDatum(text_array(ks, NULL, m));
		/* our own table, which the table owner applying may not touch */
		registry_owner_begin(&owner);
		rc = SPI_execute_with_args("DELETE FROM registry.tombstones tb "
								   "USING unnest($2, $3) AS u(kh, k) "
								   "WHERE tb.tid = $1 AND tb.khash = u.kh AND tb.key = u.k "
								   "RETURNING tb.key, tb.version, tb.origin",
								   3, argt, dargs, NULL, false, 0);
		registry_owner_end(&owner);
		if (rc != SPI_OK_DELETE_RETURNING)
			elog(ERROR, "registry: could not check the tombstones of %s", t->qualname);
		if (SPI_processed > 0)
		{
			ctl.keysize = REGISTRY_MAX_KEY_BUF;
			ctl.entrysize = REGISTRY_MAX_KEY_BUF + sizeof(VersionState);
			ctl.hcxt = CurrentMemoryContext;
			old_tombs = hash_create("registry fresh tombstones", SPI_processed, &ctl,
									HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
			for (uint64 j = 0; j < SPI_processed; j++)
			{
				bool		isnull;
				char	   *k = SPI_getvalue(SPI_tuptable->vals[j], SPI_tuptable->tupdesc, 1);
				char	   *entry = hash_search(old_tombs, k, HASH_ENTER, NULL);
				VersionState *st = (VersionState *) (entry + REGISTRY_MAX_KEY_BUF);

				st->exists = true;
				st->deleted = true;
				st->version = (RegVersion) DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[j],
																	   SPI_tuptable->tupdesc, 2, &isnull));
				strlcpy(st->origin, SPI_getvalue(SPI_tuptable->vals[j], SPI_tuptable->tupdesc, 3),
						sizeof(st->origin));
			}
		}
	}

	for (i = 0; i < m; i++)
	{
		ApplyRow   *r = &rows[taken[i]];
		VersionState none;
		VersionState *old = &none;

		memset(&none, 0, sizeof(none));
		context_apply_row(f, r);
		if (old_tombs)
		{
			char	   *entry = hash_search(old_tombs, r->key, HASH_FIND, NULL);

			if (entry)
			{
				old = (VersionState *) (entry + REGISTRY_MAX_KEY_BUF);
				if (!version_greater(r->version, r->origin, old->version, old->origin))
					ereport(ERROR,
							(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
							 errmsg("registry key \"%s\" was deleted concurrently with a newer version",
									r->key)));
			}
		}
		publish_record(t, khash[i], r->key, old, r->version, r->origin, false);
	}
	context_row(f, NULL, 0, NULL, false, 0);
	publish_mode_pop(CAPTURE_MODE_APPLY_FRESH);
	return m;
}

/*
 * Leave out of taken[0..m-1] the rows a tombstone here is at least as new
 * as; returns how many are left.  A tombstone written after this look
 * makes the capture trigger refuse the insert (a serialization failure,
 * and the batch is retried), so the look need not hold anything.
 */
static int
drop_deleted_rows(RegTable *t, ApplyRow *rows, int *taken, int m,
				  ApplyErrorFrame *f)
{
	int64		live,
				tombs;
	Snapshot	snap;
	int			kept = 0;
	int			i;

	if (!digest_table_counts(t->tid, &live, &tombs) || tombs == 0)
		return m;
	snap = RegisterSnapshot(GetLatestSnapshot());
	for (i = 0; i < m; i++)
	{
		ApplyRow   *r = &rows[taken[i]];
		VersionState st;

		CHECK_FOR_INTERRUPTS();
		context_apply_row(f, r);
		if (tombstone_get(t->tid, keys_hash(r->key, strlen(r->key)), r->key,
						  snap, &st) &&
			!version_greater(r->version, r->origin, st.version, st.origin))
			continue;
		taken[kept++] = taken[i];
	}
	context_row(f, NULL, 0, NULL, false, 0);
	UnregisterSnapshot(snap);
	return kept;
}

/*
 * Apply many live rows in one statement (anti-entropy catch-up).  Keys
 * must be distinct.  Rows not newer than the local state are skipped:
 * those older than a tombstone here before, those older than the row by
 * the statement itself.  Returns how many rows were written; rows refused
 * by the clock's receive rule are counted in *refused_skew.  Published as
 * one bulk change of the table.
 */
int
apply_rows_bulk(ApplyColumns *ac, ApplyRow *rows, int n, int *refused_skew)
{
	ApplyErrorFrame f;
	int			m;

	context_push(&f, ac->t);
	m = rows_bulk(ac, rows, n, refused_skew, &f);
	context_pop(&f);
	return m;
}

static int
rows_bulk(ApplyColumns *ac, ApplyRow *rows, int n, int *refused_skew,
		  ApplyErrorFrame *f)
{
	RegTable   *t = ac->t;
	int			nc = ac->ncols;
	Datum	   *args;
	int		   *taken;
	int			m;
	int			rc;

	*refused_skew = 0;
	if (n == 0)
		return 0;
	Assert(ac->bulk != NULL);
	taken = palloc(sizeof(int) * n);
	m = take_rows(t, rows, n, taken, refused_skew, f);
	m = drop_deleted_rows(t, rows, taken, m, f);
	if (m == 0)
		return 0;

	args = palloc(sizeof(Datum) * (nc + 2));
	row_arrays(ac, rows, taken, m, args, f);

	publish_mode_push(&(CaptureMode) {.kind = CAPTURE_MODE_APPLY_BULK, .table = t,
					  .rows = rows, .taken = taken, .nrows = m});
	/* user code the statement runs sees one of m rows: name the first */
	context_row(f, rows[taken[0]].key, rows[taken[0]].version,
				rows[taken[0]].origin, false, m);
	rc = SPI_execute_plan(ac->bulk, args, NULL, false, 0);
	context_row(f, NULL, 0, NULL, false, 0);
	publish_mode_pop(CAPTURE_MODE_APPLY_BULK);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "registry: bulk apply failed: %s", SPI_result_code_string(rc));
	return (int) SPI_processed;
}

/*
 * Session state for applying: SPI, the canonical settings in which values
 * travel, and session_replication_role = replica.  Returns the GUC nest
 * level to pass to apply_end().
 */
int
apply_begin(void)
{
	int			nest;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "registry: SPI_connect failed");
	if (apply_session_ready)
		return -1;
	keys_canonical_gucs_push(&nest);

	/*
	 * Replica mode (user triggers and foreign keys off, as in logical
	 * replication) is for whom PostgreSQL lets set it: the sync worker, a
	 * superuser.  registry.apply_row() by anyone else writes with the
	 * table's constraints and triggers in force, as their own INSERT
	 * would: a foreign key to a table they do not own still holds.
	 */
	if (superuser())
		(void) set_config_option("session_replication_role", "replica",
								 PGC_SUSET, PGC_S_SESSION, GUC_ACTION_SAVE,
								 true, 0, false);
	return nest;
}

void
apply_end(int nest)
{
	publish_mode_pop(CAPTURE_MODE_APPLY_ROW);
	if (nest >= 0)
		keys_canonical_gucs_pop(nest);
	SPI_finish();
}

/*
 * User code on a registry table runs while rows are applied: triggers
 * enabled ALWAYS or REPLICA, CHECK constraints, defaults, domain checks,
 * index expressions and predicates.  It runs as the table's owner, in a
 * security-restricted operation, never as the role that applies (the sync
 * worker is the bootstrap superuser): an owner gains no rights through
 * the registry, as with PostgreSQL 16's apply worker.  Settings user code
 * changed are undone at the end, whatever it did.  An ERROR undoes all of
 * it with the transaction.
 */
static Oid
table_owner(Oid relid)
{
	HeapTuple	tup;
	Oid			owner;

	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "registry: cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

void
apply_as_owner_begin(RegTable *t, RegistryOwnerSave *save)
{
	registry_become(table_owner(t->relid), SECURITY_RESTRICTED_OPERATION, save);
}

void
apply_as_owner_end(const RegistryOwnerSave *save)
{
	registry_unbecome(save);
}

/*
 * For a process that only applies (the sync worker): set the session up
 * once, so that each batch need not.
 */
void
apply_prepare_session(void)
{
	keys_canonical_gucs_set_session();
	SetConfigOption("session_replication_role", "replica", PGC_SUSET, PGC_S_OVERRIDE);
	/* what is applied here can be pulled again after a crash */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	apply_session_ready = true;
}

/*
 * registry.apply_row(tbl regclass, key text, version bigint, origin text,
 *					  deleted boolean, row jsonb) returns text
 *
 * Apply one row as if it came from node origin: 'applied', 'skipped'
 * (not newer than the stored version) or an error.  The row's columns are
 * taken from the JSON object by name (a JSON null or a missing member is
 * NULL).  Exists for tests and repairs; peers use the same code path.
 */
Datum
registry_apply_row(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *key;
	int64		version;
	char	   *origin;
	bool		deleted;
	Jsonb	   *row;
	RegTable   *t;
	ApplyColumns *ac;
	char	  **names;
	char	  **types;
	char	  **values = NULL;
	ApplyResult r;
	RegistryOwnerSave identity;
	bool		as_owner;
	int			nest;
	int			i;
	char		peer[REGISTRY_NAME_LEN];

	registry_check_preloaded();
	registry_check_admin();
	registry_check_not_null(fcinfo, 0, "tbl");
	registry_check_not_null(fcinfo, 1, "key");
	registry_check_not_null(fcinfo, 2, "version");
	registry_check_not_null(fcinfo, 3, "origin");
	registry_check_not_null(fcinfo, 4, "deleted");
	relid = PG_GETARG_OID(0);
	key = text_to_cstring(PG_GETARG_TEXT_PP(1));
	version = PG_GETARG_INT64(2);
	origin = text_to_cstring(PG_GETARG_TEXT_PP(3));
	deleted = PG_GETARG_BOOL(4);
	row = PG_ARGISNULL(5) ? NULL : PG_GETARG_JSONB_P(5);
	if (version <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("version must be positive")));

	/*
	 * Applying may insert, update or delete the key (a tombstone for a key
	 * with no row is a delete that replicates): the caller must be allowed
	 * all three, checked before anything is looked at or written.
	 */
	registry_check_table_privilege(relid, ACL_INSERT | ACL_UPDATE | ACL_DELETE,
								   "registry.apply_row()");
	/* locked before its definition is read, as the sync worker does */
	LockRelationOid(relid, RowExclusiveLock);
	t = regtable_by_relid(relid, false);

	names = palloc(sizeof(char *) * Max(t->ncols, 1));
	types = palloc(sizeof(char *) * Max(t->ncols, 1));
	for (i = 0; i < t->ncols; i++)
	{
		names[i] = t->cols[i].name;
		types[i] = t->cols[i].typname;
	}
	if (!deleted)
	{
		if (row == NULL || !JB_ROOT_IS_OBJECT(row))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("a live row needs its columns as a JSON object")));
		values = palloc0(sizeof(char *) * Max(t->ncols, 1));
		for (i = 0; i < t->ncols; i++)
		{
			JsonbValue	k;
			JsonbValue *v;

			k.type = jbvString;
			k.val.string.val = names[i];
			k.val.string.len = strlen(names[i]);
			v = findJsonbValueFromContainer(&row->root, JB_FOBJECT, &k);
			if (v == NULL || v->type == jbvNull)
				values[i] = NULL;
			else if (v->type == jbvString)
				values[i] = pnstrdup(v->val.string.val, v->val.string.len);
			else if (v->type == jbvNumeric)
				values[i] = DatumGetCString(DirectFunctionCall1(numeric_out,
																NumericGetDatum(v->val.numeric)));
			else if (v->type == jbvBool)
				values[i] = pstrdup(v->val.boolean ? "true" : "false");
			else
				values[i] = JsonbToCString(NULL, v->val.binary.data, v->val.binary.len);
		}
	}

	/*
	 * As the sync worker does, user code on the table runs as its owner --
	 * for a caller who has the owner's rights anyway.  Any other caller
	 * writes as itself, as its own INSERT or DELETE would: row-level
	 * security applies to it, and the owner's code does not run with the
	 * owner's rights within reach of the caller's temporary objects.
	 */
	as_owner = has_privs_of_role(GetUserId(), table_owner(relid));
	nest = apply_begin();
	if (as_owner)
		apply_as_owner_begin(t, &identity);
	ac = apply_map_columns(t, t->ncols, names, types);

	/*
	 * No peer: errors are the caller's own, with no apply context.  Called
	 * by user code while a peer's row is applied, the peer is named again
	 * after.
	 */
	strlcpy(peer, apply_peer, sizeof(peer));
	apply_set_peer(NULL);
	r = apply_row(ac, key, (RegVersion) version, origin, deleted, values);
	apply_set_peer(peer);
	if (as_owner)
		apply_as_owner_end(&identity);
	apply_end(nest);

	if (r == APPLY_REFUSED_PURGED)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("row \"%s\" of %s is older than the tombstones purged on node \"%s\"",
						key, t->qualname, registry_node_name),
				 errdetail("It may have been deleted; it is not brought back.")));
	if (r == APPLY_REFUSED_SKEW)
	{
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("version " INT64_FORMAT " from node \"%s\" is too far ahead of the local clock",
						version, origin),
				 errdetail("Versions above " UINT64_FORMAT " (registry.max_clock_skew = %d ms ahead) are refused.",
						   hlc_max_acceptable(), registry_max_clock_skew_ms)));
	}
	PG_RETURN_TEXT_P(cstring_to_text(r == APPLY_APPLIED ? "applied" : "skipped"));
}
