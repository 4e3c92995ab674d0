/*-------------------------------------------------------------------------
 *
 * serve.c
 *	  The functions peers call to pull from this node:
 *
 *	  registry.changes_since(after_seq, max_changes, with_rows, epoch,
 *							 exclude_origin, wait_ms)
 *							the change log from a seq on, waiting for it
 *	  registry.digest(tbl, nbuckets, lo, width, n)
 *							root and bucket-range digests of a table
 *	  registry.bucket_entries(tbl, nbuckets, buckets, with_rows, after_hash,
 *							  max_entries)
 *							(key, version, origin, deleted) of buckets
 *	  registry.fetch_rows(tbl, keys)		current rows with their versions
 *	  registry.table_pages(tbl, page_rows)	the whole table, page by page
 *
 * Each returns one message (message.h), zlib-compressed when large.  They
 * read only registered tables, under one snapshot per read, so a row and
 * its version are always consistent.  Values are written in the
 * canonical settings of keys.c (DateStyle, TimeZone, ...), switched to
 * only for tables with a column whose output depends on them.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"

#include "acks.h"
#include "changelog.h"
#include "digest.h"
#include "message.h"
#include "peer_status.h"
#include "node.h"
#include "registry.h"
#include "row_keys.h"
#include "rows.h"
#include "tombstones.h"

PG_FUNCTION_INFO_V1(registry_changes_since);
PG_FUNCTION_INFO_V1(registry_digest);
PG_FUNCTION_INFO_V1(registry_bucket_entries);
PG_FUNCTION_INFO_V1(registry_fetch_rows);
PG_FUNCTION_INFO_V1(registry_table_pages);

#define MAX_CHANGES_PER_CALL	100000
#define MAX_KEYS_PER_CALL		100000
#define MAX_ENTRIES_PER_CALL	1000000

static void
check_ready(void)
{
	if (!node_is_ready())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("registry node \"%s\" is still rebuilding its digests",
						registry_node_name),
				 errhint("Retry when registry.node shows state \"ready\".")));
}

/*
 * What an answer says of one key: its state, version and origin and, for
 * a live row asked for with values, the values.  Built before it is
 * written, so that its size can be weighed against the caller's limit.
 */
typedef struct RowOut
{
	const char *key;
	int			state;			/* ROW_* */
	RegVersion	version;
	char		origin[REGISTRY_NAME_LEN];
	char	  **values;			/* NULL unless a live row with values */
	int			ncols;
} RowOut;

/*
 * The smallest limit an answer honours: a table descriptor of 1600
 * columns and a key of registry.max_key_length fit well within it.
 */
#define MIN_ANSWER_BYTES	(1024 * 1024)

/*
 * The most an answer to this call may hold (raw payload bytes): what the
 * caller accepts (argument argno, NULL for this node's own limit), and
 * never more than this node's own registry.max_message_size.
 */
static int
answer_limit(FunctionCallInfo fcinfo, int argno)
{
	int32		want = registry_max_message_size;

	if (PG_NARGS() > argno && !PG_ARGISNULL(argno))
		want = PG_GETARG_INT32(argno);
	return Max(MIN_ANSWER_BYTES, Min(want, registry_max_message_size));
}

/* The bytes r takes in an answer. */
static Size
row_out_size(const RowOut *r)
{
	return msg_row_size(r->key, r->state, r->origin, r->values, r->ncols);
}

static void
write_row_out(MsgWriter *w, const RowOut *r)
{
	msg_write_row(w, r->key, r->state, r->version, r->origin, r->values,
				  r->ncols);
}

/*
 * A row whose values would not fit an answer on their own: sent with its
 * version and without values, so the receiver can say what it is missing.
 */
static void
row_out_too_large(RowOut *r)
{
	Assert(r->state == ROW_LIVE);
	r->state = ROW_TOO_LARGE;
	r->values = NULL;
}

/* Whether size more bytes keep the answer in w within limit. */
static bool
fits(MsgWriter *w, Size size, int limit)
{
	return (Size) msg_payload_len(&w->buf) + size <= (Size) limit;
}

/*
 * The current state of key (and its row, if live) under snap.  rl is an
 * open lookup on t; values are included only if with_values.
 */
static void
current_row(RegTable *t, RowLookup *rl, const char *key, bool with_values,
			Snapshot snap, RowOut *out)
{
	VersionState st;

	memset(out, 0, sizeof(RowOut));
	out->key = key;
	out->state = ROW_ABSENT;
	if (t == NULL)
	{
		out->state = ROW_UNKNOWN;
		return;
	}
	out->ncols = t->ncols;
	if (strlen(key) <= (size_t) registry_max_key_length && row_lookup(rl, key))
	{
		row_version(t, rl->slot, &st);
		if (!st.exists)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("row \"%s\" of registry table %s has no version",
							key, t->qualname),
					 errhint("Run registry.verify() on node \"%s\".", registry_node_name)));
		out->state = ROW_LIVE;
		out->version = st.version;
		strlcpy(out->origin, st.origin, sizeof(out->origin));
		out->values = with_values ? row_values(t, rl->slot) : NULL;
		return;
	}
	if (strlen(key) <= (size_t) registry_max_key_length &&
		tombstone_get(t->tid, keys_hash(key, strlen(key)), key, snap, &st))
	{
		out->state = ROW_TOMBSTONE;
		out->version = st.version;
		strlcpy(out->origin, st.origin, sizeof(out->origin));
	}
}

/*
 * The origins whose changes an answer leaves out (covered by upto_seq):
 * the caller itself (exclude_origin), and skip_origins, the nodes the
 * caller also pulls from directly (their own changes come to it from
 * them; forwarding them here too is what made a full mesh cost N(N-1)
 * per write).  Names the caller gives: checked, at most
 * registry.max_origins of them.
 */
static const char **
skip_origins(FunctionCallInfo fcinfo, int argno, const char *exclude, int *n)
{
	const char **names;
	Datum	   *elems = NULL;
	bool	   *nulls = NULL;
	int			nelems = 0;
	int			i;

	if (PG_NARGS() > argno && !PG_ARGISNULL(argno))
	{
		ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(argno);

		if (ARR_NDIM(arr) > 1)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("skip_origins must be a one-dimensional array")));
		deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT,
						  &elems, &nulls, &nelems);
		if (nelems > registry_max_origins)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("skip_origins has %d names; at most registry.max_nodes (%d) are accepted",
							nelems, registry_max_origins)));
	}
	names = palloc(sizeof(char *) * (nelems + 1));
	*n = 0;
	if (exclude)
		names[(*n)++] = exclude;
	for (i = 0; i < nelems; i++)
	{
		char	   *name;

		if (nulls[i])
			continue;
		name = TextDatumGetCString(elems[i]);
		if (!registry_valid_node_name(name))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("skip_origins holds an invalid node name")));
		names[(*n)++] = name;
	}
	return names;
}

static bool
origin_skipped(const char *origin, const char **skip, int nskip)
{
	int			i;

	for (i = 0; i < nskip; i++)
		if (strcmp(origin, skip[i]) == 0)
			return true;
	return false;
}

/*
 * registry.changes_since(after_seq bigint, max_changes int, with_rows bool,
 *						  epoch bigint, exclude_origin text, wait_ms int,
 *						  max_bytes int, skip_origins text[]) returns bytea
 *
 * An answer holds whole changes up to the caller's max_bytes; the first
 * change always goes, its row marked too large if it would not fit.
 */
Datum
registry_changes_since(PG_FUNCTION_ARGS)
{
	int64		after = PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0);
	int32		maxc = PG_ARGISNULL(1) ? 1000 : PG_GETARG_INT32(1);
	bool		with_rows = !PG_ARGISNULL(2) && PG_GETARG_BOOL(2);
	bool		check_epoch = !PG_ARGISNULL(3);
	uint64		their_epoch = check_epoch ? (uint64) PG_GETARG_INT64(3) : 0;
	char	   *exclude = PG_ARGISNULL(4) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(4));
	int32		wait_ms = PG_ARGISNULL(5) ? 0 : PG_GETARG_INT32(5);
	Snapshot	snap;
	int			nest = -1;
	ChangeLogChange *copy = NULL;
	int			ncopied = 0;
	uint64		first,
				last,
				epoch,
				upto;
	int			status = CHANGES_OK;
	int			i;
	MsgWriter	w;
	int32	   *tids;
	RegTable  **tables;
	int			ntables = 0;
	int			nchanges = 0;
	int			limit = answer_limit(fcinfo, 6);
	Size		desc_bytes = 0;
	const char **skip;
	int			nskip;

	registry_check_peer();
	skip = skip_origins(fcinfo, 7, exclude, &nskip);
	if (after < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("after_seq must not be negative")));
	maxc = Max(1, Min(maxc, MAX_CHANGES_PER_CALL));

	/*
	 * Hold until there is something after after_seq: a commit here wakes
	 * the caller at once (long polling), up to wait_ms.  Changes that came
	 * from the caller itself do not end the wait (it would only get an
	 * empty answer): they are stepped over, and the answer's upto_seq says
	 * how far.
	 */
	/*
	 * A node following this log asks for what comes after the last seq it
	 * applied: that is its acknowledgement (registry.wait_for_peers), noted
	 * before the long poll holds the request.  Only for nodes that are
	 * peers here: other names could push the peers' out of acks.c's slots.
	 */
	if (check_epoch && exclude && peer_status_is_peer(exclude))
	{
		ChangeLogStats st;

		changelog_stats(&st);
		if (st.epoch == their_epoch && (uint64) after <= st.last_seq)
			acks_note(exclude, their_epoch, (uint64) after);
	}

	if (wait_ms > 0)
		after = (int64) changelog_wait((uint64) after, maxc,
									   check_epoch ? &their_epoch : NULL,
									   skip, nskip, Min(wait_ms, 60000), true);

	ncopied = changelog_read((uint64) after, maxc, &copy, &first, &last, &epoch);
	upto = (uint64) after;
	if (check_epoch && their_epoch != epoch)
		status = CHANGES_EPOCH;
	else if ((uint64) after > last)
		status = CHANGES_EPOCH;	/* a seq we never issued: another epoch's */
	else if ((uint64) after + 1 < first)
		status = CHANGES_GAP;
	else
		upto = (uint64) after + ncopied;
	if (status != CHANGES_OK)
		ncopied = 0;

	/*
	 * The tables the changes refer to, in order of first appearance.  Their
	 * descriptors come first in the answer: they may take at most half of
	 * the caller's limit, and the changes of a table that would not fit
	 * are left for the next call.
	 */
	tids = palloc(sizeof(int32) * Max(ncopied, 1));
	tables = palloc(sizeof(RegTable *) * Max(ncopied, 1));
	for (i = 0; i < ncopied; i++)
	{
		ChangeLogChange *e = &copy[i];
		int			t;

		if (origin_skipped(e->origin, skip, nskip))
			continue;
		for (t = 0; t < ntables; t++)
			if (tids[t] == e->tid)
				break;
		if (t == ntables)
		{
			RegTable   *rt = regtable_by_tid(e->tid, true);
			Size		dsize = msg_table_size(rt, with_rows);

			if (ntables > 0 && desc_bytes + dsize > (Size) limit / 2)
			{
				ncopied = i;
				upto = e->seq - 1;
				break;
			}
			desc_bytes += dsize;
			tids[ntables] = e->tid;
			tables[ntables] = rt;
			ntables++;
		}
	}

	msg_writer_init(&w);
	msg_write_changes_begin(&w, registry_node_name, epoch, first, last,
							status, with_rows, tables, ntables);

	/* every change copied above is committed: a new snapshot sees it */
	snap = RegisterSnapshot(GetLatestSnapshot());
	for (i = 0; i < ntables && with_rows; i++)
		if (tables[i] && tables[i]->needs_canonical && nest < 0)
			keys_canonical_gucs_push(&nest);
	{
		RowLookup  *lookups = palloc0(sizeof(RowLookup) * Max(ntables, 1));

		if (with_rows)
			for (i = 0; i < ntables; i++)
				if (tables[i])
					row_lookup_begin(&lookups[i], tables[i], AccessShareLock, snap);

		for (i = 0; i < ncopied; i++)
		{
			ChangeLogChange *e = &copy[i];
			RowOut		row;
			Size		size;
			int			t;

			CHECK_FOR_INTERRUPTS();
			if (origin_skipped(e->origin, skip, nskip))
				continue;
			for (t = 0; t < ntables; t++)
				if (tids[t] == e->tid)
					break;
			size = msg_change_size(e->key, e->origin);
			if (with_rows)
			{
				current_row(e->op == REG_OP_RESYNC ? NULL : tables[t],
							&lookups[t], e->key, true, snap, &row);
				size += row_out_size(&row);
			}
			if (!fits(&w, size, limit))
			{
				if (nchanges > 0)
				{
					/* the rest is for the next call */
					upto = e->seq - 1;
					break;
				}
				if (with_rows && row.state == ROW_LIVE)
					row_out_too_large(&row);
			}
			msg_write_change(&w, e->seq, t, e->key, e->version, e->origin,
							 e->op);
			if (with_rows)
				write_row_out(&w, &row);
			nchanges++;
		}
		if (with_rows)
			for (i = 0; i < ntables; i++)
				if (tables[i])
					row_lookup_end(&lookups[i]);
	}
	msg_write_changes_end(&w, upto, nchanges);
	if (nest >= 0)
		keys_canonical_gucs_pop(nest);
	UnregisterSnapshot(snap);
	PG_RETURN_BYTEA_P(msg_finish(&w.buf));
}

static void
check_nbuckets(int nbuckets, int max)
{
	if (nbuckets <= 0 || nbuckets > max || (nbuckets & (nbuckets - 1)) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("nbuckets must be a power of two between 1 and %d", max)));
}

/*
 * The end of all WAL inserted so far, as a position XLogFlush() can reach.
 * GetXLogInsertRecPtr() points past the header of a page when the insert
 * position is at a page boundary; nothing is on that page yet, and asking
 * for it to be flushed is an error ("xlog flush request ... is not
 * satisfied").  The end of what was inserted is then the page's start.
 */
static XLogRecPtr
inserted_wal_end(void)
{
	XLogRecPtr	ptr = GetXLogInsertRecPtr();

	if (XLogSegmentOffset(ptr, wal_segment_size) == SizeOfXLogLongPHD)
		ptr -= SizeOfXLogLongPHD;
	else if (ptr % XLOG_BLCKSZ == SizeOfXLogShortPHD)
		ptr -= SizeOfXLogShortPHD;
	return ptr;
}

/*
 * registry.digest(tbl text, nbuckets int, lo int, width int, n int)
 * returns bytea: the table's root, and n digests of ranges of width
 * buckets starting at bucket lo, at a granularity of nbuckets buckets (at
 * most this node's registry.digest_buckets; 0 means that).
 */
Datum
registry_digest(PG_FUNCTION_ARGS)
{
	char	   *name;
	int32		gran = PG_ARGISNULL(1) ? 0 : PG_GETARG_INT32(1);
	int32		lo = PG_ARGISNULL(2) ? 0 : PG_GETARG_INT32(2);
	int32		width = PG_ARGISNULL(3) ? 0 : PG_GETARG_INT32(3);
	int32		n = PG_ARGISNULL(4) ? 0 : PG_GETARG_INT32(4);
	int			nb = registry_digest_buckets;
	RegTable   *t;
	uint64	   *buckets;
	uint64	   *coarse;
	uint64		root = 0;
	int64		live,
				tombs;
	int			ratio;
	int			i;
	MsgDigest	m;
	MsgWriter	w;

	registry_check_peer();
	registry_check_not_null(fcinfo, 0, "tbl");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	check_ready();
	t = regtable_by_name(name, true);
	if (t == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table %s is not a registry table on node \"%s\"",
						name, registry_node_name)));
	if (gran == 0 || gran > nb)
		gran = nb;
	check_nbuckets(gran, nb);
	if (n < 0 || width < 0 || lo < 0 ||
		(n > 0 && (width == 0 || (int64) lo + (int64) n * width > gran)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("digest ranges must lie within %d buckets", gran)));

	/*
	 * Our applies commit asynchronously.  A peer that finds our digest equal
	 * to its own may later purge tombstones on the strength of it, so what
	 * the digest covers must survive a crash of this node: flush first.
	 */
	if (!RecoveryInProgress())
		XLogFlush(inserted_wal_end());

	buckets = palloc(sizeof(uint64) * nb);
	if (!digest_read_table(t->tid, nb, buckets, &live, &tombs))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s has no digests on node \"%s\"", name,
						registry_node_name)));

	ratio = nb / gran;
	coarse = palloc0(sizeof(uint64) * gran);
	for (i = 0; i < nb; i++)
	{
		coarse[i / ratio] ^= buckets[i];
		root ^= buckets[i];
	}

	m.node = registry_node_name;
	m.table = t->qualname;
	m.nbuckets = gran;
	m.root = root;
	m.live = live;
	m.tombstones = tombs;
	m.lo = lo;
	m.width = width;
	m.n = n;
	m.digests = palloc(sizeof(uint64) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		uint64		d = 0;
		int			b;

		for (b = lo + i * width; b < lo + (i + 1) * width; b++)
			d ^= coarse[b];
		m.digests[i] = d;
	}
	msg_writer_init(&w);
	msg_write_digest(&w, &m);
	PG_RETURN_BYTEA_P(msg_finish(&w.buf));
}

static int
int_cmp(const void *a, const void *b)
{
	int32		x = *(const int32 *) a;
	int32		y = *(const int32 *) b;

	return (x > y) - (x < y);
}

/* One key of a bucket_entries answer. */
typedef struct BucketEntry
{
	uint32		khash;
	char	   *key;
	bool		deleted;
	RegVersion	version;
	char		origin[REGISTRY_NAME_LEN];
	char	  **values;
	bool		too_large;		/* its values alone exceed the limit */
} BucketEntry;

static int
entry_cmp(const void *a, const void *b)
{
	const BucketEntry *x = a;
	const BucketEntry *y = b;

	if (x->khash != y->khash)
		return x->khash < y->khash ? -1 : 1;
	return strcmp(x->key, y->key);
}

typedef struct EntryArray
{
	BucketEntry *e;
	int			n;
	int			max;
	Size		bytes;			/* what the entries take in the answer */
	int			limit;			/* the caller's max_bytes, less the rest */
} EntryArray;

/* e's state in an answer */
static int
entry_state(BucketEntry *e)
{
	return e->deleted ? ROW_TOMBSTONE : e->too_large ? ROW_TOO_LARGE : ROW_LIVE;
}

/* The bytes e takes in an answer. */
static Size
entry_size(RegTable *t, BucketEntry *e)
{
	return msg_row_size(e->key, entry_state(e), e->origin, e->values, t->ncols);
}

/*
 * Append the entries (rows and tombstones) of hash range [lo, hi], in
 * hash order, until the array holds at least "want" of them, or as many
 * as the caller's limit allows, and the last hash is complete.  *more
 * says whether any were left.
 */
static void
collect_range(RegTable *t, uint32 lo, uint32 hi, bool with_rows, int want,
			  EntryArray *out, bool *more)
{
	KeyRangeScan ks;
	RowLookup	rl;
	KeyRangeScan ts;
	KeyVersion	tk;
	bool		have_row,
				have_tomb;
	uint32		row_hash = 0;
	char	   *row_key_text = NULL;
	bool		any = false;
	uint32		last = 0;

	*more = false;
	if (t->khash_deferred)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("registry table %s is being pulled whole from a peer",
						t->qualname),
				 errdetail("Its keys are listed in registry.row_keys again when the pull ends."),
				 errhint("Retry when the pull has ended.")));
	row_keys_scan_begin(&ks, t->tid, lo, hi, GetActiveSnapshot());
	row_lookup_begin(&rl, t, AccessShareLock, GetActiveSnapshot());
	tombstone_scan_begin(&ts, t->tid, lo, hi, GetActiveSnapshot());
	have_row = row_keys_scan_next(&ks, &row_hash, &row_key_text);
	have_tomb = tombstone_scan_next(&ts, &tk);
	while (have_row || have_tomb)
	{
		BucketEntry *e;
		bool		take_row = have_row && (!have_tomb || row_hash <= tk.khash);
		uint32		h = take_row ? row_hash : tk.khash;

		CHECK_FOR_INTERRUPTS();
		if ((out->n >= want || out->bytes >= (Size) out->limit) &&
			(!any || h != last))
		{
			*more = true;
			break;
		}
		if (out->n >= out->max)
		{
			out->max *= 2;
			out->e = repalloc_huge(out->e, sizeof(BucketEntry) * out->max);
		}
		e = &out->e[out->n++];
		any = true;
		last = h;
		e->khash = h;
		if (take_row)
		{
			VersionState st;

			/* entries and rows are written together: under one snapshot
			 * every entry has its row */
			if (!row_lookup(&rl, row_key_text))
				ereport(ERROR,
						(errcode(ERRCODE_DATA_CORRUPTED),
						 errmsg("key \"%s\" of registry table %s is listed in registry.row_keys but has no row",
								row_key_text, t->qualname),
						 errhint("Run registry.verify() on the table.")));
			row_version(t, rl.slot, &st);
			if (!st.exists)
				ereport(ERROR,
						(errcode(ERRCODE_DATA_CORRUPTED),
						 errmsg("row \"%s\" of registry table %s has no version",
								row_key_text, t->qualname)));
			e->key = row_key_text;
			e->deleted = false;
			e->version = st.version;
			strlcpy(e->origin, st.origin, sizeof(e->origin));
			e->values = with_rows ? row_values(t, rl.slot) : NULL;
			e->too_large = false;
			have_row = row_keys_scan_next(&ks, &row_hash, &row_key_text);
		}
		else
		{
			e->key = tk.key;
			e->deleted = true;
			e->version = tk.version;
			strlcpy(e->origin, tk.origin, sizeof(e->origin));
			e->values = NULL;
			e->too_large = false;
			have_tomb = tombstone_scan_next(&ts, &tk);
		}
		if (entry_size(t, e) > (Size) out->limit / 4)
		{
			/* a row this large goes alone, or without its values */
			e->values = NULL;
			e->too_large = true;
		}
		out->bytes += entry_size(t, e);
		if (out->bytes > (Size) out->limit)
		{
			/* the keys of this hash go to the next page, whole */
			int			start = out->n - 1;

			while (start > 0 && out->e[start - 1].khash == h)
				start--;
			if (start == 0)
				ereport(ERROR,
						(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						 errmsg("the keys of hash %d of registry table %s do not fit in %d bytes",
								khash_to_int4(h), t->qualname, out->limit)));
			out->n = start;
			*more = true;
			break;
		}
	}
	tombstone_scan_end(&ts);
	row_lookup_end(&rl);
	row_keys_scan_end(&ks);
}

/*
 * registry.bucket_entries(tbl text, nbuckets int, buckets int[],
 *		with_rows bool, after_hash int, max_entries int, max_bytes int)
 *		returns bytea
 *
 * The versions of every key in the given buckets (at any power-of-two
 * granularity), in (hash, key) order, starting after key hash after_hash,
 * at least max_entries of them unless the buckets hold fewer (a page never
 * splits the keys of one hash).  An answer with "more" set gives the hash
 * to resume after.
 */
Datum
registry_bucket_entries(PG_FUNCTION_ARGS)
{
	char	   *name;
	int32		nbuckets;
	ArrayType  *arr;
	bool		with_rows = !PG_ARGISNULL(3) && PG_GETARG_BOOL(3);
	bool		resume = !PG_ARGISNULL(4);
	uint32		after_hash = resume ? int4_to_khash(PG_GETARG_INT32(4)) : 0;
	int32		maxe = PG_ARGISNULL(5) ? 10000 : PG_GETARG_INT32(5);
	RegTable   *t;
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;
	int32	   *bs;
	int			i;
	bool		more = false;
	EntryArray	ea;
	MsgWriter	w;
	int			nest = -1;

	registry_check_peer();
	registry_check_not_null(fcinfo, 0, "tbl");
	registry_check_not_null(fcinfo, 1, "nbuckets");
	registry_check_not_null(fcinfo, 2, "buckets");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	nbuckets = PG_GETARG_INT32(1);
	arr = PG_GETARG_ARRAYTYPE_P(2);
	check_ready();
	check_nbuckets(nbuckets, MSG_MAX_BUCKETS);
	maxe = Max(1, Min(maxe, MAX_ENTRIES_PER_CALL));
	t = regtable_by_name(name, true);
	if (t == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table %s is not a registry table on node \"%s\"",
						name, registry_node_name)));

	deconstruct_array(arr, INT4OID, 4, true, TYPALIGN_INT, &elems, &nulls, &nelems);
	bs = palloc(sizeof(int32) * Max(nelems, 1));
	for (i = 0; i < nelems; i++)
	{
		if (nulls[i] || DatumGetInt32(elems[i]) < 0 ||
			DatumGetInt32(elems[i]) >= nbuckets)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("bucket numbers must lie between 0 and %d", nbuckets - 1)));
		bs[i] = DatumGetInt32(elems[i]);
	}
	qsort(bs, nelems, sizeof(int32), int_cmp);

	/* key text is parsed to find each row, and values printed */
	if (t->needs_canonical)
		keys_canonical_gucs_push(&nest);
	ea.max = Min(maxe, 1024) + 16;
	ea.n = 0;
	ea.e = palloc(sizeof(BucketEntry) * ea.max);
	ea.bytes = 0;
	/* room for the descriptor and the fields around the entries */
	ea.limit = answer_limit(fcinfo, 6) - (int) msg_table_size(t, with_rows) - 64;
	for (i = 0; i < nelems && !more; i++)
	{
		uint32		lo,
					hi;

		if (i > 0 && bs[i] == bs[i - 1])
			continue;
		digest_bucket_range(bs[i], nbuckets, &lo, &hi);
		if (resume)
		{
			if (hi <= after_hash)
				continue;
			if (lo <= after_hash)
				lo = after_hash + 1;
		}
		collect_range(t, lo, hi, with_rows, maxe, &ea, &more);
		if ((ea.n >= maxe || ea.bytes >= (Size) ea.limit) && i + 1 < nelems)
			more = true;
	}
	qsort(ea.e, ea.n, sizeof(BucketEntry), entry_cmp);
	if (nest >= 0)
		keys_canonical_gucs_pop(nest);

	msg_writer_init(&w);
	msg_write_entries_begin(&w, t, nbuckets, with_rows);
	for (i = 0; i < ea.n; i++)
	{
		BucketEntry *e = &ea.e[i];

		msg_write_row(&w, e->key, entry_state(e), e->version, e->origin,
					  e->values, t->ncols);
	}
	msg_write_entries_end(&w, ea.n, more,
						  ea.n > 0 ? ea.e[ea.n - 1].khash : after_hash);
	PG_RETURN_BYTEA_P(msg_finish(&w.buf));
}

/*
 * registry.fetch_rows(tbl text, keys text[], max_bytes int) returns
 * bytea: for each key its current state (live with the row, tombstone,
 * or absent) and version, in the order asked, as many as max_bytes
 * allows (at least one: a row too large on its own goes without its
 * values).  The caller asks again for the keys left.
 */
Datum
registry_fetch_rows(PG_FUNCTION_ARGS)
{
	char	   *name;
	ArrayType  *arr;
	RegTable   *t;
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;
	int			i;
	int			n = 0;
	MsgWriter	w;
	RowLookup	rl;
	int			nest = -1;
	int			limit = answer_limit(fcinfo, 2);

	registry_check_peer();
	registry_check_not_null(fcinfo, 0, "tbl");
	registry_check_not_null(fcinfo, 1, "keys");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	arr = PG_GETARG_ARRAYTYPE_P(1);
	t = regtable_by_name(name, true);
	if (t == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table %s is not a registry table on node \"%s\"",
						name, registry_node_name)));
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &nelems);
	if (nelems > MAX_KEYS_PER_CALL)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("at most %d keys per call", MAX_KEYS_PER_CALL)));
	for (i = 0; i < nelems; i++)
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("keys must not be null")));

	msg_writer_init(&w);
	msg_write_rows_begin(&w, t);
	if (t->needs_canonical)
		keys_canonical_gucs_push(&nest);
	row_lookup_begin(&rl, t, AccessShareLock, GetActiveSnapshot());
	for (i = 0; i < nelems; i++)
	{
		RowOut		row;

		CHECK_FOR_INTERRUPTS();
		current_row(t, &rl, TextDatumGetCString(elems[i]), true,
					GetActiveSnapshot(), &row);
		if (!fits(&w, row_out_size(&row), limit))
		{
			if (n > 0)
				break;			/* the rest is asked for again */
			if (row.state == ROW_LIVE)
				row_out_too_large(&row);
		}
		write_row_out(&w, &row);
		n++;
	}
	row_lookup_end(&rl);
	if (nest >= 0)
		keys_canonical_gucs_pop(nest);
	msg_write_rows_end(&w, n);
	PG_RETURN_BYTEA_P(msg_finish(&w.buf));
}

/* A whole-table read in progress: registry.table_pages() between pages. */
typedef struct TablePages
{
	char	   *name;
	int32		tid;
	Snapshot	snap;			/* registered: every page reads the same state */
	RowLookup	rs;				/* in primary-key order */
	KeyRangeScan ts;
	bool		rows_done;		/* past the last row: tombstones follow */
	bool		tombs_open;
	bool		open;
	int			page_rows;
	int			limit;			/* the caller's max_bytes per page */
	MemoryContext rowcxt;		/* one entry's key and values */
	MsgWriter	w;				/* the page being built, reused */
	StringInfoData carry;		/* an entry that did not fit the last page */
} TablePages;

static void
table_pages_close(TablePages *tp)
{
	if (!tp->open)
		return;
	tp->open = false;
	if (tp->tombs_open)
		tombstone_scan_end(&tp->ts);
	row_scan_end(&tp->rs);
	UnregisterSnapshot(tp->snap);
}

/* The executor ends the query before the last page was asked for. */
static void
table_pages_shutdown(Datum arg)
{
	table_pages_close((TablePages *) DatumGetPointer(arg));
}

/*
 * The scans run in the function's own context: an index scan keeps what
 * it allocates on the way (the btree's list of dead items, say) until it
 * ends.
 */
static bool
scan_next_row(FuncCallContext *fctx, TablePages *tp)
{
	MemoryContext old = MemoryContextSwitchTo(fctx->multi_call_memory_ctx);
	bool		found = row_scan_next(&tp->rs);

	MemoryContextSwitchTo(old);
	return found;
}

/* kv->key is allocated there too: the caller frees it */
static bool
scan_next_tombstone(FuncCallContext *fctx, TablePages *tp, KeyVersion *kv)
{
	MemoryContext old = MemoryContextSwitchTo(fctx->multi_call_memory_ctx);
	bool		found = tombstone_scan_next(&tp->ts, kv);

	MemoryContextSwitchTo(old);
	return found;
}

/* Before SRF_RETURN_DONE frees tp: the executor must not call back. */
static void
table_pages_end(FunctionCallInfo fcinfo, TablePages *tp)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	table_pages_close(tp);
	if (rsinfo && IsA(rsinfo, ReturnSetInfo) && rsinfo->econtext)
		UnregisterExprContextCallback(rsinfo->econtext, table_pages_shutdown,
									  PointerGetDatum(tp));
}

/*
 * Whether the entry written from offset before took the page past the
 * caller's limit.  If so it is moved to the next page.  Only a page that
 * has other entries overflows: any entry fits an empty page (a row too
 * large for one is written without its values, a tombstone is small).
 */
static bool
page_overflows(TablePages *tp, int before, int n)
{
	StringInfo	buf = &tp->w.buf;

	if ((Size) msg_payload_len(buf) + msg_entries_end_size(false) <= (Size) tp->limit)
		return false;
	Assert(n > 0);
	appendBinaryStringInfo(&tp->carry, buf->data + before, buf->len - before);
	buf->len = before;
	buf->data[before] = '\0';
	return true;
}

/*
 * registry.table_pages(tbl text, page_rows int, max_bytes int) returns
 * setof bytea
 *
 * The whole table, for a peer that has little or nothing of it: every
 * live row with its version in primary-key order, then every tombstone,
 * as kind E messages (with rows) of page_rows entries each, all read
 * under one snapshot.  Primary-key order lets an empty receiver append to
 * its primary key index instead of inserting all over it.  Each call
 * makes one page, so a caller that names the function in the select list
 * and reads in single-row mode gets each page as soon as it is made, and
 * applies it while the next one is read.
 */
Datum
registry_table_pages(PG_FUNCTION_ARGS)
{
	FuncCallContext *fctx;
	TablePages *tp;
	RegTable   *t;
	MemoryContext oldcxt;
	int			n = 0;
	int			nest = -1;
	int			empty_len;
	bool		full = false;

	if (SRF_IS_FIRSTCALL())
	{
		ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
		int32		page_rows;

		registry_check_peer();
		registry_check_not_null(fcinfo, 0, "tbl");
		registry_check_not_null(fcinfo, 1, "page_rows");
		page_rows = PG_GETARG_INT32(1);
		check_ready();
		fctx = SRF_FIRSTCALL_INIT();
		oldcxt = MemoryContextSwitchTo(fctx->multi_call_memory_ctx);
		tp = palloc0(sizeof(TablePages));
		tp->name = text_to_cstring(PG_GETARG_TEXT_PP(0));
		t = regtable_by_name(tp->name, true);
		if (t == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_TABLE),
					 errmsg("table %s is not a registry table on node \"%s\"",
							tp->name, registry_node_name)));
		tp->tid = t->tid;
		tp->page_rows = Max(1, Min(page_rows, MAX_ENTRIES_PER_CALL));
		tp->limit = answer_limit(fcinfo, 2);
		tp->snap = RegisterSnapshot(GetActiveSnapshot());
		row_scan_all_begin(&tp->rs, t, tp->snap);
		tp->open = true;
		tp->rowcxt = AllocSetContextCreate(fctx->multi_call_memory_ctx,
										   "registry table page row",
										   ALLOCSET_SMALL_SIZES);
		msg_writer_init(&tp->w);
		initStringInfo(&tp->carry);
		fctx->user_fctx = tp;
		if (rsinfo && IsA(rsinfo, ReturnSetInfo) && rsinfo->econtext)
			RegisterExprContextCallback(rsinfo->econtext, table_pages_shutdown,
										PointerGetDatum(tp));
		MemoryContextSwitchTo(oldcxt);
	}
	else
	{
		/*
		 * The last page's tail still waits in the send buffer for the next
		 * message to fill it: without this the peer would apply it only
		 * once this page is made, and not meanwhile.
		 */
		registry_flush_client();
	}
	fctx = SRF_PERCALL_SETUP();
	tp = fctx->user_fctx;

	if (!tp->open)
	{
		/* the last page ended the tombstones */
		table_pages_end(fcinfo, tp);
		SRF_RETURN_DONE(fctx);
	}
	/* the entry may have been rebuilt since the last page */
	t = regtable_by_name(tp->name, false);

	/* buf grows in its own context; anything else is one entry's */
	oldcxt = MemoryContextSwitchTo(tp->rowcxt);
	resetStringInfo(&tp->w.buf);
	msg_write_entries_begin(&tp->w, t, 1, true);	/* 1 bucket: the whole table */
	/* a page without entries: the descriptor, counts and "more" */
	empty_len = msg_payload_len(&tp->w.buf) + (int) msg_entries_end_size(false);
	if (tp->carry.len > 0)
	{
		/* an entry already written, moved here whole by page_overflows() */
		appendBinaryStringInfo(&tp->w.buf, tp->carry.data, tp->carry.len);
		resetStringInfo(&tp->carry);
		n++;
	}
	if (t->needs_canonical)
		keys_canonical_gucs_push(&nest);
	while (!full && n < tp->page_rows && !tp->rows_done)
	{
		VersionState st;
		char	   *key;
		char	  **values;
		int			before = tp->w.buf.len;

		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(tp->rowcxt);
		if (!scan_next_row(fctx, tp))
		{
			tp->rows_done = true;
			break;
		}
		key = row_key(t, tp->rs.slot);
		row_version(t, tp->rs.slot, &st);
		if (!st.exists)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("row \"%s\" of registry table %s has no version",
							key, t->qualname)));
		values = row_values(t, tp->rs.slot);
		if ((Size) empty_len + msg_row_size(key, ROW_LIVE, st.origin, values,
											t->ncols) > (Size) tp->limit)
		{
			/* no page can hold it: it goes without its values */
			msg_write_row(&tp->w, key, ROW_TOO_LARGE, st.version, st.origin,
						  NULL, 0);
		}
		else
			msg_write_row(&tp->w, key, ROW_LIVE, st.version, st.origin,
						  values, t->ncols);
		if (page_overflows(tp, before, n))
			full = true;		/* the row opens the next page */
		n++;
	}
	if (!full && tp->rows_done && !tp->tombs_open)
	{
		MemoryContextSwitchTo(fctx->multi_call_memory_ctx);
		tombstone_scan_begin(&tp->ts, tp->tid, 0, PG_UINT32_MAX, tp->snap);
		tp->tombs_open = true;
		MemoryContextSwitchTo(tp->rowcxt);
	}
	while (!full && n < tp->page_rows && tp->tombs_open && tp->open)
	{
		KeyVersion	kv;
		int			before = tp->w.buf.len;

		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(tp->rowcxt);
		if (!scan_next_tombstone(fctx, tp, &kv))
		{
			table_pages_close(tp);
			break;
		}
		msg_write_row(&tp->w, kv.key, ROW_TOMBSTONE, kv.version, kv.origin,
					  NULL, 0);
		pfree(kv.key);
		if (page_overflows(tp, before, n))
			full = true;
		n++;
	}
	if (full)
		n--;					/* carried */
	if (nest >= 0)
		keys_canonical_gucs_pop(nest);
	msg_write_entries_end(&tp->w, n, false, 0);	/* no "more": the next page follows */
	MemoryContextSwitchTo(oldcxt);
	MemoryContextReset(tp->rowcxt);

	if (n == 0)
	{
		/* the last page was full: nothing is left */
		table_pages_end(fcinfo, tp);
		SRF_RETURN_DONE(fctx);
	}
	SRF_RETURN_NEXT(fctx, PointerGetDatum(msg_finish_copy(&tp->w.buf)));
}
