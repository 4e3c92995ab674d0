/*-------------------------------------------------------------------------
 *
 * sync.c
 *	  The sync worker: pulls from every peer over libpq and applies what
 *	  it pulls.
 *
 * One connection per peer, opened and used without blocking; all peers'
 * sockets, the latch and postmaster death are waited on together, so a
 * dead, slow or hostile peer never holds up the others (each has connect
 * and query timeouts and reconnects with backoff), and SIGTERM is served
 * at once.  Each connection runs one request at a time, in this order of
 * priority:
 *
 *	1. Once per connection, the setup: PREPARE the digest and long-poll
 *	   requests (sent by name from then on).  No LISTEN: the long poll
 *	   brings each change as soon as the peer publishes it, and a
 *	   registry_wakeup notification would only wake both sides again for
 *	   nothing (each NOTIFY there signals every listening session).
 *	2. The fast path: registry.changes_since() from the last seq applied,
 *	   rows included; applied one transaction per table and batch.  While
 *	   idle, the request is a long poll: the peer holds it (up to
 *	   min(registry.sync_interval, 1 s, registry.owner_timeout / 4)) until
 *	   it publishes a change,
 *	   so a commit there reaches us in one round trip.  A new epoch, or a
 *	   seq that fell out of the peer's ring, switches the peer to
 *	   anti-entropy (after which the fast path resumes from the peer's
 *	   current seq).
 *	3. Anti-entropy rounds (every registry.antientropy_interval, on a gap,
 *	   after a failed apply, on registry.sync_now()): per table, compare
 *	   roots; on a mismatch compare 64 groups of buckets, then the buckets
 *	   of differing groups, then the entries of differing buckets, and pull
 *	   the rows whose peer version is newer.  A table far behind the
 *	   peer's (less than half its keys, or most groups differing and fewer
 *	   keys) is pulled whole, bucket by bucket at a granularity that puts
 *	   about half a page (min(10 x registry.batch_size, 100000) rows) in
 *	   each, the next bucket asked for as soon as an answer arrives; into
 *	   an empty table without per-key checks.
 *
 * Applies commit asynchronously (synchronous_commit = off): a lost apply
 * is pulled again, since the peer still has the row at the same version;
 * registry.digest() flushes WAL before answering, so a digest a peer saw
 * as equal never covers an apply a crash could undo.
 *
 * Every result is copied and cleared before it is parsed, so an ERROR
 * (malformed answer, incompatible table, constraint violation) cannot
 * leak a PGresult; it aborts the transaction that applies one table's
 * batch, is recorded in registry.peer_status, and other tables and peers
 * go on.  An error a peer answers with is recorded likewise, logged with
 * its SQLSTATE, detail and hint, and judged by its SQLSTATE.
 *
 * This file has the main loop, the peer list and the choice of each
 * peer's next request; sync_conn.c the connections (their states are in
 * sync.h), sync_fast.c the fast path, antientropy.c the rounds, and
 * apply_batch.c applies what they pull.  Each peer's status is kept in a
 * copy and published to peer_status.c once per pass of the loop, after
 * the peer's step.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "libpq-fe.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "node.h"
#include "sync.h"
#include "worker_slots.h"
#include "registration.h"

PGDLLEXPORT void registry_sync_main(Datum arg);

static Peer *peers = NULL;
static int	npeers = 0;

/*
 * A whole-table pull may have left a table's keys out of registry.row_keys
 * (registration_defer_khash), and a restore may have left registrations to
 * take up: catalog_upkeep() sees to both.  Pending at start (a pull a
 * crash cut short, an upgrade), after a pull, and when a round finds
 * either (p->upkeep_wanted, taken up here after each step).
 */
static bool upkeep_pending = true;
static TimestampTz upkeep_retry_at = 0;
static uint64 seen_peers_changed = 0;

/*
 * What the main loop waits on: the latch, postmaster death and each
 * connected peer's socket.  Kept from one pass to the next (creating an
 * epoll set, adding every socket and closing it again on every pass was a
 * tenth of the worker's CPU at 7 peers), and rebuilt when what it holds
 * may be out of date: the peer list was reloaded, a connection was closed
 * or replaced (a closed socket leaves the set by itself, and its number
 * may come back for another connection), or a peer is connecting (libpq
 * may open a new socket for each attempt).  Otherwise only the events
 * asked for change, in place.
 */
typedef struct WaitSocket
{
	Peer	   *peer;
	uint32		conn_gen;		/* p->conn_gen: a new one means a new socket */
	pgsocket	sock;
	uint32		events;
	int			pos;			/* in wait_set */
} WaitSocket;

static WaitEventSet *wait_set = NULL;
static WaitSocket *wait_sockets = NULL; /* npeers of them at most */
static int	wait_nsockets = 0;
static bool wait_set_stale = true;

/*
 * The "registry keys" worker listing one pulled table's keys, one at a
 * time (worker_start_keys): a million keys take about a second, during
 * which this worker goes on pulling (and waits, if it applies changes to
 * that table).  A table still deferred after its worker stopped (it
 * failed: its log says why) is tried again after KEYS_RETRY_MS, by a new
 * worker; the last KEYS_FAILED_MAX such tables are remembered.
 */
#define KEYS_RETRY_MS	10000
#define KEYS_FAILED_MAX	16
static BackgroundWorkerHandle *keys_worker = NULL;
static Oid	keys_relid = InvalidOid;
static bool keys_stopped = false;	/* keys_relid's worker has stopped */
static struct
{
	Oid			relid;
	TimestampTz at;
}			keys_failed[KEYS_FAILED_MAX];
static int	keys_nfailed = 0;

/* Whether relid's keys worker failed within KEYS_RETRY_MS. */
static bool
keys_failed_lately(Oid relid, TimestampTz now)
{
	for (int i = 0; i < keys_nfailed; i++)
		if (keys_failed[i].relid == relid)
			return !TimestampDifferenceExceeds(keys_failed[i].at, now, KEYS_RETRY_MS);
	return false;
}

static void
keys_note_failure(Oid relid, TimestampTz now)
{
	int			i;

	for (i = 0; i < keys_nfailed; i++)
		if (keys_failed[i].relid == relid)
			break;
	if (i == keys_nfailed)
	{
		if (keys_nfailed < KEYS_FAILED_MAX)
			keys_nfailed++;
		else
			i = (int) (now % KEYS_FAILED_MAX);	/* forget one */
	}
	keys_failed[i].relid = relid;
	keys_failed[i].at = now;
}

/* Whether the keys worker is still running (forgotten once it stopped). */
static bool
keys_worker_running(void)
{
	pid_t		pid;
	BgwHandleStatus st;

	if (keys_worker == NULL)
		return false;
	st = GetBackgroundWorkerPid(keys_worker, &pid);
	if (st == BGWH_STARTED || st == BGWH_NOT_YET_STARTED)
		return true;
	pfree(keys_worker);
	keys_worker = NULL;
	keys_stopped = true;
	return false;
}

/*
 * List the keys of a pulled table: by a worker of its own if one can be
 * started (true), else here, in this transaction (false).
 */
static bool
list_keys(Oid relid)
{
	MemoryContext old;
	bool		started;
	TimestampTz now = GetCurrentTimestamp();

	if (keys_worker_running())
		return true;
	/* its worker stopped and the keys are still not listed: it failed */
	if (keys_stopped && relid == keys_relid)
	{
		keys_note_failure(relid, now);
		keys_stopped = false;
	}
	if (keys_failed_lately(relid, now))
		return true;
	old = MemoryContextSwitchTo(TopMemoryContext);
	started = worker_start_keys(relid, &keys_worker);
	MemoryContextSwitchTo(old);
	if (started)
	{
		keys_relid = relid;
		keys_stopped = false;
		return true;
	}
	keys_worker = NULL;
	registration_restore_khash(relid,
							   "by the sync worker: no background worker slot was free");
	return false;
}

/* What a peer's work left due for the catalog upkeep. */
static void
take_upkeep_wish(Peer *p)
{
	if (p->upkeep_wanted)
		upkeep_pending = true;
	p->upkeep_wanted = false;
}

/* Whether a peer's whole-table pull is filling table qualname now. */
static bool
pull_in_progress(const char *qualname)
{
	int			i;

	for (i = 0; i < npeers; i++)
	{
		Peer	   *p = &peers[i];

		if (p->conn && p->inflight == Q_PAGES && p->inflight_table &&
			strcmp(p->inflight_table->name, qualname) == 0)
			return true;
	}
	return false;
}

static void
catalog_upkeep_guarded(Peer *p, void *arg)
{
	MemoryContext cxt = apply_batch_xact_begin();
	List	   *regs = OidIsValid(get_extension_oid("registry", true)) ?
		regtable_all() : NIL;
	ListCell   *lc;
	bool	   *busy = arg;
	bool		keys_done = true;

	foreach(lc, regs)
	{
		RegTid	   *r = lfirst(lc);
		RegTable   *t;
		char	   *name;

		if (!r->khash_deferred)
			continue;
		if (r->relid == keys_relid)
			keys_done = false;
		if (r->restored)
		{
			/* taken up below first (which lists its keys) */
			*busy = true;
			continue;
		}
		t = regtable_by_relid(r->relid, true);
		if (t == NULL)
			continue;
		name = pstrdup(t->qualname);	/* t is rebuilt after the keys */
		if (pull_in_progress(name) || list_keys(r->relid))
			*busy = true;		/* looked at again until listed */
	}
	/* the last keys worker's table is listed: it did not fail */
	if (keys_done && !keys_worker_running())
		keys_stopped = false;
	/* and a restore that ran no DDL after loading its registrations */
	if (regs != NIL)
		registration_adopt_restored();
	apply_batch_xact_end(cxt);
}

/*
 * Keep the registrations in order: list the keys whole-table pulls
 * deferred (of tables no pull is filling now), and take up restored
 * registrations whose tables are whole.  A failure is logged and retried
 * later.
 */
static void
catalog_upkeep(void)
{
	bool		busy = false;
	int			sqlstate;
	char	   *message;

	if (!upkeep_pending || GetCurrentTimestamp() < upkeep_retry_at ||
		!node_is_ready())
		return;
	if (sync_conn_run_guarded(NULL, catalog_upkeep_guarded, &busy, &sqlstate, &message))
	{
		/* a pull still running: look again in a second, not every loop */
		upkeep_pending = busy;
		if (busy)
			upkeep_retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);
		return;
	}
	ereport(WARNING,
			(errcode(sqlstate),
			 errmsg("registry: could not list a table's keys or take up a restored table: %s",
					message),
			 errhint("It is tried again every 10 seconds.")));
	upkeep_retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 10000);
}

static void
handle_result(Peer *p, PGresult *res)
{
	ExecStatusType status = PQresultStatus(res);
	QueryKind	kind = p->inflight;
	AETable    *t = p->inflight_table;
	char	   *data = NULL;
	int			len = 0;

	Assert(CurrentMemoryContext == sync_conn_answer_cxt);
	p->inflight = Q_NONE;
	p->inflight_table = NULL;
	/* the first request on a connection is the setup, until it succeeds */
	p->state = (kind == Q_SETUP && status != PGRES_COMMAND_OK) ?
		CONN_OPEN : CONN_IDLE;

	if (status == PGRES_FATAL_ERROR || status == PGRES_NONFATAL_ERROR)
	{
		int			sqlstate;
		bool		has_code;

		has_code = sync_conn_remote_error(p, res, kind, t ? t->name : NULL,
										  &sqlstate);
		/* do not hammer a peer that answers with errors */
		p->quiet_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), p->backoff_ms);
		p->backoff_ms = Min(p->backoff_ms * 2, BACKOFF_MAX_MS);
		if (t == NULL)
		{
			/*
			 * The peer refuses requests (not one table's): it is in error,
			 * and a sync_now() waiting for it is answered now rather than
			 * at its timeout.
			 */
			sync_conn_set_state(p, PEER_ERROR);
			sync_conn_serve_failed(p);
		}
		if (t)
		{
			/* this table is skipped this round; others go on */
			t->failed = true;
			t->stage = AE_DONE;
		}
		else if (kind == Q_CHANGES && has_code &&
				 sqlstate != ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE)
			p->ae_needed = true;	/* not just "not ready yet": compare */
		if (kind == Q_PAGES)
		{
			take_upkeep_wish(p);
			upkeep_retry_at = 0;
			catalog_upkeep();
		}
		return;
	}
	if (kind == Q_SETUP)
	{
		PQclear(res);
		return;
	}
	if (kind == Q_PAGES)
	{
		/* the end of the pages: every one has been handled */
		PQclear(res);
		if (status != PGRES_TUPLES_OK)
			sync_conn_disconnect(p, "malformed answer: expected pages of bytea values");
		/* the keys are listed (by a worker) as soon as the pages end */
		take_upkeep_wish(p);
		upkeep_retry_at = 0;
		catalog_upkeep();
		return;
	}
	p->inflight = kind;			/* sync_conn_answer_bytes() counts by kind */
	data = sync_conn_answer_bytes(p, res, PGRES_TUPLES_OK, &len);
	p->inflight = Q_NONE;
	if (data == NULL)
		return;

	if (kind == Q_CHANGES)
		sync_fast_handle_changes(p, data, len);
	else
		antientropy_handle_answer(p, kind, t, data, len);
	pfree(data);
}

static bool
should_start_round(Peer *p, TimestampTz now)
{
	uint64		gen;

	if (round_active(p))
		return false;
	gen = peer_status_round_requested();
	if (gen > p->st.served_gen)
		return true;			/* asked for by sync_now() or resync() */
	if (now < p->ae_not_before)
		return false;
	return p->ae_needed ||
		TimestampDifferenceExceeds(p->last_ae, now, registry_antientropy_interval_ms);
}

/* Start the next request, or say when one will be due. */
static void
next_request(Peer *p, TimestampTz now, long *timeout)
{
	long		wait;

	/* after an error answer, the setup waits too: it may fail again */
	if (now < p->quiet_until)
	{
		*timeout = Min(*timeout, Max((long) ((p->quiet_until - now) / 1000), 1));
		return;
	}
	if (p->state == CONN_OPEN)
	{
		sync_conn_send(p, Q_SETUP, NULL, 0, NULL);
		return;
	}
	if (p->want_fast)
	{
		sync_fast_send_changes(p, 0);
		return;
	}
	if (!round_active(p) && should_start_round(p, now))
		antientropy_start_round(p);
	if (round_active(p))
	{
		antientropy_send_next(p);
		if (p->inflight != Q_NONE || p->conn == NULL)
			return;
	}

	/*
	 * Idle: wait at the peer for its next change.  The wait is short enough
	 * that sync_now() is not held up long by it (a round due is: the wait
	 * ends when it is due), and that an idle, healthy peer's answers come
	 * well within the half of registry.owner_timeout in which a peer must
	 * have answered to count towards the expiry's majority (expiry.c).
	 * Each answer is a request served and answered: at 1 s, an idle mesh
	 * spends a quarter of what it did at 250 ms on them.
	 */
	wait = Min(Min(registry_sync_interval_ms, LONG_POLL_MAX_MS),
			   Max(registry_owner_timeout_ms / 4, 1));
	if (round_active(p))
	{
		/*
		 * The round waits for another peer's whole-table pull of the same
		 * table (antientropy.c), which wakes nothing here: look again soon.
		 */
		sync_fast_send_changes(p, (int) Min(wait, FULL_WAIT_POLL_MS));
		return;
	}
	{
		TimestampTz due = p->ae_needed ? p->ae_not_before :
			Max(TimestampTzPlusMilliseconds(p->last_ae, registry_antientropy_interval_ms),
				p->ae_not_before);

		wait = Min(wait, Max((long) ((due - now) / 1000), 1));
	}
	sync_fast_send_changes(p, (int) wait);
}

/*
 * A peer not found identical for longer than the tombstone retention is
 * lost: purging no longer waits for it (peers.c), so it may hold rows
 * deleted here.  Said in peer_status whether or not it can be reached.
 */
static void
note_lost(Peer *p, TimestampTz now)
{
	TimestampTz since = p->last_converged_at ? p->last_converged_at : p->added_at;
	bool		lost = TimestampDifferenceExceeds(since, now,
												  registry_tombstone_retention_s * 1000L);

	if (lost != p->st.needs_resync && !round_active(p))
	{
		p->st.needs_resync = lost;
	}
}

static void
step(Peer *p, TimestampTz now, long *timeout)
{
	uint64		gen;

	note_lost(p, now);

	/*
	 * A new sync_now() request is a reason to try again now, whatever the
	 * backoff says: a peer that came back, or whose role was fixed, is
	 * seen at once (a failing one answers the request at once too).
	 */
	gen = peer_status_round_requested();
	if (gen > p->retried_gen)
	{
		p->retried_gen = gen;
		p->quiet_until = 0;
		p->next_connect = 0;
		p->ae_not_before = 0;
	}
	if (p->conn == NULL)
	{
		/*
		 * A request waits for the connection tried for it (a failure
		 * answers it, in sync_conn_disconnect()); one that no attempt serves now
		 * is answered at once.
		 */
		if (now >= p->next_connect)
			sync_conn_start(p);
		else
			*timeout = Min(*timeout, Max((long) ((p->next_connect - now) / 1000), 1));
		if (p->conn == NULL)
		{
			if (gen > p->st.served_gen)
				sync_conn_serve_failed(p);
			return;
		}
	}
	if (p->state == CONN_CONNECTING)
	{
		sync_conn_drive(p);
		if (p->state == CONN_CONNECTING &&
			TimestampDifferenceExceeds(p->connect_started, now, registry_connect_timeout_ms))
		{
			char		msg[128];

			snprintf(msg, sizeof(msg), "no connection within registry.connect_timeout (%d ms)",
					 registry_connect_timeout_ms);
			sync_conn_disconnect(p, msg);
		}
		if (p->state == CONN_CONNECTING)
			*timeout = Min(*timeout, registry_connect_timeout_ms);
		if (p->state == CONN_CLOSED || p->state == CONN_CONNECTING)
			return;
	}
	sync_conn_service(p, antientropy_handle_page, handle_result);
	if (p->conn == NULL)
		return;
	/* a request in flight, or a long poll's Syncs whose ends are due (sync.h) */
	if (p->inflight != Q_NONE || p->pipe != PIPE_NONE)
	{
		/*
		 * A round asked for (sync_now(), resync()) while the peer holds a
		 * long poll: the poll ends at once, not at the end of its wait.  A
		 * round under way waits with short polls of its own (next_request).
		 */
		if (p->inflight == Q_CHANGES && gen > p->st.served_gen && !round_active(p))
			sync_conn_poke(p);
		if (p->conn == NULL)
			return;
		if (TimestampDifferenceExceeds(p->query_started, now,
									   registry_query_timeout_ms + p->query_wait_ms))
		{
			char		msg[128];

			snprintf(msg, sizeof(msg), "no answer within registry.query_timeout (%d ms)",
					 registry_query_timeout_ms);
			sync_conn_disconnect(p, msg);
			return;
		}
		*timeout = Min(*timeout, registry_query_timeout_ms);
		return;
	}
	next_request(p, now, timeout);
}

/*
 * One peer's step, with anything that escapes the guards of its parts
 * (an ERROR while reading or checking an answer, out of memory) caught
 * here: it ends that peer's request and connection, is recorded and
 * retried with backoff, and never ends the worker or holds up the
 * others.  sync_conn_disconnect() clears any result still held.
 */
static void
step_guarded(Peer *p, TimestampTz now, long *timeout)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		step(p, now, timeout);
	}
	PG_CATCH();
	{
		ErrorData  *edata = apply_batch_recover(cxt);

		sync_conn_disconnect(p, apply_batch_error_text(edata));
		FreeErrorData(edata);
		/* an answer being read when it escaped: not kept until the next */
		MemoryContextReset(sync_conn_answer_cxt);
	}
	PG_END_TRY();
}

/* ---- the peer list ---- */

static void
load_peers(void)
{
	Peer	   *newp = NULL;
	int			n = 0;
	int			i,
				j;
	int			rc;
	MemoryContext old;
	MemoryContext cxt;

	cxt = apply_batch_xact_begin();
	if (OidIsValid(get_extension_oid("registry", true)))
	{
		SPI_connect();
		rc = SPI_execute("SELECT name, conninfo, added_at, last_converged_at, password_required "
						 "FROM registry.peers ORDER BY name", true, 0);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "registry: could not read registry.peers");
		old = MemoryContextSwitchTo(sync_conn_worker_cxt);
		newp = palloc0(sizeof(Peer) * Max(SPI_processed, 1));
		for (i = 0; i < (int) SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			Datum		d;

			char	   *name = SPI_getvalue(tup, desc, 1);

			strlcpy(newp[n].name, name, sizeof(newp[n].name));
			pfree(name);
			newp[n].conninfo = SPI_getvalue(tup, desc, 2);
			d = SPI_getbinval(tup, desc, 3, &isnull);
			newp[n].added_at = isnull ? 0 : DatumGetTimestampTz(d);
			d = SPI_getbinval(tup, desc, 4, &isnull);
			newp[n].last_converged_at = isnull ? 0 : DatumGetTimestampTz(d);
			d = SPI_getbinval(tup, desc, 5, &isnull);
			newp[n].password_required = isnull || DatumGetBool(d);
			n++;
		}
		MemoryContextSwitchTo(old);
		SPI_finish();
	}
	apply_batch_xact_end(cxt);

	/* keep the connections of unchanged peers */
	for (i = 0; i < n; i++)
	{
		Peer	   *np = &newp[i];
		bool		kept = false;
		bool		replaced = false;

		for (j = 0; j < npeers; j++)
		{
			Peer	   *op = &peers[j];

			if (op->seen && strcmp(op->name, np->name) == 0 &&
				strcmp(op->conninfo, np->conninfo) == 0 &&
				op->password_required == np->password_required)
			{
				char	   *conninfo = np->conninfo;
				TimestampTz added = np->added_at;

				*np = *op;
				pfree(np->conninfo);
				np->conninfo = conninfo;
				np->added_at = added;
				op->seen = false;	/* moved */
				kept = true;
				break;
			}
		}
		if (!kept)
		{
			np->backoff_ms = BACKOFF_MIN_MS;
			np->roundcxt = AllocSetContextCreate(sync_conn_worker_cxt, "registry sync round",
												 ALLOCSET_DEFAULT_SIZES);
			np->slot = peer_status_attach(np->name, &np->st);
			/*
			 * A new conninfo for a known name keeps its status slot, but
			 * not its health: that was another server's, perhaps.
			 */
			for (j = 0; j < npeers; j++)
				if (peers[j].seen && np->slot >= 0 && peers[j].slot == np->slot)
				{
					peers[j].slot = -1;
					replaced = true;
				}
			if (np->slot >= 0)
			{
				np->st.last_converged_at = np->last_converged_at;
				np->st.state = PEER_DISCONNECTED;
				if (np->st.health_changed_at == 0 || replaced)
					sync_conn_set_health(np, false, "no anti-entropy round completed yet");
				peer_status_update(np->slot, &np->st);
			}
			if (np->slot < 0)
			{
				ereport(WARNING,
						(errmsg("registry: no room for peer \"%s\"", np->name),
						 errhint("Raise registry.max_nodes and restart.")));
				MemoryContextDelete(np->roundcxt);
				np->roundcxt = NULL;
				pfree(np->conninfo);
				np->conninfo = NULL;
				np->seen = false;
				continue;
			}
		}
		np->seen = true;
	}
	/* close what is no longer configured */
	for (j = 0; j < npeers; j++)
	{
		Peer	   *op = &peers[j];

		if (!op->seen)
			continue;
		/* its connection, and a result a request in flight still holds */
		if (op->result)
			PQclear(op->result);
		if (op->conn)
			PQfinish(op->conn);
		if (op->slot >= 0)
			peer_status_detach(op->slot);
		MemoryContextDelete(op->roundcxt);
		pfree(op->conninfo);
		if (op->notice_name)
			pfree(op->notice_name);
		if (op->skip_sent)
			pfree(op->skip_sent);
	}
	if (peers)
		pfree(peers);
	peers = newp;
	npeers = n;
	sync_conn_set_peers(peers, npeers);
	wait_set_stale = true;
}

static void
close_all(int code, Datum arg)
{
	int			i;

	for (i = 0; i < npeers; i++)
		if (peers[i].conn)
			PQfinish(peers[i].conn);
}

/* The events a peer's socket is waited for, 0 if none. */
static uint32
peer_wait_events(Peer *p)
{
	if (!p->seen || p->conn == NULL || PQsocket(p->conn) < 0)
		return 0;
	if (p->state == CONN_CONNECTING)
		return (p->poll == PGRES_POLLING_READING) ? WL_SOCKET_READABLE : WL_SOCKET_WRITEABLE;
	return WL_SOCKET_READABLE | (p->state == CONN_SENDING ? WL_SOCKET_WRITEABLE : 0);
}

/* The wait set for this pass (see WaitSocket), brought up to date. */
static WaitEventSet *
wait_set_prepare(void)
{
	WaitSocket *want = palloc(sizeof(WaitSocket) * Max(npeers, 1));
	int			nwant = 0;
	bool		rebuild = wait_set == NULL || wait_set_stale;
	int			i;

	for (i = 0; i < npeers; i++)
	{
		Peer	   *p = &peers[i];
		uint32		ev = peer_wait_events(p);
		WaitSocket *w = &want[nwant];

		if (ev == 0)
			continue;
		w->peer = p;
		w->conn_gen = p->conn_gen;
		w->sock = PQsocket(p->conn);
		w->events = ev;
		if (p->state == CONN_CONNECTING ||
			nwant >= wait_nsockets ||
			wait_sockets[nwant].peer != p ||
			wait_sockets[nwant].conn_gen != w->conn_gen ||
			wait_sockets[nwant].sock != w->sock)
			rebuild = true;
		nwant++;
	}
	if (nwant != wait_nsockets)
		rebuild = true;

	if (rebuild)
	{
		if (wait_set)
			FreeWaitEventSet(wait_set);
		if (wait_sockets)
			pfree(wait_sockets);
		wait_set = CreateWaitEventSet(TopMemoryContext, nwant + 2);
		wait_sockets = MemoryContextAlloc(TopMemoryContext,
										  sizeof(WaitSocket) * Max(nwant, 1));
		AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
		for (i = 0; i < nwant; i++)
		{
			wait_sockets[i] = want[i];
			wait_sockets[i].pos = AddWaitEventToSet(wait_set, want[i].events,
													want[i].sock, NULL,
													want[i].peer);
		}
		wait_nsockets = nwant;
		wait_set_stale = false;
	}
	else
	{
		for (i = 0; i < nwant; i++)
			if (wait_sockets[i].events != want[i].events)
			{
				ModifyWaitEvent(wait_set, wait_sockets[i].pos, want[i].events, NULL);
				wait_sockets[i].events = want[i].events;
			}
	}
	pfree(want);
	return wait_set;
}

void
registry_sync_main(Datum arg)
{
	MemoryContext loopcxt;
	TimestampTz last_load = 0;

	worker_attach(REG_WORKER_SYNC);
	apply_prepare_session();
	sync_conn_init();
	apply_batch_init(sync_conn_worker_cxt);
	loopcxt = AllocSetContextCreate(TopMemoryContext, "registry sync loop",
									ALLOCSET_DEFAULT_SIZES);
	on_proc_exit(close_all, (Datum) 0);

	for (;;)
	{
		TimestampTz now;
		long		timeout = 1000;
		uint64		changed;
		WaitEvent  *events;
		int			nev;
		int			i;

		CHECK_FOR_INTERRUPTS();
		worker_exit_if_asked(0);
		MemoryContextSwitchTo(loopcxt);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			last_load = 0;
		}
		worker_check_extension(false);
		changed = peer_status_peers_changed();
		now = GetCurrentTimestamp();
		if (changed != seen_peers_changed ||
			TimestampDifferenceExceeds(last_load, now, 10000))
		{
			seen_peers_changed = changed;
			last_load = now;
			load_peers();
		}

		/* wait for replication to be possible at all */
		if (!node_is_ready())
			timeout = 100;
		else
		{
			catalog_upkeep();
			if (upkeep_pending)
				timeout = Min(timeout, 1000);
			for (i = 0; i < npeers; i++)
			{
				if (!peers[i].seen)
					continue;
				step_guarded(&peers[i], now, &timeout);
				take_upkeep_wish(&peers[i]);
				/* the one place a peer's status is published as it goes */
				peer_status_update(peers[i].slot, &peers[i].st);
				peers[i].readable = peers[i].writable = false;
			}
		}

		events = palloc(sizeof(WaitEvent) * (npeers + 2));
		nev = WaitEventSetWait(wait_set_prepare(), Max(timeout, 1), events,
							   npeers + 2, PG_WAIT_EXTENSION);
		for (i = 0; i < nev; i++)
		{
			Peer	   *p = events[i].user_data;

			if (events[i].events & WL_LATCH_SET)
				ResetLatch(MyLatch);
			if (p)
			{
				if (events[i].events & WL_SOCKET_READABLE)
					p->readable = true;
				if (events[i].events & WL_SOCKET_WRITEABLE)
					p->writable = true;
			}
		}
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(loopcxt);
	}
}
