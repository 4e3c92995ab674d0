/*-------------------------------------------------------------------------
 *
 * watch.c
 *	  What clients use to follow registry tables exactly: a listing with
 *	  the change log position it reflects (registry.list), the changes
 *	  after a position, waiting for the next one like the peers' long poll
 *	  (registry.watch), and waiting until peers have applied this
 *	  session's last change (registry.wait_for_peers).
 *
 * list + watch give each change exactly once: the listing is read under
 * a cut (publishing.c), a snapshot and a seq that agree, and watch
 * returns the changes after a seq in seq order.  A position the change
 * log can no longer serve (its ring overflowed, or the node restarted
 * and the epoch changed) is an error with SQLSTATE RG001: the client
 * lists again; nothing is skipped silently.
 *
 * watch is a procedure: called with CALL outside a transaction block it
 * commits before it waits, so it holds no snapshot (vacuum is not held
 * back) and no lock while it waits.  Inside a transaction block (atomic)
 * it cannot, and says so in the docs.
 *
 * A client reads through these only what its own SELECT would show:
 * SELECT on each table, and no table under row-level security for it
 * (the change log's keys cannot be filtered by policies).
 *
 * Owns nothing in shared memory; reads the change log (changelog.c),
 * takes cuts (publishing.c), waits for acknowledgements (acks.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/xlog.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/parsenodes.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "acks.h"
#include "changelog.h"
#include "peer_status.h"
#include "publish.h"
#include "publishing.h"
#include "registry.h"
#include "rows.h"

PG_FUNCTION_INFO_V1(registry_list);
PG_FUNCTION_INFO_V1(registry_watch);
PG_FUNCTION_INFO_V1(registry_wait_for_peers);

/* "registry: watch position lost": list again */
#define ERRCODE_REGISTRY_POSITION_LOST	MAKE_SQLSTATE('R','G','0','0','1')

/* a cut waits this long for commits in flight, then tries again */
#define CUT_WAIT_MS			100
#define CUT_GIVE_UP_MS		10000

/* change log entries looked at per read */
#define WATCH_SCAN			10000

/* an answer of watch stops growing at this size */
#define WATCH_MAX_BYTES		(64 * 1024 * 1024)

/* ---- which tables a client may follow ---- */

/*
 * Why a client may not read a table in full here, or NULL if it may: it
 * needs SELECT on the table, and no row-level security may apply to it.
 */
static const char *
unreadable(Oid relid)
{
	bool		is_missing = false;

	if (pg_class_aclcheck_ext(relid, GetUserId(), ACL_SELECT,
							  &is_missing) != ACLCHECK_OK)
		return is_missing ? "missing" : "privilege";
	if (check_enable_rls(relid, InvalidOid, true) == RLS_ENABLED)
		return "rls";
	return NULL;
}

static void
check_readable(Oid relid, const char *fn)
{
	const char *why = unreadable(relid);

	if (why == NULL)
		return;
	if (strcmp(why, "missing") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("a table registry.%s() follows was dropped", fn)));
	if (strcmp(why, "privilege") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for table %s", get_rel_name(relid)),
				 errdetail("registry.%s() needs SELECT privilege on the table.", fn)));
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("registry.%s() cannot read table %s: row-level security applies to it",
					fn, get_rel_name(relid)),
			 errdetail("The change log's keys cannot be filtered by row security policies."),
			 errhint("Read such a table with SELECT and follow it with LISTEN, or grant BYPASSRLS.")));
}

/* The tables to follow, as tids: those named, or all the caller may read. */
typedef struct TableSet
{
	bool		all;			/* no list given: every readable table */
	int			n;
	int32	   *tids;
	Oid		   *relids;
	/* with all: tids found not readable (registered after the start) */
	int			nskip;
	int32	   *skip;
} TableSet;

static void
table_set_build(TableSet *ts, ArrayType *arr, const char *fn)
{
	memset(ts, 0, sizeof(*ts));
	if (arr == NULL)
	{
		List	   *all = regtable_all();
		ListCell   *lc;
		int			i = 0;

		ts->all = true;
		ts->tids = palloc(sizeof(int32) * Max(list_length(all), 1));
		ts->relids = palloc(sizeof(Oid) * Max(list_length(all), 1));
		ts->skip = palloc(sizeof(int32) * 64);
		foreach(lc, all)
		{
			RegTid	   *r = lfirst(lc);

			if (r->restored || get_rel_name(r->relid) == NULL ||
				unreadable(r->relid) != NULL)
			{
				if (ts->nskip < 64)
					ts->skip[ts->nskip++] = r->tid;
				continue;
			}
			ts->tids[i] = r->tid;
			ts->relids[i] = r->relid;
			i++;
		}
		ts->n = i;
	}
	else
	{
		Datum	   *elems;
		bool	   *nulls;
		int			nelems;
		int			i;

		deconstruct_array(arr, REGCLASSOID, sizeof(Oid), true, TYPALIGN_INT,
						  &elems, &nulls, &nelems);
		ts->skip = palloc(sizeof(int32) * 64);
		ts->tids = palloc(sizeof(int32) * Max(nelems, 1));
		ts->relids = palloc(sizeof(Oid) * Max(nelems, 1));
		for (i = 0; i < nelems; i++)
		{
			Oid			relid;
			RegTable   *t;
			int			j;

			if (nulls[i])
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("the tables of registry.%s() must not contain NULL", fn)));
			relid = DatumGetObjectId(elems[i]);
			t = regtable_by_relid(relid, true);
			if (t == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_WRONG_OBJECT_TYPE),
						 errmsg("table %s is not a registry table",
								get_rel_name(relid) ? get_rel_name(relid) : "?"),
						 errhint("Register it with registry.replicate().")));
			check_readable(relid, fn);
			for (j = 0; j < ts->n; j++)
				if (ts->tids[j] == t->tid)
					break;
			if (j < ts->n)
				continue;
			ts->tids[ts->n] = t->tid;
			ts->relids[ts->n] = relid;
			ts->n++;
		}
	}
}

/*
 * Whether changes of table tid are followed.  With all, a table
 * registered after the start is looked up once (in a transaction); a
 * table named that was registered again (a new tid) is followed on.
 */
static bool
table_set_has(TableSet *ts, int32 tid)
{
	RegTable   *t;
	int			i;

	for (i = 0; i < ts->n; i++)
		if (ts->tids[i] == tid)
			return true;
	for (i = 0; i < ts->nskip; i++)
		if (ts->skip[i] == tid)
			return false;
	t = regtable_by_tid(tid, true);
	if (t != NULL && !ts->all)
	{
		/* a table named, unregistered and registered again: a new tid */
		for (i = 0; i < ts->n; i++)
			if (ts->relids[i] == t->relid)
				break;
		if (i == ts->n)
			t = NULL;
	}
	if (t != NULL && !t->restored && unreadable(t->relid) == NULL)
	{
		ts->tids = repalloc(ts->tids, sizeof(int32) * (ts->n + 1));
		ts->relids = repalloc(ts->relids, sizeof(Oid) * (ts->n + 1));
		ts->tids[ts->n] = tid;
		ts->relids[ts->n] = t->relid;
		ts->n++;
		return true;
	}
	if (ts->nskip < 64)
		ts->skip[ts->nskip++] = tid;
	return false;
}

/*
 * After a wait: privileges may have been revoked, or row-level security
 * enabled, meanwhile.  A table named must still be readable (an error
 * otherwise); with all, a table no longer readable is no longer followed.
 */
static void
table_set_recheck(TableSet *ts, const char *fn)
{
	int			i = 0;

	while (i < ts->n)
	{
		if (!ts->all)
		{
			check_readable(ts->relids[i], fn);
			i++;
			continue;
		}
		if (unreadable(ts->relids[i]) == NULL)
		{
			i++;
			continue;
		}
		if (ts->nskip < 64)
			ts->skip[ts->nskip++] = ts->tids[i];
		ts->tids[i] = ts->tids[ts->n - 1];
		ts->relids[i] = ts->relids[ts->n - 1];
		ts->n--;
	}
}

/* ---- rows as jsonb ---- */

/* an interval's length in ms (a month as 30 days), clamped to int64 */
static int64
interval_ms(Interval *iv)
{
	double		ms = (double) iv->time / 1000.0 +
		((double) iv->day + (double) iv->month * DAYS_PER_MONTH) * SECS_PER_DAY * 1000.0;

	if (ms > (double) PG_INT64_MAX / 2)
		return PG_INT64_MAX / 2;
	if (ms < (double) PG_INT64_MIN / 2)
		return PG_INT64_MIN / 2;
	return (int64) ms;
}

/*
 * A row as a JSON object, built from its columns' output functions: never
 * through to_jsonb(), which calls a type's cast to json, code of the
 * type's owner that must not run as the caller.  Numbers and booleans are
 * JSON numbers and booleans, json and jsonb values are embedded, every
 * other value is a JSON string of its text output (arrays, composites,
 * ranges in their text form).  Output functions are C, installed by a
 * superuser.
 */
typedef struct RowJson
{
	int			natts;
	FmgrInfo   *out;			/* [natts]; fn_oid 0 for dropped columns */
	Oid		   *kind;			/* the base type of each column */
} RowJson;

static void
row_json_init(RowJson *rj, TupleDesc desc)
{
	int			i;

	rj->natts = desc->natts;
	rj->out = palloc0(sizeof(FmgrInfo) * Max(desc->natts, 1));
	rj->kind = palloc0(sizeof(Oid) * Max(desc->natts, 1));
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		Oid			outfunc;
		bool		isvarlena;

		if (att->attisdropped)
			continue;
		getTypeOutputInfo(att->atttypid, &outfunc, &isvarlena);
		fmgr_info(outfunc, &rj->out[i]);
		rj->kind[i] = getBaseType(att->atttypid);
	}
}

static void
row_json(StringInfo b, RowJson *rj, TupleTableSlot *slot)
{
	TupleDesc	desc = slot->tts_tupleDescriptor;
	bool		first = true;
	int			i;

	slot_getallattrs(slot);
	appendStringInfoChar(b, '{');
	for (i = 0; i < rj->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		char	   *v;

		if (att->attisdropped)
			continue;
		if (!first)
			appendStringInfoString(b, ", ");
		first = false;
		escape_json(b, NameStr(att->attname));
		appendStringInfoString(b, ": ");
		if (slot->tts_isnull[i])
		{
			appendStringInfoString(b, "null");
			continue;
		}
		v = OutputFunctionCall(&rj->out[i], slot->tts_values[i]);
		switch (rj->kind[i])
		{
			case BOOLOID:
				appendStringInfoString(b, v[0] == 't' ? "true" : "false");
				break;
			case INT2OID:
			case INT4OID:
			case INT8OID:
			case OIDOID:
				appendStringInfoString(b, v);
				break;
			case FLOAT4OID:
			case FLOAT8OID:
			case NUMERICOID:
				/* NaN and the infinities are not JSON numbers */
				if (strpbrk(v, "NI") == NULL)
					appendStringInfoString(b, v);
				else
					escape_json(b, v);
				break;
			case JSONOID:
			case JSONBOID:
				appendStringInfoString(b, v);
				break;
			default:
				escape_json(b, v);
				break;
		}
		pfree(v);
	}
	appendStringInfoChar(b, '}');
}

static Datum
row_jsonb(RowJson *rj, TupleTableSlot *slot)
{
	StringInfoData b;

	initStringInfo(&b);
	row_json(&b, rj, slot);
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(b.data));
}

static bool
key_matches(const char *key, const char *prefix, int prefixlen)
{
	return prefix == NULL || strncmp(key, prefix, prefixlen) == 0;
}

/* ---- registry.list ---- */

/* The change log is a primary's: a standby's is not fed by replay. */
static void
check_not_recovering(const char *fn)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("registry.%s() cannot run during recovery", fn),
				 errdetail("A standby's change log does not follow what replay writes."),
				 errhint("Call it on a primary.")));
}

/*
 * Take a cut, trying again while commits in flight keep it from being
 * quiet (each try holds writers back for CUT_WAIT_MS at most).
 */
static void
take_cut(Snapshot *snap, uint64 *epoch, uint64 *seq)
{
	TimestampTz start = GetCurrentTimestamp();

	while (!publishing_cut(CUT_WAIT_MS, snap, epoch, seq))
	{
		if (TimestampDifferenceExceeds(start, GetCurrentTimestamp(), CUT_GIVE_UP_MS))
			ereport(ERROR,
					(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
					 errmsg("registry: could not take a consistent position"),
					 errdetail("Commits to registry tables kept being in flight for %d s.",
							   CUT_GIVE_UP_MS / 1000),
					 errhint("A commit may be waiting for a synchronous standby; try again.")));
		CHECK_FOR_INTERRUPTS();
		pg_usleep(10000L);
	}
}

#define LIST_COLS 7

/*
 * registry.list(tables regclass[], key_prefix text) returns table (epoch,
 * seq, table_name, key, version, origin, row): the position first, then
 * the rows, all read under one cut.
 */
Datum
registry_list(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ArrayType  *arr = PG_ARGISNULL(0) ? NULL : PG_GETARG_ARRAYTYPE_P(0);
	char	   *prefix = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	int			prefixlen = prefix ? strlen(prefix) : 0;
	TableSet	ts;
	Snapshot	snap;
	uint64		epoch,
				seq;
	Datum		v[LIST_COLS];
	bool		n[LIST_COLS];
	Relation   *rels;
	MemoryContext tmp;
	int			i;

	registry_check_preloaded();
	check_not_recovering("list");
	if (publish_xact_has_changes())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("registry.list() cannot list in a transaction that has changed registry tables"),
				 errdetail("The listing would show changes that are not committed, at a position that does not have them."),
				 errhint("List before the changes, or after COMMIT.")));
	InitMaterializedSRF(fcinfo, 0);
	table_set_build(&ts, arr, "list");

	/* the locks first: the cut then holds writers back for no lock wait */
	rels = palloc(sizeof(Relation) * Max(ts.n, 1));
	for (i = 0; i < ts.n; i++)
		rels[i] = table_open(ts.relids[i], AccessShareLock);

	if (ts.n > 0)
		take_cut(&snap, &epoch, &seq);
	else
	{
		ChangeLogStats st;

		/* nothing to read: no cut, nobody held back */
		changelog_stats(&st);
		epoch = st.epoch;
		seq = st.last_seq;
		snap = NULL;
	}

	memset(n, true, sizeof(n));
	v[0] = Int64GetDatum((int64) epoch);
	v[1] = Int64GetDatum((int64) seq);
	n[0] = n[1] = false;
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);

	tmp = AllocSetContextCreate(CurrentMemoryContext, "registry list",
								ALLOCSET_DEFAULT_SIZES);
	for (i = 0; i < ts.n; i++)
	{
		RegTable   *t = regtable_by_relid(ts.relids[i], true);
		RowLookup	rs;
		RowJson		rj;
		int			nest = -1;
		Datum		name;
		int			count = 0;

		if (t == NULL || t->tid != ts.tids[i])
			ereport(ERROR,
					(errcode(ERRCODE_WRONG_OBJECT_TYPE),
					 errmsg("table %s was unregistered while it was listed",
							get_rel_name(ts.relids[i])),
					 errhint("List again.")));
		name = CStringGetTextDatum(t->qualname);

		/* keys and values in the canonical settings, as peers see them */
		if (t->needs_canonical)
			keys_canonical_gucs_push(&nest);
		row_scan_all_begin(&rs, t, snap);
		row_json_init(&rj, rs.slot->tts_tupleDescriptor);
		while (row_scan_next(&rs))
		{
			MemoryContext old = MemoryContextSwitchTo(tmp);
			char	   *key = row_key(t, rs.slot);

			if (key_matches(key, prefix, prefixlen))
			{
				VersionState st;

				row_version(t, rs.slot, &st);
				v[2] = name;
				v[3] = CStringGetTextDatum(key);
				v[4] = Int64GetDatum((int64) st.version);
				v[5] = CStringGetTextDatum(st.origin);
				v[6] = row_jsonb(&rj, rs.slot);
				memset(n, false, sizeof(n));
				tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
			}
			MemoryContextSwitchTo(old);
			if (++count % 1000 == 0)
			{
				MemoryContextReset(tmp);
				CHECK_FOR_INTERRUPTS();
			}
		}
		row_scan_end(&rs);
		MemoryContextReset(tmp);
		if (nest >= 0)
			keys_canonical_gucs_pop(nest);
	}
	for (i = 0; i < ts.n; i++)
		table_close(rels[i], NoLock);
	if (snap)
		UnregisterSnapshot(snap);
	return (Datum) 0;
}

/* ---- registry.watch ---- */

typedef struct WatchMatch
{
	uint64		seq;
	int32		tid;
	char		op;
	char		reason;
	RegVersion	version;
	char		origin[REGISTRY_NAME_LEN];
	char	   *key;
} WatchMatch;

static void
position_lost(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_REGISTRY_POSITION_LOST),
			 errmsg("registry: watch position lost"),
			 errdetail_internal("%s", detail),
			 errhint("List again with registry.list() and watch from its position.")));
}

/*
 * The changes after *pos that match, up to max, into *out; *pos moves to
 * the last change returned, or as far as the log was looked at.  Errors
 * (RG001) when the log cannot serve *pos.  Returns how many matched.
 */
static int
scan_changes(uint64 epoch, uint64 *pos, TableSet *ts, const char *prefix,
			 int max, WatchMatch *out)
{
	int			nmatch = 0;

	for (;;)
	{
		ChangeLogChange *copy;
		uint64		first,
					last,
					cur;
		int			ncopied;
		int			i;

		ncopied = changelog_read(*pos, WATCH_SCAN, &copy, &first, &last, &cur);
		if (cur != epoch)
			position_lost(psprintf("The position is of epoch " UINT64_FORMAT
								   "; this node's change log is of epoch " UINT64_FORMAT
								   " now (the node restarted, or the extension was created again).",
								   epoch, cur));
		if (*pos > last)
			position_lost(psprintf("seq " UINT64_FORMAT " was never reached in epoch "
								   UINT64_FORMAT " (its last seq is " UINT64_FORMAT ").",
								   *pos, epoch, last));
		if (*pos + 1 < first)
			position_lost(psprintf("The change log no longer holds the changes after seq "
								   UINT64_FORMAT ": it begins at seq " UINT64_FORMAT
								   " (registry.change_log_size entries; older ones were overwritten).",
								   *pos, first));
		for (i = 0; i < ncopied; i++)
		{
			ChangeLogChange *c = &copy[i];

			*pos = c->seq;
			/* a bulk change (resync) has no key: it concerns every prefix */
			if (!table_set_has(ts, c->tid) ||
				(c->op != REG_OP_RESYNC &&
				 !key_matches(c->key, prefix, prefix ? strlen(prefix) : 0)))
				continue;
			out[nmatch].seq = c->seq;
			out[nmatch].tid = c->tid;
			out[nmatch].op = c->op;
			out[nmatch].reason = c->reason;
			out[nmatch].version = c->version;
			strlcpy(out[nmatch].origin, c->origin, REGISTRY_NAME_LEN);
			out[nmatch].key = pstrdup(c->key);
			if (++nmatch >= max)
				break;
		}
		pfree(copy);
		if (nmatch > 0 || ncopied < WATCH_SCAN)
			return nmatch;
		CHECK_FOR_INTERRUPTS();
	}
}

/* One change as a JSON object, its key's row read now. */
static void
change_json(StringInfo b, WatchMatch *m, Snapshot snap)
{
	RegTable   *t = regtable_by_tid(m->tid, true);
	char		num[32];

	appendStringInfo(b, "{\"seq\": " UINT64_FORMAT ", \"table\": ", m->seq);
	if (t)
		escape_json(b, t->qualname);
	else
		appendStringInfoString(b, "null");
	appendStringInfoString(b, ", \"key\": ");
	if (m->op == REG_OP_RESYNC)
		appendStringInfoString(b, "null");
	else
		escape_json(b, m->key);
	appendStringInfo(b, ", \"op\": \"%s\", \"version\": ", registry_op_name(m->op));
	snprintf(num, sizeof(num), UINT64_FORMAT, m->version);
	escape_json(b, num);
	appendStringInfoString(b, ", \"origin\": ");
	if (m->origin[0])
		escape_json(b, m->origin);
	else
		appendStringInfoString(b, "null");
	appendStringInfoString(b, ", \"reason\": ");
	if (m->reason != 0 && registry_expiry_name(m->reason))
	{
		appendStringInfoString(b, "\"expired\", \"expiry\": ");
		escape_json(b, registry_expiry_name(m->reason));
	}
	else
		appendStringInfoString(b, "null");
	appendStringInfoString(b, ", \"row\": ");
	if (t && m->op != REG_OP_RESYNC && !t->restored &&
		strlen(m->key) <= (size_t) registry_max_key_length)
	{
		RowLookup	rl;
		RowJson		rj;
		int			nest = -1;
		bool		found;

		if (t->needs_canonical)
			keys_canonical_gucs_push(&nest);
		row_lookup_begin(&rl, t, AccessShareLock, snap);
		found = row_lookup(&rl, m->key);
		if (found)
		{
			row_json_init(&rj, rl.slot->tts_tupleDescriptor);
			row_json(b, &rj, rl.slot);
		}
		else
			appendStringInfoString(b, "null");
		row_lookup_end(&rl);
		if (nest >= 0)
			keys_canonical_gucs_pop(nest);
	}
	else
		appendStringInfoString(b, "null");
	appendStringInfoChar(b, '}');
}

/*
 * CALL registry.watch(INOUT epoch bigint, INOUT seq bigint, OUT changes
 *	 jsonb, tables regclass[], key_prefix text, max_changes int,
 *	 timeout interval).  A procedure gets its input arguments only: the
 *	 OUT one is not among them.
 */
Datum
registry_watch(PG_FUNCTION_ARGS)
{
	CallContext *cc = (CallContext *) fcinfo->context;
	bool		atomic = !(cc && IsA(cc, CallContext) && !cc->atomic);
	MemoryContext callcxt = CurrentMemoryContext;
	uint64		epoch;
	uint64		pos;
	ArrayType  *arr;
	char	   *prefix;
	int			max;
	Interval   *timeout;
	int64		timeout_ms;
	TimestampTz deadline;
	TableSet	ts;
	WatchMatch *matches;
	int			nmatch = 0;
	bool		committed = false;
	StringInfoData b;
	TupleDesc	desc;
	Datum		v[3];
	bool		n[3] = {false, false, false};
	int			i;

	registry_check_preloaded();
	check_not_recovering("watch");
	registry_check_not_null(fcinfo, 0, "epoch");
	registry_check_not_null(fcinfo, 1, "seq");
	registry_check_not_null(fcinfo, 4, "max_changes");
	registry_check_not_null(fcinfo, 5, "timeout");
	if (PG_GETARG_INT64(1) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("seq must not be negative")));
	epoch = (uint64) PG_GETARG_INT64(0);
	pos = (uint64) PG_GETARG_INT64(1);
	arr = PG_ARGISNULL(2) ? NULL : PG_GETARG_ARRAYTYPE_P_COPY(2);
	prefix = PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3));
	max = PG_GETARG_INT32(4);
	if (max < 1 || max > 10000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_changes must be between 1 and 10000")));
	timeout = PG_GETARG_INTERVAL_P(5);
	timeout_ms = interval_ms(timeout);
	if (timeout_ms < 0 || timeout_ms > 3600 * 1000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must be between 0 and 1 hour")));
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	table_set_build(&ts, arr, "watch");
	matches = palloc(sizeof(WatchMatch) * max);

	if (!atomic && SPI_connect_ext(SPI_OPT_NONATOMIC) != SPI_OK_CONNECT)
		elog(ERROR, "registry: SPI_connect_ext failed");
	MemoryContextSwitchTo(callcxt);

	for (;;)
	{
		long		left;

		nmatch = scan_changes(epoch, &pos, &ts, prefix, max, matches);
		if (nmatch > 0)
			break;
		left = (long) ((deadline - GetCurrentTimestamp()) / 1000);
		if (left <= 0)
			break;

		/*
		 * Nothing yet: wait holding nothing.  Outside a transaction block
		 * the call's transaction ends here (its snapshot with it); the
		 * catalog snapshot of the table lookups goes in any case.
		 */
		if (!atomic && !committed)
		{
			SPI_commit();
			MemoryContextSwitchTo(callcxt);
			committed = true;
		}
		InvalidateCatalogSnapshot();
		(void) changelog_wait(pos, 1, &epoch, NULL, 0, (int) Min(left, 60000L),
							 false);

		/*
		 * Privileges may have changed while it waited: the catalog caches
		 * hear of it only when told to look.
		 */
		AcceptInvalidationMessages();
		table_set_recheck(&ts, "watch");
	}

	/*
	 * The rows as they are now, each change's lookups in a context of its
	 * own.  An answer stops growing at WATCH_MAX_BYTES (big rows): the
	 * position is then the last change it holds, the rest comes next call.
	 */
	initStringInfo(&b);
	appendStringInfoChar(&b, '[');
	if (nmatch > 0)
	{
		Snapshot	snap;
		MemoryContext tmp = AllocSetContextCreate(CurrentMemoryContext,
												  "registry watch",
												  ALLOCSET_DEFAULT_SIZES);

		if (committed)
			PushActiveSnapshot(GetTransactionSnapshot());
		snap = RegisterSnapshot(GetLatestSnapshot());
		for (i = 0; i < nmatch; i++)
		{
			MemoryContext old;

			if (i > 0 && b.len >= WATCH_MAX_BYTES)
			{
				pos = matches[i - 1].seq;
				break;
			}
			if (i > 0)
				appendStringInfoString(&b, ", ");
			old = MemoryContextSwitchTo(tmp);
			change_json(&b, &matches[i], snap);
			MemoryContextSwitchTo(old);
			MemoryContextReset(tmp);
		}
		UnregisterSnapshot(snap);
		if (committed)
			PopActiveSnapshot();
		MemoryContextDelete(tmp);
	}
	appendStringInfoChar(&b, ']');

	if (!atomic)
	{
		SPI_finish();
		MemoryContextSwitchTo(callcxt);
	}

	desc = CreateTemplateTupleDesc(3);
	TupleDescInitEntry(desc, 1, "epoch", INT8OID, -1, 0);
	TupleDescInitEntry(desc, 2, "seq", INT8OID, -1, 0);
	TupleDescInitEntry(desc, 3, "changes", JSONBOID, -1, 0);
	desc = BlessTupleDesc(desc);
	v[0] = Int64GetDatum((int64) epoch);
	v[1] = Int64GetDatum((int64) pos);
	v[2] = DirectFunctionCall1(jsonb_in, CStringGetDatum(b.data));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, v, n)));
}

/* ---- registry.wait_for_peers ---- */

/*
 * The names the peers go by in their requests: the node name each
 * reported, or the peer's name here while none has been seen.
 */
static char **
peer_node_names(int *npeers)
{
	RegistryOwnerSave save;
	PeerStatus *st;
	int			nst;
	char	  **names;
	uint64		i;
	int			rc;
	MemoryContext outer = CurrentMemoryContext;

	st = peer_status_snapshot(&nst);
	registry_owner_begin(&save);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "registry: SPI_connect failed");
	rc = SPI_execute("SELECT name FROM registry.peers", true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "registry: could not read registry.peers: %s",
			 SPI_result_code_string(rc));
	names = MemoryContextAlloc(outer, sizeof(char *) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		char	   *name = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		const char *as = name;
		int			j;

		for (j = 0; j < nst; j++)
			if (strcmp(st[j].name, name) == 0 && st[j].remote_node[0] != '\0')
				as = st[j].remote_node;
		names[i] = MemoryContextStrdup(outer, as);
	}
	*npeers = (int) SPI_processed;
	SPI_finish();
	registry_owner_end(&save);
	return names;
}

/*
 * registry.wait_for_peers(n int, timeout interval) returns int: how many
 * peers have applied this session's last committed change, after waiting
 * for n of them (all by default) up to the timeout.
 */
Datum
registry_wait_for_peers(PG_FUNCTION_ARGS)
{
	Interval   *timeout;
	int64		timeout_ms;
	uint64		epoch;
	uint64		seq;
	char	  **names;
	int			npeers;
	int			need;

	registry_check_preloaded();
	check_not_recovering("wait_for_peers");
	registry_check_not_null(fcinfo, 1, "timeout");
	timeout = PG_GETARG_INTERVAL_P(1);
	timeout_ms = interval_ms(timeout);
	if (timeout_ms < 0 || timeout_ms > 3600 * 1000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must be between 0 and 1 hour")));
	names = peer_node_names(&npeers);
	need = PG_ARGISNULL(0) ? npeers : PG_GETARG_INT32(0);
	if (need < 0 || need > npeers)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot wait for %d peers: this node has %d", need, npeers),
				 errhint("Pass a number between 0 and %d, or NULL for all.", npeers)));
	if (publish_xact_has_changes())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("registry.wait_for_peers() cannot wait for changes that are not committed"),
				 errdetail("This transaction has changed registry tables; peers get the changes once it commits."),
				 errhint("Call it after COMMIT, as a statement of its own.")));
	seq = publish_last_commit(&epoch);
	if (seq == 0)
		PG_RETURN_INT32(npeers);	/* nothing of this session's to wait for */
	InvalidateCatalogSnapshot();
	PG_RETURN_INT32(acks_wait(epoch, seq, names, npeers, need,
							  TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														  timeout_ms)));
}
