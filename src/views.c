/*-------------------------------------------------------------------------
 *
 * views.c
 *	  Set-returning functions behind the views registry.node,
 *	  registry.tables and registry.change_log (registry.acceptors is in
 *	  acceptor.c).  Each copies what it needs out of shared memory under
 *	  the lock and formats it after releasing the lock.  Also the two
 *	  functions that give applications a key's columns without a parser:
 *	  registry.key_values() and registry.get_row().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "acceptor.h"
#include "changelog.h"
#include "digest.h"
#include "leases.h"
#include "node.h"
#include "origins.h"
#include "registry.h"
#include "shmem.h"
#include "worker_slots.h"

PG_FUNCTION_INFO_V1(registry_node_info);
PG_FUNCTION_INFO_V1(registry_table_stats);
PG_FUNCTION_INFO_V1(registry_change_log);
PG_FUNCTION_INFO_V1(registry_key_values);
PG_FUNCTION_INFO_V1(registry_get_row);

static TimestampTz
version_ts(RegVersion v)
{
	int64		ms = (int64) HLC_PHYS(v);

	return (ms - ((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000)) * 1000;
}

#define NODE_COLS 52

Datum
registry_node_info(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		v[NODE_COLS];
	bool		n[NODE_COLS] = {false};
	uint64		lease_writes,
				regressions,
				refused;
	bool		clock_ready;
	RegVersion	clock = hlc_current();
	int			i = 0;
	int			used_tables;
	uint64		first,
				last,
				overwritten,
				truncations,
				epoch;
	int64		acc_used;
	uint64		acc_evictions,
				acc_misses;
	int			norigins;
	uint64		origins_reclaimed,
				origins_unknown;
	uint64		notified,
				sent,
				lost,
				truncated;
	pid_t		maint_pid;
	ChangeLogStats cl;

	registry_check_preloaded();
	registry_check_admin();
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	hlc_counters(&lease_writes, &regressions, &refused, &clock_ready);

	changelog_stats(&cl);
	first = cl.first_seq;
	last = cl.last_seq;
	overwritten = cl.overwritten;
	truncations = cl.truncations;
	epoch = cl.epoch;
	notified = cl.notified_seq;
	sent = cl.notifications_sent;
	lost = cl.notifications_lost;
	truncated = cl.notifications_truncated;

	acceptor_counters(&acc_used, &acc_evictions, &acc_misses);

	used_tables = digest_tables_used();
	origins_counters(&norigins, &origins_reclaimed, &origins_unknown);
	maint_pid = worker_pid(REG_WORKER_MAINTENANCE);

	v[i++] = CStringGetTextDatum(registry_node_name);
	v[i++] = CStringGetTextDatum(registry_database);
	v[i++] = CStringGetTextDatum(node_state_name(node_state()));
	v[i++] = Int64GetDatum((int64) epoch);
	v[i++] = TimestampTzGetDatum(node_started_at());
	if (node_ready_at() != 0)
		v[i++] = TimestampTzGetDatum(node_ready_at());
	else
		n[i++] = true;
	/* clock */
	v[i++] = Int64GetDatum((int64) clock);
	v[i++] = TimestampTzGetDatum(version_ts(clock));
	v[i++] = BoolGetDatum(clock_ready);
	v[i++] = Int64GetDatum(hlc_clock_offset_ms());
	v[i++] = Int64GetDatum((int64) hlc_lease());
	v[i++] = Int64GetDatum((int64) lease_writes);
	v[i++] = Int64GetDatum((int64) regressions);
	v[i++] = Int64GetDatum((int64) refused);
	/* change log */
	v[i++] = Int64GetDatum((int64) last);
	v[i++] = Int64GetDatum((int64) first);
	v[i++] = Int32GetDatum(registry_change_log_size);
	v[i++] = Int64GetDatum((int64) (last >= first ? last - first + 1 : 0));
	v[i++] = Int64GetDatum((int64) overwritten);
	v[i++] = Int64GetDatum((int64) truncations);
	/* acceptors */
	v[i++] = Int32GetDatum(registry_max_acceptors);
	v[i++] = Int64GetDatum(acc_used);
	v[i++] = Int32GetDatum(registry_acceptor_ops);
	v[i++] = Int64GetDatum((int64) acc_evictions);
	v[i++] = Int64GetDatum((int64) acc_misses);
	/* tables, digests, origins */
	v[i++] = Int32GetDatum(registry_max_tables);
	v[i++] = Int32GetDatum(used_tables);
	v[i++] = Int32GetDatum(registry_digest_buckets);
	v[i++] = Int32GetDatum(registry_max_origins);
	v[i++] = Int32GetDatum(norigins);
	v[i++] = Int32GetDatum(registry_max_key_length);
	/* notifications */
	v[i++] = Int64GetDatum((int64) notified);
	v[i++] = Int64GetDatum((int64) sent);
	v[i++] = Int64GetDatum((int64) lost);
	v[i++] = Int64GetDatum((int64) truncated);
	v[i++] = Int64GetDatum((int64) shmem_total_size());
	if (maint_pid != 0)
		v[i++] = Int32GetDatum(maint_pid);
	else
		n[i++] = true;
	v[i++] = Int64GetDatum((int64) origins_reclaimed);
	v[i++] = Int64GetDatum((int64) origins_unknown);
	{
		LeaseCounters lc;

		leases_counters(&lc);
		v[i++] = Int32GetDatum(lc.capacity);
		v[i++] = Int64GetDatum(lc.used);
		v[i++] = Int64GetDatum((int64) lc.evictions);
		v[i++] = Int64GetDatum((int64) lc.grants);
		v[i++] = Int64GetDatum((int64) lc.renewals);
		v[i++] = Int64GetDatum((int64) lc.ownership_moves);
		v[i++] = Int64GetDatum((int64) lc.counts[LEASE_COUNT_REREGISTRATIONS]);
		v[i++] = Int64GetDatum((int64) lc.counts[LEASE_COUNT_EXPIRED]);
		v[i++] = Int64GetDatum((int64) lc.counts[LEASE_COUNT_SESSIONS_EXPIRED]);
		v[i++] = Int64GetDatum((int64) lc.counts[LEASE_COUNT_OWNER_EXPIRED]);
		v[i++] = Int64GetDatum((int64) lc.counts[LEASE_COUNT_HELD_MINORITY]);
		v[i++] = Int64GetDatum((int64) lc.counts[LEASE_COUNT_HELD_CAP]);
		v[i++] = BoolGetDatum(lc.minority);
	}
	Assert(i == NODE_COLS);

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, v, n)));
}

/* registry._table_stats(): digest slot contents, one row per table. */
Datum
registry_table_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	DigestTableStats *copy;
	int			ncopy;
	int			i;

	registry_check_preloaded();
	registry_check_admin();
	InitMaterializedSRF(fcinfo, 0);

	copy = palloc(sizeof(DigestTableStats) * registry_max_tables);
	ncopy = digest_stats(copy);

	for (i = 0; i < ncopy; i++)
	{
		Datum		v[6];
		bool		n[6] = {false};
		char		hex[17];

		snprintf(hex, sizeof(hex), "%016llx", (unsigned long long) copy[i].root);
		v[0] = Int32GetDatum(copy[i].tid);
		v[1] = Int64GetDatum(copy[i].live_rows);
		v[2] = Int64GetDatum(copy[i].tombstones);
		v[3] = Int64GetDatum((int64) copy[i].changes);
		if (copy[i].last_change != 0)
			v[4] = TimestampTzGetDatum(copy[i].last_change);
		else
			n[4] = true;
		v[5] = CStringGetTextDatum(hex);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
	}
	return (Datum) 0;
}

/* registry._change_log(): the ring, oldest first. */
Datum
registry_change_log(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ChangeLogChange *copy;
	uint64		first,
				last,
				epoch;
	int			n;
	int			i;

	registry_check_preloaded();
	registry_check_admin();
	InitMaterializedSRF(fcinfo, 0);

	/* the whole ring, origin names copied with it */
	n = changelog_read(0, 0, &copy, &first, &last, &epoch);
	for (i = 0; i < n; i++)
	{
		ChangeLogChange *e = &copy[i];
		Datum		v[8];
		bool		nl[8] = {false};

		v[0] = Int64GetDatum((int64) e->seq);
		v[1] = Int32GetDatum(e->tid);
		v[2] = CStringGetTextDatum(e->key);
		v[3] = CStringGetTextDatum(registry_op_name(e->op));
		v[4] = Int64GetDatum((int64) e->version);
		if (e->origin[0] != '\0')
			v[5] = CStringGetTextDatum(e->origin);
		else
			nl[5] = true;
		v[6] = TimestampTzGetDatum(e->committed_at);
		if (e->reason != 0)
			v[7] = CStringGetTextDatum("expired");
		else
			nl[7] = true;
		if (e->op == REG_OP_RESYNC)
			nl[2] = true;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nl);
	}
	return (Datum) 0;
}

/* ---- keys for applications ---- */

/*
 * registry.key_values(tbl regclass, key text) returns text[]: a key's
 * column values, in primary-key order, as the text each column's type
 * reads (so that applications need no parser of their own for key
 * texts, which quote and escape composite keys).
 */
Datum
registry_key_values(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *key = text_to_cstring(PG_GETARG_TEXT_PP(1));
	RegTable   *t;
	List	   *parts;
	Datum	   *elems;
	ListCell   *lc;
	int			i = 0;

	registry_check_preloaded();
	t = regtable_by_relid(relid, false);
	parts = keys_split(key, t->nkeys);
	elems = palloc(sizeof(Datum) * list_length(parts));
	foreach(lc, parts)
		elems[i++] = CStringGetTextDatum((char *) lfirst(lc));
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, i, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * registry.get_row(tbl regclass, key text) returns jsonb: the row of a key,
 * as to_jsonb() shows it, or NULL if the table has none.  Read by an
 * ordinary SELECT with the caller's privileges (and row-level security):
 * it is a convenience for applications that got a key from a
 * notification or a view.
 */
Datum
registry_get_row(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *key = text_to_cstring(PG_GETARG_TEXT_PP(1));
	RegTable   *t;
	List	   *parts;
	StringInfoData sql;
	Oid		   *argtypes;
	Datum	   *args;
	Datum		result = (Datum) 0;
	bool		isnull = true;
	int			nest;
	int			i;
	int			rc;

	registry_check_preloaded();
	t = regtable_by_relid(relid, false);
	parts = keys_split(key, t->nkeys);
	argtypes = palloc(sizeof(Oid) * t->nkeys);
	args = palloc(sizeof(Datum) * t->nkeys);

	/*
	 * Key texts are canonical: their values are read in the settings they
	 * were written in.  The row itself is read and shown in the caller's
	 * (time zone, search_path for policies and output functions), as the
	 * caller's own SELECT would.
	 */
	keys_canonical_gucs_push(&nest);
	for (i = 0; i < t->nkeys; i++)
	{
		Oid			infunc;
		Oid			ioparam;

		getTypeInputInfo(t->keys[i].typid, &infunc, &ioparam);
		argtypes[i] = t->keys[i].typid;
		args[i] = OidInputFunctionCall(infunc, (char *) list_nth(parts, i),
									   ioparam, -1);
	}
	keys_canonical_gucs_pop(nest);

	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT pg_catalog.to_jsonb(r) FROM ONLY %s r WHERE (", t->qualname);
	for (i = 0; i < t->nkeys; i++)
		appendStringInfo(&sql, "%sr.%s", i ? ", " : "", quote_identifier(t->keys[i].name));
	appendStringInfoString(&sql, ") = (");
	for (i = 0; i < t->nkeys; i++)
		appendStringInfo(&sql, "%s$%d", i ? ", " : "", i + 1);
	appendStringInfoChar(&sql, ')');

	SPI_connect();
	rc = SPI_execute_with_args(sql.data, t->nkeys, argtypes, args, NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "registry: could not read the row of key \"%s\"", key);
	if (SPI_processed == 1)
	{
		result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
			result = SPI_datumTransfer(result, false, -1);
	}
	SPI_finish();
	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}
