/*-------------------------------------------------------------------------
 *
 * message.c
 *	  The messages exchanged with peers (layout in message.h and
 *	  docs/protocol.md): for each kind its writer beside its reader, their
 *	  framing and zlib compression, and registry.decode_message() which
 *	  shows any message as JSON.
 *
 * Each layout is written and read here only: the serving functions
 * (serve.c) hand the writers their values, the sync worker gets the
 * readers' structures, so changing a field changes this file and
 * docs/protocol.md.  The file runs from the frame (header, compression,
 * the reader's budget) through the fields and the parts (table
 * descriptor, row) to the kinds (C, D, E, R, T), each writer above its
 * reader.
 *
 * A message comes from another server, so reading one trusts nothing:
 * every length is checked against what is left, and any inconsistency is
 * an ERROR (protocol violation) rather than a crash or a partial result.
 *
 * This file is compiled on its own, against stand-ins for the few backend
 * services it uses, by the fuzz harness (scripts/fuzz): it uses nothing
 * of the extension but registry.h's inline helpers and GUC variables.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <zlib.h>

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
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
#define MSG_HEADER		MSG_HEADER_SIZE

/* ---- framing: the header and compression ---- */

/* Start a message in an empty buffer that already has its memory. */
static void
begin_reuse(StringInfo buf, char kind)
{
	Assert(buf->len == 0);
	appendStringInfoSpaces(buf, MSG_HEADER);
	buf->data[0] = MSG_MAGIC;
	buf->data[1] = MSG_FORMAT;
	buf->data[2] = kind;
	buf->data[3] = 0;
}

/* A writer with an empty buffer, for the msg_write_*_begin() below. */
void
msg_writer_init(MsgWriter *w)
{
	initStringInfo(&w->buf);
	w->count_at = -1;
	w->upto_at = -1;
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

/* Bytes of payload written so far: what the receiver's limit counts. */
int
msg_payload_len(StringInfo buf)
{
	return buf->len - MSG_HEADER;
}

/* ---- reading: the frame and the budget ---- */

/*
 * A message is read in two steps.  reader_open() checks the header and,
 * for a compressed payload, inflates it: in steps of INFLATE_STEP bytes
 * with interrupts served between them, into a buffer of the raw length
 * the header gives (at most registry.max_message_size), and never past
 * it.  Then the kind's reader walks the payload field by field and checks
 * every field before anything else sees it.
 *
 * What the reader builds is charged against a budget of three times the
 * raw length (plus a little): every count is costed at the memory its
 * items will take before they are allocated, so a small message cannot
 * make the reader allocate much.  A well-formed message stays under its
 * budget (bucket entries without rows, with short keys, take the most:
 * about 2.1 times their size); only messages made of many empty items
 * reach it.  Strings are copied into an arena, their bytes and a
 * terminator, with no per-string overhead.
 *
 * The result carries no NULL a later stage could trip on: a string that
 * may be NULL on the wire is NULL only where message.h says so (a NULL
 * column value; the values of a row that carries none).
 */
#define INFLATE_STEP	(1024 * 1024)
#define ARENA_BLOCK		(64 * 1024)
#define BUDGET_SLACK	(128 * 1024)
#define ALLOC_OVERHEAD	16		/* what palloc adds to a piece */
#define ZLIB_MAX_RATIO	1032	/* deflate never shrinks more than this */

typedef struct Reader
{
	const char *p;
	int			len;
	int			pos;
	Size		budget;			/* bytes the result may still take */
	char	   *arena;			/* where the next string goes */
	Size		arena_left;
	int			encoding;		/* strings must be valid in it */
} Reader;

static void
malformed(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_PROTOCOL_VIOLATION),
			 errmsg("malformed registry message"),
			 errdetail("%s", what)));
}

static char
msg_kind(const char *data, int len)
{
	if (len < MSG_HEADER || data[0] != MSG_MAGIC)
		malformed("The message does not start with a registry header.");
	if (data[1] != MSG_FORMAT)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("registry message format %u is not supported",
						(unsigned int) (unsigned char) data[1]),
				 errhint("Run the same registry version on every node.")));
	return data[2];
}

/* zlib's allocations, in the current memory context: an ERROR frees them */
static voidpf
zalloc_palloc(voidpf opaque, uInt items, uInt size)
{
	return palloc_extended((Size) items * size, MCXT_ALLOC_NO_OOM);
}

static void
zfree_palloc(voidpf opaque, voidpf ptr)
{
	if (ptr)
		pfree(ptr);
}

/* Inflate a zlib stream of exactly rawlen bytes, interruptibly. */
static char *
inflate_payload(const char *src, int srclen, uint32 rawlen)
{
	z_stream	zs;
	char	   *out;
	int			rc;

	/* a stream never ends before it has begun: one byte of room to spare */
	out = palloc((Size) rawlen + 1);
	memset(&zs, 0, sizeof(zs));
	zs.zalloc = zalloc_palloc;
	zs.zfree = zfree_palloc;
	zs.next_in = (Bytef *) src;
	zs.avail_in = srclen;
	if (inflateInit(&zs) != Z_OK)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory"),
				 errdetail("Could not start inflating a registry message.")));
	zs.next_out = (Bytef *) out;
	for (;;)
	{
		uLong		room = (uLong) rawlen + 1 - zs.total_out;

		CHECK_FOR_INTERRUPTS();
		zs.avail_out = (uInt) Min(room, INFLATE_STEP);
		rc = inflate(&zs, Z_NO_FLUSH);
		if (rc == Z_STREAM_END)
			break;
		if (rc != Z_OK || zs.total_out > rawlen)
		{
			const char *what = zs.total_out > rawlen ?
				"The compressed payload inflates to more than the header says." :
				rc == Z_BUF_ERROR ?
				"The compressed payload ends before its stream does." :
				"The compressed payload does not decompress.";

			inflateEnd(&zs);
			malformed(what);
		}
	}
	if (zs.avail_in != 0)
	{
		inflateEnd(&zs);
		malformed("The message has trailing data after its compressed payload.");
	}
	if (zs.total_out != rawlen)
	{
		inflateEnd(&zs);
		malformed("The compressed payload inflates to less than the header says.");
	}
	inflateEnd(&zs);
	return out;
}

static void
reader_open(Reader *r, const char *data, int len, char kind)
{
	uint32		rawlen;
	const unsigned char *u = (const unsigned char *) data;
	int			flags;

	if (msg_kind(data, len) != kind)
		malformed("The message is of an unexpected kind.");
	flags = u[3];
	if ((flags & ~MSG_FLAG_ZLIB) != 0)
		malformed("The message has flags this node does not know.");
	rawlen = ((uint32) u[4] << 24) | ((uint32) u[5] << 16) |
		((uint32) u[6] << 8) | (uint32) u[7];
	if (rawlen > (uint32) registry_max_message_size)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("registry message of %u bytes is larger than registry.max_message_size (%d bytes)",
						rawlen, registry_max_message_size),
				 errhint("A peer sends at most the size its requester asks for; raise registry.max_message_size if this node should accept more.")));
	if (flags & MSG_FLAG_ZLIB)
	{
		/* a payload is only sent compressed when that makes it shorter */
		if ((uint32) (len - MSG_HEADER) > rawlen)
			malformed("The compressed payload is longer than the raw payload.");
		/* nor can it claim more than zlib can make of it: no room for that */
		if ((uint64) rawlen > (uint64) (len - MSG_HEADER) * ZLIB_MAX_RATIO + 1024)
			malformed("The compressed payload cannot inflate to the length the header says.");
		r->p = inflate_payload(data + MSG_HEADER, len - MSG_HEADER, rawlen);
	}
	else
	{
		if ((uint32) (len - MSG_HEADER) != rawlen)
			malformed("The payload length does not match the header.");
		r->p = data + MSG_HEADER;
	}
	r->len = (int) rawlen;
	r->pos = 0;
	r->budget = (Size) rawlen * 3 + BUDGET_SLACK;
	r->arena = NULL;
	r->arena_left = 0;
	r->encoding = GetDatabaseEncoding();
}

/* Account for size bytes of the result before they are allocated. */
static void
reader_charge(Reader *r, Size size)
{
	if (size > r->budget)
		malformed("The message describes more than its size can hold.");
	r->budget -= size;
}

static void *
reader_alloc(Reader *r, Size n, Size size)
{
	Size		total = Max(n, 1) * size;

	reader_charge(r, total + ALLOC_OVERHEAD);
	return palloc0(total);
}

static void
reader_close(Reader *r)
{
	if (r->pos != r->len)
		malformed("The message has trailing data.");
}

/* ---- fields (protocol.md 2.3) ---- */

static void
msg_put_byte(StringInfo buf, int v)
{
	appendStringInfoCharMacro(buf, (char) v);
}

static void
msg_put_int32(StringInfo buf, int32 v)
{
	char		b[4];

	put_be32(b, (uint32) v);
	appendBinaryStringInfo(buf, b, 4);
}

static void
msg_put_int64(StringInfo buf, int64 v)
{
	msg_put_int32(buf, (int32) ((uint64) v >> 32));
	msg_put_int32(buf, (int32) (uint64) v);
}

static void
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

/* Overwrite an int32 written earlier at offset at (a count not known then). */
static void
set_int32(StringInfo buf, int at, int32 v)
{
	Assert(at >= MSG_HEADER && at + 4 <= buf->len);
	put_be32(buf->data + at, (uint32) v);
}

/* Overwrite an int64 written earlier at offset at. */
static void
set_int64(StringInfo buf, int at, int64 v)
{
	set_int32(buf, at, (int32) ((uint64) v >> 32));
	set_int32(buf, at + 4, (int32) (uint64) v);
}

/* The bytes msg_put_string() writes for s. */
static Size
string_size(const char *s)
{
	return 4 + (s ? strlen(s) : 0);
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

/* a byte that says yes or no */
static bool
get_bool(Reader *r)
{
	int			b = get_byte(r);

	if (b > 1)
		malformed("A flag byte is neither 0 nor 1.");
	return b == 1;
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

/* a version of a row: positive as a bigint, as stored in tables */
static RegVersion
get_version(Reader *r)
{
	int64		v = get_int64(r);

	if (v <= 0)
		malformed("A version is not a positive bigint.");
	return (RegVersion) v;
}

/* a string that may be NULL, copied into the arena */
static char *
get_string_or_null(Reader *r)
{
	int32		n = get_int32(r);
	char	   *s;

	if (n == -1)
		return NULL;
	if (n < 0)
		malformed("A string has a negative length.");
	need(r, n);
	if (memchr(r->p + r->pos, '\0', n) != NULL)
		malformed("A string contains a zero byte.");
	if (!pg_verify_mbstr(r->encoding, r->p + r->pos, n, true))
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("malformed registry message"),
				 errdetail("A string is not valid in this database's encoding (%s).",
						   GetDatabaseEncodingName()),
				 errhint("Nodes must share a server encoding.")));
	if ((Size) n + 1 > ARENA_BLOCK / 8)
	{
		/* a long string gets its own piece: it would waste an arena block */
		reader_charge(r, (Size) n + 1 + ALLOC_OVERHEAD);
		s = palloc((Size) n + 1);
	}
	else
	{
		if ((Size) n + 1 > r->arena_left)
		{
			/* the whole block is charged: what a string leaves unused too */
			reader_charge(r, ARENA_BLOCK + ALLOC_OVERHEAD);
			r->arena = palloc(ARENA_BLOCK);
			r->arena_left = ARENA_BLOCK;
		}
		s = r->arena;
		r->arena += n + 1;
		r->arena_left -= n + 1;
	}
	memcpy(s, r->p + r->pos, n);
	s[n] = '\0';
	r->pos += n;
	return s;
}

static char *
get_string(Reader *r)
{
	char	   *s = get_string_or_null(r);

	if (s == NULL)
		malformed("A required string is missing.");
	return s;
}

static char *
get_nonempty_string(Reader *r, const char *what)
{
	char	   *s = get_string(r);

	if (s[0] == '\0')
		malformed(what);
	return s;
}

/* a node name: the serving node's, or a version's origin */
static char *
get_node_name(Reader *r)
{
	char	   *s = get_string(r);

	if (!registry_valid_node_name(s))
		malformed("A node name is empty, too long or not made of letters, digits and \"_-.:@\".");
	return s;
}

/*
 * A count of items, each at least min_wire bytes on the wire and
 * mem_each bytes once read: both are checked before anything is
 * allocated.
 */
static int
get_count(Reader *r, int min_wire, Size mem_each)
{
	int32		n = get_int32(r);

	if (n < 0 || (int64) n * min_wire > r->len - r->pos)
		malformed("A count exceeds the message.");
	if ((Size) n * mem_each > r->budget)
		malformed("The message describes more than its size can hold.");
	return n;
}

/* the answer's bucket count: a power of two a node may have */
static int
get_nbuckets(Reader *r)
{
	int32		nb = get_int32(r);

	if (nb <= 0 || nb > MSG_MAX_BUCKETS || (nb & (nb - 1)) != 0)
		malformed("The bucket count is not a power of two a node can have.");
	return nb;
}

/* ---- table descriptor (protocol.md 2.4) ---- */

/* A table's descriptor; with_cols: its columns too.  t NULL: a NULL name. */
static void
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

/*
 * The bytes msg_put_table() writes for t; for NULL 8, as for the "" of a
 * table no longer registered in msg_write_changes_begin().
 */
Size
msg_table_size(RegTable *t, bool with_cols)
{
	Size		size = string_size(t ? t->qualname : NULL) + 4;
	int			i;

	for (i = 0; t && with_cols && i < t->ncols; i++)
		size += string_size(t->cols[i].name) + string_size(t->cols[i].typname);
	return size;
}

/*
 * A table descriptor.  named: the name must not be empty (only changes
 * may describe a table no longer registered, by "").
 */
static void
get_table(Reader *r, MsgTable *t, bool named)
{
	int			i;

	t->name = named ?
		get_nonempty_string(r, "A table descriptor has an empty name.") :
		get_string(r);
	t->ncols = get_count(r, 8, 2 * sizeof(char *));
	t->colnames = reader_alloc(r, t->ncols, sizeof(char *));
	t->coltypes = reader_alloc(r, t->ncols, sizeof(char *));
	for (i = 0; i < t->ncols; i++)
	{
		t->colnames[i] = get_nonempty_string(r, "A column has an empty name.");
		t->coltypes[i] = get_nonempty_string(r, "A column has an empty type name.");
	}
}

/*
 * An answer that carries row values describes each (named) table's
 * columns; one that does not describes none.
 */
static void
check_table_columns(MsgTable *t, bool with_rows)
{
	if (with_rows && t->name[0] != '\0' && t->ncols == 0)
		malformed("A table descriptor has no columns although the answer carries rows.");
	if ((!with_rows || t->name[0] == '\0') && t->ncols != 0)
		malformed("A table descriptor has columns although the answer carries no rows.");
}

/* ---- row (protocol.md 2.5) ---- */

/*
 * A row: origin and version for a live row, a tombstone and a row too
 * large; values (ncols of them, or -1 for none when values is NULL) for a
 * live row.
 */
static void
msg_put_row(StringInfo buf, const char *key, int state, RegVersion version,
			const char *origin, char **values, int ncols)
{
	int			i;

	msg_put_string(buf, key);
	msg_put_byte(buf, state);
	if (state == ROW_LIVE || state == ROW_TOMBSTONE || state == ROW_TOO_LARGE)
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

/* A row as the next item of the message in w. */
void
msg_write_row(MsgWriter *w, const char *key, int state, RegVersion version,
			  const char *origin, char **values, int ncols)
{
	msg_put_row(&w->buf, key, state, version, origin, values, ncols);
}

/* The bytes msg_put_row() writes for the same arguments. */
Size
msg_row_size(const char *key, int state, const char *origin, char **values,
			 int ncols)
{
	Size		size = string_size(key) + 1;
	int			i;

	if (state == ROW_LIVE || state == ROW_TOMBSTONE || state == ROW_TOO_LARGE)
		size += 8 + string_size(origin);
	if (state == ROW_LIVE)
	{
		size += 4;
		for (i = 0; values && i < ncols; i++)
			size += string_size(values[i]);
	}
	return size;
}

/* the row states an answer may hold, as a mask */
#define STATE_BIT(s)	(1 << (s))

/* a key: no registry key is longer than REGISTRY_MAX_KEY_LEN */
static char *
get_key(Reader *r)
{
	char	   *key = get_string(r);

	if (strlen(key) > REGISTRY_MAX_KEY_LEN)
		malformed("A key is longer than any registry key can be.");
	return key;
}

/*
 * A row of a table with ncols columns in this answer, in one of the
 * states allowed (a mask of STATE_BIT()s): a live row carries exactly
 * ncols values, or none (-1) when ncols is 0.
 */
static void
get_row(Reader *r, MsgRow *row, int ncols, int allowed)
{
	row->key = get_key(r);
	row->state = get_byte(r);
	row->version = 0;
	row->origin = NULL;
	row->values = NULL;
	if (row->state < ROW_LIVE || row->state > ROW_TOO_LARGE ||
		(allowed & STATE_BIT(row->state)) == 0)
		malformed("A row has a state this answer cannot hold.");
	if (row->state == ROW_LIVE || row->state == ROW_TOMBSTONE ||
		row->state == ROW_TOO_LARGE)
	{
		row->version = get_version(r);
		row->origin = get_node_name(r);
	}
	if (row->state == ROW_LIVE)
	{
		int32		n = get_int32(r);
		int			i;

		if (n != (ncols == 0 ? -1 : ncols))
			malformed("A row has a different number of values than its table has columns.");
		if (n == -1)
			return;				/* values not asked for */
		row->values = reader_alloc(r, n, sizeof(char *));
		for (i = 0; i < n; i++)
			row->values[i] = get_string_or_null(r);
	}
}

/* ---- kind C: changes (protocol.md 2.6) ---- */

/*
 * Begin a changes answer in w (initialised, empty): the header and the
 * descriptors of tables[0..ntables-1], a NULL one being a table no longer
 * registered ("", no columns).  upto_seq and the count of changes are
 * written by msg_write_changes_end().
 */
void
msg_write_changes_begin(MsgWriter *w, const char *node, uint64 epoch,
						uint64 first_seq, uint64 last_seq, int status,
						bool with_rows, RegTable **tables, int ntables)
{
	StringInfo	buf = &w->buf;
	int			i;

	begin_reuse(buf, 'C');
	msg_put_string(buf, node);
	msg_put_int64(buf, (int64) epoch);
	msg_put_int64(buf, (int64) first_seq);
	msg_put_int64(buf, (int64) last_seq);
	w->upto_at = buf->len;
	msg_put_int64(buf, 0);		/* upto_seq, at the end */
	msg_put_byte(buf, status);
	msg_put_byte(buf, with_rows ? 1 : 0);
	msg_put_int32(buf, ntables);
	for (i = 0; i < ntables; i++)
	{
		if (tables[i])
			msg_put_table(buf, tables[i], with_rows);
		else
		{
			msg_put_string(buf, "");	/* unregistered since */
			msg_put_int32(buf, 0);
		}
	}
	w->count_at = buf->len;
	msg_put_int32(buf, 0);		/* the changes, at the end */
}

/*
 * A change; table is its index in the begin's tables.  In an answer with
 * rows, its row follows (msg_write_row()).
 */
void
msg_write_change(MsgWriter *w, uint64 seq, int table, const char *key,
				 RegVersion version, const char *origin, char op)
{
	StringInfo	buf = &w->buf;

	msg_put_int64(buf, (int64) seq);
	msg_put_int32(buf, table);
	msg_put_string(buf, key);
	msg_put_int64(buf, (int64) version);
	msg_put_string(buf, origin);
	msg_put_byte(buf, op);
}

/* The bytes msg_write_change() writes, without the row. */
Size
msg_change_size(const char *key, const char *origin)
{
	return 8 + 4 + string_size(key) + 8 + string_size(origin) + 1;
}

/* End a changes answer of nchanges changes, covering seqs up to upto_seq. */
void
msg_write_changes_end(MsgWriter *w, uint64 upto_seq, int nchanges)
{
	Assert(w->count_at > 0 && w->upto_at > 0);
	set_int32(&w->buf, w->count_at, nchanges);
	set_int64(&w->buf, w->upto_at, (int64) upto_seq);
}

void
msg_read_changes(const char *data, int len, MsgChanges *m)
{
	Reader		r;
	int			i;
	uint64		prev_seq = 0;

	reader_open(&r, data, len, 'C');
	m->node = get_node_name(&r);
	m->epoch = (uint64) get_int64(&r);
	m->first_seq = (uint64) get_int64(&r);
	m->last_seq = (uint64) get_int64(&r);
	m->upto_seq = (uint64) get_int64(&r);
	m->status = get_byte(&r);
	if (m->status > CHANGES_EPOCH)
		malformed("The answer has an unknown status.");
	m->with_rows = get_bool(&r);
	if (m->status == CHANGES_OK &&
		(m->upto_seq > m->last_seq || m->first_seq > m->last_seq + 1))
		malformed("The answer's sequence numbers are out of order.");
	m->ntables = get_count(&r, 8, sizeof(MsgTable));
	m->tables = reader_alloc(&r, m->ntables, sizeof(MsgTable));
	for (i = 0; i < m->ntables; i++)
	{
		CHECK_FOR_INTERRUPTS();
		get_table(&r, &m->tables[i], false);
		check_table_columns(&m->tables[i], m->with_rows);
	}
	m->n = get_count(&r, m->with_rows ? 35 : 30, sizeof(MsgChange));
	if (m->status != CHANGES_OK && (m->ntables > 0 || m->n > 0))
		malformed("An answer that is not ok carries changes.");
	m->changes = reader_alloc(&r, m->n, sizeof(MsgChange));
	for (i = 0; i < m->n; i++)
	{
		MsgChange  *c = &m->changes[i];
		MsgTable   *t;

		CHECK_FOR_INTERRUPTS();
		c->seq = (uint64) get_int64(&r);
		if (c->seq <= prev_seq || c->seq > m->upto_seq)
			malformed("A change's seq is not after the one before, or beyond the answer's upto_seq.");
		prev_seq = c->seq;
		c->table = get_int32(&r);
		if (c->table < 0 || c->table >= m->ntables)
			malformed("A change refers to an unknown table.");
		t = &m->tables[c->table];
		c->key = get_key(&r);
		c->version = (RegVersion) get_int64(&r);
		if ((int64) c->version < 0)
			malformed("A version is not a positive bigint.");
		/* "" when the serving node no longer knows which node it was */
		c->origin = get_string(&r);
		if (c->origin[0] != '\0' && !registry_valid_node_name(c->origin))
			malformed("A node name is empty, too long or not made of letters, digits and \"_-.:@\".");
		c->op = (char) get_byte(&r);
		if (c->op != REG_OP_INSERT && c->op != REG_OP_UPDATE &&
			c->op != REG_OP_DELETE && c->op != REG_OP_RESYNC)
			malformed("A change has an unknown operation.");
		if (m->with_rows)
		{
			/* a table's rows, or none for a bulk change or a dropped table */
			bool		rowless = (c->op == REG_OP_RESYNC || t->name[0] == '\0');

			get_row(&r, &c->row, t->ncols,
					rowless ? STATE_BIT(ROW_UNKNOWN) :
					STATE_BIT(ROW_LIVE) | STATE_BIT(ROW_TOMBSTONE) |
					STATE_BIT(ROW_ABSENT) | STATE_BIT(ROW_TOO_LARGE));
			if (strcmp(c->row.key, c->key) != 0)
				malformed("A change's row is for another key.");
		}
		else
		{
			/* no row: say so, rather than leave its fields empty */
			c->row.key = c->key;
			c->row.state = ROW_UNKNOWN;
			c->row.version = 0;
			c->row.origin = c->origin;
			c->row.values = NULL;
		}
	}
	reader_close(&r);
}

/* ---- kind D: digest (protocol.md 2.7) ---- */

/* A whole digest answer, in w (initialised, empty). */
void
msg_write_digest(MsgWriter *w, const MsgDigest *m)
{
	StringInfo	buf = &w->buf;
	int			i;

	begin_reuse(buf, 'D');
	msg_put_string(buf, m->node);
	msg_put_string(buf, m->table);
	msg_put_int32(buf, m->nbuckets);
	msg_put_int64(buf, (int64) m->root);
	msg_put_int64(buf, m->live);
	msg_put_int64(buf, m->tombstones);
	msg_put_int32(buf, m->lo);
	msg_put_int32(buf, m->width);
	msg_put_int32(buf, m->n);
	for (i = 0; i < m->n; i++)
		msg_put_int64(buf, (int64) m->digests[i]);
}

void
msg_read_digest(const char *data, int len, MsgDigest *m)
{
	Reader		r;
	int			i;

	reader_open(&r, data, len, 'D');
	m->node = get_node_name(&r);
	m->table = get_nonempty_string(&r, "The digest is of a table with an empty name.");
	m->nbuckets = get_nbuckets(&r);
	m->root = (uint64) get_int64(&r);
	m->live = get_int64(&r);
	m->tombstones = get_int64(&r);
	if (m->live < 0 || m->tombstones < 0 ||
		m->live > PG_INT64_MAX / 2 || m->tombstones > PG_INT64_MAX / 2)
		malformed("The digest's counts are out of range.");
	m->lo = get_int32(&r);
	m->width = get_int32(&r);
	m->n = get_count(&r, 8, sizeof(uint64));
	if (m->lo < 0 || m->width < 0 ||
		(m->n > 0 && (m->width == 0 ||
					  (int64) m->lo + (int64) m->n * m->width > m->nbuckets)))
		malformed("The digest ranges do not fit the bucket count.");
	m->digests = reader_alloc(&r, m->n, sizeof(uint64));
	for (i = 0; i < m->n; i++)
		m->digests[i] = (uint64) get_int64(&r);
	reader_close(&r);
}

/* ---- kind E: bucket entries (protocol.md 2.8) ---- */

/*
 * Begin a bucket entries answer (or a page of table_pages) in w
 * (initialised, empty).  The entries follow (msg_write_row()), then
 * msg_write_entries_end().
 */
void
msg_write_entries_begin(MsgWriter *w, RegTable *t, int nbuckets,
						bool with_rows)
{
	StringInfo	buf = &w->buf;

	begin_reuse(buf, 'E');
	msg_put_table(buf, t, with_rows);
	msg_put_int32(buf, nbuckets);
	msg_put_byte(buf, with_rows ? 1 : 0);
	w->count_at = buf->len;
	msg_put_int32(buf, 0);		/* the entries, at the end */
}

/*
 * End a bucket entries answer of n entries.  more: it was cut short, and
 * the next one resumes after key hash next_khash.
 */
void
msg_write_entries_end(MsgWriter *w, int n, bool more, uint32 next_khash)
{
	Assert(w->count_at > 0);
	set_int32(&w->buf, w->count_at, n);
	msg_put_byte(&w->buf, more ? 1 : 0);
	if (more)
		msg_put_int32(&w->buf, khash_to_int4(next_khash));
}

/* The bytes msg_write_entries_end() writes. */
Size
msg_entries_end_size(bool more)
{
	return more ? 1 + 4 : 1;
}

void
msg_read_entries(const char *data, int len, MsgEntries *m)
{
	Reader		r;
	int			i;
	bool		with_rows;

	reader_open(&r, data, len, 'E');
	get_table(&r, &m->table, true);
	m->nbuckets = get_nbuckets(&r);
	with_rows = get_bool(&r);
	m->with_rows = with_rows;
	check_table_columns(&m->table, with_rows);
	m->n = get_count(&r, 5, sizeof(MsgRow));
	m->rows = reader_alloc(&r, m->n, sizeof(MsgRow));
	for (i = 0; i < m->n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		get_row(&r, &m->rows[i], m->table.ncols,
				STATE_BIT(ROW_LIVE) | STATE_BIT(ROW_TOMBSTONE) |
				(with_rows ? STATE_BIT(ROW_TOO_LARGE) : 0));
	}
	m->more = get_bool(&r);
	m->next_khash = 0;
	if (m->more)
		m->next_khash = int4_to_khash(get_int32(&r));
	reader_close(&r);
}

/* ---- kind R: rows (protocol.md 2.9) ---- */

/*
 * Begin a rows answer in w (initialised, empty).  The rows follow
 * (msg_write_row()), then msg_write_rows_end().
 */
void
msg_write_rows_begin(MsgWriter *w, RegTable *t)
{
	StringInfo	buf = &w->buf;

	begin_reuse(buf, 'R');
	msg_put_table(buf, t, true);
	w->count_at = buf->len;
	msg_put_int32(buf, 0);		/* the rows, at the end */
}

/* End a rows answer of n rows. */
void
msg_write_rows_end(MsgWriter *w, int n)
{
	Assert(w->count_at > 0);
	set_int32(&w->buf, w->count_at, n);
}

void
msg_read_rows(const char *data, int len, MsgRows *m)
{
	Reader		r;
	int			i;

	reader_open(&r, data, len, 'R');
	get_table(&r, &m->table, true);
	check_table_columns(&m->table, true);
	m->n = get_count(&r, 5, sizeof(MsgRow));
	m->rows = reader_alloc(&r, m->n, sizeof(MsgRow));
	for (i = 0; i < m->n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		get_row(&r, &m->rows[i], m->table.ncols,
				STATE_BIT(ROW_LIVE) | STATE_BIT(ROW_TOMBSTONE) |
				STATE_BIT(ROW_ABSENT) | STATE_BIT(ROW_TOO_LARGE));
	}
	reader_close(&r);
}

/* ---- kind T: table definitions (protocol.md 2.12) ---- */

/* Begin a table definitions answer in w (initialised, empty). */
void
msg_write_definitions_begin(MsgWriter *w, const char *node)
{
	StringInfo	buf = &w->buf;

	begin_reuse(buf, 'T');
	msg_put_string(buf, node);
	w->count_at = buf->len;
	msg_put_int32(buf, 0);		/* the tables, at the end */
}

/* One table's definition as the next item. */
void
msg_write_definition(MsgWriter *w, const MsgDefTable *t)
{
	StringInfo	buf = &w->buf;
	int			i;

	msg_put_string(buf, t->schema);
	msg_put_string(buf, t->name);
	msg_put_int64(buf, t->lease_ttl_ms);
	msg_put_int32(buf, t->ncols);
	for (i = 0; i < t->ncols; i++)
	{
		msg_put_string(buf, t->cols[i].name);
		msg_put_string(buf, t->cols[i].type);
		msg_put_byte(buf, t->cols[i].flags);
		msg_put_string(buf, t->cols[i].default_expr);
	}
	msg_put_int32(buf, t->npk);
	for (i = 0; i < t->npk; i++)
		msg_put_int32(buf, t->pk[i]);
}

/* End a table definitions answer of n tables. */
void
msg_write_definitions_end(MsgWriter *w, int n)
{
	Assert(w->count_at > 0);
	set_int32(&w->buf, w->count_at, n);
}

/* a schema, table or column name: what an identifier can be */
static char *
get_identifier(Reader *r, const char *what)
{
	char	   *s = get_nonempty_string(r, what);

	if (strlen(s) >= NAMEDATALEN)
		malformed("A name is longer than an identifier can be.");
	return s;
}

static int
compare_names(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

static void
get_definition(Reader *r, MsgDefTable *t)
{
	int			i;
	int			j;
	char	  **sorted;

	t->schema = get_identifier(r, "A table definition has an empty schema name.");
	t->name = get_identifier(r, "A table definition has an empty name.");
	t->lease_ttl_ms = get_int64(r);
	if (t->lease_ttl_ms != 0 &&
		(t->lease_ttl_ms < MSG_MIN_LEASE_TTL_MS || t->lease_ttl_ms > MSG_MAX_LEASE_TTL_MS))
		malformed("A lease time to live is out of range.");
	t->ncols = get_count(r, 15, sizeof(MsgDefColumn) + sizeof(char *));
	if (t->ncols == 0 || t->ncols > MSG_MAX_COLUMNS)
		malformed("A table definition has no columns, or more than a table can have.");
	t->cols = reader_alloc(r, t->ncols, sizeof(MsgDefColumn));
	for (i = 0; i < t->ncols; i++)
	{
		MsgDefColumn *c = &t->cols[i];

		c->name = get_identifier(r, "A column has an empty name.");
		c->type = get_nonempty_string(r, "A column has an empty type name.");
		c->flags = get_byte(r);
		if ((c->flags & ~(MSG_COL_NOT_NULL | MSG_COL_GENERATED)) != 0)
			malformed("A column has flags this node does not know.");
		c->default_expr = get_string_or_null(r);
		if (c->default_expr && c->default_expr[0] == '\0')
			malformed("A column has an empty default expression.");
		if ((c->flags & MSG_COL_GENERATED) && c->default_expr == NULL)
			malformed("A generated column has no expression.");
	}
	/* no two columns of one name: sorted, neighbours differ */
	sorted = reader_alloc(r, t->ncols, sizeof(char *));
	for (i = 0; i < t->ncols; i++)
		sorted[i] = t->cols[i].name;
	qsort(sorted, t->ncols, sizeof(char *), compare_names);
	for (i = 1; i < t->ncols; i++)
		if (strcmp(sorted[i - 1], sorted[i]) == 0)
			malformed("A table definition has two columns of the same name.");
	pfree(sorted);

	t->npk = get_count(r, 4, sizeof(int));
	if (t->npk == 0 || t->npk > MSG_MAX_KEY_COLUMNS || t->npk > t->ncols)
		malformed("A table definition has no primary key, or one of more columns than a key can have.");
	t->pk = reader_alloc(r, t->npk, sizeof(int));
	for (i = 0; i < t->npk; i++)
	{
		t->pk[i] = get_int32(r);
		if (t->pk[i] < 0 || t->pk[i] >= t->ncols)
			malformed("A primary key column is not a column of the table.");
		if (!(t->cols[t->pk[i]].flags & MSG_COL_NOT_NULL))
			malformed("A primary key column is not NOT NULL.");
		for (j = 0; j < i; j++)
			if (t->pk[j] == t->pk[i])
				malformed("A primary key names a column twice.");
	}
}

void
msg_read_definitions(const char *data, int len, MsgDefinitions *m)
{
	Reader		r;
	int			i;

	reader_open(&r, data, len, 'T');
	m->node = get_node_name(&r);
	m->n = get_count(&r, 26, sizeof(MsgDefTable));
	m->tables = reader_alloc(&r, m->n, sizeof(MsgDefTable));
	for (i = 0; i < m->n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		get_definition(&r, &m->tables[i]);
	}
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
row_state_name(int state)
{
	switch (state)
	{
		case ROW_LIVE:
			return "live";
		case ROW_TOMBSTONE:
			return "tombstone";
		case ROW_ABSENT:
			return "absent";
		case ROW_TOO_LARGE:
			return "too large";
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
	appendStringInfo(b, ", \"state\": \"%s\"", row_state_name(row->state));
	if (row->state == ROW_LIVE || row->state == ROW_TOMBSTONE ||
		row->state == ROW_TOO_LARGE)
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

					CHECK_FOR_INTERRUPTS();
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
					CHECK_FOR_INTERRUPTS();
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
					CHECK_FOR_INTERRUPTS();
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
					CHECK_FOR_INTERRUPTS();
					if (i > 0)
						appendStringInfoString(&b, ", ");
					json_row(&b, &m.rows[i], m.table.ncols);
				}
				appendStringInfoString(&b, "]}");
				break;
			}
		case 'T':
			{
				MsgDefinitions m;

				msg_read_definitions(data, len, &m);
				appendStringInfoString(&b, "{\"kind\": \"definitions\", \"node\": ");
				json_str(&b, m.node);
				appendStringInfoString(&b, ", \"tables\": [");
				for (i = 0; i < m.n; i++)
				{
					MsgDefTable *t = &m.tables[i];
					int			j;

					CHECK_FOR_INTERRUPTS();
					if (i > 0)
						appendStringInfoString(&b, ", ");
					appendStringInfoString(&b, "{\"schema\": ");
					json_str(&b, t->schema);
					appendStringInfoString(&b, ", \"name\": ");
					json_str(&b, t->name);
					if (t->lease_ttl_ms > 0)
						appendStringInfo(&b, ", \"lease_ttl_ms\": " INT64_FORMAT, t->lease_ttl_ms);
					else
						appendStringInfoString(&b, ", \"lease_ttl_ms\": null");
					appendStringInfoString(&b, ", \"columns\": [");
					for (j = 0; j < t->ncols; j++)
					{
						MsgDefColumn *c = &t->cols[j];

						if (j > 0)
							appendStringInfoString(&b, ", ");
						appendStringInfoString(&b, "{\"name\": ");
						json_str(&b, c->name);
						appendStringInfoString(&b, ", \"type\": ");
						json_str(&b, c->type);
						appendStringInfo(&b, ", \"not_null\": %s, \"generated\": %s, \"default\": ",
										 (c->flags & MSG_COL_NOT_NULL) ? "true" : "false",
										 (c->flags & MSG_COL_GENERATED) ? "true" : "false");
						json_str(&b, c->default_expr);
						appendStringInfoChar(&b, '}');
					}
					appendStringInfoString(&b, "], \"primary_key\": [");
					for (j = 0; j < t->npk; j++)
					{
						if (j > 0)
							appendStringInfoString(&b, ", ");
						json_str(&b, t->cols[t->pk[j]].name);
					}
					appendStringInfoString(&b, "]}");
				}
				appendStringInfoString(&b, "]}");
				break;
			}
		default:
			malformed("The message is of an unknown kind.");
	}
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(b.data)));
}
