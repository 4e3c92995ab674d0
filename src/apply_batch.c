/*-------------------------------------------------------------------------
 *
 * apply_batch.c
 *	  Applying one table's rows as a peer sent them: routing live rows of
 *	  a batch to one bulk statement (or one into an empty table) and the
 *	  rest to apply_row(), in one transaction, as the table's owner and
 *	  within registry.query_timeout; retried when a local write raced with
 *	  it.  The prepared apply statements are kept across batches, per table
 *	  and column list.
 *
 *	  Also the sync worker's transactions, and its recovery after a caught
 *	  ERROR, which the sync files use for their own work.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"

#include "apply_batch.h"
#include "worker_slots.h"
#include "registration.h"

/*
 * Prepared apply statements, per table and peer column list, kept across
 * batches; an entry is dropped when the table's definition changes
 * (generation) or a batch using it fails.
 */
typedef struct PlanCacheEntry
{
	MemoryContext cxt;			/* holds the entry and everything of ac */
	char	   *table;
	char	   *signature;
	uint64		generation;
	ApplyColumns *ac;
} PlanCacheEntry;

static List *plan_cache = NIL;
static MemoryContext cache_parent = NULL;	/* the entries' contexts go under it */

/* Where the prepared statements live: a context of the worker's life. */
void
apply_batch_init(MemoryContext parent)
{
	cache_parent = parent;
}

/* ---- the worker's transactions ---- */

/*
 * The worker's transactions.  Committing leaves TopMemoryContext current;
 * the caller's context is restored, so what it allocates afterwards is
 * freed with it (the loop's context, a round's) instead of accumulating.
 */
MemoryContext
apply_batch_xact_begin(void)
{
	MemoryContext cxt = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	worker_xact_started();
	PushActiveSnapshot(GetTransactionSnapshot());
	return cxt;
}

void
apply_batch_xact_end(MemoryContext cxt)
{
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
}

/* An error as one line for peer_status: its message and its detail. */
char *
apply_batch_error_text(ErrorData *edata)
{
	if (edata->detail && edata->detail[0])
		return psprintf("%s: %s", edata->message, edata->detail);
	return pstrdup(edata->message);
}

/*
 * After an ERROR caught in the worker: the error's data, copied into cxt,
 * and everything the failed work held let go (its transaction, LWLocks
 * taken outside one, the timeout and session-level advisory locks of an
 * apply), so that the worker goes on with its other peers.
 */
ErrorData *
apply_batch_recover(MemoryContext cxt)
{
	ErrorData  *edata;

	HOLD_INTERRUPTS();
	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	disable_timeout(STATEMENT_TIMEOUT, false);
	LWLockReleaseAll();
	AbortOutOfAnyTransaction();
	LockReleaseSession(USER_LOCKMETHOD);
	MemoryContextSwitchTo(cxt);
	RESUME_INTERRUPTS();
	return edata;
}

/* ---- prepared statements ---- */

static void
plan_cache_drop(const char *table)
{
	ListCell   *lc;

	foreach(lc, plan_cache)
	{
		PlanCacheEntry *e = lfirst(lc);

		if (strcmp(e->table, table) == 0)
		{
			apply_free_columns(e->ac);
			plan_cache = foreach_delete_current(plan_cache, lc);
			MemoryContextDelete(e->cxt);
		}
	}
}

/* The apply statements for t and this column list (within SPI). */
static ApplyColumns *
cached_columns(RegTable *t, int ncols, char **names, char **types)
{
	StringInfoData sig;
	ListCell   *lc;
	PlanCacheEntry *e;
	MemoryContext cxt;
	MemoryContext old;
	int			i;

	/*
	 * Names and types are the peer's, and may hold any character: each is
	 * length-prefixed, after the count, so that no two column lists share
	 * a signature (a list of one column named "a text,b" must not find the
	 * statements of (a text, b text), which read two values per row).
	 */
	initStringInfo(&sig);
	appendStringInfo(&sig, "%d", ncols);
	for (i = 0; i < ncols; i++)
		appendStringInfo(&sig, "|%zu:%s|%zu:%s", strlen(names[i]), names[i],
						 strlen(types[i]), types[i]);
	foreach(lc, plan_cache)
	{
		e = lfirst(lc);
		if (strcmp(e->table, t->qualname) == 0 && e->generation == t->generation &&
			strcmp(e->signature, sig.data) == 0)
		{
			if (e->ac->ncols != ncols)
				elog(ERROR, "registry: apply statements for %d columns found for %d",
					 e->ac->ncols, ncols);
			e->ac->t = t;
			return e->ac;
		}
	}
	plan_cache_drop(t->qualname);

	/*
	 * Built in a context of its own under the transaction's, so that an
	 * incompatible column list (an ERROR) leaves nothing behind; kept by
	 * moving it under sync_conn_worker_cxt once complete.
	 */
	cxt = AllocSetContextCreate(CurrentMemoryContext, "registry apply statements",
								ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(cxt);
	e = palloc(sizeof(PlanCacheEntry));
	e->cxt = cxt;
	e->table = pstrdup(t->qualname);
	e->signature = pstrdup(sig.data);
	e->generation = t->generation;
	e->ac = apply_map_columns(t, ncols, names, types);
	apply_keep_columns(e->ac);
	MemoryContextSetParent(cxt, cache_parent);
	MemoryContextSwitchTo(cache_parent);
	plan_cache = lappend(plan_cache, e);
	MemoryContextSwitchTo(old);
	return e->ac;
}

/* ---- batches ---- */

static void
apply_batch_once(ApplyBatch *b, ApplyBatchStats *s)
{
	MemoryContext cxt;
	RegTable   *t;
	ApplyColumns *ac;
	int			nest;
	int			i;
	ApplyRow   *live = NULL;
	int			nlive = 0;
	RegistryOwnerSave identity;
	char		timeout[16];

	s->applied = s->skipped = s->refused_skew = s->refused_purged = 0;
	cxt = apply_batch_xact_begin();
	nest = apply_begin();

	/*
	 * Every lock wait of the batch, the table's own lock first, within
	 * registry.query_timeout: a local session holding it (LOCK TABLE, a TRUNCATE queued
	 * behind a peer's open transaction) must not hold the worker, and
	 * every peer and table with it, for as long as it likes.
	 */
	snprintf(timeout, sizeof(timeout), "%d", registry_query_timeout_ms);
	(void) set_config_option("lock_timeout", timeout, PGC_SUSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	t = regtable_by_name(b->table->name, true);
	if (t == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table %s is not a registry table on this node", b->table->name)));
	if (b->fresh && b->defer_khash && !t->khash_deferred)
	{
		registration_defer_khash(t);
		s->khash_deferred = true;
		t = regtable_by_name(b->table->name, false);
	}
	/*
	 * From here on user code may run: as the table's owner, and within
	 * registry.query_timeout (one statement; each lock wait, by the
	 * lock_timeout set above), so that a trigger that sleeps or waits
	 * cannot hold the worker, and every peer with it.
	 */
	apply_as_owner_begin(t, &identity);
	enable_timeout_after(STATEMENT_TIMEOUT, registry_query_timeout_ms);
	if (b->table->ncols > 0)
		ac = cached_columns(t, b->table->ncols, b->table->colnames,
							b->table->coltypes);
	else
	{
		/* an answer without rows (bucket entries): only tombstones apply */
		char	  **names = palloc(sizeof(char *) * Max(t->ncols, 1));
		char	  **types = palloc(sizeof(char *) * Max(t->ncols, 1));

		for (i = 0; i < t->ncols; i++)
		{
			names[i] = t->cols[i].name;
			types[i] = t->cols[i].typname;
		}
		ac = cached_columns(t, t->ncols, names, types);
	}
	if (b->bulk)
		live = palloc(sizeof(ApplyRow) * Max(b->nrows, 1));
	for (i = 0; i < b->nrows; i++)
	{
		MsgRow	   *r = b->rows[i];
		ApplyResult res;

		CHECK_FOR_INTERRUPTS();
		if (r->state != ROW_LIVE && r->state != ROW_TOMBSTONE)
			continue;
		if (b->bulk && r->state == ROW_LIVE && r->version <= t->purge_horizon)
		{
			/*
			 * Possibly deleted here, its tombstone purged since: only a
			 * per-key look can tell, and a table we had nothing of
			 * (fresh) cannot have the row.
			 */
			if (b->fresh)
			{
				s->refused_purged++;
				continue;
			}
		}
		else if (b->bulk && r->state == ROW_LIVE)
		{
			live[nlive].key = r->key;
			live[nlive].version = r->version;
			live[nlive].origin = r->origin;
			live[nlive].values = r->values;
			nlive++;
			continue;
		}
		res = apply_row(ac, r->key, r->version, r->origin,
						r->state == ROW_TOMBSTONE, r->values);
		if (res == APPLY_APPLIED)
			s->applied++;
		else if (res == APPLY_SKIPPED_OLDER)
			s->skipped++;
		else if (res == APPLY_REFUSED_SKEW)
			s->refused_skew++;
		else
			s->refused_purged++;
	}
	if (nlive > 0)
	{
		int			skew;
		int			written = b->fresh ?
			apply_rows_fresh(ac, live, nlive, &skew) :
			apply_rows_bulk(ac, live, nlive, &skew);

		s->applied += written;
		s->refused_skew += skew;
		s->skipped += nlive - written - skew;
	}
	disable_timeout(STATEMENT_TIMEOUT, false);
	apply_as_owner_end(&identity);
	apply_end(nest);
	apply_batch_xact_end(cxt);
	/* advisory locks user code took for the session are not the worker's */
	LockReleaseSession(USER_LOCKMETHOD);
}


/* One attempt; an ERROR is caught and handed back (sqlstate, message). */
static bool
apply_batch_guarded(ApplyBatch *b, ApplyBatchStats *s)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile bool ok = true;

	s->sqlstate = 0;
	s->message = NULL;
	s->context = NULL;
	PG_TRY();
	{
		apply_batch_once(b, s);
	}
	PG_CATCH();
	{
		ErrorData  *edata = apply_batch_recover(oldcxt);

		s->sqlstate = edata->sqlerrcode;
		s->message = apply_batch_error_text(edata);
		s->context = edata->context ? pstrdup(edata->context) : NULL;
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/*
 * Apply one table's rows; retried when a local write raced with it.  False
 * when it failed: stats says why (message NULL after repeated races).
 */
bool
apply_batch_rows(ApplyBatch *b, ApplyBatchStats *s)
{
	int			attempt;

	memset(s, 0, sizeof(ApplyBatchStats));
	for (attempt = 0; attempt < 5; attempt++)
	{
		if (apply_batch_guarded(b, s))
			return true;
		if (b->fresh && (s->sqlstate == ERRCODE_UNIQUE_VIOLATION ||
						 s->sqlstate == ERRCODE_T_R_SERIALIZATION_FAILURE))
		{
			/* a local write of one of the keys: apply row by row instead */
			b->fresh = false;
			continue;
		}
		if (s->sqlstate != ERRCODE_T_R_SERIALIZATION_FAILURE)
		{
			/* perhaps the table changed under its statements */
			plan_cache_drop(b->table->name ? b->table->name : "");
			break;
		}
	}
	if (attempt == 5)
		s->message = NULL;
	return false;
}
