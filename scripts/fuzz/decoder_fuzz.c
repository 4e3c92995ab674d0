/*
 * decoder_fuzz.c: libFuzzer target for the message decoder of src/message.c
 * (msg_read_changes, msg_read_digest, msg_read_entries, msg_read_rows,
 * msg_read_definitions),
 * compiled unchanged against the stubs in pg_stubs.c.
 *
 * Build and run with scripts/fuzz/run (it also makes the seed corpus);
 * to replay one input: scripts/fuzz/run replay FILE...
 *
 * Each input is handed, as a message, to each of the five readers (all
 * but one of which must refuse it by kind).  Besides the sanitizers, the
 * harness checks:
 * - an ERROR is the only way a reader may refuse (a longjmp back here);
 * - memory: every palloc is counted; the decoder may allocate at most
 *   what src/message.c promises, 3 x raw for what it builds, plus the
 *   inflated payload (raw + 1) for a compressed message, plus 1 MB for
 *   zlib's state and rounding: raw being the larger of the input's length
 *   and, for a compressed message, the raw length its header claims
 *   (capped at registry.max_message_size).  Over that the stub allocator
 *   abort()s (a finding).  FUZZ_BUDGET_FACTOR=n replaces the 3;
 * - what a reader accepts is well formed as message.h promises: no NULL
 *   where one is not allowed, counts and indexes in range, names valid;
 *   all of it is walked, so a dangling pointer shows up under ASan;
 * - what a reader accepts re-encodes, with the writers the serving
 *   functions use (msg_writer_init, msg_write_*), to exactly the header
 *   kind and payload it was read from (no two encodings of one message,
 *   nothing left out), and every item takes the bytes its _size function
 *   (msg_row_size, msg_change_size, msg_table_size, msg_entries_end_size)
 *   says.
 * Any violation prints ==FUZZ== and abort()s.  At exit the harness prints
 * how many inputs each reader accepted and the memory figures.
 *
 * A custom mutator (LLVMFuzzerCustomMutator) lets mutations reach the
 * payload of compressed messages: it inflates, mutates, deflates.
 */
#include "postgres.h"

#include <zlib.h>

#include "message.h"
#include "registry.h"

#include "pg_stubs.h"

#include <stdlib.h>

#define MSG_HEADER	MSG_HEADER_SIZE

static void
fail(const char *what, const char *kind)
{
	fprintf(stderr, "==FUZZ== INVARIANT VIOLATED (%s reader): %s\n", kind, what);
	abort();
}

#define CHECK(cond, kind) do { if (!(cond)) fail(#cond, kind); } while (0)

/* ---- statistics, printed at exit ---- */

static unsigned long n_inputs;
static unsigned long n_accepted[5];
static unsigned long n_roundtrips;
static double max_ratio_raw;	/* allocated / raw, for raw >= 1 MB */
static double max_ratio_len;	/* allocated / input length */
static size_t max_ratio_len_size;	/* ... that input's length */
static size_t max_ratio_len_total;	/* ... and what it allocated */
static size_t max_total;
static size_t max_largest;

static const char *const kind_names[5] = {"changes", "digest", "entries", "rows", "definitions"};

static void
print_stats(void)
{
	fprintf(stderr,
			"==FUZZ== stats: inputs %lu; accepted: changes %lu, digest %lu, entries %lu, rows %lu, "
			"definitions %lu; "
			"round trips %lu; most allocated for one input %zu bytes (largest request %zu); "
			"max allocated/raw where raw >= 1 MB: %.2f; "
			"max allocated/input length %.1f (%zu bytes for an input of %zu)\n",
			n_inputs, n_accepted[0], n_accepted[1], n_accepted[2], n_accepted[3],
			n_accepted[4],
			n_roundtrips, max_total, max_largest, max_ratio_raw, max_ratio_len,
			max_ratio_len_total, max_ratio_len_size);
}

static size_t budget_factor = 3;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *f = getenv("FUZZ_BUDGET_FACTOR");

	if (f && atoi(f) > 0)
		budget_factor = atoi(f);
	atexit(print_stats);
	return 0;
}

/* ---- invariants of what a reader returns ---- */

static void
check_string(const char *s, bool nonempty, const char *kind)
{
	CHECK(s != NULL, kind);
	CHECK(stub_utf8_valid((const unsigned char *) s, (int) strlen(s)), kind);
	if (nonempty)
		CHECK(s[0] != '\0', kind);
}

static void
check_table(const MsgTable *t, bool named, const char *kind)
{
	int			i;

	check_string(t->name, named, kind);
	CHECK(t->ncols >= 0, kind);
	CHECK(t->ncols == 0 || (t->colnames != NULL && t->coltypes != NULL), kind);
	for (i = 0; i < t->ncols; i++)
	{
		check_string(t->colnames[i], true, kind);
		check_string(t->coltypes[i], true, kind);
	}
}

static void
check_row(const MsgRow *row, int ncols, bool values_allowed, const char *kind)
{
	int			i;

	check_string(row->key, false, kind);
	CHECK(strlen(row->key) <= REGISTRY_MAX_KEY_LEN, kind);
	CHECK(row->state >= ROW_LIVE && row->state <= ROW_TOO_LARGE, kind);
	if (row->state == ROW_LIVE || row->state == ROW_TOMBSTONE ||
		row->state == ROW_TOO_LARGE)
	{
		CHECK(row->version > 0 && row->version <= (RegVersion) PG_INT64_MAX, kind);
		CHECK(registry_valid_node_name(row->origin), kind);
	}
	if (row->values != NULL)
	{
		CHECK(row->state == ROW_LIVE && values_allowed && ncols > 0, kind);
		for (i = 0; i < ncols; i++)
			if (row->values[i] != NULL)
				check_string(row->values[i], false, kind);
	}
	else
		CHECK(row->state != ROW_LIVE || !values_allowed || ncols == 0, kind);
}

static void
check_changes(const MsgChanges *m)
{
	const char *k = "changes";
	int			i;

	CHECK(registry_valid_node_name(m->node), k);
	CHECK(m->status >= CHANGES_OK && m->status <= CHANGES_EPOCH, k);
	CHECK(m->ntables >= 0 && m->n >= 0, k);
	CHECK(m->status == CHANGES_OK || (m->ntables == 0 && m->n == 0), k);
	if (m->status == CHANGES_OK)
		CHECK(m->upto_seq <= m->last_seq, k);
	for (i = 0; i < m->ntables; i++)
	{
		const MsgTable *t = &m->tables[i];

		check_table(t, false, k);
		if (m->with_rows && t->name[0] != '\0')
			CHECK(t->ncols > 0, k);
		else
			CHECK(t->ncols == 0, k);
	}
	for (i = 0; i < m->n; i++)
	{
		const MsgChange *c = &m->changes[i];

		CHECK(i == 0 || c->seq > m->changes[i - 1].seq, k);
		CHECK(c->seq > 0 && c->seq <= m->upto_seq, k);
		CHECK(c->table >= 0 && c->table < m->ntables, k);
		check_string(c->key, false, k);
		CHECK(strlen(c->key) <= REGISTRY_MAX_KEY_LEN, k);
		/* "" when the serving node no longer knows the origin */
		check_string(c->origin, false, k);
		CHECK(c->origin[0] == '\0' || registry_valid_node_name(c->origin), k);
		CHECK(c->op == REG_OP_INSERT || c->op == REG_OP_UPDATE ||
			  c->op == REG_OP_DELETE || c->op == REG_OP_RESYNC, k);
		CHECK((int64) c->version >= 0, k);
		CHECK(c->row.key != NULL && strcmp(c->row.key, c->key) == 0, k);
		if (m->with_rows)
		{
			const MsgTable *t = &m->tables[c->table];

			check_row(&c->row, t->ncols, true, k);
			if (c->op == REG_OP_RESYNC || t->name[0] == '\0')
				CHECK(c->row.state == ROW_UNKNOWN, k);
			else
				CHECK(c->row.state != ROW_UNKNOWN, k);
		}
		else
		{
			CHECK(c->row.state == ROW_UNKNOWN && c->row.values == NULL, k);
			CHECK(c->row.origin == c->origin, k);
		}
	}
}

static void
check_digest(const MsgDigest *m)
{
	const char *k = "digest";
	int			i;
	uint64		x = 0;

	CHECK(registry_valid_node_name(m->node), k);
	check_string(m->table, true, k);
	CHECK(m->nbuckets > 0 && m->nbuckets <= MSG_MAX_BUCKETS &&
		  (m->nbuckets & (m->nbuckets - 1)) == 0, k);
	CHECK(m->live >= 0 && m->tombstones >= 0, k);
	CHECK(m->lo >= 0 && m->width >= 0 && m->n >= 0, k);
	CHECK(m->n == 0 ||
		  (m->width > 0 && (int64) m->lo + (int64) m->n * m->width <= m->nbuckets), k);
	for (i = 0; i < m->n; i++)
		x ^= m->digests[i];		/* touch every one */
	(void) x;
}

static void
check_entries(const MsgEntries *m)
{
	const char *k = "entries";
	int			i;

	check_table(&m->table, true, k);
	CHECK(m->nbuckets > 0 && m->nbuckets <= MSG_MAX_BUCKETS &&
		  (m->nbuckets & (m->nbuckets - 1)) == 0, k);
	CHECK(m->with_rows ? m->table.ncols > 0 : m->table.ncols == 0, k);
	CHECK(m->n >= 0, k);
	for (i = 0; i < m->n; i++)
	{
		check_row(&m->rows[i], m->table.ncols, m->with_rows, k);
		CHECK(m->rows[i].state == ROW_LIVE || m->rows[i].state == ROW_TOMBSTONE ||
			  (m->with_rows && m->rows[i].state == ROW_TOO_LARGE), k);
	}
	CHECK(m->more || m->next_khash == 0, k);
}

static void
check_rows(const MsgRows *m)
{
	const char *k = "rows";
	int			i;

	check_table(&m->table, true, k);
	CHECK(m->table.ncols > 0, k);
	CHECK(m->n >= 0, k);
	for (i = 0; i < m->n; i++)
	{
		check_row(&m->rows[i], m->table.ncols, true, k);
		CHECK(m->rows[i].state != ROW_UNKNOWN, k);
	}
}

static void
check_definitions(const MsgDefinitions *m)
{
	const char *k = "definitions";
	int			i;
	int			j;
	int			l;

	CHECK(registry_valid_node_name(m->node), k);
	CHECK(m->n >= 0, k);
	for (i = 0; i < m->n; i++)
	{
		const MsgDefTable *t = &m->tables[i];

		check_string(t->schema, true, k);
		check_string(t->name, true, k);
		CHECK(strlen(t->schema) < NAMEDATALEN && strlen(t->name) < NAMEDATALEN, k);
		CHECK(t->lease_ttl_ms == 0 ||
			  (t->lease_ttl_ms >= MSG_MIN_LEASE_TTL_MS &&
			   t->lease_ttl_ms <= MSG_MAX_LEASE_TTL_MS), k);
		CHECK(t->ncols >= 1 && t->ncols <= MSG_MAX_COLUMNS, k);
		for (j = 0; j < t->ncols; j++)
		{
			const MsgDefColumn *c = &t->cols[j];

			check_string(c->name, true, k);
			CHECK(strlen(c->name) < NAMEDATALEN, k);
			check_string(c->type, true, k);
			CHECK((c->flags & ~(MSG_COL_NOT_NULL | MSG_COL_GENERATED)) == 0, k);
			if (c->default_expr)
				check_string(c->default_expr, true, k);
			CHECK(!(c->flags & MSG_COL_GENERATED) || c->default_expr != NULL, k);
			for (l = 0; l < j; l++)
				CHECK(strcmp(t->cols[l].name, c->name) != 0, k);
		}
		CHECK(t->npk >= 1 && t->npk <= MSG_MAX_KEY_COLUMNS && t->npk <= t->ncols, k);
		for (j = 0; j < t->npk; j++)
		{
			CHECK(t->pk[j] >= 0 && t->pk[j] < t->ncols, k);
			CHECK(t->cols[t->pk[j]].flags & MSG_COL_NOT_NULL, k);
			for (l = 0; l < j; l++)
				CHECK(t->pk[l] != t->pk[j], k);
		}
	}
}

/* ---- re-encoding with the writers of message.c ---- */

/*
 * The writers the serving functions use (msg_write_*), each item's bytes
 * checked against its _size function as they are written.
 */
static MsgWriter W;

static void
size_check(Size written, Size promised, const char *what)
{
	if (written != promised)
	{
		fprintf(stderr, "==FUZZ== ROUND TRIP SIZE (%s): wrote %zu bytes, its _size function says %zu\n",
				what, (size_t) written, (size_t) promised);
		abort();
	}
}

/* a RegTable of a table descriptor read, as the writers take it */
static RegTable *
reg_table(const MsgTable *t)
{
	RegTable   *rt = palloc0(sizeof(RegTable));
	RowColumn  *cols = NULL;
	int			i;

	rt->qualname = t->name;
	rt->ncols = t->ncols;
	if (t->ncols > 0)
	{
		cols = palloc0(sizeof(RowColumn) * t->ncols);
		for (i = 0; i < t->ncols; i++)
		{
			cols[i].name = t->colnames[i];
			cols[i].typname = t->coltypes[i];
		}
	}
	rt->cols = cols;
	return rt;
}

static void
write_row(const MsgRow *r, int ncols)
{
	int			before = W.buf.len;

	msg_write_row(&W, r->key, r->state, r->version, r->origin, r->values, ncols);
	size_check(W.buf.len - before,
			   msg_row_size(r->key, r->state, r->origin, r->values, ncols), "row");
}

static void
encode_changes(const MsgChanges *m)
{
	RegTable  **tabs = palloc0(sizeof(RegTable *) * (m->ntables + 1));
	Size		tables_size = 0;
	int			before;
	int			i;

	/* a table no longer registered is "" on the wire, NULL to the writer */
	for (i = 0; i < m->ntables; i++)
	{
		tabs[i] = m->tables[i].name[0] == '\0' ? NULL : reg_table(&m->tables[i]);
		tables_size += msg_table_size(tabs[i], m->with_rows);
	}
	msg_writer_init(&W);
	msg_write_changes_begin(&W, m->node, m->epoch, m->first_seq, m->last_seq,
							m->status, m->with_rows, tabs, m->ntables);
	/* header, node, epoch, first, last, upto, status, with_rows, ntables, n */
	size_check(W.buf.len, MSG_HEADER + 4 + strlen(m->node) + 4 * 8 + 2 + 4 +
			   tables_size + 4, "changes begin (msg_table_size)");
	for (i = 0; i < m->n; i++)
	{
		const MsgChange *c = &m->changes[i];

		before = W.buf.len;
		msg_write_change(&W, c->seq, c->table, c->key, c->version, c->origin, c->op);
		size_check(W.buf.len - before, msg_change_size(c->key, c->origin), "change");
		if (m->with_rows)
			write_row(&c->row, m->tables[c->table].ncols);
	}
	msg_write_changes_end(&W, m->upto_seq, m->n);
}

static void
encode_digest(const MsgDigest *m)
{
	msg_writer_init(&W);
	msg_write_digest(&W, m);
}

static void
encode_entries(const MsgEntries *m)
{
	RegTable   *rt = reg_table(&m->table);
	int			before;
	int			i;

	msg_writer_init(&W);
	msg_write_entries_begin(&W, rt, m->nbuckets, m->with_rows);
	/* header, table, nbuckets, with_rows, n */
	size_check(W.buf.len, MSG_HEADER + msg_table_size(rt, m->with_rows) + 4 + 1 + 4,
			   "entries begin (msg_table_size)");
	for (i = 0; i < m->n; i++)
		write_row(&m->rows[i], m->table.ncols);
	before = W.buf.len;
	msg_write_entries_end(&W, m->n, m->more, m->next_khash);
	size_check(W.buf.len - before, msg_entries_end_size(m->more), "entries end");
}

static void
encode_rows(const MsgRows *m)
{
	RegTable   *rt = reg_table(&m->table);
	int			i;

	msg_writer_init(&W);
	msg_write_rows_begin(&W, rt);
	size_check(W.buf.len, MSG_HEADER + msg_table_size(rt, true) + 4,
			   "rows begin (msg_table_size)");
	for (i = 0; i < m->n; i++)
		write_row(&m->rows[i], m->table.ncols);
	msg_write_rows_end(&W, m->n);
}

static void
encode_definitions(const MsgDefinitions *m)
{
	int			i;

	msg_writer_init(&W);
	msg_write_definitions_begin(&W, m->node);
	for (i = 0; i < m->n; i++)
		msg_write_definition(&W, &m->tables[i]);
	msg_write_definitions_end(&W, m->n);
}

/* the payload of an accepted message, inflated if it was compressed */
static const char *
payload_of(const char *data, int len, uLongf *plen, char **tofree)
{
	uint32		rawlen;
	char	   *out;

	*tofree = NULL;
	if (!(data[3] & 1))
	{
		*plen = (uLongf) (len - MSG_HEADER);
		return data + MSG_HEADER;
	}
	rawlen = ((uint32) (unsigned char) data[4] << 24) |
		((uint32) (unsigned char) data[5] << 16) |
		((uint32) (unsigned char) data[6] << 8) | (uint32) (unsigned char) data[7];
	out = malloc((size_t) rawlen + 1);
	*plen = rawlen + 1;
	if (uncompress((Bytef *) out, plen, (const Bytef *) data + MSG_HEADER,
				   (uLong) (len - MSG_HEADER)) != Z_OK || *plen != rawlen)
		fail("an accepted compressed payload does not inflate to its raw length with zlib", "any");
	*tofree = out;
	return out;
}

static void
check_roundtrip(const char *data, int len, int which, void *m)
{
	StringInfo	b = &W.buf;
	uLongf		plen;
	char	   *tofree;
	const char *payload = payload_of(data, len, &plen, &tofree);

	switch (which)
	{
		case 0:
			encode_changes(m);
			break;
		case 1:
			encode_digest(m);
			break;
		case 2:
			encode_entries(m);
			break;
		case 3:
			encode_rows(m);
			break;
		case 4:
			encode_definitions(m);
			break;
	}
	if (memcmp(b->data, data, 3) != 0)
	{
		fprintf(stderr, "==FUZZ== ROUND TRIP MISMATCH (%s reader): header %02x %02x %02x, re-encoded %02x %02x %02x\n",
				kind_names[which], (unsigned char) data[0], (unsigned char) data[1],
				(unsigned char) data[2], (unsigned char) b->data[0],
				(unsigned char) b->data[1], (unsigned char) b->data[2]);
		abort();
	}
	if ((uLongf) (b->len - MSG_HEADER) != plen ||
		memcmp(b->data + MSG_HEADER, payload, plen) != 0)
	{
		uLongf		i;

		for (i = 0; i < plen && (int) (i + MSG_HEADER) < b->len; i++)
			if (b->data[MSG_HEADER + i] != payload[i])
				break;
		fprintf(stderr, "==FUZZ== ROUND TRIP MISMATCH (%s reader): payload %lu bytes, "
				"re-encoded %d bytes, first difference at payload offset %lu\n",
				kind_names[which], (unsigned long) plen, b->len - MSG_HEADER,
				(unsigned long) i);
		abort();
	}
	free(tofree);
	n_roundtrips++;
}

/* ---- mutations that see through compression ---- */

/*
 * Byte mutations of a compressed message almost never give a stream that
 * inflates, so the payload readers would only ever see payloads the seeds
 * hold.  So, some of the time: inflate the payload, mutate it with
 * libFuzzer's own mutators, deflate it again and fix the header's raw
 * length (or not, once in a while); compress a plain message; or inflate
 * a compressed one.  The rest of the time, libFuzzer's plain mutations.
 */
extern size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);

#define MUTATE_MAX_RAW	(1024 * 1024)

static void
put_be32(uint8_t *p, uint32 v)
{
	p[0] = (uint8_t) (v >> 24);
	p[1] = (uint8_t) (v >> 16);
	p[2] = (uint8_t) (v >> 8);
	p[3] = (uint8_t) v;
}

/* message = header with flags and raw length of raw[0..rawlen), compressed; 0 if it does not fit */
static size_t
make_compressed(uint8_t *data, size_t max_size, const uint8_t *raw, size_t rawlen,
				uint32 claimed_rawlen)
{
	uLongf		clen = compressBound(rawlen);
	uint8_t    *tmp = malloc(clen);
	size_t		result = 0;

	if (compress2(tmp, &clen, raw, rawlen, Z_BEST_SPEED) == Z_OK &&
		MSG_HEADER + clen <= max_size)
	{
		data[3] |= 1;
		put_be32(data + 4, claimed_rawlen);
		memcpy(data + MSG_HEADER, tmp, clen);
		result = MSG_HEADER + clen;
	}
	free(tmp);
	return result;
}

size_t
LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
	unsigned int choice = seed % 16;

	if (size >= MSG_HEADER && data[0] == 'R' && choice < 6)
	{
		uint32		rawlen = ((uint32) data[4] << 24) | ((uint32) data[5] << 16) |
		((uint32) data[6] << 8) | data[7];

		if ((data[3] & 1) && rawlen <= MUTATE_MAX_RAW)
		{
			/* a compressed message: work on what it inflates to */
			uLongf		have = rawlen;
			size_t		room = rawlen + 4096;
			uint8_t    *raw = malloc(room);
			size_t		result = 0;

			if (uncompress(raw, &have, data + MSG_HEADER, size - MSG_HEADER) == Z_OK &&
				have == rawlen)
			{
				if (choice == 0 && MSG_HEADER + have <= max_size)
				{
					/* send it uncompressed */
					data[3] &= ~1;
					memcpy(data + MSG_HEADER, raw, have);
					result = MSG_HEADER + have;
				}
				else
				{
					size_t		newlen = LLVMFuzzerMutate(raw, have, room);
					uint32		claimed = (choice == 1) ? rawlen : (uint32) newlen;

					result = make_compressed(data, max_size, raw, newlen, claimed);
				}
			}
			free(raw);
			if (result > 0)
				return result;
		}
		else if (!(data[3] & 1) && choice < 2 && size - MSG_HEADER == rawlen)
		{
			/* a plain message: compress it */
			uint8_t    *raw = malloc(size - MSG_HEADER + 1);
			size_t		result;

			memcpy(raw, data + MSG_HEADER, size - MSG_HEADER);
			result = make_compressed(data, max_size, raw, size - MSG_HEADER,
									 (uint32) (size - MSG_HEADER));
			free(raw);
			if (result > 0)
				return result;
		}
	}
	return LLVMFuzzerMutate(data, size, max_size);
}

/* ---- the target ---- */

int
LLVMFuzzerTestOneInput(const uint8_t *input, size_t size)
{
	char	   *data;
	int			len;
	size_t		raw;
	size_t		limit;
	int			which;
	jmp_buf		jb;

	if (size > 16 * 1024 * 1024)
		return 0;
	n_inputs++;
	len = (int) size;
	/* a copy of exactly the input's size: reading past it is caught */
	data = malloc(size ? size : 1);
	memcpy(data, input, size);

	raw = size;
	if (size >= MSG_HEADER && (data[3] & 1))
	{
		size_t		claimed = ((size_t) (unsigned char) data[4] << 24) |
		((size_t) (unsigned char) data[5] << 16) |
		((size_t) (unsigned char) data[6] << 8) | (size_t) (unsigned char) data[7];

		if (claimed > (size_t) registry_max_message_size)
			claimed = registry_max_message_size;
		raw = Max(raw, claimed);
	}
	limit = budget_factor * raw + 1024 * 1024;
	if (size >= MSG_HEADER && (data[3] & 1))
		limit += raw + 1;

	for (which = 0; which < 5; which++)
	{
		union
		{
			MsgChanges	c;
			MsgDigest	d;
			MsgEntries	e;
			MsgRows		r;
			MsgDefinitions t;
		}			m;
		volatile bool ok = false;

		memset(&m, 0x7f, sizeof(m));	/* nothing left unset goes unnoticed */
		stub_alloc_begin(limit);
		if (STUB_TRY(jb))
		{
			switch (which)
			{
				case 0:
					msg_read_changes(data, len, &m.c);
					break;
				case 1:
					msg_read_digest(data, len, &m.d);
					break;
				case 2:
					msg_read_entries(data, len, &m.e);
					break;
				case 3:
					msg_read_rows(data, len, &m.r);
					break;
				case 4:
					msg_read_definitions(data, len, &m.t);
					break;
			}
			ok = true;
		}
		STUB_END_TRY();

		/* figures of the decoding alone */
		if (stub_alloc_total() > max_total)
			max_total = stub_alloc_total();
		if (stub_alloc_largest() > max_largest)
			max_largest = stub_alloc_largest();
		if (raw >= 1024 * 1024 && (double) stub_alloc_total() / raw > max_ratio_raw)
			max_ratio_raw = (double) stub_alloc_total() / raw;
		if (size > 0 && (double) stub_alloc_total() / size > max_ratio_len)
		{
			max_ratio_len = (double) stub_alloc_total() / size;
			max_ratio_len_size = size;
			max_ratio_len_total = stub_alloc_total();
		}

		if (ok)
		{
			n_accepted[which]++;
			stub_alloc_counting(false);
			if (STUB_TRY(jb))
			{
				switch (which)
				{
					case 0:
						check_changes(&m.c);
						break;
					case 1:
						check_digest(&m.d);
						break;
					case 2:
						check_entries(&m.e);
						break;
					case 3:
						check_rows(&m.r);
						break;
					case 4:
						check_definitions(&m.t);
						break;
				}
				check_roundtrip(data, len, which, &m);
			}
			else
			{
				fprintf(stderr, "==FUZZ== ERROR while re-encoding an accepted message: %s\n",
						stub_error_message());
				abort();
			}
			STUB_END_TRY();
		}
		stub_alloc_reset();
	}
	free(data);
	return 0;
}
