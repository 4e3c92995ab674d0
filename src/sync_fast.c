/*-------------------------------------------------------------------------
 *
 * sync_fast.c
 *	  The sync worker's fast path: following a peer's change log with
 *	  registry.changes_since(), as a long poll while idle; and applying
 *	  what either path pulled (one table's batch at a time, through
 *	  apply_batch.c), with what that does to the peer's status.
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

#include "apply.h"
#include "sync.h"

/*
 * Rows the peer has that this node refused: older than tombstones purged
 * here, they may be deletions the peer missed.  The round is then not
 * complete (sync_now() says false) and the error says what to do.
 */
void
sync_fast_note_refused_purged(Peer *p, const char *table, int n)
{
	char		msg[256];

	snprintf(msg, sizeof(msg),
			 "%d rows of %s refused: older than tombstones purged on this node (they may have been deleted); "
			 "if the peer missed deletions, run registry.resync() there",
			 n, table);
	sync_conn_record_error(p, msg);
}

/*
 * Rows the peer has but could not send: their values alone exceed what
 * this node accepts in one message.  Said in peer_status; the rows stay
 * missing here until the limits allow them.
 */
void
sync_fast_note_too_large(Peer *p, const char *table, const MsgRow *r, int n)
{
	char		msg[256];
	char		key[64];

	sync_conn_one_line(key, 41, r->key);
	snprintf(msg, sizeof(msg),
			 "%d %s of %s not sent, too large for one message (first key \"%s\"); raise registry.max_message_size on both nodes",
			 n, n == 1 ? "row" : "rows", table, key);
	sync_conn_record_error(p, msg);
}


/*
 * Apply one table's rows (apply_batch.c retries when a local write raced
 * with it).  False when it failed, the error recorded; the rows are still
 * the peer's, so everything is compared again, after a pause that grows
 * while the failure repeats.
 */
bool
sync_fast_apply_batch(Peer *p, ApplyBatch *b)
{
	ApplyBatchStats s;
	bool		ok;

	/* errors raised while applying name the peer (apply's error context) */
	apply_set_peer(p->name);
	ok = apply_batch_rows(b, &s);
	apply_set_peer(NULL);

	if (s.khash_deferred)
		p->upkeep_wanted = true;
	if (ok)
	{
		p->st.rows_applied += s.applied;
		p->st.rows_skipped += s.skipped;
		p->st.versions_refused += s.refused_skew;
		p->st.rows_refused_purged += s.refused_purged;
		p->apply_backoff_ms = 0;
		if (s.refused_skew > 0)
		{
			char		msg[256];

			snprintf(msg, sizeof(msg),
					 "%d rows of %s refused: versions more than registry.max_clock_skew (%d ms) ahead of this node's clock",
					 s.refused_skew, b->table->name, registry_max_clock_skew_ms);
			sync_conn_record_error(p, msg);
		}
		if (s.refused_purged > 0)
			sync_fast_note_refused_purged(p, b->table->name, s.refused_purged);
		return true;
	}
	sync_conn_record_error_context(p, s.message ? s.message :
								   "gave up applying a batch after repeated concurrent local writes",
								   s.context);
	p->ae_needed = true;
	p->apply_backoff_ms = p->apply_backoff_ms == 0 ? BACKOFF_MIN_MS :
		Min(p->apply_backoff_ms * 2, BACKOFF_MAX_MS);
	p->ae_not_before = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), p->apply_backoff_ms);
	return false;
}

/* ---- the fast path ---- */

static int
row_key_cmp(const void *a, const void *b)
{
	return strcmp((*(MsgRow *const *) a)->key, (*(MsgRow *const *) b)->key);
}

/*
 * Whether an origin of the array literal before is missing from after
 * (both "{a,b,...}", names of registry_valid_node_name's alphabet).
 */
static bool
origin_dropped(const char *before, const char *after)
{
	char	   *b = pstrdup(before + 1);
	char	   *tok;
	char	   *save = NULL;
	bool		dropped = false;
	size_t		alen = strlen(after);

	if (strlen(b) > 0)
		b[strlen(b) - 1] = '\0';	/* the closing brace */
	for (tok = strtok_r(b, ",", &save); tok && !dropped; tok = strtok_r(NULL, ",", &save))
	{
		size_t		tlen = strlen(tok);
		const char *at = after;

		dropped = true;
		while ((at = strstr(at, tok)) != NULL)
		{
			if ((at[-1] == '{' || at[-1] == ',') &&
				(at[tlen] == ',' || at[tlen] == '}'))
			{
				dropped = false;
				break;
			}
			at += tlen;
			if (at >= after + alen)
				break;
		}
	}
	pfree(b);
	return dropped;
}

/*
 * Ask for the peer's changes after the last seq applied here.  With
 * wait_ms the peer holds the request until a change commits there (or the
 * time is up): this is what carries a change across in milliseconds.
 */
void
sync_fast_send_changes(Peer *p, int wait_ms)
{
	char		after[32],
				maxc[16],
				epoch[32],
				wait[16],
				maxb[16];
	const char *params[7];
	const char **direct;
	int			ndirect;
	StringInfoData skip;
	int			i;

	snprintf(after, sizeof(after), UINT64_FORMAT, p->have_position ? p->consumed : 0);
	snprintf(maxc, sizeof(maxc), "%d", registry_batch_size);
	snprintf(epoch, sizeof(epoch), INT64_FORMAT, (int64) p->epoch);
	params[0] = after;
	params[1] = maxc;
	params[2] = p->have_position ? epoch : NULL;
	params[3] = registry_node_name;
	snprintf(wait, sizeof(wait), "%d", p->have_position ? wait_ms : 0);
	params[4] = wait;
	snprintf(maxb, sizeof(maxb), "%d", registry_max_message_size);
	params[5] = maxb;

	/*
	 * The peer's changes only, not those it applied from nodes this node
	 * follows directly too (as pglogical's forward_origins): each change
	 * then reaches each node once in a full mesh, and still through the
	 * others where a direct link is missing or down.  Node names need no
	 * quoting in an array literal (registry_valid_node_name).
	 */
	direct = sync_conn_direct_origins(p, &ndirect);
	initStringInfo(&skip);
	appendStringInfoChar(&skip, '{');
	for (i = 0; i < ndirect; i++)
		appendStringInfo(&skip, "%s%s", i ? "," : "", direct[i]);
	appendStringInfoChar(&skip, '}');
	params[6] = ndirect > 0 ? skip.data : NULL;

	/*
	 * An origin that was skipped and no longer is (its direct link went
	 * down, or it is no longer a peer): this peer's stream may have
	 * stepped over changes of it that never came directly.  A digest
	 * comparison with this peer finds them.
	 */
	if (p->skip_sent && origin_dropped(p->skip_sent, skip.data))
		p->ae_needed = true;
	if (p->skip_sent == NULL || strcmp(p->skip_sent, skip.data) != 0)
	{
		if (p->skip_sent)
			pfree(p->skip_sent);
		p->skip_sent = MemoryContextStrdup(sync_conn_worker_cxt, skip.data);
	}
	p->want_fast = false;
	p->query_wait_ms = p->have_position ? wait_ms : 0;
	sync_conn_send(p, Q_CHANGES, SYNC_SQL_CHANGES, 7, params);
	pfree(skip.data);
	pfree(direct);
}


typedef struct AnswerData
{
	char	   *data;
	int			len;
} AnswerData;

/*
 * The peer's change log from the last seq applied: checked against what
 * was asked (rows, epoch, seqs after the one asked after, progress), then
 * applied one transaction per table.  Runs guarded: any error ends the
 * request.
 */
static void
handle_changes_guarded(Peer *p, void *arg)
{
	AnswerData *a = arg;
	MsgChanges	m;
	ApplyBatch *batches;
	int		   *counts;
	int		   *slot;
	int			nbatches = 0;
	int			i;

	msg_read_changes(a->data, a->len, &m);
	sync_conn_check_node_name(p, m.node);
	if (!m.with_rows)
		sync_conn_protocol_error("changes came without their rows",
					   "They were asked for with rows.");
	if (p->have_position && m.status == CHANGES_OK)
	{
		char		detail[160];

		snprintf(detail, sizeof(detail),
				 "Asked for the changes after seq " UINT64_FORMAT " of epoch " UINT64_FORMAT
				 "; the answer is of epoch " UINT64_FORMAT ", up to seq " UINT64_FORMAT
				 " of " UINT64_FORMAT ".",
				 p->consumed, p->epoch, m.epoch, m.upto_seq, m.last_seq);
		if (m.epoch != p->epoch || m.upto_seq < p->consumed ||
			(m.n > 0 && m.changes[0].seq <= p->consumed))
			sync_conn_protocol_error("changes answer does not follow the position asked for", detail);
		if (m.last_seq > p->consumed && m.upto_seq == p->consumed)
			sync_conn_protocol_error("changes answer makes no progress", detail);
	}

	p->st.peer_epoch = m.epoch;
	p->st.peer_last_seq = m.last_seq;

	if (m.status != CHANGES_OK || !p->have_position)
	{
		/* a restart or a gap: compare digests, then follow from here */
		p->have_position = true;
		p->epoch = m.epoch;
		p->consumed = m.last_seq;
		p->ae_needed = true;
		p->st.consumed_seq = p->consumed;
		return;
	}

	/*
	 * One batch per table that a change refers to (tables described but
	 * not referred to cost nothing), each key once (its current state).
	 */
	slot = palloc(sizeof(int) * Max(m.ntables, 1));
	memset(slot, -1, sizeof(int) * Max(m.ntables, 1));
	counts = palloc0(sizeof(int) * Max(m.n, 1));
	for (i = 0; i < m.n; i++)
	{
		int			ti = m.changes[i].table;

		if (slot[ti] < 0)
			slot[ti] = nbatches++;
		counts[slot[ti]]++;
	}
	batches = palloc0(sizeof(ApplyBatch) * Max(nbatches, 1));
	for (i = 0; i < m.ntables; i++)
	{
		if (slot[i] < 0)
			continue;
		batches[slot[i]].table = &m.tables[i];
		batches[slot[i]].rows = palloc(sizeof(MsgRow *) * counts[slot[i]]);
	}
	for (i = 0; i < m.n; i++)
	{
		MsgChange  *c = &m.changes[i];
		ApplyBatch *b = &batches[slot[c->table]];

		if (c->op == REG_OP_RESYNC)
		{
			/* a bulk change on the peer: only digests can tell what it was */
			p->ae_needed = true;
			continue;
		}
		b->rows[b->nrows++] = &c->row;
	}
	for (i = 0; i < nbatches; i++)
	{
		ApplyBatch *b = &batches[i];
		int			j,
					k,
					too_large = 0;
		MsgRow	   *first_too_large = NULL;

		if (b->nrows == 0)
			continue;
		/* every copy of a key carries its current state: keep one */
		qsort(b->rows, b->nrows, sizeof(MsgRow *), row_key_cmp);
		for (j = 1, k = 1; j < b->nrows; j++)
			if (strcmp(b->rows[j]->key, b->rows[k - 1]->key) != 0)
				b->rows[k++] = b->rows[j];
		b->nrows = k;
		for (j = 0, k = 0; j < b->nrows; j++)
		{
			if (b->rows[j]->state == ROW_TOO_LARGE)
			{
				if (too_large++ == 0)
					first_too_large = b->rows[j];
				continue;
			}
			b->rows[k++] = b->rows[j];
		}
		b->nrows = k;
		if (b->table->name[0] == '\0')
			continue;			/* no longer registered on the peer */
		/*
		 * Rows too large are reported only once the batch shows the table
		 * is registered here (a batch of none checks just that): for any
		 * other table the error to see is that one.
		 */
		if ((b->nrows > 0 || too_large > 0) && sync_fast_apply_batch(p, b) &&
			too_large > 0)
			sync_fast_note_too_large(p, b->table->name, first_too_large, too_large);
	}

	p->consumed = m.upto_seq;
	p->st.consumed_seq = p->consumed;
	p->st.fast_batches++;
	p->st.rows_pulled += m.n;
	if (p->consumed >= m.last_seq)
		p->st.caught_up_at = GetCurrentTimestamp();
	if (p->consumed < m.last_seq)
		p->want_fast = true;	/* more right away */
}

void
sync_fast_handle_changes(Peer *p, char *data, int len)
{
	AnswerData	a = {data, len};
	int			sqlstate;
	char	   *message;

	if (!sync_conn_run_guarded(p, handle_changes_guarded, &a, &sqlstate, &message))
	{
		/* a peer that answers this way is asked again only after a pause */
		sync_conn_disconnect(p, message);
		return;
	}
	sync_conn_note_success(p);
}
