/*-------------------------------------------------------------------------
 *
 * notify.c
 *	  The notifier: turns the change log into registry_change notifications
 *	  (and a registry_wakeup per batch for peers).  The maintenance worker
 *	  (worker.c) calls notify_pending() from its loop; this file owns the
 *	  payloads and the notifier's side of its progress (changelog.c keeps
 *	  the counters).
 *
 * Notifications are sent by the maintenance worker rather than by the
 * committing transaction: a NOTIFY in the writer's transaction would
 * serialise all registry commits on the notification queue lock and make
 * writes fail when a listener lets the queue fill up.  They are sent
 * right after commit, in commit order, in batches of one transaction.
 *
 * With registry.notify_delay = 0 each change is one notification.  With a
 * delay d > 0 the changes of a table are merged in a window: it opens at
 * the table's first change not yet notified (its commit time) and closes
 * d ms later; then one notification covers every change of the table read
 * until then (count, seq range, ops, the distinct keys while they fit).
 * Windows are closed by time, not by the next change, so the last change
 * of a burst is notified too: the maintenance worker sleeps no longer
 * than notify_next_wait_ms().  The windows live in the worker's memory
 * only; registry.node.notified_seq stays below the first change of the
 * oldest open window, so that a restarted worker reads those changes
 * again from the ring.
 *
 * Nobody may be listening: then nothing is sent.  A ProcessUtility hook
 * (notify_utility) counts the sessions of registry.database that LISTEN
 * on registry_change or registry_wakeup (changelog.c keeps the count,
 * which their exit lowers, or the commit of an UNLISTEN or DISCARD ALL
 * that leaves them listening on neither); while it is 0 the notifier passes the
 * changes over as with registry.notifications off, without a
 * transaction, and the maintenance worker asks committers for no wake-up
 * (notify_listened): a NOTIFY transaction and a signal per commit on
 * every node, for no reader.  The count is read after the changes are
 * copied from the ring, so no change that commits after a LISTEN is
 * passed over (changelog_listener_arrived); changes published before the
 * first present listener counted are not sent (changelog_listen_from).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/async.h"
#include "commands/dbcommands.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "changelog.h"
#include "notify.h"
#include "registry.h"
#include "worker_slots.h"

/* what async.c accepts (it does not export the constant) */
#define REG_NOTIFY_MAX_PAYLOAD	(BLCKSZ - NAMEDATALEN - 128)
#define NOTIFY_BATCH			1000
/* a counter's widest decimal form (UINT64_MAX), for the keys' budget */
#define WIDEST_COUNTER			"18446744073709551615"

/* One distinct key of a window: its element in keys (escaped JSON). */
typedef struct WindowKey
{
	uint32		hash;			/* of the escaped element */
	int			off;			/* in keys.data; -1: empty slot */
	int			len;
} WindowKey;

/*
 * The changes of one table not yet notified (registry.notify_delay > 0).
 * Everything it holds is in its own memory context, freed when it is sent:
 * the keys take at most the payload's room, the rest is fixed.
 */
typedef struct NotifyWindow
{
	int32		tid;
	MemoryContext cxt;
	char	   *name;			/* qualified name at open, NULL if none */
	TimestampTz opened_at;		/* commit time of its first change */
	uint64		count;
	uint64		first_seq;
	uint64		last_seq;
	uint64		inserts;
	uint64		updates;
	uint64		deletes;
	uint64		resyncs;
	uint64		expired;		/* changes with an expiry reason */
	StringInfoData keys;		/* the keys array's elements, ", " between */
	int			keys_budget;	/* most bytes keys may hold */
	bool		keys_truncated; /* a key did not fit; none is added after */
	WindowKey  *slots;			/* open addressing over keys, to dedup */
	int			nslots;			/* a power of two */
	int			nkeys;
} NotifyWindow;

/*
 * The open windows, in the order they opened (so by first_seq), and the
 * epoch they belong to.  While one is open the notifier reads on from
 * read_seq, which is ahead of the notified_seq it publishes.
 */
static MemoryContext windows_cxt = NULL;
static NotifyWindow **windows = NULL;
static int	nwindows = 0;
static int	maxwindows = 0;
static uint64 windows_epoch = 0;
static uint64 read_seq = 0;

static ProcessUtility_hook_type prev_utility_hook = NULL;

/*
 * Whether changes are notified now: notifications on, and some session
 * may listen.  Asked after the changes are copied from the ring.
 */
static bool
notifying(void)
{
	return registry_notifications && changelog_listeners() > 0;
}

typedef struct TableName
{
	int32		tid;
	char	   *name;			/* NULL if no longer registered */
	int			nkeys;
} TableName;

static TableName *
table_name(List **cache, int32 tid)
{
	ListCell   *lc;
	TableName  *tn;
	RegTable   *t;

	foreach(lc, *cache)
	{
		tn = lfirst(lc);
		if (tn->tid == tid)
			return tn;
	}
	t = regtable_by_tid(tid, true);
	tn = palloc(sizeof(TableName));
	tn->tid = tid;
	tn->name = t ? pstrdup(t->qualname) : NULL;
	tn->nkeys = t ? t->nkeys : 0;
	*cache = lappend(*cache, tn);
	return tn;
}

static void
json_field(StringInfo b, const char *name, const char *value)
{
	appendStringInfo(b, ", \"%s\": ", name);
	if (value)
		escape_json(b, value);
	else
		appendStringInfoString(b, "null");
}

/*
 * Payload of one change.  Versions and epochs are JSON strings: they
 * exceed 2^53 and would lose precision in JavaScript clients.  The key
 * comes twice: as its canonical text, and as key_values, a JSON array of
 * its columns' values (as text, in primary-key order) that needs no
 * parser.  A payload that would not fit NOTIFY's limit drops key_values
 * first ("key_values": null), then the key too ("key": null,
 * "key_truncated": true); the key can be read from registry.change_log by
 * seq while the entry is still there.
 */
static void
payload_form(StringInfo b, ChangeLogChange *e, TableName *table,
			 const char *origin, const char *epoch, const char *version,
			 List *parts, bool with_key)
{
	resetStringInfo(b);
	appendStringInfo(b, "{\"seq\": " UINT64_FORMAT, e->seq);
	json_field(b, "epoch", epoch);
	json_field(b, "table", table->name);
	json_field(b, "key", (e->op == REG_OP_RESYNC || !with_key) ? NULL : e->key);
	appendStringInfoString(b, ", \"key_values\": ");
	if (parts == NIL || !with_key)
		appendStringInfoString(b, "null");
	else
	{
		ListCell   *lc;

		appendStringInfoChar(b, '[');
		foreach(lc, parts)
		{
			if (lc != list_head(parts))
				appendStringInfoString(b, ", ");
			escape_json(b, (char *) lfirst(lc));
		}
		appendStringInfoChar(b, ']');
	}
	if (!with_key)
		appendStringInfoString(b, ", \"key_truncated\": true");
	json_field(b, "op", registry_op_name(e->op));
	json_field(b, "version", version);
	json_field(b, "origin", origin);
	if (e->reason != 0 && registry_expiry_name(e->reason))
	{
		json_field(b, "reason", "expired");
		json_field(b, "expiry", registry_expiry_name(e->reason));
	}
	appendStringInfoChar(b, '}');
}

static char *
change_payload(ChangeLogChange *e, TableName *table, const char *origin,
			   const char *epoch, bool *truncated)
{
	StringInfoData b;
	char		v[32];
	List	   *parts = NIL;

	snprintf(v, sizeof(v), UINT64_FORMAT, e->version);
	if (e->op != REG_OP_RESYNC && table->name)
		parts = keys_split_extended(e->key, table->nkeys, true);
	initStringInfo(&b);
	payload_form(&b, e, table, origin, epoch, v, parts, true);
	*truncated = false;
	if (b.len >= REG_NOTIFY_MAX_PAYLOAD && parts != NIL)
		payload_form(&b, e, table, origin, epoch, v, NIL, true);
	if (b.len >= REG_NOTIFY_MAX_PAYLOAD)
	{
		payload_form(&b, e, table, origin, epoch, v, NIL, false);
		*truncated = true;
	}
	return b.data;
}

/* One wake-up per batch for peers, whatever the batch holds. */
static void
wakeup_notify(uint64 seq)
{
	char		buf[160];

	snprintf(buf, sizeof(buf), "{\"node\": \"%s\", \"seq\": " UINT64_FORMAT "}",
			 registry_node_name, seq);
	Async_Notify("registry_wakeup", buf);
}

/* Changes were overwritten in the ring before they could be notified. */
static void
overflow_notify(const char *epoch, uint64 lost, uint64 first)
{
	char		buf[160];

	snprintf(buf, sizeof(buf),
			 "{\"op\": \"overflow\", \"epoch\": \"%s\", \"lost\": " UINT64_FORMAT ", \"first_seq\": " UINT64_FORMAT "}",
			 epoch, lost, first);
	Async_Notify("registry_change", buf);
}

/*
 * registry.notify_delay = 0: send one notification for every change
 * published since the last call, one transaction per batch.  Changes that
 * were overwritten in the ring before they could be sent are reported by
 * one "overflow" notification.
 */
static uint64
notify_each(void)
{
	uint64		total = 0;
	MemoryContext cxt = CurrentMemoryContext;

	for (;;)
	{
		uint64		notified,
					first,
					last,
					ep;
		ChangeLogChange *copy;
		uint64		lost = 0;
		uint64		sent = 0;
		uint64		truncated = 0;
		uint64		from;
		int			n = 0;
		int			i;
		List	   *names = NIL;
		char		epoch[32];

		CHECK_FOR_INTERRUPTS();
		notified = changelog_notified_seq();
		from = changelog_listen_from();
		if (from > notified)
		{
			/* older than every listener's LISTEN */
			notified = from;
			changelog_notified(notified, 0, 0, 0);
		}
		n = changelog_read(notified, NOTIFY_BATCH, &copy, &first, &last, &ep);
		snprintf(epoch, sizeof(epoch), UINT64_FORMAT, ep);
		if (notified + 1 < first)
		{
			lost = first - 1 - notified;
			notified = first - 1;
		}

		if (n == 0 && lost == 0)
		{
			pfree(copy);
			break;
		}
		if (!notifying())
		{
			changelog_notified(notified + n, 0, 0, 0);
			pfree(copy);
			continue;
		}

		/* a first listener may have counted since the look above */
		from = changelog_listen_from();
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		worker_xact_started();
		PushActiveSnapshot(GetTransactionSnapshot());
		if (lost > 0 && first - 1 > from)
			overflow_notify(epoch, lost, first);
		for (i = 0; i < n; i++)
		{
			ChangeLogChange *e = &copy[i];
			bool		trunc;

			if (e->seq <= from)
				continue;

			Async_Notify("registry_change",
						 change_payload(e, table_name(&names, e->tid),
										e->origin[0] ? e->origin : NULL, epoch, &trunc));
			sent++;
			if (trunc)
				truncated++;
		}
		wakeup_notify(notified + n);
		PopActiveSnapshot();
		CommitTransactionCommand();
		/* committing left TopMemoryContext current */
		MemoryContextSwitchTo(cxt);

		total += n;
		changelog_notified(notified + n, sent, lost, truncated);
		pfree(copy);
	}
	return total;
}

/* ---- the merge window (registry.notify_delay > 0) ---- */

/*
 * Payload of a window.  The counters are JSON numbers (seqs and counts
 * stay far below 2^53); the epoch is a string, as in one change's payload.
 * "resync" and "expired" appear only when there are such changes.
 */
static void
window_payload(StringInfo b, NotifyWindow *w, const char *epoch,
			   bool with_keys)
{
	resetStringInfo(b);
	appendStringInfoString(b, "{\"table\": ");
	if (w->name)
		escape_json(b, w->name);
	else
		appendStringInfoString(b, "null");
	json_field(b, "epoch", epoch);
	appendStringInfo(b, ", \"count\": " UINT64_FORMAT ", \"first_seq\": " UINT64_FORMAT
					 ", \"last_seq\": " UINT64_FORMAT ", \"keys\": [%s]",
					 w->count, w->first_seq, w->last_seq,
					 with_keys ? w->keys.data : "");
	appendStringInfo(b, ", \"keys_truncated\": %s",
					 (w->keys_truncated || !with_keys) ? "true" : "false");
	appendStringInfo(b, ", \"ops\": {\"insert\": " UINT64_FORMAT ", \"update\": " UINT64_FORMAT
					 ", \"delete\": " UINT64_FORMAT,
					 w->inserts, w->updates, w->deletes);
	if (w->resyncs > 0)
		appendStringInfo(b, ", \"resync\": " UINT64_FORMAT, w->resyncs);
	appendStringInfoChar(b, '}');
	if (w->expired > 0)
		appendStringInfo(b, ", \"expired\": " UINT64_FORMAT, w->expired);
	appendStringInfoChar(b, '}');
}

/*
 * The room the keys of a table's window may take: what NOTIFY accepts
 * less the payload with no key and every counter at its widest (and
 * "resync", "expired" and "false" present), so that a window whose keys
 * fit their budget always fits NOTIFY's limit.
 */
static int
keys_budget(const char *name)
{
	NotifyWindow widest;
	StringInfoData b;
	uint64		max = PG_UINT64_MAX;
	int			budget;

	memset(&widest, 0, sizeof(widest));
	widest.name = (char *) name;
	widest.count = widest.first_seq = widest.last_seq = max;
	widest.inserts = widest.updates = widest.deletes = max;
	widest.resyncs = widest.expired = max;
	initStringInfo(&widest.keys);
	initStringInfo(&b);
	/* (with "keys_truncated": false, the longer) */
	window_payload(&b, &widest, WIDEST_COUNTER, true);
	budget = REG_NOTIFY_MAX_PAYLOAD - 1 - b.len;
	pfree(b.data);
	pfree(widest.keys.data);
	return Max(budget, 0);
}

static NotifyWindow *
window_find(int32 tid)
{
	int			i;

	for (i = 0; i < nwindows; i++)
		if (windows[i]->tid == tid)
			return windows[i];
	return NULL;
}

/* Open the window of a table at change e (inside a transaction). */
static NotifyWindow *
window_open(ChangeLogChange *e, uint64 epoch)
{
	NotifyWindow *w;
	MemoryContext cxt;
	MemoryContext old;
	RegTable   *t;

	if (windows_cxt == NULL)
		windows_cxt = AllocSetContextCreate(TopMemoryContext,
											"registry notifier windows",
											ALLOCSET_SMALL_SIZES);
	if (nwindows == maxwindows)
	{
		maxwindows = Max(8, maxwindows * 2);
		windows = windows ?
			repalloc(windows, sizeof(NotifyWindow *) * maxwindows) :
			MemoryContextAlloc(windows_cxt, sizeof(NotifyWindow *) * maxwindows);
	}
	if (nwindows == 0)
		windows_epoch = epoch;

	cxt = AllocSetContextCreate(windows_cxt, "registry notifier window",
								ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(cxt);
	w = palloc0(sizeof(NotifyWindow));
	w->tid = e->tid;
	w->cxt = cxt;
	t = regtable_by_tid(e->tid, true);
	w->name = t ? pstrdup(t->qualname) : NULL;
	w->opened_at = e->committed_at;
	w->first_seq = e->seq;
	initStringInfo(&w->keys);
	w->keys_budget = keys_budget(w->name);
	w->nslots = 16;
	w->slots = palloc(sizeof(WindowKey) * w->nslots);
	memset(w->slots, -1, sizeof(WindowKey) * w->nslots);
	MemoryContextSwitchTo(old);

	windows[nwindows++] = w;
	return w;
}

static void
slots_grow(NotifyWindow *w)
{
	WindowKey  *old = w->slots;
	int			oldn = w->nslots;
	int			i;

	w->nslots *= 2;
	w->slots = MemoryContextAlloc(w->cxt, sizeof(WindowKey) * w->nslots);
	memset(w->slots, -1, sizeof(WindowKey) * w->nslots);
	for (i = 0; i < oldn; i++)
	{
		int			j;

		if (old[i].off < 0)
			continue;
		for (j = old[i].hash & (w->nslots - 1); w->slots[j].off >= 0;
			 j = (j + 1) & (w->nslots - 1))
			;
		w->slots[j] = old[i];
	}
	pfree(old);
}

/*
 * Add a key to the window's list unless it is there: first-seen order,
 * while the list fits its budget.  The first key that does not fit ends
 * the list (keys_truncated), so the list is always the first distinct
 * keys of the window; past that point nothing is looked up or kept.
 */
static void
window_add_key(NotifyWindow *w, const char *key, StringInfo scratch)
{
	uint32		h;
	int			j;
	int			need;

	if (w->keys_truncated)
		return;
	resetStringInfo(scratch);
	escape_json(scratch, key);
	h = hash_bytes((const unsigned char *) scratch->data, scratch->len);
	for (j = h & (w->nslots - 1); w->slots[j].off >= 0; j = (j + 1) & (w->nslots - 1))
	{
		WindowKey  *k = &w->slots[j];

		if (k->hash == h && k->len == scratch->len &&
			memcmp(w->keys.data + k->off, scratch->data, k->len) == 0)
			return;
	}
	need = scratch->len + (w->keys.len > 0 ? 2 : 0);
	if (w->keys.len + need > w->keys_budget)
	{
		w->keys_truncated = true;
		return;
	}
	if (w->keys.len > 0)
		appendStringInfoString(&w->keys, ", ");
	w->slots[j].hash = h;
	w->slots[j].off = w->keys.len;
	w->slots[j].len = scratch->len;
	appendBinaryStringInfo(&w->keys, scratch->data, scratch->len);
	/* keep the table at most half full */
	if (++w->nkeys * 2 > w->nslots)
		slots_grow(w);
}

static void
window_add(NotifyWindow *w, ChangeLogChange *e, StringInfo scratch)
{
	w->count++;
	w->last_seq = e->seq;
	switch (e->op)
	{
		case REG_OP_INSERT:
			w->inserts++;
			break;
		case REG_OP_UPDATE:
			w->updates++;
			break;
		case REG_OP_DELETE:
			w->deletes++;
			break;
		case REG_OP_RESYNC:
			w->resyncs++;
			break;
	}
	if (e->reason != 0 && registry_expiry_name(e->reason))
		w->expired++;
	if (e->op != REG_OP_RESYNC)
		window_add_key(w, e->key, scratch);
}

/*
 * Send and forget the windows that are due at now (all of them with
 * all), inside the caller's transaction; the others keep their order.
 * Counts what was sent into *sent and *truncated.
 */
static void
windows_send(bool all, TimestampTz now, uint64 *sent, uint64 *truncated)
{
	StringInfoData b;
	char		epoch[32];
	int			i;
	int			kept = 0;

	snprintf(epoch, sizeof(epoch), UINT64_FORMAT, windows_epoch);
	initStringInfo(&b);
	for (i = 0; i < nwindows; i++)
	{
		NotifyWindow *w = windows[i];
		bool		trunc = w->keys_truncated;

		if (!all && !TimestampDifferenceExceeds(w->opened_at, now,
												registry_notify_delay_ms))
		{
			windows[kept++] = w;
			continue;
		}
		window_payload(&b, w, epoch, true);
		/* the budget makes this impossible; never fail a NOTIFY for it */
		if (b.len >= REG_NOTIFY_MAX_PAYLOAD)
		{
			window_payload(&b, w, epoch, false);
			trunc = true;
		}
		Async_Notify("registry_change", b.data);
		(*sent)++;
		if (trunc)
			(*truncated)++;
		MemoryContextDelete(w->cxt);
	}
	nwindows = kept;
	pfree(b.data);
}

/* Forget the open windows unsent (registry.notifications off). */
static void
windows_discard(void)
{
	int			i;

	for (i = 0; i < nwindows; i++)
		MemoryContextDelete(windows[i]->cxt);
	nwindows = 0;
}

/* Whether a window is due at now. */
static bool
windows_due(TimestampTz now)
{
	int			i;

	for (i = 0; i < nwindows; i++)
		if (TimestampDifferenceExceeds(windows[i]->opened_at, now,
									   registry_notify_delay_ms))
			return true;
	return false;
}

/*
 * What notified_seq may say: every change up to it is covered by a
 * notification sent (or by an overflow one): below the oldest open
 * window's first change, else as far as the notifier read.
 */
static uint64
covered_seq(void)
{
	return nwindows > 0 ? windows[0]->first_seq - 1 : read_seq;
}

/* Send the windows that are due (all of them with all) in a transaction. */
static void
windows_flush(bool all)
{
	MemoryContext cxt = CurrentMemoryContext;
	uint64		sent = 0;
	uint64		truncated = 0;

	if (nwindows == 0 || (!all && !windows_due(GetCurrentTimestamp())))
		return;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	worker_xact_started();
	windows_send(all, GetCurrentTimestamp(), &sent, &truncated);
	CommitTransactionCommand();
	/* committing left TopMemoryContext current */
	MemoryContextSwitchTo(cxt);
	changelog_notified(covered_seq(), sent, 0, truncated);
}

/*
 * registry.notify_delay > 0: read every change published since the last
 * call into the windows of their tables (one transaction per batch, which
 * also sends the batch's registry_wakeup: peers are not delayed), then
 * send the windows that are due.  Reading all that is published before
 * sending is what makes a window cover every change of its table up to
 * its close.  Changes lost from the ring close every open window first
 * (so that what came before the gap is notified before it), then the
 * "overflow" notification is sent as without a delay.
 */
static uint64
notify_merged(void)
{
	uint64		total = 0;
	MemoryContext cxt = CurrentMemoryContext;
	StringInfoData scratch;

	initStringInfo(&scratch);
	for (;;)
	{
		uint64		after,
					first,
					last,
					ep;
		ChangeLogChange *copy;
		uint64		lost = 0;
		uint64		sent = 0;
		uint64		truncated = 0;
		uint64		from;
		int			n;
		int			i;
		char		epoch[32];

		CHECK_FOR_INTERRUPTS();
		after = nwindows > 0 ? read_seq : changelog_notified_seq();
		from = changelog_listen_from();
		if (from > after)
		{
			/* older than every listener's LISTEN: nobody's to be told of */
			windows_discard();
			after = read_seq = from;
			changelog_notified(after, 0, 0, 0);
		}
		n = changelog_read(after, NOTIFY_BATCH, &copy, &first, &last, &ep);
		snprintf(epoch, sizeof(epoch), UINT64_FORMAT, ep);
		if (nwindows > 0 && ep != windows_epoch)
		{
			/*
			 * CREATE EXTENSION started a new epoch (changelog_reset): the
			 * open windows are the old epoch's, sent as they are; the gap
			 * before the new epoch's first seq lost nothing.
			 */
			read_seq = first - 1;
			if (notifying())
				windows_flush(true);
			else
				windows_discard();
			after = first - 1;
		}
		else if (after + 1 < first)
		{
			lost = first - 1 - after;
			after = first - 1;
		}

		if (n == 0 && lost == 0)
		{
			pfree(copy);
			break;
		}
		if (!notifying())
		{
			windows_discard();
			read_seq = after + n;
			changelog_notified(read_seq, 0, 0, 0);
			pfree(copy);
			continue;
		}

		/* a first listener may have counted since the look above */
		from = changelog_listen_from();
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		worker_xact_started();
		PushActiveSnapshot(GetTransactionSnapshot());
		if (lost > 0)
		{
			windows_send(true, 0, &sent, &truncated);
			if (first - 1 > from)
				overflow_notify(epoch, lost, first);
		}
		for (i = 0; i < n; i++)
		{
			ChangeLogChange *e = &copy[i];
			NotifyWindow *w;

			if (e->seq <= from)
				continue;
			w = window_find(e->tid);
			if (w == NULL)
				w = window_open(e, ep);
			window_add(w, e, &scratch);
		}
		wakeup_notify(after + n);
		PopActiveSnapshot();
		CommitTransactionCommand();
		/* committing left TopMemoryContext current */
		MemoryContextSwitchTo(cxt);

		total += n;
		read_seq = after + n;
		changelog_notified(covered_seq(), sent, lost, truncated);
		pfree(copy);
	}
	pfree(scratch.data);

	if (!notifying())
		windows_discard();
	windows_flush(false);
	return total;
}

/*
 * Send notifications for the changes published since the last call:
 * one per change, or merged per table (registry.notify_delay).  Returns
 * how many changes were notified (none when they were passed over).  A
 * delay set back to 0 sends the open windows at once; the changes after
 * them go out one by one again.
 */
uint64
notify_pending(void)
{
	if (registry_notify_delay_ms > 0)
		return notify_merged();
	if (nwindows > 0)
	{
		if (notifying())
			windows_flush(true);
		else
			windows_discard();
		changelog_notified(read_seq, 0, 0, 0);
	}
	return notify_each();
}

/*
 * How long the maintenance worker may sleep before the earliest open
 * window closes (0: one is due), or -1 when none is open.
 */
long
notify_next_wait_ms(TimestampTz now)
{
	TimestampTz close = 0;
	long		secs;
	int			us;
	int			i;

	if (nwindows == 0)
		return -1;
	if (registry_notify_delay_ms <= 0)
		return 0;
	for (i = 0; i < nwindows; i++)
	{
		TimestampTz c = TimestampTzPlusMilliseconds(windows[i]->opened_at,
													registry_notify_delay_ms);

		if (i == 0 || c < close)
			close = c;
	}
	TimestampDifference(now, close, &secs, &us);
	/* round up: waking before the close would find nothing due */
	return secs * 1000 + (us + 999) / 1000;
}

/*
 * Whether the notifier has readers: the maintenance worker asks commits
 * for a wake-up only then (a LISTEN wakes it, changelog.c).
 */
bool
notify_listened(void)
{
	return notifying();
}

/* ---- this session's listening ---- */

/*
 * The registry channels this session listens on, as of its last commit,
 * and what its open transaction has queued for them, by nesting level
 * (index 1 the top transaction): PostgreSQL applies LISTEN and UNLISTEN
 * at commit, in order (so the last one queued for a channel wins), and
 * drops those of a subtransaction that rolls back.  Kept in step here so
 * that a session that stops listening (UNLISTEN, or DISCARD ALL when a
 * pooler hands the connection to another client) stops counting as a
 * listener, at its commit (XACT_EVENT_COMMIT, just before PostgreSQL's
 * AtCommit_Notify applies the UNLISTEN: a notification sent in between
 * is delivered only once the session is idle, and filtered against its
 * channels then, so it could not have reached it anyway).
 */
#define NCHANNELS	2			/* registry_change, registry_wakeup */

typedef enum ChannelEffect
{
	EFFECT_NONE = 0,
	EFFECT_LISTEN,
	EFFECT_UNLISTEN
} ChannelEffect;

typedef ChannelEffect ChannelEffects[NCHANNELS];

static bool session_listening[NCHANNELS];
static ChannelEffects *effects = NULL;	/* [effects_levels], TopMemoryContext */
static int	effects_levels = 0;
static bool effects_noted = false;	/* anything queued in this transaction */

/*
 * Whether this session is in registry.database, where the notifier sends:
 * looked up once it exists (the setting is fixed at server start, and a
 * database with sessions cannot be renamed), as a pooler's DISCARD ALL
 * before each client would otherwise look it up every time.
 */
static bool
in_registry_database(void)
{
	static Oid	registry_db = InvalidOid;

	if (registry_database == NULL)
		return false;
	if (!OidIsValid(registry_db))
		registry_db = get_database_oid(registry_database, true);
	return OidIsValid(registry_db) && registry_db == MyDatabaseId;
}

/* The index of a registry channel, -1 for any other. */
static int
channel_index(const char *channel)
{
	if (strcmp(channel, "registry_change") == 0)
		return 0;
	if (strcmp(channel, "registry_wakeup") == 0)
		return 1;
	return -1;
}

static void
note_effect(int channel, ChannelEffect effect)
{
	int			level = GetCurrentTransactionNestLevel();

	if (level >= effects_levels)
	{
		int			n = Max(level + 1, Max(8, effects_levels * 2));

		if (effects == NULL)
			effects = MemoryContextAllocZero(TopMemoryContext,
											 sizeof(ChannelEffects) * n);
		else
		{
			effects = repalloc(effects, sizeof(ChannelEffects) * n);
			memset(effects + effects_levels, 0,
				   sizeof(ChannelEffects) * (n - effects_levels));
		}
		effects_levels = n;
	}
	effects[level][channel] = effect;
	effects_noted = true;
}

/*
 * Counts the sessions that LISTEN on a registry channel, once the LISTEN
 * is queued and before it can commit (changelog_listener_arrived says why
 * that is soon enough), and notes what LISTEN, UNLISTEN and DISCARD ALL
 * do to this session's listening.  Any other statement passes straight
 * through.
 */
static void
notify_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
			   ProcessUtilityContext context, ParamListInfo params,
			   QueryEnvironment *queryEnv, DestReceiver *dest,
			   QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;
	int			listen = -1;	/* the registry channel a LISTEN names */
	int			unlisten = -1;	/* ... an UNLISTEN names, NCHANNELS: all */

	if (IsA(stmt, ListenStmt))
		listen = channel_index(((ListenStmt *) stmt)->conditionname);
	else if (IsA(stmt, UnlistenStmt))
	{
		const char *channel = ((UnlistenStmt *) stmt)->conditionname;

		unlisten = channel == NULL ? NCHANNELS : channel_index(channel);
	}
	else if (IsA(stmt, DiscardStmt) &&
			 ((DiscardStmt *) stmt)->target == DISCARD_ALL)
		unlisten = NCHANNELS;
	if (prev_utility_hook)
		prev_utility_hook(pstmt, queryString, readOnlyTree, context, params,
						  queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);

	/*
	 * The LISTEN is queued (it takes effect at commit): counted only in
	 * the database the notifier sends in, notifications being per
	 * database.
	 */
	if ((listen >= 0 || unlisten >= 0) && in_registry_database())
	{
		if (listen >= 0)
		{
			note_effect(listen, EFFECT_LISTEN);
			changelog_listener_arrived();
		}
		else if (unlisten == NCHANNELS)
		{
			note_effect(0, EFFECT_UNLISTEN);
			note_effect(1, EFFECT_UNLISTEN);
		}
		else
			note_effect(unlisten, EFFECT_UNLISTEN);
	}
}

/*
 * At the end of a transaction that queued LISTEN or UNLISTEN on a
 * registry channel: what it did takes effect (or not), and a session
 * left listening on neither channel no longer counts as a listener.
 */
static void
listening_xact_callback(XactEvent event, void *arg)
{
	int			c;

	if (!effects_noted)
		return;
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT)
	{
		for (c = 0; c < NCHANNELS && effects_levels > 1; c++)
			if (effects[1][c] != EFFECT_NONE)
				session_listening[c] = effects[1][c] == EFFECT_LISTEN;
	}
	else if (event != XACT_EVENT_ABORT && event != XACT_EVENT_PARALLEL_ABORT &&
			 event != XACT_EVENT_PREPARE)
		return;					/* the pre-commit events */
	if (effects != NULL)
		memset(effects, 0, sizeof(ChannelEffects) * effects_levels);
	effects_noted = false;
	for (c = 0; c < NCHANNELS; c++)
		if (session_listening[c])
			return;
	changelog_listener_left();
}

/*
 * A subtransaction's LISTEN and UNLISTEN pass to its parent when it
 * commits and are dropped when it rolls back, as PostgreSQL's own are.
 */
static void
listening_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						   SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	int			c;

	if (!effects_noted || level >= effects_levels || level < 2)
		return;
	if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		for (c = 0; c < NCHANNELS; c++)
			if (effects[level][c] != EFFECT_NONE)
				effects[level - 1][c] = effects[level][c];
	}
	else if (event != SUBXACT_EVENT_ABORT_SUB)
		return;
	memset(effects[level], 0, sizeof(ChannelEffects));
}

/* From _PG_init. */
void
notify_install_hook(void)
{
	prev_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = notify_utility;
	RegisterXactCallback(listening_xact_callback, NULL);
	RegisterSubXactCallback(listening_subxact_callback, NULL);
}
