/*
 * wire.h: the harness's own byte writers for the message format of
 * src/message.h (docs/protocol.md 2.3-2.5), for messages built field by
 * field: gen_corpus.c's seeds, including the ones made to take the most
 * memory a reader can be made to allocate, and anything deliberately
 * malformed.  src/message.c keeps its own field writers static; the
 * serving functions' writers (msg_write_*) are what decoder_fuzz.c checks
 * against, and since every seed is read back and re-encoded with them by
 * decoder_fuzz, these helpers cannot drift from message.c unnoticed.
 *
 * Included after postgres.h and message.h.
 */
#ifndef FUZZ_WIRE_H
#define FUZZ_WIRE_H

/* a new buffer holding a message header of kind (flags 0, raw length 0) */
static void
wire_begin(StringInfo buf, char kind)
{
	initStringInfo(buf);
	appendStringInfoSpaces(buf, MSG_HEADER_SIZE);
	buf->data[0] = 'R';
	buf->data[1] = 1;
	buf->data[2] = kind;
	buf->data[3] = 0;
}

static void
wire_byte(StringInfo buf, int v)
{
	appendStringInfoChar(buf, (char) v);
}

static void
wire_int32(StringInfo buf, int32 v)
{
	uint32		u = (uint32) v;
	char		b[4];

	b[0] = (char) (u >> 24);
	b[1] = (char) (u >> 16);
	b[2] = (char) (u >> 8);
	b[3] = (char) u;
	appendBinaryStringInfo(buf, b, 4);
}

static void
wire_int64(StringInfo buf, int64 v)
{
	wire_int32(buf, (int32) ((uint64) v >> 32));
	wire_int32(buf, (int32) (uint64) v);
}

/* an int32 length (-1 for NULL) and the bytes */
static void
wire_string(StringInfo buf, const char *s)
{
	if (s == NULL)
	{
		wire_int32(buf, -1);
		return;
	}
	wire_int32(buf, (int32) strlen(s));
	appendBinaryStringInfo(buf, s, strlen(s));
}

/* a table descriptor; with_cols: its columns too, else a count of 0 */
static void
wire_table(StringInfo buf, const RegTable *t, bool with_cols)
{
	int			i;

	wire_string(buf, t ? t->qualname : NULL);
	if (!with_cols || t == NULL)
	{
		wire_int32(buf, 0);
		return;
	}
	wire_int32(buf, t->ncols);
	for (i = 0; i < t->ncols; i++)
	{
		wire_string(buf, t->cols[i].name);
		wire_string(buf, t->cols[i].typname);
	}
}

/* a row: key, state, then version and origin, then values, by state */
static void
wire_row(StringInfo buf, const char *key, int state, RegVersion version,
		 const char *origin, char **values, int ncols)
{
	int			i;

	wire_string(buf, key);
	wire_byte(buf, state);
	if (state == ROW_LIVE || state == ROW_TOMBSTONE || state == ROW_TOO_LARGE)
	{
		wire_int64(buf, (int64) version);
		wire_string(buf, origin);
	}
	if (state == ROW_LIVE)
	{
		wire_int32(buf, values ? ncols : -1);
		for (i = 0; values && i < ncols; i++)
			wire_string(buf, values[i]);
	}
}

#endif
