/*-------------------------------------------------------------------------
 *
 * message.c
 *	  Encoding and decoding of the messages exchanged with peers (layout in
 *	  message.h and docs/protocol.md), their zlib compression, and
 *	  registry.decode_message() which shows any message as JSON.
 *
 * A message comes from another server, so reading one trusts nothing:
 * every length is checked against what is left, and any inconsistency is
 * an ERROR (protocol violation) rather than a crash or a partial result.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <zlib.h>

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "message.h"
#include "registry.h"

PG_FUNCTION_INFO_V1(registry_decode_message);

#define MSG_MAGIC		'R'
#define MSG_FORMAT		1
#define MSG_FLAG_ZLIB	1
#define MSG_HEADER		8

/* ---- writing ---- */

void
msg_begin(StringInfo buf, char kind)
{
	initStringInfo(buf);
	msg_begin_reuse(buf, kind);
}

/* Start a message in an empty buffer that already has its memory. */
void
msg_begin_reuse(StringInfo buf, char kind)
{
	Assert(buf->len == 0);
	appendStringInfoSpaces(buf, MSG_HEADER);
	buf->data[0] = MSG_MAGIC;
	buf->data[1] = MSG_FORMAT;
	buf->data[2] = kind;
	buf->data[3] = 0;
}

static void
put_be32(char *p, uint32 v)
{
	p[0] = (char) (v >> 24);
	p[1] = (char) (v >> 16);
	p[2] = (char) (v >> 8);
	p[3] = (char) v;
}

/*
 * Compress a payload into dst (room for dstlen bytes); returns the
 * compressed length, or 0 if it did not fit or zlib failed.
 *
 * zlib's fastest level looks for repeated strings, which is what makes
 * registry rows (JSON, host names, repeated metadata) shrink to a fifth.
 * High-entropy values (tokens, hashes, random identifiers) have no
 * repeats to find: there, searching costs most of the time and even
 * loses to plain Huffman coding of the bytes (random hex: 0.59 of the
 * size at level 1, 0.51 Huffman-only, at nearly twice the speed).  So
 * the first SAMPLE_BYTES are compressed at level 1 and, if they did not
 * shrink below half, the rest is Huffman-coded only.  Either way the
 * result is an ordinary zlib stream.
 */
#define SAMPLE_BYTES	65536

static uLong
deflate_adaptive(Bytef *dst, uLong dstlen, const Bytef *src, uLong srclen)
{
	z_stream	zs;
	uLong		first = Min(srclen, SAMPLE_BYTES);
	uLong		result = 0;
	int			rc;

	memset(&zs, 0, sizeof(zs));
	if (deflateInit(&zs, Z_BEST_SPEED) != Z_OK)
		return 0;
	zs.next_in = (Bytef *) src;
	zs.avail_in = first;
	zs.next_out = dst;
	zs.avail_out = dstlen;
	rc = deflate(&zs, first == srclen ? Z_FINISH : Z_BLOCK);
	if (rc == Z_OK && zs.avail_in == 0 && first < srclen)
	{
		if (zs.total_out * 2 > first &&
			deflateParams(&zs, Z_BEST_SPEED, Z_HUFFMAN_ONLY) != Z_OK)
			rc = Z_STREAM_ERROR;
		else
		{
			zs.next_in = (Bytef *) src + first;
			zs.avail_in = srclen - first;
			rc = deflate(&zs, Z_FINISH);
		}
	}
	if (rc == Z_STREAM_END)
		result = zs.total_out;
	deflateEnd(&zs);
	return result;
}

/* Close the message, compressing the payload if it is large. */
bytea *
msg_finish(StringInfo buf)
{
	bytea	   *out = msg_finish_copy(buf);

	pfree(buf->data);
	return out;
}

/* msg_finish(), leaving buf as it was, to be reused for the next message */
bytea *
msg_finish_copy(StringInfo buf)
{
	uint32		rawlen = buf->len - MSG_HEADER;
	bytea	   *out;

	put_be32(buf->data + 4, rawlen);
	if (registry_compress_threshold >= 0 &&
		rawlen > (uint32) registry_compress_threshold)
	{
		/* a stream that does not fit in less than the raw size is not kept */
		uLong		destlen;

		out = palloc(VARHDRSZ + MSG_HEADER + rawlen);
		destlen = deflate_adaptive((Bytef *) VARDATA(out) + MSG_HEADER, rawlen - 1,
								   (const Bytef *) buf->data + MSG_HEADER, rawlen);
		if (destlen > 0)
		{
			memcpy(VARDATA(out), buf->data, MSG_HEADER);
			VARDATA(out)[3] = MSG_FLAG_ZLIB;
			SET_VARSIZE(out, VARHDRSZ + MSG_HEADER + destlen);
			return out;
		}
		pfree(out);
	}
	out = palloc(VARHDRSZ + buf->len);
	memcpy(VARDATA(out), buf->data, buf->len);
	SET_VARSIZE(out, VARHDRSZ + buf->len);
	return out;
}

void
msg_put_byte(StringInfo buf, int v)
{
	appendStringInfoCharMacro(buf, (char) v);
}

void
msg_put_int32(StringInfo buf, int32 v)
{
	char		b[4];

	put_be32(b, (uint32) v);
	appendBinaryStringInfo(buf, b, 4);
}

/* Overwrite an int32 written earlier at offset at (a count not known then). */
void
msg_set_int32(StringInfo buf, int at, int32 v)
{
	Assert(at >= MSG_HEADER && at + 4 <= buf->len);
	put_be32(buf->data + at, (uint32) v);
}

void
msg_put_int64(StringInfo buf, int64 v)
{
	msg_put_int32(buf, (int32) ((uint64) v >> 32));
	msg_put_int32(buf, (int32) (uint64) v);
}

void
msg_put_string(StringInfo buf, const char *s)
{
	if (s == NULL)
	{
		msg_put_int32(buf, -1);
		return;
	}
	msg_put_int32(buf, (int32) strlen(s));
	appendBinaryStringInfo(buf, s, strlen(s));
}

void
msg_put_table(StringInfo buf, RegTable *t, bool with_cols)
{
	int			i;

	msg_put_string(buf, t ? t->qualname : NULL);
	if (!with_cols || t == NULL)
	{
		msg_put_int32(buf, 0);
		return;
	}
	msg_put_int32(buf, t->ncols);
	for (i = 0; i < t->ncols; i++)
	{
		msg_put_string(buf, t->cols[i].name);
		msg_put_string(buf, t->cols[i].typname);
	}
}

void
msg_put_row(StringInfo buf, const char *key, int state, RegVersion version,
			const char *origin, char **values, int ncols)
{
	int			i;

	msg_put_string(buf, key);
	msg_put_byte(buf, state);
	if (state == ROW_LIVE || state == ROW_TOMBSTONE)
	{
		msg_put_int64(buf, (int64) version);
		msg_put_string(buf, origin);
	}
	if (state == ROW_LIVE)
	{
		msg_put_int32(buf, values ? ncols : -1);
		for (i = 0; values && i < ncols; i++)
			msg_put_string(buf, values[i]);
	}
}

/* ---- reading ---- */

typedef struct Reader
{
	const char *p;
	int			len;
	int			pos;
} Reader;

static void
malformed(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_PROTOCOL_VIOLATION),
			 errmsg("malformed registry message"),
			 errdetail("%s", what)));
}

char
msg_kind(const char *data, int len)
{
	if (len < MSG_HEADER || data[0] != MSG_MAGIC)
		malformed("The message does not start with a registry header.");
	if (data[1] != MSG_FORMAT)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("registry message format %d is not supported", (int) data[1]),
				 errhint("Run the same registry version on every node.")));
	return data[2];
}

static void
reader_open(Reader *r, const char *data, int len, char kind)
{
	uint32		rawlen;
	const unsigned char *u = (const unsigned char *) data;

	if (msg_kind(data, len) != kind)
		malformed("The message is of an unexpected kind.");
	rawlen = ((uint32) u[4] << 24) | ((uint32) u[5] << 16) |
		((uint32) u[6] << 8) | (uint32) u[7];
	if (rawlen > MaxAllocSize - 1)
		malformed("The message is too large.");
	if (data[3] & MSG_FLAG_ZLIB)
	{
		char	   *raw = palloc(Max(rawlen, 1));
		uLongf		destlen = rawlen;

		if (uncompress((Bytef *) raw, &destlen,
					   (const Bytef *) data + MSG_HEADER, len - MSG_HEADER) != Z_OK ||
			destlen != rawlen)
			malformed("The compressed payload does not decompress.");
		r->p = raw;
	}
	else
	{
		if ((uint32) (len - MSG_HEADER) != rawlen)
			malformed("The payload length does not match the header.");
		r->p = data + MSG_HEADER;
	}
	r->len = rawlen;
	r->pos = 0;
}

static void
need(Reader *r, int n)
{
	if (n < 0 || r->len - r->pos < n)
		malformed("The message ends too early.");
}

static int
get_byte(Reader *r)
{
	need(r, 1);
	return (unsigned char) r->p[r->pos++];
}

static int32
get_int32(Reader *r)
{
	const unsigned char *u;
	uint32		v;

	need(r, 4);
	u = (const unsigned char *) r->p + r->pos;
	v = ((uint32) u[0] << 24) | ((uint32) u[1] << 16) | ((uint32) u[2] << 8) | u[3];
	r->pos += 4;
	return (int32) v;
}

static int64
get_int64(Reader *r)
{
	uint64		hi = (uint32) get_int32(r);
	uint64		lo = (uint32) get_int32(r);

	return (int64) ((hi << 32) | lo);
}

static char *
get_string(Reader *r)
{
	int32		n = get_int32(r);
	char	   *s;

	if (n == -1)
		return NULL;
	need(r, n);
	if (memchr(r->p + r->pos, '\0', n) != NULL)
		malformed("A string contains a zero byte.");
	s = palloc(n + 1);
	memcpy(s, r->p + r->pos, n);
	s[n] = '\0';
	r->pos += n;
	return s;
}

static char *
get_nonnull_string(Reader *r)
{
	char	   *s = get_string(r);

	if (s == NULL)
		malformed("A required string is missing.");
	return s;
}

/* a count of items each at least min_size bytes long */
static int
get_count(Reader *r, int min_size)
{
	int32		n = get_int32(r);

	if (n < 0 || (int64) n * min_size > r->len - r->pos)
		malformed("A count exceeds the message.");
	return n;
}

static void
get_table(Reader *r, MsgTable *t)
{
	int			i;

	t->name = get_string(r);
	t->ncols = get_count(r, 8);
	t->colnames = palloc0(sizeof(char *) * Max(t->ncols, 1));
	t->coltypes = palloc0(sizeof(char *) * Max(t->ncols, 1));
	for (i = 0; i < t->ncols; i++)
	{
		t->colnames[i] = get_nonnull_string(r);
		t->coltypes[i] = get_nonnull_string(r);
	}
}

static void
get_row(Reader *r, MsgRow *row, int ncols)
{
	row->key = get_nonnull_string(r);
	row->state = get_byte(r);
	row->version = 0;
	row->origin = NULL;
	row->values = NULL;
	if (row->state < ROW_LIVE || row->state > ROW_UNKNOWN)
		malformed("A row has an unknown state.");
	if (row->state == ROW_LIVE || row->state == ROW_TOMBSTONE)
	{
		row->version = (RegVersion) get_int64(r);
		row->origin = get_nonnull_string(r);
		if (row->version == 0 || strlen(row->origin) >= REGISTRY_NAME_LEN)
			malformed("A row has an invalid version or origin.");
	}
	if (row->state == ROW_LIVE)
	{
		int32		n = get_int32(r);
		int			i;

		if (n == -1)
			return;				/* values not requested */
		if (n != ncols)
			malformed("A row has a different number of values than its table has columns.");
		row->values = palloc(sizeof(char *) * Max(n, 1));
		for (i = 0; i < n; i++)
			row->values[i] = get_string(r);
	}
}

static void
reader_close(Reader *r)
{
	if (r->pos != r->len)
		malformed("The message has trailing data.");
}

void
msg_read_changes(const char *data, int len, MsgChanges *m)
{
	Reader		r;
	int			i;

	reader_open(&r, data, len, 'C');
	m->node = get_nonnull_string(&r);
	m->epoch = (uint64) get_int64(&r);
	m->first_seq = (uint64) get_int64(&r);
	m->last_seq = (uint64) get_int64(&r);
	m->upto_seq = (uint64) get_int64(&r);
	m->status = get_byte(&r);
	m->with_rows = get_byte(&r) != 0;
	m->ntables = get_count(&r, 8);
	m->tables = palloc0(sizeof(MsgTable) * Max(m->ntables, 1));
	for (i = 0; i < m->ntables; i++)
		get_table(&r, &m->tables[i]);
	m->n = get_count(&r, 30);
	m->changes = palloc0(sizeof(MsgChange) * Max(m->n, 1));
	for (i = 0; i < m->n; i++)
	{
		MsgChange  *c = &m->changes[i];

		c->seq = (uint64) get_int64(&r);
		c->table = get_int32(&r);
		if (c->table < 0 || c->table >= m->ntables)
			malformed("A change refers to an unknown table.");
		c->key = get_nonnull_string(&r);
		c->version = (RegVersion) get_int64(&r);
		c->origin = get_nonnull_string(&r);
		c->op = (char) get_byte(&r);
		if (m->with_rows)
			get_row(&r, &c->row, m->tables[c->table].ncols);
	}
	reader_close(&r);
}

void
msg_read_digest(const char *data, int len, MsgDigest *m)
{
	Reader		r;
	int			i;

	reader_open(&r, data, len, 'D');
	m->node = get_nonnull_string(&r);
	m->table = get_nonnull_string(&r);
	m->nbuckets = get_int32(&r);
	if (m->nbuckets <= 0 || (m->nbuckets & (m->nbuckets - 1)) != 0)
		malformed("The bucket count is not a power of two.");
	m->root = (uint64) get_int64(&r);
	m->live = get_int64(&r);
	m->tombstones = get_int64(&r);
	m->lo = get_int32(&r);
	m->width = get_int32(&r);
	m->n = get_count(&r, 8);
	if (m->lo < 0 || m->width < 0 ||
		(m->n > 0 && (m->width == 0 ||
					  (int64) m->lo + (int64) m->n * m->width > m->nbuckets)))
		malformed("The digest ranges do not fit the bucket count.");
	m->digests = palloc(sizeof(uint64) * Max(m->n, 1));
	for (i = 0; i < m->n; i++)
		m->digests[i] = (uint64) get_int64(&r);
	reader_close(&r);
}

void
msg_read_entries(const char *data, int len, MsgEntries *m)
{
	Reader		r;
	int			i;

	reader_open(&r, data, len, 'E');
	get_table(&r, &m->table);
	m->nbuckets = get_int32(&r);
	if (m->nbuckets <= 0 || (m->nbuckets & (m->nbuckets - 1)) != 0)
		malformed("The bucket count is not a power of two.");
	m->with_rows = get_byte(&r) != 0;
	m->n = get_count(&r, 5);
	m->rows = palloc0(sizeof(MsgRow) * Max(m->n, 1));
	for (i = 0; i < m->n; i++)
	{
		get_row(&r, &m->rows[i], m->table.ncols);
		if (m->rows[i].state != ROW_LIVE && m->rows[i].state != ROW_TOMBSTONE)
			malformed("A bucket entry is neither live nor a tombstone.");
	}
	m->more = get_byte(&r) != 0;
	m->next_khash = 0;
	if (m->more)
		m->next_khash = int4_to_khash(get_int32(&r));
	reader_close(&r);
}

void
msg_read_rows(const char *data, int len, MsgRows *m)
{
	Reader		r;
	int			i;

	reader_open(&r, data, len, 'R');
	get_table(&r, &m->table);
	m->n = get_count(&r, 5);
	m->rows = palloc0(sizeof(MsgRow) * Max(m->n, 1));
	for (i = 0; i < m->n; i++)
		get_row(&r, &m->rows[i], m->table.ncols);
	reader_close(&r);
}

/* ---- registry.decode_message(bytea) returns jsonb ---- */

static void
json_str(StringInfo b, const char *s)
{
	if (s == NULL)
		appendStringInfoString(b, "null");
	else
		escape_json(b, s);
}

static void
json_table(StringInfo b, MsgTable *t)
{
	int			i;

	appendStringInfoString(b, "{\"name\": ");
	json_str(b, t->name);
	if (t->ncols > 0)
	{
		appendStringInfoString(b, ", \"columns\": [");
		for (i = 0; i < t->ncols; i++)
		{
			if (i > 0)
				appendStringInfoString(b, ", ");
			appendStringInfoString(b, "{\"name\": ");
			json_str(b, t->colnames[i]);
			appendStringInfoString(b, ", \"type\": ");
			json_str(b, t->coltypes[i]);
			appendStringInfoChar(b, '}');
		}
		appendStringInfoChar(b, ']');
	}
	appendStringInfoChar(b, '}');
}

static const char *
state_name(int state)
{
	switch (state)
	{
		case ROW_LIVE:
			return "live";
		case ROW_TOMBSTONE:
			return "tombstone";
		case ROW_ABSENT:
			return "absent";
		default:
			return "unknown";
	}
}

static void
json_row(StringInfo b, MsgRow *row, int ncols)
{
	int			i;

	appendStringInfoString(b, "{\"key\": ");
	json_str(b, row->key);
	appendStringInfo(b, ", \"state\": \"%s\"", state_name(row->state));
	if (row->state == ROW_LIVE || row->state == ROW_TOMBSTONE)
	{
		appendStringInfo(b, ", \"version\": " UINT64_FORMAT ", \"origin\": ",
						 row->version);
		json_str(b, row->origin);
	}
	if (row->values)
	{
		appendStringInfoString(b, ", \"values\": [");
		for (i = 0; i < ncols; i++)
		{
			if (i > 0)
				appendStringInfoString(b, ", ");
			json_str(b, row->values[i]);
		}
		appendStringInfoChar(b, ']');
	}
	appendStringInfoChar(b, '}');
}

Datum
registry_decode_message(PG_FUNCTION_ARGS)
{
	bytea	   *msg = PG_GETARG_BYTEA_PP(0);
	const char *data = VARDATA_ANY(msg);
	int			len = VARSIZE_ANY_EXHDR(msg);
	StringInfoData b;
	int			i;

	initStringInfo(&b);
	switch (msg_kind(data, len))
	{
		case 'C':
			{
				MsgChanges m;
				static const char *const status[] = {"ok", "gap", "epoch changed"};

				msg_read_changes(data, len, &m);
				appendStringInfoString(&b, "{\"kind\": \"changes\", \"node\": ");
				json_str(&b, m.node);
				appendStringInfo(&b, ", \"epoch\": " UINT64_FORMAT ", \"first_seq\": " UINT64_FORMAT
								 ", \"last_seq\": " UINT64_FORMAT ", \"upto_seq\": " UINT64_FORMAT
								 ", \"status\": \"%s\", \"changes\": [",
								 m.epoch, m.first_seq, m.last_seq, m.upto_seq,
								 m.status <= 2 ? status[m.status] : "?");
				for (i = 0; i < m.n; i++)
				{
					MsgChange  *c = &m.changes[i];

					if (i > 0)
						appendStringInfoString(&b, ", ");
					appendStringInfo(&b, "{\"seq\": " UINT64_FORMAT ", \"table\": ", c->seq);
					json_str(&b, m.tables[c->table].name);
					appendStringInfoString(&b, ", \"key\": ");
					json_str(&b, c->key);
					appendStringInfo(&b, ", \"op\": \"%s\", \"version\": " UINT64_FORMAT ", \"origin\": ",
									 registry_op_name(c->op), c->version);
					json_str(&b, c->origin);
					if (m.with_rows)
					{
						appendStringInfoString(&b, ", \"row\": ");
						json_row(&b, &c->row, m.tables[c->table].ncols);
					}
					appendStringInfoChar(&b, '}');
				}
				appendStringInfoString(&b, "], \"tables\": [");
				for (i = 0; i < m.ntables; i++)
				{
					if (i > 0)
						appendStringInfoString(&b, ", ");
					json_table(&b, &m.tables[i]);
				}
				appendStringInfoString(&b, "]}");
				break;
			}
		case 'D':
			{
				MsgDigest	m;

				msg_read_digest(data, len, &m);
				appendStringInfoString(&b, "{\"kind\": \"digest\", \"node\": ");
				json_str(&b, m.node);
				appendStringInfoString(&b, ", \"table\": ");
				json_str(&b, m.table);
				appendStringInfo(&b, ", \"buckets\": %d, \"root\": \"%016llx\", \"live\": " INT64_FORMAT
								 ", \"tombstones\": " INT64_FORMAT ", \"lo\": %d, \"width\": %d, \"digests\": [",
								 m.nbuckets, (unsigned long long) m.root, m.live,
								 m.tombstones, m.lo, m.width);
				for (i = 0; i < m.n; i++)
					appendStringInfo(&b, "%s\"%016llx\"", i > 0 ? ", " : "",
									 (unsigned long long) m.digests[i]);
				appendStringInfoString(&b, "]}");
				break;
			}
		case 'E':
			{
				MsgEntries	m;

				msg_read_entries(data, len, &m);
				appendStringInfoString(&b, "{\"kind\": \"entries\", \"table\": ");
				json_table(&b, &m.table);
				appendStringInfo(&b, ", \"buckets\": %d, \"entries\": [", m.nbuckets);
				for (i = 0; i < m.n; i++)
				{
					if (i > 0)
						appendStringInfoString(&b, ", ");
					json_row(&b, &m.rows[i], m.table.ncols);
				}
				appendStringInfo(&b, "], \"more\": %s", m.more ? "true" : "false");
				if (m.more)
					appendStringInfo(&b, ", \"after_hash\": %d",
									 khash_to_int4(m.next_khash));
				appendStringInfoChar(&b, '}');
				break;
			}
		case 'R':
			{
				MsgRows		m;

				msg_read_rows(data, len, &m);
				appendStringInfoString(&b, "{\"kind\": \"rows\", \"table\": ");
				json_table(&b, &m.table);
				appendStringInfoString(&b, ", \"rows\": [");
				for (i = 0; i < m.n; i++)
				{
					if (i > 0)
						appendStringInfoString(&b, ", ");
					json_row(&b, &m.rows[i], m.table.ncols);
				}
				appendStringInfoString(&b, "]}");
				break;
			}
		default:
			malformed("The message is of an unknown kind.");
	}
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(b.data)));
}
