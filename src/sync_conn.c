/*-------------------------------------------------------------------------
 *
 * sync_conn.c
 *	  The sync worker's connections to its peers: opening them without
 *	  blocking, sending requests and reading what comes back (notices,
 *	  notifications, answers, pages), and what a peer's failures leave in
 *	  its status: connection errors, protocol errors, and the errors a
 *	  peer answers with, logged with their SQLSTATE, detail and hint.
 *
 * The connection's states and their transitions are in sync.h (ConnState).
 * Finished answers are handed to the callbacks the caller (sync.c) gives
 * sync_conn_service(), in the answer context.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/socket.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "libpq-fe.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "sync.h"

MemoryContext sync_conn_worker_cxt = NULL;
MemoryContext sync_conn_answer_cxt = NULL;

/* the worker's peer list (sync.c's), for the node-name check */
static Peer *all_peers = NULL;
static int	nall_peers = 0;

static void record_status_error(Peer *p, const char *line);

/* The worker's long-lived contexts (see sync.h). */
void
sync_conn_init(void)
{
	sync_conn_worker_cxt = AllocSetContextCreate(TopMemoryContext, "registry sync",
												 ALLOCSET_DEFAULT_SIZES);
	sync_conn_answer_cxt = AllocSetContextCreate(TopMemoryContext, "registry sync answer",
												 ALLOCSET_DEFAULT_SIZES);
}

void
sync_conn_set_peers(Peer *peers, int npeers)
{
	all_peers = peers;
	nall_peers = npeers;
}

/*
 * The node names of the peers other than except that this node follows
 * directly and well (connected, following the change log, or comparing
 * digests between two follows): except need not forward their own
 * changes to this node.  A peer whose link fails drops out, and its
 * changes then come through the others again (anti-entropy repairs what
 * fell between).  In the current memory context.
 */
const char **
sync_conn_direct_origins(const Peer *except, int *n)
{
	const char **names = palloc(sizeof(char *) * Max(nall_peers, 1));
	int			i;

	*n = 0;
	for (i = 0; i < nall_peers; i++)
	{
		const Peer *q = &all_peers[i];

		if (q == except || q->conn == NULL || !q->have_position ||
			q->st.remote_node[0] == '\0' ||
			strcmp(q->st.remote_node, registry_node_name) == 0 ||
			strcmp(q->st.remote_node, except->st.remote_node) == 0 ||
			(q->st.state != PEER_STREAMING && q->st.state != PEER_ANTIENTROPY))
			continue;
		names[(*n)++] = q->st.remote_node;
	}
	return names;
}

/*
 * Whether a peer other than except is pulling table whole right now (its
 * round's current table, the request sent) and getting pages: one came
 * within FULL_WAIT_STALL_MS.  A node joining a mesh finds several peers
 * far ahead of it at once; it pulls each table from one.  A pull that
 * stalls (a slow or hostile peer) holds nobody up.
 */
bool
sync_conn_pulling_whole(const Peer *except, const char *table)
{
	int			i;
	TimestampTz now = GetCurrentTimestamp();

	for (i = 0; i < nall_peers; i++)
	{
		const Peer *q = &all_peers[i];
		const AETable *t;

		if (q == except || q->conn == NULL || q->tables == NULL ||
			q->itable >= q->ntables)
			continue;
		t = &q->tables[q->itable];
		if (t->stage == AE_FULL && t->full_asked && strcmp(t->name, table) == 0 &&
			!TimestampDifferenceExceeds(q->query_started, now, FULL_WAIT_STALL_MS))
			return true;
	}
	return false;
}

/* ---- status ---- */

void
sync_conn_set_state(Peer *p, int state)
{
	p->st.state = state;
}

/*
 * A message as one clean line of at most size - 1 bytes: libpq's
 * messages come with newlines, tabs and "ERROR:  " prefixes.
 */
void
sync_conn_one_line(char *out, size_t size, const char *msg)
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
void
sync_conn_set_health(Peer *p, bool healthy, const char *problem)
{
	if (p->st.healthy != healthy || p->st.health_changed_at == 0)
		p->st.health_changed_at = GetCurrentTimestamp();
	p->st.healthy = healthy;
	strlcpy(p->st.problem, healthy ? "" : problem, sizeof(p->st.problem));
}


/* An error in the peer's status: one line, counted, and unhealthy. */
static void
record_status_error(Peer *p, const char *line)
{
	strlcpy(p->st.last_error, line, sizeof(p->st.last_error));
	p->st.last_error_at = GetCurrentTimestamp();
	p->st.errors++;
	sync_conn_set_health(p, false, line);
	p->ae_errors = true;
}

void
sync_conn_record_error(Peer *p, const char *msg)
{
	sync_conn_record_error_context(p, msg, NULL);
}

/*
 * The same, with the CONTEXT of the local error that caused it (the apply
 * error context names peer, table, key, version and origin): in the log
 * only, the view keeps one line.
 */
void
sync_conn_record_error_context(Peer *p, const char *msg, const char *context)
{
	char		buf[256];

	/* one line in the view */
	sync_conn_one_line(buf, sizeof(buf), msg);
	record_status_error(p, buf);
	ereport(LOG,
			(errmsg("registry: peer \"%s\": %s", p->name, buf),
			 context ? errcontext("%s", context) : 0));
}

void
sync_conn_note_success(Peer *p)
{
	p->backoff_ms = BACKOFF_MIN_MS;
	p->st.last_success = GetCurrentTimestamp();
	/* an error answer left it in state error: it answers again */
	if (p->st.state == PEER_ERROR && p->state != CONN_CLOSED &&
		p->state != CONN_CONNECTING)
		p->st.state = round_active(p) ? PEER_ANTIENTROPY : PEER_STREAMING;
}

/* A sync_now() request is waiting and this peer cannot serve it: say so. */
void
sync_conn_serve_failed(Peer *p)
{
	uint64		gen;

	gen = peer_status_round_requested();
	if (p->st.served_gen < gen)
	{
		p->st.served_gen = gen;
		p->st.served_converged = false;
	}
}

/* ---- guarded work ---- */

bool
sync_conn_run_guarded(Peer *p, SyncGuardedFn fn, void *arg, int *sqlstate, char **message)
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
		ErrorData  *edata = apply_batch_recover(oldcxt);

		if (sqlstate)
		{
			*sqlstate = edata->sqlerrcode;
			*message = apply_batch_error_text(edata);
		}
		else
			sync_conn_record_error_context(p, apply_batch_error_text(edata),
										   edata->context);
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/* ---- connections ---- */

void
sync_conn_disconnect(Peer *p, const char *why)
{
	if (why)
		sync_conn_record_error(p, why);
	if (p->result)
		PQclear(p->result);
	p->result = NULL;
	if (p->conn)
		PQfinish(p->conn);
	p->conn = NULL;
	p->conn_gen++;
	p->state = CONN_CLOSED;
	p->name_warned = false;
	p->inflight = Q_NONE;
	p->pipe = PIPE_NONE;
	p->pipe_syncs = 0;
	if (p->roundcxt)
		MemoryContextReset(p->roundcxt);
	p->tables = NULL;
	/*
	 * Reconnecting is retried at most RECONNECT_MAX_MS apart, as the
	 * built-in apply worker retries every wal_retrieve_retry_interval: a
	 * peer back from an outage is pulled from within seconds, not after
	 * the 30 s an answer's errors may back off to.
	 */
	p->next_connect = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												  Min(p->backoff_ms, RECONNECT_MAX_MS));
	p->backoff_ms = Min(p->backoff_ms * 2, BACKOFF_MAX_MS);
	sync_conn_set_state(p, why ? PEER_ERROR : PEER_DISCONNECTED);
	if (!why)
	{
		if (p->st.healthy)
			sync_conn_set_health(p, false, "not connected");
	}
	sync_conn_serve_failed(p);
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
	sync_conn_one_line(line, sizeof(line), msg ? msg : PQresultErrorMessage(res));
	ereport(LOG,
			(errmsg("registry: peer \"%s\" sent %s: %s", (const char *) arg,
					level, line)));
}

void
sync_conn_start(Peer *p)
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
		sync_conn_disconnect(p, msg);
		return;
	}
	if (p->notice_name == NULL)
		p->notice_name = MemoryContextStrdup(sync_conn_worker_cxt, p->name);
	PQsetNoticeReceiver(p->conn, peer_notice, p->notice_name);
	if (PQsetnonblocking(p->conn, 1) != 0)
	{
		sync_conn_disconnect(p, "could not make the connection non-blocking");
		return;
	}
	p->state = CONN_CONNECTING;
	p->poll = PGRES_POLLING_WRITING;
	sync_conn_set_state(p, PEER_CONNECTING);
}

void
sync_conn_drive(Peer *p)
{
	if ((p->poll == PGRES_POLLING_READING && !p->readable) ||
		(p->poll == PGRES_POLLING_WRITING && !p->writable))
		return;
	p->poll = PQconnectPoll(p->conn);
	if (p->poll == PGRES_POLLING_FAILED)
	{
		char		msg[256];

		snprintf(msg, sizeof(msg), "could not connect: %s", PQerrorMessage(p->conn));
		sync_conn_disconnect(p, msg);
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
		sync_conn_disconnect(p, "password is required: the peer was added by a non-superuser, and its server did not ask for the password given in the connection string");
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

/* libpq could not send: the connection goes, with libpq's reason. */
static void
send_failed(Peer *p)
{
	char		msg[256];

	snprintf(msg, sizeof(msg), "could not send a request: %s", PQerrorMessage(p->conn));
	sync_conn_disconnect(p, msg);
}

/* Send what libpq still holds of a request; false if the connection broke. */
static bool
flush_request(Peer *p)
{
	int			rc = PQflush(p->conn);

	if (rc < 0)
	{
		send_failed(p);
		return false;
	}
	p->state = (rc == 1) ? CONN_SENDING : CONN_WAITING;
	return true;
}

/*
 * Send a poke: a second Sync behind a held long poll (sync.h); false if
 * the connection broke.
 */
static bool
send_sync(Peer *p)
{
	if (!PQpipelineSync(p->conn))
	{
		send_failed(p);
		return false;
	}
	p->pipe_syncs++;
	return flush_request(p);
}

/*
 * The first request on a connection: prepare the frequent requests, in
 * one simple query (one round trip).  It does not LISTEN (sync.c).  If one of
 * its statements fails, the error is the request's result (see
 * sync_conn_service) and the setup is sent again after the backoff; a
 * PREPARE is not undone by the failed transaction, so the setup first
 * deallocates whatever an earlier try left.
 */
#define SETUP_SQL \
	"DEALLOCATE ALL; " \
	"PREPARE registry_digest AS " SYNC_SQL_DIGEST "; " \
	"PREPARE registry_changes AS " SYNC_SQL_CHANGES

/*
 * Whether the connection reaches its peer over a Unix socket: the peer is
 * on this machine, moving bytes costs a copy, and compressing them costs
 * both ends far more than it saves.  A loopback TCP address does not
 * count: it is as often the local end of a tunnel or a pooler (ssh -L,
 * stunnel, a sidecar proxy) that carries the bytes over a network.
 */
static bool
link_is_unix_socket(PGconn *conn)
{
	struct sockaddr_storage addr;
	socklen_t	len = sizeof(addr);

	if (getpeername(PQsocket(conn), (struct sockaddr *) &addr, &len) != 0)
		return false;
	return addr.ss_family == AF_UNIX;
}

/*
 * Whether this connection's answers go uncompressed
 * (registry.pull_compression): the setup then turns the peer session's
 * compression off.
 */
static bool
pull_uncompressed(Peer *p)
{
	if (registry_pull_compression == REGISTRY_PULL_COMPRESSION_OFF)
		return true;
	if (registry_pull_compression == REGISTRY_PULL_COMPRESSION_ON)
		return false;
	return link_is_unix_socket(p->conn);
}

/* The name a request of this kind was prepared under, or NULL. */
static const char *
prepared_name(QueryKind kind, const char *sql)
{
	if (kind == Q_DIGEST)
	{
		Assert(strcmp(sql, SYNC_SQL_DIGEST) == 0);
		return "registry_digest";
	}
	if (kind == Q_CHANGES)
	{
		Assert(strcmp(sql, SYNC_SQL_CHANGES) == 0);
		return "registry_changes";
	}
	return NULL;
}

/*
 * Send a request; its single bytea result is asked for in binary.  All
 * parameters are text.  Q_SETUP is the connection's setup (sql NULL).
 */
void
sync_conn_send(Peer *p, QueryKind kind, const char *sql, int nparams,
		   const char *const *params)
{
	int			ok;
	const char *stmt = NULL;

	/* no request goes before the ends of a long poll's Syncs (sync.h) */
	if (p->pipe != PIPE_NONE)
		elog(ERROR, "registry: request %d to peer \"%s\" sent while a long poll is in pipeline mode (%d)",
			 (int) kind, p->name, (int) p->pipe);
	if (kind == Q_SETUP)
	{
		sql = pull_uncompressed(p) ?
			SETUP_SQL "; SET registry.compress_threshold = -1" : SETUP_SQL;
		ok = PQsendQuery(p->conn, sql);
	}
	else if (kind == Q_CHANGES && p->query_wait_ms > 0)
	{
		/*
		 * A long poll: pipelined with its Sync, in one write, so that a
		 * second Sync (a poke) can end it (sync.h).  PQpipelineSync() sends
		 * what is queued.
		 */
		stmt = prepared_name(kind, sql);
		ok = PQenterPipelineMode(p->conn) &&
			PQsendQueryPrepared(p->conn, stmt, nparams, params, NULL, NULL, 1) &&
			PQpipelineSync(p->conn);
		p->pipe = PIPE_RESULT;
		p->pipe_syncs = 1;
	}
	else if ((stmt = prepared_name(kind, sql)) != NULL)
		ok = PQsendQueryPrepared(p->conn, stmt, nparams, params, NULL, NULL, 1);
	else
		ok = PQsendQueryParams(p->conn, sql, nparams, NULL, params, NULL, NULL, 1);
	/* each page is handed over as soon as it has arrived */
	if (ok && kind == Q_PAGES)
		ok = PQsetSingleRowMode(p->conn);
	if (!ok)
	{
		send_failed(p);
		return;
	}
	if (kind != Q_CHANGES)
		p->query_wait_ms = 0;
	p->inflight = kind;
	p->query_started = GetCurrentTimestamp();
	if (!flush_request(p))
		return;
	{
		uint64		sent = strlen(stmt ? stmt : sql);
		int			i;

		for (i = 0; i < nparams; i++)
			sent += params[i] ? strlen(params[i]) : 0;
		if (kind != Q_SETUP && kind != Q_CHANGES)
			p->ae_bytes += sent;
		p->st.bytes_sent += sent;
	}
}

/*
 * End the peer's hold on a long poll now: a second Sync, which the peer
 * sees as input during its wait and answers at once (a peer of an older
 * version at the end of its wait).
 */
void
sync_conn_poke(Peer *p)
{
	if (p->conn == NULL || p->inflight != Q_CHANGES || p->pipe != PIPE_RESULT)
		return;
	if (send_sync(p))
		p->pipe = PIPE_RESULT_POKED;
}

/*
 * The node name a peer reports.  It must not be this node's own; a node
 * is pulled from once (two peers reporting the same node would pull
 * everything twice, in parallel: the one named after the node is kept);
 * a peer named otherwise than the node it reports is said once per
 * connection.
 */
void
sync_conn_check_node_name(Peer *p, const char *node)
{
	int			i;

	if (strcmp(node, registry_node_name) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("peer reports this node's own name \"%s\"", node),
				 errhint("Give every node its own registry.node_name.")));
	for (i = 0; i < nall_peers; i++)
	{
		Peer	   *o = &all_peers[i];

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
			sync_conn_disconnect(o, msg);
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


void
sync_conn_protocol_error(const char *what, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_PROTOCOL_VIOLATION),
			 errmsg("%s", what),
			 detail ? errdetail("%s", detail) : 0));
}

/* ---- answers ---- */

/*
 * The one bytea value of an answer (or of one page), copied, with res
 * cleared: parsing it may raise an error.  NULL if it is not one bytea
 * value: the peer was disconnected.
 */
char *
sync_conn_answer_bytes(Peer *p, PGresult *res, ExecStatusType want, int *len)
{
	char	   *data;

	/* the copy lives as long as the answer */
	Assert(CurrentMemoryContext == sync_conn_answer_cxt);
	if (PQresultStatus(res) != want || PQntuples(res) != 1 || PQnfields(res) != 1 ||
		PQgetisnull(res, 0, 0) || PQfformat(res, 0) != 1)
	{
		PQclear(res);
		sync_conn_disconnect(p, "malformed answer: expected one bytea value");
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
		sync_conn_disconnect(p, msg);
		return NULL;
	}
	/* no ERROR while res is held: it is libpq's memory, not a context's */
	data = palloc_extended(*len + 1, MCXT_ALLOC_NO_OOM);
	if (data == NULL)
	{
		PQclear(res);
		sync_conn_disconnect(p, "out of memory for an answer");
		return NULL;
	}
	memcpy(data, PQgetvalue(res, 0, 0), *len);
	PQclear(res);

	p->st.bytes_pulled += *len;
	if (p->inflight != Q_CHANGES)
		p->ae_bytes += *len;
	return data;
}


/* The function a request calls on the peer, for error contexts. */
static const char *
request_name(QueryKind kind)
{
	switch (kind)
	{
		case Q_NONE:
			break;
		case Q_SETUP:
			return "the connection's setup (PREPARE)";
		case Q_CHANGES:
			return "registry.changes_since()";
		case Q_DIGEST:
			return "registry.digest()";
		case Q_ENTRIES:
			return "registry.bucket_entries()";
		case Q_FETCH:
			return "registry.fetch_rows()";
		case Q_PAGES:
			return "registry.table_pages()";
	}
	return "a request";
}

/*
 * A request the peer answered with an error; res is cleared here.  The
 * peer's status records it as libpq words it (message, detail and hint
 * on one line, after the table's name).  The log keeps the parts apart,
 * as postgres_fdw's pgfdw_report_error does: the peer's SQLSTATE as the
 * entry's code, its primary message, its detail and hint, its context,
 * and a context naming the peer and the request.  Whether the peer sent a SQLSTATE, and
 * which (XX000 for one not well formed), for the caller to decide on.
 */
bool
sync_conn_remote_error(Peer *p, PGresult *res, QueryKind kind,
					   const char *table, int *sqlstate)
{
	char		msg[256];
	char		line[256];
	char		primary[256];
	char		detail[512];
	char		hint[512];
	char		context[512];
	const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	const char *f;
	bool		has_code = (code != NULL);

	snprintf(msg, sizeof(msg), "%s%s%s", table ? table : "",
			 table ? ": " : "", PQresultErrorMessage(res));
	if (!has_code)
		*sqlstate = ERRCODE_CONNECTION_FAILURE; /* as postgres_fdw says it */
	else if (strlen(code) == 5 &&
			 strspn(code, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") == 5)
		*sqlstate = MAKE_SQLSTATE(code[0], code[1], code[2], code[3], code[4]);
	else
		*sqlstate = ERRCODE_INTERNAL_ERROR;
	f = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	sync_conn_one_line(primary, sizeof(primary), f ? f : PQresultErrorMessage(res));
	f = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
	sync_conn_one_line(detail, sizeof(detail), f ? f : "");
	f = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
	sync_conn_one_line(hint, sizeof(hint), f ? f : "");
	f = PQresultErrorField(res, PG_DIAG_CONTEXT);
	sync_conn_one_line(context, sizeof(context), f ? f : "");
	/* no ERROR while res is held: it is libpq's memory */
	PQclear(res);

	sync_conn_one_line(line, sizeof(line), msg);
	record_status_error(p, line);
	ereport(LOG,
			(errcode(*sqlstate),
			 errmsg("registry: peer \"%s\": %s%s%s", p->name,
					table ? table : "", table ? ": " : "", primary),
			 detail[0] ? errdetail_internal("%s", detail) : 0,
			 hint[0] ? errhint("%s", hint) : 0,
			 context[0] ? errcontext("%s", context) : 0,
			 errcontext("answer of peer \"%s\" to %s%s%s", p->name,
						request_name(kind), table ? " for " : "",
						table ? table : "")));
	return has_code;
}

/*
 * Read what the peer sent; handle notifications, and hand a page or a
 * finished request's result to on_page or on_result, in the answer
 * context (reset after each).
 */
void
sync_conn_service(Peer *p, SyncAnswerFn on_page, SyncAnswerFn on_result)
{
	PGnotify   *n;

	if (p->state == CONN_SENDING && p->writable && !flush_request(p))
		return;
	if (!p->readable && p->inflight == Q_NONE && p->pipe == PIPE_NONE)
		return;
	if (!PQconsumeInput(p->conn))
	{
		char		msg[256];

		snprintf(msg, sizeof(msg), "connection lost: %s", PQerrorMessage(p->conn));
		sync_conn_disconnect(p, msg);
		return;
	}
	/* nothing here LISTENs: whatever a peer sends unasked is dropped */
	while ((n = PQnotifies(p->conn)) != NULL)
		PQfreemem(n);
	/*
	 * A request has exactly one result (the setup one per statement), and
	 * is over when PQgetResult() returns NULL.  The end may arrive later
	 * than the result: it is only asked for while PQisBusy() says it would
	 * not block.  A whole-table
	 * pull also has a result per page before its last one.
	 */
	while ((p->inflight != Q_NONE || p->pipe == PIPE_SYNC) && !PQisBusy(p->conn))
	{
		PGresult   *res = PQgetResult(p->conn);

		if (p->pipe == PIPE_SYNC)
		{
			/*
			 * A long poll's answer was handed on: only its Syncs' ends may
			 * come now (one, or two after a poke), and the connection then
			 * leaves pipeline mode.
			 */
			if (res == NULL)
				break;			/* not in yet */
			if (PQresultStatus(res) != PGRES_PIPELINE_SYNC)
			{
				char		why[256];
				char		msg[200];

				/*
				 * A server may end the session here (an administrator's
				 * terminate, a shutdown): its message is the reason.
				 */
				if (PQresultStatus(res) == PGRES_FATAL_ERROR)
				{
					sync_conn_one_line(msg, sizeof(msg), PQresultErrorMessage(res));
					snprintf(why, sizeof(why), "connection lost: %s", msg);
				}
				else
					snprintf(why, sizeof(why),
							 "protocol violation: %s where the end of a long poll was due",
							 PQresStatus(PQresultStatus(res)));
				PQclear(res);
				sync_conn_disconnect(p, why);
				return;
			}
			PQclear(res);
			if (--p->pipe_syncs > 0)
				continue;
			if (!PQexitPipelineMode(p->conn))
			{
				send_failed(p);
				return;
			}
			p->pipe = PIPE_NONE;
			continue;
		}
		if (p->pipe != PIPE_NONE && res == NULL)
		{
			/*
			 * A long poll's answer is in (sync.h): it is handed on at once,
			 * below; no request is sent before its Syncs' ends have arrived
			 * (usually with the answer).
			 */
			p->pipe = PIPE_SYNC;
			p->query_started = GetCurrentTimestamp();
			p->query_wait_ms = 0;
		}
		else if (p->pipe != PIPE_NONE && PQresultStatus(res) == PGRES_PIPELINE_SYNC)
		{
			/* a ReadyForQuery before the answer's end: not this protocol */
			PQclear(res);
			sync_conn_disconnect(p, "protocol violation: the end of a long poll came before its answer");
			return;
		}

		if (res != NULL && PQresultStatus(res) == PGRES_SINGLE_TUPLE &&
			p->inflight == Q_PAGES && p->result == NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(sync_conn_answer_cxt);

			on_page(p, res);
			MemoryContextSwitchTo(old);
			MemoryContextReset(sync_conn_answer_cxt);
			if (p->conn == NULL)
				return;
			continue;
		}
		if (res != NULL)
		{
			ExecStatusType st = PQresultStatus(res);

			/*
			 * Only rows or an error answer a request.  A peer that starts a
			 * COPY instead would keep libpq returning a COPY result on every
			 * call, never the end: the connection goes.
			 */
			if (st != PGRES_TUPLES_OK && st != PGRES_SINGLE_TUPLE &&
				st != PGRES_FATAL_ERROR && st != PGRES_COMMAND_OK)
			{
				char		why[128];

				snprintf(why, sizeof(why),
						 "protocol violation: the peer answered a request with %s",
						 PQresStatus(st));
				PQclear(res);
				sync_conn_disconnect(p, why);
				return;
			}
			/*
			 * The setup's statements each have a result; an error among
			 * them is the one that counts.
			 */
			if (p->result == NULL)
				p->result = res;
			else if (st == PGRES_FATAL_ERROR &&
					 PQresultStatus(p->result) != PGRES_FATAL_ERROR)
			{
				PQclear(p->result);
				p->result = res;
			}
			else
				PQclear(res);
			continue;
		}
		res = p->result;
		p->result = NULL;
		if (res == NULL)
		{
			sync_conn_disconnect(p, "request ended without a result");
			return;
		}
		{
			MemoryContext old = MemoryContextSwitchTo(sync_conn_answer_cxt);

			on_result(p, res);
			MemoryContextSwitchTo(old);
			MemoryContextReset(sync_conn_answer_cxt);
		}
		if (p->conn == NULL)
			return;
	}
}
