/*
 * gen_corpus.c: writes the seed corpus for decoder_fuzz: well-formed
 * messages of every kind (C changes, D digest, E bucket entries, R rows,
 * T table definitions),
 * each uncompressed and zlib-compressed: built field by field with the
 * harness's own writers (wire.h) and finished (header, compression) by
 * src/message.c's msg_finish_copy, as the serving functions finish
 * theirs; decoder_fuzz re-encodes each with the serving functions'
 * writers.  Every seed is read back with its reader, which
 * must accept it, and the example of docs/protocol.md 2.11 must come out
 * byte for byte.  Exits non-zero otherwise.
 *
 * With a second directory, it also writes there valid messages made to
 * take the most memory a reader can be made to allocate (see gen_stress),
 * for scripts/fuzz/run to check against the harness's memory bound.
 *
 * Usage: gen_corpus DIR [STRESS_DIR]   (scripts/fuzz/run builds and runs it)
 */
#include "postgres.h"

#include "message.h"
#include "registry.h"

#include "pg_stubs.h"
#include "wire.h"

#include <stdlib.h>

#define MAX_SEED	(64 * 1024)		/* the fuzzer's -max_len */

static const char *outdir;
static const char *stressdir;
static int	nwritten;
static int	nfailed;

static void
write_file(const char *name, const char *data, int len)
{
	char		path[1024];
	FILE	   *f;

	snprintf(path, sizeof(path), "%s/%s", outdir, name);
	f = fopen(path, "wb");
	if (f == NULL || fwrite(data, 1, len, f) != (size_t) len || fclose(f) != 0)
	{
		perror(path);
		exit(1);
	}
	nwritten++;
}

/* read a message back with the reader of its kind; false if it errors */
static bool
decodes(const char *data, int len)
{
	jmp_buf		jb;
	bool		ok = false;

	stub_alloc_counting(false);
	if (STUB_TRY(jb))
	{
		MsgChanges	c;
		MsgDigest	d;
		MsgEntries	e;
		MsgRows		r;
		MsgDefinitions t;

		switch (len > 2 ? data[2] : 0)
		{
			case 'C':
				msg_read_changes(data, len, &c);
				break;
			case 'D':
				msg_read_digest(data, len, &d);
				break;
			case 'E':
				msg_read_entries(data, len, &e);
				break;
			case 'R':
				msg_read_rows(data, len, &r);
				break;
			case 'T':
				msg_read_definitions(data, len, &t);
				break;
		}
		ok = true;
	}
	else
		fprintf(stderr, "gen_corpus: %s\n", stub_error_message());
	STUB_END_TRY();
	return ok;
}

/*
 * Finish the message in b twice, uncompressed and compressed (when that
 * is shorter), check each reads back, and write those that fit.
 */
static void
emit(StringInfo b, const char *name)
{
	int			pass;

	for (pass = 0; pass < 2; pass++)
	{
		bytea	   *m;
		char		fname[256];

		registry_compress_threshold = pass == 0 ? -1 : 0;
		m = msg_finish_copy(b);
		if (pass == 1 && !(VARDATA(m)[3] & 1))
			continue;			/* did not shrink: same as pass 0 */
		if (!decodes(VARDATA(m), VARSIZE(m) - VARHDRSZ))
		{
			fprintf(stderr, "gen_corpus: seed %s (%s) does not read back\n",
					name, pass ? "compressed" : "plain");
			nfailed++;
			continue;
		}
		if (VARSIZE(m) - VARHDRSZ > MAX_SEED)
			continue;
		snprintf(fname, sizeof(fname), "%s%s", name, pass ? "-z" : "");
		write_file(fname, VARDATA(m), VARSIZE(m) - VARHDRSZ);
	}
	registry_compress_threshold = 4096;
}

static void
put_table(StringInfo b, const char *name, int ncols, const char **cols)
{
	RegTable	t;
	RowColumn	rc[2048];
	int			i;

	memset(&t, 0, sizeof(t));
	t.qualname = (char *) name;
	t.ncols = ncols;
	t.cols = rc;
	for (i = 0; i < ncols; i++)
	{
		memset(&rc[i], 0, sizeof(RowColumn));
		rc[i].name = (char *) cols[2 * i];
		rc[i].typname = (char *) cols[2 * i + 1];
	}
	wire_table(b, &t, ncols > 0);
}

static const char *kv_cols[] = {"k", "text", "v", "integer"};
static const char *wide_cols[] = {
	"id", "bigint", "name", "text", "tags", "text[]",
	"doc", "jsonb", "at", "timestamp with time zone", "mood", "public.mood"
};

#define V(ms, l)	HLC_MAKE(ms, l)
#define T0			UINT64CONST(1700000000000)

/* ---- C: changes ---- */

static void
changes_header(StringInfo b, const char *node, uint64 epoch, uint64 first,
			   uint64 last, uint64 upto, int status, bool with_rows)
{
	wire_begin(b, 'C');
	wire_string(b, node);
	wire_int64(b, (int64) epoch);
	wire_int64(b, (int64) first);
	wire_int64(b, (int64) last);
	wire_int64(b, (int64) upto);
	wire_byte(b, status);
	wire_byte(b, with_rows);
}

static void
change(StringInfo b, uint64 seq, int table, const char *key, RegVersion v,
	   const char *origin, char op)
{
	wire_int64(b, (int64) seq);
	wire_int32(b, table);
	wire_string(b, key);
	wire_int64(b, (int64) v);
	wire_string(b, origin);
	wire_byte(b, op);
}

static void
gen_changes(void)
{
	StringInfoData b;
	int			status;
	int			i;
	char		key[64];
	char		val[64];
	char	   *vals[6];

	changes_header(&b, "node1", 7, 1, 0, 0, 0, false);
	wire_int32(&b, 0);
	wire_int32(&b, 0);
	emit(&b, "C-empty");

	for (status = 1; status <= 2; status++)
	{
		changes_header(&b, "node-2.example:5432", 7, 100, 200, 0, status, status == 1);
		wire_int32(&b, 0);
		wire_int32(&b, 0);
		emit(&b, status == 1 ? "C-gap" : "C-epoch");
	}

	/* without rows: a registered table, a dropped one ("") */
	changes_header(&b, "a@b", 3, 1, 10, 9, 0, false);
	wire_int32(&b, 2);
	put_table(&b, "public.kv", 0, NULL);
	put_table(&b, "", 0, NULL);
	wire_int32(&b, 5);
	change(&b, 2, 0, "a", V(T0, 0), "n1", REG_OP_INSERT);
	change(&b, 3, 0, "a", V(T0, 1), "n2", REG_OP_UPDATE);
	change(&b, 5, 1, "x", V(T0 + 5, 0), "n1", REG_OP_DELETE);
	change(&b, 6, 0, "", V(T0 + 6, 0), "n1", REG_OP_RESYNC);
	change(&b, 9, 0, "b", V(T0 + 7, 3), "", REG_OP_DELETE);	/* origin forgotten */
	emit(&b, "C-norows");

	/* with rows: every state a change's row may have */
	changes_header(&b, "n1", UINT64CONST(0xfedcba9876543210), 5, 40, 40, 0, true);
	wire_int32(&b, 3);
	put_table(&b, "public.kv", 2, kv_cols);
	put_table(&b, "", 0, NULL);
	put_table(&b, "s.\"Wide\"", 6, wide_cols);
	wire_int32(&b, 8);
	vals[0] = "a";
	vals[1] = "1";
	change(&b, 5, 0, "a", V(T0, 0), "n1", REG_OP_INSERT);
	wire_row(&b, "a", ROW_LIVE, V(T0, 0), "n1", vals, 2);
	vals[1] = NULL;
	change(&b, 6, 0, "a", V(T0, 1), "n1", REG_OP_UPDATE);
	wire_row(&b, "a", ROW_LIVE, V(T0, 2), "n2", vals, 2);
	change(&b, 7, 0, "a", V(T0, 3), "n1", REG_OP_DELETE);
	wire_row(&b, "a", ROW_TOMBSTONE, V(T0, 3), "n1", NULL, 2);
	change(&b, 8, 0, "gone", V(T0, 4), "n1", REG_OP_DELETE);
	wire_row(&b, "gone", ROW_ABSENT, 0, NULL, NULL, 2);
	change(&b, 9, 0, "big", V(T0, 5), "n1", REG_OP_INSERT);
	wire_row(&b, "big", ROW_TOO_LARGE, V(T0, 5), "n1", NULL, 2);
	change(&b, 10, 0, "", V(T0, 6), "n1", REG_OP_RESYNC);
	wire_row(&b, "", ROW_UNKNOWN, 0, NULL, NULL, 2);
	change(&b, 12, 1, "old", V(T0, 7), "n9", REG_OP_UPDATE);
	wire_row(&b, "old", ROW_UNKNOWN, 0, NULL, NULL, 0);
	vals[0] = "42";
	vals[1] = "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82";
	vals[2] = "{a,\"b c\",NULL}";
	vals[3] = "{\"k\": [1, 2.5, null, \"\\u0000x\"]}";
	vals[4] = "2024-02-29 23:59:59.999999+00";
	vals[5] = NULL;
	change(&b, 40, 2, "42", V(T0 + 9, 0), "n1", REG_OP_INSERT);
	wire_row(&b, "42", ROW_LIVE, V(T0 + 9, 0), "n1", vals, 6);
	emit(&b, "C-rows");

	/* many changes, with rows: large enough to be compressed */
	changes_header(&b, "n1", 1, 1, 1000, 1000, 0, true);
	wire_int32(&b, 1);
	put_table(&b, "public.kv", 2, kv_cols);
	wire_int32(&b, 300);
	for (i = 0; i < 300; i++)
	{
		snprintf(key, sizeof(key), "key-%d", i);
		snprintf(val, sizeof(val), "%d", i * 7919);
		vals[0] = key;
		vals[1] = val;
		change(&b, 1 + 3 * i, 0, key, V(T0 + i, i), i % 2 ? "n1" : "n2",
			   i % 3 == 2 ? REG_OP_DELETE : REG_OP_INSERT);
		if (i % 3 == 2)
			wire_row(&b, key, ROW_TOMBSTONE, V(T0 + i, i), i % 2 ? "n1" : "n2", NULL, 2);
		else
			wire_row(&b, key, ROW_LIVE, V(T0 + i, i), i % 2 ? "n1" : "n2", vals, 2);
	}
	emit(&b, "C-many");
}

/* ---- D: digest ---- */

static void
digest(const char *name, int nbuckets, int lo, int width, int n)
{
	StringInfoData b;
	int			i;

	wire_begin(&b, 'D');
	wire_string(&b, "node1");
	wire_string(&b, "public.kv");
	wire_int32(&b, nbuckets);
	wire_int64(&b, (int64) UINT64CONST(0x8000000000000001));
	wire_int64(&b, 12345);
	wire_int64(&b, 67);
	wire_int32(&b, lo);
	wire_int32(&b, width);
	wire_int32(&b, n);
	for (i = 0; i < n; i++)
		wire_int64(&b, (int64) (UINT64CONST(0x9e3779b97f4a7c15) * (i + 1)));
	emit(&b, name);
}

static void
gen_digest(void)
{
	digest("D-none", 1, 0, 0, 0);
	digest("D-one", 1, 0, 1, 1);
	digest("D-ranges", 1024, 0, 4, 256);
	digest("D-tail", 1 << 24, (1 << 24) - 64, 16, 4);
	digest("D-many", 4096, 0, 1, 4096);
}

/* ---- E: bucket entries ---- */

static void
gen_entries(void)
{
	StringInfoData b;
	char	   *vals[2];
	char		key[32];
	int			i;

	wire_begin(&b, 'E');
	put_table(&b, "public.kv", 0, NULL);
	wire_int32(&b, 256);
	wire_byte(&b, 0);
	wire_int32(&b, 2);
	wire_row(&b, "a", ROW_LIVE, V(T0, 0), "n1", NULL, 0);
	wire_row(&b, "b", ROW_TOMBSTONE, V(T0, 1), "n2", NULL, 0);
	wire_byte(&b, 0);
	emit(&b, "E-norows");

	wire_begin(&b, 'E');
	put_table(&b, "public.kv", 2, kv_cols);
	wire_int32(&b, 1 << 16);
	wire_byte(&b, 1);
	wire_int32(&b, 3);
	vals[0] = "a";
	vals[1] = NULL;
	wire_row(&b, "a", ROW_LIVE, V(T0, 0), "n1", vals, 2);
	wire_row(&b, "b", ROW_TOO_LARGE, V(T0, 1), "n1", NULL, 2);
	wire_row(&b, "c", ROW_TOMBSTONE, V(T0, 2), "n1", NULL, 2);
	wire_byte(&b, 1);
	wire_int32(&b, khash_to_int4(0xdeadbeef));
	emit(&b, "E-rows-more");

	wire_begin(&b, 'E');
	put_table(&b, "public.kv", 2, kv_cols);
	wire_int32(&b, 1);
	wire_byte(&b, 1);
	wire_int32(&b, 500);
	for (i = 0; i < 500; i++)
	{
		snprintf(key, sizeof(key), "%d", i);
		vals[0] = key;
		vals[1] = "{\"host\": \"db1.example.com\", \"port\": 5432}";
		wire_row(&b, key, ROW_LIVE, V(T0 + i, 0), "n1", vals, 2);
	}
	wire_byte(&b, 0);
	emit(&b, "E-many");
}

/* ---- R: rows ---- */

static const char doc_example[] =
	"52 01 52 00 00 00 00 5f"
	"00 00 00 09 70 75 62 6c 69 63 2e 6b 76"
	"00 00 00 02"
	"00 00 00 01 6b  00 00 00 04 74 65 78 74"
	"00 00 00 01 76  00 00 00 07 69 6e 74 65 67 65 72"
	"00 00 00 02"
	"00 00 00 01 61  01"
	"01 a2 00 ea 03 35 00 00"
	"00 00 00 07 64 6f 63 6e 6f 64 65"
	"00 00 00 02  00 00 00 01 61  00 00 00 01 31"
	"00 00 00 01 62  03";

static void
gen_rows(void)
{
	StringInfoData b;
	char	   *vals[1024];
	char		bytes[256];
	int			n = 0;
	const char *p;
	bytea	   *m;
	static char longkey[REGISTRY_MAX_KEY_LEN + 1];
	static const char *many_cols[2 * 1000];
	static char colnames[1000][8];
	static char bigval[32769];
	int			i;

	/* docs/protocol.md 2.11, which must match byte for byte */
	wire_begin(&b, 'R');
	put_table(&b, "public.kv", 2, kv_cols);
	wire_int32(&b, 2);
	vals[0] = "a";
	vals[1] = "1";
	wire_row(&b, "a", ROW_LIVE, UINT64CONST(117657545341206528), "docnode", vals, 2);
	wire_row(&b, "b", ROW_ABSENT, 0, NULL, NULL, 2);
	for (p = doc_example; *p; p++)
	{
		unsigned int v;

		if (*p == ' ')
			continue;
		sscanf(p, "%2x", &v);
		bytes[n++] = (char) v;
		p++;
	}
	registry_compress_threshold = -1;
	m = msg_finish_copy(&b);
	if (VARSIZE(m) - VARHDRSZ != n || memcmp(VARDATA(m), bytes, n) != 0)
	{
		fprintf(stderr, "gen_corpus: the example of docs/protocol.md 2.11 does not match the writer\n");
		nfailed++;
	}
	emit(&b, "R-doc-example");

	wire_begin(&b, 'R');
	put_table(&b, "s.\"Wide\"", 6, wide_cols);
	wire_int32(&b, 4);
	vals[0] = "1";
	vals[1] = "";
	vals[2] = NULL;
	vals[3] = "{}";
	vals[4] = "infinity";
	vals[5] = "happy";
	wire_row(&b, "1", ROW_LIVE, V(T0, 0), "n1", vals, 6);
	wire_row(&b, "2", ROW_TOMBSTONE, V(T0, 1), "n.2", NULL, 6);
	wire_row(&b, "3", ROW_ABSENT, 0, NULL, NULL, 6);
	wire_row(&b, "4", ROW_TOO_LARGE, V(T0, 2), "n1", NULL, 6);
	emit(&b, "R-states");

	/* the longest key there can be, and an origin of 63 bytes */
	memset(longkey, 'k', REGISTRY_MAX_KEY_LEN);
	wire_begin(&b, 'R');
	put_table(&b, "public.kv", 2, kv_cols);
	wire_int32(&b, 1);
	wire_row(&b, longkey, ROW_TOMBSTONE, (RegVersion) PG_INT64_MAX,
				"o23456789012345678901234567890123456789012345678901234567890123",
				NULL, 2);
	emit(&b, "R-longkey");

	/* 1000 columns, all NULL: the most memory per byte a row can take */
	for (i = 0; i < 1000; i++)
	{
		snprintf(colnames[i], sizeof(colnames[i]), "c%d", i);
		many_cols[2 * i] = colnames[i];
		many_cols[2 * i + 1] = "text";
		vals[i] = NULL;
	}
	wire_begin(&b, 'R');
	put_table(&b, "public.wide", 1000, many_cols);
	wire_int32(&b, 20);
	for (i = 0; i < 20; i++)
	{
		char		key[16];

		snprintf(key, sizeof(key), "%d", i);
		wire_row(&b, key, ROW_LIVE, V(T0, i), "n1", vals, 1000);
	}
	emit(&b, "R-nulls");

	/*
	 * values of 32768 bytes: each needs a string block of its own (the
	 * most string memory per byte); large raw payload, small compressed
	 */
	memset(bigval, 'x', sizeof(bigval) - 1);
	wire_begin(&b, 'R');
	put_table(&b, "public.kv", 2, kv_cols);
	wire_int32(&b, 64);
	for (i = 0; i < 64; i++)
	{
		char		key[16];

		snprintf(key, sizeof(key), "%d", i);
		vals[0] = key;
		vals[1] = bigval;
		wire_row(&b, key, ROW_LIVE, V(T0, i), "n1", vals, 2);
	}
	emit(&b, "R-bigvalues");
}

/* ---- stress: valid messages that take the most memory to read ---- */

/*
 * A rows message of a table with ncols columns whose names are namelen
 * bytes, then nrows rows "" absent (5 bytes on the wire, a MsgRow of 40
 * in memory: what fills the reader's budget fastest).  Names of just over
 * half the reader's 64 kB string blocks each take a block of their own.
 */
static void
stress_rows(const char *name, int ncols, int namelen, int nrows)
{
	StringInfoData b;
	static char colname[70000];
	bytea	   *m;
	int			i;
	const char *save = outdir;

	wire_begin(&b, 'R');
	wire_string(&b, "public.t");
	wire_int32(&b, ncols);
	for (i = 0; i < ncols; i++)
	{
		memset(colname, 'c', namelen);
		snprintf(colname + namelen - 4, 5, "%04d", i);
		wire_string(&b, colname);
		wire_string(&b, "t");
	}
	wire_int32(&b, nrows);
	for (i = 0; i < nrows; i++)
		wire_row(&b, "", ROW_ABSENT, 0, NULL, NULL, ncols);
	registry_compress_threshold = 0;
	m = msg_finish_copy(&b);
	registry_compress_threshold = 4096;
	if (!decodes(VARDATA(m), VARSIZE(m) - VARHDRSZ))
	{
		fprintf(stderr, "gen_corpus: stress message %s does not read back\n", name);
		nfailed++;
		return;
	}
	outdir = stressdir;
	write_file(name, VARDATA(m), VARSIZE(m) - VARHDRSZ);
	outdir = save;
}

/* a table definition: (name, type, flags, default) columns, key indexes */
static void
put_definition(StringInfo b, const char *schema, const char *name,
			   int64 ttl, int ncols, const char **cols, int npk, const int *pk)
{
	int			i;

	wire_string(b, schema);
	wire_string(b, name);
	wire_int64(b, ttl);
	wire_int32(b, ncols);
	for (i = 0; i < ncols; i++)
	{
		wire_string(b, cols[4 * i]);
		wire_string(b, cols[4 * i + 1]);
		wire_byte(b, cols[4 * i + 2][0] - '0');
		wire_string(b, cols[4 * i + 3]);
	}
	wire_int32(b, npk);
	for (i = 0; i < npk; i++)
		wire_int32(b, pk[i]);
}

static void
gen_definitions(void)
{
	static const char *svc[] = {
		"name", "text", "1", NULL,
		"port", "integer", "1", NULL,
		"meta", "jsonb", "0", "'{}'::jsonb",
		"created", "timestamp with time zone", "0", "now()",
		"label", "character varying(32)", "0", "'none'::character varying",
	};
	static const char *ep[] = {
		"svc", "text", "1", NULL,
		"idx", "integer", "1", NULL,
		"addr", "inet", "1", NULL,
		"tags", "text[]", "0", NULL,
		"full", "text", "2", "(svc || '/'::text)",
	};
	static const char *evil[] = {
		"k", "integer", "1", NULL,
		"a", "text", "0", "pg_read_file('/etc/passwd'::text)",
		"b", "public.color", "0", "'red'::public.color",
	};
	static const int pk1[] = {0};
	static const int pk2[] = {1, 0};
	static const char *wide[4 * 200];
	static char names[200][8];
	static int	widepk[32];
	StringInfoData b;
	int			i;

	wire_begin(&b, 'T');
	wire_string(&b, "n1");
	wire_int32(&b, 0);
	emit(&b, "T-empty");

	wire_begin(&b, 'T');
	wire_string(&b, "n1");
	wire_int32(&b, 3);
	put_definition(&b, "app", "endpoints", 0, 5, ep, 2, pk2);
	put_definition(&b, "public", "evil", 100, 3, evil, 1, pk1);
	put_definition(&b, "public", "svc", INT64CONST(31104000000), 5, svc, 1, pk1);
	emit(&b, "T-tables");

	for (i = 0; i < 200; i++)
	{
		snprintf(names[i], sizeof(names[i]), "c%d", i);
		wide[4 * i] = names[i];
		wide[4 * i + 1] = i % 2 ? "text" : "bigint";
		wide[4 * i + 2] = i < 32 ? "1" : "0";
		wide[4 * i + 3] = i % 3 ? NULL : "0";
	}
	for (i = 0; i < 32; i++)
		widepk[i] = 31 - i;
	wire_begin(&b, 'T');
	wire_string(&b, "node-2");
	wire_int32(&b, 2);
	put_definition(&b, "Odd \"schema\"", "wide", 30000, 200, wide, 32, widepk);
	put_definition(&b, "s", "t", 0, 1, svc, 1, pk1);
	emit(&b, "T-wide");
}

static void
gen_stress(void)
{
	/* names of 32760 bytes: two to a string block, no block wasted */
	stress_rows("R-budget-full-z", 64, 32760, 160000);
	/* names of 32770 bytes: one to a block, half of each block unused */
	stress_rows("R-budget-blocks-z", 64, 32770, 160000);
}

int
main(int argc, char **argv)
{
	if (argc != 2 && argc != 3)
	{
		fprintf(stderr, "usage: %s DIR [STRESS_DIR]\n", argv[0]);
		return 2;
	}
	outdir = argv[1];
	stressdir = argc == 3 ? argv[2] : NULL;
	stub_alloc_begin(0);
	gen_changes();
	gen_digest();
	gen_entries();
	gen_rows();
	gen_definitions();
	if (stressdir)
		gen_stress();
	stub_alloc_reset();
	printf("gen_corpus: %d seeds written to %s%s\n", nwritten, outdir,
		   nfailed ? "" : ", all read back");
	if (nfailed)
		fprintf(stderr, "gen_corpus: %d failures\n", nfailed);
	return nfailed ? 1 : 0;
}
