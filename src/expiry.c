/*-------------------------------------------------------------------------
 *
 * expiry.c
 *	  Expiring the rows of ephemeral registry tables, in the maintenance
 *	  worker, every registry.expiry_interval:
 *
 *	  - adoption: every row this node owns (registry_origin is this node)
 *		without a lease gets a full TTL -- after a start, an eviction, a
 *		bulk change of the table;
 *	  - the owner's expiry: rows whose lease here ran out (or whose session
 *		ended one TTL ago) are deleted as ordinary local deletes, with the
 *		reason "expired" in the change log and the notifications;
 *	  - owner failure: the rows owned by a peer this node has had no
 *		successful contact with for registry.owner_timeout are deleted
 *		here, the same way -- but only while this node reaches a majority
 *		of its peers (self-preservation: a node cut off from most of the
 *		mesh is probably the one that is cut off);
 *	  - the cap: at most registry.expiry_cap rows of a table expire per
 *		registry.expiry_window, the rest wait;
 *	  - the stash (lease_stash.c) is purged of rows too old to come back.
 *
 * Only direct peers are judged: a node knows when it last heard from the
 * nodes it pulls from, and nothing of nodes further away.  In a line
 * A - B - C, B expires A's rows when A goes quiet and C receives B's
 * deletes; C never expires A's rows itself.
 *
 * Deletes go in batches of EXPIRY_BATCH rows, one transaction each, as the
 * table's owner (user triggers run with no more rights than the owner's):
 * a mass expiry holds any row lock for one batch at most.  A delete
 * re-checks that the row is still this owner's (a peer may have taken it
 * over meanwhile) and, for this node's own leases, that the lease is still
 * past its deadline right before the batch (a renewal may have come).
 *
 * State here is the maintenance worker's own: the cap's windows and the
 * owners whose expiry is held back.  Shared state is leases.c's.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/itemptr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/timeout.h"

#include "expiry.h"
#include "lease_stash.h"
#include "leases.h"
#include "node.h"
#include "peer_status.h"
#include "publish.h"
#include "registry.h"
#include "rows.h"
#include "worker_slots.h"

#define EXPIRY_BATCH		1000
#define STASH_PURGE_MS		10000
#define IDLE_PASS_MS		10000	/* with no ephemeral table */
#define MAX_HELD_OWNERS		64

/* An ephemeral table, as copied at the start of a run. */
typedef struct EphTable
{
	int32		tid;
	Oid			relid;
	int64		ttl_ms;
} EphTable;

/* What the expiry keeps per table: the cap's window, the retry backoff. */
typedef struct CapWindow
{
	int32		tid;
	TimestampTz start;
	int64		expired;
	bool		held_counted;	/* expiry_held_cap counted in this window */
	TimestampTz retry_at;		/* after a failure: not before */
	int			failures;		/* in a row */
} CapWindow;

static TimestampTz last_run = 0;
static bool more_work = false;
static uint64 adopted_gen = 0;
static TimestampTz last_stash_purge = 0;
static bool no_tables = false;	/* the last pass found no ephemeral table */
static TimestampTz adoption_full_at = 0;	/* the last adoption found no room */
static CapWindow *windows = NULL;
static int	nwindows = 0;

/*
 * Timed-out owners found without rows in any ephemeral table, and when:
 * not scanned for again for OWNER_RESCAN_MS (rows of theirs may still
 * arrive from other peers, so not forever).
 */
typedef struct CleanOwner
{
	char		name[REGISTRY_NAME_LEN];
	TimestampTz at;
} CleanOwner;

static CleanOwner clean_owners[MAX_HELD_OWNERS];
static int	nclean = 0;

#define OWNER_RESCAN_MS		10000

/*
 * An expiry transaction waits this long at most for a lock (a client's
 * LOCK TABLE, a row being written) and runs a statement this long at most
 * (user triggers): the maintenance worker also sends the notifications.
 */
#define EXPIRY_LOCK_TIMEOUT		"500ms"
#define EXPIRY_STATEMENT_TIMEOUT_MS 10000

/* a row whose delete failed is tried again after this long */
#define EXPIRY_RETRY_MS			10000
/* a table whose expiry failed waits 1 s, 2 s, 4 s ... up to this */
#define EXPIRY_BACKOFF_MAX_MS	60000
/*
 * A lease the cap holds back is due again at the window's end, or after
 * this long if sooner, so that a cap lifted by a reload lets it go soon.
 */
#define EXPIRY_HELD_RECHECK_MS	10000

/* owners whose rows are due but held back (counted once per episode) */
static char held_owners[MAX_HELD_OWNERS][REGISTRY_NAME_LEN];
static int	nheld = 0;

/* ---- transactions ---- */

static void
xact_begin(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	worker_xact_started();
	(void) set_config_option("lock_timeout", EXPIRY_LOCK_TIMEOUT,
							 PGC_SUSET, PGC_S_SESSION, GUC_ACTION_LOCAL,
							 true, 0, false);
	PushActiveSnapshot(GetTransactionSnapshot());
}

/*
 * After an ERROR in an expiry transaction: log it (with what was being
 * done), abort, and come back to cxt.  Interrupts (a query cancel is not
 * one the worker gets; SIGTERM exits through CHECK_FOR_INTERRUPTS) pass.
 */
static void
xact_failed(MemoryContext cxt, const char *what, const char *owner)
{
	ErrorData  *edata;

	HOLD_INTERRUPTS();
	disable_timeout(STATEMENT_TIMEOUT, false);
	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	AbortOutOfAnyTransaction();
	RESUME_INTERRUPTS();
	ereport(LOG,
			(errcode(edata->sqlerrcode),
			 owner ?
			 errmsg("registry: %s of timed-out owner \"%s\": %s", what, owner,
					edata->message) :
			 errmsg("registry: %s: %s", what, edata->message),
			 edata->detail ? errdetail_internal("%s", edata->detail) : 0,
			 edata->context ? errcontext("%s", edata->context) : 0));
	FreeErrorData(edata);
}

/*
 * After an ERROR in a row's subtransaction (the row-by-row retries): roll
 * it back and return the error, in xcxt, for the caller to log.  A cancel
 * (the statement timeout armed around user code) is thrown on.
 */
static ErrorData *
subxact_failed(MemoryContext xcxt, ResourceOwner owner)
{
	ErrorData  *edata;

	disable_timeout(STATEMENT_TIMEOUT, false);
	MemoryContextSwitchTo(xcxt);
	edata = CopyErrorData();
	FlushErrorState();
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(xcxt);
	CurrentResourceOwner = owner;
	if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
		ReThrowError(edata);
	return edata;
}

static void
xact_commit(MemoryContext cxt)
{
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
}

/* ---- the cap ---- */

static CapWindow *
window_of(int32 tid, TimestampTz now)
{
	CapWindow  *w = NULL;
	int			i;

	for (i = 0; i < nwindows; i++)
		if (windows[i].tid == tid)
			w = &windows[i];
	if (w == NULL)
	{
		windows = windows == NULL ?
			MemoryContextAlloc(TopMemoryContext, sizeof(CapWindow) * (nwindows + 1)) :
			repalloc(windows, sizeof(CapWindow) * (nwindows + 1));
		w = &windows[nwindows++];
		memset(w, 0, sizeof(CapWindow));
		w->tid = tid;
	}
	if (w->start == 0 ||
		TimestampDifferenceExceeds(w->start, now, registry_expiry_window_ms))
	{
		w->start = now;
		w->expired = 0;
		w->held_counted = false;
	}
	return w;
}

/* Whether the table's expiry waits after a failure. */
static bool
backing_off(int32 tid, TimestampTz now)
{
	CapWindow  *w = window_of(tid, now);

	return w->retry_at != 0 && now < w->retry_at;
}

/* Until when the table's expiry waits after a failure (0: it does not). */
static TimestampTz
retry_at(int32 tid, TimestampTz now)
{
	return window_of(tid, now)->retry_at;
}

static void
backoff_note(int32 tid, TimestampTz now, bool failed)
{
	CapWindow  *w = window_of(tid, now);

	if (!failed)
	{
		w->failures = 0;
		w->retry_at = 0;
		return;
	}
	w->failures = Min(w->failures + 1, 16);
	w->retry_at = TimestampTzPlusMilliseconds(now,
											  Min((int64) 1000 << (w->failures - 1),
												  EXPIRY_BACKOFF_MAX_MS));
}

/* Whether the cap's held rows of the table were counted in this window. */
static bool
cap_held_counted(int32 tid, TimestampTz now)
{
	return registry_expiry_cap > 0 && window_of(tid, now)->held_counted;
}

/* How many more rows of the table may expire now (INT64_MAX: no cap). */
static int64
cap_left(int32 tid, TimestampTz now)
{
	CapWindow  *w;

	if (registry_expiry_cap <= 0)
		return PG_INT64_MAX;
	w = window_of(tid, now);
	return Max(registry_expiry_cap - w->expired, 0);
}

/* When a lease the cap holds back now is to come up again. */
static TimestampTz
cap_recheck_at(int32 tid, TimestampTz now)
{
	CapWindow  *w = window_of(tid, now);

	return Min(TimestampTzPlusMilliseconds(w->start, registry_expiry_window_ms),
			   TimestampTzPlusMilliseconds(now, EXPIRY_HELD_RECHECK_MS));
}

static void
cap_note(int32 tid, TimestampTz now, int64 expired, int64 held)
{
	CapWindow  *w;

	if (registry_expiry_cap <= 0)
		return;
	w = window_of(tid, now);
	w->expired += expired;
	if (held > 0 && !w->held_counted)
	{
		leases_count(LEASE_COUNT_HELD_CAP, held);
		w->held_counted = true;
	}
}

/* ---- tables ---- */

static List *
ephemeral_tables(void)
{
	List	   *all = regtable_all();
	List	   *result = NIL;
	ListCell   *lc;

	/*
	 * From the registrations alone: building a table's RegTable opens the
	 * table, which a client may hold locked; each table is opened later,
	 * in a transaction of its own.
	 */
	foreach(lc, all)
	{
		RegTid	   *r = lfirst(lc);

		if (!r->restored && r->lease_ttl_ms > 0)
		{
			EphTable   *e = palloc(sizeof(EphTable));

			e->tid = r->tid;
			e->relid = r->relid;
			e->ttl_ms = r->lease_ttl_ms;
			result = lappend(result, e);
		}
	}
	return result;
}

/* the table again, in this transaction; NULL if it is no longer ephemeral */
static RegTable *
table_now(EphTable *e)
{
	RegTable   *t = regtable_by_tid(e->tid, true);

	if (t == NULL || t->relid != e->relid || t->lease_ttl_ms <= 0 || t->restored)
		return NULL;
	return t;
}

/* ---- adoption ---- */

/*
 * Give every row of one table that this node owns and that has no lease a
 * full TTL from now.  Reads the table (its primary key index), writes
 * nothing.  Returns true when the leases ran out of room.
 */
static bool
adopt_table(EphTable *e, TimestampTz now, MemoryContext tmp)
{
	RegTable   *t = table_now(e);
	RowLookup	rs;
	int			nest = -1;
	int			n = 0;
	bool		full = false;
	MemoryContext old;

	if (t == NULL)
		return false;
	if (t->needs_canonical)
		keys_canonical_gucs_push(&nest);
	row_scan_all_begin(&rs, t, GetActiveSnapshot());
	old = MemoryContextSwitchTo(tmp);
	while (row_scan_next(&rs))
	{
		VersionState st;

		row_version(t, rs.slot, &st);
		if (st.exists && strcmp(st.origin, registry_node_name) == 0)
		{
			char	   *key = row_key(t, rs.slot);

			if (!leases_adopt(t->tid, keys_hash(key, strlen(key)), key,
							  t->lease_ttl_ms, now))
			{
				full = true;	/* the rest waits for room */
				break;
			}
		}
		if (++n % 1000 == 0)
		{
			MemoryContextReset(tmp);
			CHECK_FOR_INTERRUPTS();
		}
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(tmp);
	row_scan_end(&rs);
	if (nest >= 0)
		keys_canonical_gucs_pop(nest);
	return full;
}

/*
 * Adopt the rows of every ephemeral table, each table in a transaction of
 * its own: a table a client holds locked (within EXPIRY_LOCK_TIMEOUT) is
 * logged and left for the next adoption, and keeps neither the other
 * tables' adoption nor the rest of the pass.  Returns true when the
 * adoption is incomplete (no room, or a table failed).
 */
static bool
adopt_all(List *tables, TimestampTz now, MemoryContext cxt)
{
	MemoryContext tmp = AllocSetContextCreate(cxt, "registry adoption",
											  ALLOCSET_DEFAULT_SIZES);
	volatile bool incomplete = false;
	ListCell   *lc;

	foreach(lc, tables)
	{
		EphTable   *e = lfirst(lc);
		volatile bool full = false;

		PG_TRY();
		{
			xact_begin();
			full = adopt_table(e, now, tmp);
			xact_commit(cxt);
		}
		PG_CATCH();
		{
			xact_failed(cxt, "lease adoption failed", NULL);
			MemoryContextReset(tmp);
			incomplete = true;
		}
		PG_END_TRY();
		if (full)
		{
			incomplete = true;
			break;
		}
	}
	MemoryContextDelete(tmp);
	return incomplete;
}

/* ---- deleting ---- */

/*
 * Run one expiry DELETE of table t as the table's owner, its deletes
 * published with the reason.  Returns how many rows it deleted.
 */
static int64
run_delete(RegTable *t, const char *sql, int nargs, Oid *types, Datum *args,
		   char reason)
{
	CaptureMode mode;
	RegistryOwnerSave save;
	int64		n;
	int			rc;

	memset(&mode, 0, sizeof(mode));
	mode.kind = CAPTURE_MODE_EXPIRE;
	mode.table = t;
	mode.reason = reason;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "registry: SPI_connect failed");

	/*
	 * Deferred foreign-key checks cannot fire inside the owner's
	 * security-restricted operation: check them at once.
	 */
	if (SPI_execute("SET CONSTRAINTS ALL IMMEDIATE", false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "registry: could not set constraints immediate");
	apply_as_owner_begin(t, &save);
	publish_mode_push(&mode);

	/*
	 * User code runs from here (the table's delete triggers): within a
	 * statement timeout, as the same worker sends the notifications.  A
	 * background worker has no statement timer of its own: armed here.
	 */
	enable_timeout_after(STATEMENT_TIMEOUT, EXPIRY_STATEMENT_TIMEOUT_MS);
	rc = SPI_execute_with_args(sql, nargs, types, args, NULL, false, 0);
	disable_timeout(STATEMENT_TIMEOUT, false);
	if (rc != SPI_OK_DELETE)
		elog(ERROR, "registry: expiry of %s failed: %s", t->qualname,
			 SPI_result_code_string(rc));
	n = (int64) SPI_processed;
	SPI_finish();
	publish_mode_pop(CAPTURE_MODE_EXPIRE);
	apply_as_owner_end(&save);
	return n;
}

/* Delete the rows at the ctids given that are still this node's. */
static int64
delete_own_rows(RegTable *t, Datum *tids, int ntids, char reason)
{
	ArrayType  *arr = construct_array(tids, ntids, TIDOID,
									  sizeof(ItemPointerData), false,
									  TYPALIGN_SHORT);
	Oid			types[2] = {TIDARRAYOID, TEXTOID};
	Datum		args[2];
	char	   *sql = psprintf("DELETE FROM ONLY %s WHERE ctid = ANY (ARRAY("
							   "SELECT ctid FROM ONLY %s WHERE ctid = ANY ($1) AND %s = $2 "
							   "FOR UPDATE SKIP LOCKED)) AND %s = $2",
							   t->qualname, t->qualname, REGISTRY_ORIGIN_COLUMN,
							   REGISTRY_ORIGIN_COLUMN);

	args[0] = PointerGetDatum(arr);
	args[1] = CStringGetTextDatum(registry_node_name);
	return run_delete(t, sql, 2, types, args, reason);
}

/*
 * Rows of timed-out owners that could not be deleted one by one (a
 * foreign key still refers to one, a trigger refuses): left out of the
 * owner's batches until their retry time, so that they stop neither the
 * batches nor the rows after them.  Bounded; when full, the rows beyond
 * are tried again at every pass.
 */
#define MAX_SKIPPED_ROWS	1024

typedef struct SkippedRow
{
	int32		tid;
	ItemPointerData ctid;
	TimestampTz until;
} SkippedRow;

static SkippedRow skipped[MAX_SKIPPED_ROWS];
static int	nskipped = 0;

/* The table's skipped rows still due to wait, as a tid[] (pruned). */
static Datum
skipped_rows(int32 tid, TimestampTz now)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(nskipped, 1));
	int			n = 0;
	int			i;

	for (i = 0; i < nskipped;)
	{
		if (skipped[i].until <= now)
		{
			skipped[i] = skipped[--nskipped];
			continue;
		}
		if (skipped[i].tid == tid)
			d[n++] = PointerGetDatum(&skipped[i].ctid);
		i++;
	}
	return PointerGetDatum(construct_array(d, n, TIDOID,
										   sizeof(ItemPointerData), false,
										   TYPALIGN_SHORT));
}

static void
skip_row(int32 tid, ItemPointer ctid, TimestampTz until)
{
	if (nskipped >= MAX_SKIPPED_ROWS)
		return;
	skipped[nskipped].tid = tid;
	skipped[nskipped].ctid = *ctid;
	skipped[nskipped].until = until;
	nskipped++;
}

/* Delete up to limit rows of owner. */
static int64
delete_owner_rows(RegTable *t, const char *owner, int64 limit, bool from_end)
{
	Oid			types[3] = {TEXTOID, INT8OID, TIDARRAYOID};
	Datum		args[3];
	StringInfoData order;
	char	   *sql;
	int			i;

	/*
	 * In key order, from the first key or from the last: the two first
	 * judges of a silent owner start from either end (timed_out_owners).
	 */
	initStringInfo(&order);
	for (i = 0; i < t->nkeys; i++)
		appendStringInfo(&order, "%s%s%s", i ? ", " : "",
						 quote_identifier(t->keys[i].name),
						 from_end ? " DESC" : "");
	sql = psprintf("DELETE FROM ONLY %s WHERE ctid = ANY (ARRAY(SELECT ctid FROM ONLY %s WHERE %s = $1 AND ctid <> ALL ($3) ORDER BY %s LIMIT $2 FOR UPDATE SKIP LOCKED)) AND %s = $1",
				   t->qualname, t->qualname, REGISTRY_ORIGIN_COLUMN,
				   order.data, REGISTRY_ORIGIN_COLUMN);

	args[0] = CStringGetTextDatum(owner);
	args[1] = Int64GetDatum(limit);
	args[2] = skipped_rows(t->tid, GetCurrentTimestamp());
	return run_delete(t, sql, 3, types, args, LEASE_REASON_OWNER);
}

/* How many rows of t owner has (read as the worker: no user code runs). */
static int64
owner_row_count(RegTable *t, const char *owner, bool any)
{
	Oid			types[1] = {TEXTOID};
	Datum		args[1];
	char	   *sql = psprintf(any ?
							   "SELECT count(*) FROM (SELECT FROM ONLY %s WHERE %s = $1 LIMIT 1) s" :
							   "SELECT count(*) FROM ONLY %s WHERE %s = $1",
							   t->qualname, REGISTRY_ORIGIN_COLUMN);
	int64		n;
	bool		isnull;
	int			rc;

	args[0] = CStringGetTextDatum(owner);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "registry: SPI_connect failed");
	rc = SPI_execute_with_args(sql, 1, types, args, NULL, true, 0);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "registry: could not count the rows of %s: %s", t->qualname,
			 SPI_result_code_string(rc));
	n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
									1, &isnull));
	SPI_finish();
	return n;
}

static int
expired_cmp(const void *a, const void *b)
{
	const LeaseExpired *x = a;
	const LeaseExpired *y = b;

	if (x->tid != y->tid)
		return x->tid < y->tid ? -1 : 1;
	if (x->reason != y->reason)
		return x->reason < y->reason ? -1 : 1;
	return 0;
}

/* One group of expired leases: one table, one reason. */
typedef struct OwnGroup
{
	int32		tid;
	char		reason;
	LeaseExpired *ex;			/* the group's leases */
	int			n;
	ItemPointerData *tids;		/* rows to delete (in the worker's context) */
	LeaseExpired **tid_ex;		/* ... and whose lease each is */
	int			ntids;
	int64		held;			/* held back by the cap */
	int64		deleted;
} OwnGroup;

/*
 * Find the rows of a group's leases that are still this node's and still
 * expired (a renewal may have come), up to the cap; forget the leases of
 * rows that are gone or another node's.  In the current transaction.
 */
static void
own_group_rows(OwnGroup *g, RegTable *t, TimestampTz now, MemoryContext cxt)
{
	int64		left = cap_left(t->tid, now);
	int			nest = -1;
	RowLookup	rl;
	int			k;

	g->tids = MemoryContextAlloc(cxt, sizeof(ItemPointerData) * g->n);
	g->tid_ex = MemoryContextAlloc(cxt, sizeof(LeaseExpired *) * g->n);
	g->ntids = 0;
	g->held = 0;
	if (t->needs_canonical)
		keys_canonical_gucs_push(&nest);
	row_lookup_begin(&rl, t, RowExclusiveLock, GetActiveSnapshot());
	for (k = 0; k < g->n; k++)
	{
		LeaseExpired *e = &g->ex[k];
		VersionState st;

		if (!row_lookup(&rl, e->key))
		{
			leases_forget(e->tid, e->khash, e->key);
			continue;
		}
		row_version(t, rl.slot, &st);
		if (!st.exists || strcmp(st.origin, registry_node_name) != 0)
		{
			/* another node's now: its lease is there */
			leases_forget(e->tid, e->khash, e->key);
			continue;
		}
		if (!leases_still_expired(e->tid, e->khash, e->key, now))
			continue;			/* renewed meanwhile */
		if (g->ntids >= left)
		{
			/*
			 * Not due again before the window can take it: due leases are
			 * collected a batch at a time, and held ones kept due would
			 * fill every batch and keep other tables' from expiring.
			 */
			g->held++;
			leases_defer(e->tid, e->khash, e->key, cap_recheck_at(t->tid, now));
			continue;
		}
		g->tids[g->ntids] = rl.slot->tts_tid;
		g->tid_ex[g->ntids] = e;
		g->ntids++;
	}
	row_lookup_end(&rl);
	if (nest >= 0)
		keys_canonical_gucs_pop(nest);
}

static Datum *
tid_datums(ItemPointerData *tids, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));
	int			i;

	for (i = 0; i < n; i++)
		d[i] = PointerGetDatum(&tids[i]);
	return d;
}

/*
 * The group's rows again, one subtransaction each, after the batch
 * failed: a row a foreign key still references, or whose trigger fails,
 * must not keep the others.  A row that fails is logged, and its lease
 * tried again after EXPIRY_RETRY_MS.
 */
static void
own_row_one(OwnGroup *g, RegTable *t, int k, TimestampTz now)
{
	{
		ResourceOwner owner = CurrentResourceOwner;
		MemoryContext xcxt = CurrentMemoryContext;

		BeginInternalSubTransaction(NULL);
		MemoryContextSwitchTo(xcxt);
		PG_TRY();
		{
			LeaseExpired *e = g->tid_ex[k];
			RowLookup	rl;
			VersionState st;
			int			nest = -1;
			bool		found;

			/*
			 * Afresh: a renewal may have come while the batch ran (its
			 * triggers may take seconds), and the row's address is from
			 * the aborted transaction.
			 */
			if (t->needs_canonical)
				keys_canonical_gucs_push(&nest);
			row_lookup_begin(&rl, t, RowExclusiveLock, GetActiveSnapshot());
			found = row_lookup(&rl, e->key);
			if (found)
			{
				row_version(t, rl.slot, &st);
				found = st.exists && strcmp(st.origin, registry_node_name) == 0;
				g->tids[k] = rl.slot->tts_tid;
			}
			row_lookup_end(&rl);
			if (nest >= 0)
				keys_canonical_gucs_pop(nest);
			if (found && leases_still_expired(e->tid, e->khash, e->key, now))
				g->deleted += delete_own_rows(t, tid_datums(&g->tids[k], 1), 1,
											  g->reason);
			ReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(xcxt);
			CurrentResourceOwner = owner;
		}
		PG_CATCH();
		{
			ErrorData  *edata = subxact_failed(xcxt, owner);
			LeaseExpired *e = g->tid_ex[k];

			ereport(LOG,
					(errcode(edata->sqlerrcode),
					 errmsg("registry: could not expire key \"%s\" of %s: %s",
							e->key, t->qualname, edata->message),
					 edata->detail ? errdetail_internal("%s", edata->detail) : 0,
					 errhint("The lease is tried again in %d s.",
							 EXPIRY_RETRY_MS / 1000)));
			FreeErrorData(edata);
			leases_defer(e->tid, e->khash, e->key,
						 TimestampTzPlusMilliseconds(now, EXPIRY_RETRY_MS));
		}
		PG_END_TRY();
	}
}

/*
 * The group's leases, which its table's backoff keeps from expiring now,
 * are due again when it ends: kept due, they would be collected first at
 * every pass and fill the batch that other tables' leases wait for.
 */
static void
defer_group(OwnGroup *g, TimestampTz until)
{
	int			k;

	for (k = 0; k < g->n; k++)
		leases_defer(g->ex[k].tid, g->ex[k].khash, g->ex[k].key, until);
}

static void
own_group_one_by_one(OwnGroup *g, RegTable *t, TimestampTz now)
{
	int			k;

	for (k = 0; k < g->ntids; k++)
		own_row_one(g, t, k, now);
}

/*
 * The owner's expiry: this node's leases that ran out.  One transaction
 * per table and reason, each on its own: a table whose expiry fails (a
 * lock it cannot get within EXPIRY_LOCK_TIMEOUT, a failing trigger) is
 * logged and tried again later, and keeps no other table from expiring.
 * Returns whether more are due.
 */
static bool
expire_own(TimestampTz now, MemoryContext cxt)
{
	LeaseExpired *ex;
	int			n = leases_collect_expired(now, EXPIRY_BATCH, &ex);
	int			i = 0;
	int64		deleted = 0;

	if (n == 0)
		return false;
	qsort(ex, n, sizeof(LeaseExpired), expired_cmp);
	while (i < n)
	{
		OwnGroup   *g = MemoryContextAllocZero(cxt, sizeof(OwnGroup));
		int			j = i;
		volatile bool failed = false;

		while (j < n && ex[j].tid == ex[i].tid && ex[j].reason == ex[i].reason)
			j++;
		g->tid = ex[i].tid;
		g->reason = ex[i].reason;
		g->ex = &ex[i];
		g->n = j - i;
		i = j;
		if (backing_off(g->tid, now))
		{
			defer_group(g, retry_at(g->tid, now));
			continue;
		}

		PG_TRY();
		{
			RegTable   *t;

			xact_begin();
			t = regtable_by_tid(g->tid, true);
			if (t == NULL || t->lease_ttl_ms <= 0 || t->restored)
			{
				int			k;

				/* no longer ephemeral: the table's leases are stale */
				for (k = 0; k < g->n; k++)
					leases_forget(g->ex[k].tid, g->ex[k].khash, g->ex[k].key);
			}
			else
			{
				own_group_rows(g, t, now, cxt);
				if (g->ntids > 0)
					g->deleted = delete_own_rows(t, tid_datums(g->tids, g->ntids),
												 g->ntids, g->reason);
			}
			xact_commit(cxt);
		}
		PG_CATCH();
		{
			xact_failed(cxt, "lease expiry failed", NULL);
			failed = true;
		}
		PG_END_TRY();

		/* the batch failed after its rows were found: one by one */
		if (failed && g->ntids > 0)
		{
			g->deleted = 0;
			failed = false;
			PG_TRY();
			{
				RegTable   *t;

				xact_begin();
				t = regtable_by_tid(g->tid, true);
				if (t != NULL && t->lease_ttl_ms > 0 && !t->restored)
					own_group_one_by_one(g, t, now);
				xact_commit(cxt);
			}
			PG_CATCH();
			{
				xact_failed(cxt, "lease expiry failed", NULL);
				g->deleted = 0;
				failed = true;
			}
			PG_END_TRY();
		}
		backoff_note(g->tid, now, failed);
		if (failed)
			defer_group(g, retry_at(g->tid, now));
		else
		{
			leases_count(g->reason == LEASE_REASON_SESSION ?
						 LEASE_COUNT_SESSIONS_EXPIRED : LEASE_COUNT_EXPIRED,
						 g->deleted);
			cap_note(g->tid, now, g->deleted, g->held);
			deleted += g->deleted;
		}
	}
	/* a full batch went: more may be due (not when the cap held them) */
	return n == EXPIRY_BATCH && deleted > 0;
}

/* ---- owner failure ---- */

static bool
owner_held(const char *name)
{
	int			i;

	for (i = 0; i < nheld; i++)
		if (strcmp(held_owners[i], name) == 0)
			return true;
	return false;
}

/*
 * How much longer than registry.owner_timeout a judge waits when another
 * it reaches sorts first: a tenth of the timeout, at least 2 s (a pass
 * deletes 1,000 rows at a time; the first judge's deletes of a large
 * table take seconds to arrive).
 */
static int
judge_grace_ms(void)
{
	return Max(registry_owner_timeout_ms / 10, 2000);
}

/* A silent owner to judge, and from which end of its rows (key order). */
typedef struct TimedOutOwner
{
	char	   *name;
	bool		from_end;
} TimedOutOwner;

/*
 * The owners this node has had no successful contact with for
 * registry.owner_timeout, among its direct peers (by peer name and by the
 * node name the peer reports); *majority: whether this node reaches more
 * than half of the mesh it knows, itself included.  Contact counts from
 * the latest of: the last successful request, when the peer was added,
 * when this node started.  A peer counts as reachable for the majority
 * only if heard from within half of registry.owner_timeout.
 */
static List *
timed_out_owners(TimestampTz now, bool *majority)
{
	PeerStatus *st;
	int			nst;
	int			npeers;
	int			reachable = 0;
	List	   *owners = NIL;
	uint64		i;
	int			rc;
	TimestampTz started = node_started_at();
	MemoryContext outer = CurrentMemoryContext;
	int			nnames = 0;
	char	  **names;
	TimestampTz *contacts;
	char	  **judges;			/* reachable peers' names */
	int			njudges = 0;
	int			k;

	st = peer_status_snapshot(&nst);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "registry: SPI_connect failed");
	rc = SPI_execute("SELECT name, added_at FROM registry.peers", true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "registry: could not read registry.peers: %s",
			 SPI_result_code_string(rc));
	npeers = (int) SPI_processed;

	/*
	 * An owner's last contact is the latest over every peer entry that
	 * names it (by its peer name or by the node name it reported): a
	 * second, stale entry for a node must not make a live node look dead.
	 */
	names = MemoryContextAlloc(outer, sizeof(char *) * Max(2 * npeers, 1));
	contacts = MemoryContextAlloc(outer, sizeof(TimestampTz) * Max(2 * npeers, 1));
	judges = MemoryContextAlloc(outer, sizeof(char *) * Max(2 * npeers, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *name = SPI_getvalue(tup, desc, 1);
		bool		isnull;
		TimestampTz added = DatumGetTimestampTz(SPI_getbinval(tup, desc, 2, &isnull));
		TimestampTz contact = Max(started, isnull ? 0 : added);
		const char *entry_names[2] = {name, NULL};
		int			j;
		int			m;

		for (j = 0; j < nst; j++)
		{
			if (strcmp(st[j].name, name) != 0)
				continue;
			contact = Max(contact, st[j].last_success);
			if (st[j].remote_node[0] != '\0' && strcmp(st[j].remote_node, name) != 0)
				entry_names[1] = st[j].remote_node;
		}

		/*
		 * Reachable: heard from within half the timeout.  A node cut off
		 * from the mesh loses its links one by one; when the first peer
		 * times out, another lost a moment later must not count as
		 * reachable and give it a majority it does not have.  A healthy
		 * peer answers every long poll (at most 1 s and a quarter of the
		 * timeout apart: sync.c), well within.
		 */
		if (!TimestampDifferenceExceeds(contact, now, registry_owner_timeout_ms / 2))
		{
			reachable++;
			/* one name per judge: the node name it reports, if any */
			judges[njudges++] = MemoryContextStrdup(outer,
													entry_names[1] ? entry_names[1] : entry_names[0]);
		}
		for (m = 0; m < 2 && entry_names[m]; m++)
		{
			for (k = 0; k < nnames; k++)
				if (strcmp(names[k], entry_names[m]) == 0)
					break;
			if (k == nnames)
			{
				names[nnames] = MemoryContextStrdup(outer, entry_names[m]);
				contacts[nnames++] = contact;
			}
			else
				contacts[k] = Max(contacts[k], contact);
		}
	}
	SPI_finish();
	for (k = 0; k < nnames; k++)
	{
		int			timeout = registry_owner_timeout_ms;
		int			rank = 0;
		int			j;

		/*
		 * Every node of a majority judges a silent owner, and each would
		 * delete all its rows, and then apply the others' deletes of the
		 * same rows.  By the order of their names among the judges this
		 * node reaches: the first deletes from the first key on, the
		 * second from the last key back, so that between them each row
		 * is deleted once and every node has half to apply; any other
		 * waits judge_grace_ms() longer, by when their deletes have
		 * reached it and nothing is left to judge -- unless they did not
		 * judge, and then it does.
		 */
		for (j = 0; j < njudges; j++)
			if (strcmp(judges[j], names[k]) != 0 &&
				strcmp(judges[j], registry_node_name) < 0)
				rank++;
		if (rank >= 2)
			timeout += judge_grace_ms();
		if (TimestampDifferenceExceeds(contacts[k], now, timeout))
		{
			TimedOutOwner *o = MemoryContextAlloc(outer, sizeof(TimedOutOwner));

			o->name = names[k];
			o->from_end = (rank == 1);
			owners = lappend(owners, o);
		}
	}
	*majority = npeers == 0 || (reachable + 1) * 2 > npeers + 1;
	return owners;
}

/*
 * One table's part of a timed-out owner's expiry, in a transaction it
 * begins (true: the caller commits it; false: nothing left open).
 */
static bool
owner_table_pass(EphTable *e, const char *owner, bool from_end, bool majority,
				 TimestampTz now, bool *found_rows, bool *more)
{
	RegTable   *t;

	xact_begin();
	t = table_now(e);
	if (t == NULL)
		return true;
	if (!majority)
	{
		/* self-preservation: count the owner once per episode */
		if (owner_held(owner))
			*found_rows = true;
		else if (owner_row_count(t, owner, true) > 0)
		{
			*found_rows = true;
			if (nheld < MAX_HELD_OWNERS)
				strlcpy(held_owners[nheld++], owner, REGISTRY_NAME_LEN);
			leases_count(LEASE_COUNT_HELD_MINORITY, 1);
		}
	}
	else
	{
		int64		left = cap_left(t->tid, now);

		if (left > 0)
		{
			int64		done = delete_owner_rows(t, owner, Min(left, EXPIRY_BATCH),
												  from_end);

			leases_count(LEASE_COUNT_OWNER_EXPIRED, done);
			cap_note(t->tid, now, done, 0);
			if (done > 0)
				*found_rows = true;
			if (done >= Min(left, EXPIRY_BATCH) && done < left)
				*more = true;
		}
		else
		{
			/* held by the cap: counted once per window */
			*found_rows = true;
			if (!cap_held_counted(t->tid, now))
				cap_note(t->tid, now, 0, owner_row_count(t, owner, false));
		}
	}
	return true;
}

/*
 * After a failed batch of a timed-out owner's rows: its next rows one by
 * one, each in a subtransaction, so that one row that cannot go (a
 * foreign key still refers to it, a trigger refuses) keeps neither the
 * others nor the owner's later batches (it is skipped until
 * EXPIRY_RETRY_MS from now).  In a transaction it begins; returns the
 * rows deleted.
 */
static int64
owner_rows_one_by_one(EphTable *e, const char *owner, bool from_end,
					  TimestampTz now, MemoryContext cxt)
{
	RegTable   *t;
	StringInfoData order;
	Oid			types[3] = {TEXTOID, INT8OID, TIDARRAYOID};
	Datum		args[3];
	ItemPointerData *ctids;
	char	   *del_sql;
	int64		n;
	volatile int64 deleted = 0;
	int64		limit;
	int			i;
	int			rc;

	xact_begin();
	t = table_now(e);
	if (t == NULL)
		return 0;
	limit = Min(cap_left(t->tid, now), EXPIRY_BATCH);
	if (limit <= 0)
		return 0;
	initStringInfo(&order);
	for (i = 0; i < t->nkeys; i++)
		appendStringInfo(&order, "%s%s%s", i ? ", " : "",
						 quote_identifier(t->keys[i].name),
						 from_end ? " DESC" : "");
	args[0] = CStringGetTextDatum(owner);
	args[1] = Int64GetDatum(limit);
	args[2] = skipped_rows(t->tid, now);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "registry: SPI_connect failed");
	rc = SPI_execute_with_args(psprintf("SELECT ctid FROM ONLY %s WHERE %s = $1 AND ctid <> ALL ($3) ORDER BY %s LIMIT $2",
										t->qualname, REGISTRY_ORIGIN_COLUMN,
										order.data),
							   3, types, args, NULL, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "registry: could not list the rows of %s: %s",
			 t->qualname, SPI_result_code_string(rc));
	n = (int64) SPI_processed;
	ctids = MemoryContextAlloc(cxt, sizeof(ItemPointerData) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		bool		isnull;

		ctids[i] = *(ItemPointer) DatumGetPointer(SPI_getbinval(SPI_tuptable->vals[i],
													   SPI_tuptable->tupdesc,
													   1, &isnull));
	}
	SPI_finish();

	del_sql = psprintf("DELETE FROM ONLY %s WHERE ctid = $1 AND %s = $2",
					   t->qualname, REGISTRY_ORIGIN_COLUMN);
	for (i = 0; i < n; i++)
	{
		ResourceOwner ro = CurrentResourceOwner;
		MemoryContext xcxt = CurrentMemoryContext;
		Oid			dtypes[2] = {TIDOID, TEXTOID};
		Datum		dargs[2];

		dargs[0] = PointerGetDatum(&ctids[i]);
		dargs[1] = CStringGetTextDatum(owner);
		BeginInternalSubTransaction(NULL);
		MemoryContextSwitchTo(xcxt);
		PG_TRY();
		{
			deleted += run_delete(t, del_sql, 2, dtypes, dargs, LEASE_REASON_OWNER);
			ReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(xcxt);
			CurrentResourceOwner = ro;
		}
		PG_CATCH();
		{
			ErrorData  *edata = subxact_failed(xcxt, ro);

			ereport(LOG,
					(errcode(edata->sqlerrcode),
					 errmsg("registry: could not expire the row at %s of timed-out owner \"%s\" in %s: %s",
							DatumGetCString(DirectFunctionCall1(tidout, dargs[0])),
							owner, t->qualname, edata->message),
					 edata->detail ? errdetail_internal("%s", edata->detail) : 0,
					 errhint("The row is tried again in %d s; the owner's other rows go on.",
							 EXPIRY_RETRY_MS / 1000)));
			FreeErrorData(edata);
			skip_row(t->tid, &ctids[i],
					 TimestampTzPlusMilliseconds(now, EXPIRY_RETRY_MS));
		}
		PG_END_TRY();
	}
	return deleted;
}

/*
 * Owner failure: delete the rows of timed-out owners, while this node
 * reaches a majority.  Each (owner, table) in a transaction of its own: a
 * failure is logged, and that table tried again after a backoff.
 * Returns whether more are due.
 */
static bool
expire_owners(List *tables, TimestampTz now, MemoryContext cxt)
{
	List	   *owners;
	bool		majority;
	volatile bool more = false;
	ListCell   *lo;
	char		names[MAX_HELD_OWNERS][REGISTRY_NAME_LEN];
	bool		from_end[MAX_HELD_OWNERS];
	int			nnames = 0;
	int			i;

	xact_begin();
	owners = timed_out_owners(now, &majority);
	foreach(lo, owners)
	{
		TimedOutOwner *o = lfirst(lo);

		if (nnames < MAX_HELD_OWNERS &&
			strcmp(o->name, registry_node_name) != 0)
		{
			from_end[nnames] = o->from_end;
			strlcpy(names[nnames++], o->name, REGISTRY_NAME_LEN);
		}
	}
	xact_commit(cxt);
	leases_set_minority(!majority);

	/* an owner back in reach, or expirable again, is no longer held */
	for (i = 0; i < nheld;)
	{
		bool		still = false;
		int			j;

		for (j = 0; j < nnames; j++)
			if (strcmp(names[j], held_owners[i]) == 0)
				still = !majority;
		if (still)
			i++;
		else
			memmove(held_owners[i], held_owners[--nheld], REGISTRY_NAME_LEN);
	}

	/* forget the clean marks of owners no longer timed out, or too old */
	for (i = 0; i < nclean;)
	{
		bool		still = false;
		int			j;

		for (j = 0; j < nnames; j++)
			if (strcmp(names[j], clean_owners[i].name) == 0)
				still = true;
		if (still && !TimestampDifferenceExceeds(clean_owners[i].at, now,
												 OWNER_RESCAN_MS))
			i++;
		else
			clean_owners[i] = clean_owners[--nclean];
	}

	for (i = 0; i < nnames; i++)
	{
		ListCell   *lc;
		bool		found_rows = false;
		bool		more_rows = false;
		int			j;

		for (j = 0; j < nclean; j++)
			if (strcmp(clean_owners[j].name, names[i]) == 0)
				break;
		if (j < nclean)
			continue;			/* scanned recently, nothing of theirs */

		foreach(lc, tables)
		{
			EphTable   *e = lfirst(lc);
			volatile bool failed = false;

			if (backing_off(e->tid, now))
			{
				found_rows = true;	/* not known: look again */
				continue;
			}
			PG_TRY();
			{
				if (owner_table_pass(e, names[i], from_end[i], majority, now,
									 &found_rows,
									 &more_rows))
					xact_commit(cxt);
			}
			PG_CATCH();
			{
				xact_failed(cxt, "expiry failed of the rows", names[i]);
				failed = true;
				found_rows = true;
			}
			PG_END_TRY();

			/* the batch failed: its rows one by one */
			if (failed && majority)
			{
				PG_TRY();
				{
					int64		done = owner_rows_one_by_one(e, names[i],
															 from_end[i], now,
															 cxt);

					xact_commit(cxt);
					leases_count(LEASE_COUNT_OWNER_EXPIRED, done);
					cap_note(e->tid, now, done, 0);
					failed = false;
					if (done > 0)
						more_rows = true;
				}
				PG_CATCH();
				{
					xact_failed(cxt, "expiry failed of the rows", names[i]);
				}
				PG_END_TRY();
			}
			backoff_note(e->tid, now, failed);
		}
		if (more_rows)
			more = true;
		if (!found_rows && nclean < MAX_HELD_OWNERS)
		{
			strlcpy(clean_owners[nclean].name, names[i], REGISTRY_NAME_LEN);
			clean_owners[nclean].at = now;
			nclean++;
		}
	}
	return more;
}

/*
 * One pass, if one is due (every registry.expiry_interval, or at once
 * while a mass expiry has batches left).  Errors are logged and the pass
 * ends; the next one starts over.  Returns whether batches are left.
 */
bool
expiry_run(TimestampTz now)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool more = false;

	if (!node_is_ready())
		return false;
	if (!more_work &&
		!TimestampDifferenceExceeds(last_run, now, registry_expiry_interval_ms))
		return false;

	/*
	 * Without ephemeral tables a pass finds nothing to do: look again
	 * after a while, or at once when a table becomes ephemeral
	 * (registry.set_lease() asks for an adoption).
	 */
	if (no_tables && leases_adoption_gen() == adopted_gen &&
		!TimestampDifferenceExceeds(last_run, now, IDLE_PASS_MS))
		return false;
	last_run = now;
	PG_TRY();
	{
		List	   *tables = NIL;
		bool		exists;
		uint64		gen;

		xact_begin();
		exists = worker_extension_exists();
		if (exists)
		{
			MemoryContext old = MemoryContextSwitchTo(cxt);

			tables = ephemeral_tables();
			MemoryContextSwitchTo(old);
			gen = leases_adoption_gen();
			if (tables == NIL)
				adopted_gen = gen;
		}
		xact_commit(cxt);

		/*
		 * With registry.max_leases too small every grant evicts and asks
		 * for an adoption, which would find no room either; a table a
		 * client keeps locked fails it too: then adopt every 10 s at most.
		 */
		if (tables != NIL && gen != adopted_gen &&
			(adoption_full_at == 0 ||
			 TimestampDifferenceExceeds(adoption_full_at, now, IDLE_PASS_MS)))
		{
			if (adopt_all(tables, now, cxt))
				adoption_full_at = now; /* the rest: again in 10 s */
			else
			{
				adoption_full_at = 0;
				adopted_gen = gen;
			}
		}

		no_tables = (tables == NIL);
		if (tables != NIL)
		{
			if (expire_own(now, cxt))
				more = true;
			if (expire_owners(tables, now, cxt))
				more = true;
		}
		else
			leases_set_minority(false);

		if (exists &&
			TimestampDifferenceExceeds(last_stash_purge, now, STASH_PURGE_MS))
		{
			last_stash_purge = now;
			xact_begin();
			(void) lease_stash_purge(now);
			xact_commit(cxt);
		}
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		HOLD_INTERRUPTS();
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		RESUME_INTERRUPTS();
		ereport(LOG,
				(errmsg("registry: lease expiry failed: %s", edata->message),
				 edata->detail ? errdetail_internal("%s", edata->detail) : 0,
				 edata->context ? errcontext("%s", edata->context) : 0));
		FreeErrorData(edata);
		more = false;
	}
	PG_END_TRY();
	more_work = more;
	return more;
}

/* How long the maintenance worker may sleep before the next pass. */
long
expiry_next_wait_ms(TimestampTz now)
{
	long		secs;
	int			us;
	bool		idle;

	if (more_work)
		return 0;
	/*
	 * Idle only while no table is ephemeral and none became so since: a
	 * wake-up (set_lease's, a LISTEN's, or a commit's for the
	 * notifications while somebody listens) that
	 * came within the interval must not send the worker to sleep for the
	 * idle pass.
	 */
	idle = no_tables && leases_adoption_gen() == adopted_gen;
	TimestampDifference(now, TimestampTzPlusMilliseconds(last_run,
														 idle ? IDLE_PASS_MS :
														 registry_expiry_interval_ms),
						&secs, &us);
	return Max(secs * 1000 + us / 1000, 1);
}
