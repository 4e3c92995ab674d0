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
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/async.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/snapmgr.h"

#include "changelog.h"
#include "notify.h"
#include "registry.h"
#include "worker_slots.h"

/* what async.c accepts (it does not export the constant) */
#define REG_NOTIFY_MAX_PAYLOAD	(BLCKSZ - NAMEDATALEN - 128)
#define NOTIFY_BATCH			1000

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

/*
 * Send notifications for every change published since the last call, one
 * transaction per batch.  Changes that were overwritten in the ring
 * before they could be sent are reported by one "overflow" notification.
 */
uint64
notify_pending(void)
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
		int			n = 0;
		int			i;
		List	   *names = NIL;
		char		buf[160];
		char		epoch[32];

		CHECK_FOR_INTERRUPTS();
		notified = changelog_notified_seq();
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
		if (!registry_notifications)
		{
			changelog_notified(notified + n, 0, 0, 0);
			pfree(copy);
			total += n;
			continue;
		}

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		worker_xact_started();
		PushActiveSnapshot(GetTransactionSnapshot());
		if (lost > 0)
		{
			snprintf(buf, sizeof(buf),
					 "{\"op\": \"overflow\", \"epoch\": \"%s\", \"lost\": " UINT64_FORMAT ", \"first_seq\": " UINT64_FORMAT "}",
					 epoch, lost, first);
			Async_Notify("registry_change", buf);
		}
		for (i = 0; i < n; i++)
		{
			ChangeLogChange *e = &copy[i];
			bool		trunc;

			Async_Notify("registry_change",
						 change_payload(e, table_name(&names, e->tid),
										e->origin[0] ? e->origin : NULL, epoch, &trunc));
			sent++;
			if (trunc)
				truncated++;
		}
		/* one wake-up per batch for peers, whatever the batch holds */
		snprintf(buf, sizeof(buf), "{\"node\": \"%s\", \"seq\": " UINT64_FORMAT "}",
				 registry_node_name, notified + n);
		Async_Notify("registry_wakeup", buf);
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
