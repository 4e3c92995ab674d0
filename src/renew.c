/*-------------------------------------------------------------------------
 *
 * renew.c
 *	  The SQL functions of ephemeral registry tables (layer 12):
 *	  registry.set_lease() makes a table ephemeral (or persistent again),
 *	  registry.renew() keeps its rows alive, registry._leases() lists the
 *	  leases this node holds (the registry.leases view).
 *
 * Every live row of an ephemeral table belongs to the node that wrote its
 * newest version (registry_origin), which holds a lease on it (leases.c):
 * the row lives until the lease's deadline, and renew() moves the
 * deadline.  For each key, renew() does the least that keeps the row:
 *
 *	1. this node holds the lease: a full TTL from now, and nothing else --
 *	   no write, no WAL, no change log entry, nothing sent to peers;
 *	2. no lease here, but the row is this node's (after a restart, an
 *	   eviction): the lease is granted, still without a write;
 *	3. the row is another node's: it becomes this node's with one write
 *	   (its registry_origin set here, which the stamp trigger turns into a
 *	   new version of this node's); publication grants the lease when the
 *	   transaction commits (publish.c) and counts the ownership move;
 *	4. no row, but registry.lease_stash holds the row as this node had it
 *	   when a peer deleted it (expired it, not having heard from this node
 *	   in time): it is inserted again, as a new version (a
 *	   re-registration);
 *	5. otherwise the key is returned: the client must write the row again.
 *
 * The writes of cases 3 and 4 are the caller's own statements (privileges
 * and row-level security apply), never the registry owner's, each in a
 * subtransaction of its own: a key whose write fails is a WARNING and is
 * returned, and the call goes on with the other keys (renew_write).
 * Cases 1 and 2 write nothing, so no statement checks them: renew()
 * requires SELECT as well as UPDATE privilege, and where row-level
 * security applies to the caller, each key is first read as the caller,
 * and a row the caller cannot see is neither renewed nor reported
 * (renew_visible).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "lease_stash.h"
#include "leases.h"
#include "publish.h"
#include "registration.h"
#include "registry.h"
#include "rows.h"

PG_FUNCTION_INFO_V1(registry_set_lease);
PG_FUNCTION_INFO_V1(registry_renew);
PG_FUNCTION_INFO_V1(registry_leases);

/* the bounds of a lease's time to live (interval comparison: 1 year = 360 days) */
#define TTL_MIN_US		(100 * 1000)
#define TTL_MAX_MONTHS	12

static void
check_ttl(Interval *ttl)
{
	Interval	min = {.time = TTL_MIN_US};
	Interval	max = {.month = TTL_MAX_MONTHS};

	if (DatumGetInt32(DirectFunctionCall2(interval_cmp, IntervalPGetDatum(ttl),
										  IntervalPGetDatum(&min))) < 0 ||
		DatumGetInt32(DirectFunctionCall2(interval_cmp, IntervalPGetDatum(ttl),
										  IntervalPGetDatum(&max))) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lease time to live %s is out of range",
						DatumGetCString(DirectFunctionCall1(interval_out,
															IntervalPGetDatum(ttl)))),
				 errdetail("It must be at least 100 milliseconds and at most 1 year.")));
}

/*
 * registry.set_lease(tbl regclass, ttl interval): make a registry table
 * ephemeral, each row living ttl after its last write or renewal; NULL:
 * persistent again.  Per node, like registry.replicate(): every node must
 * be given the same TTL.
 *
 * Writers of the table wait for the change (as for replicate()): the
 * writes in flight finish under the old TTL, and later ones see the new
 * one.  This node's leases change when the transaction commits
 * (publish_lease_table): a table made persistent loses them, a
 * table made ephemeral has the rows this node owns adopted by the expiry
 * job; a table whose TTL changes keeps its leases, which take the new TTL
 * at their next renewal.
 */
Datum
registry_set_lease(PG_FUNCTION_ARGS)
{
	Oid			relid;
	bool		persistent = PG_ARGISNULL(1);
	Relation	rel;
	RegTable   *t;
	int32		tid;
	Oid			argtypes[2] = {INTERVALOID, INT4OID};
	Datum		args[2];
	char		nulls[2] = {' ', ' '};
	RegistryOwnerSave owner;
	int			rc;

	registry_check_not_null(fcinfo, 0, "tbl");
	relid = PG_GETARG_OID(0);
	registry_check_preloaded();
	registry_check_admin();

	/* a table's lifetime rules are its owner's to set, as its registration */
	if (!pg_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_TABLE, get_rel_name(relid));
	if (!persistent)
		check_ttl(PG_GETARG_INTERVAL_P(1));

	/* blocks writers, as replicate() does */
	rel = table_open(relid, ShareRowExclusiveLock);
	t = regtable_by_relid(relid, true);
	if (t == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" is not a registry table",
						RelationGetRelationName(rel)),
				 errhint("Register it with registry.replicate() first.")));
	tid = t->tid;
	table_close(rel, NoLock);

	args[0] = persistent ? (Datum) 0 : PG_GETARG_DATUM(1);
	nulls[0] = persistent ? 'n' : ' ';
	args[1] = Int32GetDatum(tid);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "registry: SPI_connect failed");
	registry_owner_begin(&owner);
	rc = SPI_execute_with_args("UPDATE registry.replicated_tables SET lease_ttl = $1 "
							   "WHERE tid = $2",
							   2, argtypes, args, nulls, false, 0);
	if (rc != SPI_OK_UPDATE || SPI_processed != 1)
		elog(ERROR, "registry: could not record the lease of table \"%s\"",
			 get_rel_name(relid));
	registry_owner_end(&owner);
	SPI_finish();

	/* every backend rebuilds its entry for the table (catalog.c) */
	CacheInvalidateRelcacheByRelid(relid);
	CommandCounterIncrement();

	publish_lease_table(tid, persistent);
	/* rows kept for their re-registration have no use in a persistent table */
	if (persistent)
		lease_stash_forget_table(tid);
	PG_RETURN_VOID();
}

/* What renew() needs across its keys. */
typedef struct RenewState
{
	RegTable   *t;
	TimestampTz now;
	MemoryContext callcxt;		/* lives as long as the call */
	bool		rls;			/* row-level security applies to the caller */
	bool		lookup_open;
	RowLookup	rl;
	Snapshot	snap;
	bool		spi;			/* connected */
	SPIPlanPtr	see_plan;		/* with RLS: SELECT 1 ... WHERE key */
	SPIPlanPtr	take_plan;		/* case 3: UPDATE ... SET registry_origin */
	SPIPlanPtr	insert_plan;	/* case 4: INSERT ... jsonb_populate_record */
	HTAB	   *seen;			/* canonical keys past case 1 */
} RenewState;

/*
 * The SPI connection of the call, opened at its first statement and
 * closed at its end.  Its plans live in it: the subtransactions of
 * renew_write() come and go inside it, and leave it and them alone.
 */
static void
renew_connect(RenewState *rs)
{
	MemoryContext old = CurrentMemoryContext;

	if (rs->spi)
		return;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "registry: SPI_connect failed");
	/* allocations stay where they were, not in SPI's context */
	MemoryContextSwitchTo(old);
	rs->spi = true;
}

static SPIPlanPtr
renew_prepare(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "registry: could not prepare \"%s\": %s", sql,
			 SPI_result_code_string(SPI_result));
	return plan;
}

/*
 * "(k1, ...) = ($first, ...)", the key values typed as the key columns'
 * (base) types, into argtypes from argtypes[first - 1] on.
 */
static void
append_key_match(StringInfo sql, RegTable *t, int first, Oid *argtypes)
{
	int			i;

	appendStringInfoChar(sql, '(');
	for (i = 0; i < t->nkeys; i++)
	{
		appendStringInfo(sql, "%s%s", i ? ", " : "", quote_identifier(t->keys[i].name));
		argtypes[first - 1 + i] = t->keys[i].typid;
	}
	appendStringInfoString(sql, ") = (");
	for (i = 0; i < t->nkeys; i++)
		appendStringInfo(sql, "%s$%d", i ? ", " : "", first + i);
	appendStringInfoChar(sql, ')');
}

/*
 * With row-level security: "SELECT 1 FROM ONLY tbl WHERE (k1, ...) =
 * ($1, ...)", run as the caller, so the table's SELECT policies decide.
 * Not FOR UPDATE: that would lock the row, which is a write.
 */
static SPIPlanPtr
see_plan(RenewState *rs)
{
	RegTable   *t = rs->t;
	StringInfoData sql;
	Oid		   *argtypes;

	if (rs->see_plan)
		return rs->see_plan;
	renew_connect(rs);
	argtypes = palloc(sizeof(Oid) * t->nkeys);
	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT 1 FROM ONLY %s WHERE ", t->qualname);
	append_key_match(&sql, t, 1, argtypes);
	rs->see_plan = renew_prepare(sql.data, t->nkeys, argtypes);
	return rs->see_plan;
}

/*
 * Case 3: "UPDATE ONLY tbl SET registry_origin = $1 WHERE (k1, ...) =
 * ($2, ...)".
 */
static SPIPlanPtr
take_plan(RenewState *rs)
{
	RegTable   *t = rs->t;
	StringInfoData sql;
	Oid		   *argtypes;

	if (rs->take_plan)
		return rs->take_plan;
	renew_connect(rs);
	argtypes = palloc(sizeof(Oid) * (t->nkeys + 1));
	argtypes[0] = TEXTOID;
	initStringInfo(&sql);
	appendStringInfo(&sql, "UPDATE ONLY %s SET " REGISTRY_ORIGIN_COLUMN " = $1 WHERE ",
					 t->qualname);
	append_key_match(&sql, t, 2, argtypes);
	rs->take_plan = renew_prepare(sql.data, t->nkeys + 1, argtypes);
	return rs->take_plan;
}

/*
 * Case 4: "INSERT INTO tbl (c1, ...) SELECT r.c1, ... FROM
 * jsonb_populate_record(NULL::tbl, $1) r": the stashed row's columns (all
 * but the generated ones and the version columns, which the stamp trigger
 * sets).
 */
static SPIPlanPtr
insert_plan(RenewState *rs)
{
	RegTable   *t = rs->t;
	StringInfoData sql;
	Oid			argtypes[1] = {JSONBOID};
	int			i;

	if (rs->insert_plan)
		return rs->insert_plan;
	renew_connect(rs);
	initStringInfo(&sql);
	appendStringInfo(&sql, "INSERT INTO %s (", t->qualname);
	for (i = 0; i < t->ncols; i++)
		appendStringInfo(&sql, "%s%s", i ? ", " : "", quote_identifier(t->cols[i].name));
	appendStringInfo(&sql, ") %sSELECT ",
					 t->has_identity_always ? "OVERRIDING SYSTEM VALUE " : "");
	for (i = 0; i < t->ncols; i++)
		appendStringInfo(&sql, "%sr.%s", i ? ", " : "", quote_identifier(t->cols[i].name));
	appendStringInfo(&sql, " FROM pg_catalog.jsonb_populate_record(NULL::%s, $1) r",
					 t->qualname);
	rs->insert_plan = renew_prepare(sql.data, 1, argtypes);
	return rs->insert_plan;
}

/*
 * With row-level security, whether the caller sees the row of a key
 * (values: its key datums).  Cases 1 and 2 write nothing, so no policy
 * would stop them: they renew only a row the caller could read, and a row
 * the caller cannot read is answered as missing, as a key without a row
 * is, so that renew() tells no more of the table than a SELECT would.
 */
static bool
renew_visible(RenewState *rs, Datum *values)
{
	SPIPlanPtr	plan = see_plan(rs);
	bool		visible;
	int			rc;

	rc = SPI_execute_plan(plan, values, NULL, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "registry: could not read a key of %s: %s",
			 rs->t->qualname, SPI_result_code_string(rc));
	visible = SPI_processed > 0;
	/* one per key: freed now, not when the call ends */
	SPI_freetuptable(SPI_tuptable);
	return visible;
}

/* What became of the write of case 3 or 4. */
typedef enum RenewWrite
{
	WRITE_DONE,					/* the row written */
	WRITE_NONE,					/* nothing written: no row matched, or a
								 * trigger or a rule skipped it */
	WRITE_FAILED				/* an error, rolled back and reported */
} RenewWrite;

/*
 * Run the write of case 3 (reregister false) or case 4 of key: plan,
 * prepared beforehand, with args.
 *
 * The write runs in a subtransaction of its own, so that one key's error
 * -- a unique violation, a row-level security check, a trigger's error, a
 * deadlock -- costs that key only: it is rolled back and reported as a
 * WARNING with the error's SQLSTATE, message, detail and hint and a
 * context line naming the key and the table, and the caller returns the
 * key; the other keys of the call are renewed as ever.  Without it, the
 * key would abort the whole call at every renewal, and the client's other
 * keys would expire.  A query cancel, and anything that is not an ERROR,
 * ends the call as before.
 *
 * SPI as in plpgsql's exec_stmt_block: the connection and the plan are
 * the call's, made outside the subtransaction, which a rollback leaves
 * alone (it throws away only the executor state and tuple tables made
 * inside it); the memory context and the resource owner are the caller's
 * again afterwards, whichever way the subtransaction ends.
 */
static RenewWrite
renew_write(RenewState *rs, SPIPlanPtr plan, Datum *args, int expected,
			const char *key, bool reregister)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	volatile int rc = 0;
	volatile uint64 processed = 0;
	volatile bool failed = false;

	BeginInternalSubTransaction(NULL);
	/* the statement runs in the caller's context, not the subtransaction's */
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		rc = SPI_execute_plan(plan, args, NULL, false, 0);
		processed = SPI_processed;
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();

		/*
		 * The subtransaction ends first, whatever follows: an error thrown
		 * out of an internal subtransaction would abort only it, and leave
		 * the caller's transaction in a state it cannot leave.
		 */
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;

		/* a cancel (a statement timeout) ends the call, as ever */
		if (edata->elevel != ERROR || edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
			ReThrowError(edata);

		ereport(WARNING,
				(errcode(edata->sqlerrcode),
				 errmsg_internal("%s", edata->message),
				 edata->detail ? errdetail_internal("%s", edata->detail) : 0,
				 edata->hint ? errhint("%s", edata->hint) : 0,
				 errcontext("registry.renew() of key \"%s\" of table %s: %s",
							key, rs->t->qualname,
							reregister ?
							"writing the stashed row again failed; the key is returned, the stashed row dropped" :
							"taking the row over failed; the key is returned")));
		FreeErrorData(edata);
		failed = true;
	}
	PG_END_TRY();

	if (failed)
		return WRITE_FAILED;
	if (rc != expected && reregister)
		elog(ERROR, "registry: could not register key \"%s\" of %s again: %s",
			 key, rs->t->qualname, SPI_result_code_string(rc));
	if (rc != expected)
		elog(ERROR, "registry: could not take over key \"%s\" of %s: %s",
			 key, rs->t->qualname, SPI_result_code_string(rc));
	return processed == 1 ? WRITE_DONE : WRITE_NONE;
}

/* What the row of a key allowed. */
typedef enum RenewRow
{
	ROW_RENEWED,				/* case 2 or 3 */
	ROW_ABSENT,					/* no row: case 4 or 5 */
	ROW_REFUSED					/* a row the caller may not see, or whose
								 * take-over failed: returned */
} RenewRow;

/*
 * Cases 2 and 3 for the row of key (values: its key datums), if there is
 * one; visible: whether the caller may see it (renew_visible()).
 */
static RenewRow
renew_row(RenewState *rs, uint32 khash, const char *key, Datum *values,
		  bool visible)
{
	RegTable   *t = rs->t;
	VersionState st;
	Datum		args[INDEX_MAX_KEYS + 1];
	MemoryContext old;
	bool		found;
	int			i;

	/* the scan keeps what it allocates: in the call's context */
	old = MemoryContextSwitchTo(rs->callcxt);
	if (!rs->lookup_open)
	{
		/* the newest committed state: what a lease must follow */
		rs->snap = RegisterSnapshot(GetLatestSnapshot());
		row_lookup_begin(&rs->rl, t, AccessShareLock, rs->snap);
		rs->lookup_open = true;
	}
	found = row_lookup_datums(&rs->rl, values);
	MemoryContextSwitchTo(old);
	if (!found)
		return ROW_ABSENT;

	/* hidden by row-level security: not the caller's to renew, nor to know of */
	if (!visible)
		return ROW_REFUSED;

	row_version(t, rs->rl.slot, &st);
	if (st.exists && strcmp(st.origin, registry_node_name) == 0)
	{
		/* case 2: ours, without a lease; one is granted, evicting if full */
		if (!leases_adopt(t->tid, khash, key, t->lease_ttl_ms, rs->now))
		{
			LeaseChange c = {.tid = t->tid, .khash = khash, .key = key,
			.grant = true, .ttl_ms = t->lease_ttl_ms};

			/* safe outside a commit: it only takes the leases' lock */
			leases_apply(&c, 1, rs->now);
		}
		return ROW_RENEWED;
	}

	/* case 3: another node's row becomes ours (lease granted at commit) */
	args[0] = CStringGetTextDatum(registry_node_name);
	for (i = 0; i < t->nkeys; i++)
		args[i + 1] = values[i];
	switch (renew_write(rs, take_plan(rs), args, SPI_OK_UPDATE, key, false))
	{
		case WRITE_DONE:
			return ROW_RENEWED;
		case WRITE_FAILED:
			return ROW_REFUSED;
		case WRITE_NONE:
			break;
	}

	/*
	 * No row updated: deleted since the lookup, or hidden from the UPDATE
	 * by row-level security; treated as missing.
	 */
	return ROW_ABSENT;
}

/*
 * Case 4: the key's stashed row written again; false if none, or if the
 * write failed.  The entry is taken (removed) first, in the caller's
 * transaction, outside the write's subtransaction: a row that cannot be
 * written again (it breaks a constraint now, a policy refuses it) is
 * dropped with its WARNING, not kept to fail every later renewal.
 */
static bool
renew_from_stash(RenewState *rs, uint32 khash, const char *key)
{
	Jsonb	   *row;
	Datum		args[1];

	/*
	 * A caller that may not INSERT could not write it again: the row stays
	 * stashed for a client that may, and the key is returned.
	 */
	if (pg_class_aclcheck(rs->t->relid, GetUserId(), ACL_INSERT) != ACLCHECK_OK)
		return false;
	if (!lease_stash_take(rs->t, khash, key, &row))
		return false;
	args[0] = JsonbPGetDatum(row);
	if (renew_write(rs, insert_plan(rs), args, SPI_OK_INSERT, key, true) !=
		WRITE_DONE)
		return false;			/* failed, or a rule or a trigger skipped it */
	leases_count(LEASE_COUNT_REREGISTRATIONS, 1);
	return true;
}

/*
 * The keys met in one call (RenewState.seen): entries are pointers to
 * their text, copied into the call's context, so that a call with many
 * keys does not hold a key-sized buffer for each.
 */
static uint32
seen_hash(const void *key, Size keysize)
{
	const char *k = *(const char *const *) key;

	return keys_hash(k, strlen(k));
}

static int
seen_match(const void *key1, const void *key2, Size keysize)
{
	return strcmp(*(const char *const *) key1, *(const char *const *) key2);
}

/* Keys renewed under one acquisition of the lease lock (case 1). */
#define RENEW_CHUNK		256

/* What became of a key. */
typedef enum RenewOutcome
{
	RENEW_DONE,					/* cases 1 to 4 */
	RENEW_MISSING,				/* case 5, or refused: to be returned */
	RENEW_REPEATED				/* given before in the call: answered then */
} RenewOutcome;

/*
 * One key that no lease of this node's renewed as given (or any key, with
 * row-level security): cases 1 to 5, on its canonical text.
 */
static RenewOutcome
renew_slow(RenewState *rs, const char *given)
{
	RegTable   *t = rs->t;
	Datum		values[INDEX_MAX_KEYS];
	bool		isnull[INDEX_MAX_KEYS] = {false};
	char	   *key;
	uint32		khash;
	bool		visible;
	bool		found;

	/* key texts are read in the settings they are written in (keys.c) */
	if (t->needs_canonical)
	{
		int			nest;

		keys_canonical_gucs_push(&nest);
		row_key_datums(t, given, values);
		keys_canonical_gucs_pop(nest);
	}
	else
		row_key_datums(t, given, values);

	/*
	 * The key as the row's own (as publication and expiry name it): a
	 * text the client wrote differently ("01" for 1) renews the same
	 * lease.  With row-level security, only if the caller sees the row;
	 * otherwise the caller tried its text as given already.
	 */
	key = keys_encode(t->keys, t->nkeys, values, isnull, t->qualname);
	khash = keys_hash(key, strlen(key));
	visible = !rs->rls || renew_visible(rs, values);
	if (visible && (rs->rls || strcmp(key, given) != 0) &&
		leases_renew(t->tid, khash, key, t->lease_ttl_ms, rs->now) == LEASE_RENEWED)
		return RENEW_DONE;

	/*
	 * A key met before in this call was answered then (a second look
	 * would see neither the row taken over nor the one written again by
	 * the first).
	 */
	if (rs->seen == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(char *);
		ctl.entrysize = sizeof(char *);
		ctl.hash = seen_hash;
		ctl.match = seen_match;
		ctl.hcxt = rs->callcxt;
		rs->seen = hash_create("registry renew keys", 16, &ctl,
							   HASH_ELEM | HASH_FUNCTION | HASH_COMPARE |
							   HASH_CONTEXT);
	}
	(void) hash_search(rs->seen, &key, HASH_FIND, &found);
	if (found)
		return RENEW_REPEATED;
	{
		char	   *copy = MemoryContextStrdup(rs->callcxt, key);

		(void) hash_search(rs->seen, &copy, HASH_ENTER, NULL);
	}
	switch (renew_row(rs, khash, key, values, visible))
	{
		case ROW_RENEWED:
			return RENEW_DONE;
		case ROW_REFUSED:
			return RENEW_MISSING;
		case ROW_ABSENT:
			break;
	}
	return renew_from_stash(rs, khash, key) ? RENEW_DONE : RENEW_MISSING;
}

/*
 * registry.renew(tbl regclass, keys text[]) returns text[]: renew this
 * node's leases of the keys of an ephemeral table (see the file header);
 * returns the keys that have no row, each once, as given, which the
 * client must write again ('{}': all renewed).  Needs SELECT and UPDATE
 * privileges on the table: the answer tells which keys have rows.
 */
Datum
registry_renew(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(1);
	RenewState	rs;
	Datum	   *elems;
	bool	   *elnulls;
	int			n;
	int			i;
	ArrayBuildState *missing = NULL;
	MemoryContext keycxt;

	registry_check_preloaded();
	registry_check_table_privilege(relid, ACL_UPDATE, "registry.renew()");
	registry_check_table_privilege(relid, ACL_SELECT, "registry.renew()");

	memset(&rs, 0, sizeof(rs));
	rs.t = regtable_by_relid(relid, true);
	if (rs.t == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" is not a registry table", get_rel_name(relid)),
				 errhint("Register it with registry.replicate(), then make it ephemeral with registry.set_lease().")));
	if (rs.t->lease_ttl_ms <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("registry table %s is not ephemeral", rs.t->qualname),
				 errdetail("Only the rows of ephemeral tables have leases to renew."),
				 errhint("Make it ephemeral with registry.set_lease().")));
	/* (with row_security off, an error here, as for a query of the table) */
	rs.rls = check_enable_rls(relid, InvalidOid, false) == RLS_ENABLED;

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &elnulls, &n);
	for (i = 0; i < n; i++)
		if (elnulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("registry.renew() keys must not be null")));

	rs.now = GetCurrentTimestamp();
	rs.callcxt = CurrentMemoryContext;
	keycxt = AllocSetContextCreate(rs.callcxt, "registry renew key",
								   ALLOCSET_DEFAULT_SIZES);
	for (i = 0; i < n; i += RENEW_CHUNK)
	{
		int			nc = Min(RENEW_CHUNK, n - i);
		char	   *given[RENEW_CHUNK];
		uint32		khash[RENEW_CHUNK];
		LeaseRenew	fast[RENEW_CHUNK];
		int			j;

		CHECK_FOR_INTERRUPTS();
		MemoryContextSwitchTo(keycxt);
		for (j = 0; j < nc; j++)
		{
			given[j] = text_to_cstring(DatumGetTextPP(elems[i + j]));
			khash[j] = keys_hash(given[j], strlen(given[j]));
		}

		/*
		 * Case 1, the common one: no parsing, no lookup, no write, a chunk
		 * of keys under one acquisition of the lease lock.  With row-level
		 * security, every key is first read as the caller (renew_slow()).
		 */
		if (rs.rls)
			for (j = 0; j < nc; j++)
				fast[j] = LEASE_NOT_HELD;
		else
			leases_renew_many(rs.t->tid, khash, given, nc,
							  rs.t->lease_ttl_ms, rs.now, fast);

		for (j = 0; j < nc; j++)
		{
			RenewOutcome outcome = RENEW_DONE;

			if (fast[j] != LEASE_RENEWED)
			{
				CHECK_FOR_INTERRUPTS();
				MemoryContextSwitchTo(keycxt);
				outcome = renew_slow(&rs, given[j]);
			}
			MemoryContextSwitchTo(rs.callcxt);
			if (outcome == RENEW_MISSING)
				missing = accumArrayResult(missing, elems[i + j], false,
										   TEXTOID, rs.callcxt);
		}
		MemoryContextReset(keycxt);
	}

	if (rs.lookup_open)
	{
		row_lookup_end(&rs.rl);
		UnregisterSnapshot(rs.snap);
	}
	if (rs.spi)
		SPI_finish();
	MemoryContextSwitchTo(rs.callcxt);
	MemoryContextDelete(keycxt);
	if (missing == NULL)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(TEXTOID));
	PG_RETURN_DATUM(makeArrayResult(missing, rs.callcxt));
}

/*
 * registry._leases(): the leases this node holds, one row each (the
 * registry.leases view).
 */
Datum
registry_leases(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	LeaseInfo  *leases;
	int			n;
	int			i;

	registry_check_preloaded();
	registry_check_admin();
	InitMaterializedSRF(fcinfo, 0);

	leases = leases_snapshot(&n);
	for (i = 0; i < n; i++)
	{
		LeaseInfo  *l = &leases[i];
		Datum		v[8];
		bool		nl[8] = {false};

		v[0] = Int32GetDatum(l->tid);
		v[1] = CStringGetTextDatum(l->key);
		v[2] = TimestampTzGetDatum(l->granted_at);
		v[3] = TimestampTzGetDatum(l->renewed_at);
		if (l->deadline != 0)
			v[4] = TimestampTzGetDatum(l->deadline);
		else
			nl[4] = true;
		v[5] = Int64GetDatum((int64) l->renewals);
		if (l->session_pid != 0)
			v[6] = Int32GetDatum(l->session_pid);
		else
			nl[6] = true;
		if (l->session_ended_at != 0)
			v[7] = TimestampTzGetDatum(l->session_ended_at);
		else
			nl[7] = true;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nl);
	}
	return (Datum) 0;
}
