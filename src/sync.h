/*-------------------------------------------------------------------------
 *
 * sync.h
 *	  Private to the sync worker's files: sync.c (main loop, peer list,
 *	  scheduling), sync_conn.c (libpq connections and requests, the peer's
 *	  status and errors), sync_fast.c (the fast path, and applying what
 *	  either path pulls), antientropy.c (digest comparison rounds).  Calls
 *	  go sync.c -> antientropy.c -> sync_fast.c -> sync_conn.c, never back
 *	  up: sync_conn_service() hands finished answers to the callbacks
 *	  sync.c gives it.
 *
 * The sync worker's memory contexts, by lifetime:
 *
 *	worker context	(sync_conn_worker_cxt, under TopMemoryContext) the
 *					worker's life: the peer list (peers[], conninfo, notice
 *					names), and the prepared apply statements, each in a
 *					context of its own under it (apply_batch.c).
 *	p->roundcxt		one peer's anti-entropy round: its tables' progress,
 *					bucket lists and the keys queued to fetch (one table's
 *					queue at a time).  Reset when the round ends or the
 *					connection drops.
 *	loop context	one pass of the main loop (sync.c): what a step
 *					allocates outside an answer, the wait event set.
 *					Reset at the end of each pass.
 *	answer context	(sync_conn_answer_cxt) one answer, or one page of a
 *					whole-table pull: the answer's bytes, the inflated
 *					payload, what it is read into, the batches built from
 *					it.  Current while sync_conn_service() hands an answer
 *					over, reset after each, so that a peer streaming pages
 *					faster than they are handled cannot make memory grow.
 *	transactions	what one apply or catalog step allocates;
 *					apply_batch_xact_end() goes back to the caller's
 *					context.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_SYNC_H
#define REGISTRY_SYNC_H

#include "libpq-fe.h"

#include "apply_batch.h"
#include "message.h"
#include "peer_status.h"
#include "registry.h"

/*
 * The two requests a healthy, idle peer gets all the time -- a digest
 * root per table per round, and the long poll -- are prepared once per
 * connection (the setup, sync_conn.c) and sent by name: the peer
 * neither receives nor parses their text again.
 */
#define SYNC_SQL_DIGEST \
	"SELECT registry.digest($1, $2::int, $3::int, $4::int, $5::int)"
#define SYNC_SQL_CHANGES \
	"SELECT registry.changes_since($1::bigint, $2::int, true, $3::bigint, " \
	"$4::text, $5::int, $6::int, $7::text[])"

typedef enum QueryKind
{
	Q_NONE,
	Q_SETUP,
	Q_CHANGES,
	Q_DIGEST,
	Q_ENTRIES,
	Q_FETCH,
	Q_PAGES						/* a whole table, one result per page */
} QueryKind;

/*
 * The state of a peer's connection.  p->conn is NULL exactly in
 * CONN_CLOSED; p->inflight names the request in CONN_SENDING and
 * CONN_WAITING (Q_NONE otherwise); and the setup is the first request on
 * every connection, sent again until it succeeds.
 *
 *	from		event								to
 *	----		-----								--
 *	CLOSED		sync_conn_start(): connection begun 	CONNECTING
 *	CONNECTING	PQconnectPoll() OK (password rule)	OPEN
 *	OPEN		the setup sent						SENDING, WAITING
 *	IDLE		a request sent (next_request)		SENDING, WAITING
 *	SENDING		libpq sent the rest of it			WAITING
 *	SENDING,	the request ended:
 *	WAITING		  a setup that failed				OPEN
 *				  any other							IDLE
 *	any			sync_conn_disconnect(): an error,  	CLOSED
 *				a peer removed or changed
 *
 * Which request goes next (next_request) is not the connection's state:
 * want_fast (a changes request is due at once: after connecting, while
 * the peer has more) and a round in progress
 * (round_active) outlive any one request.
 */
typedef enum ConnState
{
	CONN_CLOSED,				/* no connection; next_connect says when */
	CONN_CONNECTING,			/* PQconnectPoll() under way (poll) */
	CONN_OPEN,					/* connected, setup not done */
	CONN_IDLE,					/* set up, no request */
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
#define LONG_POLL_MAX_MS	1000	/* longest wait of a change-log request */
#define BACKOFF_MAX_MS		30000
#define RECONNECT_MAX_MS	5000	/* longest wait before reconnecting */
#define FULL_WAIT_POLL_MS	100		/* a round waiting for another's pull */
#define FULL_WAIT_STALL_MS	2000	/* ... while it got a page this recently */
#define FULL_WAIT_MAX_MS	30000	/* ... and this long at most */

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
	TimestampTz full_wait_since;	/* ... held back since, while another
									 * peer's pull of it ran (0: not) */

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

/*
 * A long poll is sent in libpq's pipeline mode, as Bind/Execute and its
 * Sync in one write: the peer reads the Sync with the request, so it ends
 * its transaction (and the locks it took on the tables it read) as soon
 * as it has answered, and sends the answer and its ReadyForQuery
 * together.  A second Sync sent while the peer holds the poll (a "poke",
 * when sync_now() wants a round) is input arriving during the wait, which
 * ends it at once.  The answer is handed on as soon as it is in (the
 * request is then over); no request is sent until every Sync's
 * ReadyForQuery (PGRES_PIPELINE_SYNC) has arrived and the connection has
 * left pipeline mode, within registry.query_timeout.
 *
 * Until 2026-12-08 the Sync was sent only once the answer had arrived
 * (the poll went with a Flush): the peer's session then woke once more
 * per change, for the late Sync, and this worker once more for its
 * ReadyForQuery.  Held back further, until after the apply (to go with
 * the next poll), it made two nodes pulling from each other wait for each
 * other forever: each apply queued behind a local TRUNCATE, which waited
 * for the lock the other node's held transaction kept.
 */
typedef enum LongPollPipe
{
	PIPE_NONE,					/* not in pipeline mode */
	PIPE_RESULT,				/* the long poll's answer is awaited */
	PIPE_RESULT_POKED,			/* ... and a second Sync was sent (a poke) */
	PIPE_SYNC					/* the answer was handed on; its Syncs' ends
								 * are awaited before the next request */
} LongPollPipe;

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
	bool		upkeep_wanted;	/* its round or pull left catalog upkeep due */
	int			slot;			/* its status slot, -1 if none */
	PeerStatus	st;				/* its status, published once per loop */

	PGconn	   *conn;
	uint32		conn_gen;		/* bumped whenever conn is closed */
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
	LongPollPipe pipe;			/* a long poll's state in pipeline mode */
	int			pipe_syncs;		/* its Syncs whose end has not arrived */
	TimestampTz quiet_until;	/* after a failed request: no new one before */
	AETable    *inflight_table;

	/* fast path */
	bool		have_position;
	uint64		epoch;
	uint64		consumed;
	bool		want_fast;
	char	   *skip_sent;		/* skip_origins of the last changes_since
								 * request, "{a,b}" (worker context), or
								 * NULL */

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
round_active(const Peer *p)
{
	return p->tables != NULL;
}

extern MemoryContext sync_conn_worker_cxt;
extern MemoryContext sync_conn_answer_cxt;

/* Work on one peer run by sync_conn_run_guarded(). */
typedef void (*SyncGuardedFn) (Peer *p, void *arg);

/* What sync_conn_service() hands over: a page, a finished request. */
typedef void (*SyncAnswerFn) (Peer *p, PGresult *res);

/* ---- sync_conn.c ---- */
extern void sync_conn_init(void);
extern void sync_conn_set_peers(Peer *peers, int npeers);
extern const char **sync_conn_direct_origins(const Peer *except, int *n);
extern bool sync_conn_pulling_whole(const Peer *except, const char *table);
extern void sync_conn_one_line(char *out, size_t size, const char *msg);
extern void sync_conn_set_state(Peer *p, int state);
extern void sync_conn_set_health(Peer *p, bool healthy, const char *problem);
extern void sync_conn_record_error(Peer *p, const char *msg);
extern void sync_conn_record_error_context(Peer *p, const char *msg,
										   const char *context);
extern void sync_conn_note_success(Peer *p);
extern void sync_conn_serve_failed(Peer *p);
extern bool sync_conn_run_guarded(Peer *p, SyncGuardedFn fn, void *arg,
								  int *sqlstate, char **message);
extern void sync_conn_disconnect(Peer *p, const char *why);
extern void sync_conn_start(Peer *p);
extern void sync_conn_drive(Peer *p);
extern void sync_conn_send(Peer *p, QueryKind kind, const char *sql,
						   int nparams, const char *const *params);
extern void sync_conn_poke(Peer *p);
extern void sync_conn_service(Peer *p, SyncAnswerFn on_page,
							  SyncAnswerFn on_result);
extern char *sync_conn_answer_bytes(Peer *p, PGresult *res,
									ExecStatusType want, int *len);
extern bool sync_conn_remote_error(Peer *p, PGresult *res, QueryKind kind,
								   const char *table, int *sqlstate);
extern void sync_conn_check_node_name(Peer *p, const char *node);
extern void sync_conn_protocol_error(const char *what, const char *detail);

/* ---- sync_fast.c ---- */
extern void sync_fast_note_too_large(Peer *p, const char *table,
									 const MsgRow *r, int n);
extern void sync_fast_note_refused_purged(Peer *p, const char *table, int n);
extern bool sync_fast_apply_batch(Peer *p, ApplyBatch *b);
extern void sync_fast_send_changes(Peer *p, int wait_ms);
extern void sync_fast_handle_changes(Peer *p, char *data, int len);

/* ---- antientropy.c ---- */
extern void antientropy_start_round(Peer *p);
extern void antientropy_send_next(Peer *p);
extern void antientropy_handle_page(Peer *p, PGresult *res);
extern void antientropy_handle_answer(Peer *p, QueryKind kind, AETable *t,
									  char *data, int len);

#endif							/* REGISTRY_SYNC_H */
