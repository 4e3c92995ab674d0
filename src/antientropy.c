/*-------------------------------------------------------------------------
 *
 * antientropy.c
 *	  The sync worker's anti-entropy rounds with one peer: per table,
 *	  compare roots; on a mismatch compare 64 groups of buckets, then the
 *	  buckets of differing groups, then the entries of differing buckets,
 *	  and pull the rows whose peer version is newer; or pull a table far
 *	  behind the peer's whole, page by page (see sync.c's opening comment
 *	  for the rules).  A round's state lives in p->roundcxt.
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
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "digest.h"
#include "rows.h"
#include "sync.h"
#include "tombstones.h"

/* This node's digest buckets of table name, folded to nb. */
static uint64 *
our_buckets(const char *name, int nb, int64 *count, bool *registered)
{
	RegTable   *t;
	uint64	   *out = palloc0(sizeof(uint64) * nb);

	*count = 0;
	*registered = false;
	t = regtable_by_name(name, true);
	if (t == NULL)
		return out;
	*registered = true;
	{
		int64		live,
					tombs;

		if (digest_read_table(t->tid, nb, out, &live, &tombs))
			*count = live + tombs;
	}
	return out;
}

void
antientropy_start_round(Peer *p)
{
	List	   *regs;
	ListCell   *lc;
	int			i = 0;
	MemoryContext old;
	MemoryContext cxt;

	MemoryContextReset(p->roundcxt);
	cxt = apply_batch_xact_begin();
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
			p->upkeep_wanted = true;
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
	apply_batch_xact_end(cxt);

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

	MemoryContext cxt = apply_batch_xact_begin();

	SPI_connect();
	args[0] = TimestampTzGetDatum(at);
	args[1] = CStringGetTextDatum(p->name);
	if (SPI_execute_with_args("UPDATE registry.peers SET last_converged_at = $1 WHERE name = $2",
							  2, argtypes, args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "registry: could not record the convergence with peer \"%s\"", p->name);
	SPI_finish();
	apply_batch_xact_end(cxt);
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

		if (sync_conn_run_guarded(p, record_convergence, &at, NULL, NULL))
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
		sync_conn_set_health(p, false, "needs a resync: not found identical for longer than registry.tombstone_retention");
	else if (complete)
		sync_conn_set_health(p, true, NULL);
	else if (p->st.healthy)
		sync_conn_set_health(p, false, "the last anti-entropy round was not complete");

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
	sync_conn_send(p, Q_DIGEST, SYNC_SQL_DIGEST, 5, params);
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
 * page while this node applies the last (antientropy_handle_page).
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
	sync_conn_send(p, Q_PAGES, "SELECT registry.table_pages($1, $2::int, $3::int)", 3, params);
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
	sync_conn_send(p, Q_ENTRIES,
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
	sync_conn_send(p, Q_FETCH, "SELECT registry.fetch_rows($1, $2::text[], $3::int)", 3, params);
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
void
antientropy_send_next(Peer *p)
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
					/*
					 * Another peer is sending the same table whole: wait
					 * (the connection long-polls meanwhile, and this is
					 * asked again after each answer), then compare again,
					 * for what is left is likely little or nothing.  At
					 * most FULL_WAIT_MAX_MS: a pull that long may be a
					 * peer trickling pages to hold this one up.
					 */
					TimestampTz now = GetCurrentTimestamp();
					bool		may_wait = t->full_wait_since == 0 ||
						!TimestampDifferenceExceeds(t->full_wait_since, now,
													FULL_WAIT_MAX_MS);

					if (may_wait && sync_conn_pulling_whole(p, t->name))
					{
						if (t->full_wait_since == 0)
							t->full_wait_since = now;
						return;
					}
					if (may_wait && t->full_wait_since != 0)
					{
						t->full_wait_since = 0;
						t->stage = AE_ROOT;
						continue;
					}
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


/* The peer's answer to a request about one table. */
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

	/* ours, allocated in the caller's context, outlives the transaction */
	Assert(CurrentMemoryContext == sync_conn_answer_cxt);
	msg_read_digest(w->data, w->len, &m);
	sync_conn_check_node_name(p, m.node);
	check_digest_answer(t, &m);

	cxt = apply_batch_xact_begin();
	/* ours outlives the transaction */
	MemoryContextSwitchTo(cxt);
	ours = our_buckets(t->name, m.nbuckets, &ourcount, &registered);
	apply_batch_xact_end(cxt);
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
 * Put the rows the peer sent whole into batch b; those it could not send
 * (too large for one message) are said once and leave the table
 * incomplete for this round.
 */
static void
batch_whole_rows(Peer *p, AETable *t, MsgRow *rows, int n, ApplyBatch *b)
{
	int			too_large = 0;
	MsgRow	   *first_too_large = NULL;
	int			i;

	for (i = 0; i < n; i++)
	{
		if (rows[i].state == ROW_TOO_LARGE)
		{
			if (too_large++ == 0)
				first_too_large = &rows[i];
			continue;
		}
		b->rows[b->nrows++] = &rows[i];
	}
	if (too_large > 0)
	{
		sync_fast_note_too_large(p, t->name, first_too_large, too_large);
		t->incomplete = true;
	}
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
	ApplyBatch	b;
	int			refused_purged = 0;
	int			i;

	msg_read_entries(w->data, w->len, &m);
	check_entries_answer(t, &m);
	p->st.rows_pulled += m.n;

	memset(&b, 0, sizeof(b));
	b.table = &m.table;
	b.rows = palloc(sizeof(MsgRow *) * Max(m.n, 1));

	if (t->stage == AE_FULL)
	{
		batch_whole_rows(p, t, m.rows, m.n, &b);
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

		MemoryContext cxt = apply_batch_xact_begin();

		keys_canonical_gucs_push(&nest);
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
					refused_purged++;
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
		keys_canonical_gucs_pop(nest);
		apply_batch_xact_end(cxt);
		if (refused_purged > 0)
		{
			p->st.rows_refused_purged += refused_purged;
			sync_fast_note_refused_purged(p, t->name, refused_purged);
		}
	}
	if (b.nrows > 0)
		sync_fast_apply_batch(p, &b);
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
	ApplyBatch	b;
	int			i;
	AETable    *t = w->t;

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
	batch_whole_rows(p, t, m.rows, m.n, &b);
	b.bulk = (b.nrows > 16);
	if (b.nrows > 0)
		sync_fast_apply_batch(p, &b);
}

/* An answer about table t; if it cannot be applied, t is skipped this round. */
static void
handle_table_answer(Peer *p, SyncGuardedFn fn, AETable *t, char *data, int len)
{
	DigestWork	w = {t, data, len};

	if (!sync_conn_run_guarded(p, fn, &w, NULL, NULL))
	{
		t->failed = true;
		t->stage = AE_DONE;
	}
	else
		sync_conn_note_success(p);
}

/*
 * One page of a whole-table pull, while the request goes on.  Once the
 * table failed, the rest of the pages are read and dropped: libpq has no
 * cancel that would not block the worker.
 */
void
antientropy_handle_page(Peer *p, PGresult *res)
{
	AETable    *t = p->inflight_table;
	char	   *data;
	int			len;

	Assert(p->inflight == Q_PAGES && t != NULL);
	Assert(CurrentMemoryContext == sync_conn_answer_cxt);
	data = sync_conn_answer_bytes(p, res, PGRES_SINGLE_TUPLE, &len);
	if (data == NULL)
		return;
	/* the request is alive while pages arrive */
	p->query_started = GetCurrentTimestamp();
	if (!t->failed)
		handle_table_answer(p, handle_entries_guarded, t, data, len);
	pfree(data);
}


/* A finished request's answer about table t (digest, entries or rows). */
void
antientropy_handle_answer(Peer *p, QueryKind kind, AETable *t, char *data, int len)
{
	if (kind == Q_DIGEST)
		handle_table_answer(p, handle_digest_guarded, t, data, len);
	else if (kind == Q_ENTRIES)
		handle_table_answer(p, handle_entries_guarded, t, data, len);
	else
		handle_table_answer(p, handle_fetch_guarded, t, data, len);
}
