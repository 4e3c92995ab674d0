/*-------------------------------------------------------------------------
 *
 * peers.c
 *	  The SQL side of replication: registry.add_peer / remove_peer, the
 *	  peer_status view, registry.sync_now and registry.resync.  The sync worker (sync.c) does the work; these
 *	  functions configure it, wake it and wait for it.
 *
 * The tombstone purge (registry.purge_tombstones) is in purge.c, with
 * its rule.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "libpq-fe.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "peer_status.h"
#include "publish.h"
#include "registry.h"
#include "row_keys.h"
#include "worker_slots.h"

PG_FUNCTION_INFO_V1(registry_add_peer);
PG_FUNCTION_INFO_V1(registry_remove_peer);
PG_FUNCTION_INFO_V1(registry_peer_status);
PG_FUNCTION_INFO_V1(registry_sync_now);
PG_FUNCTION_INFO_V1(registry_resync);

static bool peers_changed_pending = false;

static void
peers_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && peers_changed_pending)
	{
		peer_status_note_peers_changed();
		worker_set_latch(REG_WORKER_SYNC);
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PREPARE)
		peers_changed_pending = false;
}

static void
note_peers_changed(void)
{
	static bool registered = false;

	if (!registered)
	{
		RegisterXactCallback(peers_xact_callback, NULL);
		registered = true;
	}
	peers_changed_pending = true;
}

/* registry.add_peer(name text, conninfo text) */
Datum
registry_add_peer(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *conninfo = text_to_cstring(PG_GETARG_TEXT_PP(1));
	PQconninfoOption *opts;
	PQconninfoOption *opt;
	char	   *err = NULL;
	bool		has_password = false;
	bool		password_required;
	Oid			argtypes[3] = {TEXTOID, TEXTOID, BOOLOID};
	Datum		args[3];
	int			rc;
	RegistryOwnerSave owner;

	registry_check_preloaded();
	registry_check_admin();
	if (!registry_valid_node_name(name))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid peer name \"%s\"", name),
				 errdetail("Peer names are at most %d bytes of letters, digits and \"_-.:@\".",
						   REGISTRY_NAME_LEN - 1),
				 errhidestmt(true)));
	if (strcmp(name, registry_node_name) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"%s\" is this node's own name", name),
				 errhint("Name the peer after its registry.node_name."),
				 errhidestmt(true)));

	/*
	 * The string may hold a password: no error shows it, nor any part of
	 * it (libpq's message quotes the token it could not parse), nor the
	 * statement (errhidestmt), which would repeat it in the server log.
	 */
	opts = PQconninfoParse(conninfo, &err);
	if (opts == NULL)
	{
		/* a keyword libpq does not know is safe to name: it is a keyword */
		bool		keyword = err && strncmp(err, "invalid connection option \"", 27) == 0 &&
			strchr(err + 27, '"') != NULL && strchr(err + 27, '"')[1] == '\n';
		char	   *shown = keyword ? pnstrdup(err, strchr(err + 27, '"') + 1 - err) : NULL;

		if (err)
			PQfreemem(err);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid connection string for peer \"%s\"", name),
				 shown ? errdetail("%s.", shown) :
				 errdetail("libpq cannot parse it; it is not shown, as it may hold a password."),
				 errhidestmt(true)));
	}
	for (opt = opts; opt->keyword; opt++)
		if (strcmp(opt->keyword, "password") == 0 && opt->val && opt->val[0])
			has_password = true;
	PQconninfoFree(opts);

	/*
	 * The sync worker connects as this server's OS user: without a password
	 * of its own a peer could be this very server (peer authentication, a
	 * ~/.pgpass, client certificates), reached with a superuser's identity.
	 * As dblink and postgres_fdw do, a non-superuser must give a password,
	 * and the worker will refuse a connection that did not use it.
	 */
	password_required = !superuser();
	if (password_required && !has_password)
		ereport(ERROR,
				(errcode(ERRCODE_S_R_E_PROHIBITED_SQL_STATEMENT_ATTEMPTED),
				 errmsg("password is required"),
				 errdetail("Non-superusers must give a password in a peer's connection string."),
				 errhint("Add password=... to the connection string, or have a superuser add the peer."),
				 errhidestmt(true)));

	SPI_connect();
	args[0] = CStringGetTextDatum(name);
	args[1] = CStringGetTextDatum(conninfo);
	args[2] = BoolGetDatum(password_required);
	registry_owner_begin(&owner);
	rc = SPI_execute_with_args("INSERT INTO registry.peers (name, conninfo, password_required) VALUES ($1, $2, $3) "
							   "ON CONFLICT (name) DO UPDATE SET conninfo = EXCLUDED.conninfo, "
							   "password_required = EXCLUDED.password_required",
							   3, argtypes, args, NULL, false, 0);
	registry_owner_end(&owner);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "registry: could not record peer \"%s\"", name);
	SPI_finish();
	note_peers_changed();
	PG_RETURN_VOID();
}

/* registry.remove_peer(name text) returns boolean */
Datum
registry_remove_peer(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	int			rc;
	bool		removed;
	RegistryOwnerSave owner;

	registry_check_preloaded();
	registry_check_admin();
	SPI_connect();
	args[0] = CStringGetTextDatum(name);
	registry_owner_begin(&owner);
	rc = SPI_execute_with_args("DELETE FROM registry.peers WHERE name = $1",
							   1, argtypes, args, NULL, false, 0);
	registry_owner_end(&owner);
	if (rc != SPI_OK_DELETE)
		elog(ERROR, "registry: could not remove peer \"%s\"", name);
	removed = SPI_processed > 0;
	SPI_finish();
	if (!removed)
		ereport(NOTICE, (errmsg("\"%s\" is not a peer", name)));
	note_peers_changed();
	PG_RETURN_BOOL(removed);
}

#define TS_OR_NULL(i, ts) \
	do { if ((ts) != 0) v[i] = TimestampTzGetDatum(ts); else n[i] = true; } while (0)

/* registry._peer_status(): the shared status of every peer. */
Datum
registry_peer_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	PeerStatus *copy;
	int			ncopy;
	int			i;
	TimestampTz now = GetCurrentTimestamp();
	bool		sync_running;

	registry_check_preloaded();
	registry_check_admin();
	InitMaterializedSRF(fcinfo, 0);

	copy = peer_status_snapshot(&ncopy);
	/* health is the sync worker's word: without it, no peer is healthy */
	sync_running = worker_pid(REG_WORKER_SYNC) != 0;

	for (i = 0; i < ncopy; i++)
	{
		PeerStatus *p = &copy[i];
		Datum		v[31];
		bool		n[31] = {false};
		int64		lag_changes;
		int64		lag_ms = 0;
		bool		lag_known;

		/*
		 * Lag is known only while the worker follows the peer's change log;
		 * unknown (NULL), not zero, while it cannot reach the peer.
		 */
		lag_known = (p->state == PEER_STREAMING || p->state == PEER_ANTIENTROPY) &&
			p->peer_epoch != 0;
		lag_changes = p->peer_last_seq > p->consumed_seq ?
			(int64) (p->peer_last_seq - p->consumed_seq) : 0;
		if (lag_changes > 0 && p->caught_up_at != 0)
			lag_ms = (now - p->caught_up_at) / 1000;

		v[0] = CStringGetTextDatum(p->name);
		if (p->remote_node[0])
			v[1] = CStringGetTextDatum(p->remote_node);
		else
			n[1] = true;
		v[2] = CStringGetTextDatum(peer_status_state_name(p->state));
		v[3] = Int64GetDatum((int64) p->peer_epoch);
		v[4] = Int64GetDatum((int64) p->consumed_seq);
		v[5] = Int64GetDatum((int64) p->peer_last_seq);
		v[6] = Int64GetDatum(lag_changes);
		v[7] = Int64GetDatum(lag_ms);
		n[6] = n[7] = !lag_known;
		v[8] = Int64GetDatum((int64) p->connects);
		TS_OR_NULL(9, p->connected_since);
		v[10] = Int64GetDatum((int64) p->fast_batches);
		v[11] = Int64GetDatum((int64) p->rounds);
		v[12] = Int64GetDatum(p->round_buckets_compared);
		v[13] = Int64GetDatum(p->round_buckets_mismatched);
		v[14] = Int64GetDatum((int64) p->rows_pulled);
		v[15] = Int64GetDatum((int64) p->bytes_pulled);
		v[16] = Int64GetDatum((int64) p->rows_applied);
		v[17] = Int64GetDatum((int64) p->rows_skipped);
		v[18] = Int64GetDatum((int64) p->versions_refused);
		v[19] = Int64GetDatum((int64) p->rows_refused_purged);
		TS_OR_NULL(20, p->last_success);
		TS_OR_NULL(21, p->last_converged_at);
		v[22] = BoolGetDatum(p->needs_resync);
		v[23] = Int64GetDatum((int64) p->errors);
		if (p->last_error[0])
			v[24] = CStringGetTextDatum(p->last_error);
		else
			n[24] = true;
		TS_OR_NULL(25, p->last_error_at);
		v[26] = Int64GetDatum((int64) p->bytes_sent);
		v[27] = Int64GetDatum((int64) p->round_bytes);
		v[28] = BoolGetDatum(p->healthy && sync_running);
		TS_OR_NULL(29, p->health_changed_at);
		if (!sync_running)
			v[30] = CStringGetTextDatum("the registry sync worker is not running");
		else if (p->problem[0] && !p->healthy)
			v[30] = CStringGetTextDatum(p->problem);
		else
			n[30] = true;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
	}
	return (Datum) 0;
}

/*
 * sync_now() returns false: one NOTICE per peer that did not sync, saying
 * why (a round that ended incomplete, or none within the time allowed),
 * with the peer's current problem as peer_status shows it.
 */
static void
explain_not_synced(List *names, uint64 gen, int64 timeout_ms)
{
	ListCell   *lc;
	char		timeout_text[32];

	snprintf(timeout_text, sizeof(timeout_text), INT64_FORMAT, timeout_ms);

	foreach(lc, names)
	{
		const char *name = lfirst(lc);
		PeerStatus	st;
		bool		found;

		found = peer_status_find(name, &st);
		if (!found)
			ereport(NOTICE,
					(errmsg("sync with peer \"%s\" not confirmed: the sync worker has not taken it up yet", name)));
		else if (st.served_gen < gen)
			ereport(NOTICE,
					(errmsg("sync with peer \"%s\" not confirmed: no round completed within the time allowed (%s ms; state %s)",
							name, timeout_text, peer_status_state_name(st.state)),
					 st.problem[0] ? errdetail("%s", st.problem) : 0,
					 errhint("A round with an idle peer takes up to a few hundred milliseconds.")));
		else if (!st.served_converged)
			ereport(NOTICE,
					(errmsg("sync with peer \"%s\" not confirmed: the round did not complete", name),
					 st.problem[0] ? errdetail("%s", st.problem) : 0));
	}
}

/*
 * registry.sync_now(peer text default null, timeout interval default '30s')
 *
 * Wake the sync worker and wait until it has completed a round (the
 * peer's change log drained, every table's digests compared and every
 * newer row pulled) that started after this call, with that peer or with
 * every peer.  True if each such round left this node with everything
 * the peer had.
 */
Datum
registry_sync_now(PG_FUNCTION_ARGS)
{
	char	   *peer = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	Interval   *iv = PG_ARGISNULL(1) ? NULL : PG_GETARG_INTERVAL_P(1);
	int64		timeout_ms = 30000;
	TimestampTz deadline;
	uint64		gen;
	bool		result = false;
	List	   *names = NIL;
	int			rc;

	registry_check_preloaded();
	registry_check_admin();
	if (iv)
		timeout_ms = iv->time / 1000 +
			((int64) iv->day * SECS_PER_DAY + (int64) iv->month * 30 * SECS_PER_DAY) * 1000;
	if (timeout_ms < 0)
		timeout_ms = 0;

	/* the peers to wait for, as configured (committed) */
	SPI_connect();
	if (peer)
	{
		Oid			argtypes[1] = {TEXTOID};
		Datum		args[1] = {CStringGetTextDatum(peer)};

		rc = SPI_execute_with_args("SELECT name FROM registry.peers WHERE name = $1",
								   1, argtypes, args, NULL, true, 0);
	}
	else
		rc = SPI_execute("SELECT name FROM registry.peers", true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "registry: could not read the peer list");
	for (uint64 i = 0; i < SPI_processed; i++)
		names = lappend(names, SPI_getvalue(SPI_tuptable->vals[i],
											SPI_tuptable->tupdesc, 1));
	SPI_finish();
	if (peer && names == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("\"%s\" is not a peer", peer)));
	if (names == NIL)
		PG_RETURN_BOOL(true);	/* nothing to sync with */

	gen = peer_status_request_round();
	worker_set_latch(REG_WORKER_SYNC);

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	result = peer_status_wait_served(names, gen, deadline);
	if (!result)
		explain_not_synced(names, gen, timeout_ms);
	PG_RETURN_BOOL(result);
}

static void
check_resync_allowed(Oid relid)
{
	(void) regtable_by_relid(relid, false);
	registry_check_table_privilege(relid, ACL_DELETE, "registry.resync()");
}

/*
 * registry.resync(tbl): discard this node's rows and tombstones of a
 * table, without replicating the removal, and let anti-entropy refill it
 * from the peers.  For a node whose peers report it needs a resync.
 */
Datum
registry_resync(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	RegTable   *t;
	char		sql[512];
	RegistryOwnerSave owner;

	registry_check_preloaded();
	registry_check_admin();

	/*
	 * Everything that can refuse is checked before the lock: otherwise any
	 * admin could hold any table (pg_class, say) exclusively while waiting
	 * to be refused.  Emptying the table is the caller's own DELETE, and
	 * it must be a registry table; both are checked again once locked.
	 */
	check_resync_allowed(relid);
	LockRelationOid(relid, AccessExclusiveLock);
	check_resync_allowed(relid);
	t = regtable_by_relid(relid, false);

	SPI_connect();
	publish_mode_push(&(CaptureMode) {.kind = CAPTURE_MODE_SUPPRESS, .table = t});
	snprintf(sql, sizeof(sql), "DELETE FROM ONLY %s", t->qualname);
	if (SPI_execute(sql, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "registry: could not empty %s", t->qualname);
	publish_mode_pop(CAPTURE_MODE_SUPPRESS);
	row_keys_clear(t->tid);
	registry_owner_begin(&owner);
	snprintf(sql, sizeof(sql), "DELETE FROM registry.tombstones WHERE tid = %d", t->tid);
	if (SPI_execute(sql, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "registry: could not forget the tombstones of %s", t->qualname);
	/* a refill must accept every row the peers have */
	snprintf(sql, sizeof(sql),
			 "UPDATE registry.replicated_tables SET purge_horizon = 0 WHERE tid = %d", t->tid);
	if (SPI_execute(sql, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "registry: could not reset the purge horizon of %s", t->qualname);
	registry_owner_end(&owner);
	SPI_finish();
	CacheInvalidateRelcacheByRelid(relid);
	publish_reset_table(t);

	/* compare everything with every peer at once */
	(void) peer_status_request_round();
	note_peers_changed();
	PG_RETURN_VOID();
}
