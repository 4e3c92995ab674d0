/*-------------------------------------------------------------------------
 *
 * join.c
 *	  A node with the extension and no tables joins a mesh with one call:
 *
 *	  registry.join(peer text, conninfo text)
 *			RETURNS TABLE(table_name text, action text, detail text)
 *							connects to the peer, asks it for the
 *							definitions of its registry tables, creates
 *							and registers them here, adds the peer
 *	  registry.table_definitions() RETURNS bytea
 *							the serving function join() calls on the
 *							peer: every registry table's columns, primary
 *							key and lease TTL, as a message of kind 'T'
 *
 * The peer is untrusted.  Its message is checked by message.c's reader;
 * then every name is only ever used quoted (quote_identifier), every type
 * name is resolved here and written back in this node's own words
 * (format_type), and a default expression is copied only if it is a
 * constant, a cast of one, or one of a few argument-less built-in
 * functions (safe_default): what is copied is rebuilt from the parse
 * tree, never spliced from the peer's text.  Anything else is reported,
 * not created.
 *
 * One transaction: join() runs in the caller's, so an error (the peer
 * unreachable, a privilege missing, the peer name taken) leaves nothing
 * behind.  Each table is created and registered in a subtransaction of
 * its own: a table that cannot be (its default's value refused by its
 * type, say) is reported with the error and the others go on.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/catalog.h"
#include "catalog/namespace.h"
#include "catalog/pg_attrdef.h"
#include "catalog/pg_class.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "libpq-fe.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "parser/parse_type.h"
#include "parser/parser.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/ruleutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/typcache.h"

#include "join.h"
#include "message.h"
#include "registry.h"
#include "sync.h"

PG_FUNCTION_INFO_V1(registry_table_definitions);
PG_FUNCTION_INFO_V1(registry_join);

/* ====================================================================
 * The serving side: registry.table_definitions()
 * ==================================================================== */

/* a column's default (or generation) expression as pg_get_expr() shows it */
static char *
column_default(Relation rel, AttrNumber attnum)
{
	TupleConstr *constr = RelationGetDescr(rel)->constr;
	int			i;

	for (i = 0; constr && i < constr->num_defval; i++)
	{
		if (constr->defval[i].adnum != attnum)
			continue;
		return deparse_expression(stringToNode(constr->defval[i].adbin),
								  deparse_context_for(RelationGetRelationName(rel),
													  RelationGetRelid(rel)),
								  false, false);
	}
	return NULL;
}

/* One registered table as the 'T' message describes it. */
static void
describe_table(Relation rel, RegTable *t, MsgDefTable *d)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int		   *index = palloc(sizeof(int) * Max(desc->natts, 1));
	int			i;

	d->schema = get_namespace_name(RelationGetNamespace(rel));
	d->name = pstrdup(RelationGetRelationName(rel));
	d->lease_ttl_ms = Max(t->lease_ttl_ms, 0);
	d->cols = palloc0(sizeof(MsgDefColumn) * Max(desc->natts, 1));
	d->ncols = 0;
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		MsgDefColumn *c = &d->cols[d->ncols];

		index[i] = -1;
		if (att->attisdropped || att->attnum == t->verattnum ||
			att->attnum == t->orgattnum)
			continue;
		index[i] = d->ncols++;
		c->name = pstrdup(NameStr(att->attname));
		/* search_path is pg_catalog: any other type comes qualified */
		c->type = format_type_extended(att->atttypid, att->atttypmod,
									   FORMAT_TYPE_TYPEMOD_GIVEN);
		c->flags = (att->attnotnull ? MSG_COL_NOT_NULL : 0) |
			(att->attgenerated == ATTRIBUTE_GENERATED_STORED ? MSG_COL_GENERATED : 0);
		c->default_expr = att->atthasdef ? column_default(rel, att->attnum) : NULL;
	}
	d->npk = t->nkeys;
	d->pk = palloc(sizeof(int) * Max(t->nkeys, 1));
	for (i = 0; i < t->nkeys; i++)
		d->pk[i] = index[t->keys[i].attnum - 1];
	pfree(index);
}

static int
compare_tables(const void *a, const void *b)
{
	const MsgDefTable *x = a;
	const MsgDefTable *y = b;
	int			c = strcmp(x->schema, y->schema);

	return c != 0 ? c : strcmp(x->name, y->name);
}

/*
 * registry.table_definitions() returns bytea: every registry table of
 * this node, in (schema, name) order.
 */
Datum
registry_table_definitions(PG_FUNCTION_ARGS)
{
	List	   *regs;
	ListCell   *lc;
	MsgDefTable *defs;
	int			n = 0;
	int			i;
	MsgWriter	w;

	registry_check_peer();
	regs = regtable_all();
	defs = palloc0(sizeof(MsgDefTable) * Max(list_length(regs), 1));
	foreach(lc, regs)
	{
		RegTid	   *r = lfirst(lc);
		Relation	rel = try_relation_open(r->relid, AccessShareLock);
		RegTable   *t;

		if (rel == NULL)
			continue;			/* dropped meanwhile */
		t = regtable_by_relid(r->relid, true);
		if (t != NULL)
			describe_table(rel, t, &defs[n++]);
		relation_close(rel, AccessShareLock);
	}
	qsort(defs, n, sizeof(MsgDefTable), compare_tables);

	msg_writer_init(&w);
	msg_write_definitions_begin(&w, registry_node_name);
	for (i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		msg_write_definition(&w, &defs[i]);
	}
	msg_write_definitions_end(&w, n);
	PG_RETURN_BYTEA_P(msg_finish(&w.buf));
}

/* ====================================================================
 * The joining side: registry.join()
 * ==================================================================== */

/* ---- the result rows ---- */

static void
put_row(ReturnSetInfo *rsinfo, const char *table, const char *action,
		const char *detail)
{
	Datum		v[3];
	bool		n[3] = {false, false, false};

	if (table)
		v[0] = CStringGetTextDatum(table);
	else
		n[0] = true;
	v[1] = CStringGetTextDatum(action);
	if (detail)
		v[2] = CStringGetTextDatum(detail);
	else
		n[2] = true;
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
}

/* ---- work that may fail without failing the join ---- */

typedef void (*JoinTryFn) (void *arg);

/*
 * Run fn(arg) in a subtransaction.  On an error, roll it back and return
 * false with the error's message (and detail) in *error; a cancel or a
 * shutdown is not caught.
 */
static bool
try_in_subxact(JoinTryFn fn, void *arg, char **error)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool ok = true;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
			edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
		{
			FreeErrorData(edata);
			PG_RE_THROW();
		}
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		*error = edata->detail ?
			psprintf("%s (%s)", edata->message, edata->detail) :
			pstrdup(edata->message);
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/* ---- the peer: connecting and asking ---- */

/* The peer's text as one line, valid here, at most size - 1 bytes. */
static char *
peer_text(const char *s, size_t size)
{
	char	   *out = palloc(size);

	sync_conn_one_line(out, size, s ? s : "");
	return out;
}

/*
 * Wait until the peer's socket is ready for io (WL_SOCKET_READABLE or
 * WL_SOCKET_WRITEABLE) or the deadline passes (false), serving
 * interrupts.
 */
static bool
wait_socket(PGconn *conn, int io, TimestampTz deadline)
{
	for (;;)
	{
		long		ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		int			rc;

		if (ms <= 0)
			return false;
		rc = WaitLatchOrSocket(MyLatch,
							   WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH | io,
							   PQsocket(conn), ms, PG_WAIT_EXTENSION);
		if (rc & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
		if (rc & io)
			return true;
	}
}

static void
connect_failed(const char *peer, const char *why)
{
	ereport(ERROR,
			(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
			 errmsg("could not connect to peer \"%s\"", peer),
			 errdetail_internal("%s", peer_text(why, 512)),
			 errhidestmt(true)));
}

/*
 * Notices the peer sends while joining are dropped: written raw they could
 * forge lines in the server log, and nothing in them is needed here.
 */
static void
join_notice(void *arg, const PGresult *res)
{
}

/* Connect without blocking (interruptibly), within registry.connect_timeout. */
static void
join_connect(PGconn *volatile *connp, const char *peer, const char *conninfo,
			 bool password_required)
{
	const char *keys[] = {"dbname", "fallback_application_name", "client_encoding", NULL};
	const char *vals[4];
	char		appname[NAMEDATALEN + 16];
	TimestampTz deadline;
	PostgresPollingStatusType poll = PGRES_POLLING_WRITING;
	PGconn	   *conn;

	snprintf(appname, sizeof(appname), "registry join %s", registry_node_name);
	vals[0] = conninfo;
	vals[1] = appname;
	/* the peer's messages in this database's encoding */
	vals[2] = GetDatabaseEncodingName();
	vals[3] = NULL;
	conn = *connp = PQconnectStartParams(keys, vals, true);
	if (conn == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory"),
				 errdetail("Could not start a connection to peer \"%s\".", peer)));
	if (PQstatus(conn) == CONNECTION_BAD)
		connect_failed(peer, PQerrorMessage(conn));
	/* the peer's notices are its words: not to this server's stderr */
	PQsetNoticeReceiver(conn, join_notice, NULL);
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   registry_connect_timeout_ms);
	while (poll != PGRES_POLLING_OK)
	{
		if (poll == PGRES_POLLING_FAILED)
			connect_failed(peer, PQerrorMessage(conn));
		if (!wait_socket(conn, poll == PGRES_POLLING_READING ?
						 WL_SOCKET_READABLE : WL_SOCKET_WRITEABLE, deadline))
			connect_failed(peer, psprintf("no connection within registry.connect_timeout (%d ms)",
										  registry_connect_timeout_ms));
		poll = PQconnectPoll(conn);
	}

	/*
	 * As the sync worker does for a peer added by a non-superuser (and
	 * dblink, postgres_fdw): this server's own identity (trust or peer
	 * authentication, a ~/.pgpass, client certificates) is not for them.
	 */
	if (password_required && !PQconnectionUsedPassword(conn))
		ereport(ERROR,
				(errcode(ERRCODE_S_R_E_PROHIBITED_SQL_STATEMENT_ATTEMPTED),
				 errmsg("password is required"),
				 errdetail("Non-superusers must connect to a peer with a password, and the server of peer \"%s\" did not ask for the one given.",
						   peer),
				 errhint("Make the peer's pg_hba.conf ask for a password, or have a superuser join."),
				 errhidestmt(true)));
	if (PQsetnonblocking(conn, 1) != 0)
		connect_failed(peer, "could not make the connection non-blocking");
}

/*
 * The peer answered with an error: raise it here, its SQLSTATE kept.
 * res is cleared first (libpq's memory: no ERROR while it is held).
 */
static void
remote_error(const char *peer, PGresult *res)
{
	const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	const char *f;
	int			sqlstate;
	char		primary[512];
	char		detail[512];
	char		hint[512];
	char		codebuf[8];

	/*
	 * The peer's SQLSTATE is its word: kept only for the classes a caller
	 * acts on here (privileges, authorization, a missing function);
	 * anything else, a cancel (57) or a serialization failure (40) that
	 * would make the caller retry or stop a PL/pgSQL handler included,
	 * becomes a connection exception, the peer's code in the detail.
	 */
	if (code != NULL && strlen(code) == 5 &&
		strspn(code, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") == 5 &&
		(strncmp(code, "42", 2) == 0 || strncmp(code, "28", 2) == 0))
		sqlstate = MAKE_SQLSTATE(code[0], code[1], code[2], code[3], code[4]);
	else
		sqlstate = ERRCODE_CONNECTION_EXCEPTION;
	sync_conn_one_line(codebuf, sizeof(codebuf), code ? code : "none");
	f = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	sync_conn_one_line(primary, sizeof(primary), f ? f : PQresultErrorMessage(res));
	f = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
	sync_conn_one_line(detail, sizeof(detail), f ? f : "");
	f = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
	sync_conn_one_line(hint, sizeof(hint), f ? f : "");
	PQclear(res);
	ereport(ERROR,
			(errcode(sqlstate),
			 errmsg("peer \"%s\" refused registry.table_definitions()", peer),
			 detail[0] ? errdetail_internal("%s (SQLSTATE %s): %s", primary,
											codebuf, detail) :
			 errdetail_internal("%s (SQLSTATE %s)", primary, codebuf),
			 hint[0] ? errhint("%s", hint) : 0,
			 errhidestmt(true)));
}

/*
 * Ask the peer for its table definitions: the answer's bytes, copied
 * (*len of them).  Within registry.query_timeout, interruptibly.
 */
static char *
join_ask(PGconn *conn, const char *peer, int *len)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   registry_query_timeout_ms);
	PGresult   *res = NULL;
	PGresult   *r;
	char	   *data;
	int			rc;

	if (!PQsendQueryParams(conn, "SELECT registry.table_definitions()", 0,
						   NULL, NULL, NULL, NULL, 1))
		connect_failed(peer, PQerrorMessage(conn));
	/* row by row: a second row ends it before libpq buffers a third */
	if (!PQsetSingleRowMode(conn))
		connect_failed(peer, "could not ask for the answer row by row");
	while ((rc = PQflush(conn)) != 0)
	{
		if (rc < 0)
			connect_failed(peer, PQerrorMessage(conn));
		if (!wait_socket(conn, WL_SOCKET_WRITEABLE, deadline))
			connect_failed(peer, "no answer within registry.query_timeout");
	}
	for (;;)
	{
		while (PQisBusy(conn))
		{
			if (!wait_socket(conn, WL_SOCKET_READABLE, deadline))
			{
				if (res)
					PQclear(res);
				ereport(ERROR,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("peer \"%s\" did not answer registry.table_definitions()", peer),
						 errdetail("No answer within registry.query_timeout (%d ms).",
								   registry_query_timeout_ms),
						 errhidestmt(true)));
			}
			if (!PQconsumeInput(conn))
			{
				if (res)
					PQclear(res);
				connect_failed(peer, PQerrorMessage(conn));
			}
		}
		r = PQgetResult(conn);
		if (r == NULL)
			break;
		switch (PQresultStatus(r))
		{
			case PGRES_SINGLE_TUPLE:
				if (res == NULL)
				{
					res = r;
					break;
				}
				/* a second row */
				PQclear(r);
				PQclear(res);
				ereport(ERROR,
						(errcode(ERRCODE_PROTOCOL_VIOLATION),
						 errmsg("malformed answer from peer \"%s\"", peer),
						 errdetail("Expected one bytea value; more rows came."),
						 errhidestmt(true)));
				break;
			case PGRES_TUPLES_OK:
				/* the end of the rows (none, or the one kept) */
				if (res == NULL)
					res = r;
				else
					PQclear(r);
				break;
			case PGRES_FATAL_ERROR:
				if (res != NULL)
					PQclear(res);
				remote_error(peer, r);
				break;
			default:
				{
					/*
					 * A COPY, say: libpq would return it again on every
					 * call, never the end.
					 */
					char		what[64];

					strlcpy(what, PQresStatus(PQresultStatus(r)), sizeof(what));
					PQclear(r);
					if (res != NULL)
						PQclear(res);
					ereport(ERROR,
							(errcode(ERRCODE_PROTOCOL_VIOLATION),
							 errmsg("malformed answer from peer \"%s\"", peer),
							 errdetail("The peer answered with %s.", what),
							 errhidestmt(true)));
				}
		}
		if (res == NULL)
			CHECK_FOR_INTERRUPTS();
	}
	if (res == NULL)
		connect_failed(peer, "the request ended without a result");
	if (PQresultStatus(res) == PGRES_FATAL_ERROR)
		remote_error(peer, res);
	if ((PQresultStatus(res) != PGRES_TUPLES_OK &&
		 PQresultStatus(res) != PGRES_SINGLE_TUPLE) || PQntuples(res) != 1 ||
		PQnfields(res) != 1 || PQgetisnull(res, 0, 0) || PQfformat(res, 0) != 1)
	{
		PQclear(res);
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("malformed answer from peer \"%s\"", peer),
				 errdetail("Expected one bytea value."),
				 errhidestmt(true)));
	}
	*len = PQgetlength(res, 0, 0);
	if (*len < 0 || *len > registry_max_message_size + MSG_HEADER_SIZE)
	{
		int			got = *len;

		PQclear(res);
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("answer of %d bytes from peer \"%s\" is larger than registry.max_message_size (%d bytes) allows",
						got, peer, registry_max_message_size),
				 errhidestmt(true)));
	}
	data = palloc_extended(*len + 1, MCXT_ALLOC_NO_OOM);
	if (data != NULL)
		memcpy(data, PQgetvalue(res, 0, 0), *len);
	PQclear(res);
	if (data == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory for the answer of peer \"%s\"", peer)));
	return data;
}

/* The peer's table definitions, read and checked (message.c). */
static void
fetch_definitions(const char *peer, const char *conninfo, bool password_required,
				  MsgDefinitions *defs)
{
	PGconn	   *volatile conn = NULL;
	char	   *volatile data = NULL;
	int			len = 0;

	PG_TRY();
	{
		join_connect(&conn, peer, conninfo, password_required);
		data = join_ask(conn, peer, &len);
	}
	PG_CATCH();
	{
		if (conn)
			PQfinish(conn);
		PG_RE_THROW();
	}
	PG_END_TRY();
	PQfinish(conn);
	msg_read_definitions(data, len, defs);
	if (strcmp(defs->node, registry_node_name) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("peer reports this node's own name \"%s\"", defs->node),
				 errhint("Give every node its own registry.node_name."),
				 errhidestmt(true)));
	if (strcmp(defs->node, peer) != 0)
		ereport(WARNING,
				(errmsg("registry: peer \"%s\" reports node name \"%s\"", peer, defs->node),
				 errhint("Name a peer after its registry.node_name.")));
}

/* ---- the peer's row in registry.peers ---- */

/* The conninfo of peer name, or NULL if it is not a peer. */
static char *
peer_conninfo(const char *name)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	RegistryOwnerSave owner;
	char	   *result = NULL;
	int			rc;

	args[0] = CStringGetTextDatum(name);
	registry_owner_begin(&owner);
	rc = SPI_execute_with_args("SELECT conninfo FROM registry.peers WHERE name = $1",
							   1, argtypes, args, NULL, true, 1);
	registry_owner_end(&owner);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "registry: could not read registry.peers");
	if (SPI_processed > 0)
		result = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	return result;
}

static void
spi_check(int rc, int want, const char *what)
{
	if (rc != want)
		elog(ERROR, "registry: %s failed: %s", what, SPI_result_code_string(rc));
}

/* ---- resolving the peer's types here ---- */

typedef struct TypeArg
{
	const char *name;
	Oid			typid;
	int32		typmod;
} TypeArg;

/*
 * Whether a type may be given to a new table on a peer's word: it and
 * everything it is made of (a domain's base type, an array's element, a
 * composite's columns, a range's subtype) are owned by superusers, and
 * none is a type of schema registry.  A domain's CHECK and DEFAULT, a
 * composite's column types, are code of their owner, which would run
 * whenever a row is written -- as a superuser, too.  *culprit: the first
 * type that is not.
 */
static bool
type_trusted(Oid typid, int depth, Oid *culprit)
{
	HeapTuple	tup;
	Form_pg_type t;
	Oid			regns = get_namespace_oid(REGISTRY_SCHEMA, true);
	bool		ok;
	char		typtype;
	Oid			base,
				elem,
				relid;

	if (depth > 16)
	{
		*culprit = typid;
		return false;
	}
	tup = SearchSysCache1(TYPEOID, ObjectIdGetDatum(typid));
	if (!HeapTupleIsValid(tup))
	{
		*culprit = InvalidOid;
		return false;
	}
	t = (Form_pg_type) GETSTRUCT(tup);
	ok = superuser_arg(t->typowner) && t->typnamespace != regns;
	typtype = t->typtype;
	base = t->typbasetype;
	elem = t->typelem;
	relid = t->typrelid;
	ReleaseSysCache(tup);
	if (!ok)
	{
		*culprit = typid;
		return false;
	}
	if (typtype == TYPTYPE_DOMAIN)
		return type_trusted(base, depth + 1, culprit);
	if (OidIsValid(elem) && !type_trusted(elem, depth + 1, culprit))
		return false;
	if (typtype == TYPTYPE_RANGE)
		return type_trusted(get_range_subtype(typid), depth + 1, culprit);
	if (typtype == TYPTYPE_MULTIRANGE)
		return type_trusted(get_multirange_range(typid), depth + 1, culprit);
	if (typtype == TYPTYPE_COMPOSITE && OidIsValid(relid))
	{
		TupleDesc	desc = lookup_rowtype_tupdesc(typid, -1);
		int			i;

		for (i = 0; i < desc->natts && ok; i++)
			if (!TupleDescAttr(desc, i)->attisdropped)
				ok = type_trusted(TupleDescAttr(desc, i)->atttypid, depth + 1,
								  culprit);
		ReleaseTupleDesc(desc);
		return ok;
	}
	return true;
}

static void
resolve_type(void *arg)
{
	TypeArg    *ta = arg;
	Oid			culprit = InvalidOid;

	parseTypeString(ta->name, &ta->typid, &ta->typmod, false);
	if (get_typtype(ta->typid) == TYPTYPE_PSEUDO)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("type %s is a pseudo-type", format_type_be(ta->typid))));
	if (!get_typisdefined(ta->typid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("type %s is only a shell", format_type_be(ta->typid))));
	if (!type_trusted(ta->typid, 0, &culprit))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("type %s is not taken on a peer's word", format_type_be(ta->typid)),
				 OidIsValid(culprit) ?
				 errdetail("Type %s is owned by a role that is not a superuser, or is the registry's own: its code (a domain's CHECK and DEFAULT, say) would run when rows are written.",
						   format_type_be(culprit)) : 0,
				 errhint("Create the table here by hand, then call registry.join() again.")));
}

static Oid
type_namespace(Oid typid)
{
	HeapTuple	tup = SearchSysCache1(TYPEOID, ObjectIdGetDatum(typid));
	Oid			nsp;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for type %u", typid);
	nsp = ((Form_pg_type) GETSTRUCT(tup))->typnamespace;
	ReleaseSysCache(tup);
	return nsp;
}

/* this node's own words for a type: built-in names, others qualified */
static char *
type_text(Oid typid, int32 typmod)
{
	return format_type_extended(typid, typmod,
								FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY);
}

/* a type for people: search_path is pg_catalog, others come qualified */
static char *
type_shown(Oid typid, int32 typmod)
{
	return format_type_extended(typid, typmod, FORMAT_TYPE_TYPEMOD_GIVEN);
}

/* ---- safe defaults ---- */

/*
 * The argument-less built-in functions a default may call: they read the
 * clock or make a random value, and nothing else.
 */
static const char *const safe_functions[] = {
	"now", "clock_timestamp", "statement_timestamp", "transaction_timestamp",
	"gen_random_uuid", NULL
};

/*
 * What a part of a default expression gives: an untyped string literal
 * (or NULL), whose type's input function makes the value; a value of a
 * built-in type; or a value cast to the column's own type.
 */
typedef enum SafeKind
{
	SAFE_LITERAL,
	SAFE_BUILTIN,
	SAFE_COLUMN
} SafeKind;

typedef struct SafeDefault
{
	const char *expr;			/* the peer's text */
	Oid			coltype;		/* resolved here */
	StringInfoData out;			/* the default rebuilt, when safe */
	const char *why;			/* why not, when not */
} SafeDefault;

/*
 * Rebuild node (of the peer's expression's raw parse tree) into sd->out
 * if it is safe: a constant, a cast of a safe expression, an allowed
 * function, a SQL value function.  A cast may run code only through
 * pg_cast or a type's input function, so: a cast of a string literal to
 * the column's type or a built-in type (their input functions are
 * this node's, written in C by a superuser); any other cast only to a
 * built-in type (between built-in types only a superuser can define a
 * cast).
 */
static bool
safe_node(Node *node, SafeDefault *sd, SafeKind *kind, int depth)
{
	StringInfo	out = &sd->out;

	check_stack_depth();
	if (depth > 8)
	{
		sd->why = "nested too deeply";
		return false;
	}
	switch (nodeTag(node))
	{
		case T_A_Const:
			{
				A_Const    *c = (A_Const *) node;

				*kind = SAFE_BUILTIN;
				if (c->isnull)
				{
					appendStringInfoString(out, "NULL");
					*kind = SAFE_LITERAL;
					return true;
				}
				switch (nodeTag(&c->val))
				{
					case T_Integer:
						appendStringInfo(out, "(%d)", intVal(&c->val));
						return true;
					case T_Float:
						{
							const char *f = castNode(Float, &c->val)->fval;

							/* the lexer's numeric literal; checked anyway */
							if (f[0] == '\0' || strspn(f, "0123456789.eE+-") != strlen(f))
								break;
							appendStringInfo(out, "(%s)", f);
							return true;
						}
					case T_Boolean:
						appendStringInfoString(out, boolVal(&c->val) ? "true" : "false");
						return true;
					case T_String:
						appendStringInfoString(out, quote_literal_cstr(strVal(&c->val)));
						*kind = SAFE_LITERAL;
						return true;
					default:
						break;
				}
				sd->why = "a kind of constant not copied";
				return false;
			}
		case T_TypeCast:
			{
				TypeCast   *tc = (TypeCast *) node;
				SafeKind	inner;
				Oid			typid;
				int32		typmod;
				bool		builtin;

				appendStringInfoChar(out, '(');
				if (!safe_node(tc->arg, sd, &inner, depth + 1))
					return false;
				typenameTypeIdAndMod(NULL, tc->typeName, &typid, &typmod);
				builtin = type_namespace(typid) == PG_CATALOG_NAMESPACE;
				if (!builtin &&
					!(typid == sd->coltype && (inner == SAFE_LITERAL ||
											   inner == SAFE_COLUMN)))
				{
					sd->why = "a cast to a type that is not built in";
					return false;
				}
				if (inner == SAFE_COLUMN && typid != sd->coltype)
				{
					sd->why = "a cast from a type that is not built in";
					return false;
				}
				appendStringInfo(out, ")::%s", type_text(typid, typmod));
				*kind = builtin ? SAFE_BUILTIN : SAFE_COLUMN;
				return true;
			}
		case T_FuncCall:
			{
				FuncCall   *fc = (FuncCall *) node;
				const char *name = NULL;
				int			i;

				if (fc->args != NIL || fc->agg_order != NIL || fc->agg_filter ||
					fc->over || fc->agg_within_group || fc->agg_star ||
					fc->agg_distinct || fc->func_variadic)
				{
					sd->why = "a function call with arguments";
					return false;
				}
				if (list_length(fc->funcname) == 1)
					name = strVal(linitial(fc->funcname));
				else if (list_length(fc->funcname) == 2 &&
						 strcmp(strVal(linitial(fc->funcname)), "pg_catalog") == 0)
					name = strVal(lsecond(fc->funcname));
				for (i = 0; name && safe_functions[i]; i++)
					if (strcmp(name, safe_functions[i]) == 0)
					{
						appendStringInfo(out, "pg_catalog.%s()", safe_functions[i]);
						*kind = SAFE_BUILTIN;
						return true;
					}
				sd->why = "a call of a function not on the list of safe ones";
				return false;
			}
		case T_SQLValueFunction:
			{
				SQLValueFunction *f = (SQLValueFunction *) node;
				const char *word = NULL;
				bool		precision = false;

				switch (f->op)
				{
					case SVFOP_CURRENT_DATE:
						word = "CURRENT_DATE";
						break;
					case SVFOP_CURRENT_TIME_N:
						precision = true;
						/* FALLTHROUGH */
					case SVFOP_CURRENT_TIME:
						word = "CURRENT_TIME";
						break;
					case SVFOP_CURRENT_TIMESTAMP_N:
						precision = true;
						/* FALLTHROUGH */
					case SVFOP_CURRENT_TIMESTAMP:
						word = "CURRENT_TIMESTAMP";
						break;
					case SVFOP_LOCALTIME_N:
						precision = true;
						/* FALLTHROUGH */
					case SVFOP_LOCALTIME:
						word = "LOCALTIME";
						break;
					case SVFOP_LOCALTIMESTAMP_N:
						precision = true;
						/* FALLTHROUGH */
					case SVFOP_LOCALTIMESTAMP:
						word = "LOCALTIMESTAMP";
						break;
					case SVFOP_CURRENT_ROLE:
						word = "CURRENT_ROLE";
						break;
					case SVFOP_CURRENT_USER:
						word = "CURRENT_USER";
						break;
					case SVFOP_USER:
						word = "USER";
						break;
					case SVFOP_SESSION_USER:
						word = "SESSION_USER";
						break;
					case SVFOP_CURRENT_CATALOG:
						word = "CURRENT_CATALOG";
						break;
					case SVFOP_CURRENT_SCHEMA:
						word = "CURRENT_SCHEMA";
						break;
				}
				if (word == NULL || (precision && (f->typmod < 0 || f->typmod > 6)))
				{
					sd->why = "an unknown SQL value function";
					return false;
				}
				appendStringInfoString(out, word);
				if (precision)
					appendStringInfo(out, "(%d)", f->typmod);
				*kind = SAFE_BUILTIN;
				return true;
			}
		default:
			break;
	}
	sd->why = "neither a constant, a cast of one, nor a call of now(), clock_timestamp(), statement_timestamp(), transaction_timestamp() or gen_random_uuid()";
	return false;
}

/*
 * Whether the peer's default expression is safe (see safe_node); parsed
 * here, never run.  Its parse errors are the subtransaction's to catch.
 */
static void
check_default(void *arg)
{
	SafeDefault *sd = arg;
	List	   *stmts;
	SelectStmt *sel;
	ResTarget  *rt;
	SafeKind	kind;

	sd->why = "not a single expression";
	stmts = raw_parser(psprintf("SELECT %s", sd->expr), RAW_PARSE_DEFAULT);
	if (list_length(stmts) != 1 ||
		!IsA(linitial_node(RawStmt, stmts)->stmt, SelectStmt))
		return;
	sel = (SelectStmt *) linitial_node(RawStmt, stmts)->stmt;
	if (sel->op != SETOP_NONE || sel->distinctClause || sel->intoClause ||
		sel->fromClause || sel->whereClause || sel->groupClause ||
		sel->havingClause || sel->windowClause || sel->valuesLists ||
		sel->sortClause || sel->limitOffset || sel->limitCount ||
		sel->lockingClause || sel->withClause ||
		list_length(sel->targetList) != 1)
		return;
	rt = linitial_node(ResTarget, sel->targetList);
	if (rt->name != NULL || rt->indirection != NIL)
		return;
	sd->why = NULL;
	if (!safe_node(rt->val, sd, &kind, 0))
		return;

	/*
	 * A built-in value still becomes the column's type: by a cast this
	 * node's users may define, unless that type is built in (or a domain
	 * over one, whose casts are its base type's).
	 */
	if (kind == SAFE_BUILTIN &&
		type_namespace(getBaseType(sd->coltype)) != PG_CATALOG_NAMESPACE)
		sd->why = "a value to be cast to a type that is not built in";
}

/* ---- one table ---- */

/* What join() knows of one peer table while it works on it. */
typedef struct JoinTable
{
	MsgDefTable *d;
	char	   *qualname;		/* quoted schema.name, as the wire names it */
	Oid			nsp;
	Oid		   *typids;			/* each column's type here */
	int32	   *typmods;
	char	   *sql;			/* CREATE TABLE */
	Oid			relid;
} JoinTable;

static const char *
key_list(MsgDefTable *d)
{
	StringInfoData b;
	int			i;

	initStringInfo(&b);
	for (i = 0; i < d->npk; i++)
		appendStringInfo(&b, "%s%s", i > 0 ? ", " : "",
						 quote_identifier(d->cols[d->pk[i]].name));
	return b.data;
}

/* registry.replicate() the table, and set_lease() with the peer's TTL */
static void
register_table(JoinTable *jt)
{
	Oid			argtypes[2] = {REGCLASSOID, INT8OID};
	Datum		args[2];

	args[0] = ObjectIdGetDatum(jt->relid);
	spi_check(SPI_execute_with_args("SELECT registry.replicate($1)",
									1, argtypes, args, NULL, false, 0),
			  SPI_OK_SELECT, "registry.replicate()");
	if (jt->d->lease_ttl_ms > 0)
	{
		args[1] = Int64GetDatum(jt->d->lease_ttl_ms);
		spi_check(SPI_execute_with_args("SELECT registry.set_lease($1, $2 * interval '1 millisecond')",
										2, argtypes, args, NULL, false, 0),
				  SPI_OK_SELECT, "registry.set_lease()");
	}
}

static void
register_try(void *arg)
{
	register_table(arg);
}

static void
create_try(void *arg)
{
	JoinTable  *jt = arg;

	spi_check(SPI_execute(jt->sql, false, 0), SPI_OK_UTILITY, "CREATE TABLE");
	CommandCounterIncrement();
	jt->relid = get_relname_relid(jt->d->name, jt->nsp);
	if (!OidIsValid(jt->relid))
		elog(ERROR, "registry: table %s was not created", jt->qualname);
	register_table(jt);
}

static char *
lease_text(int64 ms)
{
	return ms > 0 ? psprintf(INT64_FORMAT " ms", ms) : pstrdup("none");
}

/*
 * How an existing table differs from the peer's (NULL: it does not):
 * its columns (names and types, in order; the registry's own left out)
 * and its primary key.
 */
static char *
table_differences(Relation rel, JoinTable *jt)
{
	TupleDesc	desc = RelationGetDescr(rel);
	MsgDefTable *d = jt->d;
	int			n = 0;
	int			i;
	Oid			pkoid;
	StringInfoData here;

	if (rel->rd_rel->relkind != RELKIND_RELATION)
		return pstrdup("it is not an ordinary table here");
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		const char *name = NameStr(att->attname);

		if (att->attisdropped || strcmp(name, REGISTRY_VERSION_COLUMN) == 0 ||
			strcmp(name, REGISTRY_ORIGIN_COLUMN) == 0)
			continue;
		if (n >= d->ncols)
			return psprintf("column \"%s\" %s is here, not on the peer", name,
							type_shown(att->atttypid, att->atttypmod));
		if (strcmp(name, d->cols[n].name) != 0 || att->atttypid != jt->typids[n] ||
			att->atttypmod != jt->typmods[n])
			return psprintf("column %d is \"%s\" %s here, \"%s\" %s on the peer",
							n + 1, name, type_shown(att->atttypid, att->atttypmod),
							d->cols[n].name, type_shown(jt->typids[n], jt->typmods[n]));
		if ((att->attgenerated != '\0') != ((d->cols[n].flags & MSG_COL_GENERATED) != 0))
			return psprintf("column \"%s\" is %sgenerated here", name,
							att->attgenerated != '\0' ? "" : "not ");
		n++;
	}
	if (n < d->ncols)
		return psprintf("column \"%s\" %s is on the peer, not here", d->cols[n].name,
						type_shown(jt->typids[n], jt->typmods[n]));

	initStringInfo(&here);
	pkoid = RelationGetPrimaryKeyIndex(rel);
	if (OidIsValid(pkoid))
	{
		Relation	idx = index_open(pkoid, AccessShareLock);

		for (i = 0; i < idx->rd_index->indnkeyatts; i++)
		{
			AttrNumber	a = idx->rd_index->indkey.values[i];

			appendStringInfo(&here, "%s%s", i > 0 ? ", " : "",
							 a > 0 ? quote_identifier(NameStr(TupleDescAttr(desc, a - 1)->attname)) : "?");
		}
		index_close(idx, AccessShareLock);
	}
	if (strcmp(here.data, key_list(d)) != 0)
		return psprintf("the primary key is (%s) here, (%s) on the peer",
						here.data, key_list(d));
	return NULL;
}

/* A table of that name exists here: leave it, or register it. */
static void
join_existing(ReturnSetInfo *rsinfo, JoinTable *jt)
{
	Relation	rel = relation_open(jt->relid, AccessShareLock);
	char	   *diff = table_differences(rel, jt);
	RegTable   *t;
	char	   *error;

	relation_close(rel, AccessShareLock);
	if (diff)
	{
		put_row(rsinfo, jt->qualname, JOIN_DIFFERS, diff);
		return;
	}
	t = regtable_by_relid(jt->relid, true);
	if (t != NULL)
	{
		put_row(rsinfo, jt->qualname, JOIN_EXISTS,
				Max(t->lease_ttl_ms, 0) != jt->d->lease_ttl_ms ?
				psprintf("lease ttl %s here, %s on the peer: left as it is",
						 lease_text(t->lease_ttl_ms), lease_text(jt->d->lease_ttl_ms)) :
				NULL);
		return;
	}
	if (!try_in_subxact(register_try, jt, &error))
	{
		put_row(rsinfo, jt->qualname, JOIN_NOT_REGISTERED, error);
		return;
	}
	put_row(rsinfo, jt->qualname, JOIN_REGISTERED,
			jt->d->lease_ttl_ms > 0 ?
			psprintf("lease ttl %s", lease_text(jt->d->lease_ttl_ms)) : NULL);
}

static bool
system_schema(Oid nsp)
{
	return IsCatalogNamespace(nsp) || IsToastNamespace(nsp) ||
		isAnyTempNamespace(nsp) ||
		nsp == get_namespace_oid(REGISTRY_SCHEMA, true) ||
		nsp == get_namespace_oid("information_schema", true);
}

static void
join_table(ReturnSetInfo *rsinfo, MsgDefTable *d)
{
	JoinTable	jt;
	StringInfoData sql;
	List	   *dropped = NIL;
	ListCell   *lc;
	char	   *error;
	int			i;

	memset(&jt, 0, sizeof(jt));
	jt.d = d;
	jt.qualname = quote_qualified_identifier(d->schema, d->name);
	jt.nsp = get_namespace_oid(d->schema, true);
	if (!OidIsValid(jt.nsp))
	{
		put_row(rsinfo, jt.qualname, JOIN_NOT_CREATED,
				psprintf("schema \"%s\" does not exist here", d->schema));
		return;
	}
	if (system_schema(jt.nsp))
	{
		put_row(rsinfo, jt.qualname, JOIN_NOT_CREATED,
				psprintf("schema \"%s\" is not for registry tables", d->schema));
		return;
	}
	jt.typids = palloc(sizeof(Oid) * d->ncols);
	jt.typmods = palloc(sizeof(int32) * d->ncols);
	for (i = 0; i < d->ncols; i++)
	{
		MsgDefColumn *c = &d->cols[i];
		TypeArg		ta = {.name = c->type};

		if (strcmp(c->name, REGISTRY_VERSION_COLUMN) == 0 ||
			strcmp(c->name, REGISTRY_ORIGIN_COLUMN) == 0)
		{
			put_row(rsinfo, jt.qualname, JOIN_NOT_CREATED,
					psprintf("column \"%s\" is the registry's own", c->name));
			return;
		}
		if (!try_in_subxact(resolve_type, &ta, &error))
		{
			put_row(rsinfo, jt.qualname, JOIN_NOT_CREATED,
					psprintf("column \"%s\": %s", c->name, error));
			return;
		}
		jt.typids[i] = ta.typid;
		jt.typmods[i] = ta.typmod;
	}

	jt.relid = get_relname_relid(d->name, jt.nsp);
	if (OidIsValid(jt.relid))
	{
		join_existing(rsinfo, &jt);
		return;
	}

	for (i = 0; i < d->ncols; i++)
		if (d->cols[i].flags & MSG_COL_GENERATED)
		{
			put_row(rsinfo, jt.qualname, JOIN_NOT_CREATED,
					psprintf("column \"%s\" is generated: generated columns are not copied, create the table by hand",
							 d->cols[i].name));
			return;
		}

	/* created as the caller, who must be allowed to */
	if (pg_namespace_aclcheck(jt.nsp, GetUserId(), ACL_CREATE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for schema %s", quote_identifier(d->schema)),
				 errdetail("registry.join() creates the peer's table %s as the calling role.",
						   jt.qualname),
				 errhint("GRANT CREATE ON SCHEMA %s TO %s; or join as a role that may create tables there.",
						 quote_identifier(d->schema),
						 quote_identifier(GetUserNameFromId(GetUserId(), false))),
				 errhidestmt(true)));

	initStringInfo(&sql);
	appendStringInfo(&sql, "CREATE TABLE %s (", jt.qualname);
	for (i = 0; i < d->ncols; i++)
	{
		MsgDefColumn *c = &d->cols[i];

		appendStringInfo(&sql, "%s %s", quote_identifier(c->name),
						 type_text(jt.typids[i], jt.typmods[i]));
		if (c->flags & MSG_COL_NOT_NULL)
			appendStringInfoString(&sql, " NOT NULL");
		if (c->default_expr)
		{
			SafeDefault sd = {.expr = c->default_expr, .coltype = jt.typids[i]};

			initStringInfo(&sd.out);
			if (!try_in_subxact(check_default, &sd, &error))
				sd.why = psprintf("not an expression here: %s", error);
			if (sd.why == NULL)
				appendStringInfo(&sql, " DEFAULT %s", sd.out.data);
			else
			{
				char		shown[256];

				sync_conn_one_line(shown, sizeof(shown), c->default_expr);
				dropped = lappend(dropped,
								  psprintf("column \"%s\": %s is %s", c->name,
										   shown, sd.why));
			}
		}
		appendStringInfoString(&sql, ", ");
	}
	appendStringInfo(&sql, "PRIMARY KEY (%s))", key_list(d));
	jt.sql = sql.data;

	if (!try_in_subxact(create_try, &jt, &error))
	{
		put_row(rsinfo, jt.qualname, JOIN_NOT_CREATED, error);
		return;
	}
	put_row(rsinfo, jt.qualname, JOIN_CREATED,
			psprintf("%d columns, primary key (%s)%s%s", d->ncols, key_list(d),
					 d->lease_ttl_ms > 0 ? ", lease ttl " : "",
					 d->lease_ttl_ms > 0 ? lease_text(d->lease_ttl_ms) : ""));
	foreach(lc, dropped)
		put_row(rsinfo, jt.qualname, JOIN_DEFAULT_NOT_COPIED, lfirst(lc));
}

/* ---- registry.join() ---- */

/* As add_peer() asks of a non-superuser: a password in the string. */
static bool
conninfo_has_password(const char *conninfo)
{
	PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
	PQconninfoOption *opt;
	bool		has = false;

	if (opts == NULL)
		return false;
	for (opt = opts; opt->keyword; opt++)
		if (strcmp(opt->keyword, "password") == 0 && opt->val && opt->val[0])
			has = true;
	PQconninfoFree(opts);
	return has;
}

static void
join_run(ReturnSetInfo *rsinfo, const char *peer, const char *conninfo)
{
	char	   *known;
	MsgDefinitions defs;
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		args[2];
	int			i;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "registry: SPI_connect failed");

	/*
	 * The peer first: an existing one must have this conninfo; a new one
	 * is added by add_peer(), whose checks of the name and the conninfo
	 * (and of a password, for a non-superuser) then come before any
	 * connection.  Its sync worker hears of it at commit.
	 */
	known = peer_conninfo(peer);
	if (known && !superuser() && !conninfo_has_password(conninfo))
		ereport(ERROR,
				(errcode(ERRCODE_S_R_E_PROHIBITED_SQL_STATEMENT_ATTEMPTED),
				 errmsg("password is required"),
				 errdetail("Non-superusers must give a password in a peer's connection string."),
				 errhint("Add password=... to the connection string, or have a superuser join."),
				 errhidestmt(true)));
	if (known && strcmp(known, conninfo) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("peer \"%s\" exists with another connection string", peer),
				 errhint("Call registry.join() with the connection string registry.peers has for it, or change that with registry.add_peer() first."),
				 errhidestmt(true)));
	if (known == NULL)
	{
		args[0] = CStringGetTextDatum(peer);
		args[1] = CStringGetTextDatum(conninfo);
		spi_check(SPI_execute_with_args("SELECT registry.add_peer($1, $2)",
										2, argtypes, args, NULL, false, 0),
				  SPI_OK_SELECT, "registry.add_peer()");
	}

	fetch_definitions(peer, conninfo, !superuser(), &defs);

	/*
	 * More tables than can be registered here would each be created and
	 * rolled back, every one a transaction id and locks held to the end.
	 */
	if (defs.n > registry_max_tables)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("peer \"%s\" has %d registry tables, more than registry.max_tables (%d) allows here",
						peer, defs.n, registry_max_tables),
				 errhint("Raise registry.max_tables (a restart), then join again."),
				 errhidestmt(true)));
	for (i = 0; i < defs.n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		join_table(rsinfo, &defs.tables[i]);
	}
	put_row(rsinfo, NULL, known ? JOIN_EXISTS : JOIN_ADDED,
			psprintf("peer %s", peer));
	SPI_finish();
}

/*
 * registry.join(peer text, conninfo text) RETURNS TABLE(table_name text,
 * action text, detail text)
 */
Datum
registry_join(PG_FUNCTION_ARGS)
{
	char	   *peer = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *conninfo = text_to_cstring(PG_GETARG_TEXT_PP(1));
	ReturnSetInfo *rsinfo;
	MemoryContext cxt = CurrentMemoryContext;

	registry_check_preloaded();
	registry_check_admin();
	InitMaterializedSRF(fcinfo, 0);
	rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	/*
	 * The statement holds the conninfo, which may hold a password: no
	 * error of join() writes it to the server log.
	 */
	PG_TRY();
	{
		join_run(rsinfo, peer, conninfo);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		edata->hide_stmt = true;
		ReThrowError(edata);
	}
	PG_END_TRY();
	return (Datum) 0;
}
