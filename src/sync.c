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
 *	1. LISTEN registry_wakeup, once per connection: the peer's maintenance
 *	   worker notifies after its commits, which wakes us at once.
 *	2. The fast path: registry.changes_since() from the last seq applied,
 *	   rows included; applied one transaction per table and batch.  While
 *	   idle, the request is a long poll: the peer holds it (up to
 *	   min(registry.sync_interval, 250 ms)) until it publishes a change,
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
 * go on.
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
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "message.h"
#include "peer_status.h"
#include "registry.h"
#include "rows.h"
#include "shmem.h"
#include "tombstones.h"

PGDLLEXPORT void registry_sync_main(Datum arg);

typedef enum QueryKind
{
	Q_NONE,
	Q_LISTEN,
	Q_CHANGES,
	Q_DIGEST,
	Q_ENTRIES,
	Q_FETCH,
	Q_PAGES						/* a whole table, one result per page */
} QueryKind;

/*
 * The state of a peer's connection.  p->conn is NULL exactly in
 * CONN_CLOSED; p->inflight names the request in CONN_SENDING and
 * CONN_WAITING (Q_NONE otherwise); and a LISTEN is the first request on
 * every connection, sent again until it succeeds.
 *
 *	from		event								to
 *	----		-----								--
 *	CLOSED		start_connect(): connection started	CONNECTING
 *	CONNECTING	PQconnectPoll() OK (password rule)	OPEN
 *	OPEN		LISTEN sent							SENDING, WAITING
 *	IDLE		a request sent (next_request)		SENDING, WAITING
 *	SENDING		libpq sent the rest of it			WAITING
 *	SENDING,	the request ended:
 *	WAITING		  a LISTEN that failed				OPEN
 *				  any other							IDLE
 *	any			disconnect(): an error, a timeout,	CLOSED
 *				a peer removed or changed
 *
 * Which request goes next (next_request) is not the connection's state:
 * want_fast (a changes request is due at once: after connecting, on a
 * notification, while the peer has more) and a round in progress
 * (round_active) outlive any one request.
 */
typedef enum ConnState
{
	CONN_CLOSED,				/* no connection; next_connect says when */
	CONN_CONNECTING,			/* PQconnectPoll() under way (poll) */
	CONN_OPEN,					/* connected, LISTEN not done */
	CONN_IDLE,					/* listening, no request */
	CONN_SENDING,				/* a request not fully sent */
	CONN_WAITING				/* a request sent, its end not received */
} ConnState;

typedef enum AEStage
{
	AE_ROOT,					/* compare roots */
	AE_GROUPS,					/* compare 64 groups of buckets */
	AE_BUCKETS,					/* compare the buckets of a differing group */
	AE_ENTRIES,					/* list the keys of differing buckets */
	AE_FETCH,					/* pull the rows newer on the peer */
	AE_FULL,					/* pull the whole table */
	AE_VERIFY,					/* compare roots again */
	AE_DONE
} AEStage;

#define AE_GROUP_FANOUT		64
/* what one key queued to fetch costs: its copy, chunk header, pointer */
#define FETCH_KEY_COST(key)	(MAXALIGN(strlen(key) + 1) + 16 + 2 * sizeof(char *))
#define AE_BUCKETS_PER_CALL 256
#define AE_ENTRIES_PER_CALL 10000
#define BACKOFF_MIN_MS		500
#define LONG_POLL_MAX_MS	250		/* longest wait of a change-log request */
#define BACKOFF_MAX_MS		30000

/* One table's progress in an anti-entropy round with one peer. */
typedef struct AETable
{
	char	   *name;
	AEStage		stage;
	int			nb;				/* bucket granularity: ours or the peer's */
	int		   *todo;			/* differing groups, then differing buckets */
	int			ntodo;
	int			itodo;
	int		   *buckets;
	int			nbuckets;
	char	  **fetch;			/* keys whose live row is newer on the peer */
	int			nfetch;
	int			maxfetch;
	int			ifetch;
	bool		resume;			/* paging through entries */
	uint32		after;
	bool		identical;
	bool		complete;
	bool		failed;
	bool		fresh;			/* this node had no entry of the table */
	bool		behind;			/* ... fewer entries than the peer */
	bool		full_asked;		/* a whole-table pull was asked for */

	/*
	 * What one table may cost a round: the peer's answers must stay near
	 * the entries its root digest counted, and the keys queued to fetch
	 * within registry.max_message_size; past that the table is left
	 * incomplete until the next round.
	 */
	int64		peer_count;		/* live rows and tombstones the peer counted */
	int64		entries_seen;	/* entries and rows received this round */
	Size		fetch_bytes;	/* key bytes queued in fetch */
	bool		incomplete;		/* keys left for the next round */
	int			fetch_start;	/* first key of the fetch in flight */
	int			fetch_asked;	/* ... and how many */
	int			page_rows;		/* rows per page of the pull asked for */
} AETable;

typedef struct Peer
{
	char		name[REGISTRY_NAME_LEN];
	char	   *conninfo;
	bool		password_required;	/* added by a non-superuser */
	char	   *notice_name;	/* the name libpq's notices are logged with */
	bool		name_warned;	/* said that it reports another name */
	uint64		retried_gen;	/* last sync_now() request retried for */
	TimestampTz added_at;
	TimestampTz last_converged_at;
	bool		seen;
	int			slot;			/* its status slot, -1 if none */
	PeerStatus	st;				/* its status, published once per loop */

	PGconn	   *conn;
	ConnState	state;
	PostgresPollingStatusType poll;
	TimestampTz connect_started;
	TimestampTz next_connect;
	int			backoff_ms;
	int			apply_backoff_ms;	/* grows while applying keeps failing */
	TimestampTz ae_not_before;	/* ... and delays the rounds it asks for */
	bool		readable;		/* the socket reported ready */
	bool		writable;
	QueryKind	inflight;
	PGresult   *result;			/* inflight's result, until the request ends */
	TimestampTz query_started;
	int			query_wait_ms;	/* the peer may hold this request so long */
	TimestampTz quiet_until;	/* after a failed request: no new one before */
	AETable    *inflight_table;

	/* fast path */
	bool		have_position;
	uint64		epoch;
	uint64		consumed;
	bool		want_fast;

	/* anti-entropy */
	bool		ae_needed;
	TimestampTz last_ae;
	TimestampTz ae_started;
	uint64		ae_gen;
	bool		ae_errors;
	uint64		ae_bytes;		/* exchanged by this round's requests */
	AETable    *tables;
	int			ntables;
	int			itable;
	MemoryContext roundcxt;
} Peer;

/* Whether an anti-entropy round is under way: it has its tables. */
static inline bool
round_active(Peer *p)
{
	return p->tables != NULL;
}

static Peer *peers = NULL;
static int	npeers = 0;

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

/*
 * A whole-table pull may have left a table's keys out of registry.row_keys
 * (regtable_defer_khash), and a restore may have left registrations to
 * take up: catalog_upkeep() sees to both.  Pending at start (a pull a
 * crash cut short, an upgrade), after a pull, and when a round finds
 * either.
 */
static bool upkeep_pending = true;
static TimestampTz upkeep_retry_at = 0;
static uint64 seen_peers_changed = 0;

/*
 * The sync worker's memory contexts, by lifetime:
 *
 *	SyncContext		the worker's life: the peer list (peers[], conninfo,
 *					notice names), prepared apply statements (each in a
 *					context of its own under it, see cached_columns).
 *	p->roundcxt		one peer's anti-entropy round: its tables' progress,
 *					bucket lists and the keys queued to fetch (one table's
 *					queue at a time).  Reset when the round ends or the
 *					connection drops.
 *	loop context	one pass of the main loop: the wait event set.
 *	AnswerContext	one answer, or one page of a whole-table pull: the
 *					answer's bytes, the inflated payload, what it is read
 *					into, the batches built from it.  Reset after each, so
 *					that a peer streaming pages faster than they are
 *					handled cannot make memory grow.
 *	transactions	what one apply or catalog step allocates.
 */
static MemoryContext SyncContext = NULL;
static MemoryContext AnswerContext = NULL;

/* ---- status ---- */

static void
set_state(Peer *p, int state)
{
	p->st.state = state;
}

/*
 * A message as one clean line of at most size - 1 bytes: libpq's
 * messages come with newlines, tabs and "ERROR:  " prefixes.
 */
static void
one_line(char *out, size_t size, const char *msg)
{
	char		buf[1024];
	size_t		n = 0;
	size_t		i;
	int			enc = GetDatabaseEncoding();
	bool		space = false;
	bool		newline = false;
	const char *c;

	for (c = msg; *c && n + 1 < sizeof(buf); c++)
	{
		if (*c == '\n' || *c == '\r' || *c == '\t' || *c == ' ')
		{
			space = (n > 0);
			newline |= (n > 0 && *c == '\n');
			continue;
		}
		/* lines joined: keep them apart ("refused; Is the server ...") */
		if (newline && n + 3 < sizeof(buf) && !strchr(".:;,!?", buf[n - 1]))
			buf[n++] = ';';
		if (space && n + 2 < sizeof(buf))
			buf[n++] = ' ';
		space = newline = false;
		buf[n++] = *c;
	}
	buf[n] = '\0';

	/*
	 * A peer's text need not be valid here, and a cut (here or by the
	 * caller) may have split its last character: keep what is valid, drop
	 * a character cut short at the end, '?' for any other invalid byte.
	 */
	for (i = 0; i < n;)
	{
		i += pg_encoding_verifymbstr(enc, buf + i, (int) (n - i));
		if (i >= n)
			break;
		if (pg_encoding_mblen(enc, buf + i) > (int) (n - i))
		{
			n = i;
			break;
		}
		buf[i++] = '?';
	}
	buf[n] = '\0';
	n = pg_mbcliplen(buf, (int) n, (int) size - 1);
	memcpy(out, buf, n);
	out[n] = '\0';
}

/* Health changes (in the peer's status copy). */
static void
set_health(Peer *p, bool healthy, const char *problem)
{
	if (p->st.healthy != healthy || p->st.health_changed_at == 0)
		p->st.health_changed_at = GetCurrentTimestamp();
	p->st.healthy = healthy;
	strlcpy(p->st.problem, healthy ? "" : problem, sizeof(p->st.problem));
}

static void
record_error(Peer *p, const char *msg)
{
	char		buf[256];

	/* one line in the view */
	one_line(buf, sizeof(buf), msg);
	strlcpy(p->st.last_error, buf, sizeof(p->st.last_error));
	p->st.last_error_at = GetCurrentTimestamp();
	p->st.errors++;
	set_health(p, false, buf);
	p->ae_errors = true;
	ereport(LOG,
			(errmsg("registry: peer \"%s\": %s", p->name, buf)));
}

/*
 * Rows the peer has that this node refused: older than tombstones purged
 * here, they may be deletions the peer missed.  The round is then not
 * complete (sync_now() says false) and the error says what to do.
 */
static void
note_refused_purged(Peer *p, const char *table, int n)
{
	char		msg[256];

	snprintf(msg, sizeof(msg),
			 "%d rows of %s refused: older than tombstones purged on this node (they may have been deleted); "
			 "if the peer missed deletions, run registry.resync() there",
			 n, table);
	record_error(p, msg);
}

static void
note_success(Peer *p)
{
	p->backoff_ms = BACKOFF_MIN_MS;
	p->st.last_success = GetCurrentTimestamp();
	/* an error answer left it in state error: it answers again */
	if (p->st.state == PEER_ERROR && p->state != CONN_CLOSED &&
		p->state != CONN_CONNECTING)
		p->st.state = round_active(p) ? PEER_ANTIENTROPY : PEER_STREAMING;
}

/* A sync_now() request is waiting and this peer cannot serve it: say so. */
static void
serve_request_failed(Peer *p)
{
	uint64		gen;

	gen = peer_status_round_requested();
	if (p->st.served_gen < gen)
	{
		p->st.served_gen = gen;
		p->st.served_converged = false;
	}
}

/* ---- connections ---- */

static void
disconnect(Peer *p, const char *why)
{
	if (why)
		record_error(p, why);
	if (p->result)
		PQclear(p->result);
	p->result = NULL;
	if (p->conn)
		PQfinish(p->conn);
	p->conn = NULL;
	p->state = CONN_CLOSED;
	p->name_warned = false;
	p->inflight = Q_NONE;
	if (p->roundcxt)
		MemoryContextReset(p->roundcxt);
	p->tables = NULL;
	p->next_connect = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), p->backoff_ms);
	p->backoff_ms = Min(p->backoff_ms * 2, BACKOFF_MAX_MS);
	set_state(p, why ? PEER_ERROR : PEER_DISCONNECTED);
	if (!why)
	{
		if (p->st.healthy)
			set_health(p, false, "not connected");
	}
	serve_request_failed(p);
}

/*
 * Notices the peer sends on the connection (a WARNING before an immediate
 * shutdown, say) go to the server log with the peer's name, not to the
 * worker's stderr.
 */
static void
peer_notice(void *arg, const PGresult *res)
{
	static const char *const levels[] = {"WARNING", "NOTICE", "INFO", "LOG", "DEBUG"};
	const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
	const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	const char *level = "NOTICE";
	char		line[512];
	int			i;

	/* the level is the peer's word too: only a known one is repeated */
	for (i = 0; sev && i < (int) lengthof(levels); i++)
		if (strcmp(sev, levels[i]) == 0)
			level = levels[i];
	one_line(line, sizeof(line), msg ? msg : PQresultErrorMessage(res));
	ereport(LOG,
			(errmsg("registry: peer \"%s\" sent %s: %s", (const char *) arg,
					level, line)));
}

static void
start_connect(Peer *p)
{
	const char *keys[] = {"dbname", "fallback_application_name", "client_encoding", NULL};
	const char *vals[4];
	char		appname[NAMEDATALEN + 16];

	snprintf(appname, sizeof(appname), "registry sync %s", registry_node_name);
	vals[0] = p->conninfo;
	vals[1] = appname;
	/* the peer's messages (errors, notices) in this database's encoding */
	vals[2] = GetDatabaseEncodingName();
	vals[3] = NULL;
	p->conn = PQconnectStartParams(keys, vals, true);
	p->connect_started = GetCurrentTimestamp();
	if (p->conn == NULL || PQstatus(p->conn) == CONNECTION_BAD)
	{
		char		msg[256];

		snprintf(msg, sizeof(msg), "could not connect: %s",
				 p->conn ? PQerrorMessage(p->conn) : "out of memory");
		disconnect(p, msg);
		return;
	}
	if (p->notice_name == NULL)
		p->notice_name = MemoryContextStrdup(SyncContext, p->name);
	PQsetNoticeReceiver(p->conn, peer_notice, p->notice_name);
	if (PQsetnonblocking(p->conn, 1) != 0)
	{
		disconnect(p, "could not make the connection non-blocking");
		return;
	}
	p->state = CONN_CONNECTING;
	p->poll = PGRES_POLLING_WRITING;
	set_state(p, PEER_CONNECTING);
}

static void
drive_connect(Peer *p)
{
	if ((p->poll == PGRES_POLLING_READING && !p->readable) ||
		(p->poll == PGRES_POLLING_WRITING && !p->writable))
		return;
	p->poll = PQconnectPoll(p->conn);
	if (p->poll == PGRES_POLLING_FAILED)
	{
		char		msg[256];

		snprintf(msg, sizeof(msg), "could not connect: %s", PQerrorMessage(p->conn));
		disconnect(p, msg);
		return;
	}
	if (p->poll == PGRES_POLLING_OK && p->password_required &&
		!PQconnectionUsedPassword(p->conn))
	{
		/*
		 * A peer added by a non-superuser must not be reached with this
		 * server's own identity (peer or trust authentication, a
		 * ~/.pgpass, client certificates): as dblink and postgres_fdw do.
		 */
		disconnect(p, "password is required: the peer was added by a non-superuser, and its server did not ask for the password given in the connection string");
		return;
	}
	if (p->poll == PGRES_POLLING_OK)
	{
		p->state = CONN_OPEN;
		p->want_fast = true;
		p->st.connects++;
		p->st.connected_since = GetCurrentTimestamp();
		p->st.state = PEER_STREAMING;
	}
}

/* Send what libpq still holds of a request; false if the connection broke. */
static bool
flush_request(Peer *p)
{
	int			rc = PQflush(p->conn);

	if (rc < 0)
	{
		char		msg[256];

		snprintf(msg, sizeof(msg), "could not send a request: %s", PQerrorMessage(p->conn));
		disconnect(p, msg);
		return false;
	}
	p->state = (rc == 1) ? CONN_SENDING : CONN_WAITING;
	return true;
}

/*
 * Send a request; its single bytea result is asked for in binary.  All
 * parameters are text.
 */
static void
send_query(Peer *p, QueryKind kind, const char *sql, int nparams,
		   const char *const *params)
{
	int			ok;

	if (kind == Q_LISTEN)
		ok = PQsendQuery(p->conn, sql);
	else
		ok = PQsendQueryParams(p->conn, sql, nparams, NULL, params, NULL, NULL, 1);
	/* each page is handed over as soon as it has arrived */
	if (ok && kind == Q_PAGES)
		ok = PQsetSingleRowMode(p->conn);
	if (!ok)
	{
		char		msg[256];

		snprintf(msg, sizeof(msg), "could not send a request: %s", PQerrorMessage(p->conn));
		disconnect(p, msg);
		return;
	}
	if (kind != Q_CHANGES)
		p->query_wait_ms = 0;
	p->inflight = kind;
	p->query_started = GetCurrentTimestamp();
	if (!flush_request(p))
		return;
	{
		uint64		sent = strlen(sql);
		int			i;

		for (i = 0; i < nparams; i++)
			sent += params[i] ? strlen(params[i]) : 0;
		if (kind != Q_LISTEN && kind != Q_CHANGES)
			p->ae_bytes += sent;
		p->st.bytes_sent += sent;
	}
}

/* ---- applying ---- */

/*
 * The worker's transactions.  Committing leaves TopMemoryContext current;
 * the caller's context is restored, so what it allocates afterwards is
 * freed with it (the loop's context, a round's) instead of accumulating.
 */
static MemoryContext
xact_begin(void)
{
	MemoryContext cxt = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	worker_xact_started();
	PushActiveSnapshot(GetTransactionSnapshot());
	return cxt;
}

static void
xact_end(MemoryContext cxt)
{
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
}

/* An error as one line for peer_status: its message and its detail. */
static char *
error_text(ErrorData *edata)
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
static ErrorData *
recover_from_error(MemoryContext cxt)
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

/*
 * Runs fn inside PG_TRY.  An ERROR is recorded for the peer; or, if the
 * caller asks for the error (sqlstate and message), handed back for it to
 * decide (it may retry).
 */
typedef void (*guarded_fn) (Peer *p, void *arg);

static bool
run_guarded(Peer *p, guarded_fn fn, void *arg, int *sqlstate, char **message)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile bool ok = true;

	if (sqlstate)
	{
		*sqlstate = 0;
		*message = NULL;
	}
	PG_TRY();
	{
		fn(p, arg);
	}
	PG_CATCH();
	{
		ErrorData  *edata = recover_from_error(oldcxt);

		if (sqlstate)
		{
			*sqlstate = edata->sqlerrcode;
			*message = error_text(edata);
		}
		else
			record_error(p, error_text(edata));
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

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

	initStringInfo(&sig);
	for (i = 0; i < ncols; i++)
		appendStringInfo(&sig, "%s %s,", names[i], types[i]);
	foreach(lc, plan_cache)
	{
		e = lfirst(lc);
		if (strcmp(e->table, t->qualname) == 0 && e->generation == t->generation &&
			strcmp(e->signature, sig.data) == 0)
		{
			e->ac->t = t;
			return e->ac;
		}
	}
	plan_cache_drop(t->qualname);

	/*
	 * Built in a context of its own under the transaction's, so that an
	 * incompatible column list (an ERROR) leaves nothing behind; kept by
	 * moving it under SyncContext once complete.
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
	MemoryContextSetParent(cxt, SyncContext);
	MemoryContextSwitchTo(SyncContext);
	plan_cache = lappend(plan_cache, e);
	MemoryContextSwitchTo(old);
	return e->ac;
}

/* The rows of one table in one answer. */
typedef struct TableBatch
{
	MsgTable   *table;
	MsgRow	  **rows;
	int			nrows;
	bool		bulk;			/* live rows in one statement */
	bool		fresh;			/* ... of keys this node does not have */
	bool		defer_khash;	/* ... in a whole-table pull: keys listed at the end */
	int			applied;
	int			skipped;
	int			refused_skew;
	int			refused_purged;
} TableBatch;

static void
apply_batch_once(Peer *p, void *arg)
{
	MemoryContext cxt;
	TableBatch *b = arg;
	RegTable   *t;
	ApplyColumns *ac;
	int			nest;
	int			i;
	ApplyRow   *live = NULL;
	int			nlive = 0;
	RegistryOwnerSave identity;
	char		timeout[16];

	b->applied = b->skipped = b->refused_skew = b->refused_purged = 0;
	cxt = xact_begin();
	nest = apply_begin();
	t = regtable_by_name(b->table->name, true);
	if (t == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table %s is not a registry table on this node", b->table->name)));
	if (b->fresh && b->defer_khash && !t->khash_deferred)
	{
		regtable_defer_khash(t);
		upkeep_pending = true;
		t = regtable_by_name(b->table->name, false);
	}
	/*
	 * From here on user code may run: as the table's owner, and within
	 * registry.query_timeout (one statement, one lock wait), so that a
	 * trigger that sleeps or waits cannot hold the worker, and every peer
	 * with it.
	 */
	apply_as_owner_begin(t, &identity);
	snprintf(timeout, sizeof(timeout), "%d", registry_query_timeout_ms);
	(void) set_config_option("lock_timeout", timeout, PGC_SUSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
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
				b->refused_purged++;
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
			b->applied++;
		else if (res == APPLY_SKIPPED_OLDER)
			b->skipped++;
		else if (res == APPLY_REFUSED_SKEW)
			b->refused_skew++;
		else
			b->refused_purged++;
	}
	if (nlive > 0)
	{
		int			skew;
		int			written = b->fresh ?
			apply_rows_fresh(ac, live, nlive, &skew) :
			apply_rows_bulk(ac, live, nlive, &skew);

		b->applied += written;
		b->refused_skew += skew;
		b->skipped += nlive - written - skew;
	}
	disable_timeout(STATEMENT_TIMEOUT, false);
	apply_as_owner_end(&identity);
	apply_end(nest);
	xact_end(cxt);
	/* advisory locks user code took for the session are not the worker's */
	LockReleaseSession(USER_LOCKMETHOD);
}

/*
 * Apply one table's rows; retried when a local write raced with it.  False
 * when it failed, the error recorded.
 */
static bool
apply_batch(Peer *p, TableBatch *b)
{
	int			attempt;
	int			sqlstate;
	char	   *message = NULL;

	for (attempt = 0; attempt < 5; attempt++)
	{
		if (run_guarded(p, apply_batch_once, b, &sqlstate, &message))
		{
			p->st.rows_applied += b->applied;
			p->st.rows_skipped += b->skipped;
			p->st.versions_refused += b->refused_skew;
			p->st.rows_refused_purged += b->refused_purged;
			p->apply_backoff_ms = 0;
			if (b->refused_skew > 0)
			{
				char		msg[256];

				snprintf(msg, sizeof(msg),
						 "%d rows of %s refused: versions more than registry.max_clock_skew (%d ms) ahead of this node's clock",
						 b->refused_skew, b->table->name, registry_max_clock_skew_ms);
				record_error(p, msg);
			}
			if (b->refused_purged > 0)
				note_refused_purged(p, b->table->name, b->refused_purged);
			return true;
		}
		if (b->fresh && (sqlstate == ERRCODE_UNIQUE_VIOLATION ||
						 sqlstate == ERRCODE_T_R_SERIALIZATION_FAILURE))
		{
			/* a local write of one of the keys: apply row by row instead */
			b->fresh = false;
			continue;
		}
		if (sqlstate != ERRCODE_T_R_SERIALIZATION_FAILURE)
		{
			/* perhaps the table changed under its statements */
			plan_cache_drop(b->table->name ? b->table->name : "");
			break;
		}
	}
	if (attempt == 5)
		record_error(p, "gave up applying a batch after repeated concurrent local writes");
	else
		record_error(p, message);
	/*
	 * The rows are still the peer's: compare everything again, after a
	 * pause that grows while the failure repeats.
	 */
	p->ae_needed = true;
	p->apply_backoff_ms = p->apply_backoff_ms == 0 ? BACKOFF_MIN_MS :
		Min(p->apply_backoff_ms * 2, BACKOFF_MAX_MS);
	p->ae_not_before = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), p->apply_backoff_ms);
	return false;
}

/* ---- the fast path ---- */

static int
row_key_cmp(const void *a, const void *b)
{
	return strcmp((*(MsgRow *const *) a)->key, (*(MsgRow *const *) b)->key);
}

/*
 * Ask for the peer's changes after the last seq applied here.  With
 * wait_ms the peer holds the request until a change commits there (or the
 * time is up): this is what carries a change across in milliseconds.
 */
static void
send_changes(Peer *p, int wait_ms)
{
	char		after[32],
				maxc[16],
				epoch[32],
				wait[16],
				maxb[16];
	const char *params[6];

	snprintf(after, sizeof(after), UINT64_FORMAT, p->have_position ? p->consumed : 0);
	snprintf(maxc, sizeof(maxc), "%d", registry_batch_size);
	snprintf(epoch, sizeof(epoch), INT64_FORMAT, (int64) p->epoch);
	params[0] = after;
	params[1] = maxc;
	params[2] = p->have_position ? epoch : NULL;
	params[3] = registry_node_name;
	snprintf(wait, sizeof(wait), "%d", p->have_position ? wait_ms : 0);
	params[4] = wait;
	snprintf(maxb, sizeof(maxb), "%d", registry_max_message_size);
	params[5] = maxb;
	p->want_fast = false;
	p->query_wait_ms = p->have_position ? wait_ms : 0;
	send_query(p, Q_CHANGES,
			   "SELECT registry.changes_since($1::bigint, $2::int, true, $3::bigint, $4::text, $5::int, $6::int)",
			   6, params);
}

/*
 * The node name a peer reports.  It must not be this node's own; a node
 * is pulled from once (two peers reporting the same node would pull
 * everything twice, in parallel: the one named after the node is kept);
 * a peer named otherwise than the node it reports is said once per
 * connection.
 */
static void
check_node_name(Peer *p, const char *node)
{
	int			i;

	if (strcmp(node, registry_node_name) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("peer reports this node's own name \"%s\"", node),
				 errhint("Give every node its own registry.node_name.")));
	for (i = 0; i < npeers; i++)
	{
		Peer	   *o = &peers[i];

		if (o == p || !o->seen || o->slot < 0 || o->conn == NULL ||
			strcmp(o->st.remote_node, node) != 0)
			continue;
		if (strcmp(p->name, node) == 0 && strcmp(o->name, node) != 0)
		{
			/* this peer has the node's own name: the other one yields */
			char		msg[256];

			snprintf(msg, sizeof(msg),
					 "peer is node \"%s\", which this node pulls from as peer \"%s\"; remove one of them",
					 node, p->name);
			o->st.remote_node[0] = '\0';
			disconnect(o, msg);
			peer_status_update(o->slot, &o->st);
			continue;			/* and any other one */
		}
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("peer is node \"%s\", which this node pulls from as peer \"%s\"",
						node, o->name),
				 errhint("Remove one of the two with registry.remove_peer().")));
	}
	if (strcmp(p->name, node) != 0 && !p->name_warned)
	{
		ereport(WARNING,
				(errmsg("registry: peer \"%s\" reports node name \"%s\"", p->name, node),
				 errhint("Name a peer after its registry.node_name: registry.remove_peer('%s') and registry.add_peer('%s', ...).",
						 p->name, node)));
		p->name_warned = true;
	}
	if (strcmp(p->st.remote_node, node) != 0)
	{
		strlcpy(p->st.remote_node, node, sizeof(p->st.remote_node));
	}
}

typedef struct AnswerData
{
	char	   *data;
	int			len;
} AnswerData;

/*
 * Rows the peer has but could not send: their values alone exceed what
 * this node accepts in one message.  Said in peer_status; the rows stay
 * missing here until the limits allow them.
 */
static void
note_too_large(Peer *p, const char *table, const MsgRow *r, int n)
{
	char		msg[256];
	char		key[64];

	one_line(key, 41, r->key);
	snprintf(msg, sizeof(msg),
			 "%d %s of %s not sent, too large for one message (first key \"%s\"); raise registry.max_message_size on both nodes",
			 n, n == 1 ? "row" : "rows", table, key);
	record_error(p, msg);
}

static void
protocol_error(Peer *p, const char *what, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_PROTOCOL_VIOLATION),
			 errmsg("%s", what),
			 detail ? errdetail("%s", detail) : 0));
}

/*
 * The peer's change log from the last seq applied: checked against what
 * was asked (rows, epoch, seqs after the one asked after, progress), then
 * applied one transaction per table.  Runs guarded: any error ends the
 * request.
 */
static void
handle_changes_guarded(Peer *p, void *arg)
{
	AnswerData *a = arg;
	MsgChanges	m;
	TableBatch *batches;
	int		   *counts;
	int		   *slot;
	int			nbatches = 0;
	int			i;

	msg_read_changes(a->data, a->len, &m);
	check_node_name(p, m.node);
	if (!m.with_rows)
		protocol_error(p, "changes came without their rows",
					   "They were asked for with rows.");
	if (p->have_position && m.status == CHANGES_OK)
	{
		char		detail[160];

		snprintf(detail, sizeof(detail),
				 "Asked for the changes after seq " UINT64_FORMAT " of epoch " UINT64_FORMAT
				 "; the answer is of epoch " UINT64_FORMAT ", up to seq " UINT64_FORMAT
				 " of " UINT64_FORMAT ".",
				 p->consumed, p->epoch, m.epoch, m.upto_seq, m.last_seq);
		if (m.epoch != p->epoch || m.upto_seq < p->consumed ||
			(m.n > 0 && m.changes[0].seq <= p->consumed))
			protocol_error(p, "changes answer does not follow the position asked for", detail);
		if (m.last_seq > p->consumed && m.upto_seq == p->consumed)
			protocol_error(p, "changes answer makes no progress", detail);
	}

	p->st.peer_epoch = m.epoch;
	p->st.peer_last_seq = m.last_seq;

	if (m.status != CHANGES_OK || !p->have_position)
	{
		/* a restart or a gap: compare digests, then follow from here */
		p->have_position = true;
		p->epoch = m.epoch;
		p->consumed = m.last_seq;
		p->ae_needed = true;
		p->st.consumed_seq = p->consumed;
		return;
	}

	/*
	 * One batch per table that a change refers to (tables described but
	 * not referred to cost nothing), each key once (its current state).
	 */
	slot = palloc(sizeof(int) * Max(m.ntables, 1));
	memset(slot, -1, sizeof(int) * Max(m.ntables, 1));
	counts = palloc0(sizeof(int) * Max(m.n, 1));
	for (i = 0; i < m.n; i++)
	{
		int			ti = m.changes[i].table;

		if (slot[ti] < 0)
			slot[ti] = nbatches++;
		counts[slot[ti]]++;
	}
	batches = palloc0(sizeof(TableBatch) * Max(nbatches, 1));
	for (i = 0; i < m.ntables; i++)
	{
		if (slot[i] < 0)
			continue;
		batches[slot[i]].table = &m.tables[i];
		batches[slot[i]].rows = palloc(sizeof(MsgRow *) * counts[slot[i]]);
	}
	for (i = 0; i < m.n; i++)
	{
		MsgChange  *c = &m.changes[i];
		TableBatch *b = &batches[slot[c->table]];

		if (c->op == REG_OP_RESYNC)
		{
			/* a bulk change on the peer: only digests can tell what it was */
			p->ae_needed = true;
			continue;
		}
		b->rows[b->nrows++] = &c->row;
	}
	for (i = 0; i < nbatches; i++)
	{
		TableBatch *b = &batches[i];
		int			j,
					k,
					too_large = 0;
		MsgRow	   *first_too_large = NULL;

		if (b->nrows == 0)
			continue;
		/* every copy of a key carries its current state: keep one */
		qsort(b->rows, b->nrows, sizeof(MsgRow *), row_key_cmp);
		for (j = 1, k = 1; j < b->nrows; j++)
			if (strcmp(b->rows[j]->key, b->rows[k - 1]->key) != 0)
				b->rows[k++] = b->rows[j];
		b->nrows = k;
		for (j = 0, k = 0; j < b->nrows; j++)
		{
			if (b->rows[j]->state == ROW_TOO_LARGE)
			{
				if (too_large++ == 0)
					first_too_large = b->rows[j];
				continue;
			}
			b->rows[k++] = b->rows[j];
		}
		b->nrows = k;
		if (b->table->name[0] == '\0')
			continue;			/* no longer registered on the peer */
		/*
		 * Rows too large are reported only once the batch shows the table
		 * is registered here (a batch of none checks just that): for any
		 * other table the error to see is that one.
		 */
		if ((b->nrows > 0 || too_large > 0) && apply_batch(p, b) &&
			too_large > 0)
			note_too_large(p, b->table->name, first_too_large, too_large);
	}

	p->consumed = m.upto_seq;
	p->st.consumed_seq = p->consumed;
	p->st.fast_batches++;
	p->st.rows_pulled += m.n;
	if (p->consumed >= m.last_seq)
		p->st.caught_up_at = GetCurrentTimestamp();
	if (p->consumed < m.last_seq)
		p->want_fast = true;	/* more right away */
}

static void
handle_changes(Peer *p, char *data, int len)
{
	AnswerData	a = {data, len};
	int			sqlstate;
	char	   *message;

	if (!run_guarded(p, handle_changes_guarded, &a, &sqlstate, &message))
	{
		/* a peer that answers this way is asked again only after a pause */
		disconnect(p, message);
		return;
	}
	note_success(p);
}

/* ---- anti-entropy ---- */

static uint64 *
our_buckets(const char *name, int nb, int64 *count, bool *registered)
{
	RegTable   *t;
	uint64	   *out = palloc0(sizeof(uint64) * nb);
	int			ours = registry_digest_buckets;
	int			slot;
	int			i;

	*count = 0;
	*registered = false;
	t = regtable_by_name(name, true);
	if (t == NULL)
		return out;
	*registered = true;
	LWLockAcquire(RegistryState->digest_lock, LW_SHARED);
	slot = -1;
	for (i = 0; i < registry_max_tables; i++)
		if (RegistryTables[i].tid == t->tid)
			slot = i;
	if (slot >= 0)
	{
		uint64	   *b = table_slot_buckets(slot);

		for (i = 0; i < ours; i++)
			out[i / (ours / nb)] ^= b[i];
		*count = RegistryTables[slot].live_rows + RegistryTables[slot].tombstones;
	}
	LWLockRelease(RegistryState->digest_lock);
	return out;
}

static void
start_round(Peer *p)
{
	List	   *regs;
	ListCell   *lc;
	int			i = 0;
	MemoryContext old;
	MemoryContext cxt;

	MemoryContextReset(p->roundcxt);
	cxt = xact_begin();
	regs = OidIsValid(get_extension_oid("registry", true)) ? regtable_all() : NIL;
	old = MemoryContextSwitchTo(p->roundcxt);
	p->tables = palloc0(sizeof(AETable) * Max(list_length(regs), 1));
	foreach(lc, regs)
	{
		RegTid	   *r = lfirst(lc);
		RegTable   *t;

		/*
		 * An index left deferred, or a restored registration (a restore that
		 * ran no DDL after it), is seen to within a round.  A restored table
		 * is not compared until it is taken up: it may not be whole yet.
		 */
		if (r->khash_deferred || r->restored)
			upkeep_pending = true;
		if (r->restored)
			continue;
		t = regtable_by_tid(r->tid, true);
		if (t == NULL)
			continue;
		p->tables[i].name = pstrdup(t->qualname);
		p->tables[i].stage = AE_ROOT;
		i++;
	}
	MemoryContextSwitchTo(old);
	xact_end(cxt);

	p->ntables = i;
	p->itable = 0;
	p->ae_needed = false;
	p->ae_errors = false;
	p->ae_bytes = 0;
	p->ae_started = GetCurrentTimestamp();
	p->ae_gen = peer_status_round_requested();
	p->st.state = PEER_ANTIENTROPY;
	p->st.round_buckets_compared = 0;
	p->st.round_buckets_mismatched = 0;
}

static void
record_convergence(Peer *p, void *arg)
{
	TimestampTz at = *(TimestampTz *) arg;
	Oid			argtypes[2] = {TIMESTAMPTZOID, TEXTOID};
	Datum		args[2];

	MemoryContext cxt = xact_begin();

	SPI_connect();
	args[0] = TimestampTzGetDatum(at);
	args[1] = CStringGetTextDatum(p->name);
	if (SPI_execute_with_args("UPDATE registry.peers SET last_converged_at = $1 WHERE name = $2",
							  2, argtypes, args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "registry: could not record the convergence with peer \"%s\"", p->name);
	SPI_finish();
	xact_end(cxt);
}

static void
end_round(Peer *p)
{
	bool		identical = !p->ae_errors;
	bool		complete = !p->ae_errors;
	int			i;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz since;

	for (i = 0; i < p->ntables; i++)
	{
		identical &= p->tables[i].identical;
		complete &= p->tables[i].complete;
	}
	if (identical)
	{
		TimestampTz at = p->ae_started;

		if (run_guarded(p, record_convergence, &at, NULL, NULL))
			p->last_converged_at = at;
	}
	since = p->last_converged_at ? p->last_converged_at : p->added_at;

	p->st.rounds++;
	p->st.round_bytes = p->ae_bytes;
	p->st.served_gen = Max(p->st.served_gen, p->ae_gen);
	p->st.served_converged = complete;
	p->st.last_converged_at = p->last_converged_at;
	p->st.needs_resync = !identical &&
		TimestampDifferenceExceeds(since, now, registry_tombstone_retention_s * 1000L);
	p->st.state = PEER_STREAMING;
	if (p->st.needs_resync)
		set_health(p, false, "needs a resync: not found identical for longer than registry.tombstone_retention");
	else if (complete)
		set_health(p, true, NULL);
	else if (p->st.healthy)
		set_health(p, false, "the last anti-entropy round was not complete");

	p->last_ae = now;
	MemoryContextReset(p->roundcxt);
	p->tables = NULL;
}

static void
send_digest(Peer *p, AETable *t, int nb, int lo, int width, int n)
{
	char		a[16],
				b[16],
				c[16],
				d[16];
	const char *params[5];

	snprintf(a, sizeof(a), "%d", nb);
	snprintf(b, sizeof(b), "%d", lo);
	snprintf(c, sizeof(c), "%d", width);
	snprintf(d, sizeof(d), "%d", n);
	params[0] = t->name;
	params[1] = a;
	params[2] = b;
	params[3] = c;
	params[4] = d;
	p->inflight_table = t;
	send_query(p, Q_DIGEST,
			   "SELECT registry.digest($1, $2::int, $3::int, $4::int, $5::int)", 5, params);
}

/* Rows per whole-table page: large enough to amortize a round trip. */
static int
full_page_rows(void)
{
	return Min(registry_batch_size * 10, 100000);
}

static void
start_full(AETable *t)
{
	t->stage = AE_FULL;
	t->full_asked = false;
}

/*
 * A whole-table pull is one request: the peer reads the table under one
 * snapshot and sends it page by page as it goes, so it reads the next
 * page while this node applies the last (handle_page).
 */
static void
send_full(Peer *p, AETable *t)
{
	char		rows[16],
				maxb[16];
	const char *params[3];

	t->page_rows = full_page_rows();
	snprintf(rows, sizeof(rows), "%d", t->page_rows);
	snprintf(maxb, sizeof(maxb), "%d", registry_max_message_size);
	params[0] = t->name;
	params[1] = rows;
	params[2] = maxb;
	t->full_asked = true;
	p->inflight_table = t;
	send_query(p, Q_PAGES, "SELECT registry.table_pages($1, $2::int, $3::int)", 3, params);
}

static void
send_entries(Peer *p, AETable *t, bool with_rows)
{
	StringInfoData arr;
	char		nb[16],
				after[16],
				maxe[16],
				maxb[16];
	const char *params[7];
	int			i;
	int			last;

	initStringInfo(&arr);
	appendStringInfoChar(&arr, '{');
	last = Min(t->nbuckets, t->itodo + AE_BUCKETS_PER_CALL);
	for (i = t->itodo; i < last; i++)
		appendStringInfo(&arr, "%s%d", i > t->itodo ? "," : "", t->buckets[i]);
	appendStringInfoChar(&arr, '}');
	snprintf(nb, sizeof(nb), "%d", t->nb);
	snprintf(after, sizeof(after), "%d", khash_to_int4(t->after));
	snprintf(maxe, sizeof(maxe), "%d", AE_ENTRIES_PER_CALL);
	params[0] = t->name;
	params[1] = nb;
	params[2] = arr.data;
	params[3] = with_rows ? "true" : "false";
	params[4] = t->resume ? after : NULL;
	params[5] = maxe;
	snprintf(maxb, sizeof(maxb), "%d", registry_max_message_size);
	params[6] = maxb;
	p->inflight_table = t;
	send_query(p, Q_ENTRIES,
			   "SELECT registry.bucket_entries($1, $2::int, $3::int[], $4::bool, $5::int, $6::int, $7::int)",
			   7, params);
}

static void
send_fetch(Peer *p, AETable *t)
{
	StringInfoData arr;
	char		maxb[16];
	const char *params[3];
	int			last = Min(t->nfetch, t->ifetch + registry_batch_size);
	int			i;

	initStringInfo(&arr);
	appendStringInfoChar(&arr, '{');
	for (i = t->ifetch; i < last; i++)
	{
		const char *k;

		if (i > t->ifetch)
			appendStringInfoChar(&arr, ',');
		appendStringInfoChar(&arr, '"');
		for (k = t->fetch[i]; *k; k++)
		{
			if (*k == '"' || *k == '\\')
				appendStringInfoChar(&arr, '\\');
			appendStringInfoChar(&arr, *k);
		}
		appendStringInfoChar(&arr, '"');
	}
	appendStringInfoChar(&arr, '}');
	/* the answer may hold fewer (max_bytes): it says where to go on */
	t->fetch_start = t->ifetch;
	t->fetch_asked = last - t->ifetch;
	t->ifetch = last;
	snprintf(maxb, sizeof(maxb), "%d", registry_max_message_size);
	params[0] = t->name;
	params[1] = arr.data;
	params[2] = maxb;
	p->inflight_table = t;
	send_query(p, Q_FETCH, "SELECT registry.fetch_rows($1, $2::text[], $3::int)", 3, params);
}

static void
free_fetch_queue(AETable *t)
{
	int			i;

	for (i = 0; i < t->nfetch; i++)
		pfree(t->fetch[i]);
	if (t->fetch)
		pfree(t->fetch);
	t->fetch = NULL;
	t->nfetch = t->maxfetch = t->ifetch = 0;
	t->fetch_bytes = 0;
}

/* Issue the next request of the round, moving past finished tables. */
static void
send_ae(Peer *p)
{
	while (p->itable < p->ntables)
	{
		AETable    *t = &p->tables[p->itable];

		switch (t->stage)
		{
			case AE_ROOT:
			case AE_VERIFY:
				send_digest(p, t, registry_digest_buckets, 0, 0, 0);
				return;
			case AE_GROUPS:
				send_digest(p, t, t->nb, 0, t->nb / AE_GROUP_FANOUT, AE_GROUP_FANOUT);
				return;
			case AE_BUCKETS:
				if (t->itodo < t->ntodo)
				{
					int			width = t->nb / AE_GROUP_FANOUT;

					send_digest(p, t, t->nb, t->todo[t->itodo] * width, 1, width);
					return;
				}
				t->stage = AE_ENTRIES;
				t->itodo = 0;
				t->resume = false;
				continue;
			case AE_ENTRIES:
				if (t->itodo < t->nbuckets)
				{
					send_entries(p, t, false);
					return;
				}
				t->stage = AE_FETCH;
				continue;
			case AE_FETCH:
				if (t->ifetch < t->nfetch)
				{
					send_fetch(p, t);
					return;
				}
				/* one table's queue at a time stays in the round's memory */
				free_fetch_queue(t);
				t->stage = AE_VERIFY;
				continue;
			case AE_FULL:
				if (!t->full_asked)
				{
					send_full(p, t);
					return;
				}
				t->stage = AE_VERIFY;
				continue;
			case AE_DONE:
				p->itable++;
				continue;
		}
	}
	end_round(p);
}

/* The peer's answer to a digest request. */
typedef struct DigestWork
{
	AETable    *t;
	char	   *data;
	int			len;
} DigestWork;

/* An answer must be about the buckets asked for: anything else is refused. */
static void
check_digest_answer(AETable *t, MsgDigest *m)
{
	int			nb = t->nb;
	int			lo = 0,
				width = 0,
				n = 0;

	if (strcmp(m->table, t->name) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("digest of %s asked for, digest of %s received",
						t->name, m->table)));
	if (m->nbuckets < 1 || m->nbuckets > registry_digest_buckets)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("digest of %s at %d buckets, this node has %d",
						t->name, m->nbuckets, registry_digest_buckets)));
	if (t->stage == AE_GROUPS)
	{
		width = nb / AE_GROUP_FANOUT;
		n = AE_GROUP_FANOUT;
	}
	else if (t->stage == AE_BUCKETS)
	{
		lo = t->todo[t->itodo] * (nb / AE_GROUP_FANOUT);
		width = 1;
		n = nb / AE_GROUP_FANOUT;
	}
	else
		nb = m->nbuckets;		/* a root: at the peer's granularity */
	if (m->nbuckets != nb || m->lo != lo || m->width != width || m->n != n)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("digest of %s is not the one asked for", t->name),
				 errdetail("Asked for %d ranges of %d buckets from bucket %d of %d, got %d of %d from %d of %d.",
						   n, width, lo, nb, m->n, m->width, m->lo, m->nbuckets)));
}

static void
handle_digest_guarded(Peer *p, void *arg)
{
	DigestWork *w = arg;
	AETable    *t = w->t;
	MsgDigest	m;
	uint64	   *ours;
	int64		ourcount;
	bool		registered;
	uint64		root = 0;
	int			i;
	MemoryContext cxt;

	msg_read_digest(w->data, w->len, &m);
	check_node_name(p, m.node);
	check_digest_answer(t, &m);

	cxt = xact_begin();
	/* ours outlives the transaction */
	MemoryContextSwitchTo(cxt);
	ours = our_buckets(t->name, m.nbuckets, &ourcount, &registered);
	xact_end(cxt);
	if (!registered)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table %s is no longer a registry table here", t->name)));
	for (i = 0; i < m.nbuckets; i++)
		root ^= ours[i];

	if (t->stage == AE_ROOT || t->stage == AE_VERIFY)
	{
		bool		verify = (t->stage == AE_VERIFY);

		t->nb = m.nbuckets;
		if (root == m.root)
		{
			t->identical = true;
			t->complete = true;
			t->stage = AE_DONE;
			return;
		}
		if (verify)
		{
			/* we pulled all that was newer; the rest is ours to offer */
			t->complete = !t->incomplete;
			t->stage = AE_DONE;
			return;
		}
		t->peer_count = m.live + m.tombstones;
		t->behind = ourcount < m.live + m.tombstones;
		if (ourcount * 2 < m.live + m.tombstones)
		{
			start_full(t);
			t->fresh = (ourcount == 0);
		}
		else if (t->nb <= AE_GROUP_FANOUT)
		{
			/* few buckets: every one is a group of one */
			t->buckets = MemoryContextAlloc(p->roundcxt, sizeof(int) * t->nb);
			t->nbuckets = 0;
			for (i = 0; i < t->nb; i++)
				t->buckets[t->nbuckets++] = i;
			t->stage = AE_ENTRIES;
			t->itodo = 0;
			t->resume = false;
		}
		else
			t->stage = AE_GROUPS;
		return;
	}

	if (t->stage == AE_GROUPS)
	{
		int			width = t->nb / AE_GROUP_FANOUT;

		t->todo = MemoryContextAlloc(p->roundcxt, sizeof(int) * AE_GROUP_FANOUT);
		t->ntodo = 0;
		t->itodo = 0;
		for (i = 0; i < m.n; i++)
		{
			uint64		g = 0;
			int			b;

			for (b = i * width; b < (i + 1) * width; b++)
				g ^= ours[b];
			if (g != m.digests[i])
				t->todo[t->ntodo++] = i;
		}
		p->st.round_buckets_compared += m.n;
		if (t->ntodo * 2 > AE_GROUP_FANOUT && t->behind)
		{
			/* most of the table differs and the peer has more: pull it whole */
			start_full(t);
		}
		else
		{
			t->buckets = MemoryContextAlloc(p->roundcxt,
											sizeof(int) * Max(t->ntodo * width, 1));
			t->nbuckets = 0;
			t->stage = AE_BUCKETS;
		}
		return;
	}

	if (t->stage == AE_BUCKETS)
	{
		int			mismatched = 0;

		for (i = 0; i < m.n; i++)
		{
			int			b = m.lo + i;

			if (ours[b] != m.digests[i])
			{
				t->buckets[t->nbuckets++] = b;
				mismatched++;
			}
		}
		t->itodo++;
		p->st.round_buckets_compared += m.n;
		p->st.round_buckets_mismatched += mismatched;
		return;
	}
}

/* twice what the peer counted, plus slack, without overflowing */
static int64
add_bound(int64 counted, int64 slack)
{
	if (counted > (PG_INT64_MAX - slack) / 2)
		return PG_INT64_MAX;
	return counted * 2 + slack;
}

static int
khash_key_cmp(uint32 h1, const char *k1, uint32 h2, const char *k2)
{
	if (h1 != h2)
		return h1 < h2 ? -1 : 1;
	return strcmp(k1, k2);
}

/*
 * An entries answer must be the one asked for: the same table; in a
 * whole-table pull, a page of rows (bucket count 1, never "more", at
 * least one entry and at most a page); otherwise, without rows, at the
 * granularity asked, every key in the buckets asked for, after the hash
 * resumed after, in (hash, key) order, and a "more" that resumes after
 * its last entry.  And one table's answers in a round stay near the
 * entries the peer's root digest counted: a peer cannot keep a round
 * going, or its memory growing, with answers that never end.
 */
static void
check_entries_answer(AETable *t, MsgEntries *m)
{
	int64		bound;
	int			i;

	if (strcmp(m->table.name, t->name) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("entries of %s asked for, entries of %s received",
						t->name, m->table.name)));
	if (t->stage == AE_FULL)
	{
		if (!m->with_rows || m->nbuckets != 1 || m->more ||
			m->n < 1 || m->n > t->page_rows)
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("page of %s is not a page of rows as asked for", t->name),
					 errdetail("Asked for pages of at most %d rows; got %d entries, with rows %d, buckets %d, more %d.",
							   t->page_rows, m->n, (int) m->with_rows,
							   m->nbuckets, (int) m->more)));
		bound = add_bound(t->peer_count, t->page_rows);
	}
	else
	{
		int			last = Min(t->nbuckets, t->itodo + AE_BUCKETS_PER_CALL);
		int			ib = t->itodo;
		uint32		prev_hash = 0;
		const char *prev_key = NULL;

		if (m->with_rows || m->nbuckets != t->nb)
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("entries of %s are not at the granularity asked for", t->name),
					 errdetail("Asked for %d buckets without rows; got %d, with rows %d.",
							   t->nb, m->nbuckets, (int) m->with_rows)));
		for (i = 0; i < m->n; i++)
		{
			const char *key = m->rows[i].key;
			uint32		h = keys_hash(key, strlen(key));
			int			bucket = digest_bucket_of(h, t->nb);

			/* buckets asked for are in order, as are the entries */
			while (ib < last && t->buckets[ib] < bucket)
				ib++;
			if (ib == last || t->buckets[ib] != bucket ||
				(t->resume && h <= t->after) ||
				(prev_key && khash_key_cmp(prev_hash, prev_key, h, key) >= 0))
				ereport(ERROR,
						(errcode(ERRCODE_PROTOCOL_VIOLATION),
						 errmsg("entry \"%s\" of %s is not in order in the buckets asked for",
								key, t->name)));
			prev_hash = h;
			prev_key = key;
		}
		if (m->more && (m->n == 0 || m->next_khash != prev_hash))
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("entries of %s say there are more, but not after their last entry",
							t->name)));
		bound = add_bound(t->peer_count, 2 * AE_ENTRIES_PER_CALL);
	}
	t->entries_seen += m->n;
	if (t->entries_seen > bound)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("the peer sent " INT64_FORMAT " entries of %s in this round, more than the " INT64_FORMAT " its digest counted",
						t->entries_seen, t->name, t->peer_count)));
}

/*
 * Entries of differing buckets: tombstones newer on the peer are applied
 * straight away, live keys newer on the peer are queued for fetch_rows.
 * In a whole-table pull the entries carry their rows and are applied.
 */
static void
handle_entries_guarded(Peer *p, void *arg)
{
	DigestWork *w = arg;
	AETable    *t = w->t;
	MsgEntries	m;
	TableBatch	b;
	int			i;

	msg_read_entries(w->data, w->len, &m);
	check_entries_answer(t, &m);
	p->st.rows_pulled += m.n;

	memset(&b, 0, sizeof(b));
	b.table = &m.table;
	b.rows = palloc(sizeof(MsgRow *) * Max(m.n, 1));

	if (t->stage == AE_FULL)
	{
		int			too_large = 0;
		MsgRow	   *first_too_large = NULL;

		for (i = 0; i < m.n; i++)
		{
			if (m.rows[i].state == ROW_TOO_LARGE)
			{
				if (too_large++ == 0)
					first_too_large = &m.rows[i];
				continue;
			}
			b.rows[b.nrows++] = &m.rows[i];
		}
		if (too_large > 0)
		{
			note_too_large(p, t->name, first_too_large, too_large);
			t->incomplete = true;
		}
		b.bulk = true;
		b.fresh = t->fresh;
		b.defer_khash = true;
	}
	else
	{
		RegTable   *rt;
		RowLookup	rl;
		int			nest;
		Snapshot	snap;

		MemoryContext cxt = xact_begin();

		canonical_gucs_push(&nest);
		rt = regtable_by_name(t->name, false);
		snap = GetActiveSnapshot();
		row_lookup_begin(&rl, rt, AccessShareLock, snap);
		for (i = 0; i < m.n; i++)
		{
			MsgRow	   *r = &m.rows[i];
			VersionState st;
			bool		newer;

			CHECK_FOR_INTERRUPTS();
			memset(&st, 0, sizeof(st));
			if (row_lookup(&rl, r->key))
				row_version(rt, rl.slot, &st);
			else
				(void) tombstone_get(rt->tid, keys_hash(r->key, strlen(r->key)),
									 r->key, snap, &st);
			newer = !st.exists ||
				version_greater(r->version, r->origin, st.version, st.origin);
			if (!newer)
				continue;
			if (!st.exists && r->version <= rt->purge_horizon)
			{
				/* purged here: a tombstone needs nothing, a row is refused */
				if (r->state == ROW_LIVE)
					b.refused_purged++;
				continue;
			}
			if (r->state == ROW_TOMBSTONE)
				b.rows[b.nrows++] = r;
			else if (t->fetch_bytes + FETCH_KEY_COST(r->key) > (Size) registry_max_message_size)
			{
				/* enough for one round: the rest waits for the next */
				t->incomplete = true;
				break;
			}
			else
			{
				t->fetch_bytes += FETCH_KEY_COST(r->key);
				if (t->nfetch >= t->maxfetch)
				{
					t->maxfetch = Max(64, t->maxfetch * 2);
					if (t->fetch == NULL)
						t->fetch = MemoryContextAlloc(p->roundcxt, sizeof(char *) * t->maxfetch);
					else
						t->fetch = repalloc(t->fetch, sizeof(char *) * t->maxfetch);
				}
				t->fetch[t->nfetch++] = MemoryContextStrdup(p->roundcxt, r->key);
			}
		}
		row_lookup_end(&rl);
		canonical_gucs_pop(nest);
		xact_end(cxt);
		if (b.refused_purged > 0)
		{
			p->st.rows_refused_purged += b.refused_purged;
			note_refused_purged(p, t->name, b.refused_purged);
		}
	}
	if (b.nrows > 0)
		apply_batch(p, &b);
	/* keys of the table were written here meanwhile: no page is fresh now */
	if (t->stage == AE_FULL && t->fresh && !b.fresh)
		t->fresh = false;

	if (t->stage == AE_FULL)
		;						/* the pages go on until the request ends */
	else if (t->incomplete)
	{
		/* the keys queued so far are fetched; the rest is the next round's */
		t->itodo = t->nbuckets;
		t->resume = false;
	}
	else if (m.more)
	{
		t->resume = true;
		t->after = m.next_khash;
	}
	else
	{
		t->itodo = Min(t->nbuckets, t->itodo + AE_BUCKETS_PER_CALL);
		t->resume = false;
	}
}

static void
handle_fetch_guarded(Peer *p, void *arg)
{
	DigestWork *w = arg;
	MsgRows		m;
	TableBatch	b;
	int			i;
	AETable    *t = w->t;
	int			too_large = 0;
	MsgRow	   *first_too_large = NULL;

	msg_read_rows(w->data, w->len, &m);

	/*
	 * The keys asked for, in order: all of them, or as many as fitted the
	 * answer (the rest are asked for again).
	 */
	if (strcmp(m.table.name, t->name) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("rows of %s asked for, rows of %s received",
						t->name, m.table.name)));
	if (m.n < 1 || m.n > t->fetch_asked)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("%d rows of %s received for %d keys asked for",
						m.n, t->name, t->fetch_asked)));
	for (i = 0; i < m.n; i++)
		if (strcmp(m.rows[i].key, t->fetch[t->fetch_start + i]) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("row %d of %s is for key \"%s\", asked for \"%s\"",
							i + 1, t->name, m.rows[i].key,
							t->fetch[t->fetch_start + i])));
	t->ifetch = t->fetch_start + m.n;

	p->st.rows_pulled += m.n;
	memset(&b, 0, sizeof(b));
	b.table = &m.table;
	b.rows = palloc(sizeof(MsgRow *) * Max(m.n, 1));
	for (i = 0; i < m.n; i++)
	{
		if (m.rows[i].state == ROW_TOO_LARGE)
		{
			if (too_large++ == 0)
				first_too_large = &m.rows[i];
			continue;
		}
		b.rows[b.nrows++] = &m.rows[i];
	}
	if (too_large > 0)
	{
		note_too_large(p, t->name, first_too_large, too_large);
		t->incomplete = true;
	}
	b.bulk = (b.nrows > 16);
	if (b.nrows > 0)
		apply_batch(p, &b);
}

/* ---- results ---- */

/*
 * The one bytea value of an answer (or of one page), copied, with res
 * cleared: parsing it may raise an error.  NULL if it is not one bytea
 * value: the peer was disconnected.
 */
static char *
answer_bytes(Peer *p, PGresult *res, ExecStatusType want, int *len)
{
	char	   *data;

	if (PQresultStatus(res) != want || PQntuples(res) != 1 || PQnfields(res) != 1 ||
		PQgetisnull(res, 0, 0) || PQfformat(res, 0) != 1)
	{
		PQclear(res);
		disconnect(p, "malformed answer: expected one bytea value");
		return NULL;
	}
	*len = PQgetlength(res, 0, 0);
	if (*len < 0 || *len > registry_max_message_size + MSG_HEADER_SIZE)
	{
		char		msg[160];

		snprintf(msg, sizeof(msg),
				 "answer of %d bytes is larger than registry.max_message_size (%d bytes) allows",
				 *len, registry_max_message_size);
		PQclear(res);
		disconnect(p, msg);
		return NULL;
	}
	/* no ERROR while res is held: it is libpq's memory, not a context's */
	data = palloc_extended(*len + 1, MCXT_ALLOC_NO_OOM);
	if (data == NULL)
	{
		PQclear(res);
		disconnect(p, "out of memory for an answer");
		return NULL;
	}
	memcpy(data, PQgetvalue(res, 0, 0), *len);
	PQclear(res);

	p->st.bytes_pulled += *len;
	if (p->inflight != Q_CHANGES)
		p->ae_bytes += *len;
	return data;
}

/* An answer about table t; if it cannot be applied, t is skipped this round. */
static void
handle_table_answer(Peer *p, guarded_fn fn, AETable *t, char *data, int len)
{
	DigestWork	w = {t, data, len};

	if (!run_guarded(p, fn, &w, NULL, NULL))
	{
		t->failed = true;
		t->stage = AE_DONE;
	}
	else
		note_success(p);
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
	MemoryContext cxt = xact_begin();
	List	   *regs = OidIsValid(get_extension_oid("registry", true)) ?
		regtable_all() : NIL;
	ListCell   *lc;
	bool	   *busy = arg;

	foreach(lc, regs)
	{
		RegTid	   *r = lfirst(lc);
		RegTable   *t;
		char	   *name;

		if (!r->khash_deferred)
			continue;
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
		if (pull_in_progress(name))
			*busy = true;
		else
		{
			regtable_restore_khash(r->relid);
			ereport(LOG,
					(errmsg("registry: listed the keys of %s in registry.row_keys after a whole-table pull",
							name)));
		}
	}
	/* and a restore that ran no DDL after loading its registrations */
	if (regs != NIL)
		regtable_adopt_restored();
	xact_end(cxt);
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
		pg_atomic_read_u32(&RegistryState->state) != REG_STATE_READY)
		return;
	if (run_guarded(NULL, catalog_upkeep_guarded, &busy, &sqlstate, &message))
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

/*
 * One page of a whole-table pull, while the request goes on.  Once the
 * table failed, the rest of the pages are read and dropped: libpq has no
 * cancel that would not block the worker.
 */
static void
handle_page(Peer *p, PGresult *res)
{
	AETable    *t = p->inflight_table;
	char	   *data;
	int			len;

	Assert(p->inflight == Q_PAGES && t != NULL);
	data = answer_bytes(p, res, PGRES_SINGLE_TUPLE, &len);
	if (data == NULL)
		return;
	/* the request is alive while pages arrive */
	p->query_started = GetCurrentTimestamp();
	if (!t->failed)
		handle_table_answer(p, handle_entries_guarded, t, data, len);
	pfree(data);
}

static void
handle_result(Peer *p, PGresult *res)
{
	ExecStatusType status = PQresultStatus(res);
	QueryKind	kind = p->inflight;
	AETable    *t = p->inflight_table;
	char	   *data = NULL;
	int			len = 0;

	p->inflight = Q_NONE;
	p->inflight_table = NULL;
	/* the first request on a connection is LISTEN, until it succeeds */
	p->state = (kind == Q_LISTEN && status != PGRES_COMMAND_OK) ?
		CONN_OPEN : CONN_IDLE;

	if (status == PGRES_FATAL_ERROR || status == PGRES_NONFATAL_ERROR)
	{
		char		msg[256];
		const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		bool		not_ready = code && strcmp(code, "55000") == 0;
		bool		has_code = code != NULL;

		snprintf(msg, sizeof(msg), "%s%s%s", t ? t->name : "",
				 t ? ": " : "", PQresultErrorMessage(res));
		PQclear(res);
		record_error(p, msg);
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
			set_state(p, PEER_ERROR);
			serve_request_failed(p);
		}
		if (t)
		{
			/* this table is skipped this round; others go on */
			t->failed = true;
			t->stage = AE_DONE;
		}
		else if (kind == Q_CHANGES && has_code && !not_ready)
			p->ae_needed = true;
		if (kind == Q_PAGES)
		{
			upkeep_retry_at = 0;
			catalog_upkeep();
		}
		return;
	}
	if (kind == Q_LISTEN)
	{
		PQclear(res);
		return;
	}
	if (kind == Q_PAGES)
	{
		/* the end of the pages: every one has been handled */
		PQclear(res);
		if (status != PGRES_TUPLES_OK)
			disconnect(p, "malformed answer: expected pages of bytea values");
		/* the index is built before the round goes on: no waiting */
		upkeep_retry_at = 0;
		catalog_upkeep();
		return;
	}
	p->inflight = kind;			/* answer_bytes() counts by kind */
	data = answer_bytes(p, res, PGRES_TUPLES_OK, &len);
	p->inflight = Q_NONE;
	if (data == NULL)
		return;

	if (kind == Q_CHANGES)
		handle_changes(p, data, len);
	else if (kind == Q_DIGEST)
		handle_table_answer(p, handle_digest_guarded, t, data, len);
	else if (kind == Q_ENTRIES)
		handle_table_answer(p, handle_entries_guarded, t, data, len);
	else
		handle_table_answer(p, handle_fetch_guarded, t, data, len);
	pfree(data);
}

/* Read what the peer sent; handle notifications and a finished request. */
static void
service(Peer *p)
{
	PGnotify   *n;

	if (p->state == CONN_SENDING && p->writable && !flush_request(p))
		return;
	if (!p->readable && p->inflight == Q_NONE)
		return;
	if (!PQconsumeInput(p->conn))
	{
		char		msg[256];

		snprintf(msg, sizeof(msg), "connection lost: %s", PQerrorMessage(p->conn));
		disconnect(p, msg);
		return;
	}
	while ((n = PQnotifies(p->conn)) != NULL)
	{
		p->want_fast = true;
		PQfreemem(n);
	}
	/*
	 * A request has exactly one result, and is over when PQgetResult()
	 * returns NULL.  The end may arrive later than the result: it is only
	 * asked for while PQisBusy() says it would not block.  A whole-table
	 * pull also has a result per page before its last one.
	 */
	while (p->inflight != Q_NONE && !PQisBusy(p->conn))
	{
		PGresult   *res = PQgetResult(p->conn);

		if (res != NULL && PQresultStatus(res) == PGRES_SINGLE_TUPLE &&
			p->inflight == Q_PAGES && p->result == NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(AnswerContext);

			handle_page(p, res);
			MemoryContextSwitchTo(old);
			MemoryContextReset(AnswerContext);
			if (p->conn == NULL)
				return;
			continue;
		}
		if (res != NULL)
		{
			if (p->result == NULL)
				p->result = res;
			else
				PQclear(res);
			continue;
		}
		res = p->result;
		p->result = NULL;
		if (res == NULL)
		{
			disconnect(p, "request ended without a result");
			return;
		}
		{
			MemoryContext old = MemoryContextSwitchTo(AnswerContext);

			handle_result(p, res);
			MemoryContextSwitchTo(old);
			MemoryContextReset(AnswerContext);
		}
		if (p->conn == NULL)
			return;
	}
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

	if (p->state == CONN_OPEN)
	{
		send_query(p, Q_LISTEN, "LISTEN registry_wakeup", 0, NULL);
		return;
	}
	if (now < p->quiet_until)
	{
		*timeout = Min(*timeout, Max((long) ((p->quiet_until - now) / 1000), 1));
		return;
	}
	if (p->want_fast)
	{
		send_changes(p, 0);
		return;
	}
	if (!round_active(p) && should_start_round(p, now))
		start_round(p);
	if (round_active(p))
	{
		send_ae(p);
		if (p->inflight != Q_NONE || p->conn == NULL)
			return;
	}

	/*
	 * Idle: wait at the peer for its next change.  The wait is short enough
	 * that rounds, sync_now() and configuration changes are not held up
	 * long by it.
	 */
	wait = Min(registry_sync_interval_ms, LONG_POLL_MAX_MS);
	{
		TimestampTz due = p->ae_needed ? p->ae_not_before :
			Max(TimestampTzPlusMilliseconds(p->last_ae, registry_antientropy_interval_ms),
				p->ae_not_before);

		wait = Min(wait, Max((long) ((due - now) / 1000), 1));
	}
	send_changes(p, (int) wait);
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
		 * answers it, in disconnect()); one that no attempt serves now
		 * is answered at once.
		 */
		if (now >= p->next_connect)
			start_connect(p);
		else
			*timeout = Min(*timeout, Max((long) ((p->next_connect - now) / 1000), 1));
		if (p->conn == NULL)
		{
			if (gen > p->st.served_gen)
				serve_request_failed(p);
			return;
		}
	}
	if (p->state == CONN_CONNECTING)
	{
		drive_connect(p);
		if (p->state == CONN_CONNECTING &&
			TimestampDifferenceExceeds(p->connect_started, now, registry_connect_timeout_ms))
		{
			char		msg[128];

			snprintf(msg, sizeof(msg), "no connection within registry.connect_timeout (%d ms)",
					 registry_connect_timeout_ms);
			disconnect(p, msg);
		}
		if (p->state == CONN_CONNECTING)
			*timeout = Min(*timeout, registry_connect_timeout_ms);
		if (p->state == CONN_CLOSED || p->state == CONN_CONNECTING)
			return;
	}
	service(p);
	if (p->conn == NULL)
		return;
	if (p->inflight != Q_NONE)
	{
		if (TimestampDifferenceExceeds(p->query_started, now,
									   registry_query_timeout_ms + p->query_wait_ms))
		{
			char		msg[128];

			snprintf(msg, sizeof(msg), "no answer within registry.query_timeout (%d ms)",
					 registry_query_timeout_ms);
			disconnect(p, msg);
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
 * others.  disconnect() clears any result still held.
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
		ErrorData  *edata = recover_from_error(cxt);

		disconnect(p, error_text(edata));
		FreeErrorData(edata);
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

	cxt = xact_begin();
	if (OidIsValid(get_extension_oid("registry", true)))
	{
		SPI_connect();
		rc = SPI_execute("SELECT name, conninfo, added_at, last_converged_at, password_required "
						 "FROM registry.peers ORDER BY name", true, 0);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "registry: could not read registry.peers");
		old = MemoryContextSwitchTo(SyncContext);
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
	xact_end(cxt);

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
			np->roundcxt = AllocSetContextCreate(SyncContext, "registry sync round",
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
					set_health(np, false, "no anti-entropy round completed yet");
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
		if (op->conn)
			PQfinish(op->conn);
		if (op->slot >= 0)
			peer_status_detach(op->slot);
		MemoryContextDelete(op->roundcxt);
		pfree(op->conninfo);
		if (op->notice_name)
			pfree(op->notice_name);
	}
	if (peers)
		pfree(peers);
	peers = newp;
	npeers = n;
}

static void
close_all(int code, Datum arg)
{
	int			i;

	for (i = 0; i < npeers; i++)
		if (peers[i].conn)
			PQfinish(peers[i].conn);
}

void
registry_sync_main(Datum arg)
{
	MemoryContext loopcxt;
	TimestampTz last_load = 0;

	worker_attach(REG_WORKER_SYNC);
	apply_prepare_session();
	SyncContext = AllocSetContextCreate(TopMemoryContext, "registry sync",
										ALLOCSET_DEFAULT_SIZES);
	AnswerContext = AllocSetContextCreate(TopMemoryContext, "registry sync answer",
										  ALLOCSET_DEFAULT_SIZES);
	loopcxt = AllocSetContextCreate(TopMemoryContext, "registry sync loop",
									ALLOCSET_DEFAULT_SIZES);
	on_proc_exit(close_all, (Datum) 0);

	for (;;)
	{
		TimestampTz now;
		long		timeout = 1000;
		uint64		changed;
		WaitEventSet *set;
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
		if (pg_atomic_read_u32(&RegistryState->state) != REG_STATE_READY)
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
				/* the one place the peer's status is published */
				peer_status_update(peers[i].slot, &peers[i].st);
				peers[i].readable = peers[i].writable = false;
			}
		}

		set = CreateWaitEventSet(CurrentMemoryContext, npeers + 2);
		AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
		for (i = 0; i < npeers; i++)
		{
			Peer	   *p = &peers[i];
			uint32		ev = 0;

			if (!p->seen || p->conn == NULL || PQsocket(p->conn) < 0)
				continue;
			if (p->state == CONN_CONNECTING)
				ev = (p->poll == PGRES_POLLING_READING) ? WL_SOCKET_READABLE : WL_SOCKET_WRITEABLE;
			else
				ev = WL_SOCKET_READABLE | (p->state == CONN_SENDING ? WL_SOCKET_WRITEABLE : 0);
			AddWaitEventToSet(set, ev, PQsocket(p->conn), NULL, p);
		}
		events = palloc(sizeof(WaitEvent) * (npeers + 2));
		nev = WaitEventSetWait(set, Max(timeout, 1), events, npeers + 2,
							   PG_WAIT_EXTENSION);
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
		FreeWaitEventSet(set);
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(loopcxt);
	}
}
